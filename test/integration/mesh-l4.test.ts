/**
 * The ambient L4 data path end to end, in a local cluster with its node agents: eBPF redirects
 * a pod's connections to its node agent, which carries them over HBONE (HTTP/2 CONNECT over
 * mTLS with each workload's SPIFFE certificate) to the destination pod's agent, which applies
 * policy and delivers. Checked from the outside: packet captures on the node, the agents'
 * metrics, access logs and admin endpoints, the BPF maps.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cli, ROOT } from './helpers/cli.js';
import { until } from '../helpers/wait.js';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { describeAsRoot } from './helpers/root.js';

const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-l4-'));
const CLUSTER = `l4${Math.random().toString(36).slice(2, 6)}`;
const stateDir = join(stateRoot, CLUSTER);
const dir = mkdtempSync(join(tmpdir(), 'ambit-l4-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };
const PIN_ROOT = `/sys/fs/bpf/ambit-${CLUSTER}`;

const { ambit, ok } = cli(env);
const apply = (name: string, yaml: string) => {
  writeFileSync(join(dir, name), yaml);
  return ok(['local', 'apply', '--cluster', CLUSTER, '-f', join(dir, name)]);
};
const remove = (name: string) => ok(['local', 'delete', '--cluster', CLUSTER, '-f', join(dir, name)]);

/** One HTTP GET from inside a pod: "ok <body>" or "error <code>". */
const GET = `require("http").get({ host: process.argv[1], port: Number(process.argv[2] ?? 80), path: "/", agent: false, timeout: 3000 }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log("ok " + b.trim())); }).on("error", (e) => console.log("error " + (e.code ?? e.message))).on("timeout", function () { this.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" })); })`;
async function get(pod: string, host: string, port = 80): Promise<string> {
  return (await ok(['local', 'exec', '--cluster', CLUSTER, pod, '--', 'node', '-e', GET, host, String(port)])).trim();
}

/** A URL fetched from inside a node's netns (the agent's admin and metrics listen there). */
async function nodeFetch(node: string, url: string): Promise<string> {
  return ok(['local', 'exec', '--cluster', CLUSTER, '--node', node, '--', 'node', '-e', 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))', url]);
}
const NODE_IP: Record<string, string> = { 'node-1': '172.30.0.11', 'node-2': '172.30.0.12' };
const metrics = (node: string) => nodeFetch(node, `http://${NODE_IP[node]}:15020/metrics`);
const admin = async <T>(node: string, path: string) => JSON.parse(await nodeFetch(node, `http://127.0.0.1:15000${path}`)) as T;

