/**
 * DNS proxying end to end in a local cluster: a meshed pod's queries to port 53 are steered by
 * the eBPF programs to its node agent, which answers mesh services and ServiceEntry hosts and
 * forwards the rest to the resolver the pod asked — here a small DNS server the test runs in a
 * pod outside the mesh (`upstream`), which answers one name of its own and NXDOMAIN for the rest.
 * Clients: dgram with connect() + send() (as glibc's resolver does), dgram with sendto() (as
 * musl's does), Node's dns.Resolver (c-ares), and DNS over TCP. The cluster is removed in
 * afterAll, whatever failed.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { effectivePrograms } from '../../src/ebpf/cgroup-programs.js';
import { Datapath } from '../../src/ebpf/datapath.js';
import { BpfLink } from '../../src/ebpf/link.js';
import { until } from '../helpers/wait.js';
import { localCluster, type LocalCluster } from './helpers/cluster.js';
import { Lab } from './lab.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('dns');
// The same cluster with the agents' DNS capture switched off (AMBIT_DNS_CAPTURE, passed on by the runtime).
process.env.AMBIT_DNS_CAPTURE = 'false';
const off = localCluster('dnsoff');
delete process.env.AMBIT_DNS_CAPTURE;

/**
 * The upstream resolver (UDP and TCP port 53): `outside.example.test` A → 192.0.2.7, anything
 * else NXDOMAIN (so a mesh name answered with an address can only have been answered by the agent).
 */
const UPSTREAM = `const dgram = require("dgram"), net = require("net");
function answer(q) {
  let at = 12; const labels = [];
  while (q[at] !== 0) { labels.push(q.subarray(at + 1, at + 1 + q[at]).toString()); at += q[at] + 1; }
  const qend = at + 5, name = labels.join(".").toLowerCase(), type = q.readUInt16BE(at + 1);
  const hit = name === "outside.example.test" && type === 1;
  const head = Buffer.alloc(12); q.copy(head, 0, 0, 2);
  head.writeUInt16BE(0x8180 | (hit ? 0 : 3), 2); head.writeUInt16BE(1, 4); head.writeUInt16BE(hit ? 1 : 0, 6);
  const rr = hit ? Buffer.from([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]) : Buffer.alloc(0);
  return Buffer.concat([head, q.subarray(12, qend), rr]);
}
const udp = dgram.createSocket("udp6"); udp.on("message", (m, r) => udp.send(answer(m), r.port, r.address)); udp.bind(53);
net.createServer((s) => { let buf = Buffer.alloc(0); s.on("data", (c) => { buf = Buffer.concat([buf, c]);
  while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) { const a = answer(buf.subarray(2, 2 + buf.readUInt16BE(0))); buf = buf.subarray(2 + buf.readUInt16BE(0));
    const l = Buffer.alloc(2); l.writeUInt16BE(a.length); s.write(Buffer.concat([l, a])); } }); s.on("error", () => {}); }).listen(53);`;

/**
 * `node -e QUERY '[[server, name, type, mode], ...]'`: the queries one after the other, mode
 * `connected` (connect + send), `sendto`, or `tcp`; an IPv6 server (or ::ffff:a.b.c.d) is asked
 * from an IPv6 socket. Prints one {rcode, answers, from, peer} per query (from: the reply's
 * source as the app saw it; peer: getpeername of the connected socket), or {error: "timeout"}.
 */
const QUERY = `const dgram = require("dgram"), net = require("net");
function one(server, name, type, mode) { return new Promise((resolve) => {
  const id = Math.floor(Math.random() * 65535);
  const q = Buffer.concat([Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    ...name.split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0, 0, type === "AAAA" ? 28 : 1, 0, 1])]);
  let s;
  const timer = setTimeout(() => { s.destroy ? s.destroy() : s.close(); resolve({ error: "timeout" }); }, 4000);
  function parse(r, from, peer) {
    clearTimeout(timer);
    if (r.readUInt16BE(0) !== id) return resolve({ error: "wrong id" });
    const an = r.readUInt16BE(6); let at = q.length; const answers = [];
    for (let i = 0; i < an; i++) { const t = r.readUInt16BE(at + 2), len = r.readUInt16BE(at + 10), d = r.subarray(at + 12, at + 12 + len);
      answers.push(t === 1 ? [...d].join(".") : d.toString("hex")); at += 12 + len; }
    resolve({ rcode: r.readUInt16BE(2) & 15, answers, from, peer });
  }
  if (mode === "tcp") {
    s = net.connect(53, server, () => { const l = Buffer.alloc(2); l.writeUInt16BE(q.length); s.write(Buffer.concat([l, q])); });
    let buf = Buffer.alloc(0);
    s.on("error", () => undefined);
    s.on("data", (c) => { buf = Buffer.concat([buf, c]); if (buf.length >= 2 + buf.readUInt16BE(0)) { parse(buf.subarray(2), s.remoteAddress + ":" + s.remotePort); s.end(); } });
  } else {
    s = dgram.createSocket(server.includes(":") ? "udp6" : "udp4");
    s.on("message", (m, r) => { parse(m, r.address + ":" + r.port, mode === "connected" ? s.remoteAddress().address + ":" + s.remoteAddress().port : undefined); s.close(); });
    if (mode === "connected") s.connect(53, server, () => s.send(q)); else s.send(q, 53, server);
  }
}); }
(async () => { const out = []; for (const job of JSON.parse(process.argv[1])) out.push(await one(...job)); console.log(JSON.stringify(out)); })();`;

