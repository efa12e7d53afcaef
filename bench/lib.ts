/**
 * What the benches that run a local ambit cluster share (bench/l4-hop.ts, bench/waypoint.ts):
 * option parsing, child processes, the cluster through the ambit CLI and the run's lifecycle
 * (temp dir, cleanup on failure and on Ctrl-C, the leftover check), manifests, building the C
 * programs, the bench CA and its certificates, HAProxy configuration pieces and stats, Prometheus
 * text, the proxies' CPU time and RSS from /proc, the fixed-rate load runs (bench/http-load.c),
 * and formatting (tables on stdout, markdown).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { stringify } from 'yaml';
import { ClusterLayout } from '../src/local/layout.js';
import { CertificateAuthority, FileCaStore } from '../src/identity/ca.js';
import { CertManager } from '../src/identity/cert-manager.js';

export const HERE = dirname(fileURLToPath(import.meta.url));

/** A mesh CA in `dir` and a started CertManager on it: in-process benches' workload certificates. */
export async function meshCertManager(dir: string): Promise<CertManager> {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  const certs = new CertManager({ source: {
    createCertificate: async (csr: string, identity: string, ttl: number) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(ca.trustBundle()),
  } });
  await certs.start();
  return certs;
}
/** The checkout the bench runs from. */
const ROOT = dirname(HERE);
const AMBIT_CLI = join(HERE, '..', 'bin', 'ambit.js');
export const RESULTS = join(HERE, 'results');

export const METRICS_PORT = 15020;
export const MESH_LABEL = 'ambit.dev/dataplane-mode';
/** How long http-load waits for outstanding responses after the last request is due. */
export const DRAIN_S = 5;
/** A run whose last answer comes later than this after the last request was due did not keep up. */
export const SATURATED_S = 0.1;

export const say = (line = '') => process.stdout.write(`${line}\n`);
export const warn = (line: string) => say(`WARNING ${line}`);

/** Set on SIGINT/SIGTERM: the handler cleans up and exits; failures it causes are not errors. */
let interruptedFlag = false;
export const interrupted = (): boolean => interruptedFlag;

// ---------------------------------------------------------------------------------------------
// Options

export class UsageError extends Error {}

/** The options every cluster bench has. */
export interface CommonOptions {
  duration: number;
  warmup: number;
  rates: number[];
  connections: number;
  keep: boolean;
  /** Run ambit's processes from the TypeScript sources through tsx, not from a build (--source). */
  source: boolean;
  /** Write V8 CPU profiles of the controller and node agents here (--profile DIR). */
  profile?: string;
}

export function numberArg(name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name}: expected a number in ${min}..${max}, got "${text}"`);
  return n;
}

/** Comma-separated integers in min..max, increasing and distinct. */
export function intListArg(name: string, text: string, min: number, max: number): number[] {
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
}

/**
 * --duration, --warmup, --rates, --connections, --keep and --help (prints usage, exits 0), plus
 * the bench's own options, whose raw values come back in `values`.
 */
export function parseBenchOptions(
  argv: string[], usage: string,
  defaults: { duration: string; warmup: string; rates: string; connections: string },
  extra: NonNullable<ParseArgsConfig['options']> = {},
): { common: CommonOptions; values: Record<string, string | boolean | undefined> } {
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        duration: { type: 'string', default: defaults.duration },
        warmup: { type: 'string', default: defaults.warmup },
        rates: { type: 'string', default: defaults.rates },
        connections: { type: 'string', default: defaults.connections },
        ...extra,
        keep: { type: 'boolean', default: false },
        source: { type: 'boolean', default: false },
        profile: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    say(usage);
    process.exit(0);
  }
  const text = (k: string) => String(values[k]);
  const connections = numberArg('connections', text('connections'), 1, 1000);
  if (!Number.isInteger(connections)) throw new UsageError(`--connections: expected an integer, got "${text('connections')}"`);
  const common: CommonOptions = {
    duration: numberArg('duration', text('duration'), 1, 3600),
    warmup: numberArg('warmup', text('warmup'), 0, 600),
    rates: intListArg('rates', text('rates'), 1, 100_000),
    connections,
    keep: values.keep === true,
    source: values.source === true,
    ...(typeof values.profile === 'string' ? { profile: resolve(values.profile) } : {}),
  };
  for (const rate of common.rates) {
    if (rate * common.duration < connections) throw new UsageError(`--rates ${rate} x --duration ${common.duration} gives fewer requests than --connections ${connections}`);
  }
  return { common, values: values as Record<string, string | boolean | undefined> };
}

// ---------------------------------------------------------------------------------------------
// Processes

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command to its end (or SIGTERM, then SIGKILL, at timeoutMs); never rejects on exit status. */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs: number }): Promise<RunResult> {
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

export const tail = (text: string, lines = 12) => text.trim().split('\n').slice(-lines).join('\n');

/** The absolute path of an executable on PATH (plus the sbin directories), or undefined. */
export function which(name: string): string | undefined {
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

/** The path of a tool the bench needs, or an error that names the package to install. */
export function need(name: string, pkg: string): string {
  const path = which(name);
  if (!path) throw new Error(`\`${name}\` is not installed: run scripts/setup.sh --bench (Debian package ${pkg})`);
  return path;
}

