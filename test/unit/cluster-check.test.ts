/**
 * `ambit check --kubeconfig|--kube`: the cluster checks against the stand-in API server, seeded with
 * the objects `ambit install` renders (so the selectors and names are the real ones), in process
 * for each failure and through the CLI for the exit codes, the text and the JSON.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/control/kube/client.js';
import { clusterChecks, labelSelector, type ClusterCheckOptions } from '../../src/cli/cluster-check.js';
import type { Check } from '../../src/cli/checks.js';
import { controllerObjects, nodeAgentDaemonSet } from '../../src/install/render.js';
import { defaultValues } from '../../src/install/values.js';
import { cli } from '../integration/helpers/cli.js';
import { FakeApiServer, type ServedKind, writeKubeconfig } from '../helpers/fake-apiserver.js';

const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Node', plural: 'nodes' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Secret', plural: 'secrets' },
  { group: '', version: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
  { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
  { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets' },
  { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases' },
  { group: 'apiextensions.k8s.io', version: 'v1', kind: 'CustomResourceDefinition', plural: 'customresourcedefinitions' },
];

const CRDS = [
  'authorizationpolicies.security.istio.io', 'peerauthentications.security.istio.io', 'virtualservices.networking.istio.io',
  'destinationrules.networking.istio.io', 'gateways.networking.istio.io', 'serviceentries.networking.istio.io',
  'gatewayclasses.gateway.networking.k8s.io', 'gateways.gateway.networking.k8s.io', 'httproutes.gateway.networking.k8s.io',
  'grpcroutes.gateway.networking.k8s.io', 'ratelimits.ambit.dev',
];
const NODES = ['node-a', 'node-b', 'node-c'];
const NS = 'ambit-system';
const NOW = Date.parse('2025-06-01T12:00:00Z');
const values = defaultValues();
const daemonSet = nodeAgentDaemonSet(values);
const agentLabels = (daemonSet.spec as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
const agentPod = (node: string) => `ambit-node-${node.slice(-1)}`;
const AGENT_OK = { ok: true, checks: [{ name: 'kernel >= 5.17', ok: true, detail: '6.8.0' }, { name: 'bpffs', ok: true, detail: 'mounted at /sys/fs/bpf' }] };

let server: FakeApiServer;
/** What each agent answers at :15021/healthz/check; undefined: not answering. */
let agents: Map<string, unknown>;

