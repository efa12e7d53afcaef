/**
 * What the L7 hop costs: ambit's waypoint against HAProxy in HTTP mode doing the same routing
 * hop, on one local ambit cluster, in one run. Four scenarios, the client pod always on node-1
 * and the servers on node-2:
 *   ambit L4        namespace `mesh` (ambient): client → Service `http` (VIP) → node agents
 *                   (HBONE, mTLS) → an `http` pod; no waypoint
 *   ambit waypoint  namespace `wp` (ambient, bound to a waypoint by `ambit waypoint apply
 *                   --enroll-namespace`): client → node-1 agent → waypoint (HBONE in, HTTP/1.1
 *                   parsed, VirtualService: `x-bench: a` → subset a, anything else → subset b)
 *                   → node-2 agent (HBONE) → http-a
 *   HAProxy pair    namespace `plain`: client → haproxy-client (node-1, TCP mode, TLS 1.3 out with
 *                   a client certificate) → haproxy-server (node-2, TCP mode, TLS in, verify
 *                   required) → http-a: the L4 baseline, as bench/l4-hop.ts runs it
 *   HAProxy L7      the same with an HTTP hop between: haproxy-client → haproxy-l7 (on the
 *                   waypoint's node; mode http, TLS in with verify required, an ACL on
 *                   `x-bench: a` → backend a, else backend b, TLS out) → haproxy-server → http-a
 * Every request carries `x-bench: a`. Run as root:
 *   npx tsx bench/waypoint.ts [--protocol http1|h2c|grpc] [--duration 20] [--warmup 2] [--rates 1000] [--connections 4] [--keep]
 *
 * --protocol picks what the client speaks, end to end:
 *   http1  HTTP/1.1 keep-alive: bench/http-load.c (wrk2-style, latency from each request's
 *          scheduled send time) against bench/http-server.c (1 KiB answers)
 *   h2c    HTTP/2 with prior knowledge: h2load --rps (nghttp2-client) against nghttpd --no-tls
 *          (1 KiB answers); the waypoint carries it on pooled upstream h2c sessions, haproxy-l7
 *          speaks h2 on both sides (`proto h2`)
 *   grpc   gRPC unary calls over h2c: h2load POSTs a framed 64-byte message with
 *          `content-type: application/grpc` and `te: trailers` to /bench.Bench/Echo, nghttpd
 *          answers a framed 1 KiB message with `grpc-status: 0` in the trailers
 * Per rate and scenario: latency at a fixed rate; the proxies' CPU per 1,000 requests
 * (/proc utime + stime) for the whole proxy path and for the L7 proxy alone (the waypoint
 * process; haproxy-l7); the L7 hop's added latency (waypoint − L4; HAProxy L7 − pair) and the
 * ratio of the two; the RSS of the waypoint and of haproxy-l7 after the runs.
 *
 * Checked: the waypoint's istio_requests_total{reporter="waypoint"} must grow by about the
 * requests sent through it, all answered 200 by subset a (else WARNING, exit status 1); the
 * node-2 agent's connections from `mesh` must grow over the L4 runs; haproxy-l7's TLS frontend
 * must count the HTTP requests (2xx) and route them to backend a, and haproxy-server's and
 * haproxy-client's proxies must have passed sessions. The waypoint's log is scanned for errors
 * and for requests it did not answer 200 (resets, retries, non-2xx).
 *
 * The cluster (`l7hop-<random>`, state under the bench's temp dir) is removed at the end, on
 * failure and on Ctrl-C, unless --keep; then nothing of it may be left (netns, cgroup,
 * processes). Results: bench/results/waypoint.json and bench/results/waypoint.md (http1),
 * waypoint-h2c.* and waypoint-grpc.* for the others.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BenchRun, COMMON_USAGE, Cluster, HERE, MESH_LABEL, METRICS_PORT, RESULTS, SATURATED_S, UsageError, agents, build, cpuFields, fetchMetrics, fixedRateRuns, fmt, fmtSigned,
  H2_STREAMS, h2Loader, httpLoader,
  haproxyCommon, haproxyStats, haproxyTcpRoutes, haproxyTlsBind, haproxyTlsServer, idleCpuPercent, interrupted, loadAtStart, loadNow, machine,
  makeCertificates, mdMachineLine, mdTable, namespace, need, parseBenchOptions, parseMetrics, per1k, pod, podOf, podProcess, prepareAmbit, reachable, round,
  runFields, runMain, runWarnings, say, sourceDigest, table, version, vmRssKb, warn, writeManifests,
  type Doc, type LatencyRow, type Loader, type Percentiles, type Proxy, type RateScenario, type Sample,
} from './lib.js';

const IMAGE = 'ambit.dev/bench/waypoint';
const HTTP_PORT = 8080;
/** Service `http` in `mesh` and `wp`: port 80 → the pods' 8080. */
const SERVICE_PORT = 80;
/** haproxy-client's plaintext frontends: the pair, and the path through haproxy-l7. */
const PAIR_PORT = 8080;
const L7_PATH_PORT = 8081;
/** haproxy-server's TLS frontends (to http-a, http-b) and haproxy-l7's. */
const TLS_A = 8443;
const TLS_B = 8444;
const L7_TLS = 8443;
const BENCH_HEADER = 'x-bench';
const BENCH_VALUE = 'a';
/** Every request: Host (or :authority) `http`, `x-bench: a`. */
const REQUEST = { host: 'http', headers: { [BENCH_HEADER]: BENCH_VALUE } };
const PROTOCOLS = { http1: 'HTTP/1.1', h2c: 'HTTP/2 (h2c, prior knowledge)', grpc: 'gRPC unary (over h2c)' } as const;
type Protocol = keyof typeof PROTOCOLS;
/** The gRPC scenario's method, request message and answer (bytes of the protobuf payloads). */
const GRPC_PATH = '/bench.Bench/Echo';
const GRPC_REQUEST_BYTES = 64;
const RESPONSE_BYTES = 1024;
const REQUESTS_METRIC = 'istio_requests_total';
const OPENED_METRIC = 'istio_tcp_connections_opened_total';
const WAYPOINT_POD = 'waypoint-waypoint';
/** How long the waypoint gets to run, get its certificate and config, and route a request. */
const WAYPOINT_READY_S = 90;
const IDLE_SAMPLE_MS = 3000;
/** The waypoint's count may differ from the requests answered by this much (plus failures). */
const COUNT_TOLERANCE = (n: number) => Math.max(5, Math.ceil(n * 0.002));

type ScenarioKey = 'ambit' | 'waypoint' | 'haproxy' | 'haproxy-l7';
type Scenario = RateScenario<ScenarioKey>;

const USAGE = `usage: npx tsx bench/waypoint.ts [options]   (as root)
  --protocol P       http1 (default), h2c or grpc: what the client speaks, end to end
  --duration S       recorded seconds per rate per scenario (default 20)
  --warmup S         unrecorded seconds at the same rate before each run (default 2)
  --rates R,R        request rates, requests/s (default 1000)
  --connections N    keep-alive connections per run (default 4)
  --keep             leave the cluster and the temp dir up (prints how to remove them)
${COMMON_USAGE}`;

