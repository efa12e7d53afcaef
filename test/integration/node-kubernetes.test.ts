/**
 * `ambit node --kubernetes` as a process, with `ambit controller --kubernetes`, both against a
 * stand-in API server: a pod is only a Pod object (node, IP) plus a process in a real network
 * namespace and cgroup; the agent finds the netns through /proc by the pod's IP and enrolls it
 * into the real eBPF datapath. At SIGTERM the agent keeps its pins while its DaemonSet exists (a
 * restart) and removes every one of them once the DaemonSet is gone or the API server refuses
 * the agent's credentials (an uninstall); `ambit node cleanup` clears a node whose agent missed it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { NODE_NAME_EXTRA } from '../../src/identity/tokenreview.js';
import { FakeApiServer, freePort, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { ROOT } from './helpers/cli.js';
import { until } from '../helpers/wait.js';
import { Lab } from './lab.js';
import { closeServer, startApp } from './pods.js';
import { describeAsRoot } from './helpers/root.js';

/** Made in beforeAll, under describeAsRoot's skip: a Lab makes its cgroup at once. */
let lab: Lab;
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets' },
]);
const octet = 10 + (process.pid % 200);
const podIp = `10.206.${octet}.2`;
const cartIp = `10.206.${octet}.3`;
let node = '';
let dir: string;
let kubeconfig: string;
let controllerPort = 0;
let podNetns = '';
let podCgroup = '';
const procs: ChildProcess[] = [];


interface Proc { proc: ChildProcess; output: () => string; exited: Promise<number | null> }

function run(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  let out = '';
  const proc = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
  proc.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
  procs.push(proc);
  return { proc, output: () => out, exited: new Promise((r) => proc.once('exit', (code) => r(code))) };
}

interface Agent extends Proc { admin: number; health: number; metrics: number }

const agents: Agent[] = [];

