/**
 * koffi bindings to libbpf.so.1 (Debian `libbpf1`, libbpf >= 1.1).
 *
 * Raw calls only: libbpf's conventions are kept (pointer-returning calls give null and set
 * errno, int-returning calls give -errno). src/ebpf/ turns them into typed objects and errors.
 */
import koffi, { type LibraryHandle } from 'koffi';

import { vsnprintf } from './libc.js';

/** Opaque libbpf handles; koffi represents non-null pointers as bigint. */
export type BpfObjectPtr = bigint & { readonly __brand: 'bpf_object' };
export type BpfProgramPtr = bigint & { readonly __brand: 'bpf_program' };
export type BpfMapPtr = bigint & { readonly __brand: 'bpf_map' };
export type BpfLinkPtr = bigint & { readonly __brand: 'bpf_link' };

let library: LibraryHandle | undefined;
let loadError: Error | undefined;

/** Mirrors `struct bpf_object_open_opts` of libbpf 1.1 (the anonymous `__u32 :32` is `unused`). */
const OpenOpts = koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'const char *',
  relaxed_maps: 'bool',
  pin_root_path: 'const char *',
  unused: 'uint32_t',
  kconfig: 'const char *',
  btf_custom_path: 'const char *',
  kernel_log_buf: 'void *',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});

export interface OpenOptions {
  objectName?: string;
  /** Receives the verifier log of a failed program load. */
  kernelLogBuf: Buffer;
}

const PrintFn = koffi.proto('int ambit_libbpf_print_fn(int level, const char *fmt, void *ap)');

function lib(): LibraryHandle {
  if (library) return library;
  if (loadError) throw loadError;
  try {
    library = koffi.load('libbpf.so.1');
    return library;
  } catch (err) {
    loadError = new Error(`cannot load libbpf.so.1 (install Debian package libbpf1): ${(err as Error).message}`);
    throw loadError;
  }
}

/** True when libbpf.so.1 can be loaded on this machine. */
export function libbpfAvailable(): boolean {
  try {
    lib();
    return true;
  } catch {
    return false;
  }
}

function bind<T extends (...args: never[]) => unknown>(signature: string): T {
  let fn: ((...args: unknown[]) => unknown) | undefined;
  return ((...args: unknown[]) => {
    fn ??= lib().func(signature);
    return fn(...args);
  }) as unknown as T;
}

type Ptr = bigint | null;

export const bpf_object__open_file = bind<(path: string, opts: unknown) => BpfObjectPtr | null>(
  'void *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)');
export const bpf_object__load = bind<(obj: BpfObjectPtr) => number>('int bpf_object__load(void *obj)');
export const bpf_object__close = bind<(obj: BpfObjectPtr) => void>('void bpf_object__close(void *obj)');
export const bpf_object__find_program_by_name = bind<(obj: BpfObjectPtr, name: string) => BpfProgramPtr | null>(
  'void *bpf_object__find_program_by_name(void *obj, const char *name)');
export const bpf_object__next_program = bind<(obj: BpfObjectPtr, prev: Ptr) => BpfProgramPtr | null>(
  'void *bpf_object__next_program(void *obj, void *prev)');
export const bpf_object__next_map = bind<(obj: BpfObjectPtr, prev: Ptr) => BpfMapPtr | null>(
  'void *bpf_object__next_map(void *obj, void *prev)');
export const bpf_object__find_map_by_name = bind<(obj: BpfObjectPtr, name: string) => BpfMapPtr | null>(
  'void *bpf_object__find_map_by_name(void *obj, const char *name)');

export const bpf_program__name = bind<(prog: BpfProgramPtr) => string>('const char *bpf_program__name(void *prog)');
export const bpf_program__section_name = bind<(prog: BpfProgramPtr) => string>(
  'const char *bpf_program__section_name(void *prog)');
export const bpf_program__fd = bind<(prog: BpfProgramPtr) => number>('int bpf_program__fd(void *prog)');
export const bpf_program__attach_cgroup = bind<(prog: BpfProgramPtr, cgroupFd: number) => BpfLinkPtr | null>(
  'void *bpf_program__attach_cgroup(void *prog, int cgroup_fd)');
export const bpf_program__attach_netns = bind<(prog: BpfProgramPtr, netnsFd: number) => BpfLinkPtr | null>(
  'void *bpf_program__attach_netns(void *prog, int netns_fd)');

export const bpf_map__name = bind<(map: BpfMapPtr) => string>('const char *bpf_map__name(void *map)');
export const bpf_map__fd = bind<(map: BpfMapPtr) => number>('int bpf_map__fd(void *map)');
export const bpf_map__set_pin_path = bind<(map: BpfMapPtr, path: string) => number>(
  'int bpf_map__set_pin_path(void *map, const char *path)');