function sum(text: string, metric: string, match: (labels: string) => boolean): number {
  let n = 0;
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${metric}\\{(.*)\\} (\\S+)$`).exec(line);
    if (m && match(m[1]!)) n += Number(m[2]);
  }
  return n;
}


const SERVER = (name: string, ns: string, node: string, sa: string, reply: string) => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns}, labels: { app: ${name} } }
spec:
  nodeName: ${node}
  serviceAccountName: ${sa}
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => { let b = ""; q.on("data", (c) => b += c); q.on("end", () => s.end("${reply} from " + q.socket.remoteAddress.replace("::ffff:", "") + " " + b)); }).listen(8080)']
    ports: [{ name: http, containerPort: 8080 }]
    readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${ns} }
spec: { selector: { app: ${name} }, ports: [{ port: 80, targetPort: http }] }
`;
const SLEEPER = (name: string, ns: string, node: string, sa = 'default') => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${ns}, labels: { app: ${name} } }
spec: { nodeName: ${node}, serviceAccountName: ${sa}, containers: [{ name: c, command: [sleep, infinity] }] }
`;

const BASE = `
apiVersion: v1
kind: Namespace
metadata: { name: mesh, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: plain }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: server, namespace: mesh }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: client, namespace: mesh }
---
${SERVER('server', 'mesh', 'node-2', 'server', 'meshed')}
---
${SLEEPER('client', 'mesh', 'node-1', 'client')}
---
${SERVER('web', 'plain', 'node-2', 'default', 'plain')}
---
${SLEEPER('outsider', 'plain', 'node-1')}
`;

const children: ChildProcess[] = [];

describeAsRoot('the ambient L4 data path', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'base.yaml'), BASE);
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', join(dir, 'base.yaml')]);
    const status = JSON.parse(await ok(['local', 'status', '--json', '--cluster', CLUSTER])) as ClusterStatus;
    await until('both node agents', async () => {
      const s = JSON.parse(await ok(['local', 'status', '--json', '--cluster', CLUSTER])) as ClusterStatus;
      return s.components.filter((c) => c.name === 'node-agent' && c.state === 'running').length === 2 || undefined;
    });
    expect(status.pods.map((p) => `${p.namespace}/${p.name}`).sort()).toEqual(['mesh/client', 'mesh/server', 'plain/outsider', 'plain/web']);
  }, 180_000);

  afterAll(async () => {
    for (const c of children) {
      try { process.kill(-c.pid!, 'SIGKILL'); } catch { /* gone */ }
    }
    await ambit(['local', 'down', '--cluster', CLUSTER]);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('carries a call by service name across nodes over mTLS, and the capture shows no payload', async () => {
    // A capture on node-1's side of the underlay, for everything to or from the server pod.
    const pcap = join(dir, 'node-1.pcap');
    const dump = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, '--node', 'node-1', '--',
      'tcpdump', '--immediate-mode', '-Z', 'root', '-i', 'any', '-U', '-s', '0', '-w', pcap, 'host', '10.244.2.2'], { cwd: ROOT, env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(dump);
    let said = '';
    dump.stderr!.on('data', (c: Buffer) => { said += c.toString(); });
    await until('tcpdump to listen', () => said.includes('listening on') || undefined, { timeout: 20_000, interval: 50 });
    // Node scope: node-1's agent holds its own pods, not node-2's, until one of its pods calls them.
    const before = await admin<{ workloads: { name: string }[] }>('node-1', '/config_dump');
    expect(before.workloads.map((w) => w.name).sort()).toEqual(['client', 'outsider']);
    const secret = `secret-${Math.random().toString(36).slice(2)}`;
    const POST = `const r = require("http").request({ host: "server", port: 80, method: "POST", path: "/", agent: false }, (res) => { let b = ""; res.on("data", (c) => b += c); res.on("end", () => console.log(b)); }); r.end(process.argv[1]);`;
    const answer = (await ok(['local', 'exec', '--cluster', CLUSTER, 'mesh/client', '--', 'node', '-e', POST, secret])).trim();
    // The server sees the client pod's own address: the tunnel left from inside the client's netns.
    expect(answer).toBe(`meshed from 10.244.2.2 ${secret}`);
    // The server's endpoints were asked of the controller for the call, and are held now.
    expect(sum(await metrics('node-1'), 'ambit_discovery_demands_total', (l) => l.includes('outcome="answered"'))).toBeGreaterThanOrEqual(1);
    expect((await admin<{ workloads: { name: string }[] }>('node-1', '/config_dump')).workloads.map((w) => w.name)).toContain('server');
    // The capture has the tunnel's TLS records before tcpdump is stopped.
    await until('the tunnel\'s TLS records in the capture', () => existsSync(pcap) && readFileSync(pcap).includes(Buffer.from([0x17, 0x03, 0x03])), { timeout: 5000, interval: 50 });
    process.kill(-dump.pid!, 'SIGINT');
    await new Promise((r) => dump.once('close', r));
    const bytes = readFileSync(pcap);
    expect(bytes.length).toBeGreaterThan(200);
    expect(bytes.includes(Buffer.from(secret))).toBe(false);
    expect(bytes.includes(Buffer.from('meshed from'))).toBe(false);
    // TLS records (content type 0x17, version 0x0303) on the HBONE port are there instead.
    expect(bytes.includes(Buffer.from([0x17, 0x03, 0x03]))).toBe(true);
  });

  it('reports the connection on both sides with both SPIFFE principals', async () => {
    const text = await until('the destination metrics', async () => {
      const t = await metrics('node-2');
      return t.includes('reporter="destination"') ? t : undefined;
    });
    const both = (labels: string) => labels.includes('source_principal="spiffe://cluster.local/ns/mesh/sa/client"')
      && labels.includes('destination_principal="spiffe://cluster.local/ns/mesh/sa/server"')
      && labels.includes('connection_security_policy="mutual_tls"')
      && labels.includes('destination_service="server.mesh.svc.cluster.local"');
    expect(sum(text, 'istio_tcp_connections_opened_total', (l) => l.includes('reporter="destination"') && both(l))).toBeGreaterThanOrEqual(1);
    expect(sum(text, 'istio_tcp_received_bytes_total', (l) => l.includes('reporter="destination"') && both(l))).toBeGreaterThan(0);
    const source = await metrics('node-1');
    expect(sum(source, 'istio_tcp_connections_opened_total', (l) => l.includes('reporter="source"') && both(l))).toBeGreaterThanOrEqual(1);
    expect(sum(source, 'ambit_redirect_counters', (l) => l.includes('counter="connect_redirected"'))).toBeGreaterThanOrEqual(1);
    // The access-log line is written when the connection closes, which may come after the call returned.
    await until('the access-log line of the call', () => {
      const log = readFileSync(join(stateDir, 'logs', 'node-agent.node-2.log'), 'utf8').split('\n').filter((l) => l.includes('"component":"access"')).map((l) => JSON.parse(l) as { reporter: string; source: { principal: string }; destination: { workload: string }; tls: { enabled: boolean } });
      return log.some((e) => e.reporter === 'destination' && e.source.principal === 'spiffe://cluster.local/ns/mesh/sa/client' && e.destination.workload === 'server' && e.tls.enabled === true);
    }, { timeout: 5000 });
    const workloads = await admin<{ enrolled: { name: string }[] }>('node-2', '/workloads');
    expect(workloads.enrolled.map((w) => w.name)).toEqual(['server']);
  });

  it('applies AuthorizationPolicy allow and deny within a second', async () => {
    // A prober in the client pod: a new connection every 50 ms, one JSON line per attempt (with the error's code).
    const PROBE = `const http = require("http"); setInterval(() => { const t = Date.now(); http.get({ host: "server", port: 80, path: "/", agent: false, timeout: 2000 }, (r) => { r.resume(); r.on("end", () => console.log(JSON.stringify({ t, ok: true }))); }).on("error", (e) => console.log(JSON.stringify({ t, ok: false, error: e.code }))); }, 50);`;
    const prober = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, 'mesh/client', '--', 'node', '-e', PROBE], { cwd: ROOT, env, detached: true });
    children.push(prober);
    const seen: { t: number; ok: boolean; error?: string }[] = [];
    let buf = '';
    prober.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        seen.push(JSON.parse(buf.slice(0, i)) as { t: number; ok: boolean; error?: string });
        buf = buf.slice(i + 1);
      }
    });
    await until('the prober', () => seen.some((s) => s.ok) || undefined);
    // Denied means reset by the agent: an attempt that failed otherwise (a timeout) is not a denial.
    const as = (want: boolean) => (s: { ok: boolean; error?: string }) => (want ? s.ok : s.error === 'ECONNRESET');
    const flipsAfter = async (since: number, want: boolean) => until(`${want ? 'allowed' : 'denied'} connections`, () => {
      const after = seen.filter((s) => s.t >= since);
      return after.length >= 3 && after.slice(-3).every(as(want)) ? after.find(as(want))!.t - since : undefined;
    }, { timeout: 10_000, interval: 20 });

    await apply('deny.yaml', `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-client, namespace: mesh }
