/**
 * Where a canary's metrics come from: the waypoints' own /metrics, scraped at every step of the
 * analysis and compared with the scrape one metric window earlier (no Prometheus needed), or a
 * Prometheus's instant queries when one is configured. Both ask the same thing through the
 * query model of src/observe (the one `ambit stat` uses): requests the waypoints report for the
 * canary's workload (`reporter="waypoint"`, `destination_workload`, its namespace).
 */
import type { Sample } from '../observe/exposition.js';
import { scrapeAll, type Target } from '../observe/prometheus.js';
import { DURATION as DURATION_METRIC, eq, increaseBy, L7_REPORTER, promql, quantileBy, REQUESTS, SERVER_ERROR, type Matcher } from '../observe/queries.js';
import type { InstantQuery } from '../observe/stat.js';
import type { CanaryMetrics } from './controller.js';
import { SUCCESS_RATE, type CanaryMetric } from './spec.js';

const workloadMatchers = (namespace: string, workload: string): Matcher[] => [L7_REPORTER, eq('destination_workload', workload), eq('destination_workload_namespace', namespace)];

/** The metrics of the waypoints, scraped by the controller itself. */
export class SampledMetrics implements CanaryMetrics {
  /** Scrapes by namespace: each namespace's waypoints, sampled when one of its canaries steps. */
  private readonly history = new Map<string, { at: number; samples: Sample[] }[]>();

  /**
   * `targets`: the waypoints serving these namespaces, as metrics endpoints. `keepMs`: how far
   * back scrapes are kept (the longest metric window, and some).
   */
  constructor(private readonly targets: (namespaces: string[]) => Promise<Target[]>, private readonly keepMs = 15 * 60_000, private readonly now: () => number = Date.now) {}

  async sample(namespaces: string[]): Promise<void> {
    for (const ns of new Set(namespaces)) {
      const targets = await this.targets([ns]);
      if (targets.length === 0) continue;
      const { samples } = await scrapeAll(targets);
      const at = this.now();
      // Only what the checks read.
      const kept = (this.history.get(ns) ?? []).filter((h) => h.at >= at - this.keepMs);
      kept.push({ at, samples: samples.filter((s) => s.name === REQUESTS || s.name === `${DURATION_METRIC}_bucket`) });
      this.history.set(ns, kept);
    }
    for (const [ns, list] of this.history) if (list.at(-1)!.at < this.now() - this.keepMs) this.history.delete(ns);
  }

  read(namespace: string, workload: string, metric: CanaryMetric): Promise<number | null> {
    const history = this.history.get(namespace) ?? [];
    const after = history.at(-1);
    if (!after || history.length < 2) return Promise.resolve(null);
    // The newest scrape at least one window older than the last, else the oldest kept.
    const before = [...history].reverse().find((h) => h.at <= after.at - metric.intervalMs) ?? history[0]!;
    const matchers = workloadMatchers(namespace, workload);
    const total = sum(increaseBy(before.samples, after.samples, { metric: REQUESTS, matchers }, []));
    if (!(total > 0)) return Promise.resolve(null);
    if (metric.name === SUCCESS_RATE) {
      const errors = sum(increaseBy(before.samples, after.samples, { metric: REQUESTS, matchers: [...matchers, SERVER_ERROR] }, []));
      return Promise.resolve(100 * (1 - errors / total));
    }
    const p99 = [...quantileBy(0.99, before.samples, after.samples, { metric: DURATION_METRIC, matchers }, []).values()][0];
    return Promise.resolve(p99 === undefined || Number.isNaN(p99) ? null : p99);
  }
}

/** The same checks as PromQL against a Prometheus. */
export class PrometheusMetrics implements CanaryMetrics {
  constructor(private readonly query: InstantQuery) {}

  async read(namespace: string, workload: string, metric: CanaryMetric): Promise<number | null> {
    const window = `${Math.max(1, Math.round(metric.intervalMs / 1000))}s`;
    const q = promql({ l7: workloadMatchers(namespace, workload).slice(1), l4: [], group: [], window }, [0.99]);
    const answer = await this.query(metric.name === SUCCESS_RATE ? q.successRate! : q.p99!);
    const value = answer[0]?.value;
    if (value === undefined || Number.isNaN(value)) return null;
    return metric.name === SUCCESS_RATE ? value * 100 : value;
  }
}

const sum = (m: Map<string, number>): number => [...m.values()].reduce((a, b) => a + b, 0);
