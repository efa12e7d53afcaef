/**
 * The mesh's golden signals as queries over Istio's standard metrics, defined once and read two
 * ways: rendered as PromQL (for a Prometheus, the Grafana dashboards in deploy/grafana and the
 * integration test that runs them) and evaluated over two scrapes taken a window apart (for
 * `ambit stat` and `ambit dashboard` when no Prometheus is configured). Both readings use the
 * same selections, groupings and quantile interpolation, so they agree.
 *
 * The meaning follows Istio's service and workload dashboards and Kiali (not their text):
 * - requests are what the L7 hop reports, `reporter="waypoint"` in ambient mode;
 * - success is the share of requests whose `response_code` is not 5xx;
 * - latency is `histogram_quantile` over `istio_request_duration_milliseconds`;
 * - TCP is what the destination's node agent reports (`reporter="destination"`): bytes each way,
 *   connections open, and the share of them that are mutual TLS (of the connections open now;
 *   when none is, of those opened in the window).
 */
import type { Sample } from './exposition.js';

export type MatchOp = '=' | '!=' | '=~' | '!~';

export interface Matcher {
  label: string;
  op: MatchOp;
  value: string;
}

export interface Selection {
  metric: string;
  matchers: Matcher[];
}

export const REQUESTS = 'istio_requests_total';
export const DURATION = 'istio_request_duration_milliseconds';
export const TCP_OPENED = 'istio_tcp_connections_opened_total';
export const TCP_CLOSED = 'istio_tcp_connections_closed_total';
export const TCP_SENT = 'istio_tcp_sent_bytes_total';
export const TCP_RECEIVED = 'istio_tcp_received_bytes_total';

export const L7_REPORTER: Matcher = { label: 'reporter', op: '=', value: 'waypoint' };
export const L4_REPORTER: Matcher = { label: 'reporter', op: '=', value: 'destination' };
export const SERVER_ERROR: Matcher = { label: 'response_code', op: '=~', value: '5.*' };
export const MUTUAL_TLS: Matcher = { label: 'connection_security_policy', op: '=', value: 'mutual_tls' };

export const eq = (label: string, value: string): Matcher => ({ label, op: '=', value });

/** A label value inside PromQL's double quotes. */
export function quoteLabelValue(value: string): string {
  return JSON.stringify(value);
}

export function selector(s: Selection): string {
  if (s.matchers.length === 0) return s.metric;
  return `${s.metric}{${s.matchers.map((m) => `${m.label}${m.op}${quoteLabelValue(m.value)}`).join(',')}}`;
}

const by = (group: readonly string[]) => (group.length ? ` by (${group.join(', ')})` : '');

// ---------------------------------------------------------------------------------------------
// What is asked: one set of filters (who talks to whom) and a grouping (what a row is)

export interface SignalQuery {
  /** Matchers on the request metrics (reporter added). */
  l7: Matcher[];
  /** Matchers on the TCP metrics (reporter added). */
  l4: Matcher[];
  /** The labels a row is keyed by, e.g. destination_workload_namespace, destination_workload. */
  group: string[];
  /** PromQL range, e.g. `1m`. */
  window: string;
}

const with_ = (base: Matcher, extra: Matcher[], more: Matcher[] = []): Matcher[] => [base, ...extra, ...more];

