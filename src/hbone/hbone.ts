/**
 * HBONE: TCP carried in HTTP/2 CONNECT streams over mutual TLS 1.3, on port 15008.
 *
 * Client: `HbonePool.open()` gives a CONNECT stream to `authority` (the destination's
 * `ip:port`) through the HBONE listener at `address`, presenting the *source workload's*
 * certificate and accepting only a server that presents the expected SPIFFE ID. TCP
 * connections are made by the caller's `socket()` (inside the source pod's netns, so traffic
 * leaves with the pod's IP) and pooled per (source pod, source certificate, destination identity,
 * listener address): many streams share one connection, up to the server's SETTINGS cap (then
 * another connection is opened), and a connection closes after `idleMs` with no stream.
 *
 * Server: `HboneServer.handle(socket)` terminates mTLS for one workload (its certificate, the
 * mesh trust bundle, client certificates required) and hands each CONNECT stream to `onTunnel`
 * with the peer's SPIFFE ID — within the limits of `hbone-limits.ts`: connections and streams
 * admitted per peer, pod and node, the handshake timed, idle connections closed, windows that
 * bound what a peer that never reads can make it hold.
 */
import { randomUUID } from 'node:crypto';
import * as http2 from 'node:http2';
import { Socket } from 'node:net';
import * as tls from 'node:tls';
import type { Logger } from 'pino';
import type { WorkloadCertificate } from '../identity/cert-manager.js';
import { silentLogger } from '../telemetry/log.js';
import { DEFAULT_HBONE_LIMITS, HBONE_CODE_HEADER, HBONE_CODES, HboneLimiter, hboneLimits, isHboneCode, refuseTunnel, type HboneCode, type HboneLimits } from './limits.js';

export { HBONE_CODE_HEADER, HBONE_CODES, HboneLimiter, refuseTunnel, type HboneCode, type HboneLimits } from './limits.js';

export const HBONE_PORT = 15008;

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
    /** The far end's `ambit-code`, when it refused the stream with a known one. */
    readonly code?: HboneCode,
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

/** One pooled connection and the streams it carries now. */
interface PooledSession {
  session: http2.ClientHttp2Session;
  streams: number;
  idle?: NodeJS.Timeout;
}

interface PoolEntry {
  key: string;
  sessions: PooledSession[];
  connecting?: Promise<PooledSession>;
}

export interface HbonePoolOptions {
  idleMs?: number;
  connectTimeoutMs?: number;
  /** Flow-control windows this client advertises (the response direction); the defaults are the server's. */
  streamWindow?: number;
  sessionWindow?: number;
  log?: Logger;
}

export class HbonePool {
  private readonly entries = new Map<string, PoolEntry>();
  private readonly idleMs: number;
  private readonly connectTimeoutMs: number;
  private readonly sessionWindow: number;
  private readonly settings: http2.Settings;
  private readonly log: Logger;
  /** Connections made and reused, for metrics and tests. */
  readonly stats = { connections: 0, reused: 0 };

  constructor(opts: HbonePoolOptions = {}) {
    this.idleMs = opts.idleMs ?? 60_000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    const windows = hboneLimits({ streamWindow: opts.streamWindow, sessionWindow: opts.sessionWindow });
    this.sessionWindow = windows.sessionWindow;
    this.settings = { initialWindowSize: windows.streamWindow, enablePush: false };
    this.log = opts.log ?? silentLogger;
  }

  /** Open pooled connections. */
  get size(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.sessions.length;
    return n;
  }