export function version(cmd: string, args: string[]): string {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return out.split('\n')[0]?.trim() ?? '';
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------------------------------------
// The cluster, through the ambit CLI

export interface StatusPod { namespace: string; name: string; node: string; ip: string; phase: string; ready?: string; restarts?: number; containers: { name: string; pid?: number }[] }
export interface StatusComponent { name: string; node?: string; pid?: number; state: string; detail: string }
export interface StatusService { namespace: string; name: string; vip: string; endpoints: string[] }
export interface Status {
  nodes: { name: string; ip: string }[];
  pods: StatusPod[];
  services?: StatusService[];
  components: StatusComponent[];
}

export class Cluster {
  readonly layout: ClusterLayout;

  constructor(readonly name: string, private readonly env: NodeJS.ProcessEnv) {
    this.layout = new ClusterLayout(name);
  }

  /** `ambit ARGS...` with the bench's state dir. */
  cli(args: string[], timeoutMs: number): Promise<RunResult> {
    return run(process.execPath, [AMBIT_CLI, ...args], { env: this.env, timeoutMs });
  }

  private ambit(sub: string, args: string[], timeoutMs: number): Promise<RunResult> {
    return this.cli(['local', sub, '--cluster', this.name, ...args], timeoutMs);
  }

  static fail(what: string, r: RunResult): never {
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
    if (r.code !== 0) Cluster.fail(`ambit local down --cluster ${this.name}`, r);
  }
}

export function podOf(status: Status, ns: string, name: string): StatusPod {
  const pod = status.pods.find((p) => p.namespace === ns && p.name === name);
  if (!pod || !pod.ip) throw new Error(`pod ${ns}/${name} is not in \`ambit local status\``);
  return pod;
}

export function agents(status: Status): StatusComponent[] {
  return status.components.filter((c) => c.name === 'node-agent' && c.pid !== undefined);
}

/**
 * The one process named `name` (its comm) in a pod's cgroup whose parent is not one too: the
 * program the pod runs, past the launcher's `sh`/`nsenter`/`unshare` execs.
 */
export function podProcess(layout: ClusterLayout, status: Status, ns: string, pod: string, name: string): Proxy {
  const record = podOf(status, ns, pod);
  const procs = readFileSync(join(layout.podCgroup(record.node, ns, pod), 'cgroup.procs'), 'utf8')
    .split('\n').filter(Boolean).map(Number).filter((pid) => comm(pid) === name);
  const table = processTable();
  const roots = procs.filter((pid) => !procs.includes(table.get(pid)?.ppid ?? -1));
  if (roots.length !== 1) throw new Error(`expected one ${name} process in pod ${ns}/${pod}'s cgroup, found ${roots.length}`);
  return { name: pod, pid: roots[0] as number };
}

/**
 * The run's lifecycle: a temp dir, a cluster named `<prefix>-<random>` whose state lives in it,
 * one cleanup (`ambit local down`, then the temp dir) whoever asks first — the end of main or
 * SIGINT/SIGTERM — and, after it, the check that nothing of the cluster is left.
 */
export class BenchRun {
  readonly tmp: string;
  readonly name: string;
  readonly env: NodeJS.ProcessEnv;
  readonly cluster: Cluster;
  readonly removeHint: string;
  /** Set before the first `up`: up may fail half-way, and down removes whatever it made. */
  created = false;
  private cleaning?: Promise<void>;

  constructor(prefix: string, private readonly keep: boolean) {
    this.tmp = mkdtempSync(join(tmpdir(), `ambit-${prefix}-`));
    this.name = `${prefix}-${Math.random().toString(36).slice(2, 8).padEnd(6, '0')}`;
    this.env = { ...process.env, AMBIT_LOCAL_STATE: join(this.tmp, 'state') };
    this.cluster = new Cluster(this.name, this.env);
    this.removeHint = `AMBIT_LOCAL_STATE=${this.env.AMBIT_LOCAL_STATE} npx ambit local down --cluster ${this.name} && rm -rf ${this.tmp}`;
  }

  cleanup(): Promise<void> {
    return (this.cleaning ??= (async () => {
      if (this.keep) {
        say(`--keep: cluster ${this.name} and ${this.tmp} left up; remove them with:\n  ${this.removeHint}`);
        return;
      }
      // The temp dir holds the cluster's state: removed only once the cluster is down, so that a
      // failed (or interrupted) down can still be finished by hand.
      if (this.created) {
        try {
          await this.cluster.down();
        } catch (err) {
          warn(`could not remove cluster ${this.name} (${(err as Error).message}); remove it with:\n  ${this.removeHint}`);
          throw err;
        }
      }
      rmSync(this.tmp, { recursive: true, force: true });
    })());
  }

  /** On SIGINT/SIGTERM: remove the cluster and exit 130. */
  handleSignals(): void {
    const onSignal = (signal: NodeJS.Signals) => {
      if (interruptedFlag) return;
      interruptedFlag = true;
      process.stderr.write(`\n${signal}: removing cluster ${this.name}\n`);
      void this.cleanup().catch((err: unknown) => process.stderr.write(`cleanup: ${String(err)}\n${this.removeHint}\n`)).finally(() => process.exit(130));
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  }

  /** The end of main (also on failure): clean up unless a signal handler is doing it, then look for leftovers. */
  async finish(): Promise<void> {
    if (interruptedFlag) return;
    await this.cleanup();
    if (!this.keep) leftovers(this.name, this.tmp, this.cluster.layout);
  }
}

/** After `down`: nothing of the cluster may be left (netns, cgroup, processes naming it or the temp dir). */
export function leftovers(name: string, tmp: string, layout: ClusterLayout): void {
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

/** A bench's main, run: usage errors exit 64, failures 1, and nothing is reported after a signal. */
export function runMain(bench: string, usage: string, main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    if (interruptedFlag) return; // the signal handler exits once the cluster is gone
    if (err instanceof UsageError) {
      process.stderr.write(`${bench}: ${err.message}\n${usage}\n`);
      process.exit(64);
    }
    process.stderr.write(`${bench}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}

// ---------------------------------------------------------------------------------------------
// Manifests

export type Doc = Record<string, unknown>;

export function namespace(name: string, labels?: Record<string, string>): Doc {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, ...(labels ? { labels } : {}) } };
}

/** A one-container pod pinned to a node, labelled app=<name> unless `labels` says otherwise. */
export function pod(ns: string, name: string, node: string, command: string[], opts: { image: string; labels?: Record<string, string>; readinessPort?: number }): Doc {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: opts.labels ?? { app: name } },
    spec: {
      nodeName: node,
      terminationGracePeriodSeconds: 2,
      containers: [{
        name: 'main', image: opts.image, command,
        ...(opts.readinessPort ? { readinessProbe: { tcpSocket: { port: opts.readinessPort }, periodSeconds: 1 } } : {}),
      }],
    },
  };
}

export function writeManifests(dir: string, docs: Doc[]): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'manifests.yaml'), docs.map((d) => stringify(d)).join('---\n'));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Build: the C programs, the bench CA and its certificates

/** `cc -O2 bench/<name>.c` into dir; the binary's path. */
export function build(cc: string, dir: string, name: string): string {
  const bin = join(dir, name);
  try {
    execFileSync(cc, ['-O2', '-Wall', '-o', bin, join(HERE, `${name}.c`), '-lm'], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw new Error(`cc -O2 bench/${name}.c failed:\n${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  return bin;
}

export interface LeafSpec {
  /** Files `<file>.pem` (certificate + key), CN `haproxy-<file>`. */
  file: string;
  /** subjectAltName, e.g. `DNS:haproxy-server`. */
  san: string;
  /** extendedKeyUsage: serverAuth, clientAuth or both. */
  usage: string;
}

/** An ECDSA P-256 CA (`ca.pem`) and the leaf certificates it signs (PEM: certificate + key), by file name. */
export function makeCertificates(openssl: string, dir: string, caName: string, leaves: LeafSpec[]): { ca: string; leaf: Record<string, string> } {
  const ossl = (args: string[]) => execFileSync(openssl, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const leaf: Record<string, string> = {};
  try {
    ossl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/CN=${caName}`]);
    for (const { file: who, san, usage } of leaves) {
      writeFileSync(join(dir, `${who}.ext`), `subjectAltName=${san}\nextendedKeyUsage=${usage}\nkeyUsage=digitalSignature\n`);
      ossl(['req', ...ec, '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=haproxy-${who}`]);
      ossl(['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${who}.crt`, '-extfile', `${who}.ext`]);
      writeFileSync(join(dir, `${who}.pem`), readFileSync(join(dir, `${who}.crt`), 'utf8') + readFileSync(join(dir, `${who}.key`), 'utf8'));
      leaf[who] = join(dir, `${who}.pem`);
    }
  } catch (err) {
    throw new Error(`openssl failed making the HAProxy certificates:\n${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  return { ca: join(dir, 'ca.pem'), leaf };
}

// ---------------------------------------------------------------------------------------------
// HAProxy

/** global + defaults: one thread, a stats socket, TCP mode unless a section says otherwise. */
export const haproxyCommon = (statsSocket: string) => `global
    nbthread 1
    maxconn 4096
    stats socket ${statsSocket} mode 600 level user

defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
`;

/** A TLS 1.3 listener that requires a client certificate signed by the bench's CA. */
export const haproxyTlsBind = (port: number, certs: { ca: string; crt: string }) =>
  `bind 0.0.0.0:${port} ssl crt ${certs.crt} ca-file ${certs.ca} verify required ssl-min-ver TLSv1.3`;

/** A TLS 1.3 server line: verifies the peer as `peer` against the CA and presents `crt`. */
export const haproxyTlsServer = (name: string, address: string, port: number, peer: string, certs: { ca: string; crt: string }) =>
  `server ${name} ${address}:${port} ssl verify required ca-file ${certs.ca} crt ${certs.crt} sni str(${peer}) verifyhost ${peer} ssl-min-ver TLSv1.3`;

/** TCP-mode frontend → backend pairs (frontends first, as one reads a proxy's config). */
export function haproxyTcpRoutes(routes: { frontend: string; bind: string; backend: string; server: string }[]): string {
  return [
    ...routes.map((r) => `frontend ${r.frontend}\n    ${r.bind}\n    default_backend ${r.backend}\n`),
    ...routes.map((r) => `backend ${r.backend}\n    ${r.server}\n`),
  ].join('\n');
}

/** `show stat` over a stats socket: one field (default `stot`, sessions total) per "proxy/FRONTEND|BACKEND|server". */
export function haproxyStats(socketPath: string, field = 'stot'): Promise<Map<string, number>> {
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
      const col = header.indexOf(field);
      if (col < 0) return reject(new Error(`unexpected answer to "show stat" on ${socketPath}: ${text.slice(0, 200)}`));
      const out = new Map<string, number>();
      for (const line of lines.slice(1)) {
        const f = line.split(',');
        out.set(`${f[0]}/${f[1]}`, f[col] === '' ? NaN : Number(f[col] ?? NaN));
      }
      resolve(out);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Prometheus text from a component's metrics endpoint

export interface Sample { name: string; labels: Record<string, string>; value: number }

export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string;
    out.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return out;
}

/** GET url from inside a node's netns (where pod and node addresses are routed). */
export async function fetchMetrics(cluster: Cluster, node: string, url: string): Promise<{ text?: string; error?: string }> {
  const script = 'fetch(process.argv[1], { signal: AbortSignal.timeout(3000) })'
    + '.then(async (r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); process.stdout.write(await r.text()); })'
    + '.catch((e) => { process.stderr.write(String(e && e.cause ? e.cause : e)); process.exit(2); });';
  const r = await cluster.execNode(node, [process.execPath, '-e', script, url], 30_000);
  if (r.code !== 0) return { error: `no metrics from ${url} in ${node}'s netns: ${tail(r.stderr, 2) || `exit ${r.code}`}` };
  return { text: r.stdout };
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

export function vmRssKb(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

export function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

export interface Proxy { name: string; pid: number }

export interface CpuSample { at: number; byProxy: Map<string, { pid: number; alive: boolean; ticks: number }> }

export function cpuSample(proxies: Proxy[]): CpuSample {
  const table = processTable();
  const byProxy = new Map<string, { pid: number; alive: boolean; ticks: number }>();
  for (const p of proxies) {
    byProxy.set(p.name, { pid: p.pid, alive: table.has(p.pid), ticks: tree(p.pid, table).reduce((sum, q) => sum + (table.get(q)?.ticks ?? 0), 0) });
  }
  return { at: Date.now(), byProxy };
}

export interface CpuDelta { total?: number; byProxy: Record<string, number | null> }

/** CPU seconds per proxy between two samples; null for one whose process changed or exited (restarted). */
export function cpuDelta(a: CpuSample, b: CpuSample): CpuDelta {
  const byProxy: Record<string, number | null> = {};
  let total: number | undefined = 0;
  for (const [name, before] of a.byProxy) {
    const after = b.byProxy.get(name);
    if (!after || after.pid !== before.pid || !before.alive || !after.alive) {
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

/** Each proxy's CPU while nothing is sent, in percent of one CPU over ms. */
export async function idleCpuPercent(proxies: Proxy[], ms: number): Promise<Record<string, number | null>> {
  const idle0 = cpuSample(proxies);
  await sleep(ms);
  const idle = cpuDelta(idle0, cpuSample(proxies));
  return Object.fromEntries(Object.entries(idle.byProxy).map(([k, v]) => [k, v === null ? null : round((v / (ms / 1000)) * 100, 1)]));
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

export const round = (x: number, digits = 2) => (Number.isFinite(x) ? Math.round(x * 10 ** digits) / 10 ** digits : NaN);

export function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j] as T, out[i] as T];
  }
  return out;
}

export function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)];
}

/** A markdown table; the first `left` columns are left-aligned, the others (figures) right-aligned. */
export function mdTable(header: string[], rows: string[][], left = 1): string[] {
  return [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i < left ? '---' : '---:')).join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)];
}

export const fmt = (x: number | undefined | null, digits = 1) => (x === undefined || x === null || !Number.isFinite(x) ? '-' : x.toFixed(digits));
export const fmtSigned = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? '-' : `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`);

/** The machine a run was made on, for the JSON. */
export function machine(): { date: string; kernel: string; node: string; cpus: number; cpu_model: string } {
  return { date: new Date().toISOString(), kernel: release(), node: process.version, cpus: cpus().length, cpu_model: cpus()[0]?.model ?? '' };
}

/**
 * sha256 (first 12 hex digits) of the TypeScript under src/, paths and contents: which code a run
 * measured, when the tree moves between runs.
 */
export function sourceDigest(): string {
  const hash = createHash('sha256');
  const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : []));
  const root = join(HERE, '..', 'src');
  for (const file of walk(root).sort()) hash.update(`${file.slice(root.length)}\0`).update(readFileSync(file)).update('\0');
  return hash.digest('hex').slice(0, 12);
}

