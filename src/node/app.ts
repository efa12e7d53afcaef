/**
 * The node agent process, wired in one place: what `ambit node` starts once it has read its
 * flags (src/cli/node.ts). It builds the agent and what serves beside it — the telemetry and
 * admin endpoints, the control socket, and on a Kubernetes node the watch on the agent's
 * DaemonSet, the CNI plugin's server and the plugin's installation — starts them in order, and
 * stops them in the reverse order.
 */
import { rmSync, statSync } from 'node:fs';
import { request as httpRequest, type Server } from 'node:http';
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DISCOVERY_SCOPES, type DiscoveryScope } from '../discovery/discovery.js';
import { cgroup2Mount } from '../ebpf/mounts.js';
import type { HboneLimits } from '../hbone/limits.js';
import { splitPemBundle } from '../identity/pki.js';
import { defaultKubeconfig, KubeClient } from '../kube/client.js';
import { logger } from '../telemetry/log.js';
import { cpuProfileFromEnv } from '../telemetry/profile.js';
import { OperatorError } from '../util/errors.js';
import { readFlagFile, tokenFile, waitForFile } from '../util/files.js';
import { listenReusePort } from '../host/netns.js';
import { listenTcp, listenUnix, localServer, sendJson } from '../util/local-http.js';
import { AdminServer, adminRoutes, serveAdmin, type AdminSources } from './admin.js';
import { NodeAgent, type PodLocator } from './agent.js';
import { parseDnsResolvers } from './egress.js';
import { report, type Check } from './checks.js';
import { CniInstaller } from './cni-install.js';
import { CniServer } from './cni-server.js';
import { ProcPodLocator } from './pod-locator.js';
import { runChecks } from './probes.js';
import { serveTelemetry } from './telemetry-http.js';
import { DaemonSetWatch, freshTokenClient } from './uninstall.js';

type HostPort = { host: string; port: number };

export interface NodeAppOptions {
  node: string;
  controller: HostPort;
  /** This node's credential for the controller (re-read at each use: the kubelet rotates it). */
  tokenFile: string;
  /** PEM roots that verify the controller; waited for while the controller writes them on first start. */
  caFile: string;
  pinRoot: string;
  cgroup: string;
  /** The cgroups of the node's health prober: only its connections to pods skip STRICT and policy. */
  probeCgroups: string[];
  rootNamespace: string;
  drainMs: number;
  hboneLimits?: Partial<HboneLimits>;
  admin: HostPort;
  telemetry: { host: string; metrics: number; health: number };
  /** Where the runtime asks whether a pod is enrolled, and where the agent may be changed (root only). */
  controlSocket?: string;
  /** A local cluster: pods found by its naming. */
  locator?: PodLocator;
  /** A Kubernetes node: pods found through the host's /proc, and the parts beside the agent. */
  kubernetes?: KubernetesNode;
}

export interface KubernetesNode {
  /** A kubeconfig file; in-cluster or $KUBECONFIG when unset. */
  kubeconfig?: string;
  /** The agent's own namespace and DaemonSet, whose fate tells an uninstall from a restart. */
  namespace: string;
  daemonSet: string;
  trustDomain: string;
  hostProc: string;
  /** The cgroup2 mount the pods' cgroup paths are relative to (default: this process's). */
  cgroupRoot?: string;
  cni?: { socket: string; binary?: string; binDir: string; confDir: string; primary?: string };
}

export interface NodeApp {
  agent: NodeAgent;
  /** Drains and stops; on a Kubernetes node, an uninstall (the DaemonSet gone) also removes the pins and the CNI plugin. */
  stop(reason: string): Promise<void>;
}

/** AMBIT_DNS_CAPTURE: `true` (default) or `false`, whether the agent answers its pods' DNS (docs/EDGE.md, DNS proxying). */
export function dnsCaptureFromEnv(value: string | undefined): boolean {
  if (value === undefined || value === '' || value === 'true') return true;
  if (value === 'false') return false;
  throw new OperatorError(`AMBIT_DNS_CAPTURE must be true or false, got "${value}"`, 'unset it to keep DNS capture on, or set it to false to let pods\' DNS go straight to their resolvers');
}

