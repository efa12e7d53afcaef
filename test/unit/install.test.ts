/**
 * `ambit install`: every rendered object validates against its Kubernetes schema
 * (kubernetes-models), the RateLimit CRD's schema agrees with src/config/validate.ts, `--set`
 * refuses what it does not know, RBAC is least privilege and the node agent is not privileged.
 * The CLI as a process, and kubectl reading its stream: test/integration/install-cli.test.ts.
 */
import { readFileSync } from 'node:fs';
import Ajv from 'ajv';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { buildProgram } from '../../src/cli/main.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { rateLimitCrd } from '../../src/install/crd.js';
import type { K8sObject } from '../../src/install/objects.js';
import {
  CONTROLLER, NODE_AGENT, NODE_AGENT_CAPABILITIES, renderInstall, TERMINATION_MARGIN_SECONDS,
} from '../../src/install/render.js';
import { checkSchemas } from '../../src/install/schema-check.js';
import { defaultValues, resolveValues, VALUES } from '../../src/install/values.js';
import { waypointObjects } from '../../src/install/waypoint.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const DOCUMENTED_CAPABILITIES = ['BPF', 'NET_ADMIN', 'SYS_ADMIN', 'SYS_RESOURCE', 'SYS_PTRACE'];

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk rendered objects by path */
const find = (objs: K8sObject[], kind: string, name?: string): any => {
  const o = objs.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`no ${kind} ${name ?? ''}`);
  return o;
};

const gateway = (extra: Record<string, unknown> = {}) => ({
  apiVersion: 'gateway.networking.k8s.io/v1',
  kind: 'Gateway',
  metadata: { name: 'reviews-wp', namespace: 'shop', uid: '6b1f0c52-7d1e-4c1a-9f0e-1d2c3b4a5f60', ...extra },
  spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] },
});

async function expectValid(objects: K8sObject[]): Promise<void> {
  const results = await checkSchemas(objects);
  expect(results).toHaveLength(objects.length);
  expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
}

