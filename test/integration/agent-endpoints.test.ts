/**
 * A real node agent's local endpoints under hostile requests, in a 2-node local cluster: a
 * malformed request target on its admin port (15000), its metrics and health ports, bad
 * percent-encoding on its control socket, a state change over TCP. Each is refused with its
 * 4xx; the agent keeps its pid and still carries a meshed connection over mTLS; its sockets are
 * 0600 and the runtime still admits meshed pods through them.
 */
import { connect } from 'node:net';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { localCluster } from './helpers/cluster.js';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('ep');
const { stateDir } = cluster;
const NODE_1_IP = '172.30.0.11';
const controlSocket = join(stateDir, 'nodes', 'node-1', 'agent.sock');

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: mesh, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: server, namespace: mesh }
---
apiVersion: v1
kind: Pod
metadata: { name: server, namespace: mesh, labels: { app: server } }
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => s.end("meshed from " + q.socket.remoteAddress.replace("::ffff:", ""))).listen(8080)']
    ports: [{ name: http, containerPort: 8080 }]
    readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: server, namespace: mesh }
spec: { selector: { app: server }, ports: [{ port: 80, targetPort: http }] }
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: mesh, labels: { app: client } }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`;

/** Raw bytes to host:port from inside node-1's netns (where the agent listens); prints the status line and body. */
const RAW = `const s = require("net").connect(Number(process.argv[2]), process.argv[1], () => s.write(process.argv[3].replace(/\\\\r\\\\n/g, "\\r\\n"))); let b = ""; s.on("data", (c) => b += c); s.on("error", (e) => { console.log("error " + e.code); process.exit(0); }); s.on("close", () => { const [h, body] = b.split("\\r\\n\\r\\n"); console.log(JSON.stringify({ status: h.split("\\r\\n")[0], body })); process.exit(0); }); setTimeout(() => { console.log("no answer"); process.exit(0); }, 5000);`;
async function rawFromNode1(host: string, port: number, request: string): Promise<{ status: string; body: string }> {
  const out = (await cluster.exec({ node: 'node-1' }, ['node', '-e', RAW, host, String(port), request])).trim();
  if (!out.startsWith('{')) throw new Error(`no HTTP answer from ${host}:${port}: ${out}`);
  return JSON.parse(out) as { status: string; body: string };
}

/** Raw bytes to a unix socket from this (root) process. */
function rawUnix(path: string, request: string): Promise<{ status: string; body: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => s.write(request));
    let b = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no answer on ${path}`)); }, 10_000);
    s.on('data', (c: Buffer) => { b += c.toString(); });
    s.on('error', (err) => { clearTimeout(timer); reject(err); });
    s.on('close', () => {
      clearTimeout(timer);
      const [h = '', body = ''] = b.split('\r\n\r\n');
      resolve({ status: h.split('\r\n')[0]!, body });
    });
  });
}

const status = () => cluster.status();
const agentOf = (s: ClusterStatus, node: string) => s.components.find((c) => c.name === 'node-agent' && c.node === node)!;

async function meshedCall(): Promise<string> {
  const GET = 'require("http").get({ host: "server", port: 80, path: "/", agent: false, timeout: 3000 }, (r) => { let b = ""; r.on("data", (c) => b += c); r.on("end", () => console.log(b)); }).on("error", (e) => console.log("error " + e.code));';
  return (await cluster.exec('mesh/client', ['node', '-e', GET])).trim();
}

function openedOverMtls(metrics: string): number {
  let n = 0;
  for (const line of metrics.split('\n')) {
    const m = /^istio_tcp_connections_opened_total\{(.*)\} (\S+)$/.exec(line);
    if (m && m[1]!.includes('reporter="source"') && m[1]!.includes('connection_security_policy="mutual_tls"') && m[1]!.includes('destination_workload="server"')) n += Number(m[2]);
  }
  return n;
}

describeAsRoot('a node agent\'s local endpoints under hostile requests', () => {
  let pid: number;

  beforeAll(async () => {
    await cluster.up(MANIFESTS);
    const s = await until('both node agents', async () => {
      const st = await status();
      return st.components.filter((c) => c.name === 'node-agent' && c.state === 'running').length === 2 ? st : undefined;
    });
    pid = agentOf(s, 'node-1').pid!;
  }, 240_000);

  afterAll(() => cluster.down(), 120_000);

  it('has its control socket and the runtime\'s socket at mode 0600, and the runtime admitted the meshed pods through them', () => {
    expect(statSync(controlSocket).mode & 0o777).toBe(0o600);
    expect(statSync(join(stateDir, 'runtime.sock')).mode & 0o777).toBe(0o600);
    // The runtime asks the agent before starting a meshed pod (GET /v1/pods/<uid> on the control socket).
    expect(readFileSync(join(stateDir, 'logs', 'runtime.log'), 'utf8')).toMatch(/"pod":"mesh\/client".*pod enrolled by its node agent/);
  });

  it('answers GET //[ on 15000 with 400, and malformed targets on 15020 and 15021 too', async () => {
    const admin = await rawFromNode1('127.0.0.1', 15000, 'GET //[ HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n');
    expect(admin.status).toBe('HTTP/1.1 400 Bad Request');
    expect(JSON.parse(admin.body)).toEqual({ error: 'request target must not start with "//", got "//["' });
    for (const port of [15020, 15021]) {
      const r = await rawFromNode1(NODE_1_IP, port, 'GET /%E0%80 HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n');
      expect(r.status).toBe('HTTP/1.1 400 Bad Request');
      expect(r.body).toBe('request path segment "%E0%80" is not percent-encoded UTF-8\n');
    }
  });

  it('answers /v1/pods/%E0 on its control socket with 400', async () => {
    const r = await rawUnix(controlSocket, 'GET /v1/pods/%E0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    expect(r.status).toBe('HTTP/1.1 400 Bad Request');
    expect(JSON.parse(r.body)).toEqual({ error: 'request path segment "%E0" is not percent-encoded UTF-8' });
  });

  it('refuses POST /logging on 15000 and takes it on the control socket', async () => {
    const tcp = await rawFromNode1('127.0.0.1', 15000, 'POST /logging?level=debug HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n');
    expect(tcp.status).toBe('HTTP/1.1 403 Forbidden');
    expect((JSON.parse(tcp.body) as { error: string }).error).toContain(`send it to the agent's control socket ${controlSocket}, which only root can open`);
    const unix = await rawUnix(controlSocket, 'POST /logging?level=info HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    expect(unix.status).toBe('HTTP/1.1 200 OK');
  });

  it('is still the same process afterwards and still carries a meshed connection over mTLS', async () => {
    const before = openedOverMtls(await (await rawFromNode1(NODE_1_IP, 15020, 'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n')).body);
    expect(await meshedCall()).toMatch(/^meshed from 10\.244\.2\.\d+$/);
    await until('the source-side metric of the call', async () => {
      const after = openedOverMtls((await rawFromNode1(NODE_1_IP, 15020, 'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n')).body);
      return after > before || undefined;
    });
    const agent = agentOf(await status(), 'node-1');
    expect(agent).toMatchObject({ pid, state: 'running' });
    expect(readFileSync(join(stateDir, 'logs', 'node-agent.node-1.log'), 'utf8')).not.toMatch(/"level":(50|60).*(Invalid URL|URI malformed)/);
  });
});
