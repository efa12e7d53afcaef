/**
 * The ingress gateway process, wired in one place: what `ambit gateway run` starts
 * (src/cli/gateway.ts). As a waypoint (src/waypoint/app.ts) it gets its certificate with its own
 * credential (a workload credential of ns/serviceAccount) and follows the controller, as a
 * `gateway` subscriber: the gateways that select it, the routes bound to them, the Secrets
 * they name, services and workloads. It listens on the ports its gateways' servers name
 * (./listeners.ts) and sends requests into the mesh with the waypoint's proxy, over HBONE with
 * its own identity (a service bound to a waypoint through the waypoint). On 15020:
 * `/metrics`, `/healthz/ready` (200 once it has a config and its certificate; the body lists
 * servers not served and ports not bound) and `/healthz/live`; on 127.0.0.1:15000 the waypoint's
 * admin routes and `/listeners` (servers, their state and certificate metadata; never keys).
 */
import type { Logger } from 'pino';
import { DiscoveryClient, type SubscriberKind, type WireResource } from '../../discovery/discovery.js';
import { selectorMatches, type ConfigObject } from '../../config/model.js';
import { isObject } from '../../config/schema.js';
import { MeshState } from '../../discovery/mesh-state.js';
import { CaClient, type Credential } from '../../identity/ca-server.js';
import { CertManager } from '../../identity/cert-manager.js';
import { formatSpiffeId } from '../../identity/spiffe.js';
import { tcpSocketOf } from '../../host/netns.js';
import { MeshMetrics, RequestMetrics, tcpLabels, type Peer } from '../../telemetry/metrics.js';
import { createTracer, type TracingOptions } from '../../telemetry/tracing.js';
import { listenTcp, localServer, sendJson } from '../../util/local-http.js';
import { waypointAdminAnswer } from '../admin.js';
import { statusServer, unreadyReason } from '../status-server.js';
import { requestReporter, startProxyApp, type ProxyAppOptions } from '../app.js';
import { L7Authorizer } from '../authz.js';
import { WaypointProxy } from '../proxy.js';
import { Router } from '../routing.js';
import { IngressListeners, type GatewayState, type IngressListenersOptions } from './listeners.js';
import { GatewayRoutes } from './routes.js';
import { planListeners } from './servers.js';
import type { SecretValue } from './tls.js';

/** The subscriber kind a gateway follows discovery as. */
export const GATEWAY_SUBSCRIBER: SubscriberKind = 'gateway';
/** Istio's default ingress gateway's service account, whose Deployment is `istio-ingressgateway`. */
const ISTIO_INGRESS_ACCOUNT = 'istio-ingressgateway-service-account';

export interface GatewayOptions {
  /** Its namespace and service account (a Gateway API Gateway's name). */
  namespace: string;
  name: string;
  trustDomain: string;
  controller: { address: string; token: Credential; roots: string[] };
  /** Where listeners bind (default `::`, both families). */
  listenHost?: string;
  metricsPort?: number;
  /** On 127.0.0.1; 0: any free port; none when undefined. */
  adminPort?: number;
  log: Logger;
  accessLog: Logger;
  tracing?: Omit<TracingOptions, 'serviceName'>;
}

/** Its namespace and service account (`name`), as `ambit gateway run --name` gives them, and its files. */
export type GatewayAppOptions = ProxyAppOptions;

/** Reads the gateway's files, starts it (and a CPU profile when AMBIT_CPU_PROFILE_DIR asks for one), and stops it. */
export async function startGatewayApp(opts: GatewayAppOptions): Promise<{ gateway: IngressGateway; stop(): Promise<void> }> {
  const { app, stop } = await startProxyApp('gateway', opts, (o) => IngressGateway.start(o));
  return { gateway: app, stop };
}

/** The resource types MeshState reads; the gateway's own (`ingress`, `secret`) are read here. */
const MESH_TYPES = new Set(['workload', 'service', 'policy', 'waypoint', 'l7']);

