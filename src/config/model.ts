/**
 * The mesh model: what users wrote (Kubernetes objects, Istio and Gateway API config) and what
 * runs (pods with addresses and nodes), turned into the workloads, services, policies and L7
 * config that node agents and waypoints consume. Pure functions of a SourceSnapshot, so the
 * same input always gives the same model (and the same versions on the stream).
 */
import { formatSpiffeId } from '../identity/spiffe.js';
import type { NamespaceResource, PodSpec, Resource, ServiceResource } from '../kube/manifests.js';

export const DATAPLANE_MODE = 'ambit.dev/dataplane-mode';
export const USE_WAYPOINT = 'ambit.dev/use-waypoint';
export const WAYPOINT_CLASS = 'ambit-waypoint';
/** Gateway annotations of a waypoint: where it exports spans (OTLP/HTTP) and the share of new traces it samples (0-100). */
export const TRACING_ENDPOINT_ANNOTATION = 'ambit.dev/tracing-endpoint';
export const TRACING_SAMPLING_ANNOTATION = 'ambit.dev/tracing-sampling';
/** The label Gateway API implementations put on a gateway's pods (the waypoint pods). */
export const WAYPOINT_GATEWAY_LABEL = 'gateway.networking.k8s.io/gateway-name';

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

/** Everything a config source knows at one moment. */
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

export interface MeshModel {
  workloads: Workload[];
  services: Service[];
  policies: ConfigObject[];
  l7: ConfigObject[];
  waypoints: ConfigObject[];
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

function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
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

export function buildModel(snapshot: SourceSnapshot, trustDomain: string, clusterDomain = 'cluster.local'): MeshModel {
  const namespaces = new Map<string, NamespaceResource>();
  for (const r of snapshot.resources) if (r.kind === 'Namespace' && !('other' in r)) namespaces.set(r.meta.name, r as NamespaceResource);
  const nsLabels = (ns: string) => namespaces.get(ns)?.meta.labels ?? {};

  const workloads: Workload[] = snapshot.pods.map((p) => workloadOf(p, nsLabels(p.namespace), trustDomain)).sort((a, b) => a.uid.localeCompare(b.uid));

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
    return (byLabel.get(`${namespace}\u0000${first[0]}\u0000${first[1]}`) ?? []).filter((w) => matches(selector, w.labels));
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

  return { workloads, services, policies: byKind(POLICY_KINDS), l7: byKind(L7_KINDS), waypoints };
}
