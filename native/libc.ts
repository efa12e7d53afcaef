/**
 * koffi bindings to the few libc calls Node.js does not expose: entering a network namespace
 * and making sockets there (setns, socket, bind, listen, setsockopt, getsockopt, close).
 * Every call returns -1 and sets errno on failure; `errno()` reads it right after the call.
 */
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');

export const setns = libc.func('int setns(int fd, int nstype)') as (fd: number, nstype: number) => number;
export const socket = libc.func('int socket(int domain, int type, int protocol)') as (
  domain: number, type: number, protocol: number) => number;
export const bind = libc.func('int bind(int fd, const void *addr, uint32_t len)') as (
  fd: number, addr: Buffer, len: number) => number;
export const listen = libc.func('int listen(int fd, int backlog)') as (fd: number, backlog: number) => number;
export const setsockopt = libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)') as (
  fd: number, level: number, name: number, value: Buffer, len: number) => number;
export const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ void *value, _Inout_ uint32_t *len)') as (
  fd: number, level: number, name: number, value: Buffer, len: number[]) => number;
export const close = libc.func('int close(int fd)') as (fd: number) => number;
export const vsnprintf = libc.func('int vsnprintf(_Out_ uint8_t *buf, size_t size, const char *fmt, void *ap)') as (
  buf: Buffer, size: number, fmt: string, ap: unknown) => number;

export function errno(): number {
  return koffi.errno();
}

export const CLONE_NEWNET = 0x40000000;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_REUSEPORT = 15;
export const SO_MARK = 36;
export const SO_COOKIE = 57;
export const SO_NETNS_COOKIE = 71;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
