/**
 * Objects from the Kubernetes API server as the mesh's model takes them: their metadata, and a
 * Pod as a workload (used by the controller's Kubernetes source and by the node agent's CNI server,
 * which both read pods from the API server).
 */
import { isIP } from 'node:net';
import type { PodSpec } from '../kube/manifests.js';
import type { PodInfo } from './model.js';
import { isObject } from './schema.js';

/** An API object's metadata, with the defaults the API server leaves out. */
export interface ObjectMeta { name: string; namespace: string; resourceVersion: string; labels: Record<string, string>; annotations: Record<string, string>; uid?: string }
export function metaOf(obj: Record<string, unknown>): ObjectMeta | undefined {
  const m = obj.metadata;
  if (!isObject(m) || typeof m.name !== 'string') return undefined;
  return {
    name: m.name,
    namespace: typeof m.namespace === 'string' ? m.namespace : '',
    resourceVersion: typeof m.resourceVersion === 'string' ? m.resourceVersion : '',
    labels: isObject(m.labels) ? m.labels as Record<string, string> : {},
    annotations: isObject(m.annotations) ? m.annotations as Record<string, string> : {},
    ...(typeof m.uid === 'string' ? { uid: m.uid } : {}),
  };
}

/** A Pod object from the API as the model takes it; undefined when unscheduled, without an IP or finished. */
export function apiPod(raw: Record<string, unknown>): PodInfo | undefined {
  const meta = metaOf(raw);
  return meta ? podInfo(raw, meta) : undefined;
}

export function podInfo(raw: Record<string, unknown>, meta: ObjectMeta): PodInfo | undefined {
  const spec = isObject(raw.spec) ? raw.spec : {};
  const status = isObject(raw.status) ? raw.status : {};
  if (typeof spec.nodeName !== 'string' || !spec.nodeName || typeof status.podIP !== 'string' || !status.podIP) return undefined;
  if (status.phase === 'Succeeded' || status.phase === 'Failed') return undefined;
  const containers = (Array.isArray(spec.containers) ? spec.containers.filter(isObject) : []).map((c) => ({
    name: String(c.name), argv: [], env: [], cwd: '',
    ports: (Array.isArray(c.ports) ? c.ports.filter(isObject) : []).map((p) => ({
      ...(typeof p.name === 'string' ? { name: p.name } : {}),
      containerPort: Number(p.containerPort),
      protocol: (typeof p.protocol === 'string' ? p.protocol : 'TCP') as 'TCP',
    })),
    ...(typeof c.image === 'string' ? { image: c.image } : {}),
  }));
  const podSpec: PodSpec = {
    nodeName: spec.nodeName,
    serviceAccountName: typeof spec.serviceAccountName === 'string' ? spec.serviceAccountName : 'default',
    restartPolicy: (typeof spec.restartPolicy === 'string' ? spec.restartPolicy : 'Always') as PodSpec['restartPolicy'],
    terminationGracePeriodSeconds: typeof spec.terminationGracePeriodSeconds === 'number' ? spec.terminationGracePeriodSeconds : 30,
    containers,
  };
  const metadata = isObject(raw.metadata) ? raw.metadata : {};
  const ref = Array.isArray(metadata.ownerReferences) ? metadata.ownerReferences.filter(isObject).find((o) => o.controller === true) : undefined;
  let owner: PodInfo['owner'];
  if (ref && typeof ref.kind === 'string' && typeof ref.name === 'string') {
    // A Deployment's pods belong to a ReplicaSet named <deployment>-<pod-template-hash>.
    const hash = meta.labels['pod-template-hash'];
    owner = ref.kind === 'ReplicaSet' && hash && ref.name.endsWith(`-${hash}`)
      ? { kind: 'Deployment', name: ref.name.slice(0, -hash.length - 1) }
      : { kind: ref.kind, name: ref.name };
  }
  // Every address of a dual-stack pod (status.podIPs, podIP first): each is steered by the agent.
  const extra = (Array.isArray(status.podIPs) ? status.podIPs.filter(isObject) : [])
    .map((a) => a.ip).filter((a): a is string => typeof a === 'string' && isIP(a) !== 0 && a !== status.podIP);
  return {
    uid: meta.uid ?? `${meta.namespace}/${meta.name}`, namespace: meta.namespace, name: meta.name, node: spec.nodeName, ip: status.podIP,
    ...(extra.length > 0 ? { ips: [status.podIP, ...new Set(extra)] } : {}),
    labels: meta.labels, spec: podSpec, ...(owner ? { owner } : {}), ...(spec.hostNetwork === true ? { hostNetwork: true } : {}),
  };
}