describe('ambit install: Kubernetes schemas', () => {
  it('every object of the default installation validates against its Kubernetes schema', async () => {
    const objects = renderInstall(defaultValues());
    expect(objects.map((o) => o.kind).sort()).toEqual([
      'ClusterRole', 'ClusterRole', 'ClusterRoleBinding', 'ClusterRoleBinding', 'CustomResourceDefinition', 'DaemonSet', 'Deployment',
      'Namespace', 'PodDisruptionBudget', 'Role', 'Role', 'RoleBinding', 'RoleBinding', 'Service', 'ServiceAccount', 'ServiceAccount',
    ]);
    await expectValid(objects);
  });

  it('so does an installation with every value overridden', async () => {
    const v = resolveValues([
      'namespace=mesh', 'image=registry.example:5000/team/ambit@sha256:' + 'a'.repeat(64), 'imagePullPolicy=Always', 'trustDomain=prod.example.com',
      'logLevel=debug', 'rootNamespace=mesh-root', 'controller.replicas=3', 'controller.certTtlSeconds=3600', 'nodeAgent.drainSeconds=0',
      'nodeAgent.pinRoot=/sys/fs/bpf/mesh/', 'nodeAgent.cgroupRoot=/sys/fs/cgroup/unified', 'waypoint.replicas=2',
      'nodeAgent.hboneLimits=maxStreamsPerPeer=1024, maxStreams=16384',
    ]);
    const objects = renderInstall(v);
    await expectValid(objects);
    expect(objects.filter((o) => o.metadata.namespace !== undefined).every((o) => o.metadata.namespace === 'mesh')).toBe(true);
    const ds = find(objects, 'DaemonSet');
    expect(ds.spec.template.spec.terminationGracePeriodSeconds).toBe(TERMINATION_MARGIN_SECONDS);
    expect(ds.spec.template.spec.containers[0].args).toEqual(expect.arrayContaining(['/sys/fs/bpf/mesh', 'ambit-controller.mesh.svc:15012']));
    expect(ds.spec.template.spec.containers[0].args.join(' ')).toContain('--hbone-limits maxStreamsPerPeer=1024,maxStreams=16384');
    expect(find(objects, 'Deployment').spec.replicas).toBe(3);
    await expectValid(waypointObjects(gateway(), v));
  });

  it('a schema error is reported, not swallowed', async () => {
    const [bad] = await checkSchemas([{ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' }, spec: { replicas: 'two' } }]);
    expect(bad!.errors.join('\n')).toMatch(/replicas/);
  });
});

describe('ambit install: the controller', () => {
  const objects = renderInstall(defaultValues());
  const deploy = find(objects, 'Deployment', CONTROLLER);
  const pod = deploy.spec.template.spec;

  it('runs two replicas that elect a leader through a Lease, ready on 15021', () => {
    expect(deploy.spec.replicas).toBe(2);
    const env = Object.fromEntries(pod.containers[0].env.map((e: any) => [e.name, e.value ?? e.valueFrom]));
    expect(env.AMBIT_LEADER_ELECTION).toBe('lease');
    expect(env.AMBIT_LEADER_ELECTION_LEASE).toBe('ambit-controller');
    expect(deploy.metadata.annotations['ambit.dev/leader-election']).toMatch(/coordination\.k8s\.io\/v1 Lease ambit-system\/ambit-controller/);
    expect(pod.containers[0].readinessProbe.httpGet.port).toBe(15021);
    expect(pod.containers[0].args).toEqual(['controller', '--kubernetes', '--plugin-ca', '/etc/ambit/ca', '--listen', '0.0.0.0:15012', '--trust-domain', 'cluster.local', '--cert-ttl', '86400']);
  });

  it('has a Service on 15012, 15014 (metrics) and 15021 and a PodDisruptionBudget selecting its pods', () => {
    const svc = find(objects, 'Service', CONTROLLER);
    expect(svc.spec.ports.map((p: any) => [p.name, p.port])).toEqual([['grpc-tls', 15012], ['http-monitoring', 15014], ['http-ready', 15021]]);
    const labels = deploy.spec.template.metadata.labels;
    for (const sel of [svc.spec.selector, find(objects, 'PodDisruptionBudget').spec.selector.matchLabels, deploy.spec.selector.matchLabels]) {
      for (const [k, val] of Object.entries(sel)) expect(labels[k]).toBe(val);
    }
    expect(find(objects, 'PodDisruptionBudget').spec.maxUnavailable).toBe(1);
  });
});

describe('ambit install: the node agent DaemonSet', () => {
  const ds = find(renderInstall(defaultValues()), 'DaemonSet', NODE_AGENT);
  const pod = ds.spec.template.spec;
  const c = pod.containers[0];

  it('is not privileged and has exactly the documented capabilities', () => {
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.allowPrivilegeEscalation).toBe(false);
    expect(c.securityContext.capabilities.drop).toEqual(['ALL']);
    expect([...c.securityContext.capabilities.add].sort()).toEqual([...DOCUMENTED_CAPABILITIES].sort());
    expect(Object.keys(NODE_AGENT_CAPABILITIES).sort()).toEqual([...DOCUMENTED_CAPABILITIES].sort());
    const doc = readFileSync(`${ROOT}docs/KUBERNETES.md`, 'utf8');
    for (const cap of DOCUMENTED_CAPABILITIES) expect(doc, cap).toMatch(new RegExp(`\\| \`${cap}\` \\|`));
    expect(pod.hostPID).toBe(false);
    expect(pod.hostNetwork).toBe(true);
  });

  it('mounts bpffs, the cgroup2 root, /var/run/netns and /proc from the host, without Bidirectional propagation', () => {
    const hostPaths = Object.fromEntries(pod.volumes.filter((v: any) => v.hostPath).map((v: any) => [v.name, v.hostPath.path]));
    const mounts = Object.fromEntries(c.volumeMounts.map((m: any) => [m.name, m]));
    expect(hostPaths).toMatchObject({ bpffs: '/sys/fs/bpf', cgroup: '/sys/fs/cgroup', netns: '/var/run/netns', 'host-proc': '/proc' });
    expect(mounts['host-proc'].mountPath).toBe('/host/proc');
    expect(mounts.bpffs.mountPropagation).toBe('HostToContainer');
    // The API server refuses Bidirectional propagation outside privileged containers.
    expect(c.volumeMounts.filter((m: any) => m.mountPropagation === 'Bidirectional')).toEqual([]);
  });

  it('hands over on a rolling update: a surge pod beside the old one, and no declared port (a host port would keep the surge pod off the node)', () => {
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    for (const container of [...pod.containers, ...(pod.initContainers ?? [])]) expect(container.ports, container.name).toBeUndefined();
    // Probes name port numbers, not container port names.
    for (const probe of [c.readinessProbe, c.livenessProbe, c.startupProbe]) expect(probe.httpGet.port).toBe(15021);
    expect(ds.spec.template.metadata.annotations['prometheus.io/port']).toBe('15020');
  });

  it('is ready on 15021 and gets its drain time plus a margin to stop', () => {
    expect(c.readinessProbe.httpGet.port).toBe(15021);
    expect(pod.terminationGracePeriodSeconds).toBe(30 + TERMINATION_MARGIN_SECONDS);
    expect(c.args.join(' ')).toContain('--drain-seconds 30');
    expect(c.args).not.toContain('--hbone-limits');
    expect(c.lifecycle).toBeUndefined();
  });
});

describe('ambit install: the containers\' arguments', () => {
  /** The long options a subcommand (path from the program) declares. */
  const flags = (...path: string[]): Set<string> => {
    let cmd = buildProgram();
    for (const name of path) cmd = cmd.commands.find((c) => c.name() === name)!;
    return new Set(cmd.options.map((o) => o.long!));
  };
  const used = (args: string[]) => args.filter((a) => a.startsWith('--'));
  const objects = renderInstall(defaultValues());

  it('every flag the manifests pass is one the subcommand declares', () => {
    const controller = find(objects, 'Deployment', CONTROLLER).spec.template.spec.containers[0].args as string[];
    const node = find(objects, 'DaemonSet', NODE_AGENT).spec.template.spec.containers[0].args as string[];
    const wp = find(waypointObjects(gateway({ annotations: { 'ambit.dev/tracing-endpoint': 'http://otel:4318', 'ambit.dev/tracing-sampling': '1' } })), 'Deployment').spec.template.spec.containers[0].args as string[];
    expect(controller[0]).toBe('controller');
    expect(node[0]).toBe('node');
    expect(wp.slice(0, 2)).toEqual(['waypoint', 'run']);
    const known = { controller: flags('controller'), node: flags('node'), waypoint: flags('waypoint', 'run') };
    expect(used(controller).filter((f) => !known.controller.has(f))).toEqual([]);
    expect(used(node).filter((f) => !known.node.has(f))).toEqual([]);
    expect(used(wp).filter((f) => !known.waypoint.has(f))).toEqual([]);
  });
});

describe('ambit install: least-privilege RBAC', () => {
  const objects = renderInstall(defaultValues());
  const rules = (kind: string, name: string): any[] => find(objects, kind, name).rules;
  const all = objects.filter((o) => o.kind === 'ClusterRole' || o.kind === 'Role').flatMap((o: any) => o.rules as any[]);

  it('no wildcard, and none of the verbs that grant more rights', () => {
    for (const r of all) {
      for (const field of ['apiGroups', 'resources', 'verbs', 'resourceNames']) expect(r[field] ?? [], JSON.stringify(r)).not.toContain('*');
      for (const v of ['escalate', 'bind', 'impersonate', 'deletecollection']) expect(r.verbs).not.toContain(v);
      // delete: only the waypoint objects the controller runs (waypoints.managed).
      if (r.verbs.includes('delete')) expect(r.resources.every((x: string) => ['deployments', 'services', 'serviceaccounts', 'poddisruptionbudgets'].includes(x)), JSON.stringify(r)).toBe(true);
    }
  });

  it('the node agent gets pods and namespaces by name (for the CNI plugin) and follows its own DaemonSet, nothing else', () => {
    expect(find(objects, 'ClusterRole', NODE_AGENT).rules).toEqual([{ apiGroups: [''], resources: ['pods', 'namespaces'], verbs: ['get'] }]);
    expect(find(objects, 'Role', NODE_AGENT).rules).toEqual([{ apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get', 'list', 'watch'], resourceNames: [NODE_AGENT] }]);
    // Without the CNI plugin it reads nothing cluster-wide: no ClusterRole at all.
    const plain = renderInstall(resolveValues(['cni.enabled=false']));
    expect(plain.some((o) => (o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding') && o.metadata.name === NODE_AGENT)).toBe(false);
    const args = (find(plain, 'DaemonSet', NODE_AGENT).spec.template.spec.containers[0].args as string[]);
    expect(args.some((a) => a.startsWith('--cni'))).toBe(false);
  });

  it('the controller reads the mesh config, writes only status, its Lease, its CA Secret, the trust bundle and what canaries run on', () => {
    const cluster = rules('ClusterRole', CONTROLLER);
    const writes = cluster.filter((r) => r.verbs.some((v: string) => !['get', 'list', 'watch'].includes(v)));
    for (const r of writes) {
      const ok = r.resources.every((x: string) => x.endsWith('/status')) || r.resources[0] === 'tokenreviews' || r.resources[0] === 'configmaps'
        || r.resources.every((x: string) => ['deployments', 'services', 'serviceaccounts', 'poddisruptionbudgets'].includes(x))
        // Flagger Canaries (src/control/kube/canaries.ts): the action annotation removed, the VirtualService and Events written.
        || (r.apiGroups[0] === 'flagger.app' && r.resources[0] === 'canaries' && r.verbs.join() === 'patch')
        || (r.resources[0] === 'virtualservices' && r.verbs.join() === 'create,patch')
        || (r.resources[0] === 'events' && r.verbs.join() === 'create');
      expect(ok, JSON.stringify(r)).toBe(true);
    }
    expect(cluster.find((r) => r.resources.includes('tokenreviews')).verbs).toEqual(['create']);
    // Secrets: read only (ingress gateways' certificates), never written cluster-wide.
    expect(cluster.filter((r) => r.resources.includes('secrets')).map((r) => r.verbs)).toEqual([['get', 'list', 'watch']]);
    for (const res of ['namespaces', 'pods', 'services', 'endpointslices', 'serviceaccounts', 'authorizationpolicies', 'peerauthentications', 'virtualservices', 'httproutes', 'gateways', 'ratelimits', 'canaries']) {
      expect(cluster.some((r) => r.resources.includes(res) && r.verbs.includes('watch')), res).toBe(true);
    }
    const ns = rules('Role', CONTROLLER);
    for (const r of ns.filter((x) => x.verbs.some((v: string) => v !== 'create'))) expect(r.resourceNames, JSON.stringify(r)).toHaveLength(1);
    // No Secret: the CA comes mounted from the Secret ambit-ca, never read through the API.
    expect(ns.flatMap((r) => r.resources).sort()).toEqual(['leases', 'leases']);
  });

  it('waypoints.managed (default true): write access to Deployments, Services, ServiceAccounts and PodDisruptionBudgets; false removes it', () => {
    // The waypoints' rules are the ones that may delete; the canaries' own (below) create and patch only.
    const writes = (rs: any[]) => rs.filter((r) => ['deployments', 'services', 'serviceaccounts', 'poddisruptionbudgets'].some((x) => r.resources.includes(x)) && r.verbs.includes('delete'));
    const managed = writes(rules('ClusterRole', CONTROLLER));
    expect(managed.flatMap((r) => r.resources).sort()).toEqual(['deployments', 'poddisruptionbudgets', 'serviceaccounts', 'services']);
    expect(managed.find((r) => r.resources.includes('poddisruptionbudgets')).apiGroups).toEqual(['policy']);
    for (const r of managed) expect(r.verbs).toEqual(expect.arrayContaining(['create', 'patch', 'delete', 'get', 'list']));
    const env = (vals: ReturnType<typeof defaultValues>) => find(renderInstall(vals), 'Deployment', CONTROLLER).spec.template.spec.containers[0].env as { name: string; value?: string }[];
    expect(env(defaultValues()).find((e) => e.name === 'AMBIT_WAYPOINTS_MANAGED')?.value).toBe('true');
    expect(env(defaultValues()).find((e) => e.name === 'AMBIT_WAYPOINT_VALUES')?.value).toMatch(/^namespace=ambit-system,image=ghcr\.io\/ambit-mesh\/ambit:.*,waypoint\.replicas=2,ingressGateway\.replicas=2,ingressGateway\.serviceType=LoadBalancer$/);
    const off = resolveValues(['waypoints.managed=false']);
    expect(writes(find(renderInstall(off), 'ClusterRole', CONTROLLER).rules)).toEqual([]);
    expect(env(off).find((e) => e.name === 'AMBIT_WAYPOINTS_MANAGED')?.value).toBe('false');
    expect(() => resolveValues(['waypoints.managed=yes'])).toThrow(/waypoints\.managed must be true or false, got "yes"/);
  });

  it('Flagger Canaries: the Canary and its status patched, Deployments, Services and VirtualServices created and patched, Events created; nothing deleted', () => {
    const cluster = rules('ClusterRole', CONTROLLER);
    const can = (group: string, resource: string, verb: string) => cluster.some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));
    for (const verb of ['get', 'list', 'watch', 'patch']) expect(can('flagger.app', 'canaries', verb), verb).toBe(true);
    expect(can('flagger.app', 'canaries/status', 'patch')).toBe(true);
    for (const [group, resource] of [['apps', 'deployments'], ['', 'services'], ['networking.istio.io', 'virtualservices']] as const) {
      for (const verb of ['get', 'create', 'patch']) expect(can(group, resource, verb), `${verb} ${resource}`).toBe(true);
    }
    expect(can('', 'events', 'create')).toBe(true);
    for (const verb of ['get', 'list']) expect(can('gateway.networking.k8s.io', 'gateways', verb)).toBe(true);
    expect(can('', 'namespaces', 'get')).toBe(true);
    // Without managed waypoints the canaries still need their writes, and still delete nothing.
    const off = find(renderInstall(resolveValues(['waypoints.managed=false'])), 'ClusterRole', CONTROLLER).rules as any[];
    expect(off.filter((r) => r.resources.some((x: string) => ['deployments', 'services'].includes(x)) && r.verbs.includes('patch')).map((r) => r.verbs)).toEqual([['get', 'list', 'watch', 'create', 'patch'], ['create', 'patch']]);
    expect(off.some((r) => r.verbs.includes('delete'))).toBe(false);
  });

  it('a waypoint gets a ServiceAccount and no RBAC', () => {
    expect(waypointObjects(gateway()).map((o) => o.kind)).toEqual(['ServiceAccount', 'Deployment', 'Service', 'PodDisruptionBudget']);
  });
});

describe('ambit install: waypoints', () => {
  it('one Deployment and Service per ambit-waypoint Gateway, named and labelled after it, on 15008 and 15020', async () => {
    const objs = waypointObjects(gateway({ annotations: { 'ambit.dev/tracing-endpoint': 'http://otel:4318', 'ambit.dev/tracing-sampling': '10' } }));
    await expectValid(objs);
    const deploy = find(objs, 'Deployment');
    expect(objs.every((o) => o.metadata.name === 'reviews-wp' && o.metadata.namespace === 'shop')).toBe(true);
    expect(objs.every((o) => o.metadata.labels?.['gateway.networking.k8s.io/gateway-name'] === 'reviews-wp')).toBe(true);
    expect(deploy.spec.template.spec.serviceAccountName).toBe('reviews-wp');
    expect(deploy.spec.template.metadata.labels['ambit.dev/dataplane-mode']).toBe('none');
    expect(find(objs, 'Service').spec.ports.map((p: any) => p.port)).toEqual([15008, 15020]);
    expect(deploy.spec.template.spec.containers[0].args).toEqual(expect.arrayContaining(['waypoint', 'run', '--name', 'shop/reviews-wp', '--tracing-endpoint', 'http://otel:4318', '--tracing-sampling', '10']));
    expect(deploy.metadata.ownerReferences[0]).toMatchObject({ kind: 'Gateway', name: 'reviews-wp', controller: true });
  });

  it('refuses a Gateway of another class', () => {
    const g = gateway();
    expect(() => waypointObjects({ ...g, spec: { gatewayClassName: 'istio' } })).toThrow(/not of class ambit-waypoint/);
    expect(() => waypointObjects({ ...g, kind: 'Service' })).toThrow(/Gateway/);
  });
});

describe('ambit install: --set', () => {
  it('applies the documented defaults', () => {
    const v = defaultValues();
    expect(v).toMatchObject({ namespace: 'ambit-system', trustDomain: 'cluster.local', controller: { replicas: 2 }, nodeAgent: { drainSeconds: 30 } });
    expect(v.image).toMatch(/^ghcr\.io\/ambit-mesh\/ambit:\d+\.\d+\.\d+/);
  });

  it('an unknown key names it and lists the known ones', () => {
    expect(() => resolveValues(['controller.replica=3'])).toThrow(/unknown value "controller\.replica" \(known: platform, namespace, image, .*controller\.replicas/);
    for (const key of Object.keys(VALUES)) expect(() => resolveValues(['bogus=1'])).toThrow(new RegExp(key.replace(/\./g, '\\.')));
  });

  it('a bad value names the key and what it takes', () => {
    expect(() => resolveValues(['controller.replicas=two'])).toThrow(/controller\.replicas must be an integer from 1 to 10, got "two"/);
    expect(() => resolveValues(['controller.replicas=0'])).toThrow(/controller\.replicas/);
    expect(() => resolveValues(['namespace=Ambit_System'])).toThrow(/namespace must be a DNS label/);
    expect(() => resolveValues(['logLevel=loud'])).toThrow(/logLevel must be one of trace, debug, info, warn, error/);
    expect(() => resolveValues(['nodeAgent.drainSeconds=-1'])).toThrow(/nodeAgent\.drainSeconds/);
    expect(() => resolveValues(['nodeAgent.hboneLimits=maxStreamPerPeer=10'])).toThrow(/nodeAgent\.hboneLimits: unknown HBONE limit "maxStreamPerPeer"/);
    expect(() => resolveValues(['nodeAgent.pinRoot=relative/dir'])).toThrow(/absolute path/);
    expect(() => resolveValues(['nodeAgent.pinRoot=/var/lib/ambit'])).toThrow(/nodeAgent\.pinRoot must be a directory under \/sys\/fs\/bpf\//);
    expect(() => resolveValues(['image=Not An Image'])).toThrow(/image must be an image reference/);
    expect(() => resolveValues(['namespace'])).toThrow(/--set takes key=value, got "namespace"/);
  });

  it('a later --set of the same key wins, and values may contain "="', () => {
    expect(resolveValues(['controller.replicas=3', 'controller.replicas=4']).controller.replicas).toBe(4);
    expect(resolveValues(['image=ghcr.io/x/ambit:v1']).image).toBe('ghcr.io/x/ambit:v1');
  });
});

describe('ambit install: the RateLimit CRD agrees with validate.ts', () => {
  const schema = structuredClone(find([rateLimitCrd({})], 'CustomResourceDefinition').spec.versions[0].schema.openAPIV3Schema);
  // kubectl's default strict field validation rejects unknown fields of a structural schema; ajv does it with additionalProperties.
  const strict = (s: any): void => {
    if (s.type === 'object' && s.properties) {
      s.additionalProperties = false;
      for (const [k, p] of Object.entries(s.properties)) if (k !== 'metadata') strict(p);
    }
    if (s.items) strict(s.items);
  };
  strict(schema);
  const validate = new Ajv({ allErrors: true }).compile(schema);
  const byCrd = (obj: unknown) => validate(obj) === true;
  const byValidateTs = (obj: Record<string, unknown>) => {
    const errors: string[] = [];
    validateMeshObject(obj, { error: (p, m) => errors.push(`${p.join('.')}: ${m}`), warn: () => undefined });
    return errors.length === 0;
  };
  const rl = (spec: unknown) => ({ apiVersion: 'ambit.dev/v1alpha1', kind: 'RateLimit', metadata: { name: 'r', namespace: 'shop' }, spec });

  it('accepts the RateLimit of docs/WAYPOINTS.md', () => {
    const text = readFileSync(`${ROOT}docs/WAYPOINTS.md`, 'utf8');
    const blocks = [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!).filter((y) => /kind: RateLimit/.test(y));
    expect(blocks.length).toBeGreaterThanOrEqual(1);
    for (const b of blocks) {
      for (const d of parseAllDocuments(b)) {
        const obj = d.toJS() as Record<string, unknown>;
        expect(byValidateTs(obj)).toBe(true);
        expect(byCrd(obj), JSON.stringify(validate.errors)).toBe(true);
      }
    }
  });

  const good = [
    { targetRefs: [{ kind: 'Service', name: 'reviews' }], requestsPerUnit: 100, unit: 'second' },
    { targetRefs: [{ group: '', kind: 'Service', name: 'a' }, { kind: 'Service', name: 'b' }], requestsPerUnit: 1, unit: 'hour', burst: 1_000_000_000 },
  ];
  const bad = [
    {},
    { targetRefs: [], requestsPerUnit: 100, unit: 'second' },
    { targetRefs: [{ kind: 'Deployment', name: 'x' }], requestsPerUnit: 100, unit: 'second' },
    { targetRefs: [{ kind: 'Service' }], requestsPerUnit: 100, unit: 'second' },
    { targetRefs: [{ kind: 'Service', name: '' }], requestsPerUnit: 100, unit: 'second' },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 0, unit: 'second' },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 1.5, unit: 'second' },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 2_000_000_000, unit: 'second' },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 100, unit: 'day' },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 100 },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 100, unit: 'second', burst: 0 },
    { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: 100, unit: 'second', bucket: 5 },
    { targetRefs: [{ kind: 'Service', name: 'x', port: 80 }], requestsPerUnit: 100, unit: 'second' },
  ];

  it.each(good.map((s) => [JSON.stringify(s), s]))('both accept %s', (_name, spec) => {
    expect(byValidateTs(rl(spec))).toBe(true);
    expect(byCrd(rl(spec)), JSON.stringify(validate.errors)).toBe(true);
  });

  it.each(bad.map((s) => [JSON.stringify(s), s]))('both reject %s', (_name, spec) => {
    expect(byValidateTs(rl(spec))).toBe(false);
    expect(byCrd(rl(spec))).toBe(false);
  });

  it('the one difference: validate.ts also takes integers as strings (protobuf JSON), the CRD only JSON integers', () => {
    const spec = { targetRefs: [{ kind: 'Service', name: 'x' }], requestsPerUnit: '100', unit: 'second' };
    expect(byValidateTs(rl(spec))).toBe(true);
    expect(byCrd(rl(spec))).toBe(false);
  });

  it('a RateLimit without spec is refused by both', () => {
    const obj = { apiVersion: 'ambit.dev/v1alpha1', kind: 'RateLimit', metadata: { name: 'r' } };
    expect(byValidateTs(obj)).toBe(false);
    expect(byCrd(obj)).toBe(false);
  });
});
