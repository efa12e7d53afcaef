/**
 * The waypoint's Istio request metrics: counted into series of ambit's own and read by
 * prom-client's registry as four metrics. The exposition must be what prom-client's own Counter
 * and Histograms write for the same requests, line for line, so that Prometheus, Grafana and
 * Kiali read them as Istio's.
 */
import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { DURATION_BUCKETS_MS, HTTP_LABELS, RequestMetrics, SIZE_BUCKETS, tcpLabels, type HttpLabels } from '../../src/telemetry/metrics.js';

const base = tcpLabels('waypoint', { workload: 'productpage-v1', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/productpage', labels: { app: 'productpage', version: 'v1' } },
  { workload: 'reviews-v2', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/reviews', labels: { app: 'reviews', version: 'v2' } },
  { hostname: 'reviews.shop.svc.cluster.local', name: 'reviews', namespace: 'shop' }, { mtls: true });
const labels = (code: string, extra: Partial<HttpLabels> = {}): HttpLabels => ({ ...base, request_protocol: 'http', response_code: code, grpc_response_status: '', ...extra });

/** prom-client's own metrics, fed the same records: the reference exposition. */
function reference(registry: Registry) {
  const labelNames = [...HTTP_LABELS];
  const registers = [registry];
  const requests = new Counter({ name: 'istio_requests_total', help: 'Requests', labelNames, registers });
  const duration = new Histogram({ name: 'istio_request_duration_milliseconds', help: 'Request duration (ms)', labelNames, registers, buckets: [...DURATION_BUCKETS_MS] });
  const reqBytes = new Histogram({ name: 'istio_request_bytes', help: 'Request body sizes', labelNames, registers, buckets: [...SIZE_BUCKETS] });
  const respBytes = new Histogram({ name: 'istio_response_bytes', help: 'Response body sizes', labelNames, registers, buckets: [...SIZE_BUCKETS] });
  const reqMessages = new Counter({ name: 'istio_request_messages_total', help: 'gRPC messages sent by clients', labelNames, registers });
  const respMessages = new Counter({ name: 'istio_response_messages_total', help: 'gRPC messages sent by servers', labelNames, registers });
  return (l: HttpLabels, ms: number, inBytes: number, outBytes: number) => {
    requests.inc(l);
    duration.observe(l, ms);
    reqBytes.observe(l, inBytes);
    respBytes.observe(l, outBytes);
    // gRPC requests in these records carry 2 messages in and 3 out.
    if (l.request_protocol === 'grpc') {
      reqMessages.inc(l, 2);
      respMessages.inc(l, 3);
    }
  };
}

const sorted = (text: string) => text.split('\n').filter((l) => l !== '').sort();

describe('Istio request metrics of the waypoint', () => {
  const records: [HttpLabels, number, number, number][] = [
    [labels('200'), 0.3, 0, 1024],
    [labels('200'), 0.5, 12, 1024], // on a bucket's bound: in that bucket
    [labels('200'), 7, 10, 99_999],
    [labels('503', { response_flags: 'UF' }), 61_000, 1, 20_000_000], // past the last bound: +Inf only
    [labels('200', { request_protocol: 'grpc', grpc_response_status: '0' }), 12.5, 300, 40],
    [labels('200', { source_workload: 'x"y\\z\nw' }), 1, 1, 1], // values that must be escaped
  ];

  it('writes what prom-client writes for the same requests, by label set or by key', async () => {
    const ours = new Registry();
    const metrics = new RequestMetrics(ours);
    const theirs = new Registry();
    const feed = reference(theirs);
    records.forEach(([l, ms, i, o], n) => {
      const messages = l.request_protocol === 'grpc' ? { request: 2, response: 3 } : undefined;
      if (n % 2 === 0) metrics.record(l, ms, i, o, messages);
      else metrics.recordKeyed(`key-${n}`, () => l, ms, i, o, messages);
      feed(l, ms, i, o);
    });
    // The same key again: the labels are not asked for twice.
    let asked = 0;
    metrics.recordKeyed('key-1', () => { asked++; return records[1]![0]; }, 2, 2, 2);
    feed(records[1]![0], 2, 2, 2);
    expect(asked).toBe(0);
    expect(sorted(await ours.metrics())).toEqual(sorted(await theirs.metrics()));
    // JSON as well (what `getMetricsAsJSON` gives tools reading it).
    const json = (await ours.getMetricsAsJSON()).find((m) => m.name === 'istio_request_duration_milliseconds')!;
    const ref = (await theirs.getMetricsAsJSON()).find((m) => m.name === 'istio_request_duration_milliseconds')!;
    const norm = (vs: { labels: object; value: number; metricName?: string }[]) => vs.map((v) => JSON.stringify([v.metricName, v.value, Object.entries(v.labels).sort()])).sort();
    expect(norm(json.values as never)).toEqual(norm(ref.values as never));
  });

  it('keeps one series per label set however many keys name it, and reset() empties them', async () => {
    const registry = new Registry();
    const metrics = new RequestMetrics(registry);
    for (let i = 0; i < 100; i++) metrics.recordKeyed(`peer-${i}`, () => labels('200'), 1, 1, 1);
    expect(metrics.size).toBe(1);
    expect(await registry.metrics()).toContain('istio_requests_total{reporter="waypoint"');
    expect((await registry.metrics()).split('\n').filter((l) => l.startsWith('istio_requests_total{'))).toEqual([expect.stringMatching(/ 100$/)]);
    registry.resetMetrics();
    expect(metrics.size).toBe(0);
  });
});
