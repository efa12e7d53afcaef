/**
 * The waypoint process, wired in one place: what `ambit waypoint run` starts once it has read its
 * flags (src/cli/waypoint.ts). It gets its certificate with its own credential,
 * follows the controller as a `waypoint` subscriber (its services, their L7 config, workloads),
 * and serves HBONE on 15008 with the L7 proxy. On 15020: `/metrics`, `GET /healthz/ready` (200
 * once it has its first config and its certificate, 503 with the reason before) and
 * `GET /healthz/live`. On 127.0.0.1:15000 (inside its pod) the read-only admin endpoint
 * (src/waypoint/admin.ts): its certificate and `/proxy-config/<view>`.
 */
import { createServer, type Server } from 'node:net';
import type { Logger } from 'pino';
import { DiscoveryClient, type WireResource } from '../discovery/discovery.js';
import type { ConfigObject } from '../config/model.js';
import { CaClient, type Credential } from '../identity/ca-server.js';
import { CertManager } from '../identity/cert-manager.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import { MeshState } from '../discovery/mesh-state.js';
import { tcpSocketOf } from '../host/netns.js';
import { MeshMetrics, RequestMetrics, tcpLabels, type Peer } from '../telemetry/metrics.js';
import { createTracer, type TracingOptions } from '../telemetry/tracing.js';
import { listenTcp } from '../util/local-http.js';
import { L7Authorizer } from './authz.js';
import { WaypointProxy, type RequestRecord, type TunnelRefusal } from './proxy.js';
import { splitPemBundle } from '../identity/pki.js';
import { logger } from '../telemetry/log.js';
import { cpuProfileFromEnv } from '../telemetry/profile.js';
import { readFlagFile, tokenFile, waitForFile } from '../util/files.js';
import { Router } from './routing.js';
import { WAYPOINT_ADMIN_PORT, WaypointAdmin } from './admin.js';
import { statusServer, unreadyReason } from './status-server.js';

export interface WaypointOptions {
  namespace: string;
  name: string;
  trustDomain: string;
  controller: { address: string; token: Credential; roots: string[] };
  listen: { host: string; port: number };
  metricsPort?: number;
  /** The admin endpoint's port on 127.0.0.1 (WAYPOINT_ADMIN_PORT in a pod; 0: any free port); none when undefined. */
  adminPort?: number;
  log: Logger;
  accessLog: Logger;
  /** OTLP/HTTP endpoint and sampling; without an endpoint trace context still propagates. */
  tracing?: Omit<TracingOptions, 'serviceName'>;
}

/** What `ambit waypoint run` and `ambit gateway run` start a proxy with (its flags). */
export interface ProxyAppOptions {
  namespace: string;
  name: string;
  trustDomain: string;
  controller: string;
  /** Its credential (re-read at each use: the kubelet rotates it). */
  tokenFile: string;
  /** PEM roots that verify the controller; waited for while the controller writes them on first start. */
  caFile: string;
  tracing?: Omit<TracingOptions, 'serviceName'>;
}

export interface WaypointAppOptions extends ProxyAppOptions {
  listen: { host: string; port: number };
}

/**
 * How a waypoint or gateway reaches the controller: its credential file (re-read at each use) and
 * the last PEM of the CA file, the root that verifies the controller.
 */
export function controllerAccess(address: string, tokenPath: string, caFile: string): { address: string; token: Credential; roots: string[] } {
  return { address, token: tokenFile(tokenPath), roots: splitPemBundle(readFlagFile('--ca-file', caFile)).slice(-1) };
}

/** What a waypoint's or gateway's `start` gets from startProxyApp: its flags read, its loggers, its admin port. */
export interface ProxyStartOptions {
  namespace: string;
  name: string;
  trustDomain: string;
  controller: { address: string; token: Credential; roots: string[] };
  adminPort: number;
  log: Logger;
  accessLog: Logger;
  tracing?: Omit<TracingOptions, 'serviceName'>;
}

/**
 * Starts a waypoint or an ingress gateway (`kind`, also its logger's name) from its flags once
 * its CA file is there, and a CPU profile when AMBIT_CPU_PROFILE_DIR asks for one; `stop` closes
 * it (once) and then writes the profile.
 */
