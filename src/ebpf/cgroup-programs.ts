/**
 * Programs on a cgroup's socket-address hooks (connect4/6, sendmsg, recvmsg, getpeername): which
 * are ambit's, which another program's, and in what order they run.
 *
 * Programs attached to one cgroup with BPF_F_ALLOW_MULTI run in attach order, after those of its
 * descendants. A CNI's socket load balancer (Cilium's kube-proxy replacement, Calico eBPF's
 * connect-time load balancer) rewrites a Service address to a backend pod's in connect(); when it
 * runs before ambit's connect4/connect6, ambit records the pod as the original destination and
 * service-bound waypoints and VirtualServices no longer apply. The node agent calls
 * `detectSocketLbConflicts` at start; `ambit check` reports the same.
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import * as libbpf from '../../native/libbpf.js';
import { BpfError, errnoName, hintFor } from './errors.js';
import { BpfLink } from './link.js';

/** The socket-address hooks, with their `enum bpf_attach_type` values (uapi/linux/bpf.h). */
export const SOCK_ADDR_HOOKS = [
  { hook: 'connect4', attachType: 10 },
  { hook: 'connect6', attachType: 11 },
  { hook: 'sendmsg4', attachType: 14 },
  { hook: 'sendmsg6', attachType: 15 },
  { hook: 'recvmsg4', attachType: 19 },
  { hook: 'recvmsg6', attachType: 20 },
  { hook: 'getpeername4', attachType: 29 },
  { hook: 'getpeername6', attachType: 30 },
] as const;
export type SockAddrHook = (typeof SOCK_ADDR_HOOKS)[number]['hook'];

/** ambit captures in these: a program that rewrites the destination before them hides the original one. */
export const CAPTURE_HOOKS: readonly SockAddrHook[] = ['connect4', 'connect6'];

const BPF_F_QUERY_EFFECTIVE = 1;

/** Where Cilium's agent writes the defines its datapath was compiled with (under its hostPath /var/run/cilium). */
export const CILIUM_NODE_CONFIG = '/var/run/cilium/state/globals/node_config.h';

export interface AttachedProgram {
  /** Kernel program id (`bpftool prog show id N`). */
  id: number;
  /** The kernel's copy of the name: at most 15 characters (cil_sock4_connect shows as cil_sock4_conne). */
  name: string;
  /** The program's tag (hex of its instructions' hash), as bpftool prints it. */
  tag: string;
}

/** Whose a program is, judged by ambit's own pinned links and by the names the CNIs give theirs. */
export type ProgramOwner = 'ambit' | 'other-ambit' | 'cilium' | 'calico' | 'unknown';

export interface HookPrograms {
  hook: SockAddrHook;
  /** In the order they run for a socket of the cgroup (the kernel's effective list). */
  programs: (AttachedProgram & { owner: ProgramOwner })[];
}

export interface SocketLbConflict {
  hook: SockAddrHook;
  program: AttachedProgram;
  owner: ProgramOwner;
  /** What the program runs before: ambit's program's name, or "ambit's, once attached". */
  before: string;
  /** What to change, in the CNI's own settings. */
  fix: string;
  /** One line for logs and checks (describeConflict). */
  summary: string;
}

export interface SockAddrFindings {
  cgroup: string;
  /** Whether an ambit program is attached to connect4 or connect6 (effective for this cgroup). */
  ambitAttached: boolean;
  hooks: HookPrograms[];
  /** Foreign programs that run (or, ambit not attached yet, will run) before ambit's capture. */
  conflicts: SocketLbConflict[];
  /** Foreign programs before ambit's that were judged harmless, and why (Cilium limited to the host netns). */
  cleared: { hook: SockAddrHook; program: AttachedProgram; why: string }[];
}

export const CILIUM_FIX = 'Cilium\'s socket load balancer rewrites Service addresses to pod addresses before ambit sees them: '
  + 'set socketLB.hostNamespaceOnly=true (Helm; bpf-lb-sock-hostns-only: "true" in ConfigMap kube-system/cilium-config) '
  + 'and cni.exclusive=false (cni-exclusive: "false"), as Istio ambient requires, then kubectl -n kube-system rollout restart daemonset/cilium';
export const CALICO_FIX = 'Calico eBPF\'s connect-time load balancer rewrites Service addresses to pod addresses before ambit sees them '
  + '(Calico documents it as not compatible with Istio ambient): kubectl patch felixconfiguration default --type merge '
  + '-p \'{"spec":{"bpfConnectTimeLoadBalancing":"Disabled","bpfHostNetworkedNATWithoutCTLB":"Enabled"}}\'';
export const UNKNOWN_FIX = 'a program ambit does not know changes connect() before ambit\'s capture: if it load-balances Services, '
  + 'limit it to the host network namespace or turn it off; else detach it and attach it again after the ambit node agent started, so ambit\'s runs first';

