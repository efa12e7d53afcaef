/**
 * The Kubernetes objects of an ambit installation, rendered from Values: the namespace, the CRDs
 * ambit owns, least-privilege RBAC per component, the controller Deployment (+ Service, PDB) and
 * the node agent DaemonSet. Waypoints are rendered per Gateway by waypoint.ts. docs/KUBERNETES.md
 * gives the reason for every RBAC rule and every capability.
 */
import { DATAPLANE_MODE } from '../control/model.js';
import { rateLimitCrd } from './crd.js';
import { commonLabels, type K8sObject } from './objects.js';
import type { Values } from './values.js';

export const CONTROLLER = 'ambit-controller';
export const NODE_AGENT = 'ambit-node';
/** The Lease the controller replicas elect their leader with (coordination.k8s.io/v1). */
export const LEADER_LEASE = 'ambit-controller';
/** The Secret holding the CA root (cert and key) the controller makes on first start. */
/** The mesh CA (root-cert.pem, cert-chain.pem, ca-key.pem), made by the operator before install, as Istio's cacerts. */
export const CA_SECRET = 'ambit-ca';
export const CA_MOUNT = '/etc/ambit/ca';
/** The ConfigMap the controller writes the trust bundle to, in its namespace and in each waypoint's. */
export const ROOT_CERT_CONFIGMAP = 'ambit-root-cert';
/** Audience of the projected ServiceAccount tokens agents and waypoints present to the controller. */
export const TOKEN_AUDIENCE = 'ambit';
export const TOKEN_DIR = '/var/run/secrets/ambit';
export const ROOT_CERT_DIR = '/var/run/ambit/roots';
/** The agent's unix socket: where a CNI plugin hands it each new pod's netns and cgroup. */
export const AGENT_SOCKET_DIR = '/var/run/ambit';
/** The agent answers the CNI plugin here (the same path on the host and in the agent's container). */
export const CNI_SOCKET = `${AGENT_SOCKET_DIR}/cni.sock`;
/** The plugin in the image, copied to the host's CNI bin directory by the agent. */
export const CNI_BINARY = '/opt/ambit/cni/ambit-cni';
/** Where the agent sees the host's CNI directories. */
export const HOST_CNI_BIN = '/host/opt/cni/bin';
export const HOST_CNI_CONF = '/host/etc/cni/net.d';

export const CONTROLLER_PORTS = { grpc: 15012, ready: 15021 } as const;
export const NODE_PORTS = { admin: 15000, metrics: 15020, ready: 15021 } as const;
/** Margin over the drain time before the kubelet kills the agent: closing listeners, unpinning on uninstall. */
export const TERMINATION_MARGIN_SECONDS = 15;

/**
 * The node agent's Linux capabilities, and why each is needed. privileged is false: these are
 * all it gets (every other capability is dropped).
 */
export const NODE_AGENT_CAPABILITIES: Readonly<Record<string, string>> = {
  BPF: 'load the eBPF programs and create, pin and update their maps (bpf(2))',
  NET_ADMIN: 'attach cgroup/connect and sk_lookup programs; IP_TRANSPARENT and SO_MARK on the sockets it opens in pod netns',
  SYS_ADMIN: 'setns(2) into each pod\'s network namespace to open its listeners there; attach programs to the host cgroup root',
  SYS_RESOURCE: 'raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps against',
  SYS_PTRACE: 'open /host/proc/<pid>/ns/net of pod processes owned by other users (pod-watch enrollment and re-adoption); droppable once the CNI plugin hands netns paths over',
};

export const LEADER_ELECTION_ANNOTATION = 'ambit.dev/leader-election';

function sa(name: string, namespace: string, component: string): K8sObject {
  return { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace, labels: commonLabels(component) }, automountServiceAccountToken: false };
}

interface Rule { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }
const READ = ['get', 'list', 'watch'];

/** Everything the controller reads from the API, by group. */
export const CONTROLLER_READS: Readonly<Record<string, string[]>> = {
  '': ['namespaces', 'pods', 'services', 'serviceaccounts'],
  'discovery.k8s.io': ['endpointslices'],
  'networking.istio.io': ['virtualservices', 'destinationrules', 'gateways', 'serviceentries'],
  'security.istio.io': ['authorizationpolicies', 'peerauthentications'],
  'gateway.networking.k8s.io': ['gatewayclasses', 'gateways', 'httproutes', 'grpcroutes'],
  'ambit.dev': ['ratelimits'],
};

