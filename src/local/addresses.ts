/** The local cluster's address plan at work: a free service VIP, a free pod address on a node. */
import { intToIpv4, ipv4ToInt } from '../util/ip.js';
import { LocalError } from './errors.js';
import { SERVICE_CIDR } from './layout.js';

const [SERVICE_NET, SERVICE_BITS] = SERVICE_CIDR.split('/') as [string, string];

/** Whether an IPv4 address is in the cluster's service range (SERVICE_CIDR). */
export function inServiceRange(ip: string): boolean {
  const mask = (0xffffffff << (32 - Number(SERVICE_BITS))) >>> 0;
  return ((ipv4ToInt(ip) & mask) >>> 0) === ipv4ToInt(SERVICE_NET);
}

/** The first VIP of the service range no service holds. */
export function allocateVip(used: Iterable<string>): string {
  const taken = new Set(used);
  // .0.1 is the API server's VIP in Kubernetes; start past the first few.
  for (let n = ipv4ToInt(SERVICE_NET) + 10; inServiceRange(intToIpv4(n)); n++) {
    if (!taken.has(intToIpv4(n))) return intToIpv4(n);
  }
  throw new LocalError(`the service range ${SERVICE_CIDR} is full`);
}

/** The first address of a node's pod /24 (from .2) that none of its pods holds. */
export function allocatePodIp(node: { name: string; podCidr: string }, used: Iterable<string>): string {
  const taken = new Set(used);
  const base = node.podCidr.split('.').slice(0, 3).join('.');
  for (let host = 2; host < 255; host++) if (!taken.has(`${base}.${host}`)) return `${base}.${host}`;
  throw new LocalError(`node ${node.name} has no free pod address left in ${node.podCidr}`);
}
