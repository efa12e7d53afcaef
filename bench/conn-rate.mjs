// A fixed-rate client for the restart, outage and overload benches: it opens new connections at
// a steady rate (each does one HTTP/1.1 request and closes, or with --mode connect only connects,
// writes a line and reads the echo), for a bounded time, and counts every outcome: per second and
// in total, each failure by its reason. Plain Node.js with no dependency, so it runs inside a pod
// through `ambit local exec`.
//
//   node conn-rate.mjs --host web --port 80 --rate 500 --seconds 30 [--mode http|connect]
//                      [--timeout-ms 5000] [--hold-ms 0] [--path /] [--progress]
//
// Prints one JSON object at the end: { rate, seconds, attempted, ok, failed, reasons: {..},
// perSecond: [{ t, ok, failed }], latencyMs: { p50, p99, max } }. With --progress it also prints
// a line per second on stderr ("t=3 ok=500 failed=0"), so a driver can act at a known time.
import net from 'node:net';

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith('--') ? all[i + 1] : 'true']);
  return acc;
}, []));
const host = args.host ?? 'web';
const port = Number(args.port ?? 80);
const rate = Number(args.rate ?? 100);
const seconds = Number(args.seconds ?? 10);
const mode = args.mode ?? 'http';
const timeoutMs = Number(args['timeout-ms'] ?? 5000);
const holdMs = Number(args['hold-ms'] ?? 0);
const path = args.path ?? '/';
const progress = args.progress === 'true';
if (!(rate > 0 && rate <= 20000) || !(seconds > 0 && seconds <= 36000) || !['http', 'connect'].includes(mode)) {
  process.stderr.write('conn-rate: --rate 1..20000, --seconds 1..36000, --mode http|connect\n');
  process.exit(2);
}

const reasons = {};
const perSecond = [];
const latencies = [];
let attempted = 0;
let ok = 0;
let failed = 0;
let pending = 0;
const start = Date.now();

function bucket() {
  const t = Math.floor((Date.now() - start) / 1000);
  while (perSecond.length <= t) perSecond.push({ t: perSecond.length, ok: 0, failed: 0 });
  return perSecond[t];
}

function done(err, began) {
  pending--;
  const b = bucket();
  if (err) {
    failed++;
    b.failed++;
    const why = err.code ?? err.message ?? String(err);
    reasons[why] = (reasons[why] ?? 0) + 1;
  } else {
    ok++;
    b.ok++;
    latencies.push(Date.now() - began);
  }
}

function one() {
  attempted++;
  pending++;
  const began = Date.now();
  let settled = false;
  const finish = (err) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    socket.destroy();
    done(err, began);
  };
  const socket = net.connect({ host, port });
  const timer = setTimeout(() => finish(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })), timeoutMs);
  let answer = '';
  let held = false;
  socket.on('connect', () => {
    socket.write(mode === 'http' ? `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n` : 'ping\n');
  });
  socket.on('data', (c) => {
    answer += c.toString('latin1');
    // Answered: the timeout was for the exchange; holding the connection is not waiting for it.
    if (mode === 'connect' && answer.includes('\n') && !held) { held = true; clearTimeout(timer); setTimeout(() => finish(), holdMs); }
  });
  socket.on('end', () => {
    if (mode === 'http') {
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1];
      if (!status) return finish(Object.assign(new Error('no HTTP answer'), { code: answer ? 'BAD_ANSWER' : 'EMPTY_ANSWER' }));
      if (status.startsWith('5')) return finish(Object.assign(new Error(status), { code: `HTTP_${status}` }));
      clearTimeout(timer);
      return setTimeout(() => finish(), holdMs);
    }
    if (!answer.includes('\n')) return finish(Object.assign(new Error('closed before the echo'), { code: 'EMPTY_ANSWER' }));
    // Closed by the other side while it was to be held: cut.
    finish(holdMs > 0 && Date.now() - began < holdMs ? Object.assign(new Error('closed while held'), { code: 'CUT' }) : undefined);
  });
  socket.on('error', (err) => finish(err));
}

// Paced by elapsed time, not by timer ticks: a late tick sends what is due, so the rate holds.
let sent = 0;
const total = Math.round(rate * seconds);
const tick = setInterval(() => {
  const due = Math.min(total, Math.floor(((Date.now() - start) / 1000) * rate));
  while (sent < due) { one(); sent++; }
  if (sent >= total) clearInterval(tick);
}, 2);
let lastReported = -1;
const reporter = progress ? setInterval(() => {
  const t = Math.floor((Date.now() - start) / 1000) - 1;
  if (t > lastReported && perSecond[t]) {
    lastReported = t;
    process.stderr.write(`t=${t} ok=${perSecond[t].ok} failed=${perSecond[t].failed}\n`);
  }
}, 100) : undefined;

const finishAll = setInterval(() => {
  if (sent < total || pending > 0) return;
  clearInterval(finishAll);
  if (reporter) clearInterval(reporter);
  latencies.sort((a, b) => a - b);
  const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
  process.stdout.write(`${JSON.stringify({ rate, seconds, mode, attempted, ok, failed, reasons, perSecond, latencyMs: { p50: q(0.5), p99: q(0.99), max: latencies.at(-1) ?? null } })}\n`);
}, 20);
