/**
 * The waypoint's resilience decisions with a manual clock and a seeded random: Istio's default
 * retry policy and every retryOn condition, Envoy's back-off bounds and jitter, the retry
 * budget; connection pool limits, the pending queue and overflow; outlier ejection, its limits,
 * return, growing and decaying ejection times, minHealthPercent; the token bucket.
 */
import { describe, expect, it } from 'vitest';
import {
  ConnectionPool, ISTIO_UNLIMITED, OutlierDetector, RetryBudget, RetryPolicy, TokenBucket, rateLimitHeaders,
  type AttemptOutcome, type Clock,
} from '../../src/waypoint/resilience.js';
import { seeded } from './helpers/random.js';

class ManualClock implements Clock {
  constructor(private t = 0) {}
  now(): number {
    return this.t;
  }
  set(t: number): void {
    this.t = t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

const random = seeded(1);
const policy = (retries: unknown, consistentHash = false) => new RetryPolicy(retries, { random, consistentHash });

describe('RetryPolicy', () => {
  const status = (s: number, headers?: AttemptOutcome['headers']): AttemptOutcome => ({ status: s, ...(headers ? { headers } : {}) });
  const error = (e: AttemptOutcome['error'], requestSent?: boolean): AttemptOutcome => ({ error: e, ...(requestSent === undefined ? {} : { requestSent }) });
  const grpc = (code: string): AttemptOutcome => ({ status: 200, grpcStatus: code });

  it("applies Istio's default without `retries`: 2 retries on connect-failure, refused-stream, unavailable, cancelled, 503", () => {
    const p = policy(undefined);
    expect(p.attempts).toBe(2);
    expect([...p.retryOn].sort()).toEqual(['cancelled', 'connect-failure', 'refused-stream', 'retriable-status-codes', 'unavailable']);
    expect([...p.retriableStatusCodes]).toEqual([503]);
    expect(p.perTryTimeoutMs).toBeUndefined();
    expect(p.shouldRetry(error('connect-failure'), 1)).toBe(true);
    expect(p.shouldRetry(error('refused-stream'), 1)).toBe(true);
    expect(p.shouldRetry(status(503), 1)).toBe(true);
    expect(p.shouldRetry(grpc('14'), 1)).toBe(true);
    expect(p.shouldRetry(grpc('1'), 2)).toBe(true);
    expect(p.shouldRetry(error('connect-failure'), 3)).toBe(false); // 1 try + 2 retries
    expect(p.shouldRetry(status(500), 1)).toBe(false);
    expect(p.shouldRetry(status(502), 1)).toBe(false);
    expect(p.shouldRetry(error('reset'), 1)).toBe(false);
    expect(p.shouldRetry(error('timeout'), 1)).toBe(false);
    expect(p.shouldRetry(grpc('4'), 1)).toBe(false);
    expect(p.shouldRetry(status(200), 1)).toBe(false);
  });

  it('retries nothing when attempts is 0 or unset, as pilot does', () => {
    for (const r of [{ attempts: 0 }, { retryOn: '5xx' }, {}]) {
      const p = policy(r);
      expect(p.attempts).toBe(0);
      expect(p.shouldRetry(error('connect-failure'), 1)).toBe(false);
      expect(p.shouldRetry(status(503), 1)).toBe(false);
    }
  });

  it('keeps the default conditions when only attempts and perTryTimeout are given', () => {
    const p = policy({ attempts: 5, perTryTimeout: '1.5s' });
    expect(p.attempts).toBe(5);
    expect(p.perTryTimeoutMs).toBe(1500);
    expect(p.shouldRetry(status(503), 5)).toBe(true);
    expect(p.shouldRetry(status(503), 6)).toBe(false);
  });

  describe('retryOn', () => {
    const on = (retryOn: string) => policy({ attempts: 3, retryOn });

    it('5xx: any 5xx, and any failure without a response', () => {
      const p = on('5xx');
      for (const s of [500, 501, 502, 503, 504, 599]) expect(p.matches(status(s))).toBe('5xx');
      for (const e of ['reset', 'connect-failure', 'refused-stream', 'timeout'] as const) expect(p.matches(error(e))).toBe('5xx');
      for (const s of [200, 404, 409, 429]) expect(p.matches(status(s))).toBeUndefined();
      expect(p.retriableStatusCodes.size).toBe(0); // retryOn replaces the default codes
    });

    it('gateway-error: 502, 503, 504, and any failure without a response', () => {
      const p = on('gateway-error');
      for (const s of [502, 503, 504]) expect(p.matches(status(s))).toBe('gateway-error');
      for (const s of [500, 501, 505]) expect(p.matches(status(s))).toBeUndefined();
      for (const e of ['reset', 'connect-failure', 'refused-stream', 'timeout'] as const) expect(p.matches(error(e))).toBe('gateway-error');
    });

    it('reset: any failure without a response, no status', () => {
      const p = on('reset');
      for (const e of ['reset', 'connect-failure', 'refused-stream', 'timeout'] as const) expect(p.matches(error(e))).toBe('reset');
      expect(p.matches(status(503))).toBeUndefined();
    });

    it('reset-before-request: only failures before the request was sent', () => {
      const p = on('reset-before-request');
      expect(p.matches(error('connect-failure'))).toBe('reset-before-request');
      expect(p.matches(error('reset', false))).toBe('reset-before-request');
      expect(p.matches(error('reset', true))).toBeUndefined();
      expect(p.matches(error('reset'))).toBeUndefined();
      expect(p.matches(error('timeout'))).toBeUndefined();
    });

    it('connect-failure and refused-stream: their own failure only', () => {
      const cf = on('connect-failure');
      expect(cf.matches(error('connect-failure'))).toBe('connect-failure');
      for (const e of ['reset', 'refused-stream', 'timeout'] as const) expect(cf.matches(error(e))).toBeUndefined();
      expect(cf.matches(status(503))).toBeUndefined();
      const rs = on('refused-stream');
      expect(rs.matches(error('refused-stream'))).toBe('refused-stream');
      for (const e of ['reset', 'connect-failure', 'timeout'] as const) expect(rs.matches(error(e))).toBeUndefined();
    });

    it('retriable-4xx: 409 only', () => {
      const p = on('retriable-4xx');
      expect(p.matches(status(409))).toBe('retriable-4xx');
      for (const s of [400, 404, 429, 503]) expect(p.matches(status(s))).toBeUndefined();
    });

    it('status codes: listed codes, with retriable-status-codes added for them', () => {
      const p = on('429,503');
      expect([...p.retryOn]).toEqual(['retriable-status-codes']);
      expect([...p.retriableStatusCodes].sort()).toEqual([429, 503]);
      expect(p.matches(status(429))).toBe('retriable-status-codes');
      expect(p.matches(status(503))).toBe('retriable-status-codes');
      expect(p.matches(status(500))).toBeUndefined();
      expect(p.matches(error('connect-failure'))).toBeUndefined();
      // The condition without codes matches nothing (the default 503 is gone with retryOn).
      expect(on('retriable-status-codes').matches(status(503))).toBeUndefined();
      expect(on('connect-failure, retriable-status-codes ,502').matches(status(502))).toBe('retriable-status-codes');
    });

    it('envoy-ratelimited: an x-envoy-ratelimited answer, retried only under it', () => {
      const limited = status(429, { 'x-envoy-ratelimited': 'true' });
      expect(on('envoy-ratelimited').matches(limited)).toBe('envoy-ratelimited');
      expect(on('envoy-ratelimited').matches(status(429))).toBeUndefined();
      // Even a 5xx carrying the header is not retried under 5xx alone.
      expect(on('5xx').matches(status(503, { 'x-envoy-ratelimited': 'true' }))).toBeUndefined();
    });

    it('gRPC conditions on grpc-status, given or from the headers, by number or name', () => {
      const codes: [string, string][] = [['cancelled', '1'], ['deadline-exceeded', '4'], ['resource-exhausted', '8'], ['internal', '13'], ['unavailable', '14']];
      for (const [token, code] of codes) {
        const p = on(token);
        expect(p.matches(grpc(code))).toBe(token);
        expect(p.matches(status(200, { 'grpc-status': code }))).toBe(token);
        for (const [, other] of codes.filter(([t]) => t !== token)) expect(p.matches(grpc(other))).toBeUndefined();
        expect(p.matches(grpc('0'))).toBeUndefined();
        expect(p.matches(status(503))).toBeUndefined();
      }
      expect(on('unavailable').matches(grpc('UNAVAILABLE'))).toBe('unavailable');
    });

    it('retriable-headers and http3-post-connect-failure never match', () => {
      const p = on('retriable-headers,http3-post-connect-failure');
      for (const e of ['reset', 'connect-failure', 'refused-stream', 'timeout'] as const) expect(p.matches(error(e))).toBeUndefined();
      for (const s of [409, 500, 503]) expect(p.matches(status(s))).toBeUndefined();
    });

    it('names the first matching condition in Envoy order', () => {
      expect(on('connect-failure,reset,5xx').matches(error('connect-failure'))).toBe('reset');
      expect(on('gateway-error,5xx').matches(status(503))).toBe('5xx');
    });
  });

  describe('backoffMs', () => {
    it("stays in Envoy's bounds: [0, min(250, 25 · 2^(n-1)))", () => {
      const top = new RetryPolicy(undefined, { random: () => 0.999999 });
      expect([1, 2, 3, 4, 5, 6, 10, 100].map((n) => top.backoffMs(n))).toEqual([24, 49, 99, 199, 249, 249, 249, 249]);
      const bottom = new RetryPolicy(undefined, { random: () => 0 });
      expect([1, 2, 3, 5].map((n) => bottom.backoffMs(n))).toEqual([0, 0, 0, 0]);
    });

    it('jitters over the whole range (full jitter)', () => {
      const p = new RetryPolicy(undefined, { random: seeded(42) });
      const samples = Array.from({ length: 2000 }, () => p.backoffMs(3));
      expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...samples)).toBeLessThan(100);
      expect(Math.min(...samples)).toBeLessThan(5);
      expect(Math.max(...samples)).toBeGreaterThan(95);
      const mean = samples.reduce((a, b) => a + b) / samples.length;
      expect(Math.abs(mean - 49.5)).toBeLessThan(3);
      // Deterministic for a seed.
      const again = new RetryPolicy(undefined, { random: seeded(42) });
      expect(Array.from({ length: 2000 }, () => again.backoffMs(3))).toEqual(samples);
    });

    it('takes its base from `backoff`, max ten times it', () => {
      const p = new RetryPolicy({ attempts: 3, backoff: '100ms' }, { random: () => 0.999999 });
      expect([p.baseIntervalMs, p.maxIntervalMs]).toEqual([100, 1000]);
      expect([1, 2, 3, 4, 5].map((n) => p.backoffMs(n))).toEqual([99, 199, 399, 799, 999]);
    });
  });

  it('prefers other endpoints on retry, except under consistent hashing or when told', () => {
    expect(policy(undefined).ignorePreviousHosts).toBe(true);
    expect(policy(undefined, true).ignorePreviousHosts).toBe(false);
    expect(policy({ attempts: 2, retryIgnorePreviousHosts: false }).ignorePreviousHosts).toBe(false);
    expect(policy({ attempts: 2, retryIgnorePreviousHosts: true }, true).ignorePreviousHosts).toBe(true);
  });

  it('notes retryRemoteLocalities as not used', () => {
    expect(policy({ attempts: 2, retryRemoteLocalities: true }).notes.join()).toMatch(/retryRemoteLocalities.*not used/);
  });
});