// ---------------------------------------------------------------------------------------------
// Manifests and configurations

/** client on node-1, http-a and http-b (subsets a and b of Service http) on node-2. */
function workloads(ns: string, tools: { sleep: string }, server: string[], service: boolean): Doc[] {
  const docs: Doc[] = [
    pod(ns, 'client', 'node-1', [tools.sleep, 'infinity'], { image: IMAGE }),
    ...['a', 'b'].map((v) => pod(ns, `http-${v}`, 'node-2', server, { image: IMAGE, labels: { app: 'http', version: v }, readinessPort: HTTP_PORT })),
  ];
  if (service) {
    docs.push({
      apiVersion: 'v1', kind: 'Service', metadata: { name: 'http', namespace: ns },
      spec: { selector: { app: 'http' }, ports: [{ name: 'http', port: SERVICE_PORT, targetPort: HTTP_PORT }] },
    });
  }
  return docs;
}

/**
 * What the servers run and the client sends, per protocol: bench/http-server.c and http-load for
 * HTTP/1.1; nghttpd and h2load for h2c and gRPC, the files they serve and send written into `dir`.
 */
function protocolParts(protocol: Protocol, cluster: Cluster, tools: { cc: string; h2load?: string; nghttpd?: string }, dir: string): { server: string[]; load: Loader; loadBin?: string } {
  if (protocol === 'http1') {
    const loadBin = build(tools.cc, dir, 'http-load');
    return { server: [build(tools.cc, dir, 'http-server'), String(HTTP_PORT)], load: httpLoader(cluster, loadBin), loadBin };
  }
  const [h2load, nghttpd] = [tools.h2load as string, tools.nghttpd as string];
  const docroot = join(dir, `docroot-${protocol}`);
  if (protocol === 'h2c') {
    mkdirSync(docroot, { recursive: true });
    writeFileSync(join(docroot, 'index.html'), Buffer.alloc(RESPONSE_BYTES, 'x'));
    return { server: [nghttpd, '--no-tls', '-d', docroot, String(HTTP_PORT)], load: h2Loader(cluster, h2load, dir, { path: '/' }) };
  }
  // gRPC's length-prefixed message: a zero flag byte, the length (4 bytes, big-endian), the payload.
  const framed = (bytes: number, fill: number) => {
    const b = Buffer.alloc(5 + bytes, fill);
    b[0] = 0;
    b.writeUInt32BE(bytes, 1);
    return b;
  };
  mkdirSync(join(docroot, dirname(GRPC_PATH)), { recursive: true });
  writeFileSync(join(docroot, GRPC_PATH), framed(RESPONSE_BYTES, 0x2a));
  const body = join(dir, 'grpc-request.bin');
  writeFileSync(body, framed(GRPC_REQUEST_BYTES, 0x07));
  return {
    server: [nghttpd, '--no-tls', '-d', docroot, '--trailer', 'grpc-status: 0', String(HTTP_PORT)],
    load: h2Loader(cluster, h2load, dir, { path: GRPC_PATH, body, headers: { 'content-type': 'application/grpc', te: 'trailers' } }),
  };
}

/** The waypoint's routing: `x-bench: a` → subset a, anything else → subset b. */
function routing(ns: string): Doc[] {
  return [
    {
      apiVersion: 'networking.istio.io/v1', kind: 'DestinationRule', metadata: { name: 'http', namespace: ns },
      spec: { host: 'http', subsets: [{ name: 'a', labels: { version: 'a' } }, { name: 'b', labels: { version: 'b' } }] },
    },
    {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'http', namespace: ns },
      spec: {
        hosts: ['http'],
        http: [
          { name: 'bench-a', match: [{ headers: { [BENCH_HEADER]: { exact: BENCH_VALUE } } }], route: [{ destination: { host: 'http', subset: 'a' } }] },
          { name: 'default', route: [{ destination: { host: 'http', subset: 'b' } }] },
        ],
      },
    },
  ];
}

interface Certs { ca: string; server: string; l7: string; client: string }

function certificates(openssl: string, dir: string): Certs {
  const { ca, leaf } = makeCertificates(openssl, dir, 'ambit waypoint bench CA', [
    { file: 'server', san: 'DNS:haproxy-server', usage: 'serverAuth' },
    { file: 'l7', san: 'DNS:haproxy-l7', usage: 'serverAuth,clientAuth' },
    { file: 'client', san: 'DNS:haproxy-client', usage: 'clientAuth' },
  ]);
  return { ca, server: leaf.server as string, l7: leaf.l7 as string, client: leaf.client as string };
}

/** haproxy-server: TLS in (client certificate required) → http-a or http-b, TCP mode. */
function haproxyServerConfig(sock: string, certs: Certs, a: string, b: string): string {
  const bind = (port: number) => haproxyTlsBind(port, { ca: certs.ca, crt: certs.server });
  return `${haproxyCommon(sock)}
${haproxyTcpRoutes([
    { frontend: 'http_a_tls', bind: bind(TLS_A), backend: 'http_a', server: `server app ${a}:${HTTP_PORT}` },
    { frontend: 'http_b_tls', bind: bind(TLS_B), backend: 'http_b', server: `server app ${b}:${HTTP_PORT}` },
  ])}`;
}

/**
 * haproxy-l7: the HTTP hop. TLS in (client certificate required), HTTP/1.1 parsed, the ACL on
 * x-bench picks the backend, TLS out to haproxy-server with its own client certificate. Client
 * side keep-alive (`option http-keep-alive`, HAProxy's default), server side `http-reuse safe`
 * (the default, written out): idle server connections are reused across requests. One log line
 * per request to stdout (`option httplog`), as the waypoint writes an access-log line per request.
 */
function haproxyL7Config(sock: string, certs: Certs, server: string, protocol: Protocol): string {
  // HTTP/2 on both sides for h2c and gRPC: haproxy-client and haproxy-server pass the client's
  // and the app's h2c through untouched (TCP mode), so haproxy-l7 is the hop that speaks it.
  const h2 = protocol === 'http1' ? '' : ' proto h2';
  const upstream = (name: string, port: number) => `${haproxyTlsServer(name, server, port, 'haproxy-server', { ca: certs.ca, crt: certs.l7 })}${h2}`;
  return `${haproxyCommon(sock)}
frontend l7_tls
    mode http
    ${haproxyTlsBind(L7_TLS, { ca: certs.ca, crt: certs.l7 })}${h2}
    option http-keep-alive
    timeout http-request 10s
    timeout http-keep-alive 2m
    log stdout format raw local0
    option httplog
    acl bench_a req.hdr(${BENCH_HEADER}) -m str ${BENCH_VALUE}
    use_backend route_a if bench_a
    default_backend route_b

backend route_a
    mode http
    http-reuse safe
    ${upstream('a', TLS_A)}

backend route_b
    mode http
    http-reuse safe
    ${upstream('b', TLS_B)}
`;
}

