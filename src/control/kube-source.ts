/**
 * The Kubernetes API as a config source: list then watch each kind the controller reads, keep a
 * cache per kind, validate every object as the manifest directory source does, and report the
 * result as one SourceSnapshot, debounced.
 *
 * The list/watch loop is ours, not `@kubernetes/client-node`'s informer (ListWatch): that one
 * does not ask for bookmarks, stops for good on any watch error other than 410, treats a 404
 * on list (an absent CRD) as fatal and has no periodic resync. Here:
 *
 * - a watch resumes from the last resourceVersion seen, bookmarks included, so a dropped
 *   connection loses and repeats nothing;
 * - 410 Gone (an ERROR event with code 410, or the HTTP status) re-lists, and the list replaces
 *   the cache: objects deleted during the gap are removed;
 * - every `resyncMs` each kind re-lists the same way, in case anything was missed;
 * - a kind whose list answers 404 (CRD not installed) or 403 is skipped with a warning and tried
 *   again every `absentRetryMs`;
 * - the first snapshot waits until every kind has listed (or been found absent), so the
 *   controller never builds a model from half the cluster.
 *
 * Validation: Istio, Gateway API and ambit kinds go through parseManifests with
 * validateMeshObject, exactly as in ManifestDirSource. An invalid object is left out but its
 * last accepted version stays in effect, and it gets a status condition
 * `Accepted=False, reason Invalid` (merge patch of the status subresource; failures are logged).
 * Core kinds (Namespace, Pod, Service, ServiceAccount, EndpointSlice) were validated by the API
 * server; they are read as they are (the local cluster's runtime rules, such as "a container
 * needs a command", do not apply to a real cluster). Pods are workloads once they have
 * spec.nodeName and status.podIP.
 */
import { setMaxListeners } from 'node:events';
import type { Logger } from 'pino';
import type { NodeDirectory } from '../identity/ca-server.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import { parseManifests, type Diagnostic, type OtherResource, type Resource, type ServiceResource } from '../kube/manifests.js';
import { silentLogger } from '../telemetry/log.js';
import { KubeApiError, KubeClient } from '../kube/client.js';
import type { ConfigSource } from '../config/source.js';
import { metaOf, podInfo, type ObjectMeta } from '../config/api-objects.js';
import { INGRESS_ACCOUNT_LABEL, INGRESS_CLASSES, ISTIO_INGRESS, WAYPOINT_CLASS, WAYPOINT_GATEWAY_LABEL, type PodInfo, type SourceSnapshot } from '../config/model.js';
import { isObject } from '../config/schema.js';
import { Backoff } from '../util/backoff.js';
import { validateMeshObject } from '../config/validate.js';

export interface KindSpec {
  group: string;
  /** Tried in order until one is served. */
  versions: string[];
  kind: string;
  plural: string;
  namespaced: boolean;
  /** Validated with validateMeshObject, with status written back. */
  mesh: boolean;
  /** Only the objects this field selector selects are listed and watched (`type=kubernetes.io/tls`). */
  fieldSelector?: string;
}

