/**
 * Finds a Kubernetes pod's network namespace and cgroup from /proc, without a CNI plugin. Every
 * network namespace with a process in it is reached through that process, and its local
 * addresses are read from the process's /proc/<pid>/net files (which always show the process's
 * own netns), so nothing has to enter it. A pod is the netns in which one of its IPs is local.
 *
 * In the DaemonSet the host's /proc is mounted at /host/proc and the host's cgroup2 at
 * /host/sys/fs/cgroup. The agent runs with hostNetwork, so its own netns is the host's: that one
 * is skipped (host-network pods share it and cannot be meshed anyway).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Workload } from '../config/model.js';
import { addrToBytes, bytesToAddr } from '../ebpf/addr.js';
import type { PodLocator } from './agent.js';

export class PodLocatorError extends Error {
  override readonly name = 'PodLocatorError';
  constructor(readonly code: 'AMBIT_E_PODLOCATOR_SCAN', message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

export interface PodLocation {
  netnsPath: string;
  cgroupPath?: string;
}

export interface ProcPodLocatorOptions {
  /** Where the host's proc is mounted: `/proc` (default), `/host/proc` in the DaemonSet. */
  procRoot?: string;
  /** Where the cgroup2 hierarchy the agent sees is mounted: `/sys/fs/cgroup` (default). */
  cgroupRoot?: string;
  /** A miss (or a stale hit) rescans /proc at most this often (default 1000 ms). */
  minRescanMs?: number;
  /** The netns the agent runs in, which holds no pods (default `/proc/self/ns/net`). */
  ownNetns?: string;
}

/** What the last scan saw, so that a missing pod can be explained. */
export interface ScanStats {
  /** Processes whose netns could be read (all of them, host processes included). */
  processes: number;
  /** Distinct network namespaces other than the agent's own, whose addresses were read. */
  namespaces: number;
  /** Processes (or their /net files) the agent was not allowed to read. */
  skippedPermission: number;
  durationMs: number;
}

/** One pod netns as a scan found it. */
interface NetnsEntry {
  /** The nsfs inode: the netns's identity, the same through every mount of proc. */
  ino: number;
  netnsPath: string;
  cgroupPath?: string;
  /** Why cgroupPath is missing, for explain(). */
  cgroupNote?: string;
}

type Lookup =
  | { kind: 'found'; entry: NetnsEntry }
  | { kind: 'no-ips' }
  | { kind: 'missing' }
  | { kind: 'conflict'; ip: string; entries: NetnsEntry[] }
  | { kind: 'split'; entries: Map<string, NetnsEntry> };

/** A failed read of one process's file: it is gone (or never had one), or the agent may not look. */
type Unreadable = 'gone' | 'denied';

const DENIED = new Set(['EACCES', 'EPERM']);

function attempt<T>(read: () => T): T | Unreadable {
  try {
    return read();
  } catch (err) {
    // ENOENT/ESRCH: the process exited mid-scan, or is a zombie with no namespaces left. Anything
    // else about one process should not stop the others from being found either.
    return DENIED.has((err as NodeJS.ErrnoException).code ?? '') ? 'denied' : 'gone';
  }
}

const unreadable = (v: unknown): v is Unreadable => v === 'gone' || v === 'denied';

/**
 * An address in the form Node's net module gives (`fd00:1::5`, lowercase, longest zero run
 * compressed; IPv4-mapped as dotted IPv4), or undefined if it is not an address.
 */
export function normalizeIp(text: string): string | undefined {
  try {
    return bytesToAddr(addrToBytes(text.trim()));
  } catch {
    return undefined;
  }
}

/**
 * The IPv4 addresses local to a netns, from its /proc/net/fib_trie: each leaf line `|-- a.b.c.d`
 * is followed by its prefixes, and a local address is the leaf with a `/32 host LOCAL` prefix.
 * Loopback (127.0.0.0/8) is left out: every netns has it.
 */
