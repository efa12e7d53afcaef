/**
 * The mesh model: what users wrote (Kubernetes objects, Istio and Gateway API config) and what
 * runs (pods with addresses and nodes), turned into the workloads, services, policies and L7
 * config that node agents and waypoints consume. Pure functions of a SourceSnapshot, so the
 * same input always gives the same model (and the same versions on the stream).
 */
import { formatSpiffeId } from '../identity/spiffe.js';
import type { NamespaceResource, PodSpec, Resource, ServiceResource } from '../kube/manifests.js';
import { intToIpv4, parseCidr, parseIp } from '../util/ip.js';

export const DATAPLANE_MODE = 'ambit.dev/dataplane-mode';
export const USE_WAYPOINT = 'ambit.dev/use-waypoint';
export const WAYPOINT_CLASS = 'ambit-waypoint';
/** Gateway annotations of a waypoint: where it exports spans (OTLP/HTTP) and the share of new traces it samples (0-100). */
export const TRACING_ENDPOINT_ANNOTATION = 'ambit.dev/tracing-endpoint';
export const TRACING_SAMPLING_ANNOTATION = 'ambit.dev/tracing-sampling';
/** The label Gateway API implementations put on a gateway's pods (the waypoint pods). */
export const WAYPOINT_GATEWAY_LABEL = 'gateway.networking.k8s.io/gateway-name';
/** Gateway API classes of an ingress gateway ambit runs (`istio` so that Istio's samples apply unchanged). */
export const INGRESS_CLASSES: readonly string[] = ['ambit', 'istio'];
/**
 * Istio's default ingress gateway, with Istio's names, so that Istio Gateways selecting
 * `istio: ingressgateway` and AuthorizationPolicies naming its account apply unchanged.
 */
export const ISTIO_INGRESS = {
  namespace: 'istio-system',
  name: 'istio-ingressgateway',
  serviceAccount: 'istio-ingressgateway-service-account',
  labels: { istio: 'ingressgateway', app: 'istio-ingressgateway' } as Readonly<Record<string, string>>,
} as const;
/**
 * The label on an ingress gateway's ServiceAccount made by ambit (its value: the gateway's
 * Deployment), which makes the account's tokens a workload credential for the CA and discovery.
 */
export const INGRESS_ACCOUNT_LABEL = 'ambit.dev/ingress-gateway';
/** Secret types a gateway reads a certificate from. */
export const TLS_SECRET_TYPES: readonly string[] = ['kubernetes.io/tls', 'Opaque'];

/** A running pod as a config source reports it. */
export interface PodInfo {
  uid: string;
  namespace: string;
  name: string;
  node: string;
  ip: string;
  /** Every address of a dual-stack pod, `ip` first (Kubernetes status.podIPs); absent: `ip` alone. */
  ips?: string[];
  labels: Record<string, string>;
  spec: PodSpec;
  /** The controller that made the pod (a Deployment), for the workload name in telemetry. */
  owner?: { kind: string; name: string };
  /** In the node's network namespace (Kubernetes `hostNetwork`): its address is the node's, never enrolled. */
  hostNetwork?: boolean;
}

/**
 * Everything a config source knows at one moment. Its objects are not changed once reported: a
 * pod that changed is a new PodInfo (a source may hand the same object again for a pod that did
 * not, as KubernetesSource's cache does, and buildModel then reuses that pod's Workload).
 */
export interface SourceSnapshot {
  resources: Resource[];
  pods: PodInfo[];
}

export interface Workload {
  uid: string;
  /** The pod's name. */
  name: string;
  /** What telemetry calls the workload: the owning Deployment's name, else the pod's. */
  workload: string;
  namespace: string;
  serviceAccount: string;
  identity: string;
  ips: string[];
  node: string;
  labels: Record<string, string>;
  /** Redirected into the mesh (namespace or pod label ambient, and not opted out). */
  enrolled: boolean;
  /** Waypoint for traffic to this workload itself (pod label `ambit.dev/use-waypoint`). */
  waypoint?: string;
  /** Container ports by name, for named targetPorts. */
  ports: Record<string, number>;
}

export interface ServicePort {
  name?: string;
  port: number;
  targetPort: number | string;
  protocol: string;
}

export interface Service {
  namespace: string;
  name: string;
  hostname: string;
  vips: string[];
  ports: ServicePort[];
  /** Workload uids behind the service (selector match). */
  endpoints: string[];
  waypoint?: { name: string; namespace: string };
}

/** A config object handed on as written (validated), for policies and L7. */
export interface ConfigObject {
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  spec: unknown;
}