export const WATCHED_KINDS: KindSpec[] = [
  { group: '', versions: ['v1'], kind: 'Namespace', plural: 'namespaces', namespaced: false, mesh: false },
  { group: '', versions: ['v1'], kind: 'Pod', plural: 'pods', namespaced: true, mesh: false },
  { group: '', versions: ['v1'], kind: 'Service', plural: 'services', namespaced: true, mesh: false },
  { group: '', versions: ['v1'], kind: 'ServiceAccount', plural: 'serviceaccounts', namespaced: true, mesh: false },
  // Ingress gateways' certificates (credentialName, certificateRefs): TLS Secrets only, never the cluster's other Secrets.
  { group: '', versions: ['v1'], kind: 'Secret', plural: 'secrets', namespaced: true, mesh: false, fieldSelector: 'type=kubernetes.io/tls' },
  { group: 'discovery.k8s.io', versions: ['v1'], kind: 'EndpointSlice', plural: 'endpointslices', namespaced: true, mesh: false },
  { group: 'networking.istio.io', versions: ['v1', 'v1beta1'], kind: 'VirtualService', plural: 'virtualservices', namespaced: true, mesh: true },
  { group: 'networking.istio.io', versions: ['v1', 'v1beta1'], kind: 'DestinationRule', plural: 'destinationrules', namespaced: true, mesh: true },
  { group: 'networking.istio.io', versions: ['v1', 'v1beta1'], kind: 'ServiceEntry', plural: 'serviceentries', namespaced: true, mesh: true },
  { group: 'networking.istio.io', versions: ['v1', 'v1beta1'], kind: 'Gateway', plural: 'gateways', namespaced: true, mesh: true },
  { group: 'security.istio.io', versions: ['v1', 'v1beta1'], kind: 'AuthorizationPolicy', plural: 'authorizationpolicies', namespaced: true, mesh: true },
  { group: 'security.istio.io', versions: ['v1', 'v1beta1'], kind: 'PeerAuthentication', plural: 'peerauthentications', namespaced: true, mesh: true },
  { group: 'gateway.networking.k8s.io', versions: ['v1', 'v1beta1'], kind: 'Gateway', plural: 'gateways', namespaced: true, mesh: true },
  { group: 'gateway.networking.k8s.io', versions: ['v1', 'v1beta1'], kind: 'HTTPRoute', plural: 'httproutes', namespaced: true, mesh: true },
  { group: 'gateway.networking.k8s.io', versions: ['v1'], kind: 'GRPCRoute', plural: 'grpcroutes', namespaced: true, mesh: true },
  { group: 'ambit.dev', versions: ['v1alpha1'], kind: 'RateLimit', plural: 'ratelimits', namespaced: true, mesh: true },
  // Newest first: `matches`, which ambit must see to leave such a split alone, exists from v1alpha3 on.
  { group: 'split.smi-spec.io', versions: ['v1alpha4', 'v1alpha3', 'v1alpha2', 'v1alpha1'], kind: 'TrafficSplit', plural: 'trafficsplits', namespaced: true, mesh: true },
];

export interface KubernetesSourceOptions {
  /** Kinds to watch (default WATCHED_KINDS). */
  kinds?: KindSpec[];
  log?: Logger;
  /** Quiet time after an event before a snapshot is emitted (ms). */
  debounceMs?: number;
  /** Every kind re-lists this often and diffs against its cache (ms; 0 = never). */
  resyncMs?: number;
  /** An absent (404) or forbidden (403) kind is tried again this often (ms). */
  absentRetryMs?: number;
  /** Wait after a failed list or watch before trying again (ms, doubled up to 30 s). */
  backoffMs?: number;
  /** Server-side bound of each watch request (s); the watch then resumes from its version. */
  watchTimeoutSeconds?: number;
  /** Called with the diagnostics of every rejected object after each change. */
  onDiagnostics?: (diagnostics: Diagnostic[]) => void;
}

/** The watch said 410 Gone: the version we hold has been compacted away. */
class GoneError extends Error {}

const sleep = (ms: number, signal: AbortSignal) => new Promise<void>((resolve) => {
  if (signal.aborted) return resolve();
  const t = setTimeout(done, ms);
  function done() {
    clearTimeout(t);
    signal.removeEventListener('abort', done);
    resolve();
  }
  signal.addEventListener('abort', done);
});

/** What one object contributes: a resource or a pod, or the reasons it was rejected. */
/** The status message of a rejected object: its errors, each with its path. */
function rejection(errors: Diagnostic[]): string {
  return errors.map((d) => `${d.path ? `${d.path}: ` : ''}${d.message}`).join('; ') || 'invalid';
}

interface Entry {
  raw: Record<string, unknown>;
  /** The last accepted version (kept while a later version is rejected). */
  accepted?: Resource;
  pod?: PodInfo;
  errors: Diagnostic[];
}

class KindWatch {
  readonly cache = new Map<string, Entry>();
  resourceVersion = '';
  version = '';
  /** Listed at least once, or found absent: the first snapshot may go out. */
  settled = false;
  absent = false;
  private watchAbort?: AbortController;
  private relist = false;

  constructor(readonly spec: KindSpec, private readonly src: KubernetesSource) {}

  get label(): string {
    return `${this.spec.group ? `${this.spec.group}/` : ''}${this.spec.kind}`;
  }

