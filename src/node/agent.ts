/**
 * The node agent (`ambit node`): one per node. It follows the controller's discovery stream,
 * enrolls the meshed pods of its node into the eBPF datapath (in-pod listeners, map entries,
 * certificates), and carries their connections:
 *
 *   outbound (15001)  original destination → service VIP resolved to an endpoint, or a pod IP;
 *                     meshed destination: HBONE with the source workload's certificate to the
 *                     destination pod's 15008; anything else: plain TCP passthrough
 *   HBONE (15008)     mTLS terminated with the destination workload's certificate, peer SPIFFE
 *                     ID verified, AuthorizationPolicy (L4), then a connection to the app
 *   inbound (15006)   plaintext: PeerAuthentication STRICT refuses it, PERMISSIVE lets it
 *                     through (no principal) under AuthorizationPolicy
 *
 * Every socket towards a pod or from it is made inside the pod's netns and marked, so traffic
 * keeps the pod's addresses and ambit's own hooks leave it alone.
 */
import { existsSync } from 'node:fs';
import type { ClientHttp2Stream, ServerHttp2Stream } from 'node:http2';
import { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { DiscoveryClient, type DiscoveryScope, type WireResource } from '../discovery/discovery.js';
import type { ConfigObject, MeshConfig, Service, ServiceEntryInfo, Workload } from '../config/model.js';
import { DEFAULT_ROOT_NAMESPACE } from '../authz/l4.js';
import { detectSocketLbConflicts } from '../ebpf/cgroup-programs.js';
import { AMBIT, Datapath } from '../ebpf/datapath.js';
import type { OrigDst } from '../ebpf/codecs.js';
import { CaClient, type Credential } from '../identity/ca-server.js';
import { CertManager, type WorkloadCertificate } from '../identity/cert-manager.js';
import { MeshMetrics } from '../telemetry/metrics.js';
import { LoadShedder, parseAdmissionLimits, type AdmissionLimits } from './shedding.js';
import { ConnectionTracker, resetOrDestroy, splice, type TrackedConnection } from './connections.js';
import { PodEnroller, type EnrolledPod } from './enroll.js';
import { buildDnsTable, DnsServer, netnsUpstream, type DnsPod, type DnsServiceEntry, type DnsTable } from './dns.js';
import { HBONE_CODES, HboneError, HboneLimiter, HbonePool, HboneServer, refuseTunnel, type HboneCode, type HboneLimits, type TunnelInfo } from '../hbone/hbone.js';
import { MeshState, MeshStateError, type Destination, type EgressMatch } from '../discovery/mesh-state.js';
import { CachingResolver, egressTarget, type HostResolver } from './egress.js';
import type { PodReadiness } from '../api/admin.js';
import { AGENT_SOCKET_MARK, netnsCookie, socketInNetns } from '../host/netns.js';

export const METRICS_PORT = 15020;
export const HEALTH_PORT = 15021;

/** A connection that moves no byte either way for this long is reset (Istio's default TCP idle timeout). */
export const TCP_IDLE_TIMEOUT_MS = 60 * 60 * 1000;
/**
 * How long a connection to (or from) an address a node-scoped agent does not know waits for the
 * controller's answer (ms): one round trip when the controller is up. Past it the connection goes
 * on with what the agent knows (an address then counts as no workload's; a service without its
 * endpoints is refused, UH).
 */
export const DEMAND_WAIT_MS = 3000;
/** A demand still unanswered is asked again after this long (ms): the controller may have dropped it, or the stream reconnected. */
const DEMAND_REPEAT_MS = 1000;
/** Resolves when one of `waiters` is called (each is, on its event) or after `ms`, whichever comes first; leaves nothing in `waiters`. */
function wakeOrTimeout(waiters: Set<() => void>, ms: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const wake = () => { waiters.delete(wake); clearTimeout(t); resolve(); };
    const t = setTimeout(wake, ms);
    waiters.add(wake);
  });
}

/** Demands a node agent sends per second at most (in bursts of twice that); past it a connection goes on with what is known. */
export const DEMAND_RATE = 200;

/**
 * The agent's own listeners inside every meshed pod. Nothing is ever forwarded to them: a
 * connection or tunnel addressed to one would make the agent dial itself, over and over.
 */
export const POD_RESERVED_PORTS: ReadonlySet<number> = new Set([AMBIT.PORT_OUTBOUND, AMBIT.PORT_INBOUND, AMBIT.PORT_HBONE]);

/** Where a pod's netns and cgroup are: the local runtime's layout, or (Kubernetes) the CNI's record. */
export interface PodLocator {
  locate(workload: Workload): { netnsPath: string; cgroupPath?: string } | undefined;
  /** Why `locate` found nothing, in words for the log and `ambit local status`. */
  explain?(workload: Workload): string;
}

export interface NodeAgentOptions {
  node: string;
  controller: { address: string; token: Credential; roots: string[] };
  /** The bpffs directory for this agent's pins, and the cgroup that holds the node's pods. */
  pinRoot: string;
  cgroup: string;
  objectsDir?: string;
  locator: PodLocator;
  /**
   * Cgroups of the node's health prober (the kubelet's, e.g. /sys/fs/cgroup/system.slice/kubelet.service):
   * the connections their processes open to a pod — and only those — are let through under STRICT
   * and policy, counted and logged. Nothing is exempted for coming from the node's IP.
   */
  probeCgroups?: string[];
  /** Istio's root namespace for mesh-wide policy. */
  rootNamespace?: string;
  /** How long an unenrolled pod's open connections may take to finish. */
  drainMs?: number;
  /** HBONE limits over the defaults (docs/DATAPATH.md, "HBONE limits"). */
  hboneLimits?: Partial<HboneLimits>;
  /** Load shedding's bounds (default: AMBIT_AGENT_LIMITS, else src/node/admission.ts's defaults). */
  admission?: AdmissionLimits;
  /**
   * Answer the pods' DNS for mesh services and ServiceEntry hosts, captured by eBPF (UDP and TCP
   * port 53), and forward the rest to the resolver each pod asked (default true; AMBIT_DNS_CAPTURE).
   */
  dnsCapture?: boolean;
  /** DNS servers for ServiceEntries of resolution DNS (AMBIT_DNS_RESOLVERS); none: the system's. */
  dnsResolvers?: string[];
  /**
   * What the agent asks the controller for (AMBIT_DISCOVERY_SCOPE; default `node`): its node's
   * view, and the destinations and peers its pods meet on demand; or `cluster`, every workload
   * (docs/CONTROL.md, What a node agent holds).
   */
  scope?: DiscoveryScope;
  /** How long a connection waits for the controller's answer to a demand (ms; default DEMAND_WAIT_MS). */
  demandWaitMs?: number;
  /** The resolver itself, for tests (default: a CachingResolver of `dnsResolvers`). */
  resolver?: HostResolver;
  log: Logger;
  accessLog: Logger;
}

interface PodEntry {
  workload: Workload;
  netnsPath: string;
  enrolled: EnrolledPod;
  hbone: HboneServer;
  cert?: WorkloadCertificate;
  sockets: Set<Socket | ServerHttp2Stream>;
}

/** A pod's enrollment as the runtime waits for it: done (with or without the mesh) or failed. */
export type { PodReadiness };

/** Istio's name for where REGISTRY_ONLY sends what the registry does not know: its metrics' destination_service. */
const BLACK_HOLE = { hostname: 'BlackHoleCluster', name: 'BlackHoleCluster', namespace: 'unknown' };
/** And where ALLOW_ANY lets them through: a destination neither a service, a workload nor a ServiceEntry. */
const PASSTHROUGH = { hostname: 'PassthroughCluster', name: 'PassthroughCluster', namespace: 'unknown' };

