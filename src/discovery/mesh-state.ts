/**
 * What a node agent knows of the mesh at one version: the discovery stream's resources parsed
 * into the lookups the data path needs on every connection — workloads by IP, services by VIP,
 * the L4 authorizer — and the resolution of an original destination to where a connection goes.
 */
import { isIP } from 'node:net';
import type { AddressAnswer, DiscoveryScope, ServiceHead, WireResource } from './discovery.js';
import { isObject } from '../config/schema.js';
import {
  DEFAULT_MESH_CONFIG, OUTBOUND_TRAFFIC_POLICIES, WAYPOINT_GATEWAY_LABEL,
  type ConfigObject, type MeshConfig, type Service, type ServiceEntryInfo, type ServicePort, type Workload,
} from '../config/model.js';
import { L4Authorizer } from '../authz/l4.js';
import { cidrContains, parseCidr, parseIp, type Cidr } from '../util/ip.js';

export interface Destination {
  /** Where the tunnel or passthrough goes. */
  ip: string;
  port: number;
  /** The destination pod, when the address is a meshed or known workload. */
  workload?: Workload;
  /** The service the app called, when it called a VIP. */
  service?: Service;
  servicePort?: ServicePort;
}

/** A connection's original destination matched to a ServiceEntry. */
export interface EgressMatch {
  entry: ServiceEntryInfo;
  /** The host the connection is for: the one whose VIP or address it called, else the entry's first. */
  host: string;
  /** The entry's port the connection called. */
  port: ServiceEntryInfo['ports'][number];
  /** STATIC: the endpoint the app called directly (its address), when it did. */
  endpoint?: ServiceEntryInfo['endpoints'][number];
  /** How it matched: an address or VIP of the entry, one of its STATIC endpoints, or one of its CIDR blocks. */
  by: 'address' | 'endpoint' | 'cidr';
}

/** An address as the lookups key it: IPv4-mapped IPv6 as IPv4 ("::ffff:1.2.3.4" is "1.2.3.4"). */
function canonicalIp(text: string): string {
  return text.toLowerCase().startsWith('::ffff:') && isIP(text.slice(7)) === 4 ? text.slice(7) : text;
}

/** Istio's exportTo: absent or '*' every namespace, '.' the entry's own, else the namespaces named. */
export function visibleTo(entry: ServiceEntryInfo, namespace: string): boolean {
  const to = entry.exportTo;
  if (!to || to.length === 0) return true;
  return to.includes('*') || to.includes(namespace) || (to.includes('.') && entry.namespace === namespace);
}

/** The host a connection is reported under when it did not call one of the entry's VIPs: its first non-wildcard host. */
export function primaryHost(entry: ServiceEntryInfo): string {
  return entry.hosts.find((h) => !h.startsWith('*')) ?? entry.hosts[0] ?? `${entry.name}.${entry.namespace}`;
}

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export class MeshStateError extends Error {
  override readonly name = 'MeshStateError';
}

/**
 * Shape checks for what the controller streams. A resource that is not what the data path reads
 * makes the whole version a NACK (the agent keeps its last good config) — never a state that
 * throws later, on a connection.
 */
