/**
 * `ambit check --kubeconfig|--kube`: the cluster checks against the stand-in API server, seeded with
 * the objects `ambit install` renders (so the selectors and names are the real ones), in process
 * for each failure. Through the CLI (exit codes, text, JSON): test/integration/cluster-check-cli.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { clusterChecks, labelSelector, type ClusterCheckOptions } from '../../src/cli/cluster-check.js';
import type { Check } from '../../src/node/checks.js';
import type { FakeApiServer } from '../helpers/fake-apiserver.js';
import { agentLabels, agentPod, daemonSet, NODES, NOW, NS, startStandIn } from '../helpers/stand-in-cluster.js';

let server: FakeApiServer;
/** What each agent answers at :15021/healthz/check; undefined: not answering. */
let agents: Map<string, unknown>;

beforeEach(async () => {
  ({ server, agents } = await startStandIn());
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
      ['platform', true], ['primary CNI', true],
      [`namespace ${NS}`, true], [`Secret ${NS}/ambit-ca`, true], ['install command', true],
    ]);
    expect(byName(pre, 'install command').detail).toBe('ambit install --set platform=generic --set cni.chained=auto | kubectl apply -f -');
    // Never the Secret's values.
    expect(JSON.stringify(pre)).not.toMatch(/Uk9PVA|S0VZ/);

    server.apply('Secret', { metadata: { name: 'ambit-ca', namespace: NS }, data: { 'root-cert.pem': 'Uk9PVA==' } });
    expect(byName(await checks({ pre: true }), `Secret ${NS}/ambit-ca`)).toMatchObject({ ok: false, detail: 'missing keys: cert-chain.pem, ca-key.pem' });

    server.delete('Namespace', '', NS);
    const fresh = await checks({ pre: true });
    expect(byName(fresh, `namespace ${NS}`)).toMatchObject({ ok: true, detail: 'does not exist yet (ambit install creates it)' });
    expect(byName(fresh, `Secret ${NS}/ambit-ca`).hint).toMatch(/this makes the namespace and the Secret: ambit ca create \| kubectl apply -f - \(a new root\), or ambit ca create --from DIR/);
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

/**
 * `--pre` on the platforms ambit meets, with the objects as those clusters carry them: node
 * providerIDs, labels and kubelet versions, the CNI's DaemonSets, cilium-config, FelixConfiguration.
 */
