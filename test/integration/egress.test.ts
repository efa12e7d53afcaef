/**
 * Egress end to end in a local cluster: a server outside the mesh (in the underlay netns, on
 * 172.30.0.1) is reached by a meshed pod. Under ALLOW_ANY an unknown destination passes through;
 * after `ambit local up --outbound-traffic-policy REGISTRY_ONLY` the node agent refuses it (the
 * client sees the reset; the agent's access log and metrics name BlackHoleCluster and the
 * destination) and lets through what ServiceEntries register: a STATIC entry reached at its
 * allocated VIP, and an address-based one, each reported with its host as destination_service.
 * A DNS entry is resolved by the agent's resolver (a DNS server in the underlay netns, given as
 * AMBIT_DNS_RESOLVERS). An AuthorizationPolicy bound to a ServiceEntry refuses one client's service account; a
 * MESH_INTERNAL entry whose endpoint is a meshed pod is carried over HBONE (mutual TLS); the
 * shared conformance ServiceEntry is applied unchanged.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { buildModel } from '../../src/config/model.js';
import { parseManifests } from '../../src/kube/manifests.js';
import { ClusterLayout } from '../../src/local/layout.js';
import { until } from '../helpers/wait.js';
import { localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('egress');
const EXTERNAL = '172.30.0.1';
/** Ports of the external server: one no ServiceEntry names, one a STATIC entry's endpoint, one an address-based entry's. */
const UNKNOWN = 7070;
const STATIC_PORT = 7071;
const ADDRESS_PORT = 7072;
const DNS_PORT = 7073;
/** A DNS server outside the mesh, the node agents' resolver for DNS ServiceEntries (AMBIT_DNS_RESOLVERS). */
const RESOLVER = `${EXTERNAL}:5353`;

/** A TCP server outside the mesh: answers each connection with its own port and the peer's address, then closes. */
const SERVER = `const net = require("net");
for (const port of process.argv.slice(1).map(Number)) net.createServer((s) => { s.on("error", () => {}); s.end("external " + port + " to " + s.remoteAddress.replace("::ffff:", "") + "\\n"); }).listen(port, "${EXTERNAL}");
// A resolver that knows one name: dns.example.test is ${EXTERNAL} (TTL 60 s); any other name is NXDOMAIN.
const dns = require("dgram").createSocket("udp4");
dns.on("message", (q, peer) => {
  let i = 12; const labels = []; while (q[i]) { labels.push(q.subarray(i + 1, i + 1 + q[i]).toString()); i += q[i] + 1; }
  const question = q.subarray(12, i + 5); const known = labels.join(".").toLowerCase() === "dns.example.test" && q.readUInt16BE(i + 1) === 1;
  const head = Buffer.alloc(12); q.copy(head, 0, 0, 2); head.writeUInt16BE(known ? 0x8180 : 0x8183, 2); head.writeUInt16BE(1, 4); head.writeUInt16BE(known ? 1 : 0, 6);
  const answer = known ? Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ...${JSON.stringify(EXTERNAL.split('.').map(Number))}]) : Buffer.alloc(0);
  dns.send(Buffer.concat([head, question, answer]), peer.port, peer.address);
});
dns.bind(5353, "${EXTERNAL}", () => console.log("listening"));`;

const SERVICE_ENTRIES = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: static-api, namespace: shop }
spec:
  hosts: [static.example.test]
  ports: [{ number: 80, name: tcp-api, protocol: TCP }]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{ address: ${EXTERNAL}, ports: { tcp-api: ${STATIC_PORT} } }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-address, namespace: shop }
spec:
  hosts: [addr.example.test]
  addresses: [${EXTERNAL}]
  ports: [{ number: ${ADDRESS_PORT}, name: tcp, protocol: TCP }]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: by-dns, namespace: shop }
spec:
  hosts: [dns.example.test]
  ports: [{ number: 80, name: tcp, protocol: TCP, targetPort: ${DNS_PORT} }]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: no-blocked, namespace: shop }
spec:
  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: by-address }]
  action: DENY
  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/blocked] } }], to: [{ operation: { hosts: [addr.example.test] } }] }]
`;

const CLIENT_POD = (name: string, sa: string) => `
apiVersion: v1
kind: ServiceAccount
metadata: { name: ${sa}, namespace: shop }
---
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: shop }
spec: { nodeName: node-1, serviceAccountName: ${sa}, containers: [{ name: c, command: [sleep, infinity] }] }
`;

/** A meshed server on the other node, reached through a MESH_INTERNAL ServiceEntry. */
const INTERNAL_POD = `
apiVersion: v1
kind: Pod
metadata: { name: internal, namespace: shop, labels: { app: internal } }
spec:
  nodeName: node-2
  containers:
  - name: c
    command: [node, -e, 'require("net").createServer((s) => s.end("internal to " + s.remoteAddress + "\\n")).listen(9080)']
    readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;

