/**
 * What a node agent or a waypoint holds, as `GET /proxy-config/<view>` answers it
 * (src/node/proxy-config.ts and src/waypoint/proxy-config.ts build it, `ambit proxy-config`
 * prints it). A versioned schema: every answer names
 * `apiVersion: ambit.dev/proxy-config/v1`, and within v1 changes are additive only — a field or
 * an enum value may be added, none is renamed, retyped or removed, and a field that can be
 * empty is `null` rather than absent. Anything else is a new apiVersion. docs/PROXY-CONFIG.md
 * documents every field.
 */

export const PROXY_CONFIG_API_VERSION = 'ambit.dev/proxy-config/v1';

/** The views, as the path segment names them, and the `kind` each answers with. */
export const PROXY_CONFIG_KINDS = {
  workloads: 'Workloads',
  services: 'Services',
  policies: 'Policies',
  certs: 'Certificates',
  connections: 'Connections',
} as const;

export type ProxyConfigView = keyof typeof PROXY_CONFIG_KINDS;
export const PROXY_CONFIG_VIEWS = Object.keys(PROXY_CONFIG_KINDS) as ProxyConfigView[];

export function isProxyConfigView(v: string): v is ProxyConfigView {
  return Object.hasOwn(PROXY_CONFIG_KINDS, v);
}

/**
 * The envelope every view shares. Fields marked "waypoint" are in a waypoint's answers only (a
 * node agent's have no such field); every other field is in both.
 */
export interface ProxyConfigList<K extends string, T> {
  apiVersion: typeof PROXY_CONFIG_API_VERSION;
  kind: K;
  /** The node the agent runs on. A waypoint: its node when it knows it ($NODE_NAME), else "". */
  node: string;
  /** The mesh config version the agent applied last; null before the first one arrived. */
  configVersion: string | null;
  /** Waypoint: the waypoint that answered, and its pod ($HOSTNAME; null when unknown). */
  waypoint?: WaypointSelf;
  items: T[];
}

/** The waypoint that answered a view. */
export interface WaypointSelf {
  namespace: string;
  name: string;
  pod: string | null;
}

/** A waypoint by its Gateway. */
export interface WaypointRef {
  namespace: string;
  name: string;
}

/**
 * - `enrolled`: on this node, in the mesh: its connections are captured and carried.
 * - `failed`: on this node, meshed, but the agent could not enroll it (see `error`); retried.
 * - `pending`: on this node, meshed, not enrolled yet.
 * - `remote`: meshed, on another node (that node's agent enrolls it).
 * - `not-meshed`: outside the mesh (no ambient label, or opted out): plain TCP to it.
 */
export type WorkloadStatus = 'enrolled' | 'failed' | 'pending' | 'remote' | 'not-meshed';

export interface WorkloadItem {
  namespace: string;
  /** The pod's name. */
  name: string;
  uid: string;
  node: string;
  /** What telemetry calls it: the owning Deployment's name, else the pod's. */
  workload: string;
  serviceAccount: string;
  ips: string[];
  /** Its SPIFFE ID, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`. */
  identity: string;
  /** How connections reach it: HBONE (mTLS) when meshed, else plain TCP. */
  protocol: 'HBONE' | 'TCP';
  status: WorkloadStatus;
  /** Why it could not be enrolled (status `failed`); null otherwise. */
  error: string | null;
  /** The waypoint the pod itself is bound to (its `ambit.dev/use-waypoint` label); null when none. */
  waypoint: WaypointRef | null;
  /** Connections open now that this agent carries for the pod; null for a pod it has not enrolled. */
  connections: number | null;
  /** The certificate the agent holds for its identity; null for a pod it has not enrolled. */
  certificate: { serial: string; notAfter: string } | null;
  /** Waypoint: the bound services (namespace/name) that select this workload. */
  services?: string[];
  /** Waypoint: the destinations it is balanced in, with its outlier state; [] before a request went to one. */
  upstreams?: UpstreamItem[];
}

/** One destination (service, port, subset) a waypoint balances over, as one endpoint sees it. */
export interface UpstreamItem {
  /** namespace/name of the service. */
  service: string;
  port: number;
  subset: string | null;
  /** `ip:port` the waypoint sends to. */
  address: string;
  /** Outlier detection's view of this endpoint; null when the destination has none configured. */
  outlier: OutlierItem | null;
}

