/**
 * The waypoints of a Kubernetes cluster, run by the controller: for every Gateway of class
 * ambit-waypoint, the ServiceAccount, Deployment, Service and PodDisruptionBudget
 * `waypointObjects` renders, written
 * with server-side apply (field manager `ambit-controller`, `force=true`: the controller owns
 * these objects' fields); and for every such Gateway that is gone, those objects deleted.
 *
 * - Idempotent: the hash of each object last applied is remembered, and an unchanged object is
 *   not sent again (every `resyncMs` the memory is dropped and everything re-applied, in case an
 *   object was changed or deleted behind the controller's back).
 * - Only objects labelled `app.kubernetes.io/managed-by: ambit-controller` and
 *   `gateway.networking.k8s.io/gateway-name: <gateway>` are ever deleted; anything else with the
 *   same name (a Deployment made from `ambit install`'s waypoint template) is left alone. On the
 *   first pass the managed objects already in the cluster are listed, so those of a Gateway
 *   deleted while the controller was down go too (their ownerReferences make the garbage
 *   collector remove them anyway).
 * - Only objects the controller owns are ever written: before writing, each of a waypoint's
 *   objects is read; one that exists without the controller's labels for that gateway (nor a
 *   controller reference to the Gateway) belongs to someone else — a Service or Deployment of the
 *   same name, a ServiceAccount other pods run as — and then none of that waypoint's objects is
 *   written (its pods would run as, or be reached through, an object that is not ambit's): the
 *   Gateway gets `Programmed=False, reason ObjectNotOwned` naming the object, and the check is
 *   retried with backoff; once the conflict is gone, `Programmed=True`. A missing object is
 *   created (POST, which fails rather than overwrite one made meanwhile); an owned one is
 *   applied with the resourceVersion just read as a precondition.
 * - A failed write is logged and retried, with exponential backoff per object, on the next
 *   snapshot or on a timer, whichever comes first. Nothing here ever throws into the caller.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { K8sObject } from '../../install/objects.js';
import { waypointObjects } from '../../install/waypoint.js';
import { defaultValues, type Values } from '../../install/values.js';
import { silentLogger } from '../../telemetry/log.js';
import { WAYPOINT_CLASS, WAYPOINT_GATEWAY_LABEL } from '../../config/model.js';
import { isObject } from '../../config/schema.js';
import type { KubeClient } from '../../kube/client.js';
import { backoffDelay } from '../../util/backoff.js';
import { Coalescer } from './coalesce.js';

export const FIELD_MANAGER = 'ambit-controller';
export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
/** The value of MANAGED_BY_LABEL on the objects the controller writes (the install's say ambit-install). */
export const MANAGED_BY = 'ambit-controller';

/** Where each kind of a waypoint's objects lives in the API. */
const KINDS: Readonly<Record<string, { prefix: string; plural: string }>> = {
  'v1/ServiceAccount': { prefix: '/api/v1', plural: 'serviceaccounts' },
  'apps/v1/Deployment': { prefix: '/apis/apps/v1', plural: 'deployments' },
  'v1/Service': { prefix: '/api/v1', plural: 'services' },
  'policy/v1/PodDisruptionBudget': { prefix: '/apis/policy/v1', plural: 'poddisruptionbudgets' },
};

export interface WaypointReconcilerOptions {
  /** The install's values (image, controller address, trust domain, replicas...). */
  values?: Values;
  log?: Logger;
  /** First wait before retrying a failed object (ms, doubled per failure up to maxBackoffMs). */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Forget what was applied and apply everything again this often (ms; 0 = never). */
  resyncMs?: number;
  /**
   * Which Gateways this reconciler runs and how (default: waypoints, isWaypointGateway and
   * waypointObjects); ingress gateways (src/control/kube/gateways.ts) run through the same
   * ownership checks, writes and deletes.
   */
  kind?: {
    select: (obj: unknown) => boolean; render: (gateway: Record<string, unknown>, values: Values) => K8sObject[]; component: string;
    /**
     * Whether the Gateway's status gets `Programmed=True` and `addresses` (its Service's load
     * balancer ingress) once its objects are applied, as Gateway API implementations write for
     * ingress gateways (a waypoint's Gateway has no address to show).
     */
    addresses?: boolean;
  };
}

