/**
 * `ambit uninstall` does not take the operator's CA away silently: by default it leaves the
 * namespace (and the Secret ambit-ca in it) and says so with the command that deletes it;
 * `--purge` includes the namespace and says the CA key goes with it. The command it prints for
 * the controller's own objects in application namespaces selects exactly what the controller
 * writes there: each managed waypoint's objects and the trust-bundle ConfigMaps.
 */
import { spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { CONTROLLER_WRITTEN_SELECTOR, controllerWrittenKinds } from '../../src/cli/install.js';
import { KubeClient } from '../../src/kube/client.js';
import { TrustBundlePublisher } from '../../src/control/kube/trust-bundle.js';
import { WaypointReconciler } from '../../src/control/kube/waypoints.js';
import type { K8sObject } from '../../src/install/objects.js';
import { FakeApiServer, type ServedKind } from '../helpers/fake-apiserver.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const run = (...args: string[]) => spawnSync(process.execPath, [`${ROOT}bin/ambit.js`, ...args], { encoding: 'utf8', timeout: 60_000 });
const docs = (text: string) => parseAllDocuments(text).map((d) => d.toJS() as K8sObject).filter(Boolean);
const LEFTOVERS = 'kubectl delete deployments.apps,services,serviceaccounts,poddisruptionbudgets.policy,configmaps --all-namespaces -l app.kubernetes.io/managed-by=ambit-controller,app.kubernetes.io/part-of=ambit';

describe('ambit uninstall', () => {
  it('by default leaves the namespace and the CA in it, and prints the commands for it and for the controller\'s objects', () => {
    const r = run('uninstall', '--set', 'namespace=mesh');
    expect(r.status, r.stderr).toBe(0);
    expect(docs(r.stdout).some((o) => o.kind === 'Namespace')).toBe(false);
    expect(r.stderr).toContain('The namespace mesh is left in place with the Secret ambit-ca (the mesh CA\'s key), the ConfigMap ambit-root-cert and the leader Lease.');
    expect(r.stderr).toContain('\n  kubectl delete namespace mesh\n');
    expect(r.stderr).toContain(`\n  ${LEFTOVERS}`);
    expect(r.stderr).not.toContain('--purge:');
  });

  it('--purge deletes the namespace and says the CA key goes with it', () => {
    const r = run('uninstall', '--purge', '--set', 'namespace=mesh');
    expect(r.status, r.stderr).toBe(0);
    expect(docs(r.stdout).filter((o) => o.kind === 'Namespace').map((o) => o.metadata.name)).toEqual(['mesh']);
    expect(r.stderr).toContain('--purge: the namespace mesh is deleted, and with it the Secret ambit-ca: the CA key goes with it');
    expect(r.stderr).not.toContain('kubectl delete namespace');
    expect(r.stderr).toContain(LEFTOVERS);
    expect(run('uninstall', '--help').stdout).toMatch(/--purge .*Secret ambit-ca/);
  });
});

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
