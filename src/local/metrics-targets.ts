/**
 * Where the local cluster's Istio metrics are read: every node agent's, running waypoint's and
 * ingress gateway's :15020, fetched from inside the cluster's underlay netns (the host has no route to
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

/** The node agents', running waypoints' and ingress gateways' /metrics; with `namespaces`, only those namespaces' waypoints. */
export function localTargets(layout: ClusterLayout, status: ClusterStatus, namespaces?: readonly string[]): Target[] {
  const netns = `/run/netns/${layout.underlayNetns}`;
  const inNetns = (host: string, port: number): Fetch => (path) => httpGetInNetns(netns, host, port, path);
  const gateways = new Set((status.gateways ?? []).map((g) => `${g.namespace}/${g.name}`));
  const isGateway = (p: PodStatus) => gateways.has(`${p.namespace}/${p.name}`);
  const running = status.pods.filter((p) => p.phase === 'Running' && p.ip);
  const waypoints = running
    .filter((p) => isWaypointPod(p) && !isGateway(p) && (!namespaces || namespaces.includes(p.namespace)))
    .map((p) => ({ name: `waypoint ${p.namespace}/${p.name}`, fetch: inNetns(p.ip, PROXY_METRICS_PORT) }));
  if (namespaces) return waypoints;
  // Ingress gateways report their requests with reporter="source" (Istio's gateways do too).
  const ingress = running.filter(isGateway).map((p) => ({ name: `gateway ${p.namespace}/${p.name}`, fetch: inNetns(p.ip, PROXY_METRICS_PORT) }));
  return [...status.nodes.map((n) => ({ name: `node-agent ${n.name}`, fetch: inNetns(n.ip, PROXY_METRICS_PORT) })), ...waypoints, ...ingress];
}