/**
 * The gateway's view as its listeners and proxy use it; throws (a NACK) on what it cannot use.
 * `self`: the gateway (its namespace, where Istio servers' credentialName is read; its name and
 * identity, which its AuthorizationPolicies are found by).
 */
export function gatewayStateOf(resources: ReadonlyMap<string, WireResource>, version: string, self: GatewaySelf, warn: (msg: string) => void = () => undefined): { gateway: GatewayState; mesh: MeshState; router: Router; authorizer: L7Authorizer } {
  const meshResources = new Map<string, WireResource>();
  const l7: ConfigObject[] = [];
  const ingress: ConfigObject[] = [];
  const secrets = new Map<string, SecretValue>();
  for (const [key, r] of resources) {
    if (MESH_TYPES.has(r.type)) meshResources.set(key, r);
    if (r.type === 'l7') l7.push(parseObject(r));
    else if (r.type === 'ingress') ingress.push(parseObject(r));
    else if (r.type === 'secret') {
      const s = parseJson(r);
      if (!isObject(s) || typeof s.namespace !== 'string' || typeof s.name !== 'string' || !isObject(s.data) || !Object.values(s.data).every((v) => typeof v === 'string')) {
        throw new Error(`${r.key}: a secret must be {namespace, name, data: {key: text}}`);
      }
      secrets.set(`${s.namespace}/${s.name}`, { namespace: s.namespace, name: s.name, data: s.data as Record<string, string>, ...(typeof s.type === 'string' ? { type: s.type } : {}) });
    }
  }
  const mesh = new MeshState(version, meshResources);
  const router = new Router(l7, [...mesh.services.values()]);
  const routes = new GatewayRoutes(l7, router);
  const plans = planListeners(ingress, warn, { credentialNamespace: self.namespace });
  const labels = [...mesh.workloads.values()].find((w) => w.identity === self.identity)?.labels;
  const authorizer = new L7Authorizer(gatewayPolicies(mesh.policies, { ...self, ...(labels ? { labels } : {}) }), { log: warn });
  return { gateway: { version, plans, routes, secrets }, mesh, router, authorizer };
}

/** The gateway itself: its namespace and name (service account), its identity. */
export interface GatewaySelf { namespace: string; name: string; identity?: string }

/**
 * The AuthorizationPolicies that apply at the gateway, as policies bound to it (targetRef kind
 * Gateway named as the gateway) for the waypoint's authorizer: those with a targetRef to its
 * Gateway API Gateway as they are, and Istio's selector policies that select its pods — in its
 * own namespace or the root namespace, without a selector (every workload there) or with
 * `matchLabels` its pods carry (`labels`; unknown before its pods are in the view: only
 * selector-less ones). Those are moved to its namespace (a root-namespace policy's short
 * serviceAccounts then read in the gateway's namespace).
 */
export function gatewayPolicies(policies: readonly ConfigObject[], self: GatewaySelf & { labels?: Record<string, string> }, rootNamespace = 'istio-system'): ConfigObject[] {
  const out: ConfigObject[] = [];
  for (const p of policies) {
    if (p.kind !== 'AuthorizationPolicy' || !p.apiVersion.startsWith('security.istio.io/') || !isObject(p.spec)) continue;
    const { selector, targetRef, targetRefs, ...rest } = p.spec;
    if (targetRef !== undefined || (Array.isArray(targetRefs) && targetRefs.length > 0)) {
      out.push(p);
      continue;
    }
    if (p.namespace !== self.namespace && p.namespace !== rootNamespace) continue;
    // Unlike a Service's, a policy's empty selector selects every workload in its namespace.
    const matchLabels = isObject(selector) && isObject(selector.matchLabels) ? selector.matchLabels : {};
    if (Object.keys(matchLabels).length > 0 && !selectorMatches(matchLabels, self.labels ?? {})) continue;
    out.push({ ...p, namespace: self.namespace, spec: { ...rest, targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: self.name }] } });
  }
  return out;
}