const MANIFESTS = [`
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
`, CLIENT_POD('client', 'client'), CLIENT_POD('blocked', 'blocked'), INTERNAL_POD, SERVICE_ENTRIES].join('---');

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;

/** `node -e DIAL host port`: one TCP connection; prints what came back, or the error's code. */
const DIAL = `const s = require("net").connect(Number(process.argv[2]), process.argv[1]); let b = "";
s.on("data", (c) => b += c); s.on("end", () => console.log("ok " + b.trim())); s.on("error", (e) => console.log("error " + (e.code ?? e.message)));
setTimeout(() => { console.log("error timeout"); process.exit(0); }, 5000).unref();`;
const dial = async (pod: string, host: string, port: number) => (await cluster.exec(`shop/${pod}`, ['node', '-e', DIAL, host, String(port)])).trim();

/** The counter's value in the agent's metrics for the series whose labels include all of `labels`. */
function counter(text: string, name: string, labels: Record<string, string>): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

let server: ChildProcess | undefined;
/** The VIP the controller allocates an entry's host: computed here as every controller replica does. */
function vipOf(entry: string, host: string): string {
  const { resources } = parseManifests([{ file: 'se.yaml', text: SERVICE_ENTRIES, dir: '/' }]);
  return buildModel({ resources, pods: [] }, 'cluster.local').serviceEntries.find((e) => e.name === entry)!.dnsAddresses[host]![0]!;
}
const STATIC_VIP = vipOf('static-api', 'static.example.test');

