/** `ambit node`: the node agent process (the local runtime starts one per node; Kubernetes, a DaemonSet). */
import { existsSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { Command } from 'commander';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { ClusterLayout, netnsPath } from '../local/layout.js';
import { ADMIN_PORT } from '../node/admin.js';
import { startNodeApp } from '../node/app.js';
import { HEALTH_PORT, METRICS_PORT, type PodLocator } from '../node/agent.js';
import { HboneLimitsError, parseHboneLimits, type HboneLimits } from '../hbone/limits.js';
import { CLEANUP_DEFAULTS, cleanupNode } from '../node/uninstall.js';
import { CliError } from './errors.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];

function hostPort(flag: string, value: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new CliError(`${flag} must be HOST:PORT, got "${value}"`);
  return { host: m[1]!, port: Number(m[2]) };
}

/** `--hbone-limits` (or AMBIT_HBONE_LIMITS), checked here so a typo stops the agent with the name of what was wrong. */
function flagHboneLimits(text: string | undefined): Partial<HboneLimits> | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  try {
    return parseHboneLimits(text);
  } catch (err) {
    if (err instanceof HboneLimitsError) throw new CliError(`--hbone-limits: ${err.message}`);
    throw err;
  }
}

function port(flag: string, value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > 65535) throw new CliError(`${flag} must be a port 1-65535, got "${value}"`);
  return n;
}

/** Pods of a local cluster: netns and cgroup by the cluster's naming. */
function localLocator(layout: ClusterLayout): PodLocator {
  return {
    locate: (w) => ({ netnsPath: netnsPath(layout.podNetns(w.namespace, w.name)), cgroupPath: layout.podCgroup(w.node, w.namespace, w.name) }),
  };
}

interface NodeOpts {
  node: string; controller: string; tokenFile: string; caFile: string; cluster?: string; pinRoot?: string; cgroup?: string;
  probeCgroup?: string[]; controlSocket?: string; admin: string; telemetryHost: string; metricsPort: string; healthPort: string;
  rootNamespace: string; drainSeconds: string; hboneLimits?: string;
  // Kubernetes mode
  kubernetes?: true | string; hostProc: string; cgroupRoot?: string; daemonset: string; trustDomain: string;
  cniSocket?: string; cniBinary?: string; cniBinDir: string; cniConfDir: string; cniPrimary?: string;
}

interface CleanupOpts { pinRoot: string; cniBinDir: string; cniConfDir: string; socketDir: string; hostRoot?: string }