/** AMBIT_DISCOVERY_SCOPE: `node` (default) or `cluster`, what the agent asks the controller for (docs/CONTROL.md, What a node agent holds). */
export function discoveryScopeFromEnv(value: string | undefined): DiscoveryScope {
  if (value === undefined || value === '') return 'node';
  if ((DISCOVERY_SCOPES as readonly string[]).includes(value)) return value as DiscoveryScope;
  throw new OperatorError(`AMBIT_DISCOVERY_SCOPE must be ${DISCOVERY_SCOPES.join(' or ')}, got "${value}"`, 'unset it for node scope (the node\'s view, the rest on demand), or set it to cluster to hold every workload');
}

export async function startNodeApp(opts: NodeAppOptions): Promise<NodeApp> {
  const log = logger('node');
  const k8s = opts.kubernetes;
  const locator = opts.locator ?? (k8s ? new ProcPodLocator({ procRoot: k8s.hostProc, cgroupRoot: k8s.cgroupRoot ?? cgroup2Mount() ?? '/sys/fs/cgroup' }) : undefined);
  if (!locator) throw new OperatorError('the node agent needs a way to find pods', 'give --cluster NAME (a local cluster) or --kubernetes [KUBECONFIG]');
  // A predecessor still running (a handover): from now on its readiness says no, so that a probe
  // the kernel hands to it (the agents share 15021) never makes this one look Ready too early.
  if (opts.controlSocket) await announceSuccessor(opts.controlSocket, log);
  const kube = k8s ? KubeClient.fromFile(k8s.kubeconfig) : undefined;
  const daemonSet = k8s ? new DaemonSetWatch(await decisionClient(k8s.kubeconfig), k8s.namespace, k8s.daemonSet) : undefined;
  daemonSet?.start();
  await waitForFile(opts.caFile);
  const agent = await NodeAgent.start({
    node: opts.node,
    controller: { address: `${opts.controller.host}:${opts.controller.port}`, token: tokenFile(opts.tokenFile), roots: splitPemBundle(readFlagFile('--ca-file', opts.caFile)) },
    pinRoot: opts.pinRoot, cgroup: opts.cgroup, locator, probeCgroups: opts.probeCgroups, rootNamespace: opts.rootNamespace,
    drainMs: opts.drainMs, ...(opts.hboneLimits ? { hboneLimits: opts.hboneLimits } : {}), log, accessLog: logger('access'),
    dnsCapture: dnsCaptureFromEnv(process.env.AMBIT_DNS_CAPTURE),
    dnsResolvers: parseDnsResolvers(process.env.AMBIT_DNS_RESOLVERS),
    scope: discoveryScopeFromEnv(process.env.AMBIT_DISCOVERY_SCOPE),
  });
  const parts = k8s && kube && daemonSet ? await kubernetesParts(opts.node, k8s, kube, agent, daemonSet, log) : undefined;
  // What `ambit check` says about this node (and whether the CNI plugin is chained), served on
  // the health port for `ambit check --kube`.
  let checks: ReturnType<typeof runChecks> | undefined;
  const nodeReport = async () => report([...await (checks ??= runChecks({ cgroup: opts.cgroup, pinRoot: opts.pinRoot })), ...(parts?.checks() ?? [])]);
  let successorUntil = 0;
  const readiness = { metrics: agent.metrics, get ready() { return agent.ready && Date.now() >= successorUntil; } };
  const servers = await serveTelemetry(readiness, opts.telemetry.host, opts.telemetry.metrics, opts.telemetry.health, nodeReport, log, listenShared);
  const adminSources: AdminSources = { certificates: agent.certs, agent, proxyConfig: agent, logger: log, ...(opts.controlSocket ? { changesAt: opts.controlSocket } : {}) };
  const adminServer = await AdminServer.start(adminSources, opts.admin.host, opts.admin.port, listenShared);
  const control = opts.controlSocket ? await serveControl(agent, opts.controlSocket, adminSources, log, {
    successor(pid) {
      log.info({ successor: pid }, 'a new node agent is starting beside this one: not ready from now on, it takes over');
      // A successor that dies before it is ready must not leave this agent unready for good.
      successorUntil = Date.now() + SUCCESSOR_WAIT_MS;
    },
  }) : undefined;
  log.info({ node: opts.node, pinRoot: opts.pinRoot, cgroup: opts.cgroup }, 'node agent started');
  const profiler = await cpuProfileFromEnv(`node-agent.${opts.node}`);
  let stopped: Promise<void> | undefined;
  return {
    agent,
    stop(reason: string) {
      stopped ??= (async () => {
        log.info({ signal: reason }, 'node agent stopping: draining pods');
        // The node's ports first: during a handover the successor, listening beside this agent
        // (SO_REUSEPORT), answers the probes and scrapes alone from now on.
        for (const s of servers) s.close();
        void adminServer.close();
        try {
          // In Kubernetes, an uninstall (the DaemonSet gone or being deleted) also removes the pins.
          const { uninstall } = parts ? await parts.stop() : { uninstall: false };
          await agent.close({ uninstall });
        } catch (err) {
          log.error({ err: (err as Error).message }, 'stopping failed');
        }
        control?.close();
        log.info({ signal: reason }, 'node agent stopped');
        if (profiler) log.info({ profile: await profiler.stop() }, 'CPU profile written');
      })();
      return stopped;
    },
  };
}

