/**
 * Kubernetes authentication for the CA and discovery: the caller's bearer token (a projected
 * ServiceAccount token) is checked with the TokenReview API (POST
 * /apis/authentication.k8s.io/v1/tokenreviews), and the user it names becomes the Caller:
 *
 * - `system:serviceaccount:<ns>:<sa>` of the node agent's ServiceAccount → the node agent of the
 *   node in the token's bound-pod extra `authentication.kubernetes.io/node-name`. API servers put
 *   it in pod-bound tokens from Kubernetes 1.30 (ServiceAccountTokenPodNodeInfo: alpha and off in
 *   1.29, beta and on in 1.30, GA in 1.32). Before that (1.27–1.29) the extra names only the pod
 *   (`authentication.kubernetes.io/pod-name` and `pod-uid`, in every pod-bound token since 1.11):
 *   the node is then read from that pod, which must exist with the token's uid, run as the node
 *   agent's account, belong to the node agent's DaemonSet and be scheduled. A token naming
 *   neither is refused, since any pod of that account could otherwise claim any node;
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
export const POD_NAME_EXTRA = 'authentication.kubernetes.io/pod-name';
export const POD_UID_EXTRA = 'authentication.kubernetes.io/pod-uid';

/** How a review ended, for metrics: a review that was not made because of the rate limit is `rate_limited`. */
export type ReviewOutcome = 'accepted' | 'refused' | 'rate_limited' | 'timeout' | 'error';

/** What this needs of an API client (src/kube/client.ts's KubeClient is one). */
export interface TokenReviewClient {
  request(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }>;
}

export interface TokenReviewOptions {
  client: TokenReviewClient;
  trustDomain: string;
  /**
   * The node agents' ServiceAccount and DaemonSet (default ambit-system, account and DaemonSet
   * ambit-node, as `ambit install` makes them).
   */
  nodeAgent?: { namespace: string; serviceAccount: string; daemonSet?: string };
  /**
   * A pod as the controller's watch cache holds it (KubernetesSource.cachedPod), for tokens that
   * name their pod but not their node; a pod not there (or older than the token's) is read with a
   * GET through `client`.
   */
  cachedPod?: (namespace: string, name: string) => Record<string, unknown> | undefined;
  /** Called once per review made (or refused for the rate limit), with how it ended. */
  onReview?: (outcome: ReviewOutcome) => void;
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

/** No answer from the API server in time: refused, not cached, counted apart. */
class ReviewTimeout extends Error {}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

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
  private readonly nodeAgent: { namespace: string; serviceAccount: string; daemonSet: string };
  private readonly now: () => number;
  /** Reviews made, and refused for the rate limit (for tests and logs). */
  readonly counts = { reviews: 0, limited: 0 };