/** A ServiceEntry as node agents use it: its hosts, where its traffic goes, and what DNS answers for it. */
export interface ServiceEntryInfo {
  namespace: string;
  name: string;
  /** Lower-cased, as written (may hold '*.example.com'). */
  hosts: string[];
  /** spec.addresses that are single IPs (a /32 or /128 is one); blocks are in `cidrs`. */
  addresses: string[];
  cidrs: string[];
  ports: { number: number; name?: string; protocol: string; targetPort?: number }[];
  resolution: 'NONE' | 'STATIC' | 'DNS' | 'DNS_ROUND_ROBIN';
  location: 'MESH_EXTERNAL' | 'MESH_INTERNAL';
  endpoints: { address: string; ports?: Record<string, number>; labels?: Record<string, string> }[];
  /** What the node agent's DNS answers for each non-wildcard host: spec.addresses when set,
   *  else one VIP allocated by the controller (Istio's auto-allocation, 240.240.0.0/16, and
   *  2001:2::/48 for v6 if you do v6), stable across versions (e.g. hash of ns/name/host with
   *  collision probing in sorted order, so every agent and every controller replica agree). */
  dnsAddresses: Record<string, string[]>;
  exportTo?: string[];
}

/**
 * What a meshed pod may reach outside the registry (Istio's meshConfig.outboundTrafficPolicy.mode):
 * ALLOW_ANY passes unknown destinations through, REGISTRY_ONLY refuses them at the node agent.
 */
export type OutboundTrafficPolicy = 'ALLOW_ANY' | 'REGISTRY_ONLY';
export const OUTBOUND_TRAFFIC_POLICIES: readonly OutboundTrafficPolicy[] = ['ALLOW_ANY', 'REGISTRY_ONLY'];

/** The mesh-wide settings of the controller that data planes act on (streamed as `meshconfig/mesh`). */
export interface MeshConfig {
  outboundTrafficPolicy: OutboundTrafficPolicy;
}
export const DEFAULT_MESH_CONFIG: MeshConfig = { outboundTrafficPolicy: 'ALLOW_ANY' };

export interface MeshModel {
  workloads: Workload[];
  services: Service[];
  policies: ConfigObject[];
  l7: ConfigObject[];
  waypoints: ConfigObject[];
  serviceEntries: ServiceEntryInfo[];
  meshConfig: MeshConfig;
  /** Istio Gateways and Gateway API Gateways of an ingress class (INGRESS_CLASSES). */
  gateways: ConfigObject[];
  /** Secrets of a type a gateway reads (TLS_SECRET_TYPES), in namespace/name order. */
  secrets: SecretObject[];
}

/**
 * A Secret a gateway may read its certificate from: its data decoded to text (`tls.crt`,
 * `tls.key`, `ca.crt`). Never logged nor shown: status and proxy-config name it only.
 */
export interface SecretObject {
  namespace: string;
  name: string;
  type: string;
  data: Record<string, string>;
}

/** Whether a pod is in the mesh: its own label, else its namespace's; `none` on the pod opts out. */
export function isEnrolled(podLabels: Record<string, string>, namespaceLabels: Record<string, string>): boolean {
  const podMode = podLabels[DATAPLANE_MODE];
  if (podMode === 'none') return false;
  return podMode === 'ambient' || namespaceLabels[DATAPLANE_MODE] === 'ambient';
}

const POLICY_KINDS = new Set(['security.istio.io/AuthorizationPolicy', 'security.istio.io/PeerAuthentication']);
const L7_KINDS = new Set([
  'networking.istio.io/VirtualService', 'networking.istio.io/DestinationRule', 'networking.istio.io/ServiceEntry',
  'gateway.networking.k8s.io/HTTPRoute', 'gateway.networking.k8s.io/GRPCRoute', 'ambit.dev/RateLimit', 'split.smi-spec.io/TrafficSplit',
]);

function groupKind(r: Resource): string {
  const group = r.apiVersion.includes('/') ? r.apiVersion.split('/')[0]! : '';
  return `${group}/${r.kind}`;
}

/**
 * Whether a label selector (a Service's or an Istio Gateway's `selector`, a `matchLabels`)
 * selects an object with `labels`: each of its keys is there with the same value. An empty
 * selector, or one that is no map (in a spec not validated), selects nothing: a Service with
 * one has no endpoints, an Istio Gateway with one no ingress gateway. Where an empty selector
 * selects everything (an AuthorizationPolicy's), the caller checks for that first.
 */
