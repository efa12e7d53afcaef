/**
 * `ambit stat`'s model: which rows (deployments, namespaces, services), filtered by who talks to
 * whom, and each row's golden signals — from a Prometheus, or from two scrapes of the node agents
 * and waypoints a window apart. The same `SignalQuery` (src/observe/queries.ts) is behind both.
 */
import type { Sample } from './exposition.js';
import {
  DURATION, eq, groupKey, increaseBy, L4_REPORTER, L7_REPORTER, MUTUAL_TLS, promql, quantileBy, REQUESTS, SERVER_ERROR, sumBy,
  TCP_CLOSED, TCP_OPENED, tlsShareOf, type Matcher, type SignalQuery,
} from './queries.js';

export const STAT_KINDS = ['deploy', 'ns', 'svc'] as const;
export type StatKind = (typeof STAT_KINDS)[number];

const KIND_ALIASES: Record<string, StatKind> = {
  deploy: 'deploy', deployment: 'deploy', deployments: 'deploy', deploys: 'deploy',
  ns: 'ns', namespace: 'ns', namespaces: 'ns',
  svc: 'svc', service: 'svc', services: 'svc',
};

export class StatError extends Error {
  override readonly name = 'StatError';
}

export function statKind(text: string): StatKind {
  const kind = KIND_ALIASES[text.toLowerCase()];
  if (!kind) throw new StatError(`unknown resource kind "${text}": one of deploy, ns, svc${isPodKind(text) ? ' (pods are rows of `ambit stat pod`, never a --from or --to)' : ''} (or their long names)`);
  return kind;
}

/** `deploy/web`, `ns/shop`, `svc/reviews`; the namespace comes from -n unless the ref is a namespace. */
export interface Ref {
  kind: StatKind;
  name: string;
}

export function parseRef(text: string, flag: string): Ref {
  const m = /^([a-z]+)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(text);
  if (!m) throw new StatError(`${flag} must be KIND/NAME (deploy/web, ns/shop, svc/reviews), got ${JSON.stringify(text)}`);
  return { kind: statKind(m[1]!), name: m[2]! };
}

export interface StatRequest {
  kind: StatKind;
  /** Rows of this namespace only; every namespace when absent. */
  namespace?: string;
  /** Only traffic from this source (rows are its destinations). */
  from?: Ref;
  /** Only traffic to this destination (rows are its sources). */
  to?: Ref;
  /** The namespace `from`/`to` names are in (default: `namespace`, else `default`). */
  refNamespace?: string;
  windowSeconds: number;
}

type Side = 'source' | 'destination';

function rowLabels(kind: StatKind, side: Side): string[] {
  if (kind === 'ns') return [`${side}_workload_namespace`];
  if (kind === 'deploy') return [`${side}_workload_namespace`, `${side}_workload`];
  if (side === 'source') throw new StatError('services are destinations only: Istio\'s metrics name no source service; with --to, show deploy or ns rows');
  return ['destination_service_namespace', 'destination_service_name'];
}

function refMatchers(ref: Ref, side: Side, namespace: string): Matcher[] {
  if (ref.kind === 'ns') return [eq(`${side}_workload_namespace`, ref.name)];
  if (ref.kind === 'deploy') return [eq(`${side}_workload_namespace`, namespace), eq(`${side}_workload`, ref.name)];
  if (side === 'source') throw new StatError('--from takes deploy/NAME or ns/NAME: Istio\'s metrics name no source service');
  return [eq('destination_service_namespace', namespace), eq('destination_service_name', ref.name)];
}

/** The rows' grouping and filters as one query, the same for a Prometheus and for two scrapes. */
export function statQuery(req: StatRequest): SignalQuery & { side: Side } {
  if (req.from && req.to) throw new StatError('give --from or --to, not both');
  const side: Side = req.to ? 'source' : 'destination';
  const group = rowLabels(req.kind, side);
  const refNs = req.refNamespace ?? req.namespace ?? 'default';
  const filters: Matcher[] = [
    ...(req.namespace !== undefined ? [eq(group[0]!, req.namespace)] : []),
    ...(req.from ? refMatchers(req.from, 'source', refNs) : []),
    ...(req.to ? refMatchers(req.to, 'destination', refNs) : []),
  ];
  return { l7: filters, l4: filters, group, window: `${req.windowSeconds}s`, side };
}

/** One row's figures; null where there was nothing to measure (no L7 hop, no new connection). */
export interface Signals {
  requests: number;
  rps: number | null;
  success: number | null;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  tcpOpen: number | null;
  tlsShare: number | null;
}

export type RowKey = string[];

const finite = (v: number | undefined): number | null => (v === undefined || !Number.isFinite(v) ? null : v);