export function parseFibTrieLocal(text: string): string[] {
  const out = new Set<string>();
  let leaf: string | undefined;
  for (const line of text.split('\n')) {
    const m = /^[\s|]*\|--\s+(\d{1,3}(?:\.\d{1,3}){3})\s*$/.exec(line);
    if (m) {
      leaf = m[1];
    } else if (/^\s*\/32\s+\S+\s+LOCAL\b/.test(line)) {
      if (leaf && !leaf.startsWith('127.')) out.add(leaf);
    } else if (!/^\s*\/\d+\s/.test(line)) {
      // A node line (`+-- ...`) or a table header: the leaf's prefix lines are over.
      leaf = undefined;
    }
  }
  return [...out];
}

/**
 * The IPv6 addresses of a netns, from its /proc/net/if_inet6 (32 hex digits first on each line).
 * Loopback is left out, and so are link-local addresses (fe80::/10): they are unique only per
 * link, are never a pod's IP, and would look like one address claimed by many namespaces.
 */
export function parseIfInet6(text: string): string[] {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^\s*([0-9a-fA-F]{32})\b/.exec(line);
    if (!m?.[1]) continue;
    const bytes = Buffer.from(m[1], 'hex');
    if (bytes[0] === 0xfe && ((bytes[1] ?? 0) & 0xc0) === 0x80) continue;
    const addr = bytesToAddr(bytes);
    if (addr !== '::1') out.add(addr);
  }
  return [...out];
}

/** The cgroup v2 path of /proc/<pid>/cgroup (the `0::<path>` line), if the process has one. */
export function parseCgroupV2(text: string): string | undefined {
  for (const line of text.split('\n')) if (line.startsWith('0::')) return line.slice(3).trim();
  return undefined;
}

/** The start time (clock ticks since boot, field 22) of /proc/<pid>/stat. */
export function parseStartTime(text: string): number | undefined {
  // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 1).trim().split(/\s+/);
  const start = Number(fields[19]);
  return Number.isFinite(start) ? start : undefined;
}

/**
 * Scanning all of /proc is too slow for every locate(): a scan (refresh()) indexes every pod
 * netns by its local addresses, and locate() answers from the index. A miss, or a hit whose
 * process has exited (or whose pid now belongs to another netns), rescans, but at most once per
 * minRescanMs; until then it finds nothing rather than a stale path.
 */
export class ProcPodLocator implements PodLocator {
  readonly procRoot: string;
  readonly cgroupRoot: string;
  readonly minRescanMs: number;
  private readonly ownNetns: string;
  /** Local address → the pod namespaces that have it (more than one: a conflict). */
  private index = new Map<string, NetnsEntry[]>();
  private stats: ScanStats | undefined;
  private scannedAt = -Infinity;
  private scanError: string | undefined;

  constructor(options: ProcPodLocatorOptions = {}) {
    this.procRoot = options.procRoot ?? '/proc';
    this.cgroupRoot = options.cgroupRoot ?? '/sys/fs/cgroup';
    this.minRescanMs = options.minRescanMs ?? 1000;
    this.ownNetns = options.ownNetns ?? '/proc/self/ns/net';
  }

  /** What the last scan saw; undefined before the first. */
  get lastScan(): ScanStats | undefined {
    return this.stats;
  }

  /**
   * Rescans procRoot and rebuilds the address index. Throws PodLocatorError when procRoot or the
   * agent's own netns cannot be read at all (a deployment mistake, better found at start).
   */
  refresh(): ScanStats {
    this.scannedAt = performance.now();
    try {
      const stats = this.scan();
      this.scanError = undefined;
      return stats;
    } catch (err) {
      this.scanError = (err as Error).message;
      throw err;
    }
  }

  locate(workload: Workload): PodLocation | undefined {
    const ips = normalizeIps(workload.ips);
    let found = this.lookup(ips);
    if (!this.usable(found) && ips.length > 0 && performance.now() - this.scannedAt >= this.minRescanMs) {
      try {
        this.refresh();
      } catch {
        return undefined; // kept in scanError for explain()
      }
      found = this.lookup(ips);
    }
    if (found.kind !== 'found' || !this.usable(found)) return undefined;
    const { netnsPath, cgroupPath } = found.entry;
    return cgroupPath === undefined ? { netnsPath } : { netnsPath, cgroupPath };
  }

