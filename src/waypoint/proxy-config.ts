/**
 * The waypoint's proxy-config views (`GET /proxy-config/<view>` on its admin endpoint): the
 * services bound to it with the routes that apply to them, the L7 AuthorizationPolicies it
 * enforces, its own certificate, the endpoints it balances over with their outlier state, and
 * no connections (see `connections` below) — in the versioned schema of src/api/proxy-config.ts
 * (docs/PROXY-CONFIG.md). Built only when asked, from what the proxy already holds: nothing here
 * runs per request. Pure: the same state gives the same answer.
 */
import type { ConfigObject, Service, Workload } from '../config/model.js';
import type { CertificateSummary } from '../identity/cert-manager.js';
import {
  PROXY_CONFIG_API_VERSION, PROXY_CONFIG_KINDS, ruleSummary,
  type CertificateItem, type PolicyItem, type ProxyConfigAnswers, type ProxyConfigView, type RouteRef, type ServiceItem,
  type UpstreamItem, type WaypointSelf, type WorkloadItem,
} from '../api/proxy-config.js';
import { WAYPOINT_CLASSES, type L7Authorizer } from './authz.js';
import type { OutlierDetector } from './resilience.js';
import type { Router } from './routing.js';

/** What the views are built from: the waypoint (src/waypoint/app.ts wires it). */
export interface WaypointConfigSource {
  readonly self: WaypointSelf;
  /** The node it runs on, when it knows it; else "". */
  readonly node: string;
  readonly identity: string;
  /** The config it serves now; undefined before the first one. */
  state(): { version: string; router: Router; services: Service[]; workloads: Map<string, Workload>; authorizer?: L7Authorizer } | undefined;
  readonly certs: { list(): CertificateSummary[] };
  /** The destinations balanced over so far, with their outlier detectors. */
  upstreams(): { service: string; port: number; subset: string | null; members: { id: string; address: string }[]; outlier: OutlierDetector }[];
}

type State = NonNullable<ReturnType<WaypointConfigSource['state']>>;
type Items = { [V in ProxyConfigView]: (source: WaypointConfigSource, state: State | undefined) => ProxyConfigAnswers[V]['items'] };

/** One view of the waypoint's state, in the v1 schema. */
export function waypointConfigView<V extends ProxyConfigView>(view: V, source: WaypointConfigSource): ProxyConfigAnswers[V] {
  const state = source.state();
  const items = ITEMS[view](source, state);
  return {
    apiVersion: PROXY_CONFIG_API_VERSION, kind: PROXY_CONFIG_KINDS[view], node: source.node, configVersion: state?.version ?? null,
    waypoint: { ...source.self }, items,
  } as ProxyConfigAnswers[V];
}

const ITEMS: Items = {
  workloads: (source, state) => (state ? waypointWorkloadItems(state, source.upstreams()) : []),
  services: (_source, state) => (state ? waypointServiceItems(state.services, state.router) : []),
  policies: (source, state) => (state?.authorizer ? waypointPolicyItems(state.authorizer, source.self, state.services) : []),
  certs: (source) => waypointCertificateItems(source.certs.list(), source.identity),
  // Not tracked one by one: see docs/PROXY-CONFIG.md (a waypoint's connections).
  connections: () => [],
};

const byName = (a: { namespace: string; name: string }, b: { namespace: string; name: string }) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name);