  path(version: string, extra = ''): string {
    return `${this.spec.group ? `/apis/${this.spec.group}` : '/api'}/${version}${extra}/${this.spec.plural}`;
  }

  /** Re-list at the next opportunity (resync): ends the current watch. */
  resync(): void {
    if (!this.resourceVersion) return;
    this.relist = true;
    this.watchAbort?.abort();
  }

  async run(signal: AbortSignal): Promise<void> {
    const backoff = new Backoff({ initialMs: this.src.opts.backoffMs, maxMs: 30_000 });
    while (!signal.aborted) {
      try {
        if (!this.resourceVersion || this.relist) {
          this.relist = false;
          await this.list(signal);
        }
        if (signal.aborted) return;
        this.watchAbort = new AbortController();
        const onAbort = () => this.watchAbort?.abort();
        signal.addEventListener('abort', onAbort);
        try {
          await this.watch(this.watchAbort.signal);
        } finally {
          signal.removeEventListener('abort', onAbort);
        }
        backoff.reset();
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof GoneError) {
          this.src.log.info({ kind: this.label, resourceVersion: this.resourceVersion }, 'watch version expired (410 Gone): re-listing');
          this.resourceVersion = '';
          continue;
        }
        if (err instanceof KubeApiError && (err.status === 404 || err.status === 403)) {
          this.src.log.warn({ kind: this.label, status: err.status }, err.status === 404
            ? `${this.label} is not served (CRD not installed?): skipped, retrying in ${this.src.opts.absentRetryMs} ms`
            : `${this.label}: forbidden: skipped, retrying in ${this.src.opts.absentRetryMs} ms`);
          this.absent = true;
          this.resourceVersion = '';
          if (this.cache.size > 0) {
            this.cache.clear();
            this.src.changed();
          }
          this.settle();
          await sleep(this.src.opts.absentRetryMs, signal);
          continue;
        }
        const wait = backoff.next();
        this.src.log.warn({ kind: this.label, err: err instanceof Error ? err.message : String(err) }, `${this.label}: list/watch failed, retrying in ${wait} ms`);
        await sleep(wait, signal);
      }
    }
  }

  private settle(): void {
    if (this.settled) return;
    this.settled = true;
    this.src.changed();
  }

  private async list(signal: AbortSignal): Promise<void> {
    let lastErr: KubeApiError | undefined;
    for (const version of this.version ? [this.version, ...this.spec.versions.filter((v) => v !== this.version)] : this.spec.versions) {
      const items: Record<string, unknown>[] = [];
      let cont = '';
      let rv = '';
      let notServed = false;
      do {
        if (signal.aborted) return;
        const query = new URLSearchParams({ limit: '500', ...(cont ? { continue: cont } : {}), ...(this.spec.fieldSelector ? { fieldSelector: this.spec.fieldSelector } : {}) });
        const res = await this.src.client.request('GET', `${this.path(version)}?${query.toString()}`, undefined, undefined, signal);
        if (res.status === 404) {
          notServed = true;
          lastErr = new KubeApiError(404, `${this.label} ${version}: not found`);
          break;
        }
        if (res.status === 410) throw new GoneError(); // continue token expired: start over
        if (res.status !== 200 || !isObject(res.body)) throw new KubeApiError(res.status, `list ${this.label}: HTTP ${res.status}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`, res.body);
        const body = res.body;
        if (Array.isArray(body.items)) for (const item of body.items) if (isObject(item)) items.push(item);
        const meta = isObject(body.metadata) ? body.metadata : {};
        cont = typeof meta.continue === 'string' ? meta.continue : '';
        rv = typeof meta.resourceVersion === 'string' ? meta.resourceVersion : rv;
      } while (cont);
      if (notServed) continue;
      // The list replaces the cache: whatever is not in it was deleted meanwhile.
      this.version = version; // before reading the items: a rejected one's status is written to this version
      const seen = new Set<string>();
      const apiVersion = this.spec.group ? `${this.spec.group}/${version}` : version;
      for (const item of items) {
        const key = this.upsert({ apiVersion, kind: this.spec.kind, ...item });
        if (key) seen.add(key);
      }
      for (const [key, entry] of [...this.cache]) {
        if (seen.has(key)) continue;
        this.cache.delete(key);
        const meta = metaOf(entry.raw);
        if (meta) this.src.forget(this.spec, meta);
      }
      this.resourceVersion = rv;
      if (this.absent) this.src.log.info({ kind: this.label }, `${this.label} is served now`);
      this.absent = false;
      this.src.changed();
      this.settle();
      return;
    }
    throw lastErr ?? new KubeApiError(404, `${this.label}: not found`);
  }

  private async watch(signal: AbortSignal): Promise<void> {
    const query = new URLSearchParams({
      watch: '1', resourceVersion: this.resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds: String(this.src.opts.watchTimeoutSeconds),
      ...(this.spec.fieldSelector ? { fieldSelector: this.spec.fieldSelector } : {}),
    });
    const apiVersion = this.spec.group ? `${this.spec.group}/${this.version}` : this.version;
    try {
      await this.src.client.watch(`${this.path(this.version)}?${query.toString()}`, (ev) => {
        if (!isObject(ev) || !isObject(ev.object)) return;
        const obj = ev.object;
        if (ev.type === 'ERROR') {
          if (obj.code === 410) throw new GoneError();
          throw new KubeApiError(typeof obj.code === 'number' ? obj.code : 500, `watch ${this.label}: ${String(obj.message)}`, obj);
        }
        const rv = metaOf(obj)?.resourceVersion ?? (isObject(obj.metadata) && typeof obj.metadata.resourceVersion === 'string' ? obj.metadata.resourceVersion : '');
        if (ev.type === 'ADDED' || ev.type === 'MODIFIED') {
          this.upsert({ apiVersion, kind: this.spec.kind, ...obj });
          this.src.changed();
        } else if (ev.type === 'DELETED') {
          const meta = metaOf(obj);
          if (meta && this.cache.delete(`${meta.namespace}/${meta.name}`)) {
            this.src.forget(this.spec, meta);
            this.src.changed();
          }
        }
        // ADDED, MODIFIED, DELETED and BOOKMARK all move the version on.
        if (rv) this.resourceVersion = rv;
      }, signal, (this.src.opts.watchTimeoutSeconds + 60) * 1000);
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 410) throw new GoneError();
      throw err;
    }
  }

  /** Reads one object into the cache; returns its key. */
  private upsert(obj: Record<string, unknown>): string | undefined {
    const meta = metaOf(obj);
    if (!meta) return undefined;
    const key = `${meta.namespace}/${meta.name}`;
    const prev = this.cache.get(key);
    if (prev && metaOf(prev.raw)?.resourceVersion === meta.resourceVersion && meta.resourceVersion) return key;
    if (isObject(obj.metadata)) {
      const { managedFields: _drop, ...rest } = obj.metadata;
      obj = { ...obj, metadata: rest };
    }
    const entry = this.spec.mesh ? this.src.readMesh(obj, meta, prev) : this.src.readCore(this.spec, obj, meta);
    this.cache.set(key, entry);
    return key;
  }
}

