/**
 * Flagger Canaries on Kubernetes: KubeCanaryCluster against the stand-in API server, driven by
 * the canary controller from initialization to promotion (server-side apply of the primary, the
 * three Services and the VirtualService; the status subresource; Events; only the target's
 * replica count written), its parts one by one, and the controller's wiring: only the replica
 * that leads runs canaries, and AMBIT_CANARIES / AMBIT_CANARY_PROMETHEUS.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { kubernetesSettingsFromEnv } from '../../src/cli/controller.js';
import { CanaryController, type CanaryMetrics, type CanaryObject, type CanaryStatus } from '../../src/canary/controller.js';
import { templateChecksum } from '../../src/canary/objects.js';
import { SUCCESS_RATE, type CanaryMetric } from '../../src/canary/spec.js';
import { runController, type Controller } from '../../src/control/controller.js';
import { CANARY_FIELD_MANAGER, deploymentReady, kubeCanaries, KubeCanaryCluster, objectPath } from '../../src/control/kube/canaries.js';
import { KubeClient } from '../../src/kube/client.js';
import { FakeApiServer, ONE_REPLICA, writeKubeconfig, type ServedKind } from '../helpers/fake-apiserver.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk stored objects by path */

const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  { group: '', version: 'v1', kind: 'Event', plural: 'events' },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
  { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases' },
  { group: 'flagger.app', version: 'v1beta1', kind: 'Canary', plural: 'canaries' },
  { group: 'networking.istio.io', version: 'v1', kind: 'VirtualService', plural: 'virtualservices' },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
];

const NS = 'production';
const CANARY = {
  metadata: { name: 'backend', namespace: NS },
  spec: {
    provider: 'istio',
    targetRef: { apiVersion: 'apps/v1', kind: 'Deployment', name: 'backend' },
    service: { port: 8080 },
    analysis: {
      interval: '10s', threshold: 2, maxWeight: 20, stepWeight: 10,
      metrics: [
        { name: 'request-success-rate', thresholdRange: { min: 99 }, interval: '1m' },
        { name: 'request-duration', thresholdRange: { max: 500 }, interval: '1m' },
      ],
    },
  },
};

/** The target as a user applies it: `generation` moves with each change of its spec. */
const target = (image: string, generation: number, replicas = 2) => ({
  metadata: { name: 'backend', namespace: NS, generation, labels: { app: 'backend' } },
  spec: { replicas, selector: { matchLabels: { app: 'backend' } }, template: { metadata: { labels: { app: 'backend' } }, spec: { containers: [{ name: 'app', image }] } } },
});

class FakeMetrics implements CanaryMetrics {
  reads: string[] = [];
  read(namespace: string, workload: string, metric: CanaryMetric): Promise<number | null> {
    this.reads.push(`${namespace}/${workload} ${metric.name}`);
    return Promise.resolve(metric.name === SUCCESS_RATE ? 100 : 20);
  }
}

let server: FakeApiServer;
let client: KubeClient;

beforeEach(async () => {
  server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  // As server-side apply does: an apply of some fields leaves the others to their owners.
  server.applyMerges = true;
  await server.start();
  client = new KubeClient({ server: server.url });
  server.apply('Namespace', { metadata: { name: 'ambit-system' } });
  server.apply('Namespace', { metadata: { name: NS, labels: { 'ambit.dev/use-waypoint': 'waypoint' } } });
  server.apply('Gateway', { metadata: { name: 'waypoint', namespace: NS }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } }, 'gateway.networking.k8s.io');
  server.apply('Deployment', { ...target('backend:v1', 1), status: { observedGeneration: 1, replicas: 2, updatedReplicas: 2, readyReplicas: 2, availableReplicas: 2 } }, 'apps');
  server.apply('Canary', CANARY, 'flagger.app');
});

afterEach(async () => {
  await server.close();
});

const stored = (kind: string, name: string, group?: string) => server.get(kind, NS, name, group) as any;
const canary = () => stored('Canary', 'backend', 'flagger.app');
/** The stand-in's Deployment controller: every replica of the current spec up and ready. */
const rollout = (name: string) => {
  const d = stored('Deployment', name, 'apps');
  const n = d.spec.replicas ?? 1;
  server.apply('Deployment', { ...d, status: { observedGeneration: d.metadata.generation ?? 0, replicas: n, updatedReplicas: n, readyReplicas: n, availableReplicas: n } }, 'apps');
};
const image = (name: string) => stored('Deployment', name, 'apps').spec.template.spec.containers[0].image;
const canaryApplies = () => server.applyPatches.filter((p) => p.query.fieldManager === CANARY_FIELD_MANAGER);
const eventObjects = async () => ((await client.request('GET', `/api/v1/namespaces/${NS}/events`)).body as any).items as any[];