export function classifyProgram(program: AttachedProgram, ownIds: ReadonlySet<number>): ProgramOwner {
  if (ownIds.has(program.id)) return 'ambit';
  if (program.name.startsWith('ambit_')) return 'other-ambit';
  // Cilium names its socket-LB programs cil_sock4_connect, cil_sock6_sendmsg, ... (pkg/socketlb);
  // Calico its connect-time LB programs calico_connect_v4, calico_sendmsg_v6, ...
  if (program.name.startsWith('cil_')) return 'cilium';
  if (program.name.startsWith('calico_')) return 'calico';
  return 'unknown';
}

export function fixFor(owner: ProgramOwner): string {
  return owner === 'cilium' ? CILIUM_FIX : owner === 'calico' ? CALICO_FIX : UNKNOWN_FIX;
}

/** Cilium's datapath mode from node_config.h's text: host-only when compiled with ENABLE_SOCKET_LB_HOST_ONLY. */
export function ciliumSocketLbMode(nodeConfig: string | undefined): 'host-only' | 'full' | undefined {
  if (nodeConfig === undefined) return undefined;
  if (/^#define ENABLE_SOCKET_LB_HOST_ONLY\b/m.test(nodeConfig)) return 'host-only';
  if (/^#define ENABLE_SOCKET_LB_FULL\b/m.test(nodeConfig)) return 'full';
  return undefined;
}

export interface AnalyzeOptions {
  /** Ids of this agent's own programs (from its pinned links). */
  ownIds?: ReadonlySet<number>;
  /** The text of Cilium's node_config.h, when readable: a host-only socket LB passes pod sockets through. */
  ciliumNodeConfig?: string;
}

/** The verdict from what is attached: pure, so every ordering is testable without a kernel. */
export function analyzeSockAddr(cgroup: string, raw: { hook: SockAddrHook; programs: AttachedProgram[] }[], opts: AnalyzeOptions = {}): SockAddrFindings {
  const ownIds = opts.ownIds ?? new Set<number>();
  const hooks: HookPrograms[] = raw.map(({ hook, programs }) => ({ hook, programs: programs.map((p) => ({ ...p, owner: classifyProgram(p, ownIds) })) }));
  const isAmbit = (o: ProgramOwner) => o === 'ambit' || o === 'other-ambit';
  const conflicts: SocketLbConflict[] = [];
  const cleared: SockAddrFindings['cleared'] = [];
  const ciliumMode = ciliumSocketLbMode(opts.ciliumNodeConfig);
  let ambitAttached = false;
  for (const { hook, programs } of hooks) {
    if (!CAPTURE_HOOKS.includes(hook)) continue;
    const first = programs.findIndex((p) => p.owner === 'ambit');
    // Our own program if we know it, else another agent's (an `ambit check` run with another pin root).
    const at = first >= 0 ? first : programs.findIndex((p) => isAmbit(p.owner));
    if (at >= 0) ambitAttached = true;
    // Not attached yet: ambit's program will be appended, after every one attached now.
    const ahead = at >= 0 ? programs.slice(0, at) : programs;
    const before = at >= 0 ? programs[at]!.name : 'ambit\'s, once attached';
    for (const p of ahead) {
      if (isAmbit(p.owner)) continue;
      const program = { id: p.id, name: p.name, tag: p.tag };
      if (p.owner === 'cilium' && ciliumMode === 'host-only') {
        cleared.push({ hook, program, why: 'Cilium\'s datapath is built with ENABLE_SOCKET_LB_HOST_ONLY (socketLB.hostNamespaceOnly=true): it leaves pod sockets alone' });
        continue;
      }
      // Cilium's programs stay attached when limited to the host netns; only its node_config.h tells.
      const fix = p.owner === 'cilium' && ciliumMode === undefined
        ? `${fixFor(p.owner)} (if Cilium runs with it already, this could not be confirmed: its ${CILIUM_NODE_CONFIG} is not readable here)`
        : fixFor(p.owner);
      const conflict = { hook, program, owner: p.owner, before, fix };
      conflicts.push({ ...conflict, summary: describeConflict(conflict) });
    }
  }
  return { cgroup, ambitAttached, hooks, conflicts, cleared };
}

/** One line per conflict, for logs and checks: "connect4: cil_sock4_conne (id 812, cilium) runs before ambit_connect4". */
export function describeConflict(c: Omit<SocketLbConflict, 'summary'>): string {
  const verb = c.before.startsWith('ambit\'s') ? 'will run before' : 'runs before';
  return `${c.hook}: ${c.program.name} (id ${c.program.id}, ${c.owner}) ${verb} ${c.before}`;
}

function withFd<T>(path: string, fn: (fd: number) => T): T {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new BpfError('AMBIT_E_BPF_CGROUP', `cannot open cgroup ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, { cause: err, hint: 'give the cgroup v2 directory ambit attaches to (its --cgroup)' });
  }
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

/** The programs that run for sockets of `cgroupPath` on one hook, in run order (ancestors' included). */
export function effectivePrograms(cgroupPath: string, hook: SockAddrHook): AttachedProgram[] {
  const attachType = SOCK_ADDR_HOOKS.find((h) => h.hook === hook)!.attachType;
  return withFd(cgroupPath, (fd) => {
    let capacity = 64;
    for (;;) {
      const ids = Buffer.alloc(capacity * 4);
      const count = [capacity];
      const rc = libbpf.bpf_prog_query(fd, attachType, BPF_F_QUERY_EFFECTIVE, [0], ids, count);
      if (rc < 0 && errnoName(-rc) === 'ENOSPC' && capacity < 4096) {
        capacity *= 4;
        continue;
      }
      if (rc < 0) {
        throw new BpfError('AMBIT_E_BPF_CGROUP', `cannot list the ${hook} programs of cgroup ${cgroupPath}`, { call: 'bpf_prog_query', errno: -rc, hint: hintFor(-rc) });
      }
      const n = Math.min(count[0] ?? 0, capacity);
      const out: AttachedProgram[] = [];
      for (let i = 0; i < n; i++) {
        const info = programInfo(ids.readUInt32LE(i * 4));
        // A program detached between the query and the lookup is simply gone.
        if (info) out.push(info);
      }
      return out;
    }
  });
}

/** Name and tag of a loaded program by id; undefined when it no longer exists. */
function programInfo(id: number): AttachedProgram | undefined {
  const fd = libbpf.bpf_prog_get_fd_by_id(id);
  if (fd < 0) {
    if (errnoName(-fd) === 'ENOENT') return undefined;
    throw new BpfError('AMBIT_E_BPF_CGROUP', `cannot open program id ${id}`, { call: 'bpf_prog_get_fd_by_id', errno: -fd, hint: hintFor(-fd) });
  }
  try {
    // struct bpf_prog_info: { __u32 type; __u32 id; __u8 tag[8]; ... char name[16] at offset 64; ... }.
    const info = Buffer.alloc(232);
    const rc = libbpf.bpf_obj_get_info_by_fd(fd, info, [info.length]);
    if (rc < 0) throw new BpfError('AMBIT_E_BPF_CGROUP', `cannot read program id ${id}`, { call: 'bpf_obj_get_info_by_fd', errno: -rc, hint: hintFor(-rc) });
    const nameBytes = info.subarray(64, 80);
    const end = nameBytes.indexOf(0);
    return { id, name: nameBytes.toString('utf8', 0, end < 0 ? 16 : end), tag: info.subarray(8, 16).toString('hex') };
  } finally {
    closeSync(fd);
  }
}

/** Ids of the programs in the outbound links pinned under `pinRoot` (<pinRoot>/links/<program>). */
export function pinnedProgramIds(pinRoot: string): Set<number> {
  const dir = join(pinRoot, 'links');
  const ids = new Set<number>();
  if (!existsSync(dir)) return ids;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const link = BpfLink.openPinned(join(dir, entry.name));
    if (!link) continue;
    try {
      ids.add(link.programId());
    } finally {
      link.close();
    }
  }
  return ids;
}

export interface DetectOptions {
  /** The cgroup ambit attaches to (the agent's --cgroup; the host's cgroup v2 root). */
  cgroupPath: string;
  /** The agent's pin root: the links pinned there tell its programs from others'. */
  pinRoot?: string;
  /** Program ids known to be this agent's (Datapath.outboundProgramIds().attached), besides the pinned ones. */
  ownProgramIds?: Iterable<number>;
  /** Cilium's node_config.h; CILIUM_NODE_CONFIG unless given. */
  ciliumNodeConfigPath?: string;
}

/**
 * Lists every socket-address hook of `cgroupPath` and reports the foreign programs that run before
 * ambit's connect4/connect6. For the node agent at start (after attachOutbound), and `ambit check`.
 */
export function detectSocketLbConflicts(opts: DetectOptions): SockAddrFindings {
  const cgroup = resolve(opts.cgroupPath);
  const ownIds = opts.pinRoot ? pinnedProgramIds(opts.pinRoot) : new Set<number>();
  for (const id of opts.ownProgramIds ?? []) ownIds.add(id);
  const raw = SOCK_ADDR_HOOKS.map(({ hook }) => ({ hook, programs: effectivePrograms(cgroup, hook) }));
  let ciliumNodeConfig: string | undefined;
  try {
    ciliumNodeConfig = readFileSync(opts.ciliumNodeConfigPath ?? CILIUM_NODE_CONFIG, 'utf8');
  } catch {
    ciliumNodeConfig = undefined;
  }
  return analyzeSockAddr(cgroup, raw, { ownIds, ...(ciliumNodeConfig !== undefined ? { ciliumNodeConfig } : {}) });
}
