/**
 * BPF links: attach a program to a cgroup or a network namespace, pin the link so it outlives
 * the process, adopt a pinned link after a restart by swapping its program in place (no
 * moment without a program attached), and detach.
 */
import { closeSync, existsSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import * as libbpf from '../../native/libbpf.js';
import type { BpfLinkPtr } from '../../native/libbpf.js';
import { BpfError, errnoName, hintFor } from './errors.js';
import { withLibbpfLog } from './libbpf-log.js';
import { objectInfo, requireBpffs } from './kernel-objects.js';
import type { BpfProgram } from './object.js';

export class BpfLink {
  private ptr: BpfLinkPtr | null;

  private constructor(ptr: BpfLinkPtr, private pinnedAt: string | undefined) {
    this.ptr = ptr;
  }

  get pinPath(): string | undefined {
    return this.pinnedAt;
  }

  private handle(): BpfLinkPtr {
    if (this.ptr === null) throw new BpfError('AMBIT_E_BPF_CLOSED', 'BPF link is closed');
    return this.ptr;
  }

  /** Attaches to the cgroup v2 directory `cgroupPath` (programs see sockets created under it). */
  static attachCgroup(program: BpfProgram, cgroupPath: string): BpfLink {
    return withFd(cgroupPath, 'cgroup', (fd) => attach(program, `cgroup ${cgroupPath}`, 'bpf_program__attach_cgroup',
      () => libbpf.bpf_program__attach_cgroup(program.ptr, fd)));
  }

  /** Attaches to the network namespace at `netnsPath` (e.g. /run/netns/NAME). */
  static attachNetns(program: BpfProgram, netnsPath: string): BpfLink {
    return withFd(netnsPath, 'network namespace', (fd) => attach(program, `netns ${netnsPath}`, 'bpf_program__attach_netns',
      () => libbpf.bpf_program__attach_netns(program.ptr, fd)));
  }

  /** Opens a pinned link, or returns undefined when nothing is pinned at `path`. */
  static openPinned(path: string): BpfLink | undefined {
    if (!existsSync(path)) return undefined;
    const { result: ptr, log } = withLibbpfLog(() => libbpf.bpf_link__open(path));
    if (ptr === null) {
      const errno = libbpf.errno();
      throw new BpfError('AMBIT_E_BPF_PIN', `cannot open pinned link ${path}`, { call: 'bpf_link__open', errno, hint: hintFor(errno), libbpfLog: log });
    }
    return new BpfLink(ptr, path);
  }

  /** @internal */
  static fromPtr(ptr: BpfLinkPtr): BpfLink {
    return new BpfLink(ptr, undefined);
  }

  pin(path: string): void {
    requireBpffs(path);
    mkdirSync(dirname(path), { recursive: true });
    const rc = libbpf.bpf_link__pin(this.handle(), path);
    if (rc < 0) throw new BpfError('AMBIT_E_BPF_PIN', `cannot pin link at ${path}`, { call: 'bpf_link__pin', errno: -rc, hint: hintFor(-rc) });
    this.pinnedAt = path;
  }

  /** The kernel id of the program this link runs now. */
  programId(): number {
    // struct bpf_link_info starts { __u32 type; __u32 id; __u32 prog_id; ... }.
    return objectInfo(libbpf.bpf_link__fd(this.handle())).readUInt32LE(8);
  }

  /** Replaces the attached program atomically: traffic never sees the hook empty. */
  update(program: BpfProgram): void {
    const rc = libbpf.bpf_link__update_program(this.handle(), program.ptr);
    if (rc < 0) {
      throw new BpfError('AMBIT_E_BPF_ATTACH', `cannot swap program ${program.name} into link ${this.pinnedAt ?? ''}`.trim(), {
        call: 'bpf_link__update_program', errno: -rc,
        hint: errnoName(-rc) === 'EINVAL' ? 'the pinned link holds a program of another type: unpin it' : hintFor(-rc),
      });
    }
  }

  unpin(): void {
    if (this.pinnedAt === undefined) return;
    const rc = libbpf.bpf_link__unpin(this.handle());
    // libbpf only knows the path if it pinned the link itself; an adopted link is unpinned by path.
    if (rc < 0) rmSync(this.pinnedAt, { force: true });
    this.pinnedAt = undefined;
  }

  /** Detaches the program from its hook, pinned or not. */
  detach(): void {
    const rc = libbpf.bpf_link__detach(this.handle());
    if (rc < 0 && errnoName(-rc) !== 'ENOLINK') {
      throw new BpfError('AMBIT_E_BPF_ATTACH', 'cannot detach link', { call: 'bpf_link__detach', errno: -rc, hint: hintFor(-rc) });
    }
  }

  /** Releases this handle. A pinned link stays attached; an unpinned one is detached by the kernel. */
  close(): void {
    if (this.ptr === null) return;
    libbpf.bpf_link__destroy(this.ptr);
    this.ptr = null;
  }
}

function withFd<T>(path: string, what: string, fn: (fd: number) => T): T {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new BpfError('AMBIT_E_BPF_ATTACH', `cannot open ${what} ${path} (${code})`, { cause: err });
  }
  try {
    return fn(fd);
  } finally {
    closeSync(fd);
  }
}

function attach(program: BpfProgram, target: string, call: string, fn: () => BpfLinkPtr | null): BpfLink {
  const { result: ptr, log } = withLibbpfLog(fn);
  if (ptr === null) {
    const errno = libbpf.errno();
    throw new BpfError('AMBIT_E_BPF_ATTACH', `cannot attach ${program.name} (${program.section}) to ${target}`, {
      call, errno, hint: hintFor(errno), libbpfLog: log,
    });
  }
  return BpfLink.fromPtr(ptr);
}
