/**
 * `ambit controller`: the control plane process. Today it runs the mesh CA (src/identity) on
 * 15012; the configuration model and the discovery stream join it on the same port.
 */
import { join } from 'node:path';
import { CertificateAuthority, FileCaStore, readPluginCa } from '../identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../identity/ca-server.js';
import { logger } from '../telemetry/log.js';
import { LocalNodeDirectory, readBootstrapTokens } from './local-source.js';

export interface ControllerOptions {
  /** A local cluster's state directory: CA root under ca/, node tokens, pods from cluster.json. */
  localState: string;
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
  const tokens = readBootstrapTokens(opts.localState);
  log.info({ origin: ca.origin, nodes: Object.keys(tokens) }, 'CA ready');
  const server = await CaServer.start({
    ca,
    authenticator: new BootstrapTokenAuthenticator(tokens),
    directory: new LocalNodeDirectory(join(opts.localState, 'cluster.json'), opts.trustDomain),
    host: opts.host,
    port: opts.port,
    dnsNames: ['ambit-controller'],
    log,
  });
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      log.info({ signal }, 'controller stopping');
      void server.close().then(() => process.exit(0));
    });
  }
  return server;
}
