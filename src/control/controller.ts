/**
 * `ambit controller`: the control plane process. On 15012 (gRPC over TLS) it serves the mesh CA
 * (src/identity) and the discovery stream of the mesh model built from its config source.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CertificateAuthority, FileCaStore, readPluginCa } from '../identity/ca.js';
import { CaServer } from '../identity/ca-server.js';
import { logger } from '../telemetry/log.js';
import { DiscoveryServer, discoveryService } from './discovery.js';
import { LocalClusterSource, LocalCredentials, LocalNodeDirectory, type ConfigSource } from './local-source.js';
import { ManifestDirSource, MergedSource } from './manifest-source.js';
import { formatDiagnostic } from '../local/manifests.js';
import { buildModel } from './model.js';

export interface ControllerOptions {
  /** A local cluster's state directory: CA root under ca/, node tokens, pods from cluster.json. */
  localState: string;
  /** A directory of manifests watched for mesh config (and workloads), merged over the local cluster's. */
  configDir?: string;
  host: string;
  port: number;
  trustDomain: string;
  pluginCaDir?: string;
  defaultTtlSeconds?: number;
  maxTtlSeconds?: number;
}

export async function runController(opts: ControllerOptions): Promise<CaServer> {
  const log = logger('controller');
  const caOpts = { trustDomain: opts.trustDomain, defaultTtlSeconds: opts.defaultTtlSeconds, maxTtlSeconds: opts.maxTtlSeconds };
  const ca = opts.pluginCaDir
    ? await CertificateAuthority.open({ plugin: readPluginCa(opts.pluginCaDir) }, caOpts)
    : await CertificateAuthority.open({ store: new FileCaStore(join(opts.localState, 'ca')) }, caOpts);
  const authenticator = new LocalCredentials(opts.localState, opts.trustDomain);
  log.info({ origin: ca.origin, nodes: authenticator.nodes }, 'CA ready');
  const discovery = new DiscoveryServer(authenticator, log);
  // `ambit local status` shows the subscribers, their versions and any NACK from this file.
  const statusFile = join(opts.localState, 'controller-status.json');
  let rejected: string[] = [];
  const writeStatus = () => {
    const tmp = `${statusFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ version: discovery.version, subscribers: discovery.status(), rejected })}\n`);
    renameSync(tmp, statusFile);
  };
  discovery.onStatus = writeStatus;
  const local = new LocalClusterSource(join(opts.localState, 'cluster.json'));
  let source: ConfigSource = local;
  if (opts.configDir) {
    const dir = new ManifestDirSource(opts.configDir, {
      onDiagnostics: (diagnostics) => {
        rejected = diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic);
        for (const d of diagnostics) log[d.severity === 'error' ? 'error' : 'warn']({ dir: opts.configDir }, formatDiagnostic(d));
      },
    });
    source = new MergedSource([local, dir]);
  }
  source.start((snapshot) => {
    const model = buildModel(snapshot, opts.trustDomain);
    discovery.update(model);
    writeStatus();
    log.info({ version: discovery.version, workloads: model.workloads.length, services: model.services.length, policies: model.policies.length, l7: model.l7.length }, 'model updated');
  });
  const server = await CaServer.start({
    ca,
    authenticator,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    directory: new LocalNodeDirectory(join(opts.localState, 'cluster.json'), opts.trustDomain),
    host: opts.host,
    port: opts.port,
    dnsNames: ['ambit-controller'],
    log,
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      log.info({ signal }, 'controller stopping');
      source.stop();
      void server.close().then(() => process.exit(0));
    });
  }
  return server;
}