  /** A CONNECT stream, once the far end answered 200. */
  async open(source: HboneSource, target: HboneTarget, headers: Record<string, string> = {}, retried = false): Promise<http2.ClientHttp2Stream> {
    const port = target.port ?? HBONE_PORT;
    const key = `${source.pod}|${source.cert.serial}|${target.identity}|${target.address}:${port}`;
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = { key, sessions: [] }));
    // The stream's slot is taken by session(), before any other open() can see the connection.
    const pooled = await this.session(entry, source, target, port);
    clearTimeout(pooled.idle);
    const stream = pooled.session.request({ ':method': 'CONNECT', ':authority': target.authority, ...headers }, { endStream: false });
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      pooled.streams--;
      if (pooled.streams === 0 && entry.sessions.includes(pooled)) {
        pooled.idle = setTimeout(() => this.drop(entry, pooled, 'idle'), this.idleMs);
        pooled.idle.unref();
      }
    };
    stream.once('close', release);
    return new Promise((resolve, reject) => {
      const fail = (err: HboneError) => {
        release();
        // Not destroyed here: fail() runs inside the stream's 'response' handler, which nghttp2
        // calls while it is still processing the HEADERS frame. A refusal carries END_STREAM, so
        // nghttp2 closes the stream right after the handler returns; destroying it first has Node's
        // native side use the stream after freeing it (heap corruption: the process aborts or
        // segfaults, later and elsewhere). Once the frame is processed the stream can go.
        setImmediate(() => stream.destroy());
        reject(err);
      };
      stream.once('response', (h) => {
        const status = Number(h[':status']);
        if (status === 200) return resolve(stream);
        const code = h[HBONE_CODE_HEADER];
        const kind = status === 401 || status === 403 || status === 429 || status === 503 ? 'refused' : status === 504 ? 'timeout' : 'reset';
        fail(new HboneError(`${target.authority} via ${target.address}:${port}: ${status}${typeof code === 'string' ? ` ${code}` : ''}`, kind, status, isHboneCode(code) ? code : undefined));
      });
      stream.once('error', (err) => {
        // REFUSED_STREAM: the server never processed it (a GOAWAY crossed it, from a listener
        // that is closing for a handover), so it is safe to open it again, once, elsewhere.
        if (!retried && stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) {
          release();
          stream.destroy();
          // That connection takes no new stream: out of the pool (its other streams go on).
          this.drop(entry, pooled, 'goaway');
          resolve(this.open(source, target, headers, true));
          return;
        }
        fail(new HboneError(`${target.authority} via ${target.address}:${port}: ${err.message}`, 'reset'));
      });
      stream.once('close', () => {
        if (stream.rstCode && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) fail(new HboneError(`${target.authority}: stream reset (${stream.rstCode})`, 'reset'));
      });
    });
  }

  /**
   * A connection of `entry` with room for one more stream (the server's SETTINGS say how many
   * it takes), or a new one, with that stream's slot taken: beyond the server's cap, streams
   * would wait unseen in nghttp2's queue rather than fail or flow.
   */
  private async session(entry: PoolEntry, source: HboneSource, target: HboneTarget, port: number): Promise<PooledSession> {
    for (;;) {
      for (const p of entry.sessions) {
        const s = p.session;
        if (s.closed || s.destroyed) continue;
        if (p.streams < (s.remoteSettings.maxConcurrentStreams ?? Infinity)) {
          p.streams++;
          this.stats.reused++;
          return p;
        }
      }
      if (!entry.connecting) {
        entry.connecting = this.connect(entry, source, target, port).finally(() => {
          entry.connecting = undefined;
          if (entry.sessions.length === 0 && this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
        });
        return entry.connecting;
      }
      // Another open() is connecting: its failure is ours too; once it is up, take it if it has room.
      await entry.connecting;
    }
  }

  private connect(entry: PoolEntry, source: HboneSource, target: HboneTarget, port: number): Promise<PooledSession> {
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
        settings: this.settings,
      });
      // Made for the open() that asked: its slot is taken.
      const pooled: PooledSession = { session, streams: 1 };
      const onError = (err: Error & { code?: string }) => {
        clearTimeout(timer);
        const kind = err instanceof HboneError ? err.kind : err.code === 'ECONNREFUSED' ? 'refused' : err.code === 'ETIMEDOUT' ? 'timeout' : err.code === 'EHOSTUNREACH' || err.code === 'ENETUNREACH' ? 'unreachable' : 'reset';
        reject(new HboneError(`HBONE to ${target.address}:${port}: ${err.message}`, kind));
        this.drop(entry, pooled, err.message);
      };
      // A server that closes before its SETTINGS (a listener over its connection cap resets at once).
      const onEarlyClose = () => onError(new HboneError(`HBONE to ${target.address}:${port}: the server closed the connection before HTTP/2 began (over its connection limit?)`, 'reset'));
      session.once('error', onError);
      session.once('close', onEarlyClose);
      // Ready once connected and the server's SETTINGS (its stream cap) are known.
      let connected = false;
      let settled = false;
      const ready = () => {
        if (!connected || !settled) return;
        clearTimeout(timer);
        session.off('error', onError);
        session.off('close', onEarlyClose);
        session.setLocalWindowSize(this.sessionWindow);
        session.on('error', (err) => this.log.debug({ err: err.message, target: target.address }, 'HBONE connection error'));
        session.once('close', () => this.drop(entry, pooled, 'closed'));
        session.once('goaway', () => this.drop(entry, pooled, 'goaway'));
        if (this.entries.get(entry.key) !== entry) this.entries.set(entry.key, entry);
        entry.sessions.push(pooled);
        this.stats.connections++;
        resolve(pooled);
      };
      session.once('connect', () => { connected = true; ready(); });
      session.once('remoteSettings', () => { settled = true; ready(); });
    });
  }

  /** Forgets a connection: closed gracefully when idle, destroyed otherwise (streams in flight are reset). */
  private drop(entry: PoolEntry, pooled: PooledSession, why: string): void {
    clearTimeout(pooled.idle);
    const i = entry.sessions.indexOf(pooled);
    if (i >= 0) entry.sessions.splice(i, 1);
    if (entry.sessions.length === 0 && !entry.connecting && this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    const s = pooled.session;
    if (!s.destroyed) {
      // After the server's GOAWAY (its agent hands over, or the pod leaves) the streams it
      // took go on to their end: no new ones here, and the connection closes after the last.
      if (why === 'idle' || why === 'goaway') s.close();
      else s.destroy();
    }
  }

  /** Closes every pooled connection (streams in flight are reset). */
  close(): void {
    for (const entry of [...this.entries.values()]) for (const p of [...entry.sessions]) this.drop(entry, p, 'shutdown');
    this.entries.clear();
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
  /** The node's shared accounting of peers and pods; a server without one has its own, made with `limits`. */
  limiter?: HboneLimiter;
  limits?: Partial<HboneLimits>;
  /** This listener's pod in the limiter's per-pod counts and in refusal logs. */
  pod?: string;
}

/** A server connection's open streams, and its idle timer while it has none. */
interface ServerSession {
  streams: number;
  idle?: NodeJS.Timeout;
  /** Streams its peer reset before they reached `onTunnel`, since `resetSince`. */
  resets: number;
  resetSince: number;
  /**
   * The peer's verified SPIFFE ID (null: none), read from its certificate at the first stream:
   * TLS 1.3 has no renegotiation, so it holds for the connection. Parsing the certificate again
   * for every stream was a tenth of a tunnel's CPU.
   */
  peerIdentity?: string | null;
}

/** More streams than this reset by the peer before they are answered, within `RAPID_RESET_WINDOW_MS`, is a rapid-reset flood. */
const RAPID_RESET_LIMIT = 100;
const RAPID_RESET_WINDOW_MS = 10_000;

/** One workload's HBONE listener: accepted sockets are handed to `handle`. */
export class HboneServer {
  private readonly server: http2.Http2SecureServer;
  private serial = '';
  private bundle = '';
  private readonly sessions = new Map<http2.Http2Session, ServerSession>();
  readonly limiter: HboneLimiter;
  private readonly limits: HboneLimits;
  private readonly pod: string;
  /** Every TCP connection handed to this listener and still open (in its handshake or carrying a session). */
  private readonly sockets = new Set<Socket>();
  private closing = false;

  constructor(private readonly opts: HboneServerOptions) {
    // A listener with a limiter of its own (a waypoint's) is all its limiter counts: the pod's caps are the node's.
    this.limiter = opts.limiter ?? new HboneLimiter({ limits: { maxConnectionsPerPod: DEFAULT_HBONE_LIMITS.maxConnections, maxStreamsPerPod: DEFAULT_HBONE_LIMITS.maxStreams, ...opts.limits }, log: opts.log });
    this.limits = opts.limiter ? hboneLimits({ ...opts.limiter.limits, ...opts.limits }) : this.limiter.limits;
    this.pod = opts.pod ?? `hbone-${randomUUID()}`;
    const l = this.limits;
    this.server = http2.createSecureServer({
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.3',
      allowHTTP1: false,
      // Node's default is 120 s: a peer could hold a socket (and a connection slot) that long for one SYN.
      handshakeTimeout: l.handshakeTimeoutMs,
      unknownProtocolTimeout: l.handshakeTimeoutMs,
      maxSessionMemory: l.maxSessionMemoryMb,
      // A CONNECT has a handful of headers (authority, forwarded, trace context): no need for nghttp2's 64 KiB.
      maxHeaderListPairs: 64,
      settings: { initialWindowSize: l.streamWindow, maxConcurrentStreams: l.maxStreamsPerConnection, maxHeaderListSize: 16 * 1024, enablePush: false },
    });
    this.server.on('session', (session) => {
      const state: ServerSession = { streams: 0, resets: 0, resetSince: Date.now() };
      this.sessions.set(session, state);
      session.setLocalWindowSize(l.sessionWindow);
      this.idleWhenEmpty(session, state);
      session.once('close', () => {
        clearTimeout(state.idle);
        this.sessions.delete(session);
      });
      session.on('error', () => { /* the socket's end is reported by its streams */ });
      // A handshake that ends after close(): GOAWAY at once, its peer opens its streams elsewhere.
      if (this.closing) session.close();
    });
    this.server.on('stream', (stream, headers) => this.stream(stream, headers));
    this.server.on('tlsClientError', (err: Error & { code?: string }, socket) => {
      const remote = socket.remoteAddress ?? '';
      // A TCP probe (connect, close) hangs up before any handshake: that is not worth a line.
      if (err.message === 'socket hang up' || err.code === 'ECONNRESET') opts.log?.debug({ remote }, 'connection closed before the TLS handshake');
      else if (err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') this.limiter.refuse('handshake_timeout', { peer: remote, pod: this.pod, timeoutMs: l.handshakeTimeoutMs });
      else this.limiter.refuse('handshake_failed', { peer: remote, pod: this.pod, err: err.message });
    });
    // TLS done, but no h2 in ALPN: nothing this listener speaks.
    this.server.on('unknownProtocol', (socket: tls.TLSSocket) => {
      this.limiter.refuse('handshake_failed', { peer: socket.remoteAddress ?? '', pod: this.pod, err: `ALPN ${socket.alpnProtocol || 'absent'}, not h2` });
      socket.destroy();
    });
  }

  async handle(socket: Socket): Promise<void> {
    socket.on('error', () => { /* a reset before the handshake */ });
    const remote = socket.remoteAddress;
    if (!remote) {
      // Gone before it was accepted.
      socket.destroy();
      return;
    }
    // Counted before the handshake: handshakes are what a flood makes us pay for.
    const admitted = this.limiter.admitConnection(remote, this.pod);
    if (typeof admitted === 'string') {
      socket.resetAndDestroy();
      return;
    }
    socket.once('close', () => admitted.release());
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
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
      this.limiter.refuse('no_certificate', { peer: remote, pod: this.pod, err: (err as Error).message });
      socket.destroy();
      return;
    }
    if (socket.destroyed) return;
    this.server.emit('connection', socket);
  }

  /** Arms the idle timer of a connection with no stream: a held-open connection costs a slot of its peer's cap. */
  private idleWhenEmpty(session: http2.Http2Session, state: ServerSession): void {
    clearTimeout(state.idle);
    if (state.streams > 0) return;
    state.idle = setTimeout(() => {
      this.opts.log?.debug({ remote: session.socket?.remoteAddress, idleMs: this.limits.idleTimeoutMs }, 'idle HBONE connection closed');
      session.close();
      // A peer that ignores GOAWAY still loses the connection.
      setTimeout(() => session.destroy(), this.limits.handshakeTimeoutMs).unref();
    }, this.limits.idleTimeoutMs);
    state.idle.unref();
  }

  private stream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => { /* reported where the tunnel is piped */ });
    const session = stream.session;
    const state = session ? this.sessions.get(session) : undefined;
    if (!session || !state) {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    state.streams++;
    clearTimeout(state.idle);
    stream.once('close', () => {
      state.streams--;
      if (!session.closed && !session.destroyed) this.idleWhenEmpty(session, state);
    });
    const socket = session.socket as tls.TLSSocket | undefined;
    const remoteAddress = socket?.remoteAddress ?? '';
    if (headers[':method'] !== 'CONNECT' || !headers[':authority']) {
      refuseTunnel(stream, 405, HBONE_CODES.badRequest);
      return;
    }
    // The verified peer identity: a peer the node trusts with more (a waypoint) may have a larger stream cap.
    if (state.peerIdentity === undefined) state.peerIdentity = spiffeIdOf(socket?.getPeerCertificate?.()) ?? null;
    const peerIdentity = state.peerIdentity ?? undefined;
    const admission = this.limiter.admitStream(remoteAddress, this.pod, { authority: headers[':authority'], ...(peerIdentity ? { identity: peerIdentity } : {}) }, peerIdentity);
    if (typeof admission === 'string') {
      refuseTunnel(stream, 429, admission === 'peer_streams' ? HBONE_CODES.peerStreamLimit : admission === 'pod_streams' ? HBONE_CODES.podStreamLimit : HBONE_CODES.nodeStreamLimit);
      return;
    }
    stream.once('close', () => admission.release());
    const authority = headers[':authority'];
    // Once the frames read with this one are processed: a stream its peer reset in the same read
    // (a rapid-reset flood: HEADERS, RST_STREAM, ...) is dropped before it costs a policy check
    // and a connection to the app.
    setImmediate(() => {
      if (stream.destroyed || stream.closed) {
        this.rapidReset(session, state, remoteAddress);
        return;
      }
      this.opts.onTunnel(stream, {
        peerIdentity,
        authority,
        headers,
        remoteAddress,
        remotePort: socket?.remotePort ?? 0,
        tlsVersion: socket?.getProtocol?.() ?? undefined,
        id: randomUUID(),
      });
    });
  }

  /**
   * Counts a stream its peer reset before it was answered. nghttp2 ends such a flood itself only
   * after 1000 resets, and then leaves the connection open but unread: it is destroyed here first.
   */
  private rapidReset(session: http2.Http2Session, state: ServerSession, remote: string): void {
    const now = Date.now();
    if (now - state.resetSince > RAPID_RESET_WINDOW_MS) {
      state.resets = 0;
      state.resetSince = now;
    }
    if (++state.resets <= RAPID_RESET_LIMIT || session.destroyed) return;
    this.limiter.refuse('rapid_reset', { peer: remote, pod: this.pod, resets: state.resets, windowMs: RAPID_RESET_WINDOW_MS });
    session.destroy();
  }

  /** Connections and streams this listener holds now. */
  usage(): { connections: number; streams: number } {
    let streams = 0;
    for (const s of this.sessions.values()) streams += s.streams;
    return { connections: this.sessions.size, streams };
  }

  /** Closes every connection: GOAWAY, then streams in flight get `graceMs` before they are reset. */
  async close(graceMs = 0): Promise<void> {
    this.closing = true;
    for (const s of this.sessions.keys()) s.close();
    // Connections still in their TLS handshake get their GOAWAY once it is done (above): waited
    // for too, or their peer would lose the streams it sends there when this process exits.
    const deadline = Date.now() + graceMs;
    while (this.sockets.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, Math.min(50, deadline - Date.now())));
    for (const s of this.sessions.keys()) s.destroy();
    for (const s of this.sockets) s.destroy();
  }
}

