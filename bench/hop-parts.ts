/**
 * What each part of the L4 hop costs the node agent, in CPU, measured on the agent's own code in
 * one process, so every part's figure is a ratio against the bare relay of the same run:
 *
 * Per connection (µs of CPU per connection; both agents' ends where the part has two):
 *   tunnel         an HBONE CONNECT stream opened, answered 200, one byte each way, closed, over
 *                  one pooled mutual-TLS 1.3 connection (HbonePool + HboneServer): the bare relay's
 *                  cost per connection, what any HBONE proxy pays.
 *   policy         L4Authorizer.evaluate for a workload with 20 AuthorizationPolicies, the 20th
 *                  matching (principals, namespaces, ports, ipBlocks): what the destination agent
 *                  decides for each connection.
 *   metrics        ConnectionTracker.begin + finish: Istio's TCP labels and the opened, closed and
 *                  byte counters, with the access log off.
 *   access log     the same with the access log to a file, minus `metrics`: one synchronous
 *                  write per line, as the agent writes it, and in batches of 4 KiB instead.
 *
 * Per byte (CPU-s per GB relayed between two loopback TCP connections, both ways of one join):
 *   bare relay     `a.pipe(b); b.pipe(a)`: Node's streams alone.
 *   ambit splice   the agent's `splice`: half-close, errors and resets, byte counting and the
 *                  idle watch.
 *
 * Rounds interleave the parts (in a new order each round); each figure is the median of the
 * rounds, and each ratio the median of the rounds' own ratios: the machine is noisy. Run: `npx tsx bench/hop-parts.ts [--rounds N] [--out DIR]`.
 */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { destination as pinoDestination, pino } from 'pino';
import { L4Authorizer } from '../src/authz/l4.js';
import { ConnectionTracker, splice, type ConnectionInfo } from '../src/node/connections.js';
import { HbonePool, HboneServer, type HboneSource } from '../src/hbone/hbone.js';
import { tcpSocketOf } from '../src/host/netns.js';
import { MeshMetrics } from '../src/telemetry/metrics.js';
import { silentLogger } from '../src/telemetry/log.js';
import type { ConfigObject, Workload } from '../src/config/model.js';
import { fmt, machine, mdTable, meshCertManager, RESULTS, round, say, shuffled, table } from './lib.js';

const USAGE = `usage: npx tsx bench/hop-parts.ts [--rounds N] [--out DIR]
  --rounds N   interleaved rounds; each figure is their median (default 5)
  --out DIR    where hop-parts.json and hop-parts.md go (default bench/results)`;

const SERVER_ID = 'spiffe://cluster.local/ns/shop/sa/reviews';
const CLIENT_ID = 'spiffe://cluster.local/ns/shop/sa/productpage';
const TUNNELS_PER_ROUND = 3000;
const CALLS_PER_ROUND = 20_000;
const BYTES_PER_ROUND = 256 * 1024 * 1024;
const CHUNK = 64 * 1024;

interface Part { name: string; unit: 'µs / connection' | 'CPU-s / GB'; measure(): Promise<number> }

