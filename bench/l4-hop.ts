/**
 * One L4 hop between two pods on two nodes of a local ambit cluster, three ways in one run:
 *   direct        client pod → server pod, namespace `plain` (not meshed)
 *   ambit L4      the same in namespace `mesh`, labelled ambit.dev/dataplane-mode: ambient: the
 *                 node agents redirect, carry the bytes over mTLS/HBONE and deliver
 *   HAProxy pair  in `plain`: client → haproxy-client (node-1; TCP mode, plaintext in, TLS 1.3
 *                 out with a client certificate) → haproxy-server (node-2; terminates TLS,
 *                 verifies the client certificate against the bench's CA) → server pod
 * Run as root:
 *   npx tsx bench/l4-hop.ts [--duration S] [--warmup S] [--rates 1000,5000] [--connections 4]
 *                           [--no-haproxy] [--no-iperf] [--pods 1,10,100] [--keep]
 *
 * Per scenario it measures latency at fixed request rates (bench/http-load.c, wrk2-style, from
 * each request's scheduled send time) against bench/http-server.c (1 KiB answers), the CPU the
 * proxies spend per 1,000 requests (utime + stime of the node agents or of the two haproxy
 * processes, from /proc), their RSS after the runs, and bulk throughput with iperf3. Then the
 * node-1 agent's RSS with 1, 10 and 100 enrolled pods.
 *
 * Every path is checked: the ambit scenario counts only when the node-2 agent's
 * istio_tcp_connections_opened_total{reporter="destination"} grew over the runs (otherwise the
 * traffic went around the mesh: WARNING, path_verified false, exit status 1); the HAProxy
 * scenario only when haproxy-server's TLS frontends (verify required) and the backends behind
 * them passed connections, from their stats sockets.
 *
 * The cluster (`ambit local up --name l4hop-<random>`, state under the bench's temp dir) is
 * removed at the end, on failure and on Ctrl-C, unless --keep; the C programs and certificates
 * live in the temp dir, which goes with it. The bench then checks that nothing is left: no
 * `ambit-<cluster>.*` netns, no cgroup, no process naming the temp dir or the cluster.
 * Results: bench/results/l4-hop.json and bench/results/l4-hop.md.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BenchRun, Cluster, METRICS_PORT, MESH_LABEL, RESULTS, SATURATED_S, agents, build, comparePercentiles, cpuDelta, cpuFields, cpuSample,
  fetchMetrics, fixedRateRuns, fmt, fmtSigned, haproxyCommon, haproxyStats, haproxyTcpRoutes, haproxyTlsBind, haproxyTlsServer, idleCpuPercent, intListArg,
  interrupted, loadAtStart, loadNow, machine, makeCertificates, mdMachineLine, mdTable, namespace, need, parseBenchOptions, parseMetrics, pod, podOf, podProcess,
  reachable, round, runFields, runMain, runWarnings, say, table, tail, version, vmRssKb, warn, writeManifests,
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
/** node-1 holds 253 pod addresses; the bench's own pods take a few. */
const MAX_RSS_PODS = 240;

// ---------------------------------------------------------------------------------------------
// Options

interface Options extends CommonOptions {
  haproxy: boolean;
  iperf: boolean;
  pods: number[];
}

const USAGE = `usage: npx tsx bench/l4-hop.ts [options]   (as root)
  --duration S       recorded seconds per rate per scenario (default 10)
  --warmup S         unrecorded seconds at the same rate before each run (default 2)
  --rates R,R        request rates, requests/s (default 1000,5000)
  --connections N    keep-alive connections per run (default 4)
  --no-haproxy       skip the HAProxy pair
  --no-iperf         skip the iperf3 throughput runs
  --pods N,N         enrolled pods on node-1 for the node agent's RSS steps (default 1,10,100)
  --keep             leave the cluster and the temp dir up (prints how to remove them)`;

function parseOptions(argv: string[]): Options {
  const { common, values } = parseBenchOptions(argv, USAGE, { duration: '10', warmup: '2', rates: '1000,5000', connections: '4' }, {
    'no-haproxy': { type: 'boolean', default: false },
    'no-iperf': { type: 'boolean', default: false },
    pods: { type: 'string', default: '1,10,100' },
  });
  return {
    ...common,
    haproxy: !values['no-haproxy'],
    iperf: !values['no-iperf'],
    pods: intListArg('pods', String(values.pods), 1, MAX_RSS_PODS),
  };
}

// ---------------------------------------------------------------------------------------------
// Build: the tools, the HAProxy pair's certificates and configurations