interface Ref { key: string; path: string; collection: string; namespace: string; name: string; gateway: string }
/** What is in the cluster under a waypoint object's name. */
type Found = { state: 'absent' } | { state: 'ours'; resourceVersion?: string } | { state: 'foreign'; why: string };

/** The Programmed condition the controller writes on a waypoint's Gateway. */
interface Condition { type: 'Programmed'; status: 'True' | 'False'; reason: string; message: string }
export const NOT_OWNED_REASON = 'ObjectNotOwned';
interface Failure { attempts: number; notBefore: number }

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

function refOf(apiVersion: string, kind: string, namespace: string, name: string, gateway: string): Ref | undefined {
  const k = KINDS[`${apiVersion}/${kind}`];
  if (!k) return undefined;
  const collection = `${k.prefix}/namespaces/${encodeURIComponent(namespace)}/${k.plural}`;
  return { key: `${kind}/${namespace}/${name}`, namespace, name, gateway, collection, path: `${collection}/${encodeURIComponent(name)}` };
}

/** Whether a Gateway (as read from the API) declares a waypoint. */
export function isWaypointGateway(obj: unknown): boolean {
  return isObject(obj) && obj.kind === 'Gateway' && typeof obj.apiVersion === 'string' && obj.apiVersion.startsWith('gateway.networking.k8s.io/')
    && isObject(obj.spec) && obj.spec.gatewayClassName === WAYPOINT_CLASS;
}