/** `GET /config_dump`: the mesh config the agent holds. */
export interface ConfigDump {
  node: string;
  version: string | null;
  connected: boolean;
  workloads: Workload[];
  services: Service[];
  policies: ConfigObject[];
  waypoints: ConfigObject[];
  warnings: string[];
  /** The ServiceEntries the agent matches egress against, and the mesh's settings (outboundTrafficPolicy). */
  serviceEntries?: ServiceEntryInfo[];
  meshConfig?: MeshConfig;
  /** Node scope: the services (namespace/name) held by their heads only, whose endpoints are asked for on first use. */
  headsOnly?: string[];
}

/** `GET /workloads`: the pods of this node in the mesh, and those the agent could not enroll. */
export interface WorkloadsDump {
  node: string;
  enrolled: {
    uid: string; namespace: string; name: string; identity: string; ips: string[];
    netns: string; netnsCookie: string; connections: number;
    certificate: { serial: string; notAfter: string } | null;
  }[];
  failed: { uid: string; error: string }[];
}

export class NodeAgent {
  readonly metrics = new MeshMetrics();
  readonly certs: CertManager;
  readonly connections: ConnectionTracker;
  private readonly shedder: LoadShedder;
  private readonly datapath: Datapath;
  /** Resolves the hosts of DNS ServiceEntries (egress), cached by TTL. */
  private readonly resolver: HostResolver;
  /** Egress refused by the agent, by reason (registry_only, no_endpoint, authorization). */
  private readonly egressRefused: Counter;
  private readonly demands: Counter;
  /** Woken at each applied config: connections waiting for a demand's answer. */
  private readonly stateWaiters = new Set<() => void>();
  /** Demand names asked of the controller, and when (asked again after DEMAND_REPEAT_MS). */
  private readonly asked = new Map<string, number>();
  /** Names asked in this turn of the event loop, sent as one Demand. */
  private readonly outgoing: string[] = [];
  /** The demand rate's token bucket (DEMAND_RATE). */
  private demandTokens = 2 * DEMAND_RATE;
  private demandRefilled = Date.now();
  private readonly enroller: PodEnroller;
  /** The pods' DNS server; undefined with DNS capture off. */
  private readonly dns: DnsServer | undefined;
  private readonly dnsPods = new Map<bigint, DnsPod>();
  /** The DNS names of one config version, and the headless services among them known by their heads only (name → namespace/name). */
  private dnsTable?: { state: MeshState; table: DnsTable; pending: Map<string, string> };
  private readonly pool: HbonePool;
  /** Shared by every pod's HBONE listener: a peer's connections and streams are counted across the node. */
  private readonly hboneLimiter: HboneLimiter;
  private readonly discovery: DiscoveryClient;
  private readonly pods = new Map<string, PodEntry>();
  /** The same entries by netns cookie: every captured connection looks its pod up this way. */
  private readonly podsByCookie = new Map<bigint, PodEntry>();
  private readonly failures = new Map<string, string>();
  private readonly unhealthy = new Map<string, number>();
  private state?: MeshState;
  private reconciling: Promise<void> = Promise.resolve();
  private reconcileQueued = false;
  private retryTimer?: NodeJS.Timeout;
  /**
   * Pods enrolled on the CNI plugin's word, before the controller streams them (it learns a pod's
   * IP only once the sandbox is up): kept until then, or until the deadline (ms since epoch).
   */
  private readonly held = new Map<string, number>();
  /**
   * The sandbox (CNI container ID) of each pod enrolled on the plugin's word: a late or repeated
   * DEL of an older sandbox of the same pod leaves the current one enrolled.
   */
  private readonly sandboxes = new Map<string, string>();
  private readonly waiters = new Set<() => void>();
  private nacks = 0;
  private closed = false;
  /** Connections cut because they outlived a drain period (a pod leaving, the agent stopping). */
  private drainCut = 0;
  /** A reconcile has run to its end: the pods of the first config are enrolled. */
  private settled = false;
  readonly started = Date.now();

  private constructor(private readonly opts: NodeAgentOptions, datapath: Datapath) {
    this.datapath = datapath;
    const log = opts.log;
    this.connections = new ConnectionTracker(this.metrics, opts.accessLog);
    this.shedder = new LoadShedder(opts.admission ?? parseAdmissionLimits(process.env.AMBIT_AGENT_LIMITS), () => this.connections.size, this.metrics);
    this.hboneLimiter = new HboneLimiter({
      log,
      ...(opts.hboneLimits ? { limits: opts.hboneLimits } : {}),
      // A waypoint's pod (by its verified identity, not a label a pod may give itself) carries many clients' tunnels from one address.
      peerStreamCap: ({ identity }): number | undefined => (identity && this.state?.allWaypointIdentities.has(identity) ? 4 * this.hboneLimiter.limits.maxStreamsPerPeer : undefined),
    });
    // The windows this agent advertises as a client are the ones its listeners advertise.
    this.pool = new HbonePool({ log, streamWindow: this.hboneLimiter.limits.streamWindow, sessionWindow: this.hboneLimiter.limits.sessionWindow });
    const ca = new CaClient({ address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token });
    this.certs = new CertManager({ source: ca, log: log.child({ part: 'certs' }) });
    this.enroller = new PodEnroller(datapath, {
      outbound: (socket, dst, pod) => void this.outbound(socket, dst, pod),
      inbound: (socket, pod) => void this.inbound(socket, pod),
      hbone: (socket, pod) => void this.podByCookie(pod.netnsCookie)?.hbone.handle(socket),
      dns: (socket, listenerAddr, pod) => this.dns?.serveUdp(socket, this.dnsPod(pod), (rinfo) => {
        const dst = this.datapath.dnsDestination(pod.netnsCookie, listenerAddr, rinfo.port);
        return dst && { addr: dst.addr, port: dst.port };
      }),
    }, log, { captureDns: opts.dnsCapture ?? true });
    this.dns = (opts.dnsCapture ?? true) ? new DnsServer({
      names: () => this.dnsNames(),
      pending: (name) => {
        const service = this.dnsNames() && this.dnsTable?.pending.get(name);
        return service ? this.knowing((s) => s.missingService(service)).then(() => undefined) : undefined;
      },
      log: log.child({ part: 'dns' }),
      queries: this.metrics.counter('ambit_dns_queries_total', 'DNS queries of meshed pods by result: local (answered by the agent), forwarded (answered by the resolver the pod asked), failed (SERVFAIL: the resolver did not answer, or too many in flight), malformed (FORMERR or dropped)', ['namespace', 'result']),
    }) : undefined;
    this.registerAgentMetrics();
    this.resolver = opts.resolver ?? new CachingResolver({ servers: opts.dnsResolvers ?? [] });
    this.egressRefused = this.metrics.counter('ambit_egress_refused_total', 'Outbound connections the node agent refused at the mesh\'s edge, by reason: registry_only (REGISTRY_ONLY, a destination neither a service, a workload nor a ServiceEntry), no_endpoint (a ServiceEntry with no address to go to), authorization (an AuthorizationPolicy bound to the ServiceEntry)', ['reason']);
    this.demands = this.metrics.counter('ambit_discovery_demands_total', 'Connections that needed what this node-scoped agent did not hold (a service\'s endpoints, an address\'s workload), by outcome: answered (the controller\'s answer came in time), timeout (the connection went on without it), unavailable (the controller was away: the connection went on at once), limited (past DEMAND_RATE: the connection went on at once)', ['outcome']);
    this.discovery = new DiscoveryClient({
      address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token,
      node: opts.node, kind: 'node-agent', log, scope: opts.scope ?? 'node',
      apply: (resources, version) => this.apply(resources, version),
    });
  }

