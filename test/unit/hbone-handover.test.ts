/**
 * HBONE across a node agent's handover (docs/DATAPATH.md, "Restarts and upgrades"): one TCP
 * listener stands for the pod's 15008 reuseport group and hands each connection to the old
 * agent's HboneServer until it closes, then to the new one's. A stream the old one carries goes
 * on to its end through its drain; a new stream after its GOAWAY reaches the new server; a
 * connection still in its TLS handshake when the old one closes is waited for and sent away.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import type { ServerHttp2Stream } from 'node:http2';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { HbonePool, HboneServer, type HboneSource } from '../../src/hbone/hbone.js';
import { tcpSocketOf } from '../../src/host/netns.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-hbone-handover-'));
const CLIENT = 'spiffe://cluster.local/ns/obs/sa/client';
const WEB = 'spiffe://cluster.local/ns/obs/sa/web';
let manager: CertManager;
let listener: Server;
let port = 0;
let current: HboneServer;

function server(name: string, seen: string[]): HboneServer {
  return new HboneServer({
    certificate: () => manager.acquire(WEB),
    roots: () => manager.trustBundle,
    onTunnel: (stream: ServerHttp2Stream) => {
      seen.push(name);
      stream.respond({ ':status': 200 });
      stream.pipe(stream);
    },
  });
}

function echoOnce(stream: NodeJS.ReadWriteStream, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (c: Buffer) => {
      got += c.toString();
      if (got.length >= text.length) {
        stream.off('data', onData);
        resolve(got);
      }
    };
    stream.on('data', onData);
    stream.once('error', reject);
    stream.write(text);
  });
}

beforeAll(async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'mesh')) });
  manager = new CertManager({ source: {
    createCertificate: async (csr: string, identity: string, ttl: number) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(ca.trustBundle()),
  } });
  await manager.start();
  listener = createServer((s: Socket) => void current.handle(s));
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  port = (listener.address() as { port: number }).port;
});

afterAll(() => {
  listener.close();
  manager.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('HBONE during a handover', () => {
  it('keeps a stream on the old server through its drain, and opens new ones on the new server', async () => {
    const seen: string[] = [];
    const old = server('old', seen);
    const next = server('new', seen);
    current = old;
    const cert = await manager.acquire(CLIENT);
    const src: HboneSource = { pod: 'client-1', cert, roots: manager.trustBundle, socket: (f: 4 | 6) => tcpSocketOf(f) };
    const target = { address: '127.0.0.1', port, identity: WEB, authority: '10.0.0.2:80' };
    const pool = new HbonePool();
    const held = await pool.open(src, target);
    expect(await echoOnce(held, 'before')).toBe('before');

    // The handover: the new agent's listener takes the new connections, the old one closes.
    current = next;
    const closing = old.close(5000);
    const fresh = await pool.open(src, target);
    expect(await echoOnce(fresh, 'fresh')).toBe('fresh');
    // The long-lived stream still carries data during the drain, and ends when its client ends it.
    expect(await echoOnce(held, 'during')).toBe('during');
    held.end();
    await closing;
    expect(seen).toEqual(['old', 'new']);
    fresh.close();
    pool.close();
    await next.close();
  });

  it('sends away a connection whose TLS handshake ends after close, and its stream is opened again elsewhere', async () => {
    const seen: string[] = [];
    const old = server('old', seen);
    const next = server('new', seen);
    current = old;
    const cert = await manager.acquire(CLIENT);
    const src: HboneSource = { pod: 'client-2', cert, roots: manager.trustBundle, socket: (f: 4 | 6) => tcpSocketOf(f) };
    const pool = new HbonePool();
    // The connection is accepted by the old server, which closes before its handshake is done.
    const opening = pool.open(src, { address: '127.0.0.1', port, identity: WEB, authority: '10.0.0.2:80' });
    const closing = old.close(5000);
    current = next;
    const stream = await opening;
    expect(await echoOnce(stream, 'x')).toBe('x');
    await closing;
    expect(seen).toEqual(['new']);
    stream.close();
    pool.close();
    await next.close();
  });
});
