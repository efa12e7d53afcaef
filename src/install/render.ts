/**
 * The Kubernetes objects of an ambit installation, rendered from Values: the namespace (Pod
 * Security level privileged), the CRDs ambit owns, least-privilege RBAC per component, the
 * controller Deployment (+ Service, PDB) and the node agent DaemonSet; with criticalPodsQuota a
 * ResourceQuota for critical pods (GKE), with monitoring.podMonitor the PodMonitors. Waypoints
 * are rendered per Gateway by waypoint.ts. docs/KUBERNETES.md gives the reason for every RBAC
 * rule and every capability.
 */
import { DATAPLANE_MODE } from '../config/model.js';
import { rateLimitCrd } from './crd.js';
import { istioIngressGatewayObjects } from './gateway.js';
import { commonLabels, type K8sObject } from './objects.js';
import { CNI_PRIMARY_TYPES, type Values } from './values.js';

export const CONTROLLER = 'ambit-controller';
export const NODE_AGENT = 'ambit-node';
/** The Lease the controller replicas elect their leader with (coordination.k8s.io/v1). */
export const LEADER_LEASE = 'ambit-controller';
/** The mesh CA (root-cert.pem, cert-chain.pem, ca-key.pem, ca-cert.pem, as Istio's cacerts), made before install by `ambit ca create`. */
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
/** Where Cilium keeps node_config.h, mounted at the same path with cni.chained=cilium (src/ebpf/cgroup-programs.ts reads it). */
export const CILIUM_GLOBALS_DIR = '/var/run/cilium/state/globals';

export const CONTROLLER_PORTS = { grpc: 15012, monitoring: 15014, ready: 15021 } as const;
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

/** The controller's uid and gid, and the group its pod's volumes are given to (fsGroup). */
export const CONTROLLER_UID = 1000;
/** The CA Secret's files: root-owned, group fsGroup (the controller's group), read by owner and group only. */
export const CA_SECRET_MODE = 0o440;

/** ambit's pods run on Linux nodes only: the agent tolerates every taint, so a Windows pool would get it too. */
export const LINUX_NODES: Readonly<Record<string, string>> = { 'kubernetes.io/os': 'linux' };

/** The annotation that sets a container's AppArmor profile (beta API; see nodeAgentAppArmor). */
export const APPARMOR_ANNOTATION_PREFIX = 'container.apparmor.security.beta.kubernetes.io/';

/**
 * The node agent's AppArmor profile, as the pod annotation rather than the securityContext field
 * `appArmorProfile`: the field exists from Kubernetes 1.30 and a 1.27–1.29 API server (and
 * kubectl's strict field validation) rejects it as unknown. From 1.30 the API server copies the
 * annotation into the field when a pod is created (and warns that the annotation is deprecated);
 * the copying is planned to stop in 1.36, so the annotation serves 1.27 through 1.35.
 * `unconfined` is needed because containerd's default profile denies the writes under
 * /sys/fs/bpf the agent makes; a node without AppArmor admits `unconfined` (and refuses the
 * others).
 */
export function nodeAgentAppArmor(v: Values): Record<string, string> {
  return { [`${APPARMOR_ANNOTATION_PREFIX}node`]: v.nodeAgent.appArmorProfile };
}

/** The annotations Prometheus's kubernetes-pods scrape config reads. */
export function prometheusAnnotations(port: number): Record<string, string> {
  return { 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' };
}

/** `imagePullSecrets` of a pod spec, or nothing when none is set. */
export function pullSecrets(v: Pick<Values, 'imagePullSecrets'>): { imagePullSecrets?: { name: string }[] } {
  return v.imagePullSecrets.length === 0 ? {} : { imagePullSecrets: v.imagePullSecrets.map((name) => ({ name })) };
}

/** An HTTP probe of one of a component's endpoints. */
export function httpProbe(path: string, port: number, periodSeconds: number, failureThreshold: number): Record<string, unknown> {
  return { httpGet: { path, port }, periodSeconds, failureThreshold, timeoutSeconds: 5 };
}

function sa(name: string, namespace: string, component: string): K8sObject {
  return { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace, labels: commonLabels(component) }, automountServiceAccountToken: false };
}

interface Rule { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }
const READ = ['get', 'list', 'watch'];