describe('KubeCanaryCluster: a canary from initialization to promotion', () => {
  it('applies what the canary runs on, keeps its status in the subresource, records Events, and only scales the target', async () => {
    let now = Date.parse('2026-12-07T10:00:00Z');
    const cluster = new KubeCanaryCluster(client, { now: () => now });
    const metrics = new FakeMetrics();
    const controller = new CanaryController({ cluster, metrics, webhooks: () => Promise.resolve({ ok: true, detail: '200' }), now: () => now });
    const pass = async () => {
      now += 10_000;
      await controller.runDue();
    };

    // Initializing: the primary, the apex, primary and canary Services and the VirtualService, by server-side apply.
    await pass();
    const paths = canaryApplies().map((p) => p.path);
    expect(paths).toEqual([
      `/apis/apps/v1/namespaces/${NS}/deployments/backend-primary`,
      `/api/v1/namespaces/${NS}/services/backend`,
      `/api/v1/namespaces/${NS}/services/backend-primary`,
      `/api/v1/namespaces/${NS}/services/backend-canary`,
      `/apis/networking.istio.io/v1/namespaces/${NS}/virtualservices/backend`,
    ]);
    for (const p of canaryApplies()) expect(p).toMatchObject({ method: 'PATCH', contentType: 'application/apply-patch+yaml', query: { fieldManager: 'ambit-canary', force: 'true' } });
    expect(stored('Deployment', 'backend-primary', 'apps').spec).toMatchObject({ replicas: 2, selector: { matchLabels: { app: 'backend-primary' } } });
    expect(['backend', 'backend-primary', 'backend-canary'].map((n) => stored('Service', n).spec.selector)).toEqual([{ app: 'backend-primary' }, { app: 'backend-primary' }, { app: 'backend' }]);
    const vs = stored('VirtualService', 'backend', 'networking.istio.io');
    expect(vs.spec.http[0].route.map((r: any) => [r.destination.host, r.weight])).toEqual([['backend-primary', 100], ['backend-canary', 0]]);
    // The primary is not ready yet: Initializing, in the status subresource, by merge patch.
    expect(server.statusPatches.at(-1)).toMatchObject({ path: `/apis/flagger.app/v1beta1/namespaces/${NS}/canaries/backend/status`, contentType: 'application/merge-patch+json' });
    expect(canary().status).toMatchObject({ phase: 'Initializing', conditions: [{ type: 'Promoted', status: 'Unknown', message: `waiting for backend-primary.${NS} to be ready` }] });
    expect(stored('Deployment', 'backend', 'apps').spec.replicas).toBe(2);

    // Once the primary runs: the target scaled to 0, Initialized, and an Event says so.
    rollout('backend-primary');
    await pass();
    expect(canary().status).toMatchObject({ phase: 'Initialized', canaryWeight: 0, failedChecks: 0, lastAppliedSpec: templateChecksum(target('backend:v1', 1)), conditions: [{ status: 'True', reason: 'Initialized' }] });
    const scale = canaryApplies().at(-1)!;
    expect(scale.path).toBe(`/apis/apps/v1/namespaces/${NS}/deployments/backend`);
    // Only the replica count of the user's Deployment: nothing else of it is ambit's to write.
    expect(scale.body).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'backend', namespace: NS }, spec: { replicas: 0 } });
    expect(stored('Deployment', 'backend', 'apps').spec).toMatchObject({ replicas: 0, template: { spec: { containers: [{ image: 'backend:v1' }] } } });
    const [event] = await eventObjects();
    expect(event).toMatchObject({
      type: 'Normal', reason: 'Synced', message: `Initialization done! backend.${NS}`, count: 1,
      involvedObject: { kind: 'Canary', apiVersion: 'flagger.app/v1beta1', name: 'backend', namespace: NS, uid: canary().metadata.uid },
      source: { component: 'ambit-canary' },
    });
    expect(event.metadata.name).toMatch(/^backend\.[0-9a-f]{10,}$/);
    expect(event.firstTimestamp).toBe('2026-12-07T10:00:20Z');
    expect(event.lastTimestamp).toBe(event.firstTimestamp);

    // A new revision: the target scaled back up, then advanced by weight once it runs.
    server.apply('Deployment', { ...target('backend:v2', 2, 0), status: stored('Deployment', 'backend', 'apps').status }, 'apps');
    await pass();
    expect(canary().status.phase).toBe('Progressing');
    expect(stored('Deployment', 'backend', 'apps').spec).toMatchObject({ replicas: 2, template: { spec: { containers: [{ image: 'backend:v2' }] } } });
    await pass();
    // Not rolled out yet (generation 2 not observed): no step.
    expect(canary().status.canaryWeight).toBe(0);
    rollout('backend');
    await pass();
    expect(canary().status).toMatchObject({ phase: 'Progressing', canaryWeight: 10 });
    await pass();
    expect(canary().status.canaryWeight).toBe(20);
    expect(metrics.reads).toEqual([`${NS}/backend request-success-rate`, `${NS}/backend request-duration`]);
    // At maxWeight the checks pass once more: the primary takes the new template.
    await pass();
    expect(canary().status.phase).toBe('Promoting');
    expect(image('backend-primary')).toBe('backend:v2');
    rollout('backend-primary');
    await pass();
    expect(canary().status).toMatchObject({ phase: 'Succeeded', canaryWeight: 0, lastPromotedSpec: templateChecksum(target('backend:v2', 2)) });
    expect(stored('Deployment', 'backend', 'apps').spec.replicas).toBe(0);
    const weights = canaryApplies().filter((p) => p.path.endsWith('/virtualservices/backend')).map((p) => (p.body as any).spec.http[0].route[1].weight);
    expect(weights).toEqual([0, 0, 0, 10, 20, 0]);
    const all = await eventObjects();
    expect(all.map((e) => e.message)).toEqual([
      `Initialization done! backend.${NS}`,
      `New revision detected! Scaling up backend.${NS}`,
      `Advance backend.${NS} canary weight 10`,
      `Advance backend.${NS} canary weight 20`,
      `Copying backend.${NS} template spec to backend-primary.${NS}`,
      `Routing all traffic to primary backend-primary.${NS}`,
      `Promotion completed! Scaling down backend.${NS}`,
    ]);
    // Each its own Event, as the recorder names them: several in one millisecond still differ.
    expect(new Set(all.map((e) => e.metadata.name)).size).toBe(7);
  });
});