export function selectorMatches(selector: unknown, labels: Readonly<Record<string, string>>): boolean {
  if (typeof selector !== 'object' || selector === null) return false;
  const entries = Object.entries(selector);
  return entries.length > 0 && entries.every(([k, v]) => labels[k] === v);
}

function configObject(r: Resource): ConfigObject {
  return { apiVersion: r.apiVersion, kind: r.kind, namespace: r.meta.namespace, name: r.meta.name, spec: r.raw.spec ?? {} };
}

/** A pod as the mesh sees it, given its namespace's labels (enrollment by namespace or pod label). */
export function workloadOf(p: PodInfo, namespaceLabels: Record<string, string>, trustDomain: string): Workload {
  const enrolled = !p.hostNetwork && isEnrolled(p.labels, namespaceLabels);
  const ports: Record<string, number> = {};
  for (const c of p.spec.containers) for (const port of c.ports) if (port.name) ports[port.name] = port.containerPort;
  return {
    uid: p.uid, name: p.name, workload: p.owner?.name ?? p.name, namespace: p.namespace, serviceAccount: p.spec.serviceAccountName,
    identity: formatSpiffeId({ trustDomain, namespace: p.namespace, serviceAccount: p.spec.serviceAccountName }),
    ips: p.ips ?? [p.ip], node: p.node, labels: p.labels, enrolled, ports,
    ...(p.labels[USE_WAYPOINT] ? { waypoint: p.labels[USE_WAYPOINT] } : {}),
  };
}

/**
 * The Workload built for a PodInfo, with what else it was built from: the same pod object in the
 * same namespace labels and trust domain gives the same Workload object, so that one pod's change
 * costs one workload's building and encoding (DiscoveryServer reuses an object's encoding by
 * reference), not every pod's.
 */
const builtWorkloads = new WeakMap<PodInfo, { namespaceLabels: Record<string, string>; trustDomain: string; workload: Workload }>();
const NO_LABELS: Record<string, string> = Object.freeze({}) as Record<string, string>;

function cachedWorkload(p: PodInfo, namespaceLabels: Record<string, string>, trustDomain: string): Workload {
  const hit = builtWorkloads.get(p);
  if (hit && hit.namespaceLabels === namespaceLabels && hit.trustDomain === trustDomain) return hit.workload;
  const workload = workloadOf(p, namespaceLabels, trustDomain);
  builtWorkloads.set(p, { namespaceLabels, trustDomain, workload });
  return workload;
}

export function buildModel(snapshot: SourceSnapshot, trustDomain: string, clusterDomain = 'cluster.local', meshConfig: MeshConfig = DEFAULT_MESH_CONFIG): MeshModel {
  const namespaces = new Map<string, NamespaceResource>();
  for (const r of snapshot.resources) if (r.kind === 'Namespace' && !('other' in r)) namespaces.set(r.meta.name, r as NamespaceResource);
  const nsLabels = (ns: string) => namespaces.get(ns)?.meta.labels ?? NO_LABELS;

  const workloads: Workload[] = snapshot.pods.map((p) => cachedWorkload(p, nsLabels(p.namespace), trustDomain)).sort((a, b) => a.uid.localeCompare(b.uid));

  // Workloads by namespace and one label, so that each selector looks at its candidates only.
  const byLabel = new Map<string, Workload[]>();
  for (const w of workloads) {
    for (const [k, v] of Object.entries(w.labels)) {
      const key = `${w.namespace}\u0000${k}\u0000${v}`;
      let list = byLabel.get(key);
      if (!list) byLabel.set(key, (list = []));
      list.push(w);
    }
  }
  const selected = (namespace: string, selector: Record<string, string>): Workload[] => {
    const [first] = Object.entries(selector);
    if (!first) return [];
    return (byLabel.get(`${namespace}\u0000${first[0]}\u0000${first[1]}`) ?? []).filter((w) => selectorMatches(selector, w.labels));
  };

  const vipOf = (svc: ServiceResource): string[] => {
    const ip = (svc.raw.spec as { clusterIP?: string } | undefined)?.clusterIP ?? svc.spec.clusterIP;
    return ip && ip !== 'None' ? [ip] : [];
  };

  const services: Service[] = snapshot.resources
    .filter((r): r is ServiceResource => r.kind === 'Service' && !('other' in r))
    .map((svc) => {
      const { namespace, name } = svc.meta;
      const waypoint = svc.meta.labels[USE_WAYPOINT] ?? nsLabels(namespace)[USE_WAYPOINT];
      return {
        namespace, name,
        hostname: `${name}.${namespace}.svc.${clusterDomain}`,
        vips: vipOf(svc),
        ports: svc.spec.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
        endpoints: svc.spec.selector ? selected(namespace, svc.spec.selector).map((w) => w.uid) : [],
        ...(waypoint && waypoint !== 'none' ? { waypoint: { name: waypoint, namespace } } : {}),
      };
    })
    .sort((a, b) => a.hostname.localeCompare(b.hostname));

  const byKind = (kinds: Set<string>) => snapshot.resources.filter((r) => kinds.has(groupKind(r))).map(configObject)
    .sort((a, b) => `${a.kind}/${a.namespace}/${a.name}`.localeCompare(`${b.kind}/${b.namespace}/${b.name}`));
  const waypoints = snapshot.resources
    .filter((r) => groupKind(r) === 'gateway.networking.k8s.io/Gateway' && (r.raw.spec as { gatewayClassName?: string } | undefined)?.gatewayClassName === WAYPOINT_CLASS)
    .map(configObject);

  const serviceEntries = allocateVips(snapshot.resources.filter((r) => groupKind(r) === 'networking.istio.io/ServiceEntry').map(serviceEntryOf))
    .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));

  const gateways = snapshot.resources.filter(isIngressGateway).map(configObject)
    .sort((a, b) => `${a.kind}/${a.namespace}/${a.name}`.localeCompare(`${b.kind}/${b.namespace}/${b.name}`));
  const secrets = snapshot.resources.map(secretOf).filter((s): s is SecretObject => s !== undefined)
    .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));

  return { workloads, services, policies: byKind(POLICY_KINDS), l7: byKind(L7_KINDS), waypoints, serviceEntries, meshConfig: { ...meshConfig }, gateways, secrets };
}

