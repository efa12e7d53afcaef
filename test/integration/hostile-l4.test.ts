/**
 * Hostile input on the L4 data path, in a local cluster with its node agents: nothing reaches a
 * meshed pod around the mesh, and nothing makes an agent dial its own listeners.
 *
 *   - a connection to a pod's 15006/15001/15008 (plaintext from outside, from the pod itself, or
 *     as the target of an HBONE CONNECT) is refused at once, never looped;
 *   - an address of a meshed pod the agent was not told of (its IPv6 link-local) is refused;
 *     (the app listens on every address: before, it answered there in plaintext);
 *   - only the node's prober (the runtime's cgroup, as the kubelet's on a real node) skips
 *     STRICT: anything else from the node is refused;
 *   - a pod bound to a waypoint accepts its L7-bound ports only from the waypoint;
 *   - a refused HBONE peer learns a code, never a policy name.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { until } from '../helpers/wait.js';
import { isReady, localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('hostile');
const { apply, remove, metrics, accessLog } = cluster;

/**
 * One TCP exchange from inside a pod or a node: connects, writes a request, prints
 * "ok <first line of the answer>", "closed" (no answer), or "error <code>".
 */
const TALK = `const [host, port, scope] = process.argv.slice(1);
const s = require("net").connect({ host, port: Number(port), ...(scope ? { family: 6 } : {}) });
let got = ""; let done = false;
const end = (line) => { if (!done) { done = true; console.log(line); s.destroy(); } };
s.setTimeout(3000, () => end("error TIMEOUT"));
s.on("connect", () => s.write("GET / HTTP/1.1\\r\\nhost: x\\r\\nconnection: close\\r\\n\\r\\n"));
s.on("data", (c) => { got += c; });
s.on("end", () => end(got ? "ok " + got.split("\\r\\n").pop() : "closed"));
s.on("error", (e) => end("error " + (e.code ?? e.message)));`;
const talk = async (where: string | { node: string }, host: string, port: number) => (await cluster.exec(where, ['node', '-e', TALK, host, String(port)])).trim();
const fromPod = (pod: string, host: string, port: number) => talk(pod, host, port);
const fromNode = (node: string, host: string, port: number) => talk({ node }, host, port);
function counter(text: string, name: string): number {
  const m = new RegExp(`^ambit_redirect_counters\\{counter="${name}"\\} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

const SERVER = (name: string, node: string, labels = '') => `
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: mesh, labels: { app: ${name}${labels} } }
spec:
  nodeName: ${node}
  serviceAccountName: server
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => s.end("app ${name}")).listen(8080)']
    ports: [{ name: http, containerPort: 8080 }]
    readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
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
${SERVER('server', 'node-2')}
---
${SERVER('bound', 'node-2', ', ambit.dev/use-waypoint: wp')}
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: mesh }
spec: { nodeName: node-1, serviceAccountName: client, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: v1
kind: Pod
metadata: { name: outsider, namespace: plain }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`;

let ip: Record<string, string> = {};
let ip6: Record<string, string> = {};

describeAsRoot('hostile input on the L4 data path', () => {
  beforeAll(async () => {
    await cluster.up(BASE);
    const status = await until('every pod ready and both agents running', async () => {
      const s = await cluster.status();
      const agents = s.components.filter((c) => c.name === 'node-agent' && c.state === 'running').length;
      return agents === 2 && s.pods.length === 4 && s.pods.every(isReady) ? s : undefined;
    }, { timeout: 120_000, interval: 500 });
    ip = Object.fromEntries(status.pods.map((p) => [p.name, p.ip]));
    ip6 = Object.fromEntries(status.pods.map((p) => [p.name, p.ips[1]!]));
    await until('server and bound enrolled', async () => {
      const w = JSON.parse(await cluster.nodeFetch('node-2', 'http://127.0.0.1:15000/workloads')) as { enrolled: { name: string }[] };
      return w.enrolled.length === 2 || undefined;
    });
  }, 180_000);

  afterAll(() => cluster.down(), 60_000);

  it('refuses plaintext sent straight to a pod\'s 15006 listener, once, with no loop', async () => {
    expect(await fromPod('plain/outsider', ip.server!, 15006)).toBe('error ECONNRESET');
    // One refusal logged, and nothing dialled again: no connection of the agent's own to 15006.
    const entries = await until('the refusal in the access log', () => {
      const e = accessLog('node-2').filter((l) => l.destination.port === 15006);
      return e.length > 0 ? e : undefined;
    });
    expect(entries).toHaveLength(1);
    expect(entries[0]!.connection.response_flags).toBe('NR');
    expect(entries[0]!.source.ip).toBe(ip.outsider);
  });

  it('refuses the pod\'s own connections to the agent\'s listeners, on 127.0.0.1 and on its own address', async () => {
    expect(await fromPod('mesh/server', '127.0.0.1', 15006)).toBe('error ECONNRESET');
    expect(await fromPod('mesh/server', ip.server!, 15006)).toBe('error ECONNRESET');
    expect(await fromPod('mesh/server', ip.server!, 15001)).toBe('error ECONNRESET');
    // And from another meshed pod, to 15008 as a plain destination: refused by the source agent.
    expect(await fromPod('mesh/client', ip.server!, 15008)).toBe('error ECONNRESET');
    const refusals = [...accessLog('node-1'), ...accessLog('node-2')].filter((l) => [15001, 15006, 15008].includes(l.destination.port ?? 0));
    expect(refusals.length).toBeGreaterThanOrEqual(4);
    expect(refusals.length).toBeLessThan(10);
    expect(refusals.every((l) => l.connection.response_flags === 'NR')).toBe(true);
  });

  it('answers an HBONE CONNECT to the pod\'s own 15008 or 15006 with a code, never a nested tunnel', async () => {
    const answers = await connectAs('spiffe://cluster.local/ns/mesh/sa/client', [`${ip.server}:15008`, `${ip.server}:15006`, `${ip.server}:8080`]);
    expect(answers[0]).toEqual({ status: 400, error: 'reserved_port' });
    expect(answers[1]).toEqual({ status: 400, error: 'reserved_port' });
    expect(answers[2]).toEqual({ status: 200, error: null });
  });

  it('tells a peer denied by policy a code, not the policy\'s name', async () => {
    await apply('deny.yaml', `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: secret-policy-name, namespace: mesh }
