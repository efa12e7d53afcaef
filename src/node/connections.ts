/**
 * Every connection the node agent carries, from open to close: Istio's TCP metrics (opened,
 * closed, bytes each way, flushed every few seconds for long-lived connections), one JSON
 * access-log line at close, and the list behind the admin endpoint's `/connections`.
 */
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { tcpLabels, type MeshMetrics, type Peer, type TcpLabels, type TcpSeries } from '../telemetry/metrics.js';

export interface ConnectionEndpoint extends Peer {
  ip: string;
  port?: number;
}

export interface ConnectionInfo {
  reporter: 'source' | 'destination';
  source: ConnectionEndpoint;
  destination: ConnectionEndpoint;
  service?: { hostname: string; name: string; namespace: string };
  /** mutual TLS (HBONE) or plaintext. */
  mtls: boolean;
  /** 'hbone' | 'passthrough' | 'plaintext' */
  path: 'hbone' | 'passthrough' | 'plaintext';
  /** The pod (namespace/name) on this node the connection belongs to. */
  pod: string;
  /**
   * Let through without STRICT or policy: the node's own health probes (recorded by the kernel
   * as the kubelet's). Kept out of Istio's TCP metrics, as Istio leaves probes out, but logged
   * with this reason and counted in `ambit_exempt_connections_total`.
   */
  exempt?: 'kubelet-probe';
}

export interface TrackedConnection extends ConnectionInfo {
  id: string;
  start: number;
  /** Request direction: from the source towards the destination. */
  received: number;
  /** Response direction. */
  sent: number;
  flags: string;
  error?: string;
  policy?: string;
}

const FLUSH_MS = 5000;

export class ConnectionTracker {
  private readonly open = new Map<TrackedConnection, { conn: TrackedConnection; series: TcpSeries | undefined; flushed: { sent: number; received: number } }>();
  private readonly timer: NodeJS.Timeout;
  private readonly exempted: Counter;

  constructor(private readonly metrics: MeshMetrics, private readonly access: Logger, private readonly cluster = 'Kubernetes') {
    this.exempted = metrics.counter('ambit_exempt_connections_total', 'Connections let through without STRICT or policy, by reason (kubelet-probe: the node\'s health probes)', ['reason']);
    this.timer = setInterval(() => this.flush(), FLUSH_MS);
    this.timer.unref();
  }

  /** Connections open now (both directions). */
  get size(): number {
    return this.open.size;
  }

  /** Starts tracking; `finish` must be called exactly once. */
  begin(info: ConnectionInfo): TrackedConnection {
    // Built field by field, every connection with the same shape: a spread of `info` costs
    // several times the rest of begin().
    const conn: TrackedConnection = {
      reporter: info.reporter, source: info.source, destination: info.destination, service: info.service,
      mtls: info.mtls, path: info.path, pod: info.pod, exempt: info.exempt,
      id: randomUUID(), start: Date.now(), received: 0, sent: 0, flags: '-', error: undefined, policy: undefined,
    };
    let series: TcpSeries | undefined;
    if (conn.exempt) this.exempted.inc({ reason: conn.exempt });
    else {
      series = this.metrics.takeTcp(this.labels(conn));
      series.opened++;
    }
    this.open.set(conn, { conn, series, flushed: { sent: 0, received: 0 } });
    return conn;
  }

  finish(conn: TrackedConnection, outcome: { flags?: string; error?: string; policy?: string } = {}): void {
    const entry = this.open.get(conn);
    if (!entry) return;
    this.open.delete(conn);
    if (outcome.flags) conn.flags = outcome.flags;
    if (outcome.error) conn.error = outcome.error;
    if (outcome.policy) conn.policy = outcome.policy;
    const opened = entry.series;
    if (!opened) {
      this.log(conn);
      return;
    }
    // The flags may have changed since open: closed and bytes carry the final ones.
    const series = conn.flags === '-' ? opened : this.metrics.takeTcp(this.labels(conn));
    series.sent += conn.sent - entry.flushed.sent;
    series.received += conn.received - entry.flushed.received;
    series.closed++;
    this.metrics.releaseTcp(opened);
    if (series !== opened) this.metrics.releaseTcp(series);
    this.log(conn);
  }