/** The services bound to this waypoint, with the routes and DestinationRule that apply to each. */
export function waypointServiceItems(services: Service[], router: Router): ServiceItem[] {
  return services.map((s): ServiceItem => {
    const d = router.describe(s);
    const routes: RouteRef[] = [];
    if (d.virtualService) routes.push(routeRef(d.virtualService, undefined, undefined));
    if (d.trafficSplit) routes.push(routeRef(d.trafficSplit, undefined, undefined));
    for (const r of d.routes) routes.push(routeRef(r.cfg, r.ports, r.consumer));
    return {
      namespace: s.namespace, name: s.name, hostname: s.hostname, vips: [...s.vips],
      ports: s.ports.map((p) => ({ name: p.name ?? null, port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
      endpoints: s.endpoints.length,
      waypoint: s.waypoint ? { namespace: s.waypoint.namespace, name: s.waypoint.name } : null,
      routes: routes.sort((a, b) => a.kind.localeCompare(b.kind) || byName(a, b)),
      destinationRule: d.destinationRule ?? null,
    };
  }).sort(byName);
}

function routeRef(cfg: ConfigObject, ports: number[] | undefined, consumer: string | undefined): RouteRef {
  return { kind: cfg.kind as RouteRef['kind'], namespace: cfg.namespace, name: cfg.name, ports: ports ?? null, consumer: consumer ?? null };
}

/**
 * The AuthorizationPolicies this waypoint enforces: those bound to it (its Gateway), to every
 * waypoint (a root-namespace GatewayClass), or to one of its services, with what binds them.
 */
export function waypointPolicyItems(authorizer: L7Authorizer, self: WaypointSelf, services: Service[]): PolicyItem[] {
  const mine = `${self.namespace}/${self.name}`;
  const serviceKeys = new Set(services.map((s) => `${s.namespace}/${s.name}`));
  const items: PolicyItem[] = [];
  for (const { policy: p, bindings } of authorizer.bound) {
    const here = bindings.filter((b) => b.to === 'every-waypoint' || (b.to === 'waypoint' && b.key === mine) || (b.to === 'service' && serviceKeys.has(b.key)));
    if (here.length === 0) continue;
    const spec = (p.spec ?? {}) as Record<string, unknown>;
    const action = typeof spec.action === 'string' ? spec.action : 'ALLOW';
    const prefix = `${p.kind} ${p.namespace}/${p.name}: `;
    const selector = typeof spec.selector === 'object' && spec.selector !== null ? (spec.selector as { matchLabels?: Record<string, string> }).matchLabels ?? null : null;
    items.push({
      namespace: p.namespace, name: p.name, kind: 'AuthorizationPolicy', scope: 'waypoint', selector: selector && Object.keys(selector).length > 0 ? { ...selector } : null,
      action, enforced: action === 'ALLOW' || action === 'DENY',
      rules: (Array.isArray(spec.rules) ? spec.rules : []).map(ruleSummary),
      warnings: authorizer.warnings.filter((w) => w.startsWith(prefix)).map((w) => w.slice(prefix.length)),
      targetRefs: [...new Set(here.flatMap((b) => (b.to === 'every-waypoint' ? waypointClasses(spec).map((c) => `GatewayClass ${c}`) : [`${b.to === 'waypoint' ? 'Gateway' : 'Service'} ${b.key}`])))].sort(),
    });
  }
  return items.sort((a, b) => byName(a, b));
}

/** The waypoint GatewayClasses a policy's targetRefs name (what binds it to every waypoint). */
function waypointClasses(spec: Record<string, unknown>): string[] {
  const refs = [spec.targetRef, ...(Array.isArray(spec.targetRefs) ? spec.targetRefs : [])] as { kind?: unknown; name?: unknown }[];
  return refs.filter((r) => r?.kind === 'GatewayClass' && typeof r.name === 'string' && WAYPOINT_CLASSES.includes(r.name)).map((r) => r.name as string);
}

/** Its own certificate (a waypoint holds one identity); `fetching` before the CA answered the first time. */
export function waypointCertificateItems(certificates: CertificateSummary[], identity: string): CertificateItem[] {
  const c = certificates.find((x) => x.identity === identity);
  return [{
    identity, serial: c?.serial ?? null, notBefore: c?.notBefore ?? null, notAfter: c?.notAfter ?? null,
    renewsAt: c?.rotatesAt ?? null, state: c?.state ?? 'fetching', error: c?.lastError ?? null, pods: [],
  }];
}

/**
 * The endpoints of its services: every workload a bound service selects, with the services and,
 * for the destinations a request has gone to, the address it is sent to and its outlier state.
 */
export function waypointWorkloadItems(state: State, upstreams: ReturnType<WaypointConfigSource['upstreams']>): WorkloadItem[] {
  const servicesOf = new Map<string, string[]>();
  for (const s of state.services) {
    for (const uid of s.endpoints) {
      const list = servicesOf.get(uid) ?? [];
      list.push(`${s.namespace}/${s.name}`);
      servicesOf.set(uid, list);
    }
  }
  const upstreamsOf = new Map<string, UpstreamItem[]>();
  for (const u of upstreams) {
    for (const m of u.members) {
      const h = u.outlier.enabled ? u.outlier.hostState(m.id) : undefined;
      const item: UpstreamItem = {
        service: u.service, port: u.port, subset: u.subset, address: m.address,
        outlier: !u.outlier.enabled ? null : {
          ejected: h?.ejected ?? false, ejections: h?.ejections ?? 0, ejectionSeconds: (h?.ejectionMs ?? u.outlier.baseEjectionTimeMs) / 1000,
          consecutive5xx: h?.consecutive5xx ?? 0, consecutiveGatewayErrors: h?.consecutiveGatewayErrors ?? 0, consecutiveLocalOriginFailures: h?.consecutiveLocalOriginFailures ?? 0,
        },
      };
      const list = upstreamsOf.get(m.id) ?? [];
      list.push(item);
      upstreamsOf.set(m.id, list);
    }
  }
  const items: WorkloadItem[] = [];
  for (const [uid, services] of servicesOf) {
    const w = state.workloads.get(uid);
    if (!w) continue;
    items.push({
      namespace: w.namespace, name: w.name, uid: w.uid, node: w.node, workload: w.workload, serviceAccount: w.serviceAccount,
      ips: [...w.ips], identity: w.identity, protocol: w.enrolled ? 'HBONE' : 'TCP', status: w.enrolled ? 'remote' : 'not-meshed', error: null,
      waypoint: w.waypoint && w.waypoint !== 'none' ? { namespace: w.namespace, name: w.waypoint } : null,
      connections: null, certificate: null,
      services: [...new Set(services)].sort(),
      upstreams: (upstreamsOf.get(uid) ?? []).sort((a, b) => a.service.localeCompare(b.service) || a.port - b.port || (a.subset ?? '').localeCompare(b.subset ?? '')),
    });
  }
  return items.sort(byName);
}
