/**
 * The waypoint proxy on loopback, with real mTLS HBONE on both sides: a client tunnels to the
 * waypoint with a service's VIP:port as authority and speaks HTTP/1.1, h2c or gRPC (framed by
 * hand, so every byte is known) inside; the waypoint routes and tunnels on to a stand-in
 * destination node agent (an HBONE server on 127.0.0.2:15008) in front of plain app servers.
 * Covers protocol detection, gRPC trailers and status codes, streaming in both directions,
 * retries of requests with bodies, local gRPC answers, and TCP passthrough.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigObject } from '../../src/config/model.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { HbonePool } from '../../src/hbone/hbone.js';
import { byteStream, WaypointProxy, type RequestRecord } from '../../src/waypoint/proxy.js';
import { Sampler, Tracer, type ReadableSpan } from '../../src/telemetry/tracing.js';
import { L7Authorizer } from '../../src/waypoint/authz.js';
import { Router } from '../../src/waypoint/routing.js';
import {
  CLIENT, listener, loopbackSocket, meshCertificates, reviewsService, reviewsWorkload, standInAgent, WAYPOINT, waypointTunnel,
} from './helpers/waypoint-rig.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-wpp-'));
const VIP = '10.96.7.7';
/** The stand-in destination node agent listens on 127.0.0.2:15008 (HBONE's port), the endpoint's address. */
const ENDPOINT_IP = '127.0.0.2';

let manager: CertManager;
let proxy: WaypointProxy;
let waypointPort = 0;
const closers: (() => unknown)[] = [];
const records: RequestRecord[] = [];
const clientPool = new HbonePool();
/** App ports on 127.0.0.1 by the endpoint's target port. */
const apps = new Map<number, number>();
/** Connections the HTTP/1.1 app accepted. */
let h1Connections = 0;
/** Calls seen by the gRPC app, by key. */
const seen = new Map<string, number>();

const service = reviewsService(VIP, [
  { name: 'http', port: 80, targetPort: 9080, protocol: 'TCP' },
  { name: 'grpc', port: 50051, targetPort: 50051, protocol: 'TCP' },
  { name: 'tcp', port: 7000, targetPort: 7000, protocol: 'TCP' },
]);
const workload = reviewsWorkload(ENDPOINT_IP);
const listen = listener(closers);

/** gRPC's length-prefixed message framing. */
function frame(text: string): Buffer {
  const body = Buffer.from(text);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}
function unframe(buf: Buffer): string[] {
  const out: string[] = [];
  for (let i = 0; i + 5 <= buf.length;) {
    const n = buf.readUInt32BE(i + 1);
    out.push(buf.subarray(i + 5, i + 5 + n).toString());
    i += 5 + n;
  }
  return out;
}

/** Spans the proxy ended, as an exporter would get them. */
const spans: ReadableSpan[] = [];

function setConfig(l7: ConfigObject[] = [], policies: ConfigObject[] = []): void {
  proxy.update({
    version: String(Date.now()), router: new Router(l7, [service]), services: [service], workloads: new Map([['w1', workload]]),
    authorizer: new L7Authorizer(policies),
  });
}

/** One HTTP/1.1 request through the waypoint to port 80; the app's answer, with the trace context it received. */
async function h1Get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string; traceparent?: string }> {
  const stream = await tunnel(80);
  return new Promise((resolve, reject) => {
    const req = http.request({ method: 'GET', path, headers: { host: 'reviews', ...headers }, createConnection: () => byteStream(stream) as unknown as Socket }, (res) => {
      let b = '';
      res.on('data', (c: Buffer) => { b += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b, ...(res.headers['x-traceparent'] ? { traceparent: String(res.headers['x-traceparent']) } : {}) }));
    });
    req.on('error', reject);
    req.end();
  });
}

function tunnel(port: number): Promise<http2.ClientHttp2Stream> {
  return waypointTunnel(clientPool, manager, waypointPort, `${VIP}:${port}`, CLIENT, 'client');
}