/** Everything the controller reads from the API, by group. */
export const CONTROLLER_READS: Readonly<Record<string, string[]>> = {
  // secrets: ingress gateways' certificates (Istio's credentialName, the Gateway API's certificateRefs),
  // watched with the field selector type=kubernetes.io/tls; RBAC cannot narrow a rule by type.
  '': ['namespaces', 'pods', 'services', 'serviceaccounts', 'secrets'],
  'discovery.k8s.io': ['endpointslices'],
  'networking.istio.io': ['virtualservices', 'destinationrules', 'gateways', 'serviceentries'],
  'security.istio.io': ['authorizationpolicies', 'peerauthentications'],
  'gateway.networking.k8s.io': ['gatewayclasses', 'gateways', 'httproutes', 'grpcroutes'],
  'ambit.dev': ['ratelimits'],
  'flagger.app': ['canaries'],
  'split.smi-spec.io': ['trafficsplits'],
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
 * waypoint's ServiceAccount, Deployment, Service and PodDisruptionBudget and deletes them once
 * the Gateway is gone. RBAC cannot limit a rule by label, nor `create` by name: these rules cover
 * every Deployment, Service, ServiceAccount and PodDisruptionBudget of the cluster. That is the cost of managed waypoints; the
 * controller itself only ever deletes objects labelled as its own for a waypoint.
 */
export function controllerWaypointRules(): Rule[] {
  const verbs = ['get', 'list', 'create', 'patch', 'delete'];
  return [
    { apiGroups: ['apps'], resources: ['deployments'], verbs },
    { apiGroups: [''], resources: ['services', 'serviceaccounts'], verbs },
    { apiGroups: ['policy'], resources: ['poddisruptionbudgets'], verbs },
  ];
}

/**
 * What the leader needs to run Flagger Canaries (src/control/kube/canaries.ts), beyond the reads
 * above: it server-side applies each canary's primary Deployment, its Services and VirtualService
 * (apply needs create for an object that is not there yet) and the target's replica count;
 * patches the Canary's status and removes its `ambit.dev/canary-action` annotation; records
 * Events. No delete: the objects a canary made stay when it goes, as Flagger's do.
 */
export function controllerCanaryRules(): Rule[] {
  return [
    { apiGroups: ['flagger.app'], resources: ['canaries'], verbs: ['patch'] },
    { apiGroups: ['flagger.app'], resources: ['canaries/status'], verbs: ['patch'] },
    { apiGroups: ['apps'], resources: ['deployments'], verbs: [...READ, 'create', 'patch'] },
    { apiGroups: [''], resources: ['services'], verbs: ['create', 'patch'] },
    { apiGroups: ['networking.istio.io'], resources: ['virtualservices'], verbs: ['create', 'patch'] },
    { apiGroups: [''], resources: ['events'], verbs: ['create'] },
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
    ...controllerCanaryRules(),
    ...((v?.waypoints.managed ?? true) ? controllerWaypointRules() : []),
  ];
}

/**
 * The install's values the controller's waypoint template needs (AMBIT_WAYPOINT_VALUES, `--set`
 * syntax, comma-separated: so the pull secrets, a list, are separated by spaces there).
 */
export function waypointTemplateValues(v: Values): string {
  return [
    `namespace=${v.namespace}`, `image=${v.image}`, `imagePullPolicy=${v.imagePullPolicy}`, `logLevel=${v.logLevel}`, `waypoint.replicas=${v.waypoint.replicas}`,
    // The controller deploys ingress gateways (Gateways of class ambit/istio) with these too.
    `ingressGateway.replicas=${v.ingressGateway.replicas}`, `ingressGateway.serviceType=${v.ingressGateway.serviceType}`,
    ...(v.imagePullSecrets.length > 0 ? [`imagePullSecrets=${v.imagePullSecrets.join(' ')}`] : []),
  ].join(',');
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

/** The labels that select a component's pods (`controller`, `node`): how the CLI finds them through the API server. */
export function selectorLabels(component: string): Record<string, string> {
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
        metadata: { labels, annotations: prometheusAnnotations(CONTROLLER_PORTS.monitoring) },
        spec: {
          serviceAccountName: CONTROLLER,
          // It talks to the API server: the default token, audience the API server.
          automountServiceAccountToken: true,
          nodeSelector: LINUX_NODES,
          ...pullSecrets(v),
          // fsGroup: the kubelet gives the Secret's files (root-owned) to this group, so the
          // controller reads the CA through the group bits of CA_SECRET_MODE.
          securityContext: { runAsNonRoot: true, runAsUser: CONTROLLER_UID, runAsGroup: CONTROLLER_UID, fsGroup: CONTROLLER_UID, seccompProfile: { type: 'RuntimeDefault' } },
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
              { name: 'AMBIT_OUTBOUND_TRAFFIC_POLICY', value: v.meshConfig.outboundTrafficPolicy.mode },
              { name: 'AMBIT_WAYPOINT_VALUES', value: waypointTemplateValues(v) },
              { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
              { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
            ],
            ports: [
              { name: 'grpc-tls', containerPort: CONTROLLER_PORTS.grpc, protocol: 'TCP' },
              { name: 'http-monitoring', containerPort: CONTROLLER_PORTS.monitoring, protocol: 'TCP' },
              { name: 'http-ready', containerPort: CONTROLLER_PORTS.ready, protocol: 'TCP' },
            ],
            readinessProbe: readiness(CONTROLLER_PORTS.ready),
            livenessProbe: httpProbe('/healthz/live', CONTROLLER_PORTS.ready, 10, 3),
            // Up to 2 minutes to start (the API server's first lists) before liveness counts.
            startupProbe: httpProbe('/healthz/live', CONTROLLER_PORTS.ready, 5, 24),
            resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
            securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
            volumeMounts: [{ name: 'tmp', mountPath: '/tmp' }, { name: 'ca', mountPath: CA_MOUNT, readOnly: true }],
          }],
          volumes: [{ name: 'tmp', emptyDir: {} }, { name: 'ca', secret: { secretName: CA_SECRET, defaultMode: CA_SECRET_MODE } }],
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
        { name: 'http-monitoring', port: CONTROLLER_PORTS.monitoring, targetPort: CONTROLLER_PORTS.monitoring, protocol: 'TCP' },
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
      // A handover: the new agent starts beside the old one on each node (SO_REUSEPORT on every
      // port it listens on), and the old one gets SIGTERM once the new one is Ready — it closes
      // its listeners (their queued connections move to the new one's) and drains. No moment
      // without an agent, unlike maxUnavailable: 1 (docs/KUBERNETES.md, "Upgrades").
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } },
      template: {
        metadata: { labels, annotations: { ...nodeAgentAppArmor(v), ...prometheusAnnotations(NODE_PORTS.metrics) } },
        spec: {
          serviceAccountName: NODE_AGENT,
          automountServiceAccountToken: true,
          nodeSelector: LINUX_NODES,
          ...pullSecrets(v),
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
              ...v.nodeAgent.kubeletCgroup.flatMap((c) => ['--probe-cgroup', `${hostCgroup}/${c}`]),
              '--control-socket', `${AGENT_SOCKET_DIR}/agent.sock`,
              '--root-namespace', v.rootNamespace,
              '--drain-seconds', String(v.nodeAgent.drainSeconds),
              ...(v.nodeAgent.hboneLimits ? ['--hbone-limits', v.nodeAgent.hboneLimits] : []),
              '--trust-domain', v.trustDomain,
              ...(v.cni.enabled ? ['--cni-socket', CNI_SOCKET, '--cni-binary', CNI_BINARY, '--cni-bin-dir', HOST_CNI_BIN, '--cni-conf-dir', HOST_CNI_CONF] : []),
              ...(v.cni.enabled && v.cni.chained !== 'auto' ? ['--cni-primary', CNI_PRIMARY_TYPES[v.cni.chained]!] : []),
            ],
            env: [
              { name: 'AMBIT_LOG_LEVEL', value: v.logLevel },
              { name: 'AMBIT_HOST_PROC', value: '/host/proc' },
              { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
              { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
            ],
            // No `ports`: in a hostNetwork pod a declared port is a host port, and the scheduler
            // would refuse the surge pod of a rolling update on a node whose old pod holds it.
            // Probes and the PodMonitor name the port numbers.
            readinessProbe: readiness(NODE_PORTS.ready),
            livenessProbe: httpProbe('/healthz/live', NODE_PORTS.ready, 10, 3),
            // Generous: loading and verifying the BPF objects and adopting the pins of the agent
            // before can take minutes on a loaded node; liveness counts only once this passed.
            startupProbe: httpProbe('/healthz/live', NODE_PORTS.ready, 5, 60),
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
              // spc_t ("super privileged container", as Istio's node components use on SELinux
              // hosts): container_t may not touch bpffs, host cgroups or other pods' netns.
              // Ignored where SELinux is off.
              seLinuxOptions: { type: 'spc_t' },
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
              // Cilium's socket LB stays attached at the cgroup root even when limited to the host's
              // netns (socketLB.hostNamespaceOnly); only the header Cilium compiles its datapath with
              // says so, and the agent reads it to tell a safe Cilium from one that rewrites pods' Services.
              ...(v.cni.chained === 'cilium' ? [{ name: 'cilium-globals', mountPath: CILIUM_GLOBALS_DIR, readOnly: true, mountPropagation: 'HostToContainer' }] : []),
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
            // DirectoryOrCreate: the agent may start before Cilium's agent has written it.
            ...(v.cni.chained === 'cilium' ? [{ name: 'cilium-globals', hostPath: { path: CILIUM_GLOBALS_DIR, type: 'DirectoryOrCreate' } }] : []),
            ...credentialVolumes(),
          ],
        },
      },
    },
  };
}

