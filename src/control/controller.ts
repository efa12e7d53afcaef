/**
 * `ambit controller`: the control plane process. On 15012 (gRPC over TLS) it serves the mesh CA
 * (src/identity) and the discovery stream of the mesh model built from its config source; on
 * 15021 its probes (`/healthz/ready`, `/healthz/live`) and on 15014 its Prometheus metrics.
 */
import { renameSync, writeFileSync } from 'node:fs';
import type { Server as HttpServer } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CertificateAuthority, FileCaStore, readPluginCa } from '../identity/ca.js';
import { CaServer } from '../identity/ca-server.js';
import { TokenReviewAuthenticator } from '../identity/tokenreview.js';
import { KubeClient } from '../kube/client.js';
import { KubernetesSource } from './kube-source.js';
import { LeaderElector } from './kube/leader.js';
import { TrustBundlePublisher } from './kube/trust-bundle.js';
import { isWaypointGateway, WaypointReconciler } from './kube/waypoints.js';
import { ingressGatewayReconciler, isIngressGatewayObject } from './kube/gateways.js';
import { kubeCanaries, type KubeCanaryCluster } from './kube/canaries.js';
import { resolveValues, ValuesError } from '../install/values.js';
import { OperatorError } from '../util/errors.js';
import { ControllerMetrics, type ConfigCount } from './metrics.js';
import { logger } from '../telemetry/log.js';
import { HttpError, listenTcp, localServer } from '../util/local-http.js';
import { DiscoveryServer, discoveryService } from '../discovery/discovery.js';
import type { ConfigSource, ControllerOrigins } from '../config/source.js';
import { ManifestDirSource, MergedSource } from './manifest-source.js';
import { formatDiagnostic, type Diagnostic, type Resource } from '../kube/manifests.js';
import { buildModel, DEFAULT_MESH_CONFIG, ISTIO_INGRESS, type MeshConfig } from '../config/model.js';
import { CanaryController, type CanaryControllerOptions } from '../canary/controller.js';
import { cpuProfileFromEnv } from '../telemetry/profile.js';

export interface ControllerOptions {
  /**
   * A local cluster: its state directory (the CA root under ca/, controller-status.json for
   * `ambit local status`) and where config, callers and nodes come from (localOrigins()).
   */
  local?: { stateDir: string; origins: ControllerOrigins };
  /**
   * A Kubernetes cluster instead: config from its API server (KubernetesSource), callers
   * authenticated by TokenReview; `kubeconfig` unset for in-cluster or $KUBECONFIG.
   */
  kubernetes?: { kubeconfig?: string; settings: KubernetesSettings };
  /** Where the self-made CA root is kept when there is no local state (Kubernetes: a mounted volume). */
  caDir?: string;
  /** A directory of manifests watched for mesh config (and workloads), merged over the local cluster's. */
  configDir?: string;
  host: string;
  port: number;
  trustDomain: string;
  pluginCaDir?: string;
  defaultTtlSeconds?: number;
  maxTtlSeconds?: number;
  /** Where `GET /healthz/ready` and `GET /healthz/live` are served (Kubernetes: 0.0.0.0:15021); none when unset. */
  health?: { host: string; port: number };
  /** Where `GET /metrics` is served (Kubernetes: 0.0.0.0:15014, as istiod); none when unset. */
  monitoring?: { host: string; port: number };
  /** Runs Flagger Canaries (src/canary): where the cluster, its metrics and webhooks are. */
  canaries?: CanaryControllerOptions;
  /** The mesh-wide settings streamed to node agents (outboundTrafficPolicy; default ALLOW_ANY). */
  meshConfig?: MeshConfig;
}

/**
 * What the controller needs to know about its place in a Kubernetes cluster. The install's
 * Deployment sets them as environment variables, which `ambit controller` reads
 * (kubernetesSettingsFromEnv, src/cli/controller.ts); docs/KUBERNETES.md lists them.
 */