function checkTools(options: Options): { cc: string; haproxy?: string; openssl?: string; iperf3?: string; sleep: string } {
  return {
    cc: need('cc', 'gcc'),
    sleep: need('sleep', 'coreutils'),
    ...(options.haproxy ? { haproxy: need('haproxy', 'haproxy'), openssl: need('openssl', 'openssl') } : {}),
    ...(options.iperf ? { iperf3: need('iperf3', 'iperf3') } : {}),
  };
}

/** An ECDSA P-256 CA, and a server and a client certificate it signs (PEM: certificate + key). */
function certificates(openssl: string, dir: string): { ca: string; server: string; client: string } {
  const { ca, leaf } = makeCertificates(openssl, dir, 'ambit l4-hop bench CA', [
    { file: 'server', san: 'DNS:haproxy-server', usage: 'serverAuth' },
    { file: 'client', san: 'DNS:haproxy-client,URI:spiffe://cluster.local/ns/plain/sa/client', usage: 'clientAuth' },
  ]);
  return { ca, server: leaf.server as string, client: leaf.client as string };
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
// Scenarios

type ScenarioKey = 'direct' | 'ambit' | 'haproxy';

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

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('run as root: the local cluster makes network namespaces, cgroups and nftables tables');
  const tools = checkTools(options);

  // The cluster and the temp dir go at the end, on failure and on Ctrl-C (unless --keep).
  const bench = new BenchRun('l4hop', options.keep);
  const { tmp, name, cluster } = bench;
  bench.handleSignals();

  try {
    const loadBin = build(tools.cc, tmp, 'http-load');
    const serverBin = build(tools.cc, tmp, 'http-server');
    const certs = tools.openssl ? certificates(tools.openssl, tmp) : undefined;
    const haproxyVersion = tools.haproxy ? version(tools.haproxy, ['-v']) : '';
    const iperfVersion = tools.iperf3 ? version(tools.iperf3, ['--version']) : '';

    const loadStart = loadAtStart('ambit L4 hop', name);
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
    if (tools.haproxy && certs) {
      // haproxy-server first: haproxy-client's configuration needs its address.
      writeFileSync(join(tmp, 'haproxy-server.cfg'), haproxyServerConfig(serverSock, certs, ipOf('plain', 'http-server'), tools.iperf3 ? ipOf('plain', 'iperf3-server') : '127.0.0.1'));
      await cluster.up(writeManifests(join(tmp, 'manifests', '2-haproxy-server'), [
        pod('plain', 'haproxy-server', 'node-2', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-server.cfg')], { image: IMAGE }),
      ]), 60);
      status = await cluster.status();
      writeFileSync(join(tmp, 'haproxy-client.cfg'), haproxyClientConfig(clientSock, certs, ipOf('plain', 'haproxy-server')));
      await cluster.up(writeManifests(join(tmp, 'manifests', '3-haproxy-client'), [
        pod('plain', 'haproxy-client', 'node-1', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-client.cfg')], { image: IMAGE }),
      ]), 60);
      status = await cluster.status();
    }

    // ---- who does the proxying
    const nodeAgents = agents(status);
    const haproxyPids = (p: string): Proxy[] => [podProcess(cluster.layout, status, 'plain', p, 'haproxy')];
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
    const byKey = (k: ScenarioKey) => scenarios.find((s) => s.key === k);
    if (nodeAgents.length === 0) {
      warn('no node-agent component in `ambit local status`: pods in the ambient namespace run un-meshed, so "ambit L4" measures the direct path');
    }

    // ---- every path answers before anything is measured
    for (const s of scenarios) {
      if (interrupted()) return;
      const why = await reachable(cluster, loadBin, s);
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

    // ---- the proxies' CPU while nothing is sent: a baseline included in every CPU figure below
    const allProxies = running.flatMap((s) => s.proxies);
    const idlePercent = await idleCpuPercent(allProxies, IDLE_SAMPLE_MS);

    // ---- latency at fixed rates, scenarios in a new random order per rate
    const latency = await fixedRateRuns(cluster, loadBin, running, scenarios, options);
    if (!latency) return;
    opened.push({ phase: 'after latency', ...await openedConnections(cluster, node2) });
    await haproxySnapshot('after latency');

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
    const loadEnd = loadNow();
    const haproxyVerified = byKey('haproxy') ? haproxyProblems.length === 0 && !byKey('haproxy')?.unreachable : undefined;

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
        const h = r.scenario === 'ambit' ? hap(l.rate) : undefined;
        return {
          scenario: r.scenario,
          label: r.label,
          ...(r.scenario === 'ambit' ? { path_verified: pathVerified } : {}),
          ...(r.scenario === 'haproxy' ? { path_verified: haproxyVerified } : {}),
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
    const rssJson = Object.fromEntries(Object.entries(rss).map(([k, procs]) => [k, {
      processes: procs,
      total_kb: procs.every((p) => p.rss_kb !== undefined) ? procs.reduce((s, p) => s + (p.rss_kb ?? 0), 0) : undefined,
    }]));
    const skipped = [
      ...(options.haproxy ? [] : ['HAProxy pair (--no-haproxy)']),
      ...(options.iperf ? [] : ['iperf3 throughput (--no-iperf)']),
      ...scenarios.filter((s) => s.unreachable).map((s) => `${s.label}: unreachable (${s.unreachable})`),
      ...(agentRssSkipped ? [`node agent RSS steps: ${agentRssSkipped}`] : []),
    ];
    const result = {
      benchmark: 'l4-hop',
      ...machine(),
      haproxy_version: haproxyVersion || undefined,
      iperf3_version: iperfVersion || undefined,
      cluster: name,
      load_average: { start: loadStart, end: loadEnd },
      options: { duration_s: options.duration, warmup_s: options.warmup, rates: options.rates, connections: options.connections, response_bytes: 1024, iperf_seconds: IPERF_SECONDS, pods: options.pods },
      path_verified: pathVerified,
      haproxy_verified: haproxyVerified,
      verification: {
        ambit: { node_agents: nodeAgents.map((a) => ({ node: a.node, pid: a.pid })), metric: `${OPENED_METRIC}{reporter="destination"} on node-2`, samples: opened, connections_opened_by_fixed_rate_runs: meshConnects, problems: ambitProblems },
        haproxy: byKey('haproxy') ? { session_deltas: haproxyDeltas, problems: haproxyProblems } : undefined,
      },
      skipped: skipped.length > 0 ? skipped : undefined,
      unit: 'microseconds, from each request\'s scheduled send time (corrected for coordinated omission)',
      latency: latencyJson,
      proxy_idle_cpu_percent: idlePercent,
      proxy_rss_after_runs: rssJson,
      throughput: iperfJson.length > 0 ? iperfJson : undefined,
      agent_rss: agentRssSkipped ? { skipped: agentRssSkipped } : { node: 'node-1', steps: agentRss },
    };

    // stdout
    const mark = (k: ScenarioKey) => (k === 'ambit' && !pathVerified ? ' (!)' : k === 'haproxy' && haproxyVerified === false ? ' (!)' : '');
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
      for (const [k, v] of Object.entries(rssJson)) say(`  ${byKey(k as ScenarioKey)?.label ?? k}: ${v.processes.map((p) => `${p.process} ${fmt((p.rss_kb ?? NaN) / 1024)} MB`).join(', ')}; total ${fmt((v.total_kb ?? NaN) / 1024)} MB`);
    }
    if (iperfJson.length > 0) {
      say();
      say(`iperf3, 1 stream, ${IPERF_SECONDS} s, node-1 → node-2:`);
      for (const line of table(['scenario', 'Gbit/s', 'x direct', 'x HAProxy', 'retransmits', 'proxy CPU-s/GB'], iperfJson.map((r) => [
        `${r.label}${mark(r.scenario)}`, fmt(r.gbit_s, 2), fmt(r.ratio_vs_direct, 2), fmt(r.ratio_vs_haproxy, 2), r.retransmits === undefined ? '-' : String(r.retransmits), fmt(r.proxy_cpu_s_per_gb, 3),
      ]))) say(line);
    }
    say();
    if (agentRssSkipped) say(`node agent RSS steps skipped: ${agentRssSkipped}`);
    else say(`node-1 agent RSS: ${agentRss.map((a) => `${a.enrolled} pods ${fmt((a.rss_kb ?? NaN) / 1024)} MB`).join(', ')}`);
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

    mkdirSync(RESULTS, { recursive: true });
    const jsonPath = join(RESULTS, 'l4-hop.json');
    const mdPath = join(RESULTS, 'l4-hop.md');
    writeFileSync(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(mdPath, markdown(result, latencyJson, iperfJson, rssJson, byKey));
    say(`results: ${jsonPath}, ${mdPath}`);

    const failed = latencyJson.some((l) => l.scenarios.some((r) => r.errors > 0)) || scenarios.some((s) => s.unreachable) || iperf.some((r) => r.error);
    if (!pathVerified || haproxyVerified === false || failed) process.exitCode = 1;
  } finally {
    await bench.finish();
  }
}
type LatencyJson = { rate: number; order: ScenarioKey[]; scenarios: { scenario: ScenarioKey; label: string; path_verified?: boolean; corrected_us: Percentiles; added_vs_direct_us?: Record<string, number>; ratio_vs_direct?: Record<string, number>; ratio_vs_haproxy?: Record<string, number>; proxy_cpu_s_per_1k_req?: number; errors: number; late: number; behind_schedule_s: number }[] }[];
type IperfJson = { scenario: ScenarioKey; label: string; gbit_s?: number; bytes?: number; ratio_vs_direct?: number; ratio_vs_haproxy?: number; retransmits?: number; proxy_cpu_s?: number; proxy_cpu_s_per_gb?: number; error?: string }[];
type RssJson = Record<string, { processes: { process: string; rss_kb?: number }[]; total_kb?: number }>;

function markdown(
  meta: { date: string; kernel: string; node: string; cpus: number; cpu_model: string; load_average: { start: number[]; end: number[] }; proxy_idle_cpu_percent: Record<string, number | null>; haproxy_version?: string; iperf3_version?: string; options: { duration_s: number; warmup_s: number; connections: number }; path_verified: boolean; haproxy_verified?: boolean; verification: { ambit: { problems: string[] } }; agent_rss: { skipped?: string; steps?: { pods: number; enrolled: number; rss_kb?: number }[] }; skipped?: string[] },
  latency: LatencyJson, iperf: IperfJson, rss: RssJson, byKey: (k: ScenarioKey) => Scenario | undefined,
): string {
  const lines: string[] = [];
  const verified = (k: ScenarioKey) => (k === 'ambit' ? meta.path_verified : k === 'haproxy' ? meta.haproxy_verified !== false : true);
  const label = (k: ScenarioKey, l: string) => (verified(k) ? l : `${l} (path not verified)`);
  lines.push('# l4-hop: one L4 hop between two nodes', '');
  lines.push(mdMachineLine(meta, [meta.haproxy_version, meta.iperf3_version]), '');
  lines.push(`HTTP/1.1 keep-alive, 1 KiB responses, ${meta.options.connections} connections, ${meta.options.duration_s} s per rate per scenario (+${meta.options.warmup_s} s warmup). Latency in µs from each request's scheduled send time (coordinated omission corrected); "+" is added over direct, "x" a ratio. CPU: proxies' utime+stime per 1,000 requests (ambit: both node agents; HAProxy: both haproxy processes).`, '');
  if (!meta.path_verified) {
    lines.push(`**ambit L4: path not verified** — ${meta.verification.ambit.problems.join('; ')}. Its figures are not the mesh's.`, '');
  }
  if (meta.haproxy_verified === false) lines.push('**HAProxy pair: path not verified** (see the JSON).', '');
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
    lines.push(...mdTable(['scenario', 'processes (MB each)', 'RSS MB'], Object.entries(rss).map(([k, v]) => [
      label(k as ScenarioKey, byKey(k as ScenarioKey)?.label ?? k), v.processes.map((p) => `${p.process} ${fmt((p.rss_kb ?? NaN) / 1024)}`).join(', '), fmt((v.total_kb ?? NaN) / 1024),
    ]), 2), '');
  }
  if (iperf.length > 0) {
    lines.push('## Bulk throughput (iperf3, 1 stream, 5 s, node-1 → node-2)', '');
    lines.push(...mdTable(['scenario', 'Gbit/s', 'x direct', 'x HAProxy', 'retransmits', 'proxy CPU-s / GB'], iperf.map((r) => [
      label(r.scenario, r.label), r.error ? `failed: ${r.error.split('\n')[0]}` : fmt(r.gbit_s, 2), fmt(r.ratio_vs_direct, 2), fmt(r.ratio_vs_haproxy, 2), r.retransmits === undefined ? '-' : String(r.retransmits), fmt(r.proxy_cpu_s_per_gb, 3),
    ])), '');
  }
  lines.push('## Node agent RSS on node-1', '');
  if (meta.agent_rss.skipped) lines.push(`Skipped: ${meta.agent_rss.skipped}.`, '');
  else lines.push(...mdTable(['enrolled pods', 'RSS MB'], (meta.agent_rss.steps ?? []).map((s) => [String(s.enrolled), fmt((s.rss_kb ?? NaN) / 1024)])), '');
  const other = (meta.skipped ?? []).filter((s) => !s.startsWith('node agent'));
  if (other.length > 0) lines.push('Skipped: ' + other.join('; ') + '.', '');
  return `${lines.join('\n').trimEnd()}\n`;
}
runMain('l4-hop', USAGE, main);