spec:
  selector: { matchLabels: { app: server } }
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/mesh/sa/client] } }] }]
`);
    const answer = await until('the DENY in effect', async () => {
      const [a] = await connectAs('spiffe://cluster.local/ns/mesh/sa/client', [`${ip.server}:8080`]);
      return a!.status !== 200 ? a : undefined;
    });
    expect(answer).toEqual({ status: 401, error: 'denied' });
    expect(accessLog('node-2').some((l) => l.connection.policy === 'mesh/secret-policy-name')).toBe(true);
    await remove('deny.yaml');
  });

  it('refuses a meshed pod\'s IPv6 link-local address, which it was never told of', async () => {
    // The pod's eth0 has a link-local address; the node reaches it through the pod's veth.
    const addr = await until('the link-local address', async () => {
      const out = await cluster.exec('mesh/server', ['ip', '-6', '-o', 'addr', 'show', 'dev', 'eth0', 'scope', 'link']);
      return out.includes('tentative') ? undefined : /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1];
    });
    const veth = `vpod${ip.server!.split('.')[3]}`;
    const before = counter(await metrics('node-2'), 'inbound_unknown_addr');
    // Before, the app answered here in plaintext, unlogged. Now sk_lookup drops the lookup: the kernel resets.
    expect(await fromNode('node-2', `${addr}%${veth}`, 8080)).toBe('error ECONNREFUSED');
    expect(counter(await metrics('node-2'), 'inbound_unknown_addr')).toBeGreaterThan(before);
  });

  it('carries a dual-stack pod\'s IPv6 address through the agent, as its IPv4 one', async () => {
    // Plaintext from outside the mesh to the second address: steered to the agent and logged.
    expect(await fromPod('plain/outsider', ip6.server!, 8080)).toBe('ok app server');
    expect(accessLog('node-2').some((l) => l.destination.ip === ip6.server && l.destination.port === 8080 && l.source.ip === ip6.outsider)).toBe(true);
    // A meshed client's call to it goes over HBONE, to the address it called.
    expect(await fromPod('mesh/client', ip6.server!, 8080)).toBe('ok app server');
    const tunnelled = accessLog('node-2').filter((l) => l.destination.ip === ip6.server && l.source.ip === ip6.client);
    expect(tunnelled.length).toBeGreaterThanOrEqual(1);
  });

  it('exempts only the node\'s prober from STRICT: its probes pass, other host processes are refused', async () => {
    await apply('strict.yaml', `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: mesh }
