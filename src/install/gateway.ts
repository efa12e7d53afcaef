/**
 * Ingress gateways on Kubernetes, as Istio deploys its own: for a Gateway API Gateway of class
 * `ambit` or `istio` named G, a ServiceAccount G (its identity: spiffe://<td>/ns/<ns>/sa/G), a
 * Deployment `G-gateway` running `ambit gateway run`, and a Service `G-gateway` of type
 * LoadBalancer with the listeners' ports (Istio's gateway deployment controller makes the same
 * three); and, opt-in with `ingressGateway.enabled`, Istio's default ingress gateway in
 * istio-system under Istio's names, so that Istio Gateways selecting `istio: ingressgateway`
 * and AuthorizationPolicies naming its account apply unchanged.
 *
 * The gateway binds its listeners' ports itself (80, 443) as a non-root user: the pod's
 * `net.ipv4.ip_unprivileged_port_start=0` sysctl allows it, as in Istio's gateways. It needs
 * no RBAC: it only presents its projected token to the controller, which sends it the Secrets
 * its Gateways name.
 */
import { DATAPLANE_MODE, INGRESS_ACCOUNT_LABEL, INGRESS_CLASSES, ISTIO_INGRESS, WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { commonLabels, type K8sObject } from './objects.js';
import { proxyContainer, proxyVolumes, tracingArgs } from './proxy-container.js';
import { LINUX_NODES, prometheusAnnotations, pullSecrets } from './render.js';
import { defaultValues, ValuesError, type Values } from './values.js';

/** The gateway's health and metrics port (`/healthz/ready`, `/healthz/live`, `/metrics`). */
export const GATEWAY_STATUS_PORT = 15020;
/** The objects' `app.kubernetes.io/component`: the controller's reconciler adopts only its own. */
export const INGRESS_COMPONENT = 'ingress-gateway';
/** The ports Istio's default ingress gateway Service exposes (its listeners follow the Istio Gateways). */
export const ISTIO_INGRESS_PORTS: readonly { name: string; port: number }[] = [{ name: 'http2', port: 80 }, { name: 'https', port: 443 }];

interface GatewayLike {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: unknown; namespace?: unknown; uid?: unknown; annotations?: Record<string, unknown> };
  spec?: { gatewayClassName?: unknown; listeners?: unknown };
}

/** Whether a Gateway (as read from the API) declares an ingress gateway ambit runs. */
export function isIngressGatewayObject(obj: unknown): boolean {
  const g = obj as GatewayLike | undefined;
  return typeof g === 'object' && g !== null && g.kind === 'Gateway' && typeof g.apiVersion === 'string' && g.apiVersion.startsWith('gateway.networking.k8s.io/')
    && typeof g.spec?.gatewayClassName === 'string' && INGRESS_CLASSES.includes(g.spec.gatewayClassName);
}

interface GatewayShape {
  namespace: string;
  /** The Deployment's and Service's name. */
  name: string;
  serviceAccount: string;
  /** The pods' selector labels. */
  selector: Record<string, string>;
  /** Labels of every object besides commonLabels. */
  labels: Record<string, string>;
  accountLabels: Record<string, string>;
  ports: { name: string; port: number }[];
  ownerReferences?: Record<string, unknown>[];
  tracing: string[];
  replicas: number;
  serviceType: string;
}

/** The ServiceAccount, Deployment and Service of one gateway. */
function gatewayObjects(shape: GatewayShape, values: Values): K8sObject[] {
  const labels = { ...commonLabels(INGRESS_COMPONENT), ...shape.labels, ...shape.selector };
  const meta = (name: string, extra: Record<string, string> = {}) => ({
    name, namespace: shape.namespace, labels: { ...labels, ...extra }, ...(shape.ownerReferences ? { ownerReferences: shape.ownerReferences } : {}),
  });
  const serviceAccount: K8sObject = { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(shape.serviceAccount, shape.accountLabels), automountServiceAccountToken: false };
  const deployment: K8sObject = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: meta(shape.name),
    spec: {
      replicas: shape.replicas,
      selector: { matchLabels: shape.selector },
      template: {
        // The gateway carries its traffic into the mesh over HBONE itself: the node agent must not capture it.
        metadata: { labels: { ...labels, [DATAPLANE_MODE]: 'none' }, annotations: prometheusAnnotations(GATEWAY_STATUS_PORT) },
        spec: {
          serviceAccountName: shape.serviceAccount,
          automountServiceAccountToken: false,
          nodeSelector: LINUX_NODES,
          ...pullSecrets(values),
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: shape.selector } } }],
            },
          },
          // Ports below 1024 (80, 443) without root or NET_BIND_SERVICE: a namespaced sysctl, allowed by the default Pod Security profile.
          securityContext: {
            runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' },
            sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }],
          },
          containers: [proxyContainer({
            name: 'istio-proxy', command: 'gateway', proxyName: `${shape.namespace}/${shape.serviceAccount}`, tracing: shape.tracing,
            ports: shape.ports, status: { name: 'http-envoy-prom', port: GATEWAY_STATUS_PORT },
          }, values)],
          volumes: proxyVolumes(),
        },
      },
    },
  };
  const service: K8sObject = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(shape.name),
    spec: {
      type: shape.serviceType,
      selector: shape.selector,
      ports: shape.ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.port, protocol: 'TCP' })),
    },
  };
  return [serviceAccount, deployment, service];
}

