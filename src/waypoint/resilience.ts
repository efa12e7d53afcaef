/**
 * The waypoint's resilience decisions, from Istio's VirtualService `retries` and DestinationRule
 * `connectionPool` / `outlierDetection`, with Envoy's semantics: whether to retry and after how
 * long, whether a request (or retry, or connection) may start under the circuit breakers, which
 * endpoints outlier detection has ejected, and a token bucket for local rate limiting. Pure: time
 * comes from an injected clock, randomness from an injected `random`; the proxy reports what
 * happened and acts on the answers.
 */
import { durationMs, isObject } from '../config/schema.js';

export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
}

/**
 * How an attempt failed without a response: `connect-failure` (no connection: refused,
 * unreachable, connect timeout), `refused-stream` (HTTP/2 REFUSED_STREAM), `reset` (the
 * connection or stream reset after it was up), `timeout` (the per-try timeout fired).
 */
export type UpstreamError = 'reset' | 'connect-failure' | 'refused-stream' | 'timeout';

export interface AttemptOutcome {
  /** The upstream's HTTP status, when it answered. */
  status?: number;
  /** grpc-status from the response headers (a trailers-only answer), as the number's text ("14"). */
  grpcStatus?: string;
  error?: UpstreamError;
  /** Response headers (names lower-case): grpc-status when grpcStatus is not given, x-envoy-ratelimited. */
  headers?: Record<string, string | string[] | undefined>;
  /** False when the request's headers never reached the upstream (connect failures imply it). */
  requestSent?: boolean;
}

/** Envoy's default response code for an overflowing circuit breaker is 503 with this flag. */
export const UPSTREAM_OVERFLOW_FLAG = 'UO';

function ms(v: unknown, fallback: number): number {
  return typeof v === 'string' ? durationMs(v) : fallback;
}