/**
 * What the agent runs besides itself on a Kubernetes node: the CNI plugin's server and the
 * plugin's installation; and how they stop — on restart the plugin stays chained and the socket
 * file stays (sandboxes made meanwhile fail and are retried, never start unmeshed), on uninstall
 * the plugin goes first.
 */
async function kubernetesParts(node: string, k8s: KubernetesNode, kube: KubeClient, agent: NodeAgent, daemonSet: DaemonSetWatch, log: Logger): Promise<{ checks(): Check[]; stop(): Promise<{ uninstall: boolean }> }> {
  const cni = k8s.cni ? new CniServer({ path: k8s.cni.socket, client: kube, target: agent, node, trustDomain: k8s.trustDomain, hostProc: k8s.hostProc, log }) : undefined;
  await cni?.start();
  // Chained after the node's primary CNI once this agent answers on the socket (kept in place by a watch).
  const install = cni && k8s.cni?.binary
    ? new CniInstaller({ binary: k8s.cni.binary, binDir: k8s.cni.binDir, confDir: k8s.cni.confDir, socket: k8s.cni.socket, log, primary: k8s.cni.primary })
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
    throw new OperatorError(`cannot read the kubeconfig: ${(err as Error).message}`, 'give --kubernetes FILE, or set $KUBECONFIG, or run in a pod', 1, 'AMBIT_E_KUBECONFIG');
  }
  if (!path) return KubeClient.fromFile(undefined);
  try {
    const { KubeConfig } = await import('@kubernetes/client-node');
    const kc = new KubeConfig();
    kc.loadFromFile(path);
    return freshTokenClient(kc);
  } catch (err) {
    throw new OperatorError(`cannot read the kubeconfig ${path}: ${(err as Error).message}`, 'give a kubeconfig that names a cluster and a user', 1, 'AMBIT_E_KUBECONFIG');
  }
}

/**
 * The agent's control socket (a unix socket, mode 0600: root only). `GET /v1/pods/<uid>?timeoutMs=N`:
 * the runtime starts a meshed pod's processes once this answers. It also serves the admin routes,
 * and is the only place that changes the agent (`POST /logging?level=debug`): the admin port
 * can be reached by any process on the node.
 */
