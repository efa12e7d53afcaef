/**
 * `ambit node --kubernetes` as a process, with `ambit controller --kubernetes`, both against a
 * stand-in API server: a pod is only a Pod object (node, IP) plus a process in a real network
 * namespace and cgroup; the agent finds the netns through /proc by the pod's IP and enrolls it
 * into the real eBPF datapath. At SIGTERM the agent keeps its pins while its DaemonSet exists (a
 * restart) and removes every one of them once the DaemonSet is gone (an uninstall).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NODE_NAME_EXTRA } from '../../src/identity/tokenreview.js';
import { FakeApiServer, freePort, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { ROOT, until } from './helpers/cli.js';
import { Lab } from './lab.js';
import { closeServer, startApp } from './pods.js';

const lab = new Lab('ambit-k8snode');
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets' },
]);
const octet = 10 + (process.pid % 200);
const podIp = `10.206.${octet}.2`;
const node = `node-${lab.id}`;
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

async function startAgent(): Promise<Agent> {
  const [admin, health, metrics] = [await freePort(), await freePort(), await freePort()];
  const p = run([
    'node', '--kubernetes', kubeconfig, '--node', node, '--controller', `127.0.0.1:${controllerPort}`,
    '--token-file', join(dir, 'token'), '--ca-file', join(dir, 'ca', 'ca-cert.pem'),
    '--pin-root', lab.pinRoot, '--cgroup', lab.cgroupRoot,
    '--admin', `127.0.0.1:${admin}`, '--telemetry-host', '127.0.0.1', '--metrics-port', String(metrics), '--health-port', String(health),
    '--drain-seconds', '0',
  ], { POD_NAMESPACE: 'ambit-system' });
  return { ...p, admin, health, metrics };
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text() };
}

const pins = () => (existsSync(lab.pinRoot) ? readdirSync(lab.pinRoot, { recursive: true }) : []);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-k8snode-'));
  lab.defer(() => rmSync(dir, { recursive: true, force: true }));
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
  await until('the controller serving', () => /"msg":"model updated"/.test(controller.output()), 30_000);
}, 60_000);

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await api.close();
  await lab.cleanup();
});

describe('ambit node --kubernetes', () => {
  it('finds the pod\'s netns through /proc by its IP and enrolls it; reports ready and this node\'s requirements', async () => {
    const agent = await startAgent();
    const workloads = await until('the pod enrolled', async () => {
      const r = await get(agent.admin, '/workloads').catch(() => undefined);
      const w = r && (JSON.parse(r.body) as { enrolled: { name: string; netns: string; certificate: unknown }[]; failed: unknown[] });
      return w && w.enrolled.length > 0 ? w : undefined;
    }, 30_000).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    expect(workloads.enrolled).toHaveLength(1);
    expect(workloads.enrolled[0]).toMatchObject({ name: 'web', netns: expect.stringMatching(/^\/proc\/\d+\/ns\/net$/), certificate: expect.anything() });
    expect(workloads.failed).toEqual([]);
    expect((await get(agent.health, '/healthz/ready')).status).toBe(200);
    const check = JSON.parse((await get(agent.health, '/healthz/check')).body) as { ok: boolean; checks: { name: string; ok: boolean }[] };
    expect(check.checks.map((c) => c.name)).toContain('kernel >= 5.17');
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

  it('removes every pinned object when it stops after its DaemonSet is gone (uninstall)', async () => {
    const agent = await startAgent();
    await until('the pod enrolled again', async () => {
      const r = await get(agent.admin, '/workloads').catch(() => undefined);
      return r && (JSON.parse(r.body) as { enrolled: unknown[] }).enrolled.length > 0;
    }, 30_000).catch((err: Error) => { throw new Error(`${err.message}\n${agent.output()}`); });
    expect(agent.output()).toMatch(/"adopted":true/);
    api.delete('DaemonSet', 'ambit-system', 'ambit-node', 'apps');
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.output()).toMatch(/"stop":"uninstall"/);
    expect(pins()).toEqual([]);
  }, 60_000);

  it('refuses to start without a way to find pods, naming the flags', async () => {
    const p = run(['node', '--node', 'n', '--controller', '127.0.0.1:1', '--token-file', join(dir, 'token'), '--ca-file', join(dir, 'ca', 'ca-cert.pem')]);
    expect(await p.exited).toBe(1);
    expect(p.output()).toMatch(/give one of --cluster NAME \(a local cluster\) or --kubernetes/);
    expect(readFileSync(join(dir, 'token'), 'utf8')).toBe('agent-token\n');
  });
});
