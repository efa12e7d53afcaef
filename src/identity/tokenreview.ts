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
 * Answers are cached by token hash for a short while (positive and negative separately);
 * concurrent checks of one token share one review. A failed review call is not cached.
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
  /** Whether `namespace/name` is a waypoint (KubernetesSource.isWaypoint); its ServiceAccount is named after it. */
  isWaypoint: (namespace: string, name: string) => boolean;
  /** Audiences the token must be for (TokenReview spec.audiences); default: the API server's. */
  audiences?: string[];
  /** How long an accepted token is trusted without asking again (ms). */
  positiveTtlMs?: number;
  /** How long a refused token is refused without asking again (ms). */
  negativeTtlMs?: number;
  /** Cached tokens at most (oldest dropped first). */
  maxEntries?: number;
  now?: () => number;
}

interface CacheEntry { until: number; caller?: Caller; error?: CaError }

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; extra?: Record<string, string[]> };
}

const SA_USER = /^system:serviceaccount:([a-z0-9]([-a-z0-9]*[a-z0-9])?):([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;

export class TokenReviewAuthenticator implements Authenticator {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<Caller>>();
  private readonly nodeAgent: { namespace: string; serviceAccount: string };
  private readonly now: () => number;

  constructor(private readonly opts: TokenReviewOptions) {
    this.nodeAgent = opts.nodeAgent ?? { namespace: 'ambit-system', serviceAccount: 'ambit-node' };
    this.now = opts.now ?? Date.now;
  }

  authenticate(metadata: Metadata): Promise<Caller> {
    const value = metadata.get('authorization')[0];
    const m = typeof value === 'string' ? /^Bearer (\S+)$/.exec(value) : null;
    if (!m) return Promise.reject(new CaError('UNAUTHENTICATED', 'no credential: send "authorization: Bearer <token>" metadata'));
    const token = m[1]!;
    const key = createHash('sha256').update(token).digest('base64');
    const hit = this.cache.get(key);
    if (hit && hit.until > this.now()) return hit.caller ? Promise.resolve(hit.caller) : Promise.reject(hit.error!);
    if (hit) this.cache.delete(key);
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.review(token).then((caller) => {
        this.remember(key, { until: this.now() + (this.opts.positiveTtlMs ?? 30_000), caller });
        return caller;
      }, (err: unknown) => {
        if (err instanceof CaError) this.remember(key, { until: this.now() + (this.opts.negativeTtlMs ?? 5_000), error: err });
        throw err instanceof CaError ? err : new CaError('UNAUTHENTICATED', `token review failed: ${err instanceof Error ? err.message : String(err)}`);
      }).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private remember(key: string, entry: CacheEntry): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    const max = this.opts.maxEntries ?? 10_000;
    while (this.cache.size > max) this.cache.delete(this.cache.keys().next().value!);
  }

  /** Resolves with the caller, rejects with a CaError (cached) or another error (an API failure, not cached). */
  private async review(token: string): Promise<Caller> {
    const body = {
      apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview',
      spec: { token, ...(this.opts.audiences ? { audiences: this.opts.audiences } : {}) },
    };
    const res = await this.opts.client.request('POST', '/apis/authentication.k8s.io/v1/tokenreviews', body);
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
    if (namespace === this.nodeAgent.namespace && account === this.nodeAgent.serviceAccount) {
      const node = status.user?.extra?.[NODE_NAME_EXTRA]?.[0];
      if (!node) throw new CaError('UNAUTHENTICATED', `a node agent token must be bound to a pod on a node (no ${NODE_NAME_EXTRA} in the token)`);
      return { node };
    }
    if (this.opts.isWaypoint(namespace, account)) {
      return {
        node: '',
        workload: { namespace, name: account, identity: formatSpiffeId({ trustDomain: this.opts.trustDomain, namespace, serviceAccount: account }) },
      };
    }
    throw new CaError('UNAUTHENTICATED', `${username} is neither the node agent (${this.nodeAgent.namespace}/${this.nodeAgent.serviceAccount}) nor a waypoint`);
  }
}
