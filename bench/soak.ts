/**
 * Soak and overload of the node agent on a 2-node local cluster: what an agent keeps while it
 * carries many connections for a long time, and what it does when offered more than it can carry.
 *
 *   npx tsx bench/soak.ts [--held 10000] [--hold-seconds 600] [--short 1000000] [--short-rate 1500]
 *                         [--overload] [--keep]
 *
 * - held: `--held` connections opened through the mesh (client pod on node-1 → echo pod on
 *   node-2, each one a TCP connection that echoes a line) and kept for `--hold-seconds`, then
 *   closed; the agents' RSS, file descriptors, tables and BPF maps are sampled all along.
 * - short: `--short` connections, each opened, echoed and closed, at `--short-rate` per second.
 *   After a warm-up (the first tenth), the agents' RSS must stay within ±5 % of its mean, and
 *   after everything closes the fds, tables and maps must be back to their baseline.
 * - overload (`--overload`): the client's agent's capacity for new connections (the highest
 *   rate it serves with ≥ 99 % success), then three times that offered: what it shed and why
 *   (`ambit_connections_refused_total`), whether it stayed up and bounded, and that it serves
 *   again at half its capacity afterwards.
 *
 * `runSoak()` is also what test/integration/soak.test.ts runs, at CI's sizes. Figures go to
 * bench/results/soak.json and soak.md (full runs only).
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseExposition } from '../src/observe/exposition.js';
import { httpGetInNetns } from '../src/host/netns.js';
import { BenchRun, HERE, RESULTS, say, type Cluster, type ConnRateResult, type Status } from './lib.js';

const CONN_RATE = join(HERE, 'conn-rate.mjs');

export const SOAK_APP = `
apiVersion: v1
kind: Namespace
metadata: { name: soak, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: soak }
spec: { selector: { app: echo }, ports: [{ name: tcp, port: 7000, targetPort: 7000 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: echo, namespace: soak, labels: { app: echo } }
spec:
  nodeName: node-2
  containers:
  - name: c
    command: [node, -e, 'require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); }).listen({ port: 7000, backlog: 4096 })']
    readinessProbe: { tcpSocket: { port: 7000 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: soak }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
${[1, 2, 3, 4].map((i) => `---
apiVersion: v1
kind: Pod
metadata: { name: client-${i}, namespace: soak }
spec: { nodeName: node-1, containers: [{ name: c, command: [sleep, infinity] }] }
`).join('')}`;

/** Concurrent tunnels one client pod may hold to one node (HBONE maxStreamsPerPeer, default 2048): held connections are spread over the client pods by this. */
const PER_CLIENT = 2000;
const CLIENTS = ['client', 'client-1', 'client-2', 'client-3', 'client-4'];

/** One look at a node agent: its process and what its metrics say it keeps. */
export interface AgentSample {
  at: number;
  node: string;
  pid: number;
  rssMb: number;
  fds: number;
  tables: Record<string, number>;
  maps: Record<string, number>;
  refused: Record<string, number>;
  /** The datapath's own counters (ambit_redirect_counters): exact, where the map counts are cached for 15 s. */
  counters: Record<string, number>;
  /** The event loop's delay (ms, ambit_event_loop_lag_seconds) and whether the agent sheds (ambit_overloaded). */
  lagMs: number;
  overloaded: boolean;
}

/** `ambit_orig_dst` entries still open by the datapath's counters: recorded at connect, deleted at close. */
export const origDstOpen = (s: AgentSample): number => (s.counters.origdst_recorded ?? 0) - (s.counters.origdst_deleted ?? 0);


function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Samples every node agent: RSS and fds from /proc, tables, maps and refusals from its /metrics. */
export async function sampleAgents(cluster: Cluster, status: Status): Promise<AgentSample[]> {
  const underlay = `/run/netns/${cluster.layout.underlayNetns}`;
  return Promise.all(status.components.filter((c) => c.name === 'node-agent' && c.pid).map(async (c) => {
    const ip = status.nodes.find((n) => n.name === c.node)!.ip;
    const { body } = await httpGetInNetns(underlay, ip, 15020, '/metrics');
    const tables: Record<string, number> = {};
    const maps: Record<string, number> = {};
    const refused: Record<string, number> = {};
    const counters: Record<string, number> = {};
    let lagMs = 0;
    let overloaded = false;
    for (const s of parseExposition(body).samples) {
      if (s.name === 'ambit_event_loop_lag_seconds') lagMs = s.value * 1000;
      if (s.name === 'ambit_overloaded') overloaded = s.value === 1;
      if (s.name === 'ambit_redirect_counters') counters[s.labels.counter!] = s.value;
      if (s.name === 'ambit_agent_table_entries') tables[s.labels.table!] = s.value;
      if (s.name === 'ambit_bpf_map_entries') maps[s.labels.map!] = s.value;
      if (s.name === 'ambit_connections_refused_total') refused[`${s.labels.reason}/${s.labels.listener}`] = s.value;
      if (s.name === 'ambit_hbone_server_connections') tables.hbone_server_connections = s.value;
    }
    return { at: Date.now(), node: c.node!, pid: c.pid!, rssMb: rssMb(c.pid!), fds: readdirSync(`/proc/${c.pid}/fd`).length, tables, maps, refused, counters, lagMs, overloaded };
  }));
}

