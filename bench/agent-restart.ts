/**
 * Node agent restart and upgrade (issue 20, item 1): a 2-node local cluster with the web app of
 * test/integration/helpers/web-app.ts (web x2, a client pod), a client opening --rate new
 * connections per second through the mesh for --seconds per scenario, and in the middle of each,
 * on the client's node:
 *
 * - handover: `ambit local component restart node-agent` — the new agent starts beside the old
 *   one (SO_REUSEPORT listeners, tcp_migrate_req), the old one gets SIGTERM once the new one has
 *   enrolled the node's pods, closes its listeners and drains (docs/DATAPATH.md);
 * - stop-start: `component stop` (SIGTERM, no successor) then `component start`: the gap;
 * - kill: `kill -9` of the agent, the runtime restarting it.
 *
 * Beside the fixed-rate client (bench/conn-rate.mjs) run a holder (--hold keep-alive HTTP
 * connections, a request on each every 500 ms: the long-lived connections a drain has to cut)
 * and a probe (a new connection every 20 ms, recording when each failed or was answered, and
 * whether the answer came through the mesh: web answers with the peer address it saw, its own
 * for a meshed connection, the client's for plaintext).
 *
 *   sudo npx tsx bench/agent-restart.ts [--seconds 60] [--rate 500] [--hold 20]
 *                                       [--scenarios handover,stop-start,kill] [--keep] [--source]
 *
 * Prints what it counted per scenario and writes bench/results/agent-restart.json and .md (with
 * other settings than the defaults: agent-restart-<seconds>s.*).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { agentReady } from '../src/local/agent-control.js';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BenchRun, COMMON_USAGE, HERE, RESULTS, UsageError, loadAtStart, loadNow, machine, mdMachineLine, mdTable, numberArg, prepareAmbit,
  runMain, say, sourceDigest, startExec, tail, waitFor, warn, type ConnRateResult,
} from './lib.js';
import { WEB_APP } from './web-app.js';

const USAGE = `usage: sudo npx tsx bench/agent-restart.ts [options]
  --seconds S        traffic per scenario, the action at its middle (default 60)
  --rate N           new connections per second from the client, one HTTP/1.1 request each (default 500)
  --hold N           long-lived keep-alive connections held through each scenario (default 20)
  --scenarios LIST   comma-separated: handover, stop-start, kill (default: all three)
  --keep             leave the cluster up
${COMMON_USAGE}`;

const SCENARIOS = ['handover', 'stop-start', 'kill'] as const;
type Scenario = typeof SCENARIOS[number];


/**
 * `node -e PROBE HOST SECONDS`: a new connection to HOST:80 every 20 ms for SECONDS, one GET each;
 * one JSON line per attempt: { at, status, body } or { at, error }.
 */
export const PROBE = `const net = require("net"); const host = process.argv[1]; const end = Date.now() + Number(process.argv[2]) * 1000;
const t = setInterval(() => { if (Date.now() > end) { clearInterval(t); return; } const at = Date.now(); const s = net.connect(80, host); let b = ""; let d = false;
const done = (r) => { if (d) return; d = true; s.destroy(); console.log(JSON.stringify({ at, ...r })); };
s.setTimeout(3000, () => done({ error: "TIMEOUT" })); s.on("connect", () => s.write("GET / HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n"));
s.on("data", (c) => { b += c; }); s.on("end", () => { const m = /^HTTP\\/1\\.1 (\\d+)/.exec(b); done(m ? { status: Number(m[1]), body: b.split("\\r\\n\\r\\n").slice(1).join("") } : { error: "EMPTY_ANSWER" }); });
s.on("error", (e) => done({ error: e.code || e.message })); }, 20);`;

/**
 * `node -e HOLDER HOST N SECONDS`: N keep-alive HTTP connections to HOST, a request on each every
 * 500 ms for SECONDS; prints { held, cut: [{ at, after }] }: the first connection of each holder
 * that closed before the end (it goes on over a new one), and requests that failed.
 */
export const HOLDER = `const http = require("http"); const [host, n, seconds] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const end = Date.now() + seconds * 1000; const cut = []; let failed = 0; let ok = 0;
for (let i = 0; i < n; i++) { const agent = new http.Agent({ keepAlive: true, maxSockets: 1 }); let first;
  const one = () => { if (Date.now() > end) return agent.destroy(); const r = http.get({ host, path: "/", agent }, (res) => { res.resume(); res.on("end", () => { ok++; setTimeout(one, 500); }); });
    r.on("socket", (s) => { if (!first) { first = s; s.once("close", () => { if (Date.now() < end) cut.push({ at: Date.now() }); }); } });
    r.on("error", () => { failed++; setTimeout(one, 500); }); };
  one(); }
setTimeout(() => { console.log(JSON.stringify({ held: n, ok, failed, cut })); process.exit(0); }, seconds * 1000 + 1500);`;

