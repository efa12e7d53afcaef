/** The agent's side of the CNI plugin's protocol, against the stand-in API server and a recording target. */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/control/kube/client.js';
import type { Workload } from '../../src/control/model.js';
import { CniServer, parseCniArgs, resultIps } from '../../src/node/cni-server.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-cni-server-'));
const socketPath = join(dir, 'cni.sock');
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
]);
const enrolled: { w: Workload; netns: string }[] = [];
const released: string[] = [];
let refuse: string | undefined;
let server: CniServer;

function call(request: unknown): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let answer = '';
    socket.on('data', (c: Buffer) => { answer += c.toString(); });
    socket.on('error', reject);
    socket.on('end', () => {
      const nl = answer.indexOf('\n');
      resolve({ code: Number(answer.slice(0, nl)), body: answer.slice(nl + 1) });
    });
    socket.end(typeof request === 'string' ? request : `${JSON.stringify(request)}\n`);
  });
}

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1' }], ips: [{ address: '10.244.1.7/24', gateway: '10.244.1.1', interface: 0 }, { address: 'fd00::7/64', interface: 0 }] };
const request = (command: string, ns: string, name: string, extra: Record<string, unknown> = {}) => ({
  command, containerId: `c-${name}`, netns: '/var/run/netns/cni-1', ifname: 'eth0',
  args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=c-${name};K8S_POD_UID=uid-${name}`,
  config: { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', prevResult }, ...extra,
});

beforeAll(async () => {
  await api.start();
  api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  api.apply('Namespace', { metadata: { name: 'plain' } });
  const pod = (ns: string, name: string, labels: Record<string, string> = {}) => api.apply('Pod', {
    metadata: { name, namespace: ns, uid: `uid-${name}`, labels, ownerReferences: [{ kind: 'ReplicaSet', name: `${name}-7d9f`, controller: true }] },
    spec: { serviceAccountName: name, containers: [{ name: 'c', image: 'x', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: { phase: 'Pending' },
  });
  pod('shop', 'cart', { 'pod-template-hash': '7d9f' });
  pod('plain', 'other');
  pod('plain', 'opted', { 'ambit.dev/dataplane-mode': 'ambient' });
  server = new CniServer({
    path: socketPath, client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', hostProc: '/host/proc',
    target: {
      enrollPod: async (w, netns) => {
        if (refuse) throw new Error(refuse);
        enrolled.push({ w, netns });
      },
      releasePod: async (uid) => { released.push(uid); },
    },
  });
  await server.start();
});

afterAll(async () => {
  server.close(true);
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('CniServer', () => {
  it('ADD of a meshed pod enrolls it with its API identity and the primary plugin\'s address, and passes the result on', async () => {
    const answer = await call(request('ADD', 'shop', 'cart'));
    expect(answer.code, answer.body).toBe(0);
    expect(JSON.parse(answer.body)).toEqual(prevResult);
    expect(enrolled.at(-1)).toMatchObject({
      netns: '/var/run/netns/cni-1',
      w: { uid: 'uid-cart', name: 'cart', workload: 'cart', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/cart', ips: ['10.244.1.7'], node: 'node-a', enrolled: true, ports: { http: 8080 } },
    });
  });

  it('passes a pod outside the mesh through untouched; a pod label opts one in', async () => {
    const before = enrolled.length;
    expect(await call(request('ADD', 'plain', 'other'))).toEqual({ code: 0, body: JSON.stringify(prevResult) });
    expect(enrolled.length).toBe(before);
    expect((await call(request('ADD', 'plain', 'opted'))).code).toBe(0);
    expect(enrolled.at(-1)?.w.name).toBe('opted');
  });

  it('maps a /proc netns path to the host\'s proc', async () => {
    await call(request('ADD', 'shop', 'cart', { netns: '/proc/4242/ns/net' }));
    expect(enrolled.at(-1)?.netns).toBe('/host/proc/4242/ns/net');
  });

  it('answers "try again" (11) when the pod is unknown, is another pod of the same name, or cannot be enrolled', async () => {
    const unknown = await call(request('ADD', 'shop', 'ghost'));
    expect(unknown.code).toBe(1);
    expect(JSON.parse(unknown.body)).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: expect.stringContaining('pod shop/ghost') });
    const stale = await call({ ...request('ADD', 'shop', 'cart'), args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=uid-older' });
    expect(JSON.parse(stale.body)).toMatchObject({ code: 11, msg: expect.stringMatching(/not the sandbox's/) });
    refuse = 'no certificate for spiffe://cluster.local/ns/shop/sa/cart';
    const failed = await call(request('ADD', 'shop', 'cart'));
    refuse = undefined;
    expect(JSON.parse(failed.body)).toMatchObject({ code: 11, msg: expect.stringMatching(/could not enroll shop\/cart: no certificate/) });
  });

  it('refuses a result without an address (the plugin placed first in the chain) and a malformed request', async () => {
    const none = await call({ ...request('ADD', 'shop', 'cart'), config: { cniVersion: '0.4.0', prevResult: { cniVersion: '0.4.0', ips: [] } } });
    expect(none.code).toBe(1);
    expect(JSON.parse(none.body)).toMatchObject({ cniVersion: '0.4.0', code: 100, msg: expect.stringMatching(/after the primary CNI plugin/) });
    const bad = await call('{not json\n');
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.body)).toMatchObject({ code: 100, msg: expect.stringMatching(/malformed request/) });
  });

  it('passes through an invocation that is not for a Kubernetes pod; DEL releases by uid, or by sandbox', async () => {
    expect(await call({ ...request('ADD', 'x', 'y'), args: '' })).toEqual({ code: 0, body: JSON.stringify(prevResult) });
    expect(await call(request('DEL', 'shop', 'cart'))).toEqual({ code: 0, body: '' });
    expect(released.at(-1)).toBe('uid-cart');
    await call(request('ADD', 'plain', 'opted'));
    expect(await call({ ...request('DEL', 'plain', 'opted'), args: 'K8S_POD_NAMESPACE=plain;K8S_POD_NAME=opted' })).toEqual({ code: 0, body: '' });
    expect(released.at(-1)).toBe('uid-opted');
  });

  it('parses CNI_ARGS and result addresses', () => {
    expect(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=a=b;;x')).toEqual({ IgnoreUnknown: '1', K8S_POD_NAME: 'a=b' });
    expect(resultIps(prevResult)).toEqual(['10.244.1.7', 'fd00::7']);
    expect(resultIps({ ips: 'no' })).toEqual([]);
  });
});