/** Each row's signals from two scrapes `seconds` apart (every agent's and waypoint's samples, concatenated). */
export function signalsFromScrapes(q: SignalQuery, before: readonly Sample[], after: readonly Sample[], seconds: number): Map<string, Signals> {
  const l7 = [L7_REPORTER, ...q.l7];
  const l4 = [L4_REPORTER, ...q.l4];
  const requests = increaseBy(before, after, { metric: REQUESTS, matchers: l7 }, q.group);
  const errors = increaseBy(before, after, { metric: REQUESTS, matchers: [...l7, SERVER_ERROR] }, q.group);
  const quantiles = Object.fromEntries(([50, 95, 99] as const).map((p) => [p, quantileBy(p / 100, before, after, { metric: DURATION, matchers: l7 }, q.group)])) as Record<50 | 95 | 99, Map<string, number>>;
  const opened = sumBy(after, { metric: TCP_OPENED, matchers: l4 }, q.group);
  const closed = sumBy(after, { metric: TCP_CLOSED, matchers: l4 }, q.group);
  const openedTls = sumBy(after, { metric: TCP_OPENED, matchers: [...l4, MUTUAL_TLS] }, q.group);
  const closedTls = sumBy(after, { metric: TCP_CLOSED, matchers: [...l4, MUTUAL_TLS] }, q.group);
  const newConns = increaseBy(before, after, { metric: TCP_OPENED, matchers: l4 }, q.group);
  const newTls = increaseBy(before, after, { metric: TCP_OPENED, matchers: [...l4, MUTUAL_TLS] }, q.group);
  const keys = new Set([...requests.keys(), ...opened.keys()]);
  const out = new Map<string, Signals>();
  for (const key of keys) {
    const n = requests.get(key) ?? 0;
    const open = (opened.get(key) ?? 0) - (closed.get(key) ?? 0);
    const openTls = (openedTls.get(key) ?? 0) - (closedTls.get(key) ?? 0);
    out.set(key, {
      requests: n,
      rps: requests.has(key) ? n / seconds : null,
      success: n > 0 ? 1 - (errors.get(key) ?? 0) / n : null,
      p50: n > 0 ? finite(quantiles[50].get(key)) : null,
      p95: n > 0 ? finite(quantiles[95].get(key)) : null,
      p99: n > 0 ? finite(quantiles[99].get(key)) : null,
      tcpOpen: opened.has(key) ? (opened.get(key) ?? 0) - (closed.get(key) ?? 0) : null,
      tlsShare: tlsShareOf(open, openTls, newConns.get(key) ?? 0, newTls.get(key) ?? 0),
    });
  }
  return out;
}

/** One instant vector from a Prometheus: each series' labels and value. */
export type InstantQuery = (expr: string) => Promise<Array<{ metric: Record<string, string>; value: number }>>;

