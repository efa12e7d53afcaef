/**
 * TCP connect() latency as an application in a pod sees it: without hooks, with ambit's
 * outbound hooks (missing and redirecting), and with iptables REDIRECT, all in one run on one
 * throwaway lab (netns, cgroups, bpffs pin root; removed at the end, also on Ctrl-C).
 * Run as root: `make bench`, or
 *   npx tsx bench/connect-latency.ts [--connects N] [--batch K] [--warmup W] [--out FILE] [--no-iptables]
 *
 * The timing client is bench/connect-loop.c, built here with `cc -O2` (a Node.js client could
 * not resolve a few microseconds through its event loop). One client per scenario runs inside
 * that scenario's pod (lab.spawn: its cgroup, then its netns) for the whole run, and connects
 * when told to over a FIFO: it times each blocking connect() with CLOCK_MONOTONIC, waits for
 * the server to close, and resets. The servers (the app, the plain listener behind iptables,
 * the agent's capture listener) all run in this process and close each connection at once.
 *
 * The machine is noisy, so scenarios are interleaved finely: each round gives every scenario
 * one batch of K connects, in a new random order every round, and every ratio is
 * against the baseline of the same run (per block: against the baseline's same rounds).
 * Every batch is checked to have taken its scenario's path: the server that must accept the
 * connects accepted all of them, and ambit's counters moved exactly as the scenario implies.
 *
 * Lab layout (addresses live on each netns' loopback; nothing reaches the host's network):
 *   cgroups  <lab root>/plain            no program attached at or above it (baseline, iptables)
 *            <lab root>/mesh             datapath A's connect4/connect6/sockops
 *            <lab root>/mesh/{app,pod}   under them
 *            <lab root>/mesh1k           datapath B's: its maps hold 999 synthetic pods too
 *            <lab root>/mesh1k/pod
 *   netns    app    10.201.0.2  app server on :8080               (baseline, hook not matching)
 *            pod    10.201.0.1  enrolled in A: agent on :15001    (ambit redirect)
 *            pod1k  10.201.0.5  enrolled in B: agent on :15001    (ambit redirect, 1000 pods)
 *            ipt    10.201.0.3  REDIRECT rule, listener :15001    (iptables)
 *            ipt1k  10.201.0.4  999 other rules before it         (iptables, 1000 rules)
 * In pod, pod1k, ipt and ipt1k nothing listens on :8080: a connect not redirected fails.
 * Two datapaths (pin roots <lab pin root> and <lab pin root>/1k) rather than adding and
 * removing the 999 entries around each batch: that churn would itself slow the next connects.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Datapath, type CounterName } from '../src/ebpf/datapath.js';
import { AMBIT } from '../src/ebpf/layout.generated.js';
import { Lab } from '../src/local/lab.js';
import { PodEnroller, type PodHandlers } from '../src/node/enroll.js';
import { listenInNetns } from '../src/host/netns.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const APP_PORT = 8080;
const CAPTURE_PORT = AMBIT.PORT_OUTBOUND;
const SYNTHETIC_PODS = 999;
/** Fake netns cookies for the synthetic pods: far above any cookie a real netns gets. */
const SYNTHETIC_COOKIE_BASE = 1n << 48n;
const EXTRA_IPTABLES_RULES = 999;
/** Upper bound on one batch (a batch of 50 takes ~5 ms here; the client's socket timeouts are 5 s). */
const BATCH_TIMEOUT_MS = 120_000;
const BLOCKS = 10;

const say = (line = '') => process.stdout.write(`${line}\n`);

/** Set on SIGINT/SIGTERM: the handler cleans up and exits; failures it causes are not errors. */
let interrupted = false;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  connects: number;
  batch: number;
  warmup: number;
  out: string;
  iptables: boolean;
}