  /** Why locate() finds this workload where it does, or (mostly) why it finds nothing. Never scans. */
  explain(workload: Workload): string {
    const name = `${workload.namespace}/${workload.name}`;
    const ips = normalizeIps(workload.ips);
    if (this.scanError !== undefined) {
      return `cannot scan ${this.procRoot}: ${this.scanError}`;
    }
    const found = this.lookup(ips);
    switch (found.kind) {
      case 'no-ips':
        return `${name} has no IP address (${workload.ips.length === 0 ? 'none yet' : `not addresses: ${workload.ips.join(', ')}`})`;
      case 'missing':
        return this.stats === undefined
          ? `${this.procRoot} has not been scanned yet`
          : `no network namespace on this node has ${ips.join(' or ')} (${this.describeScan()})`;
      case 'conflict':
        return `${found.ip} is local to ${found.entries.length} network namespaces (${found.entries.map((e) => e.netnsPath).join(', ')}); refusing to guess which one is ${name}`;
      case 'split':
        return `the addresses of ${name} are in different network namespaces: ${[...found.entries].map(([ip, e]) => `${ip} in ${e.netnsPath}`).join(', ')}`;
      case 'found': {
        const { netnsPath, cgroupPath, cgroupNote } = found.entry;
        if (!this.alive(found.entry)) {
          return `${name} was in ${netnsPath}, but that process has exited; the next scan (at most every ${this.minRescanMs} ms) looks again`;
        }
        return `${name} is in ${netnsPath}, ${cgroupPath ? `cgroup ${cgroupPath}` : `cgroup unknown: ${cgroupNote ?? 'not read'}`}`;
      }
    }
  }

  private describeScan(): string {
    const s = this.stats!;
    const denied = s.skippedPermission > 0 ? `; ${s.skippedPermission} unreadable: run with CAP_SYS_PTRACE` : '';
    return `scanned ${s.processes} processes in ${s.namespaces} namespaces under ${this.procRoot}${denied}`;
  }

  /** The workload's namespace in the index: any of its IPs decides, but they must agree. */
  private lookup(ips: string[]): Lookup {
    if (ips.length === 0) return { kind: 'no-ips' };
    const hits = new Map<string, NetnsEntry>();
    for (const ip of ips) {
      const entries = this.index.get(ip);
      if (!entries) continue;
      if (entries.length > 1) return { kind: 'conflict', ip, entries };
      hits.set(ip, entries[0]!);
    }
    const distinct = new Set([...hits.values()].map((e) => e.ino));
    if (distinct.size === 0) return { kind: 'missing' };
    if (distinct.size > 1) return { kind: 'split', entries: hits };
    return { kind: 'found', entry: hits.values().next().value! };
  }

  private usable(found: Lookup): boolean {
    return found.kind === 'found' && this.alive(found.entry);
  }

  /** The cached path still leads to the same netns: its process has not exited, nor its pid been reused. */
  private alive(entry: NetnsEntry): boolean {
    const ino = attempt(() => statSync(entry.netnsPath).ino);
    return ino === entry.ino;
  }

