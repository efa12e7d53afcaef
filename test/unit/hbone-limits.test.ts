/**
 * HBONE's limits on loopback, with real mTLS 1.3 and HTTP/2: connections and streams beyond a
 * peer's cap refused (connections by a reset, streams by 429 and a code), a handshake that never
 * comes closed at its timeout, idle connections closed, the pool spreading streams over more
 * connections than the server's per-connection cap, a flood from a peer that never reads held
 * to the windows, refusals counted and logged at a bounded rate. The agent's --hbone-limits flag, as a process:
 * test/integration/hbone-limits.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as http2 from 'node:http2';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { pino, type Logger } from 'pino';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager, type WorkloadCertificate } from '../../src/identity/cert-manager.js';
import { BoundedLog, HBONE_CODES, HboneLimiter, HboneLimitsError, hboneLimits, parseHboneLimits, type HboneLimits } from '../../src/hbone/limits.js';
import { HboneError, HbonePool, HboneServer, type HboneSource } from '../../src/hbone/hbone.js';
import { tcpSocketOf } from '../../src/host/netns.js';
import { MeshMetrics } from '../../src/telemetry/metrics.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-hbone-limits-'));
const USERS = 'spiffe://cluster.local/ns/shop/sa/users';
const PAYMENT = 'spiffe://cluster.local/ns/shop/sa/payment';
let manager: CertManager;
let clientCert: WorkloadCertificate;
const cleanups: (() => unknown)[] = [];

function source(pod = 'users-1'): HboneSource {
  return { pod, cert: clientCert, roots: manager.trustBundle, socket: (family: 4 | 6) => tcpSocketOf(family) };
}

/** A log that keeps its lines, for the bounded-rate checks. */
function capturedLog(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({ write(chunk: Buffer, _enc, cb) { lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>); cb(); } });
  return { log: pino({ level: 'info' }, sink), lines };
}

type Handler = (stream: http2.ServerHttp2Stream) => void;
const accept: Handler = (stream) => stream.respond({ ':status': 200 });

/** An HBONE server for PAYMENT on 127.0.0.1 with `limits`; `onTunnel` answers each stream. */
async function serve(limits: Partial<HboneLimits>, onTunnel: Handler = accept, opts: { limiter?: HboneLimiter; log?: Logger } = {}): Promise<{ hbone: HboneServer; port: number; limiter: HboneLimiter }> {
  const limiter = opts.limiter ?? new HboneLimiter({ limits, log: opts.log });
  const hbone = new HboneServer({ certificate: () => manager.acquire(PAYMENT), roots: () => manager.trustBundle, onTunnel: (s) => onTunnel(s), limiter, pod: 'shop/payment-1', log: opts.log });
  const listener: Server = createServer((s: Socket) => void hbone.handle(s));
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  cleanups.push(() => hbone.close(), () => listener.close());
  return { hbone, port: (listener.address() as { port: number }).port, limiter };
}

function target(port: number, authority = '10.0.0.9:80') {
  return { address: '127.0.0.1', port, identity: PAYMENT, authority };
}

