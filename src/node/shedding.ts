/**
 * Load shedding for the node agent: whether it takes one more connection. An agent offered more
 * than it can carry must refuse the excess early and cheaply (a reset, a 503 on a tunnel), count
 * what it refused and why, and recover by itself when the load drops, rather than accept
 * everything, fall behind on every connection at once and grow without bound until it is killed.
 *
 * Two bounds, both from `AMBIT_AGENT_LIMITS` (`maxConnections=N,maxLagMs=N`):
 * - `maxConnections` (default 50,000): connections the agent carries at once, both directions.
 *   Each costs file descriptors and memory; past this, a new one is refused (`max-connections`).
 * - `maxLagMs` (default 200): the event loop's delay, the mean of its 10 ms timer's delays over
 *   each quarter second. While it is over this, the agent is behind on the connections it already
 *   carries, and every new one would make that worse: refused (`overload`) until the delay has
 *   stayed under half the bound for a second (hysteresis, so it does not flap). The mean, not a
 *   high percentile: one garbage-collection pause is not being behind, and must not shed. The
 *   bound is what a connection may wait before the agent even looks at it: at 500 ms (the first
 *   default) the agent shed late, and of 3× its capacity offered, 37–46 % timed out in the
 *   client instead of being refused; at 200 ms, 5–14 %, with none shed at its capacity
 *   (docs/DATAPATH.md, Load shedding).
 *
 * Refused connections are counted in `ambit_connections_refused_total{reason,listener}`; the state
 * is `ambit_overloaded` and `ambit_event_loop_lag_seconds`.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { Counter } from 'prom-client';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { OperatorError } from '../util/errors.js';

export interface AdmissionLimits {
  maxConnections: number;
  maxLagMs: number;
}

export const DEFAULT_ADMISSION_LIMITS: Readonly<AdmissionLimits> = { maxConnections: 50_000, maxLagMs: 200 };

export type RefusalReason = 'max-connections' | 'overload';
export type Listener = 'outbound' | 'inbound' | 'hbone';

const SAMPLE_MS = 250;
/** How long the delay must stay under half the bound before new connections are taken again. */
const CALM_MS = 1000;

/** Parses `maxConnections=N,maxLagMs=N` (either, in any order); the rest keep their defaults. */
export function parseAdmissionLimits(text: string | undefined, what = 'AMBIT_AGENT_LIMITS'): AdmissionLimits {
  const limits = { ...DEFAULT_ADMISSION_LIMITS };
  if (!text) return limits;
  const ranges: Record<keyof AdmissionLimits, [number, number]> = { maxConnections: [1, 10_000_000], maxLagMs: [10, 60_000] };
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const [key, value] = part.split('=');
    if (!key || !(key in ranges)) throw new OperatorError(`${what}: unknown limit "${key}" (known: ${Object.keys(ranges).join(', ')})`, `${what}=maxConnections=50000,maxLagMs=200`);
    const [min, max] = ranges[key as keyof AdmissionLimits];
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) throw new OperatorError(`${what}: ${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(value ?? '')}`, `${what}=maxConnections=50000,maxLagMs=200`);
    limits[key as keyof AdmissionLimits] = n;
  }
  return limits;
}

/** Where the event loop's delay comes from. */
export interface LagProbe {
  /** The delay (ms) since the last read: the mean of the loop's timer delays. */
  read(): number;
  close(): void;
}

function eventLoopProbe(): LagProbe {
  const histogram: IntervalHistogram = monitorEventLoopDelay({ resolution: 10 });
  histogram.enable();
  return {
    read: () => {
      // The histogram counts the timer's full period; what is over the 10 ms resolution is delay.
      const ms = histogram.count > 0 ? Math.max(0, histogram.mean / 1e6 - 10) : 0;
      histogram.reset();
      return ms;
    },
    close: () => histogram.disable(),
  };
}

export class LoadShedder {
  private readonly probe: LagProbe;
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly refused: Counter;
  /** The event loop delay of the last sample window (ms); 0 before the first. */
  lagMs = 0;
  private shedding = false;
  private calmSince: number | undefined;

  /**
   * `open()`: connections carried now. `probe` reads the event loop's delay since its last read
   * (default: perf_hooks' monitor, sampled every 250 ms); a test gives its own and calls sample().
   */
  constructor(readonly limits: AdmissionLimits, private readonly open: () => number, metrics: MeshMetrics, probe?: LagProbe, private readonly now: () => number = Date.now) {
    this.probe = probe ?? eventLoopProbe();
    if (!probe) {
      this.timer = setInterval(() => this.sample(), SAMPLE_MS);
      this.timer.unref();
    }
    this.refused = metrics.counter('ambit_connections_refused_total', 'New connections the agent refused to protect those it carries, by reason (max-connections, overload) and listener', ['reason', 'listener']);
    metrics.gauge('ambit_overloaded', 'Whether the agent is shedding new connections because its event loop is behind', [], (g) => g.set(this.shedding ? 1 : 0));
    metrics.gauge('ambit_event_loop_lag_seconds', 'The event loop delay: the mean delay of a 10 ms timer over the last quarter second', [], (g) => g.set(this.lagMs / 1000));
    metrics.gauge('ambit_connections_limit', 'The most connections the agent carries at once (AMBIT_AGENT_LIMITS maxConnections)', [], (g) => g.set(limits.maxConnections));
  }

  /** Reads the delay and decides: shed past the bound; take connections again once under half of it for CALM_MS. */
  sample(): void {
    this.lagMs = this.probe.read();
    const now = this.now();
    if (this.lagMs > this.limits.maxLagMs) {
      this.shedding = true;
      this.calmSince = undefined;
    } else if (this.shedding && this.lagMs < this.limits.maxLagMs / 2) {
      this.calmSince ??= now;
      if (now - this.calmSince >= CALM_MS) {
        this.shedding = false;
        this.calmSince = undefined;
      }
    } else this.calmSince = undefined;
  }

  get overloaded(): boolean {
    return this.shedding;
  }

  /** Why a new connection on `listener` is refused now, counted; undefined when it is taken. */
  refuse(listener: Listener): RefusalReason | undefined {
    const reason: RefusalReason | undefined = this.open() >= this.limits.maxConnections ? 'max-connections' : this.shedding ? 'overload' : undefined;
    if (reason) this.refused.inc({ reason, listener });
    return reason;
  }

  close(): void {
    clearInterval(this.timer);
    this.probe.close();
  }
}
