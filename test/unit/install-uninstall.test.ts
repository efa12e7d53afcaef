/**
 * The command `ambit uninstall` prints for the controller's own objects in application
 * namespaces selects exactly what the controller writes there: each managed waypoint's objects
 * and the trust-bundle ConfigMaps. What `ambit uninstall` leaves, as a process:
 * test/integration/install-cli.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CONTROLLER_WRITTEN_SELECTOR, controllerWrittenKinds } from '../../src/cli/install.js';
import { KubeClient } from '../../src/kube/client.js';
import { TrustBundlePublisher } from '../../src/control/kube/trust-bundle.js';
import { WaypointReconciler } from '../../src/control/kube/waypoints.js';
import { FakeApiServer, type ServedKind } from '../helpers/fake-apiserver.js';

describe('the leftovers command selects what the controller writes', () => {
  const KINDS: ServedKind[] = [
    { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
    { group: '', version: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
    { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
    { group: '', version: 'v1', kind: 'Service', plural: 'services' },
    { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
    { group: 'policy', version: 'v1', kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets' },
    { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
  ];
  let api: FakeApiServer;
  beforeEach(async () => {
    api = new FakeApiServer(KINDS.map((k) => ({ ...k })));
    await api.start();
    api.apply('Namespace', { metadata: { name: 'shop' } });
  });
  afterEach(() => api.close());

  /** Whether an object's labels match a `k=v,k=v` selector. */
  const matches = (obj: Record<string, unknown> | undefined, selector: string) => {
    const labels = ((obj?.metadata as { labels?: Record<string, string> } | undefined)?.labels) ?? {};
    return selector.split(',').every((term) => {
      const [k, v] = term.split('=');
      return labels[k!] === v;
    });
  };

  it('every object the waypoint reconciler and the trust-bundle publisher write carries its labels and is of its kinds', async () => {
    const client = new KubeClient({ server: api.url });
    const bundle = new TrustBundlePublisher(client, { name: 'ambit-root-cert', roots: () => ['-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n'], resyncMs: 0 });
    const waypoints = new WaypointReconciler(client, { resyncMs: 0 });
    try {
      await bundle.publish(['shop']);
      api.apply('Gateway', { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'wp', namespace: 'shop' }, spec: { gatewayClassName: 'ambit-waypoint' } }, 'gateway.networking.k8s.io');
      await waypoints.reconcile([api.get('Gateway', 'shop', 'wp', 'gateway.networking.k8s.io')!]);
    } finally {
      bundle.stop();
      waypoints.stop();
    }
    const written = [
      ['ConfigMap', 'ambit-root-cert', ''], ['ServiceAccount', 'wp', ''], ['Deployment', 'wp', 'apps'], ['Service', 'wp', ''], ['PodDisruptionBudget', 'wp', 'policy'],
    ] as const;
    const kinds = controllerWrittenKinds();
    expect(kinds).toEqual(['deployments.apps', 'services', 'serviceaccounts', 'poddisruptionbudgets.policy', 'configmaps']);
    for (const [kind, name, group] of written) {
      const obj = api.get(kind, 'shop', name, group);
      expect(obj, `${kind} ${name}`).toBeDefined();
      expect(matches(obj, CONTROLLER_WRITTEN_SELECTOR), `${kind} ${name} ${JSON.stringify(obj?.metadata)}`).toBe(true);
      const plural = KINDS.find((k) => k.kind === kind)!.plural;
      expect(kinds).toContain(group ? `${plural}.${group}` : plural);
    }
    // Everything the API server saw written is one of those.
    const posts = api.requests.filter((r) => r.method === 'POST' || r.method === 'PATCH').map((r) => r.url.split('?')[0]!).filter((u) => !u.includes('/gateways/'));
    expect(posts.sort()).toEqual([
      '/api/v1/namespaces/shop/configmaps/ambit-root-cert', '/api/v1/namespaces/shop/serviceaccounts', '/api/v1/namespaces/shop/services',
      '/apis/apps/v1/namespaces/shop/deployments', '/apis/policy/v1/namespaces/shop/poddisruptionbudgets',
    ]);
  });

  it('and an application\'s own ConfigMap is not selected', () => {
    api.apply('ConfigMap', { metadata: { name: 'app-config', namespace: 'shop', labels: { 'app.kubernetes.io/part-of': 'ambit' } } });
    expect(matches(api.get('ConfigMap', 'shop', 'app-config'), CONTROLLER_WRITTEN_SELECTOR)).toBe(false);
  });
});
