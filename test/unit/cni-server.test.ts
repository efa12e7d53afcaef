/**
 * The agent's side of the CNI plugin's protocol, against the stand-in API server and a recording
 * target: enrollment and release by sandbox, and every kind of hostile client on the socket —
 * garbage, wrong types, bad names and paths, huge, slow and too many requests — answered with an
 * error naming what was wrong, never a crash, and the server still serving afterwards.
 */
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import type { Workload } from '../../src/config/model.js';
import { CniServer, parseCniArgs, resultIps, type CniLimits, type CniServerOptions, type CniTarget } from '../../src/node/cni-server.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-cni-server-'));
const socketPath = join(dir, 'cni.sock');
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
]);
const enrolled: { w: Workload; netns: string; sandbox: string }[] = [];
const released: { uid: string | undefined; sandbox: string; netns: string }[] = [];
let refuse: string | undefined;
/** While set, enrollPod never finishes (an enrollment stuck behind something). */
let stall = false;
let server: CniServer;
const LIMITS: Partial<CniLimits> = { requestTimeoutMs: 400, handleTimeoutMs: 600, maxConnections: 8, maxBufferedBytes: 4 * 1024 * 1024 };

interface Answer { code: number; body: string }

/** One exchange as the plugin does it: the request, a half-close, the answer up to the agent's close. */
function call(request: unknown, path = socketPath): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let answer = '';
    socket.on('data', (c: Buffer) => { answer += c.toString(); });
    socket.on('error', reject);
    socket.on('end', () => resolve(split(answer)));
    socket.end(typeof request === 'string' || Buffer.isBuffer(request) ? request : `${JSON.stringify(request)}\n`);
  });
}

function split(answer: string): Answer {
  const nl = answer.indexOf('\n');
  return { code: nl < 0 ? NaN : Number(answer.slice(0, nl)), body: answer.slice(nl + 1) };
}

/** A client that writes `chunks` (not ending its side) and collects whatever answer comes, whatever errors its writes meet. */
function open(chunks: Buffer[] = [], path = socketPath): { socket: Socket; answer: Promise<Answer> } {
  const socket = connect(path);
  let answer = '';
  socket.on('data', (c: Buffer) => { answer += c.toString(); });
  socket.on('error', () => { /* EPIPE once the agent has refused and closed */ });
  const done = new Promise<Answer>((resolve) => socket.on('close', () => resolve(split(answer))));
  for (const c of chunks) socket.write(c);
  return { socket, answer: done };
}