type Check = (v: unknown, at: string) => string | undefined;
const str: Check = (v, at) => (typeof v === 'string' ? undefined : `${at} must be a string`);
const bool: Check = (v, at) => (typeof v === 'boolean' ? undefined : `${at} must be a boolean`);
const port: Check = (v, at) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535 ? undefined : `${at} must be a port number`);
const ip: Check = (v, at) => (typeof v === 'string' && isIP(v) !== 0 ? undefined : `${at} must be an IP address`);
const cidr: Check = (v, at) => (typeof v === 'string' && parseCidr(v) ? undefined : `${at} must be a CIDR block`);
const oneOf = (values: readonly string[]): Check => (v, at) => (typeof v === 'string' && values.includes(v) ? undefined : `${at} must be one of ${values.join(', ')}`);
const optional = (c: Check): Check => (v, at) => (v === undefined ? undefined : c(v, at));
const list = (c: Check): Check => (v, at) => {
  if (!Array.isArray(v)) return `${at} must be a list`;
  for (let i = 0; i < v.length; i++) {
    const e = c(v[i], `${at}[${i}]`);
    if (e) return e;
  }
  return undefined;
};
const map = (c: Check): Check => (v, at) => {
  if (!isObject(v)) return `${at} must be an object`;
  for (const [k, x] of Object.entries(v)) {
    const e = c(x, `${at}.${k}`);
    if (e) return e;
  }
  return undefined;
};
const shape = (fields: Record<string, Check>): Check => (v, at) => {
  if (!isObject(v)) return `${at || 'the resource'} must be an object`;
  for (const [k, c] of Object.entries(fields)) {
    const e = c(v[k], at ? `${at}.${k}` : k);
    if (e) return e;
  }
  return undefined;
};
const CHECKS: Record<string, Check> = {
  workload: shape({
    uid: str, name: str, workload: str, namespace: str, serviceAccount: str, identity: str, ips: list(ip), node: str,
    labels: map(str), enrolled: bool, waypoint: optional(str), ports: map(port),
  }),
  service: shape({
    namespace: str, name: str, hostname: str, vips: list(ip), endpoints: list(str),
    ports: list(shape({ name: optional(str), port, targetPort: (v, at) => (typeof v === 'string' ? undefined : port(v, at)), protocol: str })),
    waypoint: optional(shape({ name: str, namespace: str })),
  }),
  servicehead: shape({
    namespace: str, name: str, hostname: str, vips: list(ip),
    ports: list(shape({ name: optional(str), port, targetPort: (v, at) => (typeof v === 'string' ? undefined : port(v, at)), protocol: str })),
    waypoint: optional(shape({ name: str, namespace: str })),
  }),
  address: shape({ address: ip, workload: optional(str) }),
  serviceentry: shape({
    namespace: str, name: str, hosts: list(str), addresses: list(ip), cidrs: list(cidr),
    ports: list(shape({ number: port, name: optional(str), protocol: str, targetPort: optional(port) })),
    resolution: oneOf(['NONE', 'STATIC', 'DNS', 'DNS_ROUND_ROBIN']), location: oneOf(['MESH_EXTERNAL', 'MESH_INTERNAL']),
    endpoints: list(shape({ address: str, ports: optional(map(port)), labels: optional(map(str)) })),
    dnsAddresses: map(list(ip)), exportTo: optional(list(str)),
  }),
  meshconfig: shape({ outboundTrafficPolicy: oneOf(OUTBOUND_TRAFFIC_POLICIES) }),
  policy: shape({ apiVersion: str, kind: str, namespace: str, name: str }),
  waypoint: shape({ apiVersion: str, kind: str, namespace: str, name: str }),
};

/** Parsed objects are kept across versions: a delta parses only what changed. */
const parsed = new WeakMap<WireResource, unknown>();
function parse<T>(r: WireResource): T {
  let v = parsed.get(r);
  if (v === undefined) {
    try {
      v = JSON.parse(r.json) as unknown;
    } catch (err) {
      throw new MeshStateError(`${r.key}: not JSON: ${(err as Error).message}`);
    }
    const wrong = CHECKS[r.type]?.(v, '');
    if (wrong) throw new MeshStateError(`${r.key}: ${wrong}`);
    parsed.set(r, v ?? null);
  }
  return v as T;
}

const NO_IDENTITIES: ReadonlySet<string> = new Set();

