/**
 * Sockets inside a pod's network namespace. The main thread enters the pod's netns with
 * setns(2), creates the socket, and returns at once to its own netns; the socket stays in the
 * pod's netns for life. Node.js then serves or connects it through its fd. libuv's worker
 * threads never move, so nothing else in the process notices.
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { Socket } from 'node:net';
import * as libc from '../../native/libc.js';
import { addrToBytes } from '../ebpf/addr.js';
import { AMBIT } from '../ebpf/layout.generated.js';
import { errnoName } from '../ebpf/errors.js';

export class NetnsError extends Error {
  override readonly name = 'NetnsError';
  constructor(readonly code: 'AMBIT_E_NETNS_ENTER' | 'AMBIT_E_NETNS_SOCKET', message: string, readonly errno?: number) {
    super(errno === undefined ? message : `${message} (${errnoName(errno)})`);
  }
}

let ownNetnsFd: number | undefined;

function fail(code: NetnsError['code'], message: string): never {
  throw new NetnsError(code, message, libc.errno());
}

/** Runs `fn` synchronously with the main thread inside the netns at `netnsPath`. */
export function inNetns<T>(netnsPath: string, fn: () => T): T {
  // The thread's own netns, kept open for the way back (thread-self: setns moves one thread).
  ownNetnsFd ??= openSync('/proc/thread-self/ns/net', 'r');
  let target: number;
  try {
    target = openSync(netnsPath, 'r');
  } catch (err) {
    throw new NetnsError('AMBIT_E_NETNS_ENTER', `cannot open network namespace ${netnsPath}: ${(err as Error).message}`);
  }
  try {
    if (libc.setns(target, libc.CLONE_NEWNET) < 0) fail('AMBIT_E_NETNS_ENTER', `cannot enter network namespace ${netnsPath}`);
    try {
      return fn();
    } finally {
      if (libc.setns(ownNetnsFd, libc.CLONE_NEWNET) < 0) {
        // Staying in the pod's netns would silently misroute everything after: stop here.
        process.stderr.write(`ambit: cannot return to own network namespace (${errnoName(libc.errno())}); exiting\n`);
        process.exit(70);
      }
    }
  } finally {
    closeSync(target);
  }
}

function sockaddr(host: string, port: number): { family: number; addr: Buffer } {
  const bytes = addrToBytes(host);
  if (host.includes(':')) {
    const addr = Buffer.alloc(28);
    addr.writeUInt16LE(libc.AF_INET6, 0);
    addr.writeUInt16BE(port, 2);
    bytes.copy(addr, 8);
    return { family: libc.AF_INET6, addr };
  }
  const addr = Buffer.alloc(16);
  addr.writeUInt16LE(libc.AF_INET, 0);
  addr.writeUInt16BE(port, 2);
  bytes.copy(addr, 4, 12, 16);
  return { family: libc.AF_INET, addr };
}

function setIntOpt(fd: number, level: number, name: number, value: number, what: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value);
  if (libc.setsockopt(fd, level, name, b, 4) < 0) {
    const errno = libc.errno();
    libc.close(fd);
    throw new NetnsError('AMBIT_E_NETNS_SOCKET', `setsockopt ${what}`, errno);
  }
}

export interface SocketOptions {
  /** SO_MARK; ambit marks its own sockets so that its eBPF hooks leave them alone. */
  mark?: number;
  /** For IPv6 sockets: accept IPv4 too (IPV6_V6ONLY=0). */
  dualStack?: boolean;
  /**
   * SO_REUSEPORT (listeners): another process of the same user may listen on the same address
   * beside this one, forming a reuseport group — how a new node agent takes over from the old one
   * with no moment where nothing listens (docs/DATAPATH.md, "Restarts and upgrades").
   */
  reusePort?: boolean;
}

/** A non-blocking TCP socket made in the current netns (call inside `inNetns`). */
export function tcpSocket(family: number, options: SocketOptions = {}): number {
  const fd = libc.socket(family, libc.SOCK_STREAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC, 0);
  if (fd < 0) fail('AMBIT_E_NETNS_SOCKET', 'socket');
  if (options.mark !== undefined) setIntOpt(fd, libc.SOL_SOCKET, libc.SO_MARK, options.mark, 'SO_MARK');
  if (family === libc.AF_INET6) setIntOpt(fd, libc.IPPROTO_IPV6, libc.IPV6_V6ONLY, options.dualStack ? 0 : 1, 'IPV6_V6ONLY');
  return fd;
}

