/**
 * The ambit datapath as the node agent uses it: both objects loaded over one set of pinned
 * maps, the outbound hooks attached to a cgroup, sk_lookup attached per pod netns, all links
 * pinned under one root so that a restarted agent adopts them and uninstall removes them.
 *
 *   <pinRoot>/maps/<map>            shared maps (reused across objects and restarts)
 *   <pinRoot>/links/<program>       ambit_connect4, ambit_connect6, ambit_sockops on the mesh
 *                                   cgroup, and the DNS capture's ambit_dns{conn,send,recv,
 *                                   peer}{4,6} (bpf/dns.bpf.c; 15 characters, the kernel's limit)
 *   <pinRoot>/links/pods/<cookie>   sk_lookup on one pod's netns
 *   <pinRoot>/links/probes/<name>   sockops on the cgroup of the node's health prober (kubelet)
 */
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  addrCodec, origDstCodec, podConfigCodec, sockKeyCodec, u32Codec, u64Codec,
  type OrigDst, type PodConfig, type SockKey,
} from './codecs.js';
import { AMBIT } from './layout.generated.js';
import { BpfLink } from './link.js';
import type { BpfMap } from './map.js';
import { BpfObject, type BpfProgram } from './object.js';
import { setLibbpfLogger, type LogSink } from './libbpf-log.js';

export const OUTBOUND_OBJECT = 'outbound.bpf.o';
export const INBOUND_OBJECT = 'inbound.bpf.o';
export const DNS_OBJECT = 'dns.bpf.o';
const OUTBOUND_PROGRAMS = ['ambit_connect4', 'ambit_connect6', 'ambit_sockops'] as const;
/** UDP port 53 capture, on the same cgroup as the outbound programs (pinned as links/<program>). */
const DNS_PROGRAMS = [
  'ambit_dnsconn4', 'ambit_dnsconn6', 'ambit_dnssend4', 'ambit_dnssend6',
  'ambit_dnsrecv4', 'ambit_dnsrecv6', 'ambit_dnspeer4', 'ambit_dnspeer6',
] as const;
const SK_LOOKUP_PROGRAM = 'ambit_sk_lookup';
const PROBE_PROGRAM = 'ambit_probe_sockops';

/** The committed objects: `bpf/` at the repository (or package) root, or $AMBIT_BPF_DIR. */
export function defaultObjectsDir(): string {
  const fromEnv = process.env['AMBIT_BPF_DIR'];
  if (fromEnv) return resolve(fromEnv);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'bpf', OUTBOUND_OBJECT))) return join(dir, 'bpf');
    dir = dirname(dir);
  }
  return resolve('bpf');
}

export interface DatapathOptions {
  /** bpffs directory owned by this agent, e.g. /sys/fs/bpf/ambit/node-1. */
  pinRoot: string;
  objectsDir?: string;
  /** Receives libbpf's own messages (warnings, and debug chatter). */
  logger?: LogSink;
}

export interface DatapathMaps {
  pods: BpfMap<bigint, PodConfig>;
  podAddrs: BpfMap<string, bigint>;
  inboundListeners: BpfMap<bigint, bigint>;
  origDst: BpfMap<SockKey, OrigDst>;
  /** Original destinations from connect() to the SYN, by socket cookie. */
  pending: BpfMap<bigint, OrigDst>;
  /** Connections of the node's prober to pods, as the pods see them (netnsCookie 0) → socket cookie. */
  probeFlows: BpfMap<SockKey, bigint>;
  /**
   * Steered DNS sockets: {netns cookie, client address ::, listener address, the socket's port,
   * 15053} → the resolver the application addressed (bpf/dns.bpf.c).
   */
  dnsFlows: BpfMap<SockKey, OrigDst>;
  counters: BpfMap<number, bigint>;
}

