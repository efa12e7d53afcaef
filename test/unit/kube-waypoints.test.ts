/**
 * The controller's WaypointReconciler against the stand-in API server: server-side apply of each
 * waypoint's ServiceAccount, Deployment, Service and PodDisruptionBudget, nothing re-sent while nothing changed,
 * deletion (of its own objects only) when the Gateway goes, retry after a failure.
 * `ambit waypoint apply|delete --kubeconfig`: test/integration/waypoint-cli.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { FIELD_MANAGER, WaypointReconciler } from '../../src/control/kube/waypoints.js';
import { FakeApiServer, type ServedKind } from '../helpers/fake-apiserver.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk stored objects by path */

const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
  { group: 'policy', version: 'v1', kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets' },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
];

const gateway = (annotations: Record<string, string> = {}) => ({
  apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway',
  metadata: { name: 'reviews-wp', namespace: 'shop', annotations },
  spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] },
});

const OBJECT_PATHS = [
  '/api/v1/namespaces/shop/serviceaccounts/reviews-wp',
  '/apis/apps/v1/namespaces/shop/deployments/reviews-wp',
  '/api/v1/namespaces/shop/services/reviews-wp',
  '/apis/policy/v1/namespaces/shop/poddisruptionbudgets/reviews-wp',
];

let server: FakeApiServer;
let reconciler: WaypointReconciler;

beforeEach(async () => {
  server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  await server.start();
  server.apply('Namespace', { metadata: { name: 'shop' } });
  reconciler = new WaypointReconciler(new KubeClient({ server: server.url }), { backoffMs: 1, resyncMs: 0 });
});

afterEach(async () => {
  reconciler.stop();
  await server.close();
});

/** The Gateway as the controller sees it: stored by the API server (uid and all). */
const stored = (annotations: Record<string, string> = {}) => {
  server.apply('Gateway', gateway(annotations), 'gateway.networking.k8s.io');
  return server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io')!;
};
const writes = () => server.requests.filter((r) => r.method !== 'GET');
const deployment = () => server.get('Deployment', 'shop', 'reviews-wp', 'apps') as any;

