/**
 * The CA over gRPC/TLS on loopback (authentication, node authorization, statuses) and the node
 * agent's certificate manager (sharing, rotation on a controllable clock, backoff, trust bundle).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaClient, CaRequestError, CaServer, type CertificateSource } from '../../src/identity/ca-server.js';
import { CertManager, ManualClock } from '../../src/identity/cert-manager.js';
import { certificateFacts, createCsr, generateKeyPair } from '../../src/identity/pki.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-ca-svc-'));
const USERS = 'spiffe://cluster.local/ns/shop/sa/users';
const ORDERS = 'spiffe://cluster.local/ns/shop/sa/orders';
const PODS: Record<string, string[]> = { 'node-1': [USERS], 'node-2': [ORDERS] };

let ca: CertificateAuthority;
let server: CaServer;
const logLines: Record<string, unknown>[] = [];
const log = pino({ level: 'info' }, { write: (line: string) => { logLines.push(JSON.parse(line) as Record<string, unknown>); } });

function client(token: string): CaClient {
  return new CaClient({ address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token });
}

async function status(p: Promise<unknown>): Promise<{ code: grpc.status; message: string }> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CaRequestError) return { code: err.code, message: err.message };
    throw err;
  }
  throw new Error('expected an error');
}

beforeAll(async () => {
  ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  server = await CaServer.start({
    ca,
    authenticator: new BootstrapTokenAuthenticator({ 'node-1': 'token-one', 'node-2': 'token-two' }),
    directory: { identitiesOnNode: (node) => new Set(PODS[node] ?? []) },
    host: '127.0.0.1',
    port: 0,
    log,
  });
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('the CA service', () => {
  it("gives the authenticator the caller's address, and refuses a credential past its expiry", async () => {
    const peers: (string | undefined)[] = [];
    const expiresAt = Date.now() - 1_000;
    const other = await CaServer.start({
      ca, authenticator: { authenticate: (_md, peer) => { peers.push(peer); return Promise.resolve({ node: 'node-1', expiresAt }); } },
      directory: { identitiesOnNode: (node) => new Set(PODS[node] ?? []) }, host: '127.0.0.1', port: 0,
    });
    const c = new CaClient({ address: `127.0.0.1:${other.port}`, roots: ca.trustBundle(), token: 'whatever' });
    try {
      const r = await status(c.createCertificate(await createCsr(await generateKeyPair(), USERS), USERS, 3600));
      expect(r).toEqual({ code: grpc.status.UNAUTHENTICATED, message: `CreateCertificate: credential expired at ${new Date(expiresAt).toISOString()}: present a fresh token` });
      expect(peers).toHaveLength(1);
      expect(peers[0]).toMatch(/^(ipv4:)?127\.0\.0\.1:\d+$/);
    } finally {
      c.close();
      other.forceClose();
    }
  });

  it('issues a node the certificates of its own pods, over TLS verified with the trust bundle', async () => {
    const c = client('token-one');
    const chain = await c.createCertificate(await createCsr(await generateKeyPair(), USERS), USERS, 3600);
    expect(certificateFacts(chain[0]!).uris).toEqual([USERS]);
    expect(chain.at(-1)).toBe(ca.trustBundle()[0]);
    expect(await c.trustBundle()).toEqual(ca.trustBundle());
    c.close();
  });

  it("refuses another node's identity, and logs why", async () => {
    const c = client('token-one');
    const r = await status(c.createCertificate(await createCsr(await generateKeyPair(), ORDERS), ORDERS, 0));
    expect(r).toEqual({ code: grpc.status.PERMISSION_DENIED, message: `CreateCertificate: node node-1 runs no pod with identity ${ORDERS}` });
    expect(logLines.find((l) => l.msg === 'certificate request refused' && l.identity === ORDERS)).toMatchObject({ node: 'node-1', code: 'PERMISSION_DENIED' });
    c.close();
  });

  it('refuses callers without a valid credential', async () => {
    const csr = await createCsr(await generateKeyPair(), USERS);
    const bad = client('nope');
    expect(await status(bad.createCertificate(csr, USERS, 0))).toEqual({ code: grpc.status.UNAUTHENTICATED, message: 'CreateCertificate: unknown bootstrap token' });
    expect((await status(bad.trustBundle())).code).toBe(grpc.status.UNAUTHENTICATED);
    bad.close();
  });

  it('answers a bad CSR with INVALID_ARGUMENT and the reason', async () => {
    const c = client('token-two');
    expect(await status(c.createCertificate('not a csr', ORDERS, 0))).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, message: expect.stringMatching(/^CreateCertificate: csr: not a PEM PKCS#10/) as unknown });
    const csr = await createCsr(await generateKeyPair(), ORDERS);
    expect(await status(c.createCertificate(csr, ORDERS, 30 * 24 * 3600))).toEqual({ code: grpc.status.INVALID_ARGUMENT, message: 'CreateCertificate: requested TTL 2592000s is over the maximum 604800s' });
    c.close();
  });

  it('is not reachable by a client that does not trust the mesh root', async () => {
    const other = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'other')) });
    const c = new CaClient({ address: `127.0.0.1:${server.port}`, roots: other.trustBundle(), token: 'token-one', timeoutMs: 3000 });
    // Refused by the client's own check of the server's chain, not a deadline running out.
    expect(await status(c.trustBundle())).toMatchObject({ code: grpc.status.UNAVAILABLE, message: expect.stringContaining('unable to verify the first certificate') as unknown });
    c.close();
  });
});

/** The CA in memory, on the test's clock, with a switch to make it unreachable or slow. */
function fakeSource(clockCa: CertificateAuthority): CertificateSource & { calls: number; down: boolean; hold?: Promise<void> } {
  const src = {
    calls: 0,
    down: false,
    hold: undefined as Promise<void> | undefined,
    async createCertificate(csr: string, identity: string, ttl: number) {
      src.calls++;
      if (src.hold) await src.hold;
      if (src.down) throw new Error('connect ECONNREFUSED');
      return (await clockCa.sign({ csr, identity, ttlSeconds: ttl })).chain;
    },
    trustBundle() {
      return src.down ? Promise.reject(new Error('connect ECONNREFUSED')) : Promise.resolve(clockCa.trustBundle());
    },
  };
  return src;
}