export const bpf_map__key_size = bind<(map: BpfMapPtr) => number>('uint32_t bpf_map__key_size(void *map)');
export const bpf_map__value_size = bind<(map: BpfMapPtr) => number>('uint32_t bpf_map__value_size(void *map)');
export const bpf_map__unpin = bind<(map: BpfMapPtr, path: string | null) => number>(
  'int bpf_map__unpin(void *map, const char *path)');

export const bpf_link__pin = bind<(link: BpfLinkPtr, path: string) => number>('int bpf_link__pin(void *link, const char *path)');
export const bpf_link__unpin = bind<(link: BpfLinkPtr) => number>('int bpf_link__unpin(void *link)');
export const bpf_link__open = bind<(path: string) => BpfLinkPtr | null>('void *bpf_link__open(const char *path)');
export const bpf_link__update_program = bind<(link: BpfLinkPtr, prog: BpfProgramPtr) => number>(
  'int bpf_link__update_program(void *link, void *prog)');
export const bpf_link__fd = bind<(link: BpfLinkPtr) => number>('int bpf_link__fd(void *link)');
export const bpf_link__detach = bind<(link: BpfLinkPtr) => number>('int bpf_link__detach(void *link)');
export const bpf_link__disconnect = bind<(link: BpfLinkPtr) => void>('void bpf_link__disconnect(void *link)');
export const bpf_link__destroy = bind<(link: BpfLinkPtr) => number>('int bpf_link__destroy(void *link)');

export const bpf_map_update_elem = bind<(fd: number, key: Buffer, value: Buffer, flags: bigint | number) => number>(
  'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)');
export const bpf_map_lookup_elem = bind<(fd: number, key: Buffer, value: Buffer) => number>(
  'int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)');
export const bpf_map_delete_elem = bind<(fd: number, key: Buffer) => number>(
  'int bpf_map_delete_elem(int fd, const void *key)');
export const bpf_map_get_next_key = bind<(fd: number, key: Buffer | null, next: Buffer) => number>(
  'int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next_key)');
export const bpf_obj_get_info_by_fd = bind<(fd: number, info: Buffer, len: number[]) => number>(
  'int bpf_obj_get_info_by_fd(int fd, _Out_ void *info, _Inout_ uint32_t *info_len)');
export const bpf_obj_get = bind<(path: string) => number>('int bpf_obj_get(const char *pathname)');
/** Programs attached to a cgroup for one attach type; with BPF_F_QUERY_EFFECTIVE, those that run, in the order they run. */
export const bpf_prog_query = bind<(targetFd: number, type: number, queryFlags: number, attachFlags: number[], progIds: Buffer, progCnt: number[]) => number>(
  'int bpf_prog_query(int target_fd, int type, uint32_t query_flags, _Out_ uint32_t *attach_flags, void *prog_ids, _Inout_ uint32_t *prog_cnt)');
/** A new fd for a loaded program by its kernel id (-errno when it is gone); the caller closes it. */
export const bpf_prog_get_fd_by_id = bind<(id: number) => number>('int bpf_prog_get_fd_by_id(uint32_t id)');
export const libbpf_num_possible_cpus = bind<() => number>('int libbpf_num_possible_cpus(void)');

/** Builds the open options struct by hand: LIBBPF_OPTS is a macro, not a symbol. */
export function openOptions(options: OpenOptions): unknown {
  lib();
  return {
    sz: koffi.sizeof(OpenOpts),
    object_name: options.objectName ?? null,
    relaxed_maps: false,
    pin_root_path: null,
    unused: 0,
    kconfig: null,
    btf_custom_path: null,
    kernel_log_buf: options.kernelLogBuf,
    kernel_log_size: options.kernelLogBuf.length,
    kernel_log_level: 0,
  };
}

export const LIBBPF_WARN = 0;
export const LIBBPF_INFO = 1;
export const LIBBPF_DEBUG = 2;

let printCallback: unknown;
let printHandler: ((level: number, message: string) => void) | undefined;

/**
 * Routes libbpf's own messages to `handler` instead of stderr. libbpf hands a printf format and
 * a va_list; libc's vsnprintf formats it inside the callback, while the va_list is still valid.
 */
export function setLibbpfPrint(handler: (level: number, message: string) => void): void {
  printHandler = handler;
  if (printCallback !== undefined) return;
  const setPrint = lib().func('void *libbpf_set_print(ambit_libbpf_print_fn *fn)');
  const buf = Buffer.alloc(4096);
  printCallback = koffi.register((level: number, fmt: string, ap: unknown) => {
    const n = vsnprintf(buf, buf.length, fmt, ap);
    printHandler?.(level, buf.toString('utf8', 0, Math.max(0, Math.min(n, buf.length - 1))).trimEnd());
    return 0;
  }, koffi.pointer(PrintFn));
  setPrint(printCallback);
}

export function errno(): number {
  return koffi.errno();
}
