/**
 * One L4 hop between two pods on two nodes of a local ambit cluster, four ways in one run:
 *   direct        client pod → server pod, namespace `plain` (not meshed)
 *   ambit L4      the same in namespace `mesh`, labelled ambit.dev/dataplane-mode: ambient: the
 *                 node agents redirect, carry the bytes over mTLS/HBONE and deliver
 *   HAProxy pair  in `plain`: client → haproxy-client (node-1; TCP mode, plaintext in, TLS 1.3
 *                 out with a client certificate) → haproxy-server (node-2; terminates TLS,
 *                 verifies the client certificate against the bench's CA) → server pod
 *   node relay    in `plain`: client → relay-client (node-1) → relay-server (node-2) → server
 *                 pod, both bench/hbone-relay.mjs: ambit's wire (HTTP/2 CONNECT over pooled
 *                 mutual TLS 1.3, ambit's default windows and stream cap) in bare Node.js
 *                 processes, without the mesh (the floor: how much is Node, how much is ambit);
 *                 once per --relay-node binary
 * Run as root:
 *   npx tsx bench/l4-hop.ts [--duration S] [--warmup S] [--rates 1000,5000] [--connections 4]
 *                           [--no-haproxy] [--no-relay] [--relay-node PATH[,PATH]] [--no-iperf]
 *                           [--pods 1,10,100] [--out DIR] [--keep]
 *
 * Per scenario it measures latency at fixed request rates (bench/http-load.c, wrk2-style, from
 * each request's scheduled send time) against bench/http-server.c (1 KiB answers), the CPU the
 * proxies spend per 1,000 requests (utime + stime of the node agents, of the two haproxy
 * processes or of the two relays, from /proc), their RSS after the runs, and bulk throughput
 * with iperf3. Then the node-1 agent's RSS with 1, 10 and 100 enrolled pods.
 *
 * Every path is checked: the ambit scenario counts only when the node-2 agent's
 * istio_tcp_connections_opened_total{reporter="destination"} grew over the runs (otherwise the
 * traffic went around the mesh: WARNING, path_verified false, exit status 1); the HAProxy
 * scenario only when haproxy-server's TLS frontends (verify required) and the backends behind
 * them passed connections, from their stats sockets; a node relay only when relay-server's count
 * of the CONNECT streams it carried (written to a file on SIGUSR2) grew.
 *
 * The cluster (`ambit local up --cluster l4hop-<random>`, state under the bench's temp dir) is
 * removed at the end, on failure and on Ctrl-C, unless --keep; the C programs and certificates
 * live in the temp dir, which goes with it. The bench then checks that nothing is left: no
 * `ambit-<cluster>.*` netns, no cgroup, no process naming the temp dir or the cluster.
 * Results: bench/results/l4-hop.json and bench/results/l4-hop.md (or under --out DIR).
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_HBONE_LIMITS, hboneLimits } from '../src/hbone/limits.js';
import {
  BenchRun, COMMON_USAGE, Cluster, HERE, METRICS_PORT, MESH_LABEL, RESULTS, SATURATED_S, UsageError, agents, build, comparePercentiles, cpuDelta, cpuFields, cpuSample,
  fetchMetrics, fixedRateRuns, fmt, httpLoader, fmtSigned, haproxyCommon, haproxyStats, haproxyTcpRoutes, haproxyTlsBind, haproxyTlsServer, idleCpuPercent, intListArg,
  interrupted, loadAtStart, loadNow, machine, makeCertificates, mdMachineLine, mdTable, namespace, need, parseBenchOptions, parseMetrics, pod, podOf, podProcess,
  prepareAmbit, reachable, round, runFields, runMain, runWarnings, say, table, tail, version, vmRssKb, warn, writeManifests,
  type CommonOptions, type Doc, type Endpoint, type Percentiles, type Proxy, type RateScenario, type Status,
} from './lib.js';

const IMAGE = 'ambit.dev/bench/l4-hop';
const HTTP_PORT = 8080;
const IPERF_PORT = 5201;
/** haproxy-server's TLS ports: one per backend (HTTP server, iperf3 server). */
const HAPROXY_TLS_HTTP = 8443;
const HAPROXY_TLS_IPERF = 5443;
const OPENED_METRIC = 'istio_tcp_connections_opened_total';
const IPERF_SECONDS = 5;
/** How long the proxies' idle CPU is sampled before the runs. */
const IDLE_SAMPLE_MS = 3000;
/** Time the node agent gets after the pods of an RSS step run. */
const AGENT_SETTLE_MS = 2000;
/** Idle connections held open at most (the agents hold one socket per connection per side). */
const MAX_IDLE = 10_000;
/** How long the idle connections' CPU is sampled once they are all open. */
const IDLE_CONN_SAMPLE_MS = 10_000;
/** node-1 holds 253 pod addresses; the bench's own pods take a few. */
const MAX_RSS_PODS = 240;
/** The node relay: its script, relay-server's port (HBONE's) and the SPIFFE IDs in its certificates. */
const RELAY_SCRIPT = join(HERE, 'hbone-relay.mjs');
const RELAY_PORT = 15008;
const RELAY_SERVER_ID = 'spiffe://cluster.local/ns/plain/sa/relay-server';
const RELAY_CLIENT_ID = 'spiffe://cluster.local/ns/plain/sa/relay-client';
/** How long a relay gets to write its stream count after SIGUSR2. */
const RELAY_STATS_TIMEOUT_MS = 5000;

// ---------------------------------------------------------------------------------------------
// Options

/** A node binary the relay pods run: one "node relay" scenario each. */
interface RelayNode {
  path: string;
  /** `process.version` of the binary. */
  version: string;
  /** Its main thread's /proc comm ("node"; "MainThread" from Node.js 24): how its process is found in the pod. */
  comm: string;
}

interface Options extends CommonOptions {
  haproxy: boolean;
  relayNodes: RelayNode[];
  iperf: boolean;
  pods: number[];
  idle: number[];
  out: string;
}

const USAGE = `usage: npx tsx bench/l4-hop.ts [options]   (as root)
  --duration S       recorded seconds per rate per scenario (default 10)
  --warmup S         unrecorded seconds at the same rate before each run (default 2)
  --rates R,R        request rates, requests/s (default 1000,5000)
  --connections N    keep-alive connections per run (default 4)
  --no-haproxy       skip the HAProxy pair
  --no-relay         skip the node relay (bench/hbone-relay.mjs)
  --relay-node PATH  the node binary the relay pods run (default: the one running the bench);
                     repeated or comma-separated: one node relay scenario per binary
  --no-iperf         skip the iperf3 throughput runs
  --pods N,N         enrolled pods on node-1 for the node agent's RSS steps (default 1,10,100)
  --idle N,N         idle connections held through the mesh for the per-connection memory and idle CPU (default 1000,5000; 0: skip)
  --out DIR          where l4-hop.json and l4-hop.md go (default bench/results)
  --keep             leave the cluster and the temp dir up (prints how to remove them)
${COMMON_USAGE}`;

function parseOptions(argv: string[]): Options {
  const { common, values } = parseBenchOptions(argv, USAGE, { duration: '10', warmup: '2', rates: '1000,5000', connections: '4' }, {
    'no-haproxy': { type: 'boolean', default: false },
    'no-relay': { type: 'boolean', default: false },
    'relay-node': { type: 'string', multiple: true },
    'no-iperf': { type: 'boolean', default: false },
    pods: { type: 'string', default: '1,10,100' },
    idle: { type: 'string', default: '1000,5000' },
    out: { type: 'string', default: RESULTS },
  });
  // parseArgs gives a `multiple` option as an array.
  const relayPaths = (values['relay-node'] as unknown as string[] | undefined)?.flatMap((v) => v.split(',')).map((v) => v.trim()) ?? [process.execPath];
  if (values['no-relay'] && values['relay-node'] !== undefined) throw new UsageError('--relay-node and --no-relay: choose one');
  return {
    ...common,
    haproxy: !values['no-haproxy'],
    relayNodes: values['no-relay'] ? [] : relayNodeBinaries(relayPaths),
    iperf: !values['no-iperf'],
    pods: intListArg('pods', String(values.pods), 1, MAX_RSS_PODS),
    idle: String(values.idle) === '0' ? [] : intListArg('idle', String(values.idle), 1, MAX_IDLE),
    out: resolve(String(values.out)),
  };
}

