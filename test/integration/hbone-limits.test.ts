/**
 * HBONE limits on the real node agent, in a local cluster: one peer IP (a pod outside the mesh
 * on node-1) opens more connections to the HBONE ports (15008) of two meshed pods on node-2 than
 * the agent allows one peer, and never starts a TLS handshake on any of them.
 *
 *   - the agent counts the peer across both pods (one limiter per node): the connections over
 *     128 are reset at once;
 *   - the 128 it took are closed at the 5 s handshake timeout, not Node's 120 s;
 *   - both are in node-2's metrics (ambit_hbone_refused_total{reason});
 *   - meshed traffic to the same pods still flows afterwards.
 *
 * And the agent's --hbone-limits flag (or AMBIT_HBONE_LIMITS) refused at start, naming the limit.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { until } from '../helpers/wait.js';
import { cli } from './helpers/cli.js';
import { localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('hblim');

const SERVER = (name: string) => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: mesh, labels: { app: ${name} } }
spec:
  nodeName: node-2
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => s.end("${name}")).listen(8080)']
    ports: [{ name: http, containerPort: 8080 }]
    readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: mesh }
spec: { selector: { app: ${name} }, ports: [{ port: 80, targetPort: http }] }
`;
const MANIFEST = `
apiVersion: v1
kind: Namespace
metadata: { name: mesh, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: plain }
---
${SERVER('server-a')}
---
${SERVER('server-b')}
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: mesh }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: v1
kind: Pod
metadata: { name: outsider, namespace: plain }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`;

/**
 * Opens `count` TCP connections to each `host:15008` given, all at once, writes nothing, and
 * prints one JSON line: for each connection how it ended ("reset" by the server, "closed" by it)
 * and after how many ms, or "open" if it was still open after 20 s (then it is destroyed).
 */
const HOLD = `const targets = process.argv.slice(1).map((t) => t.split("="));
const out = []; const t0 = Date.now(); let left = 0;
const done = () => { if (--left === 0) { console.log(JSON.stringify(out)); process.exit(0); } };
for (const [host, n] of targets) for (let i = 0; i < Number(n); i++) {
  left++;
  const r = { host, end: "open", ms: 0 }; out.push(r);
  const s = require("net").connect(15008, host);
  const end = (how) => { if (r.end === "open") { r.end = how; r.ms = Date.now() - t0; } };
  s.on("error", (e) => end(e.code === "ECONNRESET" ? "reset" : "error " + e.code));
  s.on("close", () => { end("closed"); done(); });
}
setTimeout(() => { console.log(JSON.stringify(out)); process.exit(0); }, 20000);`;

const metrics = (node: string, ip: string) => cluster.nodeFetch(node, `http://${ip}:15020/metrics`);

describeAsRoot('HBONE limits on the node agent', () => {
  let status: ClusterStatus;

  beforeAll(async () => {
    await cluster.up(MANIFEST);
    status = await until('both node agents and both servers enrolled', async () => {
      const s = await cluster.status();
      const agents = s.components.filter((c) => c.name === 'node-agent' && c.state === 'running').length;
      return agents === 2 && s.pods.every((p) => p.phase === 'Running') ? s : undefined;
    }, { timeout: 120_000 });
  }, 180_000);

  afterAll(() => cluster.down(), 60_000);

  it('resets one peer\'s connections beyond 128 across the node\'s pods, and closes the rest at the handshake timeout', async () => {
    const ip = (name: string) => status.pods.find((p) => p.name === name)!.ip;
    const node2 = status.nodes.find((n) => n.name === 'node-2')!.ip;
    // Both pods enrolled on node-2: their HBONE listeners are open.
    await until('both servers enrolled on node-2', async () => /^ambit_enrolled_pods 2$/m.test(await metrics('node-2', node2)) || undefined, { timeout: 30_000 });
    const out = await cluster.exec('plain/outsider', ['node', '-e', HOLD, `${ip('server-a')}=64`, `${ip('server-b')}=66`]);
    const ends = JSON.parse(out.trim().split('\n').pop()!) as { host: string; end: string; ms: number }[];
    const reset = ends.filter((e) => e.end === 'reset');
    const closed = ends.filter((e) => e.end === 'closed');
    expect(ends.filter((e) => e.end === 'open')).toEqual([]);
    expect(reset.length).toBe(2);
    expect(closed.length).toBe(128);
    // Refused at once; the others held for the handshake timeout (5 s), not 120 s.
    for (const r of reset) expect(r.ms).toBeLessThan(3000);
    for (const c of closed) {
      expect(c.ms).toBeGreaterThanOrEqual(4500);
      expect(c.ms).toBeLessThan(15_000);
    }
    // Both pods' listeners took part: the cap is the node's, not one listener's.
    expect(new Set(closed.map((c) => c.host))).toEqual(new Set([ip('server-a'), ip('server-b')]));
    const text = await until('the refusals in node-2\'s metrics', async () => {
      const t = await metrics('node-2', node2);
      return /ambit_hbone_refused_total\{reason="handshake_timeout"\} 128\b/.test(t) ? t : undefined;
    }, { timeout: 10_000 });
    expect(text).toMatch(/ambit_hbone_refused_total\{reason="peer_connections"\} 2\b/);
    expect(text).toMatch(/ambit_hbone_server_connections 0\b/);
  }, 60_000);

  it('still carries meshed traffic to the same pods afterwards', async () => {
    const GET = 'require("http").get({ host: process.argv[1], path: "/", agent: false, timeout: 3000 }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log("ok " + b)); }).on("error", (e) => console.log("error " + e.code))';
    for (const name of ['server-a', 'server-b']) {
      const answer = await until(`${name} through the mesh`, async () => {
        const a = (await cluster.exec('mesh/client', ['node', '-e', GET, name])).trim();
        return a.startsWith('ok') ? a : undefined;
      }, { timeout: 20_000 });
      expect(answer).toBe(`ok ${name}`);
    }
  }, 60_000);
});

describeAsRoot('HBONE limits: the node agent\'s flag', () => {
  const { ambit } = cli({ ...process.env, AMBIT_HBONE_LIMITS: '' });
  const required = ['node', '--node', 'n1', '--controller', '127.0.0.1:1', '--token-file', '/nonexistent', '--ca-file', '/nonexistent', '--cluster', 'none'];

  it('stops the agent at start with the name of the bad limit, from the flag or from AMBIT_HBONE_LIMITS', async () => {
    const flag = await ambit([...required, '--hbone-limits', 'maxStreams=0']);
    expect(flag.code).not.toBe(0);
    expect(flag.stderr).toContain('--hbone-limits: HBONE limit maxStreams must be a positive integer, got 0');
    const env = await cli({ ...process.env, AMBIT_HBONE_LIMITS: 'maxStreamPerPeer=5' }).ambit(required);
    expect(env.code).not.toBe(0);
    expect(env.stderr).toContain('--hbone-limits: unknown HBONE limit "maxStreamPerPeer"');
  });
});