describe('the certificate manager', () => {
  async function setup(opts: { random?: () => number } = {}) {
    const clock = new ManualClock(Date.parse('2026-11-28T12:00:00Z'));
    // Its own root, made at the manual clock's time: the shared one was made at the real time,
    // which is after this clock's, and a CA refuses a root that is not valid yet.
    const clockCa = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca-clock')) }, { now: () => clock.now(), defaultTtlSeconds: 3600 });
    const source = fakeSource(clockCa);
    const manager = new CertManager({ source, clock, random: opts.random ?? (() => 0.5), backoff: { initialMs: 1000, maxMs: 16_000 } });
    await manager.start();
    return { clock, source, manager };
  }

  it('shares one CSR among concurrent requests for an identity', async () => {
    const { manager, source } = await setup();
    const certs = await Promise.all([manager.acquire(USERS), ...Array.from({ length: 9 }, () => manager.get(USERS))]);
    expect(source.calls).toBe(1);
    expect(new Set(certs.map((c) => c.serial)).size).toBe(1);
    expect(manager.list()).toEqual([expect.objectContaining({ identity: USERS, serial: certs[0]!.serial, state: 'valid', pods: 1 })]);
    manager.close();
  });

  it('rotates at half-life with jitter, serving the old certificate until the new one arrives', async () => {
    const { manager, source, clock } = await setup({ random: () => 1 }); // the latest jitter: +5% of the lifetime
    const first = await manager.acquire(USERS);
    const lifetime = first.notAfter.getTime() - first.notBefore.getTime();
    const rotation = first.notBefore.getTime() + lifetime * 0.55;
    expect(manager.list()[0]!.rotatesAt).toBe(new Date(rotation).toISOString());
    let release!: () => void;
    source.hold = new Promise((r) => { release = r; });
    await clock.advance(rotation - clock.now() + 1);
    await expect.poll(() => source.calls, { timeout: 2000, interval: 5, message: 'the rotation\'s CSR sent' }).toBe(2);
    expect((await manager.get(USERS)).serial).toBe(first.serial); // still the old one while the CA answers
    source.hold = undefined;
    release();
    await manager.idle();
    const second = await manager.get(USERS);
    expect(second.serial).not.toBe(first.serial);
    expect(second.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
    manager.close();
  });

  it('retries with exponential backoff and full jitter while the CA is unreachable, keeping the old certificate', async () => {
    const { manager, source, clock } = await setup({ random: () => 1 });
    const first = await manager.acquire(USERS);
    source.down = true;
    const rotatesAt = Date.parse(manager.list()[0]!.rotatesAt!);
    await clock.advance(rotatesAt - clock.now());
    await manager.idle();
    const waits: number[] = [];
    for (let i = 0; i < 6; i++) {
      const next = Date.parse(manager.list()[0]!.rotatesAt!);
      waits.push(next - clock.now());
      await clock.advance(next - clock.now());
      await manager.idle();
    }
    expect(waits).toEqual([1000, 2000, 4000, 8000, 16_000, 16_000]);
    expect(manager.list()[0]).toMatchObject({ state: 'retrying', lastError: 'connect ECONNREFUSED', serial: first.serial });
    expect((await manager.get(USERS)).serial).toBe(first.serial);
    source.down = false;
    await clock.advance(16_000);
    await manager.idle();
    expect(manager.list()[0]).toMatchObject({ state: 'valid' });
    expect(manager.list()[0]!.serial).not.toBe(first.serial);
    manager.close();
  });

  it('renews at once when the CA can be reached again, not after a backoff grown during the outage', async () => {
    const clock = new ManualClock(Date.parse('2026-11-28T12:00:00Z'));
    const clockCa = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca-clock')) }, { now: () => clock.now(), defaultTtlSeconds: 3600 });
    const waiting: { withinMs: number; then: () => void }[] = [];
    const source = Object.assign(fakeSource(clockCa), { whenReachable: (withinMs: number, then: () => void) => { waiting.push({ withinMs, then }); } });
    const manager = new CertManager({ source, clock, random: () => 1, backoff: { initialMs: 1000, maxMs: 60_000 } });
    await manager.start();
    const first = await manager.acquire(USERS);
    source.down = true;
    for (let i = 0; i < 7; i++) {
      await clock.advance(Date.parse(manager.list()[0]!.rotatesAt!) - clock.now());
      await manager.idle();
    }
    // A minute to the next try; each failed try asked to hear of the CA's return within its wait.
    expect(Date.parse(manager.list()[0]!.rotatesAt!) - clock.now()).toBe(60_000);
    expect(waiting.map((w) => w.withinMs)).toEqual([1000, 2000, 4000, 8000, 16_000, 32_000, 60_000]);
    source.down = false;
    // Only the last failure's wait counts: an earlier one's news changes nothing.
    waiting[0]!.then();
    await clock.advance(0);
    expect(manager.list()[0]).toMatchObject({ state: 'retrying', serial: first.serial });
    waiting.at(-1)!.then();
    await clock.advance(0);
    await manager.idle();
    expect(manager.list()[0]).toMatchObject({ state: 'valid' });
    expect(manager.list()[0]!.serial).not.toBe(first.serial);
    manager.close();
  });

  it('answers callers with the last error while a failed request waits for its retry: no CSR per connection past expiry', async () => {
    const { manager, source, clock } = await setup();
    const first = await manager.acquire(USERS);
    source.down = true;
    await clock.advance(first.notAfter.getTime() - clock.now() + 1);
    await manager.idle();
    const calls = source.calls;
    const answers = await Promise.allSettled(Array.from({ length: 50 }, () => manager.get(USERS)));
    expect(answers.every((a) => a.status === 'rejected' && String(a.reason).includes('ECONNREFUSED'))).toBe(true);
    expect(source.calls).toBe(calls);
    expect(manager.list()[0]).toMatchObject({ state: 'expired', serial: first.serial });
    source.down = false;
    await clock.advance(16_000);
    await manager.idle();
    expect(manager.list()[0]).toMatchObject({ state: 'valid' });
    expect((await manager.get(USERS)).serial).not.toBe(first.serial);
    manager.close();
  });

  it('fails a first request while the CA is down, then gets the certificate on a retry', async () => {
    const { manager, source, clock } = await setup();
    source.down = true;
    await expect(manager.acquire(ORDERS)).rejects.toThrow('ECONNREFUSED');
    source.down = false;
    await clock.advance(1000);
    await manager.idle();
    expect(manager.list()[0]).toMatchObject({ identity: ORDERS, state: 'valid' });
    manager.close();
  });

  it('drops a certificate with the last pod that used it, and keeps keys out of logs and JSON', async () => {
    const { manager, clock } = await setup();
    const cert = await manager.acquire(USERS);
    await manager.acquire(USERS);
    manager.release(USERS);
    expect(manager.list()).toHaveLength(1);
    manager.release(USERS);
    expect(manager.list()).toEqual([]);
    expect(clock.pending).toBe(1); // only the trust bundle refresh is left
    expect(JSON.stringify(cert)).not.toMatch(/PRIVATE KEY|"d":/);
    expect(inspect(cert)).not.toContain('PRIVATE KEY');
    expect(cert.key.asymmetricKeyType).toBe('ec');
    manager.close();
  });

  it('keeps the last trust bundle when a refresh fails', async () => {
    const { manager, source, clock } = await setup();
    const bundle = manager.trustBundle;
    expect(bundle).toHaveLength(1);
    source.down = true;
    await clock.advance(5 * 60_000);
    expect(manager.trustBundle).toEqual(bundle);
    manager.close();
  });
});