const USAGE = `usage: npx tsx bench/connect-latency.ts [options]   (as root)
  --connects N   recorded connects per scenario (default 20000)
  --batch K      connects per scenario per round; rounds = N / K (default 50)
  --warmup W     unrecorded connects per scenario before the first round (default 500)
  --out FILE     JSON results (default bench/results/connect-latency.json)
  --no-iptables  skip the iptables scenarios`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      connects: { type: 'string', default: '20000' },
      batch: { type: 'string', default: '50' },
      warmup: { type: 'string', default: '500' },
      out: { type: 'string', default: join(HERE, 'results', 'connect-latency.json') },
      'no-iptables': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    say(USAGE);
    process.exit(0);
  }
  const int = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name}: expected an integer in ${min}..${max}, got ${text}`);
    return n;
  };
  const batch = int('batch', values.batch, 1, 1_000_000);
  return {
    connects: int('connects', values.connects, batch, 5_000_000),
    batch,
    warmup: int('warmup', values.warmup, 0, 1_000_000),
    out: values.out,
    iptables: !values['no-iptables'],
  };
}

// ---------------------------------------------------------------------------------------------
// The C client

function buildClient(dir: string): string {
  try {
    execFileSync('cc', ['--version'], { stdio: 'ignore' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error('no C compiler: `cc` is not on PATH; install the Debian package gcc (apt-get install gcc)');
    }
    throw err;
  }
  const bin = join(dir, 'connect-loop');
  try {
    execFileSync('cc', ['-O2', '-Wall', '-o', bin, join(HERE, 'connect-loop.c')], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`cc -O2 bench/connect-loop.c failed:\n${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  return bin;
}

interface BatchResult {
  /** Successful connects. */
  ok: number;
  errors: number;
  /** The first failed connect's errno name. */
  errno: string;
  /** Servers that did not close within the client's 5 s. */
  stalls: number;
  /** Latency of each successful connect, ns. */
  ns: number[];
}

/** One connect-loop process in a pod, run batch by batch through a FIFO. */
class LoopClient {
  private readonly child: ChildProcess;
  private readonly control: number;
  private readonly lines: string[] = [];
  private waiting: ((line: string | undefined) => void) | undefined;
  private ended = false;
  private stderr = '';