function positiveInt(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? Math.floor(v) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Retries

/** Istio's retry policy when a route has no `retries` (pilot's retry.DefaultPolicy). */
export const ISTIO_DEFAULT_RETRY_ON = 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes';
export const ISTIO_DEFAULT_RETRY_ATTEMPTS = 2;
/** RetriableStatusCodes of the default policy (unless pilot runs with EXCLUDE_503_FROM_DEFAULT_RETRY). */
export const ISTIO_DEFAULT_RETRIABLE_STATUS_CODES: readonly number[] = [503];
/** Envoy's retry back-off: base_interval 25 ms, max_interval 10 × base. */
export const DEFAULT_RETRY_BASE_INTERVAL_MS = 25;

const GRPC_RETRY_ON: Record<string, string> = { 1: 'cancelled', 4: 'deadline-exceeded', 8: 'resource-exhausted', 13: 'internal', 14: 'unavailable' };
const GRPC_CODES: Record<string, string> = { CANCELLED: '1', DEADLINE_EXCEEDED: '4', RESOURCE_EXHAUSTED: '8', INTERNAL: '13', UNAVAILABLE: '14' };

function header(headers: AttemptOutcome['headers'], name: string): string | undefined {
  const v = headers?.[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * A route's retry policy. Semantics:
 * - No `retries`: Istio's default, 2 retries on connect-failure, refused-stream, unavailable,
 *   cancelled and retriable-status-codes with 503. `retries` with `attempts` unset or 0: no
 *   retries at all (pilot's ConvertPolicy returns nil). Otherwise the default with `attempts`
 *   replaced, and `retryOn` when given replaces both the conditions and the codes: numbers in
 *   it are retriable status codes, `retriable-status-codes` being added for them.
 * - `attempts` counts retries (Envoy's num_retries): a request is tried at most attempts + 1
 *   times. shouldRetry(outcome, attempt) takes the number of tries made so far, from 1.
 * - Conditions, as Envoy's RetryStateImpl evaluates them. Without a response (`error`): reset
 *   retries any of them; reset-before-request those that never sent the request; 5xx and
 *   gateway-error any of them (a reset becomes a 5xx); refused-stream and connect-failure their
 *   own. A per-try timeout is such a reset. With a response: x-envoy-ratelimited is retried only
 *   under envoy-ratelimited, whatever its status; then 5xx (500-599), gateway-error (502, 503,
 *   504), retriable-4xx (409), retriable-status-codes (the listed codes), and the gRPC ones on
 *   grpc-status: cancelled 1, deadline-exceeded 4, resource-exhausted 8, internal 13,
 *   unavailable 14. retriable-headers and http3-post-connect-failure never match (Istio cannot
 *   configure retriable headers; there is no HTTP/3 upstream).
 * - Back-off before retry n: uniform in [0, min(max, base · 2^(n-1))) ms, Envoy's
 *   JitteredExponentialBackOffStrategy ("full jitter"): 25 ms, then 50, 100, 200, 250, 250, ...
 *   `backoff` (newer Istio) sets base; max stays 10 × base.
 * - Other hosts. Retries prefer endpoints not tried yet (Envoy's previous_hosts predicate,
 *   which Istio adds) unless the destination uses consistent hashing or `retryIgnorePreviousHosts`
 *   says otherwise: `ignorePreviousHosts` tells the proxy. `retryRemoteLocalities` is accepted
 *   and not used (no localities).
 */
export class RetryPolicy {
  /** Retries after the first try; 0 disables retrying. */
  readonly attempts: number;
  readonly perTryTimeoutMs: number | undefined;
  readonly retryOn: ReadonlySet<string>;
  readonly retriableStatusCodes: ReadonlySet<number>;
  readonly baseIntervalMs: number;
  readonly maxIntervalMs: number;
  /** Prefer endpoints not tried yet for the retries of one request. */
  readonly ignorePreviousHosts: boolean;
  readonly notes: readonly string[];

  /**
   * @param retries a VirtualService http route's `retries` (validated), or undefined for Istio's default
   * @param deps.consistentHash the destination balances with a consistent hash
   */
  constructor(retries: unknown, private readonly deps: { random: () => number; consistentHash?: boolean }) {
    const notes: string[] = [];
    let attempts = ISTIO_DEFAULT_RETRY_ATTEMPTS;
    let retryOn = ISTIO_DEFAULT_RETRY_ON.split(',');
    let codes: number[] = [...ISTIO_DEFAULT_RETRIABLE_STATUS_CODES];
    let perTryTimeoutMs: number | undefined;
    let ignorePreviousHosts = !deps.consistentHash;
    let base = DEFAULT_RETRY_BASE_INTERVAL_MS;
    if (isObject(retries)) {
      attempts = typeof retries.attempts === 'number' && retries.attempts > 0 ? Math.floor(retries.attempts) : 0;
      if (attempts === 0) {
        retryOn = [];
        codes = [];
      }
      if (attempts > 0 && typeof retries.retryOn === 'string' && retries.retryOn.trim() !== '') {
        retryOn = [];
        codes = [];
        for (const part of retries.retryOn.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
          if (/^\d{3}$/.test(part)) codes.push(Number(part));
          else retryOn.push(part);
        }
        if (codes.length > 0 && !retryOn.includes('retriable-status-codes')) retryOn.push('retriable-status-codes');
      }
      if (typeof retries.perTryTimeout === 'string') perTryTimeoutMs = durationMs(retries.perTryTimeout);
      if (typeof retries.retryIgnorePreviousHosts === 'boolean') ignorePreviousHosts = retries.retryIgnorePreviousHosts;
      if (typeof retries.backoff === 'string' && durationMs(retries.backoff) > 0) base = durationMs(retries.backoff);
      if (retries.retryRemoteLocalities !== undefined) notes.push('retries.retryRemoteLocalities: accepted; not used by ambit (no localities)');
    }
    this.attempts = attempts;
    this.retryOn = new Set(retryOn);
    this.retriableStatusCodes = new Set(codes);
    this.perTryTimeoutMs = perTryTimeoutMs;
    this.ignorePreviousHosts = ignorePreviousHosts;
    this.baseIntervalMs = base;
    this.maxIntervalMs = 10 * base;
    this.notes = notes;
  }

  /** Whether to retry after try number `attempt` (from 1) ended this way. */
  shouldRetry(outcome: AttemptOutcome, attempt: number): boolean {
    return attempt <= this.attempts && this.matches(outcome) !== undefined;
  }

  /** The retryOn condition this outcome meets (for logs and metrics), or undefined. */
  matches(outcome: AttemptOutcome): string | undefined {
    const on = this.retryOn;
    if (on.size === 0) return undefined;
    if (outcome.error !== undefined) {
      const e = outcome.error;
      if (on.has('reset')) return 'reset';
      if (on.has('reset-before-request') && (e === 'connect-failure' || outcome.requestSent === false)) return 'reset-before-request';
      if (on.has('5xx')) return '5xx';
      if (on.has('gateway-error')) return 'gateway-error';
      if (e === 'refused-stream' && on.has('refused-stream')) return 'refused-stream';
      if (e === 'connect-failure' && on.has('connect-failure')) return 'connect-failure';
      return undefined;
    }
    if (outcome.status === undefined) return undefined;
    if (header(outcome.headers, 'x-envoy-ratelimited') !== undefined) return on.has('envoy-ratelimited') ? 'envoy-ratelimited' : undefined;
    const s = outcome.status;
    if (on.has('5xx') && s >= 500 && s <= 599) return '5xx';
    if (on.has('gateway-error') && (s === 502 || s === 503 || s === 504)) return 'gateway-error';
    if (on.has('retriable-4xx') && s === 409) return 'retriable-4xx';
    if (on.has('retriable-status-codes') && this.retriableStatusCodes.has(s)) return 'retriable-status-codes';
    const raw = (outcome.grpcStatus ?? header(outcome.headers, 'grpc-status'))?.trim();
    if (raw !== undefined) {
      const token = GRPC_RETRY_ON[GRPC_CODES[raw.toUpperCase()] ?? raw];
      if (token !== undefined && on.has(token)) return token;
    }
    return undefined;
  }

  /** Milliseconds to wait before the retry that follows try number `attempt` (from 1). */
  backoffMs(attempt: number): number {
    const n = Math.max(1, Math.floor(attempt));
    const ceiling = Math.min(this.maxIntervalMs, this.baseIntervalMs * 2 ** Math.min(n - 1, 52));
    return Math.min(ceiling - 1, Math.floor(this.deps.random() * ceiling));
  }
}

/**
 * Envoy's retry budget (circuit_breakers.thresholds.retry_budget; Istio's
 * `trafficPolicy.retryBudget`): a retry may start while the retries in flight are fewer than
 * max(minRetryConcurrency, budgetPercent % of the requests in flight). Envoy counts every
 * upstream request, retries included, and those waiting for a connection: call onRequestStart
 * for each try (first or retry) and onRetryStart as well for a retry.
 */
export class RetryBudget {
  readonly budgetPercent: number;
  readonly minRetryConcurrency: number;
  private requests = 0;
  private retries = 0;

  constructor(opts: { budgetPercent?: number; minRetryConcurrency?: number } = {}) {
    this.budgetPercent = typeof opts.budgetPercent === 'number' && opts.budgetPercent >= 0 ? opts.budgetPercent : 20;
    this.minRetryConcurrency = typeof opts.minRetryConcurrency === 'number' && opts.minRetryConcurrency >= 0 ? Math.floor(opts.minRetryConcurrency) : 3;
  }

  get activeRequests(): number {
    return this.requests;
  }

  get activeRetries(): number {
    return this.retries;
  }

  /** Retries allowed in flight now. */
  limit(): number {
    return Math.max(this.minRetryConcurrency, Math.floor((this.budgetPercent / 100) * this.requests));
  }

  canRetry(): boolean {
    return this.retries < this.limit();
  }

  onRequestStart(): void {
    this.requests++;
  }

  onRequestEnd(): void {
    if (this.requests > 0) this.requests--;
  }

  onRetryStart(): void {
    this.retries++;
  }

  onRetryEnd(): void {
    if (this.retries > 0) this.retries--;
  }
}

// ---------------------------------------------------------------------------------------------
// Connection pool (circuit breaking)

/** Istio's default for every circuit breaker threshold: effectively unlimited. */
export const ISTIO_UNLIMITED = 2 ** 32 - 1;
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const DEFAULT_IDLE_TIMEOUT_MS = 3_600_000;
/** Istio's default http.maxConcurrentStreams (streams per HTTP/2 connection). */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 2 ** 31 - 1;

export interface PoolLimits {
  /** tcp.maxConnections: connections to all endpoints of the destination. */
  maxConnections: number;
  /** http.http1MaxPendingRequests: requests waiting for a connection. */
  maxPendingRequests: number;
  /** http.http2MaxRequests: requests in flight. */
  maxRequests: number;
  /** http.maxRequestsPerConnection: 0 is unlimited; 1 turns keep-alive off. */
  maxRequestsPerConnection: number;
  /** http.maxRetries: retries in flight (when no retry budget is set). */
  maxRetries: number;
  /** Requests one connection carries at once: 1 for HTTP/1.1, http.maxConcurrentStreams for HTTP/2. */
  maxConcurrentStreams: number;
  /** tcp.connectTimeout. */
  connectTimeoutMs: number;
  /** http.idleTimeout, else tcp.idleTimeout: an upstream connection with no request is closed after it. */
  idleTimeoutMs: number;
  /** tcp.maxConnectionDuration, if set. */
  maxConnectionDurationMs: number | undefined;
}

export type RequestAdmission =
  | {
    ok: true;
    /** Waiting for a connection slot: `ready` resolves when it may go. */
    pending: boolean;
    ready: Promise<void>;
    /** Call once when the request ends (or is abandoned while pending). */
    release(): void;
  }
  | { ok: false; reason: 'pending-overflow' | 'max-requests' };

export type Lease = { ok: true; release(): void };

/** The pool's counters, named after Envoy's cluster statistics. */
export interface PoolStats {
  /** upstream_rq_active */
  activeRequests: number;
  /** upstream_rq_pending_active */
  pendingRequests: number;
  /** upstream_rq_retry active (circuit breaker's count) */
  activeRetries: number;
  /** upstream_cx_active as counted through tryAcquireConnection */
  activeConnections: number;
  /** upstream_rq_total: requests admitted */
  requestsTotal: number;
  /** upstream_rq_pending_total */
  pendingTotal: number;
  /** upstream_rq_pending_overflow: refused for the pending limit or the request limit (503 UO) */
  pendingOverflow: number;
  /** the part of pendingOverflow refused for http2MaxRequests */
  requestOverflow: number;
  /** upstream_rq_retry_overflow */
  retryOverflow: number;
  /** upstream_cx_overflow */
  connectionOverflow: number;
}

/**
 * Envoy's circuit breakers as Istio configures them from `connectionPool`. Semantics:
 * - Unset limits are 2^32-1 (pilot's getDefaultCircuitBreakerThresholds), and so is a
 *   `maxRetries` of 0, as pilot cannot tell 0 from unset. The limits count the whole
 *   destination (one Envoy cluster), not each endpoint, whatever Istio's docs say.
 * - A request runs at once while fewer than maxRequests are in flight and a connection slot is
 *   free: maxConnections × 1 for HTTP/1.1, × maxConcurrentStreams for HTTP/2. When requests
 *   are what is exhausted it is refused (`max-requests`); when connections are, it waits in the
 *   pending queue (FIFO) up to http1MaxPendingRequests, beyond which it is refused
 *   (`pending-overflow`). Either refusal is the proxy's 503 with flag UO.
 * - A retry takes a slot of its own: under maxRetries, or under the retry budget when one is
 *   configured (which then replaces maxRetries, as in Envoy). The budget counts the pool's
 *   requests in flight and pending.
 * - tryAcquireConnection() guards opening a connection (maxConnections); timeouts and
 *   per-connection limits are the proxy's to apply, from `limits`.
 */
export class ConnectionPool {
  readonly limits: PoolLimits;
  private readonly budget: RetryBudget | undefined;
  private active = 0;
  private retries = 0;
  private connections = 0;
  private readonly queue: { resolve: () => void; admitted: boolean }[] = [];
  private readonly counters = { requestsTotal: 0, pendingTotal: 0, pendingOverflow: 0, requestOverflow: 0, retryOverflow: 0, connectionOverflow: 0 };

  /**
   * @param connectionPool a DestinationRule `trafficPolicy.connectionPool` (validated), or undefined
   * @param opts.protocol the upstream protocol, which sets requests per connection (default http1)
   * @param opts.retryBudget `trafficPolicy.retryBudget` ({ percent, minRetryConcurrency }) or { budgetPercent, minRetryConcurrency }
   */
  constructor(connectionPool: unknown, opts: { protocol?: 'http1' | 'http2'; retryBudget?: unknown } = {}) {
    const spec = isObject(connectionPool) ? connectionPool : {};
    const tcp = isObject(spec.tcp) ? spec.tcp : {};
    const http = isObject(spec.http) ? spec.http : {};
    const streams = opts.protocol === 'http2' ? positiveInt(http.maxConcurrentStreams) ?? DEFAULT_MAX_CONCURRENT_STREAMS : 1;
    const idle = http.idleTimeout ?? tcp.idleTimeout;
    this.limits = {
      maxConnections: positiveInt(tcp.maxConnections) ?? ISTIO_UNLIMITED,
      maxPendingRequests: positiveInt(http.http1MaxPendingRequests) ?? ISTIO_UNLIMITED,
      maxRequests: positiveInt(http.http2MaxRequests) ?? ISTIO_UNLIMITED,
      maxRequestsPerConnection: positiveInt(http.maxRequestsPerConnection) ?? 0,
      maxRetries: positiveInt(http.maxRetries) ?? ISTIO_UNLIMITED,
      maxConcurrentStreams: streams,
      connectTimeoutMs: ms(tcp.connectTimeout, DEFAULT_CONNECT_TIMEOUT_MS),
      idleTimeoutMs: ms(idle, DEFAULT_IDLE_TIMEOUT_MS),
      maxConnectionDurationMs: typeof tcp.maxConnectionDuration === 'string' ? durationMs(tcp.maxConnectionDuration) : undefined,
    };
    if (isObject(opts.retryBudget)) {
      const b = opts.retryBudget;
      const percent = typeof b.percent === 'number' ? b.percent : isObject(b.percent) && typeof b.percent.value === 'number' ? b.percent.value : b.budgetPercent;
      this.budget = new RetryBudget({
        ...(typeof percent === 'number' ? { budgetPercent: percent } : {}),
        ...(typeof b.minRetryConcurrency === 'number' && b.minRetryConcurrency > 0 ? { minRetryConcurrency: b.minRetryConcurrency } : {}),
      });
    }
  }

  /** Requests one connection slot set allows at once. */
  private get capacity(): number {
    return this.limits.maxConnections * this.limits.maxConcurrentStreams;
  }

  tryAcquireRequest(): RequestAdmission {
    const { maxRequests, maxPendingRequests } = this.limits;
    const requestBound = maxRequests <= this.capacity;
    if (this.active < Math.min(maxRequests, this.capacity) && this.queue.length === 0) {
      this.active++;
      this.counters.requestsTotal++;
      this.budget?.onRequestStart();
      return { ok: true, pending: false, ready: Promise.resolve(), release: this.once(() => this.releaseActive()) };
    }
    if (requestBound && this.active >= maxRequests) {
      this.counters.pendingOverflow++;
      this.counters.requestOverflow++;
      return { ok: false, reason: 'max-requests' };
    }
    if (this.queue.length >= maxPendingRequests) {
      this.counters.pendingOverflow++;
      return { ok: false, reason: 'pending-overflow' };
    }
    let resolve!: () => void;
    const ready = new Promise<void>((r) => (resolve = r));
    const entry = { resolve, admitted: false };
    this.queue.push(entry);
    this.counters.pendingTotal++;
    this.budget?.onRequestStart();
    return {
      ok: true, pending: true, ready,
      release: this.once(() => {
        if (entry.admitted) return this.releaseActive();
        const i = this.queue.indexOf(entry);
        if (i >= 0) this.queue.splice(i, 1);
        this.budget?.onRequestEnd();
      }),
    };
  }

  tryAcquireRetry(): Lease | { ok: false; reason: 'max-retries' | 'retry-budget' } {
    if (this.budget ? !this.budget.canRetry() : this.retries >= this.limits.maxRetries) {
      this.counters.retryOverflow++;
      return { ok: false, reason: this.budget ? 'retry-budget' : 'max-retries' };
    }
    this.retries++;
    this.budget?.onRetryStart();
    return {
      ok: true,
      release: this.once(() => {
        this.retries--;
        this.budget?.onRetryEnd();
      }),
    };
  }

  tryAcquireConnection(): Lease | { ok: false; reason: 'max-connections' } {
    if (this.connections >= this.limits.maxConnections) {
      this.counters.connectionOverflow++;
      return { ok: false, reason: 'max-connections' };
    }
    this.connections++;
    return { ok: true, release: this.once(() => void this.connections--) };
  }

  stats(): PoolStats {
    return { activeRequests: this.active, pendingRequests: this.queue.length, activeRetries: this.retries, activeConnections: this.connections, ...this.counters };
  }

  private releaseActive(): void {
    this.active--;
    this.budget?.onRequestEnd();
    // Hand the slot to the oldest waiting request (the budget counted it since it queued).
    while (this.queue.length > 0 && this.active < Math.min(this.limits.maxRequests, this.capacity)) {
      const next = this.queue.shift()!;
      next.admitted = true;
      this.active++;
      this.counters.requestsTotal++;
      next.resolve();
    }
  }

  private once(fn: () => void): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      fn();
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Outlier detection

export const DEFAULT_CONSECUTIVE_ERRORS = 5;
export const DEFAULT_OUTLIER_INTERVAL_MS = 10_000;
export const DEFAULT_BASE_EJECTION_TIME_MS = 30_000;
export const DEFAULT_MAX_EJECTION_PERCENT = 10;
/** Envoy's max_ejection_time default (Istio does not set it): ejections never last longer, unless base is longer. */
export const DEFAULT_MAX_EJECTION_TIME_MS = 300_000;

export type EjectionType = 'consecutive-5xx' | 'consecutive-gateway-failure' | 'consecutive-local-origin-failure';

interface HostMonitor {
  consecutive5xx: number;
  consecutiveGateway: number;
  consecutiveLocalOrigin: number;
  ejected: boolean;
  ejections: number;
  /** Envoy's ejectTimeBackoff: the multiplier of baseEjectionTime for the current or next ejection. */
  backoff: number;
  lastEjection: number;
  lastUnejection: number | undefined;
}

export interface HostOutlierState {
  ejected: boolean;
  /** Times ejected so far. */
  ejections: number;
  /** The baseEjectionTime multiplier (grows with each ejection, shrinks by one each healthy interval). */
  multiplier: number;
  /** How long the current ejection lasts at least (it ends at the first sweep after). */
  ejectionMs: number;
  consecutive5xx: number;
  consecutiveGatewayErrors: number;
  consecutiveLocalOriginFailures: number;
}

export interface OutlierStats {
  /** outlier_detection.ejections_active */
  ejectionsActive: number;
  /** outlier_detection.ejections_enforced_total and by type */
  ejectionsEnforced: Record<EjectionType, number>;
  /** outlier_detection.ejections_overflow: detections not enforced for maxEjectionPercent */
  ejectionsOverflow: number;
}

/**
 * Envoy's outlier detector (consecutive-error ejection; Istio turns success-rate ejection off)
 * for one destination's endpoints. Semantics, from pilot's applyOutlierDetection and Envoy's
 * DetectorImpl:
 * - No `outlierDetection`: nothing is ever ejected.
 * - Counting. A 5xx counts toward consecutive5xxErrors (default 5; 0 turns it off; the
 *   deprecated consecutiveErrors is read as it, as `ambit analyze` says), a 502/503/504 toward
 *   consecutiveGatewayErrors too (off unless set above 0); any other status resets both. Without
 *   a response, a connect failure, reset or refused stream is a 503 and a timeout a 504 — unless
 *   splitExternalLocalOriginErrors, which counts them toward consecutiveLocalOriginFailures
 *   instead (default 5), a response resetting that count.
 * - Ejection happens when a count reaches its threshold (the count then restarts), provided
 *   the ejected hosts, this one included, stay within maxEjectionPercent of all hosts (default
 *   10, and 0 reads as 10 as in pilot): Envoy's (active + 1) / hosts ≤ max%, so with the default
 *   fewer than 10 endpoints means no ejection at all.
 * - Return. Sweeps run every `interval` (default 10s) from creation, lazily on each call. A
 *   host returns at the first sweep at least min(baseEjectionTime × m, max(300s, base)) after its
 *   ejection, where m went up by one at each ejection, and goes down by one at each sweep once
 *   the host has been back for an interval: a host ejected again soon stays out longer.
 * - minHealthPercent (default 0: off): when fewer than that percent of the endpoints given to
 *   eligible() are healthy, all of them are eligible (Envoy's panic threshold).
 * The hosts are those of setEndpoints(), eligible() and record(); one detector per destination
 * (service, subset), as one Envoy cluster.
 */
export class OutlierDetector {
  readonly enabled: boolean;
  readonly intervalMs: number;
  readonly baseEjectionTimeMs: number;
  readonly maxEjectionTimeMs: number;
  readonly maxEjectionPercent: number;
  readonly minHealthPercent: number;
  readonly consecutive5xxErrors: number;
  readonly consecutiveGatewayErrors: number;
  readonly splitExternalLocalOriginErrors: boolean;
  readonly consecutiveLocalOriginFailures: number;
  readonly notes: readonly string[];

  private readonly hosts = new Map<string, HostMonitor>();
  private ejectedCount = 0;
  /** Sweeps run at origin + k · interval. */
  private readonly origin: number;
  private nextSweep: number;
  private readonly enforced: Record<EjectionType, number> = { 'consecutive-5xx': 0, 'consecutive-gateway-failure': 0, 'consecutive-local-origin-failure': 0 };
  private overflow = 0;
  /** Bumped on every ejection and return, to reuse the last eligible() answer. */
  private generation = 0;
  private lastEligible: { input: readonly { id: string }[]; generation: number; output: readonly { id: string }[] } | undefined;

  constructor(outlierDetection: unknown, private readonly clock: Clock) {
    const spec = isObject(outlierDetection) ? outlierDetection : undefined;
    const notes: string[] = [];
    this.enabled = spec !== undefined;
    const s = spec ?? {};
    const c5 = typeof s.consecutive5xxErrors === 'number' ? s.consecutive5xxErrors : s.consecutiveErrors;
    if (s.consecutiveErrors !== undefined && s.consecutive5xxErrors === undefined) notes.push('outlierDetection.consecutiveErrors: deprecated, read as consecutive5xxErrors');
    this.consecutive5xxErrors = typeof c5 === 'number' && c5 >= 0 ? Math.floor(c5) : DEFAULT_CONSECUTIVE_ERRORS;
    this.consecutiveGatewayErrors = positiveInt(s.consecutiveGatewayErrors) ?? 0;
    this.splitExternalLocalOriginErrors = s.splitExternalLocalOriginErrors === true;
    this.consecutiveLocalOriginFailures = this.splitExternalLocalOriginErrors ? positiveInt(s.consecutiveLocalOriginFailures) ?? DEFAULT_CONSECUTIVE_ERRORS : 0;
    if (!this.splitExternalLocalOriginErrors && s.consecutiveLocalOriginFailures !== undefined) {
      notes.push('outlierDetection.consecutiveLocalOriginFailures: takes effect only with splitExternalLocalOriginErrors');
    }
    this.intervalMs = Math.max(1, ms(s.interval, DEFAULT_OUTLIER_INTERVAL_MS));
    this.baseEjectionTimeMs = ms(s.baseEjectionTime, DEFAULT_BASE_EJECTION_TIME_MS);
    this.maxEjectionTimeMs = Math.max(DEFAULT_MAX_EJECTION_TIME_MS, this.baseEjectionTimeMs);
    this.maxEjectionPercent = Math.min(100, positiveInt(s.maxEjectionPercent) ?? DEFAULT_MAX_EJECTION_PERCENT);
    this.minHealthPercent = typeof s.minHealthPercent === 'number' && s.minHealthPercent > 0 ? Math.min(100, s.minHealthPercent) : 0;
    this.notes = notes;
    this.origin = clock.now();
    this.nextSweep = this.origin + this.intervalMs;
  }

  /** The destination's endpoints now: hosts not in it are forgotten (and their ejections end). */
  setEndpoints(ids: Iterable<string>): void {
    this.tick();
    const keep = new Set(ids);
    for (const [id, h] of this.hosts) {
      if (keep.has(id)) continue;
      if (h.ejected) {
        this.ejectedCount--;
        this.generation++;
      }
      this.hosts.delete(id);
    }
    for (const id of keep) this.host(id);
  }

  /** What one try to an endpoint came to (an upstream status, or an error without one). */
  record(id: string, outcome: { status?: number; error?: UpstreamError }): void {
    if (!this.enabled) return;
    this.tick();
    const h = this.host(id);
    if (outcome.error !== undefined) {
      if (this.splitExternalLocalOriginErrors) {
        if (++h.consecutiveLocalOrigin === this.consecutiveLocalOriginFailures) {
          this.eject(h, 'consecutive-local-origin-failure');
          h.consecutiveLocalOrigin = 0;
        }
      } else {
        this.httpStatus(h, outcome.error === 'timeout' ? 504 : 503);
      }
    } else if (outcome.status !== undefined) {
      this.httpStatus(h, outcome.status);
      // It answered, so the connection worked: a local-origin success.
      h.consecutiveLocalOrigin = 0;
    }
  }

  isEjected(id: string): boolean {
    this.tick();
    return this.hosts.get(id)?.ejected ?? false;
  }

  /**
   * The endpoints a request may go to: those not ejected, or all of them when fewer than
   * minHealthPercent are healthy. The same array comes back when none is ejected.
   */
  eligible<T extends { id: string }>(endpoints: readonly T[]): readonly T[] {
    if (!this.enabled) return endpoints;
    this.tick();
    const last = this.lastEligible;
    if (last && last.input === endpoints && last.generation === this.generation) return last.output as readonly T[];
    for (const e of endpoints) this.host(e.id);
    let output: readonly T[] = endpoints;
    if (this.ejectedCount > 0) {
      const healthy = endpoints.filter((e) => !this.hosts.get(e.id)!.ejected);
      const panic = this.minHealthPercent > 0 && (100 * healthy.length) / endpoints.length < this.minHealthPercent;
      if (healthy.length < endpoints.length && !panic) output = healthy;
    }
    this.lastEligible = { input: endpoints, generation: this.generation, output };
    return output;
  }

  hostState(id: string): HostOutlierState | undefined {
    this.tick();
    const h = this.hosts.get(id);
    if (!h) return undefined;
    return {
      ejected: h.ejected, ejections: h.ejections, multiplier: h.backoff, ejectionMs: this.ejectionMs(h),
      consecutive5xx: h.consecutive5xx, consecutiveGatewayErrors: h.consecutiveGateway, consecutiveLocalOriginFailures: h.consecutiveLocalOrigin,
    };
  }

  stats(): OutlierStats {
    this.tick();
    return { ejectionsActive: this.ejectedCount, ejectionsEnforced: { ...this.enforced }, ejectionsOverflow: this.overflow };
  }

  /** Runs the sweeps due by now. Every other method calls it; a timer may too. */
  tick(): void {
    const now = this.clock.now();
    while (this.nextSweep <= now) {
      const at = this.nextSweep;
      this.sweep(at);
      this.nextSweep = this.followingSweep(at, now);
    }
  }

  private host(id: string): HostMonitor {
    let h = this.hosts.get(id);
    if (!h) {
      h = { consecutive5xx: 0, consecutiveGateway: 0, consecutiveLocalOrigin: 0, ejected: false, ejections: 0, backoff: 0, lastEjection: 0, lastUnejection: undefined };
      this.hosts.set(id, h);
    }
    return h;
  }

  private httpStatus(h: HostMonitor, status: number): void {
    if (status < 500 || status > 599) {
      h.consecutive5xx = 0;
      h.consecutiveGateway = 0;
      return;
    }
    if (status === 502 || status === 503 || status === 504) {
      if (++h.consecutiveGateway === this.consecutiveGatewayErrors) {
        this.eject(h, 'consecutive-gateway-failure');
        h.consecutiveGateway = 0;
      }
    } else {
      h.consecutiveGateway = 0;
    }
    if (++h.consecutive5xx === this.consecutive5xxErrors) {
      this.eject(h, 'consecutive-5xx');
      h.consecutive5xx = 0;
    }
  }

  private eject(h: HostMonitor, type: EjectionType): void {
    if (h.ejected) return;
    if ((100 * (this.ejectedCount + 1)) / this.hosts.size > this.maxEjectionPercent) {
      this.overflow++;
      return;
    }
    const now = this.clock.now();
    h.ejected = true;
    h.ejections++;
    h.lastEjection = now;
    if (h.backoff * this.baseEjectionTimeMs < this.maxEjectionTimeMs + this.baseEjectionTimeMs) h.backoff++;
    this.ejectedCount++;
    this.enforced[type]++;
    this.generation++;
    // The sweeps may have been skipped ahead past this host's return: bring the next one back.
    const due = this.origin + this.intervalMs * Math.ceil((now + this.ejectionMs(h) - this.origin) / this.intervalMs);
    const afterNow = this.origin + this.intervalMs * (Math.floor((now - this.origin) / this.intervalMs) + 1);
    this.nextSweep = Math.min(this.nextSweep, Math.max(due, afterNow));
  }

  private ejectionMs(h: HostMonitor): number {
    return Math.min(this.baseEjectionTimeMs * h.backoff, this.maxEjectionTimeMs);
  }

  private sweep(at: number): void {
    for (const h of this.hosts.values()) {
      if (h.ejected && at - h.lastEjection >= this.ejectionMs(h)) {
        h.ejected = false;
        h.consecutive5xx = 0;
        h.consecutiveGateway = 0;
        h.consecutiveLocalOrigin = 0;
        h.lastUnejection = at;
        this.ejectedCount--;
        this.generation++;
      }
    }
    for (const h of this.hosts.values()) {
      if (!h.ejected && h.backoff > 0 && h.lastUnejection !== undefined && at - h.lastUnejection >= this.intervalMs) h.backoff--;
    }
  }

  /** The next sweep that can change anything: sweeps in between are skipped, not run. */
  private followingSweep(at: number, now: number): number {
    let target = Infinity;
    for (const h of this.hosts.values()) {
      if (h.ejected) target = Math.min(target, h.lastEjection + this.ejectionMs(h));
      else if (h.backoff > 0 && h.lastUnejection !== undefined) target = Math.min(target, h.lastUnejection + this.intervalMs);
    }
    if (target === Infinity) target = now + 1;
    return at + this.intervalMs * Math.max(1, Math.ceil((target - at) / this.intervalMs));
  }
}

// ---------------------------------------------------------------------------------------------
// Local rate limit

export interface TakeResult {
  ok: boolean;
  /** Tokens left after this request. */
  remaining: number;
  /** Milliseconds until the next fill. */
  resetMs: number;
}

/**
 * Envoy's local rate limit token bucket: starts full with maxTokens; every fillIntervalMs (from
 * creation) tokensPerFill (default 1) are added, up to maxTokens; a request takes one or is
 * refused (the proxy's 429).
 */
export class TokenBucket {
  readonly maxTokens: number;
  readonly tokensPerFill: number;
  readonly fillIntervalMs: number;
  private tokens: number;
  private lastFill: number;

  constructor(opts: { maxTokens: number; tokensPerFill?: number; fillIntervalMs: number }, private readonly clock: Clock) {
    this.maxTokens = Math.max(1, Math.floor(opts.maxTokens));
    this.tokensPerFill = Math.max(1, Math.floor(opts.tokensPerFill ?? 1));
    this.fillIntervalMs = Math.max(1, opts.fillIntervalMs);
    this.tokens = this.maxTokens;
    this.lastFill = clock.now();
  }

  take(): TakeResult {
    const now = this.clock.now();
    const fills = Math.floor((now - this.lastFill) / this.fillIntervalMs);
    if (fills > 0) {
      this.tokens = Math.min(this.maxTokens, this.tokens + fills * this.tokensPerFill);
      this.lastFill += fills * this.fillIntervalMs;
    }
    const resetMs = this.lastFill + this.fillIntervalMs - now;
    if (this.tokens === 0) return { ok: false, remaining: 0, resetMs };
    this.tokens--;
    return { ok: true, remaining: this.tokens, resetMs };
  }
}

/**
 * The x-ratelimit-* headers (IETF draft 03, as Envoy's local rate limit writes them): the
 * bucket's size, the tokens left, and seconds until the next fill, rounded up so that a client
 * waiting that long finds a token.
 */
export function rateLimitHeaders(limit: number, result: TakeResult): Record<string, string> {
  return {
    'x-ratelimit-limit': String(limit),
    'x-ratelimit-remaining': String(result.remaining),
    'x-ratelimit-reset': String(Math.ceil(result.resetMs / 1000)),
  };
}
