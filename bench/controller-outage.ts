/**
 * Controller outage (issue 20, item 2): a 2-node local cluster with the web app behind a waypoint
 * (namespace obs), steady new-connection traffic from a client pod through the mesh and the
 * waypoint for the whole run, and the controller stopped for --outage-seconds, then started.
 *
 * - Certificates are short-lived for the run (AMBIT_CERT_TTL, default 1.5 × the outage), and the
 *   outage starts once every certificate in use has been renewed once: the ones that serve through
 *   the outage are renewals, and the next renewal of each falls inside it (it waits, with backoff,
 *   for the controller; the certificate it has serves until it expires).
 * - During the outage a new meshed Deployment `late` (its own service account, so its certificate
 *   too must wait for the CA; labelled app=web, so it is also an endpoint of `web`) is applied; a
 *   probe in the client pod asks http://late/ every 250 ms and tells from the address the pod saw
 *   whether the answer came through the mesh (the node agent hands HBONE tunnels to the pod from
 *   the pod's own address) or in plaintext (the client's address).
 * - Node agents and the waypoint must not restart (pids, restarts), and must reach the
 *   controller's current config version again (the controller's status: each subscriber's ACK).
 *
 *   sudo npx tsx bench/controller-outage.ts [--outage-seconds 600] [--rate 200] [--cert-ttl S]
 *                                           [--after-seconds 60] [--keep] [--source]
 *
 * Prints what it counted and writes bench/results/controller-outage.json and .md (with
 * --outage-seconds other than 600: controller-outage-<S>s.*).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BenchRun, COMMON_USAGE, HERE, RESULTS, UsageError, loadAtStart, loadNow, machine, mdMachineLine, mdTable, numberArg, prepareAmbit,
  round, runMain, say, sourceDigest, startExec, tail, waitFor, warn, type ConnRateResult, type Status,
} from './lib.js';
import { WEB_APP, WEB_COMMAND } from './web-app.js';

const USAGE = `usage: sudo npx tsx bench/controller-outage.ts [options]
  --outage-seconds S  how long the controller is stopped (default 600: the issue's 10 minutes)
  --rate N            new connections per second from the client, each one HTTP/1.1 request (default 200)
  --cert-ttl S        workload certificate lifetime for the run (default 1.5 × the outage, at least 60)
  --after-seconds S   traffic after the controller is back (default 60)
  --keep              leave the cluster up
${COMMON_USAGE}`;


/** Applied while the controller is away: a new identity, a new endpoint of web, and its own service. */
export const LATE = `
apiVersion: v1
kind: ServiceAccount
metadata: { name: late, namespace: obs }
---
apiVersion: v1
kind: Service
metadata: { name: late, namespace: obs }
spec: { selector: { late: "true" }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: late, namespace: obs }
spec:
  replicas: 1
  selector: { matchLabels: { late: "true" } }
  template:
    metadata: { labels: { app: web, late: "true" } }
    spec:
      serviceAccountName: late
      containers:
      - name: c
        command: [node, -e, '${WEB_COMMAND}']
        readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
`;

/**
 * `node -e PROBE HOST`: GET http://HOST/ every 250 ms (one new connection each) until killed; one
 * JSON line per answer: { at (ms since the epoch), status or error, body (the address the pod saw) }.
 */
export const PROBE = `const http = require("http"); const host = process.argv[1];
setInterval(() => { const at = Date.now(); const r = http.get({ host, path: "/", timeout: 3000, agent: false }, (res) => { let body = ""; res.on("data", (c) => { body += c; }); res.on("end", () => console.log(JSON.stringify({ at, status: res.statusCode, body }))); });
r.on("timeout", () => r.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" }))); r.on("error", (e) => console.log(JSON.stringify({ at, error: e.code || e.message }))); }, 250);`;

interface ProbeAnswer { at: number; status?: number; body?: string; error?: string }
interface CertSummary { identity: string; serial?: string; notBefore?: string; notAfter?: string; rotatesAt?: string; state: string; lastError?: string; pods: number }
interface Holder { who: string; certs: CertSummary[] }

const SUBSCRIBERS = 3; // two node agents, one waypoint

