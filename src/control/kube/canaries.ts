/**
 * The canary controller's view of a Kubernetes cluster, as Flagger works there: Flagger's Canary
 * objects (flagger.app/v1beta1) listed from the API server, the objects a canary runs on written
 * by server-side apply (field manager `ambit-canary`), each Canary's progress in its status
 * subresource and its history as core Events, as Flagger's recorder makes them (so `kubectl
 * describe canary` and `ambit canary status --kube` show both).
 *
 * - The target Deployment is the user's: only its `spec.replicas` is applied (Flagger scales it
 *   the same way), so a change the user makes meanwhile is never written back over.
 * - A Deployment is ready as `kubectl rollout status` judges it: its generation observed, every
 *   replica updated and ready, none of the old ones left.
 * - The checks read the waypoints' own /metrics (pod IP:15020, from the controller, which runs in
 *   the cluster), or a Prometheus when AMBIT_CANARY_PROMETHEUS names one.
 * - Flagger's CRD not installed (404) or not readable (403): no canaries, said once, looked for
 *   again every `absentRetryMs`.
 * - Closed (this replica stopped leading): every write is refused, so a step still running when
 *   leadership is lost writes nothing more.
 */
import type { Logger } from 'pino';
import { canaryObject, CANARY_ACTION_ANNOTATION, type CanaryCluster, type CanaryControllerOptions, type CanaryMetrics, type CanaryObject, type CanaryStatus, type DeploymentState } from '../../canary/controller.js';
import { PrometheusMetrics, SampledMetrics } from '../../canary/metrics.js';
import { CANARY_OWNER_ANNOTATION, type Manifest } from '../../canary/objects.js';
import { directPost, webhookCaller } from '../../canary/webhooks.js';
import { USE_WAYPOINT, WAYPOINT_CLASS, WAYPOINT_GATEWAY_LABEL } from '../../config/model.js';
import { isObject } from '../../config/schema.js';
import { WAYPOINT_PORTS } from '../../install/waypoint.js';
import type { KubeClient, KubeResponse } from '../../kube/client.js';
import { prometheusQuery, type Fetch, type Target } from '../../observe/prometheus.js';
import { silentLogger } from '../../telemetry/log.js';

export const CANARY_FIELD_MANAGER = 'ambit-canary';
/** The `source.component` of the Events the canary controller records. */
export const CANARY_EVENT_SOURCE = 'ambit-canary';
export const CANARIES_PATH = '/apis/flagger.app/v1beta1';

/** The kinds the canary controller writes, and where they live in the API. */
const KINDS: Readonly<Record<string, { group: string; plural: string }>> = {
  Deployment: { group: 'apps', plural: 'deployments' },
  Service: { group: '', plural: 'services' },
  VirtualService: { group: 'networking.istio.io', plural: 'virtualservices' },
};

/** The REST path of one object the canary controller writes. */
export function objectPath(o: Manifest): string {
  const apiVersion = typeof o.apiVersion === 'string' ? o.apiVersion : '';
  const kind = typeof o.kind === 'string' ? o.kind : '';
  const meta = isObject(o.metadata) ? o.metadata : {};
  const k = KINDS[kind];
  const group = apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
  if (!k || k.group !== group) throw new Error(`the canary controller writes Deployments, Services and VirtualServices, not ${apiVersion} ${kind}`);
  if (typeof meta.name !== 'string' || typeof meta.namespace !== 'string') throw new Error(`${kind} without a name and namespace`);
  const prefix = group ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  return `${prefix}/namespaces/${encodeURIComponent(meta.namespace)}/${k.plural}/${encodeURIComponent(meta.name)}`;
}

/** Whether a Deployment is rolled out, as `kubectl rollout status` judges it. */
export function deploymentReady(d: Record<string, unknown>): boolean {
  const meta = isObject(d.metadata) ? d.metadata : {};
  const spec = isObject(d.spec) ? d.spec : {};
  const status = isObject(d.status) ? d.status : {};
  const num = (v: unknown) => (typeof v === 'number' ? v : 0);
  if (num(status.observedGeneration) < num(meta.generation)) return false;
  const want = typeof spec.replicas === 'number' ? spec.replicas : 1;
  if (want === 0) return true;
  const updated = num(status.updatedReplicas);
  return updated >= want && num(status.replicas) <= updated && num(status.readyReplicas) >= updated;
}

/** The fields the server sets, which a manifest to apply must not carry. */
const SERVER_FIELDS = ['resourceVersion', 'uid', 'creationTimestamp', 'managedFields', 'generation', 'selfLink'];