/** A CNI plugin type as `--cni-primary` takes it: an executable's name in the CNI bin dir. */
const PLUGIN_TYPE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function register(program: Command): void {
  const node = program.command('node')
    .description('run the node agent: eBPF redirection, HBONE mTLS, L4 policy, metrics (one per node)')
    // Checked in the action rather than as required options: commander would require them of `node cleanup` too.
    .option('--node <name>', 'this node\'s name (required)')
    .option('--controller <host:port>', 'the controller (CA and discovery) (required)')
    .option('--token-file <file>', 'this node\'s credential for the controller (required)')
    .option('--ca-file <file>', 'PEM roots that verify the controller (the mesh trust bundle) (required)')
    .option('--cluster <name>', 'a local cluster: pods, cgroups and pins by its layout')
    .option('--kubernetes [kubeconfig]', 'a Kubernetes node: pods found through /proc by their IPs; at SIGTERM, uninstall told from restart by the DaemonSet (in-cluster or $KUBECONFIG, or this file)')
    .option('--host-proc <dir>', 'the host\'s proc filesystem (Kubernetes mode)', process.env.AMBIT_HOST_PROC ?? '/proc')
    .option('--cgroup-root <dir>', 'the cgroup2 mount the pods\' cgroup paths are relative to (Kubernetes mode; default: this process\'s cgroup2 mount)')
    .option('--daemonset <name>', 'this agent\'s DaemonSet in $POD_NAMESPACE (Kubernetes mode)', 'ambit-node')
    .option('--cni-socket <path>', 'answer the ambit-cni plugin here: pods enrolled before their containers start (Kubernetes mode)')
    .option('--cni-binary <file>', 'with --cni-socket: install this ambit-cni plugin on the host and chain it after the primary CNI (removed on uninstall)')
    .option('--cni-bin-dir <dir>', 'the host\'s CNI plugin directory, as mounted here', '/host/opt/cni/bin')
    .option('--cni-conf-dir <dir>', 'the host\'s CNI config directory, as mounted here', '/host/etc/cni/net.d')
    .option('--cni-primary <type>', 'with --cni-binary: chain only into the config whose first plugin has this type (cilium-cni, calico, aws-cni, flannel, ptp...; alternatives comma-separated: gke,ptp), nothing until it exists; "auto" or unset: the runtime\'s first config')
    .option('--trust-domain <domain>', 'SPIFFE trust domain (the identities of pods the CNI plugin hands over)', DEFAULT_TRUST_DOMAIN)
    .option('--pin-root <dir>', 'bpffs directory for this agent\'s pins (default: the local cluster\'s)')
    .option('--cgroup <dir>', 'the cgroup holding this node\'s pods (default: the local cluster\'s)')
    .option('--probe-cgroup <dir>', 'the cgroup of the node\'s health prober (the kubelet): only its connections to pods skip STRICT and policy; repeatable', collect)
    .option('--control-socket <path>', 'unix socket where the runtime asks whether a pod is enrolled')
    .option('--admin <host:port>', 'admin endpoint', `127.0.0.1:${ADMIN_PORT}`)
    .option('--telemetry-host <host>', 'where /metrics and /healthz/ready, /healthz/check listen', '0.0.0.0')
    .option('--metrics-port <port>', 'the /metrics port', String(METRICS_PORT))
    .option('--health-port <port>', 'the /healthz/ready and /healthz/check port', String(HEALTH_PORT))
    .option('--root-namespace <ns>', 'Istio root namespace (mesh-wide policy)', 'istio-system')
    .option('--drain-seconds <n>', 'how long connections of a pod leaving the mesh may take to finish', '5')
    .option('--hbone-limits <list>', 'HBONE limits over the defaults, NAME=VALUE comma-separated (maxStreamsPerPeer=1024,streamWindow=512Ki; docs/DATAPATH.md)', process.env.AMBIT_HBONE_LIMITS)
    .action(async (opts: NodeOpts) => {
      for (const [flag, value] of [['--node <name>', opts.node], ['--controller <host:port>', opts.controller], ['--token-file <file>', opts.tokenFile], ['--ca-file <file>', opts.caFile]] as const) {
        if (!value) throw new CliError(`required option '${flag}' not specified`);
      }
      if (opts.cniPrimary === 'auto') opts.cniPrimary = undefined;
      if (opts.cniPrimary !== undefined && !opts.cniPrimary.split(',').every((t) => PLUGIN_TYPE.test(t))) throw new CliError(`--cni-primary must be a CNI plugin type (its executable's name, e.g. cilium-cni, calico, aws-cni, flannel, ptp) or "auto", got "${opts.cniPrimary}"`);
      if (opts.cniPrimary?.split(',').includes('ambit-cni')) throw new CliError('--cni-primary names the plugin ambit chains after, not ambit-cni itself');
      if (opts.cniPrimary && !opts.cniBinary) throw new CliError('--cni-primary needs --cni-binary (the plugin it chains)');
      const admin = hostPort('--admin', opts.admin);
      const controller = hostPort('--controller', opts.controller);
      const drain = Number(opts.drainSeconds);
      if (!Number.isFinite(drain) || drain < 0 || drain > 3600) throw new CliError(`--drain-seconds must be 0..3600, got "${opts.drainSeconds}"`);
      const telemetry = { metrics: port('--metrics-port', opts.metricsPort), health: port('--health-port', opts.healthPort) };
      const hboneLimits = flagHboneLimits(opts.hboneLimits);
      if (!opts.cluster === !opts.kubernetes) throw new CliError('give one of --cluster NAME (a local cluster) or --kubernetes [KUBECONFIG]');
      const layout = opts.cluster ? new ClusterLayout(opts.cluster) : undefined;
      const pinRoot = opts.pinRoot ?? layout?.nodePinRoot(opts.node);
      const cgroup = opts.cgroup ?? layout?.nodeCgroup(opts.node);
      if (!pinRoot || !cgroup) throw new CliError('with --kubernetes, give --pin-root DIR (in the host\'s bpffs) and --cgroup DIR (the cgroup holding the pods, e.g. the host\'s cgroup2 root)');
      if (!existsSync(cgroup)) throw new CliError(`--cgroup ${cgroup} does not exist`);
      if (opts.kubernetes && !existsSync(join(opts.hostProc, 'self'))) throw new CliError(`--host-proc ${opts.hostProc} is not a proc filesystem`);
      if (opts.cniSocket && !opts.kubernetes) throw new CliError('--cni-socket needs --kubernetes (the plugin\'s pods are read from the API server)');
      if (opts.cniBinary && !opts.cniSocket) throw new CliError('--cni-binary needs --cni-socket (where the plugin reaches this agent)');
      if (opts.cniBinary && !existsSync(opts.cniBinary)) throw new CliError(`--cni-binary ${opts.cniBinary} does not exist`);
      // A signal during start (a rolling update, a node drain) is held until the agent has
      // started, then stops it cleanly: dying half-started would leave its CNI entry and pins as
      // they were, with nobody deciding between restart and uninstall.
      let stopSignal: string | undefined;
      let stop = (signal: string) => { stopSignal ??= signal; };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      const app = await startNodeApp({
        node: opts.node, controller, tokenFile: opts.tokenFile, caFile: opts.caFile, pinRoot, cgroup, probeCgroups: opts.probeCgroup ?? [],
        rootNamespace: opts.rootNamespace, drainMs: drain * 1000, ...(hboneLimits ? { hboneLimits } : {}), admin,
        telemetry: { host: opts.telemetryHost, ...telemetry }, ...(opts.controlSocket ? { controlSocket: opts.controlSocket } : {}),
        ...(layout ? { locator: localLocator(layout) } : {}),
        ...(opts.kubernetes ? {
          kubernetes: {
            ...(opts.kubernetes === true ? {} : { kubeconfig: opts.kubernetes }), namespace: process.env.POD_NAMESPACE || 'ambit-system', daemonSet: opts.daemonset,
            trustDomain: opts.trustDomain, hostProc: opts.hostProc, ...(opts.cgroupRoot ? { cgroupRoot: opts.cgroupRoot } : {}),
            ...(opts.cniSocket ? { cni: { socket: opts.cniSocket, ...(opts.cniBinary ? { binary: opts.cniBinary } : {}), binDir: opts.cniBinDir, confDir: opts.cniConfDir, ...(opts.cniPrimary ? { primary: opts.cniPrimary } : {}) } } : {}),
          },
        } : {}),
      });
      stop = (signal: string) => void app.stop(signal).finally(() => process.exit(0));
      if (stopSignal) stop(stopSignal);
      await new Promise(() => { /* serves until a signal */ });
    });

  node.command('cleanup')
    .description('remove what ambit left on a node it was removed from while its agent was away: the CNI entry, marker and binary, the agent\'s sockets, every pin (refused while an agent runs)')
    .option('--pin-root <dir>', 'the agent\'s pins in the host\'s bpffs', CLEANUP_DEFAULTS.pinRoot)
    .option('--cni-bin-dir <dir>', 'the host\'s CNI plugin directory (cni.binDir of the install)', CLEANUP_DEFAULTS.cniBinDir)
    .option('--cni-conf-dir <dir>', 'the host\'s CNI config directory (cni.confDir of the install)', CLEANUP_DEFAULTS.cniConfDir)
    .option('--socket-dir <dir>', 'the agent\'s socket directory on the host', CLEANUP_DEFAULTS.socketDir)
    .option('--host-root <dir>', 'where the host\'s filesystem is mounted (e.g. /host under kubectl debug node/NAME --profile=sysadmin); every path above is under it')
    .action(async (own: CleanupOpts, cmd: Command) => {
      // `node` knows --pin-root, --cni-bin-dir and --cni-conf-dir too and takes them wherever they
      // are on the line (the program's options are not positional): those given are the user's.
      const parent = cmd.parent!;
      const given = (key: 'pinRoot' | 'cniBinDir' | 'cniConfDir'): string => (parent.getOptionValueSource(key) === 'cli' ? parent.getOptionValue(key) as string : own[key]);
      const opts: CleanupOpts = { ...own, pinRoot: given('pinRoot'), cniBinDir: given('cniBinDir'), cniConfDir: given('cniConfDir') };
      for (const [flag, value] of [['--pin-root', opts.pinRoot], ['--cni-bin-dir', opts.cniBinDir], ['--cni-conf-dir', opts.cniConfDir], ['--socket-dir', opts.socketDir], ['--host-root', opts.hostRoot ?? '/']] as const) {
        if (!isAbsolute(value)) throw new CliError(`${flag} must be an absolute path, got "${value}"`);
      }
      if (opts.hostRoot && !existsSync(opts.hostRoot)) throw new CliError(`--host-root ${opts.hostRoot} does not exist`);
      let removed: string[];
      try {
        removed = await cleanupNode(opts);
      } catch (err) {
        throw new CliError((err as Error).message);
      }
      for (const line of removed) console.log(line);
      console.log(removed.length ? `ambit removed from this node (${removed.length} item${removed.length === 1 ? '' : 's'})` : 'nothing of ambit\'s on this node');
    });
}