  constructor(lab: Lab, private readonly name: string, bin: string, fifo: string, netns: string, cgroup: string, host: string, port: number) {
    execFileSync('mkfifo', ['-m', '600', fifo]);
    // Read-write: opening does not wait for the reader, and the reader never sees end of file.
    this.control = openSync(fifo, 'r+');
    this.child = lab.spawn(netns, cgroup, [bin, host, String(port), '--control', fifo]);
    this.child.stderr?.on('data', (c: Buffer) => { this.stderr += c.toString(); });
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
      const waiting = this.waiting;
      this.waiting = undefined;
      if (waiting) waiting(line);
      else this.lines.push(line);
    });
    rl.on('close', () => {
      this.ended = true;
      this.waiting?.(undefined);
      this.waiting = undefined;
    });
  }

  private nextLine(): Promise<string | undefined> {
    const queued = this.lines.shift();
    if (queued !== undefined || this.ended) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        this.child.kill('SIGKILL');
        reject(new Error(`${this.name}: no answer from connect-loop within ${BATCH_TIMEOUT_MS / 1000} s`));
      }, BATCH_TIMEOUT_MS);
      this.waiting = (line) => { clearTimeout(timer); resolve(line); };
    });
  }

  async batch(connects: number): Promise<BatchResult> {
    writeSync(this.control, `${connects}\n`);
    const line = await this.nextLine();
    if (line === undefined) throw new Error(`${this.name}: connect-loop exited (${this.child.exitCode ?? this.child.signalCode}): ${this.stderr.trim()}`);
    return JSON.parse(line) as BatchResult;
  }

  /** Tells the client to stop; lab.cleanup() kills it if it does not. */
  stop(): void {
    try {
      writeSync(this.control, '0\n');
    } finally {
      closeSync(this.control);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Servers: accept, count, close at once (FIN; the client then resets).

interface CountingServer {
  accepted: number;
}

function serve(netnsPath: string, host: string, port: number): Promise<{ server: Server; counter: CountingServer }> {
  const counter: CountingServer = { accepted: 0 };
  const fd = listenInNetns(netnsPath, host, port);
  const server = createServer((socket: Socket) => {
    counter.accepted++;
    socket.destroy();
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ fd }, () => resolve({ server, counter }));
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

// ---------------------------------------------------------------------------------------------
// iptables, run inside the netns with nsenter (`ip netns exec` would remount /sys).

function nsenter(netnsPath: string, cmd: string[], input?: string): string {
  return execFileSync('nsenter', [`--net=${netnsPath}`, '--', ...cmd], {
    input, stdio: ['pipe', 'pipe', 'pipe'], encoding: 'utf8',
  });
}

function redirectRule(dst: string): string {
  return `-A OUTPUT -p tcp -d ${dst}/32 -j REDIRECT --to-ports ${CAPTURE_PORT}`;
}

/** The REDIRECT rule for `dst`, after `extraRules` rules for other destinations (never matched). */
function addIptables(netnsPath: string, dst: string, extraRules: number): void {
  if (extraRules === 0) {
    nsenter(netnsPath, ['iptables', '-t', 'nat', ...redirectRule(dst).split(' ')]);
    return;
  }
  const lines = ['*nat'];
  for (let i = 0; i < extraRules; i++) lines.push(redirectRule(`10.202.${i >> 8}.${i & 255}`));
  lines.push(redirectRule(dst), 'COMMIT', '');
  nsenter(netnsPath, ['iptables-restore', '--noflush'], lines.join('\n'));
}

function iptablesRuleCount(netnsPath: string): number {
  return nsenter(netnsPath, ['iptables', '-t', 'nat', '-S', 'OUTPUT']).split('\n').filter((l) => l.startsWith('-A OUTPUT')).length;
}

// ---------------------------------------------------------------------------------------------
// Statistics

interface Stats {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  mean: number;
}

/** Nearest-rank percentiles and the mean, in microseconds. */
function stats(ns: number[]): Stats {
  const sorted = Float64Array.from(ns).sort();
  const n = sorted.length;
  const at = (q: number) => (n === 0 ? NaN : (sorted[Math.min(n - 1, Math.ceil(q * n) - 1)] ?? NaN) / 1000);
  let sum = 0;
  for (const v of sorted) sum += v;
  return { n, p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: n === 0 ? NaN : sum / n / 1000 };
}

/** A copy of `items` in random order (Fisher-Yates). */
function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

// ---------------------------------------------------------------------------------------------
// Scenarios

interface ScenarioSpec {
  key: string;
  label: string;
  netns: string;
  cgroup: string;
  host: string;
  port: number;
  /** The server that must accept every connect. */
  server: CountingServer;
  /** The outbound hook counter every connect must bump (and whose); none when no hook runs. */
  counter?: [Datapath, CounterName];
}

interface Scenario extends ScenarioSpec {
  client: LoopClient;
  /** Recorded latencies (ns) per block of rounds. */
  blocks: number[][];
  errors: number;
  stalls: number;
  firstErrno: string;
  problems: string[];
}

const WATCHED: CounterName[] = ['connect_redirected', 'connect_not_enrolled', 'connect_excluded', 'errors'];

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('run as root: the bench makes network namespaces, cgroups and bpffs pins');

  const tmp = mkdtempSync(join(tmpdir(), 'ambit-bench-'));
  const lab = new Lab('ambit-bench');
  // One cleanup, whoever asks first: the signal handler or the end of main.
  let cleaning: Promise<void> | undefined;
  const cleanup = () => (cleaning ??= lab.cleanup().finally(() => rmSync(tmp, { recursive: true, force: true })));
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: removing lab ${lab.id}\n`);
    void cleanup().catch((err: unknown) => process.stderr.write(`cleanup: ${String(err)}\n`)).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const bin = buildClient(tmp);

    // The hooks go on `mesh`; `plain` is its sibling, with no program attached at or above it.
    const plainCg = lab.cgroup('plain');
    const meshCg = lab.cgroup('mesh');
    const appCg = lab.cgroup('mesh/app');
    const mesh1kCg = lab.cgroup('mesh1k');

    const appNs = lab.netns('app');
    lab.addresses(appNs, '10.201.0.2/32');

    const app = await serve(appNs, '10.201.0.2', APP_PORT);
    lab.defer(() => closeServer(app.server));

    // The agent's outbound handler: counts, checks the original destination, closes.
    let wrongDst = 0;
    const agentFor = (podIp: string) => {
      const counter: CountingServer = { accepted: 0 };
      const handlers: PodHandlers = {
        outbound(socket, dst) {
          counter.accepted++;
          if (dst?.addr !== podIp || dst.port !== APP_PORT) wrongDst++;
          socket.destroy();
        },
        inbound(socket) { socket.destroy(); },
        hbone(socket) { socket.destroy(); },
      };
      return { counter, handlers };
    };
    /** A datapath on its own pin root and cgroup, with one pod enrolled in it. */
    const meshWith = async (pinRoot: string, cgroup: string, podName: string, podIp: string) => {
      if (pinRoot !== lab.pinRoot) lab.defer(() => Datapath.remove(pinRoot));
      const datapath = Datapath.load({ pinRoot });
      lab.defer(() => datapath.close());
      datapath.attachOutbound(cgroup);
      const netns = lab.netns(podName);
      lab.addresses(netns, `${podIp}/32`);
      const podCg = lab.cgroup(`${cgroup.slice(lab.cgroupRoot.length + 1)}/pod`);
      const agent = agentFor(podIp);
      const enroller = new PodEnroller(datapath, agent.handlers);
      lab.defer(() => enroller.unenrollAll());
      const pod = await enroller.enroll({ name: `bench/${podName}`, netnsPath: netns, cgroupPath: podCg, ips: [podIp] });
      return { datapath, netns, podCg, pod, agent: agent.counter };
    };
    const a = await meshWith(lab.pinRoot, meshCg, 'pod', '10.201.0.1');
    const b = await meshWith(join(lab.pinRoot, '1k'), mesh1kCg, 'pod1k', '10.201.0.5');
    // 999 more pods' worth of entries in B's ambit_pods (the real pod's config, fake netns cookies).
    for (let i = 0; i < SYNTHETIC_PODS; i++) {
      const cookie = SYNTHETIC_COOKIE_BASE + BigInt(i);
      if (cookie === b.pod.netnsCookie) throw new Error(`the pod's netns cookie ${cookie} collides with a synthetic one`);
      b.datapath.maps.pods.set(cookie, b.pod.config);
    }
    for (const [dp, n] of [[a.datapath, 1], [b.datapath, SYNTHETIC_PODS + 1]] as const) {
      const found = [...dp.maps.pods.keys()].length;
      if (found !== n) throw new Error(`expected ${n} entries in ambit_pods under ${dp.pinRoot}, found ${found}`);
    }
    const datapaths = [a.datapath, b.datapath];

    const specs: ScenarioSpec[] = [
      { key: 'baseline', label: 'baseline (no hook)', netns: appNs, cgroup: plainCg, host: '10.201.0.2', port: APP_PORT, server: app.counter },
      {
        key: 'hook-miss', label: 'hook attached, not enrolled', netns: appNs, cgroup: appCg, host: '10.201.0.2', port: APP_PORT,
        server: app.counter, counter: [a.datapath, 'connect_not_enrolled'],
      },
      {
        key: 'ambit-redirect', label: 'ambit redirect', netns: a.netns, cgroup: a.podCg, host: '10.201.0.1', port: APP_PORT,
        server: a.agent, counter: [a.datapath, 'connect_redirected'],
      },
      {
        key: 'ambit-redirect-1000', label: 'ambit redirect, 1000 pods', netns: b.netns, cgroup: b.podCg, host: '10.201.0.5', port: APP_PORT,
        server: b.agent, counter: [b.datapath, 'connect_redirected'],
      },
    ];

    let iptablesVersion = '';
    const skipped: string[] = [];
    if (options.iptables) {
      for (const [name, ip, extra, key, label] of [
        ['ipt', '10.201.0.3', 0, 'iptables', 'iptables REDIRECT'],
        ['ipt1k', '10.201.0.4', EXTRA_IPTABLES_RULES, 'iptables-1000', 'iptables REDIRECT, 1000 rules'],
      ] as const) {
        try {
          iptablesVersion ||= execFileSync('iptables', ['--version'], { encoding: 'utf8' }).trim();
          const ns = lab.netns(name);
          lab.addresses(ns, `${ip}/32`);
          // A plain listener where the agent's would be.
          const listener = await serve(ns, '127.0.0.1', CAPTURE_PORT);
          lab.defer(() => closeServer(listener.server));
          addIptables(ns, ip, extra);
          const rules = iptablesRuleCount(ns);
          if (rules !== extra + 1) throw new Error(`expected ${extra + 1} nat OUTPUT rules, found ${rules}`);
          specs.push({ key, label, netns: ns, cgroup: plainCg, host: ip, port: APP_PORT, server: listener.counter });
        } catch (err) {
          const stderr = (err as { stderr?: string }).stderr?.trim();
          const why = `${key}: ${(err as Error).message.split('\n')[0] ?? String(err)}${stderr ? `: ${stderr}` : ''}`;
          skipped.push(why);
          process.stderr.write(`skipped ${why}\n`);
        }
      }
    } else {
      skipped.push('iptables scenarios: --no-iptables');
    }

    const rounds = Math.floor(options.connects / options.batch);
    const connects = rounds * options.batch;
    const blocks = Math.min(BLOCKS, rounds);
    const scenarios: Scenario[] = specs.map((spec, i) => {
      const client = new LoopClient(lab, spec.key, bin, join(tmp, `control-${i}`), spec.netns, spec.cgroup, spec.host, spec.port);
      lab.defer(() => client.stop());
      return { ...spec, client, blocks: Array.from({ length: blocks }, () => []), errors: 0, stalls: 0, firstErrno: '', problems: [] };
    });

    /** Runs one batch and checks it took the scenario's path; returns the latencies. */
    const runBatch = async (s: Scenario, size: number, what: string): Promise<number[]> => {
      const counters0 = datapaths.map((dp) => dp.counters());
      const accepted0 = s.server.accepted;
      const wrongDst0 = wrongDst;
      const result = await s.client.batch(size);
      const counters1 = datapaths.map((dp) => dp.counters());
      s.errors += result.errors;
      s.stalls += result.stalls;
      s.firstErrno ||= result.errno;
      const accepted = s.server.accepted - accepted0;
      if (accepted !== result.ok) s.problems.push(`${what}: the server accepted ${accepted} of ${result.ok} connects`);
      datapaths.forEach((dp, i) => {
        for (const name of WATCHED) {
          const delta = (counters1[i]?.[name] ?? 0n) - (counters0[i]?.[name] ?? 0n);
          const want = s.counter?.[0] === dp && s.counter[1] === name ? BigInt(result.ok + result.errors) : 0n;
          if (delta !== want) s.problems.push(`${what}: ${dp.pinRoot} counter ${name} +${delta}, expected +${want}`);
        }
      });
      if (wrongDst !== wrongDst0) s.problems.push(`${what}: ${wrongDst - wrongDst0} captured connects without their original destination`);
      return result.ns;
    };

    say(`ambit connect() latency: lab ${lab.id}, kernel ${release()}, node ${process.version}, ${cpus().length} CPUs`);
    say(`${scenarios.length} scenarios x ${rounds} rounds x ${options.batch} connects, interleaved (+${options.warmup} warmup each)`);

    for (const s of scenarios) if (options.warmup > 0 && !interrupted) await runBatch(s, options.warmup, 'warmup');
    const started = Date.now();
    let lastReport = started;
    for (let round = 0; round < rounds && !interrupted; round++) {
      const block = Math.floor((round * blocks) / rounds);
      // A new random order every round: no scenario always runs first, or after the same one.
      for (const s of shuffled(scenarios)) {
        if (interrupted) break;
        const ns = await runBatch(s, options.batch, `round ${round}`);
        s.blocks[block]?.push(...ns);
      }
      if (Date.now() - lastReport > 5000) {
        lastReport = Date.now();
        process.stderr.write(`round ${round + 1}/${rounds} (${((lastReport - started) / 1000).toFixed(0)} s)\n`);
      }
    }
    if (interrupted) return;
    const elapsed = (Date.now() - started) / 1000;

    // ---- report
    const baseline = scenarios[0] as Scenario;
    const base = stats(baseline.blocks.flat());
    const baseBlocks = baseline.blocks.map((b) => stats(b).p50);
    const rows = scenarios.map((s) => {
      const st = stats(s.blocks.flat());
      const blockRatios = s.blocks.map((b, i) => stats(b).p50 / (baseBlocks[i] ?? NaN)).sort((a, b) => a - b);
      return {
        scenario: s.key,
        label: s.label,
        connects: st.n,
        p50_us: round2(st.p50),
        p90_us: round2(st.p90),
        p99_us: round2(st.p99),
        mean_us: round2(st.mean),
        p50_ratio: round2(st.p50 / base.p50),
        p99_ratio: round2(st.p99 / base.p99),
        p50_ratio_per_block: { min: round2(blockRatios[0] ?? NaN), max: round2(blockRatios[blockRatios.length - 1] ?? NaN) },
        errors: s.errors,
        first_errno: s.firstErrno || undefined,
        stalls: s.stalls,
        path_verified: s.problems.length === 0,
        problems: s.problems.length > 0 ? s.problems.slice(0, 10) : undefined,
      };
    });

    const header = ['scenario', 'p50 us', 'p90 us', 'p99 us', 'mean us', 'p50 x', 'p99 x', `p50 x, ${blocks} blocks`];
    const body = rows.map((r) => [
      r.label, r.p50_us.toFixed(1), r.p90_us.toFixed(1), r.p99_us.toFixed(1), r.mean_us.toFixed(1),
      r.p50_ratio.toFixed(2), r.p99_ratio.toFixed(2),
      `${r.p50_ratio_per_block.min.toFixed(2)}-${r.p50_ratio_per_block.max.toFixed(2)}`,
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
    const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
    say();
    say(line(header));
    say(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const b of body) say(line(b));
    say();
    say(`${connects} connects per scenario, ${rounds} interleaved rounds of ${options.batch}, ${elapsed.toFixed(1)} s; x = ratio to the baseline of this run.`);
    for (const why of skipped) say(`skipped ${why}`);
    for (const r of rows) {
      if (r.errors > 0 || r.stalls > 0) say(`WARNING ${r.scenario}: ${r.errors} failed connects (first: ${r.first_errno ?? '?'}), ${r.stalls} stalls`);
      for (const p of r.problems ?? []) say(`WARNING ${r.scenario}: ${p}`);
    }

    const result = {
      benchmark: 'connect-latency',
      date: new Date().toISOString(),
      kernel: release(),
      node: process.version,
      cpus: cpus().length,
      cpu_model: cpus()[0]?.model ?? '',
      iptables: iptablesVersion || undefined,
      skipped: skipped.length > 0 ? skipped : undefined,
      connects,
      rounds,
      batch: options.batch,
      warmup: options.warmup,
      blocks,
      elapsed_s: Math.round(elapsed * 10) / 10,
      unit: 'microseconds',
      scenarios: rows,
    };
    mkdirSync(dirname(options.out), { recursive: true });
    writeFileSync(options.out, `${JSON.stringify(result, null, 2)}\n`);
    say(`results: ${options.out}`);
    if (rows.some((r) => !r.path_verified || r.errors > 0)) process.exitCode = 1;
  } finally {
    await cleanup();
    if (!interrupted) {
      const leftNetns = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(`ambit-${lab.id}-`));
      const left = [...leftNetns, ...[lab.pinRoot, lab.cgroupRoot].filter((p) => existsSync(p))];
      if (left.length > 0) {
        process.stderr.write(`lab ${lab.id} left behind: ${left.join(', ')}\n`);
        process.exitCode = 1;
      }
    }
  }
}

main().catch((err: unknown) => {
  if (interrupted) return; // the signal handler exits once the lab is gone
  process.stderr.write(`connect-latency: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
