/**
 * The node agent's local endpoints (admin 15000, metrics 15020, health 15021, the control
 * socket) and the hardened server under them, fed raw hostile bytes: every malformed target,
 * oversize header and slow client gets its 4xx or a timeout, never a crash; state changes only
 * on the 0600 unix socket. An unexpected error in a service process: test/integration/unexpected-error.test.ts.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveControl } from '../../src/node/app.js';
import { AdminServer } from '../../src/node/admin.js';
import { serveTelemetry } from '../../src/node/telemetry-http.js';
import { MeshMetrics } from '../../src/telemetry/metrics.js';
import { HttpError, listenTcp, listenUnix, localServer, parseTarget } from '../../src/util/local-http.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-endpoints-'));

/** A log that the tests read back: one parsed JSON object per line. */
function capturingLog() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug', base: undefined }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } });
  return { log, lines };
}

interface Raw { status: number; head: string; body: string; ms: number }

/** Writes `bytes` to a TCP port or unix socket and reads until the server closes (bounded: 15 s). */
function raw(to: number | string, bytes: string | Buffer, opts: { end?: boolean } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const socket = typeof to === 'number' ? connect(to, '127.0.0.1') : connect(to);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no close within 15 s; got ${Buffer.concat(chunks).toString().slice(0, 200)}`)); }, 15_000);
    socket.on('data', (c: Buffer) => chunks.push(c));
    // The server may close while a large request is still being written: what it answered counts.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      const [head = '', body = ''] = text.split('\r\n\r\n');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, body, ms: Date.now() - t0 });
    });
    socket.write(bytes);
    if (opts.end) socket.end();
  });
}

const get = (target: string, extra = '') => `GET ${target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n${extra}\r\n`;
const json = (r: Raw) => JSON.parse(r.body) as { error: string };

describe('request targets are parsed without throwing', () => {
  it.each([
    ['//[', 400, /must not start with "\/\/"/],
    ['/v1/pods/%E0', 400, /"%E0" is not percent-encoded UTF-8/],
    ['/a%zz', 400, /"%" not followed by two hex digits/],
    ['http://evil.example/healthz', 400, /must be a path starting with "\/"/],
    ['*', 400, /must be a path/],
    ['/a[b]', 400, /"\[", which a path cannot hold/],
    ['/a?x={"y"}', 400, /which a query cannot hold/],
    [`/${'a'.repeat(5000)}`, 414, /over 4096/],
  ])('%.40s is refused with %i', (target, status, message) => {
    const r = parseTarget(target);
    expect(r).toBeInstanceOf(HttpError);
    expect((r as HttpError).status).toBe(status);
    expect((r as HttpError).message).toMatch(message);
  });

  it('decodes each path segment on its own and the query', () => {
    expect(parseTarget('/v1/pods/a%2Fb%20c?timeoutMs=5&x=%E0')).toMatchObject({ path: '/v1/pods/a%2Fb%20c', segments: ['v1', 'pods', 'a/b c'] });
    expect((parseTarget('/x?x=%E0') as { query: URLSearchParams }).query.get('x')).toBe('\uFFFD');
  });
});

describe('the admin endpoint (15000)', () => {
  let admin: AdminServer;
  const { log } = capturingLog();
  log.level = 'info';
  beforeAll(async () => {
    admin = await AdminServer.start({ logger: log, changesAt: '/var/run/ambit/agent.sock' }, '127.0.0.1', 0);
  });
  afterAll(() => admin.close());

  it('answers GET //[ with 400 and keeps serving', async () => {
    const r = await raw(admin.port, get('//['));
    expect(r.status).toBe(400);
    expect(json(r).error).toContain('request target must not start with "//", got "//["');
    expect((await raw(admin.port, get('/healthz'))).status).toBe(200);
  });

  it('answers a 1 MB header with 431', async () => {
    const r = await raw(admin.port, get('/healthz', `X-Big: ${'a'.repeat(1 << 20)}\r\n`));
    expect(r.status).toBe(431);
    expect(json(r).error).toBe('request line and headers over 16384 bytes');
    expect((await raw(admin.port, get('/healthz'))).status).toBe(200);
  });

  it('answers absolute-form, CONNECT and bytes that are not HTTP with their 4xx', async () => {
    expect((await raw(admin.port, get('http://127.0.0.1:15000/logging'))).status).toBe(400);
    const c = await raw(admin.port, 'CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\n\r\n');
    expect(c.status).toBe(405);
    expect(c.body).toContain('CONNECT is not served here');
    const junk = await raw(admin.port, '\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n');
    expect(junk.status).toBe(400);
    expect(json(junk).error).toMatch(/^malformed HTTP request \(HPE_/);
  });

  it('refuses POST /logging over TCP and names where it is served', async () => {
    const r = await raw(admin.port, `POST /logging?level=debug HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    expect(r.status).toBe(403);
    expect(json(r).error).toBe('POST /logging changes the agent and is not served on TCP, which any process on the node can reach; send it to the agent\'s control socket /var/run/ambit/agent.sock, which only root can open');
    expect(log.level).toBe('info');
  });
});

