/**
 * The rendered manifests field by field, for every `platform` preset: Pod Security labels, Linux
 * nodes only, the agent's AppArmor and SELinux settings, pull secrets, probes, Prometheus
 * annotations and PodMonitors, waypoint replicas, spreading and PodDisruptionBudget, the
 * presets' CNI directories, kubelet cgroups and GKE's ResourceQuota, `cni.chained`.
 * `ambit install --dry-run` for every preset: test/integration/install-cli.test.ts.
 */
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CILIUM_NODE_CONFIG } from '../../src/ebpf/cgroup-programs.js';
import type { K8sObject } from '../../src/install/objects.js';
import {
  CILIUM_GLOBALS_DIR, CONTROLLER, NODE_AGENT, podMonitorErrors, renderInstall, waypointTemplateValues,
} from '../../src/install/render.js';
import { checkSchemas } from '../../src/install/schema-check.js';
import { CNI_PRIMARY_TYPES, PLATFORMS, PRESETS, resolveValues, type Values } from '../../src/install/values.js';
import { waypointObjects } from '../../src/install/waypoint.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk rendered objects by path */

const find = (objs: K8sObject[], kind: string, name?: string): any => {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ''}`);
  return o;
};
const gateway = { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'reviews-wp', namespace: 'shop', uid: 'u-1' }, spec: { gatewayClassName: 'ambit-waypoint' } };
const probe = (path: string, port: number, periodSeconds: number, failureThreshold: number) => ({ httpGet: { path, port }, periodSeconds, failureThreshold, timeoutSeconds: 5 });

/** What every preset must render the same way. */
function commonChecks(v: Values): void {
  const objects = renderInstall(v);
  const ns = find(objects, 'Namespace');
  expect(ns.metadata.labels).toMatchObject({
    'pod-security.kubernetes.io/enforce': 'privileged', 'pod-security.kubernetes.io/audit': 'privileged', 'pod-security.kubernetes.io/warn': 'privileged',
    'ambit.dev/dataplane-mode': 'none',
  });

  const controller = find(objects, 'Deployment', CONTROLLER).spec.template;
  const cc = controller.spec.containers[0];
  expect(controller.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
  expect(controller.spec.securityContext).toEqual({ runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } });
  expect(controller.spec.volumes.find((x: any) => x.name === 'ca')).toEqual({ name: 'ca', secret: { secretName: 'ambit-ca', defaultMode: 0o440 } });
  expect(controller.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '15014', 'prometheus.io/path': '/metrics' });
  expect(cc.ports).toContainEqual({ name: 'http-monitoring', containerPort: 15014, protocol: 'TCP' });
  expect(cc.readinessProbe).toEqual({ httpGet: { path: '/healthz/ready', port: 15021 }, periodSeconds: 5, failureThreshold: 3 });
  expect(cc.livenessProbe).toEqual(probe('/healthz/live', 15021, 10, 3));
  expect(cc.startupProbe).toEqual(probe('/healthz/live', 15021, 5, 24));
  expect(find(objects, 'Service', CONTROLLER).spec.ports).toContainEqual({ name: 'http-monitoring', port: 15014, targetPort: 15014, protocol: 'TCP' });

  const agent = find(objects, 'DaemonSet', NODE_AGENT).spec.template;
  const ac = agent.spec.containers[0];
  expect(agent.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
  expect(agent.metadata.annotations).toEqual({
    'container.apparmor.security.beta.kubernetes.io/node': 'unconfined',
    'prometheus.io/scrape': 'true', 'prometheus.io/port': '15020', 'prometheus.io/path': '/metrics',
  });
  // The annotation names the agent's container, or the API server refuses it.
  expect(ac.name).toBe('node');
  // The 1.30 field would be refused by 1.27-1.29 API servers: not rendered.
  expect(ac.securityContext.appArmorProfile).toBeUndefined();
  expect(agent.spec.securityContext?.appArmorProfile).toBeUndefined();
  expect(ac.securityContext.seLinuxOptions).toEqual({ type: 'spc_t' });
  expect(ac.readinessProbe).toEqual({ httpGet: { path: '/healthz/ready', port: 15021 }, periodSeconds: 5, failureThreshold: 3 });
  expect(ac.livenessProbe).toEqual(probe('/healthz/live', 15021, 10, 3));
  // Five minutes to load the BPF objects and adopt the pins before liveness counts.
  expect(ac.startupProbe).toEqual(probe('/healthz/live', 15021, 5, 60));

  const wp = waypointObjects(gateway, v);
  expect(wp.map((o) => o.kind)).toEqual(['ServiceAccount', 'Deployment', 'Service', 'PodDisruptionBudget']);
  const deploy = find(wp, 'Deployment');
  const wc = deploy.spec.template.spec.containers[0];
  expect(deploy.spec.replicas).toBe(2);
  expect(deploy.spec.template.spec.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
  expect(deploy.spec.template.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '15020', 'prometheus.io/path': '/metrics' });
  expect(deploy.spec.template.spec.affinity).toEqual({
    podAntiAffinity: {
      preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: { 'gateway.networking.k8s.io/gateway-name': 'reviews-wp' } } } }],
    },
  });
  expect(wc.readinessProbe).toEqual(probe('/healthz/ready', 15020, 5, 3));
  expect(wc.livenessProbe).toEqual(probe('/healthz/live', 15020, 10, 3));
  expect(wc.startupProbe).toEqual(probe('/healthz/live', 15020, 5, 24));
  const pdb = find(wp, 'PodDisruptionBudget');
  expect(pdb.metadata).toMatchObject({ name: 'reviews-wp', namespace: 'shop', ownerReferences: [{ kind: 'Gateway', uid: 'u-1', controller: true }] });
  expect(pdb.spec).toEqual({ maxUnavailable: 1, unhealthyPodEvictionPolicy: 'AlwaysAllow', selector: { matchLabels: deploy.spec.selector.matchLabels } });

  // No pull secrets unless asked for.
  for (const pod of [controller.spec, agent.spec, deploy.spec.template.spec]) expect(pod.imagePullSecrets).toBeUndefined();
  // No PodMonitor unless asked for (its CRD may not be installed).
  expect(objects.some((o) => o.kind === 'PodMonitor')).toBe(false);
}

describe('every preset', () => {
  it.each(PLATFORMS.map((p) => [p]))('platform=%s renders the common fields and validates', async (platform) => {
    const v = resolveValues([`platform=${platform}`]);
    expect(v.platform).toBe(platform);
    commonChecks(v);
    const results = await checkSchemas([...renderInstall(v), ...waypointObjects(gateway, v)]);
    expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
  });

  const agentOf = (v: Values) => find(renderInstall(v), 'DaemonSet', NODE_AGENT).spec.template.spec;
  const hostPaths = (v: Values) => Object.fromEntries(agentOf(v).volumes.filter((x: any) => x.hostPath).map((x: any) => [x.name, x.hostPath.path]));
  const probeCgroups = (v: Values) => {
    const args: string[] = agentOf(v).containers[0].args;
    return args.flatMap((a, i) => (a === '--probe-cgroup' ? [args[i + 1]] : []));
  };

  it('generic, kubeadm, eks and aks are the defaults: /opt/cni/bin, /etc/cni/net.d, the kubelet in kubelet.service, no quota', () => {
    for (const platform of ['generic', 'kubeadm', 'eks', 'aks'] as const) {
      const v = resolveValues([`platform=${platform}`]);
      expect(PRESETS[platform]).toEqual({});
      expect(hostPaths(v)).toMatchObject({ 'cni-bin': '/opt/cni/bin', 'cni-conf': '/etc/cni/net.d' });
      expect(probeCgroups(v)).toEqual(['/host/sys/fs/cgroup/system.slice/kubelet.service']);
      expect(renderInstall(v).some((o) => o.kind === 'ResourceQuota')).toBe(false);
    }
  });

  it('gke: CNI binaries in /home/kubernetes/bin and a ResourceQuota admitting the critical priority classes in ambit\'s namespace', () => {
    const v = resolveValues(['platform=gke']);
    expect(hostPaths(v)).toMatchObject({ 'cni-bin': '/home/kubernetes/bin', 'cni-conf': '/etc/cni/net.d' });
    expect(probeCgroups(v)).toEqual(['/host/sys/fs/cgroup/system.slice/kubelet.service']);
    const objects = renderInstall(v);
    const quota = find(objects, 'ResourceQuota');
    expect(quota.metadata).toMatchObject({ name: 'ambit-critical-pods', namespace: 'ambit-system' });
    expect(quota.spec).toEqual({
      hard: { pods: '100000' },
      scopeSelector: { matchExpressions: [{ scopeName: 'PriorityClass', operator: 'In', values: ['system-node-critical', 'system-cluster-critical'] }] },
    });
    // It matches the class the agent runs at, and exists before the DaemonSet is applied.
    expect(quota.spec.scopeSelector.matchExpressions[0].values).toContain(agentOf(v).priorityClassName);
    expect(objects.indexOf(quota)).toBeLessThan(objects.findIndex((o) => o.kind === 'DaemonSet'));
    expect(renderInstall(resolveValues(['platform=gke', 'criticalPodsQuota=false'])).some((o) => o.kind === 'ResourceQuota')).toBe(false);
  });

  it('k3s: its CNI directories, and the kubelet inside k3s.service or k3s-agent.service', () => {
    const v = resolveValues(['platform=k3s']);
    expect(hostPaths(v)).toMatchObject({ 'cni-bin': '/var/lib/rancher/k3s/data/cni', 'cni-conf': '/var/lib/rancher/k3s/agent/etc/cni/net.d' });
    expect(probeCgroups(v)).toEqual(['/host/sys/fs/cgroup/system.slice/k3s.service', '/host/sys/fs/cgroup/system.slice/k3s-agent.service']);
    expect(renderInstall(v).some((o) => o.kind === 'ResourceQuota')).toBe(false);
  });

  it('a preset only changes defaults: an explicit --set wins before or after platform, and the last platform counts', () => {
    expect(resolveValues(['cni.binDir=/opt/k3s/cni', 'platform=k3s']).cni).toMatchObject({ binDir: '/opt/k3s/cni', confDir: '/var/lib/rancher/k3s/agent/etc/cni/net.d' });
    expect(resolveValues(['platform=k3s', 'cni.binDir=/opt/k3s/cni']).cni.binDir).toBe('/opt/k3s/cni');
    expect(resolveValues(['nodeAgent.kubeletCgroup=kubepods.slice/x', 'platform=k3s']).nodeAgent.kubeletCgroup).toEqual(['kubepods.slice/x']);
    expect(resolveValues(['criticalPodsQuota=false', 'platform=gke']).criticalPodsQuota).toBe(false);
    const last = resolveValues(['platform=k3s', 'platform=gke']);
    expect(last.platform).toBe('gke');
    expect(last.cni).toMatchObject({ binDir: '/home/kubernetes/bin', confDir: '/etc/cni/net.d' });
    expect(() => resolveValues(['platform=openshift'])).toThrow(/platform must be one of generic, kubeadm, eks, gke, k3s, aks, got "openshift"/);
  });
});

describe('values on every pod', () => {
  it('imagePullSecrets: on the controller, the agents and every waypoint, the waypoints\' through AMBIT_WAYPOINT_VALUES', () => {
    const v = resolveValues(['imagePullSecrets=regcred, mirror.example,regcred']);
    expect(v.imagePullSecrets).toEqual(['regcred', 'mirror.example']);
    const want = [{ name: 'regcred' }, { name: 'mirror.example' }];
    const objects = renderInstall(v);
    expect(find(objects, 'Deployment', CONTROLLER).spec.template.spec.imagePullSecrets).toEqual(want);
    expect(find(objects, 'DaemonSet', NODE_AGENT).spec.template.spec.imagePullSecrets).toEqual(want);
    expect(find(waypointObjects(gateway, v), 'Deployment').spec.template.spec.imagePullSecrets).toEqual(want);
    // The controller reads AMBIT_WAYPOINT_VALUES split at commas (src/control/controller.ts): the list survives that.
    const env = find(objects, 'Deployment', CONTROLLER).spec.template.spec.containers[0].env.find((e: any) => e.name === 'AMBIT_WAYPOINT_VALUES').value as string;
    expect(env).toBe(waypointTemplateValues(v));
    const asTheControllerReadsIt = resolveValues(env.split(',').map((x) => x.trim()).filter(Boolean));
    expect(find(waypointObjects(gateway, asTheControllerReadsIt), 'Deployment').spec.template.spec.imagePullSecrets).toEqual(want);
    expect(() => resolveValues(['imagePullSecrets=good,Bad_Name'])).toThrow(/imagePullSecrets takes Secret names \(DNS subdomains.*"Bad_Name" is not one/);
    expect(resolveValues(['imagePullSecrets=']).imagePullSecrets).toEqual([]);
  });

  it('nodeAgent.appArmorProfile: unconfined by default, runtime/default or localhost/<name> when set; anything else refused', () => {
    const annotation = (sets: string[]) => find(renderInstall(resolveValues(sets)), 'DaemonSet', NODE_AGENT).spec.template.metadata.annotations['container.apparmor.security.beta.kubernetes.io/node'];
    expect(annotation([])).toBe('unconfined');
    expect(annotation(['nodeAgent.appArmorProfile=runtime/default'])).toBe('runtime/default');
    expect(annotation(['nodeAgent.appArmorProfile=localhost/ambit-node'])).toBe('localhost/ambit-node');
    for (const bad of ['Unconfined', 'localhost/', 'runtime/other', 'localhost/a b']) {
      expect(() => resolveValues([`nodeAgent.appArmorProfile=${bad}`]), bad).toThrow(/nodeAgent\.appArmorProfile must be unconfined, runtime\/default or localhost\/<profile loaded on every node>/);
    }
  });

  it('cni.chained: the agent gets --cni-primary with the plugin\'s conflist type; auto, or no CNI plugin, none', () => {
    const args = (sets: string[]) => find(renderInstall(resolveValues(sets)), 'DaemonSet', NODE_AGENT).spec.template.spec.containers[0].args as string[];
    const primary = (sets: string[]) => {
      const a = args(sets);
      const i = a.indexOf('--cni-primary');
      return i < 0 ? undefined : a[i + 1];
    };
    expect(primary([])).toBeUndefined();
    expect(primary(['cni.chained=auto'])).toBeUndefined();
    expect(CNI_PRIMARY_TYPES).toEqual({
      cilium: 'cilium-cni', calico: 'calico', 'aws-vpc-cni': 'aws-cni', gke: 'gke,ptp', flannel: 'flannel', kindnet: 'ptp', 'azure-cni': 'azure-vnet', ptp: 'ptp', bridge: 'bridge',
    });
    for (const [name, type] of Object.entries(CNI_PRIMARY_TYPES)) expect(primary([`cni.chained=${name}`]), name).toBe(type);
    expect(primary(['cni.chained=cilium', 'cni.enabled=false'])).toBeUndefined();
    expect(() => resolveValues(['cni.chained=weave'])).toThrow(/cni\.chained must be one of auto, cilium, calico, aws-vpc-cni, gke, flannel, kindnet, azure-cni, ptp, bridge, got "weave"/);
  });

  it('cni.chained=cilium: the agent reads Cilium\'s node_config.h (read-only, at the path the socket-LB check reads), and only then', () => {
    const pod = (sets: string[]) => find(renderInstall(resolveValues(sets)), 'DaemonSet', NODE_AGENT).spec.template.spec;
    const cilium = pod(['cni.chained=cilium']);
    expect(cilium.volumes).toContainEqual({ name: 'cilium-globals', hostPath: { path: CILIUM_GLOBALS_DIR, type: 'DirectoryOrCreate' } });
    expect(cilium.containers[0].volumeMounts).toContainEqual({ name: 'cilium-globals', mountPath: CILIUM_GLOBALS_DIR, readOnly: true, mountPropagation: 'HostToContainer' });
    expect(dirname(CILIUM_NODE_CONFIG)).toBe(CILIUM_GLOBALS_DIR);
    for (const sets of [[], ['cni.chained=calico']]) expect(JSON.stringify(pod(sets))).not.toContain('cilium');
  });

  it('nodeAgent.kubeletCgroup takes several cgroups, each a --probe-cgroup, and refuses a path that climbs', () => {
    const v = resolveValues(['nodeAgent.kubeletCgroup=system.slice/kubelet.service, system.slice/k3s.service']);
    const a: string[] = find(renderInstall(v), 'DaemonSet', NODE_AGENT).spec.template.spec.containers[0].args;
    expect(a.filter((x) => x === '--probe-cgroup')).toHaveLength(2);
    expect(a).toEqual(expect.arrayContaining(['/host/sys/fs/cgroup/system.slice/kubelet.service', '/host/sys/fs/cgroup/system.slice/k3s.service']));
    expect(() => resolveValues(['nodeAgent.kubeletCgroup=system.slice/../x'])).toThrow(/nodeAgent\.kubeletCgroup must be cgroup paths relative to the cgroup v2 mount.*got "system\.slice\/\.\.\/x"/);
    expect(() => resolveValues(['nodeAgent.kubeletCgroup=,'])).toThrow(/nodeAgent\.kubeletCgroup needs at least one cgroup path/);
  });
});

describe('monitoring.podMonitor', () => {
  const v = resolveValues(['monitoring.podMonitor=true', 'namespace=mesh']);
  const objects = renderInstall(v);
  const monitors = objects.filter((o) => o.kind === 'PodMonitor') as any[];

  it('renders a PodMonitor each for the controller, the agents and the waypoints, scraping a port their pods name (the agents: by number)', () => {
    expect(monitors.map((m) => [m.apiVersion, m.metadata.namespace, m.metadata.name])).toEqual([
      ['monitoring.coreos.com/v1', 'mesh', 'ambit-controller'], ['monitoring.coreos.com/v1', 'mesh', 'ambit-node'], ['monitoring.coreos.com/v1', 'mesh', 'ambit-waypoint'],
    ]);
    const pods: [any, any][] = [
      [monitors[0], find(objects, 'Deployment', CONTROLLER).spec.template],
      [monitors[1], find(objects, 'DaemonSet', NODE_AGENT).spec.template],
      [monitors[2], find(waypointObjects(gateway, v), 'Deployment').spec.template],
    ];
    for (const [m, pod] of pods) {
      expect(podMonitorErrors(m)).toEqual([]);
      for (const [k, val] of Object.entries(m.spec.selector.matchLabels)) expect(pod.metadata.labels[k], `${m.metadata.name} ${k}`).toBe(val);
      const [endpoint] = m.spec.podMetricsEndpoints;
      expect(endpoint.path).toBe('/metrics');
      // The node agent declares no container port (a host port would block its surge pod): a number.
      const port = endpoint.targetPort ?? pod.spec.containers[0].ports.find((p: any) => p.name === endpoint.port)?.containerPort;
      expect(String(port), m.metadata.name).toBe(pod.metadata.annotations['prometheus.io/port']);
    }
    expect(monitors[0].spec.namespaceSelector).toEqual({ matchNames: ['mesh'] });
    // Waypoints live in application namespaces.
    expect(monitors[2].spec.namespaceSelector).toEqual({ any: true });
    // The node agents' selector does not pick the controller's pods, nor the reverse.
    expect(monitors[1].spec.selector.matchLabels['app.kubernetes.io/name']).toBe('ambit-node');
  });

  it('the check of a PodMonitor reports what is wrong with it', () => {
    const bad = structuredClone(monitors[0]);
    bad.spec.selector.matchLabels = {};
    bad.spec.namespaceSelector = {};
    bad.spec.podMetricsEndpoints = [{ port: 'a-port-name-far-too-long', path: 'metrics', interval: 'often' }];
    expect(podMonitorErrors(bad)).toEqual([
      '/spec/selector/matchLabels: must map label names to strings (an empty selector would match every pod)',
      '/spec/namespaceSelector: must be {any: true} or {matchNames: [names]}',
      '/spec/podMetricsEndpoints/0/port: must be a container port name',
      '/spec/podMetricsEndpoints/0/path: must be an absolute path',
      '/spec/podMetricsEndpoints/0/interval: must be a duration like 30s',
    ]);
    expect(podMonitorErrors({ ...monitors[0], spec: { ...monitors[0].spec, podMetricsEndpoints: [] } })).toEqual(['/spec/podMetricsEndpoints: must list at least one endpoint']);
  });
});
