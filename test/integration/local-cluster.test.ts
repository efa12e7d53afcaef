/**
 * `ambit local` end to end, through the real CLI: clusters of network namespaces, pods as
 * processes, service VIPs through nftables, names through per-pod hosts files. Each cluster
 * has its own name and state root, and is removed in afterAll even when a test fails.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cgroup2Mount } from '../../src/ebpf/mounts.js';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-local-'));
const id = Math.random().toString(36).slice(2, 6);
const CLUSTER = `it${id}`;
const OTHER = `it${id}b`;

interface Run { code: number | null; stdout: string; stderr: string }

function ambit(args: string[], input?: string, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, AMBIT_LOCAL_STATE: stateRoot }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`timed out: ambit ${args.join(' ')}\n${stdout}\n${stderr}`)); }, timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    child.stdin.end(input ?? '');
  });
}

async function ok(args: string[], input?: string): Promise<string> {
  const r = await ambit(args, input);
  if (r.code !== 0) throw new Error(`ambit ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

async function status(name = CLUSTER): Promise<ClusterStatus> {
  return JSON.parse(await ok(['local', 'status', '--json', '--cluster', name])) as ClusterStatus;
}

const ECHO = 'require("http").createServer((q, s) => s.end(require("os").hostname() + " " + process.env.POD_IP)).listen(8080)';
/** Fetches a URL from inside a pod with Node's fetch (names resolve through the pod's /etc/hosts). */
const FETCH = 'fetch(process.argv[1]).then(async (r) => { console.log(await r.text()); }, (e) => { console.error(e.cause?.code ?? e.message); process.exit(3); })';

const dir = mkdtempSync(join(tmpdir(), 'ambit-manifests-'));
const MANIFESTS = join(dir, 'app.yaml');
writeFileSync(MANIFESTS, `
apiVersion: v1
kind: Namespace
metadata: { name: app }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: echo, namespace: app }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: echo, namespace: app }
spec:
  replicas: 2
  selector: { matchLabels: { app: echo } }
  template:
    metadata: { labels: { app: echo } }
    spec:
      serviceAccountName: echo
      containers:
      - name: echo
        image: example/echo
        command: ["node", "-e", ${JSON.stringify(ECHO)}]
        env:
        - { name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }
        ports: [{ name: http, containerPort: 8080 }]
        readinessProbe: { tcpSocket: { port: http }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: app }
spec:
  selector: { app: echo }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: app }
spec:
  nodeName: node-1
  containers:
  - name: client
    command: ["sleep", "infinity"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: echo, namespace: app }
spec:
  hosts: [echo]
  http: [{ route: [{ destination: { host: echo } }] }]
`);