export interface KubernetesSettings {
  /** The controller's own namespace (POD_NAMESPACE). */
  namespace: string;
  /** The audience of the projected tokens callers present (AMBIT_TOKEN_AUDIENCE); any audience the API server accepts when unset. */
  tokenAudience?: string;
  /** The node agents' ServiceAccount and DaemonSet in that namespace (AMBIT_NODE_SERVICE_ACCOUNT, AMBIT_NODE_DAEMONSET). */
  nodeAgent: { serviceAccount: string; daemonSet: string };
  /** Whether the controller runs the waypoints' Deployments (AMBIT_WAYPOINTS_MANAGED), and the install's values for them (AMBIT_WAYPOINT_VALUES, `key=value` as `--set` takes them). */
  waypoints: { managed: boolean; values: string[] };
  /** Lease-based leader election among replicas (AMBIT_LEADER_ELECTION=lease): the Lease (AMBIT_LEADER_ELECTION_LEASE) and this replica's name (POD_NAME). */
  leaderElection?: { lease: string; identity: string };
  /** The ConfigMap the trust bundle is published in, in the controller's namespace and every waypoint's (AMBIT_ROOT_CERT_CONFIGMAP). */
  rootCertConfigMap?: string;
  /**
   * Run Flagger Canaries (AMBIT_CANARIES, default on; unset here: off), by the leader only: the
   * floor of `analysis.interval` (AMBIT_CANARY_MIN_INTERVAL) and a Prometheus to read the checks
   * from instead of the waypoints' /metrics (AMBIT_CANARY_PROMETHEUS).
   */
  canaries?: { minIntervalMs?: number; prometheus?: string };
}

export const CONTROLLER_READY_PORT = 15021;
export const CONTROLLER_MONITORING_PORT = 15014;

/** A running controller. */
export interface Controller {
  server: CaServer;
  metrics: ControllerMetrics;
  /** The health and metrics servers' ports as bound (port 0 in the options picks one). */
  healthPort?: number;
  monitoringPort?: number;
  /** Stops watching, serving and leading. */
  close(): Promise<void>;
}

/** Where config, callers and nodes come from: the local cluster's state, or a Kubernetes API server. */
async function origins(opts: ControllerOptions, log: ReturnType<typeof logger>, metrics: ControllerMetrics): Promise<ControllerOrigins & { client?: KubeClient; kube?: KubernetesSource }> {
  if (opts.kubernetes) {
    const { kubeconfig, settings } = opts.kubernetes;
    const client = KubeClient.fromFile(kubeconfig);
    const kube = new KubernetesSource(client, { log });
    // The install's projected tokens are for its audience; the node agents run as its
    // ServiceAccount in the controller's own namespace.
    const audience = settings.tokenAudience;
    const authenticator = new TokenReviewAuthenticator({
      client, trustDomain: opts.trustDomain, isWaypoint: (ns, name) => kube.isWaypoint(ns, name),
      nodeAgent: { namespace: settings.namespace, ...settings.nodeAgent },
      cachedPod: (ns, name) => kube.cachedPod(ns, name),
      onReview: (outcome) => metrics.review(outcome),
      ...(audience ? { audiences: [audience] } : {}),
    });
    return { source: kube, authenticator, directory: kube.nodeDirectory(opts.trustDomain), describe: { source: 'kubernetes', server: client.server }, client, kube };
  }
  if (!opts.local) throw new Error('the controller needs a local cluster\'s state directory or a Kubernetes cluster');
  return opts.local.origins;
}

/**
 * In Kubernetes mode, the controller runs the waypoints' Deployments itself unless told not to
 * (the install's `waypoints.managed=false`, which also leaves out the RBAC for it), with the
 * install's values the waypoint template needs; their namespace defaults to the controller's.
 */
function waypointValues(settings: KubernetesSettings, trustDomain: string): ReturnType<typeof resolveValues> | undefined {
  if (!settings.waypoints.managed) return undefined;
  const sets = [...settings.waypoints.values];
  if (!sets.some((x) => x.startsWith('namespace='))) sets.unshift(`namespace=${settings.namespace}`);
  sets.push(`trustDomain=${trustDomain}`);
  // Checked when the controller starts, not when it first leads: a bad value names itself at once.
  try {
    return resolveValues(sets);
  } catch (err) {
    if (err instanceof ValuesError) throw new OperatorError(`AMBIT_WAYPOINT_VALUES: ${err.message}`, 'the install sets it from its values (waypoint.*, image, namespace); render the install again', 1, 'AMBIT_E_SETTING');
    throw err;
  }
}