/** The priority classes GKE admits outside kube-system only under a ResourceQuota scoped to them. */
export const CRITICAL_PRIORITY_CLASSES = ['system-node-critical', 'system-cluster-critical'];

/**
 * criticalPodsQuota: GKE (like an API server whose ResourceQuota admission config lists
 * PriorityClass scopes as limitedResources) refuses pods of the system-*-critical classes
 * outside kube-system unless their namespace has a ResourceQuota whose scopeSelector matches
 * that class. The node agent is system-node-critical. The ceiling is one no cluster reaches:
 * the quota is there to be matched, not to limit.
 */
export function criticalPodsQuota(v: Values): K8sObject {
  return {
    apiVersion: 'v1',
    kind: 'ResourceQuota',
    metadata: { name: 'ambit-critical-pods', namespace: v.namespace, labels: commonLabels('quota') },
    spec: {
      hard: { pods: '100000' },
      scopeSelector: { matchExpressions: [{ scopeName: 'PriorityClass', operator: 'In', values: CRITICAL_PRIORITY_CLASSES }] },
    },
  };
}

export const PODMONITOR_API = 'monitoring.coreos.com/v1';

/**
 * monitoring.podMonitor: prometheus-operator PodMonitors for the controller, the node agents
 * and every waypoint (in any namespace: they select by label), scraping the named ports.
 */