export class MeshState {
  readonly workloads = new Map<string, Workload>();
  readonly workloadsByIp = new Map<string, Workload>();
  readonly services = new Map<string, Service>();
  readonly servicesByVip = new Map<string, Service>();
  readonly policies: ConfigObject[] = [];
  readonly waypoints = new Map<string, ConfigObject>();
  /** Waypoint pods (with an address) by `namespace/gateway-name`. */
  readonly waypointPods = new Map<string, Workload[]>();
  /** The SPIFFE identities of each waypoint's pods, by `namespace/gateway-name`, and of all of them. */
  private readonly waypointIds = new Map<string, Set<string>>();
  readonly allWaypointIdentities = new Set<string>();
  /** The services each workload (uid) is an endpoint of. */
  readonly servicesOf = new Map<string, Service[]>();
  readonly authorizer: L4Authorizer;
  /** ServiceEntries in namespace/name order, and the mesh's settings (ALLOW_ANY until the controller says otherwise). */
  readonly serviceEntries: ServiceEntryInfo[] = [];
  meshConfig: MeshConfig = DEFAULT_MESH_CONFIG;
  /** ServiceEntry lookups by the address a connection was made to: its VIPs and addresses, STATIC endpoints, CIDR blocks. */
  private readonly egressByAddress = new Map<string, { entry: ServiceEntryInfo; host: string }[]>();
  private readonly egressByEndpoint = new Map<string, { entry: ServiceEntryInfo; endpoint: ServiceEntryInfo['endpoints'][number] }[]>();
  private readonly egressCidrs: { cidr: Cidr; entry: ServiceEntryInfo }[] = [];
  /**
   * Scope `node` (docs/CONTROL.md, What a node agent holds): services known by their head only
   * (addresses and ports; their endpoints come on demand), and the addresses the controller
   * answered for (whether a workload has them).
   */
  readonly scope: DiscoveryScope;
  private readonly headsOnly = new Set<Service>();
  private readonly answered = new Set<string>();

  constructor(readonly version: string, resources: ReadonlyMap<string, WireResource>, opts: { rootNamespace?: string; scope?: DiscoveryScope } = {}) {
    this.scope = opts.scope ?? 'cluster';
    const heads: ServiceHead[] = [];
    for (const r of resources.values()) {
      switch (r.type) {
        case 'workload': {
          const w = parse<Workload>(r);
          this.workloads.set(w.uid, w);
          for (const ip of w.ips) this.workloadsByIp.set(ip, w);
          break;
        }
        case 'service': {
          const s = parse<Service>(r);
          this.services.set(`${s.namespace}/${s.name}`, s);
          for (const vip of s.vips) this.servicesByVip.set(vip, s);
          break;
        }
        case 'servicehead':
          heads.push(parse<ServiceHead>(r));
          break;
        case 'address':
          this.answered.add(canonicalIp(parse<AddressAnswer>(r).address));
          break;
        case 'policy':
          this.policies.push(parse<ConfigObject>(r));
          break;
        case 'waypoint': {
          const g = parse<ConfigObject>(r);
          this.waypoints.set(`${g.namespace}/${g.name}`, g);
          break;
        }
        case 'serviceentry':
          this.serviceEntries.push(parse<ServiceEntryInfo>(r));
          break;
        case 'meshconfig':
          this.meshConfig = parse<MeshConfig>(r);
          break;
        case 'l7':
          break;
        default:
          throw new MeshStateError(`${r.key}: unknown resource type "${r.type}"`);
      }
    }
    // A service held in full (one of this node's pods serves it, or it was asked for) is its own; the rest by their heads.
    for (const head of heads) {
      const id = `${head.namespace}/${head.name}`;
      if (this.services.has(id)) continue;
      const s: Service = { ...head, endpoints: [] };
      this.services.set(id, s);
      this.headsOnly.add(s);
      for (const vip of s.vips) this.servicesByVip.set(vip, s);
    }
    for (const w of this.workloads.values()) {
      const gateway = w.labels[WAYPOINT_GATEWAY_LABEL];
      if (!gateway || w.ips.length === 0) continue;
      const key = `${w.namespace}/${gateway}`;
      push(this.waypointPods, key, w);
      let ids = this.waypointIds.get(key);
      if (!ids) this.waypointIds.set(key, (ids = new Set()));
      ids.add(w.identity);
      this.allWaypointIdentities.add(w.identity);
    }
    for (const svc of this.services.values()) for (const uid of svc.endpoints) push(this.servicesOf, uid, svc);
    this.authorizer = new L4Authorizer(this.policies, opts);
    this.serviceEntries.sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    for (const entry of this.serviceEntries) this.indexServiceEntry(entry);
  }