export class WaypointReconciler {
  private readonly values: Values;
  private readonly log: Logger;
  private readonly select: (obj: unknown) => boolean;
  private readonly render: (gateway: Record<string, unknown>, values: Values) => K8sObject[];
  /** The `app.kubernetes.io/component` of the objects this reconciler writes: another reconciler's are not adopted. */
  private readonly component: string;
  private readonly addresses: boolean;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  /** Object key → hash of the version last applied successfully. */
  private readonly applied = new Map<string, string>();
  /** Gateway key (ns/name) → the objects written for it (what to delete once it is gone). */
  private readonly owned = new Map<string, Ref[]>();
  private readonly failures = new Map<string, Failure>();
  /** Gateway key → why its objects are not written (objects of the same names that are not ours). */
  private readonly conflicts = new Map<string, string>();
  /** Gateway key → the Programmed condition last written, until the Gateway is seen carrying it. */
  private readonly written = new Map<string, string>();
  private adopted = false;
  private latest: Record<string, unknown>[] | undefined;
  private readonly passes = new Coalescer(async () => {
    try {
      await this.pass(this.latest ?? []);
    } catch (err) {
      this.log.error({ err: message(err) }, 'waypoint reconcile failed');
    }
  }, () => this.stopped);
  private retryTimer?: NodeJS.Timeout;
  private readonly resyncTimer?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly client: KubeClient, opts: WaypointReconcilerOptions = {}) {
    this.values = opts.values ?? defaultValues();
    this.log = opts.log ?? silentLogger;
    this.select = opts.kind?.select ?? isWaypointGateway;
    this.render = opts.kind?.render ?? waypointObjects;
    this.component = opts.kind?.component ?? 'waypoint';
    this.addresses = opts.kind?.addresses ?? false;
    this.backoffMs = opts.backoffMs ?? 1000;
    this.maxBackoffMs = opts.maxBackoffMs ?? 5 * 60_000;
    const resyncMs = opts.resyncMs ?? 10 * 60_000;
    if (resyncMs > 0) {
      this.resyncTimer = setInterval(() => {
        this.applied.clear();
        this.written.clear();
        if (this.latest) void this.reconcile(this.latest);
      }, resyncMs).unref();
    }
  }

  /**
   * The Gateways of class ambit-waypoint as they are now (others are ignored). Resolves once
   * this state (or a later one) has been worked through; never rejects.
   */
  reconcile(gateways: readonly Record<string, unknown>[]): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.latest = gateways.filter(this.select);
    return this.passes.request();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.resyncTimer);
  }

  private async pass(gateways: Record<string, unknown>[]): Promise<void> {
    if (!this.adopted) await this.adopt();
    const now = Date.now();
    const present = new Set<string>();
    for (const gateway of gateways) {
      const meta = isObject(gateway.metadata) ? gateway.metadata : {};
      const gwKey = `${String(meta.namespace)}/${String(meta.name)}`;
      present.add(gwKey);
      let objects: K8sObject[];
      try {
        objects = this.render(gateway, this.values);
      } catch (err) {
        this.log.warn({ gateway: gwKey, err: message(err) }, 'cannot render the waypoint');
        continue;
      }
      const refs: Ref[] = [];
      const desired = new Map<string, { ref: Ref; body: K8sObject; hash: string }>();
      for (const obj of objects) {
        const body = markManaged(obj);
        const ref = refOf(body.apiVersion, body.kind, body.metadata.namespace ?? '', body.metadata.name, String(meta.name));
        if (!ref) continue;
        refs.push(ref);
        desired.set(ref.key, { ref, body, hash: createHash('sha256').update(JSON.stringify(body)).digest('hex') });
      }
      const todo = [...desired.values()].filter((d) => this.applied.get(d.ref.key) !== d.hash && this.due(d.ref.key, now));
      if (todo.length > 0) await this.write(gwKey, gateway, [...desired.values()], todo, now);
      await this.programmed(gwKey, gateway, refs, now);
      // Keep what was written before too: a kind dropped from the template must still go on deletion.
      const prev = this.owned.get(gwKey) ?? [];
      this.owned.set(gwKey, [...refs, ...prev.filter((p) => !refs.some((r) => r.key === p.key))]);
    }
    for (const gwKey of [...this.conflicts.keys(), ...this.written.keys()]) {
      if (present.has(gwKey)) continue;
      this.conflicts.delete(gwKey);
      this.written.delete(gwKey);
      this.failures.delete(`status/${gwKey}`);
    }
    for (const [gwKey, refs] of [...this.owned]) {
      if (present.has(gwKey)) continue;
      const left: Ref[] = [];
      for (const ref of refs) {
        if (!this.due(ref.key, now)) {
          left.push(ref);
          continue;
        }
        try {
          await this.remove(ref);
          this.applied.delete(ref.key);
          this.failures.delete(ref.key);
        } catch (err) {
          left.push(ref);
          this.failed(ref.key, now, { gateway: gwKey, object: ref.key, err: message(err) }, 'could not delete a waypoint object');
        }
      }
      if (left.length > 0) this.owned.set(gwKey, left);
      else this.owned.delete(gwKey);
    }
  }

  /**
   * Writes a waypoint's objects that changed (`todo`) once all of its objects (`all`) are found
   * absent or the controller's own: a missing one is created, an owned one applied with the
   * resourceVersion read as a precondition. When any is someone else's, nothing is written.
   */
  private async write(gwKey: string, gateway: Record<string, unknown>, all: { ref: Ref; body: K8sObject }[], todo: { ref: Ref; body: K8sObject; hash: string }[], now: number): Promise<void> {
    const uid = isObject(gateway.metadata) ? gateway.metadata.uid : undefined;
    const found = new Map<string, Found>();
    for (const { ref } of all) {
      try {
        found.set(ref.key, await this.find(ref, typeof uid === 'string' ? uid : undefined));
      } catch (err) {
        for (const t of todo) this.failed(t.ref.key, now, { gateway: gwKey, object: ref.key, err: message(err) }, 'could not read a waypoint object');
        return;
      }
    }
    const foreign = all.flatMap(({ ref }) => {
      const f = found.get(ref.key)!;
      return f.state === 'foreign' ? [`${ref.key} exists and is not ambit's (${f.why})`] : [];
    });
    if (foreign.length > 0) {
      const why = `${foreign.join('; ')}: ambit writes none of this waypoint's objects while one of their names is taken; delete or rename that object, or name the Gateway otherwise`;
      this.conflicts.set(gwKey, why);
      for (const t of todo) this.failed(t.ref.key, now, { gateway: gwKey, object: t.ref.key, reason: NOT_OWNED_REASON, err: why }, 'waypoint object not owned by the controller: left alone');
      return;
    }
    this.conflicts.delete(gwKey);
    for (const { ref, body, hash } of todo) {
      const f = found.get(ref.key)!;
      try {
        const res = f.state === 'absent'
          ? await this.client.request('POST', `${ref.collection}?fieldManager=${FIELD_MANAGER}`, body)
          : await this.client.request('PATCH', `${ref.path}?fieldManager=${FIELD_MANAGER}&force=true`,
            f.state === 'ours' && f.resourceVersion ? { ...body, metadata: { ...body.metadata, resourceVersion: f.resourceVersion } } : body, 'application/apply-patch+yaml');
        // 409: made or changed since it was read; it is read and judged again on the retry.
        if (res.status < 200 || res.status >= 300) throw new Error(`HTTP ${res.status}: ${statusMessage(res.body)}`);
        this.applied.set(ref.key, hash);
        this.failures.delete(ref.key);
        this.log.info({ gateway: gwKey, object: ref.key }, f.state === 'absent' ? 'waypoint object created' : 'waypoint object applied');
      } catch (err) {
        this.failed(ref.key, now, { gateway: gwKey, object: ref.key, err: message(err) }, 'could not apply a waypoint object');
      }
    }
  }

  /** Whether the object under a waypoint object's name is absent, the controller's for that gateway, or someone else's. */
  private async find(ref: Ref, gatewayUid: string | undefined): Promise<Found> {
    const got = await this.client.request('GET', ref.path);
    if (got.status === 404) return { state: 'absent' };
    if (got.status !== 200 || !isObject(got.body)) throw new Error(`HTTP ${got.status}: ${statusMessage(got.body)}`);
    const meta = isObject(got.body.metadata) ? got.body.metadata : {};
    const labels = isObject(meta.labels) ? meta.labels : {};
    const rv = typeof meta.resourceVersion === 'string' ? { resourceVersion: meta.resourceVersion } : {};
    if (labels[MANAGED_BY_LABEL] === MANAGED_BY && labels[WAYPOINT_GATEWAY_LABEL] === ref.gateway) return { state: 'ours', ...rv };
    const owners = Array.isArray(meta.ownerReferences) ? meta.ownerReferences.filter(isObject) : [];
    if (gatewayUid && owners.some((o) => o.kind === 'Gateway' && o.controller === true && o.uid === gatewayUid)) return { state: 'ours', ...rv };
    const by = labels[MANAGED_BY_LABEL];
    return { state: 'foreign', why: typeof by === 'string' ? `${MANAGED_BY_LABEL}: ${by.slice(0, 63)}` : `no ${MANAGED_BY_LABEL}: ${MANAGED_BY} label` };
  }

  /**
   * The Gateway's Programmed condition: False (ObjectNotOwned) while one of its objects' names is
   * taken; True once all of them are written after that. Written (merge patch of the status,
   * other conditions kept, at the resourceVersion read) only when the Gateway does not show it.
   */
  /** The addresses of a gateway's Service (none when it cannot be read: written on a later pass). */
  private async serviceAddresses(ref: Ref | undefined): Promise<{ type: string; value: string }[]> {
    if (!ref) return [];
    try {
      const res = await this.client.request('GET', ref.path);
      return res.status === 200 ? loadBalancerAddresses(res.body) : [];
    } catch {
      return [];
    }
  }

  private async programmed(gwKey: string, gateway: Record<string, unknown>, refs: Ref[], now: number): Promise<void> {
    const conflict = this.conflicts.get(gwKey);
    const shown = conditionsOf(gateway).find((c) => c.type === 'Programmed');
    let want: Condition | undefined;
    let addresses: { type: string; value: string }[] | undefined;
    if (conflict) want = { type: 'Programmed', status: 'False', reason: NOT_OWNED_REASON, message: conflict };
    else if (this.addresses && refs.every((r) => this.applied.has(r.key))) {
      addresses = await this.serviceAddresses(refs.find((r) => r.key.startsWith('Service/')));
      want = addresses.length > 0
        ? { type: 'Programmed', status: 'True', reason: 'Programmed', message: `the gateway's ServiceAccount, Deployment and Service are applied; its Service's load balancer: ${addresses.map((a) => a.value).join(', ')}` }
        : { type: 'Programmed', status: 'True', reason: 'Programmed', message: 'the gateway\'s ServiceAccount, Deployment and Service are applied; its Service has no load balancer address yet' };
    } else if (shown?.reason === NOT_OWNED_REASON && refs.every((r) => this.applied.has(r.key))) {
      want = { type: 'Programmed', status: 'True', reason: 'Programmed', message: 'the waypoint\'s ServiceAccount, Deployment, Service and PodDisruptionBudget are applied' };
    }
    if (!want) return;
    const id = JSON.stringify([want, addresses]);
    const shownAddresses = isObject(gateway.status) && Array.isArray(gateway.status.addresses) ? gateway.status.addresses : [];
    if (shown && shown.status === want.status && shown.reason === want.reason && shown.message === want.message
      && (addresses === undefined || JSON.stringify(shownAddresses) === JSON.stringify(addresses))) {
      this.written.delete(gwKey);
      return;
    }
    const key = `status/${gwKey}`;
    if (this.written.get(gwKey) === id || !this.due(key, now)) return;
    const meta = isObject(gateway.metadata) ? gateway.metadata : {};
    const path = `/apis/${String(gateway.apiVersion)}/namespaces/${encodeURIComponent(String(meta.namespace))}/gateways/${encodeURIComponent(String(meta.name))}`;
    try {
      // Read now, so that conditions others wrote since the snapshot (Accepted) are kept.
      const got = await this.client.request('GET', path);
      if (got.status !== 200 || !isObject(got.body)) throw new Error(`HTTP ${got.status}: ${statusMessage(got.body)}`);
      const current = conditionsOf(got.body);
      const generation = isObject(got.body.metadata) && typeof got.body.metadata.generation === 'number' ? { observedGeneration: got.body.metadata.generation } : {};
      const rv = isObject(got.body.metadata) && typeof got.body.metadata.resourceVersion === 'string' ? { metadata: { resourceVersion: got.body.metadata.resourceVersion } } : {};
      const condition = { ...want, ...generation, lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, 'Z') };
      const body = { ...rv, status: { conditions: [...current.filter((c) => c.type !== 'Programmed'), condition], ...(addresses ? { addresses } : {}) } };
      const res = await this.client.request('PATCH', `${path}/status`, body, 'application/merge-patch+json');
      if (res.status < 200 || res.status >= 300) throw new Error(`HTTP ${res.status}: ${statusMessage(res.body)}`);
      this.written.set(gwKey, id);
      this.failures.delete(key);
      this.log.info({ gateway: gwKey, condition: want }, 'waypoint status written');
    } catch (err) {
      this.failed(key, now, { gateway: gwKey, err: message(err) }, 'could not write the waypoint\'s status');
    }
  }

  /** Deletes one object if it is the controller's for that gateway; absent is done. */
  private async remove(ref: Ref): Promise<void> {
    const got = await this.client.request('GET', ref.path);
    if (got.status === 404) return;
    if (got.status !== 200) throw new Error(`HTTP ${got.status}: ${statusMessage(got.body)}`);
    const labels = isObject(got.body) && isObject(got.body.metadata) && isObject(got.body.metadata.labels) ? got.body.metadata.labels : {};
    if (labels[MANAGED_BY_LABEL] !== MANAGED_BY || labels[WAYPOINT_GATEWAY_LABEL] !== ref.gateway) {
      this.log.info({ object: ref.key }, 'not managed by the controller for this waypoint: left in place');
      return;
    }
    const res = await this.client.request('DELETE', `${ref.path}?propagationPolicy=Background`);
    if (res.status !== 404 && (res.status < 200 || res.status >= 300)) throw new Error(`HTTP ${res.status}: ${statusMessage(res.body)}`);
    this.log.info({ gateway: `${ref.namespace}/${ref.gateway}`, object: ref.key }, 'waypoint object deleted');
  }

  /** Once: the managed waypoint objects already in the cluster, so those of a Gateway gone meanwhile are deleted. */
  private async adopt(): Promise<void> {
    const found: Ref[] = [];
    for (const [id, k] of Object.entries(KINDS)) {
      const selector = encodeURIComponent(`${MANAGED_BY_LABEL}=${MANAGED_BY},${WAYPOINT_GATEWAY_LABEL}`);
      let res;
      try {
        res = await this.client.request('GET', `${k.prefix}/${k.plural}?labelSelector=${selector}`);
      } catch (err) {
        this.log.warn({ err: message(err) }, 'could not list the managed waypoint objects: trying again next time');
        return;
      }
      if (res.status !== 200 || !isObject(res.body) || !Array.isArray(res.body.items)) {
        this.log.warn({ status: res.status, kind: id }, 'could not list the managed waypoint objects: trying again next time');
        return;
      }
      for (const item of res.body.items) {
        const meta = isObject(item) && isObject(item.metadata) ? item.metadata : undefined;
        const labels = meta && isObject(meta.labels) ? meta.labels : {};
        if (!meta || labels[MANAGED_BY_LABEL] !== MANAGED_BY || typeof labels[WAYPOINT_GATEWAY_LABEL] !== 'string') continue;
        const component = labels['app.kubernetes.io/component'];
        if (component !== undefined && component !== this.component) continue;
        const slash = id.lastIndexOf('/');
        const ref = refOf(id.slice(0, slash), id.slice(slash + 1), String(meta.namespace), String(meta.name), labels[WAYPOINT_GATEWAY_LABEL]);
        if (ref) found.push(ref);
      }
    }
    for (const ref of found) {
      const gwKey = `${ref.namespace}/${ref.gateway}`;
      const refs = this.owned.get(gwKey) ?? [];
      if (!refs.some((r) => r.key === ref.key)) this.owned.set(gwKey, [...refs, ref]);
    }
    this.adopted = true;
  }

  private due(key: string, now: number): boolean {
    const f = this.failures.get(key);
    return !f || f.notBefore <= now;
  }

  private failed(key: string, now: number, fields: Record<string, unknown>, msg: string): void {
    const attempts = (this.failures.get(key)?.attempts ?? 0) + 1;
    const wait = backoffDelay(attempts, { initialMs: this.backoffMs, maxMs: this.maxBackoffMs });
    this.failures.set(key, { attempts, notBefore: now + wait });
    this.log.warn({ ...fields, attempts, retryInMs: wait }, msg);
    // Retried on the next snapshot, or after the wait if no snapshot comes.
    clearTimeout(this.retryTimer);
    const next = Math.min(...[...this.failures.values()].map((x) => x.notBefore)) - now;
    this.retryTimer = setTimeout(() => {
      if (this.latest) void this.reconcile(this.latest);
    }, Math.max(next, 0)).unref();
  }
}