  list(): TrackedConnection[] {
    return [...this.open.values()].map((e) => e.conn);
  }

  countFor(pod: string): number {
    let n = 0;
    for (const { conn } of this.open.values()) if (conn.pod === pod) n++;
    return n;
  }

  close(): void {
    clearInterval(this.timer);
  }

  private flush(): void {
    for (const e of this.open.values()) {
      const { conn, series, flushed } = e;
      if (!series) continue;
      series.sent += conn.sent - flushed.sent;
      series.received += conn.received - flushed.received;
      flushed.sent = conn.sent;
      flushed.received = conn.received;
    }
  }

  private labels(conn: TrackedConnection): TcpLabels {
    return tcpLabels(conn.reporter, conn.source, conn.destination, conn.service ?? {}, { mtls: conn.mtls, flags: conn.flags, cluster: this.cluster });
  }

  /** One line per connection, in the shape of the mesh's access-log example. */
  private log(c: TrackedConnection): void {
    // Turned off (AMBIT_LOG_LEVEL=warn and above): not even built.
    if (!this.access.isLevelEnabled('info')) return;
    const side = (e: ConnectionEndpoint) => ({
      workload: e.workload ?? null, namespace: e.namespace ?? null, ip: e.ip, ...(e.port ? { port: e.port } : {}), principal: e.identity ?? null,
    });
    this.access.info({
      timestamp: new Date(c.start).toISOString(),
      reporter: c.reporter,
      connection_id: c.id,
      source: side(c.source),
      destination: { ...side(c.destination), ...(c.service ? { service: c.service.hostname } : {}) },
      connection: {
        protocol: 'TCP', path: c.path, duration_ms: Date.now() - c.start,
        bytes_received: c.received, bytes_sent: c.sent, response_flags: c.flags,
        ...(c.error ? { error: c.error } : {}), ...(c.policy ? { policy: c.policy } : {}),
        ...(c.exempt ? { exempt: c.exempt } : {}),
      },
      tls: { enabled: c.mtls, ...(c.mtls ? { version: 'TLSv1.3', mode: 'mutual' } : {}) },
    }, 'connection');
  }
}

/** Bytes moved by a join: `received` from the first side to the second, `sent` back. */
export interface ByteCounter { received: number; sent: number }

/**
 * Joins two streams both ways. Half-closes pass through; an error or reset on one side
 * destroys the other (through `resetOrDestroy`: a TCP socket is reset so that its peer sees it);
 * with `idleMs`, a join that moves no byte for that long is reset; with `counter`, the bytes each
 * way are added to it.
 *
 * Each direction is one 'data' listener that counts, marks activity and writes, pausing its
 * source while the destination's buffer is full: what `pipe()`, a counting listener and an
 * activity listener did in three (with ten closures per direction), in one call per chunk and
 * eight closures per join. Idle joins are found by one sweeper per timeout, not a timer each.
 */
