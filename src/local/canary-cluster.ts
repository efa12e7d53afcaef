/**
 * The canary controller's view of a local cluster: Canaries, Deployments and Services from the
 * cluster's state, pods' readiness from its runtime, objects applied through the runtime (as
 * `ambit local apply` does), and each Canary's status and events kept under
 * `<state>/canaries/<ns>.<name>/` (status.json, events.jsonl) for `ambit canary status`.
 * Webhooks and the waypoints' metrics are reached from inside the cluster's underlay netns.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Logger } from 'pino';
import { canaryObject, CANARY_ACTION_ANNOTATION, type CanaryCluster, type CanaryControllerOptions, type CanaryMetrics, type CanaryObject, type CanaryStatus, type DeploymentState } from '../canary/controller.js';
import { PrometheusMetrics, SampledMetrics } from '../canary/metrics.js';
import type { Manifest } from '../canary/objects.js';
import { webhookCaller, type Post } from '../canary/webhooks.js';
import { USE_WAYPOINT, WAYPOINT_CLASS } from '../config/model.js';
import { httpGetInNetns, httpRequestInNetns } from '../host/netns.js';
import type { DeploymentResource, Resource } from '../kube/manifests.js';
import { prometheusQuery, type Target } from '../observe/prometheus.js';
import { RuntimeClient } from './client.js';
import { ClusterLayout, UNDERLAY_GATEWAY } from './layout.js';
import { localTargets } from './metrics-targets.js';
import { PROMETHEUS_PORT } from './prometheus.js';
import { templateHash, type ClusterStatus } from './runtime.js';
import { readState, resourceKey } from './state.js';

/** The events a canary keeps on disk (the newest). */
const MAX_EVENTS = 500;

export interface CanaryEventRecord { at: string; type: 'Normal' | 'Warning'; reason: string; message: string }

/** Where a canary's status and events are kept. */
export const canaryDir = (stateDir: string, namespace: string, name: string): string => join(stateDir, 'canaries', `${namespace}.${name}`);

export function readCanaryStatus(stateDir: string, namespace: string, name: string): CanaryStatus | undefined {
  const file = join(canaryDir(stateDir, namespace, name), 'status.json');
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as CanaryStatus;
  } catch {
    return undefined;
  }
}

export function readCanaryEvents(stateDir: string, namespace: string, name: string): CanaryEventRecord[] {
  const file = join(canaryDir(stateDir, namespace, name), 'events.jsonl');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8').split('\n').filter(Boolean).flatMap((l) => {
    try {
      return [JSON.parse(l) as CanaryEventRecord];
    } catch {
      return [];
    }
  });
}

const isCanary = (r: Resource) => r.kind === 'Canary' && r.apiVersion.startsWith('flagger.app/');

export class LocalCanaryCluster implements CanaryCluster {
  readonly layout: ClusterLayout;
  private readonly client: RuntimeClient;

  constructor(readonly stateDir: string) {
    this.layout = new ClusterLayout(basename(stateDir), stateDir);
    this.client = new RuntimeClient(this.layout);
  }

  private resources(): Record<string, Resource> {
    return readState(this.layout.stateFile)?.resources ?? {};
  }

  canaries(): Promise<CanaryObject[]> {
    const out: CanaryObject[] = [];
    for (const r of Object.values(this.resources())) {
      if (!isCanary(r)) continue;
      const c = canaryObject(r.raw as Record<string, unknown>);
      if (!c) continue;
      const status = readCanaryStatus(this.stateDir, c.namespace, c.name);
      out.push(status ? { ...c, status } : c);
    }
    return Promise.resolve(out);
  }

  async deployment(namespace: string, name: string): Promise<DeploymentState | undefined> {
    const d = this.resources()[resourceKey({ kind: 'Deployment', apiVersion: 'apps/v1', meta: { namespace, name } })] as DeploymentResource | undefined;
    if (!d) return undefined;
    const status = await this.client.request<ClusterStatus>('GET', '/v1/status');
    const hash = templateHash(d);
    const current = status.pods.filter((p) => p.namespace === namespace && p.owner === `deployment/${name}` && p.labels['pod-template-hash'] === hash);
    const ready = current.filter((p) => p.phase === 'Running' && /^(\d+)\/\1$/.test(p.ready)).length;
    const stale = status.pods.filter((p) => p.namespace === namespace && p.owner === `deployment/${name}` && p.labels['pod-template-hash'] !== hash).length;
    return { manifest: d.raw as Manifest, replicas: d.replicas, ready: ready >= d.replicas && stale === 0 };
  }

  serviceLabels(namespace: string, name: string): Promise<Record<string, string> | undefined> {
    const svc = this.resources()[resourceKey({ kind: 'Service', meta: { namespace, name } })];
    return Promise.resolve(svc ? svc.meta.labels : undefined);
  }

