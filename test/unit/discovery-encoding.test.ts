/**
 * The discovery stream's cost at scale, behaviour kept: compressed parts negotiated by the
 * subscriber (Subscribe.accept_encoding), so that an older agent that does not ask gets plain
 * parts and a new agent reads an older controller's plain parts; one compression per part shared
 * by every subscriber; deltas applied alike either way, in place and undone when refused; a
 * payload that inflates beyond what one message may carry refused (NACK) without ever being held
 * whole; and an unchanged pod's Workload and encoding reused, with the same model and deltas.
 */
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DiscoveryClient, DiscoveryServer, discoveryService, MAX_MESSAGE_BYTES, MIN_DEFLATE_BYTES, openPart, PAYLOAD_ENCODING, partsOf, responseCodec, viewFor, wireOf,
  type WireResource, type WireResponse,
} from '../../src/discovery/discovery.js';
import { buildModel, type MeshModel, type PodInfo } from '../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../../src/identity/ca-server.js';
import type { Resource, ServiceResource } from '../../src/kube/manifests.js';
import { until } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-enc-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const auth = new BootstrapTokenAuthenticator({ 'node-1': 'one', 'node-2': 'two' });

function model(pods: number, revision = 0): MeshModel {
  const ns = { apiVersion: 'v1', kind: 'Namespace', meta: { name: 'enc', namespace: '', labels: { 'ambit.dev/dataplane-mode': 'ambient' }, annotations: {} }, source: { file: 'enc', doc: 1 }, raw: {} } as Resource;
  const services = Array.from({ length: 10 }, (_, i): ServiceResource => ({
    apiVersion: 'v1', kind: 'Service', meta: { name: `svc-${i}`, namespace: 'enc', labels: {}, annotations: {} }, source: { file: 'enc', doc: i + 2 }, raw: {},
    spec: { type: 'ClusterIP', clusterIP: `10.96.0.${i + 1}`, selector: { app: `svc-${i}` }, ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }] },
  }));
  const list: PodInfo[] = Array.from({ length: pods }, (_, i) => ({
    uid: `pod-${i}`, namespace: 'enc', name: `pod-${i}`, node: `node-${(i % 2) + 1}`, ip: `10.244.${Math.floor(i / 250)}.${(i % 250) + 2}`,
    labels: { app: `svc-${i % 10}`, ...(i === 0 ? { revision: String(revision) } : {}) },
    spec: { serviceAccountName: `sa-${i % 10}`, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
  }));
  return buildModel({ resources: [ns, ...services], pods: list }, 'cluster.local');
}

/** What a node agent should hold for a model, as key → JSON. */
const expected = (m: MeshModel) => new Map([...viewFor(m, 'node-agent')].map(([k, v]) => [k, JSON.stringify(v.value)]));
const held = (r: ReadonlyMap<string, WireResource>) => new Map([...r].map(([k, v]) => [k, v.json]));

