/**
 * `ambit controller`: the control plane process. On 15012 (gRPC over TLS) it serves the mesh CA
 * (src/identity) and the discovery stream of the mesh model built from its config source.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CertificateAuthority, FileCaStore, readPluginCa } from '../identity/ca.js';
import { CaServer, type Authenticator, type NodeDirectory } from '../identity/ca-server.js';
import { TokenReviewAuthenticator } from '../identity/tokenreview.js';
import { KubeClient } from './kube/client.js';
import { KubernetesSource } from './kube-source.js';
import { isWaypointGateway, WaypointReconciler } from './kube/waypoints.js';
import { resolveValues, ValuesError } from '../install/values.js';
import { logger } from '../telemetry/log.js';
import { DiscoveryServer, discoveryService } from './discovery.js';
import { LocalClusterSource, LocalCredentials, LocalNodeDirectory, type ConfigSource } from './local-source.js';
import { ManifestDirSource, MergedSource } from './manifest-source.js';
import { formatDiagnostic } from '../local/manifests.js';
import { buildModel } from './model.js';

export interface ControllerOptions {
  /** A local cluster's state directory: CA root under ca/, node tokens, pods from cluster.json. */
  localState?: string;
  /**
   * A Kubernetes cluster instead: config from its API server (KubernetesSource), callers
   * authenticated by TokenReview. `true` for in-cluster or $KUBECONFIG, or a kubeconfig file.
   */
  kubernetes?: true | string;
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
}

/** Where config, callers and nodes come from: the local cluster's state, or a Kubernetes API server. */
async function origins(opts: ControllerOptions, log: ReturnType<typeof logger>): Promise<{ source: ConfigSource; authenticator: Authenticator; directory: NodeDirectory; describe: Record<string, unknown>; client?: KubeClient }> {
  if (opts.kubernetes) {
    const client = KubeClient.fromFile(opts.kubernetes === true ? undefined : opts.kubernetes);
    const kube = new KubernetesSource(client, { log });
    const authenticator = new TokenReviewAuthenticator({ client, trustDomain: opts.trustDomain, isWaypoint: (ns, name) => kube.isWaypoint(ns, name) });
    return { source: kube, authenticator, directory: kube.nodeDirectory(opts.trustDomain), describe: { source: 'kubernetes', server: client.server }, client };
  }
  if (!opts.localState) throw new Error('the controller needs a local cluster\'s state directory or a Kubernetes cluster');
  const authenticator = new LocalCredentials(opts.localState, opts.trustDomain);
  return {
    source: new LocalClusterSource(join(opts.localState, 'cluster.json')), authenticator,
    directory: new LocalNodeDirectory(join(opts.localState, 'cluster.json'), opts.trustDomain), describe: { source: 'local', nodes: authenticator.nodes },
  };
}

/**
 * In Kubernetes mode, the controller runs the waypoints' Deployments itself unless
 * AMBIT_WAYPOINTS_MANAGED=false (the install's `waypoints.managed=false`, which also leaves out
 * the RBAC for it). AMBIT_WAYPOINT_VALUES holds the install's values the waypoint template needs
 * (`key=value`, comma-separated, as `--set` takes them); its namespace defaults to POD_NAMESPACE.
 */
function waypointReconciler(client: KubeClient | undefined, opts: ControllerOptions, log: ReturnType<typeof logger>): WaypointReconciler | undefined {
  if (!client || process.env.AMBIT_WAYPOINTS_MANAGED === 'false') return undefined;
  const sets = (process.env.AMBIT_WAYPOINT_VALUES ?? '').split(',').map((x) => x.trim()).filter(Boolean);
  if (process.env.POD_NAMESPACE && !sets.some((x) => x.startsWith('namespace='))) sets.unshift(`namespace=${process.env.POD_NAMESPACE}`);
  sets.push(`trustDomain=${opts.trustDomain}`);
  try {
    return new WaypointReconciler(client, { values: resolveValues(sets), log });
  } catch (err) {
    if (err instanceof ValuesError) throw new Error(`AMBIT_WAYPOINT_VALUES: ${err.message}`);
    throw err;
  }
}

export async function runController(opts: ControllerOptions): Promise<CaServer> {
  const log = logger('controller');
  const caOpts = { trustDomain: opts.trustDomain, defaultTtlSeconds: opts.defaultTtlSeconds, maxTtlSeconds: opts.maxTtlSeconds };
  const caDir = opts.caDir ?? (opts.localState ? join(opts.localState, 'ca') : undefined);
  if (!opts.pluginCaDir && !caDir) throw new Error('the controller needs a CA: a plug-in CA directory, or a directory to keep its own root in');
  const ca = opts.pluginCaDir
    ? await CertificateAuthority.open({ plugin: readPluginCa(opts.pluginCaDir) }, caOpts)
    : await CertificateAuthority.open({ store: new FileCaStore(caDir!) }, caOpts);
  const { source: primary, authenticator, directory, describe, client } = await origins(opts, log);
  const waypoints = waypointReconciler(client, opts, log);
  log.info({ origin: ca.origin, ...describe }, 'CA ready');
  const discovery = new DiscoveryServer(authenticator, log);
  // `ambit local status` shows the subscribers, their versions and any NACK from this file.
  const statusFile = opts.localState ? join(opts.localState, 'controller-status.json') : undefined;
  let rejected: string[] = [];
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
        rejected = diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic);
        for (const d of diagnostics) log[d.severity === 'error' ? 'error' : 'warn']({ dir: opts.configDir }, formatDiagnostic(d));
      },
    });
    source = new MergedSource([primary, dir]);
  }
  source.start((snapshot) => {
    const model = buildModel(snapshot, opts.trustDomain);
    discovery.update(model);
    writeStatus();
    // Only the API server's Gateways: one from the manifest directory has no object to own ours.
    void waypoints?.reconcile(snapshot.resources.filter((r) => r.source.file.startsWith('kubernetes:') && isWaypointGateway(r.raw)).map((r) => r.raw));
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
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      log.info({ signal }, 'controller stopping');
      source.stop();
      waypoints?.stop();
      void server.close().then(() => process.exit(0));
    });
  }
  return server;
}