  waypointFor(namespace: string, labels: Record<string, string>): Promise<string | undefined> {
    const resources = this.resources();
    const ns = resources[resourceKey({ kind: 'Namespace', meta: { namespace: '', name: namespace } })];
    const name = labels[USE_WAYPOINT] ?? ns?.meta.labels[USE_WAYPOINT];
    if (!name || name === 'none') return Promise.resolve(undefined);
    const gateway = resources[resourceKey({ kind: 'Gateway', apiVersion: 'gateway.networking.k8s.io/v1', meta: { namespace, name } })];
    const isWaypoint = gateway && (gateway.raw as { spec?: { gatewayClassName?: string } }).spec?.gatewayClassName === WAYPOINT_CLASS;
    return Promise.resolve(isWaypoint ? name : undefined);
  }

  async apply(objects: Manifest[]): Promise<void> {
    const text = objects.map((o) => JSON.stringify(o)).join('\n---\n');
    await this.client.request('POST', '/v1/apply', { inputs: [{ file: 'canary-controller', text, dir: this.stateDir }] });
  }

  setStatus(c: CanaryObject, status: CanaryStatus): Promise<void> {
    const dir = canaryDir(this.stateDir, c.namespace, c.name);
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'status.json');
    writeFileSync(`${file}.tmp`, `${JSON.stringify(status, null, 1)}\n`);
    renameSync(`${file}.tmp`, file);
    return Promise.resolve();
  }

  event(c: CanaryObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const dir = canaryDir(this.stateDir, c.namespace, c.name);
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'events.jsonl');
    appendFileSync(file, `${JSON.stringify({ at: new Date().toISOString(), type, reason, message })}\n`);
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    if (lines.length > MAX_EVENTS * 2) writeFileSync(file, `${lines.slice(-MAX_EVENTS).join('\n')}\n`);
    return Promise.resolve();
  }

  async clearAction(c: CanaryObject): Promise<void> {
    const r = this.resources()[resourceKey({ kind: 'Canary', apiVersion: 'flagger.app/v1beta1', meta: { namespace: c.namespace, name: c.name } })];
    if (!r) return;
    const raw = structuredClone(r.raw) as { metadata?: { annotations?: Record<string, string> } };
    if (!raw.metadata?.annotations?.[CANARY_ACTION_ANNOTATION]) return;
    delete raw.metadata.annotations[CANARY_ACTION_ANNOTATION];
    await this.apply([raw as Manifest]);
  }

  /** The running waypoints of these namespaces, as metrics endpoints in the underlay netns. */
  async waypointTargets(namespaces: string[]): Promise<Target[]> {
    return localTargets(this.layout, await this.client.request<ClusterStatus>('GET', '/v1/status'), namespaces);
  }

  /**
   * Webhooks from inside the cluster: a URL naming a Service (`name`, `name.ns`, `name.ns.svc`,
   * `name.ns.svc.cluster.local`; a short name is looked up in `namespace`) goes to one of its
   * endpoints, an address goes as it is; both from the underlay netns.
   */
  readonly webhookPost: Post = async (url, body, timeoutMs, namespace) => {
      const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
      let host = url.hostname;
      let target = port;
      if (!/^[\d.]+$/.test(host) && !host.includes(':')) {
        const [name, ns = namespace] = host.split('.');
        const status = await this.client.request<ClusterStatus>('GET', '/v1/status');
        const svc = status.services.find((s) => s.namespace === ns && s.name === name);
        if (!svc) throw new Error(`no service ${ns}/${name} in cluster ${this.layout.name}`);
        const sp = svc.ports.find((p) => p.port === port);
        if (!sp) throw new Error(`service ${ns}/${name} has no port ${port}`);
        const endpoint = svc.endpoints.find((e) => typeof sp.targetPort !== 'number' || e.endsWith(`:${sp.targetPort}`)) ?? svc.endpoints[0];
        if (!endpoint) throw new Error(`service ${ns}/${name} has no ready endpoint`);
        host = endpoint.slice(0, endpoint.lastIndexOf(':'));
        target = Number(endpoint.slice(endpoint.lastIndexOf(':') + 1));
      }
      return httpRequestInNetns(`/run/netns/${this.layout.underlayNetns}`, host, target, {
        method: 'POST', path: `${url.pathname}${url.search}`, body, timeoutMs, headers: { 'content-type': 'application/json', host: url.host },
      });
  };

  /**
   * Where the checks read: the cluster's Prometheus when it runs one (`ambit local up
   * --prometheus`), else the waypoints' /metrics sampled by the controller.
   */
  metrics(): CanaryMetrics {
    const netns = `/run/netns/${this.layout.underlayNetns}`;
    if (readState(this.layout.stateFile)?.prometheus) {
      return new PrometheusMetrics(prometheusQuery((path) => httpGetInNetns(netns, UNDERLAY_GATEWAY, PROMETHEUS_PORT, path), `the cluster's Prometheus (${UNDERLAY_GATEWAY}:${PROMETHEUS_PORT})`));
    }
    return new SampledMetrics((namespaces) => this.waypointTargets(namespaces));
  }
}

/** The canary controller of a local cluster: its state, its runtime, and its network. */
export function localCanaries(stateDir: string, opts: { minIntervalMs?: number; log?: Logger } = {}): CanaryControllerOptions {
  const cluster = new LocalCanaryCluster(stateDir);
  return { cluster, metrics: cluster.metrics(), webhooks: webhookCaller(cluster.webhookPost), ...opts };
}