/** An h2c session to the service's gRPC port, through the waypoint. */
async function h2c(): Promise<http2.ClientHttp2Session> {
  const stream = await tunnel(50051);
  const session = http2.connect(`http://reviews.shop:50051`, { createConnection: () => stream as unknown as Socket });
  closers.push(() => session.destroy());
  return session;
}

interface GrpcAnswer { status?: string; headers: http2.IncomingHttpHeaders; trailers: http2.IncomingHttpHeaders; messages: string[]; arrivals: number[] }

function grpcCall(session: http2.ClientHttp2Session, path: string, messages: string[], opts: { headers?: Record<string, string>; gapMs?: number } = {}): Promise<GrpcAnswer> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...opts.headers });
    const answer: GrpcAnswer = { headers: {}, trailers: {}, messages: [], arrivals: [] };
    const started = Date.now();
    stream.on('response', (h) => { answer.headers = h; });
    stream.on('trailers', (t) => { answer.trailers = t; });
    stream.on('data', (c: Buffer) => { answer.messages.push(...unframe(c)); answer.arrivals.push(Date.now() - started); });
    stream.on('end', () => {
      answer.status = String(answer.trailers['grpc-status'] ?? answer.headers['grpc-status']);
      resolve(answer);
    });
    stream.on('error', reject);
    void (async () => {
      for (const m of messages) {
        stream.write(frame(m));
        // Spaced on purpose: answers arriving between the messages show the call is streamed.
        if (opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
      }
      stream.end();
    })();
  });
}

beforeAll(async () => {
  manager = await meshCertificates(dir);

  // The apps: HTTP/1.1 on 9080, gRPC (h2c) on 50051, a line echo on 7000.
  const h1 = http.createServer((req, res) => {
    let n = 0;
    req.on('data', (c: Buffer) => { n += c.length; });
    req.on('end', () => {
      if (req.headers.traceparent) res.setHeader('x-traceparent', req.headers.traceparent);
      res.end(`h1 ${req.method} ${req.url} ${n} ${req.headers.host}`);
    });
  });
  h1.on('connection', () => { h1Connections++; });
  apps.set(9080, await listen(h1));
  const grpc = http2.createServer();
  grpc.on('stream', (stream, headers) => {
    const path = String(headers[':path']);
    if (path === '/test.Echo/Chat') return;
    const key = String(headers['x-key'] ?? '');
    seen.set(`${path}|${key}`, (seen.get(`${path}|${key}`) ?? 0) + 1);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      const inbound = unframe(Buffer.concat(chunks));
      if (path === '/test.Echo/Unary') {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'x-echo-count': String(inbound.length) }));
        stream.end(frame(`echo ${inbound.join(',')}`));
      } else if (path === '/test.Echo/Flaky' && seen.get(`${path}|${key}`) === 1) {
        // Trailers-only UNAVAILABLE on the first call of each key.
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '14', 'grpc-message': 'try again' }, { endStream: true });
      } else if (path === '/test.Echo/Flaky') {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
        stream.end(frame(`second ${inbound.join(',')}`));
      } else if (path === '/test.Echo/Denied') {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '7', 'grpc-message': 'not you' }, { endStream: true });
      } else {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true });
      }
    });
  });
  // Server streaming: answers as the request's messages arrive, one by one.
  grpc.on('stream', (stream, headers) => {
    if (headers[':path'] !== '/test.Echo/Chat') return;
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.on('data', (c: Buffer) => { for (const m of unframe(c)) stream.write(frame(`re ${m}`)); });
    stream.on('end', () => stream.end());
  });
  apps.set(50051, await listen(grpc));
  const echo = createServer((s) => s.pipe(s));
  apps.set(7000, await listen(echo));

  // The destination's node agent, reduced to its HBONE listener: authority ip:port → the app.
  await standInAgent(manager, apps, ENDPOINT_IP, closers);

  proxy = new WaypointProxy({
    tracer: new Tracer({ sampler: new Sampler(100), sink: { add: (span) => spans.push(span) } }),
    identity: WAYPOINT, certificate: () => manager.acquire(WAYPOINT), roots: () => manager.trustBundle,
    socket: loopbackSocket,
  });
  proxy.onRequest = (r) => records.push({ ...r });
  setConfig();
  waypointPort = await listen(createServer((s) => void proxy.handle(s)));
});