describe('WaypointReconciler', () => {
  it('server-side applies the ServiceAccount, Deployment, Service and PodDisruptionBudget of an ambit-waypoint Gateway', async () => {
    const gw = stored();
    await reconciler.reconcile([gw, { ...gateway(), metadata: { name: 'other', namespace: 'shop' }, spec: { gatewayClassName: 'istio' } }]);
    // Each read first, then created (POST fails rather than overwrite an object made meanwhile).
    expect(writes()).toEqual(OBJECT_PATHS.map((path) => ({ method: 'POST', url: `${path.slice(0, path.lastIndexOf('/'))}?fieldManager=ambit-controller`, contentType: 'application/json' })));
    for (const [kind, group] of [['ServiceAccount', ''], ['Deployment', 'apps'], ['Service', ''], ['PodDisruptionBudget', 'policy']] as const) {
      expect((server.get(kind, 'shop', 'reviews-wp', group) as any).metadata.labels).toMatchObject({ 'app.kubernetes.io/managed-by': 'ambit-controller', 'gateway.networking.k8s.io/gateway-name': 'reviews-wp' });
    }
    expect(FIELD_MANAGER).toBe('ambit-controller');
    // Then server-side applied, at the resourceVersion just read.
    const read = deployment().metadata.resourceVersion;
    await reconciler.reconcile([stored({ 'ambit.dev/tracing-sampling': '5' })]);
    const apply = server.applyPatches.at(-1)!;
    expect(apply).toMatchObject({ path: OBJECT_PATHS[1], contentType: 'application/apply-patch+yaml', query: { fieldManager: FIELD_MANAGER, force: 'true' } });
    expect((apply.body.metadata as any).resourceVersion).toBe(read);
    const d = deployment();
    expect(d.spec.template.spec.serviceAccountName).toBe('reviews-wp');
    expect(d.metadata.ownerReferences[0]).toMatchObject({ kind: 'Gateway', name: 'reviews-wp', uid: (gw.metadata as any).uid, controller: true });
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeDefined();
    expect((server.get('Service', 'shop', 'reviews-wp') as any).spec.ports.map((p: any) => p.port)).toEqual([15008, 15020]);
    const pdb = server.get('PodDisruptionBudget', 'shop', 'reviews-wp', 'policy') as any;
    expect(pdb.spec).toEqual({ maxUnavailable: 1, unhealthyPodEvictionPolicy: 'AlwaysAllow', selector: { matchLabels: { 'gateway.networking.k8s.io/gateway-name': 'reviews-wp' } } });
    expect(pdb.metadata.ownerReferences[0]).toMatchObject({ kind: 'Gateway', name: 'reviews-wp', controller: true });
    // Two replicas by default, the PodDisruptionBudget selecting exactly the Deployment's pods.
    expect(d.spec.replicas).toBe(2);
    expect(d.spec.selector.matchLabels).toEqual(pdb.spec.selector.matchLabels);
  });

  it('sends nothing for an identical snapshot, re-applies the Deployment when the tracing annotation changes', async () => {
    await reconciler.reconcile([stored()]);
    const before = server.requests.length;
    await reconciler.reconcile([stored()]);
    expect(server.requests.length).toBe(before);

    const written = writes().length;
    await reconciler.reconcile([stored({ 'ambit.dev/tracing-endpoint': 'http://otel:4318' })]);
    expect(writes().slice(-1)).toEqual([expect.objectContaining({ method: 'PATCH', url: `${OBJECT_PATHS[1]}?fieldManager=ambit-controller&force=true` })]);
    expect(writes().length).toBe(written + 1);
    expect(deployment().spec.template.spec.containers[0].args).toEqual(expect.arrayContaining(['--tracing-endpoint', 'http://otel:4318']));
  });

  it('deletes the four objects once the Gateway is gone, and leaves objects that are not its own', async () => {
    await reconciler.reconcile([stored()]);
    await reconciler.reconcile([]);
    expect(writes().filter((r) => r.method === 'DELETE').map((r) => r.url.split('?')[0])).toEqual(OBJECT_PATHS);
    expect(deployment()).toBeUndefined();
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeUndefined();
    expect(server.get('Service', 'shop', 'reviews-wp')).toBeUndefined();
    expect(server.get('PodDisruptionBudget', 'shop', 'reviews-wp', 'policy')).toBeUndefined();

    // A Deployment of the same name made by hand (the install's template) is not touched.
    await reconciler.reconcile([stored()]);
    server.apply('Deployment', { metadata: { name: 'reviews-wp', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'ambit-install' } } }, 'apps');
    await reconciler.reconcile([]);
    expect(deployment()).toBeDefined();
    expect(server.get('Service', 'shop', 'reviews-wp')).toBeUndefined();
  });

  it('on its first pass, deletes the managed objects of a Gateway deleted while it was not running', async () => {
    await reconciler.reconcile([stored()]);
    reconciler.stop();
    const fresh = new WaypointReconciler(new KubeClient({ server: server.url }), { resyncMs: 0 });
    try {
      await fresh.reconcile([]);
    } finally {
      fresh.stop();
    }
    expect(deployment()).toBeUndefined();
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeUndefined();
    // Found by listing poddisruptionbudgets.policy by label, as the other kinds.
    expect(server.requests.some((r) => r.method === 'GET' && r.url.startsWith('/apis/policy/v1/poddisruptionbudgets?labelSelector='))).toBe(true);
    expect(server.get('PodDisruptionBudget', 'shop', 'reviews-wp', 'policy')).toBeUndefined();
  });

  it('a failed apply is logged, never thrown, and retried on the next snapshot', async () => {
    server.failNext('POST', '/deployments', 500);
    await expect(reconciler.reconcile([stored()])).resolves.toBeUndefined();
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeDefined();
    expect(server.get('Service', 'shop', 'reviews-wp')).toBeDefined();
    // Retried once its backoff (1 ms) is over: on the next snapshot, or by its timer if that comes first.
    await vi.waitFor(async () => {
      await reconciler.reconcile([stored()]);
      expect(deployment()).toBeDefined();
    }, { timeout: 5000, interval: 5 });
    const deploymentWrites = server.requests.filter((r) => r.method === 'POST' && r.url.includes('/deployments'));
    expect(deploymentWrites).toHaveLength(2);
    // The others were not sent again.
    expect(server.requests.filter((r) => r.method !== 'GET' && r.url.includes('/services'))).toHaveLength(1);
  });

  it('leaves alone a Service of the same name that is not its own, writes none of the waypoint\'s objects, and says why in the Gateway\'s status', async () => {
    const mine = { metadata: { name: 'reviews-wp', namespace: 'shop', labels: { app: 'reviews' } }, spec: { selector: { app: 'reviews' }, ports: [{ name: 'http', port: 9080 }] } };
    server.apply('Service', mine);
    const before = server.get('Service', 'shop', 'reviews-wp');
    server.apply('Gateway', { ...gateway(), status: { conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', message: 'accepted by ambit' }] } }, 'gateway.networking.k8s.io');
    const gw = server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io')!;
    await reconciler.reconcile([gw]);
    expect(server.get('Service', 'shop', 'reviews-wp')).toEqual(before);
    // Its pods would otherwise be reached through someone else's Service: nothing is written.
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeUndefined();
    expect(deployment()).toBeUndefined();
    expect(writes().map((r) => `${r.method} ${r.url}`)).toEqual(['PATCH /apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/reviews-wp/status']);
    const conditions = () => (server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io') as any).status.conditions as any[];
    expect(conditions().map((c) => [c.type, c.status, c.reason])).toEqual([['Accepted', 'True', 'Accepted'], ['Programmed', 'False', 'ObjectNotOwned']]);
    expect(conditions()[1].message).toBe("Service/shop/reviews-wp exists and is not ambit's (no app.kubernetes.io/managed-by: ambit-controller label): ambit writes none of this waypoint's objects while one of their names is taken; delete or rename that object, or name the Gateway otherwise");

    // The next snapshot (the Gateway now shows it) writes nothing again.
    await reconciler.reconcile([server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io')!]);
    expect(writes()).toHaveLength(1);
    expect(server.get('Service', 'shop', 'reviews-wp')).toEqual(before);

    // Once that Service is gone, the waypoint's objects are made and the Gateway is Programmed.
    server.delete('Service', 'shop', 'reviews-wp');
    await expect.poll(async () => {
      await reconciler.reconcile([server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io')!]);
      return conditions().find((c) => c.type === 'Programmed')?.status;
    }, { timeout: 5_000 }).toBe('True');
    expect(deployment()).toBeDefined();
    expect((server.get('Service', 'shop', 'reviews-wp') as any).metadata.labels['app.kubernetes.io/managed-by']).toBe('ambit-controller');
    expect(conditions().map((c) => [c.type, c.status, c.reason])).toEqual([['Accepted', 'True', 'Accepted'], ['Programmed', 'True', 'Programmed']]);
  });

  it('does not make a waypoint run as a ServiceAccount that is someone else\'s, nor overwrite a Deployment of the install\'s template', async () => {
    server.apply('ServiceAccount', { metadata: { name: 'reviews-wp', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'Helm' } } });
    server.apply('Deployment', { metadata: { name: 'reviews-wp', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'ambit-install', 'gateway.networking.k8s.io/gateway-name': 'reviews-wp' } }, spec: { replicas: 3 } }, 'apps');
    await reconciler.reconcile([stored()]);
    expect(server.applyPatches).toHaveLength(0);
    expect(server.requests.filter((r) => r.method === 'POST')).toHaveLength(0);
    expect(deployment().spec).toEqual({ replicas: 3 });
    expect(server.get('Service', 'shop', 'reviews-wp')).toBeUndefined();
    const programmed = ((server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io') as any).status.conditions as any[]).find((c) => c.type === 'Programmed');
    expect(programmed).toMatchObject({ status: 'False', reason: 'ObjectNotOwned' });
    expect(programmed.message).toMatch(/^ServiceAccount\/shop\/reviews-wp exists and is not ambit's \(app.kubernetes.io\/managed-by: Helm\); Deployment\/shop\/reviews-wp exists and is not ambit's \(app.kubernetes.io\/managed-by: ambit-install\): /);
    // Deleting the Gateway leaves them too.
    await reconciler.reconcile([]);
    expect(deployment()).toBeDefined();
    expect(server.get('ServiceAccount', 'shop', 'reviews-wp')).toBeDefined();
  });

  it('an unreachable API server does not throw either', async () => {
    const r = new WaypointReconciler(new KubeClient({ server: 'http://127.0.0.1:1' }), { resyncMs: 0, backoffMs: 60_000 });
    try {
      await expect(r.reconcile([stored()])).resolves.toBeUndefined();
    } finally {
      r.stop();
    }
  });
});