// ---------------------------------------------------------------------------------------------
// Ingress gateways and their Secrets

/** An Istio Gateway, or a Gateway API Gateway of an ingress class: what an ingress gateway serves. */
export function isIngressGateway(r: { apiVersion: string; kind: string; raw: Record<string, unknown> }): boolean {
  if (r.kind !== 'Gateway') return false;
  if (r.apiVersion.startsWith('networking.istio.io/')) return true;
  const cls = (r.raw.spec as { gatewayClassName?: unknown } | undefined)?.gatewayClassName;
  return r.apiVersion.startsWith('gateway.networking.k8s.io/') && typeof cls === 'string' && INGRESS_CLASSES.includes(cls);
}

/** Whether an Istio Gateway selects Istio's default ingress gateway (its selector is a subset of that pod's labels). */
export function selectsIstioIngress(spec: unknown): boolean {
  return selectorMatches((spec as { selector?: unknown } | undefined)?.selector, ISTIO_INGRESS.labels);
}

/**
 * A v1 Secret of a type a gateway reads, with `data` (base64) decoded and `stringData` over it,
 * as the API server merges them; anything else is no Secret of the model.
 */
export function secretOf(r: { apiVersion: string; kind: string; meta: { namespace: string; name: string }; raw: Record<string, unknown> }): SecretObject | undefined {
  if (r.apiVersion !== 'v1' || r.kind !== 'Secret') return undefined;
  const type = typeof r.raw.type === 'string' && r.raw.type !== '' ? r.raw.type : 'Opaque';
  if (!TLS_SECRET_TYPES.includes(type)) return undefined;
  const data: Record<string, string> = {};
  const encoded = r.raw.data;
  if (typeof encoded === 'object' && encoded !== null) {
    for (const [k, v] of Object.entries(encoded)) if (typeof v === 'string') data[k] = Buffer.from(v, 'base64').toString('utf8');
  }
  const plain = r.raw.stringData;
  if (typeof plain === 'object' && plain !== null) for (const [k, v] of Object.entries(plain)) if (typeof v === 'string') data[k] = v;
  return { namespace: r.meta.namespace, name: r.meta.name, type, data };
}

// ---------------------------------------------------------------------------------------------
// ServiceEntries

const RESOLUTIONS = new Set(['NONE', 'STATIC', 'DNS', 'DNS_ROUND_ROBIN']);
const asRecord = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Record<string, unknown> : {});
const asList = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const numberMap = (v: unknown): Record<string, number> | undefined => {
  const out = Object.fromEntries(Object.entries(asRecord(v)).filter((e): e is [string, number] => Number.isInteger(e[1])));
  return Object.keys(out).length > 0 ? out : undefined;
};
const stringMap = (v: unknown): Record<string, string> | undefined => {
  const out = Object.fromEntries(Object.entries(asRecord(v)).filter((e): e is [string, string] => typeof e[1] === 'string'));
  return Object.keys(out).length > 0 ? out : undefined;
};

