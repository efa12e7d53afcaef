/**
 * The node agent's local HTTP endpoints under raw hostile requests: the admin endpoint (15000,
 * `AdminServer`, with a real certificate manager and connection tracker behind it), the
 * telemetry listeners (15020 metrics, 15021 health, `serveTelemetry`), each on loopback, and the
 * control socket (`serveControl`, a unix socket the runtime asks about pods).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { get, request, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import * as fc from 'fast-check';
import { serveControl } from '../../../src/node/app.js';
import { AdminServer } from '../../../src/node/admin.js';
import { ConnectionTracker } from '../../../src/node/connections.js';
import { MeshMetrics } from '../../../src/telemetry/metrics.js';
import { httpRequest, sendRaw, statusTag, type HttpRequestInput } from '../gen-http.js';
import type { FuzzTarget } from '../harness.js';
import { meshPki, quietLogger, type MeshPki } from '../mesh-pki.js';

/** A good request must still get this answer after any input. */
function expectStatus(port: number, path: string, status: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      res.resume();
      if (res.statusCode === status) resolve();
      else reject(new Error(`GET ${path}: ${res.statusCode ?? '?'} instead of ${status}`));
    });
    req.on('error', reject);
    req.setTimeout(3000, () => req.destroy(new Error(`GET ${path}: no answer in 3 s`)));
  });
}

function send(port: number, input: HttpRequestInput): Promise<string> {
  return sendRaw({ host: '127.0.0.1', port }, Buffer.from(input.raw, 'latin1')).then(statusTag);
}

interface AdminCtx { admin: AdminServer; pki: MeshPki; tracker: ConnectionTracker }

export const adminTarget: FuzzTarget<HttpRequestInput, AdminCtx> = {
  name: 'admin-http',
  what: 'raw HTTP/1.x request bytes to the node agent\'s admin endpoint (AdminServer, 15000)',
  input: httpRequest,
  concurrency: 8,
  async setup() {
    const pki = await meshPki('admin');
    await pki.certs.acquire('spiffe://cluster.local/ns/shop/sa/users');
    const tracker = new ConnectionTracker(new MeshMetrics(), quietLogger());
    const agent = {
      configDump: () => ({ node: 'node-a', version: '1', workloads: [], services: [], policies: [] }),
      workloads: () => ({ node: 'node-a', enrolled: [], failed: [] }),
      connections: tracker,
    };
    const admin = await AdminServer.start({ certificates: pki.certs, agent, logger: quietLogger() }, '127.0.0.1', 0);
    return { admin, pki, tracker };
  },
  run: (ctx, input) => send(ctx.admin.port, input),
  alive: (ctx) => expectStatus(ctx.admin.port, '/certificates', 200),
  async teardown(ctx) {
    await ctx.admin.close();
    ctx.tracker.close();
    ctx.pki.close();
  },
};

type ServeTelemetry = (agent: { metrics: MeshMetrics; ready: boolean }, host: string, metricsPort: number, healthPort: number, nodeReport: () => Promise<unknown>) => Promise<Server[]>;

/** serveTelemetry, wherever the node agent keeps it (its own module, or agent.ts before). */
async function serveTelemetry(): Promise<ServeTelemetry> {
  for (const where of ['../../../src/node/telemetry-http.js', '../../../src/node/agent.js']) {
    const mod = (await import(where).catch(() => ({}))) as { serveTelemetry?: ServeTelemetry };
    if (typeof mod.serveTelemetry === 'function') return mod.serveTelemetry;
  }
  throw new Error('serveTelemetry is exported by neither src/node/telemetry-http.ts nor src/node/agent.ts');
}

interface TelemetryCtx { servers: Server[]; ports: number[]; metrics: MeshMetrics }

export const telemetryTarget: FuzzTarget<HttpRequestInput & { health: boolean }, TelemetryCtx> = {
  name: 'telemetry-http',
  what: 'raw HTTP/1.x request bytes to the node agent\'s metrics (15020) and health (15021) listeners (serveTelemetry)',
  input: fc.tuple(httpRequest, fc.boolean()).map(([r, health]) => ({ ...r, health })),
  concurrency: 8,
  async setup() {
    const metrics = new MeshMetrics();
    // serveTelemetry reads only these two members of the agent.
    const agent = { metrics, ready: true };
    const servers = await (await serveTelemetry())(agent, '127.0.0.1', 0, 0, () => Promise.resolve({ node: 'node-a', ok: true }));
    return { servers, ports: servers.map((s) => (s.address() as AddressInfo).port), metrics };
  },
  run: (ctx, input) => send(ctx.ports[input.health ? 1 : 0]!, input),
  async alive(ctx) {
    await expectStatus(ctx.ports[0]!, '/metrics', 200);
    await expectStatus(ctx.ports[1]!, '/healthz/ready', 200);
  },
  async teardown(ctx) {
    await Promise.all(ctx.servers.map((s) => new Promise((r) => { s.closeAllConnections(); s.close(r); })));
  },
};

interface ControlCtx { control: { close(): void }; dir: string; path: string; pki: MeshPki }

/** The control socket answers GET /v1/pods/<uid> (and the admin routes) on a unix socket. */
export const controlSocketTarget: FuzzTarget<HttpRequestInput, ControlCtx> = {
  name: 'control-socket',
  what: 'raw HTTP/1.x request bytes to the node agent\'s control socket (serveControl: GET /v1/pods/<uid>, the admin routes, POST /logging)',
  input: httpRequest.map((r) => ({ raw: r.raw.replace(/^(\S+ )\/healthz/, '$1/v1/pods/') })),
  concurrency: 8,
  async setup() {
    const pki = await meshPki('control');
    const dir = mkdtempSync(join(tmpdir(), 'ambit-fuzz-control-'));
    const path = join(dir, 'agent.sock');
    // The agent's answer for a pod: uid-1 is enrolled, any other is not settled yet (504).
    const agent = { version: '1', podReadiness: (uid: string) => Promise.resolve(uid === 'uid-1' ? { uid, enrolled: true, version: '1' } : undefined) };
    const control = await serveControl(agent as never, path, { certificates: pki.certs, logger: quietLogger() } as never, quietLogger() as never);
    return { control, dir, path, pki };
  },
  run: (ctx, input) => sendRaw({ path: ctx.path }, Buffer.from(input.raw, 'latin1')).then(statusTag),
  alive: (ctx) => new Promise((resolve, reject) => {
    const req = request({ socketPath: ctx.path, path: '/v1/pods/uid-1', agent: false }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new Error(`GET /v1/pods/uid-1: ${res.statusCode ?? '?'} instead of 200`));
    });
    req.on('error', reject);
    req.setTimeout(3000, () => req.destroy(new Error('GET /v1/pods/uid-1: no answer in 3 s')));
    req.end();
  }),
  async teardown(ctx) {
    ctx.control.close();
    ctx.pki.close();
    rmSync(ctx.dir, { recursive: true, force: true });
  },
};