  private scan(): ScanStats {
    const started = performance.now();
    // nsfs inodes are the namespaces' identities, shared by every mount of proc (the agent's
    // /proc and the host's at /host/proc show the same numbers), so the inode alone compares
    // them; the device is nsfs's either way.
    let own: number;
    let entries: string[];
    try {
      own = statSync(this.ownNetns).ino;
    } catch (err) {
      throw new PodLocatorError('AMBIT_E_PODLOCATOR_SCAN', `cannot read the agent's own network namespace ${this.ownNetns}: ${(err as Error).message}`, { cause: err });
    }
    try {
      entries = readdirSync(this.procRoot);
    } catch (err) {
      throw new PodLocatorError('AMBIT_E_PODLOCATOR_SCAN', `cannot list ${this.procRoot}: ${(err as Error).message}; mount the host's /proc there`, { cause: err });
    }
    let processes = 0;
    let skippedPermission = 0;
    const byNetns = new Map<number, number[]>();
    for (const name of entries) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      const ino = attempt(() => statSync(join(this.procRoot, name, 'ns', 'net')).ino);
      if (ino === 'denied') skippedPermission++;
      if (unreadable(ino)) continue;
      processes++;
      if (ino === own) continue;
      const pids = byNetns.get(ino);
      if (pids) pids.push(pid);
      else byNetns.set(ino, [pid]);
    }
    const index = new Map<string, NetnsEntry[]>();
    let namespaces = 0;
    for (const [ino, pids] of byNetns) {
      const read = this.readNetns(ino, this.oldestFirst(pids));
      skippedPermission += read.denied;
      if (!read.entry) continue;
      namespaces++;
      for (const ip of read.ips) {
        const list = index.get(ip);
        if (list) list.push(read.entry);
        else index.set(ip, [read.entry]);
      }
    }
    this.index = index;
    this.stats = { processes, namespaces, skippedPermission, durationMs: Math.round((performance.now() - started) * 10) / 10 };
    return this.stats;
  }

  /**
   * The pod's sandbox (pause) process first: it is the oldest in the netns and lives as long as
   * the pod, so its /proc/<pid>/ns/net stays valid while the pod runs. Start time, not pid:
   * pids wrap.
   */
  private oldestFirst(pids: number[]): number[] {
    if (pids.length === 1) return pids;
    const start = new Map<number, number>();
    for (const pid of pids) {
      const text = attempt(() => readFileSync(join(this.procRoot, String(pid), 'stat'), 'utf8'));
      start.set(pid, (unreadable(text) ? undefined : parseStartTime(text)) ?? Infinity);
    }
    return [...pids].sort((a, b) => start.get(a)! - start.get(b)! || a - b);
  }

  /** Addresses and cgroup of one netns, through the first of its processes that can be read to the end. */
  private readNetns(ino: number, pids: number[]): { entry?: NetnsEntry; ips: string[]; denied: number } {
    let denied = 0;
    for (const pid of pids) {
      const dir = join(this.procRoot, String(pid));
      const v4 = attempt(() => readFileSync(join(dir, 'net', 'fib_trie'), 'utf8'));
      // No IPv6 in this netns (or kernel) leaves if_inet6 absent: not a reason to skip the process.
      const v6 = attempt(() => readFileSync(join(dir, 'net', 'if_inet6'), 'utf8'));
      const cgroup = attempt(() => readFileSync(join(dir, 'cgroup'), 'utf8'));
      const failed = [v4, v6, cgroup].find((r) => r === 'denied') ?? (unreadable(v4) || unreadable(cgroup) ? 'gone' : undefined);
      if (failed === 'denied') denied++;
      if (failed) continue;
      // Checked after the reads: had the process exited meanwhile, its pid (and files) may be another's.
      const netnsPath = join(dir, 'ns', 'net');
      if (attempt(() => statSync(netnsPath).ino) !== ino) continue;
      const ips = [...parseFibTrieLocal(v4 as string), ...(unreadable(v6) ? [] : parseIfInet6(v6))];
      return { entry: { ino, netnsPath, ...this.cgroupOf(cgroup as string) }, ips, denied };
    }
    return { ips: [], denied };
  }

  /**
   * /proc/<pid>/cgroup shows the path relative to the *reader's* cgroup namespace; cgroupRoot
   * must be the mount of that namespace's root. A path above it (`/..`) cannot be reached.
   */
  private cgroupOf(text: string): { cgroupPath?: string; cgroupNote?: string } {
    const path = parseCgroupV2(text);
    if (path === undefined) return { cgroupNote: 'the process has no cgroup v2 path (cgroup v1 only?)' };
    if (path.startsWith('/..')) return { cgroupNote: `its cgroup ${path} is outside the agent's cgroup namespace; run the agent in the host's cgroup namespace` };
    return { cgroupPath: join(this.cgroupRoot, path) };
  }
}

function normalizeIps(ips: string[]): string[] {
  return [...new Set(ips.map(normalizeIp).filter((ip): ip is string => ip !== undefined))];
}