export const COUNTER_NAMES = [
  'connect_redirected', 'connect_excluded', 'connect_not_enrolled', 'origdst_recorded',
  'origdst_missing', 'origdst_deleted', 'inbound_steered', 'inbound_passed', 'errors',
  'inbound_unknown_addr', 'probe_recorded', 'dns_redirected', 'dns_reply_rewritten', 'dns_errors',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];

export class Datapath {
  readonly maps: DatapathMaps;
  private readonly outboundLinks = new Map<string, BpfLink>();
  private readonly podLinks = new Map<bigint, BpfLink>();
  private readonly probeLinks = new Map<string, BpfLink>();
  private outboundCgroup: string | undefined;

  private constructor(
    readonly pinRoot: string,
    private readonly outbound: BpfObject,
    private readonly inbound: BpfObject,
    private readonly dns: BpfObject,
  ) {
    this.maps = {
      pods: outbound.map('ambit_pods', u64Codec, podConfigCodec),
      podAddrs: inbound.map('ambit_pod_addrs', addrCodec, u64Codec),
      inboundListeners: inbound.map('ambit_inbound_listeners', u64Codec, u64Codec),
      origDst: outbound.map('ambit_orig_dst', sockKeyCodec, origDstCodec),
      pending: outbound.map('ambit_pending', u64Codec, origDstCodec),
      probeFlows: outbound.map('ambit_probe_flows', sockKeyCodec, u64Codec),
      dnsFlows: dns.map('ambit_dns_flows', sockKeyCodec, origDstCodec),
      counters: outbound.map('ambit_counters', u32Codec, u64Codec, true),
    };
  }

  /** Loads both objects; maps already pinned under `pinRoot` are reused, with their contents. */
  static load(options: DatapathOptions): Datapath {
    if (options.logger) setLibbpfLogger(options.logger);
    const dir = options.objectsDir ?? defaultObjectsDir();
    const pinMapsIn = join(options.pinRoot, 'maps');
    const loaded: BpfObject[] = [];
    try {
      for (const name of [OUTBOUND_OBJECT, INBOUND_OBJECT, DNS_OBJECT]) loaded.push(BpfObject.load(join(dir, name), { pinMapsIn }));
      const [outbound, inbound, dns] = loaded as [BpfObject, BpfObject, BpfObject];
      return new Datapath(options.pinRoot, outbound, inbound, dns);
    } catch (err) {
      for (const obj of loaded) obj.close();
      throw err;
    }
  }

  private linkPath(name: string): string {
    return join(this.pinRoot, 'links', name);
  }

  private podLinkPath(netnsCookie: bigint): string {
    return join(this.pinRoot, 'links', 'pods', netnsCookie.toString());
  }

  /**
   * Hooks connect() and sockops, and the DNS capture's socket-address hooks, for every socket
   * created under `cgroupPath`. Links already pinned (by an earlier agent) get this object's
   * programs swapped in instead; a hook an earlier agent did not have (one built without DNS
   * capture) is attached fresh. Returns whether links were adopted.
   */
  attachOutbound(cgroupPath: string): { adopted: boolean } {
    let adopted = false;
    this.outboundCgroup = resolve(cgroupPath);
    for (const [name, object] of this.cgroupPrograms()) {
      const { link, adopted: was } = adoptOrAttach(this.linkPath(name), object.program(name), undefined, (p) => BpfLink.attachCgroup(p, cgroupPath));
      this.outboundLinks.set(name, link);
      adopted ||= was;
    }
    return { adopted };
  }

  private cgroupPrograms(): [string, BpfObject][] {
    return [...OUTBOUND_PROGRAMS.map((n): [string, BpfObject] => [n, this.outbound]), ...DNS_PROGRAMS.map((n): [string, BpfObject] => [n, this.dns])];
  }

  /** The cgroup the outbound hooks see (set by attachOutbound). */
  get cgroup(): string | undefined {
    return this.outboundCgroup;
  }