interface ProbeLine { at: number; status?: number; body?: string; error?: string }
interface Held { held: number; ok: number; failed: number; cut: { at: number }[] }

async function main(): Promise<void> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ options: {
      seconds: { type: 'string', default: '60' }, rate: { type: 'string', default: '500' }, hold: { type: 'string', default: '20' },
      scenarios: { type: 'string', default: SCENARIOS.join(',') }, keep: { type: 'boolean', default: false }, source: { type: 'boolean', default: false },
      profile: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false },
    }, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    say(USAGE);
    return;
  }
  const seconds = numberArg('seconds', String(values.seconds), 6, 3600);
  const rate = numberArg('rate', String(values.rate), 1, 5000);
  const hold = numberArg('hold', String(values.hold), 0, 1000);
  const scenarios = String(values.scenarios).split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of scenarios) if (!(SCENARIOS as readonly string[]).includes(s)) throw new UsageError(`--scenarios: unknown scenario "${s}" (${SCENARIOS.join(', ')})`);
  const ran = prepareAmbit({ source: values.source === true, ...(typeof values.profile === 'string' ? { profile: values.profile } : {}) });
  const benchRun = new BenchRun('ar', values.keep === true);
  benchRun.handleSignals();
  try {
    await measure(benchRun, { seconds, rate, hold, scenarios: scenarios as Scenario[], ran });
  } finally {
    await benchRun.finish();
  }
}