/** The PromQL for each signal of a query; `histogram_quantile` for each of `quantiles`. */
export function promql(q: SignalQuery, quantiles: readonly number[] = [0.5, 0.95, 0.99]): Record<string, string> {
  const w = q.window;
  const g = by(q.group);
  const gl = by([...q.group, 'le']);
  const requests = selector({ metric: REQUESTS, matchers: with_(L7_REPORTER, q.l7) });
  const errors = selector({ metric: REQUESTS, matchers: with_(L7_REPORTER, q.l7, [SERVER_ERROR]) });
  const buckets = selector({ metric: `${DURATION}_bucket`, matchers: with_(L7_REPORTER, q.l7) });
  const opened = selector({ metric: TCP_OPENED, matchers: with_(L4_REPORTER, q.l4) });
  const openedTls = selector({ metric: TCP_OPENED, matchers: with_(L4_REPORTER, q.l4, [MUTUAL_TLS]) });
  const closed = selector({ metric: TCP_CLOSED, matchers: with_(L4_REPORTER, q.l4) });
  const closedTls = selector({ metric: TCP_CLOSED, matchers: with_(L4_REPORTER, q.l4, [MUTUAL_TLS]) });
  const openAll = `sum${g} (${opened}) - (sum${g} (${closed}) or (sum${g} (${opened}) * 0))`;
  const openTls = `sum${g} (${openedTls}) - (sum${g} (${closedTls}) or (sum${g} (${openedTls}) * 0))`;
  const out: Record<string, string> = {
    requestRate: `sum${g} (rate(${requests}[${w}]))`,
    requests: `sum${g} (increase(${requests}[${w}]))`,
    // A group with requests and no 5xx has no error series: `or` gives it 0 errors, not no answer.
    successRate: `1 - ((sum${g} (rate(${errors}[${w}])) or (sum${g} (rate(${requests}[${w}])) * 0)) / sum${g} (rate(${requests}[${w}])))`,
    tcpOpen: openAll,
    // Of the connections open now, else (none open) of those opened in the window.
    tlsShare: `((${openTls}) or (${openAll}) * 0) / (${openAll} > 0) or (sum${g} (increase(${openedTls}[${w}])) or (sum${g} (increase(${opened}[${w}])) * 0)) / sum${g} (increase(${opened}[${w}]))`,
    tcpSentRate: `sum${g} (rate(${selector({ metric: TCP_SENT, matchers: with_(L4_REPORTER, q.l4) })}[${w}]))`,
    tcpReceivedRate: `sum${g} (rate(${selector({ metric: TCP_RECEIVED, matchers: with_(L4_REPORTER, q.l4) })}[${w}]))`,
  };
  for (const quantile of quantiles) out[`p${Math.round(quantile * 100)}`] = `histogram_quantile(${quantile}, sum${gl} (rate(${buckets}[${w}])))`;
  return out;
}

// ---------------------------------------------------------------------------------------------
// The same over two scrapes

const regexCache = new Map<string, RegExp>();
function fullMatch(pattern: string): RegExp {
  let re = regexCache.get(pattern);
  if (!re) {
    // PromQL anchors label regexes at both ends (RE2; the patterns ambit writes are RE2 ∩ JS).
    re = new RegExp(`^(?:${pattern})$`);
    if (regexCache.size > 256) regexCache.clear();
    regexCache.set(pattern, re);
  }
  return re;
}

export function matches(labels: Record<string, string>, matchers: readonly Matcher[]): boolean {
  for (const m of matchers) {
    const v = labels[m.label] ?? '';
    const ok = m.op === '=' ? v === m.value : m.op === '!=' ? v !== m.value : fullMatch(m.value).test(v) === (m.op === '=~');
    if (!ok) return false;
  }
  return true;
}

/** The identity of a series: its name and every label, in order. */
function seriesKey(s: Sample): string {
  return `${s.name}{${Object.keys(s.labels).sort().map((k) => `${k}=${JSON.stringify(s.labels[k])}`).join(',')}}`;
}

export const groupKey = (labels: Record<string, string>, group: readonly string[]): string => JSON.stringify(group.map((l) => labels[l] ?? ''));

/**
 * The increase of each series of a counter between two scrapes, summed by group. A series whose
 * value went down was reset (its process restarted): its increase is its new value, as
 * Prometheus's `increase` reads a reset. A series new in the second scrape counts from 0.
 */