describeAsRoot('egress: ServiceEntry and outboundTrafficPolicy', () => {
  beforeAll(async () => {
    // Handed by the runtime to the node agents it starts.
    cluster.env.AMBIT_DNS_RESOLVERS = RESOLVER;
    await cluster.up(MANIFESTS);
    const underlay = new ClusterLayout(cluster.name, cluster.stateDir).underlayNetns;
    server = spawn('ip', ['netns', 'exec', underlay, process.execPath, '-e', SERVER, String(UNKNOWN), String(STATIC_PORT), String(ADDRESS_PORT), String(DNS_PORT)], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      server!.stdout!.once('data', () => resolve());
      server!.once('exit', (code) => reject(new Error(`the external server exited with ${code}`)));
    });
  }, 120_000);

  afterAll(async () => {
    if (server?.pid !== undefined && server.exitCode === null) server.kill('SIGTERM');
    await cluster.down();
  }, 60_000);

  it('under ALLOW_ANY, passes an unknown destination through, reported as PassthroughCluster', async () => {
    expect(await dial('client', EXTERNAL, UNKNOWN)).toMatch(/^ok external 7070 to 10\.244\.1\.\d+$/);
    await until('the connection in the metrics', async () => counter(await cluster.metrics('node-1'), 'istio_tcp_connections_closed_total', {
      reporter: 'source', source_workload: 'client', destination_service: 'PassthroughCluster', response_flags: '-',
    }) >= 1, { timeout: 10_000, interval: 250 });
  });

  it('under REGISTRY_ONLY, refuses an unknown destination: reset, logged with the destination, counted as BlackHoleCluster', async () => {
    expect(await cluster.ok(['local', 'up', '--cluster', cluster.name, '--outbound-traffic-policy', 'REGISTRY_ONLY'])).toContain('outbound traffic policy REGISTRY_ONLY (controller restarted)');
    // The node agents get the new mode once they have reconnected to the restarted controller.
    await until('the unknown destination refused', async () => (await dial('client', EXTERNAL, UNKNOWN)) === 'error ECONNRESET', { timeout: 30_000, interval: 500 });
    const line = cluster.accessLog('node-1').reverse().find((l) => l.destination.ip === EXTERNAL && l.destination.port === UNKNOWN && l.connection.response_flags === 'UH');
    expect(line?.connection.error).toBe(`outboundTrafficPolicy REGISTRY_ONLY: ${EXTERNAL}:${UNKNOWN} is neither a mesh service, a workload nor a ServiceEntry`);
    expect((line?.destination as { service?: string } | undefined)?.service).toBe('BlackHoleCluster');
    const metrics = await cluster.metrics('node-1');
    // Opened as "-" and closed with the refusal's flag, as the agent counts every connection.
    expect(counter(metrics, 'istio_tcp_connections_closed_total', { reporter: 'source', source_workload: 'client', destination_service: 'BlackHoleCluster', destination_service_name: 'BlackHoleCluster', response_flags: 'UH' })).toBeGreaterThanOrEqual(1);
    expect(counter(metrics, 'ambit_egress_refused_total', { reason: 'registry_only' })).toBeGreaterThanOrEqual(1);
    // What the agent holds, on its admin endpoint.
    const dump = JSON.parse(await cluster.nodeFetch('node-1', 'http://127.0.0.1:15000/config_dump')) as { meshConfig?: unknown; serviceEntries?: { name: string }[] };
    expect(dump.meshConfig).toEqual({ outboundTrafficPolicy: 'REGISTRY_ONLY' });
    expect(dump.serviceEntries?.map((e) => e.name)).toEqual(['by-address', 'by-dns', 'static-api']);
  });

  it('lets a STATIC ServiceEntry through at its VIP, to its endpoint\'s mapped port, with the host as destination_service', async () => {
    expect(STATIC_VIP).toMatch(/^240\.240\.\d+\.\d+$/);
    expect(await dial('client', STATIC_VIP, 80)).toMatch(/^ok external 7071 to 10\.244\.1\.\d+$/);
    await until('the connection in the metrics', async () => counter(await cluster.metrics('node-1'), 'istio_tcp_connections_closed_total', {
      reporter: 'source', source_workload: 'client', destination_service: 'static.example.test', destination_service_name: 'static.example.test', destination_service_namespace: 'shop',
    }) >= 1, { timeout: 10_000, interval: 250 });
  });

  it('lets an address-based ServiceEntry through, and its AuthorizationPolicy refuses the client it names', async () => {
    expect(await dial('client', EXTERNAL, ADDRESS_PORT)).toMatch(/^ok external 7072 to 10\.244\.1\.\d+$/);
    expect(await dial('blocked', EXTERNAL, ADDRESS_PORT)).toBe('error ECONNRESET');
    const metrics = await cluster.metrics('node-1');
    expect(counter(metrics, 'istio_tcp_connections_opened_total', { source_workload: 'client', destination_service: 'addr.example.test', destination_service_namespace: 'shop' })).toBeGreaterThanOrEqual(1);
    expect(counter(metrics, 'ambit_egress_refused_total', { reason: 'authorization' })).toBeGreaterThanOrEqual(1);
    const denied = cluster.accessLog('node-1').reverse().find((l) => l.source.workload === 'blocked' && l.destination.port === ADDRESS_PORT);
    expect(denied?.connection).toMatchObject({ response_flags: 'RBAC', policy: 'shop/no-blocked', error: 'denied by DENY policy shop/no-blocked' });
    // The registry does not cover another port of the same address.
    expect(await dial('client', EXTERNAL, UNKNOWN)).toBe('error ECONNRESET');
  });

  it('resolves a DNS ServiceEntry\'s host with the agent\'s resolver, and reaches it at the targetPort', async () => {
    expect(await dial('client', vipOf('by-dns', 'dns.example.test'), 80)).toMatch(/^ok external 7073 to 10\.244\.1\.\d+$/);
    await until('the connection in the metrics', async () => counter(await cluster.metrics('node-1'), 'istio_tcp_connections_closed_total', {
      source_workload: 'client', destination_service: 'dns.example.test', response_flags: '-',
    }) >= 1, { timeout: 10_000, interval: 250 });
  });

  it('carries a MESH_INTERNAL entry whose endpoint is a meshed pod over HBONE', async () => {
    const pod = (await cluster.status()).pods.find((p) => p.name === 'internal')!;
    const entry = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: internal, namespace: shop }
spec:
  hosts: [internal.example.test]
  addresses: [198.51.100.80]
  ports: [{ number: 80, name: tcp, protocol: TCP, targetPort: 9080 }]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{ address: ${pod.ip} }]
`;
    await cluster.apply('internal.yaml', entry);
    // The server sees the connection come from its node agent's tunnel, handed over in its own netns.
    const answer = await until('the internal entry served', async () => {
      const out = await dial('client', '198.51.100.80', 80);
      return out.startsWith('ok internal') ? out : undefined;
    }, { timeout: 20_000, interval: 500 });
    expect(answer).toMatch(/^ok internal to /);
    await until('the mutual-TLS connection in the metrics', async () => counter(await cluster.metrics('node-1'), 'istio_tcp_connections_opened_total', {
      reporter: 'source', source_workload: 'client', destination_workload: 'internal', destination_service: 'internal.example.test', connection_security_policy: 'mutual_tls',
    }) >= 1, { timeout: 10_000, interval: 250 });
  });

  it('applies the shared conformance ServiceEntry unchanged', async () => {
    const text = readFileSync(join(SHARED, 'conformance', 'istio', 'egress-rule-google-apis.yaml'), 'utf8');
    const file = join(cluster.stateDir, 'egress-rule-google-apis.yaml');
    writeFileSync(file, text);
    const r = await cluster.ambit(['local', 'apply', '--cluster', cluster.name, '-f', file]);
    expect(r).toMatchObject({ code: 0, stdout: 'serviceentry.networking.istio.io/googleapis created\n', stderr: '' });
  });
});