export class KubernetesSource implements ConfigSource {
  readonly opts: Required<Omit<KubernetesSourceOptions, 'kinds' | 'log' | 'onDiagnostics'>>;
  readonly log: Logger;
  private readonly kinds: KindWatch[];
  private abort?: AbortController;
  private timer?: NodeJS.Timeout;
  private resyncTimer?: NodeJS.Timeout;
  private onChange?: (snapshot: SourceSnapshot) => void;
  private last = '';
  private waypointSet = new Set<string>();
  /** Status patches in flight or done, by object and message, so a write is not repeated. */
  private readonly patched = new Map<string, string>();
  /** Whether this replica writes status conditions (only the leader does, when replicas elect one). */
  private statusWriter = true;

  constructor(readonly client: KubeClient, private readonly options: KubernetesSourceOptions = {}) {
    this.log = options.log ?? silentLogger;
    this.opts = {
      debounceMs: options.debounceMs ?? 100,
      resyncMs: options.resyncMs ?? 10 * 60_000,
      absentRetryMs: options.absentRetryMs ?? 60_000,
      backoffMs: options.backoffMs ?? 500,
      watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300,
    };
    this.kinds = (options.kinds ?? WATCHED_KINDS).map((k) => new KindWatch(k, this));
  }

  start(onChange: (snapshot: SourceSnapshot) => void): void {
    this.onChange = onChange;
    this.abort = new AbortController();
    // One listener per kind (its watch or its wait), not a leak.
    setMaxListeners(this.kinds.length * 2 + 10, this.abort.signal);
    for (const k of this.kinds) void k.run(this.abort.signal);
    if (this.opts.resyncMs > 0) this.resyncTimer = setInterval(() => { for (const k of this.kinds) k.resync(); }, this.opts.resyncMs).unref();
  }

