/**
 * How the local cluster runs ingress gateways, as Istio's gateway deployment controller and its
 * default install would: a Gateway API Gateway of class `ambit` or `istio` named G becomes the
 * pod `G-gateway` (account G); an Istio Gateway selecting Istio's default ingress labels brings
 * up `istio-system/istio-ingressgateway` (account istio-ingressgateway-service-account) while
 * one exists. Each runs `ambit gateway run` with a credential good for its own identity only,
 * on the first node, and its listener ports are exposed on that node's address (the node
 * DNATs them to the pod, as the CNI portmap plugin does for a hostPort). The gateway opens and
 * closes its listeners as its config changes, so a change of ports changes the node's rules,
 * never the pod.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  INGRESS_CLASSES, isIngressGateway, ISTIO_INGRESS, selectsIstioIngress, TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION, WAYPOINT_GATEWAY_LABEL,
} from '../config/model.js';
import type { PodSpec, Resource } from '../kube/manifests.js';
import { ambitBin } from '../util/package.js';
import { CONTROLLER_PORT, UNDERLAY_GATEWAY, type ClusterLayout } from './layout.js';
import { BUILD_AND_PROFILE_ENV, nodeFlags } from './waypoint-pods.js';

/** Ports of the node's own processes (the node agent's admin, HBONE, metrics, readiness): never given to a gateway. */
export const NODE_RESERVED_PORTS: readonly number[] = [15000, 15001, 15006, 15008, 15020, 15021];
/** The gateway's own health and metrics port (the contract with `ambit gateway run`). */
export const GATEWAY_STATUS_PORT = 15020;

/** One ingress gateway the cluster should run, and what it exposes. */
export interface GatewayPlan {
  namespace: string;
  /** The pod's (and its Deployment's) name. */
  name: string;
  serviceAccount: string;
  labels: Record<string, string>;
  /** What made it: `Gateway.gateway.networking.k8s.io/ns/G`, or the Istio Gateways that select it. */
  from: string[];
  /** Every port its listeners name, ascending. */
  ports: number[];
  /** The ports exposed on the node's address: `ports` less the ones another gateway (or the node) holds. */
  hostPorts: number[];
  /** Why a port is not exposed; shown by `ambit local status`. */
  errors: string[];
  annotations: Record<string, string>;
}

const validPort = (p: unknown): p is number => typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535;

/**
 * The ingress gateways the applied resources call for, in a fixed order (Istio's default one
 * first, then Gateway API Gateways by namespace and name) so that a port two of them want goes
 * to the same one every time; the other is told why in `errors`.
 */
export function planGateways(resources: Resource[], node: { name: string; ip: string }): GatewayPlan[] {
  const gateways = resources.filter((r) => isIngressGateway(r));
  const plans: GatewayPlan[] = [];
  const istio = gateways.filter((g) => g.apiVersion.startsWith('networking.istio.io/') && selectsIstioIngress(g.raw.spec))
    .sort((a, b) => `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`));
  if (istio.length > 0) {
    const ports = istio.flatMap((g) => ((g.raw.spec as { servers?: { port?: { number?: unknown } }[] }).servers ?? []).map((s) => s.port?.number)).filter(validPort);
    plans.push({
      namespace: ISTIO_INGRESS.namespace, name: ISTIO_INGRESS.name, serviceAccount: ISTIO_INGRESS.serviceAccount, labels: { ...ISTIO_INGRESS.labels },
      from: istio.map((g) => `Gateway.networking.istio.io/${g.meta.namespace}/${g.meta.name}`), ports: [...new Set(ports)].sort((a, b) => a - b), hostPorts: [], errors: [], annotations: {},
    });
  }
  const api = gateways.filter((g) => g.apiVersion.startsWith('gateway.networking.k8s.io/') && INGRESS_CLASSES.includes(String((g.raw.spec as { gatewayClassName?: unknown }).gatewayClassName)))
    .sort((a, b) => `${a.meta.namespace}/${a.meta.name}`.localeCompare(`${b.meta.namespace}/${b.meta.name}`));
  for (const g of api) {
    const ports = ((g.raw.spec as { listeners?: { port?: unknown }[] }).listeners ?? []).map((l) => l.port).filter(validPort);
    const annotations = ((g.raw.metadata as { annotations?: Record<string, string> } | undefined)?.annotations) ?? {};
    plans.push({
      namespace: g.meta.namespace, name: `${g.meta.name}-gateway`, serviceAccount: g.meta.name,
      labels: { [WAYPOINT_GATEWAY_LABEL]: g.meta.name, 'gateway.networking.k8s.io/gateway-class-name': String((g.raw.spec as { gatewayClassName?: unknown }).gatewayClassName) },
      from: [`Gateway.gateway.networking.k8s.io/${g.meta.namespace}/${g.meta.name}`], ports: [...new Set(ports)].sort((a, b) => a - b), hostPorts: [], errors: [],
      annotations: Object.fromEntries([TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION].filter((k) => annotations[k] !== undefined).map((k) => [k, annotations[k]!])),
    });
  }
  const taken = new Map<number, string>();
  for (const plan of plans) {
    for (const port of plan.ports) {
      const holder = taken.get(port);
      if (NODE_RESERVED_PORTS.includes(port)) plan.errors.push(`port ${port} is not exposed on ${node.name} (${node.ip}): the node agent uses it`);
      else if (holder) plan.errors.push(`port ${port} is not exposed on ${node.name} (${node.ip}): ${holder} already exposes it (two gateways cannot share a port of one node)`);
      else {
        taken.set(port, `${plan.namespace}/${plan.name}`);
        plan.hostPorts.push(port);
      }
    }
  }
  return plans;
}