spec:
  selector: { matchLabels: { app: server } }
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/mesh/sa/client] } }] }]
`);
    const deniedAfter = await flipsAfter(Date.now(), false);
    await remove('deny.yaml');
    const allowedAfter = await flipsAfter(Date.now(), true);
    // An ALLOW list that names someone else: the client is no longer on it.
    await apply('allow.yaml', `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-others, namespace: mesh }
spec:
  selector: { matchLabels: { app: server } }
  action: ALLOW
  rules: [{ from: [{ source: { principals: [cluster.local/ns/mesh/sa/someone-else] } }] }]
`);
    const allowListAfter = await flipsAfter(Date.now(), false);
    await remove('allow.yaml');
    await flipsAfter(Date.now(), true);
    process.kill(-prober.pid!, 'SIGKILL');
    expect(deniedAfter).toBeLessThan(1000);
    expect(allowedAfter).toBeLessThan(1000);
    expect(allowListAfter).toBeLessThan(1000);
    await until('the denial in the access log', () => readFileSync(join(stateDir, 'logs', 'node-agent.node-2.log'), 'utf8').includes('"policy":"mesh/deny-client"'), { timeout: 5000 });
  }, 60_000);

  it('lets plaintext from outside the mesh in under PERMISSIVE and refuses it under STRICT', async () => {
    // Plaintext is proxied by the agent from inside the pod: the app sees its own address (see docs/DATAPATH.md).
    expect(await get('plain/outsider', '10.244.2.2', 8080)).toBe('ok meshed from 10.244.2.2');
    await apply('strict.yaml', `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: mesh }
