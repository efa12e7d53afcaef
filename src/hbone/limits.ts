/**
 * HBONE's limits: how much of a node agent one peer, or one pod's listener, may hold.
 *
 * One `HboneLimiter` per node agent is shared by the HBONE listeners of all its pods, so a peer
 * IP is counted across the node (a peer may not take 128 connections from each of 100 pods).
 * It admits a connection before its TLS handshake and a CONNECT stream before `onTunnel`, and
 * counts what it refused by reason for `ambit_hbone_refused_total`. Refusals are logged at a
 * bounded rate: a flood costs the log a few lines per interval, not one per attempt.
 *
 * Answers to the peer carry a stable code (`ambit-code`), never a policy name or an internal
 * reason: those go to the log and the access log only.
 */
import { constants as h2, type ServerHttp2Stream } from 'node:http2';
import type { Logger } from 'pino';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { silentLogger } from '../telemetry/log.js';

/** The header that carries an HBONE refusal's code to the peer. */
export const HBONE_CODE_HEADER = 'ambit-code';

/**
 * What an HBONE peer may learn about a refused CONNECT: one of these, with the HTTP status.
 * Stable: clients and dashboards may match on them.
 */
export const HBONE_CODES = {
  /** 405: not a CONNECT, or no authority. */
  badRequest: 'bad_request',
  /** 400: the authority is not one of this listener's workload addresses. */
  wrongDestination: 'wrong_destination',
  /** 503: the destination workload is not enrolled on this node. */
  notEnrolled: 'not_enrolled',
  /** 401: an AuthorizationPolicy (or STRICT mTLS) said no. Which one is in the destination's log only. */
  denied: 'denied',
  /** 400: the authority's port is one of the node agent's own in-pod listeners (15001, 15006, 15008). */
  reservedPort: 'reserved_port',
  /** 403: the destination port is bound to a waypoint, and the peer is not one of its pods. */
  waypointRequired: 'waypoint_required',
  /** 503: nothing listens at the destination port. */
  upstreamRefused: 'upstream_refused',
  /** 504: the destination did not answer in time. */
  upstreamTimeout: 'upstream_timeout',
  /** 502: any other failure to reach the destination. */
  upstreamFailed: 'upstream_failed',
  /** 429: this peer has as many concurrent streams on the node as it may. */
  peerStreamLimit: 'peer_stream_limit',
  /** 429: this pod's listener has as many concurrent streams as it may. */
  podStreamLimit: 'pod_stream_limit',
  /** 429: the node has as many concurrent HBONE streams as it may. */
  nodeStreamLimit: 'node_stream_limit',
  /** 503: the destination's node agent is shedding new connections (at its connection bound, or behind on those it carries). */
  overloaded: 'overloaded',
} as const;
export type HboneCode = (typeof HBONE_CODES)[keyof typeof HBONE_CODES];
const KNOWN_CODES = new Set<string>(Object.values(HBONE_CODES));

export function isHboneCode(value: unknown): value is HboneCode {
  return typeof value === 'string' && KNOWN_CODES.has(value);
}

/**
 * Refuses a CONNECT stream with `status` and `code` only. The stream must not have answered
 * yet; if it has (or is gone), it is reset instead, so a refusal never throws.
 */
export function refuseTunnel(stream: ServerHttp2Stream, status: number, code: HboneCode): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close(h2.NGHTTP2_CANCEL);
    return;
  }
  stream.respond({ ':status': status, [HBONE_CODE_HEADER]: code }, { endStream: true });
}

/** Why the limiter (or the server using it) refused something: the metric's `reason` label. */
export type RefusalReason =
  | 'peer_connections' | 'pod_connections' | 'node_connections' | 'peer_streams' | 'pod_streams' | 'node_streams'
  | 'handshake_timeout' | 'handshake_failed' | 'no_certificate' | 'rapid_reset';
export const REFUSAL_REASONS: readonly RefusalReason[] = ['peer_connections', 'pod_connections', 'node_connections', 'peer_streams', 'pod_streams', 'node_streams', 'handshake_timeout', 'handshake_failed', 'no_certificate', 'rapid_reset'];