/** The markdown line under the title: date, kernel, Node.js, CPUs, load, tool versions. */
export function mdMachineLine(meta: { date: string; kernel: string; node: string; cpus: number; cpu_model: string; load_average: { start: number[]; end: number[] } }, versions: (string | undefined)[]): string {
  return `${meta.date} · kernel ${meta.kernel} · Node.js ${meta.node} · ${meta.cpus} CPUs (${meta.cpu_model}) · load average ${meta.load_average.start[0]} at the start, ${meta.load_average.end[0]} at the end${versions.filter(Boolean).map((v) => ` · ${v}`).join('')}`;
}

/** The 1-minute load average now, with a warning when the machine is busy; the three figures. */
export function loadAtStart(title: string, cluster: string): number[] {
  const load = loadavg().map((x) => round(x, 2));
  say(`${title}: cluster ${cluster}, kernel ${release()}, node ${process.version}, ${cpus().length} CPUs, load average ${load.join(' ')}`);
  if ((load[0] ?? 0) > cpus().length / 2) warn(`the machine is busy (load average ${load[0]} on ${cpus().length} CPUs): the figures will be noisy`);
  return load;
}

export const loadNow = () => loadavg().map((x) => round(x, 2));

// ---------------------------------------------------------------------------------------------
// Fixed-rate load: bench/http-load.c in a client pod

