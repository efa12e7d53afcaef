/**
 * The local cluster's network, built with iproute2 and nftables inside namespaces the cluster
 * owns. Nothing here touches the host's own netns beyond creating the named namespaces:
 *
 *   underlay netns   br0 172.30.0.1/24 ── uN ─┐ (one veth per node)
 *   node-N netns     eth0 172.30.0.(10+N) ────┘   forwarding on, routes to the other nodes'
 *                         fd00:172:30::(10+N)      pod ranges, service VIPs DNAT'd by nftables
 *                    lo 10.244.N.1 (pod gateway)
 *                    vpodX fe80::1 ── eth0 of a pod (10.244.N.X/32, default via 10.244.N.1;
 *                                     fd00:10:244:N::X/128, default via fe80::1)
 *
 * Pods are dual-stack (as Kubernetes' status.podIPs can be); services stay IPv4.
 *
 * Pods get point-to-point veths rather than a bridge: every packet between two pods, even on
 * one node, crosses the node's IP layer, so service DNAT and its reverse always apply (a
 * bridge would let replies between pods of one node bypass conntrack). The gateway address
 * lives on the node's loopback and is answered for on every veth (Linux's default arp_ignore).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { LocalError } from './errors.js';
import {
  ClusterLayout, nodeAddress, nodeAddress6, podAddress6, podCidr, podCidr6, podGateway, POD_GATEWAY6, SERVICE_CIDR, UNDERLAY_GATEWAY, UNDERLAY_PREFIX,
} from './layout.js';

function run(cmd: string, args: string[], input?: string): string {
  try {
    return execFileSync(cmd, args, { input, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new LocalError(`${cmd} is not installed`, 'run `make setup` (Debian packages iproute2, nftables, util-linux)');
    throw new LocalError(`${cmd} ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

function ip(...args: string[]): void {
  run('ip', args);
}

/** Writes a sysctl inside a netns (/proc/sys/net is per network namespace). */
function sysctl(netns: string, key: string, value: string): void {
  run('nsenter', [`--net=/run/netns/${netns}`, '--', 'sh', '-c', `echo ${value} > /proc/sys/${key.replaceAll('.', '/')}`]);
}

export function listNetns(): string[] {
  return existsSync('/run/netns') ? readdirSync('/run/netns') : [];
}

export function netnsExists(netns: string): boolean {
  return existsSync(`/run/netns/${netns}`);
}

function addNetns(netns: string): void {
  if (netnsExists(netns)) ip('netns', 'del', netns);
  ip('netns', 'add', netns);
  ip('-n', netns, 'link', 'set', 'lo', 'up');
}

export function deleteNetns(netns: string): void {
  if (netnsExists(netns)) ip('netns', 'del', netns);
}

/** One service port as the node's proxy rules see it. */
export interface ServiceRule {
  vip: string;
  protocol: 'TCP' | 'UDP';
  port: number;
  endpoints: { ip: string; port: number }[];
}

export class ClusterNetwork {
  constructor(private readonly layout: ClusterLayout) {}

  /** The underlay netns and its bridge; replaces a stale one left by a crash. */
  createUnderlay(): void {
    const ns = this.layout.underlayNetns;
    addNetns(ns);
    ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
    ip('-n', ns, 'addr', 'add', `${UNDERLAY_GATEWAY}/${UNDERLAY_PREFIX}`, 'dev', 'br0');
    ip('-n', ns, 'link', 'set', 'br0', 'up');
  }

