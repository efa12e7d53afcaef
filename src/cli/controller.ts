/** `ambit controller`: the control plane process (started by the local runtime, or a Deployment). */
import { Command } from 'commander';
import { hostname } from 'node:os';
import { CONTROLLER_MONITORING_PORT, CONTROLLER_READY_PORT, runController, type KubernetesSettings } from '../control/controller.js';
import { localOrigins } from '../local/controller-origins.js';
import { localCanaries } from '../local/canary-cluster.js';
import { MIN_INTERVAL_MS } from '../canary/spec.js';
import { durationMs } from '../config/schema.js';
import { CaError } from '../identity/ca.js';
import { logger } from '../telemetry/log.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { OUTBOUND_TRAFFIC_POLICIES, type OutboundTrafficPolicy } from '../config/model.js';
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

/**
 * The default of --cert-ttl: AMBIT_CERT_TTL when set (how a local cluster's runtime hands its
 * controller a lifetime: `AMBIT_CERT_TTL=900 ambit local up`), else 24 h.
 */
export function defaultCertTtl(env: NodeJS.ProcessEnv): number {
  const value = env.AMBIT_CERT_TTL;
  if (value === undefined || value === '') return 24 * 3600;
  if (!/^\d+$/.test(value) || Number(value) < 60) throw new CliError(`AMBIT_CERT_TTL must be a whole number of seconds, at least 60, got "${value}"`, 'unset it for the default (86400), or give e.g. AMBIT_CERT_TTL=900', 1, 'AMBIT_E_SETTING');
  return Number(value);
}

/**
 * --outbound-traffic-policy, else AMBIT_OUTBOUND_TRAFFIC_POLICY, else ALLOW_ANY: what meshed pods
 * may reach outside the registry (Istio's meshConfig.outboundTrafficPolicy.mode).
 */
export function outboundTrafficPolicy(flag: string | undefined, env: NodeJS.ProcessEnv): OutboundTrafficPolicy {
  const [value, what] = flag !== undefined ? [flag, '--outbound-traffic-policy'] : [env.AMBIT_OUTBOUND_TRAFFIC_POLICY, 'AMBIT_OUTBOUND_TRAFFIC_POLICY'];
  if (value === undefined || value === '') return 'ALLOW_ANY';
  if (!(OUTBOUND_TRAFFIC_POLICIES as readonly string[]).includes(value)) {
    throw new CliError(`${what} must be ${OUTBOUND_TRAFFIC_POLICIES.join(' or ')}, got "${value}"`, 'ALLOW_ANY (the default) lets meshed pods reach any destination; REGISTRY_ONLY only mesh services and ServiceEntries', 1, 'AMBIT_E_SETTING');
  }
  return value as OutboundTrafficPolicy;
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
    .option('--cert-ttl <seconds>', 'default workload certificate lifetime (default: AMBIT_CERT_TTL, else 86400)', seconds('--cert-ttl'))
    .option('--max-cert-ttl <seconds>', 'longest lifetime a caller may ask for', seconds('--max-cert-ttl'), 7 * 24 * 3600)
    .option('--outbound-traffic-policy <mode>', 'ALLOW_ANY: meshed pods reach any destination; REGISTRY_ONLY: only mesh services, workloads and ServiceEntries, the rest refused by the node agents (default: AMBIT_OUTBOUND_TRAFFIC_POLICY, else ALLOW_ANY)')
    .action(async (opts: { localState?: string; kubernetes?: true | string; caDir?: string; configDir?: string; listen: string; health?: string; monitoring?: string; trustDomain: string; pluginCa?: string; certTtl?: number; maxCertTtl: number; outboundTrafficPolicy?: string }) => {
      const meshConfig = { outboundTrafficPolicy: outboundTrafficPolicy(opts.outboundTrafficPolicy, process.env) };
      const { host, port } = hostPort(opts.listen);
      const health = opts.health ? hostPort(opts.health, '--health') : opts.kubernetes ? { host: '0.0.0.0', port: CONTROLLER_READY_PORT } : undefined;
      const monitoring = opts.monitoring ? hostPort(opts.monitoring, '--monitoring') : opts.kubernetes ? { host: '0.0.0.0', port: CONTROLLER_MONITORING_PORT } : undefined;
      if (!opts.localState === !opts.kubernetes) throw new CliError('give one of --local-state DIR (a local cluster) or --kubernetes [KUBECONFIG]');
      if (opts.kubernetes && !opts.pluginCa && !opts.caDir) throw new CliError('with --kubernetes, give --plugin-ca DIR (a CA from a mounted Secret) or --ca-dir DIR (where to keep a self-made root)');
      const controller = await withPluginCaHint(opts.pluginCa, () => runController({
        ...(opts.localState ? { local: { stateDir: opts.localState, origins: localOrigins(opts.localState, opts.trustDomain) }, canaries: localCanaries(opts.localState, { minIntervalMs: canaryMinInterval(process.env) }) } : {}), ...(opts.kubernetes ? { kubernetes: { ...(opts.kubernetes === true ? {} : { kubeconfig: opts.kubernetes }), settings: kubernetesSettingsFromEnv(process.env) } } : {}), ...(opts.caDir ? { caDir: opts.caDir } : {}),
        configDir: opts.configDir, host, port, trustDomain: opts.trustDomain, pluginCaDir: opts.pluginCa,
        defaultTtlSeconds: opts.certTtl ?? defaultCertTtl(process.env), maxTtlSeconds: opts.maxCertTtl, ...(health ? { health } : {}), ...(monitoring ? { monitoring } : {}),
        meshConfig,
      }));
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        process.once(signal, () => {
          logger('controller').info({ signal }, 'controller stopping');
          void controller.close().then(() => process.exit(0));
        });
      }
      await new Promise(() => { /* serves until a signal */ });
    });
}

