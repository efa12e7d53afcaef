/**
 * The node agent's Istio TCP metrics: counted per connection into a series looked up once, and
 * handed to prom-client when the metrics are read, so that a scrape sees every connection that
 * opened, closed and moved bytes before it, under the labels Istio gives them.
 */
import { describe, expect, it } from 'vitest';
import { ConnectionTracker, type ConnectionInfo } from '../../src/node/connections.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { MeshMetrics, tcpLabels } from '../../src/telemetry/metrics.js';

const info = (workload: string): ConnectionInfo => ({
  reporter: 'destination',
  source: { ip: '10.1.0.5', identity: 'spiffe://cluster.local/ns/shop/sa/productpage', workload, namespace: 'shop', labels: { app: workload } },
  destination: { ip: '10.1.0.7', port: 9080, identity: 'spiffe://cluster.local/ns/shop/sa/reviews', workload: 'reviews-v1', namespace: 'shop', labels: { app: 'reviews', version: 'v1' } },
  service: { hostname: 'reviews.shop.svc.cluster.local', name: 'reviews', namespace: 'shop' },
  mtls: true, path: 'hbone', pod: 'shop/reviews-v1-abc',
});

/** The value of `name` for the series whose source_workload is `workload`, from the exposition text. */
function value(text: string, name: string, workload: string, flags = '-'): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(`source_workload="${workload}"`) && l.includes(`response_flags="${flags}"`));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('Istio TCP metrics of the node agent', () => {
  it('counts opened, closed and bytes both ways, seen at the next read', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    const tracker = new ConnectionTracker(metrics, silentLogger);
    try {
      const a = tracker.begin(info('productpage-v1'));
      const b = tracker.begin(info('productpage-v1'));
      let text = await metrics.text();
      expect(value(text, 'istio_tcp_connections_opened_total', 'productpage-v1')).toBe(2);
      expect(value(text, 'istio_tcp_connections_closed_total', 'productpage-v1')).toBeUndefined();
      a.received += 100;
      a.sent += 2_000;
      tracker.finish(a);
      b.received += 5;
      tracker.finish(b, { flags: 'UR', error: 'reset' });
      text = await metrics.text();
      expect(value(text, 'istio_tcp_connections_opened_total', 'productpage-v1')).toBe(2);
      expect(value(text, 'istio_tcp_connections_closed_total', 'productpage-v1')).toBe(1);
      expect(value(text, 'istio_tcp_received_bytes_total', 'productpage-v1')).toBe(100);
      expect(value(text, 'istio_tcp_sent_bytes_total', 'productpage-v1')).toBe(2_000);
      // A connection whose flags changed closes (and counts its bytes) under its final flags.
      expect(value(text, 'istio_tcp_connections_closed_total', 'productpage-v1', 'UR')).toBe(1);
      expect(value(text, 'istio_tcp_received_bytes_total', 'productpage-v1', 'UR')).toBe(5);
      // Counted once: a second read adds nothing.
      expect(value(await metrics.text(), 'istio_tcp_connections_opened_total', 'productpage-v1')).toBe(2);
    } finally {
      tracker.close();
    }
  });

  it('forgets a label set once no open connection uses it, and loses no count when churn passes the bound', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    const tracker = new ConnectionTracker(metrics, silentLogger);
    try {
      const held = tracker.begin(info('held'));
      for (let i = 0; i < 10_050; i++) tracker.finish(tracker.begin(info(`w-${i}`)));
      // Past the bound, a flush forgot the closed ones; the held one's series is still counting.
      expect(metrics.tcpSeriesHeld).toBeLessThanOrEqual(10_001);
      held.sent += 7;
      tracker.finish(held);
      const text = await metrics.text();
      expect(metrics.tcpSeriesHeld).toBe(0);
      expect(value(text, 'istio_tcp_connections_closed_total', 'w-0')).toBe(1);
      expect(value(text, 'istio_tcp_connections_closed_total', 'w-10049')).toBe(1);
      expect(value(text, 'istio_tcp_sent_bytes_total', 'held')).toBe(7);
      expect(value(text, 'istio_tcp_connections_opened_total', 'held')).toBe(1);
    } finally {
      tracker.close();
    }
  });

  it('keys a series by every label value, so label sets that differ in one label never share a series', () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    const base = tcpLabels('source', info('x').source, info('x').destination, info('x').service!, { mtls: true });
    const a = metrics.takeTcp(base);
    expect(metrics.takeTcp({ ...base })).toBe(a);
    expect(metrics.takeTcp({ ...base, connection_security_policy: 'none' })).not.toBe(a);
    expect(metrics.takeTcp({ ...base, source_workload: 'x\0y' })).not.toBe(metrics.takeTcp({ ...base, source_workload: 'x', source_workload_namespace: `y\0${base.source_workload_namespace}` }));
  });
});