/** haproxy-client: plaintext in, TLS out, TCP mode: to haproxy-server (the pair) or to haproxy-l7. */
function haproxyClientConfig(sock: string, certs: Certs, server: string, l7: string): string {
  const tls = { ca: certs.ca, crt: certs.client };
  return `${haproxyCommon(sock)}
${haproxyTcpRoutes([
    { frontend: 'pair', bind: `bind 0.0.0.0:${PAIR_PORT}`, backend: 'pair', server: haproxyTlsServer('tls', server, TLS_A, 'haproxy-server', tls) },
    { frontend: 'l7', bind: `bind 0.0.0.0:${L7_PATH_PORT}`, backend: 'l7', server: haproxyTlsServer('tls', l7, L7_TLS, 'haproxy-l7', tls) },
  ])}`;
}

// ---------------------------------------------------------------------------------------------
// Path checks

/** Metrics samples from a component, or why not. */
async function samples(cluster: Cluster, node: string, ip: string): Promise<{ samples?: Sample[]; error?: string }> {
  const { text, error } = await fetchMetrics(cluster, node, `http://${ip}:${METRICS_PORT}/metrics`);
  return text === undefined ? { error } : { samples: parseMetrics(text) };
}

const sum = (list: Sample[], pick: (s: Sample) => boolean) => list.filter(pick).reduce((n, s) => n + s.value, 0);
const isWaypointRequest = (s: Sample) => s.name === REQUESTS_METRIC && s.labels.reporter === 'waypoint';

/** istio_requests_total{reporter="waypoint"} by response code, flags and destination version. */
function requestsBy(list: Sample[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of list.filter(isWaypointRequest)) {
    const grpc = s.labels.grpc_response_status ? ` grpc=${s.labels.grpc_response_status}` : '';
    const key = `code=${s.labels.response_code ?? '?'}${grpc} flags=${s.labels.response_flags ?? '?'} version=${s.labels.destination_version ?? '?'}`;
    out.set(key, (out.get(key) ?? 0) + s.value);
  }
  return out;
}