  /** Loads and attaches the datapath, then follows the controller. */
  static async start(opts: NodeAgentOptions): Promise<NodeAgent> {
    const datapath = Datapath.load({ pinRoot: opts.pinRoot, objectsDir: opts.objectsDir, logger: opts.log });
    const { adopted } = datapath.attachOutbound(opts.cgroup);
    const adoptedPods = datapath.adoptPodLinks();
    const probeCgroups = (opts.probeCgroups ?? []).filter((path) => {
      if (existsSync(path)) return true;
      opts.log.warn({ cgroup: path }, 'the prober cgroup does not exist: its health probes get no exemption (refused under STRICT)');
      return false;
    });
    datapath.attachProbes(probeCgroups);
    opts.log.info({ cgroup: opts.cgroup, pinRoot: opts.pinRoot, adopted, adoptedPods: adoptedPods.length }, 'datapath attached');
    warnSocketLb(opts.log, opts.cgroup, opts.pinRoot, datapath);
    const agent = new NodeAgent(opts, datapath);
    await agent.certs.start().catch((err: Error) => opts.log.warn({ err: err.message }, 'trust bundle not fetched yet; retrying in the background'));
    return agent;
  }

  get version(): string {
    return this.state?.version ?? '';
  }

  /**
   * Config applied and the node's pods enrolled for it (or their failure recorded): what a
   * successor waits for before the old agent is told to hand over (its readiness, 15021).
   */
  get ready(): boolean {
    return this.state !== undefined && this.settled && !this.closed;
  }

  // -------------------------------------------------------------------------------------------
  // Configuration

  private apply(resources: ReadonlyMap<string, WireResource>, version: string): void {
    let next: MeshState;
    try {
      next = new MeshState(version, resources, { rootNamespace: this.opts.rootNamespace, scope: this.opts.scope ?? 'node' });
    } catch (err) {
      this.nacks++;
      throw err instanceof MeshStateError ? err : new MeshStateError((err as Error).message);
    }
    for (const w of next.authorizer.warnings) this.opts.log.warn({ version }, w);
    this.state = next;
    for (const wake of [...this.stateWaiters]) wake();
    this.reconcile();
  }

  /** Brings enrollment in line with the current state; runs one at a time, coalescing requests. */
  private reconcile(): void {
    if (this.reconcileQueued) return;
    this.reconcileQueued = true;
    this.reconciling = this.reconciling.then(async () => {
      this.reconcileQueued = false;
      const state = this.state;
      if (!state || this.closed) return;
      const want = new Map(state.enrolledOn(this.opts.node).map((w) => [w.uid, w]));
      for (const [uid, entry] of this.pods) {
        const w = want.get(uid);
        const stale = !w || w.ips.join() !== entry.workload.ips.join() || w.identity !== entry.workload.identity;
        // A held pod's sandbox is newer than the controller's view (a replaced sandbox's new IP is not reported yet).
        if (stale && (this.held.get(uid) ?? 0) > Date.now()) continue;
        this.held.delete(uid);
        if (stale) {
          this.sandboxes.delete(uid);
          await this.unenroll(uid, w ? 'changed' : 'left the mesh');
        }
        else entry.workload = w;
      }
      await Promise.all([...want.values()].filter((w) => !this.pods.has(w.uid)).map((w) => this.enroll(w)));
      for (const uid of this.failures.keys()) if (!want.has(uid)) this.failures.delete(uid);
      this.sweep();
      this.settled = true;
      for (const wake of this.waiters) wake();
    }).catch((err: Error) => this.opts.log.error({ err: err.message }, 'reconcile failed'));
  }

