/**
 * The local cluster's runtime: one process per cluster that plays the API server, scheduler,
 * kubelet, kube-proxy and DNS of a small Kubernetes, on one machine. It keeps the cluster's
 * state file, applies manifests (all-or-nothing), runs pods as processes in their own netns
 * and cgroup, keeps service endpoints and the nodes' nftables rules in step with pod
 * readiness, and writes each pod's /etc/hosts.
 *
 * Recovery: a runtime that starts on an existing state (a crash, a reboot, `kill -9`) rebuilds
 * every kernel object from the state file — netns, veths, routes, cgroups, rules — and
 * restarts every pod with its old name and address.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { isEnrolled } from '../config/model.js';
import { validateMeshObject } from '../config/validate.js';
import { Datapath } from '../ebpf/datapath.js';
import { httpGetInNetns, socketInNetns } from '../host/netns.js';
import { WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { checkScrapeInterval, CONTROLLER_MONITORING_PORT, LocalPrometheus, prometheusBinary, PROMETHEUS_PORT } from './prometheus.js';
import { ambitBin } from '../util/package.js';
import { allocatePodIp, allocateVip, inServiceRange } from './addresses.js';
import { endpoints, hostsFile, matches, resolvConf, serviceRules, servicesOf, type ReadyPods } from './services.js';
import { BUILD_AND_PROFILE_ENV, isWaypointGateway, nodeFlags, waypointCredentialDir, waypointPod } from './waypoint-pods.js';
import { gatewayCredentialDir, gatewayPod, planGateways, type GatewayPlan } from './gateway-pods.js';
import { Component } from './component.js';
import { agentReady, agentRequest } from './agent-control.js';
import { delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { LocalError } from './errors.js';
import {
  ClusterLayout, CONTROLLER_PORT, MAX_NODES, nodeAddress, nodeName, podAddress6, podCidr, SERVICE_CIDR, UNDERLAY_GATEWAY,
} from './layout.js';
import {
  formatDiagnostic, parseManifests, type DeploymentResource, type Diagnostic, type ManifestInput,
  type PodResource, type PodSpec, type Resource, type ServiceResource,
} from '../kube/manifests.js';
import { ClusterNetwork, deleteNetns, listNetns, type ServiceRule } from './net.js';
import { LocalPod, type ContainerStatus, type Phase } from './pod.js';
import { removeCgroupTree } from './process.js';
import type { PodReadiness } from '../api/admin.js';
import { readState, resourceKey, writeState, type ClusterState, type PodRecord } from './state.js';

/** Thrown when an apply or delete is refused; nothing was changed. */
export class ApplyError extends LocalError {
  constructor(readonly diagnostics: Diagnostic[]) {
    super(diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic).join('\n'));
  }
}

export interface ApplyResult {
  /** kubectl-style lines: `deployment.apps/users created`. */
  changes: string[];
  warnings: string[];
}

export interface PodStatus {
  namespace: string;
  name: string;
  node: string;
  ip: string;
  /** Both of the pod's addresses: IPv4 first, then its IPv6 (see podAddress6). */
  ips: string[];
  phase: Phase;
  ready: string;
  restarts: number;
  serviceAccount: string;
  createdAt: string;
  owner?: string;
  labels: Record<string, string>;
  /** Whether the pod is in the mesh (its or its namespace's `ambit.dev/dataplane-mode`). */
  meshed: boolean;
  containers: ContainerStatus[];
}

export interface ServiceStatus {
  namespace: string;
  name: string;
  vip: string;
  ports: { name?: string; port: number; targetPort: number | string; protocol: string }[];
  endpoints: string[];
}

export interface ComponentStatus {
  name: string;
  node?: string;
  state: 'running' | 'degraded' | 'stopped';
  pid?: number;
  detail: string;
}

export interface ClusterStatus {
  name: string;
  stateDir: string;
  createdAt: string;
  nodes: { name: string; ip: string; podCidr: string; pods: number }[];
  pods: PodStatus[];
  services: ServiceStatus[];
  components: ComponentStatus[];
  /** The controller's discovery subscribers (node agents, waypoints): versions applied, NACKs. */
  controller?: { version: string; rejected?: string[]; subscribers: { node: string; kind: string; name: string; lastAck?: string; lastNack?: { version: string; error: string } }[] };
  /** Resources kept for the controller (Istio, Gateway API, ...). */
  others: { apiVersion: string; kind: string; namespace: string; name: string }[];
  /** The cluster's Prometheus, when it runs one: its URL inside the underlay netns (`netns`). */
  prometheus?: { url: string; netns: string; scrapeInterval: string };
  /** Ingress gateways: their pod, the node address their ports are exposed on, and why a port is not. */
  gateways: GatewayStatus[];
}

export interface GatewayStatus {
  namespace: string;
  name: string;
  serviceAccount: string;
  /** The Gateways it serves (`Gateway.networking.istio.io/ns/name`, ...). */
  from: string[];
  node: string;
  /** The node's address, where `hostPorts` are reachable from the underlay. */
  address: string;
  ports: number[];
  hostPorts: number[];
  ready: boolean;
  errors: string[];
}

const POD_NAME_ALPHABET = 'bcdfghjklmnpqrstvwxz2456789';
const DEFAULT_SA = 'default';

function randomSuffix(n: number): string {
  return Array.from({ length: n }, () => POD_NAME_ALPHABET[Math.floor(Math.random() * POD_NAME_ALPHABET.length)]).join('');
}

/** The revision of a Deployment's pods (their `pod-template-hash` label): its template's hash. */
export function templateHash(d: DeploymentResource): string {
  return createHash('sha256').update(JSON.stringify(d.template)).digest('hex').slice(0, 10);
}

const sameJson = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

export class Runtime {
  private readonly pods = new Map<string, LocalPod>();
  private readonly net: ClusterNetwork;
  private readonly hostsCache = new Map<string, string>();
  private readonly components: Component[] = [];
  private prometheus?: LocalPrometheus;
  private syncTimer?: NodeJS.Timeout;
  private syncError?: string;
  private closed = false;
  readonly startedAt = new Date();

  private constructor(
    readonly layout: ClusterLayout,
    private state: ClusterState,
    private readonly log: Logger,
    private readonly baseEnv: Record<string, string>,
  ) {
    this.net = new ClusterNetwork(layout);
  }