function manifestOf(d: Record<string, unknown>): Manifest {
  const copy = structuredClone(d);
  delete copy.status;
  if (isObject(copy.metadata)) for (const k of SERVER_FIELDS) delete copy.metadata[k];
  return copy;
}

const message = (res: KubeResponse): string => `HTTP ${res.status}${isObject(res.body) && typeof res.body.message === 'string' ? `: ${res.body.message}` : ''}`;
const ok = (res: KubeResponse) => res.status >= 200 && res.status < 300;

export interface KubeCanaryClusterOptions {
  log?: Logger;
  /** Flagger's CRD absent or forbidden: looked for again this often (ms). */
  absentRetryMs?: number;
  now?: () => number;
}

export class KubeCanaryCluster implements CanaryCluster {
  private readonly log: Logger;
  private readonly absentRetryMs: number;
  private readonly now: () => number;
  /** Canary `ns/name` → its uid, from the last list (for the Events' involvedObject). */
  private readonly uids = new Map<string, string>();
  /** While Flagger's CRD is absent (or forbidden): until when not to look, and why (said once). */
  private absent?: { until: number; why: string };
  private lastEventNanos = 0n;
  private closed = false;

  constructor(private readonly client: KubeClient, opts: KubeCanaryClusterOptions = {}) {
    this.log = opts.log ?? silentLogger;
    this.absentRetryMs = opts.absentRetryMs ?? 60_000;
    this.now = opts.now ?? Date.now;
  }

  /** Refuses every write from now on (this replica no longer leads). */
  close(): void {
    this.closed = true;
  }

  private writable(what: string): void {
    if (this.closed) throw new Error(`${what}: this controller replica no longer leads`);
  }

  async canaries(): Promise<CanaryObject[]> {
    if (this.absent && this.absent.until > this.now()) return [];
    const res = await this.client.request('GET', `${CANARIES_PATH}/canaries`);
    if (res.status === 404 || res.status === 403) {
      const why = res.status === 404
        ? 'Flagger\'s Canary CRD (canaries.flagger.app) is not installed: no canaries run until it is'
        : `the controller may not list canaries.flagger.app (${message(res)}): re-apply \`ambit install\`, whose ClusterRole grants it`;
      if (this.absent?.why !== why) this.log[res.status === 404 ? 'info' : 'warn']({ retryInMs: this.absentRetryMs }, why);
      this.absent = { until: this.now() + this.absentRetryMs, why };
      return [];
    }
    if (res.status !== 200 || !isObject(res.body) || !Array.isArray(res.body.items)) throw new Error(`list canaries: ${message(res)}`);
    if (this.absent) this.log.info('Flagger\'s Canary CRD is served: running canaries');
    this.absent = undefined;
    const out: CanaryObject[] = [];
    this.uids.clear();
    for (const item of res.body.items) {
      if (!isObject(item)) continue;
      const meta = isObject(item.metadata) ? item.metadata : {};
      // Being deleted: nothing more to step.
      if (meta.deletionTimestamp) continue;
      const c = canaryObject(item);
      if (!c) continue;
      if (typeof meta.uid === 'string') this.uids.set(`${c.namespace}/${c.name}`, meta.uid);
      out.push(c);
    }
    return out;
  }

  async deployment(namespace: string, name: string): Promise<DeploymentState | undefined> {
    const d = await this.get(`/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/deployments/${encodeURIComponent(name)}`, `Deployment ${namespace}/${name}`);
    if (!d) return undefined;
    const spec = isObject(d.spec) ? d.spec : {};
    return { manifest: manifestOf(d), replicas: typeof spec.replicas === 'number' ? spec.replicas : 1, ready: deploymentReady(d) };
  }

  async serviceLabels(namespace: string, name: string): Promise<Record<string, string> | undefined> {
    const svc = await this.get(`/api/v1/namespaces/${encodeURIComponent(namespace)}/services/${encodeURIComponent(name)}`, `Service ${namespace}/${name}`);
    return svc ? labelsOf(svc) : undefined;
  }

  /** The Service's `ambit.dev/use-waypoint`, else its Namespace's, when it names a Gateway of class ambit-waypoint there. */
  async waypointFor(namespace: string, labels: Record<string, string>): Promise<string | undefined> {
    let name = labels[USE_WAYPOINT];
    if (name === undefined) {
      const ns = await this.get(`/api/v1/namespaces/${encodeURIComponent(namespace)}`, `Namespace ${namespace}`);
      name = ns ? labelsOf(ns)[USE_WAYPOINT] : undefined;
    }
    if (!name || name === 'none') return undefined;
    const gateway = await this.get(`/apis/gateway.networking.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/gateways/${encodeURIComponent(name)}`, `Gateway ${namespace}/${name}`);
    return gateway && isObject(gateway.spec) && gateway.spec.gatewayClassName === WAYPOINT_CLASS ? name : undefined;
  }

