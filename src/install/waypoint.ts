/**
 * The waypoint template: for each Gateway of class ambit-waypoint, a ServiceAccount named like
 * the Gateway (its identity: spiffe://<td>/ns/<ns>/sa/<gateway>), a Deployment running
 * `ambit waypoint run` (waypoint.replicas, spread over nodes), a Service exposing HBONE (15008)
 * and metrics (15020), and a PodDisruptionBudget. The waypoint needs no RBAC: it only presents
 * its projected token to the controller.
 */
import { DATAPLANE_MODE, WAYPOINT_CLASS, WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { commonLabels, type K8sObject } from './objects.js';
import { proxyContainer, proxyVolumes, tracingArgs } from './proxy-container.js';
import { LINUX_NODES, prometheusAnnotations, pullSecrets } from './render.js';
import { defaultValues, ValuesError, type Values } from './values.js';

export const WAYPOINT_PORTS = { hbone: 15008, metrics: 15020 } as const;

interface GatewayLike {
  apiVersion?: unknown;
  kind?: unknown;
  metadata?: { name?: unknown; namespace?: unknown; uid?: unknown; annotations?: Record<string, unknown> };
  spec?: { gatewayClassName?: unknown };
}

/** The objects that run the waypoint a Gateway declares; throws ValuesError for anything else. */
export function waypointObjects(gateway: GatewayLike, values: Values = defaultValues()): K8sObject[] {
  const meta = gateway.metadata ?? {};
  if (gateway.kind !== 'Gateway' || typeof gateway.apiVersion !== 'string' || !gateway.apiVersion.startsWith('gateway.networking.k8s.io/')) {
    throw new ValuesError('a waypoint is declared by a gateway.networking.k8s.io Gateway');
  }
  if (gateway.spec?.gatewayClassName !== WAYPOINT_CLASS) throw new ValuesError(`Gateway ${String(meta.name)} is not of class ${WAYPOINT_CLASS}`);
  if (typeof meta.name !== 'string' || meta.name === '' || typeof meta.namespace !== 'string' || meta.namespace === '') {
    throw new ValuesError('the Gateway needs metadata.name and metadata.namespace');
  }
  const name = meta.name;
  const namespace = meta.namespace;
  const selector = { [WAYPOINT_GATEWAY_LABEL]: name };
  const labels = { ...commonLabels('waypoint'), ...selector };
  const ownerReferences = typeof meta.uid === 'string'
    ? [{ apiVersion: gateway.apiVersion, kind: 'Gateway', name, uid: meta.uid, controller: true, blockOwnerDeletion: true }]
    : undefined;
  const metadata = { name, namespace, labels, ...(ownerReferences ? { ownerReferences } : {}) };

  const serviceAccount: K8sObject = { apiVersion: 'v1', kind: 'ServiceAccount', metadata, automountServiceAccountToken: false };
  const deployment: K8sObject = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata,
    spec: {
      replicas: values.waypoint.replicas,
      selector: { matchLabels: selector },
      template: {
        // The waypoint carries meshed traffic itself: the node agent must not capture it.
        metadata: { labels: { ...labels, [DATAPLANE_MODE]: 'none' }, annotations: prometheusAnnotations(WAYPOINT_PORTS.metrics) },
        spec: {
          serviceAccountName: name,
          automountServiceAccountToken: false,
          nodeSelector: LINUX_NODES,
          ...pullSecrets(values),
          // Preferred, not required: a one-node cluster still runs every replica.
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selector } } }],
            },
          },
          securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } },
          containers: [proxyContainer({
            name: 'waypoint', command: 'waypoint', proxyName: `${namespace}/${name}`,
            args: ['--listen', `0.0.0.0:${WAYPOINT_PORTS.hbone}`], tracing: tracingArgs(meta.annotations ?? {}),
            ports: [{ name: 'hbone', port: WAYPOINT_PORTS.hbone }], status: { name: 'http-metrics', port: WAYPOINT_PORTS.metrics },
          }, values)],
          volumes: proxyVolumes(),
        },
      },
    },
  };
  const service: K8sObject = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata,
    spec: {
      selector,
      ports: [
        { name: 'hbone', port: WAYPOINT_PORTS.hbone, targetPort: WAYPOINT_PORTS.hbone, protocol: 'TCP' },
        { name: 'http-metrics', port: WAYPOINT_PORTS.metrics, targetPort: WAYPOINT_PORTS.metrics, protocol: 'TCP' },
      ],
    },
  };
  const pdb: K8sObject = {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata,
    spec: {
      // maxUnavailable 1 whatever the replicas: at 1 replica a drain may still evict the pod
      // (minAvailable 1 would block every drain of its node), at 2 or more one stays up.
      maxUnavailable: 1,
      // A pod that is not ready serves nothing: evicting it never costs availability, and a
      // waypoint stuck unready (no certificate) must not block node drains.
      unhealthyPodEvictionPolicy: 'AlwaysAllow',
      selector: { matchLabels: selector },
    },
  };
  return [serviceAccount, deployment, service, pdb];
}
