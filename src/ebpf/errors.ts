/** Errors of the eBPF layer: which libbpf call failed, with which errno, and what to do about it. */
import { constants } from 'node:os';

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name]),
);

// libbpf's own error numbers (enum libbpf_errno in libbpf.h), above the kernel's range.
const libbpfErrnos = ['LIBELF', 'FORMAT', 'KVERSION', 'ENDIAN', 'INTERNAL', 'RELOC', 'LOAD', 'VERIFY',
  'PROG2BIG', 'KVER', 'PROGTYPE', 'WRNGPID', 'INVSEQ', 'NLPARSE'];
libbpfErrnos.forEach((name, i) => errnoNames.set(4000 + i, `LIBBPF_ERRNO__${name}`));

export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `errno ${Math.abs(errno)}`;
}

export type BpfErrorCode =
  | 'AMBIT_E_BPF_LIBBPF_MISSING'
  | 'AMBIT_E_BPF_OBJECT_MISSING'
  | 'AMBIT_E_BPF_OPEN'
  | 'AMBIT_E_BPF_VERIFIER'
  | 'AMBIT_E_BPF_LOAD'
  | 'AMBIT_E_BPF_NOT_FOUND'
  | 'AMBIT_E_BPF_ATTACH'
  | 'AMBIT_E_BPF_PIN'
  | 'AMBIT_E_BPF_BPFFS'
  | 'AMBIT_E_BPF_MAP'
  | 'AMBIT_E_BPF_CGROUP'
  | 'AMBIT_E_BPF_CLOSED';

export interface BpfErrorDetails {
  /** The libbpf or libc call that failed, e.g. `bpf_object__load`. */
  call?: string;
  /** Positive errno. */
  errno?: number;
  hint?: string;
  /** The kernel verifier's log for a rejected program. */
  verifierLog?: string;
  /** libbpf's own warnings printed while the call ran. */
  libbpfLog?: string[];
  cause?: unknown;
}

export class BpfError extends Error {
  override readonly name = 'BpfError';
  readonly code: BpfErrorCode;
  readonly call: string | undefined;
  readonly errno: number | undefined;
  readonly errnoName: string | undefined;
  readonly hint: string | undefined;
  readonly verifierLog: string | undefined;
  readonly libbpfLog: string[];

  constructor(code: BpfErrorCode, message: string, details: BpfErrorDetails = {}) {
    const errno = details.errno === undefined ? undefined : Math.abs(details.errno);
    const name = errno === undefined ? undefined : errnoName(errno);
    const parts = [message];
    if (details.call) parts.push(`(${details.call}${name ? `: ${name}` : ''})`);
    else if (name) parts.push(`(${name})`);
    let text = parts.join(' ');
    if (details.hint) text += `; ${details.hint}`;
    if (details.verifierLog) text += `\nverifier log:\n${details.verifierLog}`;
    super(text, details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    this.call = details.call;
    this.errno = errno;
    this.errnoName = name;
    this.hint = details.hint;
    this.verifierLog = details.verifierLog;
    this.libbpfLog = details.libbpfLog ?? [];
  }
}

/** The hint an operator needs for the errno a kernel call commonly fails with. */
export function hintFor(errno: number): string | undefined {
  switch (errnoName(errno)) {
    case 'EPERM':
    case 'EACCES':
      return 'run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN';
    case 'ENOENT':
      return 'the path does not exist';
    case 'EEXIST':
      return 'something is already pinned there: remove it or adopt it';
    case 'EBADF':
      return 'the file descriptor is not open (was the object closed?)';
    case 'EINVAL':
      return 'the kernel rejected the arguments; a kernel older than 5.17 lacks hooks ambit needs';
    case 'E2BIG':
    case 'ENOSPC':
      return 'the map is full';
    case 'ENOMEM':
      return 'the kernel could not allocate memory (check RLIMIT_MEMLOCK or memory cgroup limits)';
    default:
      return undefined;
  }
}