export interface HboneLimits {
  /** Concurrent connections from one peer IP to all HBONE listeners of this node. */
  maxConnectionsPerPeer: number;
  /** Concurrent connections to one pod's HBONE listener, from all peers. */
  maxConnectionsPerPod: number;
  /** Concurrent connections to all HBONE listeners of the node (all the limiter's pods). */
  maxConnections: number;
  /** Concurrent CONNECT streams from one peer IP on this node. */
  maxStreamsPerPeer: number;
  /** Concurrent CONNECT streams to one pod, from all peers. */
  maxStreamsPerPod: number;
  /** Concurrent CONNECT streams on the node. */
  maxStreams: number;
  /** Concurrent streams one connection may carry (advertised in SETTINGS; the pool opens another connection beyond it). */
  maxStreamsPerConnection: number;
  /** HTTP/2 flow-control window of each stream, both ways: what a peer may send before the receiver reads. */
  streamWindow: number;
  /** HTTP/2 flow-control window of each connection (all its streams together). */
  sessionWindow: number;
  /** nghttp2's memory for one session (header tables, frames queued to send), in MB: beyond it new streams are refused. */
  maxSessionMemoryMb: number;
  /** How long a TLS handshake may take once the TCP connection is accepted. */
  handshakeTimeoutMs: number;
  /** A server connection with no stream for this long is closed (GOAWAY): longer than the pool's own idle time, so the client closes first. */
  idleTimeoutMs: number;
  /** Refusal log lines per `logIntervalMs`; beyond that they are counted, and the count logged once the interval ends. */
  logLinesPerInterval: number;
  logIntervalMs: number;
}

/**
 * Defaults for a node proxy. Why these numbers, and the memory they bound, are in
 * docs/DATAPATH.md ("HBONE limits").
 */
export const DEFAULT_HBONE_LIMITS: Readonly<HboneLimits> = Object.freeze({
  maxConnectionsPerPeer: 128,
  maxConnectionsPerPod: 1024,
  maxConnections: 4096,
  maxStreamsPerPeer: 2048,
  maxStreamsPerPod: 16384,
  maxStreams: 32768,
  maxStreamsPerConnection: 100,
  streamWindow: 256 * 1024,
  sessionWindow: 4 * 1024 * 1024,
  maxSessionMemoryMb: 4,
  handshakeTimeoutMs: 5_000,
  idleTimeoutMs: 120_000,
  logLinesPerInterval: 10,
  logIntervalMs: 10_000,
});

export class HboneLimitsError extends Error {
  override readonly name = 'HboneLimitsError';
}

/** `overrides` on top of the defaults, each checked: a bad limit is an error that names it, not a listener without limits. */
export function hboneLimits(overrides: Partial<HboneLimits> = {}): HboneLimits {
  const limits = { ...DEFAULT_HBONE_LIMITS };
  for (const [key, value] of Object.entries(overrides)) {
    if (!(key in DEFAULT_HBONE_LIMITS)) throw new HboneLimitsError(`unknown HBONE limit "${key}" (known: ${Object.keys(DEFAULT_HBONE_LIMITS).join(', ')})`);
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new HboneLimitsError(`HBONE limit ${key} must be a positive integer, got ${JSON.stringify(value)}`);
    limits[key as keyof HboneLimits] = value;
  }
  // HTTP/2 caps windows at 2^31-1; below 16 KiB a stream cannot carry one full frame.
  for (const key of ['streamWindow', 'sessionWindow'] as const) {
    if (limits[key] < 16_384 || limits[key] > 2 ** 31 - 1) throw new HboneLimitsError(`HBONE limit ${key} must be between 16384 and 2147483647 bytes, got ${limits[key]}`);
  }
  if (limits.sessionWindow < limits.streamWindow) throw new HboneLimitsError(`HBONE limit sessionWindow (${limits.sessionWindow}) must be at least streamWindow (${limits.streamWindow}): one slow stream would stall its whole connection`);
  return limits;
}

/**
 * Limits as an operator writes them: `name=value` pairs, comma-separated
 * (`maxStreamsPerPeer=1024,maxStreams=16384`). Sizes may carry `Ki` or `Mi`
 * (`streamWindow=512Ki`). Each pair is checked, then the whole set with the defaults
 * (`hboneLimits`), so a typo is an error that names it, never a limit silently left at its default.
 */