/**
 * What only one replica may do in a Kubernetes cluster: write status conditions, run the
 * waypoints' objects, publish the trust bundle and step the Canaries (two replicas stepping one
 * canary would fight over its weights and status). With AMBIT_LEADER_ELECTION=lease (the
 * install's Deployment) the replica holding the Lease AMBIT_LEADER_ELECTION_LEASE in
 * POD_NAMESPACE does; otherwise this replica is the only one and always does.
 */
class LeaderDuties {
  private waypoints?: WaypointReconciler;
  /** Deployments of Gateways of class ambit/istio (src/control/kube/gateways.ts). */
  private ingress?: WaypointReconciler;
  private bundle?: TrustBundlePublisher;
  private canaries?: { controller: CanaryController; cluster: KubeCanaryCluster };
  /** The canary loop being stopped: its pass in flight, which close() waits for. */
  private canariesStopping?: Promise<void>;
  private gateways: Record<string, unknown>[] = [];
  private readonly elector?: LeaderElector;
  private readonly namespace: string;

  private readonly waypointValues?: ReturnType<typeof resolveValues>;

  constructor(private readonly client: KubeClient, private readonly kube: KubernetesSource, private readonly ca: CertificateAuthority, private readonly settings: KubernetesSettings, trustDomain: string, private readonly log: ReturnType<typeof logger>, private readonly metrics: ControllerMetrics) {
    this.waypointValues = waypointValues(settings, trustDomain);
    this.namespace = settings.namespace;
    if (settings.leaderElection) {
      this.elector = new LeaderElector(client, {
        namespace: this.namespace,
        name: settings.leaderElection.lease,
        identity: settings.leaderElection.identity,
        log,
        onStartedLeading: () => this.lead(),
        onStoppedLeading: () => this.follow(),
      });
    }
  }

  start(): void {
    if (this.elector) {
      this.kube.setStatusWriter(false);
      this.elector.start();
    } else this.lead();
  }

  /** The Gateways of class ambit-waypoint, ambit and istio as of the latest snapshot. */
  update(gateways: Record<string, unknown>[]): void {
    this.gateways = gateways;
    void this.waypoints?.reconcile(gateways);
    void this.ingress?.reconcile(gateways);
    void this.bundle?.publish(this.bundleNamespaces());
  }

  async stop(): Promise<void> {
    this.follow();
    await Promise.all([this.elector?.stop(), this.canariesStopping]);
  }

  private bundleNamespaces(): Set<string> {
    const namespaces = new Set([this.namespace]);
    // Istio's default ingress gateway (the install's ingressGateway.enabled) mounts the roots there.
    if (this.kube.isWaypoint(ISTIO_INGRESS.namespace, ISTIO_INGRESS.serviceAccount)) namespaces.add(ISTIO_INGRESS.namespace);
    for (const g of this.gateways) {
      const ns = (g.metadata as { namespace?: unknown } | undefined)?.namespace;
      if (typeof ns === 'string') namespaces.add(ns);
    }
    return namespaces;
  }

  private lead(): void {
    this.metrics.setLeader(true);
    this.kube.setStatusWriter(true);
    this.waypoints = this.waypointValues ? new WaypointReconciler(this.client, { values: this.waypointValues, log: this.log }) : undefined;
    this.ingress = this.waypointValues ? ingressGatewayReconciler(this.client, { values: this.waypointValues, log: this.log.child({ component: 'ingress-gateways' }) }) : undefined;
    const configMap = this.settings.rootCertConfigMap;
    if (configMap) this.bundle = new TrustBundlePublisher(this.client, { name: configMap, roots: () => this.ca.trustBundle(), log: this.log });
    const canaries = this.settings.canaries;
    if (canaries && !this.canaries) {
      const options = kubeCanaries(this.client, { ...canaries, log: this.log.child({ component: 'canary' }) });
      this.canaries = { controller: new CanaryController(options), cluster: options.cluster };
      this.canaries.controller.start();
    }
    this.update(this.gateways);
  }

