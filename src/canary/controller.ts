/**
 * The canary controller: Flagger's analysis loop, run by ambit's controller over ambit's own
 * telemetry. For each Canary, every `analysis.interval`:
 *
 *   (none) ─ primary made, ready ─▶ Initialized ─ new revision of the target ─▶ Progressing
 *   Progressing ─ checks pass, weight + step ─▶ Progressing … ─ at maxWeight ─▶ Promoting
 *   Promoting ─ primary runs the new template ─▶ Finalising ─ canary scaled to 0 ─▶ Succeeded
 *   Progressing ─ `threshold` failed checks, a rollback hook, abort ─▶ Failed
 *
 * A check is the `rollout` webhooks and each metric against its thresholdRange, read from the
 * waypoints' Istio metrics for the canary's workload (request-success-rate: the share of
 * non-5xx, in %; request-duration: the p99, in ms); no requests in the window fails the check,
 * as in Flagger ("no values found"). Where the cluster lives (the local runtime, or the
 * Kubernetes API) is behind `CanaryCluster`; where metrics come from behind `CanaryMetrics`.
 */
import type { Logger } from 'pino';
import { isObject } from '../config/schema.js';
import { namesOf, primaryDeployment, scaled, selectorLabel, services, templateChecksum, virtualService, type Manifest } from './objects.js';
import { DURATION, readCanarySpec, SUCCESS_RATE, type CanaryMetric, type CanarySpec, type CanaryWebhook, type WebhookType } from './spec.js';

export type CanaryPhase = 'Initializing' | 'Initialized' | 'Waiting' | 'Progressing' | 'WaitingPromotion' | 'Promoting' | 'Finalising' | 'Succeeded' | 'Failed';

/** Flagger's CanaryStatus (pkg/apis/flagger/v1beta1/status.go), plus the last check's figures. */
export interface CanaryStatus {
  phase: CanaryPhase;
  failedChecks: number;
  canaryWeight: number;
  iterations: number;
  lastAppliedSpec?: string;
  lastPromotedSpec?: string;
  lastTransitionTime: string;
  conditions: { type: 'Promoted'; status: 'True' | 'False' | 'Unknown'; lastUpdateTime: string; lastTransitionTime: string; reason: string; message: string }[];
  /** ambit: what the last check measured, each metric against its range. */
  lastCheck?: { at: string; passed: boolean; results: CheckResult[] };
}

export interface CheckResult {
  metric: string;
  value: number | null;
  min?: number;
  max?: number;
  passed: boolean;
  message: string;
}

/** The `ambit.dev/canary-action` annotation: `promote` or `abort`, acted on once, then removed. */
export const CANARY_ACTION_ANNOTATION = 'ambit.dev/canary-action';

export interface CanaryObject {
  namespace: string;
  name: string;
  spec: unknown;
  status?: CanaryStatus;
  annotations: Record<string, string>;
}

export interface DeploymentState {
  /** As the cluster holds it (apiVersion, kind, metadata, spec). */
  manifest: Manifest;
  replicas: number;
  /** Every replica of the current template runs and is ready. */
  ready: boolean;
}

export interface CanaryCluster {
  canaries(): Promise<CanaryObject[]>;
  deployment(namespace: string, name: string): Promise<DeploymentState | undefined>;
  /** The labels of the Service `namespace/name` as it is now, undefined when there is none. */
  serviceLabels(namespace: string, name: string): Promise<Record<string, string> | undefined>;
  /** The waypoint that requests to `namespace/service` pass through, given the Service's labels; undefined when none. */
  waypointFor(namespace: string, labels: Record<string, string>): Promise<string | undefined>;
  apply(objects: Manifest[]): Promise<void>;
  setStatus(canary: CanaryObject, status: CanaryStatus): Promise<void>;
  event(canary: CanaryObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void>;
  /** Removes the action annotation once acted on. */
  clearAction(canary: CanaryObject): Promise<void>;
}

export interface CanaryMetrics {
  /** A metric of `namespace/workload` over the last `metric.intervalMs`; null when there were no requests. */
  read(namespace: string, workload: string, metric: CanaryMetric): Promise<number | null>;
  /** Called once per tick before the reads: a sampling source takes its scrape here. */
  sample?(namespaces: string[]): Promise<void>;
}

export interface WebhookPayload {
  name: string;
  namespace: string;
  phase: CanaryPhase;
  checksum?: string;
  type?: WebhookType;
  metadata?: Record<string, string>;
}

/** Calls a webhook; resolves `ok` on a 2xx answer. */
export type WebhookCaller = (hook: CanaryWebhook, payload: WebhookPayload) => Promise<{ ok: boolean; detail: string }>;

export interface CanaryControllerOptions {
  cluster: CanaryCluster;
  metrics: CanaryMetrics;
  webhooks: WebhookCaller;
  /** The floor of `analysis.interval` (Flagger's: 10 s); AMBIT_CANARY_MIN_INTERVAL lowers it. */
  minIntervalMs?: number;
  log?: Logger;
  now?: () => number;
}

const TERMINAL = new Set<CanaryPhase>(['Initialized', 'Succeeded', 'Failed']);

export class CanaryController {
  private readonly next = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly now: () => number;

