/**
 * Fuzzing at size: every target of test/fuzz (the node agent's listeners, HBONE, discovery, the
 * CA, captured bytes, the waypoint's protocol detection, ambit analyze) with 100,000 inputs each from a fixed seed, and the ambit-cni
 * plugin's JSON scanner under libFuzzer with ASan/UBSan. Each target runs in its own Node.js
 * process (with --expose-gc, so RSS is read after a collection): a target that takes its process
 * down is a crash too, and one target's memory does not blur another's. Reports crashes (with
 * the first inputs and stacks of each kind), what the components answered, time and RSS before,
 * after 10% of the inputs and at the end; writes bench/results/fuzz.md and fuzz.json.
 *
 *   npx tsx bench/fuzz.ts [--runs N] [--seed S] [--only a,b] [--jobs J] [--out FILE]
 *   npx tsx bench/fuzz.ts --from-json bench/results/fuzz.json   (writes the report again from a run's JSON)
 *   npx tsx bench/fuzz.ts --only a,b --merge   (runs a and b, and puts them in the report in place of their last results)
 *
 * Two targets run a share of N: capture-bytes 10% (three TCP connections and up to 1 MB per
 * input: 100,000 take over half an hour), capture-bytes-agent-sockets 1% (its inputs may wait out
 * a 3-s bound); the table says how many inputs each got.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crashKey, describeCrashes, fuzz, type FuzzResult, type FuzzTarget } from '../test/fuzz/harness.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Targets by name, with the share of --runs each gets (1: all of it) and whether it is slow (a
 * TLS handshake or several TCP connections per input: started first when --jobs > 1).
 */
const TARGETS: { name: string; module: string; exportName: string; share: number; slow?: boolean }[] = [
  { name: 'admin-http', module: '../test/fuzz/targets/local-http.js', exportName: 'adminTarget', share: 1 },
  { name: 'telemetry-http', module: '../test/fuzz/targets/local-http.js', exportName: 'telemetryTarget', share: 1 },
  { name: 'control-socket', module: '../test/fuzz/targets/local-http.js', exportName: 'controlSocketTarget', share: 1 },
  { name: 'cni-socket', module: '../test/fuzz/targets/cni-socket.js', exportName: 'cniSocketTarget', share: 1 },
  { name: 'hbone-connect', module: '../test/fuzz/targets/hbone.js', exportName: 'hboneConnectTarget', share: 1 },
  { name: 'hbone-frames', module: '../test/fuzz/targets/hbone.js', exportName: 'hboneFramesTarget', share: 1, slow: true },
  { name: 'discovery', module: '../test/fuzz/targets/discovery.js', exportName: 'discoveryTarget', share: 1 },
  { name: 'ca-csr', module: '../test/fuzz/targets/ca.js', exportName: 'caTarget', share: 1 },
  { name: 'ca-grpc', module: '../test/fuzz/targets/ca-grpc.js', exportName: 'caWireTarget', share: 1 },
  { name: 'waypoint-detect', module: '../test/fuzz/targets/waypoint-detect.js', exportName: 'waypointDetectTarget', share: 1 },
  { name: 'analyze', module: '../test/fuzz/targets/analyze.js', exportName: 'analyzeTarget', share: 1 },
  { name: 'capture-bytes', module: '../test/fuzz/targets/capture.js', exportName: 'captureBytesTarget', share: 0.1, slow: true },
  { name: 'capture-bytes-agent-sockets', module: '../test/fuzz/targets/capture.js', exportName: 'captureAgentSocketsTarget', share: 0.01, slow: true },
];

interface Options { runs: number; seed: number; only?: string[]; jobs: number; out: string; fromJson?: string; merge?: boolean }

