/**
 * Flagger Canaries run by ambit's controller on a real local cluster, on compressed time
 * (AMBIT_CANARY_MIN_INTERVAL=1s, analysis every 2 s): four namespaces at once, each with the
 * Deployment `backend` (an HTTP server whose version, error share and delay come from its
 * environment), a client sending steady traffic to the apex Service through the namespace's
 * waypoint, and a Canary shaped like the write-up's.
 *   - good: v2 is promoted; its weight steps 5 → 50 by 5 (the share of requests the waypoint
 *     reports for the canary's workload follows it), then every request is answered by v2; the
 *     load-test webhook received Flagger's payload at each step.
 *   - errors: v2 answers 30 % 5xx; after `threshold` failed checks it is rolled back, and it
 *     never had more of the requests than the weight it reached; none after the rollback.
 *   - slow: v2 takes 800 ms; its p99 breaks request-duration's 500 ms: rolled back.
 *   - bare: no waypoint: the Canary holds with a WaypointMissing condition.
 * The cluster (random name, temporary state root) is removed in afterAll, whatever failed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { CanaryStatus } from '../../src/canary/controller.js';
import { httpGetInNetns } from '../../src/host/netns.js';
import { readCanaryStatus } from '../../src/local/canary-cluster.js';
import { ClusterLayout } from '../../src/local/layout.js';
import { parseExposition } from '../../src/observe/exposition.js';
import { until } from '../helpers/wait.js';
import { localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

// Canaries on compressed time: the controller's floor for analysis.interval (passed on by the runtime).
process.env.AMBIT_CANARY_MIN_INTERVAL = '1s';
const cluster = localCluster('canary');

/** The app: answers its VERSION; ERRORS of the requests get a 500; each waits DELAY ms. */
const SERVER = 'const v = process.env.VERSION, e = Number(process.env.ERRORS), d = Number(process.env.DELAY); require("http").createServer((q, s) => setTimeout(() => { if (Math.random() < e) { s.statusCode = 500; s.end("fail " + v); } else s.end(v); }, d)).listen(9080)';
/** Steady traffic to the apex: 4 loops of keep-alive GETs, ~40 requests/s in all, for at most 400 s. */
const CLIENT = 'const http = require("http"); const agent = new http.Agent({ keepAlive: true }); const end = Date.now() + 400000; const one = () => new Promise((r) => http.get({ host: "backend", port: 8080, path: "/", agent }, (s) => { s.resume(); s.on("end", r); }).on("error", r)); const loop = async () => { while (Date.now() < end) { await one(); await new Promise((r) => setTimeout(r, 100)); } }; for (let i = 0; i < 4; i++) loop();';
/** Records each webhook call's body on its stdout, answers 200. */
const HOOK = 'require("http").createServer((q, s) => { let b = ""; q.on("data", (c) => b += c); q.on("end", () => { console.log("hook " + b); s.end("ok"); }); }).listen(9090)';

const deployment = (ns: string, version: string, env: { errors?: number; delay?: number } = {}) => `
apiVersion: apps/v1
kind: Deployment
metadata: { name: backend, namespace: ${ns} }
spec:
  replicas: 1
  selector: { matchLabels: { app: backend } }
  template:
    metadata: { labels: { app: backend } }
    spec:
      nodeName: node-2
      containers:
      - name: c
        command: [node, -e, '${SERVER}']
        env: [{ name: VERSION, value: "${version}" }, { name: ERRORS, value: "${env.errors ?? 0}" }, { name: DELAY, value: "${env.delay ?? 0}" }]
        ports: [{ name: http, containerPort: 9080 }]
        readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;

/**
 * The write-up's Canary on compressed time. `threshold`: the good canary's is high, because on a
 * loaded machine a new canary pod's first steps can see no requests yet (its enrollment and
 * endpoints still reaching the waypoint), which fails those checks as Flagger's do.
 */
const canary = (ns: string, webhooks = '', threshold = 3) => `
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: { name: backend, namespace: ${ns} }
spec:
  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }
  service: { port: 8080, targetPort: 9080 }
  analysis:
    interval: 2s
    threshold: ${threshold}
    maxWeight: 50
    stepWeight: 5
    metrics:
    - name: request-success-rate
      thresholdRange: { min: 99 }
      interval: 4s
    - name: request-duration
      thresholdRange: { max: 500 }
      interval: 4s
${webhooks}`;

const LOAD_TEST = `    webhooks:
    - name: load-test
      url: http://hook.tools:9090/
      timeout: 5s
      metadata: { cmd: "hey -z 1m -q 10 -c 2 http://backend:8080/" }
