/**
 * The service graph `ambit dashboard` draws, from two scrapes a window apart: workloads as nodes
 * (with their inbound golden signals), traffic as edges between workloads. An edge carries the
 * L7 figures when a waypoint saw its requests (rps, success, p99; `mtls` from the requests'
 * connection_security_policy), else the L4 ones the destination's node agent counted
 * (connections, bytes, the share of mutual TLS: of those open now, else of those opened in the window). Hops to and from a waypoint itself are folded
 * away: the waypoint reports the original source, so client → waypoint → web is one edge
 * client → web, marked as going through the waypoint.
 */
import type { Sample } from './exposition.js';
import {
  DURATION, increaseBy, L4_REPORTER, L7_REPORTER, MUTUAL_TLS, quantileBy, REQUESTS, SERVER_ERROR, TCP_OPENED, TCP_RECEIVED, TCP_SENT, sumBy, TCP_CLOSED, tlsShareOf,
} from './queries.js';
import { signalsFromScrapes, type InventoryPod, type Signals } from './stat.js';

export interface GraphNode {
  id: string;
  namespace: string;
  workload: string;
  /** Pods in the mesh of all its pods; absent for a workload only the metrics name (outside the cluster's inventory). */
  meshed?: { meshed: number; total: number };
  /** Its inbound figures over the window; null when nothing reached it. */
  inbound: Signals | null;
}

export interface GraphEdge {
  source: string;
  destination: string;
  /** `waypoint` when a waypoint saw the requests (L7 figures), `tcp` when only node agents did. */
  via: 'waypoint' | 'tcp';
  rps: number | null;
  success: number | null;
  p99: number | null;
  /** Share of the edge's traffic that was mutual TLS (requests for L7, new connections for L4); null when none was new. */
  mtls: number | null;
  connectionsOpen: number | null;
  bytesPerSecond: number | null;
}

export interface Graph {
  windowSeconds: number;
  nodes: GraphNode[];
  edges: GraphEdge[];
}

export const nodeId = (namespace: string, workload: string): string => `${namespace}/${workload}`;

const PAIR = ['source_workload_namespace', 'source_workload', 'destination_workload_namespace', 'destination_workload'];
const known = (v: string | undefined): v is string => v !== undefined && v !== '' && v !== 'unknown';

/**
 * The graph over `before` → `after` (`seconds` apart). `waypoints` are the waypoints' own
 * workloads (`namespace/workload`), whose hops are folded away.
 */
