/**
 * The waypoint proxy alone, in one process on loopback: how much CPU one HTTP/1.1 request costs
 * it, against a bare HBONE hop (the same client and app, the tunnel ending at a stand-in node
 * agent that pipes bytes to the app) measured in the same run. Real mTLS HBONE on both sides, as
 * test/unit/waypoint-proxy.test.ts builds it: client → waypoint (127.0.0.1) → stand-in node agent
 * (127.0.0.2:15008) → app. N keep-alive client connections each send requests one after the other.
 *
 *   npx tsx bench/waypoint-proxy.ts [--requests 20000] [--connections 4] [--protocol http1|h2c|grpc] [--cpu-prof DIR] [--no-report]
 *
 * --protocol h2c: the client speaks HTTP/2 with prior knowledge inside its tunnel, the app is an
 * h2c server, and the waypoint carries each request on the app's pooled h2c session; grpc: the
 * same with gRPC unary calls (one framed message each way, grpc-status in the trailers).
 *
 * Reports requests per second and process CPU (user + system) per request for both paths and
 * their ratio; the difference is what the waypoint adds. The waypoint reports every request as the
 * waypoint process does (Istio metrics, an access-log line to /dev/null, a tracer at 1 %
 * sampling); --no-report leaves the metrics and log out, to see what they cost. With --cpu-prof, a V8 CPU profile of
 * the waypoint run is written to DIR (open it in Chrome DevTools).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Session } from 'node:inspector/promises';
import { parseArgs } from 'node:util';
import type { Service, Workload } from '../src/config/model.js';
import { HbonePool, HboneServer } from '../src/hbone/hbone.js';
import { tcpSocketOf } from '../src/host/netns.js';
import { L7Authorizer } from '../src/waypoint/authz.js';
import pino from 'pino';
import { MeshMetrics, RequestMetrics } from '../src/telemetry/metrics.js';
import { createTracer } from '../src/telemetry/tracing.js';
import { byteStream, socketLike, WaypointProxy } from '../src/waypoint/proxy.js';
import { requestReporter } from '../src/waypoint/app.js';
import { Router } from '../src/waypoint/routing.js';
import { meshCertManager } from './lib.js';

const { values } = parseArgs({ options: { requests: { type: 'string', default: '20000' }, connections: { type: 'string', default: '4' }, protocol: { type: 'string', default: 'http1' }, 'cpu-prof': { type: 'string' }, 'no-report': { type: 'boolean', default: false } } });
const PROTOCOLS = ['http1', 'h2c', 'grpc'] as const;
type Protocol = (typeof PROTOCOLS)[number];
if (!(PROTOCOLS as readonly string[]).includes(String(values.protocol))) throw new Error(`--protocol must be one of ${PROTOCOLS.join(', ')}, got "${values.protocol}"`);
const PROTOCOL = values.protocol as Protocol;
const REQUESTS = Number(values.requests);
const CONNECTIONS = Number(values.connections);
if (!Number.isInteger(REQUESTS) || REQUESTS < 100) throw new Error(`--requests must be an integer ≥ 100, got "${values.requests}"`);
if (!Number.isInteger(CONNECTIONS) || CONNECTIONS < 1 || CONNECTIONS > 64) throw new Error(`--connections must be 1-64, got "${values.connections}"`);

const CLIENT = 'spiffe://cluster.local/ns/bench/sa/client';
const WAYPOINT = 'spiffe://cluster.local/ns/bench/sa/waypoint';
const APP = 'spiffe://cluster.local/ns/bench/sa/app';
const VIP = '10.96.9.9';
const AGENT_IP = '127.0.0.2';

const closers: (() => unknown)[] = [];
function listen(server: Server | http.Server, host: string, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject).listen(port, host, () => resolve((server.address() as { port: number }).port));
    closers.push(() => server.close());
  });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-wpbench-'));
  closers.push(() => rmSync(dir, { recursive: true, force: true }));
  const certs = await meshCertManager(dir);
  closers.push(() => certs.close());
  const socket = (family: 4 | 6) => tcpSocketOf(family);

  // The app: 1 KiB answers; over h2c for --protocol h2c and grpc (a unary call: one framed
  // message each way, grpc-status 0 in the trailers).
  const body = 'x'.repeat(1024);
  const grpcAnswer = grpcFrame(Buffer.from(body));
  const app = PROTOCOL === 'http1'
    ? http.createServer((_req, res) => res.end(body))
    : http2.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        if (PROTOCOL === 'grpc') {
          res.writeHead(200, { 'content-type': 'application/grpc' });
          res.addTrailers({ 'grpc-status': '0' });
          res.end(grpcAnswer);
        } else res.end(body);
      });
    });
  const appPort = await listen(app, '127.0.0.1');
  // The stand-in node agent on 127.0.0.2:15008: every tunnel to the app.
  const agent = new HboneServer({
    certificate: () => certs.acquire(APP), roots: () => certs.trustBundle,
    onTunnel: (stream) => {
      stream.respond({ ':status': 200 });
      const s = connect(appPort, '127.0.0.1');
      // As the node agent's own sockets to an app: HTTP/2's separate HEADERS and DATA writes are not held back by Nagle.
      s.setNoDelay(true);
      stream.pipe(s).pipe(stream);
      s.on('error', () => stream.destroy());
      stream.on('error', () => s.destroy());
    },
  });
  await listen(createServer((s) => void agent.handle(s)), AGENT_IP, 15008);
  closers.push(() => agent.close());

  const service: Service = { namespace: 'bench', name: 'http', hostname: 'http.bench.svc.cluster.local', vips: [VIP], endpoints: ['w1'], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }] };
  const workload: Workload = { uid: 'w1', name: 'app-1', workload: 'app', namespace: 'bench', serviceAccount: 'app', identity: APP, ips: [AGENT_IP], node: 'n1', labels: { app: 'http', v: 'a' }, enrolled: true, ports: {} };
  // As the waypoint process runs it: a tracer at the default 1 % sampling (no exporter), metrics, an access log (to /dev/null).
  const proxy = new WaypointProxy({ tracer: createTracer({ serviceName: 'waypoint.bench' }), identity: WAYPOINT, certificate: () => certs.acquire(WAYPOINT), roots: () => certs.trustBundle, socket });
  const l7 = [{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'bench', name: 'http', spec: {
    hosts: ['http'], http: [{ match: [{ headers: { 'x-bench': { exact: 'a' } } }], route: [{ destination: { host: 'http' } }] }, { route: [{ destination: { host: 'http' } }] }],
  } }];
  proxy.update({ version: '1', router: new Router(l7, [service]), services: [service], workloads: new Map([['w1', workload]]), authorizer: new L7Authorizer([]) });
  let records = 0;
  const report = values['no-report'] ? () => undefined : requestReporter(new RequestMetrics(new MeshMetrics().registry), pino(pino.destination({ dest: '/dev/null', sync: true })), () => undefined);
  proxy.onRequest = (r) => { records++; report(r); };
  const waypointPort = await listen(createServer((s) => void proxy.handle(s)), '127.0.0.1');
  closers.push(() => proxy.close());

  const pool = new HbonePool();
  closers.push(() => pool.close());
  /** Keep-alive HTTP/1.1 over a client tunnel: to the waypoint (authority VIP:80) or straight to the stand-in agent. */
  const run = async (viaWaypoint: boolean): Promise<{ seconds: number; cpuUs: number; requests: number }> => {
    const cert = await certs.acquire(CLIENT);
    const target = viaWaypoint
      ? { address: '127.0.0.1', port: waypointPort, identity: WAYPOINT, authority: `${VIP}:80` }
      : { address: AGENT_IP, identity: APP, authority: `${AGENT_IP}:8080` };
    const perConnection = Math.ceil(REQUESTS / CONNECTIONS);
    const grpcRequest = grpcFrame(Buffer.from('ping'));
    /** h2c (or gRPC unary) over a client tunnel: one session per connection, one stream per request. */
    const oneH2 = async () => {
      const tunnel = await pool.open({ pod: 'client', cert, roots: certs.trustBundle, socket }, target);
      const session = http2.connect('http://http', { createConnection: () => byteStream(tunnel) as unknown as Socket });
      session.on('error', () => undefined);
      for (let i = 0; i < perConnection; i++) {
        await new Promise<void>((resolve, reject) => {
          const grpc = PROTOCOL === 'grpc';
          const stream = session.request(grpc
            ? { ':method': 'POST', ':path': '/bench.Echo/Unary', 'content-type': 'application/grpc', te: 'trailers', 'x-bench': 'a' }
            : { ':method': 'GET', ':path': '/', 'x-bench': 'a' }, { endStream: !grpc });
          let status = 0;
          let grpcStatus: string | undefined;
          stream.on('response', (h) => { status = Number(h[':status']); grpcStatus ??= h['grpc-status'] as string | undefined; });
          stream.on('trailers', (t) => { grpcStatus = t['grpc-status'] as string | undefined; });
          stream.on('error', reject);
          stream.resume();
          stream.on('end', () => {
            if (status !== 200) reject(new Error(`answer ${status}`));
            else if (grpc && grpcStatus !== '0') reject(new Error(`grpc-status ${grpcStatus ?? 'missing'}`));
            else resolve();
          });
          if (grpc) stream.end(grpcRequest);
        });
      }
      session.close();
    };
    const one = PROTOCOL !== 'http1' ? oneH2 : async () => {
      const tunnel = await pool.open({ pod: 'client', cert, roots: certs.trustBundle, socket }, target);
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      (agent as unknown as { createConnection: () => unknown }).createConnection = () => socketLike(byteStream(tunnel));
      for (let i = 0; i < perConnection; i++) {
        await new Promise<void>((resolve, reject) => {
          http.get({ host: 'http', path: '/', agent, headers: { 'x-bench': 'a' } }, (res) => {
            if (res.statusCode !== 200) reject(new Error(`answer ${res.statusCode}`));
            res.resume();
            res.on('end', resolve);
          }).on('error', reject);
        });
      }
      agent.destroy();
    };
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: CONNECTIONS }, one));
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    return { seconds, cpuUs: cpu.user + cpu.system, requests: perConnection * CONNECTIONS };
  };

  await run(false);
  await run(true);
  const bare = await run(false);
  let profile: Session | undefined;
  if (values['cpu-prof']) {
    profile = new Session();
    profile.connect();
    await profile.post('Profiler.enable');
    await profile.post('Profiler.start');
  }
  const viaWaypoint = await run(true);
  if (profile && values['cpu-prof']) {
    const { profile: p } = await profile.post('Profiler.stop');
    mkdirSync(values['cpu-prof'], { recursive: true });
    const file = join(values['cpu-prof'], `waypoint-${Date.now()}.cpuprofile`);
    writeFileSync(file, JSON.stringify(p));
    process.stdout.write(`CPU profile: ${file}\n`);
  }
  if (records < viaWaypoint.requests) throw new Error(`the waypoint saw ${records} requests, fewer than the ${viaWaypoint.requests} sent through it`);
  const row = (name: string, r: { seconds: number; cpuUs: number; requests: number }) =>
    `${name.padEnd(18)} ${(r.requests / r.seconds).toFixed(0).padStart(8)} req/s   ${(r.cpuUs / r.requests).toFixed(1).padStart(7)} µs CPU/req`;
  process.stdout.write(`${REQUESTS} requests (${PROTOCOL === 'http1' ? 'HTTP/1.1' : PROTOCOL === 'h2c' ? 'HTTP/2 (h2c)' : 'gRPC unary over h2c'}), ${CONNECTIONS} keep-alive connections, one process (client, waypoint, agent, app)\n`);
  process.stdout.write(`${row('bare HBONE hop', bare)}\n${row('through waypoint', viaWaypoint)}\n`);
  const added = viaWaypoint.cpuUs / viaWaypoint.requests - bare.cpuUs / bare.requests;
  process.stdout.write(`waypoint adds ${added.toFixed(1)} µs CPU per request; CPU/request ratio ${(viaWaypoint.cpuUs / viaWaypoint.requests / (bare.cpuUs / bare.requests)).toFixed(2)}×\n`);
}

/** A gRPC message frame: not compressed, 4-byte big-endian length, the bytes. */
function grpcFrame(message: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

main().then(async () => {
  for (const c of closers.reverse()) await c();
  process.exit(0);
}, async (err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
  process.exit(1);
});
