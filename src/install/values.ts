/**
 * The values of an ambit installation, and `--set key=value` overrides of them. Every key is
 * listed in VALUES with its default and its check: an unknown key or a bad value is an error
 * that names the key (and, for an unknown key, lists the known ones).
 */
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { HboneLimitsError, parseHboneLimits } from '../hbone/limits.js';
import { DEFAULT_PIN_ROOT } from '../ebpf/mounts.js';
import { packageVersion } from '../util/package.js';

/** The platforms `platform` presets defaults for (docs/KUBERNETES.md says what each changes and why). */
export const PLATFORMS = ['generic', 'kubeadm', 'eks', 'gke', 'k3s', 'aks'] as const;
export type Platform = (typeof PLATFORMS)[number];

/**
 * `cni.chained` → the `type` the primary CNI plugin has in the node's conflist, which the node
 * agent gets as `--cni-primary` to find the conflist to chain after.
 * - cilium: cilium-cni (05-cilium.conflist; also GKE Dataplane V2)
 * - calico: calico (10-calico.conflist)
 * - aws-vpc-cni: aws-cni (10-aws.conflist, followed by egress-cni and portmap)
 * - gke: gke,ptp (GKE's netd writes its own `gke` plugin into 10-gke-ptp.conflist when
 *   /home/kubernetes/bin/gke exists, else `ptp`; Dataplane V2's list starts with either too,
 *   cilium-cni after it: the agent takes whichever it finds)
 * - flannel: flannel (10-flannel.conflist)
 * - kindnet: ptp (kind's 10-kindnet.conflist runs the reference ptp plugin)
 * - azure-cni: azure-vnet (AKS's 10-azure.conflist)
 * - ptp, bridge: the reference plugins by their own names
 */
export const CNI_PRIMARY_TYPES: Readonly<Record<string, string>> = {
  cilium: 'cilium-cni',
  calico: 'calico',
  'aws-vpc-cni': 'aws-cni',
  gke: 'gke,ptp',
  flannel: 'flannel',
  kindnet: 'ptp',
  'azure-cni': 'azure-vnet',
  ptp: 'ptp',
  bridge: 'bridge',
};

export interface Values {
  platform: Platform;
  namespace: string;
  image: string;
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  /** Secret names every ambit pod (waypoints too) pulls its image with. */
  imagePullSecrets: string[];
  trustDomain: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  rootNamespace: string;
  controller: { replicas: number; certTtlSeconds: number };
  /** Istio's mesh config keys ambit acts on: what meshed pods may reach outside the registry. */
  meshConfig: { outboundTrafficPolicy: { mode: 'ALLOW_ANY' | 'REGISTRY_ONLY' } };
  nodeAgent: { drainSeconds: number; hboneLimits: string; pinRoot: string; cgroupRoot: string; kubeletCgroup: string[]; appArmorProfile: string };
  waypoint: { replicas: number };
  waypoints: { managed: boolean };
  /** Istio's default ingress gateway (istio-system/istio-ingressgateway), and every ingress gateway's replicas and Service type. */
  ingressGateway: { enabled: boolean; replicas: number; serviceType: 'LoadBalancer' | 'NodePort' | 'ClusterIP' };
  cni: { enabled: boolean; binDir: string; confDir: string; chained: string };
  monitoring: { podMonitor: boolean };
  /** A ResourceQuota that lets ambit's namespace run pods of the system-*-critical priority classes (GKE). */
  criticalPodsQuota: boolean;
}