  private indexServiceEntry(entry: ServiceEntryInfo): void {
    const first = primaryHost(entry);
    const seen = new Set<string>();
    for (const [host, addrs] of Object.entries(entry.dnsAddresses)) {
      for (const a of addrs) {
        seen.add(a);
        push(this.egressByAddress, canonicalIp(a), { entry, host });
      }
    }
    for (const a of entry.addresses) if (!seen.has(a)) push(this.egressByAddress, canonicalIp(a), { entry, host: first });
    for (const c of entry.cidrs) {
      const parsedCidr = parseCidr(c);
      if (parsedCidr) this.egressCidrs.push({ cidr: parsedCidr, entry });
    }
    if (entry.resolution === 'STATIC') {
      for (const endpoint of entry.endpoints) if (isIP(endpoint.address)) push(this.egressByEndpoint, canonicalIp(endpoint.address), { entry, endpoint });
    }
  }

  /** Whether a service's endpoints are known (always, but for a service a node-scoped agent holds by its head only). */
  endpointsKnown(service: Service): boolean {
    return !this.headsOnly.has(service);
  }

  /**
   * What a node-scoped agent must ask the controller for before its data path can decide about
   * a connection to or from `ipText` (the demand name), or undefined when it knows enough: a
   * service's VIP whose endpoints it lacks, or an address that is neither a VIP, a workload's,
   * nor one the controller said no workload has. Always undefined for scope `cluster`.
   */
  missing(ipText: string): string | undefined {
    if (this.scope !== 'node') return undefined;
    const key = canonicalIp(ipText);
    const service = this.servicesByVip.get(key);
    // A waypoint-bound service's traffic goes to its waypoint, which picks the endpoint: its head is enough.
    if (service) return this.headsOnly.has(service) && !service.waypoint ? `service/${service.namespace}/${service.name}` : undefined;
    if (this.workloadsByIp.has(key) || this.answered.has(key) || isIP(key) === 0) return undefined;
    return `address/${key}`;
  }

  /** The demand that would complete service `namespace/name` (held by its head only), or undefined. */
  missingService(id: string): string | undefined {
    const service = this.services.get(id);
    return service && this.headsOnly.has(service) ? `service/${id}` : undefined;
  }

  /**
   * The ServiceEntry a connection to ip:port is for, as seen from `clientNamespace` (its
   * exportTo): an entry's own address or VIP first, then a STATIC endpoint's address, then a
   * CIDR block of its addresses (never for a workload's address: a block such as 10.0.0.0/8
   * must not take pod-to-pod traffic out of mutual TLS); in each, the first entry in
   * namespace/name order with a TCP port of that number. Undefined: no ServiceEntry covers the
   * destination.
   */
  serviceEntryFor(ipText: string, port: number, clientNamespace: string): EgressMatch | undefined {
    if (this.serviceEntries.length === 0) return undefined;
    const key = canonicalIp(ipText);
    const portOf = (e: ServiceEntryInfo) => (visibleTo(e, clientNamespace) ? e.ports.find((p) => p.number === port && p.protocol !== 'UDP') : undefined);
    for (const { entry, host } of this.egressByAddress.get(key) ?? []) {
      const p = portOf(entry);
      if (p) return { entry, host, port: p, by: 'address' };
    }
    for (const { entry, endpoint } of this.egressByEndpoint.get(key) ?? []) {
      const p = portOf(entry);
      if (p) return { entry, host: primaryHost(entry), port: p, endpoint, by: 'endpoint' };
    }
    if (this.egressCidrs.length > 0 && !this.workloadsByIp.has(key)) {
      const parsedIp = parseIp(ipText);
      if (parsedIp) {
        for (const { cidr: c, entry } of this.egressCidrs) {
          const p = cidrContains(c, parsedIp) ? portOf(entry) : undefined;
          if (p) return { entry, host: primaryHost(entry), port: p, by: 'cidr' };
        }
      }
    }
    return undefined;
  }