async function startAgent(): Promise<Agent> {
  // One agent at a time: one left running by a failed test goes first.
  for (const a of agents.splice(0)) {
    if (a.proc.exitCode === null && a.proc.signalCode === null) a.proc.kill('SIGKILL');
    await a.exited;
  }
  const [admin, health, metrics] = [await freePort(), await freePort(), await freePort()];
  const p = run([
    'node', '--kubernetes', kubeconfig, '--node', node, '--controller', `127.0.0.1:${controllerPort}`,
    '--token-file', join(dir, 'token'), '--ca-file', join(dir, 'ca', 'ca-cert.pem'),
    '--pin-root', lab.pinRoot, '--cgroup', lab.cgroupRoot,
    '--admin', `127.0.0.1:${admin}`, '--telemetry-host', '127.0.0.1', '--metrics-port', String(metrics), '--health-port', String(health),
    '--drain-seconds', '0', '--cni-socket', cniSocket(),
    '--cni-binary', join(dir, 'ambit-cni'), '--cni-bin-dir', join(dir, 'opt-cni-bin'), '--cni-conf-dir', join(dir, 'net.d'),
  ], { POD_NAMESPACE: 'ambit-system' });
  const agent = { ...p, admin, health, metrics };
  agents.push(agent);
  return agent;
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

const cniSocket = () => join(dir, 'cni.sock');
const PRIMARY_CONFLIST = { name: 'cbr0', cniVersion: '1.0.0', plugins: [{ type: 'flannel', delegate: { hairpinMode: true, isDefaultGateway: true } }, { type: 'portmap', capabilities: { portMappings: true } }] };
const chain = () => (JSON.parse(readFileSync(join(dir, 'net.d', '10-flannel.conflist'), 'utf8')) as { plugins: { type: string; socket?: string }[] }).plugins;

/** The plugin as the agent installed it on the "host", next to its install marker. */
const installedPlugin = () => join(dir, 'opt-cni-bin', 'ambit-cni');

/** The runtime running the installed ambit-cni plugin for a sandbox: its exit code and stdout. */
function cni(command: 'ADD' | 'DEL', pod: { namespace: string; name: string; uid: string }, netns: string, ip: string, sandbox = `sandbox-${pod.name}`): Promise<{ code: number; body: string }> {
  const config = {
    cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', socket: cniSocket(),
    prevResult: { cniVersion: '1.0.0', interfaces: [{ name: 'eth0' }], ips: [{ address: `${ip}/32`, interface: 0 }] },
  };
  return new Promise((resolve, reject) => {
    const child = spawn(installedPlugin(), [], {
      env: {
        CNI_COMMAND: command, CNI_CONTAINERID: sandbox, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin',
        CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${pod.namespace};K8S_POD_NAME=${pod.name};K8S_POD_INFRA_CONTAINER_ID=${sandbox};K8S_POD_UID=${pod.uid}`,
      },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    let body = '';
    child.stdout.on('data', (c: Buffer) => { body += c.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, body }));
    child.stdin.end(JSON.stringify(config));
  });
}

const pins = () => (existsSync(lab.pinRoot) ? readdirSync(lab.pinRoot, { recursive: true }) : []);

/** Uses up the refusals an earlier test asked the stand-in API server for (failNext has no undo). */
async function drainRefusals(): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const res = await fetch(`${api.url}/apis/apps/v1/namespaces/ambit-system/daemonsets/ambit-node`);
    if (res.status < 400 || res.status === 404) return;
  }
  throw new Error('the stand-in API server keeps refusing DaemonSet reads');
}

beforeAll(async () => {
  lab = new Lab('ambit-k8snode');
  node = `node-${lab.id}`;
  dir = mkdtempSync(join(tmpdir(), 'ambit-k8snode-'));
  lab.defer(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(join(ROOT, 'scripts/build-cni.sh'), [join(dir, 'ambit-cni')], { stdio: 'pipe' });
  // The node's CNI setup, as the agent sees the host's through its mounts: a primary plugin's conflist.
  mkdirSync(join(dir, 'opt-cni-bin'));
  mkdirSync(join(dir, 'net.d'));
  writeFileSync(join(dir, 'net.d', '10-flannel.conflist'), JSON.stringify(PRIMARY_CONFLIST, null, 2));
  // The pod: a sandbox process in its own netns (with the pod IP) and cgroup, under the mesh cgroup.
  const ns = podNetns = lab.netns('pod');
  const cg = podCgroup = lab.cgroup('pod');
  lab.addresses(ns, `${podIp}/32`);
  lab.spawn(ns, cg, ['sleep', '600']);
  const app = await startApp(ns, 8080);
  lab.defer(() => closeServer(app));

  await api.start();
  api.tokens.set('agent-token', { authenticated: true, audiences: ['ambit'], user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: [node] } } });
  api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  api.apply('Pod', {
    metadata: { name: 'web', namespace: 'shop', labels: { app: 'web' } },
    spec: { nodeName: node, serviceAccountName: 'web', containers: [{ name: 'web', image: 'web' }] },
    status: { phase: 'Running', podIP: podIp },
  });
  // A host-network pod on the same node: its address is the node's, it is never enrolled.
  api.apply('Pod', {
    metadata: { name: 'exporter', namespace: 'shop', labels: { app: 'exporter' } },
    spec: { nodeName: node, hostNetwork: true, containers: [{ name: 'exporter', image: 'exporter' }] },
    status: { phase: 'Running', podIP: '127.0.0.1' },
  });
  api.apply('DaemonSet', { metadata: { name: 'ambit-node', namespace: 'ambit-system' }, spec: {} }, 'apps');
  kubeconfig = join(dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, api.url, 'operator-token');
  writeFileSync(join(dir, 'token'), 'agent-token\n');
  controllerPort = await freePort();
  const controller = run(['controller', '--kubernetes', kubeconfig, '--ca-dir', join(dir, 'ca'), '--listen', `127.0.0.1:${controllerPort}`, '--health', '127.0.0.1:0'], { AMBIT_TOKEN_AUDIENCE: 'ambit', POD_NAMESPACE: 'ambit-system' });
  await until('the controller serving', () => /"msg":"model updated"/.test(controller.output()), { timeout: 30_000 });
}, 60_000);

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await api.close();
  await lab.cleanup();
});

describeAsRoot('ambit node --kubernetes', () => {
  it('finds the pod\'s netns through /proc by its IP and enrolls it; reports ready and this node\'s requirements', async () => {
    const agent = await startAgent();
    const workloads = await until('the pod enrolled', async () => {
      const r = await get(agent.admin, '/workloads').catch(() => undefined);
      const w = r && (JSON.parse(r.body) as { enrolled: { name: string; netns: string; certificate: unknown }[]; failed: unknown[] });
      return w && w.enrolled.length > 0 ? w : undefined;
    }, { timeout: 30_000 }).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    expect(workloads.enrolled).toHaveLength(1);
    expect(workloads.enrolled[0]).toMatchObject({ name: 'web', netns: expect.stringMatching(/^\/proc\/\d+\/ns\/net$/), certificate: expect.anything() });
    expect(workloads.failed).toEqual([]);
    // The plugin is installed on the node and chained after the primary CNI, pointing at the agent.
    expect(chain()).toEqual([...PRIMARY_CONFLIST.plugins, { type: 'ambit-cni', socket: cniSocket() }]);
    expect(readFileSync(join(dir, 'opt-cni-bin', 'ambit-cni')).equals(readFileSync(join(dir, 'ambit-cni')))).toBe(true);
    expect((await get(agent.health, '/healthz/ready')).status).toBe(200);
    const check = JSON.parse((await get(agent.health, '/healthz/check')).body) as { ok: boolean; checks: { name: string; ok: boolean }[] };
    expect(check.checks.map((c) => c.name)).toContain('kernel >= 5.17');
    expect(check.checks.find((c) => c.name === 'CNI plugin chained')).toMatchObject({ ok: true, detail: 'ambit-cni last in 10-flannel.conflist' });
    expect(typeof check.ok).toBe('boolean');
    expect(pins().length).toBeGreaterThan(0);
    // Its connects are captured: the pod calling its own IP goes out through the agent as HBONE
    // (mTLS with its certificate) and comes back in to the app, which the metrics show.
    const call = await lab.client(podNetns, podCgroup, podIp, 8080).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    expect(call.stdout.trim()).toBe('app 8080');
    const metrics = (await get(agent.metrics, '/metrics')).body;
    expect(metrics).toMatch(new RegExp(`istio_tcp_connections_opened_total\\{[^}]*reporter="destination"[^}]*source_workload="web"[^}]*\\} 1`));

    // Restart: the DaemonSet is still there, so the pins stay for the next agent.
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.output()).toMatch(/"stop":"restart"/);
    expect(pins().length).toBeGreaterThan(0);
  }, 60_000);

  it('enrolls a pod the ambit-cni plugin hands over before its containers start (the controller has no IP for it yet), and releases it at DEL', async () => {
    const agent = await startAgent();
    await until('the agent ready', async () => (await get(agent.health, '/healthz/ready').catch(() => ({ status: 0 }))).status === 200, { timeout: 30_000 });
    await until('the plugin chained', () => chain().at(-1)?.type === 'ambit-cni' && existsSync(installedPlugin()), { timeout: 10_000 });
    // A new sandbox: netns and address made by the primary CNI, no process yet; the API server's Pod has no IP.
    const ns = lab.netns('cart');
    const cg = lab.cgroup('cart');
    lab.link(podNetns, `10.206.${octet}.1/24`, ns, `${cartIp}/24`);
    api.apply('Pod', { metadata: { name: 'cart', namespace: 'shop', uid: 'uid-cart', labels: { app: 'cart' } }, spec: { nodeName: node, serviceAccountName: 'cart', containers: [{ name: 'cart', image: 'cart' }] }, status: { phase: 'Pending' } });
    const add = await cni('ADD', { namespace: 'shop', name: 'cart', uid: 'uid-cart' }, ns, cartIp);
    expect(add.code, add.body).toBe(0);
    // The primary plugin's result goes down the chain unchanged.
    expect(JSON.parse(add.body)).toMatchObject({ cniVersion: '1.0.0', ips: [{ address: `${cartIp}/32` }] });
    const workloads = JSON.parse((await get(agent.admin, '/workloads')).body) as { enrolled: { name: string; identity: string }[] };
    expect(workloads.enrolled.find((w) => w.name === 'cart')).toMatchObject({ identity: 'spiffe://cluster.local/ns/shop/sa/cart' });
    // Its first process's first connect is captured: mTLS with cart's identity to web.
    const call = await lab.client(ns, cg, podIp, 8080);
    expect(call.stdout.trim(), agent.output().split('\n').filter((l) => /"level":[45]0/.test(l)).join('\n')).toBe('app 8080');
    const metrics = (await get(agent.metrics, '/metrics')).body;
    expect(metrics, metrics.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total')).join('\n')).toMatch(/istio_tcp_connections_opened_total\{[^}]*reporter="destination"[^}]*source_principal="spiffe:\/\/cluster.local\/ns\/shop\/sa\/cart"[^}]*\} 1/);

    // A pod of a namespace outside the mesh passes straight through, not enrolled.
    api.apply('Namespace', { metadata: { name: 'plain' } });
    api.apply('Pod', { metadata: { name: 'other', namespace: 'plain', uid: 'uid-other' }, spec: { nodeName: node, containers: [{ name: 'o', image: 'o' }] }, status: { phase: 'Pending' } });
    const other = await cni('ADD', { namespace: 'plain', name: 'other', uid: 'uid-other' }, ns, '10.206.250.9');
    expect(other.code).toBe(0);
    // A pod the API server does not know (yet): the sandbox fails with "try again", the kubelet retries.
    const ghost = await cni('ADD', { namespace: 'shop', name: 'ghost', uid: 'uid-ghost' }, ns, cartIp);
    expect(ghost.code).toBe(1);
    expect(JSON.parse(ghost.body)).toMatchObject({ code: 11, msg: expect.stringMatching(/pod shop\/ghost/) });

    expect(await cni('DEL', { namespace: 'shop', name: 'cart', uid: 'uid-cart' }, ns, cartIp)).toEqual({ code: 0, body: '' });
    const after = JSON.parse((await get(agent.admin, '/workloads')).body) as { enrolled: { name: string }[] };
    expect(after.enrolled.map((w) => w.name)).toEqual(['web']);
    api.delete('Pod', 'shop', 'cart');

    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    // Restart: the plugin stays chained and the socket file stays, so sandboxes made while no
    // agent runs fail ("try again") and are retried, never started unmeshed.
    expect(existsSync(cniSocket())).toBe(true);
    expect(chain().at(-1)).toEqual({ type: 'ambit-cni', socket: cniSocket() });
    const meanwhile = await cni('ADD', { namespace: 'shop', name: 'cart', uid: 'uid-cart' }, ns, cartIp);
    expect(meanwhile.code).toBe(1);
    expect(JSON.parse(meanwhile.body)).toMatchObject({ code: 11, msg: expect.stringMatching(/not reachable/) });
  }, 60_000);

  it('a new sandbox of a pod replaces the old one; a late or repeated DEL of the old sandbox leaves the new one enrolled and captured', async () => {
    const agent = await startAgent();
    await until('the agent ready', async () => (await get(agent.health, '/healthz/ready').catch(() => ({ status: 0 }))).status === 200, { timeout: 30_000 });
    await until('the plugin chained', () => chain().at(-1)?.type === 'ambit-cni' && existsSync(installedPlugin()), { timeout: 10_000 });
    const pod = { namespace: 'shop', name: 'orders', uid: 'uid-orders' };
    /** A sandbox: a netns linked to web's, with its own address and a route to web's IP. */
    const sandbox = (name: string, subnet: number) => {
      const ns = lab.netns(name);
      lab.link(podNetns, `10.${subnet}.${octet}.1/24`, ns, `10.${subnet}.${octet}.2/24`);
      execFileSync('ip', ['-n', ns.split('/').at(-1)!, 'route', 'add', `${podIp}/32`, 'via', `10.${subnet}.${octet}.1`]);
      return { ns, ip: `10.${subnet}.${octet}.2`, cg: lab.cgroup(name) };
    };
    const enrolledOrders = async () => (JSON.parse((await get(agent.admin, '/workloads')).body) as { enrolled: { name: string; netns: string }[] }).enrolled.filter((w) => w.name === 'orders');
    /** Connections web accepted over HBONE with orders' certificate: only captured connects get there. */
    const mtlsFromOrders = async () => {
      const m = new RegExp('istio_tcp_connections_opened_total\\{[^}]*reporter="destination"[^}]*source_principal="spiffe://cluster.local/ns/shop/sa/orders"[^}]*\\} (\\d+)').exec((await get(agent.metrics, '/metrics')).body);
      return m ? Number(m[1]) : 0;
    };
    const old = sandbox('orders-a', 207);
    api.apply('Pod', { metadata: { name: 'orders', namespace: 'shop', uid: 'uid-orders', labels: { app: 'orders' } }, spec: { nodeName: node, serviceAccountName: 'orders', containers: [{ name: 'o', image: 'o' }] }, status: { phase: 'Pending' } });
    expect((await cni('ADD', pod, old.ns, old.ip, 'sandbox-orders-a')).code).toBe(0);
    // The kubelet reports the first sandbox's IP; the controller streams the pod with it.
    api.apply('Pod', { metadata: { name: 'orders', namespace: 'shop', uid: 'uid-orders', labels: { app: 'orders' } }, spec: { nodeName: node, serviceAccountName: 'orders', containers: [{ name: 'o', image: 'o' }] }, status: { phase: 'Running', podIP: old.ip } });
    await until('the controller streaming orders', async () => JSON.stringify(JSON.parse((await get(agent.admin, '/config_dump')).body)).includes(old.ip), { timeout: 20_000 });

    // Its pause process died: the kubelet makes a new sandbox (new netns, new address) for the same pod.
    const now = sandbox('orders-b', 208);
    const add = await cni('ADD', pod, now.ns, now.ip, 'sandbox-orders-b');
    expect(add.code, add.body).toBe(0);
    expect(await enrolledOrders()).toEqual([expect.objectContaining({ netns: now.ns })]);
    // Any config change makes the agent reconcile, while the controller still has the old sandbox's IP.
    // (A pod of this node, so that it is in this agent's view; opted out of the mesh, so that it is not enrolled.)
    api.apply('Pod', { metadata: { name: 'noise', namespace: 'shop', uid: 'uid-noise', labels: { 'ambit.dev/dataplane-mode': 'none' } }, spec: { nodeName: node, containers: [{ name: 'n', image: 'n' }] }, status: { phase: 'Running', podIP: '10.250.0.9' } });
    await until('the agent holding the new config', async () => JSON.stringify(JSON.parse((await get(agent.admin, '/config_dump')).body)).includes('10.250.0.9'), { timeout: 20_000 });
    const call = async () => {
      const before = await mtlsFromOrders();
      const r = await lab.client(now.ns, now.cg, podIp, 8080);
      expect(r.stdout.trim(), agent.output().split('\n').filter((l) => /"level":[45]0/.test(l)).join('\n')).toBe('app 8080');
      await until('the call counted as orders\' mTLS', async () => (await mtlsFromOrders()) === before + 1, { timeout: 10_000 });
    };
    await call();

    // The runtime cleans the old sandbox up late, and once more on its next GC pass.
    for (const netns of [old.ns, '']) {
      expect(await cni('DEL', pod, netns, old.ip, 'sandbox-orders-a')).toEqual({ code: 0, body: '' });
      expect(await enrolledOrders()).toEqual([expect.objectContaining({ netns: now.ns })]);
      await call();
    }
    // The current sandbox's DEL releases it.
    expect(await cni('DEL', pod, now.ns, now.ip, 'sandbox-orders-b')).toEqual({ code: 0, body: '' });
    expect(await enrolledOrders()).toEqual([]);
    api.delete('Pod', 'shop', 'orders');
    api.delete('Pod', 'shop', 'noise');
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
  }, 90_000);

  it('after a reboot (socket gone with the tmpfs, plugin, marker and chain entry still on disk, no agent yet), ADD fails with "try again", not through', async () => {
    const agent = await startAgent();
    await until('the plugin chained', () => chain().at(-1)?.type === 'ambit-cni' && existsSync(installedPlugin()), { timeout: 30_000 })
      .catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    // Power lost: nothing stops cleanly; the reboot empties /var/run.
    agent.proc.kill('SIGKILL');
    await agent.exited;
    rmSync(cniSocket(), { force: true });
    expect(chain().at(-1)).toEqual({ type: 'ambit-cni', socket: cniSocket() });
    const add = await cni('ADD', { namespace: 'shop', name: 'web', uid: 'uid-web' }, podNetns, podIp, 'sandbox-after-reboot');
    expect(add.code, add.body).toBe(1);
    expect(JSON.parse(add.body)).toMatchObject({ code: 11, msg: `ambit node agent not running at ${cniSocket()}`, details: expect.stringContaining('ambit-cni.installed') });
    // DEL never blocks a pod's removal.
    expect((await cni('DEL', { namespace: 'shop', name: 'web', uid: 'uid-web' }, podNetns, podIp, 'sandbox-after-reboot')).code).toBe(0);
  }, 60_000);

  it('removes every pinned object when it stops after its DaemonSet is gone (uninstall)', async () => {
    const agent = await startAgent();
    await until('the pod enrolled again', async () => {
      const r = await get(agent.admin, '/workloads').catch(() => undefined);
      return r && (JSON.parse(r.body) as { enrolled: unknown[] }).enrolled.length > 0;
    }, { timeout: 30_000 }).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    // Logged as the pod is adopted, which may come a moment after its enrollment is visible.
    await until('the adoption logged', () => /"adopted":true/.test(agent.output()), { timeout: 5000 });
    // kubectl delete -f removes the agent's Role right after its DaemonSet: by SIGTERM the agent
    // may not read its DaemonSet any more. It saw the deletion through its watch.
    await until('the agent watching its DaemonSet', () => api.watchCount('daemonsets') > 0, { timeout: 10_000 });
    api.delete('DaemonSet', 'ambit-system', 'ambit-node', 'apps');
    // A fixed wait: the agent shows nothing when its watch reads the DELETED event (no log line, no
    // endpoint); 300 ms for it to arrive over loopback before the API server starts refusing it.
    await new Promise((r) => setTimeout(r, 300));
    api.failNext('GET', '/daemonsets', 403, 100);
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.output()).toMatch(/"stop":"uninstall","reason":"DaemonSet ambit-system\/ambit-node was deleted"/);
    expect(pins()).toEqual([]);
    expect(existsSync(cniSocket())).toBe(false);
    // The node's CNI config is as it was, and the plugin binary gone.
    expect(chain()).toEqual(PRIMARY_CONFLIST.plugins);
    expect(readdirSync(join(dir, 'opt-cni-bin'))).toEqual([]);
  }, 60_000);

  it('treats a 401 at SIGTERM (its ServiceAccount deleted with the installation) as uninstall: pins, CNI entry, marker and socket go', async () => {
    // Installed again after the uninstall above, whose stand-in refusals (403) must not answer this agent.
    await drainRefusals();
    api.apply('DaemonSet', { metadata: { name: 'ambit-node', namespace: 'ambit-system' }, spec: {} }, 'apps');
    const agent = await startAgent();
    await until('the plugin chained and the pod enrolled', async () => {
      const r = await get(agent.admin, '/workloads').catch(() => undefined);
      return chain().at(-1)?.type === 'ambit-cni' && r && (JSON.parse(r.body) as { enrolled: unknown[] }).enrolled.length > 0;
    }, { timeout: 30_000 }).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    expect(pins().length).toBeGreaterThan(0);
    expect(existsSync(join(dir, 'opt-cni-bin', 'ambit-cni.installed'))).toBe(true);
    // kubectl delete -f: the ServiceAccount goes before the agent's pod is told to stop; the
    // DaemonSet's own deletion is not seen (the API server refuses the agent from then on).
    api.failNext('GET', '/daemonsets', 401, 20);
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.output()).toMatch(/"stop":"uninstall","reason":"reading DaemonSet ambit-system\/ambit-node: HTTP 401 for the agent's current token: its ServiceAccount is gone"/);
    expect(pins()).toEqual([]);
    expect(existsSync(cniSocket())).toBe(false);
    // The primary CNI's file is back as it wrote it, byte for byte; the plugin and its marker gone.
    expect(readFileSync(join(dir, 'net.d', '10-flannel.conflist'), 'utf8')).toBe(JSON.stringify(PRIMARY_CONFLIST, null, 2));
    expect(readdirSync(join(dir, 'opt-cni-bin'))).toEqual([]);
  }, 60_000);

  it('keeps everything when the API server fails at SIGTERM with a 5xx (a restart it cannot tell from an uninstall)', async () => {
    await drainRefusals();
    const agent = await startAgent();
    await until('the plugin chained', () => chain().at(-1)?.type === 'ambit-cni' && pins().length > 0, { timeout: 30_000 })
      .catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    api.failNext('GET', '/daemonsets', 503, 20);
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.output()).toMatch(/"stop":"unknown","reason":"reading DaemonSet ambit-system\/ambit-node: HTTP 503"/);
    expect(pins().length).toBeGreaterThan(0);
    expect(chain().at(-1)).toEqual({ type: 'ambit-cni', socket: cniSocket() });
    expect(existsSync(join(dir, 'opt-cni-bin', 'ambit-cni.installed'))).toBe(true);
  }, 60_000);

  it('`ambit node cleanup` refuses while the agent answers, then clears a node whose agent missed the uninstall (--host-root as under kubectl debug node)', async () => {
    const agent = await startAgent();
    // The last test's agent left its entry and pins: wait for this one to serve (its CNI socket is up by then).
    await until('the agent serving', async () => (await get(agent.health, '/healthz/check').catch(() => ({ status: 0 }))).status > 0, { timeout: 30_000 })
      .catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    // The node as `kubectl debug node/NAME --profile=sysadmin` shows it: the host's root under a
    // directory (here `dir`, the host's bpffs reached through it as through the host's /sys).
    mkdirSync(join(dir, 'sys', 'fs'), { recursive: true });
    symlinkSync('/sys/fs/bpf', join(dir, 'sys', 'fs', 'bpf'));
    const cleanupArgs = ['node', 'cleanup', '--host-root', dir, '--pin-root', lab.pinRoot, '--cni-bin-dir', '/opt-cni-bin', '--cni-conf-dir', '/net.d', '--socket-dir', '/'];
    const refused = run(cleanupArgs);
    expect(await refused.exited).toBe(1);
    expect(refused.output()).toContain(`an ambit node agent answers on ${cniSocket()}: it owns this node's state`);
    expect(pins().length).toBeGreaterThan(0);
    expect(chain().at(-1)?.type).toBe('ambit-cni');

    // The agent is gone for good (crashlooping, its node cordoned...) while ambit is removed.
    agent.proc.kill('SIGKILL');
    await agent.exited;
    api.delete('DaemonSet', 'ambit-system', 'ambit-node', 'apps');
    const pinned = readdirSync(lab.pinRoot, { recursive: true, withFileTypes: true }).filter((e) => !e.isDirectory()).length;
    const cleanup = run(cleanupArgs);
    expect(await cleanup.exited, cleanup.output()).toBe(0);
    const lines = cleanup.output().trim().split('\n');
    expect(lines).toEqual(expect.arrayContaining([
      `removed ${join(dir, 'opt-cni-bin', 'ambit-cni.installed')} (install marker)`,
      `removed the ambit-cni entry from ${join(dir, 'net.d', '10-flannel.conflist')} (its original text restored)`,
      `removed ${join(dir, 'opt-cni-bin', 'ambit-cni')} (plugin binary)`,
      `removed ${cniSocket()} (agent socket)`,
      `removed ${join(dir, lab.pinRoot)}`,
    ]));
    expect(lines.filter((l) => l.startsWith(`removed pin ${join(dir, lab.pinRoot)}/`))).toHaveLength(pinned);
    expect(lines.at(-1)).toBe(`ambit removed from this node (${lines.length - 1} items)`);
    expect(pins()).toEqual([]);
    expect(existsSync(lab.pinRoot)).toBe(false);
    expect(readFileSync(join(dir, 'net.d', '10-flannel.conflist'), 'utf8')).toBe(JSON.stringify(PRIMARY_CONFLIST, null, 2));
    expect(readdirSync(join(dir, 'opt-cni-bin'))).toEqual([]);
    expect(existsSync(cniSocket())).toBe(false);
    // Once more: nothing left.
    const again = run(cleanupArgs);
    expect(await again.exited).toBe(0);
    expect(again.output().trim()).toBe('nothing of ambit\'s on this node');
  }, 60_000);

  it('refuses to start without a way to find pods, naming the flags', async () => {
    const p = run(['node', '--node', 'n', '--controller', '127.0.0.1:1', '--token-file', join(dir, 'token'), '--ca-file', join(dir, 'ca', 'ca-cert.pem')]);
    expect(await p.exited).toBe(1);
    expect(p.output()).toMatch(/give one of --cluster NAME \(a local cluster\) or --kubernetes/);
    expect(readFileSync(join(dir, 'token'), 'utf8')).toBe('agent-token\n');
  });
});
