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
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { ClusterLayout } from '../src/local/layout.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const AMBIT_CLI = join(HERE, '..', 'bin', 'ambit.js');
const RESULTS = join(HERE, 'results');

const HTTP_PORT = 8080;
const IPERF_PORT = 5201;
/** haproxy-server's TLS ports: one per backend (HTTP server, iperf3 server). */
const HAPROXY_TLS_HTTP = 8443;
const HAPROXY_TLS_IPERF = 5443;
const METRICS_PORT = 15020;
const OPENED_METRIC = 'istio_tcp_connections_opened_total';
const IPERF_SECONDS = 5;
/** How long http-load waits for outstanding responses after the last request is due. */
const DRAIN_S = 5;
/** A run whose last answer comes later than this after the last request was due did not keep up. */
const SATURATED_S = 0.1;
/** How long the proxies' idle CPU is sampled before the runs. */
const IDLE_SAMPLE_MS = 3000;
/** Time the node agent gets after the pods of an RSS step run. */
const AGENT_SETTLE_MS = 2000;
/** node-1 holds 253 pod addresses; the bench's own pods take a few. */
const MAX_RSS_PODS = 240;
const MESH_LABEL = 'ambit.dev/dataplane-mode';

const say = (line = '') => process.stdout.write(`${line}\n`);
const warn = (line: string) => say(`WARNING ${line}`);

/** Set on SIGINT/SIGTERM: the handler cleans up and exits; failures it causes are not errors. */
let interrupted = false;

// ---------------------------------------------------------------------------------------------
// Options

interface Options {
  duration: number;
  warmup: number;
  rates: number[];
  connections: number;
  haproxy: boolean;
  iperf: boolean;
  pods: number[];
  keep: boolean;
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

class UsageError extends Error {}

function parseOptions(argv: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        duration: { type: 'string', default: '10' },
        warmup: { type: 'string', default: '2' },
        rates: { type: 'string', default: '1000,5000' },
        connections: { type: 'string', default: '4' },
        'no-haproxy': { type: 'boolean', default: false },
        'no-iperf': { type: 'boolean', default: false },
        pods: { type: 'string', default: '1,10,100' },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    say(USAGE);
    process.exit(0);
  }
  const number = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (text.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name}: expected a number in ${min}..${max}, got "${text}"`);
    return n;
  };
  const intList = (name: string, text: string, min: number, max: number): number[] => {
    const items = text.split(',').map((t) => t.trim());
    const list = items.map((t) => {
      const n = Number(t);
      if (t === '' || !Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name}: expected comma-separated integers in ${min}..${max}, got "${text}"`);
      return n;
    });
    for (let i = 1; i < list.length; i++) {
      if ((list[i] as number) <= (list[i - 1] as number)) throw new UsageError(`--${name}: values must be increasing and distinct, got "${text}"`);
    }
    return list;
  };
  const connections = number('connections', values.connections, 1, 1000);
  if (!Number.isInteger(connections)) throw new UsageError(`--connections: expected an integer, got "${values.connections}"`);
  const options: Options = {
    duration: number('duration', values.duration, 1, 3600),
    warmup: number('warmup', values.warmup, 0, 600),
    rates: intList('rates', values.rates, 1, 100_000),
    connections,
    haproxy: !values['no-haproxy'],
    iperf: !values['no-iperf'],
    pods: intList('pods', values.pods, 1, MAX_RSS_PODS),
    keep: values.keep,
  };
  for (const rate of options.rates) {
    if (rate * options.duration < connections) throw new UsageError(`--rates ${rate} x --duration ${options.duration} gives fewer requests than --connections ${connections}`);
  }
  return options;
}

// ---------------------------------------------------------------------------------------------
// Processes

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command to its end (or SIGTERM, then SIGKILL, at timeoutMs); never rejects on exit status. */
function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs: number }): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 3000).unref();
    }, opts.timeoutMs);
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr, timedOut }); });
  });
}

const tail = (text: string, lines = 12) => text.trim().split('\n').slice(-lines).join('\n');