async function main(): Promise<void> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ options: {
      'outage-seconds': { type: 'string', default: '600' }, rate: { type: 'string', default: '200' }, 'cert-ttl': { type: 'string' },
      'after-seconds': { type: 'string', default: '60' }, keep: { type: 'boolean', default: false }, source: { type: 'boolean', default: false },
      profile: { type: 'string' }, help: { type: 'boolean', short: 'h', default: false },
    }, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values.help) {
    say(USAGE);
    return;
  }
  const outageS = numberArg('outage-seconds', String(values['outage-seconds']), 5, 3600);
  const rate = numberArg('rate', String(values.rate), 1, 5000);
  const afterS = numberArg('after-seconds', String(values['after-seconds']), 20, 3600);
  const certTtl = values['cert-ttl'] !== undefined ? numberArg('cert-ttl', String(values['cert-ttl']), 60, 7 * 86400) : Math.max(60, Math.ceil(outageS * 1.5));
  const ran = prepareAmbit({ source: values.source === true, ...(typeof values.profile === 'string' ? { profile: values.profile } : {}) });
  process.env.AMBIT_CERT_TTL = String(certTtl);
  const benchRun = new BenchRun('co', values.keep === true);
  benchRun.handleSignals();
  try {
    await measure(benchRun, { outageS, rate, afterS, certTtl, ran });
  } finally {
    await benchRun.finish();
  }
}

