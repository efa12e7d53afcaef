/**
 * The canary controller's analysis loop against an in-memory cluster: each step's objects,
 * weights, status and events, for Flagger's scenarios (promotion, rollback on metrics, on no
 * traffic, on webhooks, gates, blue/green, manual promote and abort, a missing waypoint).
 */
import { describe, expect, it } from 'vitest';
import { CANARY_ACTION_ANNOTATION, CanaryController, type CanaryCluster, type CanaryMetrics, type CanaryObject, type CanaryStatus, type DeploymentState, type WebhookCaller, type WebhookPayload } from '../../src/canary/controller.js';
import { templateChecksum, type Manifest } from '../../src/canary/objects.js';
import type { CanaryMetric, CanaryWebhook } from '../../src/canary/spec.js';

const deployment = (name: string, image: string, replicas = 2): Manifest => ({
  apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name, namespace: 'production' },
  spec: { replicas, selector: { matchLabels: { app: name } }, template: { metadata: { labels: { app: name } }, spec: { containers: [{ name: 'c', image }] } } },
});

/** A cluster in memory: applied objects are kept; a Deployment is ready as soon as it is applied (unless held). */
class FakeCluster implements CanaryCluster {
  objects = new Map<string, Manifest>();
  applied: Manifest[] = [];
  events: { type: string; reason: string; message: string }[] = [];
  notReady = new Set<string>();
  waypoint: string | undefined = 'waypoint';
  canary: CanaryObject;

  constructor(spec: Record<string, unknown>, annotations: Record<string, string> = {}) {
    this.canary = { namespace: 'production', name: 'backend', spec, annotations };
    this.put(deployment('backend', 'v1'));
    this.put({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'backend', namespace: 'production', labels: { 'ambit.dev/use-waypoint': 'waypoint' } }, spec: {} });
  }

  private key(o: Manifest): string {
    return `${String(o.kind)}/${String((o.metadata as { name: string }).name)}`;
  }

  put(o: Manifest): void {
    this.objects.set(this.key(o), structuredClone(o));
  }

  canaries(): Promise<CanaryObject[]> {
    return Promise.resolve([this.canary]);
  }

  deployment(_ns: string, name: string): Promise<DeploymentState | undefined> {
    const d = this.objects.get(`Deployment/${name}`);
    if (!d) return Promise.resolve(undefined);
    return Promise.resolve({ manifest: d, replicas: Number((d.spec as { replicas?: number }).replicas ?? 1), ready: !this.notReady.has(name) });
  }

  serviceLabels(_ns: string, name: string): Promise<Record<string, string> | undefined> {
    const s = this.objects.get(`Service/${name}`);
    return Promise.resolve(s ? ((s.metadata as { labels?: Record<string, string> }).labels ?? {}) : undefined);
  }

  waypointFor(_ns: string, labels: Record<string, string>): Promise<string | undefined> {
    return Promise.resolve(labels['ambit.dev/use-waypoint'] ? this.waypoint : undefined);
  }

  apply(objects: Manifest[]): Promise<void> {
    for (const o of objects) {
      this.applied.push(structuredClone(o));
      this.put(o);
    }
    return Promise.resolve();
  }

  setStatus(c: CanaryObject, status: CanaryStatus): Promise<void> {
    c.status = status;
    return Promise.resolve();
  }

  event(_c: CanaryObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    this.events.push({ type, reason, message });
    return Promise.resolve();
  }

  clearAction(c: CanaryObject): Promise<void> {
    delete c.annotations[CANARY_ACTION_ANNOTATION];
    return Promise.resolve();
  }

  /** The canary's weight in each VirtualService applied, in order. */
  weights(): number[] {
    return this.applied.filter((o) => o.kind === 'VirtualService')
      .map((o) => ((o.spec as { http: { route: { weight: number }[] }[] }).http[0]!.route[1]!.weight));
  }

  replicasOf(name: string): number {
    return Number(((this.objects.get(`Deployment/${name}`)!.spec) as { replicas: number }).replicas);
  }
}

