/**
 * The objects a canary runs on, as Flagger's Istio provider makes them: for a target Deployment
 * `backend` and a service name `backend`,
 *   - `backend-primary`, a Deployment with the target's pod template, its selector label's value
 *     suffixed `-primary`: the version that takes the traffic;
 *   - Services `backend` (the apex, which clients call) and `backend-primary`, selecting the
 *     primary's pods, and `backend-canary`, selecting the target's;
 *   - a VirtualService `backend` for the apex host, splitting it between the primary and canary
 *     Services by weight. The apex Service's waypoint applies it.
 * The target itself is left as the user wrote it but for its replica count, which the
 * controller sets (0 between analyses).
 */
import { createHash } from 'node:crypto';
import { isObject } from '../config/schema.js';
import type { CanarySpec } from './spec.js';

/** Put on every object the canary controller writes: which Canary (`namespace/name`) made it. */
export const CANARY_OWNER_ANNOTATION = 'ambit.dev/canary';

export type Manifest = Record<string, unknown>;

/** The labels Flagger takes as a Deployment's selector label, in its order. */
const SELECTOR_LABELS = ['app', 'name', 'app.kubernetes.io/name'];

export interface Names {
  apex: string;
  primaryService: string;
  canaryService: string;
  primaryDeployment: string;
}

export function namesOf(spec: CanarySpec): Names {
  return {
    apex: spec.service.name,
    primaryService: `${spec.service.name}-primary`,
    canaryService: `${spec.service.name}-canary`,
    primaryDeployment: `${spec.target.name}-primary`,
  };
}

/** JSON with sorted keys, so that equal objects hash alike whatever their key order. */
function stable(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stable).join(',')}]`;
  if (isObject(v)) return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${stable(v[k])}`).join(',')}}`;
  return JSON.stringify(v) ?? 'null';
}

/** The revision of a Deployment as a canary sees it: a hash of its pod template (not its replica count). */
export function templateChecksum(deployment: Manifest): string {
  const spec = isObject(deployment.spec) ? deployment.spec : {};
  return createHash('sha256').update(stable(spec.template ?? null)).digest('hex').slice(0, 16);
}

/** The target's selector label (app, name or app.kubernetes.io/name) and its value. */
export function selectorLabel(deployment: Manifest): { key: string; value: string } | undefined {
  const spec = isObject(deployment.spec) ? deployment.spec : {};
  const matchLabels = isObject(spec.selector) && isObject(spec.selector.matchLabels) ? spec.selector.matchLabels : {};
  for (const key of SELECTOR_LABELS) if (typeof matchLabels[key] === 'string') return { key, value: matchLabels[key] };
  return undefined;
}

const meta = (name: string, namespace: string, owner: string, extra: Record<string, unknown> = {}) => ({
  name, namespace, ...extra, annotations: { ...(isObject(extra.annotations) ? extra.annotations : {}), [CANARY_OWNER_ANNOTATION]: owner },
});

/** The primary Deployment: the target's spec with its selector label's value suffixed `-primary`. */
export function primaryDeployment(target: Manifest, names: Names, owner: string, replicas: number): Manifest {
  const label = selectorLabel(target)!;
  const spec = structuredClone(isObject(target.spec) ? target.spec : {});
  const value = `${label.value}-primary`;
  spec.replicas = replicas;
  spec.selector = { matchLabels: { [label.key]: value } };
  const template = isObject(spec.template) ? spec.template : {};
  const tmeta = isObject(template.metadata) ? template.metadata : {};
  template.metadata = { ...tmeta, labels: { ...(isObject(tmeta.labels) ? tmeta.labels : {}), [label.key]: value } };
  spec.template = template;
  const tm = isObject(target.metadata) ? target.metadata : {};
  return {
    apiVersion: 'apps/v1', kind: 'Deployment',
    metadata: meta(names.primaryDeployment, String(tm.namespace ?? ''), owner, isObject(tm.labels) ? { labels: tm.labels } : {}),
    spec,
  };
}

/** The target with another replica count, everything else as it is. */
export function scaled(target: Manifest, replicas: number): Manifest {
  const copy = structuredClone(target);
  for (const k of ['status']) delete copy[k];
  const m = isObject(copy.metadata) ? copy.metadata : {};
  copy.metadata = { name: m.name, namespace: m.namespace, ...(m.labels ? { labels: m.labels } : {}), ...(m.annotations ? { annotations: m.annotations } : {}) };
  copy.spec = { ...(isObject(copy.spec) ? copy.spec : {}), replicas };
  return copy;
}

/** The apex, primary and canary Services; `labels` (the waypoint's, from the apex Service the user had) go on each. */
export function services(spec: CanarySpec, target: Manifest, names: Names, namespace: string, owner: string, labels: Record<string, string>): Manifest[] {
  const label = selectorLabel(target)!;
  const port = { name: spec.service.portName, port: spec.service.port, targetPort: spec.service.targetPort, protocol: 'TCP' };
  const svc = (name: string, value: string) => ({
    apiVersion: 'v1', kind: 'Service',
    metadata: meta(name, namespace, owner, Object.keys(labels).length > 0 ? { labels } : {}),
    spec: { selector: { [label.key]: value }, ports: [port] },
  });
  return [svc(names.apex, `${label.value}-primary`), svc(names.primaryService, `${label.value}-primary`), svc(names.canaryService, label.value)];
}

/** The apex's VirtualService: `canaryWeight` % to the canary Service, the rest to the primary. */
export function virtualService(spec: CanarySpec, names: Names, namespace: string, owner: string, canaryWeight: number): Manifest {
  const w = Math.max(0, Math.min(100, Math.round(canaryWeight)));
  return {
    apiVersion: 'networking.istio.io/v1', kind: 'VirtualService',
    metadata: meta(names.apex, namespace, owner),
    spec: {
      hosts: [names.apex],
      http: [{
        route: [
          { destination: { host: names.primaryService, port: { number: spec.service.port } }, weight: 100 - w },
          { destination: { host: names.canaryService, port: { number: spec.service.port } }, weight: w },
        ],
      }],
    },
  };
}