/** The mesh config kinds whose status the controller writes (accepted, programmed, errors). */
const STATUS_OF: Readonly<Record<string, string[]>> = {
  'networking.istio.io': CONTROLLER_READS['networking.istio.io']!,
  'security.istio.io': CONTROLLER_READS['security.istio.io']!,
  'gateway.networking.k8s.io': CONTROLLER_READS['gateway.networking.k8s.io']!,
  'ambit.dev': ['ratelimits'],
};

/**
 * What the controller needs to run waypoints (waypoints.managed): it server-side applies each
 * waypoint's ServiceAccount, Deployment and Service and deletes them once the Gateway is gone.
 * RBAC cannot limit a rule by label, nor `create` by name: these rules cover every Deployment,
 * Service and ServiceAccount of the cluster. That is the cost of managed waypoints; the
 * controller itself only ever deletes objects labelled as its own for a waypoint.
 */
export function controllerWaypointRules(): Rule[] {
  const verbs = ['get', 'list', 'create', 'patch', 'delete'];
  return [
    { apiGroups: ['apps'], resources: ['deployments'], verbs },
    { apiGroups: [''], resources: ['services', 'serviceaccounts'], verbs },
  ];
}

export function controllerClusterRules(v?: Pick<Values, 'waypoints'>): Rule[] {
  return [
    ...Object.entries(CONTROLLER_READS).map(([g, resources]) => ({ apiGroups: [g], resources, verbs: READ })),
    ...Object.entries(STATUS_OF).map(([g, resources]) => ({ apiGroups: [g], resources: resources.map((r) => `${r}/status`), verbs: ['get', 'update', 'patch'] })),
    { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
    // The trust bundle, published to each namespace that runs waypoints (create cannot be limited by name).
    { apiGroups: [''], resources: ['configmaps'], verbs: ['create'] },
    { apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'update', 'patch'], resourceNames: [ROOT_CERT_CONFIGMAP] },
    ...((v?.waypoints.managed ?? true) ? controllerWaypointRules() : []),
  ];
}

/** The install's values the controller's waypoint template needs (AMBIT_WAYPOINT_VALUES, `--set` syntax). */
export function waypointTemplateValues(v: Values): string {
  return [`namespace=${v.namespace}`, `image=${v.image}`, `imagePullPolicy=${v.imagePullPolicy}`, `logLevel=${v.logLevel}`, `waypoint.replicas=${v.waypoint.replicas}`].join(',');
}

export function controllerNamespaceRules(): Rule[] {
  return [
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
    { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'update'], resourceNames: [LEADER_LEASE] },
  ];
}

/**
 * The node agent reads nothing cluster-wide: its pods and their identities come from the
 * controller's discovery stream, their network namespaces from /proc. It only reads its own
 * DaemonSet, which it watches (by name): deleting or gone at SIGTERM means uninstall (remove
 * every pin), else a restart or upgrade (keep them).
 */
/**
 * With the CNI plugin (cni.enabled) the agent decides, while a sandbox is being made, whether the
 * pod is meshed and who it is: it reads that Pod and its Namespace by name (get only, no list or
 * watch). RBAC cannot limit this to its node's pods.
 */
export function nodeAgentClusterRules(v: Pick<Values, 'cni'>): Rule[] {
  return v.cni.enabled ? [{ apiGroups: [''], resources: ['pods', 'namespaces'], verbs: ['get'] }] : [];
}

export function nodeAgentNamespaceRules(): Rule[] {
  return [{ apiGroups: ['apps'], resources: ['daemonsets'], verbs: ['get', 'list', 'watch'], resourceNames: [NODE_AGENT] }];
}

/** A ClusterRole and Role with their bindings for one component (no ClusterRole when it needs no cluster-wide rule). */
function rbac(name: string, namespace: string, component: string, clusterRules: Rule[], nsRules: Rule[]): K8sObject[] {
  const labels = commonLabels(component);
  const subjects = [{ kind: 'ServiceAccount', name, namespace }];
  return [
    ...(clusterRules.length === 0 ? [] : [
      { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name, labels }, rules: clusterRules },
      { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name, labels }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name }, subjects },
    ]),
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name, namespace, labels }, rules: nsRules },
    { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'RoleBinding', metadata: { name, namespace, labels }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name }, subjects },
  ];
}

