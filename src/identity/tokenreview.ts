/**
 * Kubernetes authentication for the CA and discovery: the caller's bearer token (a projected
 * ServiceAccount token) is checked with the TokenReview API (POST
 * /apis/authentication.k8s.io/v1/tokenreviews), and the user it names becomes the Caller:
 *
 * - `system:serviceaccount:<ns>:<sa>` of the node agent's ServiceAccount → the node agent of the
 *   node in the token's bound-pod extra `authentication.kubernetes.io/node-name` (Kubernetes
 *   1.30+ puts it in tokens bound to a pod); without it the token is refused, since any pod of
 *   that account could otherwise claim any node;
 * - the ServiceAccount of a waypoint (a waypoint's pods run as the account named after it, as
 *   the local cluster's waypoint credentials are) → that waypoint workload, good for its own
 *   identity only;
 * - anything else is refused.
 *
 * Bounded against hostile callers (every byte that reaches 15012 may be an attack):
 *
 * - an accepted token is cached by its hash until it expires (its JWT `exp`, read once the API
 *   server has vouched for it), at most `positiveTtlMs`, so a revoked bound token (its pod
 *   deleted) is noticed within that; the Caller carries the expiry, and the discovery stream
 *   re-checks its caller then;
 * - refused tokens are cached in a separate, bounded map: a flood of bad tokens evicts only
 *   other bad tokens, never an accepted one;
 * - reviews are rate-limited by token buckets, one per caller address and one for all, and a
 *   caller over its limit is refused (UNAUTHENTICATED, not cached) at once, without a review;
 *   cached answers cost no review and are never limited;
 * - a review that does not answer within `reviewTimeoutMs` is refused (not cached); concurrent
 *   checks of one token share one review; a token longer than `maxTokenBytes` is refused unread.
 */
import { createHash } from 'node:crypto';
import type { Metadata } from '@grpc/grpc-js';
import { CaError } from './ca.js';
import type { Authenticator, Caller } from './ca-server.js';
import { formatSpiffeId } from './spiffe.js';

export const NODE_NAME_EXTRA = 'authentication.kubernetes.io/node-name';

/** What this needs of an API client (src/control/kube/client.ts's KubeClient is one). */
export interface TokenReviewClient {
  request(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }>;
}

export interface TokenReviewOptions {
  client: TokenReviewClient;
  trustDomain: string;
  /** The node agents' ServiceAccount (default ambit-system/ambit-node, as `ambit install` makes it). */
  nodeAgent?: { namespace: string; serviceAccount: string };
  /** Whether the ServiceAccount `namespace/name` is a waypoint's (KubernetesSource.isWaypoint: a waypoint Gateway of that name, the account made for it). */
  isWaypoint: (namespace: string, name: string) => boolean;
  /** Audiences the token must be for (TokenReview spec.audiences); default: the API server's. */
  audiences?: string[];
  /** An accepted token is trusted without asking again until it expires, and at most this long (ms; default 5 min). */
  positiveTtlMs?: number;
  /** How long a refused token is refused without asking again (ms; default 5 s). */
  negativeTtlMs?: number;
  /** Accepted tokens cached at most (oldest dropped first; default 10,000). */
  maxEntries?: number;
  /** Refused tokens cached at most, in their own map (oldest dropped first; default 10,000). */
  maxNegativeEntries?: number;
  /** Reviews per second and burst, for all callers together (default 50/s, burst 200). */
  rateLimit?: { perSecond: number; burst: number };
  /** Reviews per second and burst for one caller address (default 5/s, burst 20). */
  peerRateLimit?: { perSecond: number; burst: number };
  /** A review taking longer is refused, not cached (ms; default 5 s). */
  reviewTimeoutMs?: number;
  /** A longer bearer token is refused without a review (default 16 KiB; ServiceAccount tokens are ~1 KiB). */
  maxTokenBytes?: number;
  now?: () => number;
}

interface Accepted { until: number; caller: Caller }
interface Refused { until: number; error: CaError }

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; extra?: Record<string, string[]> };
}