async function measure(benchRun: BenchRun, o: { outageS: number; rate: number; afterS: number; certTtl: number; ran: string }): Promise<void> {
  const { cluster, name } = benchRun;
  const loadStart = loadAtStart('controller outage', name);
  const local = (args: string[], timeoutMs = 120_000) => cluster.cli([...args, '--cluster', name], timeoutMs);
  const must = async (args: string[], timeoutMs?: number) => {
    const r = await local(args, timeoutMs);
    if (r.code !== 0) throw new Error(`ambit ${args.join(' ')} failed (exit ${r.code}):\n${tail(`${r.stdout}\n${r.stderr}`)}`);
    return r.stdout;
  };
  const dir = join(benchRun.tmp, 'app');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'app.yaml'), WEB_APP);
  writeFileSync(join(benchRun.tmp, 'late.yaml'), LATE);
  say(`cluster: 2 nodes, web x2 behind waypoint obs/waypoint, certificates of ${o.certTtl} s, ${o.rate} new connections/s, controller away ${o.outageS} s (ambit: ${o.ran})`);
  benchRun.created = true;
  await cluster.up(dir, 180);
  await must(['waypoint', 'apply', '-n', 'obs', '--enroll-namespace']);
  await waitFor('the waypoint pod ready', 90, async () => /obs\s+waypoint\s+Running 1\/1/.test(await must(['waypoint', 'list'])));
  let status = await cluster.status();
  const client = status.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('client-'))!;
  const waypointPod = () => status.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('waypoint'))!;
  const connRate = (r: number, s: number, progress = false) => ['node', join(HERE, 'conn-rate.mjs'), '--host', 'web', '--port', '80', '--rate', String(r), '--seconds', String(s), ...(progress ? ['--progress'] : [])];
  await waitFor('requests through the mesh and the waypoint', 60, async () => {
    const r = await cluster.exec(`obs/${client.name}`, connRate(20, 1), 30_000);
    return r.code === 0 && (JSON.parse(r.stdout) as ConnRateResult).failed === 0;
  });

  // Who holds certificates: each node agent (its pods' identities) and the waypoint (its own).
  const holders = async (): Promise<Holder[]> => {
    const out: Holder[] = [];
    for (const node of status.nodes) out.push({ who: `node-agent ${node.name}`, certs: await adminCerts(cluster.execNode(node.name, fetchArgs('http://127.0.0.1:15000/certificates'), 30_000)) });
    out.push({ who: 'waypoint', certs: await adminCerts(cluster.exec(`obs/${waypointPod().name}`, fetchArgs('http://127.0.0.1:15000/certificates'), 30_000)) });
    return out;
  };
  const first = await holders();
  // The outage starts once every certificate has been renewed once (plus a margin), or right away
  // when the lifetime is too long for that to come within the bench.
  const firstRotation = Math.max(...first.flatMap((h) => h.certs.map((c) => Date.parse(c.rotatesAt ?? '') || 0)));
  const waitRenewal = firstRotation - Date.now() < 20 * 60_000;
  const preS = Math.max(30, Math.ceil(((waitRenewal ? firstRotation : Date.now()) - Date.now()) / 1000) + 20);
  const before = { status, certs: first };
  say(`traffic: ${o.rate}/s for ${preS} s before (${waitRenewal ? 'until every certificate was renewed once' : 'certificates live too long to see a renewal first'}), ${o.outageS} s without the controller, ${o.afterS} s after`);

  // One fixed-rate run for the whole span; its per-second counts are split by phase.
  const totalS = preS + o.outageS + o.afterS;
  const traffic = startExec(benchRun.env, name, `obs/${client.name}`, connRate(o.rate, totalS, true));
  const t0 = await traffic.started;
  await sleep(Math.max(0, t0 + preS * 1000 - Date.now()));
  const renewed = await holders();
  const renewedBefore = renewed.flatMap((h) => h.certs.map((c) => ({ who: h.who, identity: c.identity, renewed: first.find((f) => f.who === h.who)?.certs.find((x) => x.identity === c.identity)?.serial !== c.serial, notAfter: c.notAfter, rotatesAt: c.rotatesAt })));
  const versionBefore = readControllerStatus(benchRun)?.version;

  const stopAt = Date.now();
  await must(['local', 'component', 'stop', 'controller']);
  say(`controller stopped at t=${s(stopAt - t0)} s (version ${versionBefore})`);
  // A new meshed pod while the controller is away: it starts (the runtime does not wait for an
  // agent that cannot enroll it for ever), unenrolled, and nobody in the mesh sends to it yet.
  await must(['local', 'apply', '-f', join(benchRun.tmp, 'late.yaml')]);
  const appliedAt = Date.now();
  let latePod = '';
  await waitFor('the late pod running', 60, async () => {
    status = await cluster.status();
    const p = status.pods.find((x) => x.namespace === 'obs' && x.name.startsWith('late-'));
    if (p?.phase === 'Running') latePod = p.name;
    return latePod !== '';
  });
  const lateRunningAt = Date.now();
  say(`late pod ${latePod} running ${s(lateRunningAt - appliedAt)} s after its apply, controller still away`);
  const probe = startExec(benchRun.env, name, `obs/${client.name}`, ['node', '-e', PROBE, 'late']);
  const answers: ProbeAnswer[] = [];
  probe.onLine = (line) => { try { answers.push(JSON.parse(line) as ProbeAnswer); } catch { /* not an answer */ } };
  const during = await holders();

  await sleep(Math.max(0, stopAt + o.outageS * 1000 - Date.now()));
  const startAt = Date.now();
  await must(['local', 'component', 'start', 'controller']);
  say(`controller started at t=${s(startAt - t0)} s`);
  const meshed = (a: ProbeAnswer) => a.status === 200 && a.body !== undefined && a.body.replace(/^::ffff:/, '') !== client.ip;
  const served = await waitFor('the late pod serving through the mesh', 180, () => answers.find((a) => a.at >= startAt && meshed(a))?.at ?? false);
  say(`late pod serving through the mesh ${s(served - startAt)} s after the controller's start`);
  const converged = await waitFor('every subscriber at the controller\'s version', 180, () => {
    const c = readControllerStatus(benchRun);
    return c && c.version !== versionBefore && c.subscribers.length >= SUBSCRIBERS && c.subscribers.every((x) => x.lastAck === c.version) ? { at: Date.now(), ...c } : false;
  });
  say(`every subscriber at ${converged.version} ${s(converged.at - startAt)} s after the controller's start`);

  const result = await traffic.done;
  probe.stop();
  const counts = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as ConnRateResult;
  const after = { status: await cluster.status(), certs: await holders() };
  const logs = logFacts(benchRun, startAt);

  // Phases by second of the traffic run.
  const stopT = (stopAt - t0) / 1000;
  const startT = (startAt - t0) / 1000;
  const phase = (t: number) => (t + 1 <= stopT ? 'before' : t < startT ? 'during' : 'after');
  const phases: Record<string, { seconds: number; ok: number; failed: number }> = { before: { seconds: 0, ok: 0, failed: 0 }, during: { seconds: 0, ok: 0, failed: 0 }, after: { seconds: 0, ok: 0, failed: 0 } };
  for (const b of counts.perSecond) {
    const p = phases[phase(b.t)]!;
    p.seconds++;
    p.ok += b.ok;
    p.failed += b.failed;
  }
  const probeAfter = answers.filter((a) => a.at >= startAt && a.at < served);
  const probeSummary = {
    during: summarize(answers.filter((a) => a.at < startAt), meshed),
    after_start_until_meshed: summarize(probeAfter, meshed),
    after_meshed: summarize(answers.filter((a) => a.at >= served), meshed),
  };
  const pidsOf = (st: Status) => ({
    controller: st.components.find((c) => c.name === 'controller')?.pid,
    ...Object.fromEntries(st.components.filter((c) => c.name === 'node-agent').map((c) => [`node-agent ${c.node}`, c.pid])),
    waypoint: st.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('waypoint'))?.containers[0]?.pid,
  });
  const restartsOf = (st: Status) => ({
    ...Object.fromEntries(st.components.filter((c) => c.name === 'node-agent').map((c) => [`node-agent ${c.node}`, Number(/(\d+) restarts/.exec(c.detail)?.[1] ?? 0)])),
    waypoint: st.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('waypoint'))?.restarts ?? 0,
  });
  const pids = { before: pidsOf(before.status), after: pidsOf(after.status) };
  const restarts = { before: restartsOf(before.status), after: restartsOf(after.status) };
  const agentsKept = Object.keys(pids.before).filter((k) => k !== 'controller').every((k) => pids.before[k as keyof typeof pids.before] === pids.after[k as keyof typeof pids.after])
    && Object.keys(restarts.before).every((k) => restarts.before[k as keyof typeof restarts.before] === restarts.after[k as keyof typeof restarts.after]);
  const certs = {
    ttl_s: o.certTtl,
    renewed_before_outage: renewedBefore,
    during_outage: during.flatMap((h) => h.certs.map((c) => ({ who: h.who, identity: c.identity, state: c.state, notAfter: c.notAfter, rotatesAt: c.rotatesAt }))),
    after: after.certs.flatMap((h) => h.certs.map((c) => ({ who: h.who, identity: c.identity, serial: c.serial, state: c.state, notAfter: c.notAfter }))),
    expired_during_outage: renewed.flatMap((h) => h.certs.filter((c) => Date.parse(c.notAfter ?? '') < startAt)).length,
    renewals_due_in_outage: renewed.flatMap((h) => h.certs.filter((c) => { const r = Date.parse(c.rotatesAt ?? ''); return r >= stopAt && r < startAt; })).length,
    failed_certificate_requests_in_outage: logs.certFailures,
    received_after_start: logs.certsAfterStart,
  };
  const json = {
    bench: 'controller-outage', ...machine(), load_average: { start: loadStart, end: loadNow() }, source: sourceDigest(), ran: o.ran,
    settings: { outage_s: o.outageS, rate: o.rate, cert_ttl_s: o.certTtl, before_s: preS, after_s: o.afterS },
    timeline_s: { controller_stopped: round(stopT, 1), late_applied: round((appliedAt - t0) / 1000, 1), late_running: round((lateRunningAt - t0) / 1000, 1), controller_started: round(startT, 1), traffic_end: counts.perSecond.length },
    requests: { attempted: counts.attempted, ok: counts.ok, failed: counts.failed, reasons: counts.reasons, latency_ms: counts.latencyMs, phases },
    late_pod: { name: latePod, running_after_apply_s: round((lateRunningAt - appliedAt) / 1000, 1), serving_through_mesh_after_controller_start_s: round((served - startAt) / 1000, 2), probe: probeSummary },
    resync: { version_before: versionBefore, version_after: converged.version, converged_after_start_s: round((converged.at - startAt) / 1000, 2), subscribers: converged.subscribers, reconnects: logs.reconnects },
    certificates: certs,
    processes: { pids, restarts, kept: agentsKept },
  };
  const base = o.outageS === 600 ? 'controller-outage' : `controller-outage-${o.outageS}s`;
  writeFileSync(join(RESULTS, `${base}.json`), `${JSON.stringify(json, null, 2)}\n`);
  const md = report(json, o);
  writeFileSync(join(RESULTS, `${base}.md`), md);
  say('');
  say(md);
  if (counts.failed > 0) warn(`${counts.failed} requests failed: ${JSON.stringify(counts.reasons)}`);
  if (!agentsKept) warn('a node agent or the waypoint restarted');
}

