/**
 * The values of an ambit installation, and `--set key=value` overrides of them. Every key is
 * listed in VALUES with its default and its check: an unknown key or a bad value is an error
 * that names the key (and, for an unknown key, lists the known ones).
 */
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { packageVersion } from '../util/package.js';

export interface Values {
  namespace: string;
  image: string;
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
  trustDomain: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  rootNamespace: string;
  controller: { replicas: number; certTtlSeconds: number };
  nodeAgent: { drainSeconds: number; pinRoot: string; cgroupRoot: string; kubeletCgroup: string };
  waypoint: { replicas: number };
  waypoints: { managed: boolean };
  cni: { enabled: boolean; binDir: string; confDir: string };
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

interface ValueSpec { default: () => unknown; parse: Parse; help: string }

/** Every settable key (dotted), its default and what it means. */
export const VALUES: Record<string, ValueSpec> = {
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
  'nodeAgent.drainSeconds': { default: () => 30, parse: integer(0, 3600), help: 'how long connections may take to finish when the agent stops or a pod leaves the mesh' },
  'nodeAgent.pinRoot': {
    default: () => '/sys/fs/bpf/ambit',
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
    default: () => 'system.slice/kubelet.service',
    parse: (raw, key) => {
      if (!/^[A-Za-z0-9_.@:-]+(\/[A-Za-z0-9_.@:-]+)*$/.test(raw) || raw.split('/').some((p) => p === '..' || p === '.')) throw new ValuesError(`${key} must be a cgroup path relative to the cgroup v2 mount (e.g. system.slice/kubelet.service), got "${raw}"`);
      return raw;
    },
    help: 'the kubelet\'s cgroup, relative to the cgroup v2 mount: only connections from it (health probes) skip STRICT and policy (kubeadm, EKS, GKE: system.slice/kubelet.service)',
  },
  'waypoint.replicas': { default: () => 1, parse: integer(1, 100), help: 'replicas of each waypoint Deployment' },
  'cni.enabled': {
    default: () => true,
    parse: boolean,
    help: 'the node agents chain the ambit-cni plugin after each node\'s primary CNI, so meshed pods are enrolled before their containers start (fail closed); false: pods are found through /proc once running (fail open at start)',
  },
  'cni.binDir': { default: () => '/opt/cni/bin', parse: absolutePath, help: 'the host\'s CNI plugin directory (k3s: /var/lib/rancher/k3s/data/current/bin)' },
  'cni.confDir': { default: () => '/etc/cni/net.d', parse: absolutePath, help: 'the host\'s CNI config directory (k3s: /var/lib/rancher/k3s/agent/etc/cni/net.d)' },
  'waypoints.managed': {
    default: () => true,
    parse: boolean,
    help: 'the controller creates each waypoint\'s ServiceAccount, Deployment and Service (needs write access to those kinds cluster-wide); false: no such RBAC, you apply the waypoint template yourself',
  },
};

/** The defaults, with every key at its documented value. */
export function defaultValues(): Values {
  const v: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(VALUES)) setPath(v, key, spec.default());
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

/** Applies `key=value` overrides (as given to `--set`) to the defaults; the first bad one throws. */
export function resolveValues(sets: readonly string[] = []): Values {
  const values = defaultValues();
  for (const set of sets) {
    const eq = set.indexOf('=');
    if (eq <= 0) throw new ValuesError(`--set takes key=value, got "${set}"`);
    const key = set.slice(0, eq).trim();
    const raw = set.slice(eq + 1).trim();
    const spec = VALUES[key];
    if (!spec) throw new ValuesError(`unknown value "${key}" (known: ${Object.keys(VALUES).join(', ')})`);
    setPath(values as unknown as Record<string, unknown>, key, spec.parse(raw, key));
  }
  return values;
}

/** The keys, defaults and meanings, one a line, for help texts. */
export function describeValues(): string {
  return Object.entries(VALUES).map(([k, s]) => `  ${k} (default ${String(s.default())}): ${s.help}`).join('\n');
}