/** A bad `--set` or values object: the message names the key. */
export class ValuesError extends Error {
  override readonly name = 'ValuesError';
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// registry[:port]/path[:tag][@sha256:digest], as container runtimes accept it (loosely).
const IMAGE = /^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(\/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$/;

type Parse = (raw: string, key: string) => unknown;

function dnsLabel(raw: string, key: string): string {
  if (!DNS_LABEL.test(raw) || raw.length > 63) throw new ValuesError(`${key} must be a DNS label (lower case letters, digits, '-', at most 63), got "${raw}"`);
  return raw;
}
function integer(min: number, max: number): Parse {
  return (raw, key) => {
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new ValuesError(`${key} must be an integer from ${min} to ${max}, got "${raw}"`);
    return Number(raw);
  };
}
function oneOf(values: readonly string[]): Parse {
  return (raw, key) => {
    if (!values.includes(raw)) throw new ValuesError(`${key} must be one of ${values.join(', ')}, got "${raw}"`);
    return raw;
  };
}
function boolean(raw: string, key: string): boolean {
  if (raw !== 'true' && raw !== 'false') throw new ValuesError(`${key} must be true or false, got "${raw}"`);
  return raw === 'true';
}
function absolutePath(raw: string, key: string): string {
  if (!raw.startsWith('/') || raw.includes('..') || /\s/.test(raw)) throw new ValuesError(`${key} must be an absolute path without "..", got "${raw}"`);
  return raw.replace(/\/+$/, '') || '/';
}

/** Names separated by commas or spaces (AMBIT_WAYPOINT_VALUES, itself comma-separated, carries them space-separated), each a DNS subdomain. */
function secretNames(raw: string, key: string): string[] {
  const names = raw.split(/[\s,]+/).filter(Boolean);
  for (const n of names) {
    if (!DNS_NAME.test(n) || n.length > 253) throw new ValuesError(`${key} takes Secret names (DNS subdomains: lower case letters, digits, '-', '.'), separated by commas; "${n}" is not one`);
  }
  return [...new Set(names)];
}

const CGROUP = /^[A-Za-z0-9_.@:-]+(\/[A-Za-z0-9_.@:-]+)*$/;
function cgroupList(raw: string, key: string): string[] {
  const paths = raw.split(',').map((p) => p.trim()).filter(Boolean);
  if (paths.length === 0) throw new ValuesError(`${key} needs at least one cgroup path, got "${raw}"`);
  for (const p of paths) {
    if (!CGROUP.test(p) || p.split('/').some((x) => x === '..' || x === '.')) throw new ValuesError(`${key} must be cgroup paths relative to the cgroup v2 mount, comma-separated (e.g. system.slice/kubelet.service), got "${p}"`);
  }
  return paths;
}

function appArmorProfile(raw: string, key: string): string {
  if (raw === 'unconfined' || raw === 'runtime/default') return raw;
  // The API server refuses an empty or padded localhost profile name; containerd needs it loaded by that name.
  if (/^localhost\/[^\s/][^\s]*$/.test(raw)) return raw;
  throw new ValuesError(`${key} must be unconfined, runtime/default or localhost/<profile loaded on every node>, got "${raw}"`);
}

interface ValueSpec { default: () => unknown; parse: Parse; help: string }

/** Every settable key (dotted), its default and what it means. */
export const VALUES: Record<string, ValueSpec> = {
  platform: {
    default: () => 'generic',
    parse: oneOf(PLATFORMS),
    help: 'presets the defaults of a platform (an explicit --set of a key wins whatever its order): generic, kubeadm, eks, aks (the defaults), gke, k3s',
  },
  namespace: { default: () => 'ambit-system', parse: dnsLabel, help: 'namespace of the controller and the node agents' },
  image: {
    default: () => `ghcr.io/ambit-mesh/ambit:${packageVersion()}`,
    parse: (raw, key) => {
      if (!IMAGE.test(raw)) throw new ValuesError(`${key} must be an image reference (registry/repository:tag or @sha256:digest), got "${raw}"`);
      return raw;
    },
    help: 'the one ambit image (controller, node agent, waypoints)',
  },
  imagePullPolicy: { default: () => 'IfNotPresent', parse: oneOf(['Always', 'IfNotPresent', 'Never']), help: 'pull policy of every ambit container' },
  imagePullSecrets: { default: () => [], parse: secretNames, help: 'Secrets (comma-separated names, each in ambit\'s namespace and in every waypoint\'s) every ambit pod pulls its image with' },
  trustDomain: {
    default: () => DEFAULT_TRUST_DOMAIN,
    parse: (raw, key) => {
      if (!DNS_NAME.test(raw) || raw.length > 253) throw new ValuesError(`${key} must be a DNS name (the SPIFFE trust domain), got "${raw}"`);
      return raw;
    },
    help: 'SPIFFE trust domain of workload identities',
  },
  logLevel: { default: () => 'info', parse: oneOf(['trace', 'debug', 'info', 'warn', 'error']), help: 'log level of every component (AMBIT_LOG_LEVEL)' },
  rootNamespace: { default: () => 'istio-system', parse: dnsLabel, help: 'Istio root namespace: mesh-wide policy lives there' },
  'controller.replicas': { default: () => 2, parse: integer(1, 10), help: 'controller replicas (one leader elected through a Lease; all serve the CA and discovery)' },
  'controller.certTtlSeconds': { default: () => 24 * 3600, parse: integer(600, 7 * 24 * 3600), help: 'default workload certificate lifetime (at most the controller\'s --max-cert-ttl, 7 days)' },
  'meshConfig.outboundTrafficPolicy.mode': {
    default: () => 'ALLOW_ANY',
    parse: oneOf(['ALLOW_ANY', 'REGISTRY_ONLY']),
    help: 'as Istio\'s: ALLOW_ANY lets meshed pods reach any destination; REGISTRY_ONLY only mesh services, workloads and ServiceEntries, and the node agents refuse the rest (the controller\'s AMBIT_OUTBOUND_TRAFFIC_POLICY)',
  },
  'nodeAgent.drainSeconds': { default: () => 30, parse: integer(0, 3600), help: 'how long connections may take to finish when the agent stops or a pod leaves the mesh' },
  'nodeAgent.hboneLimits': {
    default: () => '',
    parse: (raw, key) => {
      try {
        parseHboneLimits(raw);
      } catch (err) {
        if (err instanceof HboneLimitsError) throw new ValuesError(`${key}: ${err.message}`);
        throw err;
      }
      return raw.split(',').map((s) => s.trim()).filter((s) => s !== '').join(',');
    },
    help: 'HBONE limits over the defaults, NAME=VALUE comma-separated (e.g. maxStreamsPerPeer=1024,maxStreams=16384): what one peer, one pod and the node may hold (docs/DATAPATH.md, "HBONE limits")',
  },
  'nodeAgent.pinRoot': {
    default: () => DEFAULT_PIN_ROOT,
    parse: (raw, key) => {
      const path = absolutePath(raw, key);
      // Only /sys/fs/bpf (the host's bpffs) is mounted into the agent's container.
      if (!path.startsWith('/sys/fs/bpf/')) throw new ValuesError(`${key} must be a directory under /sys/fs/bpf/, got "${raw}"`);
      return path;
    },
    help: 'bpffs directory of the agent\'s pins (under /sys/fs/bpf/)',
  },
  'nodeAgent.cgroupRoot': { default: () => '/sys/fs/cgroup', parse: absolutePath, help: 'the host\'s cgroup v2 mount' },
  'nodeAgent.kubeletCgroup': {
    default: () => ['system.slice/kubelet.service'],
    parse: cgroupList,
    help: 'the kubelet\'s cgroups, relative to the cgroup v2 mount, comma-separated (a node where one is missing logs it and skips it): only connections from them (health probes) skip STRICT and policy (kubeadm, EKS, GKE, AKS: system.slice/kubelet.service)',
  },
  'nodeAgent.appArmorProfile': {
    default: () => 'unconfined',
    parse: appArmorProfile,
    help: 'the agent\'s AppArmor profile: unconfined (containerd\'s default profile denies the writes under /sys/fs/bpf it needs), runtime/default or localhost/<name>',
  },
  'waypoint.replicas': { default: () => 2, parse: integer(1, 100), help: 'replicas of each waypoint Deployment (spread over nodes when they can be; a PodDisruptionBudget lets drains take one at a time)' },
  'cni.enabled': {
    default: () => true,
    parse: boolean,
    help: 'the node agents chain the ambit-cni plugin after each node\'s primary CNI, so meshed pods are enrolled before their containers start (fail closed); false: pods are found through /proc once running (fail open at start)',
  },
  'cni.binDir': { default: () => '/opt/cni/bin', parse: absolutePath, help: 'the host\'s CNI plugin directory (gke: /home/kubernetes/bin; k3s: /var/lib/rancher/k3s/data/cni)' },
  'cni.confDir': { default: () => '/etc/cni/net.d', parse: absolutePath, help: 'the host\'s CNI config directory (k3s: /var/lib/rancher/k3s/agent/etc/cni/net.d)' },
  'cni.chained': {
    default: () => 'auto',
    parse: oneOf(['auto', ...Object.keys(CNI_PRIMARY_TYPES)]),
    help: `the primary CNI plugin ambit-cni is chained after; auto: the agent picks the node's conflist itself; otherwise the agent gets --cni-primary <type> (${Object.entries(CNI_PRIMARY_TYPES).map(([k, t]) => `${k}: ${t}`).join(', ')})`,
  },
  'waypoints.managed': {
    default: () => true,
    parse: boolean,
    help: 'the controller creates each waypoint\'s ServiceAccount, Deployment, Service and PodDisruptionBudget (needs write access to those kinds cluster-wide); false: no such RBAC, you apply the waypoint template yourself',
  },
  'ingressGateway.enabled': {
    default: () => false,
    parse: boolean,
    help: 'also run Istio\'s default ingress gateway: Deployment and Service istio-ingressgateway in istio-system (labels istio: ingressgateway), account istio-ingressgateway-service-account, serving the Istio Gateways that select it',
  },
  'ingressGateway.replicas': { default: () => 2, parse: integer(1, 100), help: 'replicas of each ingress gateway Deployment (Istio\'s default one and those of Gateways of class ambit or istio)' },
  'ingressGateway.serviceType': {
    default: () => 'LoadBalancer',
    parse: oneOf(['LoadBalancer', 'NodePort', 'ClusterIP']),
    help: 'the type of each ingress gateway\'s Service (Istio\'s default: LoadBalancer)',
  },
  'monitoring.podMonitor': {
    default: () => false,
    parse: boolean,
    help: 'also render prometheus-operator PodMonitors (monitoring.coreos.com/v1) for the controller, the node agents and the waypoints; needs that CRD installed',
  },
  criticalPodsQuota: {
    default: () => false,
    parse: boolean,
    help: 'a ResourceQuota in ambit\'s namespace for pods of priority classes system-node-critical and system-cluster-critical (GKE admits such pods outside kube-system only under one; preset by platform=gke)',
  },
};

/**
 * What each platform changes from the defaults, as `--set` would write it; anything not listed
 * keeps its default. kubeadm, EKS (AL2, AL2023, Bottlerocket) and AKS run the kubelet as the
 * systemd unit kubelet.service with CNI in /opt/cni/bin and /etc/cni/net.d: the defaults.
 */
export const PRESETS: Readonly<Record<Platform, Readonly<Record<string, string>>>> = {
  generic: {},
  kubeadm: {},
  eks: {},
  aks: {},
  gke: {
    // COS mounts /opt read-only; the kubelet's --cni-bin-dir is /home/kubernetes/bin.
    'cni.binDir': '/home/kubernetes/bin',
    criticalPodsQuota: 'true',
  },
  k3s: {
    // The fixed CNI bin directory of k3s since v1.28.15, v1.29.10, v1.30.6, v1.31.2 (older k3s:
    // /var/lib/rancher/k3s/data/current/bin, which changes with every k3s upgrade).
    'cni.binDir': '/var/lib/rancher/k3s/data/cni',
    'cni.confDir': '/var/lib/rancher/k3s/agent/etc/cni/net.d',
    // The kubelet runs inside the k3s process: the unit k3s.service on servers, k3s-agent.service
    // on agents. The DaemonSet has one set of arguments for both, so both are given.
    'nodeAgent.kubeletCgroup': 'system.slice/k3s.service,system.slice/k3s-agent.service',
  },
};

/** The defaults, with every key at its documented value, changed by a platform's preset. */
export function defaultValues(platform: Platform = 'generic'): Values {
  const v: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(VALUES)) setPath(v, key, spec.default());
  setPath(v, 'platform', platform);
  for (const [key, raw] of Object.entries(PRESETS[platform])) setPath(v, key, VALUES[key]!.parse(raw, key));
  return v as unknown as Values;
}

function setPath(obj: Record<string, unknown>, key: string, value: unknown): void {
  const parts = key.split('.');
  let o = obj;
  for (const p of parts.slice(0, -1)) {
    o[p] ??= {};
    o = o[p] as Record<string, unknown>;
  }
  o[parts[parts.length - 1]!] = value;
}

/**
 * Applies `key=value` overrides (as given to `--set`) to the defaults of the platform they name
 * (the last `platform=`): a preset only changes defaults, so an explicit key wins whether it
 * comes before or after `platform`. The first bad one throws.
 */
export function resolveValues(sets: readonly string[] = []): Values {
  const parsed = sets.map((set) => {
    const eq = set.indexOf('=');
    if (eq <= 0) throw new ValuesError(`--set takes key=value, got "${set}"`);
    const key = set.slice(0, eq).trim();
    const raw = set.slice(eq + 1).trim();
    const spec = VALUES[key];
    if (!spec) throw new ValuesError(`unknown value "${key}" (known: ${Object.keys(VALUES).join(', ')})`);
    return { key, value: spec.parse(raw, key) };
  });
  const platform = parsed.filter((p) => p.key === 'platform').at(-1)?.value as Platform | undefined;
  const values = defaultValues(platform);
  for (const { key, value } of parsed) setPath(values as unknown as Record<string, unknown>, key, value);
  return values;
}

/** The keys, defaults and meanings, one a line, for help texts. */
export function describeValues(): string {
  const presets = PLATFORMS.filter((p) => Object.keys(PRESETS[p]).length > 0)
    .map((p) => `  platform=${p}: ${Object.entries(PRESETS[p]).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  return [
    ...Object.entries(VALUES).map(([k, s]) => `  ${k} (default ${String(s.default()) || '""'}): ${s.help}`),
    '',
    'Presets (defaults they change; --set wins):',
    ...presets,
  ].join('\n');
}
