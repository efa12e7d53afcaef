/** `ambit controller`: the control plane process (started by the local runtime, or a Deployment). */
import { Command } from 'commander';
import { CONTROLLER_MONITORING_PORT, CONTROLLER_READY_PORT, runController } from '../control/controller.js';
import { localOrigins } from '../local/controller-origins.js';
import { logger } from '../telemetry/log.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { CliError } from './errors.js';

function hostPort(value: string, flag = '--listen'): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new CliError(`${flag} must be HOST:PORT, got "${value}"`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function seconds(flag: string) {
  return (value: string) => {
    if (!/^\d+$/.test(value) || Number(value) < 60) throw new CliError(`${flag} must be a whole number of seconds, at least 60, got "${value}"`);
    return Number(value);
  };
}

export function register(program: Command): void {
  program.command('controller')
    .description('run the control plane: the mesh CA (gRPC over TLS) on 15012')
    .option('--local-state <dir>', 'a local cluster\'s state directory (CA root, node credentials, pods)')
    .option('--kubernetes [kubeconfig]', 'a Kubernetes cluster instead: config watched from its API server, callers checked by TokenReview (in-cluster or $KUBECONFIG, or this file)')
    .option('--ca-dir <dir>', 'where the self-made CA root is kept without --local-state (e.g. a mounted volume)')
    .option('--config-dir <dir>', 'also read mesh config (and workloads) from the manifests in this directory, watched for changes')
    .option('--listen <host:port>', 'where to serve', '0.0.0.0:15012')
    .option('--health <host:port>', `where GET /healthz/ready and /healthz/live are served (default with --kubernetes: 0.0.0.0:${CONTROLLER_READY_PORT}; otherwise not served)`)
    .option('--monitoring <host:port>', `where GET /metrics (Prometheus) is served (default with --kubernetes: 0.0.0.0:${CONTROLLER_MONITORING_PORT}; otherwise not served)`)
    .option('--trust-domain <domain>', 'SPIFFE trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--plugin-ca <dir>', 'use this CA (root-cert.pem, ca-key.pem, and cert-chain.pem or ca-cert.pem, as Istio\'s cacerts; EC or RSA keys) instead of a self-made root')
    .option('--cert-ttl <seconds>', 'default workload certificate lifetime', seconds('--cert-ttl'), 24 * 3600)
    .option('--max-cert-ttl <seconds>', 'longest lifetime a caller may ask for', seconds('--max-cert-ttl'), 7 * 24 * 3600)
    .action(async (opts: { localState?: string; kubernetes?: true | string; caDir?: string; configDir?: string; listen: string; health?: string; monitoring?: string; trustDomain: string; pluginCa?: string; certTtl: number; maxCertTtl: number }) => {
      const { host, port } = hostPort(opts.listen);
      const health = opts.health ? hostPort(opts.health, '--health') : opts.kubernetes ? { host: '0.0.0.0', port: CONTROLLER_READY_PORT } : undefined;
      const monitoring = opts.monitoring ? hostPort(opts.monitoring, '--monitoring') : opts.kubernetes ? { host: '0.0.0.0', port: CONTROLLER_MONITORING_PORT } : undefined;
      if (!opts.localState === !opts.kubernetes) throw new CliError('give one of --local-state DIR (a local cluster) or --kubernetes [KUBECONFIG]');
      if (opts.kubernetes && !opts.pluginCa && !opts.caDir) throw new CliError('with --kubernetes, give --plugin-ca DIR (a CA from a mounted Secret) or --ca-dir DIR (where to keep a self-made root)');
      const controller = await runController({
        ...(opts.localState ? { local: { stateDir: opts.localState, origins: localOrigins(opts.localState, opts.trustDomain) } } : {}), ...(opts.kubernetes ? { kubernetes: opts.kubernetes } : {}), ...(opts.caDir ? { caDir: opts.caDir } : {}),
        configDir: opts.configDir, host, port, trustDomain: opts.trustDomain, pluginCaDir: opts.pluginCa,
        defaultTtlSeconds: opts.certTtl, maxTtlSeconds: opts.maxCertTtl, ...(health ? { health } : {}), ...(monitoring ? { monitoring } : {}),
      });
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        process.once(signal, () => {
          logger('controller').info({ signal }, 'controller stopping');
          void controller.close().then(() => process.exit(0));
        });
      }
      await new Promise(() => { /* serves until a signal */ });
    });
}