  /** Node N: its netns, a veth onto the underlay bridge, forwarding, the pod gateway, routes. */
  createNode(index: number, nodeCount: number): void {
    const node = this.layout.nodeNetns(`node-${index}`);
    const underlay = this.layout.underlayNetns;
    addNetns(node);
    const port = `u${index}`;
    ip('-n', node, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', underlay);
    ip('-n', underlay, 'link', 'set', port, 'master', 'br0', 'up');
    ip('-n', node, 'addr', 'add', `${nodeAddress(index)}/${UNDERLAY_PREFIX}`, 'dev', 'eth0');
    ip('-n', node, '-6', 'addr', 'add', `${nodeAddress6(index)}/64`, 'dev', 'eth0', 'nodad');
    ip('-n', node, 'link', 'set', 'eth0', 'up');
    ip('-n', node, 'addr', 'add', `${podGateway(index)}/32`, 'dev', 'lo');
    sysctl(node, 'net.ipv4.ip_forward', '1');
    sysctl(node, 'net.ipv6.conf.all.forwarding', '1');
    // Un-DNAT'd traffic to the service range is delivered locally and refused (see the nft input chain).
    ip('-n', node, 'route', 'add', 'local', SERVICE_CIDR, 'dev', 'lo');
    for (let other = 1; other <= nodeCount; other++) {
      if (other !== index) ip('-n', node, 'route', 'add', podCidr(other), 'via', nodeAddress(other));
      if (other !== index) ip('-n', node, '-6', 'route', 'add', podCidr6(other), 'via', nodeAddress6(other));
    }
    ip('-n', underlay, 'route', 'replace', podCidr(index), 'via', nodeAddress(index));
    this.syncServices(index, [], []);
  }

  /** A pod's netns with a veth to its node: `ip/32`, default route through the node's gateway. */
  createPod(nodeIndex: number, ns: string, pod: string, podIp: string): void {
    const node = this.layout.nodeNetns(`node-${nodeIndex}`);
    const podNs = this.layout.podNetns(ns, pod);
    const hostIf = hostInterface(podIp);
    addNetns(podNs);
    try {
      ip('-n', node, 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', podNs);
      ip('-n', node, 'link', 'set', hostIf, 'up');
      ip('-n', node, '-6', 'addr', 'add', `${POD_GATEWAY6}/64`, 'dev', hostIf, 'nodad');
      ip('-n', node, 'route', 'replace', `${podIp}/32`, 'dev', hostIf, 'src', podGateway(nodeIndex));
      ip('-n', node, '-6', 'route', 'replace', `${podAddress6(podIp)}/128`, 'dev', hostIf);
      ip('-n', podNs, 'addr', 'add', `${podIp}/32`, 'dev', 'eth0');
      ip('-n', podNs, '-6', 'addr', 'add', `${podAddress6(podIp)}/128`, 'dev', 'eth0', 'nodad');
      ip('-n', podNs, 'link', 'set', 'eth0', 'up');
      ip('-n', podNs, 'route', 'add', podGateway(nodeIndex), 'dev', 'eth0', 'scope', 'link');
      ip('-n', podNs, 'route', 'add', 'default', 'via', podGateway(nodeIndex), 'dev', 'eth0');
      ip('-n', podNs, '-6', 'route', 'add', 'default', 'via', POD_GATEWAY6, 'dev', 'eth0');
    } catch (err) {
      // Deleting the pod netns deletes the veth pair and the node's route with it.
      deleteNetns(podNs);
      throw err;
    }
  }

  /**
   * Removes a pod's netns, and first its veth from the node's side when the node and address
   * are known: the kernel destroys a deleted netns's interfaces later, on its own cleanup queue,
   * so the node's `vpodX` would outlive the call, and the next pod given the same address would
   * fail to make its veth ("File exists").
   */
  deletePod(ns: string, pod: string, at?: { nodeIndex: number; podIp: string }): void {
    if (at) {
      try {
        ip('-n', this.layout.nodeNetns(`node-${at.nodeIndex}`), 'link', 'del', hostInterface(at.podIp));
      } catch {
        // Already gone (the pod's netns went first, or never got its veth).
      }
    }
    deleteNetns(this.layout.podNetns(ns, pod));
  }

  /**
   * Replaces the node's service rules in one nftables transaction (kube-proxy's role):
   * VIP:port → a random ready endpoint; a pod reaching itself through a VIP is masqueraded
   * (hairpin); anything else sent to the service range is refused, as an unserved VIP is in
   * Kubernetes.
   */
  syncServices(nodeIndex: number, rules: ServiceRule[], localPodIps: string[]): void {
    const node = this.layout.nodeNetns(`node-${nodeIndex}`);
    run('nsenter', [`--net=/run/netns/${node}`, '--', 'nft', '-f', '-'], serviceRuleset(rules, localPodIps));
  }

  /** The node's current service table, as nft prints it (for status and tests). */
  listServices(nodeIndex: number): string {
    const node = this.layout.nodeNetns(`node-${nodeIndex}`);
    return run('nsenter', [`--net=/run/netns/${node}`, '--', 'nft', 'list', 'table', 'ip', TABLE]);
  }
}

/** Node-side name of a pod's veth (interface names are local to the node's netns). */
function hostInterface(podIp: string): string {
  return `vpod${podIp.split('.')[3]}`;
}

const TABLE = 'ambit';

/** The complete nftables script for one node's services; `table; delete table; table {...}` makes it atomic. */
export function serviceRuleset(rules: ServiceRule[], localPodIps: string[]): string {
  const lines: string[] = [`table ip ${TABLE}`, `delete table ip ${TABLE}`, `table ip ${TABLE} {`];
  const served = rules.filter((r) => r.endpoints.length > 0);
  if (localPodIps.length > 0) {
    lines.push('  set hairpin {', '    type ipv4_addr . ipv4_addr', `    elements = { ${localPodIps.map((a) => `${a} . ${a}`).join(', ')} }`, '  }');
  }
  lines.push('  chain services {');
  if (served.length > 0) {
    const entries = served.map((r, i) => `${r.vip} . ${r.protocol.toLowerCase()} . ${r.port} : jump svc${i}`);
    lines.push(`    ip daddr . meta l4proto . th dport vmap { ${entries.join(', ')} }`);
  }
  lines.push('  }');
  served.forEach((r, i) => {
    const targets = r.endpoints.map((e, j) => `${j} : ${e.ip} . ${e.port}`).join(', ');
    lines.push(`  chain svc${i} {`, `    meta l4proto ${r.protocol.toLowerCase()} dnat ip to numgen random mod ${r.endpoints.length} map { ${targets} }`, '  }');
  });
  lines.push(
    '  chain prerouting {', '    type nat hook prerouting priority dstnat; policy accept;', '    jump services', '  }',
    '  chain output {', '    type nat hook output priority -100; policy accept;', '    jump services', '  }',
    '  chain postrouting {', '    type nat hook postrouting priority srcnat; policy accept;',
    ...(localPodIps.length > 0 ? ['    ct status dnat ip saddr . ip daddr @hairpin masquerade'] : []),
    '  }',
    '  chain input {', '    type filter hook input priority filter; policy accept;',
    `    ip daddr ${SERVICE_CIDR} meta l4proto tcp reject with tcp reset`,
    `    ip daddr ${SERVICE_CIDR} reject`,
    '  }',
    '}',
  );
  return `${lines.join('\n')}\n`;
}