export interface Endpoint { ip: string; port: number }

export interface Percentiles { p50: number; p75: number; p90: number; p99: number; p999: number; p9999: number; max: number; mean: number }

export const PCTS = ['p50', 'p90', 'p99', 'p999'] as const;

/** Per percentile: x − ref (diff) or x / ref; undefined without a reference. */
export function comparePercentiles(x: Percentiles, ref: Percentiles | undefined, diff: boolean): Record<string, number> | undefined {
  if (!ref) return undefined;
  const out: Record<string, number> = {};
  for (const p of PCTS) out[p] = diff ? round(x[p] - ref[p], 1) : round(x[p] / ref[p], 2);
  return out;
}

export interface LoadResult {
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

/** Where a scenario's client pod (`<ns>/client`) sends its requests. */
export interface LoadTarget {
  ns: string;
  http: Endpoint;
  /** The requests' Host (HTTP/1.1) or :authority (HTTP/2); default: the IP. */
  host?: string;
  /** Headers every request carries besides it. */
  headers?: Record<string, string>;
}

export interface LoadArgs { rate: number; connections: number; duration: number; warmup: number }

/** A fixed-rate load from a scenario's client pod: one run, its counts and latencies. */
export type Loader = (s: LoadTarget, args: LoadArgs) => Promise<LoadResult>;

/**
 * HTTP/1.1 keep-alive, bench/http-load.c (wrk2-style: latency from each request's scheduled send).
 * http-load has no option for extra headers: they ride in --host-header's value, after its own
 * CRLF.
 */
export function httpLoader(cluster: Cluster, bin: string): Loader {
  return async (s, args) => {
    const extra = Object.entries(s.headers ?? {}).map(([k, v]) => `\r\n${k}: ${v}`).join('');
    const host = s.host || extra ? `${s.host ?? s.http.ip}${extra}` : undefined;
    const cmd = [bin, '--host', s.http.ip, '--port', String(s.http.port), '--rate', String(args.rate), '--connections', String(args.connections),
      '--duration', String(args.duration), '--warmup', String(args.warmup), '--drain', String(DRAIN_S), ...(host ? ['--host-header', host] : [])];
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
  };
}

/** What an HTTP/2 load sends: GET, or POST with a body (gRPC unary: a framed message). */
export interface H2Request { path: string; body?: string; headers?: Record<string, string> }

/** Streams h2load may keep open per connection before a due request has to wait. */
export const H2_STREAMS = 100;

/**
 * HTTP/2 with prior knowledge (h2c), h2load from nghttp2-client: `--rps` paces each connection at
 * rate / connections, and `--log-file` gives every request's send time, status and duration.
 * h2load sends a due request at once while fewer than H2_STREAMS are open on its connection, so
 * the latencies run from the scheduled send as long as the path keeps up; when it does not,
 * fewer requests are answered than were due, which the result reports (late, behind_schedule_s).
 * The first `warmup` seconds of the log are left out of the percentiles.
 */
export function h2Loader(cluster: Cluster, h2load: string, logDir: string, request: H2Request): Loader {
  let runs = 0;
  return async (s, args) => {
    const log = join(logDir, `h2load-${process.pid}-${++runs}.tsv`);
    const perConnection = args.rate / args.connections;
    const headers = { ...(s.host ? { ':authority': s.host } : {}), ...request.headers, ...s.headers };
    const cmd = [h2load, '-c', String(args.connections), '-m', String(H2_STREAMS), '--rps', String(perConnection), '-D', String(args.duration + args.warmup),
      '--log-file', log, ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), ...(request.body ? ['-d', request.body] : []),
      `http://${s.http.ip}:${s.http.port}${request.path}`];
    try {
      const r = await cluster.exec(`${s.ns}/client`, cmd, (args.duration + args.warmup + 60) * 1000);
      const summary = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(r.stdout);
      if (!summary) throw new Error(`h2load in ${s.ns}/client gave no result (exit ${r.code}${r.timedOut ? ', timed out' : ''}):\n${tail(`${r.stdout}\n${r.stderr}`)}`);
      const [, started, done, , failed, errored, timeout] = summary.slice(1).map(Number) as number[];
      const connects = Number(/(\d+) client\(s\)/.exec(r.stdout)?.[1] ?? args.connections);
      if (done === 0 && started === 0) throw new Error(`h2load in ${s.ns}/client could not connect to ${s.http.ip}:${s.http.port}:\n${tail(`${r.stdout}\n${r.stderr}`)}`);
      return h2Result(existsSync(log) ? readFileSync(log, 'utf8') : '', args, { started: started as number, done: done as number, failed: (failed as number) + (errored as number) + (timeout as number), connects });
    } finally {
      rmSync(log, { force: true });
    }
  };
}

