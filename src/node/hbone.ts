/**
 * HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3, on port 15008.
 *
 * Client: `HbonePool.open()` gives a CONNECT stream to `authority` (the destination's
 * `ip:port`) through the HBONE listener at `address`, presenting the *source workload's*
 * certificate and accepting only a server that presents the expected SPIFFE ID. TCP
 * connections are made by the caller's `socket()` (inside the source pod's netns, so traffic
 * leaves with the pod's IP) and pooled per (source pod, source certificate, destination identity,
 * listener address): many streams share one connection, which closes after `idleMs` with no
 * stream.
 *
 * Server: `HboneServer.handle(socket)` terminates mTLS for one workload (its certificate, the
 * mesh trust bundle, client certificates required) and hands each CONNECT stream to `onTunnel`
 * with the peer's SPIFFE ID.
 */
import { randomUUID } from 'node:crypto';
import * as http2 from 'node:http2';
import { Socket } from 'node:net';
import * as tls from 'node:tls';
import type { Logger } from 'pino';
import type { WorkloadCertificate } from '../identity/cert-manager.js';
import { silentLogger } from '../telemetry/log.js';

export const HBONE_PORT = 15008;

/** Per-stream and per-connection HTTP/2 windows: large enough that one tunnel is not window-bound. */
const STREAM_WINDOW = 4 * 1024 * 1024;
const SESSION_WINDOW = 32 * 1024 * 1024;
const H2_SETTINGS: http2.Settings = { initialWindowSize: STREAM_WINDOW, maxConcurrentStreams: 1000, enablePush: false };

/** Node's TLS takes keys as PEM: each certificate's key is exported once, in memory only. */
const keyPems = new WeakMap<WorkloadCertificate, string>();
function keyPem(cert: WorkloadCertificate): string {
  let pem = keyPems.get(cert);
  if (!pem) keyPems.set(cert, (pem = cert.key.export({ type: 'pkcs8', format: 'pem' }) as string));
  return pem;
}

/** The SPIFFE ID in a certificate's URI SAN. */
export function spiffeIdOf(cert: { subjectaltname?: string } | undefined): string | undefined {
  const san = cert?.subjectaltname ?? '';
  for (const part of san.split(/,\s*/)) if (part.startsWith('URI:spiffe://')) return part.slice(4);
  return undefined;
}

export class HboneError extends Error {
  override readonly name = 'HboneError';
  constructor(
    message: string,
    /** What the app should see: 'refused' (nothing listens, or policy said no), 'reset', 'timeout', 'unreachable'. */
    readonly kind: 'refused' | 'reset' | 'timeout' | 'unreachable',
    readonly status?: number,
  ) {
    super(message);
  }
}

export interface HboneSource {
  /** Pool partition: connections are made from inside this pod's netns. */
  pod: string;
  cert: WorkloadCertificate;
  roots: string[];
  /** A fresh unconnected TCP socket fd for `family`, where the connection should originate. */
  socket(family: 4 | 6): number;
}

export interface HboneTarget {
  /** The HBONE listener (the destination pod's or a waypoint's IP) and port. */
  address: string;
  port?: number;
  /** The SPIFFE ID the listener must present. */
  identity: string;
  /** What the tunnel is for: `ip:port` of the destination. */
  authority: string;
}

interface PoolEntry {
  key: string;
  session?: http2.ClientHttp2Session;
  connecting?: Promise<http2.ClientHttp2Session>;
  streams: number;
  idle?: NodeJS.Timeout;
}

export interface HbonePoolOptions {
  idleMs?: number;
  connectTimeoutMs?: number;
  log?: Logger;
}

export class HbonePool {
  private readonly entries = new Map<string, PoolEntry>();
  private readonly idleMs: number;
  private readonly connectTimeoutMs: number;
  private readonly log: Logger;
  /** Connections made and reused, for metrics and tests. */
  readonly stats = { connections: 0, reused: 0 };

  constructor(opts: HbonePoolOptions = {}) {
    this.idleMs = opts.idleMs ?? 60_000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.log = opts.log ?? silentLogger;
  }

  get size(): number {
    return [...this.entries.values()].filter((e) => e.session).length;
  }