function parseJson(r: WireResource): unknown {
  try {
    return JSON.parse(r.json) as unknown;
  } catch (err) {
    throw new Error(`${r.key}: not JSON: ${(err as Error).message}`);
  }
}

function parseObject(r: WireResource): ConfigObject {
  const v = parseJson(r);
  if (!isObject(v) || typeof v.apiVersion !== 'string' || typeof v.kind !== 'string' || typeof v.namespace !== 'string' || typeof v.name !== 'string') {
    throw new Error(`${r.key}: a config object must have apiVersion, kind, namespace and name`);
  }
  return v as unknown as ConfigObject;
}

/** The gateway as its metrics name it: its own workload in the mesh (the Deployment), else Istio's or Gateway API's naming. */
export function gatewayPeer(mesh: MeshState | undefined, identity: string, namespace: string, serviceAccount: string): Peer {
  for (const w of mesh?.workloads.values() ?? []) {
    if (w.identity === identity) return { workload: w.workload, namespace: w.namespace, identity, labels: w.labels };
  }
  return { workload: serviceAccount === ISTIO_INGRESS_ACCOUNT ? 'istio-ingressgateway' : `${serviceAccount}-gateway`, namespace, identity };
}

/**
 * Istio's TCP metrics for the gateway's streams (TLS passed through, TCP), as its gateways report
 * them: reporter "source", the gateway as source, the endpoint picked as destination; opened when
 * the tunnel is, bytes and closed when the stream ends.
 */
export function streamReporter(metrics: MeshMetrics, mesh: () => MeshState | undefined, self: () => Peer): NonNullable<IngressListenersOptions['streamMetrics']> {
  return ({ destination, upstream }) => {
    const ip = upstream.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
    const dst = mesh()?.workloadsByIp.get(ip);
    const svc = destination.service;
    const series = metrics.takeTcp(tcpLabels('source', self(),
      dst ? { workload: dst.workload, namespace: dst.namespace, identity: dst.identity, labels: dst.labels } : {},
      { hostname: svc.hostname, name: svc.name, namespace: svc.namespace }, { mtls: true }));
    series.opened++;
    let ended = false;
    return {
      end: (received, sent) => {
        if (ended) return;
        ended = true;
        series.received += received;
        series.sent += sent;
        series.closed++;
        metrics.releaseTcp(series);
      },
    };
  };
}

export class IngressGateway {
  private constructor(
    readonly identity: string,
    readonly proxy: WaypointProxy,
    readonly listeners: IngressListeners,
    private readonly closers: (() => unknown)[],
    /** The metrics and health port (for tests that ask for any free one). */
    readonly metricsPort: number,
    readonly adminPort: number | undefined,
  ) {}

