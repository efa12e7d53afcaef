/**
 * A local cluster's persistent record: what the user applied, which pods exist where with
 * which addresses, and which VIPs are allocated. Written atomically after every change, so
 * `status`, `down` and a later `up` work from a new shell and after a crash.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { LocalError } from './errors.js';
import type { PodSpec, Resource } from '../kube/manifests.js';

export interface NodeRecord {
  name: string;
  index: number;
  ip: string;
  podCidr: string;
}

export interface PodRecord {
  uid: string;
  namespace: string;
  name: string;
  node: string;
  ip: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: PodSpec;
  /** The Deployment that made it, and the hash of the template it was made from. */
  owner?: { kind: 'Deployment' | 'Gateway' | 'IngressGateway'; name: string; templateHash: string };
  createdAt: string;
}

export interface ServiceRecord {
  vip: string;
}

export interface ClusterState {
  version: 1;
  name: string;
  createdAt: string;
  nodes: NodeRecord[];
  /** Every applied resource by `resourceKey`, as parsed (raw manifest included). */
  resources: Record<string, Resource>;
  /** Pods by `namespace/name`: bare Pods and the ones Deployments made. */
  pods: Record<string, PodRecord>;
  services: Record<string, ServiceRecord>;
  /** `ambit local up --prometheus`: the cluster runs a Prometheus scraping it (src/local/prometheus.ts). */
  prometheus?: { scrapeInterval: string };
  /** `ambit local up --outbound-traffic-policy`: the controller's mesh settings (absent: ALLOW_ANY). */
  meshConfig?: { outboundTrafficPolicy: 'ALLOW_ANY' | 'REGISTRY_ONLY' };
}

export function resourceKey(r: { kind: string; apiVersion?: string; meta: { namespace: string; name: string } }): string {
  const group = r.apiVersion?.includes('/') ? r.apiVersion.split('/')[0] : '';
  return `${r.kind}${group ? `.${group}` : ''}/${r.meta.namespace ? `${r.meta.namespace}/` : ''}${r.meta.name}`;
}

export function readState(path: string): ClusterState | undefined {
  if (!existsSync(path)) return undefined;
  let state: ClusterState;
  try {
    state = JSON.parse(readFileSync(path, 'utf8')) as ClusterState;
  } catch (err) {
    throw new LocalError(`cluster state ${path} is unreadable: ${(err as Error).message}`, 'remove the cluster with `ambit local down` and create it again');
  }
  if (state.version !== 1) throw new LocalError(`cluster state ${path} has version ${String(state.version)}, this ambit reads version 1`);
  return state;
}

export function writeState(path: string, state: ClusterState): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp`;
  // 0600: the state holds the Secrets applied to the cluster (gateways' private keys).
  writeFileSync(tmp, `${JSON.stringify(state, null, 1)}\n`, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}