function selectorLabels(component: string): Record<string, string> {
  const l = commonLabels(component);
  return { 'app.kubernetes.io/name': l['app.kubernetes.io/name']!, 'app.kubernetes.io/part-of': l['app.kubernetes.io/part-of']! };
}

/** The projected token a component presents to the controller (TokenReview checks it), and the trust bundle. */
export function credentialVolumes(): Record<string, unknown>[] {
  return [
    { name: 'ambit-token', projected: { sources: [{ serviceAccountToken: { audience: TOKEN_AUDIENCE, expirationSeconds: 3600, path: 'token' } }] } },
    { name: 'ambit-roots', configMap: { name: ROOT_CERT_CONFIGMAP } },
  ];
}
export function credentialMounts(): Record<string, unknown>[] {
  return [
    { name: 'ambit-token', mountPath: TOKEN_DIR, readOnly: true },
    { name: 'ambit-roots', mountPath: ROOT_CERT_DIR, readOnly: true },
  ];
}

export function controllerAddress(v: Values): string {
  return `${CONTROLLER}.${v.namespace}.svc:${CONTROLLER_PORTS.grpc}`;
}

function readiness(port: number): Record<string, unknown> {
  return { httpGet: { path: '/healthz/ready', port }, periodSeconds: 5, failureThreshold: 3 };
}

export function controllerObjects(v: Values): K8sObject[] {
  const labels = commonLabels('controller');
  const selector = selectorLabels('controller');
  const deployment: K8sObject = {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {
      name: CONTROLLER, namespace: v.namespace, labels,
      annotations: { [LEADER_ELECTION_ANNOTATION]: `one leader among the replicas, elected through the coordination.k8s.io/v1 Lease ${v.namespace}/${LEADER_LEASE}; every replica serves the CA and discovery` },
    },
    spec: {
      replicas: v.controller.replicas,
      selector: { matchLabels: selector },
      strategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
      template: {
        metadata: { labels },
        spec: {
          serviceAccountName: CONTROLLER,
          // It talks to the API server: the default token, audience the API server.
          automountServiceAccountToken: true,
          securityContext: { runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: { type: 'RuntimeDefault' } },
          affinity: {
            podAntiAffinity: {
              preferredDuringSchedulingIgnoredDuringExecution: [{ weight: 100, podAffinityTerm: { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selector } } }],
            },
          },
          containers: [{
            name: 'controller',
            image: v.image,
            imagePullPolicy: v.imagePullPolicy,
            // Config and callers from the API server; the CA from the Secret ambit-ca (a plug-in CA every replica shares).
            args: ['controller', '--kubernetes', '--plugin-ca', CA_MOUNT, '--listen', `0.0.0.0:${CONTROLLER_PORTS.grpc}`, '--trust-domain', v.trustDomain, '--cert-ttl', String(v.controller.certTtlSeconds)],
            env: [
              { name: 'AMBIT_LOG_LEVEL', value: v.logLevel },
              { name: 'AMBIT_LEADER_ELECTION', value: 'lease' },
              { name: 'AMBIT_LEADER_ELECTION_LEASE', value: LEADER_LEASE },
              { name: 'AMBIT_ROOT_CERT_CONFIGMAP', value: ROOT_CERT_CONFIGMAP },
              { name: 'AMBIT_TOKEN_AUDIENCE', value: TOKEN_AUDIENCE },
              { name: 'AMBIT_NODE_SERVICE_ACCOUNT', value: NODE_AGENT },
              { name: 'AMBIT_WAYPOINTS_MANAGED', value: String(v.waypoints.managed) },
              { name: 'AMBIT_WAYPOINT_VALUES', value: waypointTemplateValues(v) },
              { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
            ],
            ports: [
              { name: 'grpc-tls', containerPort: CONTROLLER_PORTS.grpc, protocol: 'TCP' },
              { name: 'http-ready', containerPort: CONTROLLER_PORTS.ready, protocol: 'TCP' },
            ],
            readinessProbe: readiness(CONTROLLER_PORTS.ready),
            resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
            securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
            volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, { name: 'ca', mountPath: CA_MOUNT, readOnly: true }],
          }],
          volumes: [{ name: 'tmp', emptyDir: {} }, { name: 'ca', secret: { secretName: CA_SECRET, defaultMode: 0o400 } }],
        },
      },
    },
  };
  const service: K8sObject = {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: CONTROLLER, namespace: v.namespace, labels },
    spec: {
      selector,
      ports: [
        { name: 'grpc-tls', port: CONTROLLER_PORTS.grpc, targetPort: CONTROLLER_PORTS.grpc, protocol: 'TCP' },
        { name: 'http-ready', port: CONTROLLER_PORTS.ready, targetPort: CONTROLLER_PORTS.ready, protocol: 'TCP' },
      ],
    },
  };
  const pdb: K8sObject = {
    apiVersion: 'policy/v1',
    kind: 'PodDisruptionBudget',
    metadata: { name: CONTROLLER, namespace: v.namespace, labels },
    // maxUnavailable, not minAvailable: a single replica (controller.replicas=1) must not block node drains.
    spec: { maxUnavailable: 1, selector: { matchLabels: selector } },
  };
  return [deployment, service, pdb];
}

