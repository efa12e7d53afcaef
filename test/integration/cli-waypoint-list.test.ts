/**
 * `ambit waypoint list --kubeconfig`: the ambit-waypoint Gateways of a cluster (stand-in API
 * server), each with its Deployment's ready replicas, its Accepted/Programmed conditions and what
 * is bound to it; `-n` narrows to one namespace; a cluster without the Gateway API says so.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { FakeApiServer, type ServedKind, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { describeAsRoot } from './helpers/root.js';

const GW = 'gateway.networking.k8s.io';
const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
  { group: GW, version: 'v1', kind: 'Gateway', plural: 'gateways' },
];

const { ambit } = cli(process.env);

let server: FakeApiServer;
let dir = '';
let kubeconfig = '';

const gateway = (namespace: string, name: string, className = 'ambit-waypoint', conditions?: { type: string; status: string }[]) => ({
  metadata: { name, namespace },
  spec: { gatewayClassName: className, listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] },
  ...(conditions ? { status: { conditions } } : {}),
});

beforeEach(async () => {
  server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  await server.start();
  dir = mkdtempSync(join(tmpdir(), 'ambit-wp-list-'));
  kubeconfig = join(dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, server.url);
  server.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/use-waypoint': 'shop-wp' } } });
  server.apply('Namespace', { metadata: { name: 'bank' } });
  server.apply('Gateway', gateway('shop', 'shop-wp', 'ambit-waypoint', [{ type: 'Accepted', status: 'True' }, { type: 'Programmed', status: 'True' }]), GW);
  server.apply('Gateway', gateway('shop', 'reviews-wp', 'ambit-waypoint', [{ type: 'Accepted', status: 'True' }, { type: 'Programmed', status: 'False' }]), GW);
  server.apply('Gateway', gateway('shop', 'ingress', 'istio'), GW);
  server.apply('Gateway', gateway('bank', 'waypoint'), GW);
  server.apply('Deployment', { metadata: { name: 'shop-wp', namespace: 'shop' }, spec: { replicas: 2 }, status: { replicas: 2, readyReplicas: 2 } }, 'apps');
  server.apply('Deployment', { metadata: { name: 'reviews-wp', namespace: 'shop' }, spec: { replicas: 1 }, status: { replicas: 1 } }, 'apps');
  server.apply('Service', { metadata: { name: 'reviews', namespace: 'shop', labels: { 'ambit.dev/use-waypoint': 'reviews-wp' } } });
  server.apply('Service', { metadata: { name: 'ratings', namespace: 'shop', labels: { 'ambit.dev/use-waypoint': 'reviews-wp' } } });
  server.apply('Service', { metadata: { name: 'cart', namespace: 'shop' } });
  server.apply('Service', { metadata: { name: 'ledger', namespace: 'bank', labels: { 'ambit.dev/use-waypoint': 'reviews-wp' } } });
});

afterEach(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

describeAsRoot('ambit waypoint list --kubeconfig', () => {
  it('lists every ambit-waypoint Gateway with its Deployment, conditions and bindings', async () => {
    const out = await ambit(['waypoint', 'list', '--kubeconfig', kubeconfig]);
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    expect(out.stdout).toBe([
      'NAMESPACE  NAME        READY          ACCEPTED  PROGRAMMED  BOUND',
      'bank       waypoint    no deployment  -         -           -',
      'shop       reviews-wp  0/1            True      False       service ratings, service reviews',
      'shop       shop-wp     2/2            True      True        namespace shop',
      '',
    ].join('\n'));
    expect(server.requests.map((r) => r.url)).toContain('/apis/gateway.networking.k8s.io/v1/gateways');
  }, 60_000);

  it('-n lists one namespace only; none there says so', async () => {
    const out = await ambit(['waypoint', 'list', '-n', 'bank', '--kubeconfig', kubeconfig]);
    expect(out.stdout.split('\n').slice(1, -1)).toEqual(['bank       waypoint  no deployment  -         -           -']);
    expect(server.requests.map((r) => r.url)).toContain('/apis/gateway.networking.k8s.io/v1/namespaces/bank/gateways');
    server.delete('Gateway', 'bank', 'waypoint', GW);
    expect((await ambit(['waypoint', 'list', '-n', 'bank', '--kubeconfig', kubeconfig])).stdout).toBe('no waypoints\n');
  }, 60_000);

  it('says when the cluster does not serve Gateways, or cannot be reached', async () => {
    await server.close();
    server = new FakeApiServer([{ group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' }]);
    const url = await server.start();
    writeKubeconfig(kubeconfig, url);
    const missing = await ambit(['waypoint', 'list', '--kubeconfig', kubeconfig]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/does not serve gateway\.networking\.k8s\.io\/v1 Gateways/);
    expect(missing.stderr).toMatch(/fix: install the Gateway API CRDs/);
    writeKubeconfig(kubeconfig, 'http://127.0.0.1:1');
    const down = await ambit(['waypoint', 'list', '--kubeconfig', kubeconfig]);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach the Kubernetes API server at http:\/\/127\.0\.0\.1:1/);
  }, 60_000);
});