  static async start(opts: GatewayOptions): Promise<IngressGateway> {
    const identity = formatSpiffeId({ trustDomain: opts.trustDomain, namespace: opts.namespace, serviceAccount: opts.name });
    const certs = new CertManager({ source: new CaClient({ address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token }), log: opts.log });
    await certs.start().catch((err: Error) => opts.log.warn({ err: err.message }, 'trust bundle not fetched yet; retrying'));
    void certs.acquire(identity).catch((err: Error) => opts.log.error({ err: err.message, identity }, 'no certificate yet'));
    const tracer = createTracer({ serviceName: `${opts.name}.${opts.namespace}`, ...opts.tracing }, { log: opts.log });
    const proxy = new WaypointProxy({
      identity, gateway: { namespace: opts.namespace, name: opts.name }, tracer, certificate: () => certs.get(identity), roots: () => certs.trustBundle,
      socket: (family: 4 | 6) => tcpSocketOf(family), log: opts.log, viaWaypoints: true, protocolByPort: true,
    });
    const metrics = new MeshMetrics();
    const requests = new RequestMetrics(metrics.registry);
    proxy.hboneLimiter.registerMetrics(metrics);
    let mesh: MeshState | undefined;
    const listeners = new IngressListeners({
      proxy, log: opts.log, accessLog: opts.accessLog, ...(opts.listenHost ? { host: opts.listenHost } : {}),
      streamMetrics: streamReporter(metrics, () => mesh, () => gatewayPeer(mesh, identity, opts.namespace, opts.name)),
    });
    let configured = false;
    proxy.onRequest = requestReporter(requests, opts.accessLog, () => mesh, () => gatewayPeer(mesh, identity, opts.namespace, opts.name));
    const warned = new Set<string>();
    const warn = (msg: string) => {
      if (warned.has(msg)) return;
      if (warned.size > 10_000) warned.clear();
      warned.add(msg);
      opts.log.warn(msg);
    };
    /** Versions apply in order: a bind in progress finishes before the next version's listeners. */
    let applying = Promise.resolve();
    const discovery = new DiscoveryClient({
      address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token,
      node: '', kind: GATEWAY_SUBSCRIBER, name: `${opts.namespace}/${opts.name}`, log: opts.log,
      apply: (resources, version) => {
        const state = gatewayStateOf(resources, version, { namespace: opts.namespace, name: opts.name, identity }, warn);
        for (const w of state.router.warnings) warn(w);
        mesh = state.mesh;
        proxy.update({ version, router: state.router, services: [...state.mesh.services.values()], workloads: state.mesh.workloads, authorizer: state.authorizer });
        applying = applying.then(() => listeners.update(state.gateway)).then(() => {
          configured = true;
          for (const w of state.gateway.routes.warnings) warn(w);
        }, (err: Error) => opts.log.error({ err: err.message, version }, 'listeners not updated'));
      },
    });
    // Ready with config and certificate; what is not served is said (a bad Secret leaves its server unserved, not the gateway).
    const metricsServer = statusServer({
      log: opts.log, metrics, unready: () => unreadyReason(configured, certs, identity),
      notServed: () => {
        const status = listeners.status();
        return [...status.servers.filter((s) => !s.served).map((s) => `${s.id}: ${s.problem}`), ...status.bindErrors.filter((b) => !status.servers.some((s) => s.port === b.port)).map((b) => b.error)];
      },
    });
    await listenTcp(metricsServer, opts.metricsPort ?? 15020, opts.listenHost ?? '0.0.0.0');
    const metricsPort = (metricsServer.address() as { port: number }).port;
    let admin: ReturnType<typeof localServer> | undefined;
    if (opts.adminPort !== undefined) {
      const proxyConfig = {
        self: { namespace: opts.namespace, name: opts.name, pod: process.env.HOSTNAME || null },
        node: process.env.NODE_NAME ?? '', identity, certs,
        state: () => proxy.current, upstreams: () => proxy.upstreamsNow(),
      };
      const server = localServer({ name: 'admin', log: opts.log, json: true }, (req, res) => {
        if (req.path === '/listeners' && req.method === 'GET') return sendJson(res, 200, { ports: listeners.ports, ...listeners.status() }, true);
        const { status, body } = waypointAdminAnswer({ certificates: certs, proxyConfig }, req);
        sendJson(res, status, body, true);
      });
      await listenTcp(server, opts.adminPort, '127.0.0.1');
      admin = server;
    }
    opts.log.info({ identity, ...(admin ? { admin: `127.0.0.1:${(admin.address() as { port: number }).port}` } : {}) }, 'gateway started');
    return new IngressGateway(identity, proxy, listeners, [
      () => discovery.close(), () => listeners.close(), () => proxy.close(), () => metricsServer.close(), () => admin?.close(), () => tracer.close(), () => certs.close(),
    ], metricsPort, admin ? (admin.address() as { port: number }).port : undefined);
  }

  async close(): Promise<void> {
    for (const c of this.closers) await c();
  }
}