describe('KubeCanaryCluster, part by part', () => {
  it('lists Canaries in all namespaces with their status; without Flagger\'s CRD, none, asked again only after a while', async () => {
    const cluster = new KubeCanaryCluster(client);
    server.apply('Namespace', { metadata: { name: 'shop' } });
    server.apply('Canary', { ...CANARY, metadata: { name: 'web', namespace: 'shop', annotations: { 'ambit.dev/canary-action': 'promote' } }, status: { phase: 'Succeeded', conditions: [] } }, 'flagger.app');
    const list = await cluster.canaries();
    expect(list.map((c) => [c.namespace, c.name, c.status?.phase, c.annotations['ambit.dev/canary-action']])).toEqual([[NS, 'backend', undefined, undefined], ['shop', 'web', 'Succeeded', 'promote']]);

    let now = 0;
    const lines: string[] = [];
    const say = (a: unknown, b?: string) => lines.push(b ?? String(a));
    const log = { info: say, warn: say } as any;
    const absent = new KubeCanaryCluster(client, { now: () => now, absentRetryMs: 60_000, log });
    server.failNext('GET', '/canaries', 404, 2);
    expect(await absent.canaries()).toEqual([]);
    now += 1000;
    expect(await absent.canaries()).toEqual([]);
    expect(server.requests.filter((r) => r.url === '/apis/flagger.app/v1beta1/canaries')).toHaveLength(2);
    now += 60_000;
    expect(await absent.canaries()).toEqual([]);
    now += 60_000;
    expect(await absent.canaries()).toHaveLength(2);
    expect(lines).toEqual(['Flagger\'s Canary CRD (canaries.flagger.app) is not installed: no canaries run until it is', 'Flagger\'s Canary CRD is served: running canaries']);
    // Any other failure is the pass's, which the controller logs and retries.
    server.failNext('GET', '/canaries', 500);
    await expect(cluster.canaries()).rejects.toThrow(/list canaries: HTTP 500/);
  });

  it('judges a Deployment ready as kubectl rollout status does', () => {
    const d = (generation: number, replicas: number, status: Record<string, number>) => ({ metadata: { generation }, spec: { replicas }, status });
    expect(deploymentReady(d(2, 3, { observedGeneration: 2, replicas: 3, updatedReplicas: 3, readyReplicas: 3 }))).toBe(true);
    expect(deploymentReady(d(3, 3, { observedGeneration: 2, replicas: 3, updatedReplicas: 3, readyReplicas: 3 }))).toBe(false);
    expect(deploymentReady(d(2, 3, { observedGeneration: 2, replicas: 3, updatedReplicas: 2, readyReplicas: 3 }))).toBe(false);
    // An old replica still there.
    expect(deploymentReady(d(2, 3, { observedGeneration: 2, replicas: 4, updatedReplicas: 3, readyReplicas: 3 }))).toBe(false);
    expect(deploymentReady(d(2, 3, { observedGeneration: 2, replicas: 3, updatedReplicas: 3, readyReplicas: 2 }))).toBe(false);
    expect(deploymentReady(d(2, 0, { observedGeneration: 2 }))).toBe(true);
    expect(deploymentReady({ metadata: {}, spec: {}, status: { replicas: 1, updatedReplicas: 1, readyReplicas: 1 } })).toBe(true);
  });

  it('gives the manifest without what the server set, and undefined for a Deployment that is not there', async () => {
    const cluster = new KubeCanaryCluster(client);
    const d = (await cluster.deployment(NS, 'backend'))!;
    expect(d.replicas).toBe(2);
    expect(d.ready).toBe(true);
    expect(Object.keys(d.manifest).sort()).toEqual(['apiVersion', 'kind', 'metadata', 'spec']);
    expect(Object.keys(d.manifest.metadata as object).sort()).toEqual(['labels', 'name', 'namespace']);
    expect(await cluster.deployment(NS, 'nope')).toBeUndefined();
  });

  it('finds the waypoint by the Service\'s label, else its Namespace\'s, only a Gateway of class ambit-waypoint', async () => {
    const cluster = new KubeCanaryCluster(client);
    server.apply('Gateway', { metadata: { name: 'other', namespace: NS }, spec: { gatewayClassName: 'istio' } }, 'gateway.networking.k8s.io');
    server.apply('Service', { metadata: { name: 'backend', namespace: NS, labels: { app: 'backend' } }, spec: {} });
    expect(await cluster.serviceLabels(NS, 'backend')).toEqual({ app: 'backend' });
    expect(await cluster.serviceLabels(NS, 'nope')).toBeUndefined();
    expect(await cluster.waypointFor(NS, {})).toBe('waypoint');
    expect(await cluster.waypointFor(NS, { 'ambit.dev/use-waypoint': 'none' })).toBeUndefined();
    expect(await cluster.waypointFor(NS, { 'ambit.dev/use-waypoint': 'other' })).toBeUndefined();
    expect(await cluster.waypointFor(NS, { 'ambit.dev/use-waypoint': 'missing' })).toBeUndefined();
    server.apply('Namespace', { metadata: { name: 'plain' } });
    expect(await cluster.waypointFor('plain', {})).toBeUndefined();
  });

  it('derives each object\'s REST path and refuses kinds it does not write', () => {
    const o = (apiVersion: string, kind: string) => ({ apiVersion, kind, metadata: { name: 'b', namespace: 'n' } });
    expect(objectPath(o('apps/v1', 'Deployment'))).toBe('/apis/apps/v1/namespaces/n/deployments/b');
    expect(objectPath(o('v1', 'Service'))).toBe('/api/v1/namespaces/n/services/b');
    expect(objectPath(o('networking.istio.io/v1', 'VirtualService'))).toBe('/apis/networking.istio.io/v1/namespaces/n/virtualservices/b');
    expect(() => objectPath(o('v1', 'Secret'))).toThrow(/not v1 Secret/);
    expect(() => objectPath(o('apps/v1', 'Service'))).toThrow(/not apps\/v1 Service/);
  });

  it('patches the status (removing what the new one lacks) and the action annotation; an Event that fails is logged, not thrown', async () => {
    const warnings: string[] = [];
    const cluster = new KubeCanaryCluster(client, { log: { warn: (_: unknown, m: string) => warnings.push(m) } as any });
    const [c] = await cluster.canaries() as [CanaryObject];
    const status: CanaryStatus = { phase: 'Progressing', failedChecks: 1, canaryWeight: 10, iterations: 0, lastTransitionTime: '2026-12-07T10:00:00.000Z', conditions: [], lastCheck: { at: 'x', passed: false, results: [] } };
    await cluster.setStatus(c, status);
    c.status = status;
    const { lastCheck: _, ...without } = status;
    await cluster.setStatus(c, without);
    expect(server.statusPatches.at(-1)!.body).toEqual({ status: { ...without, lastCheck: null } });

    server.apply('Canary', { ...CANARY, metadata: { ...CANARY.metadata, annotations: { 'ambit.dev/canary-action': 'abort', keep: 'me' } } }, 'flagger.app');
    await cluster.clearAction(c);
    expect(canary().metadata.annotations).toEqual({ keep: 'me' });

    server.failNext('POST', '/events', 500);
    await expect(cluster.event(c, 'Warning', 'Synced', 'lost')).resolves.toBeUndefined();
    expect(warnings).toEqual(['could not record a canary event']);
  });

  it('once closed (leadership lost) writes nothing more', async () => {
    const cluster = new KubeCanaryCluster(client);
    const [c] = await cluster.canaries() as [CanaryObject];
    cluster.close();
    const before = server.requests.length;
    await expect(cluster.apply([{ apiVersion: 'v1', kind: 'Service', metadata: { name: 'x', namespace: NS } }])).rejects.toThrow(/no longer leads/);
    await expect(cluster.setStatus(c, { phase: 'Failed', failedChecks: 0, canaryWeight: 0, iterations: 0, lastTransitionTime: '', conditions: [] })).rejects.toThrow(/no longer leads/);
    await expect(cluster.clearAction(c)).rejects.toThrow(/no longer leads/);
    await cluster.event(c, 'Normal', 'Synced', 'x');
    expect(server.requests.length).toBe(before);
  });

  it('scrapes the running waypoint pods of the namespaces asked for', async () => {
    const cluster = new KubeCanaryCluster(client);
    const pod = (name: string, labels: Record<string, string>, phase: string, podIP?: string) => ({ metadata: { name, namespace: NS, labels }, spec: {}, status: { phase, ...(podIP ? { podIP } : {}) } });
    server.apply('Pod', pod('waypoint-a', { 'gateway.networking.k8s.io/gateway-name': 'waypoint' }, 'Running', '10.0.0.7'));
    server.apply('Pod', pod('waypoint-b', { 'gateway.networking.k8s.io/gateway-name': 'waypoint' }, 'Pending'));
    server.apply('Pod', pod('backend-x', { app: 'backend' }, 'Running', '10.0.0.8'));
    expect((await cluster.waypointTargets([NS])).map((t) => t.name)).toEqual([`waypoint ${NS}/waypoint-a`]);
    expect(server.requests.at(-1)!.url).toBe(`/api/v1/namespaces/${NS}/pods?labelSelector=gateway.networking.k8s.io%2Fgateway-name`);
  });
});