async function measure(benchRun: BenchRun, o: { seconds: number; rate: number; hold: number; scenarios: Scenario[]; ran: string }): Promise<void> {
  const { cluster, name } = benchRun;
  const loadStart = loadAtStart('node agent restart', name);
  const must = async (args: string[], timeoutMs = 120_000) => {
    const r = await cluster.cli([...args, '--cluster', name], timeoutMs);
    if (r.code !== 0) throw new Error(`ambit ${args.join(' ')} failed (exit ${r.code}):\n${tail(`${r.stdout}\n${r.stderr}`)}`);
    return r.stdout;
  };
  const dir = join(benchRun.tmp, 'app');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'app.yaml'), WEB_APP);
  say(`cluster: 2 nodes, web x2, ${o.rate} new connections/s for ${o.seconds} s per scenario, ${o.hold} held connections (ambit: ${o.ran})`);
  benchRun.created = true;
  await cluster.up(dir, 180);
  let status = await cluster.status();
  const client = status.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('client-'))!;
  const node = client.node;
  const target = `obs/${client.name}`;
  const socket = join(benchRun.env.AMBIT_LOCAL_STATE!, name, 'nodes', node, 'agent.sock');
  const logFile = join(benchRun.env.AMBIT_LOCAL_STATE!, name, 'logs', `node-agent.${node}.log`);
  const connRate = (r: number, s: number) => ['node', join(HERE, 'conn-rate.mjs'), '--host', 'web', '--port', '80', '--rate', String(r), '--seconds', String(s), '--progress'];
  await waitFor('requests through the mesh', 60, async () => {
    const r = await cluster.exec(target, connRate(20, 1), 30_000);
    return r.code === 0 && (JSON.parse(r.stdout) as ConnRateResult).failed === 0;
  }, 20);
  const results: Record<string, unknown>[] = [];
  for (const scenario of o.scenarios) {
    status = await cluster.status();
    const agentPid = status.components.find((c) => c.name === 'node-agent' && c.node === node)?.pid;
    say(`\n${scenario}: node agent of ${node} (pid ${agentPid}) at t=${o.seconds / 2} s`);
    // Held past the old agent's drain after the action (5 s), however short the scenario.
    const holder = o.hold > 0 ? startExec(benchRun.env, name, target, ['node', '-e', HOLDER, 'web', String(o.hold), String(Math.max(o.seconds + 2, o.seconds / 2 + 20))]) : undefined;
    await sleep(1000);
    const traffic = startExec(benchRun.env, name, target, connRate(o.rate, o.seconds));
    const probe = startExec(benchRun.env, name, target, ['node', '-e', PROBE, 'web', String(o.seconds)]);
    const lines: ProbeLine[] = [];
    probe.onLine = (line) => { try { lines.push(JSON.parse(line) as ProbeLine); } catch { /* not a probe line */ } };
    const t0 = await traffic.started;
    await sleep(Math.max(0, t0 + (o.seconds / 2) * 1000 - Date.now()));
    const actionAt = Date.now();
    const action: Record<string, unknown> = {};
    if (scenario === 'handover') {
      const out = await must(['local', 'component', 'restart', 'node-agent', '--node', node]);
      const m = /handed over from pid (\d+) \(new one ready in (\d+) ms, old one drained and exited (\d+) ms later\)/.exec(out);
      Object.assign(action, { output: out.trim(), ...(m ? { old_pid: Number(m[1]), new_ready_ms: Number(m[2]), old_exit_after_ready_ms: Number(m[3]) } : {}) });
    } else if (scenario === 'stop-start') {
      await must(['local', 'component', 'stop', 'node-agent', '--node', node]);
      const stoppedAt = Date.now();
      await must(['local', 'component', 'start', 'node-agent', '--node', node]);
      Object.assign(action, { stop_ms: stoppedAt - actionAt, start_issued_ms: Date.now() - actionAt });
    } else {
      process.kill(agentPid!, 'SIGKILL');
    }
    // Until the agent that now runs says it has enrolled its pods (its control socket, by pid).
    const ready = await waitFor('the node agent ready', 60, async () => {
      const r = await agentReady(socket);
      return r && r.pid !== agentPid ? { at: Date.now(), pid: r.pid } : false;
    }, 20);
    const counts = JSON.parse((await traffic.done).stdout.trim().split('\n').at(-1) ?? '{}') as ConnRateResult;
    await probe.done;
    const held = holder ? JSON.parse((await holder.done).stdout.trim().split('\n').at(-1) ?? '{}') as Held : undefined;
    // The probe: the first failure after the action, and the first answer after it.
    const after = lines.filter((l) => l.at >= actionAt - 200);
    const firstFail = after.find((l) => l.error !== undefined || l.status !== 200);
    const lastFail = [...after].reverse().find((l) => l.error !== undefined || l.status !== 200);
    const servedAgain = firstFail ? after.find((l) => l.at > (lastFail?.at ?? 0) && l.status === 200) : undefined;
    const probeReasons: Record<string, number> = {};
    for (const l of after) if (l.error !== undefined || l.status !== 200) probeReasons[l.error ?? String(l.status)] = (probeReasons[l.error ?? String(l.status)] ?? 0) + 1;
    const plaintext = lines.filter((l) => l.status === 200 && l.body !== undefined && l.body.includes(client.ip)).length;
    const drained = drainLines(logFile, actionAt);
    const failedSeconds = counts.perSecond.filter((b) => b.failed > 0).map((b) => b.t);
    const r = {
      scenario,
      connections: { attempted: counts.attempted, ok: counts.ok, failed: counts.failed, reasons: counts.reasons, latency_ms: counts.latencyMs, failed_in_seconds: failedSeconds, per_second: counts.perSecond },
      probe: {
        attempts: lines.length, failed_after_action: Object.values(probeReasons).reduce((a, b) => a + b, 0), reasons: probeReasons,
        gap_ms: firstFail && lastFail ? lastFail.at - firstFail.at + 20 : 0,
        served_after_action_ms: firstFail ? (servedAgain ? servedAgain.at - actionAt : null) : 0,
        plaintext_answers: plaintext,
      },
      agent: { old_pid: agentPid, new_pid: ready.pid, ready_after_action_ms: ready.at - actionAt, ...action, drained },
      held: held ? { connections: held.held, cut: held.cut.length, cut_after_action_ms: held.cut.map((c) => c.at - actionAt), requests_ok: held.ok, requests_failed: held.failed } : undefined,
    };
    results.push(r);
    say(`  new connections: ${counts.attempted} attempted, ${counts.ok} ok, ${counts.failed} failed${counts.failed ? ` (${JSON.stringify(counts.reasons)}, in seconds ${failedSeconds.join(',')})` : ''}`);
    say(`  probe (every 20 ms): ${r.probe.failed_after_action} failed after the action (${JSON.stringify(probeReasons)}), gap ${r.probe.gap_ms} ms, serving ${r.probe.served_after_action_ms} ms after the action; plaintext answers: ${plaintext}`);
    say(`  new agent ready ${String(action.new_ready_ms ?? r.agent.ready_after_action_ms)} ms after the action; old agent's drain: ${JSON.stringify(drained)}`);
    if (held) say(`  held connections: ${held.held}, cut ${held.cut.length} (${r.held!.cut_after_action_ms.map((ms) => `${ms} ms`).join(', ') || '-'} after the action)`);
    await sleep(2000);
  }
  const json = {
    bench: 'agent-restart', ...machine(), load_average: { start: loadStart, end: loadNow() }, source: sourceDigest(), ran: o.ran,
    settings: { seconds: o.seconds, rate: o.rate, hold: o.hold, node, drain_seconds: 5, supervisor_first_restart_ms: 100 },
    scenarios: results,
  };
  const base = o.seconds === 60 && o.rate === 500 ? 'agent-restart' : `agent-restart-${o.seconds}s-${o.rate}`;
  writeFileSync(join(RESULTS, `${base}.json`), `${JSON.stringify(json, null, 2)}\n`);
  const md = report(json, o);
  writeFileSync(join(RESULTS, `${base}.md`), md);
  say('');
  say(md);
  for (const r of results as { scenario: string; connections: { failed: number }; probe: { plaintext_answers: number } }[]) {
    if (r.probe.plaintext_answers > 0) warn(`${r.scenario}: ${r.probe.plaintext_answers} answers came in plaintext`);
    if (r.scenario === 'handover' && r.connections.failed > 0) warn(`handover: ${r.connections.failed} new connections failed`);
  }
}