const s = (ms: number) => round(ms / 1000, 1);

function summarize(answers: ProbeAnswer[], meshed: (a: ProbeAnswer) => boolean): { answers: number; meshed: number; plaintext: number; failed: Record<string, number> } {
  const failed: Record<string, number> = {};
  for (const a of answers) if (a.status !== 200) failed[a.error ?? String(a.status)] = (failed[a.error ?? String(a.status)] ?? 0) + 1;
  return { answers: answers.length, meshed: answers.filter(meshed).length, plaintext: answers.filter((a) => a.status === 200 && !meshed(a)).length, failed };
}

function fetchArgs(url: string): string[] {
  return [process.execPath, '-e', 'fetch(process.argv[1], { signal: AbortSignal.timeout(5000) }).then(async (r) => process.stdout.write(await r.text())).catch((e) => { process.stderr.write(String(e)); process.exit(2); })', url];
}

async function adminCerts(answer: Promise<{ code: number | null; stdout: string; stderr: string }>): Promise<CertSummary[]> {
  const r = await answer;
  if (r.code !== 0) throw new Error(`GET /certificates failed: ${tail(r.stderr, 3)}`);
  return (JSON.parse(r.stdout) as { certificates: CertSummary[] }).certificates;
}

function readControllerStatus(run: BenchRun): { version: string; subscribers: { node: string; kind: string; name: string; lastAck?: string }[] } | undefined {
  const file = join(run.env.AMBIT_LOCAL_STATE!, run.name, 'controller-status.json');
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as { version: string; subscribers: { node: string; kind: string; name: string; lastAck?: string }[] };
  } catch {
    return undefined;
  }
}

