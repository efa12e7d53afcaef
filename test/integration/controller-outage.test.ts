/**
 * A controller outage loses nothing (issue 20, item 2; bench/controller-outage.ts is the full
 * run): on a 2-node cluster with the web app behind its namespace's waypoint, a client opens 100
 * new connections per second through the mesh and the waypoint while the controller is stopped
 * for 60 s. No request fails; a meshed pod applied meanwhile runs, and serves through the mesh
 * once the controller is back; the node agents and the waypoint neither restart nor miss the
 * restarted controller's config version.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { cli, ROOT } from './helpers/cli.js';
import { describeAsRoot } from './helpers/root.js';
import { WEB_APP } from './helpers/web-app.js';
import { modelVersionOf } from '../../src/discovery/discovery.js';

const OUTAGE_MS = 60_000;
const RATE = 100;

const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-outage-'));
const CLUSTER = `co${Math.random().toString(36).slice(2, 6)}`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-outage-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };
const { ambit, ok } = cli(env);

/** Applied while the controller is away: a new identity and a new pod, which answers with the address it saw. */
const LATE = `
apiVersion: v1
kind: ServiceAccount
metadata: { name: late, namespace: obs }
---
apiVersion: v1
kind: Service
metadata: { name: late, namespace: obs }
spec: { selector: { app: late }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: late, namespace: obs }
spec:
  replicas: 1
  selector: { matchLabels: { app: late } }
  template:
    metadata: { labels: { app: late } }
    spec:
      serviceAccountName: late
      containers:
      - name: c
        command: [node, -e, 'require("http").createServer((q, s) => s.end(String(q.socket.remoteAddress))).listen(9080)']
        readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;

/** GET http://late/ every 250 ms, one JSON line per answer: the status and the address the pod saw. */
const PROBE = `const http = require("http");
setInterval(() => { const at = Date.now(); http.get({ host: "late", path: "/", timeout: 3000, agent: false }, (res) => { let body = ""; res.on("data", (c) => { body += c; }); res.on("end", () => console.log(JSON.stringify({ at, status: res.statusCode, body }))); })
  .on("timeout", function () { this.destroy(new Error("timeout")); }).on("error", (e) => console.log(JSON.stringify({ at, error: e.code || e.message }))); }, 250);`;

interface Status {
  pods: { namespace: string; name: string; ip: string; phase: string; restarts: number; containers: { pid?: number }[] }[];
  components: { name: string; node?: string; pid?: number; detail: string }[];
  controller?: { version: string; subscribers: { kind: string; node: string; name: string; lastAck?: string }[] };
}
const status = async () => JSON.parse(await ok(['local', 'status', '--cluster', CLUSTER, '--json'])) as Status;

const children: ChildProcess[] = [];
/** `ambit local exec` left running; its output as it comes. */
function execInPod(pod: string, cmd: string[]): { child: ChildProcess; out: () => string; err: () => string; done: Promise<number | null> } {
  const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, pod, '--', ...cmd], { cwd: ROOT, env });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => { stdout += c.toString(); });
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  return { child, out: () => stdout, err: () => stderr, done: new Promise((resolve) => child.on('close', resolve)) };
}

describeAsRoot('a controller outage under steady traffic', () => {
  let client = { name: '', ip: '' };

  beforeAll(async () => {
    writeFileSync(join(dir, 'app.yaml'), WEB_APP);
    writeFileSync(join(stateRoot, 'late.yaml'), LATE);
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', dir, '--timeout', '120']);
    await ok(['waypoint', 'apply', '-n', 'obs', '--enroll-namespace', '--cluster', CLUSTER]);
    await until('the waypoint pod ready', async () => /obs\s+waypoint\s+Running 1\/1/.test(await ok(['waypoint', 'list', '--cluster', CLUSTER])) || undefined, { timeout: 60_000, interval: 500 });
    const pod = (await status()).pods.find((p) => p.namespace === 'obs' && p.name.startsWith('client-'))!;
    client = { name: pod.name, ip: pod.ip };
    // The waypoint's traffic reaches it once the node agents know of it.
    await until('requests through the mesh and the waypoint', async () => {
      const r = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, `obs/${client.name}`, '--', 'node', join(ROOT, 'bench/conn-rate.mjs'), '--host', 'web', '--rate', '20', '--seconds', '1'])) as { ok: number; failed: number };
      return r.failed === 0 && r.ok === 20;
    }, { timeout: 60_000, interval: 500 });
  }, 240_000);

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await ambit(['local', 'down', '--cluster', CLUSTER]).catch(() => undefined);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it(`loses no request over a ${OUTAGE_MS / 1000} s outage; a pod started meanwhile is enrolled once it is back; agents and the waypoint resync without restarting`, async () => {
    const before = await status();
    const agentPids = () => before.components.filter((c) => c.name === 'node-agent').map((c) => c.pid);
    const waypointOf = (s: Status) => s.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('waypoint'))!;
    const versionBefore = before.controller!.version;

    const seconds = Math.ceil(OUTAGE_MS / 1000) + 50;
    const traffic = execInPod(`obs/${client.name}`, ['node', join(ROOT, 'bench/conn-rate.mjs'), '--host', 'web', '--rate', String(RATE), '--seconds', String(seconds), '--progress']);
    const failedSoFar = () => [...traffic.err().matchAll(/failed=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
    await until('traffic flowing', () => /^t=2 /m.test(traffic.err()), { timeout: 20_000, interval: 100 });

    await ok(['local', 'component', 'stop', 'controller', '--cluster', CLUSTER]);
    const stoppedAt = Date.now();
    await ok(['local', 'apply', '--cluster', CLUSTER, '-f', join(stateRoot, 'late.yaml')]);
    const late = await until('the late pod running with the controller away', async () => (await status()).pods.find((p) => p.namespace === 'obs' && p.name.startsWith('late-') && p.phase === 'Running'), { timeout: 45_000, interval: 500 });
    const probe = execInPod(`obs/${client.name}`, ['node', '-e', PROBE]);
    // The outage itself: traffic keeps succeeding all along.
    await until(`${OUTAGE_MS / 1000} s without the controller`, () => {
      expect(failedSoFar(), traffic.err()).toBe(0);
      return Date.now() - stoppedAt >= OUTAGE_MS;
    }, { timeout: OUTAGE_MS + 30_000, interval: 500 });
    expect(traffic.child.exitCode).toBeNull();

    await ok(['local', 'component', 'start', 'controller', '--cluster', CLUSTER]);
    const startedAt = Date.now();
    // Through the mesh, the pod sees the agent's handover from its own address, not the client's.
    const answers = () => probe.out().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { at: number; status?: number; body?: string; error?: string });
    await until('the late pod serving through the mesh', () => answers().some((a) => a.at >= startedAt && a.status === 200 && a.body !== undefined && a.body.replace(/^::ffff:/, '') !== client.ip), { timeout: 60_000, interval: 250 });
    const servedAfterMs = Date.now() - startedAt;
    const after = await until('every subscriber at the restarted controller\'s version', async () => {
      const s = await status();
      const c = s.controller;
      return c && c.version !== versionBefore && c.subscribers.length >= 3 && c.subscribers.every((x) => x.lastAck !== undefined && modelVersionOf(x.lastAck) === c.version) ? s : undefined;
    }, { timeout: 60_000, interval: 500 });
    expect(after.controller!.subscribers.map((x) => x.kind).sort()).toEqual(['node-agent', 'node-agent', 'waypoint']);
    expect(after.components.filter((c) => c.name === 'node-agent').map((c) => c.pid)).toEqual(agentPids());
    expect(after.components.filter((c) => c.name === 'node-agent').map((c) => /restarts/.test(c.detail))).toEqual([false, false]);
    expect(waypointOf(after).containers[0]!.pid).toBe(waypointOf(before).containers[0]!.pid);
    expect(waypointOf(after).restarts).toBe(waypointOf(before).restarts);
    expect(late.restarts).toBe(0);

    await traffic.done;
    const counts = JSON.parse(traffic.out().trim().split('\n').at(-1)!) as { attempted: number; ok: number; failed: number; reasons: Record<string, number> };
    expect(counts.failed, JSON.stringify(counts.reasons)).toBe(0);
    expect(counts.ok).toBe(RATE * seconds);
    console.log(`controller outage ${OUTAGE_MS / 1000} s: ${counts.ok} requests ok, 0 failed; the late pod served through the mesh ${(servedAfterMs / 1000).toFixed(1)} s after the controller's start`);
  }, OUTAGE_MS + 180_000);
});