describe('--pre: platform, CNI and the CNI settings ambit depends on', () => {
  const node = (name: string, extra: { providerID?: string; labels?: Record<string, string>; kubelet: string; kernel: string }) => server.apply('Node', {
    metadata: { name, labels: { 'kubernetes.io/os': 'linux', ...extra.labels } },
    spec: extra.providerID ? { providerID: extra.providerID } : {},
    status: { nodeInfo: { kernelVersion: extra.kernel, operatingSystem: 'linux', kubeletVersion: extra.kubelet, containerRuntimeVersion: 'containerd://1.7.22' } },
  });
  const ds = (namespace: string, name: string) => server.apply('DaemonSet', { metadata: { name, namespace }, spec: { selector: { matchLabels: { 'k8s-app': name } } } }, 'apps');
  const replaceNodes = (add: () => void) => {
    for (const n of NODES) server.delete('Node', '', n);
    add();
  };
  const pre = () => checks({ pre: true });

  it('GKE (Dataplane V1): gke from providerID and node-pool label, GKE\'s own CNI', async () => {
    replaceNodes(() => {
      for (const [i, zone] of ['us-central1-a', 'us-central1-b'].entries()) {
        node(`gke-shop-default-pool-3f1c-${i}`, { providerID: `gce://shop-prod/${zone}/gke-shop-default-pool-3f1c-${i}`, labels: { 'cloud.google.com/gke-nodepool': 'default-pool', 'cloud.google.com/gke-os-distribution': 'cos' }, kubelet: 'v1.30.5-gke.1014001', kernel: '6.1.100+' });
      }
    });
    for (const name of ['kube-proxy', 'fluentbit-gke', 'gke-metadata-server', 'netd', 'pdcsi-node']) ds('kube-system', name);
    const all = await pre();
    expect(byName(all, 'platform')).toMatchObject({ ok: true, detail: 'gke (providerID gce://, label cloud.google.com/gke-nodepool on 2 of 2 nodes)', implies: '--set platform=gke' });
    expect(byName(all, 'primary CNI')).toMatchObject({ ok: true, detail: 'GKE\'s CNI (Dataplane V1)', implies: '--set cni.chained=gke' });
    expect(byName(all, 'nodes\' kernels').detail).toBe('2 Linux nodes, kernel >= 5.17 (6.1.100+)');
    expect(all.map((c) => c.name)).not.toContain('Cilium settings');
    expect(byName(all, 'install command').detail).toBe('ambit install --set platform=gke --set cni.chained=gke | kubectl apply -f -');
  });

  it('GKE Dataplane V2: anetd is GKE\'s Cilium; its settings are GKE\'s', async () => {
    replaceNodes(() => node('gke-shop-pool-2-9a1b-0', { providerID: 'gce://shop-prod/europe-west1-b/gke-shop-pool-2-9a1b-0', labels: { 'cloud.google.com/gke-nodepool': 'pool-2' }, kubelet: 'v1.31.1-gke.1678000', kernel: '6.6.44+' }));
    ds('kube-system', 'anetd');
    ds('kube-system', 'kube-dns');
    const all = await pre();
    expect(byName(all, 'primary CNI')).toMatchObject({ detail: 'GKE Dataplane V2 (Cilium) (DaemonSet kube-system/anetd)', implies: '--set cni.chained=gke' });
    expect(byName(all, 'Cilium settings')).toMatchObject({ ok: true, detail: expect.stringMatching(/^GKE Dataplane V2: GKE manages anetd/) });
    // Where GKE's cilium-config can be read and load-balances pod sockets, the fix is not a setting.
    server.apply('ConfigMap', { metadata: { name: 'cilium-config', namespace: 'kube-system' }, data: { 'kube-proxy-replacement': 'true' } });
    const again = byName(await pre(), 'Cilium settings');
    expect(again.ok).toBe(false);
    expect(again.hint).toMatch(/GKE manages anetd's cilium-config/);
    expect(again.detail).not.toMatch(/cni-exclusive makes/);
  });

  it('EKS with the VPC CNI (and Calico for policy): eks, aws-vpc-cni, and the 1.29 token note', async () => {
    server.version = { major: '1', minor: '29+', gitVersion: 'v1.29.8-eks-a737599' };
    replaceNodes(() => node('ip-10-0-10-170.ec2.internal', { providerID: 'aws:///us-east-1a/i-08736224042c4ee75', labels: { 'eks.amazonaws.com/nodegroup': 'main', 'eks.amazonaws.com/capacityType': 'ON_DEMAND' }, kubelet: 'v1.29.6-eks-1552ad0', kernel: '5.10.225-213.878.amzn2.x86_64' }));
    ds('kube-system', 'aws-node');
    ds('kube-system', 'kube-proxy');
    ds('calico-system', 'calico-node');
    const all = await pre();
    expect(byName(all, 'API server reachable').detail).toMatch(/^v1\.29\.8-eks-a737599 at .* \(before 1\.30 tokens name no node: the controller reads it from the token's pod binding\)$/);
    expect(byName(all, 'platform').implies).toBe('--set platform=eks');
    expect(byName(all, 'primary CNI')).toMatchObject({ detail: 'Amazon VPC CNI (DaemonSet kube-system/aws-node); also Calico (DaemonSet calico-system/calico-node)', implies: '--set cni.chained=aws-vpc-cni' });
    // No FelixConfiguration: Calico enforces policy, not in eBPF mode.
    expect(byName(all, 'Calico eBPF')).toMatchObject({ ok: true, detail: expect.stringMatching(/^not in eBPF mode/) });
    // Amazon Linux 2's 5.10 is too old for ambit.
    expect(byName(all, 'nodes\' kernels')).toMatchObject({ ok: false, detail: expect.stringMatching(/5\.10\.225-213\.878\.amzn2\.x86_64 is older than 5\.17/) });
    expect(byName(all, 'install command').detail).toBe('ambit install --set platform=eks --set cni.chained=aws-vpc-cni | kubectl apply -f -');
  });

  it('kubeadm with Calico eBPF: connect-time load balancing must be turned off', async () => {
    server.apply('ConfigMap', { metadata: { name: 'kubeadm-config', namespace: 'kube-system' }, data: { ClusterConfiguration: 'apiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nkubernetesVersion: v1.30.4\n' } });
    ds('calico-system', 'calico-node');
    ds('calico-system', 'csi-node-driver');
    server.apply('Installation', { metadata: { name: 'default' }, spec: { calicoNetwork: { linuxDataplane: 'BPF', bgp: 'Enabled' } } }, 'operator.tigera.io');
    server.apply('FelixConfiguration', { metadata: { name: 'default' }, spec: { bpfEnabled: true, bpfLogLevel: '', floatingIPs: 'Disabled', logSeverityScreen: 'Info' } }, 'crd.projectcalico.org');
    const all = await pre();
    expect(byName(all, 'platform')).toMatchObject({ detail: 'kubeadm (ConfigMap kube-system/kubeadm-config)', implies: '--set platform=kubeadm' });
    expect(byName(all, 'primary CNI').implies).toBe('--set cni.chained=calico');
    const calico = byName(all, 'Calico eBPF');
    expect(calico).toMatchObject({ ok: false, detail: expect.stringMatching(/^eBPF mode, bpfConnectTimeLoadBalancing unset/) });
    expect(calico.hint).toBe('kubectl patch felixconfiguration default --type merge -p \'{"spec":{"bpfConnectTimeLoadBalancing":"Disabled","bpfHostNetworkedNATWithoutCTLB":"Enabled"}}\' (host-networked processes keep reaching Services through bpfHostNetworkedNATWithoutCTLB)');
    expect(byName(all, 'install command').detail).toBe('ambit install --set platform=kubeadm --set cni.chained=calico | kubectl apply -f - (after the change above)');

    // The deprecated bool, still on, is turned off too.
    server.apply('FelixConfiguration', { metadata: { name: 'default' }, spec: { bpfEnabled: true, bpfConnectTimeLoadBalancingEnabled: true } }, 'crd.projectcalico.org');
    expect(byName(await pre(), 'Calico eBPF').hint).toMatch(/"bpfConnectTimeLoadBalancingEnabled":false/);
    server.apply('FelixConfiguration', { metadata: { name: 'default' }, spec: { bpfEnabled: true, bpfConnectTimeLoadBalancing: 'Disabled', bpfHostNetworkedNATWithoutCTLB: 'Enabled' } }, 'crd.projectcalico.org');
    expect(byName(await pre(), 'Calico eBPF')).toMatchObject({ ok: true, detail: 'eBPF mode, bpfConnectTimeLoadBalancing=Disabled' });
  });

  it('kubeadm with Cilium\'s kube-proxy replacement: socket LB not limited to the host, cni-exclusive on', async () => {
    server.apply('ConfigMap', { metadata: { name: 'kubeadm-config', namespace: 'kube-system' }, data: { ClusterConfiguration: 'kind: ClusterConfiguration\n' } });
    ds('kube-system', 'cilium');
    ds('kube-system', 'cilium-envoy');
    // As the Cilium 1.16 chart renders it with kubeProxyReplacement=true and the defaults.
    const ciliumConfig = { 'kube-proxy-replacement': 'true', 'kube-proxy-replacement-healthz-bind-address': '', 'bpf-lb-sock': 'false', 'bpf-lb-sock-hostns-only': 'false', 'cni-exclusive': 'true', 'enable-ipv4': 'true', 'routing-mode': 'tunnel', 'tunnel-protocol': 'vxlan' };
    server.apply('ConfigMap', { metadata: { name: 'cilium-config', namespace: 'kube-system' }, data: ciliumConfig });
    const all = await pre();
    expect(byName(all, 'primary CNI')).toMatchObject({ detail: 'Cilium (DaemonSet kube-system/cilium)', implies: '--set cni.chained=cilium' });
    const cilium = byName(all, 'Cilium settings');
    expect(cilium).toMatchObject({
      ok: false,
      detail: 'kube-proxy-replacement=true, bpf-lb-sock=false, bpf-lb-sock-hostns-only=false, cni-exclusive=true: socket load balancing rewrites pods\' Service connections before ambit sees them; cni-exclusive makes Cilium remove other CNI configs, ambit\'s chain entry among them',
    });
    expect(cilium.hint).toBe('as Istio ambient requires: helm upgrade cilium cilium/cilium -n kube-system --reuse-values --set socketLB.hostNamespaceOnly=true --set cni.exclusive=false; then kubectl -n kube-system rollout restart daemonset/cilium (the agent compiles the setting into its datapath at start)');
    expect(byName(all, 'install command').detail).toMatch(/--set platform=kubeadm --set cni\.chained=cilium \| kubectl apply -f - \(after the change above\)$/);

    // Without kube-proxy replacement, bpf-lb-sock turns socket LB on by itself.
    server.apply('ConfigMap', { metadata: { name: 'cilium-config', namespace: 'kube-system' }, data: { ...ciliumConfig, 'kube-proxy-replacement': 'false', 'bpf-lb-sock': 'true', 'cni-exclusive': 'false' } });
    expect(byName(await pre(), 'Cilium settings').hint).toMatch(/--reuse-values --set socketLB\.hostNamespaceOnly=true;/);
    server.apply('ConfigMap', { metadata: { name: 'cilium-config', namespace: 'kube-system' }, data: { ...ciliumConfig, 'kube-proxy-replacement': 'false', 'cni-exclusive': 'false' } });
    expect(byName(await pre(), 'Cilium settings')).toMatchObject({ ok: true, detail: expect.stringMatching(/socket LB off, other CNI plugins kept$/) });

    // With hostNamespaceOnly and cni.exclusive=false, as Istio ambient requires: nothing to change.
    server.apply('ConfigMap', { metadata: { name: 'cilium-config', namespace: 'kube-system' }, data: { ...ciliumConfig, 'bpf-lb-sock-hostns-only': 'true', 'cni-exclusive': 'false' } });
    const fixed = await pre();
    expect(byName(fixed, 'Cilium settings')).toMatchObject({ ok: true, detail: expect.stringMatching(/socket LB limited to the host netns, other CNI plugins kept$/) });
    expect(fixed.filter((c) => !c.ok)).toEqual([]);
    expect(byName(fixed, 'install command').detail).toBe('ambit install --set platform=kubeadm --set cni.chained=cilium | kubectl apply -f -');
  });

  it('k3s: +k3s kubelets, the embedded flannel', async () => {
    replaceNodes(() => {
      node('k3s-server', { providerID: 'k3s://k3s-server', labels: { 'node-role.kubernetes.io/control-plane': 'true' }, kubelet: 'v1.30.4+k3s1', kernel: '6.8.0-45-generic' });
      node('k3s-agent-1', { providerID: 'k3s://k3s-agent-1', kubelet: 'v1.30.4+k3s1', kernel: '6.8.0-45-generic' });
    });
    ds('kube-system', 'svclb-traefik-3a8b1c2d');
    const all = await pre();
    expect(byName(all, 'platform')).toMatchObject({ detail: 'k3s (kubelet version +k3s on 2 of 2 nodes)', implies: '--set platform=k3s' });
    expect(byName(all, 'primary CNI')).toMatchObject({ detail: 'k3s\'s embedded flannel (no CNI DaemonSet)', implies: '--set cni.chained=flannel' });
    expect(byName(all, 'install command').detail).toBe('ambit install --set platform=k3s --set cni.chained=flannel | kubectl apply -f -');
  });

  it('a DaemonSet list that is refused is a failed check, not a guess', async () => {
    server.failNext('GET', '/namespaces/kube-system/daemonsets', 403);
    const cni = byName(await pre(), 'primary CNI');
    expect(cni).toMatchObject({ ok: false, detail: expect.stringMatching(/^cannot read the DaemonSets of kube-system, calico-system, kube-flannel: forbidden/) });
  });
});