describe('the control socket', () => {
  const path = join(dir, 'agent.sock');
  const { log } = capturingLog();
  log.level = 'info';
  const asked: string[] = [];
  let control: { close(): void };
  beforeAll(async () => {
    writeFileSync(path, 'a stale file from an agent that died');
    const agent = { version: 'v1', podReadiness: (uid: string) => { asked.push(uid); return Promise.resolve({ uid, enrolled: true, version: 'v1' }); } };
    control = await serveControl(agent, path, { logger: log }, log);
  });
  afterAll(() => control.close());

  it('is a socket of mode 0600 that replaced the stale file, with nothing left beside it', () => {
    const st = statSync(path);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).filter((f) => f.startsWith('.ambit-sock-'))).toEqual([]);
  });

  it('answers /v1/pods/%E0 with 400 and keeps serving', async () => {
    const r = await raw(path, get('/v1/pods/%E0'));
    expect(r.status).toBe(400);
    expect(json(r).error).toBe('request path segment "%E0" is not percent-encoded UTF-8');
    const ok = await raw(path, get('/v1/pods/uid%2D1?timeoutMs=10'));
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toEqual({ uid: 'uid-1', enrolled: true, version: 'v1' });
    expect(asked).toEqual(['uid-1']);
  });

  it('refuses a timeout that is not a number', async () => {
    const r = await raw(path, get('/v1/pods/u?timeoutMs=-1'));
    expect(r.status).toBe(400);
    expect(json(r).error).toBe('timeoutMs must be a number of milliseconds, got "-1"');
  });

  it('changes the log level on POST /logging, and only to a known level', async () => {
    const bad = await raw(path, `POST /logging?level=loud HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    expect(bad.status).toBe(400);
    expect(json(bad).error).toMatch(/^level must be one of fatal, error, warn, info, debug, trace, silent, got "loud"$/);
    const r = await raw(path, `POST /logging?level=debug HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    expect(r.status).toBe(200);
    expect(log.level).toBe('debug');
  });
});