spec: { mtls: { mode: STRICT } }
`);
    // A process on the node (host network) is not the prober: refused like any plaintext.
    await until('STRICT in effect', async () => ((await fromNode('node-2', ip.server!, 8080)) === 'error ECONNRESET' ? true : undefined), { timeout: 10_000, interval: 100 });
    // Under STRICT the pod's IPv6 address refuses plaintext as its IPv4 one does.
    expect(await fromPod('plain/outsider', ip6.server!, 8080)).toBe('error ECONNRESET');
    // The runtime's readiness probes still reach the app: the pod stays ready, and they are logged as exempt.
    await until('probes logged as exempt under STRICT', () => {
      const since = accessLog('node-2').filter((l) => l.connection.exempt === 'kubelet-probe' && l.destination.ip === ip.server);
      return since.length >= 3 || undefined;
    }, { timeout: 15_000 });
    const s = await cluster.status();
    expect(isReady(s.pods.find((p) => p.name === 'server')!)).toBe(true);
    expect(await metrics('node-2')).toMatch(/^ambit_exempt_connections_total\{reason="kubelet-probe"\} [1-9]/m);
    const refused = accessLog('node-2').filter((l) => l.destination.ip === ip.server && l.destination.port === 8080 && l.connection.response_flags === 'NR' && !l.connection.exempt);
    expect(refused.length).toBeGreaterThanOrEqual(1);
    await remove('strict.yaml');
  }, 60_000);

  it('lets only its waypoint reach a pod bound to one (ambit.dev/use-waypoint)', async () => {
    // Plaintext from outside the mesh would skip the waypoint's L7 policy: refused.
    expect(await fromPod('plain/outsider', ip.bound!, 8080)).toBe('error ECONNRESET');
    // A meshed client's tunnel is not the waypoint's: refused with a code.
    const [direct] = await connectAs('spiffe://cluster.local/ns/mesh/sa/client', [`${ip.bound}:8080`]);
    expect(direct).toEqual({ status: 403, error: 'waypoint_required' });
    // The unbound server next to it is reachable as before.
    expect(await fromPod('plain/outsider', ip.server!, 8080)).toBe('ok app server');
    const log = accessLog('node-2').filter((l) => l.destination.ip === ip.bound && l.destination.port === 8080);
    expect(log.some((l) => l.connection.error?.includes('bound to waypoint mesh/wp'))).toBe(true);
  });
});

/**
 * HBONE CONNECTs to the server's node from node-1's netns with a certificate the mesh CA signs
 * for `identity`: what a peer holding a stolen or own workload certificate can try.
 */
async function connectAs(identity: string, authorities: string[]): Promise<{ status: number; error: string | null }[]> {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(cluster.stateDir, 'ca')) });
  const certs = new CertManager({
    source: {
      createCertificate: async (csr: string, id: string, ttl: number) => (await ca.sign({ csr, identity: id, ttlSeconds: ttl })).chain,
      trustBundle: () => Promise.resolve(ca.trustBundle()),
    },
  });
  await certs.start();
  const cert = await certs.acquire(identity);
  const files = mkdtempSync(join(tmpdir(), 'ambit-hostile-cert-'));
  try {
    writeFileSync(join(files, 'cert.pem'), cert.chain.join(''));
    writeFileSync(join(files, 'key.pem'), cert.key.export({ type: 'pkcs8', format: 'pem' }) as string);
    writeFileSync(join(files, 'roots.pem'), certs.trustBundle.join(''));
    const target = authorities[0]!.replace(/:\d+$/, '');
    const script = `const fs = require("fs"), http2 = require("http2"), tls = require("tls");
const [dir, host, ...auths] = process.argv.slice(1);
const session = http2.connect("https://" + host + ":15008", { createConnection: () => tls.connect({ host, port: 15008,
  cert: fs.readFileSync(dir + "/cert.pem"), key: fs.readFileSync(dir + "/key.pem"), ca: fs.readFileSync(dir + "/roots.pem"),
  ALPNProtocols: ["h2"], minVersion: "TLSv1.3", checkServerIdentity: () => undefined }) });
session.on("error", (e) => { console.log(JSON.stringify({ error: e.message })); process.exit(1); });
(async () => {
  const out = [];
  for (const a of auths) out.push(await new Promise((resolve) => {
    const s = session.request({ ":method": "CONNECT", ":authority": a });
    s.on("response", (h) => { resolve({ status: h[":status"], error: h["ambit-code"] ?? null }); s.close(); });
    s.on("error", (e) => resolve({ status: 0, error: e.message }));
  }));
  console.log(JSON.stringify(out)); session.close();
})();`;
    const out = await cluster.exec({ node: 'node-1' }, ['node', '-e', script, files, target, ...authorities]);
    return JSON.parse(out.trim()) as { status: number; error: string | null }[];
  } finally {
    certs.close();
    rmSync(files, { recursive: true, force: true });
  }
}