/** From the components' logs: certificate requests that failed while the controller was away, certificates received after, reconnects. */
function logFacts(run: BenchRun, startAt: number): { certFailures: number; certsAfterStart: { who: string; identity: string; after_start_s: number }[]; reconnects: { who: string; after_start_s: number }[] } {
  const logs = join(run.env.AMBIT_LOCAL_STATE!, run.name, 'logs');
  let certFailures = 0;
  const certsAfterStart: { who: string; identity: string; after_start_s: number }[] = [];
  const reconnects: { who: string; after_start_s: number }[] = [];
  const files: [string, string][] = [['node-agent.node-1', join(logs, 'node-agent.node-1.log')], ['node-agent.node-2', join(logs, 'node-agent.node-2.log')]];
  const podLogs = join(run.env.AMBIT_LOCAL_STATE!, run.name, 'pods');
  if (existsSync(podLogs)) {
    for (const d of readdirSafe(podLogs)) if (d.startsWith('obs.waypoint')) for (const f of readdirSafe(join(podLogs, d))) if (f.endsWith('.log')) files.push(['waypoint', join(podLogs, d, f)]);
  }
  for (const [who, file] of files) {
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line.startsWith('{')) continue;
      let e: { time?: number; msg?: string; identity?: string };
      try { e = JSON.parse(line) as typeof e; } catch { continue; }
      if (e.msg === 'certificate request failed') certFailures++;
      if (e.time !== undefined && e.time >= startAt && e.msg === 'certificate received') certsAfterStart.push({ who, identity: e.identity ?? '', after_start_s: round((e.time - startAt) / 1000, 2) });
    }
  }
  const controllerLog = join(logs, 'controller.log');
  if (existsSync(controllerLog)) {
    for (const line of readFileSync(controllerLog, 'utf8').split('\n')) {
      if (!line.startsWith('{')) continue;
      let e: { time?: number; msg?: string; node?: string; kind?: string; name?: string };
      try { e = JSON.parse(line) as typeof e; } catch { continue; }
      if (e.msg === 'subscriber connected' && (e.time ?? 0) >= startAt) reconnects.push({ who: `${e.kind} ${e.node || e.name}`, after_start_s: round((e.time! - startAt) / 1000, 2) });
    }
  }
  return { certFailures, certsAfterStart, reconnects };
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}



