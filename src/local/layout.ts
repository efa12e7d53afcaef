/**
 * Where a local cluster lives: its names in the kernel (netns, cgroups, bpffs), its state
 * directory, and its address plan. Everything a cluster makes carries its prefix
 * `ambit-<name>`, so `ambit local down` can find every piece even without the state file.
 *
 * Address plan (private ranges; every cluster uses the same plan because no namespace of one
 * cluster can reach another's, or the host's network):
 *   underlay bridge  172.30.0.1/24        control-plane address, in the underlay netns (controller :15012)
 *   node-i           172.30.0.(10+i)/24   on the node's eth0
 *   pods of node-i   10.244.i.0/24        gateway 10.244.i.1 on the node side of every pod veth
 *   services         10.96.0.0/16         VIPs, DNAT'd in the node namespaces
 */
import { join } from 'node:path';
import { cgroup2Mount } from '../ebpf/mounts.js';
import { LocalError } from './errors.js';

export const DEFAULT_CLUSTER = 'ambit';
export const MAX_NODES = 50;
export const UNDERLAY_GATEWAY = '172.30.0.1';
export const UNDERLAY_PREFIX = 24;
/** The controller (CA, discovery) listens on the underlay gateway address. */
export const CONTROLLER_PORT = 15012;
export const SERVICE_CIDR = '10.96.0.0/16';
export const CLUSTER_DOMAIN = 'cluster.local';

const CLUSTER_NAME = /^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$/;

export function checkClusterName(name: string): string {
  if (!CLUSTER_NAME.test(name)) {
    throw new LocalError(`invalid cluster name "${name}": lower-case letters, digits and '-', 1-20 characters, starting and ending with a letter or digit`);
  }
  return name;
}

export function nodeName(index: number): string {
  return `node-${index}`;
}

export function nodeIndex(node: string): number {
  const m = /^node-(\d+)$/.exec(node);
  return m ? Number(m[1]) : NaN;
}

export function nodeAddress(index: number): string {
  return `172.30.0.${10 + index}`;
}

export function podCidr(index: number): string {
  return `10.244.${index}.0/24`;
}

export function podGateway(index: number): string {
  return `10.244.${index}.1`;
}

/**
 * Pods are dual-stack: each gets an IPv6 address derived from its IPv4 one (10.244.N.X →
 * fd00:10:244:N::X), so no state file changes and a pod's second address exists to be secured.
 */
export function podAddress6(ip4: string): string {
  const [, , n, x] = ip4.split('.');
  return `fd00:10:244:${n}::${x}`;
}

export function podCidr6(index: number): string {
  return `fd00:10:244:${index}::/64`;
}

export function nodeAddress6(index: number): string {
  return `fd00:172:30::${10 + index}`;
}

/** The IPv6 next hop every pod uses: the node side of its veth. */
export const POD_GATEWAY6 = 'fe80::1';

/** Root of every cluster's state directory; tests point it elsewhere with AMBIT_LOCAL_STATE. */
export function stateRoot(): string {
  return process.env.AMBIT_LOCAL_STATE ?? '/var/lib/ambit/local';
}

export class ClusterLayout {
  readonly prefix: string;
  readonly stateDir: string;

  /** `stateDir`: where the cluster's state is when it is known (a process the runtime started is told it), else under stateRoot(). */
  constructor(readonly name: string, stateDir?: string) {
    checkClusterName(name);
    this.prefix = `ambit-${name}`;
    this.stateDir = stateDir ?? join(stateRoot(), name);
  }

  get stateFile(): string { return join(this.stateDir, 'cluster.json'); }
  get socketPath(): string { return join(this.stateDir, 'runtime.sock'); }
  get pidFile(): string { return join(this.stateDir, 'runtime.pid'); }
  get logDir(): string { return join(this.stateDir, 'logs'); }
  /** Manifests dropped here are read by the controller directly (watched), besides what `ambit local apply` sends. */
  get configDir(): string { return join(this.stateDir, 'config'); }
  componentLog(component: string): string { return join(this.logDir, `${component}.log`); }
  podDir(ns: string, pod: string): string { return join(this.stateDir, 'pods', `${ns}.${pod}`); }
  containerLog(ns: string, pod: string, container: string): string { return join(this.podDir(ns, pod), `${container}.log`); }

  /** Network namespace names (`ip netns list`); a pod's is `<prefix>.<ns>.<pod>` (namespaces have no dots). */
  get underlayNetns(): string { return `${this.prefix}.underlay`; }
  nodeNetns(node: string): string { return `${this.prefix}.${node}`; }
  podNetns(ns: string, pod: string): string { return `${this.prefix}.${ns}.${pod}`; }
  /** True for every netns name this cluster may have made. */
  ownsNetns(netns: string): boolean { return netns.startsWith(`${this.prefix}.`); }

  /** The cluster's cgroup: `<prefix>/<node>/<ns>.<pod>` for pods, `<prefix>/system/<component>` for components. */
  get cgroupRoot(): string {
    const mount = cgroup2Mount();
    if (!mount) throw new LocalError('cgroup v2 is not mounted', 'see `ambit check`');
    return join(mount, this.prefix);
  }
  nodeCgroup(node: string): string { return join(this.cgroupRoot, node); }
  podCgroup(node: string, ns: string, pod: string): string { return join(this.nodeCgroup(node), `${ns}.${pod}`); }
  componentCgroup(component: string): string { return join(this.cgroupRoot, 'system', component); }

  /** Where the cluster's node agents pin their BPF objects (one directory per node). */
  get pinRoot(): string { return `/sys/fs/bpf/${this.prefix}`; }
  nodePinRoot(node: string): string { return join(this.pinRoot, node); }
}

export function netnsPath(netns: string): string {
  return `/run/netns/${netns}`;
}