export function nodeAgentDaemonSet(v: Values): K8sObject {
  const labels = commonLabels('node');
  const hostCgroup = '/host/sys/fs/cgroup';
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: {
      name: NODE_AGENT, namespace: v.namespace, labels,
      annotations: {
        'ambit.dev/capabilities': Object.entries(NODE_AGENT_CAPABILITIES).map(([c, why]) => `${c}: ${why}`).join('; '),
        'ambit.dev/termination': `the agent drains on SIGTERM (up to ${v.nodeAgent.drainSeconds}s, --drain-seconds), so there is no preStop hook; the grace period adds ${TERMINATION_MARGIN_SECONDS}s`,
      },
    },
    spec: {
      selector: { matchLabels: selectorLabels('node') },
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } },
      template: {
        metadata: { labels },
        spec: {
          serviceAccountName: NODE_AGENT,
          automountServiceAccountToken: true,
          hostNetwork: true,
          dnsPolicy: 'ClusterFirstWithHostNet',
          // Pod netns are reached through /host/proc and /var/run/netns, not the host's PID namespace.
          hostPID: false,
          priorityClassName: 'system-node-critical',
          terminationGracePeriodSeconds: v.nodeAgent.drainSeconds + TERMINATION_MARGIN_SECONDS,
          tolerations: [{ operator: 'Exists', effect: 'NoSchedule' }, { operator: 'Exists', effect: 'NoExecute' }],
          containers: [{
            name: 'node',
            image: v.image,
            imagePullPolicy: v.imagePullPolicy,
            args: [
              'node',
              '--kubernetes',
              '--node', '$(NODE_NAME)',
              '--controller', controllerAddress(v),
              '--token-file', `${TOKEN_DIR}/token`,
              '--ca-file', `${ROOT_CERT_DIR}/root-cert.pem`,
              '--pin-root', v.nodeAgent.pinRoot,
              '--cgroup', hostCgroup,
              '--cgroup-root', hostCgroup,
              '--probe-cgroup', `${hostCgroup}/${v.nodeAgent.kubeletCgroup}`,
              '--control-socket', `${AGENT_SOCKET_DIR}/agent.sock`,
              '--root-namespace', v.rootNamespace,
              '--drain-seconds', String(v.nodeAgent.drainSeconds),
              '--trust-domain', v.trustDomain,
              ...(v.cni.enabled ? ['--cni-socket', CNI_SOCKET, '--cni-binary', CNI_BINARY, '--cni-bin-dir', HOST_CNI_BIN, '--cni-conf-dir', HOST_CNI_CONF] : []),
            ],
            env: [
              { name: 'AMBIT_LOG_LEVEL', value: v.logLevel },
              { name: 'AMBIT_HOST_PROC', value: '/host/proc' },
              { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
              { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
            ],
            ports: [
              { name: 'http-metrics', containerPort: NODE_PORTS.metrics, protocol: 'TCP' },
              { name: 'http-ready', containerPort: NODE_PORTS.ready, protocol: 'TCP' },
            ],
            readinessProbe: readiness(NODE_PORTS.ready),
            // A fatal start error (a kernel without what the datapath needs) is the container's
            // termination message, where `ambit check --kube` and `kubectl describe` show it.
            terminationMessagePolicy: 'FallbackToLogsOnError',
            resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '1Gi' } },
            securityContext: {
              privileged: false,
              allowPrivilegeEscalation: false,
              readOnlyRootFilesystem: true,
              runAsUser: 0,
              runAsGroup: 0,
              seccompProfile: { type: 'RuntimeDefault' },
              capabilities: { drop: ['ALL'], add: Object.keys(NODE_AGENT_CAPABILITIES) },
            },
            volumeMounts: [
              // The pins live in the host's bpffs: they outlive the agent, so a new agent adopts them.
              // HostToContainer, not Bidirectional: the API server allows Bidirectional only in privileged
              // containers, and the agent pins files into the host's bpffs rather than mounting one.
              { name: 'bpffs', mountPath: '/sys/fs/bpf', mountPropagation: 'HostToContainer' },
              { name: 'cgroup', mountPath: hostCgroup, readOnly: true },
              { name: 'netns', mountPath: '/var/run/netns', readOnly: true, mountPropagation: 'HostToContainer' },
              { name: 'host-proc', mountPath: '/host/proc', readOnly: true },
              { name: 'agent-socket', mountPath: AGENT_SOCKET_DIR },
              { name: 'tmp', mountPath: '/tmp' },
              // The CNI plugin's binary and its entry in the node's CNI config (cni.enabled).
              ...(v.cni.enabled ? [{ name: 'cni-bin', mountPath: HOST_CNI_BIN }, { name: 'cni-conf', mountPath: HOST_CNI_CONF }] : []),
              ...credentialMounts(),
            ],
          }],
          volumes: [
            { name: 'bpffs', hostPath: { path: '/sys/fs/bpf', type: 'Directory' } },
            { name: 'cgroup', hostPath: { path: v.nodeAgent.cgroupRoot, type: 'Directory' } },
            { name: 'netns', hostPath: { path: '/var/run/netns', type: 'DirectoryOrCreate' } },
            { name: 'host-proc', hostPath: { path: '/proc', type: 'Directory' } },
            { name: 'agent-socket', hostPath: { path: AGENT_SOCKET_DIR, type: 'DirectoryOrCreate' } },
            { name: 'tmp', emptyDir: {} },
            ...(v.cni.enabled ? [
              { name: 'cni-bin', hostPath: { path: v.cni.binDir, type: 'Directory' } },
              { name: 'cni-conf', hostPath: { path: v.cni.confDir, type: 'Directory' } },
            ] : []),
            ...credentialVolumes(),
          ],
        },
      },
    },
  };
}