  /** A CONNECT stream, once the far end answered 200. */
  async open(source: HboneSource, target: HboneTarget, headers: Record<string, string> = {}): Promise<http2.ClientHttp2Stream> {
    const port = target.port ?? HBONE_PORT;
    const key = `${source.pod}|${source.cert.serial}|${target.identity}|${target.address}:${port}`;
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = { key, streams: 0 }));
    const session = await this.session(entry, source, target, port);
    entry.streams++;
    clearTimeout(entry.idle);
    const stream = session.request({ ':method': 'CONNECT', ':authority': target.authority, ...headers }, { endStream: false });
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      entry.streams--;
      if (entry.streams === 0 && this.entries.get(key) === entry) {
        entry.idle = setTimeout(() => this.drop(entry, 'idle'), this.idleMs);
        entry.idle.unref();
      }
    };
    stream.once('close', release);
    return new Promise((resolve, reject) => {
      const fail = (err: HboneError) => {
        release();
        stream.destroy();
        reject(err);
      };
      stream.once('response', (h) => {
        const status = Number(h[':status']);
        if (status === 200) return resolve(stream);
        const kind = status === 401 || status === 403 || status === 503 ? 'refused' : status === 504 ? 'timeout' : 'reset';
        fail(new HboneError(`${target.authority} via ${target.address}:${port}: ${status} ${String(h['ambit-error'] ?? '')}`.trim(), kind, status));
      });
      stream.once('error', (err) => fail(new HboneError(`${target.authority} via ${target.address}:${port}: ${err.message}`, 'reset')));
      stream.once('close', () => {
        if (stream.rstCode && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) fail(new HboneError(`${target.authority}: stream reset (${stream.rstCode})`, 'reset'));
      });
    });
  }

  private async session(entry: PoolEntry, source: HboneSource, target: HboneTarget, port: number): Promise<http2.ClientHttp2Session> {
    const s = entry.session;
    if (s && !s.closed && !s.destroyed) {
      this.stats.reused++;
      return s;
    }
    entry.connecting ??= this.connect(entry, source, target, port).finally(() => { entry.connecting = undefined; });
    return entry.connecting;
  }

  private connect(entry: PoolEntry, source: HboneSource, target: HboneTarget, port: number): Promise<http2.ClientHttp2Session> {
    const family = target.address.includes(':') ? 6 : 4;
    return new Promise((resolve, reject) => {
      let raw: Socket;
      try {
        raw = new Socket({ fd: source.socket(family), readable: true, writable: true });
      } catch (err) {
        reject(new HboneError(`cannot make a socket for ${target.address}: ${(err as Error).message}`, 'unreachable'));
        return;
      }
      // Connect first: TLS starts on a socket that is connecting, and reads at once from one that is not.
      raw.setNoDelay(true);
      raw.connect(port, target.address);
      const secure = tls.connect({
        socket: raw,
        cert: source.cert.chain.join(''),
        key: keyPem(source.cert),
        ca: source.roots,
        minVersion: 'TLSv1.3',
        ALPNProtocols: ['h2'],
        rejectUnauthorized: true,
        // The server is named by its SPIFFE ID, not a DNS name.
        checkServerIdentity: (_host, cert) => {
          const id = spiffeIdOf(cert);
          return id === target.identity ? undefined : new Error(`expected ${target.identity}, the server presented ${id ?? 'no SPIFFE ID'}`);
        },
      });
      const timer = setTimeout(() => secure.destroy(new HboneError(`connect to ${target.address}:${port} timed out`, 'timeout')), this.connectTimeoutMs);
      const session = http2.connect(`https://${family === 6 ? `[${target.address}]` : target.address}:${port}`, {
        createConnection: () => secure,
        settings: H2_SETTINGS,
      });
      const onError = (err: Error & { code?: string }) => {
        clearTimeout(timer);
        const kind = err instanceof HboneError ? err.kind : err.code === 'ECONNREFUSED' ? 'refused' : err.code === 'ETIMEDOUT' ? 'timeout' : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH' ? 'unreachable' : 'reset';
        reject(new HboneError(`HBONE to ${target.address}:${port}: ${err.message}`, kind));
        this.drop(entry, err.message, session);
      };
      session.once('error', onError);
      session.once('connect', () => {
        clearTimeout(timer);
        session.off('error', onError);
        session.setLocalWindowSize(SESSION_WINDOW);
        session.on('error', (err) => this.log.debug({ err: err.message, target: target.address }, 'HBONE connection error'));
        session.once('close', () => this.drop(entry, 'closed', session));
        session.once('goaway', () => this.drop(entry, 'goaway', session));
        entry.session = session;
        this.stats.connections++;
        resolve(session);
      });
    });
  }

  private drop(entry: PoolEntry, why: string, session = entry.session): void {
    if (session && entry.session !== session && entry.session) {
      session.destroy();
      return;
    }
    clearTimeout(entry.idle);
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    if (session && !session.destroyed) {
      if (why === 'idle') session.close();
      else session.destroy();
    }
    entry.session = undefined;
  }

  /** Closes every pooled connection (streams in flight are reset). */
  close(): void {
    for (const entry of [...this.entries.values()]) this.drop(entry, 'shutdown');
  }
}