export function podMonitors(v: Values): K8sObject[] {
  const monitor = (component: string, port: string | number, namespaceSelector: Record<string, unknown>, matchLabels: Record<string, string>): K8sObject => ({
    apiVersion: PODMONITOR_API,
    kind: 'PodMonitor',
    metadata: { name: `ambit-${component}`, namespace: v.namespace, labels: commonLabels('monitoring') },
    // A port number is a targetPort: the node agent declares no container port (see nodeAgentDaemonSet).
    spec: { selector: { matchLabels }, namespaceSelector, podMetricsEndpoints: [{ ...(typeof port === 'number' ? { targetPort: port } : { port }), path: '/metrics', interval: '30s' }] },
  });
  return [
    monitor('controller', 'http-monitoring', { matchNames: [v.namespace] }, selectorLabels('controller')),
    monitor('node', NODE_PORTS.metrics, { matchNames: [v.namespace] }, selectorLabels('node')),
    monitor('waypoint', 'http-metrics', { any: true }, { 'app.kubernetes.io/component': 'waypoint', 'app.kubernetes.io/part-of': 'ambit' }),
  ];
}

/**
 * What is wrong with a PodMonitor we render, checked by hand: kubernetes-models has no schema for
 * prometheus-operator's CRD. Covers the fields podMonitors() writes, as the CRD defines them.
 */