  /**
   * Whether REGISTRY_ONLY lets a connection to ip:port through: a mesh service's VIP, a known
   * workload's address, or a ServiceEntry that covers it (serviceEntryFor).
   */
  registered(ipText: string, port: number, clientNamespace: string): boolean {
    const key = canonicalIp(ipText);
    return this.servicesByVip.has(key) || this.workloadsByIp.has(key) || this.serviceEntryFor(key, port, clientNamespace) !== undefined;
  }

  /** Whether the mesh refuses a connection to ip:port from a pod of `clientNamespace`: REGISTRY_ONLY, and not registered. */
  refusesUnregistered(ipText: string, port: number, clientNamespace: string): boolean {
    return this.meshConfig.outboundTrafficPolicy === 'REGISTRY_ONLY' && !this.registered(ipText, port, clientNamespace);
  }

  /**
   * The waypoint that traffic to `w` on `port` must come through: the pod's own
   * `ambit.dev/use-waypoint` label (every port), else a waypoint bound to a service `w` serves
   * `port` for (through the service's label or its namespace's). Undefined: no L7 binding.
   */
  waypointFor(w: Workload, port: number): { namespace: string; name: string } | undefined {
    if (w.waypoint && w.waypoint !== 'none') return { namespace: w.namespace, name: w.waypoint };
    for (const svc of this.servicesOf.get(w.uid) ?? []) {
      if (svc.waypoint && svc.ports.some((p) => MeshState.targetPort(p, w) === port)) return svc.waypoint;
    }
    return undefined;
  }

  /** The SPIFFE identities of a waypoint's pods: the only peers a workload bound to it accepts L7-bound traffic from. */
  waypointIdentities(ref: { namespace: string; name: string }): ReadonlySet<string> {
    return this.waypointIds.get(`${ref.namespace}/${ref.name}`) ?? NO_IDENTITIES;
  }

  /** The workloads of `node` that are in the mesh. */
  enrolledOn(node: string): Workload[] {
    return [...this.workloads.values()].filter((w) => w.node === node && w.enrolled);
  }

  /** The port a service port targets on one endpoint (a named targetPort is looked up on the pod). */
  static targetPort(port: ServicePort, workload: Workload): number | undefined {
    if (typeof port.targetPort === 'number') return port.targetPort;
    if (/^\d+$/.test(port.targetPort)) return Number(port.targetPort);
    return workload.ports[port.targetPort];
  }

  /**
   * Where a connection the app made to ip:port goes. A VIP picks one endpoint (random among
   * those that serve the port, preferring `preferNode`); a pod IP is itself; anything else is
   * outside the mesh. Undefined when a VIP has no endpoint for the port.
   */
  resolve(ip: string, port: number, preferNode?: string, random: () => number = Math.random): Destination | undefined {
    const service = this.servicesByVip.get(ip);
    if (!service) {
      const workload = this.workloadsByIp.get(ip);
      return { ip, port, ...(workload ? { workload } : {}) };
    }
    const servicePort = service.ports.find((p) => p.port === port && p.protocol === 'TCP');
    if (!servicePort) return undefined;
    // Held by its head (node scope) and bound to a waypoint: the waypoint picks the endpoint.
    if (service.waypoint && this.headsOnly.has(service)) return { ip, port, service, servicePort };
    const candidates: { w: Workload; port: number }[] = [];
    for (const uid of service.endpoints) {
      const w = this.workloads.get(uid);
      const target = w && MeshState.targetPort(servicePort, w);
      if (w && target !== undefined && w.ips.length > 0) candidates.push({ w, port: target });
    }
    if (candidates.length === 0) return undefined;
    const local = preferNode ? candidates.filter((c) => c.w.node === preferNode) : [];
    const pool = local.length > 0 ? local : candidates;
    const pick = pool[Math.floor(random() * pool.length)]!;
    return { ip: pick.w.ips[0]!, port: pick.port, workload: pick.w, service, servicePort };
  }
}
