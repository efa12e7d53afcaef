/**
 * The ingress gateways of a Kubernetes cluster, run by the leading controller as Istio's gateway
 * deployment controller runs them: for every Gateway API Gateway of class `ambit` or `istio`,
 * the ServiceAccount, Deployment and LoadBalancer Service `ingressGatewayObjects` renders,
 * through the waypoints' reconciler (src/control/kube/waypoints.ts) — the same server-side
 * apply, the same refusal to write over objects that are not the controller's (the Gateway
 * gets Programmed=False, ObjectNotOwned), the same deletes once the Gateway is gone; once its
 * objects are applied the Gateway's status says Programmed=True with its Service's load
 * balancer addresses (`status.addresses`), as Istio writes it. Istio's
 * default ingress gateway is the install's (`ingressGateway.enabled`), not the controller's.
 */
import type { Logger } from 'pino';
import { INGRESS_COMPONENT, ingressGatewayObjects, isIngressGatewayObject } from '../../install/gateway.js';
import type { Values } from '../../install/values.js';
import type { KubeClient } from '../../kube/client.js';
import { WaypointReconciler } from './waypoints.js';

export { isIngressGatewayObject };

/** The reconciler of ingress gateways: give it every Gateway (it keeps those of an ingress class). */
export function ingressGatewayReconciler(client: KubeClient, opts: { values: Values; log: Logger; resyncMs?: number }): WaypointReconciler {
  return new WaypointReconciler(client, {
    ...opts,
    kind: { select: isIngressGatewayObject, render: (gateway, values) => ingressGatewayObjects(gateway, values), component: INGRESS_COMPONENT, addresses: true },
  });
}