export async function startProxyApp<T extends { close(): Promise<void> }>(
  kind: 'waypoint' | 'gateway', opts: ProxyAppOptions, start: (o: ProxyStartOptions) => Promise<T>,
): Promise<{ app: T; stop(): Promise<void> }> {
  await waitForFile(opts.caFile);
  const log = logger(kind);
  const app = await start({
    namespace: opts.namespace, name: opts.name, trustDomain: opts.trustDomain,
    controller: controllerAccess(opts.controller, opts.tokenFile, opts.caFile),
    adminPort: WAYPOINT_ADMIN_PORT, log, accessLog: logger('access'), ...(opts.tracing ? { tracing: opts.tracing } : {}),
  });
  // AMBIT_CPU_PROFILE_DIR: a V8 CPU profile of this process, started once it serves and written when it stops (benches).
  const profiler = await cpuProfileFromEnv(`${kind}.${opts.namespace}.${opts.name}`);
  let stopped: Promise<void> | undefined;
  return {
    app,
    stop: () => (stopped ??= (async () => {
      await app.close().catch((err: Error) => log.error({ err: err.message }, 'stopping failed'));
      if (profiler) log.info({ profile: await profiler.stop() }, 'CPU profile written');
    })()),
  };
}

/** Reads the waypoint's files, starts it (and a CPU profile when AMBIT_CPU_PROFILE_DIR asks for one), and stops it. */
export async function startWaypointApp(opts: WaypointAppOptions): Promise<{ waypoint: Waypoint; stop(): Promise<void> }> {
  const { app, stop } = await startProxyApp('waypoint', opts, (o) => Waypoint.start({ ...o, listen: opts.listen }));
  return { waypoint: app, stop };
}

export class Waypoint {
  private constructor(
    readonly identity: string,
    readonly proxy: WaypointProxy,
    private readonly certs: CertManager,
    private readonly discovery: DiscoveryClient,
    private readonly server: Server,
    private readonly closeTracer: () => Promise<void>,
    /** The admin endpoint, when it was asked for. */
    readonly admin?: WaypointAdmin,
  ) {}

  static async start(opts: WaypointOptions): Promise<Waypoint> {
    const identity = formatSpiffeId({ trustDomain: opts.trustDomain, namespace: opts.namespace, serviceAccount: opts.name });
    const certs = new CertManager({ source: new CaClient({ address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token }), log: opts.log });
    await certs.start().catch((err: Error) => opts.log.warn({ err: err.message }, 'trust bundle not fetched yet; retrying'));
    void certs.acquire(identity).catch((err: Error) => opts.log.error({ err: err.message, identity }, 'no certificate yet'));
    const tracer = createTracer({ serviceName: `${opts.name}.${opts.namespace}`, ...opts.tracing }, { log: opts.log });
    const proxy = new WaypointProxy({
      identity, gateway: { namespace: opts.namespace, name: opts.name }, tracer, certificate: () => certs.get(identity), roots: () => certs.trustBundle,
      socket: (family: 4 | 6) => tcpSocketOf(family), log: opts.log,
    });
    const metrics = new MeshMetrics();
    const requests = new RequestMetrics(metrics.registry);
    proxy.hboneLimiter.registerMetrics(metrics);
    let mesh: MeshState | undefined;
    let configured = false;
    proxy.onRequest = requestReporter(requests, opts.accessLog, () => mesh);
    proxy.onTunnelRefused = refusalReporter(opts.accessLog);
    const discovery = new DiscoveryClient({
      address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token,
      node: '', kind: 'waypoint', name: `${opts.namespace}/${opts.name}`, log: opts.log,
      apply: (resources, version) => {
        const state = stateOf(resources, version, (msg) => opts.log.warn({ version }, msg));
        mesh = state.mesh;
        proxy.update(state);
        configured = true;
      },
    });
    const server = createServer((socket) => void proxy.handle(socket));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(opts.listen.port, opts.listen.host, resolve));
    // Ready once it can serve: a config applied (the services it serves, their routes) and its own certificate.
    // Prometheus on 15020, as the node agents and Istio's proxies serve it, and the probes.
    const metricsServer = statusServer({ log: opts.log, metrics, unready: () => unreadyReason(configured, certs, identity) });
    await listenTcp(metricsServer, opts.metricsPort ?? 15020, opts.listen.host);
    // Read-only, on loopback: what it holds, built only when asked (nothing per request).
    const admin = opts.adminPort === undefined ? undefined : await WaypointAdmin.start({
      certificates: certs, log: opts.log,
      proxyConfig: {
        self: { namespace: opts.namespace, name: opts.name, pod: process.env.HOSTNAME || null },
        node: process.env.NODE_NAME ?? '', identity, certs,
        state: () => proxy.current, upstreams: () => proxy.upstreamsNow(),
      },
    }, '127.0.0.1', opts.adminPort);
    opts.log.info({ identity, listen: opts.listen, ...(admin ? { admin: `127.0.0.1:${admin.port}` } : {}) }, 'waypoint serving');
    return new Waypoint(identity, proxy, certs, discovery, server, async () => {
      metricsServer.close();
      await admin?.close();
      await tracer.close();
    }, admin);
  }

  async close(): Promise<void> {
    this.discovery.close();
    this.server.close();
    await this.proxy.close();
    await this.closeTracer();
    this.certs.close();
  }
}

