/**
 * Reading the mesh's metrics back (src/observe/): the text format, Prometheus's quantile
 * interpolation, the golden signals over two scrapes, the PromQL they correspond to, and
 * `ambit stat`'s rows.
 */
import { describe, expect, it } from 'vitest';
import { parseExposition, type Sample } from '../../src/observe/exposition.js';
import { histogramQuantile, matches, promql } from '../../src/observe/queries.js';
import { parseRef, podRows, signalsFromScrapes, statCells, statQuery, statRows, StatError, type StatRequest } from '../../src/observe/stat.js';

describe('the text format', () => {
  it('reads samples, label escapes, special values and types, and skips what is not a sample', () => {
    const text = [
      '# HELP istio_requests_total Total requests.',
      '# TYPE istio_requests_total counter',
      'istio_requests_total{reporter="waypoint",response_code="200",destination_workload="we\\"b\\\\x\\n"} 12',
      'istio_request_duration_milliseconds_bucket{le="+Inf"} 3 1700000000000',
      'up NaN',
      'down -Inf',
      'not a sample line',
      'broken{a="unterminated} 1',
      '',
    ].join('\n');
    const e = parseExposition(text);
    expect(e.types.get('istio_requests_total')).toBe('counter');
    expect(e.samples).toHaveLength(4);
    expect(e.samples[0]).toEqual({ name: 'istio_requests_total', labels: { reporter: 'waypoint', response_code: '200', destination_workload: 'we"b\\x\n' }, value: 12 });
    expect(e.samples[1]).toMatchObject({ labels: { le: '+Inf' }, value: 3 });
    expect(Number.isNaN(e.samples[2]!.value)).toBe(true);
    expect(e.samples[3]!.value).toBe(-Infinity);
    expect(e.skipped).toBe(2);
  });

  it('gives a label named like an Object prototype key no special meaning', () => {
    const e = parseExposition('m{__proto__="x",constructor="y"} 1');
    expect(e.samples[0]!.labels.__proto__).toBe('x');
    expect(e.samples[0]!.labels.constructor).toBe('y');
  });
});

describe('histogram_quantile, as Prometheus computes it', () => {
  const b = (...pairs: [number, number][]) => pairs.map(([le, count]) => ({ le, count }));
  it('interpolates inside the bucket the rank falls in', () => {
    expect(histogramQuantile(0.5, b([1, 0], [2, 10], [Infinity, 10]))).toBe(1.5);
    expect(histogramQuantile(0.5, b([10, 5], [20, 10], [Infinity, 10]))).toBe(10);
    expect(histogramQuantile(0.99, b([10, 50], [20, 100], [Infinity, 100]))).toBeCloseTo(19.8);
  });
  it('starts the first bucket at 0, and answers the highest finite bound for +Inf', () => {
    expect(histogramQuantile(0.5, b([4, 10], [Infinity, 10]))).toBe(2);
    expect(histogramQuantile(0.9, b([4, 1], [Infinity, 10]))).toBe(4);
  });
  it('is NaN without observations or without +Inf, and ±Inf outside [0, 1]', () => {
    expect(histogramQuantile(0.5, b([1, 0], [Infinity, 0]))).toBeNaN();
    expect(histogramQuantile(0.5, b([1, 3], [2, 3]))).toBeNaN();
    expect(histogramQuantile(-1, b([1, 3], [Infinity, 3]))).toBe(-Infinity);
    expect(histogramQuantile(2, b([1, 3], [Infinity, 3]))).toBe(Infinity);
  });
  it('carries the maximum forward when cumulative counts go down', () => {
    expect(histogramQuantile(0.5, b([1, 10], [2, 4], [Infinity, 10]))).toBe(0.5);
  });
});

describe('label matchers', () => {
  it('anchors regexes at both ends, as PromQL does', () => {
    expect(matches({ response_code: '503' }, [{ label: 'response_code', op: '=~', value: '5.*' }])).toBe(true);
    expect(matches({ response_code: '250' }, [{ label: 'response_code', op: '=~', value: '5.*' }])).toBe(false);
    expect(matches({ response_code: '250' }, [{ label: 'response_code', op: '!~', value: '5.*' }])).toBe(true);
    expect(matches({}, [{ label: 'x', op: '=', value: '' }])).toBe(true);
  });
});

