/**
 * Where the local cluster's Istio metrics are read: every node agent's and every running
 * waypoint's :15020, fetched from inside the cluster's underlay netns (the host has no route to
 * it). One list for `ambit stat`, the dashboard and the canary controller.
 */
import { WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { httpGetInNetns } from '../host/netns.js';
import type { Fetch, Target } from '../observe/prometheus.js';
import type { ClusterLayout } from './layout.js';
import { PROXY_METRICS_PORT } from './prometheus.js';
import type { ClusterStatus, PodStatus } from './runtime.js';

/** A pod a Gateway runs (it carries the Gateway API's gateway-name label). */
export const isWaypointPod = (p: PodStatus): boolean => p.labels?.[WAYPOINT_GATEWAY_LABEL] !== undefined;

/** The node agents' and running waypoints' /metrics; with `namespaces`, only those namespaces' waypoints and no node agents. */
export function localTargets(layout: ClusterLayout, status: ClusterStatus, namespaces?: readonly string[]): Target[] {
  const netns = `/run/netns/${layout.underlayNetns}`;
  const inNetns = (host: string, port: number): Fetch => (path) => httpGetInNetns(netns, host, port, path);
  const waypoints = status.pods
    .filter((p) => isWaypointPod(p) && p.phase === 'Running' && (!namespaces || namespaces.includes(p.namespace)))
    .map((p) => ({ name: `waypoint ${p.namespace}/${p.name}`, fetch: inNetns(p.ip, PROXY_METRICS_PORT) }));
  if (namespaces) return waypoints;
  return [...status.nodes.map((n) => ({ name: `node-agent ${n.name}`, fetch: inNetns(n.ip, PROXY_METRICS_PORT) })), ...waypoints];
}
