/**
 * The mesh model and the discovery stream: a real controller-side server over gRPC/TLS on
 * loopback and real subscribers (two node agents, one waypoint): snapshot, deltas, NACK,
 * authentication, controller restart with reconnect and resync.
 */
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService, MAX_INFLIGHT, MAX_NACK_ERROR, MAX_STREAMS, openPart, responseCodec, viewFor, type WireResource } from '../../src/discovery/discovery.js';
import { buildModel, type MeshModel, type PodInfo, type Service, type Workload } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import * as grpc from '@grpc/grpc-js';
import { BootstrapTokenAuthenticator, CaServer, type Authenticator } from '../../src/identity/ca-server.js';
import { parseManifests, type PodSpec } from '../../src/kube/manifests.js';
import { until } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-'));
// At file level: the directory goes even when a filter skips the block that uses it.
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const TOKENS = { 'node-1': 'one', 'node-2': 'two' };
/** The waypoint shop/wp's own credential. */
const WP_TOKEN = 'wp-secret';
const WP_CALLER = { node: '', workload: { namespace: 'shop', name: 'wp', identity: 'spiffe://cluster.local/ns/shop/sa/wp' } };
const nodes = new BootstrapTokenAuthenticator(TOKENS);
const credentials: Authenticator = {
  authenticate: (md) => (md.get('authorization')[0] === `Bearer ${WP_TOKEN}` ? Promise.resolve(WP_CALLER) : nodes.authenticate(md)),
};

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Service
metadata: { name: payment, namespace: shop, labels: { ambit.dev/use-waypoint: wp } }
spec: { clusterIP: 10.96.0.12, selector: { app: payment }, ports: [{ name: http, port: 80, targetPort: http }] }
---
apiVersion: v1
kind: Service
metadata: { name: users, namespace: shop }
spec: { clusterIP: 10.96.0.10, selector: { app: users }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payment, namespace: shop }
spec: { hosts: [payment], http: [{ route: [{ destination: { host: payment } }] }] }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: users, namespace: shop }
spec: { hosts: [users], http: [{ route: [{ destination: { host: users } }] }] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-users, namespace: shop }
spec: { selector: { matchLabels: { app: payment } }, rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/users] } }] }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: wp, namespace: shop }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008, protocol: HBONE }] }
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: edge, namespace: shop }
spec: { selector: { app: users }, servers: [{ port: { number: 443, name: https, protocol: HTTPS }, hosts: ['*'], tls: { mode: SIMPLE, credentialName: edge-cert } }] }
---
apiVersion: v1
kind: Secret
metadata: { name: edge-cert, namespace: shop }
type: kubernetes.io/tls
stringData:
  tls.crt: |
    -----BEGIN CERTIFICATE-----
    AAAA
    -----END CERTIFICATE-----
  tls.key: |
    -----BEGIN PRIVATE KEY-----
    AAAA
    -----END PRIVATE KEY-----
