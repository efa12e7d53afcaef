/**
 * Waypoints end to end in a local cluster: `ambit waypoint apply` runs a waypoint pod, the
 * namespace is bound to it, and its node agents send the service's traffic through it. The
 * waypoint routes by the Istio VirtualService and DestinationRule applied unchanged (weighted
 * canary, header match) and a removed waypoint fails closed.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-wp-'));
const CLUSTER = `wp${Math.random().toString(36).slice(2, 6)}`;

/**
 * The waypoint's log once every pattern is in it: a request's access-log line is written when it
 * ends, which may come after the client has its answer.
 */
async function waypointLog(...patterns: (RegExp | string)[]): Promise<string> {
  const file = join(stateDir, 'pods', 'shop.waypoint-waypoint', 'waypoint.log');
  const has = (text: string) => patterns.every((p) => (typeof p === 'string' ? text.includes(p) : p.test(text)));
  await until(`the waypoint's log to show ${patterns.join(', ')}`, () => has(readFileSync(file, 'utf8')), { timeout: 5000, interval: 100 }).catch(() => undefined);
  // Whatever it holds by then: the test's own expectations say what is missing.
  return readFileSync(file, 'utf8');
}
const stateDir = join(stateRoot, CLUSTER);
const dir = mkdtempSync(join(tmpdir(), 'ambit-wp-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };

const { ambit, ok } = cli(env);

/** The repository's grpc-js, for the gRPC pods (they run node with no node_modules of their own). */
const GRPC_JS = fileURLToPath(new URL('../../node_modules/@grpc/grpc-js', import.meta.url));
/** A gRPC service without a .proto: strings as UTF-8 messages, one unary and one bidirectional-streaming method. */
const GRPC_DEF = `const grpc = require(${JSON.stringify(GRPC_JS)}); const ser = (s) => Buffer.from(String(s)); const de = (b) => b.toString();
const m = (path, requestStream, responseStream) => ({ path, requestStream, responseStream, requestSerialize: ser, requestDeserialize: de, responseSerialize: ser, responseDeserialize: de });
const def = { unary: m("/test.Echo/Unary", false, false), chat: m("/test.Echo/Chat", true, true) };`;
const GRPC_SERVER = `${GRPC_DEF} const s = new grpc.Server();
s.addService(def, {
  unary: (call, cb) => call.request === "missing" ? cb({ code: grpc.status.NOT_FOUND, details: "no such thing" }) : cb(null, "echo " + call.request + " from " + process.env.POD),
  chat: (call) => { call.on("data", (msg) => call.write("re " + msg)); call.on("end", () => call.end()); },
});
s.bindAsync("0.0.0.0:50051", grpc.ServerCredentials.createInsecure(), (err) => { if (err) throw err; });`;
// The chat's messages go 300 ms apart on purpose: each answer arriving as its message is sent
// (out.gaps) shows the waypoint streams rather than buffering the call.
const GRPC_CLIENT = `${GRPC_DEF} const Client = grpc.makeGenericClientConstructor(def, "Echo");
const c = new Client("echo:50051", grpc.credentials.createInsecure(), { "grpc.service_config_disable_resolution": 1 });
const unary = (msg) => new Promise((resolve) => c.unary(msg, (err, res) => resolve(err ? "status " + err.code + " " + err.details : res)));
(async () => {
  const out = { ok: await unary("hi"), missing: await unary("missing"), chat: [], gaps: [] };
  const call = c.chat(); let last = Date.now();
  call.on("data", (msg) => { out.chat.push(msg); out.gaps.push(Date.now() - last); last = Date.now(); });
  call.on("status", (st) => { out.chatStatus = st.code; console.log(JSON.stringify(out)); c.close(); });
  for (const msg of ["a", "b", "c"]) { call.write(msg); await new Promise((r) => setTimeout(r, 300)); }
  call.end();
})();`;
/** An OTLP/HTTP (JSON) collector: keeps the spans it is sent, GET answers them. */
const COLLECTOR = `const spans = []; require("http").createServer((q, s) => { let b = ""; q.on("data", (c) => b += c); q.on("end", () => {
  if (q.method !== "POST") return s.end(JSON.stringify(spans));
  for (const rs of JSON.parse(b).resourceSpans) for (const ss of rs.scopeSpans) for (const sp of ss.spans) spans.push({ service: rs.resource.attributes.find((a) => a.key === "service.name").value.stringValue, ...sp });
  s.setHeader("content-type", "application/json"); s.end("{}"); }); }).listen(4318)`;
/** Calls reviews for each request, passing the trace context on as an instrumented app does. */
const FRONT = `require("http").createServer((q, s) => { const h = {};
  for (const k of ["traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-request-id"]) if (q.headers[k]) h[k] = q.headers[k];
  require("http").get({ host: "reviews", path: "/", headers: h }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => s.end("front > " + b)); })
    .on("error", (e) => { s.statusCode = 502; s.end(e.message); }); }).listen(9080)`;

/** N GETs over one keep-alive connection from the client pod; prints the count of each answer. */
const LOAD = `const http = require("http"); const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); const n = Number(process.argv[1]); const headers = JSON.parse(process.argv[2]); const seen = {};
process.argv[3] = process.argv[3] ?? "version";
(async () => { for (let i = 0; i < n; i++) { const body = await new Promise((resolve) => http.get({ host: "reviews", port: 80, path: "/", agent, headers }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => resolve(r.statusCode + " " + b.trim())); }).on("error", (e) => resolve("error " + (e.code ?? e.message)))); const key = process.argv[3] === "pods" ? body : body.split(" ").slice(0, 2).join(" "); seen[key] = (seen[key] ?? 0) + 1; } console.log(JSON.stringify(seen)); agent.destroy(); })();`;
async function load(n: number, headers: Record<string, string> = {}, by: 'version' | 'pods' = 'version'): Promise<Record<string, number>> {
  return JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', LOAD, String(n), JSON.stringify(headers), by])) as Record<string, number>;
}

const VERSION = (v: string, node: string, name = `reviews-${v}`) => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop, labels: { app: reviews, version: ${v} } }
spec:
  nodeName: ${node}
  serviceAccountName: reviews
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => { if (q.headers["x-mirror"]) console.log("host " + q.headers.host); s.end("${v} ${name}"); }).listen(9080)']
    ports: [{ name: http, containerPort: 9080 }]
    readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;