/** Each row's signals from a Prometheus, by the PromQL of `promql()`. */
export async function signalsFromPrometheus(q: SignalQuery, query: InstantQuery): Promise<Map<string, Signals>> {
  const exprs = promql(q);
  const names = ['requestRate', 'successRate', 'p50', 'p95', 'p99', 'tcpOpen', 'tlsShare'] as const;
  const [answers, counts] = await Promise.all([Promise.all(names.map((n) => query(exprs[n]!))), query(exprs.requests!)]);
  const byName = new Map<string, Map<string, number>>();
  names.forEach((n, i) => byName.set(n, new Map(answers[i]!.map((s) => [groupKey(s.metric, q.group), s.value]))));
  const requestCounts = new Map(counts.map((s) => [groupKey(s.metric, q.group), s.value]));
  const keys = new Set([...byName.get('requestRate')!.keys(), ...byName.get('tcpOpen')!.keys()]);
  const out = new Map<string, Signals>();
  for (const key of keys) {
    const get = (n: (typeof names)[number]) => finite(byName.get(n)!.get(key));
    const rps = get('requestRate');
    out.set(key, {
      requests: Math.round(requestCounts.get(key) ?? 0),
      rps,
      success: rps ? get('successRate') : null,
      p50: rps ? get('p50') : null,
      p95: rps ? get('p95') : null,
      p99: rps ? get('p99') : null,
      tcpOpen: get('tcpOpen'),
      tlsShare: get('tlsShare'),
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Rows: what exists (from the cluster) joined with what was measured

/** A pod as the cluster knows it: its workload (Deployment name, else the pod's), services, whether it is in the mesh. */
export interface InventoryPod {
  namespace: string;
  name: string;
  workload: string;
  services: string[];
  meshed: boolean;
  labels?: Record<string, string>;
}

export interface StatRow {
  namespace: string;
  name: string;
  /** Pods in the mesh of all the row's pods; absent for rows the cluster does not list (a source outside it). */
  meshed?: { meshed: number; total: number };
  signals: Signals | null;
}

/** The rows: every resource of the kind in the inventory (within the namespace filter), plus any the metrics name. */
export function statRows(req: StatRequest, inventory: readonly InventoryPod[], signals: Map<string, Signals>): StatRow[] {
  const { group } = statQuery(req);
  const rows = new Map<string, StatRow>();
  const keyOf = (namespace: string, name: string) => JSON.stringify(req.kind === 'ns' ? [namespace] : [namespace, name]);
  const add = (namespace: string, name: string, meshed: boolean) => {
    const key = keyOf(namespace, name);
    const row = rows.get(key) ?? { namespace, name, meshed: { meshed: 0, total: 0 }, signals: null };
    row.meshed!.total++;
    if (meshed) row.meshed!.meshed++;
    rows.set(key, row);
  };
  // With --from or --to the rows are only those the metrics show talking to or from it.
  if (!req.from && !req.to) {
    for (const pod of inventory) {
      if (req.namespace !== undefined && pod.namespace !== req.namespace) continue;
      if (req.kind === 'ns') add(pod.namespace, pod.namespace, pod.meshed);
      else if (req.kind === 'deploy') add(pod.namespace, pod.workload, pod.meshed);
      else for (const svc of pod.services) add(pod.namespace, svc, pod.meshed);
    }
  }
  for (const [key, s] of signals) {
    const parts = JSON.parse(key) as string[];
    if (parts.some((p) => p === '' || p === 'unknown')) continue;
    const namespace = parts[0]!;
    const name = group.length > 1 ? parts[1]! : namespace;
    const rowKey = keyOf(namespace, name);
    const existing = rows.get(rowKey);
    if (existing) existing.signals = s;
    else {
      const pods = inventory.filter((p) => p.namespace === namespace && (req.kind === 'ns' || (req.kind === 'deploy' ? p.workload === name : p.services.includes(name))));
      rows.set(rowKey, { namespace, name, ...(pods.length ? { meshed: { meshed: pods.filter((p) => p.meshed).length, total: pods.length } } : {}), signals: s });
    }
  }
  return [...rows.values()].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

// ---------------------------------------------------------------------------------------------
// As linkerd viz stat prints them

export const percent = (share: number | null): string => (share === null ? '-' : `${(share * 100).toFixed(2)}%`);
export const rate = (rps: number | null): string => (rps === null ? '-' : `${rps.toFixed(1)}rps`);
export function millis(ms: number | null): string {
  if (ms === null) return '-';
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)}s`;
  return ms >= 10 ? `${Math.round(ms)}ms` : `${Number(ms.toPrecision(2))}ms`;
}

export const STAT_HEADER = ['NAMESPACE', 'NAME', 'MESHED', 'SUCCESS', 'RPS', 'LATENCY_P50', 'LATENCY_P95', 'LATENCY_P99', 'TCP_CONN', 'TLS'];

export function statCells(row: StatRow): string[] {
  const s = row.signals;
  return [
    row.namespace, row.name, row.meshed ? `${row.meshed.meshed}/${row.meshed.total}` : '-',
    percent(s?.success ?? null), rate(s?.rps ?? null), millis(s?.p50 ?? null), millis(s?.p95 ?? null), millis(s?.p99 ?? null),
    s?.tcpOpen === null || s?.tcpOpen === undefined ? '-' : String(Math.round(s.tcpOpen)), percent(s?.tlsShare ?? null),
  ];
}

// ---------------------------------------------------------------------------------------------
// Pods: what the node agents hold open now (Istio's metrics carry no pod)

/** A connection a node agent holds open now, as its proxy-config connections view lists it. */
export interface OpenConnection {
  /** The pod of the agent's node it belongs to, `namespace/name`. */
  pod: string;
  reporter: 'source' | 'destination';
  mtls: boolean;
}

/**
 * `ambit stat pod`: every pod (of `namespace`, when given), meshed or not, with the connections
 * its node agent holds into it now and the share of them that are mutual TLS. Requests are
 * counted per workload (Istio's metrics carry no pod), so a pod row has no request figures.
 */
export function podRows(namespace: string | undefined, inventory: readonly InventoryPod[], connections: readonly OpenConnection[]): StatRow[] {
  const inbound = new Map<string, { open: number; tls: number }>();
  for (const c of connections) {
    if (c.reporter !== 'destination') continue;
    const n = inbound.get(c.pod) ?? { open: 0, tls: 0 };
    n.open++;
    if (c.mtls) n.tls++;
    inbound.set(c.pod, n);
  }
  return inventory
    .filter((p) => namespace === undefined || p.namespace === namespace)
    .map((p): StatRow => {
      const held = inbound.get(`${p.namespace}/${p.name}`);
      return {
        namespace: p.namespace, name: p.name, meshed: { meshed: p.meshed ? 1 : 0, total: 1 },
        // A pod outside the mesh has no agent carrying its connections: nothing is known of them.
        signals: p.meshed ? { requests: 0, rps: null, success: null, p50: null, p95: null, p99: null, tcpOpen: held?.open ?? 0, tlsShare: held && held.open > 0 ? held.tls / held.open : null } : null,
      };
    })
    .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

export const isPodKind = (text: string): boolean => ['pod', 'pods', 'po'].includes(text.toLowerCase());