  /** Opens cluster `layout.name`: creates it with `nodes` nodes, or recovers it from its state file. */
  static async open(layout: ClusterLayout, nodes: number | undefined, log: Logger): Promise<Runtime> {
    const existing = readState(layout.stateFile);
    if (existing && nodes !== undefined && nodes !== existing.nodes.length) {
      throw new LocalError(`cluster ${layout.name} exists with ${existing.nodes.length} nodes, not ${nodes}`, `remove it first: ambit local down --cluster ${layout.name}`);
    }
    const count = nodes ?? existing?.nodes.length ?? 2;
    if (!Number.isInteger(count) || count < 1 || count > MAX_NODES) throw new LocalError(`--nodes must be an integer from 1 to ${MAX_NODES}, got ${count}`);
    const state: ClusterState = existing ?? {
      version: 1,
      name: layout.name,
      createdAt: new Date().toISOString(),
      nodes: Array.from({ length: count }, (_, i) => ({ name: nodeName(i + 1), index: i + 1, ip: nodeAddress(i + 1), podCidr: podCidr(i + 1) })),
      resources: {},
      pods: {},
      services: {},
    };
    const path = [dirname(process.execPath), process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'].join(delimiter);
    const runtime = new Runtime(layout, state, log, { PATH: path, HOME: process.env.HOME ?? '/root', LANG: process.env.LANG ?? 'C.UTF-8' });
    await runtime.build(existing !== undefined);
    return runtime;
  }

  /** Makes every kernel object from the state, after removing whatever a previous run left. */
  private async build(recovering: boolean): Promise<void> {
    if (recovering) this.log.info({ pods: Object.keys(this.state.pods).length }, 'recovering the cluster from its state file');
    await this.resetKernel();
    mkdirSync(this.layout.stateDir, { recursive: true });
    writeState(this.layout.stateFile, this.state);
    this.net.createUnderlay();
    for (const node of this.state.nodes) {
      this.net.createNode(node.index, this.state.nodes.length);
      mkdirSync(this.layout.nodeCgroup(node.name), { recursive: true });
    }
    this.writeNodeCredentials();
    this.startComponents();
    for (const record of Object.values(this.state.pods)) this.startPod(record);
    this.sync();
  }

  /** Each node agent's bootstrap credential for the CA, made once with its node (0600, in the state dir). */
  private writeNodeCredentials(): void {
    for (const node of this.state.nodes) {
      const dir = join(this.layout.stateDir, 'nodes', node.name);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const file = join(dir, 'token');
      if (!existsSync(file)) writeFileSync(file, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
    }
  }

  /** The controller's command line; its mesh settings from the state (`ambit local up --outbound-traffic-policy`). */
  private controllerArgv(): string[] {
    return [process.execPath, ...nodeFlags(), ambitBin(), 'controller', '--local-state', this.layout.stateDir, '--config-dir', this.layout.configDir, '--listen', `${UNDERLAY_GATEWAY}:${CONTROLLER_PORT}`,
      '--monitoring', `${UNDERLAY_GATEWAY}:${CONTROLLER_MONITORING_PORT}`,
      '--outbound-traffic-policy', this.state.meshConfig?.outboundTrafficPolicy ?? 'ALLOW_ANY'];
  }

  /**
   * `ambit local up --outbound-traffic-policy MODE`: kept in the state and given to the
   * controller, which is restarted when the mode changes (the node agents reconnect and get it
   * with their next config; their pods' connections are carried meanwhile).
   */
  async setOutboundTrafficPolicy(mode: 'ALLOW_ANY' | 'REGISTRY_ONLY'): Promise<{ mode: string; changed: boolean }> {
    const current = this.state.meshConfig?.outboundTrafficPolicy ?? 'ALLOW_ANY';
    if (current === mode) return { mode, changed: false };
    this.state.meshConfig = { outboundTrafficPolicy: mode };
    writeState(this.layout.stateFile, this.state);
    const controller = this.components.find((c) => c.spec.name === 'controller');
    if (controller) {
      controller.spec.argv = this.controllerArgv();
      await this.componentAction('restart', 'controller');
    }
    this.log.info({ outboundTrafficPolicy: mode }, 'mesh config changed');
    return { mode, changed: true };
  }

  /** The controller (the CA today) in the underlay netns, on the control-plane address. */
  private startComponents(): void {
    const underlay = this.layout.underlayNetns;
    mkdirSync(this.layout.configDir, { recursive: true });
    const controller = new Component({
      name: 'controller',
      netns: underlay,
      cgroup: this.layout.componentCgroup('controller'),
      argv: this.controllerArgv(),
      env: this.componentEnv(),
      logFile: this.layout.componentLog('controller'),
      health: () => tcpReachable(`/run/netns/${underlay}`, UNDERLAY_GATEWAY, CONTROLLER_PORT),
    }, this.log);
    controller.start();
    this.components.push(controller);
    for (const node of this.state.nodes) {
      const name = `node-agent.${node.name}`;
      const nodeNetns = this.layout.nodeNetns(node.name);
      const agent = new Component({
        name: 'node-agent',
        node: node.name,
        netns: nodeNetns,
        cgroup: this.layout.componentCgroup(name),
        argv: [process.execPath, ...nodeFlags(), ambitBin(), 'node', '--node', node.name, '--cluster', this.layout.name,
          '--controller', `${UNDERLAY_GATEWAY}:${CONTROLLER_PORT}`,
          '--token-file', join(this.layout.stateDir, 'nodes', node.name, 'token'),
          '--ca-file', join(this.layout.stateDir, 'ca', 'ca-cert.pem'),
          '--probe-cgroup', this.layout.componentCgroup('runtime'),
          '--control-socket', this.agentSocket(node.name)],
        env: this.componentEnv(),
        logFile: this.layout.componentLog(name),
        health: () => tcpReachable(`/run/netns/${nodeNetns}`, node.ip, 15021),
        // While no agent runs, its pods' connections are refused (fail closed): back at once after
        // a crash (the backoff still doubles from here for one that keeps crashing).
        restartDelayMs: 100,
      }, this.log);
      agent.start();
      this.components.push(agent);
    }
    if (this.state.prometheus) this.startPrometheus(this.state.prometheus.scrapeInterval);
  }

  /** The cluster's Prometheus (src/local/prometheus.ts), in the underlay netns. */
  private startPrometheus(scrapeInterval: string): void {
    const prometheus = new LocalPrometheus(this.layout, scrapeInterval);
    const underlay = this.layout.underlayNetns;
    const component = new Component({
      name: 'prometheus',
      netns: underlay,
      cgroup: this.layout.componentCgroup('prometheus'),
      argv: prometheus.prepare(),
      env: this.baseEnv,
      logFile: this.layout.componentLog('prometheus'),
      health: async () => (await httpGetInNetns(`/run/netns/${underlay}`, UNDERLAY_GATEWAY, PROMETHEUS_PORT, '/-/ready', 1000)).status === 200,
    }, this.log);
    this.prometheus = prometheus;
    this.writeTargets();
    component.start();
    this.components.push(component);
  }

  /**
   * Adds a Prometheus to a running cluster (kept in the state, so it comes back with the cluster).
   * Asking again with the same interval changes nothing; another interval is refused, since its
   * data would mix two resolutions.
   */
  enablePrometheus(scrapeInterval: string): { url: string; started: boolean } {
    checkScrapeInterval(scrapeInterval);
    const current = this.state.prometheus;
    if (current) {
      if (current.scrapeInterval !== scrapeInterval) throw new LocalError(`the cluster's Prometheus scrapes every ${current.scrapeInterval}, not ${scrapeInterval}`, `keep ${current.scrapeInterval}, or remove the cluster (ambit local down) to start over`);
      return { url: this.prometheus!.url, started: false };
    }
    prometheusBinary();
    this.state.prometheus = { scrapeInterval };
    writeState(this.layout.stateFile, this.state);
    this.startPrometheus(scrapeInterval);
    return { url: this.prometheus!.url, started: true };
  }

  /**
   * Stops, starts or restarts one of the cluster's components (`ambit local component`): a
   * stopped component stays stopped (it is not restarted as an exit would be) until started.
   * What runs is unchanged: the cluster's pods keep running, and a node agent's pinned datapath
   * keeps capturing (and refusing) its pods' traffic while it is away.
   */
  async componentAction(action: 'stop' | 'start' | 'restart', name: string, node?: string): Promise<{ name: string; node?: string; state: string; pid?: number; handover?: { oldPid?: number; pid?: number; readyMs: number; oldExitMs: number } }> {
    const matching = this.components.filter((c) => c.spec.name === name && (node === undefined || c.spec.node === node));
    const known = [...new Set(this.components.map((c) => (c.spec.node ? `${c.spec.name} --node ${c.spec.node}` : c.spec.name)))];
    if (matching.length === 0) throw new LocalError(`no component ${name}${node ? ` on node ${node}` : ''} in cluster ${this.layout.name}`, `components: ${known.join(', ')}`);
    if (matching.length > 1) throw new LocalError(`${matching.length} components are named ${name}: give --node`, `components: ${known.join(', ')}`);
    const c = matching[0]!;
    // A running node agent's restart is a handover: the new agent starts beside it, and the old
    // one is stopped once the new one has enrolled the node's pods (docs/DATAPATH.md).
    if (action === 'restart' && name === 'node-agent' && c.pid !== undefined && !c.stopped && c.spec.node) {
      const socket = this.agentSocket(c.spec.node);
      const r = await c.handover(async (pid) => {
        return (await agentReady(socket))?.pid === pid;
      }, { readyTimeoutMs: 30_000, graceMs: AGENT_DRAIN_MS + 10_000 });
      this.log.info({ component: name, node, action, ...r }, 'component action');
      return { name, node: c.spec.node, state: 'running', ...(c.pid ? { pid: c.pid } : {}), handover: r };
    }
    if (action !== 'start') await c.stop(name === 'node-agent' ? AGENT_DRAIN_MS + 10_000 : undefined);
    if (action !== 'stop') {
      if (c.pid === undefined) c.start();
    }
    this.log.info({ component: name, node, action, pid: c.pid }, 'component action');
    return { name, ...(c.spec.node ? { node: c.spec.node } : {}), state: c.pid === undefined ? 'stopped' : 'running', ...(c.pid ? { pid: c.pid } : {}) };
  }

  /** The Prometheus's targets: every node agent, and every waypoint and ingress gateway pod with an address. */
  private writeTargets(): void {
    if (!this.prometheus) return;
    this.prometheus.writeTargets({
      nodes: this.state.nodes.map((n) => ({ node: n.name, ip: n.ip })),
      // Ingress gateways too (Istio's default one has no gateway-name label): their requests' metrics, reporter="source".
      waypoints: Object.values(this.state.pods).filter((p) => p.labels[WAYPOINT_GATEWAY_LABEL] !== undefined || p.owner?.kind === 'IngressGateway')
        .map((p) => ({ namespace: p.namespace, pod: p.name, ip: p.ip })),
    });
  }

  /**
   * The controller's and node agents' environment: the daemon's log level, profiling settings,
   * build (AMBIT_DIST, bin/ambit.js), the agents' HBONE limits (AMBIT_HBONE_LIMITS) and the
   * controller's certificate lifetime (AMBIT_CERT_TTL) and canary interval floor (AMBIT_CANARY_MIN_INTERVAL).
   */
  private componentEnv(): Record<string, string> {
    const env: Record<string, string> = { ...this.baseEnv, AMBIT_LOG_LEVEL: process.env.AMBIT_LOG_LEVEL ?? 'info' };
    for (const key of [...BUILD_AND_PROFILE_ENV, 'AMBIT_HBONE_LIMITS', 'AMBIT_AGENT_LIMITS', 'AMBIT_DNS_CAPTURE', 'AMBIT_DNS_RESOLVERS', 'AMBIT_DISCOVERY_SCOPE', 'AMBIT_CERT_TTL', 'AMBIT_CANARY_MIN_INTERVAL']) {
      const value = process.env[key];
      if (value) env[key] = value;
    }
    return env;
  }

  private agentSocket(node: string): string {
    return join(this.layout.stateDir, 'nodes', node, 'agent.sock');
  }

  private namespaceLabels(namespace: string): Record<string, string> {
    for (const r of Object.values(this.state.resources)) if (r.kind === 'Namespace' && r.meta.name === namespace) return r.meta.labels;
    return {};
  }

  /**
   * A meshed pod's processes start once its node agent has enrolled it (listeners, map entries,
   * certificate), so that its first connection is already in the mesh. An agent that does not
   * answer in time does not keep the pod from running: it starts, and is enrolled when the
   * agent catches up (its new connections are redirected from then on).
   */
  private async admit(pod: LocalPod): Promise<void> {
    const { record } = pod;
    if (!isEnrolled(record.labels, this.namespaceLabels(record.namespace))) return;
    const started = Date.now();
    const deadline = started + ADMIT_TIMEOUT_MS;
    let last = '';
    while (Date.now() < deadline && !pod.stopping) {
      try {
        const answer = await agentRequest(this.agentSocket(record.node), `/v1/pods/${encodeURIComponent(record.uid)}?timeoutMs=${Math.max(0, deadline - Date.now())}`, deadline - Date.now() + 1000);
        if (answer.status === 200) {
          const r = answer.body as PodReadiness;
          if (r.enrolled) this.log.info({ pod: pod.key, ms: Date.now() - started }, 'pod enrolled by its node agent');
          else this.log.warn({ pod: pod.key, error: r.error }, 'node agent did not enroll the pod');
          return;
        }
        last = `agent answered ${answer.status}`;
      } catch (err) {
        last = (err as Error).message;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    if (!pod.stopping) this.log.warn({ pod: pod.key, why: last }, `node agent did not confirm enrollment within ${ADMIT_TIMEOUT_MS} ms; starting the pod anyway`);
  }

  /** Removes what a previous run left in the kernel, then moves this process into its own cgroup. */
  private async resetKernel(): Promise<void> {
    await removeKernelObjects(this.layout);
    mkdirSync(this.layout.componentCgroup('runtime'), { recursive: true });
    writeFileSync(join(this.layout.componentCgroup('runtime'), 'cgroup.procs'), String(process.pid));
  }

  // -------------------------------------------------------------------------------------------
  // apply / delete

  /**
   * Runs `fn` after every apply or delete started before it has finished. Each one awaits pods
   * stopping, and rolls the state back to its own snapshot when it fails: two at once (a user's
   * apply and the canary controller's) would allocate from, and restore, each other's state.
   */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.changing.then(fn, fn);
    this.changing = run.then(() => undefined, () => undefined);
    return run;
  }

  private changing: Promise<void> = Promise.resolve();

  /** Applies manifests all-or-nothing: every check runs before the first change. */
  apply(inputs: ManifestInput[]): Promise<ApplyResult> {
    return this.exclusive(() => this.applyNow(inputs));
  }

  private async applyNow(inputs: ManifestInput[]): Promise<ApplyResult> {
    const { resources, diagnostics } = parseManifests(inputs, { commandExists: (cmd, cwd) => this.commandExists(cmd, cwd), env: this.baseEnv, validate: validateMeshObject });
    diagnostics.push(...this.checkCluster(resources));
    if (diagnostics.some((d) => d.severity === 'error')) throw new ApplyError(diagnostics);
    const warnings = diagnostics.filter((d) => d.severity === 'warning').map(formatDiagnostic);
    const snapshot = structuredClone(this.state);
    const created: string[] = [];
    const changes: string[] = [];
    try {
      for (const r of orderForApply(resources)) changes.push(await this.applyOne(r, created));
      await this.reconcileGateways(created);
      writeState(this.layout.stateFile, this.state);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'apply failed, rolling back');
      for (const key of created) await this.stopPod(key);
      this.state = snapshot;
      for (const record of Object.values(this.state.pods)) if (!this.pods.has(`${record.namespace}/${record.name}`)) this.startPod(record);
      writeState(this.layout.stateFile, this.state);
      throw err;
    } finally {
      this.sync();
    }
    return { changes, warnings };
  }

  private async applyOne(r: Resource, created: string[]): Promise<string> {
    const key = resourceKey(r);
    const previous = this.state.resources[key];
    const label = `${r.kind.toLowerCase()}${r.apiVersion.includes('/') ? `.${r.apiVersion.split('/')[0]}` : ''}/${r.meta.name}`;
    const unchanged = previous && sameJson(previous.raw, r.raw);
    this.state.resources[key] = r;
    if ('other' in r) {
      if (isWaypointGateway(r) || (previous && isWaypointGateway(previous))) await this.reconcileWaypoint(r.meta.namespace, r.meta.name, isWaypointGateway(r), created);
      return `${label} ${previous ? (unchanged ? 'unchanged' : 'configured') : 'created'}`;
    }
    if (r.kind === 'Service') this.applyService(r as ServiceResource);
    else if (r.kind === 'Deployment') await this.reconcileDeployment(r as DeploymentResource, created);
    else if (r.kind === 'Pod' && !unchanged) {
      const pod = r as PodResource;
      if (previous) await this.deletePod(`${pod.meta.namespace}/${pod.meta.name}`);
      created.push(this.createPod(pod.meta.namespace, pod.meta.name, pod.meta.labels, pod.meta.annotations, pod.spec).key);
      if (previous) return `${label} configured (pod recreated)`;
    }
    return `${label} ${previous ? (unchanged ? 'unchanged' : 'configured') : 'created'}`;
  }

  private applyService(svc: ServiceResource): void {
    const key = `${svc.meta.namespace}/${svc.meta.name}`;
    if (svc.spec.clusterIP === 'None') {
      delete this.state.services[key];
      return;
    }
    const existing = this.state.services[key];
    if (existing) return;
    this.state.services[key] = { vip: svc.spec.clusterIP || allocateVip(Object.values(this.state.services).map((x) => x.vip)) };
  }

  /** Recreate strategy: pods of an older template go, then the replica count is met. */
  private async reconcileDeployment(d: DeploymentResource, created: string[]): Promise<void> {
    const hash = templateHash(d);
    const owned = this.ownedPods(d.meta.namespace, d.meta.name);
    for (const p of owned.filter((p) => p.owner?.templateHash !== hash)) await this.deletePod(`${p.namespace}/${p.name}`);
    const current = owned.filter((p) => p.owner?.templateHash === hash).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    for (const p of current.slice(d.replicas).reverse()) await this.deletePod(`${p.namespace}/${p.name}`);
    for (let i = current.length; i < d.replicas; i++) {
      let name: string;
      do name = `${d.meta.name}-${hash}-${randomSuffix(5)}`; while (this.state.pods[`${d.meta.namespace}/${name}`]);
      const labels = { ...d.template.labels, 'pod-template-hash': hash };
      created.push(this.createPod(d.meta.namespace, name, labels, d.template.annotations, d.template.spec, { kind: 'Deployment', name: d.meta.name, templateHash: hash }).key);
    }
  }

  private ownedPods(namespace: string, owner: string, kind: 'Deployment' | 'Gateway' = 'Deployment'): PodRecord[] {
    return Object.values(this.state.pods).filter((p) => p.namespace === namespace && p.owner?.name === owner && p.owner.kind === kind);
  }

  /**
   * A Gateway of class ambit-waypoint runs as one pod, `<name>-waypoint`, with the identity
   * `<ns>/sa/<name>` and a credential good for that identity only; it is not captured itself
   * (its traffic is HBONE already). Removing the Gateway removes both.
   */
  private async reconcileWaypoint(namespace: string, name: string, wanted: boolean, created: string[]): Promise<void> {
    const owned = this.ownedPods(namespace, name, 'Gateway');
    if (!wanted) {
      for (const p of owned) await this.deletePod(`${p.namespace}/${p.name}`);
      rmSync(waypointCredentialDir(this.layout, namespace, name), { recursive: true, force: true });
      return;
    }
    const gateway = Object.values(this.state.resources).find((x) => x.kind === 'Gateway' && x.meta.namespace === namespace && x.meta.name === name);
    const annotations = ((gateway?.raw.metadata as { annotations?: Record<string, string> } | undefined)?.annotations) ?? {};
    const { spec, labels, hash } = waypointPod(this.layout, namespace, name, annotations);
    // A change of the Gateway's tracing annotations restarts its pod.
    for (const p of owned.filter((p) => p.owner?.templateHash !== hash)) await this.deletePod(`${p.namespace}/${p.name}`);
    if (owned.some((p) => p.owner?.templateHash === hash)) return;
    created.push(this.createPod(namespace, `${name}-waypoint`, labels, {}, spec, { kind: 'Gateway', name, templateHash: hash }).key);
  }

  /** The node ingress gateways run on and expose their ports at: the cluster's first. */
  private get gatewayNode(): { name: string; ip: string; index: number } {
    return this.state.nodes[0]!;
  }

  private gatewayPlans(): GatewayPlan[] {
    return planGateways(Object.values(this.state.resources), this.gatewayNode);
  }

  /**
   * Ingress gateways follow the Gateways (src/local/gateway-pods.ts): a pod per gateway, made
   * again when its ports or flags change, removed with the last Gateway that called for it
   * (and its credential with it).
   */
  private async reconcileGateways(created: string[]): Promise<void> {
    const plans = this.gatewayPlans();
    const owned = Object.values(this.state.pods).filter((p) => p.owner?.kind === 'IngressGateway');
    for (const p of owned) {
      const plan = plans.find((x) => x.namespace === p.namespace && x.name === p.name);
      if (plan && p.owner?.templateHash === gatewayPod(this.layout, plan, this.gatewayNode.name).hash) continue;
      await this.deletePod(`${p.namespace}/${p.name}`);
      if (!plan) rmSync(gatewayCredentialDir(this.layout, p.namespace, p.spec.serviceAccountName), { recursive: true, force: true });
    }
    for (const plan of plans) {
      if (this.state.pods[`${plan.namespace}/${plan.name}`]) continue;
      const { spec, hash } = gatewayPod(this.layout, plan, this.gatewayNode.name);
      const labels = { ...plan.labels, 'ambit.dev/dataplane-mode': 'none' };
      created.push(this.createPod(plan.namespace, plan.name, labels, plan.annotations, spec, { kind: 'IngressGateway', name: plan.name, templateHash: hash }).key);
      this.log.info({ gateway: `${plan.namespace}/${plan.name}`, hostPorts: plan.hostPorts, errors: plan.errors }, 'ingress gateway pod created');
    }
  }

  /** The gateways' exposed ports as DNAT rules of their node: node address:port → pod:port (a hostPort), as the Gateways are now. */
  private hostPortRules(nodeName: string): ServiceRule[] {
    const node = this.state.nodes.find((n) => n.name === nodeName)!;
    return this.gatewayPlans().flatMap((plan) => {
      const pod = this.state.pods[`${plan.namespace}/${plan.name}`];
      if (!pod || pod.node !== nodeName || pod.owner?.kind !== 'IngressGateway') return [];
      return plan.hostPorts.map((port): ServiceRule => ({ vip: node.ip, protocol: 'TCP', port, endpoints: [{ ip: pod.ip, port }] }));
    });
  }

  private createPod(namespace: string, name: string, labels: Record<string, string>, annotations: Record<string, string>, spec: PodSpec, owner?: PodRecord['owner']): LocalPod {
    const node = spec.nodeName ?? this.schedule(namespace, owner?.name);
    const record: PodRecord = {
      uid: randomUUID(), namespace, name, node, ip: allocatePodIp(this.state.nodes.find((n) => n.name === node)!, Object.values(this.state.pods).filter((p) => p.node === node).map((p) => p.ip)), labels, annotations, spec, owner, createdAt: new Date().toISOString(),
    };
    this.state.pods[`${namespace}/${name}`] = record;
    return this.startPod(record);
  }

  /** Spread: the node with the fewest pods of the same Deployment, then the fewest pods. */
  private schedule(namespace: string, owner: string | undefined): string {
    const pods = Object.values(this.state.pods);
    const score = (node: string) => [
      owner ? pods.filter((p) => p.node === node && p.namespace === namespace && p.owner?.name === owner).length : 0,
      pods.filter((p) => p.node === node).length,
    ];
    return [...this.state.nodes].sort((a, b) => {
      const [sa, sb] = [score(a.name), score(b.name)];
      return sa[0]! - sb[0]! || sa[1]! - sb[1]! || a.index - b.index;
    })[0]!.name;
  }

  /** Makes the pod's netns, cgroup and files, then starts its containers. */
  private startPod(record: PodRecord): LocalPod {
    const node = this.state.nodes.find((n) => n.name === record.node)!;
    const dir = this.layout.podDir(record.namespace, record.name);
    mkdirSync(dir, { recursive: true });
    const files = { hosts: join(dir, 'hosts'), resolv: join(dir, 'resolv.conf') };
    writeFileSync(files.hosts, hostsFile(this.state, this.ready, record));
    writeFileSync(files.resolv, resolvConf(record));
    const cgroup = this.layout.podCgroup(record.node, record.namespace, record.name);
    this.net.createPod(node.index, record.namespace, record.name, record.ip);
    mkdirSync(cgroup, { recursive: true });
    const pod = new LocalPod(record, {
      netns: this.layout.podNetns(record.namespace, record.name),
      nodeNetns: this.layout.nodeNetns(record.node),
      cgroup,
      hostIp: node.ip,
      files,
      logFile: (c) => this.layout.containerLog(record.namespace, record.name, c),
      baseEnv: this.baseEnv,
    }, this.log.child({ pod: `${record.namespace}/${record.name}` }), () => this.scheduleSync());
    this.pods.set(pod.key, pod);
    void this.admit(pod).then(() => {
      if (pod.stopping || this.pods.get(pod.key) !== pod) return;
      pod.start();
      this.log.info({ pod: pod.key, node: record.node, ip: record.ip }, 'pod started');
    });
    return pod;
  }

  private async stopPod(key: string, maxGraceMs?: number): Promise<void> {
    const pod = this.pods.get(key);
    if (!pod) return;
    await pod.stop(maxGraceMs);
    this.pods.delete(key);
    const node = this.state.nodes.find((n) => n.name === pod.record.node);
    this.net.deletePod(pod.record.namespace, pod.record.name, node ? { nodeIndex: node.index, podIp: pod.record.ip } : undefined);
  }

  private async deletePod(key: string): Promise<void> {
    const record = this.state.pods[key];
    await this.stopPod(key);
    delete this.state.pods[key];
    if (record) {
      rmSync(this.layout.podDir(record.namespace, record.name), { recursive: true, force: true });
      this.hostsCache.delete(key);
    }
    this.log.info({ pod: key }, 'pod deleted');
  }

  /** Deletes what the manifests name; a Namespace takes everything in it. */
  delete(inputs: ManifestInput[]): Promise<ApplyResult & { notFound: string[] }> {
    return this.exclusive(() => this.deleteNow(inputs));
  }

  private async deleteNow(inputs: ManifestInput[]): Promise<ApplyResult & { notFound: string[] }> {
    const { resources, diagnostics } = parseManifests(inputs, {});
    if (diagnostics.some((d) => d.severity === 'error')) throw new ApplyError(diagnostics);
    const changes: string[] = [];
    const notFound: string[] = [];
    for (const r of [...orderForApply(resources)].reverse()) {
      const key = resourceKey(r);
      const label = `${r.kind.toLowerCase()}${r.apiVersion.includes('/') ? `.${r.apiVersion.split('/')[0]}` : ''}/${r.meta.name}`;
      if (!this.state.resources[key]) {
        notFound.push(`${label}${r.meta.namespace ? ` in namespace ${r.meta.namespace}` : ''}`);
        continue;
      }
      await this.deleteResource(key);
      changes.push(`${label} deleted`);
    }
    await this.reconcileGateways([]);
    writeState(this.layout.stateFile, this.state);
    this.sync();
    return { changes, warnings: [], notFound };
  }

  private async deleteResource(key: string): Promise<void> {
    const r = this.state.resources[key];
    if (!r) return;
    delete this.state.resources[key];
    if ('other' in r) {
      if (isWaypointGateway(r)) await this.reconcileWaypoint(r.meta.namespace, r.meta.name, false, []);
      return;
    }
    const ns = r.meta.namespace;
    if (r.kind === 'Namespace') {
      for (const [k, other] of Object.entries(this.state.resources)) if (other.meta.namespace === r.meta.name) await this.deleteResource(k);
      for (const p of Object.values(this.state.pods)) if (p.namespace === r.meta.name) await this.deletePod(`${p.namespace}/${p.name}`);
    } else if (r.kind === 'Deployment') {
      for (const p of this.ownedPods(ns, r.meta.name, 'Deployment')) await this.deletePod(`${p.namespace}/${p.name}`);
    } else if (r.kind === 'Pod') {
      await this.deletePod(`${ns}/${r.meta.name}`);
    } else if (r.kind === 'Service') {
      delete this.state.services[`${ns}/${r.meta.name}`];
    }
  }

  // -------------------------------------------------------------------------------------------
  // checks that need the cluster (the manifests module checks each document on its own)

  private checkCluster(resources: Resource[]): Diagnostic[] {
    const out: Diagnostic[] = [];
    const diag = (r: Resource, path: string, message: string, severity: Diagnostic['severity'] = 'error') =>
      out.push({ severity, source: r.source, kind: r.kind, namespace: r.meta.namespace || undefined, name: r.meta.name, path, message });
    const incoming = new Set(resources.map(resourceKey));
    const namespaceExists = (ns: string) => ns === 'default' || this.state.resources[`Namespace/${ns}`] !== undefined || incoming.has(`Namespace/${ns}`);
    const saExists = (ns: string, sa: string) => sa === DEFAULT_SA || this.state.resources[`ServiceAccount/${ns}/${sa}`] !== undefined || incoming.has(`ServiceAccount/${ns}/${sa}`);
    const nodes = new Set(this.state.nodes.map((n) => n.name));
    const vips = new Map(Object.entries(this.state.services).map(([k, s]) => [s.vip, k]));
    const podTemplates: { ns: string; labels: Record<string, string> }[] = [
      ...Object.values(this.state.pods).map((p) => ({ ns: p.namespace, labels: p.labels })),
    ];
    for (const r of resources) {
      if (r.kind === 'Pod') podTemplates.push({ ns: r.meta.namespace, labels: r.meta.labels });
      if (r.kind === 'Deployment') podTemplates.push({ ns: r.meta.namespace, labels: (r as DeploymentResource).template.labels });
    }

    for (const r of resources) {
      if (r.meta.namespace && !namespaceExists(r.meta.namespace)) diag(r, 'metadata.namespace', `namespace "${r.meta.namespace}" does not exist (apply a Namespace first, or in the same files)`);
      const spec = r.kind === 'Pod' ? (r as PodResource).spec : r.kind === 'Deployment' ? (r as DeploymentResource).template.spec : undefined;
      const specPath = r.kind === 'Deployment' ? 'spec.template.spec' : 'spec';
      if (spec) {
        if (spec.nodeName !== undefined && !nodes.has(spec.nodeName)) diag(r, `${specPath}.nodeName`, `node "${spec.nodeName}" does not exist (nodes: ${[...nodes].join(', ')})`);
        if (!saExists(r.meta.namespace, spec.serviceAccountName)) diag(r, `${specPath}.serviceAccountName`, `service account "${spec.serviceAccountName}" does not exist in namespace "${r.meta.namespace}"`);
        if (r.kind === 'Deployment' && spec.restartPolicy !== 'Always') diag(r, `${specPath}.restartPolicy`, `must be "Always" in a Deployment, got "${spec.restartPolicy}"`);
        spec.containers.forEach((c, i) => {
          if (!isDirectory(c.cwd)) diag(r, `${specPath}.containers[${i}].workingDir`, `directory "${c.cwd}" does not exist`);
        });
      }
      if (r.kind === 'Pod') {
        const existing = this.state.pods[`${r.meta.namespace}/${r.meta.name}`];
        if (existing?.owner) diag(r, 'metadata.name', `pod ${r.meta.namespace}/${r.meta.name} belongs to deployment ${existing.owner.name}`);
      }
      if (r.kind === 'Service') {
        const svc = r as ServiceResource;
        const key = `${r.meta.namespace}/${r.meta.name}`;
        const current = this.state.services[key];
        const ip = svc.spec.clusterIP;
        if (ip && ip !== 'None') {
          if (!inServiceRange(ip)) diag(r, 'spec.clusterIP', `${ip} is outside the service range ${SERVICE_CIDR}`);
          else if (vips.has(ip) && vips.get(ip) !== key) diag(r, 'spec.clusterIP', `${ip} is already allocated to service ${vips.get(ip)}`);
        }
        if (current && ip && ip !== current.vip) diag(r, 'spec.clusterIP', `field is immutable: the service has ${current.vip}`);
        if (svc.spec.selector && Object.keys(svc.spec.selector).length > 0 && !podTemplates.some((p) => p.ns === r.meta.namespace && matches(svc.spec.selector!, p.labels))) {
          diag(r, 'spec.selector', `selects no pod in namespace "${r.meta.namespace}" (no pod or Deployment template has labels ${JSON.stringify(svc.spec.selector)}); the service has no endpoints until one does`, 'warning');
        }
      }
    }
    return out;
  }

  private commandExists(cmd: string, cwd: string): boolean {
    const executable = (path: string) => {
      try {
        accessSync(path, constants.X_OK);
        return statSync(path).isFile();
      } catch {
        return false;
      }
    };
    if (isAbsolute(cmd)) return executable(cmd);
    if (cmd.includes('/')) return executable(resolve(cwd, cmd));
    return (this.baseEnv.PATH ?? '').split(delimiter).some((dir) => dir && executable(join(dir, cmd)));
  }

  // -------------------------------------------------------------------------------------------
  // service endpoints, node rules, hosts files (src/local/services.ts)

  /** The ready pods of a namespace that a selector selects, by address. */
  private readonly ready: ReadyPods = (namespace, selector) => [...this.pods.values()]
    .filter((p) => p.record.namespace === namespace && p.ready && matches(selector, p.record.labels))
    .sort((a, b) => a.record.ip.localeCompare(b.record.ip, 'en', { numeric: true }));

  private scheduleSync(): void {
    if (this.syncTimer || this.closed) return;
    this.syncTimer = setTimeout(() => {
      this.syncTimer = undefined;
      this.sync();
    }, 10);
  }

  /** Brings every node's service rules and every pod's hosts file in line with the pods' readiness. */
  private sync(): void {
    if (this.closed) return;
    clearTimeout(this.syncTimer);
    this.syncTimer = undefined;
    try {
      const rules = serviceRules(this.state, this.ready);
      for (const node of this.state.nodes) {
        const local = Object.values(this.state.pods).filter((p) => p.node === node.name).map((p) => p.ip);
        this.net.syncServices(node.index, [...rules, ...this.hostPortRules(node.name)], local);
      }
      for (const record of Object.values(this.state.pods)) {
        const key = `${record.namespace}/${record.name}`;
        const text = hostsFile(this.state, this.ready, record);
        if (this.hostsCache.get(key) === text) continue;
        // In place, never by rename: the pod's bind mount holds this very inode.
        writeFileSync(join(this.layout.podDir(record.namespace, record.name), 'hosts'), text);
        this.hostsCache.set(key, text);
      }
      this.writeTargets();
      this.syncError = undefined;
    } catch (err) {
      this.syncError = (err as Error).message;
      this.log.error({ err: this.syncError }, 'service sync failed');
    }
  }

  // -------------------------------------------------------------------------------------------
  // status, exec, shutdown

  async status(): Promise<ClusterStatus> {
    const pods = Object.values(this.state.pods).map((record): PodStatus => {
      const live = this.pods.get(`${record.namespace}/${record.name}`);
      const containers = live?.status() ?? [];
      return {
        namespace: record.namespace,
        name: record.name,
        node: record.node,
        ip: record.ip,
        ips: [record.ip, podAddress6(record.ip)],
        phase: live?.phase ?? 'Pending',
        ready: `${containers.filter((c) => c.ready && c.state === 'running').length}/${record.spec.containers.length}`,
        restarts: live?.restarts ?? 0,
        serviceAccount: record.spec.serviceAccountName,
        createdAt: record.createdAt,
        owner: record.owner ? `deployment/${record.owner.name}` : undefined,
        labels: record.labels,
        meshed: isEnrolled(record.labels, this.namespaceLabels(record.namespace)),
        containers,
      };
    }).sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    const services = servicesOf(this.state).map((svc): ServiceStatus => ({
      namespace: svc.meta.namespace,
      name: svc.meta.name,
      vip: this.state.services[`${svc.meta.namespace}/${svc.meta.name}`]?.vip ?? 'None',
      ports: svc.spec.ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
      endpoints: svc.spec.ports.flatMap((p) => endpoints(svc, p, this.ready).map((e) => `${e.ip}:${e.port}`)).filter((e, i, all) => all.indexOf(e) === i),
    })).sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    const nodes = this.state.nodes.map((n) => ({ name: n.name, ip: n.ip, podCidr: n.podCidr, pods: pods.filter((p) => p.node === n.name).length }));
    const components: ComponentStatus[] = [
      { name: 'runtime', state: 'running', pid: process.pid, detail: `up since ${this.startedAt.toISOString()}` },
      ...await Promise.all(this.components.map(async (c): Promise<ComponentStatus> => {
        const healthy = await c.healthy();
        const nodeIp = this.state.nodes.find((n) => n.name === c.spec.node)?.ip;
        const detail = c.spec.name === 'controller' ? `CA and discovery on ${UNDERLAY_GATEWAY}:${CONTROLLER_PORT}, metrics on :${CONTROLLER_MONITORING_PORT}`
          : c.spec.name === 'prometheus' ? `${this.prometheus?.url ?? ''} (underlay netns), scraping every ${this.state.prometheus?.scrapeInterval ?? '?'}`
          : c.spec.name === 'node-agent' ? `metrics http://${nodeIp ?? '?'}:15020/metrics` : '';
        return {
          name: c.spec.name,
          ...(c.spec.node ? { node: c.spec.node } : {}),
          state: c.pid === undefined ? 'stopped' : healthy ? 'running' : 'degraded',
          ...(c.pid ? { pid: c.pid } : {}),
          detail: c.stopped ? 'stopped on request (ambit local component start runs it again)'
            : `${detail}${c.restarts ? `; ${c.restarts} restarts, last ${c.lastExit ?? ''}` : ''}${healthy ? '' : '; not answering yet'}`,
        };
      })),
      ...this.state.nodes.map((n): ComponentStatus => ({
        name: 'service-proxy',
        node: n.name,
        state: this.syncError ? 'degraded' : 'running',
        detail: this.syncError ?? `${serviceRules(this.state, this.ready).length} service ports in nftables`,
      })),
    ];
    const others = Object.values(this.state.resources)
      .filter((r) => 'other' in r)
      .map((r) => ({ apiVersion: r.apiVersion, kind: r.kind, namespace: r.meta.namespace, name: r.meta.name }));
    let controller: ClusterStatus['controller'];
    try {
      controller = JSON.parse(readFileSync(join(this.layout.stateDir, 'controller-status.json'), 'utf8')) as ClusterStatus['controller'];
    } catch { /* not written yet */ }
    const prometheus = this.prometheus && this.state.prometheus ? { url: this.prometheus.url, netns: `/run/netns/${this.layout.underlayNetns}`, scrapeInterval: this.state.prometheus.scrapeInterval } : undefined;
    const gateways = this.gatewayPlans().map((plan): GatewayStatus => {
      const pod = pods.find((p) => p.namespace === plan.namespace && p.name === plan.name);
      return {
        namespace: plan.namespace, name: plan.name, serviceAccount: plan.serviceAccount, from: plan.from, node: this.gatewayNode.name, address: this.gatewayNode.ip,
        ports: plan.ports, hostPorts: plan.hostPorts, ready: pod !== undefined && pod.phase === 'Running' && pod.ready === `${pod.containers.length}/${pod.containers.length}` && pod.containers.length > 0, errors: plan.errors,
      };
    });
    return { name: this.layout.name, stateDir: this.layout.stateDir, createdAt: this.state.createdAt, nodes, pods, services, components, ...(controller ? { controller } : {}), others, ...(prometheus ? { prometheus } : {}), gateways };
  }

  /** What `ambit local exec` needs to run a command as one of the pod's processes. */
  execTarget(namespace: string, name: string, container?: string): { netns: string; cgroup: string; files: { hosts: string; resolv: string; hostname: string }; env: Record<string, string>; cwd: string } {
    const pod = this.pods.get(`${namespace}/${name}`);
    if (!pod) throw new LocalError(`pod ${namespace}/${name} not found in cluster ${this.layout.name}`, `see \`ambit local status --cluster ${this.layout.name}\``);
    if (pod.stopping) throw new LocalError(`pod ${namespace}/${name} is terminating`);
    const spec = container ? pod.record.spec.containers.find((c) => c.name === container) : pod.record.spec.containers[0];
    if (!spec) throw new LocalError(`pod ${namespace}/${name} has no container "${container}" (containers: ${pod.record.spec.containers.map((c) => c.name).join(', ')})`);
    const hostname = pod.record.spec.hostname ?? pod.record.name;
    return {
      netns: pod.env.netns,
      cgroup: pod.env.cgroup,
      files: { ...pod.env.files, hostname },
      env: { ...this.baseEnv, HOSTNAME: hostname, ...pod.containerEnv(spec) },
      cwd: spec.cwd,
    };
  }

  podLogFile(namespace: string, name: string, container?: string): string {
    const record = this.state.pods[`${namespace}/${name}`];
    if (!record) throw new LocalError(`pod ${namespace}/${name} not found in cluster ${this.layout.name}`);
    const spec = container ? record.spec.containers.find((c) => c.name === container) : record.spec.containers[0];
    if (!spec) throw new LocalError(`pod ${namespace}/${name} has no container "${container}" (containers: ${record.spec.containers.map((c) => c.name).join(', ')})`);
    return this.layout.containerLog(namespace, name, spec.name);
  }

  /** Stops every pod (SIGTERM, then kill after at most `maxGraceMs`); the state stays. */
  async shutdown(maxGraceMs = 10_000): Promise<void> {
    this.closed = true;
    clearTimeout(this.syncTimer);
    await Promise.all([...this.pods.keys()].map((key) => this.stopPod(key, maxGraceMs).catch((err: Error) => this.log.warn({ pod: key, err: err.message }, 'stop failed'))));
    await Promise.all(this.components.map((c) => c.stop().catch((err: Error) => this.log.warn({ component: c.spec.name, err: err.message }, 'stop failed'))));
  }

}

/**
 * Removes a cluster's processes, cgroups, network namespaces and pinned BPF objects, found by
 * name rather than from the state file, so that it also cleans up after a crash.
 */
export async function removeKernelObjects(layout: ClusterLayout): Promise<void> {
  await removeCgroupTree(layout.cgroupRoot);
  for (const ns of listNetns().filter((n) => layout.ownsNetns(n))) deleteNetns(ns);
  // Each node agent's pins first (links detached, not just unpinned), then the rest.
  if (existsSync(layout.pinRoot)) for (const node of readdirSync(layout.pinRoot)) Datapath.remove(join(layout.pinRoot, node));
  Datapath.remove(layout.pinRoot);
}

const ADMIT_TIMEOUT_MS = 15_000;
/** The node agents' drain period (`ambit node --drain-seconds`, not set here: its default). */
const AGENT_DRAIN_MS = 5_000;


/** A TCP connect from inside a netns: does something listen there? */
function tcpReachable(netns: string, host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    let socket: Socket;
    try {
      socket = new Socket({ fd: socketInNetns(netns, 4), readable: true, writable: true });
    } catch {
      return resolve(false);
    }
    const done = (ok: boolean) => { clearTimeout(timer); socket.destroy(); resolve(ok); };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('error', () => done(false));
    socket.connect(port, host, () => done(true));
  });
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** Namespaces and accounts first, then services (VIPs before pods read their hosts), then workloads. */
function orderForApply(resources: Resource[]): Resource[] {
  const rank = (r: Resource) => 'other' in r ? 5 : ({ Namespace: 0, ServiceAccount: 1, Service: 2, Deployment: 3, Pod: 4 } as Record<string, number>)[r.kind] ?? 5;
  return [...resources].sort((a, b) => rank(a) - rank(b));
}