`;

const NAMESPACES = ['good', 'errors', 'slow', 'bare'];
const app = (ns: string) => [`
apiVersion: v1
kind: Namespace
metadata: { name: ${ns}, labels: { ambit.dev/dataplane-mode: ambient } }
`, deployment(ns, 'v1'), `
apiVersion: v1
kind: Service
metadata: { name: backend, namespace: ${ns} }
spec: { selector: { app: backend }, ports: [{ name: http, port: 8080, targetPort: 9080 }] }
`, `
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: ${ns} }
spec: { nodeName: node-1, containers: [{ name: c, command: [node, -e, '${CLIENT}'] }] }
`, canary(ns, ns === 'good' ? LOAD_TEST : '', ns === 'good' ? 10 : 3)];

// The load tester outside the mesh, as the controller is: a webhook behind a waypoint is not
// reachable from outside the mesh (docs/CANARY.md).
const MANIFESTS = [...NAMESPACES.flatMap(app), `
apiVersion: v1
kind: Namespace
metadata: { name: tools }
`, `
apiVersion: v1
kind: Pod
metadata: { name: hook, namespace: tools, labels: { app: hook } }
spec: { nodeName: node-1, containers: [{ name: c, command: [node, -e, '${HOOK}'], ports: [{ containerPort: 9090 }] }] }
`, `
apiVersion: v1
kind: Service
metadata: { name: hook, namespace: tools }
spec: { selector: { app: hook }, ports: [{ name: http, port: 9090, targetPort: 9090 }] }
`].join('---');

interface View { namespace: string; name: string; status: CanaryStatus | null; events: { message: string }[] }
const canaries = async () => JSON.parse(await cluster.ok(['canary', 'status', '--json', '--cluster', cluster.name])) as View[];
const canaryIn = async (ns: string) => (await canaries()).find((c) => c.namespace === ns)!;

/** The waypoints' addresses, by namespace (they do not change during the test). */
const waypointIps = new Map<string, string>();

/** Requests the namespace's waypoint reported, by destination workload (the canary's is `backend`); read in-process, in the underlay netns, so that a poll takes milliseconds. */
async function waypointRequests(ns: string): Promise<Record<string, number>> {
  if (!waypointIps.has(ns)) {
    const wp = (await cluster.status()).pods.find((p) => p.namespace === ns && p.name === 'waypoint-waypoint' && p.phase === 'Running');
    if (!wp) return {};
    waypointIps.set(ns, wp.ip);
  }
  const { body } = await httpGetInNetns(`/run/netns/${new ClusterLayout(cluster.name, cluster.stateDir).underlayNetns}`, waypointIps.get(ns)!, 15020, '/metrics');
  const out: Record<string, number> = {};
  for (const s of parseExposition(body).samples) {
    if (s.name !== 'istio_requests_total' || s.labels.reporter !== 'waypoint' || s.labels.destination_workload_namespace !== ns) continue;
    out[s.labels.destination_workload!] = (out[s.labels.destination_workload!] ?? 0) + s.value;
  }
  return out;
}

/** The canary's status as the controller last wrote it. */
const statusOf = (ns: string) => readCanaryStatus(cluster.stateDir, ns, 'backend');

/** A canary's status and latest events, for a failure's message. */
async function explain(ns: string): Promise<string> {
  const c = await canaryIn(ns);
  return JSON.stringify({ status: c.status, events: c.events.slice(-12).map((e) => e.message) }, null, 1);
}

/** While `done` is false: every quarter second, the canary's weight then and the requests since the last look, by workload. */
async function watch(ns: string, done: () => Promise<boolean>, timeoutMs = 180_000): Promise<{ weight: number; canary: number; primary: number }[]> {
  const rows: { weight: number; canary: number; primary: number }[] = [];
  const deadline = Date.now() + timeoutMs;
  let last = await waypointRequests(ns);
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`canary ${ns}/backend did not finish within ${timeoutMs / 1000} s: ${await explain(ns)}`);
    await new Promise((r) => setTimeout(r, 250));
    const weight = statusOf(ns)?.canaryWeight ?? 0;
    const now = await waypointRequests(ns);
    rows.push({ weight, canary: (now.backend ?? 0) - (last.backend ?? 0), primary: (now['backend-primary'] ?? 0) - (last['backend-primary'] ?? 0) });
    last = now;
  }
  return rows;
}

describeAsRoot('canaries that promote and roll back themselves', () => {
  beforeAll(async () => {
    await cluster.up(MANIFESTS);
    for (const ns of ['good', 'errors', 'slow']) await cluster.ok(['waypoint', 'apply', '-n', ns, '--enroll-namespace', '--cluster', cluster.name]);
    await until('every canary initialized (the bare one holding)', async () => {
      const all = await canaries();
      return all.filter((c) => c.status?.phase === 'Initialized').length === 3 || undefined;
    }, { timeout: 120_000, interval: 1000 });
  }, 240_000);

  afterAll(() => cluster.down(), 120_000);

  it('promotes a good v2 step by step, rolls back one with 30 % errors and one too slow, within their shares', async () => {
    // Initialized: the primary took the traffic, the target was scaled to 0.
    const before = await cluster.status();
    expect(before.pods.filter((p) => p.namespace === 'good' && p.owner === 'deployment/backend')).toEqual([]);
    expect(before.pods.some((p) => p.namespace === 'good' && p.owner === 'deployment/backend-primary')).toBe(true);

    await cluster.apply('v2.yaml', [deployment('good', 'v2'), deployment('errors', 'v2', { errors: 0.3 }), deployment('slow', 'v2', { delay: 800 })].join('---'));
    const finished = (ns: string) => () => Promise.resolve(['Succeeded', 'Failed'].includes(statusOf(ns)?.phase ?? ''));
    const [good, errors] = await Promise.all([watch('good', finished('good')), watch('errors', finished('errors')), watch('slow', finished('slow'))]);

    // good: promoted, by steps of 5 up to 50.
    const g = await canaryIn('good');
    expect(g.status!.phase, JSON.stringify(g.events.map((e) => e.message))).toBe('Succeeded');
    const advances = g.events.map((e) => /Advance backend\.good canary weight (\d+)/.exec(e.message)?.[1]).filter(Boolean).map(Number);
    expect(advances).toEqual([5, 10, 15, 20, 25, 30, 35, 40, 45, 50]);
    expect(g.events.some((e) => e.message.includes('Promotion completed!'))).toBe(true);
    // The waypoint's metrics follow the weights: the canary's share of the requests at 50 is
    // far above its share at 5, and near each weight (requests per second are few: loose bounds).
    const share = (rows: typeof good, pick: (w: number) => boolean) => {
      const r = rows.filter((x) => pick(x.weight));
      const c = r.reduce((a, x) => a + x.canary, 0);
      const t = r.reduce((a, x) => a + x.canary + x.primary, 0);
      return { share: t > 0 ? c / t : NaN, total: t };
    };
    const low = share(good, (w) => w > 0 && w <= 10);
    const high = share(good, (w) => w >= 45);
    console.log(`good: canary share at weights 5-10 ${(low.share * 100).toFixed(1)} % of ${low.total}, at 45-50 ${(high.share * 100).toFixed(1)} % of ${high.total}`);
    expect(low.share).toBeLessThan(0.25);
    expect(high.share).toBeGreaterThan(0.3);
    expect(high.share).toBeLessThan(0.7);
    // Then the primary answers v2 to every request.
    const answers = await cluster.exec('good/client', ['node', '-e', 'const http = require("http"); (async () => { const seen = {}; for (let i = 0; i < 20; i++) { const b = await new Promise((r) => http.get({ host: "backend", port: 8080 }, (s) => { let t = ""; s.on("data", (c) => t += c); s.on("end", () => r(t)); }).on("error", (e) => r("error " + e.code))); seen[b] = (seen[b] ?? 0) + 1; } console.log(JSON.stringify(seen)); })()']);
    expect(JSON.parse(answers)).toEqual({ v2: 20 });
    // The load-test webhook got Flagger's payload.
    const hookLog = readFileSync(join(cluster.stateDir, 'pods', 'tools.hook', 'c.log'), 'utf8').split('\n').filter((l) => l.startsWith('hook '));
    expect(hookLog.length).toBeGreaterThanOrEqual(10);
    expect(JSON.parse(hookLog[0]!.slice(5))).toMatchObject({ name: 'backend', namespace: 'good', phase: 'Progressing', metadata: { cmd: 'hey -z 1m -q 10 -c 2 http://backend:8080/' } });

    // errors: rolled back after 3 failed checks, having had no more than its 5 %.
    const e = await canaryIn('errors');
    expect(e.status!.phase).toBe('Failed');
    expect(e.status!.failedChecks).toBe(3);
    expect(e.events.some((x) => /success rate \d+\.\d+% < 99\.00%/.test(x.message))).toBe(true);
    // A check at 5 % sees a handful of requests, so one can pass by luck (as in Flagger) and the
    // weight move on a step or two; the canary never had more than the weight it reached.
    const reached = Math.max(...errors.map((x) => x.weight)) / 100;
    expect(reached).toBeLessThanOrEqual(0.2);
    const errShare = share(errors, () => true);
    console.log(`errors: canary share ${(errShare.share * 100).toFixed(1)} % of ${errShare.total} requests, weight reached ${reached * 100} %`);
    expect(errShare.share).toBeLessThan(reached + 4 * Math.sqrt((reached * (1 - reached)) / Math.max(1, errShare.total)));
    // After the rollback no request reaches the canary: its count stands still while traffic goes on.
    const a = await waypointRequests('errors');
    await until('more requests through the waypoint', async () => ((await waypointRequests('errors'))['backend-primary'] ?? 0) > (a['backend-primary'] ?? 0) + 40 || undefined, { timeout: 30_000, interval: 500 });
    expect((await waypointRequests('errors')).backend ?? 0).toBe(a.backend ?? 0);

    // slow: rolled back on request-duration.
    const s = await canaryIn('slow');
    expect(s.status!.phase).toBe('Failed');
    expect(s.events.some((x) => /request duration \d+ms > 500ms/.test(x.message))).toBe(true);
  }, 300_000);

  it('holds a canary whose service has no waypoint, saying so', async () => {
    const b = await canaryIn('bare');
    expect(b.status!.phase).toBe('Initializing');
    expect(b.status!.conditions[0]).toMatchObject({ reason: 'WaypointMissing' });
    expect(b.status!.conditions[0]!.message).toContain('ambit waypoint apply -n bare');
    const text = await cluster.ok(['canary', 'status', '-n', 'bare', '--cluster', cluster.name]);
    expect(text).toContain('has no waypoint');
  });
});