describe('RetryBudget', () => {
  it('allows at least minRetryConcurrency retries', () => {
    const b = new RetryBudget();
    expect([b.budgetPercent, b.minRetryConcurrency]).toEqual([20, 3]);
    expect(b.limit()).toBe(3);
    for (let i = 0; i < 3; i++) {
      expect(b.canRetry()).toBe(true);
      b.onRetryStart();
    }
    expect(b.canRetry()).toBe(false);
    b.onRetryEnd();
    expect(b.canRetry()).toBe(true);
  });

  it('allows budgetPercent of the requests in flight beyond that', () => {
    const b = new RetryBudget({ budgetPercent: 20, minRetryConcurrency: 3 });
    for (let i = 0; i < 100; i++) b.onRequestStart();
    expect(b.limit()).toBe(20);
    for (let i = 0; i < 20; i++) b.onRetryStart();
    expect(b.canRetry()).toBe(false);
    for (let i = 0; i < 10; i++) b.onRequestStart();
    expect(b.limit()).toBe(22);
    expect(b.canRetry()).toBe(true);
    for (let i = 0; i < 110; i++) b.onRequestEnd();
    expect(b.activeRequests).toBe(0);
    expect(b.limit()).toBe(3);
    expect(b.canRetry()).toBe(false); // 20 retries still in flight
  });
});

