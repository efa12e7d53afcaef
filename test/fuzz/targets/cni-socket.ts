/**
 * The node agent's CNI socket (`CniServer`, the unix socket the `ambit-cni` plugin talks to):
 * request lines shaped as the plugin sends them, with values replaced or removed at random paths
 * (commands, CNI_ARGS, netns paths, prevResult), raw bytes, no newline, several lines. The pods
 * come from the tests' stand-in API server; enrollment is recorded, not done. Every request must
 * get `<code>\n<body>` and the server must go on enrolling a good ADD.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as fc from 'fast-check';
import { KubeClient } from '../../../src/kube/client.js';
import { CniServer, type CniTarget } from '../../../src/node/cni-server.js';
import { FakeApiServer } from '../../helpers/fake-apiserver.js';
import { latin1, sendRaw } from '../gen-http.js';
import { mutateObject } from '../gen-manifests.js';
import { Finding, type FuzzTarget } from '../harness.js';

const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1' }], ips: [{ address: '10.244.1.7/24', gateway: '10.244.1.1', interface: 0 }, { address: 'fd00::7/64', interface: 0 }] };
const good = (command: string, name: string) => ({
  command, containerId: `c-${name}`, netns: '/var/run/netns/cni-1', ifname: 'eth0',
  args: `IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=c-${name};K8S_POD_UID=uid-${name}`,
  config: { cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', prevResult },
});

const op = fc.record({ path: fc.nat(), op: fc.constantFrom('replace' as const, 'delete' as const, 'wrap' as const, 'unwrap' as const, 'key' as const),
  value: fc.oneof(fc.constantFrom('ADD', 'DEL', 'CHECK', 'VERSION', '', 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart', 'K8S_POD_NAME=../../x;K8S_POD_NAMESPACE=shop', ';;==;', '/proc/1/ns/net', '/proc/self/ns/net', '../../etc/passwd', '/host/proc/abc/ns/net', '10.0.0.1/33', '__proto__'),
    fc.jsonValue({ maxDepth: 2 }), fc.string({ maxLength: 40 })),
  key: fc.oneof(fc.constantFrom('__proto__', 'constructor', 'ips', 'prevResult', 'cniVersion'), fc.string({ maxLength: 8 })) });

export interface CniInput { raw: string }

export const cniInput: fc.Arbitrary<CniInput> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.constantFrom('ADD', 'DEL', 'CHECK'), fc.constantFrom('cart', 'other', 'nope'), fc.array(op, { maxLength: 4 }), fc.constantFrom('\n', '', '\n\n', '\r\n', '\n{"command":"ADD"}\n'))
    .map(([c, n, ops, end]) => ({ raw: `${JSON.stringify(mutateObject(good(c, n), ops)) ?? 'null'}${end}` })) },
  { weight: 1, arbitrary: latin1(300).map((raw) => ({ raw })) },
  { weight: 1, arbitrary: fc.constantFrom('{', '[]\n', 'null\n', '"x"\n', '{"command":"ADD"}\n', `{"command":"ADD","config":${'['.repeat(5000)}${']'.repeat(5000)}}\n`, `${' '.repeat(70_000)}\n`).map((raw) => ({ raw })) },
);

interface CniCtx { api: FakeApiServer; server: CniServer; dir: string; path: string; enrolled: number }

export const cniSocketTarget: FuzzTarget<CniInput, CniCtx> = {
  name: 'cni-socket',
  what: 'request lines to the node agent\'s CNI socket (CniServer) as the ambit-cni plugin sends them, mutated, and raw bytes',
  input: cniInput,
  concurrency: 8,
  async setup() {
    const api = new FakeApiServer([
      { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
      { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
    ]);
    await api.start();
    api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
    for (const name of ['cart', 'other']) {
      api.apply('Pod', {
        metadata: { name, namespace: 'shop', uid: `uid-${name}`, labels: {}, ownerReferences: [{ kind: 'ReplicaSet', name: `${name}-7d9f`, controller: true }] },
        spec: { serviceAccountName: name, containers: [{ name: 'c', image: 'x', ports: [{ name: 'http', containerPort: 8080 }] }] },
        status: { phase: 'Pending' },
      });
    }
    const dir = mkdtempSync(join(tmpdir(), 'ambit-fuzz-cni-'));
    const path = join(dir, 'cni.sock');
    const ctx = { api, dir, path, enrolled: 0 } as CniCtx;
    // Recorded, not done: the target is the socket's parsing and answers.
    const target = { enrollPod: () => { ctx.enrolled++; return Promise.resolve(); }, releasePod: () => Promise.resolve() } as unknown as CniTarget;
    ctx.server = new CniServer({ path, client: new KubeClient({ server: api.url }), node: 'node-a', trustDomain: 'cluster.local', hostProc: '/host/proc', target, apiTimeoutMs: 2000 });
    await ctx.server.start();
    return ctx;
  },
  async run(ctx, input) {
    const a = await sendRaw({ path: ctx.path }, Buffer.from(input.raw, 'latin1'), 4000);
    const text = a.bytes.toString('latin1');
    const m = /^(\d{1,3})\n/.exec(text);
    if (!m) {
      if (!a.closed) return 'open';
      throw new Finding(`answered ${JSON.stringify(text.slice(0, 200))} instead of "<code>\\n<body>"${a.error ? ` (${a.error})` : ''}`);
    }
    return m[1]!;
  },
  async alive(ctx) {
    // A meshed pod's ADD is answered 0 with the primary plugin's result (enrolled once per sandbox).
    const a = await sendRaw({ path: ctx.path }, Buffer.from(`${JSON.stringify(good('ADD', 'cart'))}\n`), 4000);
    if (!a.bytes.toString().startsWith('0\n') || !a.bytes.toString().includes('10.244.1.7/24') || ctx.enrolled === 0) throw new Error(`a good ADD got ${JSON.stringify(a.bytes.toString().slice(0, 200))}`);
  },
  async teardown(ctx) {
    ctx.server.close(true);
    await ctx.api.close();
    rmSync(ctx.dir, { recursive: true, force: true });
  },
};
