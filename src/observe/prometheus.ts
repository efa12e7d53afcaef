/**
 * Reading what `ambit stat` and `ambit dashboard` show: a Prometheus's HTTP API (instant
 * queries), or the metrics endpoints themselves. Both go through a `Fetch` the caller provides,
 * because where the bytes come from differs: a URL on this host, a socket made in one of the
 * local cluster's network namespaces, or the Kubernetes API server's proxy.
 */
import { ExpositionError, MAX_EXPOSITION_BYTES, parseExposition, type Sample } from './exposition.js';
import type { InstantQuery } from './stat.js';

/** GETs a path (with its query) from somewhere; resolves with the status and the body's text. */
export type Fetch = (path: string) => Promise<{ status: number; body: string }>;

export class ObserveError extends Error {
  override readonly name = 'ObserveError';
}

/** Instant queries against a Prometheus's `/api/v1/query`, as a `stat` source. */
export function prometheusQuery(fetch: Fetch, where: string): InstantQuery {
  return async (expr) => {
    const { status, body } = await fetch(`/api/v1/query?query=${encodeURIComponent(expr)}`);
    let answer: { status?: string; error?: string; data?: { resultType?: string; result?: Array<{ metric?: Record<string, string>; value?: [number, string] }> } };
    try {
      answer = JSON.parse(body) as typeof answer;
    } catch {
      throw new ObserveError(`${where} answered ${status} with something that is not the Prometheus API's JSON: ${JSON.stringify(body.slice(0, 120))}`);
    }
    if (status !== 200 || answer.status !== 'success') throw new ObserveError(`${where} refused the query (${status}): ${answer.error ?? 'no reason given'}\n  query: ${expr}`);
    if (answer.data?.resultType !== 'vector' || !Array.isArray(answer.data.result)) throw new ObserveError(`${where} answered a ${answer.data?.resultType ?? 'missing'} result, not an instant vector\n  query: ${expr}`);
    return answer.data.result.map((r) => ({ metric: r.metric ?? {}, value: Number(r.value?.[1]) }));
  };
}

export interface Target {
  /** What it is, for errors: `node-agent node-1`, `waypoint shop/waypoint`. */
  name: string;
  fetch: Fetch;
}

/**
 * One scrape of every target, concatenated. A target that does not answer is reported (it
 * may be restarting) and left out; when none answers the scrape fails.
 */
export async function scrapeAll(targets: readonly Target[]): Promise<{ samples: Sample[]; failed: string[] }> {
  const results = await Promise.all(targets.map(async (t) => {
    try {
      const { status, body } = await t.fetch('/metrics');
      if (status !== 200) return { failed: `${t.name}: /metrics answered ${status}` };
      if (body.length > MAX_EXPOSITION_BYTES) return { failed: `${t.name}: /metrics is larger than ${MAX_EXPOSITION_BYTES} bytes` };
      return { samples: parseExposition(body).samples };
    } catch (err) {
      return { failed: `${t.name}: ${err instanceof ExpositionError ? err.message : (err as Error).message}` };
    }
  }));
  const samples = results.flatMap((r) => r.samples ?? []);
  const failed = results.flatMap((r) => (r.failed ? [r.failed] : []));
  if (targets.length > 0 && failed.length === targets.length) throw new ObserveError(`no metrics endpoint answered:\n  ${failed.join('\n  ')}`);
  return { samples, failed };
}