export async function serveControl(
  agent: Pick<NodeAgent, 'podReadiness' | 'version'> & Partial<Pick<NodeAgent, 'ready'>>, path: string, admin: AdminSources, log: Logger,
  hooks: { successor?(pid: number): void } = {},
): Promise<{ close(): void }> {
  // A readiness question may wait up to 60 s for its answer.
  const server = localServer({ name: 'control socket', log, json: true, limits: { idleTimeoutMs: 70_000 } }, async (req, res) => {
    if (serveAdmin(admin, true, req, res)) return;
    // Whether this agent (by pid: during a handover the path is the newest agent's) has enrolled
    // its node's pods: the local runtime waits for it before it stops the old agent.
    if (req.path === '/v1/ready' && req.method === 'GET') return sendJson(res, agent.ready ? 200 : 503, { ready: Boolean(agent.ready), pid: process.pid, version: agent.version });
    if (req.path === '/v1/successor' && req.method === 'POST') {
      const pid = Number(req.query.get('pid'));
      if (!Number.isInteger(pid) || pid <= 0) return sendJson(res, 400, { error: 'pid must be a process id: POST /v1/successor?pid=N' });
      hooks.successor?.(pid);
      return sendJson(res, 200, { pid: process.pid });
    }
    const [v1, pods, uid, ...rest] = req.segments;
    if (v1 !== 'v1' || pods !== 'pods' || !uid || rest.length) return sendJson(res, 404, { error: `no route ${req.path}: GET /v1/pods/<uid>`, routes: ['/v1/pods/<uid>', '/v1/ready', ...adminRoutes(admin)] });
    if (req.method !== 'GET') return sendJson(res, 405, { error: `${req.method} not allowed: GET /v1/pods/<uid>` });
    const asked = req.query.get('timeoutMs') ?? '10000';
    if (!/^\d{1,9}$/.test(asked)) return sendJson(res, 400, { error: `timeoutMs must be a number of milliseconds, got ${JSON.stringify(asked.slice(0, 32))}` });
    const timeoutMs = Math.min(60_000, Number(asked));
    const r = await agent.podReadiness(uid, timeoutMs);
    if (r) sendJson(res, 200, r);
    else sendJson(res, 504, { error: `pod not settled within ${timeoutMs} ms`, version: agent.version });
  });
  await listenUnix(server, path);
  // A successor started beside this agent (a handover) binds the same path over this one's:
  // the file is removed at close only while it is still this agent's socket.
  const own = statSync(path).ino;
  return {
    close: () => {
      server.close();
      server.closeAllConnections();
      try {
        if (statSync(path).ino === own) rmSync(path, { force: true });
      } catch {
        // already gone
      }
    },
  };
}

/** How long a predecessor reports not ready after a successor announced itself, at most. */
const SUCCESSOR_WAIT_MS = 120_000;

/** Tells the agent on `path`, if one answers, that this one is starting beside it. */
function announceSuccessor(path: string, log: Logger): Promise<void> {
  return new Promise((resolve) => {
    const req = httpRequest({ socketPath: path, path: `/v1/successor?pid=${process.pid}`, method: 'POST', timeout: 1000, agent: false }, (res) => {
      res.resume();
      if (res.statusCode === 200) log.info({ controlSocket: path }, 'an agent is running on this node: starting beside it, to take over (handover)');
      resolve();
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve()); // no agent there: a plain start
    req.end();
  });
}

/**
 * Listens with SO_REUSEPORT, so that a second agent (a handover: `ambit local component restart`,
 * a DaemonSet rolling update with maxSurge) starts beside this one instead of failing with
 * EADDRINUSE; while both run, the kernel spreads the connections between them.
 */
function listenShared(server: Server, port: number, host: string): Promise<Server> {
  if (!isIP(host)) return listenTcp(server, port, host);
  const fd = listenReusePort(host, port);
  return new Promise((resolve, reject) => {
    server.once('error', reject).listen({ fd }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

export const CONTROL_SOCKET = (stateDir: string, node: string) => join(stateDir, 'nodes', node, 'agent.sock');