  stop(): void {
    this.abort?.abort();
    clearTimeout(this.timer);
    clearInterval(this.resyncTimer);
    this.onChange = undefined;
  }

  /** Each kind's resourceVersion (where its watch resumes; '' before the first list or while absent). */
  versions(): Record<string, string> {
    return Object.fromEntries(this.kinds.map((k) => [k.label, k.resourceVersion]));
  }

  /**
   * Turns status write-back on or off. Replicas that are not the leader keep validating but leave
   * the writes to it; a replica that becomes leader writes the conditions of every cached mesh
   * object whose status does not show its verdict yet.
   */
  setStatusWriter(enabled: boolean): void {
    if (enabled === this.statusWriter) return;
    this.statusWriter = enabled;
    this.patched.clear();
    if (!enabled) return;
    for (const k of this.kinds) {
      if (!k.spec.mesh) continue;
      for (const entry of k.cache.values()) {
        const meta = metaOf(entry.raw);
        if (!meta) continue;
        const message = entry.errors.length > 0 ? rejection(entry.errors) : undefined;
        this.writeStatus(entry.raw, meta, message);
      }
    }
  }

  /** An object is gone: its status-write memory goes too. */
  forget(spec: KindSpec, meta: { namespace: string; name: string }): void {
    this.patched.delete(`${spec.group}/${spec.kind}/${meta.namespace}/${meta.name}`);
  }

  /** Kinds skipped because the API server does not serve them (or forbids them). */
  absentKinds(): string[] {
    return this.kinds.filter((k) => k.absent).map((k) => k.label);
  }

  /**
   * Whether the ServiceAccount `namespace/name` is a waypoint's credential, for
   * TokenReviewAuthenticator: there is a Gateway of class ambit-waypoint of that name, and the
   * account was made for it (labelled `gateway.networking.k8s.io/gateway-name: <name>`, as the
   * controller and the install's template make it) — not an account of the same name that other
   * pods run as, which creating a Gateway would otherwise turn into a waypoint's credential.
   * An ingress gateway's account the same way: a Gateway of class ambit or istio and its account
   * labelled for it, or Istio's default ingress gateway's account labelled
   * `ambit.dev/ingress-gateway: istio-ingressgateway` by the install.
   */
  isWaypoint(namespace: string, name: string): boolean {
    const account = this.kinds.find((k) => k.spec.group === '' && k.spec.kind === 'ServiceAccount')?.cache.get(`${namespace}/${name}`);
    const labels = account && isObject(account.raw.metadata) && isObject(account.raw.metadata.labels) ? account.raw.metadata.labels : {};
    // Istio's default ingress gateway: its account as the install makes it (opt-in, ingressGateway.enabled).
    if (namespace === ISTIO_INGRESS.namespace && name === ISTIO_INGRESS.serviceAccount) return labels[INGRESS_ACCOUNT_LABEL] === ISTIO_INGRESS.name;
    if (!this.waypointSet.has(`${namespace}/${name}`)) return false;
    return labels[WAYPOINT_GATEWAY_LABEL] === name;
  }

  /**
   * A pod as the watch cache holds it now (undefined when not there), for
   * TokenReviewAuthenticator's binding of a node agent's token to its node through its pod.
   */
  cachedPod(namespace: string, name: string): Record<string, unknown> | undefined {
    return this.kinds.find((k) => k.spec.group === '' && k.spec.kind === 'Pod')?.cache.get(`${namespace}/${name}`)?.raw;
  }

  /** Every rejected object's diagnostics, as they are now. */
  diagnostics(): Diagnostic[] {
    return this.kinds.flatMap((k) => [...k.cache.values()].flatMap((e) => e.errors));
  }