export function splice(a: Duplex, b: Duplex, done: (error?: Error) => void, opts: { idleMs?: number; counter?: ByteCounter } = {}): void {
  const join: IdleJoin = { last: Date.now(), reset: () => undefined };
  let finished = false;
  let closed = 0;
  const sweeper = opts.idleMs ? IdleSweeper.for(opts.idleMs) : undefined;
  const finish = (err?: Error) => {
    if (finished) return;
    finished = true;
    sweeper?.remove(join);
    done(err);
  };
  const fail = (from: Duplex, to: Duplex) => (err: Error) => {
    resetOrDestroy(to);
    from.destroy();
    finish(err);
  };
  // No byte either way for idleMs: both sides are reset. A peer that vanished while its
  // counterpart does not read (so nothing is written to the vanished one, and its reset is never
  // seen) would otherwise hold both sockets, and the agent's memory, for good.
  if (sweeper) {
    join.reset = () => {
      resetOrDestroy(a);
      resetOrDestroy(b);
      finish(new Error(`idle for ${opts.idleMs} ms`));
    };
    sweeper.add(join);
  }
  const counter = opts.counter;
  // One direction: counts, marks activity, writes, and stops reading while `to` is full.
  // 'end' comes once: `on`, not `once`, which wraps each listener in two more objects.
  const relay = (from: Duplex, to: Duplex, counted: keyof ByteCounter) => {
    from.on('data', (chunk: Buffer) => {
      if (counter) counter[counted] += chunk.length;
      if (sweeper) join.last = sweeper.now;
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    from.on('end', () => to.end());
  };
  relay(a, b, 'received');
  relay(b, a, 'sent');
  a.on('error', fail(a, b));
  b.on('error', fail(b, a));
  const onClose = () => { if (++closed === 2) finish(); };
  a.on('close', onClose);
  b.on('close', onClose);
  // A side read before the join (a peeked header) is paused, not flowing: start both.
  a.resume();
  b.resume();
  // A side can be gone before the join: the client hung up (or reset) while its tunnel or
  // upstream was being opened. It will not emit 'close' or 'error' again; without this the join
  // would never end and both sides would be held for good.
  for (const [gone, other] of [[a, b], [b, a]] as const) {
    const errored = (gone as Duplex & { errored?: Error | null }).errored;
    if (errored) fail(gone, other)(errored);
    // Closed without its end: aborted, so the other side is reset.
    else if (gone.closed && !gone.readableEnded) fail(gone, other)(new Error('closed before it was joined'));
    else {
      // Its end came before the join (a client that connects and half-closes at once, as a TCP
      // probe does): passed on now, as its 'end' will not come again.
      if (gone.readableEnded && !other.writableEnded) other.end();
      if (gone.closed) onClose();
    }
  }
}

interface IdleJoin {
  /** When the join last moved a byte (the sweeper's clock, ms). */
  last: number;
  reset(): void;
}

/**
 * One timer for every join with the same idle timeout. It ticks every quarter of the timeout and
 * resets the joins that moved nothing for the whole timeout (so a join is reset between 1 and
 * 1.5 times the timeout after its last byte); its clock, read on every chunk, is updated per tick,
 * so a chunk costs a field write, not a clock read. It stops when no join is left.
 */
class IdleSweeper {
  private static readonly sweepers = new Map<number, IdleSweeper>();
  private readonly joins = new Set<IdleJoin>();
  private readonly period: number;
  private timer?: NodeJS.Timeout;
  now = Date.now();

  static for(idleMs: number): IdleSweeper {
    let s = IdleSweeper.sweepers.get(idleMs);
    if (!s) IdleSweeper.sweepers.set(idleMs, s = new IdleSweeper(idleMs));
    return s;
  }

  private constructor(private readonly idleMs: number) {
    this.period = Math.max(10, Math.floor(idleMs / 4));
  }

  add(join: IdleJoin): void {
    this.joins.add(join);
    if (!this.timer) {
      this.now = Date.now();
      this.timer = setInterval(() => this.sweep(), this.period).unref();
    }
  }

  remove(join: IdleJoin): void {
    this.joins.delete(join);
    if (this.joins.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  private sweep(): void {
    const now = Date.now();
    this.now = now;
    // `last` may be a tick old (the clock of the tick before the byte): a period of slack.
    for (const join of this.joins) if (now - join.last >= this.idleMs + this.period) join.reset();
  }
}

/** A TCP socket is reset (RST) so that its peer sees the failure; anything else is destroyed. */
export function resetOrDestroy(s: Duplex): void {
  const socket = s as Duplex & { resetAndDestroy?: () => void; _handle?: unknown };
  if (typeof socket.resetAndDestroy === 'function' && socket._handle) socket.resetAndDestroy();
  else s.destroy();
}