/**
 * What becomes of each request: Istio's request metrics (reporter waypoint) and a JSON access-log
 * line. With `self` (an ingress gateway), reported as Istio's gateways report: `reporter="source"`,
 * the source being the gateway itself (the client outside the mesh is in the access log only).
 */
export function requestReporter(requests: RequestMetrics, accessLog: Logger, mesh: () => MeshState | undefined, self?: () => Peer): (r: RequestRecord) => void {
  return (r) => {
    const m = mesh();
    const me = self?.();
    const src = me ? undefined : m?.workloadsByIp.get(r.sourceIp);
    const dst = r.upstream ? m?.workloadsByIp.get(r.upstream.split(':')[0]!) : undefined;
    const svc = r.serviceRef;
    const labels = () => ({
      ...tcpLabels(me ? 'source' : 'waypoint',
        me ?? { ...(src ? { workload: src.workload, namespace: src.namespace, labels: src.labels } : {}), ...(r.sourceIdentity ? { identity: r.sourceIdentity } : {}) },
        dst ? { workload: dst.workload, namespace: dst.namespace, identity: dst.identity, labels: dst.labels } : {},
        svc ? { hostname: svc.hostname, name: svc.name, namespace: svc.namespace } : {},
        { mtls: true, flags: r.flags }),
      request_protocol: r.grpc ? 'grpc' : 'http', response_code: String(r.status ?? 0), grpc_response_status: r.grpcStatus ?? '',
    });
    // Everything the labels are made of: the mesh version (workload labels), the peers, the service, the outcome.
    const key = `${m?.version ?? ''}|${me ? `${me.workload ?? ''}/${me.namespace ?? ''}` : r.sourceIp}|${r.sourceIdentity ?? ''}|${dst?.uid ?? ''}|${svc ? `${svc.namespace}/${svc.name}` : ''}|${r.flags}|${r.grpc ? 1 : 0}|${r.status ?? 0}|${r.grpcStatus ?? ''}`;
    requests.recordKeyed(key, labels, r.durationMs ?? 0, r.bytesIn, r.bytesOut, r.grpc ? { request: r.requestMessages ?? 0, response: r.responseMessages ?? 0 } : undefined);
    accessLog.info({
      timestamp: new Date(r.start).toISOString(), request_id: r.id, source: { principal: r.sourceIdentity ?? null, ...(me ? { ip: r.sourceIp } : {}) },
      destination: { service: r.service, upstream: r.upstream ?? null },
      request: { method: r.method, path: r.path, authority: r.authority, protocol: r.protocol },
      response: { code: r.status, flags: r.flags, duration_ms: r.durationMs, bytes: r.bytesOut, attempts: r.attempts, grpc_status: r.grpcStatus ?? null }, route: r.route ?? null,
      ...(r.authz ? { authorization: r.authz } : {}), ...(r.traceId ? { trace_id: r.traceId, span_id: r.spanId } : {}),
    }, 'request');
  };
}

/** A tunnel refused at CONNECT time: one access-log line naming the policy (the peer was told only the code `denied`). */
export function refusalReporter(accessLog: Logger): (r: TunnelRefusal) => void {
  return (r) => accessLog.info({
    timestamp: new Date(r.start).toISOString(), tunnel_id: r.id, source: { principal: r.sourceIdentity ?? null, ip: r.sourceIp },
    destination: { service: `${r.service.name}.${r.service.namespace}`, authority: r.authority },
    response: { code: r.status, flags: 'RBAC' }, authorization: r.reason, policy: r.policy ?? null,
  }, 'tunnel refused');
}

/** The waypoint's view as the proxy uses it; throws (a NACK) on what it cannot use. */
export function stateOf(resources: ReadonlyMap<string, WireResource>, version: string, warn?: (msg: string) => void): Parameters<WaypointProxy['update']>[0] & { mesh: MeshState } {
  const mesh = new MeshState(version, resources);
  const l7: ConfigObject[] = [];
  const rateLimits: ConfigObject[] = [];
  for (const r of resources.values()) {
    if (r.type !== 'l7') continue;
    const c = JSON.parse(r.json) as ConfigObject;
    if (c.kind === 'RateLimit' && c.apiVersion.startsWith('ambit.dev/')) rateLimits.push(c);
    else l7.push(c);
  }
  const services = [...mesh.services.values()];
  const authorizer = new L7Authorizer(mesh.policies, warn ? { log: warn } : {});
  return { version, router: new Router(l7, services), services, workloads: mesh.workloads, mesh, rateLimits, authorizer };
}