  /** One reconcile in 2 s for whatever failed to enroll (however many pods failed). */
  private retrySoon(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.reconcile();
    }, 2000).unref();
  }

  /**
   * Enrolls a pod the CNI plugin hands over while its sandbox is being made, before any of its
   * containers runs: `netnsPath` is the sandbox's, `w` the pod as the API server has it. Resolves
   * once its listeners, map entries and certificate are in place; rejects with the reason
   * otherwise (the plugin then fails the sandbox and the kubelet retries). Kept enrolled for
   * `holdMs` even while the controller does not list it yet, or lists it with an older sandbox's IP.
   *
   * `sandbox` is the CNI container ID. The same pod (UID) in another netns is a new sandbox (the
   * kubelet recreates one whose pause process died, or after a reboot): the old enrollment goes —
   * its netns is unusable by then — and the new one is enrolled. The same netns again (a repeated
   * ADD) changes nothing.
   */
  enrollPod(w: Workload, netnsPath: string, sandbox: string, holdMs = 120_000): Promise<void> {
    const run = this.reconciling.then(async () => {
      if (this.closed) throw new Error('the node agent is stopping');
      // Read first: an ADD naming a netns that is not there fails without touching the current enrollment.
      const cookie = netnsCookie(netnsPath);
      const current = this.pods.get(w.uid);
      if (current?.enrolled.netnsCookie === cookie) {
        this.sandboxes.set(w.uid, sandbox);
        this.held.set(w.uid, Date.now() + holdMs);
        return;
      }
      if (current) {
        // Not awaited: the old sandbox's capture ends here and now; its drain must not hold up the new one's start.
        this.unenroll(w.uid, `sandbox replaced by ${sandbox}`).catch((err: Error) => this.opts.log.error({ pod: `${w.namespace}/${w.name}`, err: err.message }, 'unenrolling the replaced sandbox failed'));
      }
      this.sandboxes.delete(w.uid);
      await this.enroll(w, { netnsPath }, false);
      if (!this.pods.has(w.uid)) throw new Error(this.failures.get(w.uid) ?? `${w.namespace}/${w.name} not enrolled`);
      this.sandboxes.set(w.uid, sandbox);
      this.held.set(w.uid, Date.now() + holdMs);
    });
    this.reconciling = run.catch(() => undefined);
    return run;
  }

  /**
   * The CNI plugin's DEL: sandbox `containerId` (netns `netnsPath`, empty when the runtime no longer
   * has it) of pod `uid` (found by the sandbox when the runtime gave none) is going away. Only the
   * pod's current sandbox is released: a late or repeated DEL of an older one changes nothing. A
   * pod enrolled without the plugin (through the locator, or before this agent started) is released
   * only when `netnsPath` is its netns; in doubt it stays, until the controller drops it.
   * Resolves once capture has stopped, without waiting for its connections to drain.
   */
  releasePod(uid: string | undefined, containerId: string, netnsPath: string): Promise<void> {
    const run = this.reconciling.then(() => {
      const pod = uid || [...this.sandboxes].find(([, id]) => id === containerId)?.[0];
      if (!pod) return;
      const entry = this.pods.get(pod);
      const current = this.sandboxes.get(pod);
      const ours = current !== undefined ? current === containerId : entry !== undefined && sameNetns(entry.enrolled.netnsCookie, netnsPath);
      if (entry && !ours) {
        this.opts.log.info({ pod: `${entry.workload.namespace}/${entry.workload.name}`, sandbox: containerId, current: current ?? entry.netnsPath }, 'DEL of a sandbox the pod is no longer in: its current one stays enrolled');
        return;
      }
      this.held.delete(pod);
      this.failures.delete(pod);
      if (current === containerId) this.sandboxes.delete(pod);
      this.unenroll(pod, 'sandbox deleted').catch((err: Error) => this.opts.log.error({ uid: pod, err: err.message }, 'unenrolling a deleted sandbox failed'));
    });
    this.reconciling = run.catch(() => undefined);
    return run;
  }

  /** `given`: where the pod is (from the CNI plugin), else the locator finds it; `retry`: try again later on failure. */
  private async enroll(w: Workload, given?: { netnsPath: string; cgroupPath?: string }, retry = true): Promise<void> {
    const where = given ?? this.opts.locator.locate(w);
    const name = `${w.namespace}/${w.name}`;
    if (!where || !existsSync(where.netnsPath)) {
      const why = where ? `${where.netnsPath} does not exist` : this.opts.locator.explain?.(w);
      this.failures.set(w.uid, `network namespace of ${name} not found${why ? `: ${why}` : ''}`);
      // A pod the controller knows of may not have its sandbox yet (or the locator's view lags): try again.
      if (retry) this.retrySoon();
      return;
    }
    // The certificate first: the pod's first connection must not wait for it.
    let cert: WorkloadCertificate;
    try {
      cert = await this.certs.acquire(w.identity);
    } catch (err) {
      // acquire() counted this pod before the fetch failed: the retry counts it again.
      this.certs.release(w.identity);
      this.failures.set(w.uid, `certificate for ${w.identity}: ${(err as Error).message}`);
      this.opts.log.error({ pod: name, err: (err as Error).message }, 'enrollment waits for a certificate');
      if (retry) this.retrySoon();
      return;
    }
    const sockets = new Set<Socket | ServerHttp2Stream>();
    const hbone = new HboneServer({
      certificate: () => this.certs.get(w.identity),
      roots: () => this.certs.trustBundle,
      onTunnel: (stream, info) => void this.tunnel(w.uid, stream, info),
      log: this.opts.log,
      limiter: this.hboneLimiter,
      pod: name,
    });
    try {
      const enrolled = await this.enroller.enroll({ name, netnsPath: where.netnsPath, cgroupPath: where.cgroupPath, ips: w.ips });
      const entry: PodEntry = { workload: w, netnsPath: where.netnsPath, enrolled, hbone, cert, sockets };
      this.pods.set(w.uid, entry);
      this.podsByCookie.set(enrolled.netnsCookie, entry);
      this.failures.delete(w.uid);
    } catch (err) {
      this.certs.release(w.identity);
      this.failures.set(w.uid, (err as Error).message);
      this.opts.log.error({ pod: name, err: (err as Error).message }, 'enrollment failed');
    }
  }

  /**
   * `keepCapture`: the agent is stopping, not the pod leaving — its redirection stays for the next
   * agent. Returns how many of the pod's connections were still open after the drain period and cut.
   */
  private async unenroll(uid: string, why: string, keepCapture = false): Promise<number> {
    const entry = this.pods.get(uid);
    if (!entry) return 0;
    const forget = () => {
      if (this.pods.get(uid) === entry) this.pods.delete(uid);
      if (this.podsByCookie.get(entry.enrolled.netnsCookie) === entry) this.podsByCookie.delete(entry.enrolled.netnsCookie);
      this.dnsPods.delete(entry.enrolled.netnsCookie);
    };
    // A pod leaving is forgotten at once. An agent stopping keeps serving what reached it before
    // its listeners closed (accepted connections not yet handled, streams on its HBONE
    // connections sent before its GOAWAY) until the drain is over: its successor has the rest.
    if (!keepCapture) forget();
    if (keepCapture) await this.enroller.release(entry.enrolled.netnsCookie);
    else await this.enroller.unenroll(entry.enrolled.netnsCookie);
    const drainMs = this.opts.drainMs ?? 5000;
    // GOAWAY to HBONE peers (their next streams go to a new connection, to the next agent's
    // listener during a handover), and every carried connection — either way — gets the drain
    // period to finish on its own.
    const hboneClosed = entry.hbone.close(drainMs);
    const deadline = Date.now() + drainMs;
    // Carried connections, and those still being set up (an HBONE connect in flight).
    const open = () => Math.max(entry.sockets.size, this.connections.countFor(entry.enrolled.spec.name));
    while (open() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, Math.min(100, deadline - Date.now())));
    const cut = open();
    // Connections still open after the drain period are reset.
    for (const s of entry.sockets) s.destroy();
    await hboneClosed;
    forget();
    this.certs.release(entry.workload.identity);
    this.drainCut += cut;
    this.opts.log.info({ pod: `${entry.workload.namespace}/${entry.workload.name}`, why, ...(cut ? { cut } : {}) }, 'pod unenrolled');
    return cut;
  }

  /** Removes map entries and pinned links no enrolled pod owns (left by pods gone while the agent was down). */
  private sweep(): void {
    const live = new Set([...this.pods.values()].map((p) => p.enrolled.netnsCookie));
    const { maps } = this.datapath;
    for (const cookie of [...maps.pods.keys()]) if (!live.has(cookie)) maps.pods.delete(cookie);
    for (const ip of [...maps.podAddrs.keys()]) {
      const cookie = maps.podAddrs.get(ip);
      if (cookie !== undefined && !live.has(cookie)) maps.podAddrs.delete(ip);
    }
    for (const cookie of this.datapath.adoptPodLinks()) if (!live.has(cookie)) this.datapath.detachInbound(cookie);
  }

  /** Resolves once the pod's enrollment is settled for a state that includes it (or after `timeoutMs`). */
  async podReadiness(uid: string, timeoutMs: number): Promise<PodReadiness | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const state = this.state;
      const w = state?.workloads.get(uid);
      if (state && w && !this.reconcileQueued) {
        await this.reconciling;
        const entry = this.pods.get(uid);
        const mine = w.node === this.opts.node;
        if (!mine || !w.enrolled || entry) return { uid, enrolled: Boolean(entry), version: state.version };
        const error = this.failures.get(uid);
        if (error) return { uid, enrolled: false, error, version: state.version };
      }
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await wakeOrTimeout(this.waiters, Math.min(left, 250));
    }
  }

  // -------------------------------------------------------------------------------------------
  // Data path

  private podByCookie(cookie: bigint): PodEntry | undefined {
    return this.podsByCookie.get(cookie);
  }


  private async outbound(socket: Socket, dst: OrigDst | undefined, pod: EnrolledPod): Promise<void> {
    socket.on('error', () => { /* handled by splice once joined */ });
    // Shed before any work: a reset costs the agent nothing it carries.
    if (this.shedder.refuse('outbound')) {
      resetOrDestroy(socket);
      return;
    }
    // The agent forwards what it reads at once: Nagle's algorithm would only add delay.
    socket.setNoDelay(true);
    // DNS over TCP (port 53) is the agent's DNS server's, as UDP is (docs/EDGE.md, DNS proxying).
    if (this.dns && dst?.port === 53) {
      this.dns.serveTcp(socket, this.dnsPod(pod), { addr: dst.addr, port: dst.port });
      return;
    }
    const src = this.podByCookie(pod.netnsCookie);
    const state = dst ? await this.knowing(dst.addr) : this.state;
    if (!src || !state || !dst) {
      this.opts.log.warn({ pod: pod.spec.name, hasDst: Boolean(dst) }, 'outbound connection without its original destination; reset');
      resetOrDestroy(socket);
      return;
    }
    const source = { workload: src.workload.workload, namespace: src.workload.namespace, identity: src.workload.identity, labels: src.workload.labels, ip: socket.remoteAddress === '127.0.0.1' || socket.remoteAddress === '::1' ? src.workload.ips[0]! : socket.remoteAddress ?? '' };
    const called = { ip: dst.addr, port: dst.port };
    // Egress: a ServiceEntry's address, VIP or endpoint (never a mesh service's VIP), else under
    // REGISTRY_ONLY anything the mesh does not know is refused (docs/EDGE.md, Egress).
    const egress = state.servicesByVip.has(called.ip) ? undefined : state.serviceEntryFor(called.ip, called.port, src.workload.namespace);
    let d: Destination | undefined;
    let service: TrackedConnection['service'];
    if (egress) {
      const target = await this.egressDestination(socket, src, state, egress, called, source);
      if (!target) return;
      d = target;
      service = { hostname: egress.host, name: egress.host, namespace: egress.entry.namespace };
      if (egress.entry.location === 'MESH_EXTERNAL' || !d.workload?.enrolled) {
        await this.passthrough(socket, src, d, source, service);
        return;
      }
    } else {
      d = this.pick(state, called.ip, called.port);
      if (!d) {
        this.refuse(socket, src, { reporter: 'source', source, destination: { ...called }, mtls: false, path: 'passthrough', pod: src.enrolled.spec.name }, 'UH', `no endpoint serves ${called.ip}:${called.port}`);
        return;
      }
      if (!d.service && !d.workload && state.refusesUnregistered(called.ip, called.port, src.workload.namespace)) {
        this.egressRefused.inc({ reason: 'registry_only' });
        this.refuse(socket, src, { reporter: 'source', source, destination: { ...called }, service: BLACK_HOLE, mtls: false, path: 'passthrough', pod: src.enrolled.spec.name }, 'UH', `outboundTrafficPolicy REGISTRY_ONLY: ${called.ip}:${called.port} is neither a mesh service, a workload nor a ServiceEntry`);
        return;
      }
      service = d.service ? { hostname: d.service.hostname, name: d.service.name, namespace: d.service.namespace }
        : d.workload ? undefined : PASSTHROUGH;
    }
    if (d.service?.waypoint) {
      await this.viaWaypoint(socket, src, state, d.service, called, source, service!);
      return;
    }
    if (!d.workload?.enrolled) {
      await this.passthrough(socket, src, d, source, service);
      return;
    }
    if (POD_RESERVED_PORTS.has(d.port)) {
      this.refuse(socket, src, { reporter: 'source', source, destination: { ...called }, mtls: false, path: 'hbone', pod: src.enrolled.spec.name }, 'NR', `${d.ip}:${d.port} is a node agent's own listener in a meshed pod: never a destination`);
      return;
    }
    // HBONE, with one more endpoint tried when the first cannot be reached.
    for (let attempt = 0; ; attempt++) {
      const w = d.workload!;
      const destination = { workload: w.workload, namespace: w.namespace, identity: w.identity, labels: w.labels, ip: d.ip, port: d.port };
      const conn = this.connections.begin({ reporter: 'source', source, destination, ...(service ? { service } : {}), mtls: true, path: 'hbone', pod: src.enrolled.spec.name });
      try {
        const cert = await this.certs.get(src.workload.identity);
        const stream = await this.pool.open(
          { pod: src.workload.uid, cert, roots: this.certs.trustBundle, socket: (family) => socketInNetns(src.netnsPath, family, { mark: AGENT_SOCKET_MARK }) },
          { address: d.ip, identity: w.identity, authority: `${authorityHost(d.ip)}:${d.port}` },
          {
            forwarded: `for=${forwardedFor(source.ip)}`,
            baggage: `k8s.namespace.name=${src.workload.namespace},k8s.pod.name=${src.workload.name},service.name=${src.workload.workload}`,
          },
        );
        this.join(conn, socket, stream, src);
        return;
      } catch (err) {
        const e = err instanceof HboneError ? err : new HboneError((err as Error).message, 'reset');
        const retry = attempt === 0 && d.service !== undefined && e.status === undefined && (e.kind === 'refused' || e.kind === 'unreachable' || e.kind === 'timeout');
        if (retry) {
          this.unhealthy.set(w.uid, Date.now() + 5000);
          const next = this.pick(state, called.ip, called.port);
          this.connections.finish(conn, { flags: 'UF', error: e.message });
          if (next && next.workload?.uid !== w.uid && next.workload?.enrolled) {
            d = next;
            continue;
          }
        } else {
          this.connections.finish(conn, { flags: e.status === 401 || e.status === 403 ? 'RBAC' : e.kind === 'timeout' ? 'UT' : 'UF', error: e.message });
        }
        this.opts.log.info({ pod: src.enrolled.spec.name, dst: `${d.ip}:${d.port}`, err: e.message }, 'outbound connection failed');
        resetOrDestroy(socket);
        return;
      }
    }
  }

  /**
   * Where a connection that matched a ServiceEntry goes: the entry's AuthorizationPolicies
   * (targetRefs) checked with the client as source, then its endpoint by the entry's resolution.
   * Undefined when refused (the socket is reset, counted and logged here).
   */
  private async egressDestination(socket: Socket, src: PodEntry, state: MeshState, egress: EgressMatch, called: { ip: string; port: number }, source: TrackedConnection['source']): Promise<Destination | undefined> {
    const service = { hostname: egress.host, name: egress.host, namespace: egress.entry.namespace };
    const info = { reporter: 'source' as const, source, destination: { ...called }, service, mtls: false, path: 'passthrough' as const, pod: src.enrolled.spec.name };
    const decision = state.authorizer.evaluateServiceEntry(egress.entry, {
      sourceIdentity: src.workload.identity, sourceIp: source.ip, destinationIp: called.ip, destinationPort: egress.port.number, host: egress.host,
    });
    if (!decision.allowed) {
      this.egressRefused.inc({ reason: 'authorization' });
      const conn = this.connections.begin(info);
      this.connections.finish(conn, { flags: 'RBAC', error: decision.reason, ...(decision.policy ? { policy: decision.policy } : {}) });
      this.opts.log.info({ pod: src.enrolled.spec.name, host: egress.host, why: decision.reason }, 'egress refused by policy');
      resetOrDestroy(socket);
      return undefined;
    }
    const target = await egressTarget(egress, called, this.resolver);
    if ('error' in target) {
      this.egressRefused.inc({ reason: 'no_endpoint' });
      this.refuse(socket, src, info, 'UH', target.error);
      return undefined;
    }
    const workload = ((await this.knowing(target.ip)) ?? state).workloadsByIp.get(target.ip);
    return { ip: target.ip, port: target.port, ...(workload ? { workload } : {}) };
  }

  /**
   * A service bound to a waypoint: the connection goes to the waypoint over HBONE, with the
   * service's VIP:port as the authority; the waypoint applies L7 and picks the endpoint. With no
   * waypoint pod ready, it is refused: a bound service's L7 policy is never bypassed.
   */
  private async viaWaypoint(socket: Socket, src: PodEntry, state: MeshState, svc: Service, called: { ip: string; port: number }, source: TrackedConnection['source'], service: NonNullable<TrackedConnection['service']>): Promise<void> {
    const ref = svc.waypoint!;
    const waypoints = state.waypointPods.get(`${ref.namespace}/${ref.name}`) ?? [];
    const wp = waypoints[Math.floor(Math.random() * waypoints.length)];
    const info = { reporter: 'source' as const, source, destination: { ip: called.ip, port: called.port, ...(wp ? { workload: wp.workload, namespace: wp.namespace, identity: wp.identity } : {}) }, service, mtls: true, path: 'hbone' as const, pod: src.enrolled.spec.name };
    if (!wp) {
      this.refuse(socket, src, info, 'UH', `bound to waypoint ${ref.namespace}/${ref.name}, which has no pod`);
      return;
    }
    const conn = this.connections.begin(info);
    try {
      const cert = await this.certs.get(src.workload.identity);
      const stream = await this.pool.open(
        { pod: src.workload.uid, cert, roots: this.certs.trustBundle, socket: (family) => socketInNetns(src.netnsPath, family, { mark: AGENT_SOCKET_MARK }) },
        { address: wp.ips[0]!, identity: wp.identity, authority: `${authorityHost(called.ip)}:${called.port}` },
        { forwarded: `for=${forwardedFor(source.ip)}` },
      );
      this.join(conn, socket, stream, src);
    } catch (err) {
      const e = err instanceof HboneError ? err : new HboneError((err as Error).message, 'reset');
      this.connections.finish(conn, { flags: e.kind === 'timeout' ? 'UT' : 'UF', error: `waypoint ${ref.namespace}/${ref.name}: ${e.message}` });
      this.opts.log.info({ pod: src.enrolled.spec.name, waypoint: `${ref.namespace}/${ref.name}`, err: e.message }, 'waypoint unreachable; connection refused');
      resetOrDestroy(socket);
    }
  }

  /** The DNS server's view of a pod: forwards leave from its netns; its pending forwards are counted. */
  private dnsPod(pod: EnrolledPod): DnsPod {
    let dns = this.dnsPods.get(pod.netnsCookie);
    if (!dns) {
      dns = { name: pod.spec.name, namespace: pod.spec.name.split('/')[0] ?? '', upstream: netnsUpstream(pod.spec.netnsPath), pending: 0 };
      this.dnsPods.set(pod.netnsCookie, dns);
    }
    return dns;
  }

  /** The names the DNS server answers, built once per config version. */
  private dnsNames(): DnsTable | undefined {
    const state = this.state;
    if (!state) return undefined;
    if (this.dnsTable?.state !== state) {
      // ServiceEntries as MeshState holds them (ServiceEntryInfo.dnsAddresses).
      const entries = (state as { serviceEntries?: readonly DnsServiceEntry[] }).serviceEntries ?? [];
      // A headless service held by its head only (its pods are not known here) is asked for at its first query.
      const pending = new Map<string, string>();
      const services = [...state.services.values()].filter((s) => {
        if (s.vips.length > 0 || state.endpointsKnown(s)) return true;
        pending.set(s.hostname.toLowerCase(), `${s.namespace}/${s.name}`);
        return false;
      });
      this.dnsTable = { state, table: buildDnsTable(services, state.workloads, entries), pending };
    }
    return this.dnsTable.table;
  }

  /**
   * The config, once it holds what the data path needs about an address (`need`: an IP, for
   * MeshState.missing) or a service (a function naming the demand still needed, if any). A
   * node-scoped agent asks the controller for what it lacks and waits for the answer, up to
   * demandWaitMs; past that it goes on with the config as it is. Cluster scope holds everything
   * it will ever know: no wait.
   */
  private async knowing(need: string | ((state: MeshState) => string | undefined)): Promise<MeshState | undefined> {
    const deadline = Date.now() + (this.opts.demandWaitMs ?? DEMAND_WAIT_MS);
    const missing = typeof need === 'string' ? (s: MeshState) => s.missing(need) : need;
    let waited = false;
    for (;;) {
      const state = this.state;
      const name = state && missing(state);
      if (!state || !name) {
        if (waited) this.demands.inc({ outcome: 'answered' });
        return state;
      }
      // A controller that is away cannot answer: the connection goes on at once with what is known.
      if (!this.discovery.connected) {
        this.demands.inc({ outcome: 'unavailable' });
        return state;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) {
        this.demands.inc({ outcome: 'timeout' });
        this.opts.log.warn({ demand: name, waitedMs: this.opts.demandWaitMs ?? DEMAND_WAIT_MS, controllerConnected: this.discovery.connected }, 'the controller did not answer a demand in time; going on without it');
        return state;
      }
      if (!this.ask(name)) {
        this.demands.inc({ outcome: 'limited' });
        return state;
      }
      waited = true;
      await wakeOrTimeout(this.stateWaiters, Math.min(left, DEMAND_REPEAT_MS));
    }
  }

  /** Asks the controller for `name`, unless it was asked within DEMAND_REPEAT_MS. */
  private ask(name: string): boolean {
    const now = Date.now();
    const last = this.asked.get(name);
    if (last !== undefined && now - last < DEMAND_REPEAT_MS) return true;
    // A pod connecting to address after address cannot make its agent flood the controller: past
    // the rate, connections go on with what is known.
    this.demandTokens = Math.min(2 * DEMAND_RATE, this.demandTokens + ((now - this.demandRefilled) * DEMAND_RATE) / 1000);
    this.demandRefilled = now;
    if (this.demandTokens < 1) return false;
    this.demandTokens--;
    // Bounded: old entries are only a guard against asking twice at once.
    if (this.asked.size >= 4096) for (const [n, at] of this.asked) if (now - at >= DEMAND_REPEAT_MS) this.asked.delete(n);
    this.asked.set(name, now);
    // What is asked in one turn of the event loop goes as one Demand (one version back).
    if (this.outgoing.length === 0) setImmediate(() => this.sendDemands());
    this.outgoing.push(name);
    return true;
  }

  private sendDemands(): void {
    const names = this.outgoing.splice(0);
    try {
      this.discovery.demand(names);
    } catch (err) {
      // A name the stream would refuse is never sent (it would close the stream): the connections go on without it.
      this.opts.log.warn({ demands: names.length, err: (err as Error).message }, 'demand not sent');
    }
  }

  /** An endpoint for ip:port, avoiding endpoints that just failed when others exist. */
  private pick(state: MeshState, ip: string, port: number): Destination | undefined {
    const now = Date.now();
    for (const [uid, until] of this.unhealthy) if (until < now) this.unhealthy.delete(uid);
    for (let i = 0; i < 4; i++) {
      const d = state.resolve(ip, port, this.opts.node);
      if (!d || !d.workload || !this.unhealthy.has(d.workload.uid)) return d;
    }
    return state.resolve(ip, port, this.opts.node);
  }

  private async passthrough(socket: Socket, src: PodEntry, d: Destination, source: TrackedConnection['source'], service?: TrackedConnection['service']): Promise<void> {
    const conn = this.connections.begin({
      reporter: 'source', source, destination: { ip: d.ip, port: d.port, ...(d.workload ? { workload: d.workload.workload, namespace: d.workload.namespace, labels: d.workload.labels } : {}) },
      ...(service ? { service } : {}), mtls: false, path: 'passthrough', pod: src.enrolled.spec.name,
    });
    let upstream: Socket;
    try {
      upstream = new Socket({ fd: socketInNetns(src.netnsPath, d.ip.includes(':') ? 6 : 4, { mark: AGENT_SOCKET_MARK }), readable: true, writable: true });
    } catch (err) {
      this.connections.finish(conn, { flags: 'UF', error: (err as Error).message });
      resetOrDestroy(socket);
      return;
    }
    upstream.setNoDelay(true);
    upstream.once('connect', () => this.join(conn, socket, upstream, src));
    upstream.once('error', (err) => {
      if (upstream.connecting || !upstream.remoteAddress) {
        this.connections.finish(conn, { flags: 'UF', error: err.message });
        resetOrDestroy(socket);
      }
    });
    upstream.connect(d.port, d.ip);
  }

  /** Joins the source side (`client`) and the destination side (`server`) of a connection of `pod`. */
  private join(conn: TrackedConnection, client: Socket | ServerHttp2Stream, server: Socket | ServerHttp2Stream | ClientHttp2Stream, pod: PodEntry): void {
    pod.sockets.add(client);
    splice(client, server, (err) => {
      pod.sockets.delete(client);
      this.connections.finish(conn, err ? { flags: conn.flags === '-' ? 'UR' : conn.flags, error: err.message } : {});
    }, { idleMs: TCP_IDLE_TIMEOUT_MS, counter: conn });
  }

  private refuse(socket: Socket, pod: PodEntry, info: Parameters<ConnectionTracker['begin']>[0], flags: string, why: string): void {
    const conn = this.connections.begin(info);
    this.connections.finish(conn, { flags, error: why });
    this.opts.log.info({ pod: pod.enrolled.spec.name, why }, 'connection refused');
    resetOrDestroy(socket);
  }

  /** A CONNECT stream on the pod's HBONE listener. */
  private async tunnel(uid: string, stream: ServerHttp2Stream, info: TunnelInfo): Promise<void> {
    // The peer's workload names the source in metrics and logs: a node-scoped agent may ask for it.
    const state = this.pods.has(uid) ? await this.knowing(info.remoteAddress) : this.state;
    const entry = this.pods.get(uid);
    if (stream.destroyed) return;
    if (!entry || !state) {
      refuseTunnel(stream, 503, HBONE_CODES.notEnrolled);
      return;
    }
    if (this.shedder.refuse('hbone')) {
      refuseTunnel(stream, 503, HBONE_CODES.overloaded);
      return;
    }
    const w = entry.workload;
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(info.authority);
    const ip = m?.[1];
    const port = Number(m?.[2]);
    const peer = state.workloadsByIp.get(info.remoteAddress.replace(/^::ffff:/, ''));
    const source = { ip: info.remoteAddress.replace(/^::ffff:/, ''), identity: info.peerIdentity, ...(peer ? { workload: peer.workload, namespace: peer.namespace, labels: peer.labels } : identityNamespace(info.peerIdentity)) };
    const destination = { workload: w.workload, namespace: w.namespace, identity: w.identity, labels: w.labels, ip: ip ?? '', port };
    const conn = this.connections.begin({ reporter: 'destination', source, destination, service: this.serviceFor(state, w, port), mtls: true, path: 'hbone', pod: entry.enrolled.spec.name });
    // The peer is told a code; the reason and the deciding policy go to the access log only.
    const refuse = (status: number, code: HboneCode, outcome: { flags: string; error: string; policy?: string }) => {
      refuseTunnel(stream, status, code);
      this.connections.finish(conn, outcome);
    };
    if (!ip || !port || port > 65535 || !w.ips.includes(ip)) {
      refuse(400, HBONE_CODES.wrongDestination, { flags: 'NR', error: `authority ${info.authority} is not ${w.namespace}/${w.name}` });
      return;
    }
    if (POD_RESERVED_PORTS.has(port)) {
      refuse(400, HBONE_CODES.reservedPort, { flags: 'NR', error: `port ${port} is the node agent's own listener in the pod: never a tunnel's target` });
      return;
    }
    const waypoint = state.waypointFor(w, port);
    if (waypoint && !(info.peerIdentity && state.waypointIdentities(waypoint).has(info.peerIdentity))) {
      refuse(403, HBONE_CODES.waypointRequired, { flags: 'RBAC', error: `${w.namespace}/${w.name}:${port} is bound to waypoint ${waypoint.namespace}/${waypoint.name}: only its pods may connect, not ${info.peerIdentity ?? 'a peer without identity'}` });
      return;
    }
    const decision = state.authorizer.evaluate(w, { sourceIdentity: info.peerIdentity, sourceIp: source.ip, destinationIp: ip, destinationPort: port });
    if (!decision.allowed) {
      refuse(401, HBONE_CODES.denied, { flags: 'RBAC', error: decision.reason, ...(decision.policy ? { policy: decision.policy } : {}) });
      return;
    }
    this.toApp(entry, ip, port, conn, (app) => {
      stream.respond({ ':status': 200 });
      this.join(conn, stream, app, entry);
    }, (status) => {
      refuseTunnel(stream, status, status === 503 ? HBONE_CODES.upstreamRefused : HBONE_CODES.upstreamFailed);
    });
  }

  /** Plaintext steered to the pod's 15006 listener. */
  private async inbound(socket: Socket, pod: EnrolledPod): Promise<void> {
    socket.on('error', () => { /* handled by splice once joined */ });
    socket.setNoDelay(true);
    const entry = this.podByCookie(pod.netnsCookie);
    const state = this.state;
    // Plaintext comes from outside the mesh, and the kubelet's probes among it: never kept waiting
    // for the peer's name (metrics only). It is asked for, for the connections after this one.
    const unknown = state?.missing(socket.remoteAddress ?? '');
    if (unknown && entry && this.discovery.connected) this.ask(unknown);
    if (!entry || !state) {
      resetOrDestroy(socket);
      return;
    }
    const w = entry.workload;
    const ip = (socket.localAddress ?? '').replace(/^::ffff:/, '');
    const port = socket.localPort ?? 0;
    const sourceIp = (socket.remoteAddress ?? '').replace(/^::ffff:/, '');
    const peer = state.workloadsByIp.get(sourceIp);
    const source = { ip: sourceIp, ...(peer ? { workload: peer.workload, namespace: peer.namespace, labels: peer.labels } : {}) };
    const probe = this.datapath.isProbe({ addr: sourceIp, port: socket.remotePort ?? 0 }, { addr: ip, port });
    // The kubelet's probes are never shed: an overloaded agent must not make its pods unready.
    if (!probe && this.shedder.refuse('inbound')) {
      resetOrDestroy(socket);
      return;
    }
    const conn = this.connections.begin({ reporter: 'destination', source, destination: { workload: w.workload, namespace: w.namespace, identity: w.identity, labels: w.labels, ip, port }, service: this.serviceFor(state, w, port), mtls: false, path: 'plaintext', pod: entry.enrolled.spec.name, ...(probe ? { exempt: 'kubelet-probe' as const } : {}) });
    // sk_lookup steers only what comes from outside the pod, keeping its destination port: a
    // connection on the listener's own port, or from the pod itself, came here directly. Carried
    // on, it would make the agent dial its own listener again and again.
    if (POD_RESERVED_PORTS.has(port) || isLoopback(sourceIp) || w.ips.includes(sourceIp)) {
      this.connections.finish(conn, { flags: 'NR', error: `addressed to the node agent's own listener (${ip}:${port} from ${sourceIp}): refused` });
      resetOrDestroy(socket);
      return;
    }
    if (!probe) {
      const waypoint = state.waypointFor(w, port);
      if (waypoint) {
        this.connections.finish(conn, { flags: 'NR', error: `plaintext refused: ${w.namespace}/${w.name}:${port} is bound to waypoint ${waypoint.namespace}/${waypoint.name}, whose L7 policy it would skip` });
        resetOrDestroy(socket);
        return;
      }
      const mode = state.authorizer.peerAuthenticationMode(w, port);
      if (mode === 'STRICT') {
        this.connections.finish(conn, { flags: 'NR', error: 'plaintext refused: PeerAuthentication STRICT' });
        resetOrDestroy(socket);
        return;
      }
      const decision = state.authorizer.evaluate(w, { sourceIp, destinationIp: ip, destinationPort: port });
      if (!decision.allowed) {
        this.connections.finish(conn, { flags: 'RBAC', error: decision.reason, ...(decision.policy ? { policy: decision.policy } : {}) });
        resetOrDestroy(socket);
        return;
      }
    }
    this.toApp(entry, ip, port, conn, (app) => this.join(conn, socket, app, entry), () => resetOrDestroy(socket));
  }

  /** Connects to the app from inside its pod, on the address it was called at. */
  private toApp(entry: PodEntry, ip: string, port: number, conn: TrackedConnection, ok: (app: Socket) => void, fail: (status: number, why: string) => void): void {
    let app: Socket;
    try {
      app = new Socket({ fd: socketInNetns(entry.netnsPath, ip.includes(':') ? 6 : 4, { mark: AGENT_SOCKET_MARK }), readable: true, writable: true });
    } catch (err) {
      this.connections.finish(conn, { flags: 'UF', error: (err as Error).message });
      fail(503, (err as Error).message);
      return;
    }
    const onError = (err: NodeJS.ErrnoException) => {
      const refused = err.code === 'ECONNREFUSED';
      this.connections.finish(conn, { flags: refused ? 'UF' : 'UR', error: `${ip}:${port}: ${err.code ?? err.message}` });
      fail(refused ? 503 : 502, refused ? 'connection refused' : err.message);
    };
    app.setNoDelay(true);
    app.once('error', onError);
    app.once('connect', () => {
      app.off('error', onError);
      ok(app);
    });
    app.connect(port, ip);
  }

  private serviceFor(state: MeshState, w: Workload, port: number): TrackedConnection['service'] | undefined {
    for (const s of state.servicesOf.get(w.uid) ?? []) {
      if (s.ports.some((p) => MeshState.targetPort(p, w) === port)) return { hostname: s.hostname, name: s.name, namespace: s.namespace };
    }
    return undefined;
  }


  // -------------------------------------------------------------------------------------------
  // Introspection

  private registerAgentMetrics(): void {
    this.metrics.gauge('ambit_enrolled_pods', 'Pods of this node in the mesh', [], (g) => g.set(this.pods.size));
    this.metrics.gauge('ambit_enrollment_failures', 'Meshed pods of this node the agent could not enroll', [], (g) => g.set(this.failures.size));
    this.metrics.gauge('ambit_redirect_counters', 'The eBPF datapath counters', ['counter'], (g) => {
      g.reset();
      for (const [name, value] of Object.entries(this.datapath.counters())) g.set({ counter: name }, Number(value));
    });
    this.metrics.gauge('ambit_certificate_expiry_seconds', 'Seconds until each workload certificate expires', ['identity'], (g) => {
      g.reset();
      for (const c of this.certs.list()) if (c.notAfter) g.set({ identity: c.identity }, (Date.parse(c.notAfter) - Date.now()) / 1000);
    });
    this.metrics.gauge('ambit_xds_connected', 'Whether the discovery stream is up', [], (g) => g.set(this.discovery.connected ? 1 : 0));
    this.metrics.gauge('ambit_xds_config', 'The applied config version (label), 1', ['version'], (g) => {
      g.reset();
      if (this.state) g.set({ version: this.state.version }, 1);
    });
    this.metrics.gauge('ambit_xds_rejected', 'Config versions this agent rejected (NACK)', [], (g) => g.set(this.nacks));
    this.metrics.gauge('ambit_hbone_pool_connections', 'Pooled outbound HBONE connections', [], (g) => g.set(this.pool.size));
    this.metrics.gauge('ambit_drain_cut_connections', 'Connections cut because they were still open at the end of a drain period (a pod leaving the mesh, the agent stopping or handing over)', [], (g) => g.set(this.drainCut));
    // Everything the agent keeps that could grow: each table's entries now, and its bound where it
    // has one of its own (the others are bounded by the node's pods, or by connections).
    this.metrics.gauge('ambit_agent_table_entries', 'Entries in each of the agent\'s tables now', ['table'], (g) => {
      g.set({ table: 'connections' }, this.connections.size);
      g.set({ table: 'pods' }, this.pods.size);
      g.set({ table: 'enrollment_failures' }, this.failures.size);
      g.set({ table: 'unhealthy_pods' }, this.unhealthy.size);
      g.set({ table: 'held_pods' }, this.held.size);
      g.set({ table: 'cni_sandboxes' }, this.sandboxes.size);
      g.set({ table: 'readiness_waiters' }, this.waiters.size);
      g.set({ table: 'certificates' }, this.certs.list().length);
      g.set({ table: 'hbone_pool' }, this.pool.size);
      g.set({ table: 'tcp_metric_series' }, this.metrics.tcpSeriesHeld);
    });
    this.metrics.gauge('ambit_agent_table_limit', 'The bound of each table that has one of its own', ['table'], (g) => {
      g.set({ table: 'connections' }, this.shedder.limits.maxConnections);
    });
    // The pinned maps, counted at most every 15 s: walking a map is a syscall per entry.
    let counted: { at: number; entries: Record<string, number> } | undefined;
    this.metrics.gauge('ambit_bpf_map_entries', 'Entries in each of the datapath\'s BPF maps (counted at most every 15 s)', ['map'], (g) => {
      if (!counted || Date.now() - counted.at > 15_000) counted = { at: Date.now(), entries: this.datapath.mapEntries() };
      for (const [map, n] of Object.entries(counted.entries)) g.set({ map }, n);
    });
    this.metrics.gauge('ambit_bpf_map_capacity', 'The most entries each of the datapath\'s BPF maps holds', ['map'], (g) => {
      for (const [map, n] of Object.entries(this.datapath.mapCapacity())) g.set({ map }, n);
    });
    this.hboneLimiter.registerMetrics(this.metrics);
  }

  /** Istio's root namespace: its policies without a selector apply mesh-wide. */
  get rootNamespace(): string {
    return this.opts.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
  }

  configDump(): ConfigDump {
    const s = this.state;
    return {
      node: this.opts.node, version: s?.version ?? null, connected: this.discovery.connected,
      workloads: s ? [...s.workloads.values()] : [], services: s ? [...s.services.values()] : [],
      policies: s?.policies ?? [], waypoints: s ? [...s.waypoints.values()] : [], warnings: s?.authorizer.warnings ?? [],
      ...(s ? { serviceEntries: s.serviceEntries, meshConfig: s.meshConfig } : {}),
      ...(s?.scope === 'node' ? { headsOnly: [...s.services.values()].filter((x) => !s.endpointsKnown(x)).map((x) => `${x.namespace}/${x.name}`) } : {}),
    };
  }

  workloads(): WorkloadsDump {
    return {
      node: this.opts.node,
      enrolled: [...this.pods.values()].map((p) => ({
        uid: p.workload.uid, namespace: p.workload.namespace, name: p.workload.name, identity: p.workload.identity, ips: p.workload.ips,
        netns: p.netnsPath, netnsCookie: p.enrolled.netnsCookie.toString(), connections: this.connections.countFor(p.enrolled.spec.name),
        certificate: p.cert ? { serial: p.cert.serial, notAfter: p.cert.notAfter.toISOString() } : null,
      })),
      failed: [...this.failures].map(([uid, error]) => ({ uid, error })),
    };
  }

  /**
   * Stops: connections get the drain period, listeners close. The pinned datapath and the pods'
   * map entries stay, so meshed pods keep being captured (and refused) until the next agent
   * takes over — nothing leaves the mesh because its agent restarts. `uninstall` removes it all.
   */
  async close(opts: { uninstall?: boolean } = {}): Promise<{ cut: number }> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.discovery.close();
    await this.reconciling;
    // Every pod's listeners close at once (a successor's take the new connections, and with
    // tcp_migrate_req the queued ones), then the pods' connections drain side by side.
    const draining = this.pods.size;
    const started = Date.now();
    const cuts = await Promise.all([...this.pods.keys()].map((uid) => this.unenroll(uid, opts.uninstall ? 'uninstall' : 'agent stopping', !opts.uninstall)));
    const cut = cuts.reduce((a, b) => a + b, 0);
    this.opts.log.info({ pods: draining, drainMs: Date.now() - started, cut }, cut ? `drained: ${cut} connection(s) still open after the drain period were cut` : 'drained: no connection was cut');
    this.pool.close();
    this.certs.close();
    this.connections.close();
    this.shedder.close();
    this.datapath.close();
    if (opts.uninstall) Datapath.remove(this.opts.pinRoot);
    return { cut };
  }
}

