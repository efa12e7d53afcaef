/**
 * `ambit stat` on Kubernetes (`kubeSource`), against the stand-in API server: pods, namespaces
 * and services listed through it, the node agents and waypoints found by their labels, and their
 * /metrics read through its pod proxy — a first and a second scrape a (fake) second apart — so
 * that `collectStat` gives known rows: deploy and svc rows, MESHED n/m from the namespaces'
 * labels, workload names from ReplicaSet owners, the error without agents, and a proxy that
 * does not answer reported as a warning.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { collectStat, kubeSource, workloadOf } from '../../src/cli/stat.js';
import { selectorLabels } from '../../src/install/render.js';
import { KubeClient } from '../../src/kube/client.js';
import type { StatRequest } from '../../src/observe/stat.js';
import { FakeApiServer, writeKubeconfig } from '../helpers/fake-apiserver.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-stat-kube-'));
const kubeconfig = join(dir, 'kubeconfig');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const WEB = 'destination_workload="web",destination_workload_namespace="shop",destination_service_name="web",destination_service_namespace="shop",source_workload="client",source_workload_namespace="shop"';

/** The waypoint's requests for web: `ok` 200s and `failed` 503s so far. */
const waypointText = (ok: number, failed: number) => [
  '# TYPE istio_requests_total counter',
  `istio_requests_total{reporter="waypoint",response_code="200",${WEB}} ${ok}`,
  `istio_requests_total{reporter="waypoint",response_code="503",${WEB}} ${failed}`,
  '# TYPE istio_request_duration_milliseconds histogram',
  `istio_request_duration_milliseconds_bucket{reporter="waypoint",response_code="200",${WEB},le="5"} 0`,
  `istio_request_duration_milliseconds_bucket{reporter="waypoint",response_code="200",${WEB},le="10"} ${ok + failed}`,
  `istio_request_duration_milliseconds_bucket{reporter="waypoint",response_code="200",${WEB},le="+Inf"} ${ok + failed}`,
  '',
].join('\n');
/** The destination agent's connections to web: `opened` over mTLS, `closed` of them closed. */
const agentText = (opened: number, closed: number) => [
  '# TYPE istio_tcp_connections_opened_total counter',
  `istio_tcp_connections_opened_total{reporter="destination",connection_security_policy="mutual_tls",${WEB}} ${opened}`,
  '# TYPE istio_tcp_connections_closed_total counter',
  `istio_tcp_connections_closed_total{reporter="destination",connection_security_policy="mutual_tls",${WEB}} ${closed}`,
  '',
].join('\n');

const pod = (namespace: string, name: string, labels: Record<string, string>, extra: { owner?: string; phase?: string; hostNetwork?: boolean } = {}) => ({
  metadata: {
    name, namespace, labels,
    ...(extra.owner ? { ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: extra.owner, uid: `rs-${extra.owner}`, controller: true }] } : {}),
  },
  spec: { nodeName: 'node-a', ...(extra.hostNetwork ? { hostNetwork: true } : {}) },
  status: { phase: extra.phase ?? 'Running' },
});

const AGENT = selectorLabels('node');
let server: FakeApiServer;
/** Scrapes answered so far, per pod. */
let scrapes: Map<string, number>;