afterAll(async () => {
  clientPool.close();
  await proxy?.close();
  for (const c of closers.reverse()) await c();
  manager?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('waypoint proxy protocols', () => {
  it('serves HTTP/1.1 from the tunnel, body streamed to the app', async () => {
    const stream = await tunnel(80);
    const body = 'x'.repeat(100_000);
    const answer = await new Promise<string>((resolve, reject) => {
      const req = http.request({ method: 'POST', path: '/h1', headers: { host: 'reviews', 'content-length': body.length }, createConnection: () => byteStream(stream) as unknown as Socket }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => { b += c.toString(); });
        res.on('end', () => resolve(`${res.statusCode} ${b}`));
      });
      req.on('error', reject);
      req.end(body);
    });
    expect(answer).toBe('200 h1 POST /h1 100000 reviews');
    const r = records.at(-1)!;
    expect(r).toMatchObject({ protocol: 'HTTP/1.1', grpc: false, status: 200, bytesIn: 100_000 });
  });

  it('keeps upstream HTTP/1.1 connections alive and reuses them', async () => {
    const before = h1Connections;
    for (let i = 0; i < 5; i++) expect((await h1Get(`/seq${i}`)).status).toBe(200);
    expect(h1Connections - before).toBeLessThanOrEqual(1);
  });

  it('serves gRPC unary over h2c: messages, trailers and grpc-status through', async () => {
    const session = await h2c();
    const a = await grpcCall(session, '/test.Echo/Unary', ['one', 'two']);
    expect(a.headers[':status']).toBe(200);
    expect(a.messages).toEqual(['echo one,two']);
    expect(a.trailers['x-echo-count']).toBe('2');
    expect(a.status).toBe('0');
    const r = records.at(-1)!;
    // Its messages, each way: Istio's istio_request_messages_total and istio_response_messages_total.
    expect(r).toMatchObject({ protocol: 'HTTP/2', grpc: true, grpcStatus: '0', status: 200, path: '/test.Echo/Unary', requestMessages: 2, responseMessages: 1 });
  });

  it('passes a trailers-only gRPC error on', async () => {
    const session = await h2c();
    const a = await grpcCall(session, '/test.Echo/Denied', ['x']);
    expect(a.status).toBe('7');
    // Passed on as trailers: a client reads a status in headers only from a frame that ends the stream.
    expect(a.trailers['grpc-message']).toBe('not you');
    expect(records.at(-1)).toMatchObject({ grpcStatus: '7' });
  });

  it('streams both ways: each answer arrives before the client has finished sending', async () => {
    const session = await h2c();
    const a = await grpcCall(session, '/test.Echo/Chat', ['a', 'b', 'c', 'd'], { gapMs: 150 });
    expect(a.messages).toEqual(['re a', 're b', 're c', 're d']);
    expect(a.status).toBe('0');
    // Four sends 150 ms apart: the first answer comes long before the last send.
    expect(a.arrivals[0]).toBeLessThan(300);
    expect(a.arrivals.at(-1)! - a.arrivals[0]!).toBeGreaterThan(300);
  });

  it('many calls share one h2c session upstream, concurrently', async () => {
    const session = await h2c();
    const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => grpcCall(session, '/test.Echo/Unary', [`m${i}`])));
    expect(answers.map((a) => a.messages[0])).toEqual(Array.from({ length: 50 }, (_, i) => `echo m${i}`));
    expect(answers.every((a) => a.status === '0')).toBe(true);
  });

  it('retries a gRPC UNAVAILABLE (retryOn unavailable) with the request body sent again', async () => {
    setConfig([{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'reviews', spec: {
      hosts: ['reviews'], http: [{ route: [{ destination: { host: 'reviews' } }], retries: { attempts: 2, retryOn: 'unavailable' } }],
    } }]);
    try {
      const session = await h2c();
      const a = await grpcCall(session, '/test.Echo/Flaky', ['payload'], { headers: { 'x-key': 'k1' } });
      expect(a.status).toBe('0');
      expect(a.messages).toEqual(['second payload']);
      expect(seen.get('/test.Echo/Flaky|k1')).toBe(2);
      expect(records.at(-1)).toMatchObject({ attempts: 2, grpcStatus: '0' });
    } finally {
      setConfig();
    }
  });

  it('answers gRPC callers in gRPC: no route is UNIMPLEMENTED, a fault abort its grpc status', async () => {
    setConfig([{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'reviews', spec: {
      hosts: ['reviews'], http: [
        { match: [{ uri: { prefix: '/test.Echo/Unary' } }], route: [{ destination: { host: 'reviews' } }], fault: { abort: { grpcStatus: 'RESOURCE_EXHAUSTED', percentage: { value: 100 } } } },
        { match: [{ uri: { prefix: '/only-this' } }], route: [{ destination: { host: 'reviews' } }] },
      ],
    } }]);
    try {
      const session = await h2c();
      const aborted = await grpcCall(session, '/test.Echo/Unary', ['x']);
      expect(aborted.headers[':status']).toBe(200);
      expect(aborted.status).toBe('8');
      const none = await grpcCall(session, '/test.Echo/Other', ['x']);
      expect(none.headers[':status']).toBe(200);
      expect(none.status).toBe('12');
      expect(records.at(-1)).toMatchObject({ status: 404, flags: 'NR', grpcStatus: '12' });
    } finally {
      setConfig();
    }
  });

  it('denies by an AuthorizationPolicy bound to the service: 403 over HTTP, PERMISSION_DENIED over gRPC, on the normalized path', async () => {
    setConfig([], [{ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'no-admin', spec: {
      targetRefs: [{ kind: 'Service', group: '', name: 'reviews' }], action: 'DENY',
      rules: [{ to: [{ operation: { paths: ['/admin*', '/test.Echo/Flaky'] } }] }],
    } }]);
    try {
      expect(await h1Get('/admin/x')).toMatchObject({ status: 403, body: 'RBAC: access denied\n' });
      expect(await h1Get('/ok/../admin')).toMatchObject({ status: 403 });
      expect(records.at(-1)).toMatchObject({ path: '/admin', status: 403, authz: 'denied by DENY policy shop/no-admin' });
      // The app gets the path as it was checked.
      expect((await h1Get('/a/./b/../c?q=1')).body).toBe('h1 GET /a/c?q=1 0 reviews');
      const denied = await grpcCall(await h2c(), '/test.Echo/Flaky', ['x'], { headers: { 'x-key': 'denied' } });
      expect(denied.status).toBe('7');
      expect(seen.get('/test.Echo/Flaky|denied')).toBeUndefined();
    } finally {
      setConfig();
    }
  });

  it('continues the caller\'s trace: a server span per request, its context sent upstream', async () => {
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const a = await h1Get('/traced', { traceparent: `00-${traceId}-b7ad6b7169203331-01` });
    const span = spans.find((s) => s.context.traceId === traceId)!;
    expect(span).toBeDefined();
    expect(span.context.parentSpanId).toBe('b7ad6b7169203331');
    expect(span.kind).toBe('server');
    expect(span.name).toBe('reviews.shop.svc.cluster.local:80/*');
    expect(span.attributes.get('http.response.status_code')).toBe(200);
    // The app sees the waypoint's span as its parent.
    expect(a.traceparent).toBe(`00-${traceId}-${span.context.spanId}-01`);
    expect(records.at(-1)).toMatchObject({ traceId, spanId: span.context.spanId });
    // Without a caller's context, a new trace (sampled at 100% here).
    const b = await h1Get('/untraced');
    expect(b.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(b.traceparent!.slice(3, 35)).not.toBe(traceId);
  });

  it('passes other TCP through to an endpoint', async () => {
    const stream = await tunnel(7000);
    const got = await new Promise<string>((resolve, reject) => {
      let b = '';
      stream.on('data', (c: Buffer) => {
        b += c.toString();
        if (b.length >= 12) resolve(b);
      });
      stream.on('error', reject);
      stream.write(Buffer.from([0x16, 0x03, 0x01]));
      stream.write('hello, tcp');
    });
    expect(got.slice(3)).toBe('hello, tcp');
    stream.destroy();
  });
});