/** An h2load run's result from its log (send µs since the epoch, status, µs to the end of the answer) and summary. */
export function h2Result(log: string, args: LoadArgs, summary: { started: number; done: number; failed: number; connects: number }): LoadResult {
  const rows: { start: number; status: number; us: number }[] = [];
  for (const line of log.split('\n')) {
    const [start, status, us] = line.split('\t').map(Number);
    if (Number.isFinite(start) && Number.isFinite(status) && Number.isFinite(us)) rows.push({ start: start as number, status: status as number, us: us as number });
  }
  const t0 = rows.reduce((m, r) => Math.min(m, r.start), Infinity);
  const recorded = rows.filter((r) => r.start >= t0 + args.warmup * 1e6);
  const ok = recorded.filter((r) => r.status >= 200 && r.status < 300);
  const scheduled = Math.round(args.rate * args.duration);
  const last = rows.reduce((m, r) => Math.max(m, r.start + r.us), -Infinity);
  const latencies = percentiles(ok.map((r) => r.us));
  const non200 = recorded.length - ok.length;
  const late = Math.max(0, scheduled - recorded.length);
  return {
    rate: args.rate, scheduled, completed: ok.length, errors: non200 + summary.failed, late, completed_all: summary.done, 
    // Failed streams, answers that were not 2xx, and the streams cut when the run stopped.
    errors_all: summary.failed + (rows.length - rows.filter((r) => r.status >= 200 && r.status < 300).length) + Math.max(0, summary.started - summary.done),
    non_200: non200, connects: summary.connects, connect_errors: 0, achieved_rps: round(ok.length / args.duration, 1),
    // From the first send to the last answer; with every due request answered, warmup + duration.
    elapsed_s: rows.length > 0 ? round((last - t0) / 1e6 + late / args.rate, 3) : NaN,
    corrected_us: latencies, uncorrected_us: { ...latencies },
    first_error: summary.failed > 0 ? `${summary.failed} of ${summary.started} streams failed, errored or timed out` : non200 > 0 ? `${non200} answers not 2xx` : '',
  };
}