const SA_USER = /^system:serviceaccount:([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;
/** Caller addresses whose bucket is kept (the least recently used go first; a new one starts full). */
const MAX_PEERS = 10_000;

/** A token bucket: `burst` tokens, refilled at `perSecond`. */
export class TokenBucket {
  private tokens: number;
  private at: number;

  constructor(private readonly perSecond: number, private readonly burst: number, now: number) {
    this.tokens = burst;
    this.at = now;
  }

  private refill(now: number): void {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.perSecond);
    this.at = now;
  }

  /** Whether one token is there now (nothing taken). */
  has(now: number): boolean {
    this.refill(now);
    return this.tokens >= 1;
  }

  take(now: number): void {
    this.refill(now);
    this.tokens -= 1;
  }

  /** ms until one token is there. */
  waitMs(now: number): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.perSecond) * 1000);
  }
}

/** The address of a gRPC peer ("10.1.2.3:5555", "[fd00::1]:5555", "ipv4:..."), without its port. */
export function peerAddress(peer: string | undefined): string {
  if (!peer) return '';
  const p = peer.replace(/^ipv[46]:/, '');
  const m = /^\[([^\]]+)\](:\d+)?$/.exec(p) ?? /^([^:]+)(:\d+)?$/.exec(p);
  return m ? m[1]! : p;
}

/** The `exp` of a JWT as ms since the epoch, if it has one (read only after the API server accepted the token). */
export function jwtExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

export class TokenReviewAuthenticator implements Authenticator {
  private readonly accepted = new Map<string, Accepted>();
  private readonly refused = new Map<string, Refused>();
  private readonly inflight = new Map<string, Promise<Caller>>();
  private readonly peers = new Map<string, TokenBucket>();
  private readonly global: TokenBucket;
  private readonly nodeAgent: { namespace: string; serviceAccount: string };
  private readonly now: () => number;
  /** Reviews made, and refused for the rate limit (for tests and logs). */
  readonly counts = { reviews: 0, limited: 0 };

  constructor(private readonly opts: TokenReviewOptions) {
    this.nodeAgent = opts.nodeAgent ?? { namespace: 'ambit-system', serviceAccount: 'ambit-node' };
    this.now = opts.now ?? Date.now;
    const g = opts.rateLimit ?? { perSecond: 50, burst: 200 };
    this.global = new TokenBucket(g.perSecond, g.burst, this.now());
  }

  authenticate(metadata: Metadata, peer?: string): Promise<Caller> {
    const value = metadata.get('authorization')[0];
    const m = typeof value === 'string' ? /^Bearer (\S+)$/.exec(value) : null;
    if (!m) return Promise.reject(new CaError('UNAUTHENTICATED', 'no credential: send "authorization: Bearer <token>" metadata'));
    const token = m[1]!;
    const maxBytes = this.opts.maxTokenBytes ?? 16 * 1024;
    if (token.length > maxBytes) return Promise.reject(new CaError('UNAUTHENTICATED', `bearer token of ${token.length} bytes: longer than the ${maxBytes} a ServiceAccount token may have`));
    const key = createHash('sha256').update(token).digest('base64');
    const now = this.now();
    const good = this.accepted.get(key);
    if (good && good.until > now) return Promise.resolve(good.caller);
    if (good) this.accepted.delete(key);
    const bad = this.refused.get(key);
    if (bad && bad.until > now) return Promise.reject(bad.error);
    if (bad) this.refused.delete(key);
    const shared = this.inflight.get(key);
    if (shared) return shared;
    const limited = this.limit(peerAddress(peer), now);
    if (limited) {
      this.counts.limited++;
      return Promise.reject(new CaError('UNAUTHENTICATED', limited));
    }
    const pending = this.review(token).then((caller) => {
      const at = this.now();
      const until = Math.min(caller.expiresAt ?? Infinity, at + (this.opts.positiveTtlMs ?? 5 * 60_000));
      if (until > at) this.remember(this.accepted, key, { until, caller }, this.opts.maxEntries ?? 10_000);
      return caller;
    }, (err: unknown) => {
      if (err instanceof CaError) this.remember(this.refused, key, { until: this.now() + (this.opts.negativeTtlMs ?? 5_000), error: err }, this.opts.maxNegativeEntries ?? 10_000);
      throw err instanceof CaError ? err : new CaError('UNAUTHENTICATED', `token review failed: ${err instanceof Error ? err.message : String(err)}`);
    }).finally(() => this.inflight.delete(key));
    this.inflight.set(key, pending);
    return pending;
  }