spec: { mtls: { mode: STRICT } }
`);
    // Refused by a reset: an answer that never comes ("error TIMEOUT") is not a refusal.
    const refused = await until('STRICT in effect', async () => {
      const answer = await get('plain/outsider', '10.244.2.2', 8080);
      return answer.startsWith('ok') ? undefined : answer;
    }, { timeout: 10_000, interval: 100 });
    expect(refused).toBe('error ECONNRESET');
    // Meshed callers still get through, over mTLS.
    expect(await get('mesh/client', 'server')).toMatch(/^ok meshed from 10\.244\.2\.2/);
    const text = await metrics('node-2');
    expect(sum(text, 'istio_tcp_connections_opened_total', (l) => l.includes('connection_security_policy="none"') && l.includes('reporter="destination"'))).toBeGreaterThanOrEqual(1);
    await remove('strict.yaml');
    await until('PERMISSIVE again', async () => ((await get('plain/outsider', '10.244.2.2', 8080)).startsWith('ok') ? true : undefined), { timeout: 10_000, interval: 100 });
  });

  it('leaves pods of an unlabelled namespace alone', async () => {
    const before = await metrics('node-1');
    const redirected = sum(before, 'ambit_redirect_counters', (l) => l.includes('counter="connect_redirected"'));
    const missed = sum(before, 'ambit_redirect_counters', (l) => l.includes('counter="connect_not_enrolled"'));
    // Straight to the web pod: it sees the outsider's own address, no agent in between.
    expect(await get('plain/outsider', 'web')).toBe('ok plain from 10.244.1.3');
    const after = await metrics('node-1');
    expect(sum(after, 'ambit_redirect_counters', (l) => l.includes('counter="connect_redirected"'))).toBe(redirected);
    expect(sum(after, 'ambit_redirect_counters', (l) => l.includes('counter="connect_not_enrolled"'))).toBeGreaterThan(missed);
  });

  it('enrolls and unenrolls a running namespace when its label changes (ambit namespace enable|disable)', async () => {
    expect(await ok(['namespace', 'enable', 'plain', '--cluster', CLUSTER])).toMatch(/namespace\/plain configured/);
    await until('the plain pods enrolled', async () => {
      const [a, b] = await Promise.all([admin<{ enrolled: { name: string }[] }>('node-1', '/workloads'), admin<{ enrolled: { name: string }[] }>('node-2', '/workloads')]);
      return a.enrolled.some((w) => w.name === 'outsider') && b.enrolled.some((w) => w.name === 'web') ? true : undefined;
    });
    // Now the same call is carried by the agents: the web pod sees the tunnel from its own netns.
    expect(await get('plain/outsider', 'web')).toBe('ok plain from 10.244.2.3');
    const text = await metrics('node-2');
    expect(sum(text, 'istio_tcp_connections_opened_total', (l) => l.includes('destination_workload="web"') && l.includes('source_principal="spiffe://cluster.local/ns/plain/sa/default"'))).toBeGreaterThanOrEqual(1);
    expect(await ok(['namespace', 'disable', 'plain', '--cluster', CLUSTER])).toMatch(/namespace\/plain configured/);
    await until('the plain pods unenrolled', async () => {
      const [a, b] = await Promise.all([admin<{ enrolled: { name: string }[] }>('node-1', '/workloads'), admin<{ enrolled: { name: string }[] }>('node-2', '/workloads')]);
      return !a.enrolled.some((w) => w.name === 'outsider') && !b.enrolled.some((w) => w.name === 'web') ? true : undefined;
    });
    expect(await get('plain/outsider', 'web')).toBe('ok plain from 10.244.1.3');
  }, 60_000);

  it('resets a call to a meshed port nothing listens on at once, as a refused connect would fail', async () => {
    const t = Date.now();
    expect(await get('mesh/client', '10.244.2.2', 9999)).toBe('error ECONNRESET');
    expect(Date.now() - t).toBeLessThan(5000);
    await until('the refused call in the access log', () => /"port":9999.*"response_flags":"UF","error":"10\.244\.2\.2:9999: ECONNREFUSED"/.test(readFileSync(join(stateDir, 'logs', 'node-agent.node-2.log'), 'utf8')), { timeout: 5000 });
  });

  it('shows its config, pods, open connections and log level on the admin endpoint', async () => {
    const dump = await admin<{ node: string; version: string; workloads: { name: string }[]; services: { name: string }[] }>('node-1', '/config_dump');
    expect(dump.node).toBe('node-1');
    // A model's version, or `<model>.<n>` once a demand was answered at that model (node scope).
    expect(dump.version).toMatch(/^[0-9a-f]{6}-\d+(\.\d+)?$/);
    expect(dump.workloads.map((w) => w.name)).toEqual(expect.arrayContaining(['client', 'server', 'web', 'outsider']));
    // A connection held open by the client shows up on both agents.
    const hold = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, 'mesh/client', '--', 'node', '-e',
      'const s = require("net").connect(80, "server", () => console.log("open")); setTimeout(() => s.end(), 30000);'], { cwd: ROOT, env, detached: true });
    children.push(hold);
    await new Promise((r) => hold.stdout!.once('data', r));
    const open = await until('the open connection', async () => {
      const c = await admin<{ connections: { reporter: string; path: string; destination: { workload?: string } }[] }>('node-2', '/connections');
      return c.connections.find((x) => x.destination.workload === 'server' && x.reporter === 'destination');
    });
    expect(open.path).toBe('hbone');
    process.kill(-hold.pid!, 'SIGKILL');
    // Changing the level is refused on TCP (any process on the node reaches it), served on the agent's 0600 control socket.
    const tcp = JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, '--node', 'node-1', '--', 'node', '-e',
      'fetch("http://127.0.0.1:15000/logging?level=debug", { method: "POST" }).then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, ...await r.json() })))'])) as { status: number; error: string };
    expect(tcp.status).toBe(403);
    expect(tcp.error).toContain('send it to the agent\'s control socket');
    const set = await new Promise<{ level: string }>((resolve, reject) => {
      request({ socketPath: join(stateDir, 'nodes', 'node-1', 'agent.sock'), path: '/logging?level=debug', method: 'POST' }, (r) => {
        let b = '';
        r.on('data', (c: Buffer) => { b += c.toString(); });
        r.on('end', () => resolve(JSON.parse(b) as { level: string }));
      }).on('error', reject).end();
    });
    expect(set.level).toBe('debug');
    expect((await admin<{ level: string }>('node-1', '/logging')).level).toBe('debug');
  }, 60_000);

  it('carries traffic again after its node agent is killed and restarted', async () => {
    const status = JSON.parse(await ok(['local', 'status', '--json', '--cluster', CLUSTER])) as ClusterStatus;
    const agent = status.components.find((c) => c.name === 'node-agent' && c.node === 'node-2')!;
    process.kill(agent.pid!, 'SIGKILL');
    await until('the restarted agent', async () => {
      const s = JSON.parse(await ok(['local', 'status', '--json', '--cluster', CLUSTER])) as ClusterStatus;
      const a = s.components.find((c) => c.name === 'node-agent' && c.node === 'node-2')!;
      return a.pid !== agent.pid && a.state === 'running' ? true : undefined;
    }, { timeout: 60_000, interval: 500 });
    await until('the server enrolled again', async () => ((await admin<{ enrolled: { name: string }[] }>('node-2', '/workloads')).enrolled.some((w) => w.name === 'server') ? true : undefined));
    expect(await get('mesh/client', 'server')).toMatch(/^ok meshed from 10\.244\.2\.2/);
    const links = readdirSync(join(PIN_ROOT, 'node-2', 'links', 'pods'));
    expect(links).toHaveLength(1);
  }, 90_000);

  it('leaves no map entry, listener or certificate behind after 100 pods come and go', async () => {
    const mapCount = (node: string, map: string) => {
      const r = JSON.parse(requireOutput('bpftool', ['-j', 'map', 'dump', 'pinned', join(PIN_ROOT, node, 'maps', map)])) as unknown[];
      return r.length;
    };
    const status = JSON.parse(await ok(['local', 'status', '--json', '--cluster', CLUSTER])) as ClusterStatus;
    const agentPid = status.components.find((c) => c.name === 'node-agent' && c.node === 'node-1')!.pid!;
    const sockets = () => requireOutput('ls', ['-l', `/proc/${agentPid}/fd`]).split('\n').filter((l) => l.includes('socket:')).length;
    const before = { pods: mapCount('node-1', 'ambit_pods'), addrs: mapCount('node-1', 'ambit_pod_addrs'), sockets: sockets() };
    await apply('churn.yaml', `
