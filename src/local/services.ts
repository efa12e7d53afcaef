/**
 * Services and DNS in the local cluster, as kube-proxy and CoreDNS would make them: the endpoints
 * of each service port (its selector's ready pods), the nodes' service rules, and each pod's
 * /etc/hosts and resolv.conf (nothing answers DNS in the cluster: names come from the hosts file).
 */
import type { ServiceResource } from '../kube/manifests.js';
import { CLUSTER_DOMAIN } from './layout.js';
import type { ServiceRule } from './net.js';
import type { LocalPod } from './pod.js';
import type { ClusterState, PodRecord } from './state.js';

/** The ready pods of a namespace that a selector selects, by address. */
export type ReadyPods = (namespace: string, selector: Record<string, string>) => LocalPod[];

export function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

export function servicesOf(state: ClusterState): ServiceResource[] {
  return Object.values(state.resources).filter((r): r is ServiceResource => r.kind === 'Service' && !('other' in r));
}

export function endpoints(svc: ServiceResource, port: ServiceResource['spec']['ports'][number], ready: ReadyPods): { ip: string; port: number }[] {
  if (!svc.spec.selector || Object.keys(svc.spec.selector).length === 0) return [];
  return ready(svc.meta.namespace, svc.spec.selector).flatMap((p) => {
    const target = p.resolvePort(port.targetPort);
    return target === undefined ? [] : [{ ip: p.record.ip, port: target }];
  });
}

/** Every service port with a VIP, and its endpoints: what the nodes' nftables rules carry. */
export function serviceRules(state: ClusterState, ready: ReadyPods): ServiceRule[] {
  return servicesOf(state).flatMap((svc) => {
    const vip = state.services[`${svc.meta.namespace}/${svc.meta.name}`]?.vip;
    if (!vip) return [];
    return svc.spec.ports
      .filter((p) => p.protocol === 'TCP' || p.protocol === 'UDP')
      .map((p) => ({ vip, protocol: p.protocol as 'TCP' | 'UDP', port: p.port, endpoints: endpoints(svc, p, ready) }));
  });
}

/** A pod's /etc/hosts: itself, the nodes, and every service under its Kubernetes DNS names. */
export function hostsFile(state: ClusterState, ready: ReadyPods, pod: PodRecord): string {
  const lines = ['127.0.0.1\tlocalhost', '::1\tlocalhost ip6-localhost ip6-loopback', `${pod.ip}\t${pod.spec.hostname ?? pod.name}`, ''];
  for (const n of state.nodes) lines.push(`${n.ip}\t${n.name}`);
  for (const svc of servicesOf(state)) {
    const { name, namespace } = svc.meta;
    const names = [`${name}.${namespace}.svc.${CLUSTER_DOMAIN}`, `${name}.${namespace}.svc`, `${name}.${namespace}`, ...(namespace === pod.namespace ? [name] : [])].join(' ');
    const vip = state.services[`${namespace}/${name}`]?.vip;
    if (vip) lines.push(`${vip}\t${names}`);
    else if (svc.spec.selector) for (const p of ready(namespace, svc.spec.selector)) lines.push(`${p.record.ip}\t${names}`);
  }
  return `${lines.join('\n')}\n`;
}

export function resolvConf(pod: PodRecord): string {
  // Names come from the pod's /etc/hosts; nothing answers DNS inside the cluster, so a
  // lookup of an unknown name fails at once instead of waiting on the host's resolver.
  return [`search ${pod.namespace}.svc.${CLUSTER_DOMAIN} svc.${CLUSTER_DOMAIN} ${CLUSTER_DOMAIN}`, 'nameserver 127.0.0.1', 'options ndots:5 timeout:1 attempts:1', ''].join('\n');
}