  /** Program ids running in this agent's outbound links, and the ids of its own programs. */
  outboundProgramIds(): { attached: Record<string, number>; own: Record<string, number> } {
    const attached: Record<string, number> = {};
    const own: Record<string, number> = {};
    for (const [name, object] of this.cgroupPrograms()) {
      own[name] = object.program(name).id;
      const link = this.outboundLinks.get(name);
      if (link) attached[name] = link.programId();
    }
    return { attached, own };
  }

  /** Swaps this object's sk_lookup program into every pod link pinned by an earlier agent. */
  adoptPodLinks(): bigint[] {
    const dir = join(this.pinRoot, 'links', 'pods');
    if (!existsSync(dir)) return [];
    const program = this.inbound.program(SK_LOOKUP_PROGRAM);
    const cookies: bigint[] = [];
    for (const entry of readdirSync(dir)) {
      const cookie = BigInt(entry);
      const link = BpfLink.openPinned(join(dir, entry));
      if (!link) continue;
      link.update(program);
      this.podLinks.get(cookie)?.close();
      this.podLinks.set(cookie, link);
      cookies.push(cookie);
    }
    return cookies;
  }

  /** Attaches sk_lookup to one pod's netns (idempotent per netns cookie). */
  attachInbound(netnsPath: string, netnsCookie: bigint): void {
    const { link } = adoptOrAttach(this.podLinkPath(netnsCookie), this.inbound.program(SK_LOOKUP_PROGRAM), this.podLinks.get(netnsCookie), (p) => BpfLink.attachNetns(p, netnsPath));
    this.podLinks.set(netnsCookie, link);
  }

  detachInbound(netnsCookie: bigint): void {
    const link = this.podLinks.get(netnsCookie) ?? BpfLink.openPinned(this.podLinkPath(netnsCookie));
    if (!link) return;
    link.detach();
    link.unpin();
    link.close();
    this.podLinks.delete(netnsCookie);
  }

  /**
   * Records the connections that processes of `cgroupPaths` (the kubelet's cgroup) open to
   * enrolled pods, so that `isProbe` can tell them apart. Replaces the probe cgroups of an
   * earlier agent: links to cgroups no longer named are detached.
   */
  attachProbes(cgroupPaths: string[]): void {
    const dir = join(this.pinRoot, 'links', 'probes');
    const program = this.outbound.program(PROBE_PROGRAM);
    const wanted = new Map(cgroupPaths.map((p) => [probeLinkName(p), resolve(p)]));
    for (const entry of existsSync(dir) ? readdirSync(dir) : []) {
      if (wanted.has(entry)) continue;
      const link = BpfLink.openPinned(join(dir, entry));
      if (!link) continue;
      link.detach();
      link.unpin();
      link.close();
    }
    for (const [name, path] of wanted) {
      const { link } = adoptOrAttach(join(dir, name), program, this.probeLinks.get(name), (p) => BpfLink.attachCgroup(p, path));
      this.probeLinks.set(name, link);
    }
  }

  /** Whether a connection a pod accepted (client → pod address:port) was opened by the node's prober. */
  isProbe(client: { addr: string; port: number }, pod: { addr: string; port: number }): boolean {
    // No prober attached: nothing to look up (a map lookup is a syscall, on every plaintext connection).
    if (this.probeLinks.size === 0) return false;
    return this.maps.probeFlows.get({ netnsCookie: 0n, clientAddr: client.addr, clientPort: client.port, listenerAddr: pod.addr, listenerPort: pod.port }) !== undefined;
  }

  /** The counters summed over CPUs. */
  counters(): Record<CounterName, bigint> {
    const out = {} as Record<CounterName, bigint>;
    COUNTER_NAMES.forEach((name, i) => {
      out[name] = (this.maps.counters.getPerCpu(i) ?? []).reduce((a, b) => a + b, 0n);
    });
    return out;
  }