describe('the hardened server', () => {
  const { log, lines } = capturingLog();
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = localServer({ name: 'test', log, json: true, limits: { headersTimeoutMs: 600, requestTimeoutMs: 1000 } }, async (req, res) => {
      if (req.path === '/sync-bug') JSON.parse('{');
      if (req.path === '/async-bug') await Promise.reject(new TypeError('cannot read properties of undefined'));
      if (req.path === '/refused') throw new HttpError(409, 'already there');
      if (req.path === '/body') for await (const chunk of req.raw) void chunk;
      res.end('ok\n');
    });
    await listenTcp(server, 0, '127.0.0.1');
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }));

  it('closes a client that never finishes its headers within the headers timeout, with 408', async () => {
    const r = await raw(port, 'GET /slow HTTP/1.1\r\nHost: localhost\r\nX-Drip: a');
    expect(r.status).toBe(408);
    expect(r.ms).toBeGreaterThanOrEqual(550);
    expect(r.ms).toBeLessThan(3000);
    expect((await raw(port, get('/'))).status).toBe(200);
  });

  it('closes a client that sends its headers but never its body within the request timeout', async () => {
    const r = await raw(port, 'POST /body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nab');
    expect(r.status).toBe(408);
    expect(r.ms).toBeGreaterThanOrEqual(950);
    expect(r.ms).toBeLessThan(3000);
  });

  it('answers a handler\'s throw or rejection with 500, logs it with the request and the stack, and keeps serving', async () => {
    const sync = await raw(port, get('/sync-bug'));
    expect(sync.status).toBe(500);
    expect(json(sync).error).toMatch(/^internal error: /);
    const async = await raw(port, get('/async-bug'));
    expect(async.status).toBe(500);
    expect(json(async).error).toBe('internal error: cannot read properties of undefined');
    const logged = lines.filter((l) => l.msg === 'request handler failed');
    expect(logged).toHaveLength(2);
    expect(logged[1]).toMatchObject({ level: 50, endpoint: 'test', method: 'GET', path: '/async-bug', remote: '127.0.0.1' });
    expect(String(logged[1]!.err)).toMatch(/^TypeError: cannot read properties of undefined\n\s+at /);
    expect((await raw(port, get('/'))).status).toBe(200);
  });

  it('logs a failed accept (out of file descriptors) and keeps serving', async () => {
    server.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' }));
    expect(lines.find((l) => l.msg === 'accepting a connection failed')).toMatchObject({ level: 40, endpoint: 'test', code: 'EMFILE' });
    expect((await raw(port, get('/'))).status).toBe(200);
  });

  it('answers an HttpError with its status', async () => {
    const r = await raw(port, get('/refused'));
    expect(r.status).toBe(409);
    expect(json(r).error).toBe('already there');
  });
});

describe('the node agent\'s telemetry listeners (15020, 15021)', () => {
  let servers: Server[];
  let ports: number[];
  const metrics = new MeshMetrics();
  beforeAll(async () => {
    servers = await serveTelemetry({ metrics, ready: true }, '127.0.0.1', 0, 0, () => Promise.reject(new Error('checks could not run')));
    ports = servers.map((s) => (s.address() as AddressInfo).port);
  });
  afterAll(() => Promise.all(servers.map((s) => new Promise((r) => { s.closeAllConnections(); s.close(r); }))));

  it('answer malformed targets with 400 and keep serving', async () => {
    for (const p of ports) {
      const r = await raw(p, get('//['));
      expect(r.status).toBe(400);
      expect(r.body).toContain('request target must not start with "//"');
    }
    expect((await raw(ports[0]!, get('/metrics'))).status).toBe(200);
    expect((await raw(ports[1]!, get('/healthz/ready'))).status).toBe(200);
  });

  it('answer a failing node check with 500', async () => {
    const r = await raw(ports[1]!, get('/healthz/check'));
    expect(r.status).toBe(500);
    expect(r.body).toBe('internal error: checks could not run\n');
  });
});

describe('unix sockets', () => {
  it('remove a staging directory left by a process killed while binding, and leave one in use', async () => {
    const stale = join(dir, '.ambit-sock-old123');
    const fresh = join(dir, '.ambit-sock-new123');
    for (const d of [stale, fresh]) mkdirSync(d);
    utimesSync(stale, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
    const server = localServer({ name: 'z', log: pino({ level: 'silent' }) }, (_req, res) => void res.end('ok\n'));
    await listenUnix(server, join(dir, 'z.sock'));
    await new Promise((r) => server.close(r));
    expect(readdirSync(dir).filter((f) => f.startsWith('.ambit-sock-'))).toEqual(['.ambit-sock-new123']);
    rmSync(fresh, { recursive: true });
  });

  it('are never wider than 0600, and a path too long to bind is refused by name', async () => {
    const path = join(dir, 'x.sock');
    const server = localServer({ name: 'x', log: pino({ level: 'silent' }) }, (_req, res) => void res.end('ok\n'));
    await listenUnix(server, path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    await new Promise((r) => server.close(r));
    const long = join(dir, 'l'.repeat(100));
    const other = localServer({ name: 'y', log: pino({ level: 'silent' }) }, (_req, res) => void res.end('ok\n'));
    await expect(listenUnix(other, long)).rejects.toThrow(/^socket path .* is too long: a unix socket path holds 107 bytes/);
    expect(readdirSync(dir).filter((f) => f.startsWith('.ambit-sock-'))).toEqual([]);
  });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));