/**
 * `node -e HOSTILE <server>`: from one connected socket, a 3-byte datagram, a query with two
 * questions, one whose name is a compression pointer to itself, then a good query for the
 * mesh service; prints the rcode of each answer that came, in order (nothing for the first).
 */
const HOSTILE = `const s = require("dgram").createSocket("udp4"); const got = [];
const head = (id, qd) => Buffer.from([0, id, 1, 0, 0, qd, 0, 0, 0, 0, 0, 0]);
const name = Buffer.concat("backend.dnstest.svc.cluster.local".split(".").map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])));
const sent = [Buffer.from([1, 2, 3]), Buffer.concat([head(2, 2), name, Buffer.from([0, 0, 1, 0, 1]), name, Buffer.from([0, 0, 1, 0, 1])]),
  Buffer.concat([head(3, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]), Buffer.concat([head(4, 1), name, Buffer.from([0, 0, 1, 0, 1])])];
s.on("message", (m) => { got.push(m[1] + ":" + (m.readUInt16BE(2) & 15)); if (m[1] === 4) { console.log(JSON.stringify(got)); s.close(); } });
setTimeout(() => { console.log(JSON.stringify(got)); process.exit(0); }, 5000).unref();
s.connect(53, process.argv[1], () => { for (const b of sent) s.send(b); });`;

/** `node -e RESOLVE <server> <name>...`: Node's dns.Resolver (c-ares) against that server; prints each name's addresses or error code. */
const RESOLVE = `const { Resolver } = require("dns").promises; const r = new Resolver({ timeout: 3000, tries: 1 }); r.setServers([process.argv[1]]);
(async () => { const out = []; for (const name of process.argv.slice(2)) out.push(await r.resolve4(name).catch((e) => e.code)); console.log(JSON.stringify(out)); })();`;

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: dnstest, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Namespace
metadata: { name: outside }
---
apiVersion: v1
kind: Pod
metadata: { name: upstream, namespace: outside }
spec: { nodeName: node-2, containers: [{ name: c, command: ${JSON.stringify(['node', '-e', UPSTREAM])} }] }
---
apiVersion: v1
kind: Pod
metadata: { name: backend, namespace: dnstest, labels: { app: backend } }
spec:
  nodeName: node-2
  containers:
  - name: c
    command: [node, -e, 'require("http").createServer((q, s) => s.end("ok")).listen(8080)']
    ports: [{ containerPort: 8080 }]
    readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: backend, namespace: dnstest }
