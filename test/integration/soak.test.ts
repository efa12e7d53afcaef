/**
 * bench/soak.ts at CI's sizes, on a real 2-node local cluster: 1,000 connections held through
 * the mesh for 30 s, then 10,000 short ones; every one served, and afterwards the agents' file
 * descriptors, connection tables and BPF maps back to their baseline and RSS bounded. Then the
 * connection bound: with AMBIT_AGENT_LIMITS maxConnections=1200 on the agents, 1,300 held
 * connections see at least 100 refused, counted as max-connections, the agent stays up, and new
 * connections are served again once the held ones close.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Cluster } from '../../bench/lib.js';
import { connRate, origDstOpen, runSoak, sampleAgents, SOAK_APP, type SoakResult } from '../../bench/soak.js';
import { describeAsRoot } from './helpers/root.js';

const tmp = mkdtempSync(join(tmpdir(), 'ambit-soak-'));
const name = `sk${Math.random().toString(36).slice(2, 6)}`;
// The agents' connection bound, low enough to reach: the local runtime hands it to them.
const env = { ...process.env, AMBIT_LOCAL_STATE: join(tmp, 'state'), AMBIT_AGENT_LIMITS: 'maxConnections=1200' };
const cluster = new Cluster(name, env);

describeAsRoot('soak and connection bound', () => {
  let soak: SoakResult;

  beforeAll(async () => {
    writeFileSync(join(tmp, 'soak.yaml'), SOAK_APP);
    await cluster.up(tmp, 180);
  }, 240_000);

  afterAll(async () => {
    await cluster.down().catch(() => undefined);
    rmSync(tmp, { recursive: true, force: true });
  }, 120_000);

  it('holds 1,000 connections for 30 s and serves 10,000 short ones; nothing it keeps grows', async () => {
    soak = await runSoak(cluster, { held: 1000, holdSeconds: 30, short: 10_000, shortRate: 500, overload: false, sampleSeconds: 2 });
    expect(soak.held.opened).toMatchObject({ attempted: 1000, ok: 1000, failed: 0 });
    expect(soak.short.run).toMatchObject({ attempted: 10_000, ok: 10_000, failed: 0 });
    // While held, the client's agent carried them all.
    const node1 = soak.held.during.filter((s) => s.node === 'node-1');
    expect(Math.max(...node1.map((s) => s.tables.connections ?? 0))).toBeGreaterThanOrEqual(1000);
    for (const b of soak.baseline) {
      const after = soak.short.after.find((s) => s.node === b.node)!;
      expect(after.pid, `${b.node}'s agent never restarted`).toBe(b.pid);
      // Back to the baseline, but for the HBONE connections pooled for the run (closed when idle 60 s).
      const pooled = (after.tables.hbone_pool ?? 0) - (b.tables.hbone_pool ?? 0) + (after.tables.hbone_server_connections ?? 0) - (b.tables.hbone_server_connections ?? 0);
      expect(after.fds, `${b.node} fds`).toBeLessThanOrEqual(b.fds + Math.max(0, pooled) + 5);
      expect(after.tables.connections, `${b.node} connections`).toBeLessThanOrEqual((b.tables.connections ?? 0) + 5);
      // Each connection's entry is deleted when its socket closes: by the datapath's own counters, none is left.
      expect(after.counters.origdst_recorded ?? 0, `${b.node} recorded an entry per redirected connect`).toBe(after.counters.connect_redirected ?? 0);
      expect(origDstOpen(after), `${b.node} ambit_orig_dst entries still open`).toBeLessThanOrEqual(origDstOpen(b) + 5);
      expect(after.maps.ambit_pending ?? 0, `${b.node} ambit_pending`).toBeLessThanOrEqual((b.maps.ambit_pending ?? 0) + 5);
      expect(after.tables.tcp_metric_series ?? 0, `${b.node} TCP series held`).toBeLessThanOrEqual(50);
      // CI's 20 s is mostly warm-up for the heap: RSS after its first tenth within ±25 % (the full run measures ±5 %).
      const rss = soak.short.rss[b.node];
      if (rss) expect(rss.spreadPct, `${b.node} RSS spread`).toBeLessThan(25);
    }
  }, 300_000);

  it('refuses connections past its bound, counting why, stays up, and serves again after', async () => {
    const status = await cluster.status();
    const before = await sampleAgents(cluster, status);
    const held = await connRate(cluster, { rate: 1300, seconds: 1, 'hold-ms': 5000, 'timeout-ms': 10_000 }, 60_000);
    expect(held.attempted).toBe(1300);
    // The agents carry at most 1,200 each; the rest were reset.
    expect(held.ok).toBeLessThanOrEqual(1200);
    expect(held.failed).toBeGreaterThanOrEqual(100);
    expect(Object.keys(held.reasons).every((r) => ['ECONNRESET', 'EMPTY_ANSWER'].includes(r))).toBe(true);
    const after = await sampleAgents(cluster, status);
    const node1 = after.find((s) => s.node === 'node-1')!;
    expect(node1.pid).toBe(before.find((s) => s.node === 'node-1')!.pid);
    // Refused where each met the bound: the client's agent (outbound) or the echo's (hbone).
    const maxConnRefusals = (samples: typeof after) => samples.flatMap((x) => Object.entries(x.refused)).filter(([k]) => k.startsWith('max-connections/')).reduce((a, [, v]) => a + v, 0);
    expect(maxConnRefusals(after) - maxConnRefusals(before)).toBeGreaterThanOrEqual(held.failed);
    const again = await connRate(cluster, { rate: 100, seconds: 2, 'timeout-ms': 5000 }, 60_000);
    expect(again).toMatchObject({ attempted: 200, ok: 200, failed: 0 });
  }, 120_000);
});