/** Runs conn-rate in the client pod. */
export async function connRate(cluster: Cluster, args: Record<string, string | number>, timeoutMs: number, client = 'client'): Promise<ConnRateResult> {
  const argv = Object.entries(args).flatMap(([k, v]) => [`--${k}`, String(v)]);
  const r = await cluster.exec(`soak/${client}`, ['node', CONN_RATE, '--host', 'echo', '--port', '7000', '--mode', 'connect', ...argv], timeoutMs);
  if (r.code !== 0) throw new Error(`conn-rate ${argv.join(' ')} exited ${r.code}: ${r.stderr.slice(-500)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ConnRateResult;
}

export interface SoakOptions {
  held: number;
  holdSeconds: number;
  short: number;
  shortRate: number;
  overload: boolean;
  /** Seconds between agent samples. */
  sampleSeconds: number;
  log?: (line: string) => void;
}

export interface SoakResult {
  baseline: AgentSample[];
  held: { count: number; opened: ConnRateResult; during: AgentSample[]; after: AgentSample[] };
  short: { run: ConnRateResult; samples: AgentSample[]; after: AgentSample[]; rss: Record<string, { mean: number; min: number; max: number; spreadPct: number }> };
  overload?: { capacity: number; steps: Array<{ rate: number; ok: number; failed: number; okShare: number; p99: number | null }>; offered: ConnRateResult; during: AgentSample[]; recovery: ConnRateResult; after: AgentSample[] };
}

const by = (samples: AgentSample[], node: string) => samples.filter((s) => s.node === node);

/** Samples the agents every `everyS` seconds while `work` runs. */
async function sampling<T>(cluster: Cluster, everyS: number, work: Promise<T>): Promise<{ result: T; samples: AgentSample[] }> {
  const samples: AgentSample[] = [];
  let done = false;
  const watcher = (async () => {
    const status = await cluster.status();
    while (!done) {
      samples.push(...await sampleAgents(cluster, status).catch(() => []));
      await new Promise((r) => setTimeout(r, everyS * 1000));
    }
  })();
  try {
    return { result: await work, samples };
  } finally {
    done = true;
    await watcher;
  }
}

/**
 * Waits until every agent's connection table, and its `ambit_orig_dst` entries by the datapath's
 * counters, are back to at most `baseline + slack`: connections close asynchronously, and a
 * socket's entry goes when the kernel closes it (after FIN_WAIT, or a SYN's last retry).
 */
async function settle(cluster: Cluster, baseline: AgentSample[], slack: number, timeoutMs: number): Promise<AgentSample[]> {
  const status = await cluster.status();
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await sampleAgents(cluster, status);
    const settled = now.every((s) => {
      const b = baseline.find((x) => x.node === s.node);
      return (s.tables.connections ?? 0) <= (b?.tables.connections ?? 0) + slack && origDstOpen(s) <= (b ? origDstOpen(b) : 0) + slack;
    });
    if (settled || Date.now() > deadline) return now;
    await new Promise((r) => setTimeout(r, 500));
  }
}

export async function runSoak(cluster: Cluster, opts: SoakOptions): Promise<SoakResult> {
  const log = opts.log ?? (() => undefined);
  const status = await cluster.status();
  const baseline = await sampleAgents(cluster, status);
  log(`baseline: ${baseline.map((s) => `${s.node} ${s.rssMb.toFixed(0)} MB, ${s.fds} fds`).join('; ')}`);

  // Held: opened at up to 1,000/s, each held past the end of the opening.
  const openRate = Math.min(1000, opts.held);
  const openSeconds = Math.max(1, Math.ceil(opts.held / openRate));
  const holdMs = opts.holdSeconds * 1000 + openSeconds * 1000;
  log(`holding ${opts.held} connections for ${opts.holdSeconds} s`);
  // Spread over the client pods: one pod holds at most PER_CLIENT tunnels to one node.
  const clients = CLIENTS.slice(0, Math.ceil(opts.held / PER_CLIENT));
  const share = (i: number) => Math.floor(opts.held / clients.length) + (i < opts.held % clients.length ? 1 : 0);
  const heldRun = sampling(cluster, opts.sampleSeconds, Promise.all(clients.map((client, i) => {
    const n = share(i);
    const rate = Math.max(1, Math.round(n / openSeconds));
    return connRate(cluster, { rate, seconds: openSeconds, 'hold-ms': holdMs, 'timeout-ms': 30_000 }, holdMs + 120_000, client);
  })));
  const { result: parts, samples: during } = await heldRun;
  const opened: ConnRateResult = {
    ...parts[0]!, rate: parts.reduce((a, p) => a + p.rate, 0), attempted: parts.reduce((a, p) => a + p.attempted, 0), ok: parts.reduce((a, p) => a + p.ok, 0), failed: parts.reduce((a, p) => a + p.failed, 0),
    reasons: parts.reduce<Record<string, number>>((acc, p) => { for (const [k, v] of Object.entries(p.reasons)) acc[k] = (acc[k] ?? 0) + v; return acc; }, {}),
  };
  const afterHeld = await settle(cluster, baseline, 5, 60_000);
  log(`held: ${opened.ok} ok, ${opened.failed} failed ${JSON.stringify(opened.reasons)}`);

  // Short: many connections, one after the other at a fixed rate.
  const shortSeconds = Math.max(1, Math.round(opts.short / opts.shortRate));
  log(`${opts.short} short connections at ${opts.shortRate}/s (${shortSeconds} s)`);
  const { result: shortRun, samples: shortSamples } = await sampling(cluster, opts.sampleSeconds, connRate(cluster, { rate: opts.shortRate, seconds: shortSeconds, 'timeout-ms': 10_000 }, shortSeconds * 1000 + 120_000));
  const afterShort = await settle(cluster, baseline, 5, 60_000);
  const rss: SoakResult['short']['rss'] = {};
  for (const node of new Set(shortSamples.map((s) => s.node))) {
    const mine = by(shortSamples, node);
    const warm = mine.slice(Math.ceil(mine.length / 10)).map((s) => s.rssMb);
    if (warm.length === 0) continue;
    const mean = warm.reduce((a, b) => a + b, 0) / warm.length;
    rss[node] = { mean, min: Math.min(...warm), max: Math.max(...warm), spreadPct: ((Math.max(...warm) - Math.min(...warm)) / 2 / mean) * 100 };
  }
  log(`short: ${shortRun.ok} ok, ${shortRun.failed} failed ${JSON.stringify(shortRun.reasons)}; RSS after warm-up ${Object.entries(rss).map(([n, r]) => `${n} ${r.min.toFixed(0)}-${r.max.toFixed(0)} MB (±${r.spreadPct.toFixed(1)} %)`).join(', ')}`);

  const result: SoakResult = {
    baseline,
    held: { count: opts.held, opened, during, after: afterHeld },
    short: { run: shortRun, samples: shortSamples, after: afterShort, rss },
  };

  if (opts.overload) {
    const steps: NonNullable<SoakResult['overload']>['steps'] = [];
    let capacity = 0;
    for (const rate of [250, 500, 1000, 1500, 2000, 3000, 4000]) {
      const r = await connRate(cluster, { rate, seconds: 10, 'timeout-ms': 5000 }, 90_000);
      const okShare = r.ok / r.attempted;
      steps.push({ rate, ok: r.ok, failed: r.failed, okShare, p99: r.latencyMs.p99 });
      log(`capacity step ${rate}/s: ${(okShare * 100).toFixed(1)} % ok, p99 ${r.latencyMs.p99} ms`);
      if (okShare >= 0.99 && (r.latencyMs.p99 ?? Infinity) < 1000) capacity = rate;
      else break;
      await settle(cluster, baseline, 5, 30_000);
    }
    const offeredRate = Math.max(1, capacity * 3);
    log(`offering ${offeredRate}/s (3 × ${capacity}) for 30 s`);
    const { result: offered, samples: overloadSamples } = await sampling(cluster, 1, connRate(cluster, { rate: offeredRate, seconds: 30, 'timeout-ms': 5000 }, 150_000));
    await settle(cluster, baseline, 5, 60_000);
    const recovery = await connRate(cluster, { rate: Math.max(1, Math.floor(capacity / 2)), seconds: 20, 'timeout-ms': 5000 }, 120_000);
    const afterOverload = await settle(cluster, baseline, 5, 60_000);
    log(`overload: ${offered.ok} ok, ${offered.failed} failed ${JSON.stringify(offered.reasons)}; recovery at ${Math.floor(capacity / 2)}/s: ${recovery.ok}/${recovery.attempted} ok`);
    result.overload = { capacity, steps, offered, during: overloadSamples, recovery, after: afterOverload };
  }
  return result;
}

function report(r: SoakResult, opts: SoakOptions): string {
  const lines = ['# Soak and overload (bench/soak.ts)', '', `${opts.held} connections held for ${opts.holdSeconds} s; ${opts.short} short connections at ${opts.shortRate}/s; 2-node local cluster, client on node-1, echo on node-2.`, ''];
  lines.push('| agent | baseline RSS / fds | held: peak RSS / fds / connections | after: RSS / fds / connections | short: RSS after warm-up (spread) | after: fds / orig_dst open of recorded / pending |', '|---|---|---|---|---|---|');
  for (const b of r.baseline) {
    const during = by(r.held.during, b.node);
    const peak = during.reduce((m, s) => (s.rssMb > m.rssMb ? s : m), during[0] ?? b);
    const ah = r.held.after.find((s) => s.node === b.node)!;
    const as = r.short.after.find((s) => s.node === b.node)!;
    const rss = r.short.rss[b.node];
    lines.push(`| ${b.node} | ${b.rssMb.toFixed(0)} MB / ${b.fds} | ${peak.rssMb.toFixed(0)} MB / ${Math.max(...during.map((s) => s.fds), 0)} / ${Math.max(...during.map((s) => s.tables.connections ?? 0), 0)} | ${ah.rssMb.toFixed(0)} MB / ${ah.fds} / ${ah.tables.connections} | ${rss ? `${rss.min.toFixed(0)}–${rss.max.toFixed(0)} MB (±${rss.spreadPct.toFixed(1)} %)` : '-'} | ${as.fds} / ${origDstOpen(as)} of ${as.counters.origdst_recorded ?? 0} / ${as.maps.ambit_pending} |`);
  }
  lines.push('', `Held: ${r.held.opened.ok} ok, ${r.held.opened.failed} failed ${JSON.stringify(r.held.opened.reasons)}. Short: ${r.short.run.ok} ok, ${r.short.run.failed} failed ${JSON.stringify(r.short.run.reasons)}.`);
  if (r.overload) {
    const o = r.overload;
    lines.push('', '## Overload', '', '| offered /s | ok | failed | p99 ms |', '|---|---|---|---|', ...o.steps.map((s) => `| ${s.rate} | ${s.ok} | ${s.failed} | ${s.p99 ?? '-'} |`));
    const refused = o.after.map((s) => `${s.node}: ${JSON.stringify(s.refused)}`).join('; ');
    lines.push('', `Capacity (≥ 99 % ok, p99 < 1 s): ${o.capacity}/s. Offered ${o.offered.rate}/s for 30 s: ${o.offered.ok} ok, ${o.offered.failed} failed ${JSON.stringify(o.offered.reasons)}; refused by the agents: ${refused}. Peak RSS during: ${Math.max(...o.during.map((s) => s.rssMb)).toFixed(0)} MB. Recovery at ${o.recovery.rate}/s: ${o.recovery.ok}/${o.recovery.attempted} ok.`);
    const lag = r.baseline.map((b) => {
      const mine = by(o.during, b.node);
      return `${b.node} peak ${Math.max(0, ...mine.map((s) => s.lagMs)).toFixed(0)} ms, shedding in ${mine.filter((s) => s.overloaded).length} of ${mine.length} one-second samples`;
    });
    lines.push('', `Event loop delay while offered: ${lag.join('; ')}.`);
  }
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    held: { type: 'string', default: '10000' }, 'hold-seconds': { type: 'string', default: '600' }, short: { type: 'string', default: '1000000' },
    'short-rate': { type: 'string', default: '1500' }, overload: { type: 'boolean', default: false }, keep: { type: 'boolean', default: false },
  } });
  const opts: SoakOptions = { held: Number(values.held), holdSeconds: Number(values['hold-seconds']), short: Number(values.short), shortRate: Number(values['short-rate']), overload: values.overload!, sampleSeconds: 5, log: (l) => say(l) };
  const run = new BenchRun('soak', values.keep!);
  run.handleSignals();
  try {
    const dir = join(run.tmp, 'app');
    mkdirSync(dir);
    writeFileSync(join(dir, 'soak.yaml'), SOAK_APP);
    run.created = true;
    await run.cluster.up(dir, 180);
    const result = await runSoak(run.cluster, opts);
    mkdirSync(RESULTS, { recursive: true });
    writeFileSync(join(RESULTS, 'soak.json'), `${JSON.stringify({ options: opts, ...result }, null, 1)}\n`);
    const md = report(result, opts);
    writeFileSync(join(RESULTS, 'soak.md'), md);
    say(md);
  } finally {
    await run.finish();
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
