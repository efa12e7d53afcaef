/**
 * Node-scoped discovery (Subscribe.scope "node", Demand): a real controller-side server over
 * gRPC/TLS on loopback and real DiscoveryClients. A node agent gets its node's view — its pods,
 * the Services they serve, every waypoint pod, a head of every other service, policies — and
 * what it asks for, kept current; bad demands are refused by name; a reconnect keeps the view.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService, MAX_DEMANDED, ScopeIndex, demandNameError, type WireResource } from '../../src/discovery/discovery.js';
import { MeshState } from '../../src/discovery/mesh-state.js';
import { buildModel, type MeshModel, type PodInfo } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../../src/identity/ca-server.js';
import { parseManifests, type PodSpec } from '../../src/kube/manifests.js';
import { until } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-scope-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const TOKENS = { 'node-1': 'one', 'node-2': 'two', 'node-3': 'three' };
const auth = new BootstrapTokenAuthenticator(TOKENS);

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Service
metadata: { name: users, namespace: shop }
spec: { clusterIP: 10.96.0.10, selector: { app: users }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: payment, namespace: shop }
spec: { clusterIP: 10.96.0.12, selector: { app: payment }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: ledger, namespace: shop }
spec: { clusterIP: None, selector: { app: ledger }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: orders, namespace: shop, labels: { ambit.dev/use-waypoint: wp } }
spec: { clusterIP: 10.96.0.14, selector: { app: orders }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: wp, namespace: shop }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008, protocol: HBONE }] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-users, namespace: shop }
spec: { selector: { matchLabels: { app: payment } }, rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/users] } }] }] }
`;
const { resources, diagnostics } = parseManifests([{ file: 'm.yaml', text: MANIFESTS, dir: '/' }], { validate: validateMeshObject });
if (diagnostics.some((d) => d.severity === 'error')) throw new Error(JSON.stringify(diagnostics));

const spec = (sa: string): PodSpec => ({ serviceAccountName: sa, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] });
const pod = (name: string, node: string, ip: string, labels: Record<string, string>): PodInfo => ({ uid: `uid-${name}`, namespace: 'shop', name, node, ip, labels, spec: spec(labels.app ?? 'default') });
const PODS = [
  pod('users-1', 'node-1', '10.244.1.2', { app: 'users' }),
  pod('payment-1', 'node-2', '10.244.2.2', { app: 'payment' }),
  pod('payment-2', 'node-3', '10.244.3.2', { app: 'payment' }),
  pod('ledger-1', 'node-3', '10.244.3.3', { app: 'ledger' }),
  pod('wp-1', 'node-3', '10.244.3.9', { app: 'wp', 'gateway.networking.k8s.io/gateway-name': 'wp' }),
];
const model = (pods = PODS): MeshModel => buildModel({ resources, pods }, 'cluster.local');

describe('node-scoped discovery', () => {
  let ca: CertificateAuthority;
  let server: CaServer;
  let discovery: DiscoveryServer;
  let port = 0;
  const clients: DiscoveryClient[] = [];
  const pushes: number[] = [];

  async function start(m: MeshModel): Promise<void> {
    discovery = new DiscoveryServer(auth, undefined, { observer: { pushed: (_k, bytes) => { pushes.push(bytes); }, rejected: () => undefined } });
    discovery.update(m);
    server = await CaServer.start({
      ca, authenticator: auth, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port,
      services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    });
    port = server.port;
  }

  function agent(node: keyof typeof TOKENS, opts: { reject?: (r: ReadonlyMap<string, WireResource>) => string | undefined } = {}): { client: DiscoveryClient; versions: string[] } {
    const versions: string[] = [];
    const client = new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: TOKENS[node], node, kind: 'node-agent', scope: 'node',
      backoff: { initialMs: 50, maxMs: 200 },
      apply: (r, version) => {
        const why = opts.reject?.(r);
        if (why) throw new Error(why);
        versions.push(version);
      },
    });
    clients.push(client);
    return { client, versions };
  }

  const keys = (c: DiscoveryClient) => [...c.resources.keys()].sort();
  const state = (c: DiscoveryClient) => new MeshState(c.appliedVersion, c.resources, { scope: 'node' });

  beforeAll(async () => {
    ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
    await start(model());
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
  });
  afterAll(async () => {
    await server.close();
  });

  it('sends a node its own pods, the Services they serve, waypoint pods, heads of the other services and every policy', async () => {
    const { client } = agent('node-1');
    await client.ready;
    expect(keys(client)).toEqual([
      'meshconfig/mesh', 'policy/AuthorizationPolicy/shop/allow-users',
      'service/shop/users', 'servicehead/shop/ledger', 'servicehead/shop/orders', 'servicehead/shop/payment', 'servicehead/shop/users',
      'waypoint/shop/wp', 'workload/uid-users-1', 'workload/uid-wp-1',
    ]);
    const s = state(client);
    // Its own service is whole; the others are known by their addresses, their endpoints on demand.
    expect(s.endpointsKnown(s.services.get('shop/users')!)).toBe(true);
    expect(s.endpointsKnown(s.services.get('shop/payment')!)).toBe(false);
    expect(s.missing('10.96.0.10')).toBeUndefined();
    expect(s.missing('10.96.0.12')).toBe('service/shop/payment');
    expect(s.missing('10.244.2.2')).toBe('address/10.244.2.2');
    expect(s.missing('::ffff:10.244.2.2')).toBe('address/10.244.2.2');
    // Bound to a waypoint: its traffic goes to the waypoint, which picks the endpoint; the head is enough.
    expect(s.missing('10.96.0.14')).toBeUndefined();
    expect(s.resolve('10.96.0.14', 80)).toMatchObject({ ip: '10.96.0.14', port: 80, service: { name: 'orders', waypoint: { name: 'wp' } } });
    expect(s.waypointPods.get('shop/wp')?.map((w) => w.name)).toEqual(['wp-1']);
    // Cluster scope, the same state's lookups: nothing is ever missing.
    expect(new MeshState('v', client.resources).missing('10.244.2.2')).toBeUndefined();
  });

  it('answers a demand for a service with its endpoints\' workloads, and for addresses with the workload that has them or none', async () => {
    const { client } = agent('node-1');
    await client.ready;
    client.demand(['service/shop/payment', 'address/10.244.3.3', 'address/192.0.2.7']);
    await until('the answer', () => client.resources.has('address/192.0.2.7'), { timeout: 10_000, interval: 10 });
    expect(keys(client)).toEqual(expect.arrayContaining(['service/shop/payment', 'workload/uid-payment-1', 'workload/uid-payment-2', 'workload/uid-ledger-1', 'address/10.244.3.3']));
    expect(JSON.parse(client.resources.get('address/10.244.3.3')!.json)).toEqual({ address: '10.244.3.3', workload: 'uid-ledger-1' });
    expect(JSON.parse(client.resources.get('address/192.0.2.7')!.json)).toEqual({ address: '192.0.2.7' });
    const s = state(client);
    expect(s.missing('10.96.0.12')).toBeUndefined();
    expect(s.resolve('10.96.0.12', 80)?.workload?.name).toMatch(/^payment-/);
    expect(s.missing('10.244.3.3')).toBeUndefined();
    expect(s.workloadsByIp.get('10.244.3.3')?.name).toBe('ledger-1');
    expect(s.missing('192.0.2.7')).toBeUndefined();
    expect(s.workloadsByIp.has('192.0.2.7')).toBe(false);
  });

  it('keeps what was asked for current, and tells only the agents that hold a changed pod', async () => {
    const one = agent('node-1');
    const two = agent('node-2');
    await Promise.all([one.client.ready, two.client.ready]);
    one.client.demand(['service/shop/payment']);
    await until('the endpoints', () => one.client.resources.has('workload/uid-payment-2'), { timeout: 10_000, interval: 10 });
    const before = { one: one.versions.length, two: two.versions.length };
    // A third payment pod on node-3: node-1 asked for payment (it gets the pod and the new endpoint
    // list); node-2 serves payment (its Service changes) but never holds node-3's pod.
    discovery.update(model([...PODS, pod('payment-3', 'node-3', '10.244.3.4', { app: 'payment' })]));
    await until('both', () => one.versions.length > before.one && two.versions.length > before.two, { timeout: 10_000, interval: 10 });
    expect(one.client.resources.has('workload/uid-payment-3')).toBe(true);
    expect(JSON.parse(one.client.resources.get('service/shop/payment')!.json).endpoints).toContain('uid-payment-3');
    expect(two.client.resources.has('workload/uid-payment-3')).toBe(false);
    expect(JSON.parse(two.client.resources.get('service/shop/payment')!.json).endpoints).toContain('uid-payment-3');
    // A pod on node-3 that neither serves nor was asked for: no version goes to either.
    const [v1, v2] = [one.versions.length, two.versions.length];
    const written = pushes.length;
    discovery.update(model([...PODS, pod('payment-3', 'node-3', '10.244.3.4', { app: 'payment' }), pod('idle', 'node-3', '10.244.3.5', { app: 'idle' })]));
    expect(pushes.length).toBe(written);
    expect([one.versions.length, two.versions.length]).toEqual([v1, v2]);
    discovery.update(model());
    await until('the pod gone', () => !one.client.resources.has('workload/uid-payment-3'), { timeout: 10_000, interval: 10 });
  });

  it('converges under a burst of changes and demands: the same view as a new agent asking the same', async () => {
    const old = agent('node-1');
    await old.client.ready;
    let last = model();
    for (let i = 0; i < 20; i++) {
      const extra = Array.from({ length: i % 4 }, (_, j) => pod(`burst-${i}-${j}`, `node-${(j % 3) + 1}`, `10.244.9.${i * 4 + j + 2}`, { app: j % 2 ? 'payment' : 'users' }));
      last = model([...PODS, ...extra]);
      discovery.update(last);
      if (i % 5 === 0) old.client.demand([`address/10.244.9.${i * 4 + 3}`, 'service/shop/payment']);
    }
    await until('the last version', () => old.client.appliedVersion.split('.')[0] === discovery.version && !discovery.status().some((s) => s.lastAck !== old.client.appliedVersion), { timeout: 10_000, interval: 10 });
    const fresh = agent('node-1');
    fresh.client.demand([0, 5, 10, 15].map((i) => `address/10.244.9.${i * 4 + 3}`).concat('service/shop/payment'));
    await until('the same view', () => JSON.stringify(keys(fresh.client)) === JSON.stringify(keys(old.client)), { timeout: 10_000, interval: 10 });
    for (const [k, r] of old.client.resources) expect(fresh.client.resources.get(k)?.json, k).toBe(r.json);
  });

  it('keeps a NACKing agent on its last good view, and moves it on with the next model', async () => {
    const { client } = agent('node-2', { reject: (r) => (r.has('workload/uid-bad') ? 'workload uid-bad: cannot enroll' : undefined) });
    await client.ready;
    const good = client.appliedVersion;
    discovery.update(model([...PODS, pod('bad', 'node-2', '10.244.2.9', { app: 'x' })]));
    await until('the NACK', () => discovery.status().some((s) => s.node === 'node-2' && s.lastNack?.version === discovery.version), { timeout: 10_000, interval: 10 });
    // A demand at the refused model is held: it would only be refused again.
    client.demand(['address/10.244.1.2']);
    expect(client.appliedVersion).toBe(good);
    discovery.update(model());
    await until('the next model', () => client.appliedVersion.split('.')[0] === discovery.version && client.resources.has('address/10.244.1.2'), { timeout: 10_000, interval: 10 });
    expect(client.resources.has('workload/uid-bad')).toBe(false);
  });

  it('holds at most MAX_DEMANDED names per stream, dropping the oldest', async () => {
    const { client } = agent('node-3');
    await client.ready;
    const names = Array.from({ length: MAX_DEMANDED + 1 }, (_, i) => `address/10.250.${i >> 8}.${i & 255}`);
    client.demand(names.slice(0, 2048));
    client.demand(names.slice(2048));
    await until('the last answer', () => client.resources.has(names.at(-1)!), { timeout: 10_000, interval: 10 });
    expect(client.resources.has(names[0]!)).toBe(false);
    expect(client.resources.has(names[1]!)).toBe(true);
    expect([...client.resources.keys()].filter((k) => k.startsWith('address/'))).toHaveLength(MAX_DEMANDED);
  });

  it('asks again for what it held after the controller restarts', async () => {
    const { client } = agent('node-1');
    await client.ready;
    client.demand(['service/shop/payment']);
    await until('the endpoints', () => client.resources.has('workload/uid-payment-1'), { timeout: 10_000, interval: 10 });
    server.forceClose();
    await until('the disconnect', () => !client.connected, { timeout: 10_000, interval: 10 });
    await start(model());
    await until('the new controller\'s version, with the demand', () => client.appliedVersion.split('.')[0] === discovery.version && client.resources.has('workload/uid-payment-1'), { timeout: 15_000, interval: 20 });
  });

  it('refuses bad demands and scopes by name', async () => {
    const refused = async (opts: { scope?: string; demand?: unknown[] }, subscribeDemand: unknown[] = []): Promise<grpc.ServiceError> => {
      const Service = discoveryService();
      const raw = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca.trustBundle().join(''))), { 'grpc.ssl_target_name_override': 'localhost' });
      const md = new grpc.Metadata();
      md.set('authorization', 'Bearer one');
      const call = (raw as unknown as { Stream(md: grpc.Metadata): grpc.ClientDuplexStream<unknown, unknown> }).Stream(md);
      const err = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
      call.on('data', () => undefined);
      call.write({ subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '', scope: opts.scope ?? 'node', demand: subscribeDemand } });
      if (opts.demand) call.write({ demand: { names: opts.demand } });
      try {
        return await err;
      } finally {
        raw.close();
      }
    };
    for (const [opts, want] of [
      [{ demand: ['service/shop'] }, /demand "service\/shop": a service is named service\/<namespace>\/<name>/],
      [{ demand: ['address/10.0.0.300'] }, /demand "address\/10.0.0.300": not an IP address/],
      [{ demand: ['address/::ffff:10.0.0.1'] }, /write an IPv4-mapped address as IPv4/],
      [{ demand: ['secret/shop/edge-cert'] }, /names are service\/<namespace>\/<name> or address\/<ip>/],
      [{ demand: [`service/shop/${'x'.repeat(300)}`] }, /a service is named/],
      [{ demand: Array.from({ length: MAX_DEMANDED + 1 }, () => 'address/10.0.0.1') }, new RegExp(`at most ${MAX_DEMANDED}`)],
      [{ scope: 'cluster', demand: ['address/10.0.0.1'] }, /demand needs a subscription of scope "node"/],
      [{ scope: 'galaxy' }, /subscribe.scope must be cluster or node, got "galaxy"/],
    ] as const) {
      const err = await refused(opts as { scope?: string; demand?: unknown[] });
      expect(err.code, JSON.stringify(opts).slice(0, 80)).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toMatch(want);
    }
    const early = await refused({}, ['address/nope']);
    expect(early.details).toMatch(/demand "address\/nope": not an IP address/);
    expect(demandNameError('address/fd00::1')).toBeUndefined();
    expect(demandNameError('service/shop/payment')).toBeUndefined();
    expect(() => agent('node-1').client.demand(['bogus'])).toThrow(/names are service/);
  });
});

describe('node scope\'s index', () => {
  it('made again on the same index, or brought along by what changed, equals one built anew, over pods and endpoints that come, move and go', () => {
    const kept = new ScopeIndex();
    const dump = (x: ScopeIndex) => JSON.stringify({
      byNode: [...x.byNode].map(([n, s]) => [n, [...s].sort()]).sort(), waypointPods: [...x.waypointPods].sort(),
      servicesOf: [...x.servicesOf].map(([u, s]) => [u, [...s].sort()]).sort(), byIp: [...x.byIp].sort(), workloads: [...x.workloads.keys()].sort(), services: [...x.services.keys()].sort(),
    });
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    // A third one brought along by what changed only (the server's way between versions).
    const applied = new ScopeIndex();
    const objects = (m: MeshModel) => new Map<string, unknown>([...m.workloads.map((w) => [`workload/${w.uid}`, w] as const), ...m.services.map((s) => [`service/${s.namespace}/${s.name}`, s] as const)]);
    let before = objects(model([]));
    let pods = PODS;
    for (let step = 0; step < 40; step++) {
      // Some pods go, some come (new objects), some move node or app (new objects); the rest are the same objects.
      pods = pods.filter(() => random() > 0.15).map((p) => (random() < 0.2 ? { ...p, node: `node-${1 + Math.floor(random() * 3)}`, labels: { ...p.labels, app: random() < 0.5 ? 'payment' : 'users' } } : p));
      for (let i = 0; i < 3; i++) pods.push(pod(`p${step}-${i}`, `node-${1 + (i % 3)}`, `10.244.${10 + step}.${i + 2}`, { app: ['users', 'payment', 'ledger'][i]! }));
      const m = model(pods);
      kept.update(m);
      const now = objects(m);
      const changed = [...new Set([...before.keys(), ...now.keys()])].filter((k) => JSON.stringify(before.get(k)) !== JSON.stringify(now.get(k)));
      if (step === 0) applied.update(m);
      else applied.apply(changed, (k) => now.get(k));
      before = now;
      const fresh = new ScopeIndex();
      fresh.update(m);
      expect(dump(kept), `step ${step}`).toBe(dump(fresh));
      expect(dump(applied), `step ${step}, applied`).toBe(dump(fresh));
    }
  });
});
