/**
 * HBONE under a flood, on loopback: an agent's HBONE listener (HboneServer with a node's limiter,
 * tunnels piped to an echo app as the node agent pipes them to a pod) runs in a child process of
 * its own, so its RSS is its alone. This process is the peer:
 *
 *   1. one bulk tunnel: `--bulk-mib` MiB sent through one CONNECT stream and echoed back, read as
 *      it comes (MB/s each way), the figure the windows must not make worse;
 *   2. the flood: `--connections` mTLS connections × `--streams` CONNECT streams from one peer IP,
 *      each offered `--per-stream-mib` MiB, to an app that has stalled (it accepts and never
 *      reads), while the peer reads nothing back either (its streams are paused: no
 *      WINDOW_UPDATE ever leaves it). Once the kernel's socket buffers towards the app are full,
 *      the agent's own buffers fill to whatever bounds them. The agent's RSS is read before, and
 *      once the agent holds still (no change over 2 s, at most 60 s).
 *
 *   npx tsx bench/hbone-flood.ts [--limits default|legacy] [--connections 16] [--streams 20]
 *                                [--per-stream-mib 6] [--bulk-mib 512] [--out FILE]
 *
 * The result is also written to bench/results/hbone-flood-<limits>.json unless --out names another file.
 *
 * `--limits legacy` runs the listener with the windows and stream cap ambit had before its HBONE
 * limits (4 MiB per stream, 32 MiB per connection, 1000 streams per connection, no peer or pod
 * caps, 120 s handshake timeout), for comparison. Everything offered is bounded: at most
 * connections × streams × per-stream-mib MiB. All traffic is on 127.0.0.1; the temporary CA
 * directory and the child are removed on exit, on failure and on Ctrl-C.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CertManager } from '../src/identity/cert-manager.js';
import { DEFAULT_HBONE_LIMITS, HboneLimiter, type HboneLimits } from '../src/hbone/limits.js';
import { HboneServer } from '../src/hbone/hbone.js';
import { meshCertManager } from './lib.js';

const SERVER = 'spiffe://cluster.local/ns/bench/sa/app';
const PEER = 'spiffe://cluster.local/ns/bench/sa/flood';
const MiB = 1024 * 1024;

/** What ambit's HBONE listener had before its limits, as limits. */
const LEGACY: Partial<HboneLimits> = {
  streamWindow: 4 * MiB, sessionWindow: 32 * MiB, maxStreamsPerConnection: 1000, maxSessionMemoryMb: 10,
  maxConnectionsPerPeer: 1e9, maxConnectionsPerPod: 1e9, maxConnections: 1e9, maxStreamsPerPeer: 1e9, maxStreamsPerPod: 1e9, maxStreams: 1e9,
  handshakeTimeoutMs: 120_000,
};

interface AgentReport { rss: number; heapUsed: number; external: number; arrayBuffers: number; usage: { connections: number; streams: number }; refused: Record<string, number> }

/** The child: the agent's listener and an echo app; answers 'report' with its memory and counts. */
async function agent(dir: string, limits: Partial<HboneLimits>): Promise<void> {
  const certs = await meshCertManager(dir);
  // Port 80 of the app echoes; port 81 accepts and never reads (an app that has stalled).
  const echo = createServer((s) => { s.on('error', () => undefined); s.pipe(s); });
  const stalled = createServer((s) => { s.on('error', () => undefined); s.pause(); });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  await new Promise<void>((r) => stalled.listen(0, '127.0.0.1', r));
  const appPorts: Record<string, number> = { '10.0.0.1:80': (echo.address() as AddressInfo).port, '10.0.0.1:81': (stalled.address() as AddressInfo).port };
  const limiter = new HboneLimiter({ limits });
  const hbone = new HboneServer({
    certificate: () => certs.acquire(SERVER), roots: () => certs.trustBundle, limiter, pod: 'bench/app',
    onTunnel: (stream, info) => {
      const s = connect(appPorts[info.authority] ?? 0, '127.0.0.1', () => {
        stream.respond({ ':status': 200 });
        stream.pipe(s).pipe(stream);
      });
      s.on('error', () => stream.destroy());
      stream.on('close', () => s.destroy());
    },
  });
  const listener = createServer((s) => void hbone.handle(s));
  await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
  process.on('message', (msg) => {
    if (msg !== 'report') return;
    globalThis.gc?.();
    const m = process.memoryUsage();
    process.send!({ rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers, usage: hbone.usage(), refused: limiter.refused() } satisfies AgentReport);
  });
  process.on('disconnect', () => process.exit(0));
  process.send!({ port: (listener.address() as AddressInfo).port });
}