export function parseHboneLimits(text: string): Partial<HboneLimits> {
  const out: Partial<HboneLimits> = {};
  for (const item of text.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
    const m = /^([A-Za-z]+)=(\d+)(Ki|Mi)?$/.exec(item);
    if (!m) throw new HboneLimitsError(`HBONE limit "${item}" is not NAME=INTEGER (e.g. maxStreamsPerPeer=1024, streamWindow=512Ki)`);
    // An unknown name is refused, by name, by hboneLimits() below.
    const key = m[1]!;
    if (key in out) throw new HboneLimitsError(`HBONE limit ${key} is given twice`);
    const value = Number(m[2]) * (m[3] === 'Ki' ? 1024 : m[3] === 'Mi' ? 1024 * 1024 : 1);
    if (!Number.isSafeInteger(value)) throw new HboneLimitsError(`HBONE limit ${key} is too large: ${item}`);
    out[key as keyof HboneLimits] = value;
  }
  hboneLimits(out);
  return out;
}

/** A slot taken from the limiter; `release` gives it back (once, however often it is called). */
export interface Admission { release(): void }

/** Counts per key, deleting keys that reach zero so a flood of distinct peers leaves no state behind. */
class Counts {
  private readonly map = new Map<string, number>();
  get(key: string): number { return this.map.get(key) ?? 0; }
  add(key: string, n: number): void {
    const v = this.get(key) + n;
    if (v <= 0) this.map.delete(key);
    else this.map.set(key, v);
  }
  get size(): number { return this.map.size; }
}

/**
 * Logs at most `lines` refusals per `intervalMs`; the rest are counted and reported in one line
 * when the interval is over (at the next refusal, or by a timer that does not keep the process up).
 */
export class BoundedLog {
  private windowStart = 0;
  private lines = 0;
  private suppressed = 0;
  private timer?: NodeJS.Timeout;

  private readonly log: () => Logger;

  constructor(log: Logger | (() => Logger), private readonly maxLines: number, private readonly intervalMs: number, private readonly now: () => number = Date.now) {
    this.log = typeof log === 'function' ? log : () => log;
  }

  info(fields: Record<string, unknown>, msg: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.intervalMs) {
      this.flush();
      this.windowStart = t;
      this.lines = 0;
    }
    if (this.lines < this.maxLines) {
      this.lines++;
      this.log().info(fields, msg);
      return;
    }
    this.suppressed++;
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), Math.max(1, this.windowStart + this.intervalMs - t));
      this.timer.unref();
    }
  }

  /** Reports the refusals not logged so far. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.suppressed === 0) return;
    this.log().warn({ suppressed: this.suppressed, intervalMs: this.intervalMs }, 'HBONE refusals not logged: more than the log allows per interval');
    this.suppressed = 0;
  }
}

export interface HboneLimiterOptions {
  limits?: Partial<HboneLimits>;
  /** Where refusals are logged; a function when the logger is not made yet where the limiter is. */
  log?: Logger | (() => Logger);
  /**
   * A stream cap for one peer in place of `maxStreamsPerPeer`, by its verified SPIFFE ID (and IP):
   * a waypoint carries many clients' tunnels from one address. Undefined: the default cap.
   */
  peerStreamCap?(peer: { ip: string; identity?: string }): number | undefined;
}

/** The per-node accounting of HBONE connections and streams, by peer IP and by pod. */
export class HboneLimiter {
  readonly limits: HboneLimits;
  private readonly peerConnections = new Counts();
  private readonly podConnections = new Counts();
  private readonly peerStreams = new Counts();
  private readonly podStreams = new Counts();
  private connections = 0;
  private streams = 0;
  private readonly refusedCounts = new Map<RefusalReason, number>();
  private readonly refusalLog: BoundedLog;
  private readonly listeners = new Set<(reason: RefusalReason) => void>();
  private readonly peerStreamCap?: HboneLimiterOptions['peerStreamCap'];

  constructor(opts: HboneLimiterOptions = {}) {
    this.limits = hboneLimits(opts.limits);
    this.peerStreamCap = opts.peerStreamCap;
    const log = opts.log;
    this.refusalLog = new BoundedLog(typeof log === 'function' ? log : () => log ?? silentLogger, this.limits.logLinesPerInterval, this.limits.logIntervalMs);
  }