describe('compressed parts, as bytes', () => {
  const resources: WireResource[] = Array.from({ length: 3000 }, (_, i) => ({ key: `workload/pod-${i}`, type: 'workload', json: JSON.stringify({ uid: `pod-${i}`, identity: 'spiffe://cluster.local/ns/enc/sa/x', labels: { app: `svc-${i % 10}` } }) }));
  const parts = partsOf({ version: 'v-1', full: true, resources, removed: ['workload/gone'] }, 64 * 1024);
  const codec = responseCodec();

  it('compresses each part once, shares the bytes, and opens to the same part', () => {
    expect(parts.length).toBeGreaterThan(2);
    const packed = wireOf(parts, PAYLOAD_ENCODING);
    expect(wireOf(parts, PAYLOAD_ENCODING)).toBe(packed);
    const plain = wireOf(parts);
    expect(plain).not.toBe(packed);
    expect(packed.reduce((n, b) => n + b.length, 0) * 4).toBeLessThan(plain.reduce((n, b) => n + b.length, 0));
    packed.forEach((bytes, i) => {
      const wire = codec.responseDeserialize(bytes);
      // A part under MIN_DEFLATE_BYTES (the last one here may be) goes plain: its resources as they are.
      const small = codec.responseSerialize({ resources: parts[i]!.resources, removed: parts[i]!.removed }).length < MIN_DEFLATE_BYTES;
      expect(wire).toMatchObject({ version: 'v-1', full: true, more: i < parts.length - 1, encoding: small ? '' : PAYLOAD_ENCODING, ...(small ? {} : { resources: [], removed: [] }) });
      expect(openPart(wire)).toMatchObject({ version: 'v-1', full: true, more: i < parts.length - 1, resources: parts[i]!.resources, removed: parts[i]!.removed });
    });
    expect(codec.responseDeserialize(packed[0]!).encoding).toBe(PAYLOAD_ENCODING);
    // A one-pod delta is a few hundred bytes: plain, even to a subscriber that reads payloads.
    const [delta] = wireOf(partsOf({ version: 'v-2', full: false, resources: resources.slice(0, 1), removed: [] }), PAYLOAD_ENCODING);
    expect(codec.responseDeserialize(delta!)).toMatchObject({ encoding: '', resources: resources.slice(0, 1) });
    // Plain bytes are the message an older agent decodes, no payload.
    expect(codec.responseDeserialize(plain[0]!)).toMatchObject({ encoding: '', resources: parts[0]!.resources, removed: ['workload/gone'] });
  });

  it('refuses a payload that inflates beyond one message, an unknown encoding, and bytes that are not zlib', () => {
    const huge = codec.responseSerialize({ resources: [{ key: 'workload/x', type: 'workload', json: 'a'.repeat(MAX_MESSAGE_BYTES + 1) }], removed: [] });
    const bomb = deflateSync(huge, { level: 9 });
    // A zip bomb: a few KB on the wire, more than 16 MiB once inflated.
    expect(bomb.length).toBeLessThan(64 * 1024);
    const part = (encoding: string, payload: Buffer): WireResponse => ({ version: 'v-2', full: true, resources: [], removed: [], more: false, encoding, payload });
    expect(() => openPart(part(PAYLOAD_ENCODING, bomb))).toThrow(`version v-2: payload inflates to more than ${MAX_MESSAGE_BYTES} bytes (the most one message may carry)`);
    // The bound is the subscriber's: just under it is taken.
    const fits = codec.responseSerialize({ resources: [{ key: 'workload/x', type: 'workload', json: 'a'.repeat(1000) }], removed: [] });
    expect(openPart(part(PAYLOAD_ENCODING, deflateSync(fits)), fits.length).resources[0]!.json).toBe('a'.repeat(1000));
    expect(() => openPart(part(PAYLOAD_ENCODING, deflateSync(fits)), fits.length - 1)).toThrow(`payload inflates to more than ${fits.length - 1} bytes`);
    expect(() => openPart(part('br', bomb))).toThrow('version v-2: payload encoding "br" unknown (this subscriber reads deflate)');
    expect(() => openPart(part(PAYLOAD_ENCODING, Buffer.from('not zlib at all')))).toThrow(/^version v-2: payload is not deflate data: /);
  });
});