export function increaseBy(before: readonly Sample[], after: readonly Sample[], sel: Selection, group: readonly string[], extraGroup: readonly string[] = []): Map<string, number> {
  const start = new Map<string, number>();
  for (const s of before) if (s.name === sel.metric && matches(s.labels, sel.matchers)) start.set(seriesKey(s), s.value);
  const out = new Map<string, number>();
  for (const s of after) {
    if (s.name !== sel.metric || !matches(s.labels, sel.matchers)) continue;
    const was = start.get(seriesKey(s)) ?? 0;
    const inc = s.value >= was ? s.value - was : s.value;
    const key = groupKey(s.labels, [...group, ...extraGroup]);
    out.set(key, (out.get(key) ?? 0) + inc);
  }
  return out;
}

/** The value of each series summed by group, in one scrape. */
export function sumBy(samples: readonly Sample[], sel: Selection, group: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of samples) {
    if (s.name !== sel.metric || !matches(s.labels, sel.matchers)) continue;
    const key = groupKey(s.labels, group);
    out.set(key, (out.get(key) ?? 0) + s.value);
  }
  return out;
}

/**
 * `histogram_quantile` as Prometheus computes it: cumulative buckets by upper bound, the rank
 * q × count, linear interpolation inside the bucket it falls in (from 0 for the first bucket
 * when its bound is positive), the highest finite bound when it falls in +Inf. NaN without
 * observations.
 */
export function histogramQuantile(q: number, buckets: ReadonlyArray<{ le: number; count: number }>): number {
  if (q < 0) return -Infinity;
  if (q > 1) return Infinity;
  const sorted = [...buckets].sort((a, b) => a.le - b.le);
  if (sorted.length < 2 || sorted[sorted.length - 1]!.le !== Infinity) return NaN;
  // Cumulative counts must not go down (a scrape taken mid-update can make them): Prometheus
  // carries the maximum forward.
  for (let i = 1; i < sorted.length; i++) if (sorted[i]!.count < sorted[i - 1]!.count) sorted[i] = { ...sorted[i]!, count: sorted[i - 1]!.count };
  const total = sorted[sorted.length - 1]!.count;
  if (!(total > 0)) return NaN;
  let rank = q * total;
  const b = sorted.findIndex((x) => x.count >= rank);
  if (b === sorted.length - 1) return sorted[sorted.length - 2]!.le;
  if (b === 0 && sorted[0]!.le <= 0) return sorted[0]!.le;
  let start = 0;
  let count = sorted[b]!.count;
  if (b > 0) {
    start = sorted[b - 1]!.le;
    count -= sorted[b - 1]!.count;
    rank -= sorted[b - 1]!.count;
  }
  if (count === 0) return sorted[b]!.le;
  return start + (sorted[b]!.le - start) * (rank / count);
}

/** The quantile of each group of a histogram's increase between two scrapes. */
export function quantileBy(q: number, before: readonly Sample[], after: readonly Sample[], sel: Selection, group: readonly string[]): Map<string, number> {
  const inc = increaseBy(before, after, { metric: `${sel.metric}_bucket`, matchers: sel.matchers }, group, ['le']);
  const groups = new Map<string, { le: number; count: number }[]>();
  for (const [key, count] of inc) {
    const parts = JSON.parse(key) as string[];
    const le = parts.pop()!;
    const k = JSON.stringify(parts);
    const list = groups.get(k) ?? [];
    list.push({ le: le === '+Inf' ? Infinity : Number(le), count });
    groups.set(k, list);
  }
  // Buckets of the same bound from several series (two waypoints) add up.
  const out = new Map<string, number>();
  for (const [k, list] of groups) {
    const merged = new Map<number, number>();
    for (const b of list) merged.set(b.le, (merged.get(b.le) ?? 0) + b.count);
    out.set(k, histogramQuantile(q, [...merged].map(([le, count]) => ({ le, count }))));
  }
  return out;
}

/**
 * The share of mutual TLS among a group's connections: of those open now, else (none open) of
 * those opened in the window; null when there were neither.
 */
export function tlsShareOf(open: number, openTls: number, opened: number, openedTls: number): number | null {
  if (open > 0) return openTls / open;
  return opened > 0 ? openedTls / opened : null;
}