  private follow(): void {
    this.metrics.setLeader(false);
    if (this.elector) this.kube.setStatusWriter(false);
    this.waypoints?.stop();
    this.ingress?.stop();
    this.bundle?.stop();
    this.waypoints = undefined;
    this.ingress = undefined;
    this.bundle = undefined;
    if (this.canaries) {
      // Writes refused at once, so a step in flight stops where it is; a new leader starts afresh.
      this.canaries.cluster.close();
      this.canariesStopping = this.canaries.controller.stop();
      this.canaries = undefined;
    }
  }
}

/**
 * `GET /healthz/ready`: 200 once `ready` gives no reason not to be (the first config snapshot
 * turned into a model). `GET /healthz/live`: 200 whenever this event loop answers. A liveness
 * failure restarts the container, so it depends on nothing outside the process: an API server
 * that is away is no reason to restart (the controller keeps serving its last model).
 */
function serveHealth(health: { host: string; port: number }, ready: () => string | undefined, log: Logger): Promise<HttpServer> {
  const server = localServer({ name: 'health', log }, (req, res) => {
    if (req.path !== '/healthz/ready' && req.path !== '/healthz/live') throw new HttpError(404, 'not found: try /healthz/ready or /healthz/live');
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} not allowed: GET ${req.path}`);
    if (req.path === '/healthz/live') return void res.writeHead(200).end('alive\n');
    const why = ready();
    if (why) res.writeHead(503).end(`not ready: ${why}\n`);
    else res.writeHead(200).end('ready\n');
  });
  return listenTcp(server, health.port, health.host);
}

/** `GET /metrics`: the controller's Prometheus metrics (ControllerMetrics). */
function serveMetrics(at: { host: string; port: number }, metrics: ControllerMetrics, log: Logger): Promise<HttpServer> {
  const server = localServer({ name: 'metrics', log }, async (req, res) => {
    if (req.path !== '/metrics') throw new HttpError(404, 'not found: try /metrics');
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} not allowed: GET /metrics`);
    const text = await metrics.text();
    res.writeHead(200, { 'content-type': metrics.contentType }).end(text);
  });
  return listenTcp(server, at.port, at.host);
}

/**
 * Config objects per kind: those in the snapshot (accepted; pods are counted as workloads) and
 * those rejected by validation, each object once however many errors it has.
 */
export function configCounts(resources: readonly Resource[], diagnostics: readonly Diagnostic[]): ConfigCount[] {
  const byKind = new Map<string, ConfigCount>();
  const of = (kind: string): ConfigCount => {
    let c = byKind.get(kind);
    if (!c) byKind.set(kind, c = { kind, accepted: 0, rejected: 0 });
    return c;
  };
  for (const r of resources) if (r.kind !== 'Pod') of(r.kind).accepted++;
  const seen = new Set<string>();
  for (const d of diagnostics) {
    if (d.severity !== 'error') continue;
    // A document that could not be read has no kind or name: it counts once per file and document.
    const key = d.kind && d.name ? `${d.kind}/${d.namespace ?? ''}/${d.name}` : `${d.source.file}#${d.source.doc}`;
    if (seen.has(key)) continue;
    seen.add(key);
    of(d.kind ?? 'unknown').rejected++;
  }
  return [...byKind.values()].sort((a, b) => a.kind.localeCompare(b.kind));
}

