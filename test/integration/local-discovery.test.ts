/**
 * The controller's discovery stream inside a local cluster: a subscriber in node-1's netns
 * (with node-1's credential) gets the model of what was applied, deltas when manifests change,
 * keeps its state while the controller is killed, and resyncs when the runtime restarts it.
 * A NACK shows in `ambit local status`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-disc-'));
const CLUSTER = `ds${Math.random().toString(36).slice(2, 6)}`;
const stateDir = join(stateRoot, CLUSTER);
const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };

function ambit(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), ...args], { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface Line { version?: string; keys?: string[]; nack?: string }
class Subscriber {
  readonly lines: Line[] = [];
  readonly child: ChildProcess;
  constructor(node: string, reject?: string) {
    this.child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, '--node', node, '--', process.execPath, '--import', 'tsx',
      join(ROOT, 'test/integration/helpers/subscribe.ts'), '172.30.0.1:15012', join(stateDir, 'nodes', node, 'token'), join(stateDir, 'ca', 'ca-cert.pem'), node, ...(reject ? [reject] : [])], { cwd: ROOT, env, detached: true });
    let buf = '';
    this.child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        this.lines.push(JSON.parse(buf.slice(0, i)) as Line);
        buf = buf.slice(i + 1);
      }
    });
  }
  get last(): Line | undefined { return this.lines.filter((l) => l.version).at(-1); }
}

const subs: Subscriber[] = [];

describeAsRoot('discovery in a local cluster', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'app.yaml'), `
apiVersion: v1
kind: Namespace
metadata: { name: app, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Pod
metadata: { name: a, namespace: app, labels: { app: a } }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: v1
kind: Service
metadata: { name: a, namespace: app }
spec: { selector: { app: a }, ports: [{ port: 80 }] }
`);
    const up = await ambit(['local', 'up', '--cluster', CLUSTER, '-f', join(dir, 'app.yaml')]);
    if (up.code !== 0) throw new Error(`up failed: ${up.stdout}\n${up.stderr}`);
  }, 180_000);

  afterAll(async () => {
    // Their own process group: the exec'd subscriber goes with the CLI that started it.
    for (const s of subs) {
      try { process.kill(-s.child.pid!, 'SIGKILL'); } catch { /* already gone */ }
    }
    await ambit(['local', 'down', '--cluster', CLUSTER]);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('streams the model to a node agent and a delta when manifests change', async () => {
    const s = new Subscriber('node-1');
    subs.push(s);
    const first = await until('the snapshot', () => s.last, { timeout: 20_000, interval: 50 });
    expect(first.keys!.filter((k) => !k.startsWith('workload/'))).toEqual(['meshconfig/mesh', 'service/app/a']);
    expect(first.keys!.filter((k) => k.startsWith('workload/'))).toHaveLength(1);
    writeFileSync(join(dir, 'b.yaml'), `
apiVersion: v1
kind: Pod
metadata: { name: b, namespace: app, labels: { app: a } }
spec: { nodeName: node-2, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-all, namespace: app }
spec: {}
`);
    expect((await ambit(['local', 'apply', '--cluster', CLUSTER, '-f', join(dir, 'b.yaml')])).code).toBe(0);
    const second = await until('the delta', () => (s.last!.version !== first.version ? s.last : undefined), { timeout: 20_000, interval: 50 });
    expect(second.keys).toContain('policy/AuthorizationPolicy/app/deny-all');
    expect(second.keys!.filter((k) => k.startsWith('workload/'))).toHaveLength(2);
    await until('the ACK in status', async () => {
      const status = JSON.parse((await ambit(['local', 'status', '--json', '--cluster', CLUSTER])).stdout) as ClusterStatus;
      return status.controller?.subscribers.some((x) => x.node === 'node-1' && x.lastAck === second.version);
    }, { timeout: 20_000, interval: 100 });
  }, 60_000);

  it('shows a NACK in status, and the subscriber keeps its last good version', async () => {
    const s = new Subscriber('node-2', 'policy/AuthorizationPolicy/app/deny-all');
    subs.push(s);
    const nack = await until('the NACK', () => s.lines.find((l) => l.nack), { timeout: 20_000, interval: 50 });
    expect(s.last).toBeUndefined();
    const expected = `${nack.nack!}: cannot apply policy/AuthorizationPolicy/app/deny-all`;
    const text = await vi.waitFor(async () => {
      const out = (await ambit(['local', 'status', '--cluster', CLUSTER])).stdout;
      expect(out, 'the NACK in `ambit local status`').toContain(expected);
      return out;
    }, { timeout: 40_000, interval: 100 });
    expect(text).toMatch(/node-agent\s+node-2\s+-\s+/);
  }, 60_000);

  it('reads mesh config dropped into the cluster\'s config directory, and shows what it rejected', async () => {
    const s = subs[0]!;
    const before = s.last!;
    writeFileSync(join(stateDir, 'config', 'allow.yaml'), `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-a, namespace: app }
spec: { selector: { matchLabels: { app: a } }, action: ALLOW, rules: [{ from: [{ source: { namespaces: [app] } }] }] }
`);
    const next = await until('the policy from the directory', () => (s.last!.keys!.includes('policy/AuthorizationPolicy/app/allow-a') ? s.last : undefined), { timeout: 20_000, interval: 50 });
    expect(next.version).not.toBe(before.version);
    writeFileSync(join(stateDir, 'config', 'bad.yaml'), `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: a, namespace: app }
spec: { hosts: [a], http: [{ timeout: soon, route: [{ destination: { host: a } }] }] }
`);
    const text = await vi.waitFor(async () => {
      const out = (await ambit(['local', 'status', '--cluster', CLUSTER])).stdout;
      expect(out, 'bad.yaml in `ambit local status`').toContain('bad.yaml');
      return out;
    }, { timeout: 40_000, interval: 100 });
    expect(text).toContain('rejected by the controller');
    expect(text).toMatch(/bad\.yaml:\d+: document 1 \(VirtualService app\/a\): spec\.http\[0\]\.timeout: /);
    // The valid policy keeps flowing.
    expect(s.last!.keys).toContain('policy/AuthorizationPolicy/app/allow-a');
  }, 60_000);

  it('keeps the config while the controller is down and resyncs after it restarts', async () => {
    const s = subs[0]!;
    const before = s.last!;
    const status = JSON.parse((await ambit(['local', 'status', '--json', '--cluster', CLUSTER])).stdout) as ClusterStatus;
    process.kill(status.components.find((c) => c.name === 'controller')!.pid!, 'SIGKILL');
    const after = await until('the resync', () => (s.last!.version !== before.version ? s.last : undefined), { timeout: 30_000, interval: 50 });
    expect(after.keys).toEqual(before.keys);
  }, 60_000);
});
