/**
 * Every connection the node agent carries, from open to close: Istio's TCP metrics (opened,
 * closed, bytes each way, flushed every few seconds for long-lived connections), one JSON
 * access-log line at close, and the list behind the admin endpoint's `/connections`.
 */
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Counter } from 'prom-client';
import { tcpLabels, type MeshMetrics, type Peer, type TcpLabels } from '../telemetry/metrics.js';

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
  private readonly open = new Map<string, { conn: TrackedConnection; labels: TcpLabels; flushed: { sent: number; received: number } }>();
  private readonly timer: NodeJS.Timeout;
  private readonly exempted: Counter;

  constructor(private readonly metrics: MeshMetrics, private readonly access: Logger, private readonly cluster = 'Kubernetes') {
    this.exempted = metrics.counter('ambit_exempt_connections_total', 'Connections let through without STRICT or policy, by reason (kubelet-probe: the node\'s health probes)', ['reason']);
    this.timer = setInterval(() => this.flush(), FLUSH_MS);
    this.timer.unref();
  }

  /** Starts tracking; `finish` must be called exactly once. */
  begin(info: ConnectionInfo): TrackedConnection {
    const conn: TrackedConnection = { ...info, id: randomUUID(), start: Date.now(), received: 0, sent: 0, flags: '-' };
    const labels = this.labels(conn);
    if (conn.exempt) this.exempted.inc({ reason: conn.exempt });
    else this.metrics.tcpOpened.inc(labels);
    this.open.set(conn.id, { conn, labels, flushed: { sent: 0, received: 0 } });
    return conn;
  }

  /** Counts bytes flowing from `client` (the source side) and `server` (the destination side). */
  count(conn: TrackedConnection, client: Duplex, server: Duplex): void {
    client.on('data', (c: Buffer) => { conn.received += c.length; });
    server.on('data', (c: Buffer) => { conn.sent += c.length; });
  }

  finish(conn: TrackedConnection, outcome: { flags?: string; error?: string; policy?: string } = {}): void {
    const entry = this.open.get(conn.id);
    if (!entry) return;
    this.open.delete(conn.id);
    if (outcome.flags) conn.flags = outcome.flags;
    if (outcome.error) conn.error = outcome.error;
    if (outcome.policy) conn.policy = outcome.policy;
    if (conn.exempt) {
      this.log(conn);
      return;
    }
    // The flags may have changed since open: closed and bytes carry the final ones.
    const labels = conn.flags === '-' ? entry.labels : this.labels(conn);
    this.metrics.tcpSent.inc(labels, conn.sent - entry.flushed.sent);
    this.metrics.tcpReceived.inc(labels, conn.received - entry.flushed.received);
    this.metrics.tcpClosed.inc(labels);
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
      const { conn, labels, flushed } = e;
      if (conn.exempt) continue;
      if (conn.sent > flushed.sent) this.metrics.tcpSent.inc(labels, conn.sent - flushed.sent);
      if (conn.received > flushed.received) this.metrics.tcpReceived.inc(labels, conn.received - flushed.received);
      e.flushed = { sent: conn.sent, received: conn.received };
    }
  }

  private labels(conn: TrackedConnection): TcpLabels {
    return tcpLabels(conn.reporter, conn.source, conn.destination, conn.service ?? {}, { mtls: conn.mtls, flags: conn.flags, cluster: this.cluster });
  }

  /** One line per connection, in the shape of the mesh's access-log example. */
  private log(c: TrackedConnection): void {
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

/**
 * Joins two streams both ways. Half-closes pass through; an error or reset on one side
 * destroys the other (through `resetOrDestroy`: a TCP socket is reset so that its peer sees it);
 * with `idleMs`, a join that moves no byte for that long is reset.
 */
export function splice(a: Duplex, b: Duplex, done: (error?: Error) => void, opts: { idleMs?: number } = {}): void {
  let finished = false;
  let closed = 0;
  let idle: NodeJS.Timeout | undefined;
  const finish = (err?: Error) => {
    if (finished) return;
    finished = true;
    clearTimeout(idle);
    done(err);
  };
  // No byte either way for idleMs: both sides are reset. A peer that vanished while its
  // counterpart does not read (so nothing is written to the vanished one, and its reset is never
  // seen) would otherwise hold both sockets, and the agent's memory, for good.
  if (opts.idleMs) {
    const idleMs = opts.idleMs;
    let moved = false;
    const mark = () => { moved = true; };
    a.on('data', mark);
    b.on('data', mark);
    const check = () => {
      if (finished) return;
      if (!moved) {
        resetOrDestroy(a);
        resetOrDestroy(b);
        finish(new Error(`idle for ${idleMs} ms`));
        return;
      }
      moved = false;
      idle = setTimeout(check, idleMs).unref();
    };
    idle = setTimeout(check, idleMs).unref();
  }
  const fail = (from: Duplex, to: Duplex) => (err: Error) => {
    resetOrDestroy(to);
    from.destroy();
    finish(err);
  };
  a.on('error', fail(a, b));
  b.on('error', fail(b, a));
  const onClose = () => { if (++closed === 2) finish(); };
  a.once('close', onClose);
  b.once('close', onClose);
  a.pipe(b);
  b.pipe(a);
  // A side can be gone before the join: the client hung up (or reset) while its tunnel or
  // upstream was being opened. It will not emit 'close' or 'error' again; without this the join
  // would never end and both sides would be held for good.
  for (const [gone, other] of [[a, b], [b, a]] as const) {
    const errored = (gone as Duplex & { errored?: Error | null }).errored;
    if (errored) fail(gone, other)(errored);
    // Closed without its end: aborted, so the other side is reset. Ended: the pipe passes the end on.
    else if (gone.closed && !gone.readableEnded) fail(gone, other)(new Error('closed before it was joined'));
    else if (gone.closed) onClose();
  }
}

/** A TCP socket is reset (RST) so that its peer sees the failure; anything else is destroyed. */
export function resetOrDestroy(s: Duplex): void {
  const socket = s as Duplex & { resetAndDestroy?: () => void; _handle?: unknown };
  if (typeof socket.resetAndDestroy === 'function' && socket._handle) socket.resetAndDestroy();
  else s.destroy();
}