function report(j: Record<string, unknown> & { requests: { attempted: number; ok: number; failed: number; reasons: Record<string, number>; phases: Record<string, { seconds: number; ok: number; failed: number }> } }, o: { outageS: number; rate: number; certTtl: number }): string {
  const r = j as unknown as {
    date: string; kernel: string; node: string; cpus: number; cpu_model: string; load_average: { start: number[]; end: number[] };
    late_pod: { name: string; running_after_apply_s: number; serving_through_mesh_after_controller_start_s: number; probe: Record<string, { answers: number; meshed: number; plaintext: number; failed: Record<string, number> }> };
    resync: { version_before: string; version_after: string; converged_after_start_s: number; reconnects: { who: string; after_start_s: number }[] };
    certificates: { renewed_before_outage: { who: string; identity: string; renewed: boolean; notAfter?: string }[]; expired_during_outage: number; renewals_due_in_outage: number; failed_certificate_requests_in_outage: number; received_after_start: { who: string; identity: string; after_start_s: number }[] };
    processes: { pids: { before: Record<string, number | undefined>; after: Record<string, number | undefined> }; restarts: { before: Record<string, number>; after: Record<string, number> }; kept: boolean };
  };
  const lines = [
    `# Controller outage: ${o.outageS} s under ${o.rate} new connections/s`,
    '',
    mdMachineLine(r, []),
    '',
    `\`sudo npx tsx bench/controller-outage.ts --outage-seconds ${o.outageS} --rate ${o.rate}\` — 2 nodes, web x2 behind the namespace's waypoint, a client pod opening ${o.rate} new connections/s (one HTTP/1.1 request each, bench/conn-rate.mjs) for the whole run; certificates of ${o.certTtl} s.`,
    '',
    '## Requests',
    '',
    ...mdTable(['phase', 'seconds', 'ok', 'failed'], Object.entries(j.requests.phases).map(([k, v]) => [k, String(v.seconds), String(v.ok), String(v.failed)])),
    '',
    `Total: ${j.requests.attempted} attempted, ${j.requests.ok} ok, ${j.requests.failed} failed${j.requests.failed ? ` (${Object.entries(j.requests.reasons).map(([k, v]) => `${k}: ${v}`).join(', ')})` : ''}.`,
    '',
    '## The pod started during the outage',
    '',
    `\`${r.late_pod.name}\` (new service account \`late\`, an endpoint of \`web\` too) ran ${r.late_pod.running_after_apply_s} s after its apply, with the controller away (unenrolled: the runtime starts a meshed pod its agent cannot confirm after a timeout). It served through the mesh **${r.late_pod.serving_through_mesh_after_controller_start_s} s after the controller's start**.`,
    '',
    ...mdTable(['probe of http://late/ (every 250 ms)', 'answers', 'through the mesh', 'plaintext', 'failed'], Object.entries(r.late_pod.probe).map(([k, v]) => [k.replaceAll('_', ' '), String(v.answers), String(v.meshed), String(v.plaintext), Object.entries(v.failed).map(([a, b]) => `${a}: ${b}`).join(', ') || '0'])),
    '',
    '## Resync',
    '',
    `Every subscriber (2 node agents, the waypoint) ACKed the restarted controller's version \`${r.resync.version_after}\` (before: \`${r.resync.version_before}\`) ${r.resync.converged_after_start_s} s after its start. Reconnected after the start: ${r.resync.reconnects.map((x) => `${x.who} ${x.after_start_s} s`).join(', ') || '-'}.`,
    '',
    ...mdTable(['process', 'pid before', 'pid after', 'restarts before', 'restarts after'], Object.keys(r.processes.pids.before).map((k) => [k, String(r.processes.pids.before[k] ?? '-'), String(r.processes.pids.after[k] ?? '-'), String(r.processes.restarts.before[k] ?? '-'), String(r.processes.restarts.after[k] ?? '-')])),
    '',
    '## Certificates',
    '',
    `Renewed once before the outage: ${r.certificates.renewed_before_outage.filter((c) => c.renewed).length} of ${r.certificates.renewed_before_outage.length}. Renewals due during the outage: ${r.certificates.renewals_due_in_outage} (failed certificate requests logged while the CA was away: ${r.certificates.failed_certificate_requests_in_outage}); expired during the outage: ${r.certificates.expired_during_outage}. Received after the controller's start: ${r.certificates.received_after_start.map((c) => `${c.who} ${c.identity.replace(/^spiffe:\/\/[^/]+\//, '')} ${c.after_start_s} s`).join(', ') || '-'}.`,
    '',
  ];
  return `${lines.join('\n')}\n`;
}

runMain('controller-outage', USAGE, main);