describe('kubeCanaries', () => {
  let prometheus: Server | undefined;
  afterEach(() => new Promise<void>((r) => (prometheus ? prometheus.close(() => r()) : r())));

  it('reads the checks from AMBIT_CANARY_PROMETHEUS, under its path prefix', async () => {
    const paths: string[] = [];
    prometheus = createServer((req, res) => {
      paths.push(req.url ?? '');
      res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result: [{ metric: {}, value: [0, '0.995'] }] } }));
    });
    await new Promise<void>((r) => prometheus!.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(prometheus.address() as AddressInfo).port}/prom/`;
    const { metrics } = kubeCanaries(client, { prometheus: url });
    expect(await metrics.read(NS, 'backend', { name: SUCCESS_RATE, intervalMs: 60_000, min: 99 })).toBeCloseTo(99.5);
    expect(paths[0]).toMatch(/^\/prom\/api\/v1\/query\?query=/);
    expect(decodeURIComponent(paths[0]!)).toContain('destination_workload="backend"');
  });

  it('a scrape of the waypoints that fails leaves the checks without values instead of stopping every canary', async () => {
    server.apply('Pod', { metadata: { name: 'waypoint-a', namespace: NS, labels: { 'gateway.networking.k8s.io/gateway-name': 'waypoint' } }, spec: {}, status: { phase: 'Running', podIP: '127.0.0.1' } });
    const { metrics, webhooks } = kubeCanaries(client);
    server.failNext('GET', '/pods', 500);
    await expect(metrics.sample!([NS])).resolves.toBeUndefined();
    expect(await metrics.read(NS, 'backend', { name: SUCCESS_RATE, intervalMs: 60_000, min: 99 })).toBeNull();
    expect(await webhooks({ name: 'h', type: 'rollout', url: 'ftp://x', timeoutMs: 100, retries: 0 } as any, { name: 'backend', namespace: NS, phase: 'Progressing' })).toMatchObject({ ok: false });
  });
});

describe('the controller on Kubernetes runs canaries', () => {
  it('AMBIT_CANARIES: on by default, false turns it off; AMBIT_CANARY_MIN_INTERVAL and AMBIT_CANARY_PROMETHEUS are read with it', () => {
    expect(kubernetesSettingsFromEnv({}).canaries).toEqual({ minIntervalMs: 10_000 });
    expect(kubernetesSettingsFromEnv({ AMBIT_CANARIES: 'false' }).canaries).toBeUndefined();
    expect(kubernetesSettingsFromEnv({ AMBIT_CANARY_MIN_INTERVAL: '500ms', AMBIT_CANARY_PROMETHEUS: 'http://prometheus.monitoring:9090' }).canaries).toEqual({ minIntervalMs: 500, prometheus: 'http://prometheus.monitoring:9090' });
    expect(() => kubernetesSettingsFromEnv({ AMBIT_CANARIES: 'no' })).toThrow(/AMBIT_CANARIES must be true or false, got "no"/);
    expect(() => kubernetesSettingsFromEnv({ AMBIT_CANARY_PROMETHEUS: 'prometheus:9090' })).toThrow(/AMBIT_CANARY_PROMETHEUS must be an http:\/\/ or https:\/\/ URL/);
  });

  describe('only while this replica leads', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-ctl-canary-'));
    let controller: Controller | undefined;
    afterEach(async () => {
      await controller?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('a follower writes nothing for canaries; once it takes the Lease it initializes them', async () => {
      const renew = new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
      server.apply('Lease', { metadata: { name: 'ambit-controller', namespace: 'ambit-system' }, spec: { holderIdentity: 'ctl-a', leaseDurationSeconds: 15, acquireTime: renew, renewTime: renew } }, 'coordination.k8s.io');
      controller = await runController({
        kubernetes: {
          kubeconfig: writeKubeconfig(join(dir, 'kubeconfig'), server.url),
          settings: { ...ONE_REPLICA, leaderElection: { lease: 'ambit-controller', identity: 'ctl-b' }, canaries: { minIntervalMs: 100 } },
        },
        caDir: join(dir, 'ca'), host: '127.0.0.1', port: 0, trustDomain: 'cluster.local',
      });
      const canaryTraffic = () => server.requests.filter((r) => r.url.includes('flagger.app') || r.url.includes('/events') || r.url.includes('/virtualservices/'));
      // A fixed wait is the assertion: a follower that ran canaries would list them within a second.
      await new Promise((r) => setTimeout(r, 2500));
      expect(server.requests.some((r) => r.url.includes('/leases/ambit-controller'))).toBe(true);
      expect(canaryTraffic()).toEqual([]);
      expect(canaryApplies()).toEqual([]);
      // ctl-a lets go: ctl-b leads within a retry period, and its canary controller starts.
      server.apply('Lease', { metadata: { name: 'ambit-controller', namespace: 'ambit-system' }, spec: { holderIdentity: '', leaseDurationSeconds: 1, renewTime: renew } }, 'coordination.k8s.io');
      await expect.poll(() => canary().status?.phase, { timeout: 10_000, interval: 100 }).toBe('Initializing');
      expect((server.get('Lease', 'ambit-system', 'ambit-controller', 'coordination.k8s.io') as any).spec.holderIdentity).toBe('ctl-b');
      expect(canaryApplies().map((p) => p.path)).toContain(`/apis/apps/v1/namespaces/${NS}/deployments/backend-primary`);
    }, 20_000);
  });
});