/** The old agent's drain lines (`drained: …`) logged after `since`: pods, how long, how many cut. */
function drainLines(file: string, since: number): { pods: number; drainMs: number; cut: number }[] {
  const out: { pods: number; drainMs: number; cut: number }[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.includes('"msg":"drained')) continue;
    try {
      const j = JSON.parse(line) as { time: number; pods: number; drainMs: number; cut: number };
      if (j.time >= since) out.push({ pods: j.pods, drainMs: j.drainMs, cut: j.cut });
    } catch { /* not JSON */ }
  }
  return out;
}




function report(j: ReturnType<typeof machine> & { load_average: { start: number[]; end: number[] }; scenarios: Record<string, unknown>[] }, o: { seconds: number; rate: number; hold: number }): string {
  type R = {
    scenario: string;
    connections: { attempted: number; ok: number; failed: number; reasons: Record<string, number>; latency_ms: { p99: number | null }; failed_in_seconds: number[] };
    probe: { failed_after_action: number; reasons: Record<string, number>; gap_ms: number; served_after_action_ms: number | null; plaintext_answers: number };
    agent: { ready_after_action_ms: number; new_ready_ms?: number; drained: { pods: number; drainMs: number; cut: number }[] };
    held?: { connections: number; cut: number; cut_after_action_ms: number[] };
  };
  const rs = j.scenarios as unknown as R[];
  const reasons = (x: Record<string, number>) => Object.entries(x).map(([k, v]) => `${k} ${v}`).join(', ') || '-';
  const lines = [
    `# Node agent restart and upgrade: ${o.rate} new connections/s`,
    '',
    mdMachineLine(j, []),
    '',
    `\`sudo npx tsx bench/agent-restart.ts --seconds ${o.seconds} --rate ${o.rate} --hold ${o.hold}\` — 2 nodes, web x2, a client pod opening ${o.rate} new connections/s (one HTTP/1.1 request each, bench/conn-rate.mjs) for ${o.seconds} s per scenario; the client's node agent acted on at the middle; ${o.hold} keep-alive connections held through each scenario; a probe opening a connection every 20 ms. Drain period 5 s (the agent's default).`,
    '',
    ...mdTable(['scenario', 'attempted', 'ok', 'failed (by reason)', 'probe: gap', 'probe: serving again after', 'new agent ready after', 'old agent: cut after its drain', 'held connections cut', 'plaintext answers'], rs.map((r) => [
      r.scenario, String(r.connections.attempted), String(r.connections.ok), `${r.connections.failed}${r.connections.failed ? ` (${reasons(r.connections.reasons)})` : ''}`,
      `${r.probe.gap_ms} ms`, r.probe.served_after_action_ms === null ? 'not within the scenario' : `${r.probe.served_after_action_ms} ms`,
      // A handover's new agent is ready before the old one is told to go (the restart returns once it has drained).
      `${r.agent.new_ready_ms ?? r.agent.ready_after_action_ms} ms`,
      r.agent.drained.length ? r.agent.drained.map((d) => `${d.cut} (${d.drainMs} ms drain, ${d.pods} pods)`).join('; ') : '- (killed)',
      r.held ? `${r.held.cut} of ${r.held.connections}` : '-', String(r.probe.plaintext_answers),
    ])),
    '',
    'The old agent counts a cut connection per pod it carried it for: a held connection from the client to the web pod on the same node is one for each side.',
    '',
  ];
  return `${lines.join('\n')}\n`;
}

runMain('agent-restart', USAGE, main);
