/**
 * Seeing the mesh on a local cluster with a real Prometheus (Debian's package): a client sends
 * requests of which a known share fails through a waypoint to a 2-replica Deployment; then
 * - every panel of the Grafana dashboards in deploy/grafana runs against the cluster's Prometheus
 *   and answers a series, with the success rate the traffic had;
 * - `ambit stat` shows the same from the Prometheus, and exactly the known share when it samples
 *   the proxies itself over a window the traffic falls in.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { httpGetInNetns } from '../../src/host/netns.js';
import { DASHBOARDS, panelExpressions } from '../../src/observe/dashboards.js';
import type { StatRow } from '../../src/observe/stat.js';
import { until } from '../helpers/wait.js';
import { cli, ROOT } from './helpers/cli.js';
import { describeAsRoot } from './helpers/root.js';
import { LOAD, WEB_APP } from './helpers/web-app.js';

const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-obs-'));
const CLUSTER = `ob${Math.random().toString(36).slice(2, 6)}`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-obs-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };
const { ambit, ok } = cli(env);

const REQUESTS = 400;
const FAIL_EVERY = 10;



let clientPod = '';
async function load(): Promise<Record<string, number>> {
  return JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, `obs/${clientPod}`, '--', 'node', '-e', LOAD, String(REQUESTS), String(FAIL_EVERY)])) as Record<string, number>;
}

const underlay = `/run/netns/ambit-${CLUSTER}.underlay`;
async function promql(expr: string): Promise<Array<{ metric: Record<string, string>; value: [number, string] }>> {
  const r = await httpGetInNetns(underlay, '172.30.0.1', 9090, `/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = JSON.parse(r.body) as { status: string; error?: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> } };
  if (body.status !== 'success') throw new Error(`${expr}: ${body.error}`);
  return body.data.result;
}

const webRow = (rows: StatRow[]) => rows.find((r) => r.namespace === 'obs' && r.name === 'web');

describeAsRoot('observability: Prometheus, dashboards and ambit stat', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'app.yaml'), WEB_APP);
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', dir, '--prometheus', '--scrape-interval', '1s', '--timeout', '120']);
    await ok(['waypoint', 'apply', '-n', 'obs', '--enroll-namespace', '--cluster', CLUSTER]);
    await until('the waypoint pod ready', async () => /obs\s+waypoint\s+Running 1\/1/.test(await ok(['waypoint', 'list', '--cluster', CLUSTER])) || undefined, { timeout: 60_000, interval: 500 });
    const status = JSON.parse(await ok(['local', 'status', '--cluster', CLUSTER, '--json'])) as { pods: Array<{ namespace: string; name: string }> };
    clientPod = status.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('client-'))!.name;
    // The waypoint's traffic reaches it once its node agents know of it.
    await until('requests through the waypoint', async () => ((await load())['200'] ?? 0) > 0 || undefined, { timeout: 30_000, interval: 500 });
  }, 240_000);

  afterAll(async () => {
    await ambit(['local', 'down', '--cluster', CLUSTER]).catch(() => undefined);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('samples the proxies itself over a window: exactly the share of errors the client saw', async () => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'stat', 'deploy', '-n', 'obs', '--cluster', CLUSTER, '--no-prometheus', '--window', '10s', '--json'], { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    await until('stat to take its first scrape', () => stderr.includes('sampling') || undefined, { timeout: 20_000, interval: 50 });
    const seen = await load();
    expect(seen).toEqual({ 200: REQUESTS - REQUESTS / FAIL_EVERY, 500: REQUESTS / FAIL_EVERY });
    expect(await exited, stderr).toBe(0);
    const rows = (JSON.parse(stdout) as { rows: StatRow[] }).rows;
    const web = webRow(rows)!;
    expect(web.meshed).toEqual({ meshed: 2, total: 2 });
    expect(web.signals!.requests).toBe(REQUESTS);
    expect(web.signals!.success).toBeCloseTo(1 - 1 / FAIL_EVERY, 10);
    expect(web.signals!.p50!).toBeGreaterThanOrEqual(5);
    expect(web.signals!.p99!).toBeGreaterThanOrEqual(web.signals!.p50!);
    // Open now: the waypoint's pooled connections to the pods, whatever its pool kept.
    expect(web.signals!.tcpOpen).toBeGreaterThanOrEqual(0);
    expect(rows.find((r) => r.name === 'client')).toMatchObject({ meshed: { meshed: 1, total: 1 }, signals: null });
  }, 60_000);

  it('every panel of the Grafana dashboards answers from the cluster\'s Prometheus, with the traffic\'s success rate', async () => {
    await load();
    // The workload dashboard's outbound panel is about what the workload calls: the client's.
    const vars = (expr: string) => expr.replaceAll('$__rate_interval', '2m').replaceAll('$namespace', 'obs').replaceAll('$service', 'web')
      .replaceAll('$workload', expr.includes('source_workload=~"$workload"') ? 'client' : 'web');
    for (const d of DASHBOARDS) {
      for (const expr of panelExpressions(d)) {
        const result = await until(`${d.uid}: ${expr}`, async () => {
          const r = await promql(vars(expr));
          return r.length > 0 && r.every((s) => Number.isFinite(Number(s.value[1]))) ? r : undefined;
        }, { timeout: 30_000, interval: 1000 });
        if (/^1 - /.test(expr) && d.uid !== 'ambit-mesh') {
          expect(Number(result[0]!.value[1]), `${d.uid} success rate`).toBeGreaterThan(0.85);
          expect(Number(result[0]!.value[1]), `${d.uid} success rate`).toBeLessThan(0.95);
        }
      }
    }
    // Bytes of connections still open are flushed every 5 s: wait for a flush to be scraped.
    await until('TCP bytes received by web', async () => {
      const bytes = await promql('sum(rate(istio_tcp_received_bytes_total{reporter="destination",destination_workload="web"}[2m]))');
      return Number(bytes[0]?.value[1] ?? 0) > 0 || undefined;
    }, { timeout: 30_000, interval: 1000 });
  }, 120_000);

  it('ambit stat reads the cluster\'s Prometheus when it runs one', async () => {
    const out = await ok(['stat', 'deploy', '-n', 'obs', '--cluster', CLUSTER, '--window', '2m', '--json']);
    const parsed = JSON.parse(out) as { source: string; rows: StatRow[] };
    expect(parsed.source).toMatch(/Prometheus/);
    const web = webRow(parsed.rows)!;
    expect(web.meshed).toEqual({ meshed: 2, total: 2 });
    expect(web.signals!.success!).toBeGreaterThan(0.85);
    expect(web.signals!.success!).toBeLessThan(0.95);
    const table = await ok(['stat', 'svc', '-n', 'obs', '--cluster', CLUSTER]);
    expect(table).toMatch(/^NAMESPACE\s+NAME\s+MESHED\s+SUCCESS\s+RPS\s+LATENCY_P50\s+LATENCY_P95\s+LATENCY_P99\s+TCP_CONN\s+TLS/);
    expect(table).toMatch(/obs\s+web\s+2\/2\s+\d+\.\d\d%\s+\d+\.\drps/);
  }, 60_000);

  it('ambit stat pod shows the connections the node agents hold into each pod now, over mTLS', async () => {
    // One keep-alive request, then the connection is held: the waypoint keeps its upstream to a web pod.
    const hold = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', CLUSTER, `obs/${clientPod}`, '--', 'node', '-e',
      'const http = require("http"); const agent = new http.Agent({ keepAlive: true }); http.get({ host: "web", path: "/", agent }, (r) => { r.resume(); console.log("held"); setTimeout(() => agent.destroy(), 60000); });'], { cwd: ROOT, env });
    try {
      const rows = await until('a web pod with an open mTLS connection', async () => {
        const r = (JSON.parse(await ok(['stat', 'pod', '-n', 'obs', '--cluster', CLUSTER, '--json'])) as { rows: StatRow[] }).rows;
        return r.some((row) => row.name.startsWith('web-') && (row.signals?.tcpOpen ?? 0) > 0 && row.signals?.tlsShare === 1) ? r : undefined;
      }, { timeout: 30_000, interval: 500 });
      expect(rows.filter((r) => r.name.startsWith('web-'))).toHaveLength(2);
      expect(rows.every((r) => r.meshed?.meshed === 1 && r.meshed.total === 1)).toBe(true);
      expect(rows.every((r) => r.signals?.rps === null)).toBe(true);
    } finally {
      hold.kill('SIGTERM');
    }
    const refused = await ambit(['stat', 'pod', '--from', 'deploy/client', '--cluster', CLUSTER]);
    expect(refused.stderr).toMatch(/requests are counted per workload/);
  }, 60_000);

  it('refuses a bad request by naming it', async () => {
    const r = await ambit(['stat', 'pode', '--cluster', CLUSTER]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/unknown resource kind "pode"/);
    const w = await ambit(['stat', 'deploy', '--cluster', CLUSTER, '--window', '5x']);
    expect(w.stderr).toMatch(/--window must be a duration/);
  });
});
