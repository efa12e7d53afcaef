/**
 * A cluster with ambit installed, as `ambit check --kubeconfig` sees it: the stand-in API server
 * seeded with the objects `ambit install` renders (so the selectors and names are the real ones),
 * every node agent answering its /healthz/check. For the cluster checks in process (unit) and
 * through the CLI (integration).
 */
import { controllerObjects, nodeAgentDaemonSet } from '../../src/install/render.js';
import { defaultValues } from '../../src/install/values.js';
import { FakeApiServer, type ServedKind } from './fake-apiserver.js';

export const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Node', plural: 'nodes' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Secret', plural: 'secrets' },
  { group: '', version: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
  { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets' },
  { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases' },
  { group: 'apiextensions.k8s.io', version: 'v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions' },
  { group: 'crd.projectcalico.org', version: 'v1', kind: 'FelixConfiguration', plural: 'felixconfigurations' },
  { group: 'operator.tigera.io', version: 'v1', kind: 'Installation', plural: 'installations' },
];

export const CRDS = [
  'authorizationpolicies.security.istio.io', 'peerauthentications.security.istio.io', 'virtualservices.networking.istio.io',
  'destinationrules.networking.istio.io', 'gateways.networking.istio.io', 'serviceentries.networking.istio.io',
  'gatewayclasses.gateway.networking.k8s.io', 'gateways.gateway.networking.k8s.io', 'httproutes.gateway.networking.k8s.io',
  'grpcroutes.gateway.networking.k8s.io', 'ratelimits.ambit.dev',
];
export const NODES = ['node-a', 'node-b', 'node-c'];
export const NS = 'ambit-system';
export const NOW = Date.parse('2025-06-01T12:00:00Z');
export const values = defaultValues();
export const daemonSet = nodeAgentDaemonSet(values);
export const agentLabels = (daemonSet.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
export const agentPod = (node: string) => `ambit-node-${node.slice(-1)}`;
export const AGENT_OK = { ok: true, checks: [{ name: 'kernel >= 5.17', ok: true, detail: '6.8.0' }, { name: 'bpffs', ok: true, detail: 'mounted at /sys/fs/bpf' }] };

/** Seeds `server` with a healthy installation; `agents` gets what each node agent answers at :15021/healthz/check. */
export function seedHealthy(server: FakeApiServer, agents: Map<string, unknown>): void {
  for (const name of CRDS) server.apply('CustomResourceDefinition', { metadata: { name } }, 'apiextensions.k8s.io');
  for (const name of NODES) {
    server.apply('Node', { metadata: { name }, status: { nodeInfo: { kernelVersion: '6.8.0-45-generic', operatingSystem: 'linux' } } });
  }
  server.apply('Namespace', { metadata: { name: NS } });
  server.apply('Secret', { metadata: { name: 'ambit-ca', namespace: NS }, data: { 'root-cert.pem': 'Uk9PVA==', 'cert-chain.pem': 'Q0hBSU4=', 'ca-key.pem': 'S0VZ' } });
  const deployment = controllerObjects(values).find((o) => o.kind === 'Deployment')!;
  server.apply('Deployment', { ...deployment, status: { replicas: 2, readyReplicas: 2 } }, 'apps');
  server.apply('Lease', { metadata: { name: 'ambit-controller', namespace: NS }, spec: { holderIdentity: 'ambit-controller-7d9f-x2x', renewTime: new Date(NOW - 3000).toISOString().replace('Z', '000Z'), leaseDurationSeconds: 15 } }, 'coordination.k8s.io');
  server.apply('ConfigMap', { metadata: { name: 'ambit-root-cert', namespace: NS }, data: { 'root-cert.pem': '-----BEGIN CERTIFICATE-----\n' } });
  server.apply('DaemonSet', { ...daemonSet, status: { desiredNumberScheduled: 3, numberReady: 3 } }, 'apps');
  for (const node of NODES) {
    server.apply('Pod', { metadata: { name: agentPod(node), namespace: NS, labels: { ...agentLabels } }, spec: { nodeName: node }, status: { phase: 'Running' } });
    agents.set(agentPod(node), AGENT_OK);
  }
  // Another pod in the namespace, not the DaemonSet's: not a node agent.
  server.apply('Pod', { metadata: { name: 'ambit-controller-7d9f-x2x', namespace: NS, labels: { 'app.kubernetes.io/name': 'ambit-controller' } }, spec: { nodeName: 'node-a' } });
}

/** A started stand-in API server seeded healthy, and what its node agents answer (undefined: not answering). */
export async function startStandIn(): Promise<{ server: FakeApiServer; agents: Map<string, unknown> }> {
  const server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  await server.start();
  const agents = new Map<string, unknown>();
  server.podProxy = (namespace, pod, port, path) => {
    if (namespace !== NS || port !== 15021 || path !== '/healthz/check') return { status: 404, body: 'not found' };
    const answer = agents.get(pod);
    return answer === undefined ? undefined : { status: 200, body: JSON.stringify(answer) };
  };
  seedHealthy(server, agents);
  return { server, agents };
}