/** The value at quantile `q` (0-1] of ascending values, by rank (the smallest with at least q of them at or below it). */
export function atQuantile(sorted: ArrayLike<number>, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] as number;
}

/** Percentiles (µs) of a list of latencies (µs). */
export function percentiles(us: number[]): Percentiles {
  const sorted = Float64Array.from(us).sort();
  const at = (q: number) => (sorted.length === 0 ? NaN : round(atQuantile(sorted, q), 1));
  const mean = sorted.length === 0 ? NaN : round(sorted.reduce((a, b) => a + b, 0) / sorted.length, 1);
  return { p50: at(0.5), p75: at(0.75), p90: at(0.9), p99: at(0.99), p999: at(0.999), p9999: at(0.9999), max: at(1), mean };
}

/** A run that gave no result: every recorded request counts as failed. */
export function failedRun(rate: number, duration: number, why: string): LoadResult {
  const none: Percentiles = { p50: NaN, p75: NaN, p90: NaN, p99: NaN, p999: NaN, p9999: NaN, max: NaN, mean: NaN };
  const scheduled = Math.round(rate * duration);
  return {
    rate, scheduled, completed: 0, errors: scheduled, late: 0, completed_all: 0, errors_all: scheduled, non_200: 0, connects: 0, connect_errors: 0,
    achieved_rps: 0, elapsed_s: NaN, corrected_us: none, uncorrected_us: { ...none }, first_error: why.split('\n')[0] ?? why,
  };
}