export interface TunnelInfo {
  /** The peer's SPIFFE ID (verified against the trust bundle). */
  peerIdentity?: string;
  authority: string;
  headers: http2.IncomingHttpHeaders;
  remoteAddress: string;
  remotePort: number;
  tlsVersion?: string;
  id: string;
}

export interface HboneServerOptions {
  /** The certificate this listener presents (the workload's); called for every new connection. */
  certificate(): Promise<WorkloadCertificate>;
  roots(): string[];
  onTunnel(stream: http2.ServerHttp2Stream, info: TunnelInfo): void;
  log?: Logger;
}

/** One workload's HBONE listener: accepted sockets are handed to `handle`. */
export class HboneServer {
  private readonly server: http2.Http2SecureServer;
  private serial = '';
  private bundle = '';
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  constructor(private readonly opts: HboneServerOptions) {
    this.server = http2.createSecureServer({
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      settings: H2_SETTINGS,
      allowHTTP1: false,
    });
    this.server.on('session', (session) => {
      this.sessions.add(session);
      session.setLocalWindowSize(SESSION_WINDOW);
      session.once('close', () => this.sessions.delete(session));
      session.on('error', () => { /* the socket's end is reported by its streams */ });
    });
    this.server.on('stream', (stream, headers) => this.stream(stream, headers));
    this.server.on('tlsClientError', (err, socket) => {
      // A TCP probe (connect, close) hangs up before any handshake: that is not worth a line.
      if (err.message === 'socket hang up' || (err as NodeJS.ErrnoException).code === 'ECONNRESET') opts.log?.debug({ remote: socket.remoteAddress }, 'connection closed before the TLS handshake');
      else opts.log?.info({ err: err.message, remote: socket.remoteAddress }, 'HBONE handshake refused');
    });
  }

  async handle(socket: Socket): Promise<void> {
    socket.on('error', () => { /* a reset before the handshake */ });
    // HTTP/2 frames many small writes: Nagle's algorithm would hold them back for the peer's ACK.
    socket.setNoDelay(true);
    try {
      const cert = await this.opts.certificate();
      const roots = this.opts.roots().join('');
      if (cert.serial !== this.serial || roots !== this.bundle) {
        this.server.setSecureContext({ cert: cert.chain.join(''), key: keyPem(cert), ca: this.opts.roots(), minVersion: 'TLSv1.3' });
        this.serial = cert.serial;
        this.bundle = roots;
      }
    } catch (err) {
      this.opts.log?.warn({ err: (err as Error).message }, 'HBONE connection refused: no certificate for this workload yet');
      socket.destroy();
      return;
    }
    this.server.emit('connection', socket);
  }

  private stream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => { /* reported where the tunnel is piped */ });
    if (headers[':method'] !== 'CONNECT' || !headers[':authority']) {
      stream.respond({ ':status': 405, 'ambit-error': 'HBONE accepts CONNECT only' }, { endStream: true });
      return;
    }
    const socket = stream.session?.socket as tls.TLSSocket | undefined;
    const peer = socket?.getPeerCertificate?.();
    this.opts.onTunnel(stream, {
      peerIdentity: spiffeIdOf(peer),
      authority: headers[':authority'],
      headers,
      remoteAddress: socket?.remoteAddress ?? '',
      remotePort: socket?.remotePort ?? 0,
      tlsVersion: socket?.getProtocol?.() ?? undefined,
      id: randomUUID(),
    });
  }

  /** Closes every connection: GOAWAY, then streams in flight get `graceMs` before they are reset. */
  async close(graceMs = 0): Promise<void> {
    const sessions = [...this.sessions];
    for (const s of sessions) s.close();
    if (graceMs > 0 && sessions.length > 0) {
      await Promise.race([
        Promise.all(sessions.map((s) => new Promise((r) => s.once('close', r)))),
        new Promise((r) => setTimeout(r, graceMs).unref()),
      ]);
    }
    for (const s of sessions) s.destroy();
  }
}