/**
 * A ServiceEntry's spec as node agents take it. Validation has checked the spec; this still reads
 * it defensively (a field of the wrong type is left out) so that the model is total. Istio's
 * defaults: resolution NONE, location MESH_EXTERNAL.
 */
export function serviceEntryOf(r: Resource): ServiceEntryInfo {
  const spec = asRecord(r.raw.spec);
  const addresses: string[] = [];
  const cidrs: string[] = [];
  for (const a of asList(spec.addresses)) {
    if (typeof a !== 'string') continue;
    const [addr, len] = a.split('/');
    const ip = addr !== undefined ? parseIp(addr) : undefined;
    // A block of one address (a /32, a /128) is that address: DNS can answer it.
    if (ip && (len === undefined || Number(len) === (ip.v4 && !addr!.includes(':') ? 32 : 128))) addresses.push(addr!);
    else if (parseCidr(a)) cidrs.push(a);
  }
  const ports = asList(spec.ports).map(asRecord).filter((p) => Number.isInteger(p.number)).map((p) => ({
    number: p.number as number,
    ...(typeof p.name === 'string' ? { name: p.name } : {}),
    protocol: typeof p.protocol === 'string' ? p.protocol.toUpperCase() : 'TCP',
    ...(Number.isInteger(p.targetPort) ? { targetPort: p.targetPort as number } : {}),
  }));
  const endpoints = asList(spec.endpoints).map(asRecord).filter((e) => typeof e.address === 'string').map((e) => {
    const epPorts = numberMap(e.ports);
    const epLabels = stringMap(e.labels);
    return { address: e.address as string, ...(epPorts ? { ports: epPorts } : {}), ...(epLabels ? { labels: epLabels } : {}) };
  });
  const resolution = typeof spec.resolution === 'string' && RESOLUTIONS.has(spec.resolution) ? spec.resolution as ServiceEntryInfo['resolution'] : 'NONE';
  const exportTo = asList(spec.exportTo).filter((x): x is string => typeof x === 'string');
  return {
    namespace: r.meta.namespace, name: r.meta.name,
    hosts: [...new Set(asList(spec.hosts).filter((h): h is string => typeof h === 'string').map((h) => h.toLowerCase()))],
    addresses, cidrs, ports, resolution,
    location: spec.location === 'MESH_INTERNAL' ? 'MESH_INTERNAL' : 'MESH_EXTERNAL',
    endpoints, dnsAddresses: {},
    ...(Array.isArray(spec.exportTo) ? { exportTo } : {}),
  };
}

/** Istio's auto-allocation range for ServiceEntry hosts without an address (class E, never routed). */
export const SERVICE_ENTRY_VIP_BASE = '240.240.0.0';
const VIP_BASE = 0xf0f00000;
/** Offsets 1..65534 of the /16: neither the network nor the broadcast address. */
const VIP_SLOTS = 65534;

/** FNV-1a, 32 bits: a stable hash that every controller replica computes alike. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * Fills each entry's `dnsAddresses`: its own IP addresses for every non-wildcard host when it
 * has some, else (Istio's auto-allocation) one VIP per host from 240.240.0.0/16, at the slot the
 * hash of `namespace/name/host` picks, probing forward past a taken slot. Hosts are taken in
 * sorted order, so every replica and every version allocate alike, and a host keeps its VIP as
 * long as no new host that sorts before it collides with it. Entries with resolution NONE and
 * no address get none (traffic to a VIP there would go nowhere), nor do wildcard hosts.
 */
export function allocateVips(entries: ServiceEntryInfo[]): ServiceEntryInfo[] {
  const wanted: { entry: ServiceEntryInfo; host: string; key: string }[] = [];
  for (const entry of entries) {
    for (const host of entry.hosts) {
      if (host.startsWith('*')) continue;
      if (entry.addresses.length > 0) entry.dnsAddresses[host] = [...entry.addresses];
      else if (entry.cidrs.length === 0 && entry.resolution !== 'NONE') wanted.push({ entry, host, key: `${entry.namespace}/${entry.name}/${host}` });
    }
  }
  wanted.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const taken = new Set<number>();
  for (const { entry, host, key } of wanted) {
    if (taken.size >= VIP_SLOTS) break;
    let slot = fnv1a(key) % VIP_SLOTS;
    while (taken.has(slot)) slot = (slot + 1) % VIP_SLOTS;
    taken.add(slot);
    entry.dnsAddresses[host] = [intToIpv4(VIP_BASE + slot + 1)];
  }
  return entries;
}