/** A few requests through the scenario's path, retried while the servers start. */
export async function reachable(load: Loader, s: LoadTarget, attempts = 6): Promise<string | undefined> {
  let last = '';
  for (let attempt = 0; attempt < attempts && !interruptedFlag; attempt++) {
    if (attempt > 0) await sleep(1000);
    try {
      const r = await load(s, { rate: 50, connections: 1, duration: 1, warmup: 0 });
      if (r.completed === r.scheduled && r.errors === 0) return undefined;
      last = `${r.completed} of ${r.scheduled} requests answered (${r.first_error || 'late'})`;
    } catch (err) {
      last = (err as Error).message;
    }
  }
  return last;
}

/** A scenario of a fixed-rate bench: its client, its target and the processes that proxy for it. */
export interface RateScenario<K extends string> extends LoadTarget {
  key: K;
  label: string;
  /** The processes doing the proxying (empty for direct, or for ambit without node agents). */
  proxies: Proxy[];
  /** Why the scenario did not run, when it did not. */
  unreachable?: string;
}

export interface LatencyRow<K extends string> { scenario: K; label: string; result: LoadResult; cpu: CpuDelta }
export interface RatePhase<K extends string> { rate: number; order: K[]; rows: LatencyRow<K>[] }

/**
 * Every rate, the running scenarios one after the other in a new random order, each with its
 * proxies' CPU sampled around it; rows sorted back into `all`'s order. Undefined when interrupted.
 */
export async function fixedRateRuns<K extends string>(
  load: Loader, running: RateScenario<K>[], all: RateScenario<K>[], options: CommonOptions,
): Promise<RatePhase<K>[] | undefined> {
  const latency: RatePhase<K>[] = [];
  for (const rate of options.rates) {
    const order = shuffled(running);
    const rows: LatencyRow<K>[] = [];
    latency.push({ rate, order: order.map((s) => s.key), rows });
    for (const s of order) {
      if (interruptedFlag) return undefined;
      process.stderr.write(`${rate} req/s: ${s.label}...\n`);
      const cpu0 = cpuSample(s.proxies);
      let result: LoadResult;
      try {
        result = await load(s, { rate, connections: options.connections, duration: options.duration, warmup: options.warmup });
      } catch (err) {
        if (interruptedFlag) return undefined;
        warn(`${s.label} at ${rate} req/s: ${(err as Error).message}`);
        result = failedRun(rate, options.duration, (err as Error).message);
      }
      const cpu1 = cpuSample(s.proxies);
      rows.push({ scenario: s.key, label: s.label, result, cpu: cpuDelta(cpu0, cpu1) });
    }
    rows.sort((a, b) => all.findIndex((s) => s.key === a.scenario) - all.findIndex((s) => s.key === b.scenario));
  }
  return interruptedFlag ? undefined : latency;
}

/** A run's counts and latencies for the JSON. */
export function runFields(r: LoadResult, rate: number, options: { warmup: number; duration: number }) {
  return {
    scheduled: r.scheduled,
    completed: r.completed,
    errors: r.errors,
    late: r.late,
    connects: r.connects,
    achieved_rps: r.achieved_rps,
    // How long after the last request was due the last answer came: beyond a few ms, the
    // path did not keep up with the rate and the latencies measure its queue.
    behind_schedule_s: round(r.elapsed_s - (options.warmup + options.duration) + 1 / rate, 3),
    first_error: r.first_error || undefined,
    corrected_us: r.corrected_us,
    uncorrected_us: r.uncorrected_us,
  };
}

/** CPU seconds per 1,000 requests answered in the window (warmup included, as the window includes it). */
export const per1k = (cpuS: number | null | undefined, r: LoadResult) =>
  cpuS !== undefined && cpuS !== null && r.completed_all > 0 ? round((cpuS / r.completed_all) * 1000, 4) : undefined;

