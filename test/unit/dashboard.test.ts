/**
 * The dashboard's parts in-process: the OTLP/JSON reader and its bounds, the trace store, the
 * service graph (waypoint hops folded, L4-only edges), which policies select a workload, the
 * access-log tailer, and the server (assets, API, Host check, CSP, refusals) over a stand-in
 * source.
 */
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PolicyItem } from '../../src/api/proxy-config.js';
import { FileTails, policySelects } from '../../src/cli/dashboard.js';
import { Dashboard, type DashboardSource } from '../../src/dashboard/server.js';
import { MAX_OTLP_BODY_BYTES, OtlpError, parseOtlpJson, TraceStore } from '../../src/dashboard/traces.js';
import type { Sample } from '../../src/observe/exposition.js';
import { buildGraph } from '../../src/observe/graph.js';
import { silentLogger } from '../../src/telemetry/log.js';

const TRACE = 'ab'.repeat(16);
const span = (spanId: string, extra: Record<string, unknown> = {}) => ({ traceId: TRACE, spanId, name: `op-${spanId.slice(0, 2)}`, startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000005000000', ...extra });
const otlp = (spans: unknown[], service = 'waypoint.obs') => JSON.stringify({ resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] }, scopeSpans: [{ spans }] }] });

describe('OTLP/HTTP JSON', () => {
  it('reads spans: ids, times in nanoseconds, status, attributes, the service', () => {
    const { spans, rejected } = parseOtlpJson(otlp([span('1'.repeat(16), { parentSpanId: '2'.repeat(16), status: { code: 2 }, attributes: [{ key: 'http.status_code', value: { intValue: '503' } }, { key: 'ok', value: { boolValue: false } }] })]));
    expect(rejected).toBe(0);
    expect(spans[0]).toMatchObject({ traceId: TRACE, parentSpanId: '2'.repeat(16), service: 'waypoint.obs', durationMs: 5, status: 2, attributes: { 'http.status_code': 503, ok: false } });
  });

  it('skips a span it cannot read and counts it; refuses a request with none, naming why', () => {
    const mixed = parseOtlpJson(otlp([span('1'.repeat(16)), span('xyz')]));
    expect(mixed.spans).toHaveLength(1);
    expect(mixed.rejected).toBe(1);
    expect(() => parseOtlpJson(otlp([span('xyz')]))).toThrow(/spanId must be 16 hex digits/);
    expect(() => parseOtlpJson('{"resourceSpans": 3}')).toThrow(OtlpError);
    expect(() => parseOtlpJson('not json')).toThrow(/not JSON/);
    expect(() => parseOtlpJson(otlp([span('1'.repeat(16), { startTimeUnixNano: 'soon' })]))).toThrow(/nanoseconds/);
  });

  it('keeps a bounded number of traces and spans, the oldest trace first out', () => {
    const store = new TraceStore(2, 2);
    const mk = (trace: string, id: string) => parseOtlpJson(otlp([{ ...span(id), traceId: trace }])).spans;
    store.add(mk('1'.repeat(32), 'a'.repeat(16)));
    store.add(mk('2'.repeat(32), 'a'.repeat(16)));
    store.add(mk('2'.repeat(32), 'b'.repeat(16)));
    store.add(mk('2'.repeat(32), 'c'.repeat(16)));
    store.add(mk('2'.repeat(32), 'b'.repeat(16)));
    store.add(mk('3'.repeat(32), 'a'.repeat(16)));
    expect(store.list().map((t) => t.traceId)).toEqual(['3'.repeat(32), '2'.repeat(32)]);
    expect(store.get('2'.repeat(32))).toHaveLength(2);
    expect(store.dropped).toBe(2);
  });
});

const pair = (s: string, d: string) => ({ source_workload_namespace: 'obs', source_workload: s, destination_workload_namespace: 'obs', destination_workload: d });