class FakeMetrics implements CanaryMetrics {
  successRate: number | null = 100;
  p99: number | null = 20;
  reads: string[] = [];
  read(namespace: string, workload: string, metric: CanaryMetric): Promise<number | null> {
    this.reads.push(`${namespace}/${workload} ${metric.name}`);
    return Promise.resolve(metric.name === 'request-success-rate' ? this.successRate : this.p99);
  }
}

function hooks(answers: Record<string, boolean> = {}): WebhookCaller & { calls: { hook: string; payload: WebhookPayload }[] } {
  const calls: { hook: string; payload: WebhookPayload }[] = [];
  const fn = ((hook: CanaryWebhook, payload: WebhookPayload) => {
    calls.push({ hook: hook.name, payload });
    const ok = answers[hook.name] ?? true;
    return Promise.resolve({ ok, detail: ok ? '200' : 'answered 500' });
  }) as WebhookCaller & { calls: typeof calls };
  fn.calls = calls;
  return fn;
}

const SEED = {
  targetRef: { apiVersion: 'apps/v1', kind: 'Deployment', name: 'backend' },
  service: { port: 8080 },
  analysis: {
    interval: '1m', threshold: 5, maxWeight: 50, stepWeight: 5,
    metrics: [
      { name: 'request-success-rate', thresholdRange: { min: 99 }, interval: '1m' },
      { name: 'request-duration', thresholdRange: { max: 500 }, interval: '1m' },
    ],
    webhooks: [{ name: 'load-test', url: 'http://flagger-loadtester/', timeout: '5s', metadata: { cmd: 'hey -z 1m -q 10 -c 2 http://backend:8080/' } }],
  },
};

function rig(spec: Record<string, unknown> = SEED, answers: Record<string, boolean> = {}) {
  const cluster = new FakeCluster(spec);
  const metrics = new FakeMetrics();
  const webhooks = hooks(answers);
  let now = Date.parse('2026-12-07T10:00:00Z');
  const controller = new CanaryController({ cluster, metrics, webhooks, now: () => now });
  const tick = async (n = 1) => {
    for (let i = 0; i < n; i++) {
      now += 60_000;
      await controller.tick(cluster.canary);
    }
  };
  const phase = () => cluster.canary.status?.phase;
  return { cluster, metrics, webhooks, tick, phase };
}

/** Initialized, then a new revision of the target. */
async function progressing(r: ReturnType<typeof rig>): Promise<void> {
  await r.tick();
  expect(r.phase()).toBe('Initialized');
  r.cluster.put(deployment('backend', 'v2', 0));
  await r.tick();
  expect(r.phase()).toBe('Progressing');
}

