/**
 * `ambit dashboard` on a local cluster with traffic, looked at in a real headless Chromium
 * (Debian's package): the service graph's nodes and edge (mTLS, through the waypoint), a
 * workload's identity, waypoint and the policy that selects it, a trace the waypoint exported to
 * the dashboard's own OTLP receiver, and access-log lines. A screenshot is saved under
 * test-artifacts/.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { cli, ROOT } from './helpers/cli.js';
import { describeAsRoot } from './helpers/root.js';
import { LOAD, WEB_APP } from './helpers/web-app.js';

const run = promisify(execFile);
const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-dash-'));
const CLUSTER = `db${Math.random().toString(36).slice(2, 6)}`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-dash-m-'));
const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };
const { ambit, ok } = cli(env);
const ARTIFACTS = join(ROOT, 'test-artifacts');
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));

const POLICY = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-web, namespace: obs }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules: [{}]
`;


let dashboard: ChildProcess | undefined;
let url = '';
let clientPod = '';
const load = async () => JSON.parse(await ok(['local', 'exec', '--cluster', CLUSTER, `obs/${clientPod}`, '--', 'node', '-e', LOAD, '100', '10'])) as Record<string, number>;
const api = async <T>(path: string): Promise<T> => (await (await fetch(new URL(path, url))).json()) as T;

/** The DOM after the page's scripts ran (Chromium's virtual time lets its fetches finish). */
async function dom(hash: string): Promise<string> {
  const { stdout } = await run(CHROMIUM!, ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1400,1100', '--virtual-time-budget=10000', '--dump-dom', `${url}${hash}`], { timeout: 60_000, maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

describeAsRoot('ambit dashboard in a browser', () => {
  beforeAll(async () => {
    if (!CHROMIUM) throw new Error('chromium is not installed: scripts/setup.sh --observe installs it');
    writeFileSync(join(dir, 'app.yaml'), `${WEB_APP}---${POLICY}`);
    await ok(['local', 'up', '--cluster', CLUSTER, '-f', dir, '--timeout', '120']);
    // Spans go to the dashboard's receiver on the cluster's own address.
    await ok(['waypoint', 'apply', '-n', 'obs', '--enroll-namespace', '--cluster', CLUSTER, '--tracing-endpoint', 'http://172.30.0.1:4318', '--tracing-sampling', '100']);
    await until('the waypoint pod ready', async () => /obs\s+waypoint\s+Running 1\/1/.test(await ok(['waypoint', 'list', '--cluster', CLUSTER])) || undefined, { timeout: 60_000, interval: 500 });
    const status = JSON.parse(await ok(['local', 'status', '--cluster', CLUSTER, '--json'])) as { pods: Array<{ namespace: string; name: string }> };
    clientPod = status.pods.find((p) => p.namespace === 'obs' && p.name.startsWith('client-'))!.name;
    dashboard = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'dashboard', '--cluster', CLUSTER, '--interval', '1', '--window', '10'], { cwd: ROOT, env });
    let out = '';
    dashboard.stdout!.on('data', (c: Buffer) => { out += c.toString(); });
    dashboard.stderr!.on('data', (c: Buffer) => { out += c.toString(); });
    url = await until('the dashboard\'s URL', () => /ambit dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out)?.[1], { timeout: 30_000, interval: 100 });
    await until('the OTLP receiver in the cluster', () => out.includes('traces: OTLP/HTTP JSON on http://172.30.0.1:4318') || undefined, { timeout: 10_000, interval: 100 });
    await until('requests through the waypoint', async () => ((await load())['200'] ?? 0) > 0 || undefined, { timeout: 30_000, interval: 500 });
  }, 240_000);

  afterAll(async () => {
    dashboard?.kill('SIGTERM');
    await ambit(['local', 'down', '--cluster', CLUSTER]).catch(() => undefined);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows the graph, the workload, a trace and the access log', async () => {
    await load();
    await until('the edge client → web in the API', async () => {
      const o = await api<{ edges: Array<{ source: string; destination: string; via: string }> }>('/api/overview');
      return o.edges.some((e) => e.source === 'obs/client' && e.destination === 'obs/web' && e.via === 'waypoint') || undefined;
    }, { timeout: 30_000, interval: 500 });
    await until('a trace from the waypoint', async () => (await api<{ traces: unknown[] }>('/api/traces')).traces.length > 0 || undefined, { timeout: 20_000, interval: 500 });

    const html = await dom('#workload=obs/web&trace=latest');
    expect(html).toContain('data-loaded="true"');
    expect(html).toContain('data-node="obs/client"');
    expect(html).toContain('data-node="obs/web"');
    // The waypoint's own hops are folded into the one edge it carries.
    expect(html).not.toMatch(/data-node="obs\/waypoint/);
    expect(html).toMatch(/data-edge="obs\/client&gt;obs\/web" data-via="waypoint" data-mtls="true"/);
    expect(html).toMatch(/\d+\.\d+ rps · 9\d\.\d% · p99 [\d.]+ m?s/);
    expect(html).toContain('spiffe://cluster.local/ns/obs/sa/web');
    expect(html).toMatch(/<dt>waypoint<\/dt><dd>obs\/waypoint<\/dd>/);
    expect(html).toContain('data-policy="obs/allow-web"');
    expect(html).toMatch(/data-span="[0-9a-f]{16}"/);
    expect(html).toMatch(/data-log="\d+"/);

    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, 'dashboard.png');
    rmSync(shot, { force: true });
    await run(CHROMIUM!, ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--hide-scrollbars', '--window-size=1400,1000', '--virtual-time-budget=10000', `--screenshot=${shot}`, `${url}#workload=obs/web&trace=latest`], { timeout: 60_000 });
    expect(statSync(shot).size).toBeGreaterThan(10_000);
  }, 120_000);

  it('answers only its own address, and refuses spans it cannot read by saying why', async () => {
    const port = new URL(url).port;
    // fetch() sets Host itself; a page reached through DNS rebinding would send its own name.
    const rebound = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/api/overview', headers: { host: `attacker.example:${port}` } }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => { body += c.toString(); });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      }).on('error', reject).end();
    });
    expect(rebound.status).toBe(421);
    expect(rebound.body).toMatch(/not this dashboard's address/);
    const page = await fetch(url);
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'self'/);
    const proto = await fetch(new URL('/v1/traces', url), { method: 'POST', headers: { 'content-type': 'application/x-protobuf' }, body: 'x' });
    expect(proto.status).toBe(415);
    expect(await proto.text()).toMatch(/OTLP\/HTTP JSON/);
    const bad = await fetch(new URL('/v1/traces', url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [{ traceId: 'zz', spanId: '1', startTimeUnixNano: '1', endTimeUnixNano: '2' }] }] }] }) });
    expect(bad.status).toBe(400);
    expect(await bad.text()).toMatch(/traceId must be 32 hex digits/);
  });
});