describe('the service graph', () => {
  const inventory = [
    { namespace: 'obs', name: 'client-1', workload: 'client', services: [], meshed: true },
    { namespace: 'obs', name: 'web-1', workload: 'web', services: ['web'], meshed: true },
    { namespace: 'obs', name: 'db-1', workload: 'db', services: ['db'], meshed: false },
  ];
  const after: Sample[] = [
    { name: 'istio_requests_total', labels: { reporter: 'waypoint', response_code: '200', connection_security_policy: 'mutual_tls', ...pair('client', 'web') }, value: 90 },
    { name: 'istio_requests_total', labels: { reporter: 'waypoint', response_code: '503', connection_security_policy: 'mutual_tls', ...pair('client', 'web') }, value: 10 },
    // The hops the waypoint makes itself, seen by the node agents.
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'destination', connection_security_policy: 'mutual_tls', ...pair('client', 'waypoint') }, value: 2 },
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'destination', connection_security_policy: 'mutual_tls', ...pair('waypoint', 'web') }, value: 2 },
    // web calls db over plain TCP: a pod outside the mesh.
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'destination', connection_security_policy: 'none', ...pair('web', 'db') }, value: 4 },
    { name: 'istio_tcp_connections_closed_total', labels: { reporter: 'destination', connection_security_policy: 'none', ...pair('web', 'db') }, value: 1 },
    { name: 'istio_tcp_sent_bytes_total', labels: { reporter: 'destination', connection_security_policy: 'none', ...pair('web', 'db') }, value: 1000 },
  ];

  it('folds the waypoint\'s hops into the edge it carries, and keeps L4-only edges with their mTLS share', () => {
    const g = buildGraph(inventory, new Set(['obs/waypoint']), [], after, 10);
    expect(g.nodes.map((n) => n.id)).toEqual(['obs/client', 'obs/db', 'obs/web']);
    expect(g.nodes.find((n) => n.id === 'obs/db')!.meshed).toEqual({ meshed: 0, total: 1 });
    expect(g.edges).toEqual([
      { source: 'obs/client', destination: 'obs/web', via: 'waypoint', rps: 10, success: 0.9, p99: null, mtls: 1, connectionsOpen: null, bytesPerSecond: null },
      { source: 'obs/web', destination: 'obs/db', via: 'tcp', rps: null, success: null, p99: null, mtls: 0, connectionsOpen: 3, bytesPerSecond: 100 },
    ]);
  });
});

describe('policies that select a workload', () => {
  const policy = (p: Partial<PolicyItem>): PolicyItem => ({ namespace: 'obs', name: 'p', kind: 'AuthorizationPolicy', scope: 'namespace', selector: null, action: 'ALLOW', enforced: true, rules: [], warnings: [], ...p });
  it('by scope: the mesh, the namespace, a selector over any of its pods, its waypoint', () => {
    const labels = [{ app: 'web', version: 'v1' }, { app: 'web', version: 'v2' }];
    expect(policySelects(policy({ scope: 'global', namespace: 'ambit-system' }), 'obs', labels, null)).toBe(true);
    expect(policySelects(policy({}), 'obs', labels, null)).toBe(true);
    expect(policySelects(policy({ namespace: 'other' }), 'obs', labels, null)).toBe(false);
    expect(policySelects(policy({ scope: 'workload', selector: { version: 'v2' } }), 'obs', labels, null)).toBe(true);
    expect(policySelects(policy({ scope: 'workload', selector: { app: 'db' } }), 'obs', labels, null)).toBe(false);
    expect(policySelects(policy({ scope: 'waypoint' }), 'obs', labels, { namespace: 'obs', name: 'waypoint' })).toBe(true);
    expect(policySelects(policy({ scope: 'waypoint' }), 'obs', labels, null)).toBe(false);
  });
});