/** The absolute path of an executable on PATH (plus the sbin directories), or undefined. */
function which(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const path = join(dir, name);
    try {
      accessSync(path, fsConstants.X_OK);
      return path;
    } catch { /* not here */ }
  }
  return undefined;
}

function version(cmd: string, args: string[]): string {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return out.split('\n')[0]?.trim() ?? '';
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------------------------
// The cluster, through the ambit CLI

interface StatusPod { namespace: string; name: string; node: string; ip: string; phase: string; containers: { name: string; pid?: number }[] }
interface StatusComponent { name: string; node?: string; pid?: number; state: string; detail: string }
interface Status {
  nodes: { name: string; ip: string }[];
  pods: StatusPod[];
  components: StatusComponent[];
}

class Cluster {
  readonly layout: ClusterLayout;

  constructor(readonly name: string, private readonly env: NodeJS.ProcessEnv) {
    this.layout = new ClusterLayout(name);
  }

  private ambit(sub: string, args: string[], timeoutMs: number): Promise<RunResult> {
    return run(process.execPath, [AMBIT_CLI, 'local', sub, '--name', this.name, ...args], { env: this.env, timeoutMs });
  }

  private static fail(what: string, r: RunResult): never {
    throw new Error(`${what} ${r.timedOut ? 'timed out' : `failed (exit ${r.code})`}:\n${tail(`${r.stdout}\n${r.stderr}`)}`);
  }

  async up(dir: string, timeoutS: number): Promise<void> {
    const r = await this.ambit('up', ['--timeout', String(timeoutS), '-f', dir], (timeoutS + 60) * 1000);
    if (r.code !== 0) Cluster.fail(`ambit local up -f ${dir}`, r);
  }

  async status(): Promise<Status> {
    const r = await this.ambit('status', ['--json'], 30_000);
    if (r.code !== 0) Cluster.fail('ambit local status', r);
    return JSON.parse(r.stdout) as Status;
  }

  exec(target: string, cmd: string[], timeoutMs: number): Promise<RunResult> {
    return this.ambit('exec', [target, '--', ...cmd], timeoutMs);
  }

  execNode(node: string, cmd: string[], timeoutMs: number): Promise<RunResult> {
    return this.ambit('exec', ['--node', node, '--', ...cmd], timeoutMs);
  }

  async down(): Promise<void> {
    const r = await this.ambit('down', [], 120_000);
    if (r.code !== 0) Cluster.fail(`ambit local down --name ${this.name}`, r);
  }
}

function podOf(status: Status, ns: string, name: string): StatusPod {
  const pod = status.pods.find((p) => p.namespace === ns && p.name === name);
  if (!pod || !pod.ip) throw new Error(`pod ${ns}/${name} is not in \`ambit local status\``);
  return pod;
}

function agents(status: Status): StatusComponent[] {
  return status.components.filter((c) => c.name === 'node-agent' && c.pid !== undefined);
}

// ---------------------------------------------------------------------------------------------
// Manifests

type Doc = Record<string, unknown>;

function namespace(name: string, labels?: Record<string, string>): Doc {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, ...(labels ? { labels } : {}) } };
}

function pod(ns: string, name: string, node: string, command: string[]): Doc {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { app: name } },
    spec: {
      nodeName: node,
      terminationGracePeriodSeconds: 2,
      containers: [{ name: 'main', image: 'ambit.dev/bench/l4-hop', command }],
    },
  };
}

function writeManifests(dir: string, docs: Doc[]): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'manifests.yaml'), docs.map((d) => stringify(d)).join('---\n'));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Build: the C programs and the HAProxy pair's certificates

function checkTools(options: Options): { cc: string; haproxy?: string; openssl?: string; iperf3?: string; sleep: string } {
  const need = (name: string, pkg: string) => {
    const path = which(name);
    if (!path) throw new Error(`\`${name}\` is not installed: run scripts/setup.sh --bench (Debian package ${pkg})`);
    return path;
  };
  return {
    cc: need('cc', 'gcc'),
    sleep: need('sleep', 'coreutils'),
    ...(options.haproxy ? { haproxy: need('haproxy', 'haproxy'), openssl: need('openssl', 'openssl') } : {}),
    ...(options.iperf ? { iperf3: need('iperf3', 'iperf3') } : {}),
  };
}