export interface OutlierItem {
  ejected: boolean;
  /** Times ejected so far. */
  ejections: number;
  /** How long the current (or next) ejection lasts at least. */
  ejectionSeconds: number;
  consecutive5xx: number;
  consecutiveGatewayErrors: number;
  consecutiveLocalOriginFailures: number;
}

/** A route bound to a service at a waypoint. */
export interface RouteRef {
  kind: 'VirtualService' | 'HTTPRoute' | 'GRPCRoute' | 'TrafficSplit';
  namespace: string;
  name: string;
  /** The service ports it binds (a parentRef's port); null: every port. */
  ports: number[] | null;
  /** A route in another namespace than the service's applies to that namespace's clients only (consumer route). */
  consumer: string | null;
}

export interface ServicePortItem {
  name: string | null;
  port: number;
  /** A number, or the name of a container port. */
  targetPort: number | string;
  protocol: string;
}

export interface ServiceItem {
  namespace: string;
  name: string;
  /** `<name>.<namespace>.svc.<cluster domain>`. */
  hostname: string;
  vips: string[];
  ports: ServicePortItem[];
  /** Workloads the service selects; null when the agent holds the service by its head only (node scope: its endpoints are asked for on first use). */
  endpoints: number | null;
  /** The waypoint its traffic goes through; null when none. */
  waypoint: WaypointRef | null;
  /**
   * Waypoint: the routes that apply to it, by kind and name: the VirtualService it uses, and the
   * HTTPRoutes and GRPCRoutes bound to it (which take precedence on the ports they bind).
   */
  routes?: RouteRef[];
  /** Waypoint: the DestinationRule(s) of its host, `namespace/name` (merged ones joined by "+"); null when none. */
  destinationRule?: string | null;
}

/**
 * - `global`: in the root namespace without a selector: every workload of the mesh.
 * - `namespace`: every workload of its namespace.
 * - `workload`: the workloads its selector matches (any namespace's for a root-namespace policy).
 * - `waypoint`: bound to a waypoint by targetRefs: the waypoint enforces it, not the node agent.
 */
export type PolicyScope = 'global' | 'namespace' | 'workload' | 'waypoint';

export interface PolicyItem {
  namespace: string;
  name: string;
  kind: 'AuthorizationPolicy' | 'PeerAuthentication';
  scope: PolicyScope;
  /** The labels its selector requires; null without a selector. */
  selector: Record<string, string> | null;
  /**
   * AuthorizationPolicy: ALLOW, DENY, AUDIT or CUSTOM. PeerAuthentication: the workload-level mTLS
   * mode, STRICT, PERMISSIVE, DISABLE or UNSET (inherited).
   */
  action: string;
  /** Whether this agent applies it (false: bound to a waypoint, or an action it does not take). */
  enforced: boolean;
  /** One line per rule (AuthorizationPolicy) or per port-level mode (PeerAuthentication). */
  rules: string[];
  /** What the agent found wrong with it or cannot enforce as written. */
  warnings: string[];
  /** Waypoint: what binds it here, `<kind> <namespace>/<name>` (Gateway, Service, GatewayClass). */
  targetRefs?: string[];
}

export type CertificateState = 'valid' | 'fetching' | 'retrying' | 'expired';

export interface CertificateItem {
  /** The SPIFFE ID it certifies. */
  identity: string;
  serial: string | null;
  notBefore: string | null;
  notAfter: string | null;
  /** When the agent renews it (half-life, with jitter). */
  renewsAt: string | null;
  state: CertificateState;
  /** The last failure to fetch or renew it; null when none. */
  error: string | null;
  /** The enrolled pods (namespace/name) that use it. */
  pods: string[];
}

export interface ConnectionPeerItem {
  ip: string;
  port: number | null;
  workload: string | null;
  namespace: string | null;
  /** The SPIFFE ID, when known (mTLS, or a meshed pod of this node). */
  identity: string | null;
}