describe('canary controller', () => {
  it('initializes as Flagger does: primary, apex/primary/canary Services, a VirtualService at 0, the target scaled to 0', async () => {
    const r = rig();
    r.cluster.notReady.add('backend-primary');
    await r.tick();
    expect(r.phase()).toBe('Initializing');
    const primary = r.cluster.objects.get('Deployment/backend-primary')!;
    expect((primary.spec as { selector: unknown }).selector).toEqual({ matchLabels: { app: 'backend-primary' } });
    expect((primary.spec as { replicas: number }).replicas).toBe(2);
    const selectors = ['backend', 'backend-primary', 'backend-canary'].map((n) => (r.cluster.objects.get(`Service/${n}`)!.spec as { selector: unknown }).selector);
    expect(selectors).toEqual([{ app: 'backend-primary' }, { app: 'backend-primary' }, { app: 'backend' }]);
    // The generated Services keep the apex's waypoint.
    expect((r.cluster.objects.get('Service/backend-canary')!.metadata as { labels: unknown }).labels).toEqual({ 'ambit.dev/use-waypoint': 'waypoint' });
    expect(r.cluster.weights()).toEqual([0]);
    expect(r.cluster.replicasOf('backend')).toBe(2);
    r.cluster.notReady.delete('backend-primary');
    await r.tick();
    expect(r.phase()).toBe('Initialized');
    expect(r.cluster.replicasOf('backend')).toBe(0);
    expect(r.cluster.canary.status!.conditions[0]).toMatchObject({ type: 'Promoted', status: 'True', reason: 'Initialized' });
    expect(r.cluster.canary.status!.lastAppliedSpec).toBe(templateChecksum(deployment('backend', 'v1')));
  });

  it('promotes a good revision: 5 → 50 by 5, checks at each step, the primary takes the template, 100 % back to it, canary scaled to 0', async () => {
    const r = rig();
    await progressing(r);
    expect(r.cluster.replicasOf('backend')).toBe(2);
    await r.tick(10);
    expect(r.cluster.canary.status!.canaryWeight).toBe(50);
    await r.tick(); // the check at 50 passes: promotion starts
    expect(r.phase()).toBe('Promoting');
    const primaryImage = ((r.cluster.objects.get('Deployment/backend-primary')!.spec as { template: { spec: { containers: { image: string }[] } } }).template.spec.containers[0]!.image);
    expect(primaryImage).toBe('v2');
    await r.tick();
    expect(r.phase()).toBe('Succeeded');
    expect(r.cluster.weights()).toEqual([0, 0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 0]);
    expect(r.cluster.replicasOf('backend')).toBe(0);
    expect(r.cluster.canary.status).toMatchObject({ failedChecks: 0, canaryWeight: 0, lastPromotedSpec: templateChecksum(deployment('backend', 'v2', 0)) });
    expect(r.cluster.canary.status!.conditions[0]).toMatchObject({ status: 'True', reason: 'Succeeded' });
    // Checks read the canary's workload (the target), never the primary's.
    expect(new Set(r.metrics.reads)).toEqual(new Set(['production/backend request-success-rate', 'production/backend request-duration']));
    expect(r.cluster.canary.status!.lastCheck!.results.map((x) => [x.metric, x.passed])).toEqual([['request-success-rate', true], ['request-duration', true]]);
    // The load test ran every step, with Flagger's payload.
    expect(r.webhooks.calls.filter((c) => c.hook === 'load-test').length).toBeGreaterThanOrEqual(11);
    expect(r.webhooks.calls[0]!.payload).toMatchObject({ name: 'backend', namespace: 'production', phase: 'Progressing', metadata: { cmd: 'hey -z 1m -q 10 -c 2 http://backend:8080/' } });
  });

  it('rolls back after `threshold` failed checks: traffic to the primary first, then the canary scaled to 0', async () => {
    const r = rig();
    await progressing(r);
    await r.tick(2); // weight 5, then 10 after a good check
    r.metrics.successRate = 70;
    await r.tick(4);
    expect(r.cluster.canary.status).toMatchObject({ phase: 'Progressing', failedChecks: 4, canaryWeight: 10 });
    expect(r.cluster.events.at(-1)!.message).toContain('success rate 70.00% < 99.00%');
    await r.tick();
    expect(r.phase()).toBe('Failed');
    expect(r.cluster.weights().at(-1)).toBe(0);
    const last = r.cluster.applied.slice(-2).map((o) => o.kind);
    expect(last).toEqual(['VirtualService', 'Deployment']);
    expect(r.cluster.replicasOf('backend')).toBe(0);
    expect(r.cluster.canary.status!.conditions[0]).toMatchObject({ status: 'False', reason: 'Failed' });
    // Stays Failed until the next revision.
    await r.tick(3);
    expect(r.phase()).toBe('Failed');
    r.cluster.put(deployment('backend', 'v3', 0));
    await r.tick();
    expect(r.cluster.canary.status).toMatchObject({ phase: 'Progressing', failedChecks: 0, canaryWeight: 0 });
  });

  it('counts a window without requests as a failed check ("no values found"), and a slow p99', async () => {
    const r = rig({ ...SEED, analysis: { ...SEED.analysis, threshold: 2 } });
    await progressing(r);
    await r.tick(); // weight 5
    r.metrics.successRate = null;
    await r.tick();
    expect(r.cluster.events.at(-1)!.message).toContain('no values found for metric request-success-rate');
    r.metrics.successRate = 100;
    r.metrics.p99 = 900;
    await r.tick();
    expect(r.cluster.events.some((e) => e.message.includes('request duration 900ms > 500ms'))).toBe(true);
    expect(r.phase()).toBe('Failed');
  });

  it('holds with a condition when the apex service has no waypoint', async () => {
    const r = rig();
    r.cluster.waypoint = undefined;
    await r.tick();
    expect(r.cluster.canary.status).toMatchObject({ phase: 'Initializing' });
    expect(r.cluster.canary.status!.conditions[0]).toMatchObject({ reason: 'WaypointMissing' });
    expect(r.cluster.canary.status!.conditions[0]!.message).toContain('has no waypoint');
    expect(r.cluster.applied).toEqual([]);
  });

  it('gates: pre-rollout failures count, confirm-promotion waits, a rollback hook rolls back', async () => {
    const spec = { ...SEED, analysis: { ...SEED.analysis, maxWeight: 10, webhooks: [
      { name: 'pre', type: 'pre-rollout', url: 'http://t/' },
      { name: 'confirm', type: 'confirm-promotion', url: 'http://t/' },
    ] } };
    const r = rig(spec, { pre: false, confirm: false });
    await progressing(r);
    await r.tick();
    expect(r.cluster.canary.status).toMatchObject({ failedChecks: 1, canaryWeight: 0 });
    r.webhooks.calls.length = 0;
    const ok = rig(spec, { confirm: false });
    await progressing(ok);
    await ok.tick(3); // 5, 10, then the check at 10 passes and promotion waits
    expect(ok.phase()).toBe('WaitingPromotion');
    await ok.tick();
    expect(ok.phase()).toBe('WaitingPromotion');

    const rb = rig({ ...SEED, analysis: { ...SEED.analysis, webhooks: [{ name: 'stop', type: 'rollback', url: 'http://t/' }] } });
    await progressing(rb);
    await rb.tick();
    expect(rb.phase()).toBe('Failed');
  });

  it('blue/green: `iterations` checks at weight 0, then promotion', async () => {
    const r = rig({ ...SEED, analysis: { interval: '1m', threshold: 2, iterations: 3, metrics: SEED.analysis.metrics } });
    await progressing(r);
    await r.tick(2);
    expect(r.cluster.canary.status).toMatchObject({ phase: 'Progressing', iterations: 2, canaryWeight: 0 });
    await r.tick();
    expect(r.phase()).toBe('Promoting');
    await r.tick();
    expect(r.phase()).toBe('Succeeded');
    expect(r.cluster.weights().every((w) => w === 0)).toBe(true);
  });

  it('acts on `ambit canary promote` and `abort` at once, and removes the annotation', async () => {
    const r = rig();
    await progressing(r);
    await r.tick(); // weight 5
    r.cluster.canary.annotations[CANARY_ACTION_ANNOTATION] = 'promote';
    await r.tick();
    expect(r.phase()).toBe('Promoting');
    expect(r.cluster.canary.annotations[CANARY_ACTION_ANNOTATION]).toBeUndefined();

    const a = rig();
    await progressing(a);
    await a.tick(3);
    a.cluster.canary.annotations[CANARY_ACTION_ANNOTATION] = 'abort';
    await a.tick();
    expect(a.phase()).toBe('Failed');
    expect(a.cluster.canary.status!.conditions[0]!.message).toContain('aborted');
  });

  it('restarts the analysis when the target changes under it', async () => {
    const r = rig();
    await progressing(r);
    await r.tick(3);
    r.cluster.put(deployment('backend', 'v3', 2));
    await r.tick();
    expect(r.cluster.canary.status).toMatchObject({ phase: 'Progressing', canaryWeight: 0, lastAppliedSpec: templateChecksum(deployment('backend', 'v3')) });
    expect(r.cluster.weights().at(-1)).toBe(0);
  });
});

describe('canary controller: what it cannot honour', () => {
  it('holds a canary with a MetricTemplate metric or a DaemonSet target instead of running it without that gate', async () => {
    const r = rig({ ...SEED, analysis: { ...SEED.analysis, metrics: [...SEED.analysis.metrics, { name: 'error-budget', templateRef: { name: 'budget' }, thresholdRange: { max: 1 } }] } });
    await r.tick();
    expect(r.cluster.canary.status!.conditions[0]).toMatchObject({ reason: 'Unsupported' });
    expect(r.cluster.canary.status!.conditions[0]!.message).toContain('metric "error-budget"');
    expect(r.cluster.applied).toEqual([]);
    const d = rig({ ...SEED, targetRef: { apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'backend' } });
    await d.tick();
    expect(d.cluster.canary.status!.conditions[0]!.message).toContain('targetRef.kind DaemonSet');
  });
});