export function buildGraph(inventory: readonly InventoryPod[], waypoints: ReadonlySet<string>, before: readonly Sample[], after: readonly Sample[], seconds: number): Graph {
  const nodes = new Map<string, GraphNode>();
  const node = (namespace: string, workload: string): GraphNode => {
    const id = nodeId(namespace, workload);
    let n = nodes.get(id);
    if (!n) {
      n = { id, namespace, workload, inbound: null };
      nodes.set(id, n);
    }
    return n;
  };
  for (const pod of inventory) {
    const n = node(pod.namespace, pod.workload);
    n.meshed ??= { meshed: 0, total: 0 };
    n.meshed.total++;
    if (pod.meshed) n.meshed.meshed++;
  }
  const inbound = signalsFromScrapes({ l7: [], l4: [], group: ['destination_workload_namespace', 'destination_workload'], window: `${seconds}s` }, before, after, seconds);
  for (const [key, s] of inbound) {
    const [ns, wl] = JSON.parse(key) as [string, string];
    if (!known(ns) || !known(wl) || waypoints.has(nodeId(ns, wl))) continue;
    node(ns, wl).inbound = s;
  }

  const edges = new Map<string, GraphEdge>();
  const parse = (key: string) => JSON.parse(key) as [string, string, string, string];
  // L7: what waypoints saw.
  const requests = increaseBy(before, after, { metric: REQUESTS, matchers: [L7_REPORTER] }, PAIR);
  const errors = increaseBy(before, after, { metric: REQUESTS, matchers: [L7_REPORTER, SERVER_ERROR] }, PAIR);
  const tlsRequests = increaseBy(before, after, { metric: REQUESTS, matchers: [L7_REPORTER, MUTUAL_TLS] }, PAIR);
  const p99 = quantileBy(0.99, before, after, { metric: DURATION, matchers: [L7_REPORTER] }, PAIR);
  for (const [key, n] of requests) {
    const [sn, sw, dn, dw] = parse(key);
    if (!known(sn) || !known(sw) || !known(dn) || !known(dw) || n === 0) continue;
    node(sn, sw);
    node(dn, dw);
    edges.set(`${nodeId(sn, sw)}>${nodeId(dn, dw)}`, {
      source: nodeId(sn, sw), destination: nodeId(dn, dw), via: 'waypoint',
      rps: n / seconds, success: 1 - (errors.get(key) ?? 0) / n, p99: Number.isFinite(p99.get(key)) ? p99.get(key)! : null,
      mtls: (tlsRequests.get(key) ?? 0) / n, connectionsOpen: null, bytesPerSecond: null,
    });
  }
  // L4: what the destinations' node agents saw, for pairs no waypoint reported.
  const opened = sumBy(after, { metric: TCP_OPENED, matchers: [L4_REPORTER] }, PAIR);
  const closed = sumBy(after, { metric: TCP_CLOSED, matchers: [L4_REPORTER] }, PAIR);
  const newConns = increaseBy(before, after, { metric: TCP_OPENED, matchers: [L4_REPORTER] }, PAIR);
  const newTls = increaseBy(before, after, { metric: TCP_OPENED, matchers: [L4_REPORTER, MUTUAL_TLS] }, PAIR);
  const openedTls = sumBy(after, { metric: TCP_OPENED, matchers: [L4_REPORTER, MUTUAL_TLS] }, PAIR);
  const closedTls = sumBy(after, { metric: TCP_CLOSED, matchers: [L4_REPORTER, MUTUAL_TLS] }, PAIR);
  const sent = increaseBy(before, after, { metric: TCP_SENT, matchers: [L4_REPORTER] }, PAIR);
  const received = increaseBy(before, after, { metric: TCP_RECEIVED, matchers: [L4_REPORTER] }, PAIR);
  for (const [key, total] of opened) {
    const [sn, sw, dn, dw] = parse(key);
    if (!known(sn) || !known(sw) || !known(dn) || !known(dw)) continue;
    const from = nodeId(sn, sw);
    const to = nodeId(dn, dw);
    if (waypoints.has(from) || waypoints.has(to)) continue;
    const id = `${from}>${to}`;
    const open = total - (closed.get(key) ?? 0);
    const fresh = newConns.get(key) ?? 0;
    const bytes = ((sent.get(key) ?? 0) + (received.get(key) ?? 0)) / seconds;
    const existing = edges.get(id);
    if (existing) {
      existing.connectionsOpen = open;
      existing.bytesPerSecond = bytes;
      continue;
    }
    // A pair that only ever connected before the window, and holds nothing open now, is history.
    if (open <= 0 && fresh === 0 && bytes === 0) continue;
    node(sn, sw);
    node(dn, dw);
    const openTls = (openedTls.get(key) ?? 0) - (closedTls.get(key) ?? 0);
    edges.set(id, { source: from, destination: to, via: 'tcp', rps: null, success: null, p99: null, mtls: tlsShareOf(open, openTls, fresh, newTls.get(key) ?? 0), connectionsOpen: open, bytesPerSecond: bytes });
  }
  for (const id of waypoints) nodes.delete(id);
  return {
    windowSeconds: seconds,
    nodes: [...nodes.values()].sort((a, b) => a.id.localeCompare(b.id)),
    edges: [...edges.values()].sort((a, b) => `${a.source}>${a.destination}`.localeCompare(`${b.source}>${b.destination}`)),
  };
}