function healthy(): void {
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

beforeEach(async () => {
  server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  await server.start();
  agents = new Map();
  server.podProxy = (namespace, pod, port, path) => {
    if (namespace !== NS || port !== 15021 || path !== '/healthz/check') return { status: 404, body: 'not found' };
    const answer = agents.get(pod);
    return answer === undefined ? undefined : { status: 200, body: JSON.stringify(answer) };
  };
  healthy();
});

afterEach(async () => {
  await server.close();
});

const checks = (opts: ClusterCheckOptions = {}) => clusterChecks(new KubeClient({ server: server.url }), { now: () => NOW, ...opts });
const byName = (all: Check[], name: string): Check => {
  const c = all.find((x) => x.name === name);
  if (!c) throw new Error(`no check "${name}" in ${all.map((x) => x.name).join(', ')}`);
  return c;
};

describe('cluster checks, in process', () => {
  it('passes a healthy installation, one check per requirement and per node, in a stable order', async () => {
    const all = await checks();
    expect(all.filter((c) => !c.ok)).toEqual([]);
    expect(all.map((c) => c.name)).toEqual([
      'API server reachable', 'Istio CRDs', 'Gateway API CRDs', 'nodes\' kernels',
      `namespace ${NS}`, 'CRD ratelimits.ambit.dev', 'Deployment ambit-controller', 'Lease ambit-controller',
      'ConfigMap ambit-root-cert', 'DaemonSet ambit-node',
      'node node-a: requirements', 'node node-b: requirements', 'node node-c: requirements',
    ]);
    expect(byName(all, 'API server reachable').detail).toBe(`v1.30.0 at ${server.url}`);
    expect(byName(all, 'Deployment ambit-controller').detail).toBe('2/2 ready');
    expect(byName(all, 'Lease ambit-controller').detail).toBe('held by ambit-controller-7d9f-x2x');
    expect(byName(all, 'DaemonSet ambit-node').detail).toBe('3/3 nodes ready');
    expect(byName(all, 'nodes\' kernels').detail).toMatch(/^3 Linux nodes/);
    // The agents' pods were listed with the DaemonSet's selector, and only its pods were asked.
    expect(server.requests.map((r) => r.url)).toContain(`/api/v1/namespaces/${NS}/pods?labelSelector=${encodeURIComponent(labelSelector(agentLabels))}`);
    expect(server.requests.filter((r) => r.url.includes('/proxy/')).map((r) => r.url).sort()).toEqual(NODES.map((n) => `/api/v1/namespaces/${NS}/pods/${agentPod(n)}:15021/proxy/healthz/check`));
    expect(labelSelector(agentLabels)).toBe('app.kubernetes.io/name=ambit-node,app.kubernetes.io/part-of=ambit');
  });

  it('names a missing Istio CRD, and says where to get them', async () => {
    server.delete('CustomResourceDefinition', '', 'peerauthentications.security.istio.io', 'apiextensions.k8s.io');
    const istio = byName(await checks(), 'Istio CRDs');
    expect(istio).toMatchObject({ ok: false, detail: 'missing: peerauthentications.security.istio.io' });
    expect(istio.hint).toMatch(/istio\/base/);
  });

  it('reports a 403 as forbidden with the API server\'s message', async () => {
    server.failNext('GET', '/customresourcedefinitions/grpcroutes', 403);
    const gw = byName(await checks(), 'Gateway API CRDs');
    expect(gw.ok).toBe(false);
    expect(gw.detail).toMatch(/grpcroutes\.gateway\.networking\.k8s\.io: forbidden: GET .* refused by the test/);
  });

  it('names the node whose kernel is too old, and a non-Linux node', async () => {
    server.apply('Node', { metadata: { name: 'node-b' }, status: { nodeInfo: { kernelVersion: '5.10.0-28-amd64', operatingSystem: 'linux' } } });
    server.apply('Node', { metadata: { name: 'win-1' }, status: { nodeInfo: { kernelVersion: '10.0.17763.5329', operatingSystem: 'windows' } } });
    const nodes = byName(await checks(), 'nodes\' kernels');
    expect(nodes.ok).toBe(false);
    expect(nodes.detail).toBe('2 of 4 nodes fail: node-b: 5.10.0-28-amd64 is older than 5.17; win-1: runs windows, not linux');
    expect(nodes.hint).toMatch(/5\.17 or newer/);
  });

  it('keeps a long list of failing nodes readable', async () => {
    for (let i = 0; i < 100; i++) server.apply('Node', { metadata: { name: `old-${String(i).padStart(3, '0')}` }, status: { nodeInfo: { kernelVersion: '5.4.0', operatingSystem: 'linux' } } });
    const nodes = byName(await checks(), 'nodes\' kernels');
    expect(nodes.detail).toMatch(/^100 of 103 nodes fail: old-000: .*old-004: 5\.4\.0 is older than 5\.17 and 95 more$/);
  });

  it('fails a Kubernetes older than 1.27', async () => {
    server.version = { major: '1', minor: '26+', gitVersion: 'v1.26.15-eks-1' };
    expect(byName(await checks(), 'API server reachable')).toMatchObject({ ok: false, detail: `v1.26.15-eks-1 at ${server.url} is older than 1.27` });
  });

  it('--pre: the CA Secret with its three keys, and nothing of the installation', async () => {
    const pre = await checks({ pre: true });
    expect(pre.map((c) => [c.name, c.ok])).toEqual([
      ['API server reachable', true], ['Istio CRDs', true], ['Gateway API CRDs', true], ['nodes\' kernels', true],
      [`namespace ${NS}`, true], [`Secret ${NS}/ambit-ca`, true],
    ]);
    // Never the Secret's values.
    expect(JSON.stringify(pre)).not.toMatch(/Uk9PVA|S0VZ/);

    server.apply('Secret', { metadata: { name: 'ambit-ca', namespace: NS }, data: { 'root-cert.pem': 'Uk9PVA==' } });
    expect(byName(await checks({ pre: true }), `Secret ${NS}/ambit-ca`)).toMatchObject({ ok: false, detail: 'missing keys: cert-chain.pem, ca-key.pem' });

    server.delete('Namespace', '', NS);
    const fresh = await checks({ pre: true });
    expect(byName(fresh, `namespace ${NS}`)).toMatchObject({ ok: true, detail: 'does not exist yet (ambit install creates it)' });
    expect(byName(fresh, `Secret ${NS}/ambit-ca`).hint).toMatch(/kubectl create namespace ambit-system && kubectl -n ambit-system create secret generic ambit-ca/);
  });

  it('fails an expired lease, and a controller with no ready replica; one of two ready is still ok', async () => {
    server.apply('Lease', { metadata: { name: 'ambit-controller', namespace: NS }, spec: { holderIdentity: 'ambit-controller-old', renewTime: new Date(NOW - 60_000).toISOString(), leaseDurationSeconds: 15 } }, 'coordination.k8s.io');
    const lease = byName(await checks(), 'Lease ambit-controller');
    expect(lease).toMatchObject({ ok: false, detail: 'no controller holds the lease (ambit-controller-old\'s expired 45 s ago)' });

    const deployment = server.get('Deployment', NS, 'ambit-controller', 'apps')!;
    server.apply('Deployment', { ...deployment, status: { replicas: 2, readyReplicas: 1 } }, 'apps');
    expect(byName(await checks(), 'Deployment ambit-controller')).toMatchObject({ ok: true, detail: expect.stringMatching(/^1\/2 ready \(1 not ready/) });
    server.apply('Deployment', { ...deployment, status: { replicas: 2, readyReplicas: 0 } }, 'apps');
    expect(byName(await checks(), 'Deployment ambit-controller')).toMatchObject({ ok: false, detail: '0/2 ready' });
  });

  it('surfaces the failed checks of an agent\'s own report', async () => {
    agents.set(agentPod('node-b'), {
      ok: false,
      checks: [
        { name: 'kernel >= 5.17', ok: true, detail: '6.8.0' },
        { name: 'bpffs', ok: false, detail: 'not mounted', hint: 'maps and links are pinned there: mount -t bpf bpf /sys/fs/bpf' },
      ],
    });
    const all = await checks();
    expect(byName(all, 'node node-a: requirements').ok).toBe(true);
    expect(byName(all, 'node node-b: requirements')).toMatchObject({ ok: false, detail: 'failed: bpffs (not mounted)', hint: expect.stringMatching(/mount -t bpf/) });
  });

  it('explains an agent that does not answer: its crash message, else the proxy\'s error', async () => {
    agents.delete(agentPod('node-a'));
    agents.delete(agentPod('node-c'));
    server.apply('Pod', {
      metadata: { name: agentPod('node-a'), namespace: NS, labels: { ...agentLabels } },
      spec: { nodeName: 'node-a' },
      status: {
        phase: 'Running',
        containerStatuses: [{
          name: 'node', ready: false, restartCount: 7,
          state: { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 5m0s restarting failed container' } },
          lastState: { terminated: { exitCode: 1, reason: 'Error', message: 'bpf(BPF_PROG_LOAD) failed: Operation not permitted [AMBIT_E_BPF_PERM]' } },
        }],
      },
    });
    server.apply('DaemonSet', { ...daemonSet, status: { desiredNumberScheduled: 3, numberReady: 1 } }, 'apps');
    const all = await checks();
    expect(byName(all, 'DaemonSet ambit-node')).toMatchObject({ ok: false, detail: '1/3 nodes ready' });
    expect(byName(all, 'node node-a: requirements')).toMatchObject({
      ok: false, detail: `agent ${agentPod('node-a')} CrashLoopBackOff: bpf(BPF_PROG_LOAD) failed: Operation not permitted [AMBIT_E_BPF_PERM]`,
    });
    expect(byName(all, 'node node-c: requirements')).toMatchObject({ ok: false, detail: expect.stringMatching(/^agent on node-c not answering: .*connection refused/) });
  });

  it('after install, a missing namespace is one failure, not one per object', async () => {
    server.delete('Namespace', '', NS);
    const all = await checks();
    expect(all.slice(4).map((c) => [c.name, c.ok])).toEqual([[`namespace ${NS}`, false], ['CRD ratelimits.ambit.dev', true]]);
  });

  it('an API server that is down is one failed check', async () => {
    const all = await clusterChecks(new KubeClient({ server: 'http://127.0.0.1:1' }));
    expect(all).toHaveLength(1);
    expect(all[0]).toMatchObject({ name: 'API server reachable', ok: false, detail: expect.stringMatching(/cannot reach http:\/\/127\.0\.0\.1:1: .*ECONNREFUSED/) });
  });
});

const { ambit } = cli(process.env);

describe('ambit check --kubeconfig', () => {
  let dir = '';
  const kubeconfig = (server: string) => {
    const file = join(dir, `kubeconfig-${server.replace(/\W/g, '')}`);
    writeKubeconfig(file, server);
    return file;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ambit-cluster-check-'));
    // The CLI judges the Lease by the real clock.
    const lease = server.get('Lease', NS, 'ambit-controller', 'coordination.k8s.io') as { spec: Record<string, unknown> };
    server.apply('Lease', { ...lease, spec: { ...lease.spec, renewTime: new Date().toISOString(), leaseDurationSeconds: 600 } }, 'coordination.k8s.io');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('exits 0 on a healthy cluster, one line per check, and the JSON parses', async () => {
    const text = await ambit(['check', '--kubeconfig', kubeconfig(server.url)]);
    expect(text.stderr).toBe('');
    expect(text.code).toBe(0);
    const lines = text.stdout.trimEnd().split('\n');
    expect(lines.filter((l) => l.startsWith('✓'))).toHaveLength(13);
    expect(lines.filter((l) => l.startsWith('✗'))).toEqual([]);
    expect(lines.at(-1)).toBe('all 13 checks passed: ambit runs on this cluster');

    const json = await ambit(['check', '--json', '--kubeconfig', kubeconfig(server.url)]);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { ok: boolean; checks: Check[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.map((c) => c.name)).toContain('node node-b: requirements');
    expect(parsed.checks.every((c) => c.ok)).toBe(true);
  }, 60_000);

  it('--pre with a missing Secret exits 1 with the command that makes it', async () => {
    server.delete('Secret', NS, 'ambit-ca');
    const out = await ambit(['check', '--pre', '--kubeconfig', kubeconfig(server.url)]);
    expect(out.code).toBe(1);
    expect(out.stdout).toMatch(/✗ Secret ambit-system\/ambit-ca\s+missing — fix: .*kubectl -n ambit-system create secret generic ambit-ca --from-file=root-cert\.pem --from-file=cert-chain\.pem --from-file=ca-key\.pem/);
    expect(out.stdout).toMatch(/1 of 6 checks failed: fix them before installing ambit\n$/);
    expect(out.stdout).not.toMatch(/Deployment|DaemonSet/);

    const elsewhere = await ambit(['check', '--pre', '--namespace', 'mesh', '--json', '--kubeconfig', kubeconfig(server.url)]);
    const parsed = JSON.parse(elsewhere.stdout) as { ok: boolean; checks: Check[] };
    expect(parsed.ok).toBe(false);
    expect(parsed.checks.map((c) => c.name)).toContain('Secret mesh/ambit-ca');
  }, 60_000);

  it('an API server on a closed port: one failed check, exit 1, no stack trace', async () => {
    const out = await ambit(['check', '--kubeconfig', kubeconfig('http://127.0.0.1:1')]);
    expect(out.code).toBe(1);
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^✗ API server reachable {2}cannot reach http:\/\/127\.0\.0\.1:1: .*ECONNREFUSED.* — fix: /);
    expect(out.stdout).toMatch(/\n1 of 1 checks failed/);
    expect(out.stdout).not.toMatch(/\n\s+at /);
  }, 60_000);

  it('refuses --pre without a cluster', async () => {
    const out = await ambit(['check', '--pre']);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/--pre and --namespace check a cluster: add --kubeconfig FILE or --kube/);
  }, 60_000);
});