/**
 * The controller's settings in a Kubernetes cluster, from the environment the install's
 * Deployment gives it (docs/KUBERNETES.md lists each variable); unset ones take the install's
 * defaults.
 */
export function kubernetesSettingsFromEnv(env: NodeJS.ProcessEnv): KubernetesSettings {
  const namespace = env.POD_NAMESPACE || 'ambit-system';
  const managed = env.AMBIT_WAYPOINTS_MANAGED ?? 'true';
  if (managed !== 'true' && managed !== 'false') throw new CliError(`AMBIT_WAYPOINTS_MANAGED must be true or false, got "${managed}"`, 'the install sets it from waypoints.managed', 1, 'AMBIT_E_SETTING');
  const canaries = env.AMBIT_CANARIES ?? 'true';
  if (canaries !== 'true' && canaries !== 'false') throw new CliError(`AMBIT_CANARIES must be true or false, got "${canaries}"`, 'unset it to run Flagger Canaries (the default), or set false to leave them alone', 1, 'AMBIT_E_SETTING');
  const election = env.AMBIT_LEADER_ELECTION ?? '';
  if (election !== '' && election !== 'lease') throw new CliError(`AMBIT_LEADER_ELECTION must be "lease" or unset, got "${election}"`, 'the install sets it to lease for a Deployment of several replicas', 1, 'AMBIT_E_SETTING');
  return {
    namespace,
    ...(env.AMBIT_TOKEN_AUDIENCE ? { tokenAudience: env.AMBIT_TOKEN_AUDIENCE } : {}),
    nodeAgent: { serviceAccount: env.AMBIT_NODE_SERVICE_ACCOUNT || 'ambit-node', daemonSet: env.AMBIT_NODE_DAEMONSET || 'ambit-node' },
    waypoints: { managed: managed === 'true', values: (env.AMBIT_WAYPOINT_VALUES ?? '').split(',').map((x) => x.trim()).filter(Boolean) },
    ...(election === 'lease' ? { leaderElection: { lease: env.AMBIT_LEADER_ELECTION_LEASE || 'ambit-controller', identity: env.POD_NAME || `${hostname()}-${process.pid}` } } : {}),
    ...(env.AMBIT_ROOT_CERT_CONFIGMAP ? { rootCertConfigMap: env.AMBIT_ROOT_CERT_CONFIGMAP } : {}),
    ...(canaries === 'true' ? { canaries: { minIntervalMs: canaryMinInterval(env), ...canaryPrometheus(env) } } : {}),
  };
}

/** AMBIT_CANARY_PROMETHEUS: a Prometheus (http:// or https:// URL) the canary checks query instead of scraping the waypoints. */
function canaryPrometheus(env: NodeJS.ProcessEnv): { prometheus?: string } {
  const text = env.AMBIT_CANARY_PROMETHEUS;
  if (text === undefined || text === '') return {};
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    throw new CliError(`AMBIT_CANARY_PROMETHEUS must be an http:// or https:// URL such as http://prometheus.monitoring:9090, got ${JSON.stringify(text)}`, 'unset it to read the waypoints\' own /metrics instead', 1, 'AMBIT_E_SETTING');
  }
  return { prometheus: text };
}

/** The plug-in CA's files are the operator's: a missing or unusable one is named with what the directory must hold. */
async function withPluginCaHint<T>(dir: string | undefined, start: () => Promise<T>): Promise<T> {
  try {
    return await start();
  } catch (err) {
    if (dir && err instanceof CaError && (err.code === 'FAILED_PRECONDITION' || err.code === 'INVALID_ARGUMENT')) {
      throw new CliError(`--plugin-ca ${dir}: ${err.message}`, 'give the directory of an Istio-style cacerts Secret: root-cert.pem, ca-key.pem, and cert-chain.pem or ca-cert.pem (docs/IDENTITY.md)', 1, 'AMBIT_E_PLUGIN_CA');
    }
    throw err;
  }
}

/**
 * AMBIT_CANARY_MIN_INTERVAL: the shortest `analysis.interval` a Canary may have (a duration;
 * default 10s, Flagger's floor). Lower it to run canaries on compressed time, as the tests do.
 */
export function canaryMinInterval(env: NodeJS.ProcessEnv): number {
  const text = env.AMBIT_CANARY_MIN_INTERVAL;
  if (text === undefined || text === '') return MIN_INTERVAL_MS;
  if (!/^(\d+(\.\d+)?(h|m|s|ms))+$/.test(text) || durationMs(text) < 100) throw new CliError(`AMBIT_CANARY_MIN_INTERVAL must be a duration of at least 100ms such as "10s" or "500ms", got ${JSON.stringify(text)}`, undefined, 1, 'AMBIT_E_SETTING');
  return durationMs(text);
}