/** A non-blocking TCP socket for IPv4 or IPv6, made in the current netns. */
export const tcpSocketOf = (version: 4 | 6, options: SocketOptions = {}): number => tcpSocket(version === 4 ? libc.AF_INET : libc.AF_INET6, options);

/** A listening TCP socket on host:port inside the netns at `netnsPath`; returns its fd. */
export function listenInNetns(netnsPath: string, host: string, port: number, options: SocketOptions = {}): number {
  return inNetns(netnsPath, () => {
    const { family, addr } = sockaddr(host, port);
    const fd = tcpSocket(family, options);
    setIntOpt(fd, libc.SOL_SOCKET, libc.SO_REUSEADDR, 1, 'SO_REUSEADDR');
    if (options.reusePort) setIntOpt(fd, libc.SOL_SOCKET, libc.SO_REUSEPORT, 1, 'SO_REUSEPORT');
    if (libc.bind(fd, addr, addr.length) < 0 || libc.listen(fd, 1024) < 0) {
      const errno = libc.errno();
      libc.close(fd);
      throw new NetnsError('AMBIT_E_NETNS_SOCKET', `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port} in ${netnsPath}`, errno);
    }
    return fd;
  });
}

/**
 * A listening TCP socket with SO_REUSEPORT on host:port in this process's own netns (the node's);
 * returns its fd for `server.listen({ fd })`. Node.js 20's `listen()` has no `reusePort`, and
 * without it a second node agent could not start beside the first (`EADDRINUSE`).
 */
export function listenReusePort(host: string, port: number): number {
  const { family, addr } = sockaddr(host, port);
  const fd = tcpSocket(family, { dualStack: host === '::' });
  setIntOpt(fd, libc.SOL_SOCKET, libc.SO_REUSEADDR, 1, 'SO_REUSEADDR');
  setIntOpt(fd, libc.SOL_SOCKET, libc.SO_REUSEPORT, 1, 'SO_REUSEPORT');
  if (libc.bind(fd, addr, addr.length) < 0 || libc.listen(fd, 511) < 0) {
    const errno = libc.errno();
    libc.close(fd);
    throw new NetnsError('AMBIT_E_NETNS_SOCKET', `cannot listen on ${host.includes(':') ? `[${host}]` : host}:${port}`, errno);
  }
  return fd;
}

/**
 * Writes a sysctl of the netns at `netnsPath` (`net/ipv4/tcp_migrate_req`). procfs resolves
 * /proc/sys/net/* by the netns of the thread that opens the file, so it is opened while the
 * main thread is inside the netns; the write through the open file then lands there too.
 */
export function setNetnsSysctl(netnsPath: string, name: string, value: string): void {
  if (!/^net\/[a-z0-9_./-]+$/.test(name) || name.includes('..')) throw new NetnsError('AMBIT_E_NETNS_SOCKET', `not a net sysctl: ${name}`);
  const fd = inNetns(netnsPath, () => {
    try {
      return openSync(`/proc/sys/${name}`, 'w');
    } catch (err) {
      throw new NetnsError('AMBIT_E_NETNS_SOCKET', `cannot open /proc/sys/${name} in ${netnsPath}: ${(err as Error).message}`);
    }
  });
  try {
    writeSync(fd, value);
  } finally {
    closeSync(fd);
  }
}

/** Reads a sysctl of the netns at `netnsPath`, as `setNetnsSysctl` writes it. */
export function getNetnsSysctl(netnsPath: string, name: string): string {
  const fd = inNetns(netnsPath, () => openSync(`/proc/sys/${name}`, 'r'));
  try {
    return readFileSync(fd, 'utf8').trim();
  } finally {
    closeSync(fd);
  }
}

/** An unconnected TCP socket inside the netns, for `new net.Socket({ fd }).connect(...)`. */
export function socketInNetns(netnsPath: string, family: 4 | 6, options: SocketOptions = {}): number {
  return inNetns(netnsPath, () => tcpSocket(family === 4 ? libc.AF_INET : libc.AF_INET6, options));
}

function getU64Opt(fd: number, name: number, what: string): bigint {
  const value = Buffer.alloc(8);
  const len = [8];
  if (libc.getsockopt(fd, libc.SOL_SOCKET, name, value, len) < 0) fail('AMBIT_E_NETNS_SOCKET', `getsockopt ${what}`);
  return value.readBigUInt64LE(0);
}