describe('ConnectionPool', () => {
  it("defaults to Istio's effectively unlimited thresholds, 10s connect and 1h idle timeouts", () => {
    const p = new ConnectionPool(undefined);
    expect(p.limits).toEqual({
      maxConnections: ISTIO_UNLIMITED, maxPendingRequests: ISTIO_UNLIMITED, maxRequests: ISTIO_UNLIMITED, maxRequestsPerConnection: 0,
      maxRetries: ISTIO_UNLIMITED, maxConcurrentStreams: 1, connectTimeoutMs: 10_000, idleTimeoutMs: 3_600_000, maxConnectionDurationMs: undefined,
    });
    const leases = Array.from({ length: 1000 }, () => p.tryAcquireRequest());
    expect(leases.every((l) => l.ok && !l.pending)).toBe(true);
  });

  it('reads every limit, maxRetries 0 as unlimited (as pilot), http.idleTimeout over tcp.idleTimeout', () => {
    const p = new ConnectionPool({
      tcp: { maxConnections: 7, connectTimeout: '250ms', idleTimeout: '5m', maxConnectionDuration: '1h' },
      http: { http1MaxPendingRequests: 3, http2MaxRequests: 9, maxRequestsPerConnection: 1, maxRetries: 0, idleTimeout: '90s' },
    });
    expect(p.limits).toMatchObject({
      maxConnections: 7, maxPendingRequests: 3, maxRequests: 9, maxRequestsPerConnection: 1, maxRetries: ISTIO_UNLIMITED,
      connectTimeoutMs: 250, idleTimeoutMs: 90_000, maxConnectionDurationMs: 3_600_000,
    });
    expect(new ConnectionPool({ tcp: { idleTimeout: '5m' } }).limits.idleTimeoutMs).toBe(300_000);
  });

  it('queues requests beyond the connections up to the pending limit, then overflows', async () => {
    // Istio's circuit-breaking sample: one connection, one pending request.
    const p = new ConnectionPool({ tcp: { maxConnections: 1 }, http: { http1MaxPendingRequests: 1, maxRequestsPerConnection: 1 } });
    const a = p.tryAcquireRequest();
    const b = p.tryAcquireRequest();
    const c = p.tryAcquireRequest();
    expect(a.ok && !a.pending).toBe(true);
    expect(b.ok && b.pending).toBe(true);
    expect(c).toEqual({ ok: false, reason: 'pending-overflow' });
    expect(p.stats()).toMatchObject({ activeRequests: 1, pendingRequests: 1, pendingOverflow: 1, requestsTotal: 1, pendingTotal: 1 });
    if (!a.ok || !b.ok) throw new Error('unreachable');
    let bReady = false;
    void b.ready.then(() => (bReady = true));
    await Promise.resolve();
    expect(bReady).toBe(false);
    a.release();
    a.release(); // twice is once
    await b.ready;
    expect(bReady).toBe(true);
    expect(p.stats()).toMatchObject({ activeRequests: 1, pendingRequests: 0, requestsTotal: 2 });
    b.release();
    expect(p.stats()).toMatchObject({ activeRequests: 0, pendingRequests: 0 });
  });

  it('drops a pending request that is abandoned', () => {
    const p = new ConnectionPool({ tcp: { maxConnections: 1 }, http: { http1MaxPendingRequests: 2 } });
    const a = p.tryAcquireRequest();
    const b = p.tryAcquireRequest();
    const c = p.tryAcquireRequest();
    if (!a.ok || !b.ok || !c.ok) throw new Error('expected admissions');
    b.release();
    expect(p.stats().pendingRequests).toBe(1);
    a.release();
    expect(p.stats()).toMatchObject({ activeRequests: 1, pendingRequests: 0 });
    expect(p.tryAcquireRequest().ok).toBe(true); // pending again, with room
  });

  it('refuses requests beyond http2MaxRequests at once (no queue)', () => {
    const p = new ConnectionPool({ http: { http2MaxRequests: 2, http1MaxPendingRequests: 10 } });
    const a = p.tryAcquireRequest();
    const b = p.tryAcquireRequest();
    expect(p.tryAcquireRequest()).toEqual({ ok: false, reason: 'max-requests' });
    expect(p.stats()).toMatchObject({ activeRequests: 2, pendingOverflow: 1, requestOverflow: 1 });
    if (!a.ok || !b.ok) throw new Error('expected admissions');
    a.release();
    const d = p.tryAcquireRequest();
    expect(d.ok && !d.pending).toBe(true);
  });

  it('carries several requests per HTTP/2 connection', () => {
    const p = new ConnectionPool({ tcp: { maxConnections: 1 }, http: { maxConcurrentStreams: 2, http1MaxPendingRequests: 1 } }, { protocol: 'http2' });
    const r = [p.tryAcquireRequest(), p.tryAcquireRequest(), p.tryAcquireRequest(), p.tryAcquireRequest()];
    expect(r.map((x) => (x.ok ? (x.pending ? 'pending' : 'active') : x.reason))).toEqual(['active', 'active', 'pending', 'pending-overflow']);
  });

  it('limits retries in flight with maxRetries', () => {
    const p = new ConnectionPool({ http: { maxRetries: 2 } });
    const a = p.tryAcquireRetry();
    const b = p.tryAcquireRetry();
    expect(p.tryAcquireRetry()).toEqual({ ok: false, reason: 'max-retries' });
    expect(p.stats()).toMatchObject({ activeRetries: 2, retryOverflow: 1 });
    if (!a.ok || !b.ok) throw new Error('expected leases');
    a.release();
    expect(p.tryAcquireRetry().ok).toBe(true);
  });

  it('limits retries with the retry budget instead, when there is one', () => {
    const p = new ConnectionPool({ http: { maxRetries: 1 } }, { retryBudget: { percent: 50, minRetryConcurrency: 1 } });
    for (let i = 0; i < 10; i++) p.tryAcquireRequest();
    const retries = Array.from({ length: 6 }, () => p.tryAcquireRetry());
    expect(retries.map((r) => r.ok)).toEqual([true, true, true, true, true, false]);
    expect(retries[5]).toEqual({ ok: false, reason: 'retry-budget' });
  });

  it('limits connections', () => {
    const p = new ConnectionPool({ tcp: { maxConnections: 1 } });
    const c = p.tryAcquireConnection();
    expect(p.tryAcquireConnection()).toEqual({ ok: false, reason: 'max-connections' });
    if (!c.ok) throw new Error('expected a lease');
    c.release();
    expect(p.tryAcquireConnection().ok).toBe(true);
    expect(p.stats()).toMatchObject({ activeConnections: 1, connectionOverflow: 1 });
  });
});