function leftovers(name: string): string[] {
  const prefix = `ambit-${name}`;
  const found: string[] = [];
  if (existsSync('/run/netns')) found.push(...readdirSync('/run/netns').filter((n) => n.startsWith(`${prefix}.`)).map((n) => `netns ${n}`));
  const cg = join(cgroup2Mount()!, prefix);
  if (existsSync(cg)) found.push(`cgroup ${cg}`);
  if (existsSync(`/sys/fs/bpf/${prefix}`)) found.push(`bpffs /sys/fs/bpf/${prefix}`);
  if (existsSync(join(stateRoot, name))) found.push(`state ${join(stateRoot, name)}`);
  return found;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describeAsRoot('ambit local', () => {
  beforeAll(async () => {
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', MANIFESTS]);
  }, 180_000);

  afterAll(async () => {
    await ambit(['local', 'down', '--cluster', CLUSTER]);
    await ambit(['local', 'down', '--name', OTHER]);
    rmSync(dir, { recursive: true, force: true });
    rmSync(stateRoot, { recursive: true, force: true });
  }, 120_000);

  it('runs two nodes and spreads the Deployment replicas over them', async () => {
    const s = await status();
    expect(s.nodes.map((n) => [n.name, n.ip])).toEqual([['node-1', '172.30.0.11'], ['node-2', '172.30.0.12']]);
    const echo = s.pods.filter((p) => p.owner === 'deployment/echo');
    expect(echo).toHaveLength(2);
    expect(new Set(echo.map((p) => p.node))).toEqual(new Set(['node-1', 'node-2']));
    for (const p of echo) {
      expect(p).toMatchObject({ phase: 'Running', ready: '1/1', serviceAccount: 'echo', restarts: 0 });
      expect(p.ip).toMatch(p.node === 'node-1' ? /^10\.244\.1\./ : /^10\.244\.2\./);
    }
    const svc = s.services.find((v) => v.name === 'echo')!;
    expect(svc.vip).toMatch(/^10\.96\./);
    expect(svc.endpoints.sort()).toEqual(echo.map((p) => `${p.ip}:8080`).sort());
    expect(s.others).toEqual([{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'app', name: 'echo' }]);
  });

  it('reaches a service by every name, and a pod on the other node by its IP', async () => {
    const s = await status();
    for (const host of ['echo', 'echo.app', 'echo.app.svc.cluster.local']) {
      const out = await ok(['local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'node', '-e', FETCH, `http://${host}/`]);
      expect(out).toMatch(/^echo-\w+-\w+ 10\.244\.\d\.\d+\n$/);
    }
    const remote = s.pods.find((p) => p.owner === 'deployment/echo' && p.node === 'node-2')!;
    const out = await ok(['local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'node', '-e', FETCH, `http://${remote.ip}:8080/`]);
    expect(out).toBe(`${remote.name} ${remote.ip}\n`);
  });

  it('balances a VIP over both replicas', async () => {
    // A new connection per request (agent: false): the VIP is balanced per connection.
    const script = `const http = require('http'); const get = () => new Promise((ok, no) => http.get('http://echo/', { agent: false }, (r) => { let b = ''; r.on('data', (c) => b += c); r.on('end', () => ok(b)); }).on('error', no));
(async () => { const seen = {}; for (let i = 0; i < 40; i++) { const t = (await get()).split(' ')[0]; seen[t] = (seen[t] ?? 0) + 1; } console.log(JSON.stringify(seen)); })()`;
    const seen = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'node', '-e', script])) as Record<string, number>;
    expect(Object.keys(seen)).toHaveLength(2);
  });

  it('runs exec inside the pod and passes stdin, stdout and the exit status through', async () => {
    const s = await status();
    const client = s.pods.find((p) => p.name === 'client')!;
    const r = await ambit(['local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'sh', '-c', 'cat; hostname; ip -4 -o addr show dev eth0 | awk \'{print $4}\'; cat /proc/self/cgroup; exit 42'], 'from stdin\n');
    expect(r.code).toBe(42);
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(0, 3)).toEqual(['from stdin', 'client', `${client.ip}/32`]);
    expect(lines.at(-1)).toMatch(new RegExp(`/ambit-${CLUSTER}/node-1/app\\.client$`));
    const node = await ambit(['local', 'exec', '--cluster', CLUSTER, '--node', 'node-2', '--', 'ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
    expect(node.stdout).toContain('172.30.0.12/24');
  });

  it('passes SIGTERM sent to exec on to the command', async () => {
    const child = spawn(process.execPath, [BIN, 'local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'sh', '-c', 'trap "echo terminated; exit 7" TERM; echo ready; while :; do sleep 0.1; done'],
      { env: { ...process.env, AMBIT_LOCAL_STATE: stateRoot }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    await until('the command to start', async () => (stdout.includes('ready') ? true : undefined), { timeout: 20_000 });
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    expect(await exited).toBe(7);
    clearTimeout(timer);
    expect(stdout).toContain('terminated');
  });

  it('restarts a killed process and keeps the pod behind its service', async () => {
    const before = await status();
    const pod = before.pods.find((p) => p.owner === 'deployment/echo')!;
    process.kill(pod.containers[0]!.pid!, 'SIGKILL');
    const after = await until('the restart', async () => {
      const p = (await status()).pods.find((x) => x.name === pod.name)!;
      return p.restarts === 1 && p.ready === '1/1' ? p : undefined;
    }, { timeout: 30_000 });
    expect(after.containers[0]!.pid).not.toBe(pod.containers[0]!.pid);
    const svc = (await status()).services.find((v) => v.name === 'echo')!;
    expect(svc.endpoints).toContain(`${pod.ip}:8080`);
  });

  it('refuses bad manifests with the file, document and field, and changes nothing', async () => {
    const before = await status();
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, `
apiVersion: v1
kind: Pod
metadata: { name: good, namespace: app }
spec:
  containers: [{ name: c, command: ["sleep", "1000"] }]
---
apiVersion: v1
kind: Pod
metadata: { name: pinned, namespace: app }
spec:
  nodeName: node-9
  containers: [{ name: c, command: ["no-such-command-xyz"] }]
`);
    const r = await ambit(['local', 'apply', '--cluster', CLUSTER, '-f', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('bad.yaml');
    expect(r.stderr).toMatch(/document 2 \(Pod app\/pinned\)/);
    expect(r.stderr).toContain('spec.nodeName: node "node-9" does not exist');
    expect(r.stderr).toMatch(/spec\.containers\[0\]\.command\[0\]: "no-such-command-xyz" not found/);
    expect(r.stderr).toContain('nothing was changed');
    writeFileSync(bad, 'apiVersion: v1\nkind: Pod\nmetadata: { name: x\n');
    const yaml = await ambit(['local', 'apply', '--cluster', CLUSTER, '-f', bad]);
    expect(yaml.code).toBe(1);
    expect(yaml.stderr).toContain('bad.yaml');
    const after = await status();
    expect(after.pods.map((p) => p.name).sort()).toEqual(before.pods.map((p) => p.name).sort());
  });

  it('follows restart policies, and deletes what manifests name', async () => {
    const jobs = join(dir, 'jobs.yaml');
    writeFileSync(jobs, `
apiVersion: v1
kind: Pod
metadata: { name: once, namespace: app }
spec:
  restartPolicy: Never
  containers: [{ name: c, command: ["sh", "-c", "echo done"] }]
---
apiVersion: v1
kind: Pod
metadata: { name: flaky, namespace: app }
spec:
  restartPolicy: OnFailure
  containers: [{ name: c, command: ["sh", "-c", "echo try >> /tmp/ambit-flaky-${id}; [ $(wc -l < /tmp/ambit-flaky-${id}) -ge 3 ]"] }]
---
apiVersion: v1
kind: Pod
metadata: { name: broken, namespace: app }
spec:
  restartPolicy: Never
  containers: [{ name: c, command: ["sh", "-c", "exit 4"] }]
`);
    try {
      expect(await ok(['local', 'apply', '--cluster', CLUSTER, '-f', jobs])).toBe('pod/once created\npod/flaky created\npod/broken created\n');
      const pods = await until('the pods to finish', async () => {
        const s = await status();
        const byName = Object.fromEntries(s.pods.map((p) => [p.name, p]));
        return ['once', 'flaky', 'broken'].every((n) => ['Succeeded', 'Failed'].includes(byName[n]!.phase)) ? byName : undefined;
      }, { timeout: 30_000 });
      expect(pods.once).toMatchObject({ phase: 'Succeeded', restarts: 0 });
      expect(pods.flaky).toMatchObject({ phase: 'Succeeded', restarts: 2 });
      expect(pods.broken).toMatchObject({ phase: 'Failed', restarts: 0 });
      expect(pods.broken!.containers[0]).toMatchObject({ state: 'terminated', exitCode: 4 });
      expect(await ok(['local', 'logs', '--cluster', CLUSTER, 'app/once'])).toBe('done\n');
    } finally {
      rmSync(`/tmp/ambit-flaky-${id}`, { force: true });
    }

    expect(await ok(['local', 'delete', '--cluster', CLUSTER, '-f', jobs])).toBe('pod/broken deleted\npod/flaky deleted\npod/once deleted\n');
    const again = await ambit(['local', 'delete', '--cluster', CLUSTER, '-f', jobs]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('pod/once in namespace app not found');
    expect((await status()).pods.map((p) => p.name).filter((n) => ['once', 'flaky', 'broken'].includes(n))).toEqual([]);
    expect(existsSync(join(stateRoot, CLUSTER, 'pods', 'app.once'))).toBe(false);
  });

  it('runs a second cluster side by side without interference', async () => {
    const other = join(dir, 'other.yaml');
    writeFileSync(other, `
apiVersion: v1
kind: Pod
metadata: { name: solo, labels: { app: solo } }
spec:
  containers:
  - name: c
    command: ["node", "-e", ${JSON.stringify(ECHO)}]
    env: [{ name: POD_IP, valueFrom: { fieldRef: { fieldPath: status.podIP } } }]
    ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: solo }
spec:
  selector: { app: solo }
  ports: [{ port: 80, targetPort: 8080 }]
`);
    // --name is the older spelling of --cluster: both are taken, but not for two clusters at once.
    await ok(['local', 'up', '--name', OTHER, '--nodes', '1', '-f', other]);
    const both = await ambit(['local', 'status', '--cluster', CLUSTER, '--name', OTHER]);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toContain(`--cluster ${CLUSTER} and --name ${OTHER} name two clusters`);
    const s = await status(OTHER);
    expect(s.nodes).toHaveLength(1);
    // Same address plan, separate namespaces: the first cluster's pod 10.244.1.2 is not this one.
    const out = await ok(['local', 'exec', '--name', OTHER, 'default/solo', '--', 'node', '-e', FETCH, 'http://solo/']);
    expect(out).toBe(`solo ${s.pods[0]!.ip}\n`);
    const miss = await ambit(['local', 'exec', '--name', OTHER, 'solo', '--', 'node', '-e', FETCH, 'http://echo.app/']);
    expect(miss.code).toBe(3);
    const pids = s.pods.flatMap((p) => p.containers.map((c) => c.pid!));
    await ok(['local', 'down', '--name', OTHER]);
    expect(leftovers(OTHER)).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
    const again = await ok(['local', 'down', '--name', OTHER]);
    expect(again).toContain('does not exist');
    // The first cluster is untouched.
    expect((await status()).pods.every((p) => p.phase === 'Running')).toBe(true);
  });

  it('recovers after its runtime is killed, then goes down leaving nothing', async () => {
    const before = await status();
    const runtimePid = before.components.find((c) => c.name === 'runtime')!.pid!;
    process.kill(runtimePid, 'SIGKILL');
    await until('the runtime to die', async () => (alive(runtimePid) ? undefined : true), { timeout: 30_000 });
    const up = await ok(['local', 'up', '--cluster', CLUSTER]);
    expect(up).toContain(`recovering cluster ${CLUSTER}`);
    const after = await status();
    expect(after.pods.map((p) => [p.name, p.ip, p.node]).sort()).toEqual(before.pods.map((p) => [p.name, p.ip, p.node]).sort());
    expect(after.pods.every((p) => p.phase === 'Running' && p.ready === '1/1')).toBe(true);
    const out = await ok(['local', 'exec', '--cluster', CLUSTER, 'app/client', '--', 'node', '-e', FETCH, 'http://echo/']);
    expect(out).toMatch(/^echo-/);

    const pids = after.pods.flatMap((p) => p.containers.map((c) => c.pid!));
    await ok(['local', 'down', '--cluster', CLUSTER]);
    expect(leftovers(CLUSTER)).toEqual([]);
    expect(pids.filter(alive)).toEqual([]);
  });
});