/**
 * A UDP socket bound to host:port inside the netns at `netnsPath` (port 0: any); returns its fd,
 * for `dgram.createSocket(...).bind({ fd })`. The node agent's DNS listener and the sockets it
 * forwards pods' queries from.
 */
export function udpSocketInNetns(netnsPath: string, host: string, port: number, options: SocketOptions = {}): number {
  return inNetns(netnsPath, () => {
    const { family, addr } = sockaddr(host, port);
    const fd = libc.socket(family, libc.SOCK_DGRAM | libc.SOCK_NONBLOCK | libc.SOCK_CLOEXEC, 0);
    if (fd < 0) fail('AMBIT_E_NETNS_SOCKET', 'socket');
    if (options.mark !== undefined) setIntOpt(fd, libc.SOL_SOCKET, libc.SO_MARK, options.mark, 'SO_MARK');
    if (family === libc.AF_INET6) setIntOpt(fd, libc.IPPROTO_IPV6, libc.IPV6_V6ONLY, options.dualStack ? 0 : 1, 'IPV6_V6ONLY');
    if (options.reusePort) setIntOpt(fd, libc.SOL_SOCKET, libc.SO_REUSEPORT, 1, 'SO_REUSEPORT');
    if (libc.bind(fd, addr, addr.length) < 0) {
      const errno = libc.errno();
      libc.close(fd);
      throw new NetnsError('AMBIT_E_NETNS_SOCKET', `cannot bind UDP ${host.includes(':') ? `[${host}]` : host}:${port} in ${netnsPath}`, errno);
    }
    return fd;
  });
}

/** The kernel's cookie for the netns at `netnsPath` (the key of every per-pod map entry). */
export function netnsCookie(netnsPath: string): bigint {
  return inNetns(netnsPath, () => {
    const fd = libc.socket(libc.AF_INET, libc.SOCK_STREAM | libc.SOCK_CLOEXEC, 0);
    if (fd < 0) fail('AMBIT_E_NETNS_SOCKET', 'socket');
    try {
      return getU64Opt(fd, libc.SO_NETNS_COOKIE, 'SO_NETNS_COOKIE');
    } finally {
      libc.close(fd);
    }
  });
}

/** The mark ambit's own sockets carry. */
export const AGENT_SOCKET_MARK = AMBIT.SOCKET_MARK;

export function closeFd(fd: number): void {
  libc.close(fd);
}

/** The most `httpGetInNetns` reads of an answer. */
export const NETNS_HTTP_MAX_BYTES = 64 * 1024 * 1024;

/**
 * A plain HTTP GET from inside a network namespace (a socket made there, then connected): how the
 * CLI and the local runtime reach a Prometheus or a metrics endpoint that only exists in one of
 * the local cluster's namespaces. The answer's body is read up to `NETNS_HTTP_MAX_BYTES`.
 */
export function httpGetInNetns(netnsPath: string, host: string, port: number, path: string, timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  return httpRequestInNetns(netnsPath, host, port, { method: 'GET', path, timeoutMs });
}

/** One HTTP/1.1 request from a socket made in `netnsPath`; resolves with the status and the body's text (at most NETNS_HTTP_MAX_BYTES). */
export function httpRequestInNetns(netnsPath: string, host: string, port: number, opts: { method: string; path: string; body?: string; headers?: Record<string, string>; timeoutMs?: number }): Promise<{ status: number; body: string }> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const { path } = opts;
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      // No `agent`: with one (even `false`, which makes a fresh Agent) Node ignores createConnection.
      host, port, path, method: opts.method, timeout: timeoutMs,
      headers: { ...(opts.body !== undefined ? { 'content-length': String(Buffer.byteLength(opts.body)) } : {}), ...opts.headers },
      createConnection: () => {
        const socket = new Socket({ fd: socketInNetns(netnsPath, host.includes(':') ? 6 : 4), readable: true, writable: true });
        return socket.connect(port, host);
      },
    }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > NETNS_HTTP_MAX_BYTES) req.destroy(new Error(`http://${host}:${port}${path} answered more than ${NETNS_HTTP_MAX_BYTES} bytes`));
        else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`http://${host}:${port}${path} did not answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}