/** CPU (user + system) seconds that `fn` takes, with the event loop's work included. */
async function cpuSeconds(fn: () => Promise<void> | void): Promise<number> {
  const start = process.cpuUsage();
  await fn();
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1e6;
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

/** The workload and the policies the destination agent evaluates: 19 that do not match, then one that does. */
function policyFixture(): { authorizer: L4Authorizer; workload: Workload } {
  const policies: ConfigObject[] = [];
  for (let i = 0; i < 20; i++) {
    const last = i === 19;
    policies.push({
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: `allow-${String(i).padStart(2, '0')}`,
      spec: {
        selector: { matchLabels: { app: 'reviews' } },
        action: 'ALLOW',
        rules: [{
          from: [{ source: { principals: [last ? 'cluster.local/ns/shop/sa/productpage' : `cluster.local/ns/other-${i}/sa/client`], namespaces: [last ? 'shop' : `other-${i}`] } }, { source: { ipBlocks: [`10.${100 + i}.0.0/16`] } }],
          to: [{ operation: { ports: [last ? '9080' : String(10_000 + i)] } }],
        }],
      },
    });
  }
  const authorizer = new L4Authorizer(policies);
  const workload: Workload = {
    uid: 'uid-reviews', name: 'reviews-v1-abc', workload: 'reviews-v1', namespace: 'shop', serviceAccount: 'reviews', identity: SERVER_ID,
    ips: ['10.1.0.7'], node: 'node-2', labels: { app: 'reviews', version: 'v1' }, enrolled: true, ports: {},
  };
  const check = authorizer.evaluate(workload, { sourceIdentity: CLIENT_ID, sourceIp: '10.1.0.5', destinationIp: '10.1.0.7', destinationPort: 9080 });
  if (!check.allowed || check.policy === undefined) throw new Error(`the policy fixture must allow through its last policy, got ${JSON.stringify(check)}`);
  return { authorizer, workload };
}

const CONNECTION: ConnectionInfo = {
  reporter: 'destination',
  source: { ip: '10.1.0.5', identity: CLIENT_ID, workload: 'productpage-v1', namespace: 'shop', labels: { app: 'productpage', version: 'v1' } },
  destination: { ip: '10.1.0.7', port: 9080, identity: SERVER_ID, workload: 'reviews-v1', namespace: 'shop', labels: { app: 'reviews', version: 'v1' } },
  service: { hostname: 'reviews.shop.svc.cluster.local', name: 'reviews', namespace: 'shop' },
  mtls: true, path: 'hbone', pod: 'shop/reviews-v1-abc',
};

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, out: { type: 'string', default: RESULTS }, help: { type: 'boolean', default: false } } });
  if (values.help) {
    say(USAGE);
    return;
  }
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw new Error(`--rounds must be an integer from 1 to 50, got "${values.rounds}"\n${USAGE}`);
  const out = resolve(String(values.out));
  const dir = mkdtempSync(join(tmpdir(), 'ambit-hop-parts-'));
  const cleanups: (() => unknown)[] = [() => rmSync(dir, { recursive: true, force: true })];
  try {
    // ---- the mesh CA and one certificate per side
    const certs = await meshCertManager(dir);
    cleanups.push(() => certs.close());
    const clientCert = await certs.acquire(CLIENT_ID);

    // ---- the tunnel: the destination agent's HBONE listener answering every CONNECT with 200 and echoing
    const hbone = new HboneServer({
      certificate: () => certs.acquire(SERVER_ID), roots: () => certs.trustBundle, pod: 'shop/reviews-v1-abc',
      onTunnel: (stream) => {
        stream.respond({ ':status': 200 });
        stream.on('data', (c: Buffer) => stream.write(c));
        stream.on('end', () => stream.end());
        stream.on('error', () => undefined);
      },
    });
    const hboneListener = createServer((s) => void hbone.handle(s));
    const hbonePort = await listen(hboneListener);
    cleanups.push(() => hboneListener.close());
    const pool = new HbonePool();
    cleanups.push(() => pool.close());
    const source: HboneSource = { pod: 'shop/productpage-v1-xyz', cert: clientCert, roots: certs.trustBundle, socket: (family: 4 | 6) => tcpSocketOf(family) };
    const target = { address: '127.0.0.1', port: hbonePort, identity: SERVER_ID, authority: '10.1.0.7:9080' };
    const oneTunnel = async () => {
      const stream = await pool.open(source, target);
      await new Promise<void>((done, fail) => {
        stream.once('data', () => stream.end());
        stream.on('error', fail);
        stream.on('close', () => done());
        stream.resume();
        stream.write('x');
      });
    };
    await oneTunnel(); // the pooled connection is made once, outside the figures

    // ---- policy, metrics, access log
    const { authorizer, workload } = policyFixture();
    const metricsOnly = new ConnectionTracker(new MeshMetrics(), silentLogger);
    const accessFile = join(dir, 'access.log');
    const destination = pinoDestination({ dest: accessFile, sync: true });
    const withLog = new ConnectionTracker(new MeshMetrics(), pino({ base: undefined }, destination).child({ component: 'access' }));
    // The alternative to one synchronous write per line: batches of 4 KiB (as Envoy buffers its access log).
    const batched = pinoDestination({ dest: join(dir, 'access-batched.log'), sync: false, minLength: 4096 });
    const withBatchedLog = new ConnectionTracker(new MeshMetrics(), pino({ base: undefined }, batched).child({ component: 'access' }));
    cleanups.push(() => { metricsOnly.close(); withLog.close(); withBatchedLog.close(); destination.end(); batched.flushSync(); batched.end(); });
    const connection = (tracker: ConnectionTracker) => {
      const conn = tracker.begin(CONNECTION);
      conn.received += 1_200;
      conn.sent += 5_400;
      tracker.finish(conn);
    };

    // ---- the relay: a sender, the join under test, a sink
    const sink = createServer((s) => { s.on('error', () => undefined); s.resume(); });
    const sinkPort = await listen(sink);
    cleanups.push(() => sink.close());
    let joinWith: ((a: Socket, b: Socket) => void) | undefined;
    const front = createServer((a) => {
      a.on('error', () => undefined);
      const b = connect(sinkPort, '127.0.0.1', () => joinWith!(a, b));
      b.on('error', () => undefined);
    });
    const frontPort = await listen(front);
    cleanups.push(() => front.close());
    const relay = (how: (a: Socket, b: Socket) => void) => async () => {
      joinWith = how;
      const chunk = Buffer.alloc(CHUNK, 7);
      const s = connect(frontPort, '127.0.0.1');
      await new Promise<void>((r) => s.once('connect', () => r()));
      const seconds = await cpuSeconds(() => new Promise<void>((done, fail) => {
        let sent = 0;
        const pump = () => {
          while (sent < BYTES_PER_ROUND) {
            sent += chunk.length;
            if (!s.write(chunk)) return void s.once('drain', pump);
          }
          s.end();
        };
        s.on('error', fail);
        s.on('close', () => done());
        s.resume();
        pump();
      }));
      return seconds / (BYTES_PER_ROUND / 1e9);
    };

    const parts: Part[] = [
      { name: 'tunnel (HBONE CONNECT, both ends)', unit: 'µs / connection', measure: async () => 1e6 * await cpuSeconds(async () => { for (let i = 0; i < TUNNELS_PER_ROUND; i++) await oneTunnel(); }) / TUNNELS_PER_ROUND },
      { name: 'policy (20 AuthorizationPolicies)', unit: 'µs / connection', measure: async () => 1e6 * await cpuSeconds(() => { for (let i = 0; i < CALLS_PER_ROUND; i++) authorizer.evaluate(workload, { sourceIdentity: CLIENT_ID, sourceIp: '10.1.0.5', destinationIp: '10.1.0.7', destinationPort: 9080 }); }) / CALLS_PER_ROUND },
      { name: 'metrics (Istio TCP metrics)', unit: 'µs / connection', measure: async () => 1e6 * await cpuSeconds(() => { for (let i = 0; i < CALLS_PER_ROUND; i++) connection(metricsOnly); }) / CALLS_PER_ROUND },
      { name: 'metrics + access log', unit: 'µs / connection', measure: async () => 1e6 * await cpuSeconds(() => { for (let i = 0; i < CALLS_PER_ROUND; i++) connection(withLog); }) / CALLS_PER_ROUND },
      { name: 'metrics + access log (batched)', unit: 'µs / connection', measure: async () => 1e6 * await cpuSeconds(async () => { for (let i = 0; i < CALLS_PER_ROUND; i++) connection(withBatchedLog); await new Promise<void>((r) => batched.flush(() => r())); }) / CALLS_PER_ROUND },
      { name: 'bare relay (pipe both ways)', unit: 'CPU-s / GB', measure: relay((a, b) => { a.pipe(b); b.pipe(a); }) },
      { name: 'ambit splice (+ counting, idle watch, resets)', unit: 'CPU-s / GB', measure: relay((a, b) => splice(a, b, () => undefined, { idleMs: 3_600_000, counter: { received: 0, sent: 0 } })) },
    ];

    const samples = new Map<string, number[]>(parts.map((p) => [p.name, []]));
    for (let r = 0; r < rounds; r++) {
      for (const p of shuffled(parts)) samples.get(p.name)!.push(await p.measure());
      process.stderr.write(`round ${r + 1}/${rounds}\n`);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const of = (i: number) => samples.get(parts[i]!.name)!;
    // Each round measured every part: a ratio is the median of the rounds' own ratios, so that a
    // slow round (the machine is shared) moves both sides of it.
    const perRound = (f: (r: number) => number) => median(Array.from({ length: rounds }, (_, r) => f(r)));
    const accessLog = (r: number) => of(3)[r]! - of(2)[r]!;
    const batchedLog = (r: number) => of(4)[r]! - of(2)[r]!;
    const rows = [
      { part: 'tunnel (HBONE CONNECT, both ends)', unit: 'µs / connection', value: median(of(0)), x_bare: 1 },
      { part: '+ policy (20 AuthorizationPolicies)', unit: 'µs / connection', value: median(of(1)), x_bare: perRound((r) => of(1)[r]! / of(0)[r]!) },
      { part: '+ metrics (Istio TCP metrics)', unit: 'µs / connection', value: median(of(2)), x_bare: perRound((r) => of(2)[r]! / of(0)[r]!) },
      { part: '+ access log (a JSON line, one synchronous write each)', unit: 'µs / connection', value: perRound(accessLog), x_bare: perRound((r) => accessLog(r) / of(0)[r]!) },
      { part: '+ access log (a JSON line, written in batches of 4 KiB instead)', unit: 'µs / connection', value: perRound(batchedLog), x_bare: perRound((r) => batchedLog(r) / of(0)[r]!) },
      { part: 'bare relay (pipe both ways)', unit: 'CPU-s / GB', value: median(of(5)), x_bare: 1 },
      { part: 'ambit splice (+ byte counting, idle watch)', unit: 'CPU-s / GB', value: median(of(6)), x_bare: perRound((r) => of(6)[r]! / of(5)[r]!) },
    ].map((r) => ({ ...r, value: round(r.value, 3), x_bare: round(r.x_bare, 3) }));

    const meta = { ...machine(), rounds, tunnels_per_round: TUNNELS_PER_ROUND, calls_per_round: CALLS_PER_ROUND, bytes_per_round: BYTES_PER_ROUND };
    say(`hop parts: ${meta.node}, ${meta.cpus} CPUs (${meta.cpu_model}), median of ${rounds} rounds`);
    for (const line of table(['part', 'unit', 'value', 'x bare'], rows.map((r) => [r.part, r.unit, fmt(r.value, 3), fmt(r.x_bare, 3)]))) say(line);
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'hop-parts.json'), `${JSON.stringify({ meta, rows, samples: Object.fromEntries(samples) }, null, 2)}\n`);
    writeFileSync(join(out, 'hop-parts.md'), [
      '# hop-parts: what each part of the L4 hop costs',
      '',
      `${meta.date} · kernel ${meta.kernel} · Node.js ${meta.node} · ${meta.cpus} CPUs (${meta.cpu_model}) · median of ${rounds} interleaved rounds`,
      '',
      'CPU of the node agent\'s own code, in one process (`bench/hop-parts.ts`). Per connection: the tunnel is what the bare relay pays (an HBONE CONNECT stream over a pooled mutual-TLS connection, both ends); policy, metrics and the access log are what ambit adds, each over the tunnel ("x bare", the median of the rounds\' own ratios). Per byte: the agent\'s splice over `pipe()` both ways.',
      '',
      ...mdTable(['part', 'unit', 'value', 'x bare'], rows.map((r) => [r.part, r.unit, fmt(r.value, 3), fmt(r.x_bare, 3)])),
      '',
    ].join('\n'));
    say(`results: ${join(out, 'hop-parts.json')}, ${join(out, 'hop-parts.md')}`);
  } finally {
    for (const c of cleanups.reverse()) {
      try { await c(); } catch { /* best effort */ }
    }
  }
}

main().then(() => process.exit(0), (err: Error) => {
  process.stderr.write(`hop-parts: ${err.message}\n`);
  process.exit(1);
});