  constructor(private readonly opts: CanaryControllerOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** Ticks every canary whose interval has come, checking each second. */
  start(): void {
    const loop = () => {
      this.running = this.runDue().catch((err: unknown) => this.opts.log?.error({ err }, 'canary loop failed')).finally(() => {
        this.running = undefined;
        if (this.timer !== undefined) this.timer = setTimeout(loop, 1000);
      });
    };
    this.timer = setTimeout(loop, 0);
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One pass: every canary whose time has come gets a tick. */
  async runDue(): Promise<void> {
    const canaries = await this.opts.cluster.canaries();
    const seen = new Set<string>();
    const due: CanaryObject[] = [];
    for (const c of canaries) {
      const key = `${c.namespace}/${c.name}`;
      seen.add(key);
      // An action is taken at once, not at the next interval.
      if ((this.next.get(key) ?? 0) <= this.now() || c.annotations[CANARY_ACTION_ANNOTATION]) due.push(c);
    }
    for (const key of this.next.keys()) if (!seen.has(key)) this.next.delete(key);
    if (due.length === 0) return;
    try {
      await this.opts.metrics.sample?.([...new Set(due.map((c) => c.namespace))]);
    } catch (err) {
      // No scrape this time: the checks find no values and fail, as Flagger's do.
      this.opts.log?.warn({ err }, 'canary metrics not sampled');
    }
    for (const c of due) {
      const spec = readCanarySpec(c.spec, this.opts.minIntervalMs);
      this.next.set(`${c.namespace}/${c.name}`, this.now() + spec.intervalMs);
      try {
        await this.tick(c, spec);
      } catch (err) {
        this.opts.log?.warn({ err, canary: `${c.namespace}/${c.name}` }, 'canary step failed; retried at the next interval');
        await this.opts.cluster.event(c, 'Warning', 'Error', `${(err as Error).message}`).catch(() => undefined);
      }
    }
  }

  /** One step of one canary. */
  async tick(c: CanaryObject, spec: CanarySpec = readCanarySpec(c.spec, this.opts.minIntervalMs)): Promise<void> {
    const { cluster } = this.opts;
    const ref = `${c.name}.${c.namespace}`;
    const owner = `${c.namespace}/${c.name}`;
    const names = namesOf(spec);
    const status: CanaryStatus = c.status ? structuredClone(c.status) : this.initial();
    if (spec.suspend) return;
    if (spec.unsupported.length > 0) return this.hold(c, status, status.phase, `not run: ${spec.unsupported.join('; ')}`, 'Unsupported');
    const target = await cluster.deployment(c.namespace, spec.target.name);
    if (!target) return this.hold(c, status, 'Initializing', `target Deployment ${c.namespace}/${spec.target.name} not found`);
    if (!selectorLabel(target.manifest)) return this.hold(c, status, 'Initializing', `Deployment ${c.namespace}/${spec.target.name} has no app, name or app.kubernetes.io/name label in spec.selector.matchLabels: the canary's Services select by it`);
    // The apex must pass through a waypoint, which applies the weights.
    const apexLabels = (await cluster.serviceLabels(c.namespace, names.apex)) ?? {};
    const waypoint = await cluster.waypointFor(c.namespace, apexLabels);
    if (!waypoint) {
      return this.hold(c, status, status.phase === 'Initializing' ? 'Initializing' : status.phase, `service ${c.namespace}/${names.apex} has no waypoint, so its traffic cannot be split by weight: give the namespace or the service one (ambit waypoint apply -n ${c.namespace} --enroll-namespace)`, 'WaypointMissing');
    }
    const svcLabels = Object.fromEntries(Object.entries(apexLabels).filter(([k]) => k === 'ambit.dev/use-waypoint' || k === 'istio.io/use-waypoint'));
    const checksum = templateChecksum(target.manifest);
    const action = c.annotations[CANARY_ACTION_ANNOTATION];
    const base = { cluster, c, status, spec, names, owner, ref, target };

    switch (status.phase) {
      case 'Initializing': {
        const primary = await cluster.deployment(c.namespace, names.primaryDeployment);
        if (!primary) await cluster.apply([primaryDeployment(target.manifest, names, owner, Math.max(1, target.replicas))]);
        await cluster.apply([...services(spec, target.manifest, names, c.namespace, owner, svcLabels), virtualService(spec, names, c.namespace, owner, 0)]);
        const now = primary ?? await cluster.deployment(c.namespace, names.primaryDeployment);
        if (!now?.ready) return this.save(c, { ...status, phase: 'Initializing' }, 'Unknown', 'Initializing', `waiting for ${names.primaryDeployment}.${c.namespace} to be ready`);
        if (target.replicas !== 0) await cluster.apply([scaled(target.manifest, 0)]);
        await cluster.event(c, 'Normal', 'Synced', `Initialization done! ${ref}`);
        return this.save(c, { ...status, phase: 'Initialized', canaryWeight: 0, failedChecks: 0, iterations: 0, lastAppliedSpec: checksum, lastPromotedSpec: checksum }, 'True', 'Initialized', 'Deployment initialization completed.');
      }
      case 'Initialized':
      case 'Succeeded':
      case 'Failed': {
        if (action) await cluster.clearAction(c);
        if (checksum === status.lastAppliedSpec) return;
        const primary = await cluster.deployment(c.namespace, names.primaryDeployment);
        await cluster.apply([scaled(target.manifest, Math.max(1, primary?.replicas ?? 1)), virtualService(spec, names, c.namespace, owner, 0)]);
        await cluster.event(c, 'Normal', 'Synced', `New revision detected! Scaling up ${ref}`);
        return this.save(c, { ...status, phase: 'Progressing', canaryWeight: 0, failedChecks: 0, iterations: 0, lastAppliedSpec: checksum, lastCheck: undefined }, 'Unknown', 'Progressing', 'New revision detected, progressing canary analysis.');
      }
      case 'Waiting':
      case 'Progressing':
      case 'WaitingPromotion':
        return this.analyse(base, checksum, action);
      case 'Promoting':
      case 'Finalising':
        return this.promote(base);
    }
  }

  private async analyse(b: Step, checksum: string, action: string | undefined): Promise<void> {
    const { cluster, c, spec, names, owner, ref, target } = b;
    let status = b.status;
    if (checksum !== status.lastAppliedSpec) {
      // The target changed under the analysis: start over with the new revision.
      await cluster.apply([virtualService(spec, names, c.namespace, owner, 0)]);
      await cluster.event(c, 'Normal', 'Synced', `New revision detected! Restarting analysis for ${ref}`);
      return this.save(c, { ...status, phase: 'Progressing', canaryWeight: 0, failedChecks: 0, iterations: 0, lastAppliedSpec: checksum }, 'Unknown', 'Progressing', 'New revision detected, restarting canary analysis.');
    }
    if (action === 'abort') {
      await cluster.clearAction(c);
      return this.rollback(b, 'aborted by ambit canary abort');
    }
    if (!target.ready) {
      const since = Date.parse(status.lastTransitionTime);
      if (this.now() - since > spec.progressDeadlineMs) return this.rollback(b, `${ref} not ready within progressDeadlineSeconds (${spec.progressDeadlineMs / 1000} s)`);
      return this.save(c, status, 'Unknown', 'Progressing', `waiting for ${ref} to be ready`);
    }
    const hooks = (type: WebhookType) => spec.webhooks.filter((h) => h.type === type);
    const payload = (type: WebhookType): WebhookPayload => ({ name: c.name, namespace: c.namespace, phase: status.phase, checksum, type });
    const call = async (type: WebhookType): Promise<{ passed: boolean; failures: string[] }> => {
      const failures: string[] = [];
      for (const h of hooks(type)) {
        const r = await this.opts.webhooks(h, { ...payload(type), metadata: h.metadata });
        if (!r.ok) failures.push(`${type} webhook ${h.name}: ${r.detail}`);
      }
      return { passed: failures.length === 0, failures };
    };

    // Gates: a rollback hook that answers 2xx rolls back; confirm-rollout holds the start.
    for (const h of hooks('rollback')) {
      const r = await this.opts.webhooks(h, { ...payload('rollback'), metadata: h.metadata });
      if (r.ok) return this.rollback(b, `rollback webhook ${h.name} asked for it`);
    }
    const starting = status.canaryWeight === 0 && status.iterations === 0;
    if (starting && status.phase !== 'WaitingPromotion') {
      const confirm = await call('confirm-rollout');
      if (!confirm.passed) {
        await cluster.event(c, 'Normal', 'Synced', `Halt ${ref} advancement waiting for approval ${confirm.failures.join('; ')}`);
        return this.save(c, { ...status, phase: 'Waiting' }, 'Unknown', 'Waiting', 'Waiting for approval.');
      }
      if (status.phase === 'Waiting') status = { ...status, phase: 'Progressing' };
    }
    const promoteNow = action === 'promote' || spec.skipAnalysis;
    if (promoteNow && action) await cluster.clearAction(c);

    if (!promoteNow) {
      if (starting) {
        const pre = await call('pre-rollout');
        if (!pre.passed) return this.failed(b, status, pre.failures.join('; '));
      }
      // The rollout hooks (a load test) every step; the metrics once traffic reaches the canary:
      // a weight, or blue/green's requests sent to the canary Service.
      const rollout = await call('rollout');
      const measured = status.canaryWeight > 0 || spec.iterations !== undefined;
      const results = rollout.passed && measured ? await this.check(c.namespace, spec.target.name, spec) : [];
      const passed = rollout.passed && results.every((r) => r.passed);
      if (measured) status = { ...status, lastCheck: { at: new Date(this.now()).toISOString(), passed, results } };
      if (!passed) return this.failed(b, status, [...rollout.failures, ...results.filter((r) => !r.passed).map((r) => r.message)].join('; '));
      // Advance.
      if (spec.iterations !== undefined) {
        const iterations = status.iterations + 1;
        if (iterations < spec.iterations) {
          await cluster.event(c, 'Normal', 'Synced', `Advance ${ref} canary iteration ${iterations}/${spec.iterations}`);
          return this.save(c, { ...status, phase: 'Progressing', iterations }, 'Unknown', 'Progressing', 'Canary analysis in progress.');
        }
        status = { ...status, iterations };
      } else {
        const nextWeight = spec.weights.find((w) => w > status.canaryWeight);
        if (nextWeight !== undefined) {
          const more = await call('confirm-traffic-increase');
          if (!more.passed) {
            await cluster.event(c, 'Normal', 'Synced', `Halt ${ref} advancement waiting for traffic increase approval ${more.failures.join('; ')}`);
            return this.save(c, status, 'Unknown', 'Progressing', 'Waiting for approval to increase traffic.');
          }
          await cluster.apply([virtualService(spec, names, c.namespace, owner, nextWeight)]);
          await cluster.event(c, 'Normal', 'Synced', `Advance ${ref} canary weight ${nextWeight}`);
          return this.save(c, { ...status, phase: 'Progressing', canaryWeight: nextWeight }, 'Unknown', 'Progressing', 'Canary analysis in progress.');
        }
      }
      const confirm = await call('confirm-promotion');
      if (!confirm.passed) {
        await cluster.event(c, 'Normal', 'Synced', `Halt ${ref} advancement waiting for promotion approval ${confirm.failures.join('; ')}`);
        return this.save(c, { ...status, phase: 'WaitingPromotion' }, 'Unknown', 'WaitingPromotion', 'Waiting for approval to promote.');
      }
    }
    // Promote: the primary takes the canary's template; traffic goes back to it once it runs.
    const primary = await cluster.deployment(c.namespace, names.primaryDeployment);
    await cluster.apply([primaryDeployment(target.manifest, names, owner, Math.max(1, primary?.replicas ?? target.replicas))]);
    await cluster.event(c, 'Normal', 'Synced', `Copying ${ref} template spec to ${names.primaryDeployment}.${c.namespace}`);
    return this.save(c, { ...status, phase: 'Promoting' }, 'Unknown', 'Promoting', 'Canary analysis completed, starting primary rolling update.');
  }

  private async promote(b: Step): Promise<void> {
    const { cluster, c, spec, names, owner, ref, target } = b;
    const status = b.status;
    if (status.phase === 'Promoting') {
      const primary = await cluster.deployment(c.namespace, names.primaryDeployment);
      const expected = templateChecksum(primaryDeployment(target.manifest, names, owner, 1));
      if (!primary?.ready || templateChecksum(primary.manifest) !== expected) return this.save(c, status, 'Unknown', 'Promoting', `waiting for ${names.primaryDeployment}.${c.namespace} to run the new template`);
      // Back to the primary, by stepWeightPromotion per interval (100: at once).
      const weight = Math.max(0, status.canaryWeight - spec.promotionStep);
      await cluster.apply([virtualService(spec, names, c.namespace, owner, weight)]);
      if (weight > 0) {
        await cluster.event(c, 'Normal', 'Synced', `Advance ${ref} primary weight ${100 - weight}`);
        return this.save(c, { ...status, canaryWeight: weight }, 'Unknown', 'Promoting', 'Canary promotion in progress.');
      }
      await cluster.event(c, 'Normal', 'Synced', `Routing all traffic to primary ${names.primaryService}.${c.namespace}`);
    }
    await cluster.apply([scaled(target.manifest, 0)]);
    await cluster.event(c, 'Normal', 'Synced', `Promotion completed! Scaling down ${ref}`);
    const done: CanaryStatus = { ...status, phase: 'Succeeded', canaryWeight: 0, failedChecks: 0, lastPromotedSpec: status.lastAppliedSpec };
    await this.save(c, done, 'True', 'Succeeded', 'Canary analysis completed successfully, promotion finished.');
    await this.postRollout(b, done);
  }

  /** A failed check: counted; at `threshold`, rollback. */
  private async failed(b: Step, status: CanaryStatus, why: string): Promise<void> {
    const failedChecks = status.failedChecks + 1;
    const next = { ...status, failedChecks };
    await b.cluster.event(b.c, 'Warning', 'Synced', `Halt ${b.ref} advancement ${why} (failed checks ${failedChecks}/${b.spec.threshold})`);
    if (failedChecks >= b.spec.threshold) return this.rollback({ ...b, status: next }, `failed checks threshold reached ${failedChecks}`);
    return this.save(b.c, next, 'Unknown', 'Progressing', 'Canary analysis in progress.');
  }

  private async rollback(b: Step, why: string): Promise<void> {
    const { cluster, c, spec, names, owner, ref, target } = b;
    // Traffic first, so that no request reaches the canary once it is judged; then its pods.
    await cluster.apply([virtualService(spec, names, c.namespace, owner, 0)]);
    await cluster.event(c, 'Warning', 'Synced', `Rolling back ${ref} ${why}`);
    await cluster.apply([scaled(target.manifest, 0)]);
    await cluster.event(c, 'Warning', 'Synced', `Canary failed! Scaling down ${ref}`);
    const failed: CanaryStatus = { ...b.status, phase: 'Failed', canaryWeight: 0 };
    await this.save(c, failed, 'False', 'Failed', `Canary analysis failed, Deployment scaled to zero: ${why}.`);
    await this.postRollout(b, failed);
  }

  private async postRollout(b: Step, status: CanaryStatus): Promise<void> {
    for (const h of b.spec.webhooks.filter((w) => w.type === 'post-rollout')) {
      const r = await this.opts.webhooks(h, { name: b.c.name, namespace: b.c.namespace, phase: status.phase, checksum: status.lastAppliedSpec, type: 'post-rollout', metadata: h.metadata });
      if (!r.ok) await b.cluster.event(b.c, 'Warning', 'Synced', `post-rollout webhook ${h.name} failed: ${r.detail}`);
    }
  }

  /** Each metric against its range. */
  private async check(namespace: string, workload: string, spec: CanarySpec): Promise<CheckResult[]> {
    const out: CheckResult[] = [];
    for (const m of spec.metrics) {
      const value = await this.opts.metrics.read(namespace, workload, m);
      const what = m.name === SUCCESS_RATE ? 'success rate' : 'request duration';
      const unit = m.name === SUCCESS_RATE ? '%' : 'ms';
      const fmt = (v: number) => `${m.name === SUCCESS_RATE ? v.toFixed(2) : v.toFixed(0)}${unit}`;
      if (value === null || Number.isNaN(value)) {
        out.push({ metric: m.name, value: null, ...range(m), passed: false, message: `no values found for metric ${m.name}: probably ${workload}.${namespace} is not receiving traffic` });
      } else if (m.min !== undefined && value < m.min) {
        out.push({ metric: m.name, value, ...range(m), passed: false, message: `${what} ${fmt(value)} < ${fmt(m.min)}` });
      } else if (m.max !== undefined && value > m.max) {
        out.push({ metric: m.name, value, ...range(m), passed: false, message: `${what} ${fmt(value)} > ${fmt(m.max)}` });
      } else {
        out.push({ metric: m.name, value, ...range(m), passed: true, message: `${what} ${fmt(value)} within range` });
      }
    }
    return out;
  }

  private initial(): CanaryStatus {
    return { phase: 'Initializing', failedChecks: 0, canaryWeight: 0, iterations: 0, lastTransitionTime: new Date(this.now()).toISOString(), conditions: [] };
  }

  /** Stays in `phase`, saying why (an event when the reason is new). */
  private async hold(c: CanaryObject, status: CanaryStatus, phase: CanaryPhase, message: string, reason: string = phase): Promise<void> {
    const previous = status.conditions[0];
    if (previous?.message !== message) await this.opts.cluster.event(c, 'Warning', reason, message);
    return this.save(c, { ...status, phase }, TERMINAL.has(phase) && phase !== 'Failed' ? 'True' : 'Unknown', reason, message);
  }

  private async save(c: CanaryObject, status: CanaryStatus, conditionStatus: 'True' | 'False' | 'Unknown', reason: string, message: string): Promise<void> {
    const now = new Date(this.now()).toISOString();
    const before = c.status;
    const previous = before?.conditions[0];
    const next: CanaryStatus = {
      ...status,
      lastTransitionTime: before?.phase === status.phase ? before.lastTransitionTime : now,
      conditions: [{ type: 'Promoted', status: conditionStatus, lastUpdateTime: now, lastTransitionTime: previous?.status === conditionStatus ? previous.lastTransitionTime : now, reason, message }],
    };
    if (!next.lastCheck) delete next.lastCheck;
    if (before && JSON.stringify({ ...before, conditions: before.conditions.map((x) => ({ ...x, lastUpdateTime: '' })) }) === JSON.stringify({ ...next, conditions: next.conditions.map((x) => ({ ...x, lastUpdateTime: '' })) })) return;
    if (before?.phase !== next.phase) this.opts.log?.info({ canary: `${c.namespace}/${c.name}`, from: before?.phase, to: next.phase, weight: next.canaryWeight }, 'canary phase');
    await this.opts.cluster.setStatus(c, next);
    c.status = next;
  }
}

interface Step {
  cluster: CanaryCluster;
  c: CanaryObject;
  status: CanaryStatus;
  spec: CanarySpec;
  names: ReturnType<typeof namesOf>;
  owner: string;
  ref: string;
  target: DeploymentState;
}

const range = (m: CanaryMetric) => ({ ...(m.min !== undefined ? { min: m.min } : {}), ...(m.max !== undefined ? { max: m.max } : {}) });

/** A Canary object from the API (or the local cluster's store) as the controller takes it. */
export function canaryObject(raw: Record<string, unknown>): CanaryObject | undefined {
  const m = isObject(raw.metadata) ? raw.metadata : undefined;
  if (!m || typeof m.name !== 'string') return undefined;
  return {
    namespace: typeof m.namespace === 'string' ? m.namespace : 'default',
    name: m.name,
    spec: raw.spec,
    ...(isObject(raw.status) && typeof raw.status.phase === 'string' ? { status: raw.status as unknown as CanaryStatus } : {}),
    annotations: isObject(m.annotations) ? m.annotations as Record<string, string> : {},
  };
}

export { DURATION, SUCCESS_RATE };
