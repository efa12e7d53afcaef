/**
 * The waypoint proxy against hostile tunnels, on loopback with real mTLS HBONE on both sides (as
 * waypoint-proxy.test.ts builds it): protocol detection bounded in bytes and time (empty lines
 * forever, a method that never ends, silence), the HTTP/1.1 parser's limits (a 1 MB request
 * line, too many headers, headers that never end), h2c's header and stream limits, and L4
 * authorization answered at CONNECT time with a stable code, the policy named only in the log.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConfigObject } from '../../src/config/model.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { HboneError, HbonePool } from '../../src/hbone/hbone.js';
import { L7Authorizer } from '../../src/waypoint/authz.js';
import { MAX_HEADERS, MAX_LEADING_BLANK_BYTES } from '../../src/waypoint/detect.js';
import { byteStream, WaypointProxy, type RequestRecord, type TunnelRefusal } from '../../src/waypoint/proxy.js';
import { Router } from '../../src/waypoint/routing.js';
import {
  CLIENT, listener, loopbackSocket, meshCertificates, reviewsService, reviewsWorkload, standInAgent, WAYPOINT, waypointTunnel,
} from './helpers/waypoint-rig.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-wph-'));
const LEGACY = 'spiffe://cluster.local/ns/legacy/sa/batch';
const VIP = '10.96.7.8';
const ENDPOINT_IP = '127.0.0.3';
/** Short bounds, so that the tests see them fire. */
const DETECT_MS = 600;
const HEADERS_MS = 1_000;

let manager: CertManager;
let proxy: WaypointProxy;
let waypointPort = 0;
const closers: (() => unknown)[] = [];
const records: RequestRecord[] = [];
const refusals: TunnelRefusal[] = [];
const logLines: Record<string, unknown>[] = [];
const clientPool = new HbonePool();
const apps = new Map<number, number>();

const service = reviewsService(VIP, [
  { name: 'http', port: 80, targetPort: 9080, protocol: 'TCP' },
  { name: 'h2c', port: 81, targetPort: 9081, protocol: 'TCP' },
  { name: 'tcp', port: 7000, targetPort: 7000, protocol: 'TCP' },
]);
const workload = reviewsWorkload(ENDPOINT_IP);
const listen = listener(closers);

const policy = (name: string, spec: Record<string, unknown>): ConfigObject =>
  ({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name, spec: { targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], ...spec } });

function setConfig(policies: ConfigObject[] = []): void {
  proxy.update({ version: String(Date.now()), router: new Router([], [service]), services: [service], workloads: new Map([['w1', workload]]), authorizer: new L7Authorizer(policies) });
}

function tunnel(port: number, identity = CLIENT): Promise<http2.ClientHttp2Stream> {
  return waypointTunnel(clientPool, manager, waypointPort, `${VIP}:${port}`, identity);
}

/** What the waypoint sends back on a tunnel until it ends: the bytes, how it ended, and when. */
interface Ending { text: string; ended: boolean; rstCode: number; ms: number }
function ending(stream: http2.ClientHttp2Stream, started = Date.now()): Promise<Ending> {
  return new Promise((resolve) => {
    let text = '';
    let ended = false;
    stream.on('data', (c: Buffer) => { text += c.toString('latin1'); });
    // The waypoint's side ended: the client ends its own, so that the stream closes.
    stream.on('end', () => { ended = true; stream.end(); });
    stream.on('error', () => undefined);
    stream.on('close', () => resolve({ text, ended, rstCode: stream.rstCode ?? 0, ms: Date.now() - started }));
  });
}

/** One HTTP/1.1 request written by hand into a new tunnel to port 80; the waypoint's answer. */
async function rawRequest(bytes: string | Buffer): Promise<Ending> {
  const stream = await tunnel(80);
  const done = ending(stream);
  stream.write(bytes);
  return done;
}

beforeAll(async () => {
  manager = await meshCertificates(dir);
  const h1 = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end(`h1 ${req.method} ${req.url} headers=${req.rawHeaders.length / 2}`));
  });
  apps.set(9080, await listen(h1));
  const h2app = http2.createServer((req, res) => res.end(`h2 ${req.url}`));
  apps.set(9081, await listen(h2app));
  apps.set(7000, await listen(createServer((s) => s.pipe(s))));
  await standInAgent(manager, apps, ENDPOINT_IP, closers);
  const log = pino({ level: 'info', base: undefined }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });
  proxy = new WaypointProxy({
    identity: WAYPOINT, certificate: () => manager.acquire(WAYPOINT), roots: () => manager.trustBundle,
    socket: loopbackSocket, log, detectTimeoutMs: DETECT_MS, headersTimeoutMs: HEADERS_MS,
  });
  proxy.onRequest = (r) => records.push({ ...r });
  proxy.onTunnelRefused = (r) => refusals.push(r);
  waypointPort = await listen(createServer((s) => void proxy.handle(s)));
});

beforeEach(() => setConfig());

afterAll(async () => {
  // The temp dir goes even when a close fails or hangs past the hook's timeout.
  rmSync(dir, { recursive: true, force: true });
  clientPool.close();
  await proxy?.close();
  for (const c of closers.reverse()) await c();
  manager?.close();
});

