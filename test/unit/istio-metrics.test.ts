/**
 * ambit's metrics against Istio's documented standard metrics (istio.io, "Istio Standard
 * Metrics"): each metric's name, type and label set, for the node agent (TCP, reporter source and
 * destination) and the waypoint (requests, reporter waypoint), and the label values as Istio
 * writes them — principals as SPIFFE IDs with their scheme, canonical services and revisions
 * derived from the workload's labels as Istio derives them.
 */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { canonical, MeshMetrics, RequestMetrics, tcpLabels, type HttpLabels } from '../../src/telemetry/metrics.js';

/** Istio's labels of every standard metric ("Labels" on the page). */
const ISTIO_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal', 'source_app', 'source_version',
  'source_canonical_service', 'source_canonical_revision', 'source_cluster',
  'destination_workload', 'destination_workload_namespace', 'destination_principal', 'destination_app', 'destination_version',
  'destination_service', 'destination_service_name', 'destination_service_namespace',
  'destination_canonical_service', 'destination_canonical_revision', 'destination_cluster',
  'request_protocol', 'response_flags', 'connection_security_policy',
];
/** Present only on the HTTP (and gRPC) metrics. */
const REQUEST_ONLY = ['response_code', 'grpc_response_status'];
const TCP_METRICS = { istio_tcp_connections_opened_total: 'counter', istio_tcp_connections_closed_total: 'counter', istio_tcp_sent_bytes_total: 'counter', istio_tcp_received_bytes_total: 'counter' };
const REQUEST_METRICS = {
  istio_requests_total: 'counter', istio_request_duration_milliseconds: 'histogram', istio_request_bytes: 'histogram', istio_response_bytes: 'histogram',
  istio_request_messages_total: 'counter', istio_response_messages_total: 'counter',
};
/** Envoy's default histogram buckets, which Istio's request duration uses. */
const ISTIO_DURATION_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000];

const productpage = { workload: 'productpage-v1', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/productpage', labels: { app: 'productpage', version: 'v1' } };
const reviews = { workload: 'reviews-v2', namespace: 'shop', identity: 'spiffe://cluster.local/ns/shop/sa/reviews', labels: { app: 'reviews', version: 'v2' } };
const service = { hostname: 'reviews.shop.svc.cluster.local', name: 'reviews', namespace: 'shop' };

/** Each metric's type and the label names of its series, from the exposition. */
async function shapes(registry: Registry): Promise<Map<string, { type: string; labels: Set<string> }>> {
  const out = new Map<string, { type: string; labels: Set<string> }>();
  for (const m of await registry.getMetricsAsJSON()) {
    const labels = new Set<string>();
    for (const v of m.values) for (const k of Object.keys(v.labels)) if (k !== 'le') labels.add(k);
    out.set(m.name, { type: String(m.type), labels });
  }
  return out;
}

describe('Istio standard metrics', () => {
  it('the node agent: the four TCP metrics, counters, with Istio\'s labels', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    for (const reporter of ['source', 'destination'] as const) {
      const s = metrics.takeTcp(tcpLabels(reporter, productpage, reviews, service, { mtls: true }));
      s.opened++;
      s.closed++;
      s.sent += 10;
      s.received += 20;
    }
    const got = await shapes(metrics.registry);
    for (const [name, type] of Object.entries(TCP_METRICS)) {
      expect(got.get(name)?.type, name).toBe(type);
      expect([...got.get(name)!.labels].sort(), name).toEqual([...ISTIO_LABELS].sort());
    }
    const text = await metrics.registry.metrics();
    expect(text).toContain('source_principal="spiffe://cluster.local/ns/shop/sa/productpage"');
    expect(text).toContain('destination_principal="spiffe://cluster.local/ns/shop/sa/reviews"');
    expect(text).toContain('source_canonical_service="productpage",source_canonical_revision="v1"');
    expect(text).toContain('destination_canonical_service="reviews",destination_canonical_revision="v2"');
    expect(text).toMatch(/istio_tcp_connections_opened_total\{reporter="destination"[^}]*connection_security_policy="mutual_tls"\} 1/);
  });

  it('the waypoint: the request metrics (and the gRPC message counts), with Istio\'s labels plus response_code and grpc_response_status, and Istio\'s duration buckets', async () => {
    const registry = new Registry();
    const requests = new RequestMetrics(registry);
    const labels: HttpLabels = { ...tcpLabels('waypoint', productpage, reviews, service, { mtls: true }), request_protocol: 'grpc', response_code: '200', grpc_response_status: '0' };
    requests.record(labels, 3, 100, 200, { request: 1, response: 4 });
    const got = await shapes(registry);
    for (const [name, type] of Object.entries(REQUEST_METRICS)) {
      expect(got.get(name)?.type, name).toBe(type);
      expect([...got.get(name)!.labels].sort(), name).toEqual([...ISTIO_LABELS, ...REQUEST_ONLY].sort());
    }
    const values = (await registry.getMetricsAsJSON()).find((m) => m.name === 'istio_request_duration_milliseconds')!.values as { metricName?: string; labels: Record<string, string | number> }[];
    const buckets = values.filter((v) => v.metricName === 'istio_request_duration_milliseconds_bucket').map((v) => v.labels.le).filter((le) => le !== '+Inf').map(Number);
    expect(buckets).toEqual(ISTIO_DURATION_BUCKETS);
    const text = await registry.metrics();
    expect(text).toContain('grpc_response_status="0"');
    expect(text).toMatch(/^istio_request_messages_total\{[^}]*\} 1$/m);
    expect(text).toMatch(/^istio_response_messages_total\{[^}]*\} 4$/m);
  });

  it('derives the canonical service and revision as Istio does', () => {
    expect(canonical({ workload: 'w', labels: { 'service.istio.io/canonical-name': 'shop-ui', 'service.istio.io/canonical-revision': 'r7', 'app.kubernetes.io/name': 'x', app: 'y' } })).toEqual({ service: 'shop-ui', revision: 'r7' });
    expect(canonical({ workload: 'w', labels: { 'app.kubernetes.io/name': 'cart', 'app.kubernetes.io/version': '1.2', app: 'y', version: 'v9' } })).toEqual({ service: 'cart', revision: '1.2' });
    expect(canonical({ workload: 'w', labels: { app: 'ratings', version: 'v1' } })).toEqual({ service: 'ratings', revision: 'v1' });
    expect(canonical({ workload: 'details-v1', labels: {} })).toEqual({ service: 'details-v1', revision: 'latest' });
    expect(canonical({})).toEqual({ service: 'unknown', revision: 'unknown' });
  });
});