  /** The entries of each map this agent walks (not the per-CPU counters), by its name in ambit.h. */
  mapEntries(): Record<string, number> {
    const { pods, podAddrs, inboundListeners, origDst, pending, probeFlows, dnsFlows } = this.maps;
    return {
      ambit_pods: pods.size(), ambit_pod_addrs: podAddrs.size(), ambit_inbound_listeners: inboundListeners.size(),
      ambit_orig_dst: origDst.size(), ambit_pending: pending.size(), ambit_probe_flows: probeFlows.size(),
      ambit_dns_flows: dnsFlows.size(),
    };
  }

  /** Each of those maps' max_entries, as the programs declare them (bpf/*.bpf.c, maps.bpf.h). */
  mapCapacity(): Record<string, number> {
    return { ambit_pods: AMBIT.MAX_PODS, ambit_pod_addrs: AMBIT.MAX_PODS * 2, ambit_inbound_listeners: AMBIT.MAX_PODS, ambit_orig_dst: AMBIT.MAX_CONNECTIONS, ambit_pending: AMBIT.MAX_CONNECTIONS, ambit_probe_flows: AMBIT.MAX_PROBES, ambit_dns_flows: AMBIT.MAX_DNS_FLOWS };
  }

  /** Where the application meant to connect, for a connection accepted on a capture listener. */
  originalDestination(key: SockKey): OrigDst | undefined {
    return this.maps.origDst.get(key);
  }

  /**
   * The resolver a pod's DNS query was addressed to, for a datagram the agent received on its
   * DNS listener (`listenerAddr` 127.0.0.1 or ::1) from the pod's socket port `clientPort`.
   */
  dnsDestination(netnsCookie: bigint, listenerAddr: string, clientPort: number): OrigDst | undefined {
    return this.maps.dnsFlows.get({ netnsCookie, clientAddr: '::', clientPort, listenerAddr, listenerPort: AMBIT.PORT_DNS });
  }

  /** Releases this process's handles. Pinned links and maps stay: redirection goes on. */
  close(): void {
    for (const link of [...this.outboundLinks.values(), ...this.podLinks.values(), ...this.probeLinks.values()]) link.close();
    this.outboundLinks.clear();
    this.probeLinks.clear();
    this.podLinks.clear();
    this.dns.close();
    this.inbound.close();
    this.outbound.close();
  }

  /**
   * Detaches every link pinned under `pinRoot` and removes the directory: after this nothing
   * redirects into an agent that is gone. Safe to run when nothing is there.
   */
  static remove(pinRoot: string): void {
    if (!existsSync(pinRoot)) return;
    const linksDir = join(pinRoot, 'links');
    const walk = (dir: string): string[] => (existsSync(dir)
      ? readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]))
      : []);
    for (const path of walk(linksDir)) {
      const link = BpfLink.openPinned(path);
      if (!link) continue;
      try {
        link.detach();
      } finally {
        link.close();
      }
    }
    rmSync(pinRoot, { recursive: true, force: true });
  }
}

/**
 * The link pinned at `path` (held already, or left by an earlier agent) with `program` swapped
 * in, so redirection never stops; else a new link from `attach`, pinned there.
 */
function adoptOrAttach(path: string, program: BpfProgram, held: BpfLink | undefined, attach: (program: BpfProgram) => BpfLink): { link: BpfLink; adopted: boolean } {
  const pinned = held ?? BpfLink.openPinned(path);
  if (pinned) {
    pinned.update(program);
    return { link: pinned, adopted: true };
  }
  const link = attach(program);
  try {
    link.pin(path);
  } catch (err) {
    link.close();
    throw err;
  }
  return { link, adopted: false };
}

/** A pin name for a cgroup path: readable, and unique per path (bpffs refuses dots in names). */
function probeLinkName(cgroupPath: string): string {
  const abs = resolve(cgroupPath);
  const tail = abs.split('/').filter(Boolean).slice(-2).join('_').replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 80);
  let h = 0;
  for (const c of abs) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  return `${tail || 'root'}-${h.toString(16)}`;
}

export { AMBIT };