describe('one pod\'s change costs one workload', () => {
  const ns = (labels: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Namespace', meta: { name: 'enc', namespace: '', labels, annotations: {} }, source: { file: 'enc', doc: 1 }, raw: {} }) as Resource;
  const podOf = (i: number, extra: Record<string, string> = {}): PodInfo => ({
    uid: `pod-${i}`, namespace: 'enc', name: `pod-${i}`, node: 'node-1', ip: `10.244.0.${i + 2}`, labels: { app: 'a', ...extra },
    spec: { serviceAccountName: 'sa', restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
  });

  it('reuses the Workload of a pod object seen before, and builds anew what changed (the pod, its namespace\'s labels, the trust domain)', () => {
    const ambient = ns({ 'ambit.dev/dataplane-mode': 'ambient' });
    const pods = [podOf(0), podOf(1)];
    const first = buildModel({ resources: [ambient], pods }, 'cluster.local');
    const second = buildModel({ resources: [ambient], pods: [podOf(0, { v: '2' }), pods[1]!] }, 'cluster.local');
    expect(second.workloads[1]).toBe(first.workloads[1]);
    expect(second.workloads[0]).not.toBe(first.workloads[0]);
    expect(second.workloads[0]!.labels).toEqual({ app: 'a', v: '2' });
    // The same pod objects in a namespace relabelled (a new Namespace object): built anew, and now outside the mesh.
    const third = buildModel({ resources: [ns({})], pods }, 'cluster.local');
    expect(third.workloads[1]).not.toBe(first.workloads[1]);
    expect(third.workloads.map((w) => w.enrolled)).toEqual([false, false]);
    const other = buildModel({ resources: [ambient], pods }, 'example.org');
    expect(other.workloads[1]!.identity).toBe('spiffe://example.org/ns/enc/sa/sa');
    // Whatever was reused, the model is the one built from fresh objects.
    for (const [m, resources, trust, list] of [[second, [ambient], 'cluster.local', [podOf(0, { v: '2' }), podOf(1)]], [third, [ns({})], 'cluster.local', [podOf(0), podOf(1)]], [other, [ambient], 'example.org', [podOf(0), podOf(1)]]] as const) {
      expect(m).toEqual(buildModel({ resources: structuredClone([...resources]), pods: structuredClone([...list]) }, trust));
    }
  });

  it('sends a delta of what changed, whether the model reuses objects or rebuilds them all', async () => {
    const discovery = new DiscoveryServer(auth);
    const ambient = ns({ 'ambit.dev/dataplane-mode': 'ambient' });
    const pods = Array.from({ length: 20 }, (_, i) => podOf(i));
    const writes: WireResponse[] = [];
    const call = Object.assign(new EventEmitter(), {
      metadata: (() => { const md = new grpc.Metadata(); md.set('authorization', 'Bearer one'); return md; })(),
      getPeer: () => '10.0.0.9:5555', end: () => undefined,
      write: (b: Buffer) => { writes.push(openPart(responseCodec().responseDeserialize(b))); return true; },
    });
    discovery.update(buildModel({ resources: [ambient], pods }, 'cluster.local'));
    (discovery.implementation().Stream as (c: unknown) => void)(call);
    call.emit('data', { subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '', accept_encoding: [PAYLOAD_ENCODING] } });
    await until('the snapshot', () => writes.length === 1, { timeout: 5_000, interval: 5 });
    const ack = () => call.emit('data', { ack: { version: writes.at(-1)!.version } });
    ack();
    // Reused objects, one pod changed.
    discovery.update(buildModel({ resources: [ambient], pods: [podOf(3, { v: '2' }), ...pods.filter((_, i) => i !== 3)] }, 'cluster.local'));
    expect(writes).toHaveLength(2);
    expect(writes[1]!.resources.map((r) => r.key)).toEqual(['workload/pod-3']);
    ack();
    // Every object new but equal, one pod changed back: only that one goes.
    discovery.update(buildModel({ resources: [ambient], pods: structuredClone(pods) }, 'cluster.local'));
    expect(writes).toHaveLength(3);
    expect(writes[2]!.resources.map((r) => [r.key, JSON.parse(r.json).labels])).toEqual([['workload/pod-3', { app: 'a' }]]);
    ack();
    // Nothing changed: nothing is sent.
    discovery.update(buildModel({ resources: [ambient], pods }, 'cluster.local'));
    expect(writes).toHaveLength(3);
  });
});

describe('compressed parts on the stream', () => {
  let ca: CertificateAuthority;
  const servers: CaServer[] = [];
  const clients: DiscoveryClient[] = [];

  beforeAll(async () => {
    ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  });
  afterAll(() => {
    for (const c of clients) c.close();
    for (const s of servers) s.forceClose();
  });

  const serve = async (implementation: grpc.UntypedServiceImplementation): Promise<number> => {
    const server = await CaServer.start({ ca, authenticator: auth, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0, services: [{ definition: discoveryService().service, implementation }] });
    servers.push(server);
    return server.port;
  };

  /** The first message a raw stream gets after its Subscribe (an older agent leaves accept_encoding out). */
  const firstMessage = async (port: number, subscribe: Record<string, unknown>): Promise<WireResponse> => {
    const Service = discoveryService();
    const client = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca.trustBundle().join(''))), { 'grpc.ssl_target_name_override': 'localhost', 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES });
    const md = new grpc.Metadata();
    md.set('authorization', 'Bearer one');
    const call = (client as unknown as { Stream(md: grpc.Metadata): grpc.ClientDuplexStream<unknown, WireResponse> }).Stream(md);
    call.on('error', () => undefined);
    try {
      return await new Promise<WireResponse>((resolve) => {
        call.once('data', resolve);
        call.write({ subscribe: { node: 'node-1', kind: 'node-agent', name: '', last_version: '', ...subscribe } });
      });
    } finally {
      call.cancel();
      client.close();
    }
  };

  it('sends compressed parts only to a subscriber that asked, plain ones to an older agent', async () => {
    const discovery = new DiscoveryServer(auth);
    discovery.update(model(200));
    const port = await serve(discovery.implementation());
    const packed = await firstMessage(port, { accept_encoding: [PAYLOAD_ENCODING] });
    expect(packed.encoding).toBe(PAYLOAD_ENCODING);
    expect(packed.resources).toEqual([]);
    expect(openPart(packed).resources.length).toBe(200 + 10 + 1);
    const old = await firstMessage(port, {});
    expect(old.encoding).toBe('');
    expect(old.payload?.length ?? 0).toBe(0);
    expect(old.resources.length).toBe(200 + 10 + 1);
    // An encoding this controller does not write is not used.
    expect((await firstMessage(port, { accept_encoding: ['br'] })).encoding).toBe('');
    expect(new Map(openPart(packed).resources.map((r) => [r.key, r.json]))).toEqual(new Map(old.resources.map((r) => [r.key, r.json])));
  });

  it('brings a compressed and a plain subscriber to the same state, through snapshots and deltas', async () => {
    const discovery = new DiscoveryServer(auth);
    let m = model(300);
    discovery.update(m);
    const port = await serve(discovery.implementation());
    const connect = (node: string, token: string, compressed: boolean) => {
      const c = new DiscoveryClient({ address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token, node, kind: 'node-agent', compressed, apply: () => undefined });
      clients.push(c);
      return c;
    };
    const packed = connect('node-1', 'one', true);
    const plain = connect('node-2', 'two', false);
    await Promise.all([packed.ready, plain.ready]);
    expect(held(packed.resources)).toEqual(expected(m));
    expect(held(plain.resources)).toEqual(expected(m));
    // A changed pod, pods gone (removed keys) and pods added.
    for (const next of [model(300, 1), model(250, 2), model(320, 3)]) {
      m = next;
      discovery.update(m);
      await until('both apply the new version', () => packed.appliedVersion === discovery.version && plain.appliedVersion === discovery.version, { timeout: 10_000, interval: 10 });
      expect(held(packed.resources)).toEqual(expected(m));
      expect(held(plain.resources)).toEqual(expected(m));
    }
  });

  it('reads an older controller\'s plain parts although it asked for compressed ones', async () => {
    const asked: unknown[] = [];
    const port = await serve({
      Stream: (call: grpc.ServerDuplexStream<{ subscribe?: { accept_encoding: string[] } }, WireResponse>) => {
        call.on('data', (req) => {
          if (!req.subscribe) return;
          asked.push(req.subscribe.accept_encoding);
          // What a controller from before the field writes: it never saw accept_encoding.
          call.write({ version: 'old-1', full: true, resources: [{ key: 'meshconfig/mesh', type: 'meshconfig', json: '{"outboundTrafficPolicy":"ALLOW_ANY"}' }], removed: [], more: false });
        });
      },
    });
    const applied: string[] = [];
    const c = new DiscoveryClient({ address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: 'one', node: 'node-1', kind: 'node-agent', apply: (_r, v) => { applied.push(v); } });
    clients.push(c);
    await c.ready;
    expect(asked).toEqual([[PAYLOAD_ENCODING]]);
    expect(applied).toEqual(['old-1']);
    expect(c.resources.get('meshconfig/mesh')!.json).toBe('{"outboundTrafficPolicy":"ALLOW_ANY"}');
  });

  it('undoes a delta its apply refuses: the state is the last good one, and the next delta builds on it', async () => {
    const res = (key: string, json: string): WireResource => ({ key, type: 'workload', json });
    const port = await serve({
      Stream: (call: grpc.ServerDuplexStream<{ subscribe?: unknown; ack?: { version: string }; nack?: { version: string } }, WireResponse>) => {
        call.on('data', (req) => {
          if (req.subscribe) call.write({ version: 'v1', full: true, resources: [res('workload/a', '"a1"'), res('workload/b', '"b1"'), res('workload/c', '"c1"')], removed: [], more: false });
          // v2 changes a, adds d, removes b (and a key it never had): refused.
          if (req.ack?.version === 'v1') call.write({ version: 'v2', full: false, resources: [res('workload/a', '"a2"'), res('workload/d', '"bad"')], removed: ['workload/b', 'workload/zz'], more: false });
          if (req.nack?.version === 'v2') call.write({ version: 'v3', full: false, resources: [res('workload/c', '"c3"')], removed: [], more: false });
        });
      },
    });
    const applied: { version: string; state: [string, string][] }[] = [];
    const c = new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: 'one', node: 'node-1', kind: 'node-agent',
      apply: (r, version) => {
        if (r.has('workload/d')) throw new Error('workload/d: cannot enroll');
        applied.push({ version, state: [...r].map(([k, v]): [string, string] => [k, v.json]).sort((x, y) => x[0].localeCompare(y[0])) });
      },
    });
    clients.push(c);
    await until('v3 applied', () => c.appliedVersion === 'v3', { timeout: 5_000, interval: 10 });
    expect(applied).toEqual([
      { version: 'v1', state: [['workload/a', '"a1"'], ['workload/b', '"b1"'], ['workload/c', '"c1"']] },
      { version: 'v3', state: [['workload/a', '"a1"'], ['workload/b', '"b1"'], ['workload/c', '"c3"']] },
    ]);
  });

  it('NACKs a version whose part inflates beyond the bound, drops its other parts, and takes the next version', async () => {
    const codec = responseCodec();
    const bomb = deflateSync(codec.responseSerialize({ resources: [{ key: 'workload/x', type: 'workload', json: 'a'.repeat(MAX_MESSAGE_BYTES + 1) }], removed: [] }), { level: 9 });
    const good = (resources: WireResource[]) => deflateSync(codec.responseSerialize({ resources, removed: [] }));
    const mesh = { key: 'meshconfig/mesh', type: 'meshconfig', json: '{"outboundTrafficPolicy":"REGISTRY_ONLY"}' };
    const answers: unknown[] = [];
    const port = await serve({
      Stream: (call: grpc.ServerDuplexStream<{ subscribe?: unknown; ack?: { version: string }; nack?: { version: string; error: string } }, WireResponse>) => {
        call.on('data', (req) => {
          if (req.subscribe) {
            // A hostile controller: the bomb in the middle of a version of three parts.
            call.write({ version: 'evil-1', full: true, resources: [], removed: [], more: true, encoding: PAYLOAD_ENCODING, payload: good([mesh]) });
            call.write({ version: 'evil-1', full: true, resources: [], removed: [], more: true, encoding: PAYLOAD_ENCODING, payload: bomb });
            call.write({ version: 'evil-1', full: true, resources: [], removed: [], more: false, encoding: PAYLOAD_ENCODING, payload: good([]) });
            return;
          }
          answers.push(req.ack ?? req.nack);
          if (req.nack) call.write({ version: 'good-2', full: true, resources: [], removed: [], more: false, encoding: PAYLOAD_ENCODING, payload: good([mesh]) });
        });
      },
    });
    const applied: { version: string; keys: string[] }[] = [];
    const c = new DiscoveryClient({ address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: 'one', node: 'node-1', kind: 'node-agent', apply: (r, version) => { applied.push({ version, keys: [...r.keys()] }); } });
    clients.push(c);
    await c.ready;
    await until('the ACK of good-2', () => answers.length === 2, { timeout: 5_000, interval: 10 });
    expect(answers).toEqual([
      { version: 'evil-1', error: `version evil-1: payload inflates to more than ${MAX_MESSAGE_BYTES} bytes (the most one message may carry)` },
      { version: 'good-2' },
    ]);
    expect(applied).toEqual([{ version: 'good-2', keys: ['meshconfig/mesh'] }]);
    expect(c.connected).toBe(true);
  });
});