describeAsRoot('waypoints', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'shop.yaml'), `
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: reviews, namespace: shop }
---
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: shop }
spec: { selector: { app: reviews }, ports: [{ name: http, port: 80, targetPort: http }] }
---
${VERSION('v1', 'node-2')}
---
${VERSION('v2', 'node-1')}
---
${VERSION('v1', 'node-1', 'reviews-v1b')}
---
apiVersion: v1
kind: Service
metadata: { name: ratings, namespace: shop }
spec: { selector: { app: ratings }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: ratings, namespace: shop, labels: { app: ratings } }
spec:
  nodeName: node-2
  containers:
  - name: c
    # Every other request fails with 503; /slow answers after 2 s.
    command: [node, -e, 'let n = 0; require("http").createServer((q, s) => { if (q.url === "/slow") return setTimeout(() => s.end("slow"), 2000); if (q.url === "/wait") return setTimeout(() => s.end("waited"), 1000); n++; if (n % 2) { s.statusCode = 503; return s.end("fail " + n); } s.end("ok " + n); }).listen(9080)']
    readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: details, namespace: shop }
spec: { selector: { app: details }, ports: [{ port: 80, targetPort: 9080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: details-good, namespace: shop, labels: { app: details } }
spec: { nodeName: node-1, containers: [{ name: c, command: [node, -e, 'require("http").createServer((q, s) => s.end("good")).listen(9080)'], readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 } }] }
---
apiVersion: v1
kind: Pod
metadata: { name: details-bad, namespace: shop, labels: { app: details } }
spec: { nodeName: node-2, containers: [{ name: c, command: [node, -e, 'require("http").createServer((q, s) => { s.statusCode = 500; s.end("bad"); }).listen(9080)'], readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 } }] }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: details, namespace: shop }
spec:
  host: details
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    outlierDetection: { consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 100 }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: ratings, namespace: shop }
spec:
  host: ratings
  trafficPolicy:
    connectionPool: { tcp: { maxConnections: 1 }, http: { http1MaxPendingRequests: 1 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ratings, namespace: shop }
spec:
  hosts: [ratings]
  http:
  - match: [{ uri: { exact: /slow } }]
    timeout: 500ms
    route: [{ destination: { host: ratings } }]
  - match: [{ uri: { exact: /fault } }]
    fault: { delay: { fixedDelay: 300ms, percentage: { value: 100 } }, abort: { httpStatus: 418, percentage: { value: 100 } } }
    route: [{ destination: { host: ratings } }]
  - retries: { attempts: 2, retryOn: 5xx }
    route: [{ destination: { host: ratings } }]
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: shop }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: shop }
spec:
  host: reviews
  subsets:
  - name: v1
    labels: { version: v1 }
    trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: x-user } } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
  - match: [{ headers: { user-type: { exact: internal } } }]
    route: [{ destination: { host: reviews, subset: v2 } }]
  - match: [{ headers: { x-mirror: { exact: "yes" } } }]
    route: [{ destination: { host: reviews, subset: v1 } }]
    mirror: { host: reviews, subset: v2 }
    mirrorPercentage: { value: 100 }
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 90 }
    - { destination: { host: reviews, subset: v2 }, weight: 10 }
`);
    writeFileSync(join(dir, 'more.yaml'), `
apiVersion: v1
kind: Namespace
metadata: { name: obs }
---
apiVersion: v1
kind: Service
metadata: { name: collector, namespace: obs }
spec: { selector: { app: collector }, ports: [{ name: http, port: 4318, targetPort: 4318 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: collector, namespace: obs, labels: { app: collector } }
spec:
  nodeName: node-1
  containers: [{ name: c, command: [node, -e, ${JSON.stringify(COLLECTOR)}], readinessProbe: { tcpSocket: { port: 4318 }, periodSeconds: 1 } }]
---
apiVersion: v1
kind: Service
metadata: { name: front, namespace: shop }
spec: { selector: { app: front }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: front, namespace: shop, labels: { app: front } }
spec:
  nodeName: node-2
  containers: [{ name: c, command: [node, -e, ${JSON.stringify(FRONT)}], readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 } }]
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: shop }
spec: { selector: { app: echo }, ports: [{ name: grpc, port: 50051, targetPort: 50051, appProtocol: grpc }] }
---
apiVersion: v1
kind: Pod
metadata: { name: echo, namespace: shop, labels: { app: echo } }
spec:
  nodeName: node-2
  containers:
  - name: c
    command: [node, -e, ${JSON.stringify(GRPC_SERVER)}]
    env: [{ name: POD, value: echo }]
    readinessProbe: { tcpSocket: { port: 50051 }, periodSeconds: 1 }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: reviews-no-admin, namespace: shop }
spec:
  targetRefs: [{ kind: Service, group: "", name: reviews }]
  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin, /admin/*] } }] }]
`);
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', join(dir, 'shop.yaml'), '-f', join(dir, 'more.yaml')]);
    await ok(['waypoint', 'apply', '-n', 'shop', '--enroll-namespace', '--cluster', CLUSTER, '--tracing-endpoint', 'http://collector.obs:4318', '--tracing-sampling', '100']);
    await until('the waypoint pod ready', async () => {
      const out = await ok(['waypoint', 'list', '--cluster', CLUSTER]);
      return /shop\s+waypoint\s+Running 1\/1\s+10\.244\.\d+\.\d+\s+namespace shop/.test(out) ? true : undefined;
    }, { timeout: 60_000 });
  }, 180_000);

  afterAll(async () => {
    await ambit(['local', 'down', '--cluster', CLUSTER]);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('splits 90/10 between the subsets over 2,000 requests, through the waypoint', async () => {
    const seen = await until('routed answers', async () => {
      const s = await load(2000);
      return s['200 v1'] !== undefined ? s : undefined;
    }, { timeout: 30_000, interval: 300 });
    // Every one answered by v1 or v2.
    expect((seen['200 v1'] ?? 0) + (seen['200 v2'] ?? 0), JSON.stringify(seen)).toBe(2000);
    // Binomial(2000, 0.1): sd 13.4; ±4 sd.
    expect(seen['200 v2']).toBeGreaterThan(200 - 54);
    expect(seen['200 v2']).toBeLessThan(200 + 54);
    const log = await waypointLog('"route":"shop/reviews');
    expect(log).toContain('"route":"shop/reviews');
    // Istio's request metrics from the waypoint, by destination version.
    const ip = /shop\s+waypoint\s+Running 1\/1\s+(10\.244\.\d+\.\d+)/.exec(await ok(['waypoint', 'list', '--cluster', CLUSTER]))![1]!;
    const text = await ok(['local', 'exec', '--cluster', CLUSTER, '--node', 'node-1', '--', 'node', '-e', 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))', `http://${ip}:15020/metrics`]);
    const count = (version: string) => text.split('\n').filter((l) => l.startsWith('istio_requests_total{') && l.includes('reporter="waypoint"') && l.includes('response_code="200"')
      && l.includes(`destination_version="${version}"`) && l.includes('source_principal="spiffe://cluster.local/ns/shop/sa/default"') && l.includes('destination_service_name="reviews"'))
      .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    expect(count('v1') + count('v2')).toBeGreaterThanOrEqual(seen['200 v1']! + seen['200 v2']!);
    expect(count('v2')).toBeGreaterThan(0);
    expect(text).toContain('istio_request_duration_milliseconds_bucket{');
    expect(log).toContain('"principal":"spiffe://cluster.local/ns/shop/sa/default"');
  }, 120_000);

  it('sends user-type: internal to v2', async () => {
    expect(await load(50, { 'user-type': 'internal' })).toEqual({ '200 v2': 50 });
  }, 60_000);

  it('mirrors requests to v2 while v1 answers', async () => {
    expect(await load(5, { 'x-mirror': 'yes' })).toEqual({ '200 v1': 5 });
    const logged = await until('the mirrored copies', async () => {
      const lines = readFileSync(join(stateDir, 'pods', 'shop.reviews-v2', 'c.log'), 'utf8').split('\n').filter((l) => l.startsWith('host '));
      return lines.length >= 5 ? lines : undefined;
    }, { timeout: 10_000, interval: 300 });
    expect(logged.every((l) => l === 'host reviews-shadow')).toBe(true);
  }, 60_000);

  it('keeps a user on one endpoint with the subset\'s consistent hash, and spreads users over both', async () => {
    const pods = new Set<string>();
    // 16 users: the chance that all land on one of two pods is 2^-15.
    for (const user of ['ann', 'bob', 'cyd', 'dan', 'eve', 'fay', 'gus', 'hal', 'ida', 'jo', 'kim', 'lou', 'max', 'ned', 'oz', 'pam']) {
      const seen = await load(20, { 'x-user': user }, 'pods');
      const v1 = Object.entries(seen).filter(([k]) => k.startsWith('200 v1 '));
      // The 90/10 split still applies; within v1, one user always lands on one pod.
      expect(v1, JSON.stringify(seen)).toHaveLength(1);
      pods.add(v1[0]![0]);
    }
    expect([...pods].sort()).toEqual(['200 v1 reviews-v1', '200 v1 reviews-v1b']);
  }, 120_000);

  it('turns an upstream 503 into a 200 with a retry, answers 504 when the route timeout fires, and injects faults', async () => {
    const GET = (path: string) => `require("http").get({ host: "ratings", path: "${path}", agent: false }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log(r.statusCode + " " + b.trim())); }).on("error", (e) => console.log("error " + e.code))`;
    for (let i = 0; i < 5; i++) {
      const out = (await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', GET('/')])).trim();
      expect(out).toMatch(/^200 ok \d+$/);
    }
    // Timed inside the client pod: `ambit local exec` and node's start-up are not the waypoint's.
    const timed = (await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', `const t = Date.now(); ${GET('/slow').replace('console.log(r.statusCode + " " + b.trim())', 'console.log(r.statusCode + " " + b.trim() + " in " + (Date.now() - t))')}`])).trim();
    expect(timed).toMatch(/^504 upstream request timeout in \d+$/);
    // The route's 500 ms, well before the app would have answered.
    expect(Number(timed.split(' in ')[1])).toBeGreaterThanOrEqual(500);
    expect(Number(timed.split(' in ')[1])).toBeLessThan(1500);
    const f = Date.now();
    expect((await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', GET('/fault')])).trim()).toBe('418 fault filter abort');
    expect(Date.now() - f).toBeGreaterThanOrEqual(300);
    const log = await waypointLog(/"code":418,"flags":"FI"/, /"code":200,"flags":"-","duration_ms":\d+,"bytes":\d+,"attempts":2/, /"code":504,"flags":"UT"/);
    expect(log).toMatch(/"code":418,"flags":"FI"/);
    expect(log).toMatch(/"code":200,"flags":"-","duration_ms":\d+,"bytes":\d+,"attempts":2/);
    expect(log).toMatch(/"code":504,"flags":"UT"/);
  }, 60_000);

  it('ejects an endpoint that keeps failing, and takes it back after baseEjectionTime', async () => {
    const SEQ = `const http = require("http"); const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); (async () => { const out = []; for (let i = 0; i < Number(process.argv[1]); i++) out.push(await new Promise((resolve) => http.get({ host: "details", path: "/", agent }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => resolve(r.statusCode + " " + b)); }).on("error", (e) => resolve("error " + e.code)))); console.log(JSON.stringify(out)); agent.destroy(); })();`;
    const run = async (n: number) => JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', SEQ, String(n)])) as string[];
    const first = await run(30);
    // Round robin reaches the bad pod twice within the first few requests; then it is out.
    expect(first.slice(0, 6)).toContain('500 bad');
    expect(first.slice(10), JSON.stringify(first)).toEqual(Array(20).fill('200 good'));
    // Back in rotation once its baseEjectionTime (3 s) is over.
    const later = await until('the ejected endpoint back', async () => {
      const answers = await run(10);
      return answers.includes('500 bad') && answers;
    }, { timeout: 20_000, interval: 500 });
    expect(later, JSON.stringify(later)).toContain('500 bad');
  }, 60_000);

  it('answers 503 (UO) past the destination\'s pending-request limit', async () => {
    // Four at once with room for one in flight and one waiting: two overflow.
    const PAR = `const http = require("http"); Promise.all([0, 1, 2, 3].map(() => new Promise((resolve) => http.get({ host: "ratings", path: "/wait", agent: false }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => resolve(r.statusCode + " " + b.trim())); }).on("error", (e) => resolve("error " + e.code))))).then((all) => console.log(JSON.stringify(all.sort())));`;
    const all = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', PAR])) as string[];
    expect(all.filter((a) => a === '200 waited'), JSON.stringify(all)).toHaveLength(2);
    expect(all.filter((a) => a === '503 upstream overflow')).toHaveLength(2);
    const log = await waypointLog(/"code":503,"flags":"UO"/);
    expect(log).toMatch(/"code":503,"flags":"UO"/);
  }, 60_000);

  it('answers 429 with x-ratelimit headers past an ambit.dev RateLimit', async () => {
    writeFileSync(join(dir, 'ratelimit.yaml'), `
apiVersion: ambit.dev/v1alpha1
kind: RateLimit
metadata: { name: details, namespace: shop }
spec: { targetRefs: [{ kind: Service, name: details }], requestsPerUnit: 5, unit: minute }
`);
    await ok(['local', 'apply', '--cluster', CLUSTER, '-f', join(dir, 'ratelimit.yaml')]);
    const HEAD = `const http = require("http"); (async () => { const out = []; for (let i = 0; i < 8; i++) out.push(await new Promise((resolve) => http.get({ host: "details", path: "/", agent: false }, (r) => { r.resume(); r.on("end", () => resolve(r.statusCode + " " + (r.headers["x-ratelimit-limit"] ?? "-") + " " + (r.headers["x-ratelimit-remaining"] ?? "-"))); }).on("error", (e) => resolve("error " + e.code)))); console.log(JSON.stringify(out)); })();`;
    const out = await until('the limit in effect', async () => {
      const o = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', HEAD])) as string[];
      return o.includes('429 5 0') ? o : undefined;
    }, { timeout: 30_000, interval: 300 });
    // Five tokens a minute: whatever the first run took, the rest of this one is refused.
    expect(out.at(-1)).toBe('429 5 0');
    const log = await waypointLog(/"code":429,"flags":"RL"/);
    expect(log).toMatch(/"code":429,"flags":"RL"/);
  }, 60_000);

  it('denies a path by an AuthorizationPolicy bound to the service (L7), also when the path is dressed up', async () => {
    const GET = (path: string) => `require("http").get({ host: "reviews", path: ${JSON.stringify(path)}, agent: false }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log(r.statusCode + " " + b.trim())); }).on("error", (e) => console.log("error " + e.code))`;
    const get = async (path: string) => (await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', GET(path)])).trim();
    expect(await get('/admin')).toBe('403 RBAC: access denied');
    expect(await get('/admin/users?x=1')).toBe('403 RBAC: access denied');
    // Normalized before the check (and sent on normalized): dot segments and escapes do not get around it.
    expect(await get('/public/../admin/users')).toBe('403 RBAC: access denied');
    expect(await get('/%61dmin')).toBe('403 RBAC: access denied');
    expect(await get('/administrator')).toMatch(/^200 v[12] /);
    expect(await get('/')).toMatch(/^200 v[12] /);
    const log = await waypointLog(/"path":"\/admin\/users","authority":"reviews"[^\n]*"code":403[^\n]*"authorization":"denied by DENY policy shop\/reviews-no-admin"/);
    expect(log).toMatch(/"path":"\/admin\/users","authority":"reviews"[^\n]*"code":403[^\n]*"authorization":"denied by DENY policy shop\/reviews-no-admin"/);
  }, 60_000);

  it('carries gRPC through the waypoint: unary, an error status, and bidirectional streaming', async () => {
    const out = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', GRPC_CLIENT])) as { ok: string; missing: string; chat: string[]; gaps: number[]; chatStatus: number };
    expect(out.ok).toBe('echo hi from echo');
    expect(out.missing).toBe('status 5 no such thing');
    expect(out.chat).toEqual(['re a', 're b', 're c']);
    expect(out.chatStatus).toBe(0);
    // Each answer came as its message was sent (300 ms apart), not all at the end.
    expect(out.gaps[1]).toBeGreaterThan(150);
    expect(out.gaps[2]).toBeGreaterThan(150);
    const log = await waypointLog(/"path":"\/test.Echo\/Unary","authority":"echo:50051","protocol":"HTTP\/2"\}[^\n]*"code":200[^\n]*"grpc_status":"5"/, /"path":"\/test.Echo\/Chat"[^\n]*"grpc_status":"0"/);
    expect(log).toMatch(/"path":"\/test.Echo\/Unary","authority":"echo:50051","protocol":"HTTP\/2"\}[^\n]*"code":200[^\n]*"grpc_status":"5"/);
    expect(log).toMatch(/"path":"\/test.Echo\/Chat"[^\n]*"grpc_status":"0"/);
  }, 60_000);

  it('continues the caller\'s trace across two hops and exports a span per hop over OTLP', async () => {
    const traceId = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
    const callerSpan = '1122334455667788';
    const CALL = `require("http").get({ host: "front", path: "/", agent: false, headers: { traceparent: "00-${traceId}-${callerSpan}-01" } }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log(r.statusCode + " " + b.trim())); })`;
    expect((await ok(['local', 'exec', '--cluster', CLUSTER, 'shop/client', '--', 'node', '-e', CALL])).trim()).toMatch(/^200 front > v[12] /);
    type OtlpSpan = { service: string; traceId: string; spanId: string; parentSpanId?: string; name: string; kind: number; attributes: { key: string; value: Record<string, unknown> }[] };
    const spans = await until('both spans at the collector', async () => {
      const all = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, 'obs/collector', '--', 'node', '-e', 'fetch("http://127.0.0.1:4318/").then((r) => r.text()).then((t) => process.stdout.write(t))'])) as OtlpSpan[];
      const mine = all.filter((s) => s.traceId === traceId);
      return mine.length >= 2 ? mine : undefined;
    }, { timeout: 20_000, interval: 500 });
    const front = spans.find((s) => s.name.startsWith('front.shop.svc.cluster.local:80'))!;
    const reviews = spans.find((s) => s.name.startsWith('reviews.shop.svc.cluster.local:80'))!;
    expect(front, JSON.stringify(spans)).toBeDefined();
    expect(reviews, JSON.stringify(spans)).toBeDefined();
    // Hop 1 is the caller's child; hop 2 is hop 1's child (front passed the waypoint's context on).
    expect(front.parentSpanId).toBe(callerSpan);
    expect(reviews.parentSpanId).toBe(front.spanId);
    expect(front.kind).toBe(2);
    expect(front.service).toBe('waypoint.shop');
    const status = reviews.attributes.find((a) => a.key === 'http.response.status_code')?.value;
    expect(status).toEqual({ intValue: '200' });
  }, 60_000);

  it('fails closed when the waypoint is gone: refused, never around it', async () => {
    await ok(['waypoint', 'delete', 'waypoint', '-n', 'shop', '--cluster', CLUSTER]);
    const seen = await until('refusals', async () => {
      const s = await load(5);
      return s['error ECONNRESET'] === 5 ? s : undefined;
    }, { timeout: 30_000, interval: 300 });
    expect(seen).toEqual({ 'error ECONNRESET': 5 });
  }, 60_000);
});
