/** A canary's metrics: from two scrapes of the waypoints a window apart, and as PromQL. */
import { describe, expect, it } from 'vitest';
import { PrometheusMetrics, SampledMetrics } from '../../src/canary/metrics.js';
import type { CanaryMetric } from '../../src/canary/spec.js';

const SR: CanaryMetric = { name: 'request-success-rate', intervalMs: 60_000, min: 99 };
const P99: CanaryMetric = { name: 'request-duration', intervalMs: 60_000, max: 500 };

/** A waypoint's exposition: `ok` 200s and `failed` 503s to `workload`, durations all in the bucket up to `le`. */
function exposition(ns: string, workload: string, ok: number, failed: number, le = 100): string {
  const l = (code: number) => `reporter="waypoint",destination_workload="${workload}",destination_workload_namespace="${ns}",response_code="${code}"`;
  const buckets = [50, 100, 250, 500, 1000].map((b) => `istio_request_duration_milliseconds_bucket{${l(200)},le="${b}"} ${b >= le ? ok + failed : 0}`);
  return [
    `istio_requests_total{${l(200)}} ${ok}`,
    `istio_requests_total{${l(503)}} ${failed}`,
    ...buckets,
    `istio_request_duration_milliseconds_bucket{${l(200)},le="+Inf"} ${ok + failed}`,
    // Another workload's requests are never counted.
    `istio_requests_total{reporter="waypoint",destination_workload="${workload}-primary",destination_workload_namespace="${ns}",response_code="500"} 999`,
  ].join('\n');
}

describe('SampledMetrics', () => {
  it('reads success rate and p99 from the increase between scrapes one window apart, per namespace', async () => {
    let now = 0;
    const texts: Record<string, string> = { prod: exposition('prod', 'backend', 0, 0), other: exposition('other', 'backend', 0, 0) };
    const m = new SampledMetrics(async (namespaces) => namespaces.map((ns) => ({ name: ns, fetch: async () => ({ status: 200, body: texts[ns]! }) })), 15 * 60_000, () => now);
    await m.sample(['prod', 'other']);
    expect(await m.read('prod', 'backend', SR)).toBeNull();
    now = 30_000;
    texts.prod = exposition('prod', 'backend', 90, 10, 250);
    await m.sample(['prod']);
    now = 60_000;
    texts.prod = exposition('prod', 'backend', 190, 10, 250);
    await m.sample(['prod']);
    // From the scrape at 0: 190 ok, 10 failed.
    expect(await m.read('prod', 'backend', SR)).toBeCloseTo(95, 6);
    // A shorter window starts at the scrape at 30 s: 100 more, none failed.
    expect(await m.read('prod', 'backend', { ...SR, intervalMs: 30_000 })).toBeCloseTo(100, 6);
    // Every duration in (100, 250]: the p99 interpolates inside that bucket.
    const p99 = await m.read('prod', 'backend', P99);
    expect(p99).toBeGreaterThan(100);
    expect(p99).toBeLessThanOrEqual(250);
    // The other namespace was sampled once: no window yet, and no mixing with prod's scrapes.
    expect(await m.read('other', 'backend', SR)).toBeNull();
    // No requests in the window: no value (a failed check).
    now = 200_000;
    await m.sample(['prod']);
    expect(await m.read('prod', 'backend', SR)).toBeNull();
  });
});

describe('PrometheusMetrics', () => {
  it('asks the same as PromQL and reads the answers in % and ms', async () => {
    const asked: string[] = [];
    const m = new PrometheusMetrics(async (expr) => {
      asked.push(expr);
      return expr.startsWith('histogram_quantile') ? [{ metric: {}, value: 321 }] : [{ metric: {}, value: 0.975 }];
    });
    expect(await m.read('prod', 'backend', SR)).toBeCloseTo(97.5, 6);
    expect(await m.read('prod', 'backend', { ...P99, intervalMs: 90_000 })).toBe(321);
    expect(asked[0]).toContain('destination_workload="backend"');
    expect(asked[0]).toContain('destination_workload_namespace="prod"');
    expect(asked[0]).toContain('reporter="waypoint"');
    expect(asked[0]).toContain('[60s]');
    expect(asked[1]).toMatch(/^histogram_quantile\(0\.99,/);
    expect(asked[1]).toContain('[90s]');
    const none = new PrometheusMetrics(async () => []);
    expect(await none.read('prod', 'backend', SR)).toBeNull();
  });
});