  /** A connection from `peer` to `pod`'s listener, or the reason it is refused (already counted and logged). */
  admitConnection(peer: string, pod: string): Admission | RefusalReason {
    const peerKey = normalizeIp(peer);
    if (this.peerConnections.get(peerKey) >= this.limits.maxConnectionsPerPeer) return this.refuse('peer_connections', { peer: peerKey, pod, limit: this.limits.maxConnectionsPerPeer });
    if (this.podConnections.get(pod) >= this.limits.maxConnectionsPerPod) return this.refuse('pod_connections', { peer: peerKey, pod, limit: this.limits.maxConnectionsPerPod });
    if (this.connections >= this.limits.maxConnections) return this.refuse('node_connections', { peer: peerKey, pod, limit: this.limits.maxConnections });
    this.connections++;
    this.peerConnections.add(peerKey, 1);
    this.podConnections.add(pod, 1);
    return once(() => {
      this.connections--;
      this.peerConnections.add(peerKey, -1);
      this.podConnections.add(pod, -1);
    });
  }

  /** A CONNECT stream from `peer` to `pod`, or the reason it is refused (already counted and logged). */
  admitStream(peer: string, pod: string, detail: Record<string, unknown> = {}, identity?: string): Admission | RefusalReason {
    const peerKey = normalizeIp(peer);
    const peerCap = this.peerStreamCap?.({ ip: peerKey, ...(identity ? { identity } : {}) }) ?? this.limits.maxStreamsPerPeer;
    if (this.peerStreams.get(peerKey) >= peerCap) return this.refuse('peer_streams', { peer: peerKey, pod, limit: peerCap, ...detail });
    if (this.podStreams.get(pod) >= this.limits.maxStreamsPerPod) return this.refuse('pod_streams', { peer: peerKey, pod, limit: this.limits.maxStreamsPerPod, ...detail });
    if (this.streams >= this.limits.maxStreams) return this.refuse('node_streams', { peer: peerKey, pod, limit: this.limits.maxStreams, ...detail });
    this.streams++;
    this.peerStreams.add(peerKey, 1);
    this.podStreams.add(pod, 1);
    return once(() => {
      this.streams--;
      this.peerStreams.add(peerKey, -1);
      this.podStreams.add(pod, -1);
    });
  }

  /** Counts and logs (at the bounded rate) a refusal decided elsewhere: a failed or slow handshake. */
  refuse(reason: RefusalReason, detail: Record<string, unknown>): RefusalReason {
    this.refusedCounts.set(reason, (this.refusedCounts.get(reason) ?? 0) + 1);
    for (const l of this.listeners) l(reason);
    this.refusalLog.info({ reason, ...detail }, 'HBONE refused');
    return reason;
  }

  /** Refusals so far, by reason. */
  refused(): Record<RefusalReason, number> {
    return Object.fromEntries(REFUSAL_REASONS.map((r) => [r, this.refusedCounts.get(r) ?? 0])) as Record<RefusalReason, number>;
  }

  /** What is held now: connections and streams, and how many distinct peers hold them. */
  usage(): { connections: number; streams: number; peers: number } {
    return { connections: this.connections, streams: this.streams, peers: this.peerConnections.size };
  }

  /** Concurrent connections and streams of one peer IP. */
  peerUsage(peer: string): { connections: number; streams: number } {
    const key = normalizeIp(peer);
    return { connections: this.peerConnections.get(key), streams: this.peerStreams.get(key) };
  }

  /**
   * `ambit_hbone_refused_total{reason}` (every reason present from the start, at 0),
   * `ambit_hbone_server_connections` and `ambit_hbone_server_streams`.
   */
  registerMetrics(metrics: MeshMetrics): void {
    const refused = metrics.counter('ambit_hbone_refused_total', 'HBONE connections, handshakes and streams refused by this node, by reason', ['reason']);
    for (const reason of REFUSAL_REASONS) refused.inc({ reason }, this.refusedCounts.get(reason) ?? 0);
    this.listeners.add((reason) => refused.inc({ reason }));
    metrics.gauge('ambit_hbone_server_connections', 'HBONE connections accepted by this node and open now', [], (g) => g.set(this.usage().connections));
    metrics.gauge('ambit_hbone_server_streams', 'HBONE CONNECT streams open now on this node', [], (g) => g.set(this.usage().streams));
  }
}

function once(fn: () => void): Admission {
  let done = false;
  return { release: () => { if (!done) { done = true; fn(); } } };
}

function normalizeIp(ip: string): string {
  return ip.startsWith('::ffff:') ? ip.slice(7) : ip;
}