  /** Something changed: a snapshot goes out after `debounceMs` of quiet. */
  changed(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.emit(), this.opts.debounceMs);
  }

  /**
   * The CA's NodeDirectory from the watched pods: the identities of every pod bound to a node
   * (spec.nodeName), with an address yet or not, since a node agent may ask for a pod's
   * certificate while its network is being set up. Not Succeeded or Failed pods.
   */
  nodeDirectory(trustDomain: string): NodeDirectory {
    return {
      identitiesOnNode: (node: string) => {
        const out = new Set<string>();
        for (const e of this.kinds.find((k) => k.spec.group === '' && k.spec.kind === 'Pod')?.cache.values() ?? []) {
          const spec = isObject(e.raw.spec) ? e.raw.spec : {};
          const phase = isObject(e.raw.status) ? e.raw.status.phase : undefined;
          if (spec.nodeName !== node || phase === 'Succeeded' || phase === 'Failed') continue;
          const namespace = isObject(e.raw.metadata) && typeof e.raw.metadata.namespace === 'string' ? e.raw.metadata.namespace : 'default';
          const serviceAccount = typeof spec.serviceAccountName === 'string' ? spec.serviceAccountName : 'default';
          out.add(formatSpiffeId({ trustDomain, namespace, serviceAccount }));
        }
        return out;
      },
    };
  }

  private emit(): void {
    if (!this.onChange || !this.kinds.every((k) => k.settled)) return;
    const resources: Resource[] = [];
    const pods: PodInfo[] = [];
    const waypoints = new Set<string>();
    for (const k of this.kinds) {
      for (const e of k.cache.values()) {
        if (e.pod) pods.push(e.pod);
        if (!e.accepted || e.accepted.kind === 'Pod') continue;
        resources.push(e.accepted);
        const spec = e.accepted.raw.spec;
        // A waypoint's account, or an ingress gateway's (class ambit/istio): each made for it by the controller.
        if (k.spec.group === 'gateway.networking.k8s.io' && k.spec.kind === 'Gateway' && isObject(spec) && typeof spec.gatewayClassName === 'string'
          && (spec.gatewayClassName === WAYPOINT_CLASS || INGRESS_CLASSES.includes(spec.gatewayClassName))) {
          waypoints.add(`${e.accepted.meta.namespace}/${e.accepted.meta.name}`);
        }
      }
    }
    this.waypointSet = waypoints;
    const fingerprint = JSON.stringify([
      // A Secret has no spec: its type and data (a rotated certificate) are what change.
      resources.map((r) => [r.apiVersion, r.kind, r.meta, r.raw.spec, r.kind === 'Service' ? (r as ServiceResource).spec : null, r.kind === 'Secret' ? [r.raw.type, r.raw.data] : null]), pods,
      this.diagnostics().map((d) => [d.kind, d.namespace, d.name, d.path, d.message]),
    ]);
    if (fingerprint === this.last) return;
    this.last = fingerprint;
    this.options.onDiagnostics?.(this.diagnostics());
    this.onChange({ resources, pods });
  }

  /** A core object, as the API server validated it. */
  readCore(spec: KindSpec, raw: Record<string, unknown>, meta: ObjectMeta): Entry {
    const base = {
      apiVersion: String(raw.apiVersion), kind: spec.kind, raw,
      source: { file: `kubernetes:${spec.kind}/${meta.namespace ? `${meta.namespace}/` : ''}${meta.name}`, doc: 1 },
      meta: { name: meta.name, namespace: meta.namespace, labels: meta.labels, annotations: meta.annotations },
    };
    switch (spec.kind) {
      case 'Namespace':
      case 'ServiceAccount':
        return { raw, accepted: { ...base, kind: spec.kind } as Resource, errors: [] };
      case 'Service': {
        const s = isObject(raw.spec) ? raw.spec : {};
        const ports = (Array.isArray(s.ports) ? s.ports.filter(isObject) : []).map((p) => ({
          ...(typeof p.name === 'string' ? { name: p.name } : {}),
          port: Number(p.port),
          targetPort: (typeof p.targetPort === 'number' || typeof p.targetPort === 'string') ? p.targetPort : Number(p.port),
          protocol: (typeof p.protocol === 'string' ? p.protocol : 'TCP') as 'TCP',
        }));
        const svc: ServiceResource = {
          ...base, kind: 'Service',
          spec: {
            type: (typeof s.type === 'string' ? s.type : 'ClusterIP') as ServiceResource['spec']['type'],
            ...(typeof s.clusterIP === 'string' && s.clusterIP !== '' ? { clusterIP: s.clusterIP } : {}),
            ...(isObject(s.selector) ? { selector: s.selector as Record<string, string> } : {}),
            ports,
          },
        };
        return { raw, accepted: svc, errors: [] };
      }
      case 'Pod': {
        const pod = podInfo(raw, meta);
        return { raw, ...(pod ? { pod } : {}), errors: [] };
      }
      default:
        return { raw, accepted: { ...base, other: true } as OtherResource, errors: [] };
    }
  }

  /** A mesh config object, validated as the manifest directory source does. */
  readMesh(raw: Record<string, unknown>, meta: ObjectMeta, prev: Entry | undefined): Entry {
    const label = `${String(raw.kind)} ${meta.namespace}/${meta.name}`;
    const { resources, diagnostics } = parseManifests([{ file: `kubernetes:${label}`, text: JSON.stringify(raw), dir: '/' }], { validate: validateMeshObject, imagesOnly: true });
    const errors = diagnostics.filter((d) => d.severity === 'error');
    const accepted = resources[0];
    if (accepted && errors.length === 0) {
      this.writeStatus(raw, meta, undefined);
      return { raw, accepted, errors: [] };
    }
    const message = rejection(errors);
    this.log.warn({ object: label, message }, prev?.accepted ? 'rejected; the last accepted version stays in effect' : 'rejected');
    this.writeStatus(raw, meta, message);
    return { raw, ...(prev?.accepted ? { accepted: prev.accepted } : {}), errors };
  }

  /**
   * Accepted=False (reason Invalid) on a rejected object; Accepted=True once it is fixed, when
   * it carries our earlier rejection. Other conditions are kept. A failed write is logged.
   */
  private writeStatus(raw: Record<string, unknown>, meta: ObjectMeta, message: string | undefined): void {
    if (!this.statusWriter) return;
    const conditions = isObject(raw.status) && Array.isArray(raw.status.conditions) ? raw.status.conditions.filter(isObject) : [];
    const current = conditions.find((c) => c.type === 'Accepted');
    if (message === undefined && !(current?.status === 'False' && current.reason === 'Invalid')) return;
    if (message !== undefined && current?.status === 'False' && current.reason === 'Invalid' && current.message === message) return;
    const group = String(raw.apiVersion).split('/')[0]!;
    const spec = this.kinds.find((k) => k.spec.group === group && k.spec.kind === raw.kind);
    if (!spec) return;
    const objKey = `${group}/${String(raw.kind)}/${meta.namespace}/${meta.name}`;
    const want = message ?? '';
    if (this.patched.get(objKey) === want) return;
    this.patched.set(objKey, want);
    const condition = message !== undefined
      ? { type: 'Accepted', status: 'False', reason: 'Invalid', message }
      : { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'accepted by ambit' };
    const generation = isObject(raw.metadata) && typeof raw.metadata.generation === 'number' ? { observedGeneration: raw.metadata.generation } : {};
    const body = { status: { conditions: [...conditions.filter((c) => c.type !== 'Accepted'), { ...condition, ...generation, lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, 'Z') }] } };
    const path = `${spec.path(spec.version, `/namespaces/${encodeURIComponent(meta.namespace)}`)}/${encodeURIComponent(meta.name)}/status`;
    this.client.request('PATCH', path, body, 'application/merge-patch+json').then((res) => {
      if (res.status < 200 || res.status >= 300) {
        this.patched.delete(objKey);
        this.log.warn({ object: objKey, status: res.status }, 'could not write the status condition');
      }
    }, (err: unknown) => {
      this.patched.delete(objKey);
      this.log.warn({ object: objKey, err: err instanceof Error ? err.message : String(err) }, 'could not write the status condition');
    });
  }
}