function build(cc: string, dir: string, name: string): string {
  const bin = join(dir, name);
  try {
    execFileSync(cc, ['-O2', '-Wall', '-o', bin, join(HERE, `${name}.c`), '-lm'], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`cc -O2 bench/${name}.c failed:\n${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  return bin;
}

/** An ECDSA P-256 CA, and a server and a client certificate it signs (PEM: certificate + key). */
function makeCertificates(openssl: string, dir: string): { ca: string; server: string; client: string } {
  const ossl = (args: string[]) => execFileSync(openssl, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  try {
    ossl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=ambit l4-hop bench CA']);
    for (const [who, san, usage] of [
      ['server', 'DNS:haproxy-server', 'serverAuth'],
      ['client', 'DNS:haproxy-client,URI:spiffe://cluster.local/ns/plain/sa/client', 'clientAuth'],
    ] as const) {
      writeFileSync(join(dir, `${who}.ext`), `subjectAltName=${san}\nextendedKeyUsage=${usage}\nkeyUsage=digitalSignature\n`);
      ossl(['req', ...ec, '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=haproxy-${who}`]);
      ossl(['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${who}.crt`, '-extfile', `${who}.ext`]);
      writeFileSync(join(dir, `${who}.pem`), readFileSync(join(dir, `${who}.crt`), 'utf8') + readFileSync(join(dir, `${who}.key`), 'utf8'));
    }
  } catch (err) {
    throw new Error(`openssl failed making the HAProxy certificates:\n${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  return { ca: join(dir, 'ca.pem'), server: join(dir, 'server.pem'), client: join(dir, 'client.pem') };
}

const HAPROXY_COMMON = (statsSocket: string) => `global
    nbthread 1
    maxconn 4096
    stats socket ${statsSocket} mode 600 level user

defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
`;

function haproxyServerConfig(sock: string, certs: { ca: string; server: string }, http: string, iperf: string): string {
  const bind = (port: number) => `bind 0.0.0.0:${port} ssl crt ${certs.server} ca-file ${certs.ca} verify required ssl-min-ver TLSv1.3`;
  return `${HAPROXY_COMMON(sock)}
frontend http_tls
    ${bind(HAPROXY_TLS_HTTP)}
    default_backend http

frontend iperf_tls
    ${bind(HAPROXY_TLS_IPERF)}
    default_backend iperf

backend http
    server app ${http}:${HTTP_PORT}

backend iperf
    server app ${iperf}:${IPERF_PORT}
`;
}

function haproxyClientConfig(sock: string, certs: { ca: string; client: string }, server: string): string {
  const upstream = (port: number) =>
    `server tls ${server}:${port} ssl verify required ca-file ${certs.ca} crt ${certs.client} sni str(haproxy-server) verifyhost haproxy-server ssl-min-ver TLSv1.3`;
  return `${HAPROXY_COMMON(sock)}
frontend http
    bind 0.0.0.0:${HTTP_PORT}
    default_backend http

frontend iperf
    bind 0.0.0.0:${IPERF_PORT}
    default_backend iperf

backend http
    ${upstream(HAPROXY_TLS_HTTP)}

backend iperf
    ${upstream(HAPROXY_TLS_IPERF)}
`;
}

/** `show stat` over a stats socket: sessions total (`stot`) per "proxy/FRONTEND|BACKEND|server". */
function haproxyStats(socketPath: string): Promise<Map<string, number>> {
  return new Promise((resolve, reject) => {
    const sock = connect({ path: socketPath });
    let text = '';
    const timer = setTimeout(() => sock.destroy(new Error(`no answer on ${socketPath} within 5 s`)), 5000);
    sock.on('connect', () => sock.write('show stat\n'));
    sock.on('data', (c: Buffer) => { text += c.toString(); });
    sock.on('error', (err) => { clearTimeout(timer); reject(err); });
    sock.on('close', () => {
      clearTimeout(timer);
      const lines = text.split('\n').filter((l) => l.trim() !== '');
      const header = lines[0]?.replace(/^# /, '').split(',') ?? [];
      const stot = header.indexOf('stot');
      if (stot < 0) return reject(new Error(`unexpected answer to "show stat" on ${socketPath}: ${text.slice(0, 200)}`));
      const out = new Map<string, number>();
      for (const line of lines.slice(1)) {
        const f = line.split(',');
        out.set(`${f[0]}/${f[1]}`, Number(f[stot] ?? NaN));
      }
      resolve(out);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// /proc: CPU time and RSS of the proxies

const CLK_TCK = (() => {
  const n = Number(version('getconf', ['CLK_TCK']));
  return Number.isInteger(n) && n > 0 ? n : 100;
})();

interface ProcInfo { ppid: number; ticks: number }

/** Every process's parent and utime + stime (the whole thread group's, as /proc/PID/stat gives it). */
function processTable(): Map<number, ProcInfo> {
  const table = new Map<number, ProcInfo>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Fields after the command (which may hold spaces and parentheses): state is field 3.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      table.set(Number(entry), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    } catch { /* exited meanwhile */ }
  }
  return table;
}

/** pid and all its descendants. */
function tree(pid: number, table: Map<number, ProcInfo>): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    for (const [child, info] of table) if (info.ppid === out[i]) out.push(child);
  }
  return out.filter((p) => table.has(p));
}

function vmRssKb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

interface Proxy { name: string; pid: number }

interface CpuSample { at: number; byProxy: Map<string, { pid: number; ticks: number }> }

function cpuSample(proxies: Proxy[]): CpuSample {
  const table = processTable();
  const byProxy = new Map<string, { pid: number; ticks: number }>();
  for (const p of proxies) {
    byProxy.set(p.name, { pid: p.pid, ticks: tree(p.pid, table).reduce((sum, q) => sum + (table.get(q)?.ticks ?? 0), 0) });
  }
  return { at: Date.now(), byProxy };
}

/** CPU seconds per proxy between two samples; undefined for one whose process changed (restarted). */
function cpuDelta(a: CpuSample, b: CpuSample): { total?: number; byProxy: Record<string, number | null> } {
  const byProxy: Record<string, number | null> = {};
  let total: number | undefined = 0;
  for (const [name, before] of a.byProxy) {
    const after = b.byProxy.get(name);
    if (!after || after.pid !== before.pid) {
      byProxy[name] = null;
      total = undefined;
      continue;
    }
    const s = (after.ticks - before.ticks) / CLK_TCK;
    byProxy[name] = round(s, 3);
    if (total !== undefined) total += s;
  }
  if (a.byProxy.size === 0) total = undefined;
  return { ...(total !== undefined ? { total } : {}), byProxy };
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

const round = (x: number, digits = 2) => (Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : NaN);

function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

/** A markdown table; the first `left` columns are left-aligned, the others (figures) right-aligned. */
function mdTable(header: string[], rows: string[][], left = 1): string[] {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i < left ? '---' : '---:')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

const fmt = (x: number | undefined | null, digits = 1) => (x === undefined || x === null || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const fmtSigned = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? '-' : `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`);

// ---------------------------------------------------------------------------------------------
// Scenarios

type ScenarioKey = 'direct' | 'ambit' | 'haproxy';

interface Endpoint { ip: string; port: number }

interface Scenario {
  key: ScenarioKey;
  label: string;
  /** The namespace of the client pod (`<ns>/client`). */
  ns: string;
  http: Endpoint;
  iperf: Endpoint;
  /** The processes doing the proxying (empty for direct, or for ambit without node agents). */
  proxies: Proxy[];
  /** Why the scenario did not run, when it did not. */
  unreachable?: string;
}

interface Percentiles { p50: number; p75: number; p90: number; p99: number; p999: number; p9999: number; max: number; mean: number }

interface LoadResult {
  rate: number;
  scheduled: number;
  completed: number;
  errors: number;
  late: number;
  completed_all: number;
  errors_all: number;
  non_200: number;
  connects: number;
  connect_errors: number;
  achieved_rps: number;
  elapsed_s: number;
  corrected_us: Percentiles;
  uncorrected_us: Percentiles;
  first_error: string;
  error?: string;
}

async function loadRun(cluster: Cluster, bin: string, s: Scenario, args: { rate: number; connections: number; duration: number; warmup: number }): Promise<LoadResult> {
  const cmd = [bin, '--host', s.http.ip, '--port', String(s.http.port), '--rate', String(args.rate), '--connections', String(args.connections),
    '--duration', String(args.duration), '--warmup', String(args.warmup), '--drain', String(DRAIN_S)];
  const r = await cluster.exec(`${s.ns}/client`, cmd, (args.duration + args.warmup + DRAIN_S + 60) * 1000);
  const line = r.stdout.trim().split('\n').pop() ?? '';
  let result: LoadResult;
  try {
    result = JSON.parse(line) as LoadResult;
  } catch {
    throw new Error(`http-load in ${s.ns}/client gave no result (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${tail(`${r.stdout}\n${r.stderr}`)}`);
  }
  if (result.error) throw new Error(`http-load in ${s.ns}/client could not connect to ${s.http.ip}:${s.http.port}: ${result.first_error}`);
  return result;
}

/** A run that gave no result: every recorded request counts as failed. */
function failedRun(rate: number, duration: number, why: string): LoadResult {
  const none: Percentiles = { p50: NaN, p75: NaN, p90: NaN, p99: NaN, p999: NaN, p9999: NaN, max: NaN, mean: NaN };
  const scheduled = Math.round(rate * duration);
  return {
    rate, scheduled, completed: 0, errors: scheduled, late: 0, completed_all: 0, errors_all: scheduled, non_200: 0, connects: 0, connect_errors: 0,
    achieved_rps: 0, elapsed_s: NaN, corrected_us: none, uncorrected_us: { ...none }, first_error: why.split('\n')[0] ?? why,
  };
}

/** A few requests through the scenario's path, retried while the servers start. */
async function reachable(cluster: Cluster, bin: string, s: Scenario): Promise<string | undefined> {
  let last = '';
  for (let attempt = 0; attempt < 6 && !interrupted; attempt++) {
    if (attempt > 0) await sleep(1000);
    try {
      const r = await loadRun(cluster, bin, s, { rate: 50, connections: 1, duration: 1, warmup: 0 });
      if (r.completed === r.scheduled && r.errors === 0) return undefined;
      last = `${r.completed} of ${r.scheduled} requests answered (${r.first_error || 'late'})`;
    } catch (err) {
      last = (err as Error).message;
    }
  }
  return last;
}

interface IperfResult { gbit_s: number; retransmits: number; bytes: number }

async function iperfRun(cluster: Cluster, iperf3: string, s: Scenario): Promise<IperfResult> {
  let last = '';
  for (let attempt = 0; attempt < 4 && !interrupted; attempt++) {
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
  const script = 'fetch(process.argv[1], { signal: AbortSignal.timeout(3000) })'
    + '.then(async (r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); process.stdout.write(await r.text()); })'
    + '.catch((e) => { process.stderr.write(String(e && e.cause ? e.cause : e)); process.exit(2); });';
  const r = await cluster.execNode(node.name, [process.execPath, '-e', script, url], 30_000);
  if (r.code !== 0) return { error: `no metrics from ${url} in ${node.name}'s netns: ${tail(r.stderr, 2) || `exit ${r.code}`}` };
  let sum = 0;
  let seen = 0;
  for (const line of r.stdout.split('\n')) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== OPENED_METRIC || !(m[2] ?? '').includes('reporter="destination"')) continue;
    sum += Number(m[3]);
    seen++;
  }
  if (seen === 0) return { value: 0, error: `${url} has no ${OPENED_METRIC}{reporter="destination"} series` };
  return { value: sum };
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('run as root: the local cluster makes network namespaces, cgroups and nftables tables');
  const tools = checkTools(options);

  const tmp = mkdtempSync(join(tmpdir(), 'ambit-l4hop-'));
  const name = `l4hop-${Math.random().toString(36).slice(2, 8).padEnd(6, '0')}`;
  const env: NodeJS.ProcessEnv = { ...process.env, AMBIT_LOCAL_STATE: join(tmp, 'state') };
  const cluster = new Cluster(name, env);
  const removeHint = `AMBIT_LOCAL_STATE=${env.AMBIT_LOCAL_STATE} npx ambit local down --name ${name} && rm -rf ${tmp}`;
  let created = false;

  // One cleanup, whoever asks first: the signal handler or the end of main.
  let cleaning: Promise<void> | undefined;
  const cleanup = () => (cleaning ??= (async () => {
    if (options.keep) {
      say(`--keep: cluster ${name} and ${tmp} left up; remove them with:\n  ${removeHint}`);
      return;
    }
    try {
      if (created) await cluster.down();
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  })());
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: removing cluster ${name}\n`);
    void cleanup().catch((err: unknown) => process.stderr.write(`cleanup: ${String(err)}\n${removeHint}\n`)).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const loadBin = build(tools.cc, tmp, 'http-load');
    const serverBin = build(tools.cc, tmp, 'http-server');
    const certs = tools.openssl ? makeCertificates(tools.openssl, tmp) : undefined;
    const haproxyVersion = tools.haproxy ? version(tools.haproxy, ['-v']) : '';
    const iperfVersion = tools.iperf3 ? version(tools.iperf3, ['--version']) : '';

    const loadStart = loadavg().map((x) => round(x, 2));
    say(`ambit L4 hop: cluster ${name}, kernel ${release()}, node ${process.version}, ${cpus().length} CPUs, load average ${loadStart.join(' ')}`);
    if ((loadStart[0] ?? 0) > cpus().length / 2) warn(`the machine is busy (load average ${loadStart[0]} on ${cpus().length} CPUs): the figures will be noisy`);
    say(`rates ${options.rates.join(', ')} req/s x ${options.connections} connections, ${options.duration} s each (+${options.warmup} s warmup)`);

    // ---- the cluster: clients on node-1, servers on node-2, in both namespaces
    const iperfServer = (ns: string) => [tools.iperf3 ?? '', '-s', '-p', String(IPERF_PORT), '--pidfile', join(tmp, `iperf3-${ns}.pid`)];
    const base: Doc[] = [namespace('plain'), namespace('mesh', { [MESH_LABEL]: 'ambient' })];
    for (const ns of ['plain', 'mesh']) {
      base.push(pod(ns, 'client', 'node-1', [tools.sleep, 'infinity']));
      base.push(pod(ns, 'http-server', 'node-2', [serverBin, String(HTTP_PORT)]));
      if (tools.iperf3) base.push(pod(ns, 'iperf3-server', 'node-2', iperfServer(ns)));
    }
    created = true; // up may fail half-way: down removes whatever it made
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
        pod('plain', 'haproxy-server', 'node-2', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-server.cfg')]),
      ]), 60);
      status = await cluster.status();
      writeFileSync(join(tmp, 'haproxy-client.cfg'), haproxyClientConfig(clientSock, certs, ipOf('plain', 'haproxy-server')));
      await cluster.up(writeManifests(join(tmp, 'manifests', '3-haproxy-client'), [
        pod('plain', 'haproxy-client', 'node-1', [tools.haproxy, '-db', '-f', join(tmp, 'haproxy-client.cfg')]),
      ]), 60);
      status = await cluster.status();
    }

    // ---- who does the proxying
    const nodeAgents = agents(status);
    const haproxyPids = (p: string): Proxy[] => {
      const record = podOf(status, 'plain', p);
      const procs = readFileSync(join(cluster.layout.podCgroup(record.node, 'plain', p), 'cgroup.procs'), 'utf8')
        .split('\n').filter(Boolean).map(Number).filter((pid) => comm(pid) === 'haproxy');
      if (procs.length !== 1) throw new Error(`expected one haproxy process in pod plain/${p}'s cgroup, found ${procs.length}`);
      return [{ name: p, pid: procs[0] as number }];
    };
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
      if (interrupted) return;
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
    const idle0 = cpuSample(allProxies);
    await sleep(IDLE_SAMPLE_MS);
    const idle = cpuDelta(idle0, cpuSample(allProxies));
    const idlePercent = Object.fromEntries(Object.entries(idle.byProxy).map(([k, v]) => [k, v === null ? null : round((v / (IDLE_SAMPLE_MS / 1000)) * 100, 1)]));

    // ---- latency at fixed rates, scenarios in a new random order per rate
    interface LatencyRow { scenario: ScenarioKey; label: string; result: LoadResult; cpu: ReturnType<typeof cpuDelta> }
    const latency: { rate: number; order: ScenarioKey[]; rows: LatencyRow[] }[] = [];
    for (const rate of options.rates) {
      const order = shuffled(running);
      const rows: LatencyRow[] = [];
      latency.push({ rate, order: order.map((s) => s.key), rows });
      for (const s of order) {
        if (interrupted) return;
        process.stderr.write(`${rate} req/s: ${s.label}...\n`);
        const cpu0 = cpuSample(s.proxies);
        let result: LoadResult;
        try {
          result = await loadRun(cluster, loadBin, s, { rate, connections: options.connections, duration: options.duration, warmup: options.warmup });
        } catch (err) {
          if (interrupted) return;
          warn(`${s.label} at ${rate} req/s: ${(err as Error).message}`);
          result = failedRun(rate, options.duration, (err as Error).message);
        }
        const cpu1 = cpuSample(s.proxies);
        rows.push({ scenario: s.key, label: s.label, result, cpu: cpuDelta(cpu0, cpu1) });
      }
      rows.sort((a, b) => scenarios.findIndex((s) => s.key === a.scenario) - scenarios.findIndex((s) => s.key === b.scenario));
    }
    if (interrupted) return;
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
        if (interrupted) return;
        process.stderr.write(`iperf3: ${s.label}...\n`);
        const cpu0 = cpuSample(s.proxies);
        try {
          iperf.push({ scenario: s.key, label: s.label, result: await iperfRun(cluster, tools.iperf3, s), cpu: cpuDelta(cpu0, cpuSample(s.proxies)) });
        } catch (err) {
          iperf.push({ scenario: s.key, label: s.label, error: (err as Error).message, cpu: cpuDelta(cpu0, cpuSample(s.proxies)) });
          warn(`iperf3 ${s.label}: ${(err as Error).message}`);
        }
      }
      if (interrupted) return;
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
    const loadEnd = loadavg().map((x) => round(x, 2));
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
          if (interrupted) return;
          const docs: Doc[] = [];
          for (let i = enrolledOnNode1(await cluster.status()); i < target; i++) docs.push(pod('mesh', `rss-${next++}`, 'node-1', [tools.sleep, 'infinity']));
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
        if (interrupted) return;
        agentRssSkipped = `failed after ${agentRss.length} of ${options.pods.length} steps: ${(err as Error).message}`;
        warn(`node agent RSS steps ${agentRssSkipped}`);
      }
    }

    // ---- report
    const direct = (rate: number) => latency.find((l) => l.rate === rate)?.rows.find((r) => r.scenario === 'direct')?.result.corrected_us;
    const hap = (rate: number) => latency.find((l) => l.rate === rate)?.rows.find((r) => r.scenario === 'haproxy')?.result.corrected_us;
    const PCTS = ['p50', 'p90', 'p99', 'p999'] as const;
    const compare = (x: Percentiles, ref: Percentiles | undefined, diff: boolean) => {
      if (!ref) return undefined;
      const out: Record<string, number> = {};
      for (const p of PCTS) out[p] = diff ? round(x[p] - ref[p], 1) : round(x[p] / ref[p], 2);
      return out;
    };
    const latencyJson = latency.map((l) => ({
      rate: l.rate,
      order: l.order,
      scenarios: l.rows.map((r) => {
        const c = r.result.corrected_us;
        const d = r.scenario === 'direct' ? undefined : direct(l.rate);
        const h = r.scenario === 'ambit' ? hap(l.rate) : undefined;
        const cpuPer1k = r.cpu.total !== undefined && r.result.completed_all > 0 ? round((r.cpu.total / r.result.completed_all) * 1000, 4) : undefined;
        return {
          scenario: r.scenario,
          label: r.label,
          ...(r.scenario === 'ambit' ? { path_verified: pathVerified } : {}),
          ...(r.scenario === 'haproxy' ? { path_verified: haproxyVerified } : {}),
          scheduled: r.result.scheduled,
          completed: r.result.completed,
          errors: r.result.errors,
          late: r.result.late,
          connects: r.result.connects,
          achieved_rps: r.result.achieved_rps,
          // How long after the last request was due the last answer came: beyond a few ms, the
          // path did not keep up with the rate and the latencies measure its queue.
          behind_schedule_s: round(r.result.elapsed_s - (options.warmup + options.duration) + 1 / l.rate, 3),
          first_error: r.result.first_error || undefined,
          corrected_us: c,
          uncorrected_us: r.result.uncorrected_us,
          added_vs_direct_us: d ? compare(c, d, true) : undefined,
          ratio_vs_direct: d ? compare(c, d, false) : undefined,
          ratio_vs_haproxy: h ? compare(c, h, false) : undefined,
          added_vs_haproxy_us: h ? compare(c, h, true) : undefined,
          proxy_cpu_s: r.cpu.total !== undefined ? round(r.cpu.total, 3) : undefined,
          proxy_cpu_s_by_process: Object.keys(r.cpu.byProxy).length > 0 ? r.cpu.byProxy : undefined,
          proxy_cpu_s_per_1k_req: cpuPer1k,
          requests_in_cpu_window: r.result.completed_all,
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
      date: new Date().toISOString(),
      kernel: release(),
      node: process.version,
      cpus: cpus().length,
      cpu_model: cpus()[0]?.model ?? '',
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
        if (r.errors > 0) warn(`${r.label} at ${l.rate} req/s: ${r.errors} failed requests (first: ${r.first_error ?? '?'})`);
        if (r.late > 0) warn(`${r.label} at ${l.rate} req/s: ${r.late} requests not answered within ${DRAIN_S} s of the end (the path did not keep up)`);
        if (r.behind_schedule_s > SATURATED_S) warn(`${r.label} at ${l.rate} req/s: did not keep up with the rate (the last answer came ${r.behind_schedule_s} s after the last request was due): its latencies measure a growing queue`);
        if (r.connects > options.connections) warn(`${r.label} at ${l.rate} req/s: ${r.connects} connections opened for ${options.connections} (keep-alive broke)`);
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
    if (!interrupted) {
      await cleanup();
      if (!options.keep) leftovers(name, tmp, cluster.layout);
    }
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
  lines.push(`${meta.date} · kernel ${meta.kernel} · Node.js ${meta.node} · ${meta.cpus} CPUs (${meta.cpu_model}) · load average ${meta.load_average.start[0]} at the start, ${meta.load_average.end[0]} at the end${meta.haproxy_version ? ` · ${meta.haproxy_version}` : ''}${meta.iperf3_version ? ` · ${meta.iperf3_version}` : ''}`, '');
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

/** After `down`: nothing of the cluster may be left (netns, cgroup, processes naming it or the temp dir). */
function leftovers(name: string, tmp: string, layout: ClusterLayout): void {
  const prefix = `ambit-${name}`;
  const left: string[] = [];
  try {
    left.push(...execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith(`${prefix}.`)).map((l) => `netns ${l.split(' ')[0]}`));
  } catch { /* no iproute2: the cluster could not have run */ }
  try {
    if (existsSync(layout.cgroupRoot)) left.push(`cgroup ${layout.cgroupRoot}`);
  } catch { /* no cgroup2 */ }
  if (existsSync(layout.pinRoot)) left.push(`bpffs ${layout.pinRoot}`);
  if (existsSync(tmp)) left.push(`directory ${tmp}`);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      if (cmdline.includes(tmp) || cmdline.includes(prefix)) left.push(`process ${entry}: ${cmdline.slice(0, 120)}`);
    } catch { /* exited */ }
  }
  if (left.length > 0) {
    process.stderr.write(`cluster ${name} left behind:\n  ${left.join('\n  ')}\n`);
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  if (interrupted) return; // the signal handler exits once the cluster is gone
  if (err instanceof UsageError) {
    process.stderr.write(`l4-hop: ${err.message}\n${USAGE}\n`);
    process.exit(64);
  }
  process.stderr.write(`l4-hop: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