describe('the access-log tailer', () => {
  it('starts near the end, then reads whole appended lines only, and starts over after truncation', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-tail-'));
    const file = join(dir, 'a.log');
    writeFileSync(file, 'old-1\nold-2\n');
    const tails = new FileTails();
    expect(tails.read([file, join(dir, 'missing.log')])).toEqual(['old-1', 'old-2']);
    appendFileSync(file, 'new-1\nnew-2 partial');
    expect(tails.read([file])).toEqual(['new-1']);
    appendFileSync(file, ' done\n');
    expect(tails.read([file])).toEqual(['new-2 partial done']);
    writeFileSync(file, 'fresh\n');
    expect(tails.read([file])).toEqual(['fresh']);
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('the dashboard server', () => {
  let dashboard: Dashboard;
  let base: string;
  let port: number;
  let scrapes = 0;
  const source: DashboardSource = {
    cluster: 'test',
    describe: 'a stand-in',
    inventory: async () => ({ pods: [{ namespace: 'obs', name: 'web-1', workload: 'web', services: ['web'], meshed: true }], waypoints: new Set() }),
    targets: async () => [{
      name: 'stand-in',
      fetch: async () => {
        scrapes++;
        return { status: 200, body: `istio_requests_total{reporter="waypoint",response_code="200",source_workload="client",source_workload_namespace="obs",destination_workload="web",destination_workload_namespace="obs"} ${scrapes * 10}\n` };
      },
    }],
    details: async () => ({ identities: ['spiffe://cluster.local/ns/obs/sa/web'], waypoint: null, policies: [], pods: [{ name: 'web-1', meshed: true }] }),
    accessLog: async () => ['{"component":"access","response":{"code":200}}', 'not json', '{"component":"agent","msg":"other"}'],
  };

  beforeAll(async () => {
    dashboard = new Dashboard({ source, log: silentLogger, intervalSeconds: 1, windowSeconds: 1 });
    await dashboard.start();
    ({ url: base, port } = await dashboard.listen('127.0.0.1', 0));
  });
  afterAll(() => dashboard.close());

  const raw = (path: string, opts: { method?: string; host?: string; type?: string; body?: string } = {}) => new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host: opts.host ?? `127.0.0.1:${port}`, ...(opts.type ? { 'content-type': opts.type } : {}) } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });

  it('serves its own assets with a strict CSP, and only to its own address', async () => {
    const page = await raw('/');
    expect(page.status).toBe(200);
    expect(page.body).toContain('<script src="/app.js" defer></script>');
    expect(page.body).not.toMatch(/https?:\/\//);
    expect(page.headers['content-security-policy']).toMatch(/default-src 'self'/);
    expect((await raw('/app.js')).headers['content-type']).toMatch(/javascript/);
    expect((await raw('/', { host: `localhost:${port}` })).status).toBe(200);
    const rebound = await raw('/api/overview', { host: 'evil.example' });
    expect(rebound.status).toBe(421);
    expect((await raw('/nope')).status).toBe(404);
    expect((await raw('/api/overview', { method: 'DELETE' })).status).toBe(405);
  });

  it('answers the graph once two samples exist, a workload\'s series and details, and access-log lines only', async () => {
    await new Promise<void>((resolve, reject) => {
      const check = async () => {
        const o = JSON.parse((await raw('/api/overview')).body) as { edges: unknown[] };
        if (o.edges.length > 0) resolve();
        else setTimeout(() => void check().catch(reject), 100);
      };
      void check().catch(reject);
    });
    const o = JSON.parse((await raw('/api/overview')).body) as { cluster: string; nodes: Array<{ id: string }>; edges: Array<{ source: string; destination: string; via: string }> };
    expect(o.cluster).toBe('test');
    expect(o.edges[0]).toMatchObject({ source: 'obs/client', destination: 'obs/web', via: 'waypoint' });
    const w = JSON.parse((await raw('/api/workload?ns=obs&name=web')).body) as { details: { identities: string[] }; series: Array<{ signals: { rps: number } | null }> };
    expect(w.details.identities).toEqual(['spiffe://cluster.local/ns/obs/sa/web']);
    expect(w.series.some((s) => s.signals && s.signals.rps > 0)).toBe(true);
    expect((await raw('/api/workload?ns=obs')).status).toBe(400);
    const logs = JSON.parse((await raw('/api/logs?after=0')).body) as { lines: Array<{ line: { component: string } }> };
    expect(logs.lines.length).toBeGreaterThan(0);
    expect(logs.lines.every((l) => l.line.component === 'access')).toBe(true);
  });

  it('takes OTLP JSON spans, and refuses other encodings, oversized bodies and unknown traces by saying why', async () => {
    const ok = await raw('/v1/traces', { method: 'POST', type: 'application/json', body: otlp([span('1'.repeat(16))]) });
    expect(ok.status).toBe(200);
    const traces = JSON.parse((await raw('/api/traces')).body) as { traces: Array<{ traceId: string }> };
    expect(traces.traces[0]!.traceId).toBe(TRACE);
    expect(JSON.parse((await raw(`/api/traces/${TRACE}`)).body).spans).toHaveLength(1);
    expect((await raw(`/api/traces/${'0'.repeat(32)}`)).status).toBe(404);
    const proto = await raw('/v1/traces', { method: 'POST', type: 'application/x-protobuf', body: 'x' });
    expect(proto.status).toBe(415);
    expect(proto.body).toMatch(/http\/json/);
    const big = await raw('/v1/traces', { method: 'POST', type: 'application/json', body: 'x'.repeat(MAX_OTLP_BODY_BYTES + 1) }).catch((err: Error) => ({ status: 0, body: err.message, headers: {} }));
    expect([413, 0]).toContain(big.status);
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
  });
});