  /** Takes one review from the caller's bucket and the global one; the refusal's reason when either is empty. */
  private limit(peer: string, now: number): string | undefined {
    let bucket = this.peers.get(peer);
    if (bucket) this.peers.delete(peer);
    else {
      const p = this.opts.peerRateLimit ?? { perSecond: 5, burst: 20 };
      bucket = new TokenBucket(p.perSecond, p.burst, now);
    }
    this.peers.set(peer, bucket);
    if (this.peers.size > MAX_PEERS) this.peers.delete(this.peers.keys().next().value!);
    if (!bucket.has(now)) return `too many token reviews from ${peer || 'this caller'}: try again in ${bucket.waitMs(now)} ms`;
    if (!this.global.has(now)) return `too many token reviews: try again in ${this.global.waitMs(now)} ms`;
    bucket.take(now);
    this.global.take(now);
    return undefined;
  }

  private remember<T>(cache: Map<string, T>, key: string, entry: T, max: number): void {
    cache.delete(key);
    cache.set(key, entry);
    while (cache.size > max) cache.delete(cache.keys().next().value!);
  }

  /** Resolves with the caller, rejects with a CaError (cached) or another error (an API failure, not cached). */
  private async review(token: string): Promise<Caller> {
    const body = {
      apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview',
      spec: { token, ...(this.opts.audiences ? { audiences: this.opts.audiences } : {}) },
    };
    this.counts.reviews++;
    const timeoutMs = this.opts.reviewTimeoutMs ?? 5_000;
    let timer: NodeJS.Timeout | undefined;
    const res = await Promise.race([
      this.opts.client.request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', body),
      new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer from the API server within ${timeoutMs} ms`)), timeoutMs); }),
    ]).finally(() => clearTimeout(timer));
    if (res.status !== 200 && res.status !== 201) {
      throw new Error(`HTTP ${res.status}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`);
    }
    const status = ((res.body as { status?: TokenReviewStatus } | undefined)?.status) ?? {};
    if (!status.authenticated) throw new CaError('UNAUTHENTICATED', `token refused by the API server${status.error ? `: ${status.error}` : ''}`);
    if (this.opts.audiences && !this.opts.audiences.some((a) => status.audiences?.includes(a))) {
      throw new CaError('UNAUTHENTICATED', `token is not for audience ${this.opts.audiences.join(' or ')}`);
    }
    const username = status.user?.username ?? '';
    const sa = SA_USER.exec(username);
    if (!sa) throw new CaError('UNAUTHENTICATED', `${username || 'the caller'} is not a ServiceAccount`);
    const namespace = sa[1]!;
    const account = sa[3]!;
    const expiresAt = jwtExpiry(token);
    const expiry = expiresAt !== undefined ? { expiresAt } : {};
    if (namespace === this.nodeAgent.namespace && account === this.nodeAgent.serviceAccount) {
      const node = status.user?.extra?.[NODE_NAME_EXTRA]?.[0];
      if (!node) throw new CaError('UNAUTHENTICATED', `a node agent token must be bound to a pod on a node (no ${NODE_NAME_EXTRA} in the token)`);
      return { node, ...expiry };
    }
    if (this.opts.isWaypoint(namespace, account)) {
      return {
        node: '',
        workload: { namespace, name: account, identity: formatSpiffeId({ trustDomain: this.opts.trustDomain, namespace, serviceAccount: account }) },
        ...expiry,
      };
    }
    throw new CaError('UNAUTHENTICATED', `${username} is neither the node agent (${this.nodeAgent.namespace}/${this.nodeAgent.serviceAccount}) nor a waypoint (the account of a Gateway of class ambit-waypoint, made for it)`);
  }
}