/** What a waypoint and a destination agent export for `n` requests (`errors` of them 503) and `conns` connections. */
function scrape(n: number, errors: number, conns: { mtls: number; plain: number; closed: number }): Sample[] {
  const dest = { destination_workload: 'web', destination_workload_namespace: 'obs', destination_service_name: 'web', destination_service_namespace: 'obs', source_workload: 'client', source_workload_namespace: 'obs' };
  const req = (code: string, value: number): Sample => ({ name: 'istio_requests_total', labels: { reporter: 'waypoint', response_code: code, ...dest }, value });
  const bucket = (le: string, value: number): Sample => ({ name: 'istio_request_duration_milliseconds_bucket', labels: { reporter: 'waypoint', response_code: '200', ...dest, le }, value });
  return [
    req('200', n - errors), req('503', errors),
    // Every request took between 5 and 10 ms.
    bucket('5', 0), bucket('10', n), bucket('+Inf', n),
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'destination', connection_security_policy: 'mutual_tls', ...dest }, value: conns.mtls },
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'destination', connection_security_policy: 'none', ...dest }, value: conns.plain },
    { name: 'istio_tcp_connections_closed_total', labels: { reporter: 'destination', connection_security_policy: 'mutual_tls', ...dest }, value: conns.closed },
    // The source side's report of the same connections is not counted twice.
    { name: 'istio_tcp_connections_opened_total', labels: { reporter: 'source', connection_security_policy: 'mutual_tls', ...dest }, value: conns.mtls },
  ];
}

const deployReq: StatRequest = { kind: 'deploy', windowSeconds: 10 };

describe('golden signals over two scrapes', () => {
  it('counts what happened between them: rate, success, quantiles, connections open, share of mTLS', () => {
    const before = scrape(100, 0, { mtls: 10, plain: 0, closed: 2 });
    const after = scrape(300, 20, { mtls: 16, plain: 2, closed: 4 });
    const signals = signalsFromScrapes(statQuery(deployReq), before, after, 10);
    const web = signals.get(JSON.stringify(['obs', 'web']))!;
    expect(web.requests).toBe(200);
    expect(web.rps).toBe(20);
    expect(web.success).toBe(0.9);
    expect(web.p50).toBe(7.5);
    expect(web.p99).toBeCloseTo(9.95);
    expect(web.tcpOpen).toBe(18 - 4);
    // Of the connections open now (16 - 4 mutual TLS, 2 plaintext).
    expect(web.tlsShare).toBe(12 / 14);
  });

  it('takes the share of mutual TLS from the window\'s new connections when none is open', () => {
    const before = scrape(0, 0, { mtls: 10, plain: 0, closed: 10 });
    const after = scrape(0, 0, { mtls: 13, plain: 1, closed: 13 });
    const closedPlain: Sample = { name: 'istio_tcp_connections_closed_total', labels: { ...after.find((s) => s.name === 'istio_tcp_connections_closed_total')!.labels, connection_security_policy: 'none' }, value: 1 };
    const web = signalsFromScrapes(statQuery(deployReq), before, [...after, closedPlain], 10).get(JSON.stringify(['obs', 'web']))!;
    expect(web.tcpOpen).toBe(0);
    expect(web.tlsShare).toBe(3 / 4);
  });

  it('reads a counter that went down as a restart: its increase is its new value', () => {
    const signals = signalsFromScrapes(statQuery(deployReq), scrape(500, 0, { mtls: 1, plain: 0, closed: 0 }), scrape(40, 4, { mtls: 1, plain: 0, closed: 0 }), 10);
    expect(signals.get(JSON.stringify(['obs', 'web']))).toMatchObject({ requests: 40, success: 0.9 });
  });

  it('filters by --from and groups by source with --to', () => {
    const after = scrape(10, 0, { mtls: 1, plain: 0, closed: 0 });
    expect(signalsFromScrapes(statQuery({ ...deployReq, namespace: 'obs', from: { kind: 'deploy', name: 'other' } }), [], after, 10).size).toBe(0);
    const to = signalsFromScrapes(statQuery({ ...deployReq, namespace: 'obs', to: { kind: 'svc', name: 'web' } }), [], after, 10);
    expect([...to.keys()]).toEqual([JSON.stringify(['obs', 'client'])]);
  });
});