describe('OutlierDetector', () => {
  const ids = (n: number) => Array.from({ length: n }, (_, i) => `pod-${i}`);
  const fail = (d: OutlierDetector, id: string, times: number, status = 503) => {
    for (let i = 0; i < times; i++) d.record(id, { status });
  };

  function detector(spec: Record<string, unknown>, hosts = 10): { d: OutlierDetector; clock: ManualClock } {
    const clock = new ManualClock();
    const d = new OutlierDetector(spec, clock);
    d.setEndpoints(ids(hosts));
    return { d, clock };
  }

  it('does nothing without outlierDetection', () => {
    const clock = new ManualClock();
    const d = new OutlierDetector(undefined, clock);
    const eps = ids(10).map((id) => ({ id }));
    fail(d, 'pod-0', 100);
    expect(d.enabled).toBe(false);
    expect(d.isEjected('pod-0')).toBe(false);
    expect(d.eligible(eps)).toBe(eps);
  });

  it('ejects after consecutive5xxErrors (default 5) in a row; a success restarts the count', () => {
    const { d } = detector({});
    fail(d, 'pod-0', 4);
    d.record('pod-0', { status: 200 });
    fail(d, 'pod-0', 4);
    expect(d.isEjected('pod-0')).toBe(false);
    fail(d, 'pod-0', 1, 500);
    expect(d.isEjected('pod-0')).toBe(true);
    const eps = ids(10).map((id) => ({ id }));
    expect(d.eligible(eps).map((e) => e.id)).toEqual(ids(10).slice(1));
    expect(d.stats()).toMatchObject({ ejectionsActive: 1, ejectionsEnforced: { 'consecutive-5xx': 1 } });
  });

  it('counts failures without a response as 503 (timeouts as 504)', () => {
    const { d } = detector({ consecutive5xxErrors: 3 });
    d.record('pod-1', { error: 'connect-failure' });
    d.record('pod-1', { error: 'reset' });
    d.record('pod-1', { error: 'timeout' });
    expect(d.isEjected('pod-1')).toBe(true);
  });

  it('reads the deprecated consecutiveErrors as consecutive5xxErrors; 0 turns 5xx ejection off', () => {
    const { d } = detector({ consecutiveErrors: 2 });
    expect(d.notes.join()).toMatch(/consecutiveErrors/);
    fail(d, 'pod-0', 2, 500);
    expect(d.isEjected('pod-0')).toBe(true);
    const off = detector({ consecutive5xxErrors: 0 }).d;
    fail(off, 'pod-0', 50);
    expect(off.isEjected('pod-0')).toBe(false);
  });

  it('ejects after consecutiveGatewayErrors of 502/503/504, which another 5xx interrupts', () => {
    const { d } = detector({ consecutive5xxErrors: 0, consecutiveGatewayErrors: 3 });
    fail(d, 'pod-0', 2, 502);
    fail(d, 'pod-0', 1, 500);
    fail(d, 'pod-0', 2, 504);
    expect(d.isEjected('pod-0')).toBe(false);
    d.record('pod-0', { error: 'connect-failure' });
    expect(d.isEjected('pod-0')).toBe(true);
    expect(d.stats().ejectionsEnforced['consecutive-gateway-failure']).toBe(1);
  });

  it('counts local-origin failures apart with splitExternalLocalOriginErrors', () => {
    const { d } = detector({ splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2, consecutive5xxErrors: 3 });
    d.record('pod-0', { error: 'connect-failure' });
    d.record('pod-0', { status: 503 }); // an answer: the connection worked
    d.record('pod-0', { error: 'timeout' });
    expect(d.isEjected('pod-0')).toBe(false);
    d.record('pod-0', { error: 'reset' });
    expect(d.isEjected('pod-0')).toBe(true);
    expect(d.stats().ejectionsEnforced['consecutive-local-origin-failure']).toBe(1);
    // Local failures do not count as 5xx.
    for (let i = 0; i < 5; i++) {
      d.record('pod-1', { error: 'connect-failure' });
      d.record('pod-1', { status: 200 });
    }
    expect(d.isEjected('pod-1')).toBe(false);
  });

  it('ejects no more than maxEjectionPercent of the hosts (default 10%)', () => {
    const { d } = detector({});
    fail(d, 'pod-0', 5);
    fail(d, 'pod-1', 5);
    expect(d.isEjected('pod-0')).toBe(true);
    expect(d.isEjected('pod-1')).toBe(false);
    expect(d.stats()).toMatchObject({ ejectionsActive: 1, ejectionsOverflow: 1 });
    // Fewer than 10 hosts: (0 + 1) / 9 > 10%, nothing is ejected (Envoy's rule).
    const small = detector({}, 9).d;
    fail(small, 'pod-0', 5);
    expect(small.isEjected('pod-0')).toBe(false);
    // 50% of 4: two, not three.
    const half = detector({ maxEjectionPercent: 50 }, 4).d;
    for (const id of ids(4)) fail(half, id, 5);
    expect(ids(4).filter((id) => half.isEjected(id))).toEqual(['pod-0', 'pod-1']);
    expect(detector({ maxEjectionPercent: 0 }, 10).d.maxEjectionPercent).toBe(10); // 0 reads as unset, as pilot does
  });

  it('returns a host at the first sweep after baseEjectionTime, longer the next time, shorter again after a healthy while', () => {
    const { d, clock } = detector({ interval: '10s', baseEjectionTime: '30s', maxEjectionPercent: 100 });
    clock.set(5_000);
    fail(d, 'pod-0', 5);
    expect(d.hostState('pod-0')).toMatchObject({ ejected: true, ejections: 1, multiplier: 1, ejectionMs: 30_000 });
    clock.set(39_999); // the sweep at 30s finds 25s elapsed
    expect(d.isEjected('pod-0')).toBe(true);
    clock.set(40_000);
    expect(d.isEjected('pod-0')).toBe(false);

    // Ejected again at once: 2 × 30s.
    fail(d, 'pod-0', 5);
    expect(d.hostState('pod-0')).toMatchObject({ ejected: true, ejections: 2, multiplier: 2, ejectionMs: 60_000 });
    clock.set(99_999);
    expect(d.isEjected('pod-0')).toBe(true);
    clock.set(100_000);
    expect(d.isEjected('pod-0')).toBe(false);

    // Back for an interval: the multiplier goes down one per sweep.
    clock.set(110_000);
    expect(d.hostState('pod-0')!.multiplier).toBe(1);
    clock.set(120_000);
    expect(d.hostState('pod-0')!.multiplier).toBe(0);
    fail(d, 'pod-0', 5);
    expect(d.hostState('pod-0')).toMatchObject({ ejected: true, ejections: 3, multiplier: 1, ejectionMs: 30_000 });
    clock.set(150_000);
    expect(d.isEjected('pod-0')).toBe(false);
  });

  it('caps an ejection at max(300s, baseEjectionTime)', () => {
    const { d, clock } = detector({ interval: '1s', baseEjectionTime: '100s', maxEjectionPercent: 100 });
    for (let i = 0; i < 6; i++) {
      fail(d, 'pod-0', 5);
      const { ejectionMs } = d.hostState('pod-0')!;
      clock.advance(ejectionMs);
      expect(d.isEjected('pod-0')).toBe(false);
    }
    expect(d.hostState('pod-0')!.ejectionMs).toBe(300_000);
  });

  it('returns a briefly ejected host on time though another is out for long (sweeps skipped ahead)', () => {
    const { d, clock } = detector({ interval: '10s', baseEjectionTime: '30s', maxEjectionPercent: 100 });
    for (let i = 0; i < 4; i++) {
      fail(d, 'pod-0', 5);
      clock.advance(d.hostState('pod-0')!.ejectionMs); // back, and out again at once: no decay
    }
    fail(d, 'pod-0', 5);
    expect(d.hostState('pod-0')!.ejectionMs).toBe(150_000);
    clock.advance(20_000);
    expect(d.isEjected('pod-0')).toBe(true);
    fail(d, 'pod-1', 5);
    clock.advance(40_000);
    expect(d.isEjected('pod-1')).toBe(false);
    expect(d.isEjected('pod-0')).toBe(true);
    clock.advance(1_000_000); // a long idle: nothing left to do, quickly
    expect(d.isEjected('pod-0')).toBe(false);
  });

  it('makes every host eligible when fewer than minHealthPercent are healthy', () => {
    const { d } = detector({ maxEjectionPercent: 100, minHealthPercent: 60 }, 4);
    const eps = ids(4).map((id) => ({ id }));
    expect(d.eligible(eps)).toBe(eps);
    fail(d, 'pod-0', 5);
    expect(d.eligible(eps).map((e) => e.id)).toEqual(['pod-1', 'pod-2', 'pod-3']); // 75% healthy
    fail(d, 'pod-1', 5);
    expect(d.eligible(eps)).toBe(eps); // 50% < 60%: all
    // Without it (the default 0), all ejected means none eligible.
    const strict = detector({ maxEjectionPercent: 100 }, 2).d;
    fail(strict, 'pod-0', 5);
    fail(strict, 'pod-1', 5);
    expect(strict.eligible(ids(2).map((id) => ({ id })))).toEqual([]);
  });

  it('forgets hosts that leave, with their ejections', () => {
    const { d } = detector({ maxEjectionPercent: 100 }, 3);
    fail(d, 'pod-0', 5);
    expect(d.stats().ejectionsActive).toBe(1);
    d.setEndpoints(['pod-1', 'pod-2']);
    expect(d.stats().ejectionsActive).toBe(0);
    expect(d.isEjected('pod-0')).toBe(false);
  });
});