  constructor(private readonly opts: TokenReviewOptions) {
    this.nodeAgent = { namespace: 'ambit-system', serviceAccount: 'ambit-node', daemonSet: 'ambit-node', ...opts.nodeAgent };
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
      this.opts.onReview?.('rate_limited');
      return Promise.reject(new CaError('UNAUTHENTICATED', limited));
    }
    const pending = this.review(token).then((caller) => {
      this.opts.onReview?.('accepted');
      const at = this.now();
      const until = Math.min(caller.expiresAt ?? Infinity, at + (this.opts.positiveTtlMs ?? 5 * 60_000));
      if (until > at) this.remember(this.accepted, key, { until, caller }, this.opts.maxEntries ?? 10_000);
      return caller;
    }, (err: unknown) => {
      this.opts.onReview?.(err instanceof CaError ? 'refused' : err instanceof ReviewTimeout ? 'timeout' : 'error');
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
    const res = await this.ask('POST', '/apis/authentication.k8s.io/v1/tokenreviews', body);
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
      const extra = status.user?.extra ?? {};
      const node = extra[NODE_NAME_EXTRA]?.[0];
      if (node) return { node, ...expiry };
      const podName = extra[POD_NAME_EXTRA]?.[0];
      const podUid = extra[POD_UID_EXTRA]?.[0];
      if (!podName || !podUid) {
        throw new CaError('UNAUTHENTICATED', `a node agent token must be bound to its pod: it names neither its node (${NODE_NAME_EXTRA}, in pod-bound tokens from Kubernetes 1.30) nor its pod (${POD_NAME_EXTRA} and ${POD_UID_EXTRA}, in pod-bound tokens since Kubernetes 1.11); mount a projected serviceAccountToken volume, not a Secret's token`);
      }
      return { node: await this.nodeOfAgentPod(namespace, podName, podUid), ...expiry };
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
  /** An API request bounded by reviewTimeoutMs (ReviewTimeout when it takes longer). */
  private async ask(method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
    const timeoutMs = this.opts.reviewTimeoutMs ?? 5_000;
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.opts.client.request(method, path, body),
      new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new ReviewTimeout(`no answer from the API server within ${timeoutMs} ms`)), timeoutMs); }),
    ]).finally(() => clearTimeout(timer));
  }

  /**
   * The node of the node agent whose token names pod `namespace/name` with `uid` (Kubernetes
   * before 1.30). The pod's spec.nodeName cannot change once set, so the binding holds for the
   * token's life. The owner reference keeps other pods that run as the agent's account (a debug
   * pod, a Job) from claiming a node; whoever may create pods in that namespace is trusted anyway.
   */
  private async nodeOfAgentPod(namespace: string, name: string, uid: string): Promise<string> {
    const what = `the token's pod ${namespace}/${name}`;
    let pod = this.opts.cachedPod?.(namespace, name);
    // The cache may lag: a new pod (the agent asks as soon as it starts) or a replaced one of the same name.
    if (!pod || uidOf(pod) !== uid || !nodeNameOf(pod)) pod = await this.readPod(namespace, name);
    if (!pod) throw new CaError('UNAUTHENTICATED', `${what} does not exist (deleted since the token was issued?)`);
    if (uidOf(pod) !== uid) throw new CaError('UNAUTHENTICATED', `${what} has uid ${uidOf(pod) ?? '(none)'}, not the token's ${uid}: the pod was replaced, and a token is good only for its own pod`);
    const spec = isRecord(pod.spec) ? pod.spec : {};
    const account = typeof spec.serviceAccountName === 'string' ? spec.serviceAccountName : 'default';
    if (account !== this.nodeAgent.serviceAccount) throw new CaError('UNAUTHENTICATED', `${what} runs as ServiceAccount ${account}, not the node agent's ${this.nodeAgent.serviceAccount}`);
    const meta = isRecord(pod.metadata) ? pod.metadata : {};
    const owners = Array.isArray(meta.ownerReferences) ? meta.ownerReferences.filter(isRecord) : [];
    const owned = owners.some((o) => o.controller === true && o.kind === 'DaemonSet' && o.name === this.nodeAgent.daemonSet && typeof o.apiVersion === 'string' && o.apiVersion.startsWith('apps/'));
    if (!owned) throw new CaError('UNAUTHENTICATED', `${what} is not a pod of the DaemonSet ${namespace}/${this.nodeAgent.daemonSet} (no such controller owner reference)`);
    const node = nodeNameOf(pod);
    if (!node) throw new CaError('UNAUTHENTICATED', `${what} is not scheduled on a node yet (no spec.nodeName)`);
    const phase = isRecord(pod.status) ? pod.status.phase : undefined;
    if (phase === 'Succeeded' || phase === 'Failed') throw new CaError('UNAUTHENTICATED', `${what} has finished (phase ${phase})`);
    return node;
  }

  /** GET of one pod: the object, undefined when it does not exist, an Error (not cached) when the API server fails. */
  private async readPod(namespace: string, name: string): Promise<Record<string, unknown> | undefined> {
    const res = await this.ask('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`);
    if (res.status === 404) return undefined;
    if (res.status !== 200 || !isRecord(res.body)) {
      const hint = res.status === 403 ? ' (the controller needs get on pods)' : '';
      throw new Error(`reading pod ${namespace}/${name}: HTTP ${res.status}${hint}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`);
    }
    return res.body;
  }
}

function uidOf(pod: Record<string, unknown>): string | undefined {
  return isRecord(pod.metadata) && typeof pod.metadata.uid === 'string' ? pod.metadata.uid : undefined;
}

function nodeNameOf(pod: Record<string, unknown>): string | undefined {
  return isRecord(pod.spec) && typeof pod.spec.nodeName === 'string' && pod.spec.nodeName ? pod.spec.nodeName : undefined;
}
