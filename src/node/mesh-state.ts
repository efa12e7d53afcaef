/**
 * What a node agent knows of the mesh at one version: the discovery stream's resources parsed
 * into the lookups the data path needs on every connection — workloads by IP, services by VIP,
 * the L4 authorizer — and the resolution of an original destination to where a connection goes.
 */
import type { WireResource } from '../control/discovery.js';
import { WAYPOINT_GATEWAY_LABEL, type ConfigObject, type Service, type ServicePort, type Workload } from '../control/model.js';
import { L4Authorizer } from './authz.js';

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

function push<K, V>(map: Map<K, V[]>, key: K, value: V): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}

export class MeshStateError extends Error {
  override readonly name = 'MeshStateError';
}

/** Parsed objects are kept across versions: a delta parses only what changed. */
const parsed = new WeakMap<WireResource, unknown>();
function parse<T>(r: WireResource): T {
  let v = parsed.get(r);
  if (v === undefined) {
    try {
      v = JSON.parse(r.json);
    } catch (err) {
      throw new MeshStateError(`${r.key}: not JSON: ${(err as Error).message}`);
    }
    parsed.set(r, v);
  }
  return v as T;
}

export class MeshState {
  readonly workloads = new Map<string, Workload>();
  readonly workloadsByIp = new Map<string, Workload>();
  readonly services = new Map<string, Service>();
  readonly servicesByVip = new Map<string, Service>();
  readonly policies: ConfigObject[] = [];
  readonly waypoints = new Map<string, ConfigObject>();
  /** Waypoint pods (with an address) by `namespace/gateway-name`. */
  readonly waypointPods = new Map<string, Workload[]>();
  /** The services each workload (uid) is an endpoint of. */
  readonly servicesOf = new Map<string, Service[]>();
  readonly authorizer: L4Authorizer;

  constructor(readonly version: string, resources: ReadonlyMap<string, WireResource>, opts: { rootNamespace?: string } = {}) {
    for (const r of resources.values()) {
      switch (r.type) {
        case 'workload': {
          const w = parse<Workload>(r);
          if (typeof w.uid !== 'string' || !Array.isArray(w.ips)) throw new MeshStateError(`${r.key}: a workload needs uid and ips`);
          this.workloads.set(w.uid, w);
          for (const ip of w.ips) this.workloadsByIp.set(ip, w);
          break;
        }
        case 'service': {
          const s = parse<Service>(r);
          if (!Array.isArray(s.vips) || !Array.isArray(s.ports) || !Array.isArray(s.endpoints)) throw new MeshStateError(`${r.key}: a service needs vips, ports and endpoints`);
          this.services.set(`${s.namespace}/${s.name}`, s);
          for (const vip of s.vips) this.servicesByVip.set(vip, s);
          break;
        }
        case 'policy':
          this.policies.push(parse<ConfigObject>(r));
          break;
        case 'waypoint': {
          const g = parse<ConfigObject>(r);
          this.waypoints.set(`${g.namespace}/${g.name}`, g);
          break;
        }
        case 'l7':
          break;
        default:
          throw new MeshStateError(`${r.key}: unknown resource type "${r.type}"`);
      }
    }
    for (const w of this.workloads.values()) {
      const gateway = w.labels[WAYPOINT_GATEWAY_LABEL];
      if (gateway && w.ips.length > 0) push(this.waypointPods, `${w.namespace}/${gateway}`, w);
    }
    for (const svc of this.services.values()) for (const uid of svc.endpoints) push(this.servicesOf, uid, svc);
    this.authorizer = new L4Authorizer(this.policies, opts);
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
  waypointIdentities(ref: { namespace: string; name: string }): Set<string> {
    return new Set((this.waypointPods.get(`${ref.namespace}/${ref.name}`) ?? []).map((w) => w.identity));
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