beforeEach(async () => {
  server = new FakeApiServer([
    { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
    { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
    { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  ]);
  await server.start();
  writeKubeconfig(kubeconfig, server.url);
  server.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  server.apply('Namespace', { metadata: { name: 'legacy' } });
  server.apply('Namespace', { metadata: { name: 'ambit-system' } });
  // web: two pods of one Deployment (ReplicaSet web-7d9f5c, hash 7d9f5c), one of them opted out.
  server.apply('Pod', pod('shop', 'web-7d9f5c-aaaaa', { app: 'web', 'pod-template-hash': '7d9f5c' }, { owner: 'web-7d9f5c' }));
  server.apply('Pod', pod('shop', 'web-7d9f5c-bbbbb', { app: 'web', 'pod-template-hash': '7d9f5c', 'ambit.dev/dataplane-mode': 'none' }, { owner: 'web-7d9f5c' }));
  server.apply('Pod', pod('shop', 'client-5b6c7d-ccccc', { app: 'client', 'pod-template-hash': '5b6c7d' }, { owner: 'client-5b6c7d' }));
  // A finished Job's pod is not a row; a namespace that is not ambient is not meshed.
  server.apply('Pod', pod('shop', 'migrate-xyz', { job: 'migrate' }, { phase: 'Succeeded' }));
  server.apply('Pod', pod('legacy', 'old', { app: 'old' }));
  server.apply('Service', { metadata: { name: 'web', namespace: 'shop' }, spec: { selector: { app: 'web' }, ports: [{ port: 80 }] } });
  server.apply('Service', { metadata: { name: 'headless', namespace: 'shop' }, spec: { ports: [{ port: 80 }] } });
  // The proxies: a node agent (host network) and the namespace's waypoint.
  server.apply('Pod', pod('ambit-system', 'ambit-node-x7k2p', { ...AGENT }, { hostNetwork: true }));
  server.apply('Pod', pod('ambit-system', 'ambit-node-pending', { ...AGENT }, { phase: 'Pending', hostNetwork: true }));
  server.apply('Pod', pod('shop', 'waypoint-6d4f-wwwww', { 'gateway.networking.k8s.io/gateway-name': 'waypoint', 'ambit.dev/dataplane-mode': 'none' }, { owner: 'waypoint-6d4f' }));
  scrapes = new Map();
  server.podProxy = (namespace, name, port, path) => {
    if (port !== 15020 || path !== '/metrics') return { status: 404, body: 'not found' };
    const n = (scrapes.get(name) ?? 0) + 1;
    scrapes.set(name, n);
    if (name === 'ambit-node-x7k2p') return { status: 200, body: n === 1 ? agentText(10, 2) : agentText(16, 4) };
    if (name === 'waypoint-6d4f-wwwww') return { status: 200, body: n === 1 ? waypointText(100, 0) : waypointText(118, 2) };
    return undefined;
  };
  // The window's second, without waiting for it: the timer and the clock move together once the first scrape is in.
  vi.useFakeTimers({ toFake: ['setTimeout', 'Date'] });
});

afterEach(async () => {
  vi.useRealTimers();
  await server.close();
});

/** collectStat over a 1 s window that passes as soon as the first scrape is taken. */
function stat(req: Omit<StatRequest, 'windowSeconds'>, source = kubeSource(KubeClient.fromFile(kubeconfig), 'ambit-system', req.namespace)) {
  return collectStat(source, { ...req, windowSeconds: 1 }, () => queueMicrotask(() => vi.advanceTimersByTime(1000)));
}

describe('ambit stat on Kubernetes', () => {
  it('deploy rows: the figures between two scrapes, MESHED n/m from the namespaces\' labels, workloads named by their ReplicaSets', async () => {
    const { rows, warnings } = await stat({ kind: 'deploy' });
    expect(warnings).toEqual([]);
    expect(rows.map((r) => [`${r.namespace}/${r.name}`, r.meshed])).toEqual([
      ['legacy/old', { meshed: 0, total: 1 }],
      ['shop/client', { meshed: 1, total: 1 }],
      ['shop/web', { meshed: 1, total: 2 }],
    ]);
    const web = rows.find((r) => r.name === 'web')!.signals!;
    expect(web.requests).toBe(20);
    expect(web.rps).toBe(20);
    expect(web.success).toBe(0.9);
    expect(web.p50).toBe(7.5);
    expect(web.tcpOpen).toBe(16 - 4);
    expect(web.tlsShare).toBe(1);
    expect(rows.find((r) => r.name === 'client')!.signals).toBeNull();
    // Each proxy was scraped twice, through the API server's pod proxy; the pending agent never.
    expect(Object.fromEntries(scrapes)).toEqual({ 'ambit-node-x7k2p': 2, 'waypoint-6d4f-wwwww': 2 });
    expect(server.requests.map((r) => r.url)).toContain('/api/v1/namespaces/ambit-system/pods/ambit-node-x7k2p:15020/proxy/metrics');
  });

  it('svc rows, within a namespace: services that select pods, with the same figures', async () => {
    const { rows } = await stat({ kind: 'svc', namespace: 'shop' });
    expect(rows).toEqual([{ namespace: 'shop', name: 'web', meshed: { meshed: 1, total: 2 }, signals: expect.objectContaining({ requests: 20, rps: 20, success: 0.9 }) }]);
  });

  it('names the workload as Istio does: the Deployment behind a ReplicaSet with the pod-template-hash, else the owner, else the pod', () => {
    const meta = (labels: Record<string, string>, ownerReferences?: { kind: string; name: string; controller?: boolean }[]) => ({ metadata: { name: 'p-1', namespace: 'ns', labels, ...(ownerReferences ? { ownerReferences } : {}) } });
    expect(workloadOf(meta({ 'pod-template-hash': '7d9f5c' }, [{ kind: 'ReplicaSet', name: 'web-7d9f5c', controller: true }]))).toBe('web');
    expect(workloadOf(meta({}, [{ kind: 'ReplicaSet', name: 'web-7d9f5c' }]))).toBe('web-7d9f5c');
    expect(workloadOf(meta({}, [{ kind: 'StatefulSet', name: 'db' }]))).toBe('db');
    expect(workloadOf(meta({}))).toBe('p-1');
    // The controlling owner, wherever it is in the list.
    expect(workloadOf(meta({ 'pod-template-hash': 'abc12' }, [{ kind: 'Node', name: 'node-a' }, { kind: 'ReplicaSet', name: 'api-abc12', controller: true }]))).toBe('api');
  });

  it('fails without an agent pod in ambit\'s namespace, and when none of them runs', async () => {
    server.delete('Pod', 'ambit-system', 'ambit-node-x7k2p');
    await expect(stat({ kind: 'deploy' })).rejects.toMatchObject({ message: 'no node agent pod runs in namespace ambit-system: ambit-node-pending is Pending' });
    await expect(stat({ kind: 'deploy' }, kubeSource(KubeClient.fromFile(kubeconfig), 'elsewhere', undefined))).rejects.toMatchObject({
      message: 'no node agent pods in namespace elsewhere (selector app.kubernetes.io/name=ambit-node,app.kubernetes.io/part-of=ambit)',
      hint: expect.stringContaining('--ambit-namespace'),
    });
  });

  it('reports a proxy that does not answer as a warning, and counts the others', async () => {
    const answer = server.podProxy!;
    server.podProxy = (namespace, name, port, path) => (name === 'ambit-node-x7k2p' ? undefined : answer(namespace, name, port, path));
    const { rows, warnings } = await stat({ kind: 'deploy', namespace: 'shop' });
    expect(warnings).toEqual(['node-agent ambit-system/ambit-node-x7k2p: /metrics answered 503']);
    expect(rows.find((r) => r.name === 'web')!.signals).toMatchObject({ requests: 20, success: 0.9, tcpOpen: null });
  });
});