/** A Service port's name from a listener's (a DNS label, as the API requires), else from its protocol and port. */
function portName(listener: Record<string, unknown>, port: number): string {
  const name = typeof listener.name === 'string' ? listener.name.toLowerCase() : '';
  if (/^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$/.test(name)) return name;
  return `${String(listener.protocol ?? 'tcp').toLowerCase().replace(/[^a-z0-9]/g, '')}-${port}`.slice(0, 15);
}

/** The objects that run the ingress gateway a Gateway API Gateway of class ambit/istio declares; throws ValuesError for anything else. */
export function ingressGatewayObjects(gateway: GatewayLike, values: Values = defaultValues()): K8sObject[] {
  const meta = gateway.metadata ?? {};
  if (!isIngressGatewayObject(gateway)) throw new ValuesError(`an ingress gateway is declared by a gateway.networking.k8s.io Gateway of class ${INGRESS_CLASSES.join(' or ')}`);
  if (typeof meta.name !== 'string' || meta.name === '' || typeof meta.namespace !== 'string' || meta.namespace === '') {
    throw new ValuesError('the Gateway needs metadata.name and metadata.namespace');
  }
  const listeners = Array.isArray(gateway.spec?.listeners) ? gateway.spec.listeners.filter((l): l is Record<string, unknown> => typeof l === 'object' && l !== null) : [];
  const ports = new Map<number, string>();
  for (const l of listeners) {
    const port = l.port;
    if (typeof port === 'number' && Number.isInteger(port) && port >= 1 && port <= 65535 && !ports.has(port)) ports.set(port, portName(l, port));
  }
  if (ports.size === 0) throw new ValuesError(`Gateway ${meta.namespace}/${meta.name} has no listener with a port`);
  return gatewayObjects({
    namespace: meta.namespace, name: `${meta.name}-gateway`, serviceAccount: meta.name,
    selector: { [WAYPOINT_GATEWAY_LABEL]: meta.name },
    labels: {}, accountLabels: { [INGRESS_ACCOUNT_LABEL]: `${meta.name}-gateway` },
    ports: [...ports].map(([port, name]) => ({ name, port })),
    ...(typeof meta.uid === 'string' ? { ownerReferences: [{ apiVersion: gateway.apiVersion, kind: 'Gateway', name: meta.name, uid: meta.uid, controller: true, blockOwnerDeletion: true }] } : {}),
    tracing: tracingArgs(meta.annotations ?? {}),
    replicas: values.ingressGateway.replicas,
    serviceType: values.ingressGateway.serviceType,
  }, values);
}

/**
 * Istio's default ingress gateway (`ingressGateway.enabled`): the namespace istio-system, the
 * account istio-ingressgateway-service-account (labelled so that the controller takes its
 * tokens as this gateway's credential), the Deployment and the Service istio-ingressgateway.
 */
export function istioIngressGatewayObjects(values: Values): K8sObject[] {
  const namespace: K8sObject = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ISTIO_INGRESS.namespace, labels: commonLabels('namespace') } };
  return [namespace, ...gatewayObjects({
    namespace: ISTIO_INGRESS.namespace, name: ISTIO_INGRESS.name, serviceAccount: ISTIO_INGRESS.serviceAccount,
    selector: { ...ISTIO_INGRESS.labels }, labels: {}, accountLabels: { [INGRESS_ACCOUNT_LABEL]: ISTIO_INGRESS.name },
    ports: [...ISTIO_INGRESS_PORTS], tracing: [], replicas: values.ingressGateway.replicas, serviceType: values.ingressGateway.serviceType,
  }, values)];
}
