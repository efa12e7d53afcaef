/**
 * Exponential backoff for everything ambit retries — a controller that is away, an API server's
 * list or watch, a certificate request, a Kubernetes object that could not be written, a local
 * process that keeps exiting: the wait after the n-th failure in a row is `initialMs` doubled
 * n−1 times, at most `maxMs`. With `jitter`, a random wait up to that bound (never under half of
 * `initialMs`), so that many callers that failed together do not retry together. (The waypoint's
 * retries of requests follow Envoy's back-off instead: src/waypoint/resilience.ts.)
 */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Full jitter: a random wait up to the exponential bound. */
  jitter?: boolean;
  random?: () => number;
}

/** The wait after `failures` failures in a row (1 = the first). */
export function backoffDelay(failures: number, opts: BackoffOptions): number {
  const bound = Math.min(opts.maxMs, opts.initialMs * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return opts.jitter ? Math.max(opts.initialMs / 2, (opts.random ?? Math.random)() * bound) : bound;
}

/** The failures in a row of one thing that is retried, and the wait before its next attempt. */
export class Backoff {
  private count = 0;

  constructor(private readonly opts: BackoffOptions) {}

  /** Failures since the last success. */
  get failures(): number {
    return this.count;
  }

  /** One more failure: the wait before the next attempt. */
  next(): number {
    return backoffDelay(++this.count, this.opts);
  }

  /** A success: the next failure waits `initialMs` again. */
  reset(): void {
    this.count = 0;
  }
}