/** Each --relay-node binary's version and comm; one that does not run, an old one or a version given twice is a usage error. */
function relayNodeBinaries(paths: string[]): RelayNode[] {
  const out: RelayNode[] = [];
  for (const p of paths) {
    if (p === '') throw new UsageError('--relay-node: empty path');
    const path = resolve(p);
    try {
      accessSync(path, fsConstants.X_OK);
    } catch {
      throw new UsageError(`--relay-node ${p}: not an executable file`);
    }
    let probe: { version: string; comm: string };
    try {
      const script = "process.stdout.write(JSON.stringify({ version: process.version, comm: require('node:fs').readFileSync('/proc/self/comm', 'utf8').trim() }))";
      probe = JSON.parse(execFileSync(path, ['-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })) as typeof probe;
    } catch (err) {
      throw new UsageError(`--relay-node ${p}: did not run a Node.js script with -e (${(err as Error).message.split('\n')[0]})`);
    }
    // parseArgs with `multiple` and socket.resetAndDestroy() came in Node.js 18.
    const major = Number(/^v(\d+)\./.exec(probe.version)?.[1]);
    if (!(major >= 18)) throw new UsageError(`--relay-node ${p}: Node.js ${probe.version}; bench/hbone-relay.mjs needs 18 or later`);
    if (out.some((r) => r.version === probe.version)) throw new UsageError(`--relay-node: two binaries of Node.js ${probe.version} (${out.find((r) => r.version === probe.version)?.path}, ${path}): one scenario per version`);
    out.push({ path, version: probe.version, comm: probe.comm });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Build: the tools, the HAProxy pair's certificates and configurations

function checkTools(options: Options): { cc: string; haproxy?: string; openssl?: string; iperf3?: string; sleep: string } {
  return {
    cc: need('cc', 'gcc'),
    sleep: need('sleep', 'coreutils'),
    ...(options.haproxy ? { haproxy: need('haproxy', 'haproxy') } : {}),
    ...(options.haproxy || options.relayNodes.length > 0 ? { openssl: need('openssl', 'openssl') } : {}),
    ...(options.iperf ? { iperf3: need('iperf3', 'iperf3') } : {}),
  };
}

/**
 * An ECDSA P-256 CA, and the certificates it signs (PEM: certificate + key): a server and a
 * client one for the HAProxy pair, and for the relays, SPIFFE IDs in URI SANs as ambit's are.
 */
function certificates(openssl: string, dir: string): { ca: string; server: string; client: string; relayServer: string; relayClient: string } {
  const { ca, leaf } = makeCertificates(openssl, dir, 'ambit l4-hop bench CA', [
    { file: 'server', san: 'DNS:haproxy-server', usage: 'serverAuth' },
    { file: 'client', san: 'DNS:haproxy-client,URI:spiffe://cluster.local/ns/plain/sa/client', usage: 'clientAuth' },
    { file: 'relay-server', san: `URI:${RELAY_SERVER_ID}`, usage: 'serverAuth' },
    { file: 'relay-client', san: `URI:${RELAY_CLIENT_ID}`, usage: 'clientAuth' },
  ]);
  return { ca, server: leaf.server as string, client: leaf.client as string, relayServer: leaf['relay-server'] as string, relayClient: leaf['relay-client'] as string };
}

function haproxyServerConfig(sock: string, certs: { ca: string; server: string }, http: string, iperf: string): string {
  const bind = (port: number) => haproxyTlsBind(port, { ca: certs.ca, crt: certs.server });
  return `${haproxyCommon(sock)}
${haproxyTcpRoutes([
    { frontend: 'http_tls', bind: bind(HAPROXY_TLS_HTTP), backend: 'http', server: `server app ${http}:${HTTP_PORT}` },
    { frontend: 'iperf_tls', bind: bind(HAPROXY_TLS_IPERF), backend: 'iperf', server: `server app ${iperf}:${IPERF_PORT}` },
  ])}`;
}

function haproxyClientConfig(sock: string, certs: { ca: string; client: string }, server: string): string {
  const upstream = (port: number) => haproxyTlsServer('tls', server, port, 'haproxy-server', { ca: certs.ca, crt: certs.client });
  return `${haproxyCommon(sock)}
${haproxyTcpRoutes([
    { frontend: 'http', bind: `bind 0.0.0.0:${HTTP_PORT}`, backend: 'http', server: upstream(HAPROXY_TLS_HTTP) },
    { frontend: 'iperf', bind: `bind 0.0.0.0:${IPERF_PORT}`, backend: 'iperf', server: upstream(HAPROXY_TLS_IPERF) },
  ])}`;
}

// ---------------------------------------------------------------------------------------------
// The node relay: bench/hbone-relay.mjs on both nodes

/** `relay` with one --relay-node binary, `relay-<version>` with several. */
type RelayKey = 'relay' | `relay-v${string}`;
const isRelay = (k: string): k is RelayKey => k === 'relay' || k.startsWith('relay-v');

interface RelaySample { phase: string; server: number; client: number }

/** One relay pair: its binary, its pods, where each relay writes its stream count, and what its check found. */
interface RelayPair {
  key: RelayKey;
  label: string;
  node: RelayNode;
  server: string;
  client: string;
  serverStats: string;
  clientStats: string;
  samples: RelaySample[];
  problems: string[];
}

function relayPairs(nodes: RelayNode[], tmp: string): RelayPair[] {
  return nodes.map((node) => {
    const suffix = nodes.length > 1 ? `-${node.version.replace(/\./g, '-')}` : '';
    return {
      key: nodes.length > 1 ? `relay-${node.version}` as RelayKey : 'relay',
      label: `node relay (${node.version})`,
      node,
      server: `relay-server${suffix}`,
      client: `relay-client${suffix}`,
      serverStats: join(tmp, `relay-server${suffix}.stats.json`),
      clientStats: join(tmp, `relay-client${suffix}.stats.json`),
      samples: [],
      problems: [],
    };
  });
}

/** ambit's HTTP/2 settings for HBONE (its defaults, src/hbone/limits.ts) as relay flags: the floor follows them. */
function relayH2Flags(server: boolean): string[] {
  const l = hboneLimits();
  return [
    '--stream-window', String(l.streamWindow), '--session-window', String(l.sessionWindow),
    ...(server ? ['--max-streams', String(l.maxStreamsPerConnection), '--max-session-memory-mb', String(l.maxSessionMemoryMb)] : []),
  ];
}

function relayServerCommand(r: RelayPair, certs: { ca: string; relayServer: string }): string[] {
  return [r.node.path, RELAY_SCRIPT, '--mode', 'server', '--listen', String(RELAY_PORT), '--cert', certs.relayServer, '--ca', certs.ca, '--stats', r.serverStats, ...relayH2Flags(true)];
}

/** relay-client: plaintext in on each route's port, a CONNECT stream to the route's backend through `server`. */
function relayClientCommand(r: RelayPair, certs: { ca: string; relayClient: string }, server: string, routes: { port: number; backend: string }[]): string[] {
  return [
    r.node.path, RELAY_SCRIPT, '--mode', 'client', '--server', `${server}:${RELAY_PORT}`, '--server-id', RELAY_SERVER_ID,
    ...routes.flatMap((route) => ['--route', `${route.port}=${route.backend}:${route.port}`]),
    '--cert', certs.relayClient, '--ca', certs.ca, '--stats', r.clientStats, ...relayH2Flags(false),
  ];
}

type RelayStats = { streams: number; dumps: number };
const readRelayStats = (file: string): RelayStats | undefined => {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as RelayStats;
  } catch {
    return undefined; // not written yet
  }
};

/** Waits for a relay's first stats file, which it writes once it listens (and its runtime has named its main thread). */
async function relayListening(file: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!readRelayStats(file)) {
    if (Date.now() > deadline || interrupted()) throw new Error(`no ${file} within ${timeoutMs / 1000} s: the relay did not start listening (see \`ambit local logs\`)`);
    await sleep(100);
  }
}

/** The CONNECT streams a relay carried so far: SIGUSR2 makes it write the count to its stats file. */
async function relayStreams(pid: number, file: string): Promise<number> {
  const before = readRelayStats(file)?.dumps ?? -1;
  process.kill(pid, 'SIGUSR2');
  const deadline = Date.now() + RELAY_STATS_TIMEOUT_MS;
  for (;;) {
    const now = readRelayStats(file);
    if (now && now.dumps > before) return now.streams;
    if (Date.now() > deadline) throw new Error(`no new stream count in ${file} within ${RELAY_STATS_TIMEOUT_MS / 1000} s of SIGUSR2 to pid ${pid}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

type ScenarioKey = 'direct' | 'ambit' | 'haproxy' | RelayKey;

interface Scenario extends RateScenario<ScenarioKey> {
  iperf: Endpoint;
}

interface IperfResult { gbit_s: number; retransmits: number; bytes: number }

async function iperfRun(cluster: Cluster, iperf3: string, s: Scenario): Promise<IperfResult> {
  let last = '';
  for (let attempt = 0; attempt < 4 && !interrupted(); attempt++) {
    if (attempt > 0) await sleep(2000);
    const r = await cluster.exec(`${s.ns}/client`, [iperf3, '-c', s.iperf.ip, '-p', String(s.iperf.port), '-t', String(IPERF_SECONDS), '-J'], (IPERF_SECONDS + 60) * 1000);
    let json: { error?: string; end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { retransmits?: number } } };
    try {
      json = JSON.parse(r.stdout) as typeof json;
    } catch {
      last = `no JSON from iperf3 (exit ${r.code}): ${tail(`${r.stdout}\n${r.stderr}`, 4)}`;
      continue;
    }
    const received = json.end?.sum_received;
    if (json.error || !received) {
      last = json.error ?? 'no end.sum_received in the iperf3 report';
      continue; // "the server is busy" or not listening yet
    }
    return { gbit_s: round(received.bits_per_second / 1e9, 3), retransmits: json.end?.sum_sent?.retransmits ?? 0, bytes: received.bytes };
  }
  throw new Error(`iperf3 from ${s.ns}/client to ${s.iperf.ip}:${s.iperf.port}: ${last}`);
}

/** Sum of istio_tcp_connections_opened_total{reporter="destination"} on a node's agent. */
async function openedConnections(cluster: Cluster, node: { name: string; ip: string }): Promise<{ value?: number; error?: string }> {
  const url = `http://${node.ip}:${METRICS_PORT}/metrics`;
  const { text, error } = await fetchMetrics(cluster, node.name, url);
  if (text === undefined) return { error };
  const series = parseMetrics(text).filter((s) => s.name === OPENED_METRIC && s.labels.reporter === 'destination');
  if (series.length === 0) return { value: 0, error: `${url} has no ${OPENED_METRIC}{reporter="destination"} series` };
  return { value: series.reduce((sum, s) => sum + s.value, 0) };
}

// ---------------------------------------------------------------------------------------------

/** The HBONE limits that let one client pod hold `max(idle)` connections to one node, or undefined when the defaults do. */
function idleHboneLimits(idle: number[]): string | undefined {
  const most = Math.max(0, ...idle);
  // Headroom for the fixed-rate runs' connections and the probes that may still be open.
  const streams = most + 256;
  if (streams <= DEFAULT_HBONE_LIMITS.maxStreamsPerPeer) return undefined;
  return `maxStreamsPerPeer=${streams},maxStreamsPerPod=${Math.max(streams, DEFAULT_HBONE_LIMITS.maxStreamsPerPod)},maxStreams=${Math.max(streams, DEFAULT_HBONE_LIMITS.maxStreams)}`;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('run as root: the local cluster makes network namespaces, cgroups and nftables tables');
  const tools = checkTools(options);

  const ambitRuns = prepareAmbit(options);
  // One client pod holds every idle connection: the agents' caps on one peer's (and one pod's,
  // and the node's) concurrent streams are raised to fit them, as an operator would for such a
  // workload (docs/DATAPATH.md, HBONE limits). The caps cost nothing per request.
  const idleLimits = idleHboneLimits(options.idle);
  if (idleLimits && process.env.AMBIT_HBONE_LIMITS === undefined) process.env.AMBIT_HBONE_LIMITS = idleLimits;
  // The cluster and the temp dir go at the end, on failure and on Ctrl-C (unless --keep).
  const bench = new BenchRun('l4hop', options.keep);
  const { tmp, name, cluster } = bench;
  bench.handleSignals();

  try {
    const load = httpLoader(cluster, build(tools.cc, tmp, 'http-load'));
    const serverBin = build(tools.cc, tmp, 'http-server');
    const certs = tools.openssl ? certificates(tools.openssl, tmp) : undefined;
    const haproxyVersion = tools.haproxy ? version(tools.haproxy, ['-v']) : '';
    const iperfVersion = tools.iperf3 ? version(tools.iperf3, ['--version']) : '';

    const loadStart = loadAtStart('ambit L4 hop', name);
    const relays = certs ? relayPairs(options.relayNodes, tmp) : [];
    if (relays.length > 0) say(`node relay: ${relays.map((r) => `${r.node.version} (${r.node.path})`).join(', ')}`);
    say(`rates ${options.rates.join(', ')} req/s x ${options.connections} connections, ${options.duration} s each (+${options.warmup} s warmup)`);

    // ---- the cluster: clients on node-1, servers on node-2, in both namespaces
    const iperfServer = (ns: string) => [tools.iperf3 ?? '', '-s', '-p', String(IPERF_PORT), '--pidfile', join(tmp, `iperf3-${ns}.pid`)];
    const base: Doc[] = [namespace('plain'), namespace('mesh', { [MESH_LABEL]: 'ambient' })];
    for (const ns of ['plain', 'mesh']) {
      base.push(pod(ns, 'client', 'node-1', [tools.sleep, 'infinity'], { image: IMAGE }));
      base.push(pod(ns, 'http-server', 'node-2', [serverBin, String(HTTP_PORT)], { image: IMAGE }));
      if (tools.iperf3) base.push(pod(ns, 'iperf3-server', 'node-2', iperfServer(ns), { image: IMAGE }));
    }
    bench.created = true; // up may fail half-way: down removes whatever it made
    say(`starting the cluster (${base.length - 2} pods)...`);
    await cluster.up(writeManifests(join(tmp, 'manifests', '1-base'), base), 180);

    let status = await cluster.status();
    const ipOf = (ns: string, p: string) => podOf(status, ns, p).ip;
    const serverSock = join(tmp, 'haproxy-server.sock');
    const clientSock = join(tmp, 'haproxy-client.sock');
    if (certs && (tools.haproxy || relays.length > 0)) {
      // The proxies' server halves first: their client halves need their addresses.
      const servers: Doc[] = [];
      if (tools.haproxy) {
        writeFileSync(join(tmp, 'haproxy-server.cfg'), haproxyServerConfig(serverSock, certs, ipOf('plain', 'http-server'), tools.iperf3 ? ipOf('plain', 'iperf3-server') : '127.0.0.1'));
        servers.push(pod('plain', 'haproxy-server', 'node-2', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-server.cfg')], { image: IMAGE }));
      }
      for (const r of relays) servers.push(pod('plain', r.server, 'node-2', relayServerCommand(r, certs), { image: IMAGE }));
      await cluster.up(writeManifests(join(tmp, 'manifests', '2-proxy-servers'), servers), 60);
      status = await cluster.status();
      const clients: Doc[] = [];
      if (tools.haproxy) {
        writeFileSync(join(tmp, 'haproxy-client.cfg'), haproxyClientConfig(clientSock, certs, ipOf('plain', 'haproxy-server')));
        clients.push(pod('plain', 'haproxy-client', 'node-1', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-client.cfg')], { image: IMAGE }));
      }
      const relayRoutes = [
        { port: HTTP_PORT, backend: ipOf('plain', 'http-server') },
        ...(tools.iperf3 ? [{ port: IPERF_PORT, backend: ipOf('plain', 'iperf3-server') }] : []),
      ];
      for (const r of relays) clients.push(pod('plain', r.client, 'node-1', relayClientCommand(r, certs, ipOf('plain', r.server), relayRoutes), { image: IMAGE }));
      await cluster.up(writeManifests(join(tmp, 'manifests', '3-proxy-clients'), clients), 60);
      status = await cluster.status();
      for (const r of relays) {
        await relayListening(r.serverStats, 30_000);
        await relayListening(r.clientStats, 30_000);
      }
    }

    // ---- who does the proxying
    const nodeAgents = agents(status);
    const haproxyPids = (p: string): Proxy[] => [podProcess(cluster.layout, status, 'plain', p, 'haproxy')];
    const relayPids = (r: RelayPair): Proxy[] => [podProcess(cluster.layout, status, 'plain', r.client, r.node.comm), podProcess(cluster.layout, status, 'plain', r.server, r.node.comm)];
    const scenarios: Scenario[] = [
      {
        key: 'direct', label: 'direct', ns: 'plain', proxies: [],
        http: { ip: ipOf('plain', 'http-server'), port: HTTP_PORT },
        iperf: { ip: tools.iperf3 ? ipOf('plain', 'iperf3-server') : '', port: IPERF_PORT },
      },
      {
        key: 'ambit', label: 'ambit L4', ns: 'mesh',
        proxies: nodeAgents.map((a) => ({ name: `node-agent ${a.node ?? '?'}`, pid: a.pid as number })),
        http: { ip: ipOf('mesh', 'http-server'), port: HTTP_PORT },
        iperf: { ip: tools.iperf3 ? ipOf('mesh', 'iperf3-server') : '', port: IPERF_PORT },
      },
    ];
    if (tools.haproxy) {
      const hc = ipOf('plain', 'haproxy-client');
      scenarios.push({
        key: 'haproxy', label: 'HAProxy pair', ns: 'plain',
        proxies: [...haproxyPids('haproxy-client'), ...haproxyPids('haproxy-server')],
        http: { ip: hc, port: HTTP_PORT },
        iperf: { ip: hc, port: IPERF_PORT },
      });
    }
    for (const r of relays) {
      const rc = ipOf('plain', r.client);
      scenarios.push({ key: r.key, label: r.label, ns: 'plain', proxies: relayPids(r), http: { ip: rc, port: HTTP_PORT }, iperf: { ip: rc, port: IPERF_PORT } });
    }
    const byKey = (k: ScenarioKey) => scenarios.find((s) => s.key === k);
    if (nodeAgents.length === 0) {
      warn('no node-agent component in `ambit local status`: pods in the ambient namespace run un-meshed, so "ambit L4" measures the direct path');
    }

    // ---- every path answers before anything is measured
    for (const s of scenarios) {
      if (interrupted()) return;
      const why = await reachable(load, s);
      if (why) {
        s.unreachable = why;
        warn(`${s.label}: ${s.http.ip}:${s.http.port} does not answer from ${s.ns}/client; the scenario is skipped: ${why}`);
      }
    }
    const running = scenarios.filter((s) => !s.unreachable);

    // ---- path verification: counters before
    const node2 = status.nodes.find((n) => n.name === 'node-2');
    if (!node2) throw new Error('no node-2 in `ambit local status`');
    const ambitProblems: string[] = [];
    if (nodeAgents.length === 0) ambitProblems.push('no node-agent component: the ambient namespace ran un-meshed');
    if (byKey('ambit')?.unreachable) ambitProblems.push(`unreachable: ${byKey('ambit')?.unreachable}`);
    const opened: { phase: string; value?: number; error?: string }[] = [{ phase: 'before', ...await openedConnections(cluster, node2) }];
    const haproxyCounters: { phase: string; server: Map<string, number>; client: Map<string, number> }[] = [];
    const haproxyProblems: string[] = [];
    const haproxySnapshot = async (phase: string) => {
      if (!byKey('haproxy')) return;
      try {
        haproxyCounters.push({ phase, server: await haproxyStats(serverSock), client: await haproxyStats(clientSock) });
      } catch (err) {
        haproxyProblems.push(`haproxy stats at "${phase}": ${(err as Error).message}`);
      }
    };
    await haproxySnapshot('before');
    const relaySnapshot = async (phase: string) => {
      for (const r of relays) {
        const [client, server] = byKey(r.key)?.proxies ?? [];
        if (!client || !server) continue;
        try {
          r.samples.push({ phase, server: await relayStreams(server.pid, r.serverStats), client: await relayStreams(client.pid, r.clientStats) });
        } catch (err) {
          r.problems.push(`stream counts at "${phase}": ${(err as Error).message}`);
        }
      }
    };
    await relaySnapshot('before');

    // ---- the proxies' CPU while nothing is sent: a baseline included in every CPU figure below
    const allProxies = running.flatMap((s) => s.proxies);
    const idlePercent = await idleCpuPercent(allProxies, IDLE_SAMPLE_MS);

    // ---- latency at fixed rates, scenarios in a new random order per rate
    const latency = await fixedRateRuns(load, running, scenarios, options);
    if (!latency) return;
    opened.push({ phase: 'after latency', ...await openedConnections(cluster, node2) });
    await haproxySnapshot('after latency');
    await relaySnapshot('after latency');

    // ---- RSS of the proxies after the fixed-rate runs
    const rss: Record<string, { process: string; pid: number; rss_kb?: number }[]> = {};
    for (const s of running) if (s.proxies.length > 0) rss[s.key] = s.proxies.map((p) => ({ process: p.name, pid: p.pid, rss_kb: vmRssKb(p.pid) }));

    // ---- bulk throughput
    interface IperfRow { scenario: ScenarioKey; label: string; result?: IperfResult; error?: string; cpu: ReturnType<typeof cpuDelta> }
    const iperf: IperfRow[] = [];
    if (tools.iperf3) {
      for (const s of running) {
        if (interrupted()) return;
        process.stderr.write(`iperf3: ${s.label}...\n`);
        const cpu0 = cpuSample(s.proxies);
        try {
          iperf.push({ scenario: s.key, label: s.label, result: await iperfRun(cluster, tools.iperf3, s), cpu: cpuDelta(cpu0, cpuSample(s.proxies)) });
        } catch (err) {
          iperf.push({ scenario: s.key, label: s.label, error: (err as Error).message, cpu: cpuDelta(cpu0, cpuSample(s.proxies)) });
          warn(`iperf3 ${s.label}: ${(err as Error).message}`);
        }
      }
      if (interrupted()) return;
      opened.push({ phase: 'after iperf3', ...await openedConnections(cluster, node2) });
      await haproxySnapshot('after iperf3');
      await relaySnapshot('after iperf3');
    }

    // ---- path verification: counters after
    for (let i = 1; i < opened.length; i++) {
      const [a, b] = [opened[i - 1], opened[i]];
      if (!a || !b) continue;
      if (a.value === undefined || b.value === undefined) continue;
      if (!(b.value > a.value)) ambitProblems.push(`${OPENED_METRIC}{reporter="destination"} on node-2 did not grow from "${a.phase}" to "${b.phase}" (${a.value} → ${b.value})`);
    }
    // Each connection the load generator opened in the mesh namespace is one the destination agent accepted.
    const meshConnects = latency.flatMap((l) => l.rows).filter((r) => r.scenario === 'ambit').reduce((n, r) => n + r.result.connects, 0);
    const [before, afterLatency] = [opened[0]?.value, opened[1]?.value];
    if (before !== undefined && afterLatency !== undefined && afterLatency > before && afterLatency - before < meshConnects) {
      warn(`ambit L4: node-2's ${OPENED_METRIC}{reporter="destination"} grew by ${afterLatency - before} over the fixed-rate runs, which opened ${meshConnects} connections`);
    }
    const metricErrors = [...new Set(opened.filter((o) => o.error).map((o) => o.error as string))];
    ambitProblems.push(...metricErrors);
    const pathVerified = ambitProblems.length === 0;

    const haproxyDeltas: Record<string, Record<string, number>> = {};
    for (let i = 1; i < haproxyCounters.length; i++) {
      const [a, b] = [haproxyCounters[i - 1], haproxyCounters[i]];
      if (!a || !b) continue;
      const iperfPhase = b.phase === 'after iperf3';
      const keys: [string, Map<string, number>, Map<string, number>][] = iperfPhase
        ? [['server iperf_tls/FRONTEND', a.server, b.server], ['server iperf/BACKEND', a.server, b.server], ['client iperf/BACKEND', a.client, b.client]]
        : [['server http_tls/FRONTEND', a.server, b.server], ['server http/BACKEND', a.server, b.server], ['client http/BACKEND', a.client, b.client]];
      const d: Record<string, number> = {};
      for (const [label, before, after] of keys) {
        const key = label.split(' ')[1] as string;
        const delta = (after.get(key) ?? NaN) - (before.get(key) ?? NaN);
        d[label] = delta;
        if (!(delta > 0)) haproxyProblems.push(`haproxy ${label} sessions did not grow from "${a.phase}" to "${b.phase}" (+${delta})`);
      }
      haproxyDeltas[`${a.phase} → ${b.phase}`] = d;
    }
    const relayVerified: Record<string, boolean> = {};
    for (const r of relays) {
      const why = byKey(r.key)?.unreachable;
      if (why) r.problems.push(`unreachable: ${why}`);
      for (let i = 1; i < r.samples.length; i++) {
        const [a, b] = [r.samples[i - 1], r.samples[i]];
        if (!a || !b) continue;
        if (!(b.server > a.server)) r.problems.push(`${r.server}'s CONNECT streams did not grow from "${a.phase}" to "${b.phase}" (${a.server} → ${b.server})`);
      }
      // Each connection the load generator opened through relay-client is one stream relay-server carried.
      const connects = latency.flatMap((l) => l.rows).filter((row) => row.scenario === r.key).reduce((n, row) => n + row.result.connects, 0);
      const [before, after] = [r.samples[0], r.samples[1]];
      if (before && after?.phase === 'after latency' && after.server > before.server && after.server - before.server < connects) {
        warn(`${r.label}: ${r.server} carried ${after.server - before.server} streams over the fixed-rate runs, which opened ${connects} connections`);
      }
      relayVerified[r.key] = r.problems.length === 0;
    }
    const loadEnd = loadNow();
    const haproxyVerified = byKey('haproxy') ? haproxyProblems.length === 0 && !byKey('haproxy')?.unreachable : undefined;

    // ---- idle connections held through the mesh: each agent's memory per connection, and its CPU while they idle
    interface IdleStep { connections: number; open?: number; failed?: number; rss_kb_before: Record<string, number | undefined>; rss_kb_held: Record<string, number | undefined>; kb_per_connection: Record<string, number | null>; idle_cpu_percent: Record<string, number | null>; error?: string }
    const idleSteps: IdleStep[] = [];
    const meshServer = byKey('ambit');
    if (options.idle.length > 0 && meshServer && !meshServer.unreachable && nodeAgents.length > 0) {
      const agentProxies = meshServer.proxies;
      const rssOf = () => Object.fromEntries(agentProxies.map((p) => [p.name, vmRssKb(p.pid)]));
      for (const n of options.idle) {
        if (interrupted()) return;
        process.stderr.write(`idle connections: ${n} through the mesh...\n`);
        const ready = join(tmp, `idle-${n}.json`);
        const holdS = Math.ceil((IDLE_CONN_SAMPLE_MS + 60_000) / 1000);
        const before = rssOf();
        const held = cluster.exec('mesh/client', [process.execPath, join(HERE, 'idle-hold.mjs'), meshServer.http.ip, String(meshServer.http.port), String(n), ready, String(holdS)], (holdS + 120) * 1000);
        const step: IdleStep = { connections: n, rss_kb_before: before, rss_kb_held: {}, kb_per_connection: {}, idle_cpu_percent: {} };
        try {
          const opened = await Promise.race([
            (async () => {
              for (;;) {
                try {
                  return JSON.parse(readFileSync(ready, 'utf8')) as { open: number; failed: number };
                } catch {
                  await sleep(200);
                }
              }
            })(),
            held.then((r) => { throw new Error(`idle-hold.mjs exited before its connections were up (exit ${r.code}): ${tail(`${r.stdout}\n${r.stderr}`, 4)}`); }),
          ]);
          step.open = opened.open;
          step.failed = opened.failed;
          await sleep(AGENT_SETTLE_MS);
          step.idle_cpu_percent = await idleCpuPercent(agentProxies, IDLE_CONN_SAMPLE_MS);
          step.rss_kb_held = rssOf();
          for (const p of agentProxies) {
            const [a, b] = [before[p.name], step.rss_kb_held[p.name]];
            step.kb_per_connection[p.name] = a === undefined || b === undefined || opened.open === 0 ? null : round((b - a) / opened.open, 2);
          }
          if (opened.failed > 0) warn(`idle connections: ${opened.failed} of ${n} were refused (one pod holds at most maxStreamsPerPeer tunnels to a node); the figures are per connection held`);
        } catch (err) {
          step.error = (err as Error).message;
          warn(`idle connections ${n}: ${step.error}`);
        }
        idleSteps.push(step);
        await held;
      }
    }

    // ---- node agent RSS with 1, 10, 100 enrolled pods on node-1
    const agentRss: { pods: number; enrolled: number; rss_kb?: number }[] = [];
    let agentRssSkipped: string | undefined;
    const agent1 = nodeAgents.find((a) => a.node === 'node-1');
    if (!agent1) {
      agentRssSkipped = 'no node-agent component on node-1 in `ambit local status`';
    } else {
      // Every pod of `mesh` on node-1 is enrolled there, the bench's `client` included.
      const enrolledOnNode1 = (st: Status) => st.pods.filter((p) => p.namespace === 'mesh' && p.node === 'node-1' && p.phase === 'Running').length;
      let next = 1;
      try {
        for (const target of options.pods) {
          if (interrupted()) return;
          const docs: Doc[] = [];
          for (let i = enrolledOnNode1(await cluster.status()); i < target; i++) docs.push(pod('mesh', `rss-${next++}`, 'node-1', [tools.sleep, 'infinity'], { image: IMAGE }));
          if (docs.length > 0) {
            process.stderr.write(`agent RSS: ${target} enrolled pods on node-1 (+${docs.length})...\n`);
            await cluster.up(writeManifests(join(tmp, 'manifests', `rss-${target}`), docs), 300);
          }
          await sleep(AGENT_SETTLE_MS);
          status = await cluster.status();
          const agent = agents(status).find((a) => a.node === 'node-1');
          if (agent?.pid !== agent1.pid) warn(`the node-1 agent restarted during the RSS steps (pid ${agent1.pid} → ${agent?.pid ?? 'none'})`);
          agentRss.push({ pods: target, enrolled: enrolledOnNode1(status), rss_kb: agent?.pid ? vmRssKb(agent.pid) : undefined });
        }
      } catch (err) {
        if (interrupted()) return;
        agentRssSkipped = `failed after ${agentRss.length} of ${options.pods.length} steps: ${(err as Error).message}`;
        warn(`node agent RSS steps ${agentRssSkipped}`);
      }
    }

    // ---- report
    const direct = (rate: number) => latency.find((l) => l.rate === rate)?.rows.find((r) => r.scenario === 'direct')?.result.corrected_us;
    const hap = (rate: number) => latency.find((l) => l.rate === rate)?.rows.find((r) => r.scenario === 'haproxy')?.result.corrected_us;
    const latencyJson = latency.map((l) => ({
      rate: l.rate,
      order: l.order,
      scenarios: l.rows.map((r) => {
        const c = r.result.corrected_us;
        const d = r.scenario === 'direct' ? undefined : direct(l.rate);
        const h = r.scenario === 'ambit' || isRelay(r.scenario) ? hap(l.rate) : undefined;
        return {
          scenario: r.scenario,
          label: r.label,
          ...(r.scenario === 'ambit' ? { path_verified: pathVerified } : {}),
          ...(r.scenario === 'haproxy' ? { path_verified: haproxyVerified } : {}),
          ...(isRelay(r.scenario) ? { path_verified: relayVerified[r.scenario] } : {}),
          ...runFields(r.result, l.rate, options),
          added_vs_direct_us: d ? comparePercentiles(c, d, true) : undefined,
          ratio_vs_direct: d ? comparePercentiles(c, d, false) : undefined,
          ratio_vs_haproxy: h ? comparePercentiles(c, h, false) : undefined,
          added_vs_haproxy_us: h ? comparePercentiles(c, h, true) : undefined,
          ...cpuFields(r.cpu, r.result),
        };
      }),
    }));
    const iperfDirect = iperf.find((r) => r.scenario === 'direct')?.result?.gbit_s;
    const iperfHap = iperf.find((r) => r.scenario === 'haproxy')?.result?.gbit_s;
    const iperfJson: IperfJson = iperf.map((r) => ({
      scenario: r.scenario,
      label: r.label,
      ...(r.result ? {
        gbit_s: r.result.gbit_s,
        retransmits: r.result.retransmits,
        bytes: r.result.bytes,
        ratio_vs_direct: iperfDirect ? round(r.result.gbit_s / iperfDirect, 2) : undefined,
        ratio_vs_haproxy: iperfHap ? round(r.result.gbit_s / iperfHap, 2) : undefined,
        proxy_cpu_s: r.cpu.total !== undefined ? round(r.cpu.total, 3) : undefined,
        proxy_cpu_s_per_gb: r.cpu.total !== undefined && r.result.bytes > 0 ? round(r.cpu.total / (r.result.bytes / 1e9), 3) : undefined,
      } : { error: r.error }),
    }));
    const rssTotal = (procs: { rss_kb?: number }[] | undefined) => (procs?.every((p) => p.rss_kb !== undefined) ? procs.reduce((s, p) => s + (p.rss_kb ?? 0), 0) : undefined);
    const rssHap = rssTotal(rss.haproxy);
    const rssJson: RssJson = Object.fromEntries(Object.entries(rss).map(([k, procs]) => {
      const total = rssTotal(procs);
      return [k, { processes: procs, total_kb: total, ratio_vs_haproxy: k !== 'haproxy' && total !== undefined && rssHap ? round(total / rssHap, 2) : undefined }];
    }));
    const ambitVsRelay = ambitVsRelays(relays.filter((r) => byKey(r.key) && !byKey(r.key)?.unreachable), latencyJson, rssJson, iperfJson);
    const skipped = [
      ...(options.haproxy ? [] : ['HAProxy pair (--no-haproxy)']),
      ...(options.relayNodes.length > 0 ? [] : ['node relay (--no-relay)']),
      ...(options.iperf ? [] : ['iperf3 throughput (--no-iperf)']),
      ...scenarios.filter((s) => s.unreachable).map((s) => `${s.label}: unreachable (${s.unreachable})`),
      ...(agentRssSkipped ? [`node agent RSS steps: ${agentRssSkipped}`] : []),
    ];
    const result = {
      benchmark: 'l4-hop',
      ...machine(),
      haproxy_version: haproxyVersion || undefined,
      iperf3_version: iperfVersion || undefined,
      relay_nodes: relays.length > 0 ? relays.map((r) => ({ scenario: r.key, node_version: r.node.version, path: r.node.path })) : undefined,
      relay_http2: relays.length > 0 ? (({ streamWindow, sessionWindow, maxStreamsPerConnection, maxSessionMemoryMb }) => ({ streamWindow, sessionWindow, maxStreamsPerConnection, maxSessionMemoryMb }))(hboneLimits()) : undefined,
      cluster: name,
      ambit_runs: ambitRuns,
      load_average: { start: loadStart, end: loadEnd },
      options: { duration_s: options.duration, warmup_s: options.warmup, rates: options.rates, connections: options.connections, response_bytes: 1024, iperf_seconds: IPERF_SECONDS, pods: options.pods },
      path_verified: pathVerified,
      haproxy_verified: haproxyVerified,
      relay_verified: relays.length > 0 ? relayVerified : undefined,
      verification: {
        ambit: { node_agents: nodeAgents.map((a) => ({ node: a.node, pid: a.pid })), metric: `${OPENED_METRIC}{reporter="destination"} on node-2`, samples: opened, connections_opened_by_fixed_rate_runs: meshConnects, problems: ambitProblems },
        haproxy: byKey('haproxy') ? { session_deltas: haproxyDeltas, problems: haproxyProblems } : undefined,
        relay: relays.length > 0 ? Object.fromEntries(relays.map((r) => [r.key, { streams_carried: r.samples, problems: r.problems }])) : undefined,
      },
      skipped: skipped.length > 0 ? skipped : undefined,
      unit: 'microseconds, from each request\'s scheduled send time (corrected for coordinated omission)',
      latency: latencyJson,
      proxy_idle_cpu_percent: idlePercent,
      ...(process.env.AMBIT_HBONE_LIMITS ? { hbone_limits: process.env.AMBIT_HBONE_LIMITS } : {}),
      proxy_rss_after_runs: rssJson,
      throughput: iperfJson.length > 0 ? iperfJson : undefined,
      ambit_vs_node_relay: ambitVsRelay.length > 0 ? ambitVsRelay : undefined,
      agent_rss: agentRssSkipped ? { skipped: agentRssSkipped } : { node: 'node-1', steps: agentRss },
      idle_connections: idleSteps.length > 0 ? idleSteps : undefined,
    };

    // stdout
    const mark = (k: ScenarioKey) => ((k === 'ambit' && !pathVerified) || (k === 'haproxy' && haproxyVerified === false) || (isRelay(k) && relayVerified[k] === false) ? ' (!)' : '');
    for (const l of latencyJson) {
      say();
      say(`${l.rate} req/s, ${options.connections} connections, ${options.duration} s (+${options.warmup} s warmup); latency in us from the scheduled send; order: ${l.order.join(', ')}`);
      const rows = l.scenarios.map((r) => [
        `${r.label}${mark(r.scenario)}`,
        fmt(r.corrected_us.p50), fmt(r.corrected_us.p90), fmt(r.corrected_us.p99), fmt(r.corrected_us.p999),
        fmtSigned(r.added_vs_direct_us?.p50), fmtSigned(r.added_vs_direct_us?.p99),
        fmt(r.ratio_vs_direct?.p50, 2), fmt(r.ratio_vs_direct?.p99, 2),
        fmt(r.ratio_vs_haproxy?.p50, 2), fmt(r.ratio_vs_haproxy?.p99, 2),
        fmt(r.proxy_cpu_s_per_1k_req, 3),
        `${r.errors}/${r.late}`,
      ]);
      for (const line of table(['scenario', 'p50', 'p90', 'p99', 'p99.9', '+p50', '+p99', 'p50 x dir', 'p99 x dir', 'p50 x hap', 'p99 x hap', 'CPU-s/1k req', 'err/late'], rows)) say(line);
    }
    if (Object.keys(idlePercent).length > 0) {
      say();
      say(`proxy CPU while idle (${IDLE_SAMPLE_MS / 1000} s before the runs, included in CPU-s/1k req): ${Object.entries(idlePercent).map(([k, v]) => `${k} ${fmt(v)}%`).join(', ')}`);
    }
    if (Object.keys(rssJson).length > 0) {
      say();
      say('proxy RSS after the fixed-rate runs:');
      for (const [k, v] of Object.entries(rssJson)) say(`  ${byKey(k as ScenarioKey)?.label ?? k}: ${v.processes.map((p) => `${p.process} ${fmt((p.rss_kb ?? NaN) / 1024)} MB`).join(', ')}; total ${fmt((v.total_kb ?? NaN) / 1024)} MB${v.ratio_vs_haproxy !== undefined ? ` (${fmt(v.ratio_vs_haproxy, 2)}x HAProxy)` : ''}`);
    }
    if (iperfJson.length > 0) {
      say();
      say(`iperf3, 1 stream, ${IPERF_SECONDS} s, node-1 → node-2:`);
      for (const line of table(['scenario', 'Gbit/s', 'x direct', 'x HAProxy', 'retransmits', 'proxy CPU-s/GB'], iperfJson.map((r) => [
        `${r.label}${mark(r.scenario)}`, fmt(r.gbit_s, 2), fmt(r.ratio_vs_direct, 2), fmt(r.ratio_vs_haproxy, 2), r.retransmits === undefined ? '-' : String(r.retransmits), fmt(r.proxy_cpu_s_per_gb, 3),
      ]))) say(line);
    }
    if (ambitVsRelay.length > 0) {
      say();
      say(`ambit ÷ node relay (both in the same run; above 1: ambit costs more than Node's TLS and HTTP/2 alone)${pathVerified ? '' : ' — ambit\'s path NOT verified'}:`);
      const t = ambitVsRelayTable(ambitVsRelay);
      for (const line of table(t.header, t.rows)) say(line);
    }
    say();
    if (agentRssSkipped) say(`node agent RSS steps skipped: ${agentRssSkipped}`);
    else say(`node-1 agent RSS: ${agentRss.map((a) => `${a.enrolled} pods ${fmt((a.rss_kb ?? NaN) / 1024)} MB`).join(', ')}`);
    for (const st of idleSteps) {
      if (st.error) continue;
      say(`${st.open} idle connections held through the mesh: ${Object.keys(st.kb_per_connection).map((k) => `${k} ${fmtSigned(st.kb_per_connection[k] ?? undefined)} KB/connection, ${fmt(st.idle_cpu_percent[k] ?? NaN, 1)}% CPU idle`).join('; ')}`);
    }
    for (const why of skipped) if (!why.startsWith('node agent')) say(`skipped ${why}`);
    for (const l of latencyJson) {
      for (const r of l.scenarios) {
        for (const w of runWarnings(r.label, l.rate, r, options.connections)) warn(w);
      }
    }
    if (!pathVerified) {
      warn('ambit L4: path NOT verified — its figures are not the mesh\'s:');
      for (const p of ambitProblems) say(`  - ${p}`);
    } else {
      say(`ambit L4 path verified: node-2 agent ${OPENED_METRIC}{reporter="destination"} ${opened.map((o) => o.value).join(' → ')}`);
    }
    if (haproxyVerified === false) {
      warn('HAProxy pair: path NOT verified:');
      for (const p of haproxyProblems) say(`  - ${p}`);
    } else if (haproxyVerified) {
      say(`HAProxy path verified: sessions through haproxy-server's TLS frontends (verify required) ${Object.entries(haproxyDeltas).map(([phase, d]) => `${phase}: ${Object.entries(d).map(([k, v]) => `${k} +${v}`).join(', ')}`).join('; ')}`);
    }
    for (const r of relays) {
      if (!relayVerified[r.key]) {
        warn(`${r.label}: path NOT verified:`);
        for (const p of r.problems) say(`  - ${p}`);
      } else {
        say(`${r.label} path verified: CONNECT streams carried by ${r.server} (mTLS, client certificate required) ${r.samples.map((x) => x.server).join(' → ')}, by ${r.client} ${r.samples.map((x) => x.client).join(' → ')}`);
      }
    }

    mkdirSync(options.out, { recursive: true });
    const jsonPath = join(options.out, 'l4-hop.json');
    const mdPath = join(options.out, 'l4-hop.md');
    writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(mdPath, markdown(result, latencyJson, iperfJson, rssJson, ambitVsRelay, byKey));
    say(`results: ${jsonPath}, ${mdPath}`);

    const failed = latencyJson.some((l) => l.scenarios.some((r) => r.errors > 0)) || scenarios.some((s) => s.unreachable) || iperf.some((r) => r.error);
    if (!pathVerified || haproxyVerified === false || Object.values(relayVerified).includes(false) || failed) process.exitCode = 1;
  } finally {
    await bench.finish();
  }
}
type LatencyJson = { rate: number; order: ScenarioKey[]; scenarios: { scenario: ScenarioKey; label: string; path_verified?: boolean; corrected_us: Percentiles; added_vs_direct_us?: Record<string, number>; ratio_vs_direct?: Record<string, number>; ratio_vs_haproxy?: Record<string, number>; proxy_cpu_s_per_1k_req?: number; errors: number; late: number; behind_schedule_s: number }[] }[];
type IperfJson = { scenario: ScenarioKey; label: string; gbit_s?: number; bytes?: number; ratio_vs_direct?: number; ratio_vs_haproxy?: number; retransmits?: number; proxy_cpu_s?: number; proxy_cpu_s_per_gb?: number; error?: string }[];
type RssJson = Record<string, { processes: { process: string; rss_kb?: number }[]; total_kb?: number; ratio_vs_haproxy?: number }>;

/** ambit's figure over one node relay's, per measure: above 1, ambit costs more than Node's TLS and HTTP/2 alone. */
interface AmbitVsRelay {
  scenario: RelayKey;
  label: string;
  latency: { rate: number; p50?: number; p99?: number; added_p50?: number; added_p99?: number; proxy_cpu_s_per_1k_req?: number }[];
  rss?: number;
  gbit_s?: number;
  proxy_cpu_s_per_gb?: number;
}

function ambitVsRelays(relays: RelayPair[], latency: LatencyJson, rss: RssJson, iperf: IperfJson): AmbitVsRelay[] {
  // Ratios of two positive figures only: an added latency at or below direct's has none.
  const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined && a > 0 && b > 0 ? round(a / b, 2) : undefined);
  const ambitIperf = iperf.find((r) => r.scenario === 'ambit');
  if (!latency.some((l) => l.scenarios.some((r) => r.scenario === 'ambit')) && !ambitIperf) return [];
  return relays.map((relay) => {
    const relayIperf = iperf.find((r) => r.scenario === relay.key);
    return {
      scenario: relay.key,
      label: relay.label,
      latency: latency.map((l) => {
        const a = l.scenarios.find((r) => r.scenario === 'ambit');
        const b = l.scenarios.find((r) => r.scenario === relay.key);
        return {
          rate: l.rate,
          p50: ratio(a?.corrected_us.p50, b?.corrected_us.p50),
          p99: ratio(a?.corrected_us.p99, b?.corrected_us.p99),
          added_p50: ratio(a?.added_vs_direct_us?.p50, b?.added_vs_direct_us?.p50),
          added_p99: ratio(a?.added_vs_direct_us?.p99, b?.added_vs_direct_us?.p99),
          proxy_cpu_s_per_1k_req: ratio(a?.proxy_cpu_s_per_1k_req, b?.proxy_cpu_s_per_1k_req),
        };
      }),
      rss: ratio(rss.ambit?.total_kb, rss[relay.key]?.total_kb),
      gbit_s: ratio(ambitIperf?.gbit_s, relayIperf?.gbit_s),
      proxy_cpu_s_per_gb: ratio(ambitIperf?.proxy_cpu_s_per_gb, relayIperf?.proxy_cpu_s_per_gb),
    };
  });
}

/** One row per measure, one column per relay; measures no relay has a figure for are left out. */
function ambitVsRelayTable(v: AmbitVsRelay[]): { header: string[]; rows: string[][] } {
  const rows: string[][] = [];
  const row = (name: string, pick: (x: AmbitVsRelay) => number | undefined) => {
    const cells = v.map((x) => fmt(pick(x), 2));
    if (cells.some((c) => c !== '-')) rows.push([name, ...cells]);
  };
  for (const { rate } of v[0]?.latency ?? []) {
    const at = (x: AmbitVsRelay) => x.latency.find((l) => l.rate === rate);
    row(`p50 at ${rate} req/s`, (x) => at(x)?.p50);
    row(`p99 at ${rate} req/s`, (x) => at(x)?.p99);
    row(`added p50 at ${rate} req/s`, (x) => at(x)?.added_p50);
    row(`added p99 at ${rate} req/s`, (x) => at(x)?.added_p99);
    row(`CPU-s / 1k req at ${rate} req/s`, (x) => at(x)?.proxy_cpu_s_per_1k_req);
  }
  row('RSS after the runs', (x) => x.rss);
  row('iperf3 Gbit/s', (x) => x.gbit_s);
  row('iperf3 CPU-s / GB', (x) => x.proxy_cpu_s_per_gb);
  return { header: ['ambit ÷', ...v.map((x) => x.label)], rows };
}

function markdown(
  meta: { date: string; kernel: string; node: string; cpus: number; cpu_model: string; load_average: { start: number[]; end: number[] }; proxy_idle_cpu_percent: Record<string, number | null>; hbone_limits?: string; haproxy_version?: string; iperf3_version?: string; relay_nodes?: { node_version: string }[]; options: { duration_s: number; warmup_s: number; connections: number }; path_verified: boolean; haproxy_verified?: boolean; relay_verified?: Record<string, boolean>; verification: { ambit: { problems: string[] }; relay?: Record<string, { problems: string[] }> }; agent_rss: { skipped?: string; steps?: { pods: number; enrolled: number; rss_kb?: number }[] }; skipped?: string[]; idle_connections?: { connections: number; open?: number; kb_per_connection: Record<string, number | null>; idle_cpu_percent: Record<string, number | null>; error?: string }[] },
  latency: LatencyJson, iperf: IperfJson, rss: RssJson, vsRelay: AmbitVsRelay[], byKey: (k: ScenarioKey) => Scenario | undefined,
): string {
  const lines: string[] = [];
  const verified = (k: ScenarioKey) => (k === 'ambit' ? meta.path_verified : k === 'haproxy' ? meta.haproxy_verified !== false : isRelay(k) ? meta.relay_verified?.[k] !== false : true);
  const label = (k: ScenarioKey, l: string) => (verified(k) ? l : `${l} (path not verified)`);
  lines.push('# l4-hop: one L4 hop between two nodes', '');
  const relayVersions = meta.relay_nodes?.map((r) => r.node_version).join(', ');
  lines.push(mdMachineLine(meta, [meta.haproxy_version, meta.iperf3_version, relayVersions ? `node relay on Node.js ${relayVersions}` : undefined]), '');
  lines.push(`HTTP/1.1 keep-alive, 1 KiB responses, ${meta.options.connections} connections, ${meta.options.duration_s} s per rate per scenario (+${meta.options.warmup_s} s warmup). Latency in µs from each request's scheduled send time (coordinated omission corrected); "+" is added over direct, "x" a ratio. CPU: proxies' utime+stime per 1,000 requests (ambit: both node agents; HAProxy: both haproxy processes; node relay: both relay processes).`, '');
  if (relayVersions) lines.push('Node relay: `bench/hbone-relay.mjs` on both nodes, ambit\'s wire (HTTP/2 CONNECT streams over one pooled mutual TLS 1.3 connection, ambit\'s default windows and stream cap) and nothing else: the floor under ambit in Node.js.', '');
  if (!meta.path_verified) {
    lines.push(`**ambit L4: path not verified** — ${meta.verification.ambit.problems.join('; ')}. Its figures are not the mesh's.`, '');
  }
  if (meta.haproxy_verified === false) lines.push('**HAProxy pair: path not verified** (see the JSON).', '');
  for (const [k, ok] of Object.entries(meta.relay_verified ?? {})) {
    if (!ok) lines.push(`**${byKey(k as ScenarioKey)?.label ?? k}: path not verified** — ${meta.verification.relay?.[k]?.problems.join('; ') ?? 'see the JSON'}.`, '');
  }
  lines.push('## Latency', '');
  const rows: string[][] = [];
  for (const l of latency) {
    for (const r of l.scenarios) {
      rows.push([String(l.rate), label(r.scenario, r.label), fmt(r.corrected_us.p50), fmt(r.corrected_us.p90), fmt(r.corrected_us.p99), fmt(r.corrected_us.p999),
        fmtSigned(r.added_vs_direct_us?.p50), fmtSigned(r.added_vs_direct_us?.p99), fmt(r.ratio_vs_direct?.p50, 2), fmt(r.ratio_vs_direct?.p99, 2),
        fmt(r.ratio_vs_haproxy?.p50, 2), fmt(r.ratio_vs_haproxy?.p99, 2), fmt(r.proxy_cpu_s_per_1k_req, 3), `${r.errors}/${r.late}`]);
    }
  }
  lines.push(...mdTable(['req/s', 'scenario', 'p50', 'p90', 'p99', 'p99.9', '+p50', '+p99', 'p50 x direct', 'p99 x direct', 'p50 x HAProxy', 'p99 x HAProxy', 'CPU-s / 1k req', 'errors/late'], rows, 2), '');
  const behind = latency.flatMap((l) => l.scenarios.filter((r) => r.behind_schedule_s > SATURATED_S).map((r) => `${r.label} at ${l.rate} req/s (last answer ${r.behind_schedule_s} s after the last request was due)`));
  if (behind.length > 0) lines.push(`Did not keep up with the rate, so the latencies above measure a growing queue: ${behind.join('; ')}.`, '');
  const idle = Object.entries(meta.proxy_idle_cpu_percent);
  if (idle.length > 0) lines.push(`Proxy CPU while idle (sampled before the runs; included in CPU-s / 1k req): ${idle.map(([k, v]) => `${k} ${fmt(v)}%`).join(', ')}.`, '');
  if (Object.keys(rss).length > 0) {
    lines.push('## Proxy memory (RSS after the fixed-rate runs)', '');
    lines.push(...mdTable(['scenario', 'processes (MB each)', 'RSS MB', 'x HAProxy'], Object.entries(rss).map(([k, v]) => [
      label(k as ScenarioKey, byKey(k as ScenarioKey)?.label ?? k), v.processes.map((p) => `${p.process} ${fmt((p.rss_kb ?? NaN) / 1024)}`).join(', '), fmt((v.total_kb ?? NaN) / 1024), fmt(v.ratio_vs_haproxy, 2),
    ]), 2), '');
  }
  if (iperf.length > 0) {
    lines.push('## Bulk throughput (iperf3, 1 stream, 5 s, node-1 → node-2)', '');
    lines.push(...mdTable(['scenario', 'Gbit/s', 'x direct', 'x HAProxy', 'retransmits', 'proxy CPU-s / GB'], iperf.map((r) => [
      label(r.scenario, r.label), r.error ? `failed: ${r.error.split('\n')[0]}` : fmt(r.gbit_s, 2), fmt(r.ratio_vs_direct, 2), fmt(r.ratio_vs_haproxy, 2), r.retransmits === undefined ? '-' : String(r.retransmits), fmt(r.proxy_cpu_s_per_gb, 3),
    ])), '');
  }
  if (vsRelay.length > 0) {
    lines.push('## ambit ÷ node relay', '');
    lines.push(`ambit L4's figure over the node relay's, from the tables above: above 1, what ambit costs beyond Node.js's TLS and HTTP/2 themselves; "added" is over direct.${meta.path_verified ? '' : ' **ambit\'s path was not verified.**'}`, '');
    const t = ambitVsRelayTable(vsRelay);
    lines.push(...mdTable(t.header, t.rows), '');
  }
  lines.push('## Node agent RSS on node-1', '');
  if (meta.agent_rss.skipped) lines.push(`Skipped: ${meta.agent_rss.skipped}.`, '');
  else lines.push(...mdTable(['enrolled pods', 'RSS MB'], (meta.agent_rss.steps ?? []).map((s) => [String(s.enrolled), fmt((s.rss_kb ?? NaN) / 1024)])), '');
  if (meta.idle_connections) {
    lines.push('## Idle connections held through the mesh', '', 'Each connection, from the one client pod, made one request through both agents, then stayed open and silent. Memory per connection is each agent\'s RSS growth over the connections held; CPU is sampled for 10 s while they idle. One pod may hold at most `maxStreamsPerPeer` tunnels to a node (docs/DATAPATH.md, HBONE limits): connections past it are refused (429), and the figures are per connection actually held.' + (meta.hbone_limits ? ` The agents ran with \`--hbone-limits ${meta.hbone_limits}\` so that one pod could hold them all.` : ''), '');
    const agentNames = [...new Set(meta.idle_connections.flatMap((st) => Object.keys(st.kb_per_connection)))];
    lines.push(...mdTable(['connections held', ...agentNames.flatMap((a) => [`${a} KB / connection`, `${a} idle CPU %`])], meta.idle_connections.map((st) => [
      st.error ? `${st.connections} (failed: ${st.error})` : st.open === st.connections ? String(st.open) : `${st.open} of ${st.connections} (the others refused)`,
      ...agentNames.flatMap((a) => [fmt(st.kb_per_connection[a] ?? NaN, 1), fmt(st.idle_cpu_percent[a] ?? NaN, 1)]),
    ])), '');
  }
  const other = (meta.skipped ?? []).filter((s) => !s.startsWith('node agent'));
  if (other.length > 0) lines.push('Skipped: ' + other.join('; ') + '.', '');
  return `${lines.join('\n').trimEnd()}\n`;
}
runMain('l4-hop', USAGE, main);