/** Where a gateway's credential is kept: `<state>/gateways/<ns>.<serviceAccount>/token` (read by the controller's LocalCredentials). */
export const gatewayCredentialDir = (layout: ClusterLayout, namespace: string, serviceAccount: string): string => join(layout.stateDir, 'gateways', `${namespace}.${serviceAccount}`);

/**
 * A gateway's pod spec, on `node`, and `hash`, which changes when the pod must be made again
 * (its tracing flags; not its ports, which the process follows by itself). Writes its
 * credential (0600) the first time.
 */
export function gatewayPod(layout: ClusterLayout, plan: GatewayPlan, node: string): { spec: PodSpec; hash: string } {
  const tracingArgs = [
    ...(plan.annotations[TRACING_ENDPOINT_ANNOTATION] ? ['--tracing-endpoint', plan.annotations[TRACING_ENDPOINT_ANNOTATION]] : []),
    ...(plan.annotations[TRACING_SAMPLING_ANNOTATION] ? ['--tracing-sampling', plan.annotations[TRACING_SAMPLING_ANNOTATION]] : []),
  ];
  const credDir = gatewayCredentialDir(layout, plan.namespace, plan.serviceAccount);
  mkdirSync(credDir, { recursive: true, mode: 0o700 });
  const tokenFile = join(credDir, 'token');
  if (!existsSync(tokenFile)) writeFileSync(tokenFile, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
  const spec = {
    nodeName: node, serviceAccountName: plan.serviceAccount, restartPolicy: 'Always', terminationGracePeriodSeconds: 10,
    containers: [{
      name: 'istio-proxy', cwd: layout.stateDir,
      env: [...BUILD_AND_PROFILE_ENV.flatMap((key) => (process.env[key] ? [{ name: key, value: process.env[key] }] : [])), { name: 'NODE_NAME', fieldRef: 'spec.nodeName' }],
      ports: [{ name: 'http-envoy-prom', containerPort: GATEWAY_STATUS_PORT, protocol: 'TCP' }],
      argv: [process.execPath, ...nodeFlags(), ambitBin(), 'gateway', 'run', '--name', `${plan.namespace}/${plan.serviceAccount}`, '--controller', `${UNDERLAY_GATEWAY}:${CONTROLLER_PORT}`,
        '--token-file', tokenFile, '--ca-file', join(layout.stateDir, 'ca', 'ca-cert.pem'), ...tracingArgs],
      readinessProbe: { httpGet: { path: '/healthz/ready', port: GATEWAY_STATUS_PORT, scheme: 'HTTP' }, periodSeconds: 1, initialDelaySeconds: 0, timeoutSeconds: 1, failureThreshold: 1, successThreshold: 1 },
    }],
  } as PodSpec;
  return { spec, hash: [node, ...tracingArgs].join(' ') };
}