function isLoopback(ip: string): boolean {
  return ip === '::1' || ip.startsWith('127.');
}

/** Whether `netnsPath` is the netns with this cookie; false when it cannot be read (gone, empty). */
function sameNetns(cookie: bigint, netnsPath: string): boolean {
  if (!netnsPath) return false;
  try {
    return netnsCookie(netnsPath) === cookie;
  } catch {
    return false;
  }
}

function authorityHost(ip: string): string {
  return ip.includes(':') ? `[${ip}]` : ip;
}

function forwardedFor(ip: string): string {
  return ip.includes(':') ? `"[${ip}]"` : ip;
}

function identityNamespace(id: string | undefined): { namespace?: string } {
  const m = id ? /\/ns\/([^/]+)\/sa\//.exec(id) : null;
  return m ? { namespace: m[1] } : {};
}

/** Moved to its own module; kept here for callers that import it from the agent. */
export { serveTelemetry } from './telemetry-http.js';

/**
 * Another program's socket load balancer (Cilium's kube-proxy replacement, Calico eBPF) running
 * before ambit's connect hooks turns a Service address into a backend pod's before ambit sees it:
 * service-bound waypoints and VirtualServices then never apply. The agent cannot reorder another
 * CNI's programs, so it says what to change, once at start (and `ambit check` says it too).
 */
export function warnSocketLb(log: Logger, cgroup: string, pinRoot: string, datapath: Datapath, ciliumNodeConfigPath?: string): void {
  try {
    const found = detectSocketLbConflicts({
      cgroupPath: cgroup, pinRoot, ownProgramIds: Object.values(datapath.outboundProgramIds().attached),
      ...(ciliumNodeConfigPath ? { ciliumNodeConfigPath } : {}),
    });
    for (const c of found.conflicts) log.warn({ hook: c.hook, program: c.program, owner: c.owner }, `${c.summary}: ${c.fix}`);
  } catch (err) {
    log.warn({ cgroup, err: (err as Error).message }, 'could not list the other programs on the cgroup\'s connect hooks');
  }
}