/** A delta between two maps of counters (keys of either), without zeros. */
function deltaOf(a: Map<string, number>, b: Map<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    const d = (b.get(k) ?? 0) - (a.get(k) ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

/** The size of a file now (where to start reading what is appended), 0 when it is not there. */
function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** What the waypoint logged after `offset`: warnings and errors, and requests not answered 200 with no flag. */
function waypointLog(path: string, offset: number): { bytes: number; requests: number; not_ok: Record<string, number>; warnings: number; errors: number; first: string[] } {
  const out = { bytes: 0, requests: 0, not_ok: {} as Record<string, number>, warnings: 0, errors: 0, first: [] as string[] };
  if (!existsSync(path)) return out;
  const size = sizeOf(path);
  // Bounded: at most the last 64 MB of what was appended.
  const start = Math.max(offset, size - 64 * 1024 * 1024);
  const buf = Buffer.alloc(Math.max(0, size - start));
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buf, 0, buf.length, start);
  } finally {
    closeSync(fd);
  }
  out.bytes = buf.length;
  for (const line of buf.toString('utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    let rec: { level?: number; msg?: string; err?: string; response?: { code?: number; flags?: string; attempts?: number } };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue;
    }
    if (rec.msg === 'request' && rec.response) {
      out.requests++;
      const { code, flags, attempts } = rec.response;
      if (code !== 200 || (flags && flags !== '-') || (attempts ?? 1) > 1) {
        const key = `code ${code ?? '?'} flags ${flags ?? '?'}${(attempts ?? 1) > 1 ? ` attempts ${attempts}` : ''}`;
        out.not_ok[key] = (out.not_ok[key] ?? 0) + 1;
      }
    } else if ((rec.level ?? 0) >= 40) {
      if ((rec.level ?? 0) >= 50) out.errors++;
      else out.warnings++;
      const what = `${rec.msg ?? ''}${rec.err ? `: ${rec.err}` : ''}`;
      if (out.first.length < 5 && !out.first.includes(what)) out.first.push(what);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const { common: options, values } = parseBenchOptions(process.argv.slice(2), USAGE, { duration: '20', warmup: '2', rates: '1000', connections: '4' }, { protocol: { type: 'string', default: 'http1' } });
  const protocol = String(values.protocol) as Protocol;
  if (!Object.hasOwn(PROTOCOLS, protocol)) throw new UsageError(`--protocol: expected one of ${Object.keys(PROTOCOLS).join(', ')}, got "${protocol}"`);
  if (process.getuid?.() !== 0) throw new Error('run as root: the local cluster makes network namespaces, cgroups and nftables tables');
  const tools = {
    cc: need('cc', 'gcc'), sleep: need('sleep', 'coreutils'), haproxy: need('haproxy', 'haproxy'), openssl: need('openssl', 'openssl'),
    ...(protocol !== 'http1' ? { h2load: need('h2load', 'nghttp2-client'), nghttpd: need('nghttpd', 'nghttp2-server') } : {}),
  };

  prepareAmbit(options);
  // The cluster and the temp dir go at the end, on failure and on Ctrl-C (unless --keep).
  const bench = new BenchRun('l7hop', options.keep);
  const { tmp, name, cluster } = bench;
  bench.handleSignals();

  try {
    const { server, load } = protocolParts(protocol, cluster, tools, tmp);
    const certs = certificates(tools.openssl, tmp);
    const haproxyVersion = version(tools.haproxy, ['-v']);
    const srcDigest = sourceDigest();
    const ambitVersion = (JSON.parse(readFileSync(join(HERE, '..', 'package.json'), 'utf8')) as { version?: string }).version ?? '';

    const loadStart = loadAtStart('waypoint (the L7 hop)', name);
    say(`${PROTOCOLS[protocol]}, rates ${options.rates.join(', ')} req/s x ${options.connections} connections, ${options.duration} s each (+${options.warmup} s warmup)`);

    // ---- the cluster: clients on node-1, servers on node-2, in the three namespaces
    const base: Doc[] = [
      namespace('plain'), namespace('mesh', { [MESH_LABEL]: 'ambient' }), namespace('wp', { [MESH_LABEL]: 'ambient' }),
      ...workloads('plain', tools, server, false), ...workloads('mesh', tools, server, true), ...workloads('wp', tools, server, true),
      ...routing('wp'),
    ];
    bench.created = true; // up may fail half-way: down removes whatever it made
    say(`starting the cluster (${base.filter((d) => d.kind === 'Pod').length} pods)...`);
    await cluster.up(writeManifests(join(tmp, 'manifests', '1-base'), base), 180);

    // ---- the waypoint: namespace wp bound to it; the runtime picks its node
    say('ambit waypoint apply -n wp --enroll-namespace...');
    const applied = await cluster.cli(['waypoint', 'apply', '-n', 'wp', '--enroll-namespace', '--cluster', name], 120_000);
    if (applied.code !== 0) Cluster.fail('ambit waypoint apply -n wp --enroll-namespace', applied);
    let status = await cluster.status();
    const deadline = Date.now() + WAYPOINT_READY_S * 1000;
    for (;;) {
      const wp = status.pods.find((p) => p.namespace === 'wp' && p.name === WAYPOINT_POD);
      if (wp?.phase === 'Running' && wp.ready === '1/1') break;
      if (interrupted()) return;
      if (Date.now() > deadline) throw new Error(`the waypoint pod wp/${WAYPOINT_POD} is not ready after ${WAYPOINT_READY_S} s (${wp ? `${wp.phase} ${wp.ready ?? ''}` : 'no pod'})`);
      await sleep(1000);
      status = await cluster.status();
    }
    const waypointPod = podOf(status, 'wp', WAYPOINT_POD);
    const l7Node = waypointPod.node;
    say(`waypoint wp/${WAYPOINT_POD} runs on ${l7Node} (${waypointPod.ip}); haproxy-l7 goes there too`);

    // ---- the HAProxy pods, each configured with the addresses of the next hop
    const ipOf = (ns: string, p: string) => podOf(status, ns, p).ip;
    const socks = { server: join(tmp, 'haproxy-server.sock'), l7: join(tmp, 'haproxy-l7.sock'), client: join(tmp, 'haproxy-client.sock') };
    const haproxyPod = async (who: keyof typeof socks, node: string, config: string) => {
      writeFileSync(join(tmp, `haproxy-${who}.cfg`), config);
      await cluster.up(writeManifests(join(tmp, 'manifests', `haproxy-${who}`), [
        pod('plain', `haproxy-${who}`, node, [tools.haproxy, '-db', '-f', join(tmp, `haproxy-${who}.cfg`)], { image: IMAGE }),
      ]), 60);
      status = await cluster.status();
    };
    await haproxyPod('server', 'node-2', haproxyServerConfig(socks.server, certs, ipOf('plain', 'http-a'), ipOf('plain', 'http-b')));
    await haproxyPod('l7', l7Node, haproxyL7Config(socks.l7, certs, ipOf('plain', 'haproxy-server'), protocol));
    await haproxyPod('client', 'node-1', haproxyClientConfig(socks.client, certs, ipOf('plain', 'haproxy-server'), ipOf('plain', 'haproxy-l7')));

    // ---- who does the proxying
    const nodeAgents = agents(status);
    if (nodeAgents.length < 2) throw new Error(`expected node agents on node-1 and node-2 in \`ambit local status\`, found ${nodeAgents.length}: without them nothing is meshed`);
    const agentProxies: Proxy[] = nodeAgents.map((a) => ({ name: `node-agent ${a.node ?? '?'}`, pid: a.pid as number }));
    const waypointProc: Proxy = { ...podProcess(cluster.layout, status, 'wp', WAYPOINT_POD, 'node'), name: 'waypoint' };
    const hap = (who: string) => podProcess(cluster.layout, status, 'plain', `haproxy-${who}`, 'haproxy');
    const [hapClient, hapL7, hapServer] = [hap('client'), hap('l7'), hap('server')];
    const vip = (ns: string) => {
      const svc = status.services?.find((s) => s.namespace === ns && s.name === 'http');
      if (!svc?.vip || svc.vip === 'None') throw new Error(`service ${ns}/http has no VIP in \`ambit local status\``);
      return svc.vip;
    };
    const scenarios: Scenario[] = [
      { key: 'ambit', label: 'ambit L4', ns: 'mesh', http: { ip: vip('mesh'), port: SERVICE_PORT }, ...REQUEST, proxies: agentProxies },
      { key: 'waypoint', label: 'ambit waypoint', ns: 'wp', http: { ip: vip('wp'), port: SERVICE_PORT }, ...REQUEST, proxies: [...agentProxies, waypointProc] },
      { key: 'haproxy', label: 'HAProxy pair', ns: 'plain', http: { ip: ipOf('plain', 'haproxy-client'), port: PAIR_PORT }, ...REQUEST, proxies: [hapClient, hapServer] },
      { key: 'haproxy-l7', label: 'HAProxy L7', ns: 'plain', http: { ip: ipOf('plain', 'haproxy-client'), port: L7_PATH_PORT }, ...REQUEST, proxies: [hapClient, hapL7, hapServer] },
    ];
    const byKey = (k: ScenarioKey) => scenarios.find((s) => s.key === k) as Scenario;

    // ---- every path answers before anything is measured; the waypoint's must go through it
    const node2 = status.nodes.find((n) => n.name === 'node-2');
    if (!node2) throw new Error('no node-2 in `ambit local status`');
    const waypointMetrics = () => samples(cluster, l7Node, waypointPod.ip);
    for (const s of scenarios) {
      if (interrupted()) return;
      if (s.key !== 'waypoint') {
        const why = await reachable(load, s);
        if (why) s.unreachable = why;
      } else {
        // Until the node agents send wp's traffic to the waypoint and it routes: its count moves.
        let last = '';
        for (;;) {
          if (interrupted()) return;
          const before = await waypointMetrics();
          const why = await reachable(load, s, 1);
          const after = await waypointMetrics();
          if (!why && before.samples && after.samples) {
            const grew = sum(after.samples, isWaypointRequest) - sum(before.samples, isWaypointRequest);
            if (grew >= 50) break;
            last = `answered, but the waypoint counted ${grew} of 50 requests`;
          } else {
            last = why ?? before.error ?? after.error ?? '?';
          }
          if (Date.now() > deadline) {
            s.unreachable = last;
            break;
          }
          await sleep(1000);
        }
      }
      if (s.unreachable) warn(`${s.label}: ${s.http.ip}:${s.http.port} does not answer from ${s.ns}/client; the scenario is skipped: ${s.unreachable}`);
    }
    const running = scenarios.filter((s) => !s.unreachable);

    // ---- counters before
    const waypointLogPath = join(bench.env.AMBIT_LOCAL_STATE as string, name, 'pods', `wp.${WAYPOINT_POD}`, 'waypoint.log');
    const logOffset = sizeOf(waypointLogPath);
    const wpBefore = await waypointMetrics();
    const agentBefore = await samples(cluster, 'node-2', node2.ip);
    const hapFields = ['stot', 'req_tot', 'hrsp_2xx'] as const;
    type HapSnap = Record<'server' | 'l7' | 'client', Record<(typeof hapFields)[number], Map<string, number>>>;
    const hapSnapshot = async (): Promise<HapSnap> => {
      const one = async (sock: string) => Object.fromEntries(await Promise.all(hapFields.map(async (f) => [f, await haproxyStats(sock, f)] as const))) as HapSnap['server'];
      return { server: await one(socks.server), l7: await one(socks.l7), client: await one(socks.client) };
    };
    const hapProblems: string[] = [];
    const hapBefore = await hapSnapshot().catch((err: Error) => { hapProblems.push(`haproxy stats before the runs: ${err.message}`); return undefined; });

    // ---- the proxies' CPU while nothing is sent: a baseline included in every CPU figure below
    const allProxies = [...agentProxies, waypointProc, hapClient, hapL7, hapServer];
    const idlePercent = await idleCpuPercent(allProxies, IDLE_SAMPLE_MS);

    // ---- latency at fixed rates, scenarios in a new random order per rate
    const latency = await fixedRateRuns(load, running, scenarios, options);
    if (!latency) return;

    // ---- counters after; RSS
    const wpAfter = await waypointMetrics();
    const agentAfter = await samples(cluster, 'node-2', node2.ip);
    const hapAfter = await hapSnapshot().catch((err: Error) => { hapProblems.push(`haproxy stats after the runs: ${err.message}`); return undefined; });
    const rss = Object.fromEntries([...agentProxies, waypointProc, hapClient, hapL7, hapServer].map((p) => [p.name, { pid: p.pid, rss_kb: vmRssKb(p.pid) }]));
    const log = waypointLog(waypointLogPath, logOffset);
    // A proxy that restarted during the runs: its CPU figures are gone, and the runs met its outage.
    const statusAfter = await cluster.status();
    const restarted: string[] = [];
    for (const a of nodeAgents) {
      const now = agents(statusAfter).find((b) => b.node === a.node);
      if (now?.pid !== a.pid) restarted.push(`node-agent ${a.node ?? '?'} (pid ${a.pid} → ${now?.pid ?? 'none'})`);
    }
    for (const p of [waypointProc, hapClient, hapL7, hapServer]) if (!existsSync(`/proc/${p.pid}`)) restarted.push(`${p.name} (pid ${p.pid} exited)`);
    const loadEnd = loadNow();

    // ---- the waypoint's path
    const rowsOf = (k: ScenarioKey) => latency.flatMap((l) => l.rows).filter((r) => r.scenario === k);
    const totals = (rows: LatencyRow<ScenarioKey>[]) => ({
      answered: rows.reduce((n, r) => n + r.result.completed_all, 0),
      ok: rows.reduce((n, r) => n + r.result.completed_all - r.result.non_200, 0),
      failed: rows.reduce((n, r) => n + r.result.errors_all - r.result.non_200 + r.result.late, 0),
      connects: rows.reduce((n, r) => n + r.result.connects, 0),
    });
    const wpSent = totals(rowsOf('waypoint'));
    const waypointProblems: string[] = [];
    let waypointCounted: number | undefined;
    let waypointByOutcome: Record<string, number> = {};
    let waypointUpstreamConnections: number | undefined;
    if (byKey('waypoint').unreachable) waypointProblems.push(`unreachable: ${byKey('waypoint').unreachable}`);
    if (!wpBefore.samples || !wpAfter.samples) {
      waypointProblems.push(wpBefore.error ?? wpAfter.error ?? 'no waypoint metrics');
    } else if (!byKey('waypoint').unreachable) {
      waypointCounted = sum(wpAfter.samples, isWaypointRequest) - sum(wpBefore.samples, isWaypointRequest);
      waypointByOutcome = deltaOf(requestsBy(wpBefore.samples), requestsBy(wpAfter.samples));
      const tol = COUNT_TOLERANCE(wpSent.answered);
      if (waypointCounted < wpSent.answered - tol || waypointCounted > wpSent.answered + wpSent.failed + tol) {
        waypointProblems.push(`${REQUESTS_METRIC}{reporter="waypoint"} grew by ${waypointCounted}; the waypoint runs got ${wpSent.answered} answers (${wpSent.failed} failed or late)`);
      }
      const routedA = waypointByOutcome[`code=200${protocol === 'grpc' ? ' grpc=0' : ''} flags=- version=${BENCH_VALUE}`] ?? 0;
      if (routedA < wpSent.ok - tol) waypointProblems.push(`only ${routedA} of ${wpSent.ok} requests were answered 200 by subset ${BENCH_VALUE} (the header route): ${JSON.stringify(waypointByOutcome)}`);
    }
    // The L4 path: node-2's agent accepted the `mesh` client's connections.
    const fromNs = (list: Sample[], ns: string) => sum(list, (s) => s.name === OPENED_METRIC && s.labels.reporter === 'destination' && s.labels.destination_workload_namespace === ns);
    const l4Problems: string[] = [];
    let l4Opened: number | undefined;
    if (byKey('ambit').unreachable) l4Problems.push(`unreachable: ${byKey('ambit').unreachable}`);
    if (!agentBefore.samples || !agentAfter.samples) {
      l4Problems.push(agentBefore.error ?? agentAfter.error ?? 'no node-2 agent metrics');
    } else {
      l4Opened = fromNs(agentAfter.samples, 'mesh') - fromNs(agentBefore.samples, 'mesh');
      const l4Connects = totals(rowsOf('ambit')).connects;
      if (!byKey('ambit').unreachable && !(l4Opened > 0)) l4Problems.push(`node-2's agent accepted no connection from namespace mesh (${OPENED_METRIC} +${l4Opened}); the L4 runs opened ${l4Connects}`);
      else if (l4Opened < l4Connects) warn(`ambit L4: node-2's agent counted ${l4Opened} connections from namespace mesh; the L4 runs opened ${l4Connects}`);
      // The waypoint's own connections to node-2's agent, per request it forwarded.
      const wpOpened = fromNs(agentAfter.samples, 'wp') - fromNs(agentBefore.samples, 'wp');
      if (waypointCounted) waypointUpstreamConnections = round(wpOpened / waypointCounted, 3);
    }

    // ---- HAProxy's paths
    const hapDelta = (who: keyof HapSnap, field: (typeof hapFields)[number], key: string) =>
      hapBefore && hapAfter ? (hapAfter[who][field].get(key) ?? NaN) - (hapBefore[who][field].get(key) ?? NaN) : NaN;
    const hapSent = totals(rowsOf('haproxy-l7'));
    const haproxyDeltas = {
      'haproxy-l7 l7_tls/FRONTEND requests': hapDelta('l7', 'req_tot', 'l7_tls/FRONTEND'),
      'haproxy-l7 l7_tls/FRONTEND 2xx': hapDelta('l7', 'hrsp_2xx', 'l7_tls/FRONTEND'),
      'haproxy-l7 route_a/BACKEND 2xx': hapDelta('l7', 'hrsp_2xx', 'route_a/BACKEND'),
      'haproxy-l7 route_b/BACKEND 2xx': hapDelta('l7', 'hrsp_2xx', 'route_b/BACKEND'),
      'haproxy-l7 route_a/BACKEND sessions': hapDelta('l7', 'stot', 'route_a/BACKEND'),
      'haproxy-server http_a_tls/FRONTEND sessions': hapDelta('server', 'stot', 'http_a_tls/FRONTEND'),
      'haproxy-client pair/BACKEND sessions': hapDelta('client', 'stot', 'pair/BACKEND'),
      'haproxy-client l7/BACKEND sessions': hapDelta('client', 'stot', 'l7/BACKEND'),
    };
    if (hapBefore && hapAfter) {
      const tol = COUNT_TOLERANCE(hapSent.answered);
      const requests = haproxyDeltas['haproxy-l7 l7_tls/FRONTEND requests'];
      if (!byKey('haproxy-l7').unreachable && !(requests >= hapSent.answered - tol && requests <= hapSent.answered + hapSent.failed + tol)) {
        hapProblems.push(`haproxy-l7's TLS frontend counted ${requests} HTTP requests; the HAProxy L7 runs got ${hapSent.answered} answers`);
      }
      if (!byKey('haproxy-l7').unreachable && !(haproxyDeltas['haproxy-l7 route_a/BACKEND 2xx'] >= hapSent.ok - tol)) {
        hapProblems.push(`haproxy-l7's backend route_a answered ${haproxyDeltas['haproxy-l7 route_a/BACKEND 2xx']} requests 2xx of ${hapSent.ok}`);
      }
      for (const k of ['haproxy-server http_a_tls/FRONTEND sessions', 'haproxy-client pair/BACKEND sessions', 'haproxy-client l7/BACKEND sessions'] as const) {
        if (!(haproxyDeltas[k] > 0)) hapProblems.push(`${k} did not grow (+${haproxyDeltas[k]})`);
      }
    }
    for (const k of ['haproxy', 'haproxy-l7'] as const) if (byKey(k).unreachable) hapProblems.push(`${byKey(k).label} unreachable: ${byKey(k).unreachable}`);
    const waypointVerified = waypointProblems.length === 0;
    const l4Verified = l4Problems.length === 0;
    const haproxyVerified = hapProblems.length === 0;

    // ---- report
    const verified = (k: ScenarioKey) => (k === 'waypoint' ? waypointVerified : k === 'ambit' ? l4Verified : haproxyVerified);
    const pcts = ['p50', 'p90', 'p99', 'p999'] as const;
    const diff = (x: Percentiles | undefined, ref: Percentiles | undefined) => (x && ref ? Object.fromEntries(pcts.map((p) => [p, round(x[p] - ref[p], 1)])) as Record<(typeof pcts)[number], number> : undefined);
    const latencyJson = latency.map((l) => {
      const row = (k: ScenarioKey) => l.rows.find((r) => r.scenario === k);
      const l7Proc = (k: ScenarioKey) => (k === 'waypoint' ? 'waypoint' : k === 'haproxy-l7' ? 'haproxy-l7' : undefined);
      const scenariosJson = l.rows.map((r) => ({
        scenario: r.scenario,
        label: r.label,
        path_verified: verified(r.scenario),
        ...runFields(r.result, l.rate, options),
        // Answers per second over the whole run (warmup and drain included): below the rate, the path's capacity.
        served_rps: round(r.result.completed_all / r.result.elapsed_s, 0),
        ...cpuFields(r.cpu, r.result),
        ...(l7Proc(r.scenario) ? { l7_proxy_cpu_s_per_1k_req: per1k(r.cpu.byProxy[l7Proc(r.scenario) as string], r.result) } : {}),
      }));
      const get = (k: ScenarioKey) => scenariosJson.find((s) => s.scenario === k);
      const hop = (l7: ScenarioKey, l4: ScenarioKey) => {
        const [a, b] = [get(l7), get(l4)];
        if (!a || !b || !row(l7) || !row(l4)) return undefined;
        const path = a.proxy_cpu_s_per_1k_req !== undefined && b.proxy_cpu_s_per_1k_req !== undefined ? round(a.proxy_cpu_s_per_1k_req - b.proxy_cpu_s_per_1k_req, 4) : undefined;
        // Beyond SATURATED_S behind schedule, a run's latencies are its queue's: the difference too.
        const queued = [a, b].filter((x) => x.behind_schedule_s > SATURATED_S).map((x) => x.label);
        return {
          added_us: diff(a.corrected_us, b.corrected_us), added_path_cpu_s_per_1k_req: path, l7_proxy_cpu_s_per_1k_req: a.l7_proxy_cpu_s_per_1k_req,
          ...(queued.length > 0 ? { did_not_keep_up: queued } : {}),
        };
      };
      const ambit = hop('waypoint', 'ambit');
      const haproxy = hop('haproxy-l7', 'haproxy');
      const ratio = (x: number | undefined, y: number | undefined) => (x !== undefined && y !== undefined && Number.isFinite(x) && Number.isFinite(y) && y > 0 && x > 0 ? round(x / y, 2) : undefined);
      return {
        rate: l.rate,
        order: l.order,
        scenarios: scenariosJson,
        l7_hop: {
          ambit,
          haproxy,
          // ambit's added ÷ HAProxy's added; none where HAProxy's added is ≤ 0 (within noise).
          ratio_ambit_to_haproxy: ambit && haproxy ? {
            added_us: Object.fromEntries(pcts.map((p) => [p, ratio(ambit.added_us?.[p], haproxy.added_us?.[p])])),
            added_path_cpu: ratio(ambit.added_path_cpu_s_per_1k_req, haproxy.added_path_cpu_s_per_1k_req),
            l7_proxy_cpu: ratio(ambit.l7_proxy_cpu_s_per_1k_req, haproxy.l7_proxy_cpu_s_per_1k_req),
          } : undefined,
        },
      };
    });
    const rssRatio = rss.waypoint?.rss_kb && rss['haproxy-l7']?.rss_kb ? round(rss.waypoint.rss_kb / rss['haproxy-l7'].rss_kb, 1) : undefined;
    const result = {
      benchmark: 'waypoint',
      protocol,
      ...machine(),
      ambit_version: ambitVersion || undefined,
      src_sha256: srcDigest,
      haproxy_version: haproxyVersion || undefined,
      cluster: name,
      load_average: { start: loadStart, end: loadEnd },
      options: { duration_s: options.duration, warmup_s: options.warmup, rates: options.rates, connections: options.connections, response_bytes: RESPONSE_BYTES, ...(protocol === 'grpc' ? { grpc_request_bytes: GRPC_REQUEST_BYTES, grpc_path: GRPC_PATH } : {}), header: `${BENCH_HEADER}: ${BENCH_VALUE}` },
      placement: { client: 'node-1', servers: 'node-2', waypoint: l7Node, 'haproxy-client': 'node-1', 'haproxy-l7': l7Node, 'haproxy-server': 'node-2' },
      path_verified: { 'ambit L4': l4Verified, 'ambit waypoint': waypointVerified, haproxy: haproxyVerified },
      verification: {
        waypoint: {
          metric: `${REQUESTS_METRIC}{reporter="waypoint"}`, counted: waypointCounted, answered_by_http_load: wpSent.answered, failed_or_late: wpSent.failed,
          by_outcome: waypointByOutcome, upstream_connections_per_request: waypointUpstreamConnections, problems: waypointProblems,
        },
        ambit_l4: { metric: `${OPENED_METRIC}{reporter="destination",destination_workload_namespace="mesh"} on node-2`, opened: l4Opened, problems: l4Problems },
        haproxy: { deltas: haproxyDeltas, answered_by_http_load_l7: hapSent.answered, problems: hapProblems },
      },
      waypoint_log: log,
      restarted_during_runs: restarted.length > 0 ? restarted : undefined,
      unit: protocol === 'http1' ? 'microseconds, from each request\'s scheduled send time (corrected for coordinated omission)' : `microseconds, from each request's send by h2load --rps (due requests wait only beyond ${H2_STREAMS} open streams per connection)`,
      latency: latencyJson,
      proxy_idle_cpu_percent: idlePercent,
      rss_after_runs_kb: rss,
      rss_ratio_waypoint_to_haproxy_l7: rssRatio,
      skipped: scenarios.some((s) => s.unreachable) ? scenarios.filter((s) => s.unreachable).map((s) => `${s.label}: unreachable (${s.unreachable})`) : undefined,
    };

    // stdout
    const mark = (k: ScenarioKey) => (verified(k) ? '' : ' (!)');
    for (const l of latencyJson) {
      say();
      say(`${l.rate} req/s, ${options.connections} connections, ${options.duration} s (+${options.warmup} s warmup); latency in us from the ${protocol === 'http1' ? 'scheduled ' : ''}send; order: ${l.order.join(', ')}`);
      for (const line of table(['scenario', 'served req/s', 'p50', 'p90', 'p99', 'p99.9', 'path CPU-s/1k', 'L7 proxy CPU-s/1k', 'err/late'], l.scenarios.map((r) => [
        `${r.label}${mark(r.scenario)}`, fmt(r.served_rps, 0), fmt(r.corrected_us.p50), fmt(r.corrected_us.p90), fmt(r.corrected_us.p99), fmt(r.corrected_us.p999),
        fmt(r.proxy_cpu_s_per_1k_req, 3), fmt(r.l7_proxy_cpu_s_per_1k_req, 3), `${r.errors}/${r.late}`,
      ]))) say(line);
      say();
      say('the L7 hop (added over its L4 path):');
      for (const line of table(['', '+p50', '+p90', '+p99', '+p99.9', '+path CPU-s/1k', 'L7 proxy CPU-s/1k'], hopRows(l.l7_hop))) say(line);
    }
    say();
    say(`waypoint on ${l7Node}; RSS after the runs: waypoint ${fmt((rss.waypoint?.rss_kb ?? NaN) / 1024)} MB, haproxy-l7 ${fmt((rss['haproxy-l7']?.rss_kb ?? NaN) / 1024)} MB (${fmt(rssRatio)}x)`);
    say(`proxy CPU while idle (${IDLE_SAMPLE_MS / 1000} s before the runs, included in the CPU figures): ${Object.entries(idlePercent).map(([k, v]) => `${k} ${fmt(v)}%`).join(', ')}`);
    for (const l of latencyJson) for (const r of l.scenarios) for (const w of runWarnings(r.label, l.rate, r, options.connections)) warn(w);
    say(`waypoint: ${REQUESTS_METRIC}{reporter="waypoint"} +${waypointCounted ?? '?'} for ${wpSent.answered} answers; by outcome ${JSON.stringify(waypointByOutcome)}; ${waypointUpstreamConnections ?? '?'} upstream connections per request`);
    if (log.errors + log.warnings > 0 || Object.keys(log.not_ok).length > 0) {
      warn(`the waypoint logged ${log.errors} errors and ${log.warnings} warnings${log.first.length > 0 ? ` (${log.first.join('; ')})` : ''}; requests not answered 200 at the first try: ${JSON.stringify(log.not_ok)}`);
    }
    if (restarted.length > 0) warn(`restarted during the runs: ${restarted.join(', ')}`);
    for (const [what, ok, problems] of [['ambit waypoint', waypointVerified, waypointProblems], ['ambit L4', l4Verified, l4Problems], ['HAProxy', haproxyVerified, hapProblems]] as const) {
      if (ok) continue;
      warn(`${what}: path NOT verified:`);
      for (const p of problems) say(`  - ${p}`);
    }
    if (haproxyVerified) say(`HAProxy paths verified: ${Object.entries(haproxyDeltas).map(([k, v]) => `${k} +${v}`).join(', ')}`);
    if (l4Verified) say(`ambit L4 path verified: node-2's agent accepted ${l4Opened} connections from namespace mesh`);

    mkdirSync(RESULTS, { recursive: true });
    const resultName = protocol === 'http1' ? 'waypoint' : `waypoint-${protocol}`;
    const jsonPath = join(RESULTS, `${resultName}.json`);
    const mdPath = join(RESULTS, `${resultName}.md`);
    writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(mdPath, markdown(result, latencyJson));
    say(`results: ${jsonPath}, ${mdPath}`);

    const failed = latencyJson.some((l) => l.scenarios.some((r) => r.errors > 0)) || scenarios.some((s) => s.unreachable);
    if (!waypointVerified || !l4Verified || !haproxyVerified || failed || restarted.length > 0) process.exitCode = 1;
  } finally {
    await bench.finish();
  }
}

type Hop = { added_us?: Record<string, number>; added_path_cpu_s_per_1k_req?: number; l7_proxy_cpu_s_per_1k_req?: number; did_not_keep_up?: string[] } | undefined;
type HopJson = { ambit: Hop; haproxy: Hop; ratio_ambit_to_haproxy?: { added_us: Record<string, number | undefined>; added_path_cpu?: number; l7_proxy_cpu?: number } };

function hopRows(h: HopJson): string[][] {
  const row = (label: string, x: Hop) => [`${label}${x?.did_not_keep_up ? ' (queue: did not keep up)' : ''}`, fmtSigned(x?.added_us?.p50), fmtSigned(x?.added_us?.p90), fmtSigned(x?.added_us?.p99), fmtSigned(x?.added_us?.p999), fmtSigned(x?.added_path_cpu_s_per_1k_req, 3), fmt(x?.l7_proxy_cpu_s_per_1k_req, 3)];
  const r = h.ratio_ambit_to_haproxy;
  const x = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(2)}x`);
  return [
    row('ambit: waypoint − L4', h.ambit),
    row('HAProxy: L7 − pair', h.haproxy),
    [`ratio ambit / HAProxy${h.ambit?.did_not_keep_up || h.haproxy?.did_not_keep_up ? ' (queue)' : ''}`, x(r?.added_us.p50), x(r?.added_us.p90), x(r?.added_us.p99), x(r?.added_us.p999), x(r?.added_path_cpu), x(r?.l7_proxy_cpu)],
  ];
}

type LatencyJson = { rate: number; order: string[]; scenarios: { scenario: ScenarioKey; label: string; path_verified: boolean; served_rps: number; corrected_us: Percentiles; proxy_cpu_s_per_1k_req?: number; l7_proxy_cpu_s_per_1k_req?: number; errors: number; late: number; behind_schedule_s: number }[]; l7_hop: HopJson }[];

function markdown(
  meta: {
    date: string; kernel: string; node: string; cpus: number; cpu_model: string; load_average: { start: number[]; end: number[] }; ambit_version?: string; src_sha256: string; haproxy_version?: string;
    protocol: Protocol; options: { duration_s: number; warmup_s: number; connections: number }; placement: Record<string, string>; proxy_idle_cpu_percent: Record<string, number | null>;
    rss_after_runs_kb: Record<string, { rss_kb?: number }>; rss_ratio_waypoint_to_haproxy_l7?: number;
    verification: { waypoint: { counted?: number; answered_by_http_load: number; by_outcome: Record<string, number>; upstream_connections_per_request?: number; problems: string[] }; ambit_l4: { problems: string[] }; haproxy: { problems: string[] } };
    waypoint_log: { errors: number; warnings: number; not_ok: Record<string, number>; first: string[] }; restarted_during_runs?: string[]; skipped?: string[];
  },
  latency: LatencyJson,
): string {
  const lines: string[] = [];
  lines.push(`# waypoint (${PROTOCOLS[meta.protocol]}): what the L7 hop costs — ambit's waypoint and an HAProxy HTTP hop`, '');
  lines.push(mdMachineLine(meta, [meta.ambit_version ? `ambit ${meta.ambit_version} (src/ sha256 ${meta.src_sha256})` : undefined, meta.haproxy_version]), '');
  const what = {
    http1: 'HTTP/1.1 keep-alive (bench/http-load.c against bench/http-server.c), 1 KiB responses',
    h2c: 'HTTP/2 with prior knowledge (h2load --rps against nghttpd; haproxy-l7 speaks h2 on both sides), 1 KiB responses',
    grpc: `gRPC unary calls over h2c (h2load --rps POSTs a ${GRPC_REQUEST_BYTES}-byte framed message to ${GRPC_PATH}; nghttpd answers a 1 KiB framed message, grpc-status 0 in the trailers; haproxy-l7 speaks h2 on both sides)`,
  }[meta.protocol];
  const from = meta.protocol === 'http1' ? 'each request\'s scheduled send time (coordinated omission corrected)' : `each request's send (h2load --rps sends a due request at once while fewer than ${H2_STREAMS} streams are open on its connection)`;
  lines.push(`${what}, every request with \`${BENCH_HEADER}: ${BENCH_VALUE}\`, ${meta.options.connections} connections, ${meta.options.duration_s} s per rate per scenario (+${meta.options.warmup_s} s warmup). `
    + `Client on node-1, servers on node-2, the waypoint (and haproxy-l7 beside it) on ${meta.placement.waypoint}. Latency in µs from ${from}. `
    + '"Served": answers per second over the whole run, warmup and drain included (below the rate: the path did not keep up). '
    + 'CPU: utime+stime per 1,000 requests — "path": every proxy on the path (ambit: both node agents, plus the waypoint; HAProxy: haproxy-client and haproxy-server, plus haproxy-l7), "L7 proxy": the waypoint process or haproxy-l7 alone.', '');
  for (const [what, v] of [['ambit waypoint', meta.verification.waypoint], ['ambit L4', meta.verification.ambit_l4], ['HAProxy', meta.verification.haproxy]] as const) {
    if (v.problems.length > 0) lines.push(`**${what}: path not verified** — ${v.problems.join('; ')}.`, '');
  }
  if (meta.restarted_during_runs) lines.push(`**Restarted during the runs:** ${meta.restarted_during_runs.join(', ')} — the runs met its outage, and its CPU figures are missing.`, '');
  lines.push('## Latency and CPU', '');
  const rows: string[][] = [];
  for (const l of latency) {
    for (const r of l.scenarios) {
      rows.push([String(l.rate), r.path_verified ? r.label : `${r.label} (path not verified)`, fmt(r.served_rps, 0), fmt(r.corrected_us.p50), fmt(r.corrected_us.p90), fmt(r.corrected_us.p99), fmt(r.corrected_us.p999),
        fmt(r.proxy_cpu_s_per_1k_req, 3), fmt(r.l7_proxy_cpu_s_per_1k_req, 3), `${r.errors}/${r.late}`]);
    }
  }
  lines.push(...mdTable(['req/s', 'scenario', 'served req/s', 'p50', 'p90', 'p99', 'p99.9', 'path CPU-s / 1k req', 'L7 proxy CPU-s / 1k req', 'errors/late'], rows, 2), '');
  const behind = latency.flatMap((l) => l.scenarios.filter((r) => r.behind_schedule_s > SATURATED_S).map((r) => `${r.label} at ${l.rate} req/s (last answer ${r.behind_schedule_s} s after the last request was due)`));
  if (behind.length > 0) lines.push(`Did not keep up with the rate, so the latencies above measure a growing queue: ${behind.join('; ')}.`, '');
  lines.push('## The L7 hop: added over its own L4 path', '');
  const hop: string[][] = [];
  for (const l of latency) for (const r of hopRows(l.l7_hop)) hop.push([String(l.rate), ...r]);
  lines.push(...mdTable(['req/s', '', '+p50', '+p90', '+p99', '+p99.9', '+path CPU-s / 1k req', 'L7 proxy CPU-s / 1k req'], hop, 2), '');
  lines.push('A ratio is "-" where HAProxy\'s added figure is ≤ 0 (its L7 hop lost in the noise).', '');
  lines.push('## Memory (RSS after the runs)', '');
  const mb = (k: string) => fmt((meta.rss_after_runs_kb[k]?.rss_kb ?? NaN) / 1024);
  lines.push(...mdTable(['process', 'RSS MB'], Object.keys(meta.rss_after_runs_kb).map((k) => [k, mb(k)])), '');
  lines.push(`Waypoint ÷ haproxy-l7: ${fmt(meta.rss_ratio_waypoint_to_haproxy_l7)}×.`, '');
  lines.push('## The waypoint', '');
  const v = meta.verification.waypoint;
  lines.push(`\`istio_requests_total{reporter="waypoint"}\` grew by ${v.counted ?? '?'} for ${v.answered_by_http_load} answers through it; by outcome: ${Object.entries(v.by_outcome).map(([k, n]) => `${k}: ${n}`).join(', ') || 'none'}. `
    + `Connections the waypoint opened to node-2's agent per request: ${fmt(v.upstream_connections_per_request, 2)}.`, '');
  const log = meta.waypoint_log;
  lines.push(`Its log over the runs: ${log.errors} errors, ${log.warnings} warnings${log.first.length > 0 ? ` (${log.first.join('; ')})` : ''}; requests not answered 200 at the first try: ${Object.keys(log.not_ok).length > 0 ? Object.entries(log.not_ok).map(([k, n]) => `${k}: ${n}`).join(', ') : 'none'}.`, '');
  lines.push(`Proxy CPU while idle (sampled before the runs; included in the CPU figures): ${Object.entries(meta.proxy_idle_cpu_percent).map(([k, p]) => `${k} ${fmt(p)}%`).join(', ')}.`, '');
  if (meta.skipped) lines.push(`Skipped: ${meta.skipped.join('; ')}.`, '');
  return `${lines.join('\n').trimEnd()}\n`;
}

runMain('waypoint', USAGE, main);