function options(argv: string[]): Options & { child?: string } {
  const o: Options & { child?: string } = { runs: 100_000, seed: 1, jobs: 1, out: join(root, 'bench', 'results', 'fuzz.md') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const v = () => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${a} needs a value`);
      return x;
    };
    const n = (x: string) => {
      const num = Number(x);
      if (!Number.isInteger(num) || num < 1) throw new Error(`${a} must be a whole number >= 1, got ${x}`);
      return num;
    };
    if (a === '--runs') o.runs = n(v());
    else if (a === '--seed') o.seed = n(v());
    else if (a === '--jobs') o.jobs = n(v());
    else if (a === '--only') o.only = v().split(',');
    else if (a === '--out') o.out = v();
    else if (a === '--child') o.child = v();
    else if (a === '--from-json') o.fromJson = v();
    else if (a === '--merge') o.merge = true;
    else throw new Error(`unknown option ${a} (known: --runs N, --seed S, --only a,b, --jobs J, --out FILE, --from-json FILE, --merge)`);
  }
  const unknown = o.only?.filter((t) => t !== 'cni-scanner' && !TARGETS.some((x) => x.name === t));
  if (unknown?.length) throw new Error(`unknown target ${unknown.join(', ')} (known: ${[...TARGETS.map((t) => t.name), 'cni-scanner'].join(', ')})`);
  return o;
}

const runsFor = (o: Options, share: number) => Math.max(1, Math.round(o.runs * share));

/** When merging: the start of the run merged into (the report covers from then). */
function saved0(o: Options): Date | undefined {
  if (!o.merge) return undefined;
  const saved = JSON.parse(readFileSync(o.out.replace(/\.md$/, '.json'), 'utf8')) as { started?: string };
  return saved.started ? new Date(saved.started) : undefined;
}

/** In the child: one target, its result as JSON on fd 3. */
async function child(name: string, o: Options): Promise<void> {
  const t = TARGETS.find((x) => x.name === name)!;
  const mod = (await import(t.module)) as Record<string, FuzzTarget<unknown, unknown>>;
  const runs = runsFor(o, t.share);
  let last = Date.now();
  const result = await fuzz(mod[t.exportName]!, {
    runs, seed: o.seed,
    progress: (done, total, crashes) => {
      if (Date.now() - last < 10_000) return;
      last = Date.now();
      process.stderr.write(`  ${name}: ${done}/${total} inputs, ${crashes} crashes, RSS ${mb(process.memoryUsage().rss)}\n`);
    },
  });
  writeFileSync(3, JSON.stringify(result));
}

/** Runs one target in its own process; a process that dies is a crash of that target. */
function runChild(name: string, o: Options): Promise<FuzzResult> {
  const t = TARGETS.find((x) => x.name === name)!;
  const started = Date.now();
  return new Promise((resolve) => {
    const args = ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url), '--child', name, '--runs', String(o.runs), '--seed', String(o.seed)];
    const p = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'inherit', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdio[3]!.on('data', (c: Buffer) => { out += c.toString(); });
    p.stderr!.on('data', (c: Buffer) => {
      const s = c.toString();
      err = (err + s).slice(-20_000);
      // Progress lines pass through; Node's warnings (the YAML parser's) do not.
      for (const line of s.split('\n')) if (line.startsWith('  ')) process.stderr.write(`${line}\n`);
    });
    p.on('close', (code, signal) => {
      if (code === 0 && out) return resolve(JSON.parse(out) as FuzzResult);
      const why = signal ? `killed by ${signal}` : `exited ${code}`;
      const tail = err.split('\n').filter((l) => l.trim()).slice(-12).join('\n');
      resolve({
        target: name, what: '', seed: o.seed, runs: runsFor(o, t.share), crashes: 1, distinct: { [`process: ${why}`]: 1 },
        samples: [{ kind: 'uncaught', message: `the fuzzing process ${why}`, stack: tail, input: '(see the stack)', index: -1 }],
        outcomes: {}, ms: Date.now() - started, rss: { before: 0, warm: 0, after: 0 }, heapUsed: { before: 0, after: 0 }, stopped: why,
      });
    });
  });
}

interface ScannerResult { runs: number; crashes: number; ms: number; rssMb?: number; report?: string; skipped?: string; cov?: string }

/** The C scanner under libFuzzer: built with ASan/UBSan, `runs` inputs from the seed. */
function scanner(o: Options): ScannerResult {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-fuzz-scanner-'));
  try {
    const binary = join(dir, 'scan-fuzz');
    const build = spawnSync(join(root, 'native', 'cni', 'fuzz', 'build.sh'), [binary], { encoding: 'utf8' });
    if (build.status !== 0) return { runs: 0, crashes: 0, ms: 0, skipped: `not built: ${build.stderr.trim().split('\n').at(-1) ?? ''}` };
    mkdirSync(join(dir, 'corpus'));
    const started = Date.now();
    const run = spawnSync(binary, [`-seed=${o.seed}`, `-runs=${o.runs}`, '-max_len=65536', '-timeout=10', '-print_final_stats=1', `-artifact_prefix=${dir}/`, join(dir, 'corpus'), join(root, 'native', 'cni', 'fuzz', 'corpus')], { encoding: 'utf8', maxBuffer: 64 << 20 });
    const ms = Date.now() - started;
    const text = run.stderr ?? '';
    const rss = /peak_rss_mb:\s*(\d+)/.exec(text)?.[1];
    const cov = /cov: (\d+) ft: (\d+)/g;
    let lastCov: RegExpExecArray | null = null;
    for (let m = cov.exec(text); m; m = cov.exec(text)) lastCov = m;
    const crashed = run.status !== 0;
    return {
      runs: o.runs, crashes: crashed ? 1 : 0, ms, ...(rss ? { rssMb: Number(rss) } : {}), ...(lastCov ? { cov: `${lastCov[1]} edges, ${lastCov[2]} features` } : {}),
      ...(crashed ? { report: text.split('\n').filter((l) => /ERROR|SUMMARY|runtime error|deadly|#\d+ 0x|Test unit written/.test(l)).slice(0, 25).join('\n') } : {}),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function mb(bytes: number): string {
  return `${(bytes / 1048576).toFixed(0)} MB`;
}

function topOutcomes(r: FuzzResult): string {
  const all = Object.entries(r.outcomes).sort((a, b) => b[1] - a[1]);
  const shown = all.slice(0, 4).map(([k, v]) => `${k.replace(/\|/g, '/')} ${v}`).join(', ');
  return all.length > 4 ? `${shown}, … (${all.length} kinds)` : shown;
}

function report(o: Options, results: FuzzResult[], c: ScannerResult | undefined, started: Date, until?: Date): string {
  const when = (d: Date) => d.toISOString().slice(0, 16).replace('T', ' ');
  const lines = [
    '# Fuzzing',
    '',
    `\`npx tsx bench/fuzz.ts --runs ${o.runs} --seed ${o.seed}\` on ${when(started)}${until ? `–${when(until).slice(11)}` : ''} UTC${until ? ' (some targets run again with --only … --merge)' : ''}, Node.js ${process.version}. Each target in its own process; RSS read after a GC once the component is up (before), after 10% of the inputs (warm) and at the end (after). "growth" is after − warm: what the process kept beyond warm-up; the JS heap (after a GC, same moments) says whether that is live objects (a leak) or memory the allocator kept.`,
    '',
    '| target | inputs | crashes | answers (most common) | time | RSS before | warm | after | growth | JS heap before → after |',
    '|---|---:|---:|---|---:|---:|---:|---:|---:|---:|',
    ...results.map((r) => `| ${r.target} | ${r.runs.toLocaleString('en')} | ${r.crashes}${r.stopped ? ` (${r.stopped})` : ''} | ${topOutcomes(r)} | ${(r.ms / 1000).toFixed(0)} s | ${mb(r.rss.before)} | ${mb(r.rss.warm)} | ${mb(r.rss.after)} | ${r.rss.before ? `${r.rss.after - r.rss.warm >= 0 ? '+' : ''}${((r.rss.after - r.rss.warm) / 1048576).toFixed(0)} MB` : ''} | ${r.heapUsed.before ? `${mb(r.heapUsed.before)} → ${mb(r.heapUsed.after)}` : ''} |`),
    ...(c ? [c.skipped ? `| cni-scanner (C, libFuzzer) | 0 | skipped: ${c.skipped} | | | | | | | |` : `| cni-scanner (C, libFuzzer + ASan/UBSan) | ${c.runs.toLocaleString('en')} | ${c.crashes} | ${c.cov ?? ''} | ${(c.ms / 1000).toFixed(0)} s | | | peak ${c.rssMb ?? '?'} MB | | |`] : []),
    '',
    '## Targets',
    '',
    ...results.map((r) => `- **${r.target}**: ${r.what}`),
    ...(c ? ['- **cni-scanner**: the ambit-cni plugin\'s JSON scanner (parse_config, parse_answer, put_json_string) compiled from native/cni/ambit-cni.c with libFuzzer, AddressSanitizer and UBSan (native/cni/fuzz)'] : []),
    '',
    '## Crashes',
    '',
  ];
  const crashed = results.filter((r) => r.crashes > 0);
  if (crashed.length === 0 && !c?.crashes) lines.push('None.');
  for (const r of crashed) {
    lines.push(`### ${r.target}: ${r.crashes} crash${r.crashes === 1 ? '' : 'es'}`, '', '| kind: message | count |', '|---|---:|');
    const merged: Record<string, number> = {};
    for (const [k, v] of Object.entries(r.distinct)) merged[crashKey(k)] = (merged[crashKey(k)] ?? 0) + v;
    const rows = Object.entries(merged).sort((a, b) => b[1] - a[1]);
    for (const [k, v] of rows.slice(0, 20)) lines.push(`| ${k.replace(/\|/g, '\\|').replace(/\n/g, ' ')} | ${v} |`);
    if (rows.length > 20) lines.push(`| ${rows.length - 20} other messages | ${rows.slice(20).reduce((n, [, v]) => n + v, 0)} |`);
    lines.push('', 'First inputs and stacks of each kind:', '', '```', describeCrashes(r).slice(0, 12_000), '```', '');
  }
  if (c?.crashes) lines.push('### cni-scanner', '', '```', c.report ?? '', '```', '');
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  const o = options(process.argv.slice(2));
  if (o.child) {
    await child(o.child, o);
    process.exit(0); // a target's leftovers (timers, pooled sockets) must not hold the process
  }
  if (o.fromJson) {
    const saved = JSON.parse(readFileSync(o.fromJson, 'utf8')) as { options: { runs: number; seed: number }; started: string; until?: string; results: FuzzResult[]; scanner?: ScannerResult };
    writeFileSync(o.out, report({ ...o, ...saved.options }, saved.results, saved.scanner, new Date(saved.started), saved.until ? new Date(saved.until) : undefined));
    process.stdout.write(`written: ${o.out}\n`);
    return;
  }
  const started = new Date();
  const names = TARGETS.map((t) => t.name).filter((n) => !o.only || o.only.includes(n));
  const order = [...TARGETS.filter((t) => t.slow), ...TARGETS.filter((t) => !t.slow)].map((t) => t.name).filter((n) => names.includes(n));
  const results: FuzzResult[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(o.jobs, order.length) }, async () => {
    while (next < order.length) {
      const name = order[next++]!;
      process.stderr.write(`${name}: ${runsFor(o, TARGETS.find((t) => t.name === name)!.share)} inputs\n`);
      const r = await runChild(name, o);
      process.stderr.write(`${name}: ${r.crashes} crashes in ${(r.ms / 1000).toFixed(0)} s, RSS ${mb(r.rss.before)} → ${mb(r.rss.after)}\n`);
      results.push(r);
    }
  }));
  results.sort((a, b) => names.indexOf(a.target) - names.indexOf(b.target));
  let c: ScannerResult | undefined;
  if (!o.only || o.only.includes('cni-scanner')) {
    process.stderr.write(`cni-scanner: ${o.runs} libFuzzer inputs\n`);
    c = scanner(o);
  }
  const jsonOut = o.out.replace(/\.md$/, '.json');
  if (o.merge) {
    // Same runs and seed only: a report states one command line.
    const saved = JSON.parse(readFileSync(jsonOut, 'utf8')) as { options: { runs: number; seed: number }; results: FuzzResult[]; scanner?: ScannerResult };
    if (saved.options.runs !== o.runs || saved.options.seed !== o.seed) throw new Error(`--merge: ${jsonOut} was run with --runs ${saved.options.runs} --seed ${saved.options.seed}`);
    const mine = new Set(results.map((r) => r.target));
    results.push(...saved.results.filter((r) => !mine.has(r.target)));
    const all = TARGETS.map((t) => t.name);
    results.sort((a, b) => all.indexOf(a.target) - all.indexOf(b.target));
    c ??= saved.scanner;
  }
  const first = saved0(o) ?? started;
  const md = report(o, results, c, first, o.merge ? new Date() : undefined);
  mkdirSync(dirname(o.out), { recursive: true });
  writeFileSync(o.out, md);
  writeFileSync(jsonOut, `${JSON.stringify({ options: { runs: o.runs, seed: o.seed }, started: first.toISOString(), ...(o.merge ? { until: new Date().toISOString() } : {}), results, scanner: c }, null, 2)}\n`);
  process.stdout.write(md.split('\n## Targets')[0]!);
  process.stdout.write(`\nwritten: ${o.out}\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`bench/fuzz.ts: ${err.message}\n`);
  process.exit(1);
});