  async apply(objects: Manifest[]): Promise<void> {
    for (const o of objects) {
      const path = objectPath(o);
      const meta = isObject(o.metadata) ? o.metadata : {};
      const what = `${String(o.kind)} ${String(meta.namespace)}/${String(meta.name)}`;
      this.writable(`apply ${what}`);
      const res = await this.client.request('PATCH', `${path}?fieldManager=${CANARY_FIELD_MANAGER}&force=true`, bodyToApply(o), 'application/apply-patch+yaml');
      if (!ok(res)) {
        const hint = res.status === 404 && o.kind === 'VirtualService' ? ' (is Istio\'s VirtualService CRD, networking.istio.io/v1, installed? helm install istio-base istio/base -n istio-system --create-namespace)' : '';
        throw new Error(`apply ${what}: ${message(res)}${hint}`);
      }
    }
  }

  /** A merge patch of the status subresource: fields the new status no longer has are removed. */
  async setStatus(c: CanaryObject, status: CanaryStatus): Promise<void> {
    this.writable(`status of canary ${c.namespace}/${c.name}`);
    const patch: Record<string, unknown> = { ...status };
    for (const k of Object.keys(c.status ?? {})) if (!(k in patch)) patch[k] = null;
    if (!('lastCheck' in patch)) patch.lastCheck = null;
    const res = await this.client.request('PATCH', `${this.canaryPath(c)}/status`, { status: patch }, 'application/merge-patch+json');
    if (!ok(res)) throw new Error(`status of canary ${c.namespace}/${c.name}: ${message(res)}`);
  }

  /** A core/v1 Event about the Canary, as client-go's recorder makes one; a failure is logged, never thrown. */
  async event(c: CanaryObject, type: 'Normal' | 'Warning', reason: string, text: string): Promise<void> {
    if (this.closed) return;
    const at = this.now();
    // Named `<canary>.<time in ns, hex>` as the recorder names them; one a nanosecond later when two share a millisecond.
    let nanos = BigInt(at) * 1_000_000n;
    if (nanos <= this.lastEventNanos) nanos = this.lastEventNanos + 1n;
    this.lastEventNanos = nanos;
    const time = new Date(at).toISOString().replace(/\.\d+Z$/, 'Z');
    const uid = this.uids.get(`${c.namespace}/${c.name}`);
    const body = {
      apiVersion: 'v1', kind: 'Event',
      metadata: { name: `${c.name}.${nanos.toString(16)}`, namespace: c.namespace },
      involvedObject: { kind: 'Canary', apiVersion: 'flagger.app/v1beta1', name: c.name, namespace: c.namespace, ...(uid ? { uid } : {}) },
      reason, message: text, type,
      source: { component: CANARY_EVENT_SOURCE },
      firstTimestamp: time, lastTimestamp: time, count: 1,
    };
    try {
      const res = await this.client.request('POST', `/api/v1/namespaces/${encodeURIComponent(c.namespace)}/events`, body);
      if (!ok(res)) throw new Error(message(res));
    } catch (err) {
      this.log.warn({ canary: `${c.namespace}/${c.name}`, reason, event: text, err: (err as Error).message }, 'could not record a canary event');
    }
  }

  async clearAction(c: CanaryObject): Promise<void> {
    this.writable(`annotations of canary ${c.namespace}/${c.name}`);
    const res = await this.client.request('PATCH', this.canaryPath(c), { metadata: { annotations: { [CANARY_ACTION_ANNOTATION]: null } } }, 'application/merge-patch+json');
    if (!ok(res)) throw new Error(`remove ${CANARY_ACTION_ANNOTATION} from canary ${c.namespace}/${c.name}: ${message(res)}`);
  }

  /** The running waypoint pods of these namespaces, as metrics endpoints (pod IP:15020). */
  async waypointTargets(namespaces: string[]): Promise<Target[]> {
    const targets: Target[] = [];
    for (const ns of namespaces) {
      const res = await this.client.request('GET', `/api/v1/namespaces/${encodeURIComponent(ns)}/pods?labelSelector=${encodeURIComponent(WAYPOINT_GATEWAY_LABEL)}`);
      if (res.status !== 200 || !isObject(res.body) || !Array.isArray(res.body.items)) throw new Error(`list the waypoint pods of ${ns}: ${message(res)}`);
      for (const pod of res.body.items) {
        if (!isObject(pod) || !isObject(pod.metadata) || !isObject(pod.status) || labelsOf(pod)[WAYPOINT_GATEWAY_LABEL] === undefined) continue;
        const ip = pod.status.podIP;
        if (pod.status.phase !== 'Running' || typeof ip !== 'string' || pod.metadata.deletionTimestamp) continue;
        const base = `http://${ip.includes(':') ? `[${ip}]` : ip}:${WAYPOINT_PORTS.metrics}`;
        targets.push({ name: `waypoint ${ns}/${String(pod.metadata.name)}`, fetch: (path) => httpGet(`${base}${path}`) });
      }
    }
    return targets;
  }