/** A run's proxy CPU for the JSON. */
export function cpuFields(cpu: CpuDelta, r: LoadResult) {
  return {
    proxy_cpu_s: cpu.total !== undefined ? round(cpu.total, 3) : undefined,
    proxy_cpu_s_by_process: Object.keys(cpu.byProxy).length > 0 ? cpu.byProxy : undefined,
    proxy_cpu_s_per_1k_req: per1k(cpu.total, r),
    requests_in_cpu_window: r.completed_all,
  };
}

/** What went wrong in a run, one line each. */
export function runWarnings(label: string, rate: number, r: { errors: number; late: number; behind_schedule_s: number; connects: number; first_error?: string }, connections: number): string[] {
  const out: string[] = [];
  if (r.errors > 0) out.push(`${label} at ${rate} req/s: ${r.errors} failed requests (first: ${r.first_error ?? '?'})`);
  if (r.late > 0) out.push(`${label} at ${rate} req/s: ${r.late} requests not answered within ${DRAIN_S} s of the end (the path did not keep up)`);
  if (r.behind_schedule_s > SATURATED_S) out.push(`${label} at ${rate} req/s: did not keep up with the rate (the last answer came ${r.behind_schedule_s} s after the last request was due): its latencies measure a growing queue`);
  if (r.connects > connections) out.push(`${label} at ${rate} req/s: ${r.connects} connections opened for ${connections} (keep-alive broke)`);
  return out;
}

/** Common options every rate bench takes, for its usage text. */
export const COMMON_USAGE = `  --source           run ambit from its TypeScript sources (tsx) instead of the build the image ships
  --profile DIR      V8 CPU profiles of the controller and node agents into DIR (written when they stop)`;

/**
 * ambit's processes as they ship: the sources compiled (tsconfig.build.json) into .bench-dist/
 * in the checkout (so their imports find node_modules), run by bin/ambit.js through AMBIT_DIST.
 * Through tsx instead, each process also carries tsx's loader thread and its transform caches:
 * tens of MB of RSS and start-up CPU that no deployment has. Sets the environment the cluster's
 * daemon hands its components; returns what the results should say ran.
 */
export function prepareAmbit(options: Pick<CommonOptions, 'source' | 'profile'>): string {
  if (options.profile) {
    mkdirSync(options.profile, { recursive: true });
    process.env.AMBIT_CPU_PROFILE_DIR = options.profile;
  }
  if (options.source) {
    delete process.env.AMBIT_DIST;
    return 'sources through tsx (--source)';
  }
  const out = join(ROOT, '.bench-dist');
  say('building ambit (tsc -p tsconfig.build.json) into .bench-dist/...');
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', out], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed: ${tail(`${r.stdout}\n${r.stderr}`, 10)}`);
  process.env.AMBIT_DIST = out;
  return 'the build (tsconfig.build.json, as the image runs it)';
}

/** What bench/conn-rate.mjs prints at the end. */
export interface ConnRateResult {
  rate: number; seconds: number; attempted: number; ok: number; failed: number;
  reasons: Record<string, number>; perSecond: Array<{ t: number; ok: number; failed: number }>; latencyMs: { p50: number | null; p99: number | null; max: number | null };
}

/** `ambit local exec` kept running: its lines as they come, the time of its first progress line. */
export function startExec(env: NodeJS.ProcessEnv, name: string, target: string, cmd: string[]): { started: Promise<number>; done: Promise<{ code: number | null; stdout: string; stderr: string }>; onLine?: (line: string) => void; stop(): void } {
  const child = spawn(process.execPath, [join(HERE, '..', 'bin', 'ambit.js'), 'local', 'exec', '--cluster', name, target, '--', ...cmd], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let pendingLine = '';
  let resolveStarted: (t: number) => void = () => undefined;
  const handle = {
    started: new Promise<number>((r) => { resolveStarted = r; }),
    done: new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr }))),
    onLine: undefined as ((line: string) => void) | undefined,
    stop: () => { child.kill('SIGTERM'); },
  };
  child.stdout.on('data', (c: Buffer) => {
    stdout += c.toString();
    pendingLine += c.toString();
    const lines = pendingLine.split('\n');
    pendingLine = lines.pop() ?? '';
    for (const l of lines) handle.onLine?.(l);
  });
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
    // conn-rate's first progress line ("t=0 ...") comes one second after it started.
    if (/^t=0 /m.test(stderr)) resolveStarted(Date.now() - 1000);
  });
  child.on('close', () => resolveStarted(Date.now()));
  return handle;
}

/** Polls `fn` every `intervalMs` until it answers something other than false, for at most `seconds`. */
export async function waitFor<T>(what: string, seconds: number, fn: () => Promise<T | false> | T | false, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  let last = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== false) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}${last ? `: ${last}` : ''}`);
    await sleep(intervalMs);
  }
}
