/**
 * The mesh CA's throughput and what a busy node waits for, on loopback:
 *
 *   1. sign in process     CertificateAuthority.sign, CSRs made beforehand (the CA's own cost)
 *   2. over gRPC/TLS       CaClient → CaServer, CSRs made beforehand, C calls in flight
 *   3. 100 new pods        a node agent's CertManager acquires 100 identities at once:
 *                          key + CSR + gRPC + signing each; the time until the last one is ready
 *
 * Ratios are against (1) in the same run, since absolute figures depend on the machine.
 *   npx tsx bench/ca-issue.ts [--certs N] [--concurrency C] [--pods P]
 */
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CertificateAuthority, FileCaStore } from '../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaClient, CaServer } from '../src/identity/ca-server.js';
import { CertManager } from '../src/identity/cert-manager.js';
import { createCsr, generateKeyPair } from '../src/identity/pki.js';

const { values } = parseArgs({ options: { certs: { type: 'string', default: '400' }, concurrency: { type: 'string', default: '8' }, pods: { type: 'string', default: '100' } } });
const certs = Number(values.certs);
const concurrency = Number(values.concurrency);
const pods = Number(values.pods);
for (const [k, v] of Object.entries({ certs, concurrency, pods })) {
  if (!Number.isInteger(v) || v < 1 || v > 100_000) throw new Error(`--${k} must be an integer from 1 to 100000`);
}

const identity = (i: number) => `spiffe://cluster.local/ns/bench/sa/sa-${i}`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-ca-'));
const say = (s = '') => process.stdout.write(`${s}\n`);

async function pool<T>(n: number, width: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = new Array(n);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(width, n) }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  }));
  return out;
}

async function main(): Promise<void> {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  const ids = Array.from({ length: Math.max(certs, pods) }, (_, i) => identity(i));
  const server = await CaServer.start({
    ca,
    authenticator: new BootstrapTokenAuthenticator({ 'node-1': 'bench-token' }),
    directory: { identitiesOnNode: () => new Set(ids) },
    host: '127.0.0.1',
    port: 0,
  });
  const client = new CaClient({ address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: 'bench-token' });
  try {
    say(`making ${certs} CSRs...`);
    const csrs = await pool(certs, 4, async (i) => createCsr(await generateKeyPair(), ids[i]!));
    // Warm up both paths (JIT, TLS session).
    await pool(20, concurrency, (i) => ca.sign({ csr: csrs[i % certs]!, identity: ids[i % certs]! }));
    await pool(20, concurrency, (i) => client.createCertificate(csrs[i % certs]!, ids[i % certs]!, 0));

    let t = performance.now();
    await pool(certs, concurrency, (i) => ca.sign({ csr: csrs[i]!, identity: ids[i]! }));
    const inProcess = certs / ((performance.now() - t) / 1000);

    t = performance.now();
    await pool(certs, concurrency, (i) => client.createCertificate(csrs[i]!, ids[i]!, 0));
    const grpcRate = certs / ((performance.now() - t) / 1000);

    const manager = new CertManager({ source: client });
    await manager.start();
    t = performance.now();
    const waits = await Promise.all(ids.slice(0, pods).map(async (id) => {
      await manager.acquire(id);
      return performance.now() - t;
    }));
    const all = performance.now() - t;
    manager.close();
    waits.sort((a, b) => a - b);

    const rows = [
      ['sign in process', `${inProcess.toFixed(0)} certs/s`, '1.00'],
      [`over gRPC/TLS (${concurrency} in flight)`, `${grpcRate.toFixed(0)} certs/s`, (grpcRate / inProcess).toFixed(2)],
      [`${pods} new pods on one node`, `all ready after ${all.toFixed(0)} ms (p50 ${waits[Math.floor(pods / 2)]!.toFixed(0)} ms)`, `${(pods / (all / 1000) / inProcess).toFixed(2)}`],
    ];
    say();
    say(`${cpus().length} CPU ${cpus()[0]?.model ?? ''}, Node.js ${process.version}`);
    for (const r of rows) say(`${r[0]!.padEnd(34)} ${r[1]!.padEnd(40)} rate x in-process ${r[2]}`);
    const out = join(dirname(fileURLToPath(import.meta.url)), 'results', 'ca-issue.json');
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, certs, concurrency, pods, inProcessPerSec: inProcess, grpcPerSec: grpcRate, podsAllReadyMs: all, podsP50Ms: waits[Math.floor(pods / 2)] }, null, 2)}\n`);
  } finally {
    client.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
