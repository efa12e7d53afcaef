/**
 * SMI TrafficSplit end to end in a local cluster: the write-up's split (v1alpha1, 900/100 of
 * backend-service between backend-v1 and backend-v2) applied unchanged in a namespace bound to
 * its waypoint. The root service selects both versions, so without the split each would get
 * about half; through the waypoint v2 gets its 10 %, within binomial bounds, and every request
 * is answered. The cluster (random name, temporary state root) is removed in afterAll, whatever
 * failed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('tsplit');

const VERSION = (v: string, node: string) => `
apiVersion: v1
kind: Pod
metadata: { name: backend-${v}, namespace: production, labels: { app: backend, version: ${v} } }
spec:
  nodeName: ${node}
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => s.end("${v}")).listen(9080)']
    ports: [{ name: http, containerPort: 9080 }]
    readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;
const SERVICE = (name: string, selector: string) => `
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: production }
spec: { selector: ${selector}, ports: [{ name: http, port: 8080, targetPort: http }] }
`;

const MANIFESTS = [`
apiVersion: v1
kind: Namespace
metadata: { name: production, labels: { ambit.dev/dataplane-mode: ambient } }
`,
SERVICE('backend-service', '{ app: backend }'),
SERVICE('backend-v1', '{ app: backend, version: v1 }'),
SERVICE('backend-v2', '{ app: backend, version: v2 }'),
VERSION('v1', 'node-2'),
VERSION('v2', 'node-1'),
`
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: production }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`,
// The write-up's manifest, as written there.
`
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata:
  name: backend-split
  namespace: production
spec:
  service: backend-service
  backends:
  - service: backend-v1
    weight: 900  # 90%
  - service: backend-v2
    weight: 100  # 10%
`].join('---');

/** `node -e LOAD N`: N GETs to backend-service:8080 over one keep-alive connection; prints the count of each answer ("200 v1", "error ECONNRESET"). */
const LOAD = `const http = require("http"); const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); const n = Number(process.argv[1]); const seen = {};
(async () => { for (let i = 0; i < n; i++) { const key = await new Promise((resolve) => http.get({ host: "backend-service", port: 8080, path: "/", agent }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => resolve(r.statusCode + " " + b.trim())); }).on("error", (e) => resolve("error " + (e.code ?? e.message)))); seen[key] = (seen[key] ?? 0) + 1; } console.log(JSON.stringify(seen)); agent.destroy(); })();`;
const load = async (n: number) => JSON.parse(await cluster.exec('production/client', ['node', '-e', LOAD, String(n)])) as Record<string, number>;

const waypointLog = () => readFileSync(join(cluster.stateDir, 'pods', 'production.waypoint-waypoint', 'waypoint.log'), 'utf8');

describeAsRoot('SMI TrafficSplit through a waypoint', () => {
  beforeAll(async () => {
    await cluster.up(MANIFESTS);
    await cluster.ok(['waypoint', 'apply', '-n', 'production', '--enroll-namespace', '--cluster', cluster.name]);
    await until('the waypoint pod ready', async () => /production\s+waypoint\s+Running 1\/1/.test(await cluster.ok(['waypoint', 'list', '--cluster', cluster.name])) || undefined, { timeout: 60_000, interval: 500 });
    // Requests reach the waypoint once the node agents know of it, and are split once it has the
    // TrafficSplit: its access log names the split's route.
    await until('requests routed by the TrafficSplit', async () => {
      await load(5);
      return waypointLog().includes('"route":"production/backend-split#0"') || undefined;
    }, { timeout: 60_000, interval: 500 });
  }, 240_000);

  afterAll(() => cluster.down(), 120_000);

  it("holds the write-up's 900/100 over 1,000 requests, every one answered", async () => {
    const seen = await load(1000);
    const v2 = seen['200 v2'] ?? 0;
    console.log(`TrafficSplit 900/100: ${JSON.stringify(seen)}; v2 share ${(v2 / 10).toFixed(1)} %`);
    expect((seen['200 v1'] ?? 0) + v2, JSON.stringify(seen)).toBe(1000);
    // Binomial(1000, 0.1): sd 9.5; within 4 sd of 100. Without the split (the root service
    // selects both versions) v2 would get about 500.
    expect(v2).toBeGreaterThan(100 - 38);
    expect(v2).toBeLessThan(100 + 38);
  }, 120_000);
});