export function podMonitorErrors(o: K8sObject): string[] {
  const errors: string[] = [];
  const spec = o.spec as Record<string, unknown> | undefined;
  if (o.apiVersion !== PODMONITOR_API || o.kind !== 'PodMonitor') errors.push(`/: not a ${PODMONITOR_API} PodMonitor`);
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(o.metadata.name)) errors.push('/metadata/name: must be a DNS subdomain');
  const selector = spec?.selector as { matchLabels?: Record<string, unknown> } | undefined;
  if (!selector?.matchLabels || Object.keys(selector.matchLabels).length === 0 || Object.values(selector.matchLabels).some((x) => typeof x !== 'string')) {
    errors.push('/spec/selector/matchLabels: must map label names to strings (an empty selector would match every pod)');
  }
  const ns = spec?.namespaceSelector as { any?: unknown; matchNames?: unknown } | undefined;
  if (!ns || !(ns.any === true || (Array.isArray(ns.matchNames) && ns.matchNames.length > 0 && ns.matchNames.every((x) => typeof x === 'string')))) {
    errors.push('/spec/namespaceSelector: must be {any: true} or {matchNames: [names]}');
  }
  const endpoints = spec?.podMetricsEndpoints;
  if (!Array.isArray(endpoints) || endpoints.length === 0) errors.push('/spec/podMetricsEndpoints: must list at least one endpoint');
  else {
    endpoints.forEach((e: Record<string, unknown>, i) => {
      // A container port name: IANA_SVC_NAME, at most 15 characters.
      if (e.targetPort !== undefined) {
        if (e.port !== undefined) errors.push(`/spec/podMetricsEndpoints/${i}: port and targetPort both given`);
        if (typeof e.targetPort !== 'number' || !Number.isInteger(e.targetPort) || e.targetPort < 1 || e.targetPort > 65535) errors.push(`/spec/podMetricsEndpoints/${i}/targetPort: must be a port number`);
      } else if (typeof e.port !== 'string' || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(e.port) || e.port.length > 15) errors.push(`/spec/podMetricsEndpoints/${i}/port: must be a container port name`);
      if (typeof e.path !== 'string' || !e.path.startsWith('/')) errors.push(`/spec/podMetricsEndpoints/${i}/path: must be an absolute path`);
      if (e.interval !== undefined && (typeof e.interval !== 'string' || !/^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$/.test(e.interval))) errors.push(`/spec/podMetricsEndpoints/${i}/interval: must be a duration like 30s`);
    });
  }
  return errors;
}

/**
 * Pod Security admission: the node agent uses hostNetwork, hostPath volumes and added
 * capabilities, which only the `privileged` level admits; enforced (and audited and warned) at
 * that level so that a cluster-wide default of baseline or restricted does not refuse it.
 */
export const POD_SECURITY_LABELS: Readonly<Record<string, string>> = {
  'pod-security.kubernetes.io/enforce': 'privileged',
  'pod-security.kubernetes.io/audit': 'privileged',
  'pod-security.kubernetes.io/warn': 'privileged',
};

/** Every object of the installation, in the order `kubectl apply` should create them. */
export function renderInstall(v: Values): K8sObject[] {
  const ns: K8sObject = {
    apiVersion: 'v1', kind: 'Namespace',
    metadata: { name: v.namespace, labels: { ...commonLabels('namespace'), [DATAPLANE_MODE]: 'none', ...POD_SECURITY_LABELS } },
  };
  return [
    ns,
    ...(v.criticalPodsQuota ? [criticalPodsQuota(v)] : []),
    rateLimitCrd(commonLabels('crd')),
    sa(CONTROLLER, v.namespace, 'controller'),
    sa(NODE_AGENT, v.namespace, 'node'),
    ...rbac(CONTROLLER, v.namespace, 'controller', controllerClusterRules(v), controllerNamespaceRules()),
    ...rbac(NODE_AGENT, v.namespace, 'node', nodeAgentClusterRules(v), nodeAgentNamespaceRules()),
    ...controllerObjects(v),
    nodeAgentDaemonSet(v),
    ...(v.ingressGateway.enabled ? istioIngressGatewayObjects(v) : []),
    ...(v.monitoring.podMonitor ? podMonitors(v) : []),
  ];
}

/**
 * The same objects in the order `kubectl delete -f -` should remove them: the node agents first
 * (each removes every pinned BPF object when its DaemonSet is being deleted), the CRD (and with
 * it every RateLimit) last. The namespace only with `purge`: it holds the Secret ambit-ca, the
 * operator's CA key, which nothing else has a copy of.
 */
export function renderUninstall(v: Values, opts: { purge?: boolean } = {}): K8sObject[] {
  const all = renderInstall(v);
  const first = all.filter((o) => o.kind === 'DaemonSet');
  const last = all.filter((o) => (o.kind === 'Namespace' && opts.purge) || o.kind === 'CustomResourceDefinition');
  const middle = all.filter((o) => !first.includes(o) && !last.includes(o) && o.kind !== 'Namespace').reverse();
  return [...first, ...middle, ...last];
}