/** The object as the controller writes it: labelled as its own. */
function markManaged(obj: K8sObject): K8sObject {
  const copy = JSON.parse(JSON.stringify(obj)) as K8sObject;
  copy.metadata.labels = { ...copy.metadata.labels, [MANAGED_BY_LABEL]: MANAGED_BY };
  return copy;
}

/** A Service's load balancer ingress as Gateway API status addresses (IPAddress or Hostname). */
export function loadBalancerAddresses(service: unknown): { type: string; value: string }[] {
  const lb = isObject(service) && isObject(service.status) && isObject(service.status.loadBalancer) ? service.status.loadBalancer : {};
  const ingress = Array.isArray(lb.ingress) ? lb.ingress.filter(isObject) : [];
  return ingress.slice(0, 16).flatMap((i) => (typeof i.ip === 'string' && i.ip !== '' ? [{ type: 'IPAddress', value: i.ip.slice(0, 64) }]
    : typeof i.hostname === 'string' && i.hostname !== '' ? [{ type: 'Hostname', value: i.hostname.slice(0, 253) }] : []));
}

function conditionsOf(obj: Record<string, unknown>): Record<string, unknown>[] {
  return isObject(obj.status) && Array.isArray(obj.status.conditions) ? obj.status.conditions.filter(isObject) : [];
}

function statusMessage(body: unknown): string {
  return isObject(body) && typeof body.message === 'string' ? body.message : '';
}