describe('protocol detection is bounded in bytes and time', () => {
  it('answers 400 to empty lines forever, having read no more than the bound, and stops reading', async () => {
    const stream = await tunnel(80);
    const done = ending(stream);
    // Empty lines as fast as the tunnel takes them, up to 16 MB (4 times the stream's window):
    // a waypoint that kept reading would take them all.
    const chunk = Buffer.from('\r\n'.repeat(32 * 1024));
    let sent = 0;
    let closed = false;
    void done.then(() => { closed = true; });
    while (!closed && sent < 16 * 1024 * 1024) {
      if (!stream.write(chunk)) await new Promise((r) => { stream.once('drain', r); stream.once('close', r); });
      sent += chunk.length;
    }
    const end = await done;
    expect(end.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(end.text).toContain(`more than ${MAX_LEADING_BLANK_BYTES} bytes of empty lines before the request line`);
    expect(end.ended).toBe(true);
    expect(closed).toBe(true);
    expect(sent).toBeLessThan(16 * 1024 * 1024);
    expect(logLines.some((l) => l.msg === 'bad request at protocol detection: 400')).toBe(true);
  });

  it('takes empty lines up to the bound before a request line, and answers 400 at once past it, not at the timeout', async () => {
    const blank = '\r\n'.repeat(MAX_LEADING_BLANK_BYTES / 2);
    const ok = await rawRequest(`${blank}GET /fine HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n`);
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(ok.text).toContain('h1 GET /fine');
    const bad = await rawRequest(`${blank}\r\n`);
    expect(bad.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(bad.ms).toBeLessThan(DETECT_MS);
  });

  it('closes a silent tunnel after the detection timeout', async () => {
    const started = Date.now();
    const stream = await tunnel(80);
    const end = await ending(stream, started);
    expect(end).toMatchObject({ text: '', ended: true, rstCode: http2.constants.NGHTTP2_NO_ERROR });
    expect(end.ms).toBeGreaterThanOrEqual(DETECT_MS - 50);
    expect(end.ms).toBeLessThan(DETECT_MS + 2_000);
    expect(logLines.some((l) => l.msg === 'protocol detection timed out: no bytes, tunnel closed')).toBe(true);
  });

  it('answers 408 to a method that never ends, after the detection timeout', async () => {
    const end = await rawRequest('GET');
    expect(end.text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    expect(end.ms).toBeGreaterThanOrEqual(DETECT_MS - 50);
    expect(end.ms).toBeLessThan(DETECT_MS + 2_000);
  });

  it('survives a tunnel its peer resets during detection, and serves the next one', async () => {
    for (const code of [http2.constants.NGHTTP2_INTERNAL_ERROR, http2.constants.NGHTTP2_PROTOCOL_ERROR]) {
      const stream = await tunnel(80);
      stream.write('GE');
      await new Promise((r) => { stream.on('error', () => undefined); stream.once('close', r); stream.close(code); });
    }
    const ok = await rawRequest('GET /after HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n');
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
  });

  it('still passes other TCP through, decided on its first bytes', async () => {
    const stream = await tunnel(7000);
    const got = new Promise<string>((resolve) => {
      let b = '';
      stream.on('data', (c: Buffer) => { b += c.toString(); if (b.length >= 9) resolve(b); });
    });
    stream.write('\r\nhello, ');
    stream.write('x');
    expect(await got).toBe('\r\nhello, x');
    stream.destroy();
  });
});

describe('the HTTP/1.1 parser is bounded', () => {
  it('answers 431 to a 1 MB request line', async () => {
    const end = await rawRequest(`GET /${'a'.repeat(1024 * 1024)} HTTP/1.1\r\nhost: reviews\r\n\r\n`);
    expect(end.text).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    expect(end.text).toContain('request line and headers over 61440 bytes');
  });

  it(`takes ${MAX_HEADERS} header fields and answers 431 to one more, before policy and routing see the request`, async () => {
    const headers = (n: number) => Array.from({ length: n - 2 }, (_, i) => `x-h${i}: v\r\n`).join('');
    const ok = await rawRequest(`GET /many HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n${headers(MAX_HEADERS)}\r\n`);
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(ok.text).toContain('h1 GET /many');
    const over = await rawRequest(`GET /many HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n${headers(MAX_HEADERS + 1)}\r\n`);
    expect(over.text).toMatch(/^HTTP\/1\.1 431 /);
    expect(over.text).toContain(`more than ${MAX_HEADERS} header fields`);
    expect(records.at(-1)).toMatchObject({ path: '/many', status: 431 });
  });

  it('answers 408 to headers that never end', async () => {
    const end = await rawRequest('GET /slow HTTP/1.1\r\nhost: reviews\r\nx-a: 1\r\n');
    expect(end.text).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    // headersTimeout, checked every second.
    expect(end.ms).toBeGreaterThanOrEqual(HEADERS_MS - 50);
    expect(end.ms).toBeLessThan(HEADERS_MS + 3_000);
  });

  it('answers 400 to a malformed request and closes the tunnel', async () => {
    const end = await rawRequest('GET / HTTP/1.1\r\nhost reviews\r\n\r\n');
    expect(end.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(end.ended).toBe(true);
  });
});

describe('h2c sessions are bounded per tunnel', () => {
  it(`announces ${100} concurrent streams and resets a stream with more than ${MAX_HEADERS} header fields`, async () => {
    const stream = await tunnel(81);
    const session = http2.connect('http://reviews.shop', { createConnection: () => byteStream(stream) as unknown as Socket });
    closers.push(() => session.destroy());
    await new Promise((r) => session.once('remoteSettings', r));
    expect(session.remoteSettings.maxConcurrentStreams).toBe(100);
    expect(session.remoteSettings.maxHeaderListSize).toBe(60 * 1024);
    const call = (n: number) => new Promise<{ status?: number; rstCode?: number }>((resolve) => {
      const extra: Record<string, string> = {};
      for (let i = 0; i < n; i++) extra[`x-h${i}`] = 'v';
      const s = session.request({ ':path': '/h2', ...extra });
      let status: number | undefined;
      s.on('response', (h) => { status = Number(h[':status']); });
      s.on('error', () => undefined);
      s.resume();
      s.on('close', () => resolve({ ...(status ? { status } : {}), rstCode: s.rstCode }));
      s.end();
    });
    expect((await call(MAX_HEADERS + 1)).rstCode).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    // The session lives on: a request within the limits on the same tunnel is served.
    expect(await call(10)).toEqual({ status: 200, rstCode: 0 });
    await new Promise<void>((r) => session.close(r));
  });
});

describe('L4 authorization is decided before the CONNECT is answered', () => {
  it('refuses at CONNECT a principal an L4 DENY names: 401 with code denied, the policy in the log only', async () => {
    setConfig([policy('no-legacy', { action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/legacy/sa/batch'] } }] }] })]);
    const refused = await tunnel(80, LEGACY).then(() => undefined, (err: unknown) => err);
    expect(refused).toBeInstanceOf(HboneError);
    expect(refused).toMatchObject({ status: 401, kind: 'refused', code: 'denied' });
    expect((refused as Error).message).not.toContain('no-legacy');
    expect(refusals.at(-1)).toMatchObject({ status: 401, policy: 'shop/no-legacy', sourceIdentity: LEGACY, reason: 'denied by DENY policy shop/no-legacy' });
    expect(logLines.some((l) => l.msg === 'tunnel refused by authorization policy' && l.policy === 'shop/no-legacy')).toBe(true);
    // Another principal's tunnel is answered 200.
    const ok = await rawRequest('GET /ok HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n');
    expect(ok.text).toMatch(/^HTTP\/1\.1 200 /);
  });

  it('refuses at CONNECT when no ALLOW policy could match the peer, and leaves L7 rules to the requests', async () => {
    setConfig([
      policy('legacy-only', { rules: [{ from: [{ source: { namespaces: ['legacy'] } }] }] }),
      policy('reads', { rules: [{ from: [{ source: { namespaces: ['legacy'] } }], to: [{ operation: { methods: ['GET'] } }] }] }),
    ]);
    await expect(tunnel(80)).rejects.toMatchObject({ status: 401 });
    expect(refusals.at(-1)).toMatchObject({ sourceIdentity: CLIENT, reason: expect.stringMatching(/^no ALLOW policy matched \(2 apply/) as unknown });
    setConfig([policy('reads', { rules: [{ to: [{ operation: { methods: ['GET'] } }] }] })]);
    expect((await rawRequest('GET /r HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n')).text).toMatch(/^HTTP\/1\.1 200 /);
    expect((await rawRequest('POST /r HTTP/1.1\r\nhost: reviews\r\ncontent-length: 0\r\nconnection: close\r\n\r\n')).text).toMatch(/^HTTP\/1\.1 403 /);
  });

  it('passes TCP through when no policy can match the peer, and refuses it when a DENY could match on HTTP attributes', async () => {
    /** What came back before the stream closed, and its reset code: the echo, or the waypoint's reset. */
    const echo = async () => {
      const stream = await tunnel(7000);
      return new Promise<{ text: string; rstCode: number }>((resolve) => {
        let text = '';
        stream.on('data', (c: Buffer) => {
          text += c.toString('latin1');
          if (text.length === 6) stream.close();
        });
        stream.on('error', () => undefined);
        stream.on('close', () => resolve({ text, rstCode: stream.rstCode ?? 0 }));
        stream.write('\x00\x01ping');
      });
    };
    setConfig([policy('no-legacy', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['legacy'] } }] }] })]);
    expect((await echo()).text).toBe('\x00\x01ping');
    setConfig([policy('no-admin', { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] })]);
    const refused = await echo();
    expect(refused.text).toBe('');
    expect(refused.rstCode).toBe(http2.constants.NGHTTP2_CONNECT_ERROR);
    expect(logLines.some((l) => l.msg === 'TCP passthrough denied' && l.policy === 'shop/no-admin')).toBe(true);
  });
});