describe('the PromQL of the same signals', () => {
  it('selects the L7 reporter for requests and the destination agent for TCP, grouped by the row labels', () => {
    const q = promql(statQuery({ kind: 'svc', namespace: 'obs', windowSeconds: 60 }));
    expect(q.requestRate).toBe('sum by (destination_service_namespace, destination_service_name) (rate(istio_requests_total{reporter="waypoint",destination_service_namespace="obs"}[60s]))');
    expect(q.p99).toBe('histogram_quantile(0.99, sum by (destination_service_namespace, destination_service_name, le) (rate(istio_request_duration_milliseconds_bucket{reporter="waypoint",destination_service_namespace="obs"}[60s])))');
    expect(q.successRate).toContain('response_code=~"5.*"');
    expect(q.tcpOpen).toContain('istio_tcp_connections_closed_total{reporter="destination"');
    expect(q.tlsShare).toContain('connection_security_policy="mutual_tls"');
  });
  it('quotes label values', () => {
    expect(promql(statQuery({ kind: 'ns', namespace: 'a"b', windowSeconds: 1 })).requestRate).toContain('destination_workload_namespace="a\\"b"');
  });
});

describe('stat rows', () => {
  it('lists every deployment the cluster has, meshed n/m, with the figures of those that were measured', () => {
    const signals = signalsFromScrapes(statQuery(deployReq), [], scrape(10, 1, { mtls: 1, plain: 0, closed: 0 }), 10);
    const rows = statRows(deployReq, [
      { namespace: 'obs', name: 'web-1', workload: 'web', services: ['web'], meshed: true },
      { namespace: 'obs', name: 'web-2', workload: 'web', services: ['web'], meshed: false },
      { namespace: 'obs', name: 'client-1', workload: 'client', services: [], meshed: true },
    ], signals);
    expect(rows.map(statCells)).toEqual([
      ['obs', 'client', '1/1', '-', '-', '-', '-', '-', '-', '-'],
      ['obs', 'web', '1/2', '90.00%', '1.0rps', '7.5ms', '9.8ms', '9.9ms', '1', '100.00%'],
    ]);
  });

  it('refuses what Istio\'s metrics cannot answer, naming it', () => {
    expect(() => statQuery({ kind: 'svc', to: { kind: 'deploy', name: 'web' }, windowSeconds: 1 })).toThrow(StatError);
    expect(() => statQuery({ kind: 'deploy', from: { kind: 'svc', name: 'web' }, windowSeconds: 1 })).toThrow(/--from takes deploy\/NAME or ns\/NAME/);
    expect(() => parseRef('web', '--from')).toThrow(/--from must be KIND\/NAME/);
    expect(() => parseRef('pod/web', '--to')).toThrow(/unknown resource kind "pod"/);
  });
});

describe('stat pod', () => {
  it('shows each pod\'s inbound connections open now and their mTLS share; nothing for a pod outside the mesh', () => {
    const rows = podRows('obs', [
      { namespace: 'obs', name: 'web-1', workload: 'web', services: ['web'], meshed: true },
      { namespace: 'obs', name: 'web-2', workload: 'web', services: ['web'], meshed: true },
      { namespace: 'obs', name: 'legacy', workload: 'legacy', services: [], meshed: false },
      { namespace: 'other', name: 'x', workload: 'x', services: [], meshed: true },
    ], [
      { pod: 'obs/web-1', reporter: 'destination', mtls: true },
      { pod: 'obs/web-1', reporter: 'destination', mtls: false },
      { pod: 'obs/web-1', reporter: 'source', mtls: true },
    ]);
    expect(rows.map(statCells)).toEqual([
      ['obs', 'legacy', '0/1', '-', '-', '-', '-', '-', '-', '-'],
      ['obs', 'web-1', '1/1', '-', '-', '-', '-', '-', '2', '50.00%'],
      ['obs', 'web-2', '1/1', '-', '-', '-', '-', '-', '0', '-'],
    ]);
  });
});