/** Every object of the installation, in the order `kubectl apply` should create them. */
export function renderInstall(v: Values): K8sObject[] {
  const ns: K8sObject = { apiVersion: 'v1', kind: 'Namespace', metadata: { name: v.namespace, labels: { ...commonLabels('namespace'), [DATAPLANE_MODE]: 'none' } } };
  return [
    ns,
    rateLimitCrd(commonLabels('crd')),
    sa(CONTROLLER, v.namespace, 'controller'),
    sa(NODE_AGENT, v.namespace, 'node'),
    ...rbac(CONTROLLER, v.namespace, 'controller', controllerClusterRules(v), controllerNamespaceRules()),
    ...rbac(NODE_AGENT, v.namespace, 'node', nodeAgentClusterRules(v), nodeAgentNamespaceRules()),
    ...controllerObjects(v),
    nodeAgentDaemonSet(v),
  ];
}

/**
 * The same objects in the order `kubectl delete -f -` should remove them: the node agents first
 * (each removes every pinned BPF object when its DaemonSet is being deleted), the namespace and
 * the CRD (and with it every RateLimit) last.
 */
export function renderUninstall(v: Values): K8sObject[] {
  const all = renderInstall(v);
  const first = all.filter((o) => o.kind === 'DaemonSet');
  const last = all.filter((o) => o.kind === 'Namespace' || o.kind === 'CustomResourceDefinition');
  const middle = all.filter((o) => !first.includes(o) && !last.includes(o)).reverse();
  return [...first, ...middle, ...last];
}