export interface ConnectionItem {
  id: string;
  /** outbound: a pod of this node connected out; inbound: a connection arrived at one. */
  direction: 'outbound' | 'inbound';
  /** Istio's reporter label: `source` for outbound, `destination` for inbound. */
  reporter: 'source' | 'destination';
  /** The pod of this node (namespace/name) the connection belongs to. */
  pod: string;
  source: ConnectionPeerItem;
  destination: ConnectionPeerItem;
  /** The service the source called, when it called one. */
  service: { namespace: string; name: string; hostname: string } | null;
  /** hbone: mTLS tunnel; passthrough: plain TCP out of the mesh; plaintext: plain TCP into a meshed pod. */
  path: 'hbone' | 'passthrough' | 'plaintext';
  mtls: boolean;
  /** Bytes from the destination towards the source (the response direction), as Istio's tcp_sent_bytes. */
  bytesSent: number;
  /** Bytes from the source towards the destination (the request direction), as Istio's tcp_received_bytes. */
  bytesReceived: number;
  startedAt: string;
  ageSeconds: number;
  /** Let through without STRICT or policy, and why (the node's health probes); null for every other. */
  exempt: 'kubelet-probe' | null;
}

export type WorkloadsAnswer = ProxyConfigList<'Workloads', WorkloadItem>;
export type ServicesAnswer = ProxyConfigList<'Services', ServiceItem>;
export type PoliciesAnswer = ProxyConfigList<'Policies', PolicyItem>;
export type CertificatesAnswer = ProxyConfigList<'Certificates', CertificateItem>;
export type ConnectionsAnswer = ProxyConfigList<'Connections', ConnectionItem>;

export type ProxyConfigAnswer = WorkloadsAnswer | ServicesAnswer | PoliciesAnswer | CertificatesAnswer | ConnectionsAnswer;

/** The answer of each view, by its path segment. */
export interface ProxyConfigAnswers {
  workloads: WorkloadsAnswer;
  services: ServicesAnswer;
  policies: PoliciesAnswer;
  certs: CertificatesAnswer;
  connections: ConnectionsAnswer;
}

// ---------------------------------------------------------------------------------------------
// What both proxies share in building and serving the views.

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Obj : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

/** A field list as `key=a,b`; its `notKey` counterpart as `key!=a,b`. */
function fields(o: Obj): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(o)) {
    const values = list(v).map(String);
    if (values.length === 0) continue;
    const not = /^not[A-Z]/.test(k);
    const name = not ? `${k[3]!.toLowerCase()}${k.slice(4)}` : k;
    out.push(`${name}${not ? '!=' : '='}${values.join(',')}`);
  }
  return out;
}

/** One AuthorizationPolicy rule in one line: `from principals=… | namespaces=…; to ports=…; when source.ip=…`; `{}` is `any`. */
export function ruleSummary(rule: unknown): string {
  const r = obj(rule);
  const parts: string[] = [];
  const side = (key: 'from' | 'to', inner: 'source' | 'operation') => {
    const alternatives = list(r[key]).map((x) => fields(obj(obj(x)[inner])).join(' ')).filter((x) => x !== '');
    if (alternatives.length > 0) parts.push(`${key} ${alternatives.join(' | ')}`);
  };
  side('from', 'source');
  side('to', 'operation');
  const when = list(r.when).map((c) => {
    const cond = obj(c);
    return fields({ values: cond.values, notValues: cond.notValues }).map((f) => `${String(cond.key)}${f.slice('values'.length)}`).join(' ');
  }).filter((x) => x !== '');
  if (when.length > 0) parts.push(`when ${when.join(' ')}`);
  return parts.length > 0 ? parts.join('; ') : 'any';
}

/**
 * `GET /proxy-config/<view>` as an admin endpoint routes it, given the path's segments after
 * `proxy-config`: the view to build, or the status and body to answer (404 naming the views,
 * 405 for another method).
 */
export function proxyConfigRoute(method: string, path: string, rest: readonly string[]): { view: ProxyConfigView } | { status: number; body: { error: string; views?: ProxyConfigView[] } } {
  const [view, ...more] = rest;
  if (view === undefined || more.length > 0 || !isProxyConfigView(view)) {
    const asked = view === undefined ? 'no view' : `no view ${JSON.stringify(rest.join('/').slice(0, 64))}`;
    return { status: 404, body: { error: `${asked}: GET /proxy-config/<view>, where <view> is one of ${PROXY_CONFIG_VIEWS.join(', ')}`, views: PROXY_CONFIG_VIEWS } };
  }
  if (method !== 'GET') return { status: 405, body: { error: `${method} ${path} not allowed: GET only` } };
  return { view };
}
