/**
 * HBONE on loopback: real mTLS 1.3 with certificates from the mesh CA, HTTP/2 CONNECT streams,
 * the pool's reuse and idle expiry, and the refusals (wrong server identity, untrusted client,
 * non-CONNECT, a non-200 answer).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import type { ServerHttp2Stream } from 'node:http2';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager, type WorkloadCertificate } from '../../src/identity/cert-manager.js';
import { HBONE_CODES, HboneError, HbonePool, HboneServer, refuseTunnel, type HboneSource, type TunnelInfo } from '../../src/hbone/hbone.js';
import { tcpSocketOf } from '../../src/host/netns.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-hbone-'));
const USERS = 'spiffe://cluster.local/ns/shop/sa/users';
const PAYMENT = 'spiffe://cluster.local/ns/shop/sa/payment';
let manager: CertManager;
let strangers: CertManager;
let listener: Server;
let port = 0;
const tunnels: TunnelInfo[] = [];
let hbone: HboneServer;

function source(cert: WorkloadCertificate, roots: string[], pod = 'users-1'): HboneSource {
  return { pod, cert, roots, socket: (family: 4 | 6) => tcpSocketOf(family) };
}

function echo(stream: ServerHttp2Stream): void {
  stream.respond({ ':status': 200 });
  stream.pipe(stream);
}

function roundTrip(stream: NodeJS.ReadWriteStream, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    stream.on('data', (c: Buffer) => {
      got += c.toString();
      if (got.length >= text.length) resolve(got);
    });
    stream.on('error', reject);
    stream.write(text);
  });
}

beforeAll(async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'mesh')) });
  const other = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'other')) });
  const sourceOf = (c: CertificateAuthority) => ({
    createCertificate: async (csr: string, identity: string, ttl: number) => (await c.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(c.trustBundle()),
  });
  manager = new CertManager({ source: sourceOf(ca) });
  strangers = new CertManager({ source: sourceOf(other) });
  await manager.start();
  await strangers.start();
  hbone = new HboneServer({
    certificate: () => manager.acquire(PAYMENT),
    roots: () => manager.trustBundle,
    onTunnel: (stream, info) => {
      tunnels.push(info);
      if (info.authority === '10.0.0.9:81') {
        refuseTunnel(stream, 503, HBONE_CODES.upstreamRefused);
        return;
      }
      echo(stream);
    },
  });
  listener = createServer((s: Socket) => void hbone.handle(s));
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  port = (listener.address() as { port: number }).port;
});

afterAll(async () => {
  await hbone.close();
  listener.close();
  manager.close();
  strangers.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('HBONE', () => {
  it('carries bytes both ways over one pooled mTLS connection, with the client identity verified', async () => {
    const pool = new HbonePool();
    const cert = await manager.acquire(USERS);
    const target = { address: '127.0.0.1', port, identity: PAYMENT, authority: '10.0.0.9:80' };
    const a = await pool.open(source(cert, manager.trustBundle), target, { forwarded: 'for=10.0.0.5' });
    const b = await pool.open(source(cert, manager.trustBundle), target);
    expect(await roundTrip(a, 'hello')).toBe('hello');
    expect(await roundTrip(b, 'world')).toBe('world');
    expect(pool.stats).toEqual({ connections: 1, reused: 1 });
    const last = tunnels.at(-1)!;
    expect(last).toMatchObject({ peerIdentity: USERS, authority: '10.0.0.9:80', tlsVersion: 'TLSv1.3', remoteAddress: '127.0.0.1' });
    expect(tunnels.at(-2)!.headers.forwarded).toBe('for=10.0.0.5');
    a.end();
    b.end();
    pool.close();
  });

  it('maps a 503 from the far end to a refusal the app can see, with its code', async () => {
    const pool = new HbonePool();
    const cert = await manager.acquire(USERS);
    const err = await pool.open(source(cert, manager.trustBundle), { address: '127.0.0.1', port, identity: PAYMENT, authority: '10.0.0.9:81' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect(err).toMatchObject({ kind: 'refused', status: 503, code: 'upstream_refused', message: `10.0.0.9:81 via 127.0.0.1:${port}: 503 upstream_refused` });
    pool.close();
  });

  it('refuses a server that presents another identity', async () => {
    const pool = new HbonePool();
    const cert = await manager.acquire(USERS);
    const err = await pool.open(source(cert, manager.trustBundle), { address: '127.0.0.1', port, identity: 'spiffe://cluster.local/ns/shop/sa/orders', authority: '10.0.0.9:80' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect(String((err as Error).message)).toContain(`expected spiffe://cluster.local/ns/shop/sa/orders, the server presented ${PAYMENT}`);
    pool.close();
  });

  it('refuses a client whose certificate the mesh does not trust', async () => {
    const pool = new HbonePool({ connectTimeoutMs: 2000 });
    const cert = await strangers.acquire(USERS);
    const before = tunnels.length;
    // The client trusts the mesh root, so it gets as far as presenting its foreign certificate.
    const err = await pool.open(source(cert, manager.trustBundle), { address: '127.0.0.1', port, identity: PAYMENT, authority: '10.0.0.9:80' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    // Refused by the server once it saw the certificate (no TLS alert reaches the client for it):
    // the connection closed before HTTP/2 began, not the 2 s connect timeout of a slow handshake.
    expect(err).toMatchObject({ kind: 'reset', message: expect.stringMatching(/: the server closed the connection before HTTP\/2 began/) as unknown });
    // And not for a limit of the server's.
    expect(Object.values(hbone.limiter.refused()).every((n) => n === 0)).toBe(true);
    expect(tunnels.length).toBe(before);
    pool.close();
  });

  it('closes an idle pooled connection and makes a new one after', async () => {
    const pool = new HbonePool({ idleMs: 50 });
    const cert = await manager.acquire(USERS);
    const target = { address: '127.0.0.1', port, identity: PAYMENT, authority: '10.0.0.9:80' };
    const s = await pool.open(source(cert, manager.trustBundle), target);
    expect(await roundTrip(s, 'x')).toBe('x');
    s.end();
    await new Promise((r) => s.once('close', r));
    expect(pool.size).toBe(1);
    await expect.poll(() => pool.size, { timeout: 2000, interval: 10, message: 'the idle connection closed' }).toBe(0);
    const again = await pool.open(source(cert, manager.trustBundle), target);
    expect(await roundTrip(again, 'y')).toBe('y');
    expect(pool.stats.connections).toBe(2);
    again.end();
    pool.close();
  });
});