beforeAll(async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'mesh')) });
  manager = new CertManager({ source: {
    createCertificate: async (csr: string, identity: string, ttl: number) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(ca.trustBundle()),
  } });
  await manager.start();
  clientCert = await manager.acquire(USERS);
  await manager.acquire(PAYMENT);
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => {
  manager.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('HBONE limits: configuration', () => {
  it('refuses a limit that is not a positive integer, naming it, and an unknown one', () => {
    expect(() => hboneLimits({ maxStreamsPerPeer: 0 })).toThrow(new HboneLimitsError('HBONE limit maxStreamsPerPeer must be a positive integer, got 0'));
    expect(() => hboneLimits({ handshakeTimeoutMs: 1.5 })).toThrow(/handshakeTimeoutMs must be a positive integer, got 1.5/);
    expect(() => hboneLimits({ streamWindow: 1024 })).toThrow(/streamWindow must be between 16384 and 2147483647 bytes, got 1024/);
    expect(() => hboneLimits({ streamWindow: 1 << 20, sessionWindow: 1 << 19 })).toThrow(/sessionWindow \(524288\) must be at least streamWindow \(1048576\)/);
    expect(() => hboneLimits({ maxStreamz: 3 } as Partial<HboneLimits>)).toThrow(/unknown HBONE limit "maxStreamz"/);
    expect(() => new HboneServer({ certificate: () => manager.acquire(PAYMENT), roots: () => [], onTunnel: accept, limits: { idleTimeoutMs: -1 } })).toThrow(/idleTimeoutMs must be a positive integer/);
  });

  it('reads limits as an operator writes them (NAME=VALUE, Ki/Mi), and names what is wrong', () => {
    expect(parseHboneLimits('maxStreamsPerPeer=1024, maxStreams=16384,streamWindow=512Ki,sessionWindow=8Mi')).toEqual({ maxStreamsPerPeer: 1024, maxStreams: 16384, streamWindow: 512 * 1024, sessionWindow: 8 * 1024 * 1024 });
    expect(parseHboneLimits('')).toEqual({});
    expect(() => parseHboneLimits('maxStreamsPerPeer')).toThrow(/HBONE limit "maxStreamsPerPeer" is not NAME=INTEGER/);
    expect(() => parseHboneLimits('maxStreamsPerPeer=-1')).toThrow(/"maxStreamsPerPeer=-1" is not NAME=INTEGER/);
    expect(() => parseHboneLimits('maxStreamsPerPeer=1e3')).toThrow(/is not NAME=INTEGER/);
    expect(() => parseHboneLimits('maxStreamPerPeer=10')).toThrow(/unknown HBONE limit "maxStreamPerPeer" \(known: maxConnectionsPerPeer/);
    expect(() => parseHboneLimits('maxStreams=10,maxStreams=20')).toThrow(/maxStreams is given twice/);
    expect(() => parseHboneLimits('maxStreams=0')).toThrow(/maxStreams must be a positive integer, got 0/);
    // Checked as a set: a stream window over the default session window is refused.
    expect(() => parseHboneLimits('streamWindow=8Mi')).toThrow(/sessionWindow \(4194304\) must be at least streamWindow \(8388608\)/);
    expect(() => parseHboneLimits('maxStreams=99999999999999999999')).toThrow(/too large/);
  });

  it('counts a peer across pods, a pod across peers and the node, and forgets keys that reach zero', () => {
    const limiter = new HboneLimiter({ limits: { maxConnectionsPerPeer: 2, maxConnectionsPerPod: 3, maxConnections: 5 } });
    const a1 = limiter.admitConnection('::ffff:10.0.0.1', 'pod-a');
    const a2 = limiter.admitConnection('10.0.0.1', 'pod-b');
    expect(typeof a1).toBe('object');
    expect(typeof a2).toBe('object');
    // The same peer, a third pod: over the peer's cap however the address is spelled.
    expect(limiter.admitConnection('::ffff:10.0.0.1', 'pod-c')).toBe('peer_connections');
    expect(typeof limiter.admitConnection('10.0.0.2', 'pod-a')).toBe('object');
    expect(typeof limiter.admitConnection('10.0.0.3', 'pod-a')).toBe('object');
    expect(limiter.admitConnection('10.0.0.4', 'pod-a')).toBe('pod_connections');
    expect(typeof limiter.admitConnection('10.0.0.4', 'pod-d')).toBe('object');
    expect(limiter.admitConnection('10.0.0.5', 'pod-e')).toBe('node_connections');
    // Released twice counts once.
    (a1 as { release(): void }).release();
    (a1 as { release(): void }).release();
    expect(limiter.peerUsage('10.0.0.1')).toEqual({ connections: 1, streams: 0 });
    expect(limiter.usage()).toEqual({ connections: 4, streams: 0, peers: 4 });
    (a2 as { release(): void }).release();
    expect(limiter.usage().peers).toBe(3);
    expect(limiter.refused()).toMatchObject({ peer_connections: 1, pod_connections: 1, node_connections: 1, peer_streams: 0 });
  });

  it('logs at most N refusals per interval and then one line with the count it left out', () => {
    const { log, lines } = capturedLog();
    let now = 0;
    const bounded = new BoundedLog(log, 3, 1000, () => now);
    for (let i = 0; i < 100; i++) bounded.info({ reason: 'peer_streams', i }, 'HBONE refused');
    expect(lines.length).toBe(3);
    now = 1000;
    bounded.info({ reason: 'peer_streams', i: 100 }, 'HBONE refused');
    expect(lines.length).toBe(5);
    expect(lines[3]).toMatchObject({ suppressed: 97, msg: expect.stringContaining('not logged') });
    expect(lines[4]).toMatchObject({ i: 100 });
    bounded.flush();
    expect(lines.length).toBe(5);
  });
});

describe('HBONE limits: the server', () => {
  it('refuses a peer\'s connections beyond its cap, by a reset the pool reports, and takes them again once one closes', async () => {
    const { port, limiter } = await serve({ maxConnectionsPerPeer: 2 });
    const pool = new HbonePool({ connectTimeoutMs: 5000 });
    cleanups.push(() => pool.close());
    // Each source pod is a pool partition of its own: a connection each.
    const a = await pool.open(source('users-1'), target(port));
    const b = await pool.open(source('users-2'), target(port));
    const err = await pool.open(source('users-3'), target(port)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect((err as HboneError).kind).toBe('reset');
    expect(String((err as Error).message)).toMatch(/ECONNRESET|closed the connection/);
    expect(limiter.refused().peer_connections).toBe(1);
    expect(pool.stats.connections).toBe(2);
    a.close();
    b.close();
    pool.close();
    await expect.poll(() => limiter.usage().connections).toBe(0);
    const c = await new HbonePool().open(source('users-3'), target(port));
    c.session?.destroy();
  });

  it('closes a connection that never completes its TLS handshake within the timeout, and counts it', async () => {
    const { port, limiter } = await serve({ handshakeTimeoutMs: 300 });
    const started = Date.now();
    // A TCP connection that sends half a ClientHello and then nothing.
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    const closedAfter = await new Promise<number>((r) => socket.once('close', () => r(Date.now() - started)));
    expect(closedAfter).toBeGreaterThanOrEqual(250);
    expect(closedAfter).toBeLessThan(3000);
    expect(limiter.refused().handshake_timeout).toBe(1);
    await expect.poll(() => limiter.usage().connections).toBe(0);
  });

  it('counts a failed handshake (no client certificate) as handshake_failed', async () => {
    const { port, limiter } = await serve({});
    const err = await new Promise<Error>((resolve) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: manager.trustBundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
      s.once('error', resolve);
      s.once('secureConnect', () => s.once('data', () => undefined));
      s.once('close', () => resolve(new Error('closed')));
    });
    // The server's TLS alert, not a close or a timeout.
    expect(err).toMatchObject({ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' });
    await expect.poll(() => limiter.refused().handshake_failed).toBe(1);
  });

  it('closes a TLS connection that does not speak HTTP/2 at once, and counts it as handshake_failed', async () => {
    const { port, limiter } = await serve({ handshakeTimeoutMs: 60_000 });
    const s = tls.connect({ host: '127.0.0.1', port, cert: clientCert.chain.join(''), key: clientCert.key.export({ type: 'pkcs8', format: 'pem' }) as string, ca: manager.trustBundle, ALPNProtocols: ['http/1.1'], checkServerIdentity: () => undefined });
    s.on('error', () => undefined);
    const started = Date.now();
    await new Promise((r) => s.once('close', r));
    expect(Date.now() - started).toBeLessThan(5000);
    expect(limiter.refused().handshake_failed).toBe(1);
  });

  it('closes a connection left with no stream for the idle timeout, but not one with a stream open', async () => {
    const { port, hbone } = await serve({ idleTimeoutMs: 200 });
    const pool = new HbonePool({ idleMs: 60_000 });
    cleanups.push(() => pool.close());
    const held = await pool.open(source('users-1'), target(port));
    const brief = await pool.open(source('users-2'), target(port));
    brief.close();
    await expect.poll(() => hbone.usage().connections, { timeout: 3000 }).toBe(1);
    // The pool heard the GOAWAY and forgot the connection; the one with a stream stays.
    expect(pool.size).toBe(1);
    expect(held.closed).toBe(false);
    held.close();
    await expect.poll(() => hbone.usage().connections, { timeout: 3000 }).toBe(0);
    expect(pool.size).toBe(0);
  });

  it('refuses a peer\'s streams beyond its cap with 429 and a code, and admits again once one ends', async () => {
    const { port, limiter } = await serve({ maxStreamsPerPeer: 3 });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    const open = await Promise.all([1, 2, 3].map(() => pool.open(source(), target(port))));
    const err = await pool.open(source(), target(port)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HboneError);
    expect(err).toMatchObject({ kind: 'refused', status: 429, code: HBONE_CODES.peerStreamLimit });
    expect(String((err as Error).message)).toBe(`10.0.0.9:80 via 127.0.0.1:${port}: 429 peer_stream_limit`);
    // Streams on another pod's connection from the same peer IP share the cap.
    const other = await pool.open(source('users-2'), target(port)).catch((e: unknown) => e);
    expect(other).toMatchObject({ status: 429, code: HBONE_CODES.peerStreamLimit });
    expect(limiter.refused().peer_streams).toBe(2);
    open[0]!.close();
    await expect.poll(() => limiter.peerUsage('127.0.0.1').streams).toBe(2);
    const again = await pool.open(source(), target(port));
    expect(again.closed).toBe(false);
  });

  it('gives a peer the node trusts with more (by its verified identity) its own stream cap', async () => {
    const limiter = new HboneLimiter({ limits: { maxStreamsPerPeer: 2 }, peerStreamCap: (peer) => (peer.identity === USERS && peer.ip === '127.0.0.1' ? 5 : undefined) });
    const { port } = await serve({}, accept, { limiter });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    for (let i = 0; i < 5; i++) await pool.open(source(), target(port));
    await expect(pool.open(source(), target(port))).rejects.toMatchObject({ status: 429, code: HBONE_CODES.peerStreamLimit });
    expect(limiter.peerUsage('127.0.0.1').streams).toBe(5);
  });

  it('refuses a pod\'s streams beyond its cap, from all peers together', async () => {
    const { port, limiter } = await serve({ maxStreamsPerPod: 2 });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    await pool.open(source(), target(port));
    await pool.open(source(), target(port));
    const err = await pool.open(source(), target(port)).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 429, code: HBONE_CODES.podStreamLimit });
    expect(limiter.refused().pod_streams).toBe(1);
  });

  it('answers a request that is not a CONNECT with 405 and a code only', async () => {
    const { port } = await serve({});
    const s = tls.connect({ host: '127.0.0.1', port, cert: clientCert.chain.join(''), key: clientCert.key.export({ type: 'pkcs8', format: 'pem' }) as string, ca: manager.trustBundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => s });
    cleanups.push(() => session.destroy());
    const headers = await new Promise<http2.IncomingHttpHeaders>((resolve, reject) => {
      const req = session.request({ ':method': 'GET', ':path': '/' });
      req.once('response', resolve);
      req.once('error', reject);
    });
    expect(headers[':status']).toBe(405);
    expect(headers['ambit-code']).toBe('bad_request');
    expect(headers['ambit-error']).toBeUndefined();
  });

  it('spreads streams over more connections when one reaches the server\'s per-connection cap', async () => {
    const { port, hbone } = await serve({ maxStreamsPerConnection: 2 });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    const streams = await Promise.all([1, 2, 3, 4, 5].map(() => pool.open(source(), target(port))));
    expect(streams.every((s) => !s.closed)).toBe(true);
    expect(pool.stats.connections).toBe(3);
    expect(hbone.usage()).toEqual({ connections: 3, streams: 5 });
  });

  it('holds a flood from a peer that never reads to its streams\' windows, however many connections it opens', async () => {
    const limits = { maxStreamsPerPeer: 8, streamWindow: 64 * 1024, sessionWindow: 256 * 1024 };
    // The app never reads: whatever the peer sends stays in the server's buffers.
    const tunnels: http2.ServerHttp2Stream[] = [];
    const { port, limiter } = await serve(limits, (stream) => {
      tunnels.push(stream);
      stream.respond({ ':status': 200 });
    });
    const held = () => tunnels.reduce((t, s) => t + s.readableLength + s.writableLength, 0);
    // 4 connections × 6 streams, 1 MiB offered on each: 24 MiB, if nothing bounded it.
    const key = clientCert.key.export({ type: 'pkcs8', format: 'pem' }) as string;
    const codes: (string | undefined)[] = [];
    for (let c = 0; c < 4; c++) {
      const s = tls.connect({ host: '127.0.0.1', port, cert: clientCert.chain.join(''), key, ca: manager.trustBundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
      const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => s });
      session.on('error', () => undefined);
      cleanups.push(() => session.destroy());
      for (let i = 0; i < 6; i++) {
        const req = session.request({ ':method': 'CONNECT', ':authority': '10.0.0.9:80' }, { endStream: false });
        req.on('error', () => undefined);
        req.once('response', (h) => codes.push(h['ambit-code'] as string | undefined ?? String(h[':status'])));
        // The peer does not read what comes back either.
        req.pause();
        req.write(Buffer.alloc(1024 * 1024, 1));
      }
    }
    await expect.poll(() => codes.length, { timeout: 10_000 }).toBe(24);
    // Wait until the flood stops making progress: the windows are full.
    let last = -1;
    await expect.poll(() => {
      const now = held();
      const moved = now !== last;
      last = now;
      return moved;
    }, { timeout: 10_000, interval: 200 }).toBe(false);
    expect(codes.filter((c) => c === '200').length).toBe(8);
    expect(codes.filter((c) => c === 'peer_stream_limit').length).toBe(16);
    // Each admitted stream holds at most its window (and what the peer had in flight when it opened).
    expect(last).toBeGreaterThan(0);
    expect(last).toBeLessThanOrEqual(limits.maxStreamsPerPeer * limits.streamWindow);
    expect(limiter.refused().peer_streams).toBe(16);
  });

  it('drops streams reset before they are answered without a tunnel, and closes a connection that floods them', async () => {
    let tunnels = 0;
    const { port, limiter, hbone } = await serve({}, (stream) => {
      tunnels++;
      stream.respond({ ':status': 200 });
    });
    const s = tls.connect({ host: '127.0.0.1', port, cert: clientCert.chain.join(''), key: clientCert.key.export({ type: 'pkcs8', format: 'pem' }) as string, ca: manager.trustBundle, ALPNProtocols: ['h2'], checkServerIdentity: () => undefined });
    const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => s });
    session.on('error', () => undefined);
    cleanups.push(() => session.destroy());
    await new Promise((r) => session.once('remoteSettings', r));
    // HEADERS then RST_STREAM, 50 streams per write (within the server's 100 per connection), for
    // at most 10 writes: what a rapid-reset attack sends.
    for (let round = 0; round < 10 && !session.closed && !session.destroyed; round++) {
      for (let i = 0; i < 50; i++) {
        const req = session.request({ ':method': 'CONNECT', ':authority': '10.0.0.9:80' }, { endStream: false });
        req.on('error', () => undefined);
        req.close(http2.constants.NGHTTP2_CANCEL);
      }
      await new Promise((r) => setImmediate(r));
    }
    await expect.poll(() => limiter.refused().rapid_reset, { timeout: 5000 }).toBe(1);
    await expect.poll(() => hbone.usage().connections, { timeout: 5000 }).toBe(0);
    expect(limiter.usage()).toMatchObject({ connections: 0, streams: 0 });
    expect(tunnels).toBeLessThan(50);
  });

  it('exports the refusals by reason and the open connections and streams as metrics', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    const limiter = new HboneLimiter({ limits: { maxStreamsPerPeer: 1 } });
    limiter.registerMetrics(metrics);
    const { port } = await serve({}, accept, { limiter });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    await pool.open(source(), target(port));
    for (let i = 0; i < 3; i++) await expect(pool.open(source(), target(port))).rejects.toMatchObject({ status: 429 });
    const text = await metrics.text();
    expect(text).toContain('ambit_hbone_refused_total{reason="peer_streams"} 3');
    expect(text).toContain('ambit_hbone_refused_total{reason="handshake_timeout"} 0');
    expect(text).toContain('ambit_hbone_server_connections 1');
    expect(text).toContain('ambit_hbone_server_streams 1');
  });

  it('logs a flood of refusals at the bounded rate, with the detail the peer does not get', async () => {
    const { log, lines } = capturedLog();
    const { port } = await serve({ maxStreamsPerPeer: 1, logLinesPerInterval: 2, logIntervalMs: 60_000 }, accept, { log });
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    await pool.open(source(), target(port));
    for (let i = 0; i < 20; i++) await expect(pool.open(source(), target(port, `10.0.0.9:${100 + i}`))).rejects.toMatchObject({ status: 429 });
    const refusals = lines.filter((l) => l.msg === 'HBONE refused');
    expect(refusals.length).toBe(2);
    expect(refusals[0]).toMatchObject({ reason: 'peer_streams', peer: '127.0.0.1', pod: 'shop/payment-1', limit: 1, authority: '10.0.0.9:100' });
  });
});