  private canaryPath(c: CanaryObject): string {
    return `${CANARIES_PATH}/namespaces/${encodeURIComponent(c.namespace)}/canaries/${encodeURIComponent(c.name)}`;
  }

  /** One object; undefined when there is none. */
  private async get(path: string, what: string): Promise<Record<string, unknown> | undefined> {
    const res = await this.client.request('GET', path);
    if (res.status === 404) return undefined;
    if (res.status !== 200 || !isObject(res.body)) throw new Error(`read ${what}: ${message(res)}`);
    return res.body;
  }
}

function labelsOf(o: Record<string, unknown>): Record<string, string> {
  return isObject(o.metadata) && isObject(o.metadata.labels) ? o.metadata.labels as Record<string, string> : {};
}

/**
 * What is applied of an object: all of it, but for a Deployment the canary controller did not
 * make (the target), only its replica count. Server-side apply then leaves the rest to whoever
 * owns it, and owns `spec.replicas` alone.
 */
function bodyToApply(o: Manifest): Manifest {
  const meta = isObject(o.metadata) ? o.metadata : {};
  const ours = isObject(meta.annotations) && meta.annotations[CANARY_OWNER_ANNOTATION] !== undefined;
  if (o.kind !== 'Deployment' || ours) return o;
  const spec = isObject(o.spec) ? o.spec : {};
  return { apiVersion: o.apiVersion, kind: o.kind, metadata: { name: meta.name, namespace: meta.namespace }, spec: { replicas: spec.replicas } };
}

const httpGet: Fetch = async (url) => {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  return { status: res.status, body: await res.text() };
};

/**
 * A namespace whose scrape fails (no waypoint answers, the pods cannot be listed) is logged and
 * the pass goes on: its reads then find no new values and its checks fail, as Flagger's do when
 * its metrics server is away, rather than every canary of the cluster stopping where it is.
 */
function tolerant(m: CanaryMetrics, log: Logger): CanaryMetrics {
  const sample = m.sample?.bind(m);
  return {
    read: (namespace, workload, metric) => m.read(namespace, workload, metric),
    ...(sample ? {
      sample: async (namespaces: string[]) => {
        for (const namespace of new Set(namespaces)) {
          try {
            await sample([namespace]);
          } catch (err) {
            log.warn({ namespace, err: (err as Error).message }, 'could not scrape the waypoints\' metrics: the checks of this pass find no new values');
          }
        }
      },
    } : {}),
  };
}

export interface KubeCanariesOptions {
  /** The floor of `analysis.interval` (AMBIT_CANARY_MIN_INTERVAL). */
  minIntervalMs?: number;
  /** A Prometheus's URL to read the checks from (AMBIT_CANARY_PROMETHEUS); the waypoints' /metrics otherwise. */
  prometheus?: string;
  log?: Logger;
}

/** The canary controller of a Kubernetes cluster: its API server, its waypoints' metrics (or a Prometheus), webhooks over plain HTTP(S). */
export function kubeCanaries(client: KubeClient, opts: KubeCanariesOptions = {}): CanaryControllerOptions & { cluster: KubeCanaryCluster } {
  const cluster = new KubeCanaryCluster(client, { ...(opts.log ? { log: opts.log } : {}) });
  let metrics: CanaryMetrics;
  if (opts.prometheus) {
    // Joined, not resolved: a Prometheus behind a path prefix (http://host/prometheus) keeps it.
    const base = opts.prometheus.replace(/\/+$/, '');
    metrics = new PrometheusMetrics(prometheusQuery((path) => httpGet(`${base}${path}`), `Prometheus at ${opts.prometheus}`));
  } else {
    metrics = new SampledMetrics((namespaces) => cluster.waypointTargets(namespaces));
  }
  return {
    cluster, metrics: tolerant(metrics, opts.log ?? silentLogger), webhooks: webhookCaller(directPost),
    ...(opts.minIntervalMs !== undefined ? { minIntervalMs: opts.minIntervalMs } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  };
}
