import { afterAll, describe, expect, it, vi } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { KubernetesSource } from '../../src/control/kube-source.js';
import { buildModel, type SourceSnapshot } from '../../src/config/model.js';
import type { Diagnostic } from '../../src/kube/manifests.js';
import { FakeApiServer, type ServedKind } from '../helpers/fake-apiserver.js';

const SERVED: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
  { group: 'networking.istio.io', version: 'v1', kind: 'VirtualService', plural: 'virtualservices' },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
];

const servers: FakeApiServer[] = [];
const sources: KubernetesSource[] = [];
afterAll(async () => {
  for (const s of sources) s.stop();
  for (const s of servers) await s.close();
});

const pod = (name: string, opts: { ip?: string; node?: string; labels?: Record<string, string> } = {}) => ({
  metadata: { name, namespace: 'shop', labels: opts.labels ?? { app: name } },
  spec: { ...(opts.node === '' ? {} : { nodeName: opts.node ?? 'node-a' }), serviceAccountName: name, containers: [{ name: 'app', image: 'x', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: opts.ip === '' ? { phase: 'Pending' } : { phase: 'Running', podIP: opts.ip ?? '10.0.0.1' },
});
const vs = (name: string, host: string, spec?: Record<string, unknown>) => ({
  metadata: { name, namespace: 'shop', generation: 1 },
  spec: spec ?? { hosts: [host], http: [{ route: [{ destination: { host } }] }] },
});

async function setup(opts: { debounceMs?: number; absentRetryMs?: number } = {}) {
  const server = new FakeApiServer([...SERVED]);
  servers.push(server);
  await server.start();
  // Invalid before the source starts: rejected in the first list.
  server.apply('VirtualService', vs('early', 'early', { hosts: ['early'], tcp: 'nope' }));
  server.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  server.apply('Service', { metadata: { name: 'cart', namespace: 'shop' }, spec: { clusterIP: '10.96.0.10', selector: { app: 'cart' }, ports: [{ port: 80, targetPort: 8080 }] } });
  server.apply('Pod', pod('cart', { ip: '10.0.0.5' }));
  server.apply('Pod', pod('pending', { ip: '' }));
  const snapshots: SourceSnapshot[] = [];
  // The diagnostics that went out with each snapshot (onDiagnostics is called just before it).
  const diagnostics: Diagnostic[][] = [];
  const source = new KubernetesSource(new KubeClient({ server: server.url }), {
    debounceMs: opts.debounceMs ?? 30, absentRetryMs: opts.absentRetryMs ?? 60_000, backoffMs: 20, resyncMs: 0,
    onDiagnostics: (d) => diagnostics.push(d),
  });
  sources.push(source);
  source.start((s) => snapshots.push(s));
  const latest = () => snapshots.at(-1);
  /** The latest snapshot once `pred` holds for it. */
  const snapshotWhere = (what: string, pred: (s: SourceSnapshot) => boolean, timeout = 5000) => vi.waitFor(() => {
    const s = latest();
    if (s && pred(s)) return s;
    throw new Error(`timed out waiting for ${what}; last snapshot: ${JSON.stringify(s && { pods: s.pods.map((p) => p.name), resources: s.resources.map((r) => `${r.kind}/${r.meta.name}`) })}`);
  }, { timeout, interval: 10 });
  const watchesOpen = (plural: string) => expect.poll(() => server.watchCount(plural), { timeout: 5000, interval: 5, message: `a watch on ${plural}` }).toBeGreaterThan(0);
  const watchRequests = (plural: string) => server.requests.filter((r) => r.url.includes(`/${plural}?`) && r.url.includes('watch=1'));
  const listRequests = (plural: string) => server.requests.filter((r) => r.url.includes(`/${plural}?`) && !r.url.includes('watch=1'));
  await snapshotWhere('the first snapshot', () => true);
  await watchesOpen('pods');
  return { server, source, snapshots, diagnostics, latest, snapshotWhere, watchesOpen, watchRequests, listRequests };
}

const podNames = (s: SourceSnapshot) => s.pods.map((p) => p.name).sort();
const named = (s: SourceSnapshot, kind: string, name: string) => s.resources.find((r) => r.kind === kind && r.meta.name === name);

describe('KubernetesSource against a stand-in API server', () => {
  it('lists everything into one snapshot; pods are workloads only with a node and an address', async () => {
    const { latest, source } = await setup();
    const s = latest()!;
    expect(podNames(s)).toEqual(['cart']);
    expect(s.pods[0]).toMatchObject({ namespace: 'shop', node: 'node-a', ip: '10.0.0.5', spec: { serviceAccountName: 'cart' } });
    expect(s.pods[0]!.spec.containers[0]!.ports).toEqual([{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
    expect(named(s, 'Namespace', 'shop')?.meta.labels).toEqual({ 'ambit.dev/dataplane-mode': 'ambient' });
    expect(named(s, 'Service', 'cart')).toMatchObject({ spec: { clusterIP: '10.96.0.10', selector: { app: 'cart' }, ports: [{ port: 80, targetPort: 8080, protocol: 'TCP' }] } });
    expect(s.resources.some((r) => r.kind === 'Pod')).toBe(false);
    // Kinds whose CRD is absent are skipped, not fatal.
    expect(source.absentKinds()).toEqual(expect.arrayContaining(['networking.istio.io/DestinationRule', 'security.istio.io/AuthorizationPolicy', 'ambit.dev/RateLimit', 'discovery.k8s.io/EndpointSlice']));
    expect(source.absentKinds()).not.toContain('networking.istio.io/VirtualService');
  });

  it('a host-network pod is a workload that is never enrolled (its address is the node\'s)', async () => {
    const { server, snapshotWhere } = await setup();
    const p = pod('exporter', { node: 'node-a', ip: '192.168.1.10' });
    server.apply('Pod', { ...p, spec: { ...p.spec, hostNetwork: true } });
    const s = await snapshotWhere('exporter', (x) => podNames(x).includes('exporter'));
    expect(s.pods.find((x) => x.name === 'exporter')).toMatchObject({ hostNetwork: true });
    const workloads = buildModel(s, 'cluster.local').workloads;
    expect(workloads.find((w) => w.name === 'exporter')).toMatchObject({ enrolled: false });
    expect(workloads.find((w) => w.name === 'cart')).toMatchObject({ enrolled: true });
  });

  it('gives the CA the identities of the pods on each node, addressed or not', async () => {
    const { server, source, snapshotWhere } = await setup();
    server.apply('Pod', pod('b', { node: 'node-b', ip: '' }));
    server.apply('Pod', pod('unscheduled', { node: '', ip: '' }));
    server.apply('Pod', { ...pod('done', { node: 'node-b' }), status: { phase: 'Succeeded', podIP: '10.0.9.9' } });
    server.apply('Pod', pod('marker', { node: 'node-c' }));
    await snapshotWhere('marker', (s) => podNames(s).includes('marker'));
    const dir = source.nodeDirectory('cluster.local');
    expect([...await dir.identitiesOnNode('node-a')].sort()).toEqual(['spiffe://cluster.local/ns/shop/sa/cart', 'spiffe://cluster.local/ns/shop/sa/pending']);
    expect([...await dir.identitiesOnNode('node-b')]).toEqual(['spiffe://cluster.local/ns/shop/sa/b']);
    expect([...await dir.identitiesOnNode('node-z')]).toEqual([]);
  });

  it('follows adds, modifications and deletions through the watch', async () => {
    const { server, snapshotWhere } = await setup();
    server.apply('Pod', pod('web', { ip: '10.0.0.6' }));
    await snapshotWhere('web added', (s) => podNames(s).includes('web'));
    server.apply('Pod', pod('pending', { ip: '10.0.0.7' }));
    await snapshotWhere('pending gets an address', (s) => podNames(s).includes('pending'));
    server.apply('Pod', pod('web', { ip: '10.0.0.9', labels: { app: 'web', v: '2' } }));
    const s = await snapshotWhere('web modified', (x) => x.pods.find((p) => p.name === 'web')?.ip === '10.0.0.9');
    expect(s.pods.find((p) => p.name === 'web')!.labels).toEqual({ app: 'web', v: '2' });
    server.delete('Pod', 'shop', 'web');
    server.delete('Service', 'shop', 'cart');
    const after = await snapshotWhere('web and cart deleted', (x) => !podNames(x).includes('web') && !named(x, 'Service', 'cart'));
    expect(podNames(after)).toEqual(['cart', 'pending']);
  });

  it('resumes a dropped watch from the last version seen, without a re-list, losses or duplicates', async () => {
    const { server, snapshotWhere, watchesOpen, watchRequests, listRequests } = await setup();
    server.apply('Pod', pod('a1', { ip: '10.0.1.1' }));
    const seen = server.resourceVersion;
    await snapshotWhere('a1', (s) => podNames(s).includes('a1'));
    const lists = listRequests('pods').length;
    const watches = watchRequests('pods').length;
    server.dropWatches();
    // Written while no watch is open: must arrive through the resumed watch.
    server.apply('Pod', pod('a2', { ip: '10.0.1.2' }));
    server.delete('Pod', 'shop', 'a1');
    const s = await snapshotWhere('a2 without a1', (x) => podNames(x).includes('a2') && !podNames(x).includes('a1'));
    await watchesOpen('pods');
    expect(podNames(s)).toEqual(['a2', 'cart']);
    expect(new Set(s.pods.map((p) => p.uid)).size).toBe(s.pods.length);
    expect(listRequests('pods').length).toBe(lists);
    const resumed = watchRequests('pods').slice(watches);
    expect(resumed.length).toBeGreaterThanOrEqual(1);
    expect(new URL(resumed[0]!.url, 'http://x').searchParams.get('resourceVersion')).toBe(String(seen));
    expect(resumed[0]!.url).toContain('allowWatchBookmarks=true');
  });

  it('takes the version of a bookmark', async () => {
    const { server, source, snapshotWhere, watchesOpen, watchRequests } = await setup();
    server.apply('Pod', pod('b1', { ip: '10.0.2.1' }));
    await snapshotWhere('b1', (s) => podNames(s).includes('b1'));
    const bookmark = server.bookmark('Pod');
    await expect.poll(() => source.versions().Pod, { timeout: 5000, interval: 5 }).toBe(bookmark);
    const watches = watchRequests('pods').length;
    server.dropWatches();
    await watchesOpen('pods');
    const resumed = watchRequests('pods').slice(watches);
    expect(new URL(resumed[0]!.url, 'http://x').searchParams.get('resourceVersion')).toBe(bookmark);
  });

  it('re-lists on 410 Gone, and an object deleted during the gap disappears', async () => {
    const { server, snapshotWhere, watchesOpen, listRequests } = await setup();
    server.apply('Pod', pod('g1', { ip: '10.0.3.1' }));
    server.apply('Pod', pod('g2', { ip: '10.0.3.2' }));
    await snapshotWhere('g1 and g2', (s) => podNames(s).includes('g1') && podNames(s).includes('g2'));
    const lists = listRequests('pods').length;
    // In one tick, before the source can reconnect: the connection drops, g1 is deleted and
    // g3 added, and the history is compacted, so resuming answers 410.
    server.dropWatches();
    server.delete('Pod', 'shop', 'g1');
    server.apply('Pod', pod('g3', { ip: '10.0.3.3' }));
    server.compact();
    const s = await snapshotWhere('the re-listed state', (x) => !podNames(x).includes('g1') && podNames(x).includes('g3'));
    expect(podNames(s)).toEqual(['cart', 'g2', 'g3']);
    expect(listRequests('pods').length).toBeGreaterThan(lists);
    await watchesOpen('pods');
    // And a 410 on an otherwise healthy watch re-lists too.
    const allLists = () => server.requests.filter((r) => !r.url.includes('watch=1') && r.method === 'GET').length;
    const before = allLists();
    server.goneOnNextWatch(1);
    server.dropWatches();
    await expect.poll(allLists, { timeout: 5000, interval: 10, message: 'a re-list' }).toBeGreaterThan(before);
    await snapshotWhere('still consistent', (x) => podNames(x).join() === 'cart,g2,g3');
    server.apply('Pod', pod('g4', { ip: '10.0.3.4' }));
    await snapshotWhere('g4 after the re-list', (x) => podNames(x).includes('g4'));
  });

  it('leaves out an invalid VirtualService, keeps the last valid version and writes Accepted=False', async () => {
    const { server, source, diagnostics, snapshotWhere } = await setup();
    const patched = (suffix: string, body = '') => server.statusPatches.some((p) => p.path.endsWith(suffix) && JSON.stringify(p.body).includes(body));
    server.apply('VirtualService', vs('reviews', 'reviews'));
    server.apply('VirtualService', vs('broken', 'broken', { hosts: ['broken'], http: [{ route: [{ destination: {} }] }] }));
    await snapshotWhere('reviews', (s) => !!named(s, 'VirtualService', 'reviews'));
    await expect.poll(() => patched('/virtualservices/broken/status'), { timeout: 5000, interval: 10, message: 'the status write of broken' }).toBe(true);
    expect(named((await snapshotWhere('reviews', () => true)), 'VirtualService', 'broken')).toBeUndefined();
    const early = server.statusPatches.find((p) => p.path === '/apis/networking.istio.io/v1/namespaces/shop/virtualservices/early/status');
    expect(early?.body).toMatchObject({ status: { conditions: [{ type: 'Accepted', status: 'False', reason: 'Invalid' }] } });
    const patch = server.statusPatches.find((p) => p.path === '/apis/networking.istio.io/v1/namespaces/shop/virtualservices/broken/status')!;
    expect(patch.contentType).toBe('application/merge-patch+json');
    expect(patch.body).toMatchObject({ status: { conditions: [{ type: 'Accepted', status: 'False', reason: 'Invalid', message: expect.stringContaining('spec.http[0].route[0].destination.host') }] } });

    // A later invalid version of reviews: the valid one stays in effect.
    server.apply('VirtualService', { ...vs('reviews', 'reviews'), spec: { hosts: ['reviews'], http: [{ route: [{ destination: { host: 'reviews' } }], bogus: true }] } });
    await expect.poll(() => patched('/virtualservices/reviews/status'), { timeout: 5000, interval: 10, message: 'the status write of reviews' }).toBe(true);
    // The snapshot that went out with the rejection of the new version (its diagnostics name it).
    const kept = await snapshotWhere('the snapshot with reviews rejected', () => (diagnostics.at(-1) ?? []).some((d) => d.name === 'reviews'));
    expect(named(kept, 'VirtualService', 'reviews')).toBeDefined();
    expect(named(kept, 'VirtualService', 'broken')).toBeUndefined();
    expect((named(kept, 'VirtualService', 'reviews')!.raw.spec as { http: unknown[] }).http[0]).not.toHaveProperty('bogus');
    // The condition was written once per object, not on every echo of the status write: once the
    // source has read every event the server has (the echoes included), still one write.
    await expect.poll(() => source.versions()['networking.istio.io/VirtualService'], { timeout: 5000, interval: 10, message: 'the echo of the status writes read' }).toBe(String(server.resourceVersion));
    expect(server.statusPatches.filter((p) => p.path.endsWith('/broken/status'))).toHaveLength(1);
    expect((server.get('VirtualService', 'shop', 'broken')!.status as { conditions: { type: string }[] }).conditions[0]!.type).toBe('Accepted');

    // Fixed: in effect, and Accepted=True.
    server.apply('VirtualService', vs('reviews', 'reviews-v2'));
    await snapshotWhere('reviews fixed', (s) => JSON.stringify(named(s, 'VirtualService', 'reviews')?.raw.spec ?? '').includes('reviews-v2'));
    await expect.poll(() => patched('/reviews/status', '"True"'), { timeout: 5000, interval: 10, message: 'Accepted=True on reviews' }).toBe(true);
    expect(server.statusPatches.filter((p) => p.path.endsWith('/reviews/status')).map((p) => (p.body as { status: { conditions: { status: string }[] } }).status.conditions[0]!.status)).toEqual(['False', 'True']);
  });

  it('tolerates a failing status write', async () => {
    const { server, snapshotWhere } = await setup();
    server.statusPatchCode = 500;
    server.apply('VirtualService', vs('bad', 'bad', { hosts: ['bad'], nonsense: 1 }));
    server.apply('VirtualService', vs('good', 'good'));
    const s = await snapshotWhere('good', (x) => !!named(x, 'VirtualService', 'good'));
    expect(named(s, 'VirtualService', 'bad')).toBeUndefined();
    await expect.poll(() => server.statusPatches.some((p) => p.path.endsWith('/bad/status')), { timeout: 5000, interval: 10, message: 'the (failing) status write of bad' }).toBe(true);
    server.apply('Pod', pod('after', { ip: '10.0.4.1' }));
    await snapshotWhere('still running', (x) => podNames(x).includes('after'));
  });

  it('retries a missing kind and picks it up once its CRD is installed', async () => {
    const { server, source, snapshotWhere } = await setup({ absentRetryMs: 100 });
    expect(source.absentKinds()).toContain('ambit.dev/RateLimit');
    server.serve({ group: 'ambit.dev', version: 'v1alpha1', kind: 'RateLimit', plural: 'ratelimits' });
    server.apply('RateLimit', { metadata: { name: 'cart', namespace: 'shop' }, spec: { targetRefs: [{ kind: 'Service', name: 'cart' }], requestsPerUnit: 10, unit: 'second' } });
    const rateLimitErrors = () => source.diagnostics().filter((d) => d.kind === 'RateLimit');
    const s = await snapshotWhere('the RateLimit', (x) => !!named(x, 'RateLimit', 'cart') || rateLimitErrors().length > 0);
    expect(rateLimitErrors()).toEqual([]);
    expect(source.diagnostics().map((d) => d.name)).toEqual(['early']);
    expect(named(s, 'RateLimit', 'cart')).toBeDefined();
    expect(source.absentKinds()).not.toContain('ambit.dev/RateLimit');
  });

  it('closes its watches when stopped', async () => {
    const { server, source } = await setup();
    expect(server.watchCount()).toBeGreaterThan(0);
    source.stop();
    await expect.poll(() => server.watchCount(), { timeout: 5000, interval: 5 }).toBe(0);
  });

  it('debounces a burst of events into one snapshot', async () => {
    const { server, source, snapshots, snapshotWhere } = await setup({ debounceMs: 100 });
    // A fixed wait is the point here: a debounce timer still pending from setup (100 ms) must run
    // out before the burst, or it would split it; nothing observable says it has.
    await new Promise((r) => setTimeout(r, 250));
    const before = snapshots.length;
    for (let i = 0; i < 30; i++) server.apply('Pod', pod(`burst-${i}`, { ip: `10.0.5.${i + 1}` }));
    await snapshotWhere('the burst', (s) => s.pods.length === 31);
    // No snapshot with part of the burst went out before it (and the same state is never sent twice).
    expect(snapshots.length).toBe(before + 1);
    expect(source.versions().Pod).toBe(String(server.resourceVersion));
  });
});