spec: { selector: { app: backend }, ports: [{ port: 80, targetPort: 8080 }] }
---
apiVersion: v1
kind: Service
metadata: { name: headless, namespace: dnstest }
spec: { clusterIP: None, selector: { app: backend }, ports: [{ port: 8080 }] }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: api, namespace: dnstest }
spec:
  hosts: [api.example.test]
  addresses: [198.51.100.20]
  ports: [{ number: 443, name: tls, protocol: TLS }]
  resolution: NONE
  location: MESH_EXTERNAL
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: dnstest }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`;

interface Reply { rcode?: number; answers?: string[]; from?: string; peer?: string; error?: string }
type Job = [server: string, name: string, type: 'A' | 'AAAA', mode: 'connected' | 'sendto' | 'tcp'];
/** The queries, run one after the other by one process in the client pod. */
const queries = async (c: LocalCluster, jobs: Job[]): Promise<Reply[]> => JSON.parse(await c.exec('dnstest/client', ['node', '-e', QUERY, JSON.stringify(jobs)])) as Reply[];

/** Up, and the upstream resolver answering the client pod; returns the upstream's and the backend's addresses. */
async function start(c: LocalCluster): Promise<{ upstream: string; upstream6: string; backendIp: string }> {
  await c.up(MANIFESTS);
  const status = await c.status();
  const ipOf = (ns: string, name: string) => status.pods.find((p) => p.namespace === ns && p.name === name)?.ip;
  const upstream = ipOf('outside', 'upstream')!;
  expect(upstream).toMatch(/^10\.244\./);
  // The upstream may still be starting.
  await until('the upstream resolver up', async () => (await queries(c, [[upstream, 'outside.example.test', 'A', 'sendto']]))[0]!.rcode === 0, { timeout: 30_000, interval: 500 });
  const upstream6 = status.pods.find((p) => p.namespace === 'outside' && p.name === 'upstream')!.ips[1]!;
  return { upstream, upstream6, backendIp: ipOf('dnstest', 'backend')! };
}

describeAsRoot('DNS proxying by the node agent', () => {
  let upstream: string;
  let vip: string;
  let backendIp: string;
  let upstream6: string;
  let offUpstream: string;
  const SVC = 'backend.dnstest.svc.cluster.local';

  beforeAll(async () => {
    const [on, without] = await Promise.all([start(cluster), start(off)]);
    ({ upstream, upstream6, backendIp } = on);
    offUpstream = without.upstream;
    // The client's agent knows the service (its VIP) and the ServiceEntry.
    vip = await until('the service in node-1\'s config', async () => {
      const dump = JSON.parse(await cluster.nodeFetch('node-1', 'http://127.0.0.1:15000/config_dump')) as { services: { name: string; namespace: string; vips: string[] }[] };
      return dump.services.find((s) => s.namespace === 'dnstest' && s.name === 'backend')?.vips[0];
    }, { timeout: 30_000, interval: 500 });
  }, 120_000);
  afterAll(() => Promise.all([cluster.down(), off.down()]), 60_000);

  it('answers a mesh service with its VIP, to a connected socket (glibc), from the resolver asked', async () => {
    const [r] = await queries(cluster, [[upstream, SVC, 'A', 'connected']]);
    expect(r).toEqual({ rcode: 0, answers: [vip], from: `${upstream}:53`, peer: `${upstream}:53` });
  });

  it('answers to sendto() (musl) and over TCP, and NODATA for a family the name has no address of', async () => {
    const [sendto, tcp, tcp6, aaaa] = await queries(cluster, [
      [upstream, 'BACKEND.dnstest.svc.cluster.local', 'A', 'sendto'], [upstream, SVC, 'A', 'tcp'], [upstream6, SVC, 'A', 'tcp'], [upstream, SVC, 'AAAA', 'connected'],
    ]);
    expect(sendto).toMatchObject({ rcode: 0, answers: [vip], from: `${upstream}:53` });
    // The TCP socket's peer (getpeername) is the resolver too, not the capture listener.
    expect(tcp).toMatchObject({ rcode: 0, answers: [vip], from: `${upstream}:53` });
    expect(tcp6).toMatchObject({ rcode: 0, answers: [vip], from: `${upstream6}:53` });
    expect(aaaa).toMatchObject({ rcode: 0, answers: [] });
  });

  it('answers IPv6 sockets, to an IPv6 resolver and to an IPv4-mapped one, from the resolver asked', async () => {
    expect(upstream6).toContain(':');
    const mapped = `::ffff:${upstream}`;
    const [v6, v6forwarded, v4mapped, v4mappedForwarded] = await queries(cluster, [
      [upstream6, SVC, 'A', 'connected'], [upstream6, 'outside.example.test', 'A', 'sendto'], [mapped, SVC, 'A', 'connected'], [mapped, 'outside.example.test', 'A', 'sendto'],
    ]);
    expect(v6).toEqual({ rcode: 0, answers: [vip], from: `${upstream6}:53`, peer: `${upstream6}:53` });
    expect(v6forwarded).toMatchObject({ rcode: 0, answers: ['192.0.2.7'], from: `${upstream6}:53` });
    expect(v4mapped).toEqual({ rcode: 0, answers: [vip], from: `${mapped}:53`, peer: `${mapped}:53` });
    expect(v4mappedForwarded).toMatchObject({ rcode: 0, answers: ['192.0.2.7'], from: `${mapped}:53` });
  });

  it('answers a headless service with its pods and a ServiceEntry host with its address', async () => {
    const [headless, entry] = await queries(cluster, [[upstream, 'headless.dnstest.svc.cluster.local', 'A', 'connected'], [upstream, 'api.example.test', 'A', 'connected']]);
    expect(headless).toMatchObject({ rcode: 0, answers: [backendIp] });
    expect(entry).toMatchObject({ rcode: 0, answers: ['198.51.100.20'], from: `${upstream}:53` });
  });

  it('answers FORMERR to malformed queries, drops what is not one, and goes on answering', async () => {
    expect(JSON.parse(await cluster.exec('dnstest/client', ['node', '-e', HOSTILE, upstream]))).toEqual(['2:1', '3:1', '4:0']);
  });

  it('forwards other names to the resolver the pod asked, over UDP and TCP, and returns its answers', async () => {
    const [udp, tcp, nx] = await queries(cluster, [[upstream, 'outside.example.test', 'A', 'connected'], [upstream, 'outside.example.test', 'A', 'tcp'], [upstream, 'nothing.example.test', 'A', 'sendto']]);
    expect(udp).toEqual({ rcode: 0, answers: ['192.0.2.7'], from: `${upstream}:53`, peer: `${upstream}:53` });
    expect(tcp).toMatchObject({ rcode: 0, answers: ['192.0.2.7'], from: `${upstream}:53` });
    expect(nx).toMatchObject({ rcode: 3, answers: [] });
  });

  it('serves Node\'s dns.Resolver (c-ares) and counts the queries by result', async () => {
    const counts = async () => {
      const metrics = await cluster.metrics('node-1');
      const count = (result: string) => Number(new RegExp(`^ambit_dns_queries_total\\{namespace="dnstest",result="${result}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
      return { local: count('local'), forwarded: count('forwarded'), failed: count('failed') };
    };
    const before = await counts();
    expect(before.local).toBeGreaterThan(0);
    expect(JSON.parse(await cluster.exec('dnstest/client', ['node', '-e', RESOLVE, upstream, SVC, 'outside.example.test']))).toEqual([[vip], ['192.0.2.7']]);
    expect(await counts()).toEqual({ local: before.local + 1, forwarded: before.forwarded + 1, failed: before.failed });
  });

  it('with capture switched off, every query goes straight to the resolver', async () => {
    // The mesh name is the upstream's to answer now: it does not know it.
    const [svc, entry, other] = await queries(off, [[offUpstream, SVC, 'A', 'connected'], [offUpstream, 'api.example.test', 'A', 'sendto'], [offUpstream, 'outside.example.test', 'A', 'connected']]);
    expect(svc).toEqual({ rcode: 3, answers: [], from: `${offUpstream}:53`, peer: `${offUpstream}:53` });
    expect(entry).toMatchObject({ rcode: 3, answers: [] });
    expect(other).toMatchObject({ rcode: 0, answers: ['192.0.2.7'] });
    expect(await off.metrics('node-1')).not.toMatch(/^ambit_dns_queries_total\{/m);
  });
});

