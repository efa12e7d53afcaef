/** `ambit node`: the node agent process (the local runtime starts one per node; Kubernetes, a DaemonSet). */
import { existsSync, rmSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { Command } from 'commander';
import { cgroup2Mount } from '../ebpf/mounts.js';
import { splitPemBundle } from '../identity/pki.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { ClusterLayout, netnsPath } from '../local/layout.js';
import { AdminServer, ADMIN_PORT, adminRoutes, serveAdmin, type AdminSources } from '../node/admin.js';
import { HEALTH_PORT, METRICS_PORT, NodeAgent, type PodLocator } from '../node/agent.js';
import { serveTelemetry } from '../node/telemetry-http.js';
import type { Logger } from 'pino';
import { defaultKubeconfig, type KubeClient } from '../kube/client.js';
import { CniInstaller } from '../node/cni-install.js';
import { CniServer } from '../node/cni-server.js';
import { HboneLimitsError, parseHboneLimits, type HboneLimits } from '../hbone/limits.js';
import { ProcPodLocator } from '../node/pod-locator.js';
import { CLEANUP_DEFAULTS, cleanupNode, DaemonSetWatch, freshTokenClient } from '../node/uninstall.js';
import { logger } from '../telemetry/log.js';
import { listenUnix, localServer, sendJson } from '../util/local-http.js';
import { report, type Check } from './checks.js';
import { CliError } from './errors.js';
import { readFlagFile, tokenFile } from './files.js';
import { kubeClient } from './kube.js';
import { runChecks } from './probes.js';
import { cpuProfileFromEnv } from '../telemetry/profile.js';

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
  rootNamespace?: string; drainSeconds: string; hboneLimits?: string;
  // Kubernetes mode
  kubernetes?: true | string; hostProc: string; cgroupRoot?: string; daemonset: string; trustDomain: string;
  cniSocket?: string; cniBinary?: string; cniBinDir: string; cniConfDir: string; cniPrimary?: string;
}

/**
 * What the agent runs besides itself on a Kubernetes node: the watch on its DaemonSet, the CNI
 * plugin's server and the plugin's installation; and how they stop — on restart the plugin stays
 * chained and the socket file stays (sandboxes made meanwhile fail and are retried, never start
 * unmeshed), on uninstall the plugin goes first.
 */
async function kubernetesParts(opts: NodeOpts, kube: KubeClient, agent: NodeAgent, daemonSet: DaemonSetWatch, log: Logger): Promise<{ checks(): Check[]; stop(): Promise<{ uninstall: boolean }> }> {
  const cni = opts.cniSocket
    ? new CniServer({ path: opts.cniSocket, client: kube, target: agent, node: opts.node, trustDomain: opts.trustDomain, hostProc: opts.hostProc, log })
    : undefined;
  await cni?.start();
  // Chained after the node's primary CNI once this agent answers on the socket (kept in place by a watch).
  const install = cni && opts.cniBinary
    ? new CniInstaller({ binary: opts.cniBinary, binDir: opts.cniBinDir, confDir: opts.cniConfDir, socket: opts.cniSocket!, log, primary: opts.cniPrimary })
    : undefined;
  install?.start();
  return {
    checks: () => (install ? [install.check()] : []),
    async stop() {
      const k = await daemonSet.stopKind();
      log.info({ stop: k.kind, reason: k.reason }, k.kind === 'uninstall' ? 'uninstall: removing the CNI plugin and every pinned BPF object' : 'restart: the pins and the CNI plugin stay for the next agent');
      const uninstall = k.kind === 'uninstall';
      install?.stop();
      if (uninstall) {
        try {
          install?.uninstall();
        } catch (err) {
          log.error({ err: (err as Error).message }, 'the CNI plugin could not be removed from the node\'s config');
        }
      }
      cni?.close(uninstall);
      return { uninstall };
    },
  };
}

interface CleanupOpts { pinRoot: string; cniBinDir: string; cniConfDir: string; socketDir: string; hostRoot?: string }

/** A CNI plugin type as `--cni-primary` takes it: an executable's name in the CNI bin dir. */
const PLUGIN_TYPE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * The client that decides uninstall or restart: it presents the agent's token as it is in its
 * file now. In a pod that is the in-cluster client's own behaviour; with a kubeconfig file (tests,
 * a node agent outside a pod) the client library is loaded for it.
 */