function peerSession(port: number, certs: CertManager, cert: Awaited<ReturnType<CertManager['acquire']>>, windows: { streamWindow: number; sessionWindow: number }): http2.ClientHttp2Session {
  const socket = tls.connect({
    host: '127.0.0.1', port, cert: cert.chain.join(''), key: cert.key.export({ type: 'pkcs8', format: 'pem' }) as string,
    ca: certs.trustBundle, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
  });
  socket.on('error', () => undefined);
  // The windows ambit's own pool advertises (with the limits compared); no cap on what this peer queues to send (a flood does not limit itself).
  const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => socket, maxSessionMemory: 1_000_000, settings: { initialWindowSize: windows.streamWindow } });
  session.on('error', () => undefined);
  session.once('connect', () => session.setLocalWindowSize(windows.sessionWindow));
  return session;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: {
    limits: { type: 'string', default: 'default' }, connections: { type: 'string', default: '16' }, streams: { type: 'string', default: '20' },
    'per-stream-mib': { type: 'string', default: '6' }, 'bulk-mib': { type: 'string', default: '512' }, out: { type: 'string' },
  } });
  const int = (name: keyof typeof values, min: number, max: number): number => {
    const v = Number(values[name]);
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, got "${String(values[name])}"`);
    return v;
  };
  if (values.limits !== 'default' && values.limits !== 'legacy') throw new Error(`--limits must be "default" or "legacy", got "${values.limits}"`);
  const CONNECTIONS = int('connections', 1, 200);
  const STREAMS = int('streams', 1, 1000);
  const PER_STREAM = int('per-stream-mib', 1, 64) * MiB;
  const BULK = int('bulk-mib', 16, 8192) * MiB;
  const limits = values.limits === 'legacy' ? LEGACY : {};
  const windows = { ...DEFAULT_HBONE_LIMITS, ...limits };

  const dir = mkdtempSync(join(tmpdir(), 'ambit-hbone-flood-'));
  let child: ChildProcess | undefined;
  const sessions: http2.ClientHttp2Session[] = [];
  const cleanup = () => {
    for (const s of sessions) s.destroy();
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => { cleanup(); process.exit(130); });
  try {
    const certs = await meshCertManager(dir);
    const cert = await certs.acquire(PEER);
    await certs.acquire(SERVER);
    const agentProcess = fork(fileURLToPath(import.meta.url), [], {
      env: { ...process.env, HBONE_FLOOD_AGENT: JSON.stringify({ dir, limits }) },
      execArgv: ['--expose-gc', '--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    child = agentProcess;
    const port = await new Promise<number>((resolve, reject) => {
      agentProcess.once('message', (m) => resolve((m as { port: number }).port));
      agentProcess.once('exit', (code) => reject(new Error(`the agent process exited (${code}) before listening`)));
    });
    const report = () => new Promise<AgentReport>((resolve) => { agentProcess.once('message', (m) => resolve(m as AgentReport)); agentProcess.send('report'); });

    // 1. One bulk tunnel, read as it comes.
    const bulkSession = peerSession(port, certs, cert, windows);
    sessions.push(bulkSession);
    const bulk = await new Promise<{ seconds: number }>((resolve, reject) => {
      const stream = bulkSession.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:80' }, { endStream: false });
      stream.once('error', reject);
      stream.once('response', (h) => {
        if (h[':status'] !== 200) return reject(new Error(`bulk tunnel answered ${String(h[':status'])}`));
        const chunk = Buffer.alloc(64 * 1024, 7);
        const t0 = process.hrtime.bigint();
        let sent = 0;
        let got = 0;
        const pump = () => {
          while (sent < BULK) {
            sent += chunk.length;
            if (!stream.write(chunk)) { stream.once('drain', pump); return; }
          }
        };
        stream.on('data', (c: Buffer) => {
          got += c.length;
          if (got >= BULK) {
            resolve({ seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
            stream.close();
          }
        });
        pump();
      });
    });
    const bulkMBs = BULK / 1e6 / bulk.seconds;

    // 2. The flood.
    const before = await report();
    const answers = new Map<string, number>();
    const payload = Buffer.alloc(PER_STREAM, 1);
    for (let c = 0; c < CONNECTIONS; c++) {
      const session = peerSession(port, certs, cert, windows);
      sessions.push(session);
      session.once('close', () => answers.set('connection closed', (answers.get('connection closed') ?? 0) + 1));
      await new Promise<void>((resolve, reject) => {
        session.once('remoteSettings', () => resolve());
        session.once('close', () => reject(new Error('the agent closed a flood connection before HTTP/2 began')));
      });
      for (let i = 0; i < STREAMS; i++) {
        if (session.destroyed || session.closed) break;
        const req = session.request({ ':method': 'CONNECT', ':authority': '10.0.0.1:81' }, { endStream: false });
        req.on('error', () => undefined);
        req.once('response', (h) => {
          const key = String(h['ambit-code'] ?? h[':status']);
          answers.set(key, (answers.get(key) ?? 0) + 1);
        });
        req.pause();
        req.write(payload);
      }
    }
    let after = await report();
    let still = 0;
    const t0 = Date.now();
    while (still < 4 && Date.now() - t0 < 60_000) {
      await new Promise((r) => setTimeout(r, 500));
      const now = await report();
      still = Math.abs(now.rss - after.rss) < MiB ? still + 1 : 0;
      after = now;
    }
    const result = {
      when: new Date().toISOString(), node: process.version, limits: values.limits,
      flood: { connections: CONNECTIONS, streamsPerConnection: STREAMS, offeredMiB: (CONNECTIONS * STREAMS * PER_STREAM) / MiB, answers: Object.fromEntries(answers) },
      bulkMBps: Math.round(bulkMBs), bulkMiB: BULK / MiB,
      agent: {
        rssBeforeMiB: +(before.rss / MiB).toFixed(1), rssAfterMiB: +(after.rss / MiB).toFixed(1), growthMiB: +((after.rss - before.rss) / MiB).toFixed(1),
        arrayBuffersAfterMiB: +(after.arrayBuffers / MiB).toFixed(1), heldStreams: after.usage.streams, heldConnections: after.usage.connections,
        refused: Object.fromEntries(Object.entries(after.refused).filter(([, n]) => n > 0)),
      },
    };
    console.log(`limits ${values.limits}: one bulk tunnel ${result.bulkMBps} MB/s each way (${result.bulkMiB} MiB echoed)`);
    console.log(`flood: ${CONNECTIONS} connections × ${STREAMS} streams, ${result.flood.offeredMiB} MiB offered, never read; answers ${JSON.stringify(result.flood.answers)}`);
    console.log(`agent RSS ${result.agent.rssBeforeMiB} MiB before, ${result.agent.rssAfterMiB} MiB after (+${result.agent.growthMiB}); ${result.agent.heldStreams} streams and ${result.agent.heldConnections} connections held; refused ${JSON.stringify(result.agent.refused)}`);
    writeFileSync(values.out ?? fileURLToPath(new URL(`results/hbone-flood-${values.limits}.json`, import.meta.url)), `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    cleanup();
  }
}

const agentArgs = process.env.HBONE_FLOOD_AGENT;
if (agentArgs) {
  const { dir, limits } = JSON.parse(agentArgs) as { dir: string; limits: Partial<HboneLimits> };
  agent(dir, limits).catch((err: Error) => { console.error(err); process.exit(1); });
} else {
  main().then(() => process.exit(0), (err: Error) => { console.error(err.message); process.exit(1); });
}