describeAsRoot('the DNS programs across agent upgrades and removal', () => {
  const lab = new Lab('ambit-dnsup');
  afterAll(() => lab.cleanup());
  const ours = (hook: 'sendmsg4' | 'recvmsg6' | 'connect4') => effectivePrograms(lab.cgroupRoot, hook).filter((p) => p.name.startsWith('ambit_dns')).length;

  it('attaches them fresh beside the adopted links of an agent that had none, and remove() detaches them', () => {
    const first = Datapath.load({ pinRoot: lab.pinRoot });
    first.attachOutbound(lab.cgroupRoot);
    first.close();
    // An agent built before DNS capture: its pins hold connect4/6 and sockops only.
    for (const name of ['ambit_dnsconn4', 'ambit_dnsconn6', 'ambit_dnssend4', 'ambit_dnssend6', 'ambit_dnsrecv4', 'ambit_dnsrecv6', 'ambit_dnspeer4', 'ambit_dnspeer6']) {
      const link = BpfLink.openPinned(join(lab.pinRoot, 'links', name))!;
      link.detach();
      link.unpin();
      link.close();
    }
    expect(ours('sendmsg4')).toBe(0);
    const upgraded = Datapath.load({ pinRoot: lab.pinRoot });
    expect(upgraded.attachOutbound(lab.cgroupRoot)).toEqual({ adopted: true });
    expect([ours('sendmsg4'), ours('recvmsg6'), ours('connect4')]).toEqual([1, 1, 1]);
    upgraded.close();
    Datapath.remove(lab.pinRoot);
    expect([ours('sendmsg4'), ours('recvmsg6'), ours('connect4')]).toEqual([0, 0, 0]);
    expect(effectivePrograms(lab.cgroupRoot, 'connect4').filter((p) => p.name.startsWith('ambit_'))).toEqual([]);
  });
});