describe('TokenBucket', () => {
  it('starts full, refuses when empty, refills tokensPerFill each interval up to the maximum', () => {
    const clock = new ManualClock(1_000);
    const b = new TokenBucket({ maxTokens: 3, tokensPerFill: 1, fillIntervalMs: 1_000 }, clock);
    expect([b.take(), b.take(), b.take()].map((r) => [r.ok, r.remaining])).toEqual([[true, 2], [true, 1], [true, 0]]);
    clock.set(1_400);
    expect(b.take()).toEqual({ ok: false, remaining: 0, resetMs: 600 });
    clock.set(2_000);
    expect(b.take()).toEqual({ ok: true, remaining: 0, resetMs: 1_000 });
    expect(b.take().ok).toBe(false);
    clock.set(9_500);
    expect(b.take()).toEqual({ ok: true, remaining: 2, resetMs: 500 });
  });

  it('adds several tokens per fill', () => {
    const clock = new ManualClock();
    const b = new TokenBucket({ maxTokens: 10, tokensPerFill: 4, fillIntervalMs: 100 }, clock);
    for (let i = 0; i < 10; i++) b.take();
    clock.set(250);
    expect(b.take()).toEqual({ ok: true, remaining: 7, resetMs: 50 });
  });

  it('builds the x-ratelimit headers of a 429, reset in whole seconds rounded up', () => {
    expect(rateLimitHeaders(3, { ok: false, remaining: 0, resetMs: 600 })).toEqual({
      'x-ratelimit-limit': '3', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '1',
    });
    expect(rateLimitHeaders(100, { ok: true, remaining: 42, resetMs: 59_001 })['x-ratelimit-reset']).toBe('60');
  });
});