export async function runController(opts: ControllerOptions): Promise<Controller> {
  const log = logger('controller');
  const metrics = new ControllerMetrics();
  const caOpts = { trustDomain: opts.trustDomain, defaultTtlSeconds: opts.defaultTtlSeconds, maxTtlSeconds: opts.maxTtlSeconds };
  const caDir = opts.caDir ?? (opts.local ? join(opts.local.stateDir, 'ca') : undefined);
  if (!opts.pluginCaDir && !caDir) throw new Error('the controller needs a CA: a plug-in CA directory, or a directory to keep its own root in');
  const ca = opts.pluginCaDir
    ? await CertificateAuthority.open({ plugin: readPluginCa(opts.pluginCaDir) }, caOpts)
    : await CertificateAuthority.open({ store: new FileCaStore(caDir!) }, caOpts);
  metrics.setRoot(ca.trustBundle()[0]!);
  const { source: primary, authenticator, directory, describe, client, kube } = await origins(opts, log, metrics);
  const duties = client && kube && opts.kubernetes ? new LeaderDuties(client, kube, ca, opts.kubernetes.settings, opts.trustDomain, log, metrics) : undefined;
  let modelled = false;
  log.info({ origin: ca.origin, ...describe }, 'CA ready');
  const discovery = new DiscoveryServer(authenticator, log, { observer: metrics });
  metrics.watchStreams(() => discovery.status());
  // `ambit local status` shows the subscribers, their versions and any NACK from this file.
  const statusFile = opts.local ? join(opts.local.stateDir, 'controller-status.json') : undefined;
  let rejected: string[] = [];
  let dirDiagnostics: Diagnostic[] = [];
  const writeStatus = () => {
    if (!statusFile) return;
    const tmp = `${statusFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ version: discovery.version, subscribers: discovery.status(), rejected })}\n`);
    renameSync(tmp, statusFile);
  };
  discovery.onStatus = writeStatus;
  let source: ConfigSource = primary;
  if (opts.configDir) {
    const dir = new ManifestDirSource(opts.configDir, {
      onDiagnostics: (diagnostics) => {
        dirDiagnostics = diagnostics;
        rejected = diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic);
        for (const d of diagnostics) log[d.severity === 'error' ? 'error' : 'warn']({ dir: opts.configDir }, formatDiagnostic(d));
      },
    });
    source = new MergedSource([primary, dir]);
  }
  source.start((snapshot) => {
    const model = buildModel(snapshot, opts.trustDomain, undefined, opts.meshConfig ?? DEFAULT_MESH_CONFIG);
    discovery.update(model);
    writeStatus();
    metrics.setModel({ services: model.services.length, workloads: model.workloads.length }, configCounts(snapshot.resources, [...(kube?.diagnostics() ?? []), ...dirDiagnostics]));
    // Only the API server's Gateways: one from the manifest directory has no object to own ours.
    duties?.update(snapshot.resources.filter((r) => r.source.file.startsWith('kubernetes:') && (isWaypointGateway(r.raw) || isIngressGatewayObject(r.raw))).map((r) => r.raw));
    modelled = true;
    log.info({ version: discovery.version, workloads: model.workloads.length, services: model.services.length, policies: model.policies.length, l7: model.l7.length }, 'model updated');
  });
  const server = await CaServer.start({
    ca,
    authenticator,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    directory,
    host: opts.host,
    port: opts.port,
    dnsNames: ['ambit-controller'],
    log,
    onCertificate: (outcome) => metrics.certificate(outcome),
  });
  // Without leader election this replica is the only one: it leads (LeaderDuties tells otherwise).
  metrics.setLeader(!duties || !opts.kubernetes?.settings.leaderElection);
  duties?.start();
  const canaries = opts.canaries ? new CanaryController({ ...opts.canaries, log: opts.canaries.log ?? log.child({ component: 'canary' }) }) : undefined;
  canaries?.start();
  // Served once the CA serves: readiness waits only for the first model.
  const health = opts.health ? await serveHealth(opts.health, () => (modelled ? undefined : 'no config snapshot from the source yet'), log) : undefined;
  const monitoring = opts.monitoring ? await serveMetrics(opts.monitoring, metrics, log) : undefined;
  const portOf = (s: HttpServer | undefined) => {
    const a = s?.address();
    return a && typeof a === 'object' ? a.port : undefined;
  };
  const healthPort = portOf(health);
  const monitoringPort = portOf(monitoring);
  // AMBIT_CPU_PROFILE_DIR: a V8 CPU profile of the controller, from now until it closes (benches, issue hunts at scale).
  const profiler = await cpuProfileFromEnv('controller');
  return {
    server, metrics,
    ...(healthPort !== undefined ? { healthPort } : {}),
    ...(monitoringPort !== undefined ? { monitoringPort } : {}),
    async close() {
      source.stop();
      health?.close();
      monitoring?.close();
      await Promise.all([duties?.stop(), canaries?.stop(), server.close()]);
      if (profiler) log.info({ profile: await profiler.stop() }, 'CPU profile written');
    },
  };
}