apiVersion: v1
kind: ServiceAccount
metadata: { name: churn, namespace: mesh }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: churn, namespace: mesh }
spec:
  replicas: 100
  selector: { matchLabels: { app: churn } }
  template:
    metadata: { labels: { app: churn } }
    spec: { serviceAccountName: churn, containers: [{ name: c, command: [sleep, infinity] }] }
`);
    const enrolled = await until('100 churn pods enrolled', async () => {
      const [a, b] = await Promise.all([admin<{ enrolled: { name: string }[] }>('node-1', '/workloads'), admin<{ enrolled: { name: string }[] }>('node-2', '/workloads')]);
      const n = [...a.enrolled, ...b.enrolled].filter((w) => w.name.startsWith('churn-')).length;
      return n === 100 ? n : undefined;
    }, { timeout: 120_000, interval: 1000 });
    expect(enrolled).toBe(100);
    expect(mapCount('node-1', 'ambit_pods')).toBeGreaterThan(before.pods);
    const certs = await admin<{ certificates: { identity: string }[] }>('node-1', '/certs');
    expect(certs.certificates.map((c) => c.identity)).toContain('spiffe://cluster.local/ns/mesh/sa/churn');
    await remove('churn.yaml');
    await until('the churn pods unenrolled', async () => {
      const [a, b] = await Promise.all([admin<{ enrolled: { name: string }[] }>('node-1', '/workloads'), admin<{ enrolled: { name: string }[] }>('node-2', '/workloads')]);
      return [...a.enrolled, ...b.enrolled].some((w) => w.name.startsWith('churn-')) ? undefined : true;
    }, { timeout: 60_000, interval: 500 });
    await until('the maps back to where they were', () => (mapCount('node-1', 'ambit_pods') === before.pods && mapCount('node-1', 'ambit_pod_addrs') === before.addrs ? true : undefined), { timeout: 20_000 });
    const after = await admin<{ certificates: { identity: string }[] }>('node-1', '/certs');
    expect(after.certificates.map((c) => c.identity)).not.toContain('spiffe://cluster.local/ns/mesh/sa/churn');
    expect(requireOutput('ls', [join(PIN_ROOT, 'node-1', 'links', 'pods')]).trim().split('\n').filter(Boolean)).toHaveLength(before.pods);
    // Listener sockets: 4 per pod were opened and closed; what is left is what was there before.
    expect(sockets()).toBeLessThanOrEqual(before.sockets + 2);
  }, 240_000);
});

function requireOutput(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8' });
}