async function decisionClient(kubeconfig: string | undefined): Promise<KubeClient> {
  let path: string | undefined;
  try {
    path = kubeconfig ?? defaultKubeconfig();
  } catch (err) {
    throw new CliError(`cannot read the kubeconfig: ${(err as Error).message}`);
  }
  if (!path) return kubeClient(undefined);
  try {
    const { KubeConfig } = await import('@kubernetes/client-node');
    const kc = new KubeConfig();
    kc.loadFromFile(path);
    return freshTokenClient(kc);
  } catch (err) {
    throw new CliError(`cannot read the kubeconfig ${path}: ${(err as Error).message}`);
  }
}

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
      const kube = opts.kubernetes ? kubeClient(opts.kubernetes === true ? undefined : opts.kubernetes) : undefined;
      const locator: PodLocator = layout ? localLocator(layout) : new ProcPodLocator({ procRoot: opts.hostProc, cgroupRoot: opts.cgroupRoot ?? cgroup2Mount() ?? '/sys/fs/cgroup' });
      const log = logger('node');
      const daemonSet = kube ? new DaemonSetWatch(await decisionClient(opts.kubernetes === true ? undefined : opts.kubernetes as string), process.env.POD_NAMESPACE || 'ambit-system', opts.daemonset) : undefined;
      daemonSet?.start();
      // The controller writes its root on first start; an agent started beside it waits for it.
      for (let i = 0; i < 600 && !existsSync(opts.caFile); i++) await new Promise((r) => setTimeout(r, 100));
      const agent = await NodeAgent.start({
        node: opts.node,
        controller: { address: `${controller.host}:${controller.port}`, token: tokenFile(opts.tokenFile), roots: splitPemBundle(readFlagFile('--ca-file', opts.caFile)) },
        pinRoot, cgroup, locator, probeCgroups: opts.probeCgroup ?? [], rootNamespace: opts.rootNamespace,
        drainMs: drain * 1000, ...(hboneLimits ? { hboneLimits } : {}), log, accessLog: logger('access'),
      });
      const k8s = kube && daemonSet ? await kubernetesParts(opts, kube, agent, daemonSet, log) : undefined;
      // What `ambit check` says about this node (and whether the CNI plugin is chained), served on
      // the health port for `ambit check --kube`.
      let checks: ReturnType<typeof runChecks> | undefined;
      const nodeReport = async () => report([...await (checks ??= runChecks({ cgroup, pinRoot })), ...(k8s?.checks() ?? [])]);
      const servers = await serveTelemetry(agent, opts.telemetryHost, telemetry.metrics, telemetry.health, nodeReport, log);
      const adminSources: AdminSources = { certificates: agent.certs, agent, logger: log, ...(opts.controlSocket ? { changesAt: opts.controlSocket } : {}) };
      const adminServer = await AdminServer.start(adminSources, admin.host, admin.port);
      const control = opts.controlSocket ? await serveControl(agent, opts.controlSocket, adminSources, log) : undefined;
      log.info({ node: opts.node, pinRoot, cgroup }, 'node agent started');
      const profiler = await cpuProfileFromEnv(`node-agent.${opts.node}`);
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        log.info({ signal }, 'node agent stopping: draining pods');
        // In Kubernetes, an uninstall (the DaemonSet gone or being deleted) also removes the pins.
        const parts = k8s ? k8s.stop() : Promise.resolve({ uninstall: false });
        void parts.then(({ uninstall }) => agent.close({ uninstall }))
          .catch((err: Error) => log.error({ err: err.message }, 'stopping failed'))
          .finally(async () => {
            for (const s of servers) s.close();
            control?.close();
            void adminServer.close();
            if (profiler) log.info({ profile: await profiler.stop() }, 'CPU profile written');
            process.exit(0);
          });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
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

/**
 * The agent's control socket (a unix socket, mode 0600: root only). `GET /v1/pods/<uid>?timeoutMs=N`:
 * the runtime starts a meshed pod's processes once this answers. It also serves the admin routes,
 * and is the only place that changes the agent (`POST /logging?level=debug`): the admin port
 * can be reached by any process on the node.
 */
export async function serveControl(agent: Pick<NodeAgent, 'podReadiness' | 'version'>, path: string, admin: AdminSources, log: Logger): Promise<{ close(): void }> {
  // A readiness question may wait up to 60 s for its answer.
  const server = localServer({ name: 'control socket', log, json: true, limits: { idleTimeoutMs: 70_000 } }, async (req, res) => {
    if (serveAdmin(admin, true, req, res)) return;
    const [v1, pods, uid, ...rest] = req.segments;
    if (v1 !== 'v1' || pods !== 'pods' || !uid || rest.length) return sendJson(res, 404, { error: `no route ${req.path}: GET /v1/pods/<uid>`, routes: ['/v1/pods/<uid>', ...adminRoutes(admin)] });
    if (req.method !== 'GET') return sendJson(res, 405, { error: `${req.method} not allowed: GET /v1/pods/<uid>` });
    const asked = req.query.get('timeoutMs') ?? '10000';
    if (!/^\d{1,9}$/.test(asked)) return sendJson(res, 400, { error: `timeoutMs must be a number of milliseconds, got ${JSON.stringify(asked.slice(0, 32))}` });
    const timeoutMs = Math.min(60_000, Number(asked));
    const r = await agent.podReadiness(uid, timeoutMs);
    if (r) sendJson(res, 200, r);
    else sendJson(res, 504, { error: `pod not settled within ${timeoutMs} ms`, version: agent.version });
  });
  await listenUnix(server, path);
  return {
    close: () => {
      server.close();
      server.closeAllConnections();
      rmSync(path, { force: true });
    },
  };
}

export const CONTROL_SOCKET = (stateDir: string, node: string) => join(stateDir, 'nodes', node, 'agent.sock');