const errorOf = (a: Answer): Record<string, unknown> => {
  expect(a.code, a.body).toBe(1);
  return JSON.parse(a.body) as Record<string, unknown>;
};

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1' }], ips: [{ address: '10.244.1.7/24', gateway: '10.244.1.1', interface: 0 }, { address: 'fd00::7/64', interface: 0 }] };
const request = (command: string, ns: string, name: string, extra: Record<string, unknown> = {}) => ({
  command, containerId: `c-${name}`, netns: '/var/run/netns/cni-1', ifname: 'eth0',
  args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=c-${name};K8S_POD_UID=uid-${name}`,
  config: { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', prevResult }, ...extra,
});

/** The server is alive and well: a meshed pod's ADD still enrolls it. */
async function stillServing(path = socketPath): Promise<void> {
  const before = enrolled.length;
  const answer = await call(request('ADD', 'shop', 'cart'), path);
  expect(answer.code, answer.body).toBe(0);
  expect(enrolled.length).toBe(before + 1);
}

const target: CniTarget = {
  enrollPod: async (w, netns, sandbox) => {
    if (refuse) throw new Error(refuse);
    if (stall) await new Promise(() => { /* never */ });
    enrolled.push({ w, netns, sandbox });
  },
  releasePod: async (uid, sandbox, netns) => { released.push({ uid, sandbox, netns }); },
};

/** Runs body against another server (its own socket) with these options. */
async function withServer(opts: Partial<CniServerOptions>, body: (path: string) => Promise<void>): Promise<void> {
  const path = join(dir, `s${Math.random().toString(36).slice(2, 8)}.sock`);
  const other = new CniServer({ path, client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', target, ...opts });
  await other.start();
  try {
    await body(path);
  } finally {
    other.close(true);
  }
}

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
  // A previous agent's socket file, left in place by its restart: replaced, never removed first;
  // and the staging directory of one killed while binding.
  writeFileSync(socketPath, 'stale');
  mkdirSync(join(dir, '.ambit-cni-Xy12ab'));
  writeFileSync(join(dir, '.ambit-cni-Xy12ab', 's'), '');
  server = new CniServer({
    path: socketPath, client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', hostProc: '/host/proc', limits: LIMITS, target,
  });
  // A umask that would leave the socket open to everyone: the mode must not depend on it.
  const umask = process.umask(0);
  try {
    await server.start();
  } finally {
    process.umask(umask);
  }
});

afterAll(async () => {
  server.close(true);
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('CniServer', () => {
  it('creates its socket mode 0600 whatever the umask, over the old file, leaving no staging behind (nor an older one)', () => {
    const stats = statSync(socketPath);
    expect(stats.isSocket()).toBe(true);
    expect(stats.mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(['cni.sock']);
  });

  it('makes a socket directory others could write to (and swap the socket in) 0755; a path too long for a socket is an error naming it', async () => {
    const shared = join(dir, 'shared');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const other = new CniServer({ path: join(shared, 'cni.sock'), client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', target });
    await other.start();
    try {
      expect(statSync(shared).mode & 0o777).toBe(0o755);
      expect(statSync(join(shared, 'cni.sock')).mode & 0o777).toBe(0o600);
    } finally {
      other.close(true);
    }
    const deep = join(dir, 'd'.repeat(100), 'cni.sock');
    await expect(new CniServer({ path: deep, client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', target }).start())
      .rejects.toThrow(/the path is too long for a unix socket .* use a shorter --cni-socket/);
    expect(readdirSync(join(dir, 'd'.repeat(100)))).toEqual([]);
  });

  it('ADD of a meshed pod enrolls it in its sandbox with its API identity and the primary plugin\'s addresses (both families), and passes the result on', async () => {
    const answer = await call(request('ADD', 'shop', 'cart'));
    expect(answer.code, answer.body).toBe(0);
    expect(JSON.parse(answer.body)).toEqual(prevResult);
    expect(enrolled.at(-1)).toMatchObject({
      netns: '/var/run/netns/cni-1',
      sandbox: 'c-cart',
      w: { uid: 'uid-cart', name: 'cart', workload: 'cart', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/cart', ips: ['10.244.1.7', 'fd00::7'], node: 'node-a', enrolled: true, ports: { http: 8080 } },
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
    expect(errorOf(unknown)).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: expect.stringContaining('pod shop/ghost') });
    const stale = await call({ ...request('ADD', 'shop', 'cart'), args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=uid-older' });
    expect(errorOf(stale)).toMatchObject({ code: 11, msg: expect.stringMatching(/not the sandbox's/) });
    refuse = 'no certificate for spiffe://cluster.local/ns/shop/sa/cart';
    const failed = await call(request('ADD', 'shop', 'cart'));
    refuse = undefined;
    expect(errorOf(failed)).toMatchObject({ code: 11, msg: expect.stringMatching(/could not enroll shop\/cart: no certificate/) });
  });

  it('refuses a result without an address (the plugin placed first in the chain) and a malformed request', async () => {
    const none = await call({ ...request('ADD', 'shop', 'cart'), config: { cniVersion: '0.4.0', prevResult: { cniVersion: '0.4.0', ips: [] } } });
    expect(errorOf(none)).toMatchObject({ cniVersion: '0.4.0', code: 100, msg: expect.stringMatching(/after the primary CNI plugin/) });
    const bad = await call('{not json\n');
    expect(errorOf(bad)).toMatchObject({ code: 100, msg: expect.stringMatching(/malformed request/) });
  });

  it('passes through an invocation that is not for a Kubernetes pod; DEL hands over the sandbox, with or without the pod\'s uid', async () => {
    expect(await call({ ...request('ADD', 'x', 'y'), args: '' })).toEqual({ code: 0, body: JSON.stringify(prevResult) });
    expect(await call(request('DEL', 'shop', 'cart'))).toEqual({ code: 0, body: '' });
    expect(released.at(-1)).toEqual({ uid: 'uid-cart', sandbox: 'c-cart', netns: '/var/run/netns/cni-1' });
    expect(await call({ ...request('DEL', 'plain', 'opted'), netns: '/proc/77/ns/net', args: 'K8S_POD_NAMESPACE=plain;K8S_POD_NAME=opted' })).toEqual({ code: 0, body: '' });
    expect(released.at(-1)).toEqual({ uid: undefined, sandbox: 'c-opted', netns: '/host/proc/77/ns/net' });
    // The runtime may no longer have the netns at DEL.
    expect(await call({ ...request('DEL', 'plain', 'opted'), netns: '' })).toEqual({ code: 0, body: '' });
    expect(released.at(-1)).toEqual({ uid: 'uid-opted', sandbox: 'c-opted', netns: '' });
  });

  it('parses CNI_ARGS and result addresses', () => {
    expect(parseCniArgs('IgnoreUnknown=1;K8S_POD_NAME=a=b;;x')).toEqual({ IgnoreUnknown: '1', K8S_POD_NAME: 'a=b' });
    expect(resultIps(prevResult)).toEqual(['10.244.1.7', 'fd00::7']);
    expect(resultIps({ ips: 'no' })).toEqual([]);
  });
});

describe('CniServer under hostile input', () => {
  it('refuses requests of the wrong shape, naming the field, and keeps serving', async () => {
    const cases: [unknown, RegExp][] = [
      ['[1,2,3]\n', /not a JSON object/],
      ['"ADD"\n', /not a JSON object/],
      ['\n', /not JSON/],
      [Buffer.from([0xff, 0xfe, 0x7b, 0x00, 0x0a]), /not JSON/],
      [`${'['.repeat(200_000)}${']'.repeat(200_000)}`, /not a JSON object|not JSON/],
      [{ ...request('ADD', 'shop', 'cart'), args: 42 }, /"args" must be a string/],
      [{ ...request('ADD', 'shop', 'cart'), command: null }, /"command" must be a string/],
      [{ ...request('DEL', 'shop', 'cart'), containerId: ['c'] }, /"containerId" must be a string/],
      [{ ...request('ADD', 'shop', 'cart'), config: 'x' }, /"config" must be a JSON object/],
      [{ ...request('ADD', 'shop', 'cart'), netns: undefined }, /"netns" must be a string/],
    ];
    for (const [input, msg] of cases) {
      const answer = await call(input);
      expect(errorOf(answer), String(input).slice(0, 40)).toMatchObject({ code: 100, msg: expect.stringMatching(msg) });
    }
    await stillServing();
  });

  it('refuses bad sandboxes, names, paths and addresses before reading the API server or enrolling anything', async () => {
    const before = enrolled.length;
    const requests = api.requests.length;
    const cart = request('ADD', 'shop', 'cart');
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ...cart, containerId: '' }, /invalid container ID "": CNI_CONTAINERID must be/],
      [{ ...cart, containerId: '../../etc' }, /invalid container ID/],
      [{ ...request('DEL', 'shop', 'cart'), containerId: 'a b' }, /invalid container ID "a b"/],
      [{ ...cart, args: 'K8S_POD_NAMESPACE=..;K8S_POD_NAME=cart' }, /invalid K8S_POD_NAMESPACE "\.\.": not a namespace name/],
      [{ ...cart, args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=..' }, /invalid K8S_POD_NAME "\.\.": not a pod name/],
      [{ ...cart, args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart%2F..%2F..' }, /invalid K8S_POD_NAME/],
      [{ ...cart, args: `K8S_POD_NAMESPACE=shop;K8S_POD_NAME=${'a'.repeat(254)}` }, /invalid K8S_POD_NAME/],
      [{ ...cart, args: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart;K8S_POD_UID=a/b' }, /invalid K8S_POD_UID "a\/b"/],
      [{ ...cart, netns: 'var/run/netns/x' }, /invalid netns "var\/run\/netns\/x": CNI_NETNS must be an absolute, normalized path/],
      [{ ...cart, netns: '/proc/1/../self/ns/net' }, /invalid netns/],
      [{ ...cart, netns: '' }, /invalid netns ""/],
      [{ ...request('DEL', 'shop', 'cart'), netns: 'relative' }, /invalid netns "relative"/],
      [{ ...cart, config: { cniVersion: '1.0.0', prevResult: { ips: [{ address: 'not-an-ip/24' }] } } }, /has "not-an-ip", not an IP address/],
      [{ ...cart, config: { cniVersion: '1.0.0', prevResult: { ips: Array.from({ length: 9 }, (_, i) => ({ address: `10.0.0.${i}/24` })) } } }, /9 addresses .* at most 8/],
    ];
    for (const [input, msg] of cases) {
      const answer = await call(input);
      expect(errorOf(answer), JSON.stringify(input).slice(0, 120)).toMatchObject({ code: 100, msg: expect.stringMatching(msg) });
    }
    expect(enrolled.length).toBe(before);
    expect(api.requests.length).toBe(requests);
    await stillServing();
  });

  it('never enrolls the agent\'s own (the host\'s) network namespace as a pod', async () => {
    const before = enrolled.length;
    await withServer({}, async (path) => {
      for (const netns of ['/proc/self/ns/net', `/proc/${process.pid}/ns/net`]) {
        const answer = await call(request('ADD', 'shop', 'cart', { netns }), path);
        expect(errorOf(answer)).toMatchObject({ code: 100, msg: `netns ${netns} is the node agent's own network namespace (the host's): not a pod sandbox` });
      }
    });
    expect(enrolled.length).toBe(before);
  });

  it('refuses a request over 2 MiB without holding it, and keeps serving', async () => {
    const huge = Buffer.alloc(3 * 1024 * 1024, 0x20);
    const { answer } = open([huge]);
    expect(errorOf(await answer)).toMatchObject({ code: 100, msg: 'request too large: over 2097152 bytes' });
    await stillServing();
  });

  it('bounds the bytes held for all clients together: past it, "try again"', async () => {
    await withServer({ limits: { maxBufferedBytes: 4 * 1024 * 1024, requestTimeoutMs: 30_000 } }, async (path) => {
      // Three requests of 1.5 MiB, each under the per-request bound, none finished: whichever
      // client's bytes go past 4 MiB in all is refused.
      const part = Buffer.alloc(1536 * 1024, 0x20);
      const clients = [open([part], path), open([part], path), open([part], path)];
      const answers = clients.map(() => undefined as Answer | undefined);
      clients.forEach((c, i) => void c.answer.then((a) => { answers[i] = a; }));
      await expect.poll(() => answers.filter(Boolean).map((a) => (JSON.parse(a!.body) as { code: number; msg: string })), { timeout: 10_000 })
        .toEqual([{ cniVersion: '1.0.0', code: 11, msg: 'ambit node agent busy: too many request bytes in flight' }]);
      for (const c of clients) c.socket.destroy();
      await Promise.all(clients.map((c) => c.answer));
      // Their bytes are given back: the same again is held, then refused as what it is.
      const again = open([part], path);
      again.socket.end();
      expect(errorOf(await again.answer)).toMatchObject({ code: 100, msg: expect.stringMatching(/not JSON/) });
      await stillServing(path);
    });
  });

  it('cuts off a client that does not finish its request in time, even one trickling bytes', async () => {
    const silent = open();
    const trickle = open([Buffer.from('{')]);
    const timer = setInterval(() => trickle.socket.write(' '), 50);
    try {
      const started = Date.now();
      expect(errorOf(await silent.answer)).toMatchObject({ code: 11, msg: 'request not received in full within 400 ms' });
      expect(errorOf(await trickle.answer)).toMatchObject({ code: 11, msg: 'request not received in full within 400 ms' });
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      clearInterval(timer);
    }
    await stillServing();
  });

  it('answers "try again" past its connection limit, and serves again once they go', async () => {
    const held = Array.from({ length: 8 }, () => open([Buffer.from('{')]));
    await expect.poll(async () => (await call(request('ADD', 'shop', 'cart'))).body, { timeout: 5_000 })
      .toMatch(/busy: 8 CNI requests in progress/);
    for (const h of held) h.socket.destroy();
    await Promise.all(held.map((h) => h.answer));
    await expect.poll(async () => (await call(request('ADD', 'shop', 'cart'))).code, { timeout: 5_000 }).toBe(0);
  });

  it('cuts off a client that does not read its answer, freeing its place', async () => {
    await withServer({ limits: { maxConnections: 1, answerTimeoutMs: 300 } }, async (path) => {
      // A pod outside the mesh: its answer is the primary result, here padded to 1.8 MB, more than the socket buffers hold.
      const big = { ...request('ADD', 'plain', 'other'), config: { cniVersion: '1.0.0', prevResult: { ...prevResult, pad: 'x'.repeat(1_800_000) } } };
      const reader = open([Buffer.from(JSON.stringify(big))], path);
      reader.socket.end();
      reader.socket.pause();
      // Its one place is taken until the agent gives up on it.
      expect(errorOf(await call(request('ADD', 'shop', 'cart'), path))).toMatchObject({ code: 11, msg: 'ambit node agent busy: 1 CNI requests in progress' });
      await expect.poll(async () => (await call(request('ADD', 'shop', 'cart'), path)).code, { timeout: 5_000 }).toBe(0);
      reader.socket.destroy();
    });
  });

  it('answers "try again" when an enrollment does not finish in time', async () => {
    stall = true;
    try {
      const answer = await call(request('ADD', 'shop', 'cart'));
      expect(errorOf(answer)).toMatchObject({ code: 11, msg: 'ADD not done within 600 ms' });
    } finally {
      stall = false;
    }
    await stillServing();
  });
});