`;
const { resources, diagnostics } = parseManifests([{ file: 'm.yaml', text: MANIFESTS, dir: '/' }], { validate: validateMeshObject });
if (diagnostics.some((d) => d.severity === 'error')) throw new Error(JSON.stringify(diagnostics));

const spec = (sa: string, port = 8080): PodSpec => ({ serviceAccountName: sa, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: port, protocol: 'TCP' }] }] });
const pod = (name: string, node: string, ip: string, labels: Record<string, string>, sa: string): PodInfo => ({ uid: `uid-${name}`, namespace: 'shop', name, node, ip, labels, spec: spec(sa) });
const PODS = [
  pod('users-1', 'node-1', '10.244.1.2', { app: 'users' }, 'users'),
  pod('payment-1', 'node-2', '10.244.2.2', { app: 'payment' }, 'payment'),
  pod('legacy', 'node-2', '10.244.2.3', { app: 'legacy', 'ambit.dev/dataplane-mode': 'none' }, 'default'),
];
const model = (pods = PODS): MeshModel => buildModel({ resources, pods }, 'cluster.local');

describe('the mesh model', () => {
  it('derives workloads, enrollment, services, endpoints, waypoints, policies and L7', () => {
    const m = model();
    const byName = Object.fromEntries(m.workloads.map((w) => [w.name, w])) as Record<string, Workload>;
    expect(byName['users-1']).toMatchObject({ identity: 'spiffe://cluster.local/ns/shop/sa/users', ips: ['10.244.1.2'], node: 'node-1', enrolled: true, ports: { http: 8080 } });
    expect(byName.legacy!.enrolled).toBe(false);
    const payment = m.services.find((s) => s.name === 'payment') as Service;
    expect(payment).toEqual({
      namespace: 'shop', name: 'payment', hostname: 'payment.shop.svc.cluster.local', vips: ['10.96.0.12'],
      ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }], endpoints: ['uid-payment-1'], waypoint: { name: 'wp', namespace: 'shop' },
    });
    expect(m.services.find((s) => s.name === 'users')!.waypoint).toBeUndefined();
    expect(m.policies.map((p) => p.name)).toEqual(['allow-users']);
    expect(m.l7.map((c) => c.name)).toEqual(['payment', 'users']);
    expect(m.waypoints.map((w) => w.name)).toEqual(['wp']);
  });
});

interface Subscriber { client: DiscoveryClient; applied: { version: string; keys: string[] }[] }

describe('the discovery stream', () => {
  let ca: CertificateAuthority;
  let server: CaServer;
  let discovery: DiscoveryServer;
  let port = 0;
  const subs: Subscriber[] = [];

  /** Versions written to subscribers (the server's observer counts them as it writes). */
  let pushes = 0;

  async function startServer(m: MeshModel): Promise<void> {
    discovery = new DiscoveryServer(credentials, undefined, { observer: { pushed: () => { pushes++; }, rejected: () => undefined } });
    discovery.update(m);
    server = await CaServer.start({
      ca, authenticator: credentials, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port,
      services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    });
    port = server.port;
  }

  function subscribe(node: string, kind: 'node-agent' | 'waypoint', name?: string, reject?: (r: ReadonlyMap<string, WireResource>) => string | undefined): Subscriber {
    const sub: Subscriber = { applied: [], client: undefined as unknown as DiscoveryClient };
    sub.client = new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: kind === 'waypoint' ? WP_TOKEN : TOKENS[node as keyof typeof TOKENS], node, kind, name,
      backoff: { initialMs: 50, maxMs: 200 },
      apply: (r, version) => {
        const why = reject?.(r);
        if (why) throw new Error(why);
        sub.applied.push({ version, keys: [...r.keys()].sort() });
      },
    });
    subs.push(sub);
    return sub;
  }

  beforeAll(async () => {
    ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
    await startServer(model());
  });

  afterAll(async () => {
    for (const s of subs) s.client.close();
    await server.close();
  });

  it('sends each subscriber its full snapshot: node agents all but L7, a waypoint its services and their L7', async () => {
    const n1 = subscribe('node-1', 'node-agent');
    const wp = subscribe('node-2', 'waypoint', 'shop/wp');
    await Promise.all([n1.client.ready, wp.client.ready]);
    // The model holds a Gateway and its Secret: neither reaches a node agent or a waypoint.
    expect(model().secrets.map((x) => x.name)).toEqual(['edge-cert']);
    expect(n1.applied[0]!.keys).toEqual([
      'meshconfig/mesh', 'policy/AuthorizationPolicy/shop/allow-users', 'service/shop/payment', 'service/shop/users',
      'waypoint/shop/wp', 'workload/uid-legacy', 'workload/uid-payment-1', 'workload/uid-users-1',
    ]);
    expect(wp.applied[0]!.keys).toEqual([
      'l7/VirtualService/shop/payment', 'policy/AuthorizationPolicy/shop/allow-users', 'service/shop/payment',
      'waypoint/shop/wp', 'workload/uid-legacy', 'workload/uid-payment-1', 'workload/uid-users-1',
    ]);
    await until('the ACKs', () => discovery.status().every((s) => s.lastAck === discovery.version), { timeout: 10_000, interval: 10 });
  });

  it('sends deltas with a new version, and nothing to subscribers a change does not concern', async () => {
    const [n1, wp] = subs as [Subscriber, Subscriber];
    const before = { n1: n1.applied.length, wp: wp.applied.length };
    discovery.update(model([...PODS, pod('users-2', 'node-2', '10.244.2.4', { app: 'users' }, 'users')]));
    await until('the delta', () => n1.applied.length === before.n1 + 1 && wp.applied.length === before.wp + 1, { timeout: 10_000, interval: 10 });
    expect(n1.client.appliedVersion).toBe(discovery.version);
    expect(n1.client.resources.get('workload/uid-users-2')).toBeDefined();
    expect(JSON.parse(n1.client.resources.get('service/shop/users')!.json)).toMatchObject({ endpoints: ['uid-users-1', 'uid-users-2'] });
    // Same model again: no new version goes out.
    const [v, written] = [n1.client.appliedVersion, pushes];
    discovery.update(model([...PODS, pod('users-2', 'node-2', '10.244.2.4', { app: 'users' }, 'users')]));
    // update() writes to every subscriber before it returns: it wrote nothing.
    expect(pushes).toBe(written);
    expect(n1.client.appliedVersion).toBe(v);
  });

  it('converges after a burst of versions sent faster than the ACKs come back', async () => {
    const [n1, wp] = subs as [Subscriber, Subscriber];
    let last = model();
    // More versions than the controller keeps for deltas: some subscribers build on versions
    // still in flight, some on versions already dropped (and get a full snapshot).
    for (let i = 0; i < 20; i++) {
      const extra = Array.from({ length: i % 4 }, (_, j) => pod(`burst-${i}-${j}`, j % 2 ? 'node-1' : 'node-2', `10.244.3.${i * 4 + j + 2}`, { app: j % 2 ? 'payment' : 'users' }, 'users'));
      last = model([...PODS, ...extra]);
      discovery.update(last);
    }
    await until('both on the last version', () => n1.client.appliedVersion === discovery.version && wp.client.appliedVersion === discovery.version, { timeout: 10_000, interval: 10 });
    for (const [sub, kind, name] of [[n1, 'node-agent', ''], [wp, 'waypoint', 'shop/wp']] as const) {
      const want = new Map([...viewFor(last, kind, name)].map(([k, v]) => [k, JSON.stringify(v.value)]));
      expect(new Map([...sub.client.resources].map(([k, v]) => [k, v.json]))).toEqual(want);
    }
  });

  it('records a NACK, keeps the subscriber on its last good config, and moves on with the next version', async () => {
    const n2 = subscribe('node-2', 'node-agent', undefined, (r) => (r.has('workload/uid-bad') ? 'workload uid-bad: cannot enroll' : undefined));
    await n2.client.ready;
    const good = n2.client.appliedVersion;
    discovery.update(model([...PODS, pod('bad', 'node-2', '10.244.2.9', { app: 'x' }, 'default')]));
    await until('the NACK', () => discovery.status().some((s) => s.node === 'node-2' && s.kind === 'node-agent' && s.lastNack?.version === discovery.version), { timeout: 10_000, interval: 10 });
    expect(n2.client.appliedVersion).toBe(good);
    expect(n2.client.resources.has('workload/uid-bad')).toBe(false);
    discovery.update(model());
    await until('the fixed version', () => n2.client.appliedVersion === discovery.version, { timeout: 10_000, interval: 10 });
    expect(n2.client.resources.has('workload/uid-users-2')).toBe(false);
  });

  it('refuses a node agent subscribing as another node', async () => {
    const intruder = subscribe('node-1', 'node-agent');
    await intruder.client.ready;
    const spoof = new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: 'one', node: 'node-2', kind: 'node-agent', backoff: { initialMs: 1000, maxMs: 1000 }, apply: () => undefined,
    });
    await until('the refusal', () => spoof.lastError !== undefined, { timeout: 10_000, interval: 10 });
    expect(spoof.lastError).toEqual({ code: grpc.status.PERMISSION_DENIED, details: 'authenticated as node node-1, cannot subscribe as node node-2' });
    expect(spoof.appliedVersion).toBe('');
    expect(spoof.connected).toBe(false);
    spoof.close();
  });

  it('binds the subscriber kind to the credential: a node agent cannot subscribe as a waypoint, a waypoint not as a node agent', async () => {
    const attempt = (token: string, node: string, kind: 'node-agent' | 'waypoint', name?: string) => new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token, node, kind, ...(name ? { name } : {}), backoff: { initialMs: 5_000, maxMs: 5_000 }, apply: () => undefined,
    });
    const asWaypoint = attempt(TOKENS['node-2'], 'node-2', 'waypoint', 'shop/wp');
    const asNode = attempt(WP_TOKEN, 'node-2', 'node-agent');
    try {
      await until('both refusals', () => asWaypoint.lastError !== undefined && asNode.lastError !== undefined, { timeout: 10_000, interval: 10 });
      expect(asWaypoint.lastError).toEqual({ code: grpc.status.PERMISSION_DENIED, details: 'authenticated as the node agent of node node-2, cannot subscribe as waypoint shop/wp: a waypoint subscribes with its own credential' });
      expect(asNode.lastError).toEqual({ code: grpc.status.PERMISSION_DENIED, details: 'authenticated as waypoint shop/wp, cannot subscribe as node node-2' });
      expect(asWaypoint.appliedVersion).toBe('');
      expect(asNode.appliedVersion).toBe('');
      expect(discovery.status().filter((s) => s.kind === 'waypoint').map((s) => s.name)).toEqual(['shop/wp']);
    } finally {
      asWaypoint.close();
      asNode.close();
    }
  });

  it('keeps serving the last good config while the controller is down, then resyncs after its restart', async () => {
    const n1 = subs[0]!;
    const held = new Map(n1.client.resources);
    server.forceClose();
    await until('the disconnect', () => !n1.client.connected, { timeout: 10_000, interval: 10 });
    expect(n1.client.resources).toEqual(held);
    // Two reconnects started (so at least one failed) while the controller is down: still held.
    const tries = n1.client.reconnects;
    await expect.poll(() => n1.client.reconnects, { timeout: 5000, interval: 10, message: 'reconnect attempts while the controller is down' }).toBeGreaterThanOrEqual(tries + 2);
    expect(n1.client.connected).toBe(false);
    expect(n1.client.resources).toEqual(held);
    await startServer(model());
    await until('the resync', () => n1.client.connected && n1.client.appliedVersion === discovery.version, { timeout: 15_000, interval: 10 });
    expect(n1.client.reconnects).toBeGreaterThan(0);
    expect([...n1.client.resources.keys()].sort()).toEqual([...model().workloads.map((w) => `workload/${w.uid}`), 'meshconfig/mesh', 'policy/AuthorizationPolicy/shop/allow-users', 'service/shop/payment', 'service/shop/users', 'waypoint/shop/wp'].sort());
  }, 30_000);
});

describe('the discovery stream against a hostile subscriber', () => {
  /** A server-side stream as grpc-js hands it over, driven by the test. */
  class FakeCall extends EventEmitter {
    readonly metadata = new grpc.Metadata();
    readonly written: { version: string; more?: boolean }[] = [];
    status?: { code: grpc.status; details: string };
    constructor(token: string) {
      super();
      this.metadata.set('authorization', `Bearer ${token}`);
      this.on('error', (e: { code: grpc.status; details: string }) => { this.status ??= e; });
    }
    getPeer() { return '10.0.0.9:5555'; }
    /** The controller writes serialized parts (shared by the subscribers of a view): read back as the subscriber would. */
    write(m: Buffer) { this.written.push(openPart(responseCodec().responseDeserialize(m))); return true; }
    end() { /* the stream closed */ }
  }
  const open = (d: DiscoveryServer, token: string) => {
    const call = new FakeCall(token);
    (d.implementation().Stream as (c: unknown) => void)(call);
    return call;
  };

  it('closes a stream that sends no Subscribe in time', async () => {
    const d = new DiscoveryServer(credentials, undefined, { subscribeTimeoutMs: 50 });
    d.update(model());
    const call = open(d, TOKENS['node-1']);
    await expect.poll(() => call.status, { timeout: 2_000 }).toEqual({ code: grpc.status.DEADLINE_EXCEEDED, details: 'no subscribe within 50 ms of opening the stream' });
  });

  it('leaves no subscriber behind when the stream goes while its credential is being checked', async () => {
    let admit: (() => void) | undefined;
    const slow: Authenticator = { authenticate: (md) => new Promise((resolve) => { admit = () => resolve(nodes.authenticate(md)); }) };
    const d = new DiscoveryServer(slow);
    d.update(model());
    const call = open(d, TOKENS['node-1']);
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
    call.emit('cancelled');
    admit!();
    await new Promise((r) => setImmediate(r));
    await nodes.authenticate(call.metadata);
    expect(d.status()).toEqual([]);
    expect(call.written).toEqual([]);
  });

  it('refuses a second Subscribe sent before the first is authenticated, and keeps a NACK\'s error within bounds', async () => {
    const d = new DiscoveryServer(credentials);
    d.update(model());
    const call = open(d, TOKENS['node-1']);
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
    expect(call.status).toEqual({ code: grpc.status.FAILED_PRECONDITION, details: 'already subscribed on this stream' });

    const ok = open(d, TOKENS['node-2']);
    ok.emit('data', { subscribe: { node: 'node-2', kind: 'node-agent', name: '', last_version: 'x'.repeat(100_000) } });
    await expect.poll(() => ok.written.length).toBe(1);
    ok.emit('data', { nack: { version: ok.written[0]!.version, error: 'e'.repeat(1_000_000) } });
    const nack = d.status().find((s) => s.node === 'node-2')!.lastNack!;
    expect(nack.error).toBe(`${'e'.repeat(MAX_NACK_ERROR)}… (${1_000_000 - MAX_NACK_ERROR} more characters)`);
  });

  it('holds back versions from a subscriber that answers nothing, and sends the latest as one at its next ACK', async () => {
    const d = new DiscoveryServer(credentials);
    d.update(model());
    const call = open(d, TOKENS['node-1']);
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
    await expect.poll(() => call.written.length).toBe(1);
    for (let i = 0; i < 50; i++) d.update(model([...PODS, pod(`flood-${i}`, 'node-1', `10.244.9.${i + 2}`, { app: 'users' }, 'users')]));
    expect(call.written).toHaveLength(MAX_INFLIGHT);
    call.emit('data', { ack: { version: call.written[1]!.version } });
    expect(call.written).toHaveLength(MAX_INFLIGHT + 1);
    expect(call.written.at(-1)!.version).toBe(d.version);
  });

  it('keeps at most a few streams per subscriber: a newer one closes the oldest', async () => {
    const d = new DiscoveryServer(credentials);
    d.update(model());
    const calls = [0, 1, 2].map(() => open(d, TOKENS['node-1']));
    for (const c of calls) {
      c.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
      await expect.poll(() => c.written.length).toBe(1);
    }
    expect(calls[0]!.status).toEqual({ code: grpc.status.RESOURCE_EXHAUSTED, details: `replaced by a newer stream of the same node-agent: at most ${MAX_STREAMS['node-agent']} at once` });
    expect(calls.slice(1).map((c) => c.status)).toEqual([undefined, undefined]);
    expect(d.status()).toHaveLength(MAX_STREAMS['node-agent']);
  });

  it('counts only answers to versions it sent: repeated and made-up ACKs and NACKs change nothing', async () => {
    const d = new DiscoveryServer(credentials);
    d.update(model());
    let changes = 0;
    d.onStatus = () => { changes++; };
    const call = open(d, TOKENS['node-1']);
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '' } });
    await expect.poll(() => call.written.length).toBe(1);
    const sent = call.written[0]!.version;
    call.emit('data', { ack: { version: sent } });
    const after = changes;
    for (let i = 0; i < 1000; i++) {
      call.emit('data', { ack: { version: sent } });
      call.emit('data', { ack: { version: `made-up-${i}` } });
      call.emit('data', { nack: { version: `made-up-${i}`, error: 'noise' } });
    }
    expect(changes).toBe(after);
    expect(d.status()[0]).toEqual({ node: 'node-1', kind: 'node-agent', name: '', lastAck: sent });
    expect(call.written).toHaveLength(1);
  });
});
