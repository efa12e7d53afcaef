import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { CaError } from '../../src/identity/ca.js';
import { NODE_NAME_EXTRA, peerAddress, POD_NAME_EXTRA, POD_UID_EXTRA, TokenReviewAuthenticator, type ReviewOutcome, type TokenReviewOptions } from '../../src/identity/tokenreview.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const server = new FakeApiServer([{ group: '', version: 'v1', kind: 'Pod', plural: 'pods' }]);
let client: KubeClient;

beforeAll(async () => {
  await server.start();
  client = new KubeClient({ server: server.url });
  server.tokens.set('agent-a', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-a'] } } });
  server.tokens.set('agent-unbound', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node' } });
  server.tokens.set('waypoint', { authenticated: true, user: { username: 'system:serviceaccount:shop:shop-waypoint' } });
  server.tokens.set('app', { authenticated: true, user: { username: 'system:serviceaccount:shop:cart' } });
  server.tokens.set('human', { authenticated: true, user: { username: 'alice@example.com' } });
  server.tokens.set('aud', { authenticated: true, audiences: ['ambit'], user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-b'] } } });
});
afterAll(() => server.close());

const md = (token?: string) => {
  const m = new Metadata();
  if (token) m.set('authorization', `Bearer ${token}`);
  return m;
};
const make = (opts: Partial<TokenReviewOptions> = {}) => new TokenReviewAuthenticator({
  client, trustDomain: 'cluster.local', isWaypoint: (ns, name) => ns === 'shop' && name === 'shop-waypoint', ...opts,
});
const refusal = async (p: Promise<unknown>) => {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(CaError);
  expect((err as CaError).code).toBe('UNAUTHENTICATED');
  return (err as CaError).message;
};

describe('TokenReviewAuthenticator', () => {
  it('maps the node agent ServiceAccount with a bound node to that node', async () => {
    await expect(make().authenticate(md('agent-a'))).resolves.toEqual({ node: 'node-a' });
    const review = server.tokenReviews.at(-1) as { apiVersion?: string; kind?: string; spec: { token: string } };
    expect(review).toMatchObject({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: 'agent-a' } });
  });

  it('maps a waypoint ServiceAccount to that waypoint workload only', async () => {
    await expect(make().authenticate(md('waypoint'))).resolves.toEqual({
      node: '', workload: { namespace: 'shop', name: 'shop-waypoint', identity: 'spiffe://cluster.local/ns/shop/sa/shop-waypoint' },
    });
  });

  it('refuses unknown tokens, unbound node agent tokens, other accounts, non-ServiceAccounts and missing credentials', async () => {
    const a = make();
    expect(await refusal(a.authenticate(md('nope')))).toMatch(/refused by the API server: invalid bearer token/);
    expect(await refusal(a.authenticate(md('agent-unbound')))).toBe(`a node agent token must be bound to its pod: it names neither its node (${NODE_NAME_EXTRA}, in pod-bound tokens from Kubernetes 1.30) nor its pod (${POD_NAME_EXTRA} and ${POD_UID_EXTRA}, in pod-bound tokens since Kubernetes 1.11); mount a projected serviceAccountToken volume, not a Secret's token`);
    expect(await refusal(a.authenticate(md('app')))).toMatch(/neither the node agent .* nor a waypoint/);
    expect(await refusal(a.authenticate(md('human')))).toMatch(/not a ServiceAccount/);
    expect(await refusal(a.authenticate(md()))).toMatch(/no credential/);
  });

  it('checks the audience when one is required', async () => {
    await expect(make({ audiences: ['ambit'] }).authenticate(md('aud'))).resolves.toEqual({ node: 'node-b' });
    expect((server.tokenReviews.at(-1) as { spec: { audiences?: string[] } }).spec.audiences).toEqual(['ambit']);
    expect(await refusal(make({ audiences: ['ambit'] }).authenticate(md('agent-a')))).toMatch(/audience/);
  });

  it('caches answers for a short while, positive and negative, and shares concurrent reviews', async () => {
    let now = 1_000_000;
    const a = make({ now: () => now, positiveTtlMs: 30_000, negativeTtlMs: 5_000 });
    const count = () => server.tokenReviews.length;
    const start = count();
    await Promise.all([a.authenticate(md('agent-a')), a.authenticate(md('agent-a')), a.authenticate(md('agent-a'))]);
    expect(count()).toBe(start + 1);
    await a.authenticate(md('agent-a'));
    expect(count()).toBe(start + 1);
    await refusal(a.authenticate(md('later')));
    await refusal(a.authenticate(md('later')));
    expect(count()).toBe(start + 2);
    // The token becomes valid: still refused from the cache until the negative entry expires.
    server.tokens.set('later', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-c'] } } });
    now += 5_001;
    await expect(a.authenticate(md('later'))).resolves.toEqual({ node: 'node-c' });
    expect(count()).toBe(start + 3);
    // Revoked: trusted from the cache until the positive entry expires, then refused.
    server.tokens.delete('agent-a');
    await expect(a.authenticate(md('agent-a'))).resolves.toEqual({ node: 'node-a' });
    now += 30_001;
    await refusal(a.authenticate(md('agent-a')));
    server.tokens.set('agent-a', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-a'] } } });
  });

  it('refuses without caching when the API server cannot be asked', async () => {
    const down = new TokenReviewAuthenticator({ client: new KubeClient({ server: 'http://127.0.0.1:1' }), trustDomain: 'cluster.local', isWaypoint: () => false });
    expect(await refusal(down.authenticate(md('agent-a')))).toMatch(/token review failed/);
    const broken = new TokenReviewAuthenticator({
      client: { request: () => Promise.resolve({ status: 500, body: { message: 'etcd is down' } }) }, trustDomain: 'cluster.local', isWaypoint: () => false,
    });
    expect(await refusal(broken.authenticate(md('agent-a')))).toMatch(/token review failed: HTTP 500: etcd is down/);
  });

  it('keeps an accepted token until its expiry (its JWT exp), then asks again, and the caller carries that expiry', async () => {
    let now = 2_000_000_000_000;
    const token = jwt(now / 1000 + 60);
    server.tokens.set(token, { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-e'] } } });
    const a = make({ now: () => now });
    const start = server.tokenReviews.length;
    await expect(a.authenticate(md(token))).resolves.toEqual({ node: 'node-e', expiresAt: now + 60_000 });
    now += 59_000;
    await expect(a.authenticate(md(token))).resolves.toEqual({ node: 'node-e', expiresAt: now + 1_000 });
    expect(server.tokenReviews.length).toBe(start + 1);
    // Expired: asked again (the API server now refuses it).
    server.tokens.delete(token);
    now += 1_001;
    expect(await refusal(a.authenticate(md(token)))).toMatch(/invalid bearer token/);
    expect(server.tokenReviews.length).toBe(start + 2);
  });

  it('keeps refused tokens apart: a flood of bad tokens evicts no accepted one', async () => {
    const a = make({ maxEntries: 50, maxNegativeEntries: 50, rateLimit: { perSecond: 1e6, burst: 1e6 }, peerRateLimit: { perSecond: 1e6, burst: 1e6 } });
    await a.authenticate(md('agent-a'));
    await a.authenticate(md('waypoint'));
    const reviews = server.tokenReviews.length;
    for (let batch = 0; batch < 5; batch++) {
      await Promise.all(Array.from({ length: 100 }, (_, i) => refusal(a.authenticate(md(`junk-${batch}-${i}`)))));
    }
    expect(server.tokenReviews.length).toBe(reviews + 500);
    await expect(a.authenticate(md('agent-a'))).resolves.toEqual({ node: 'node-a' });
    await expect(a.authenticate(md('waypoint'))).resolves.toMatchObject({ workload: { name: 'shop-waypoint' } });
    expect(server.tokenReviews.length).toBe(reviews + 500);
    // The negative cache is bounded: the oldest refused token is asked about again, the newest is not.
    await refusal(a.authenticate(md('junk-4-99')));
    expect(server.tokenReviews.length).toBe(reviews + 500);
    await refusal(a.authenticate(md('junk-0-0')));
    expect(server.tokenReviews.length).toBe(reviews + 501);
  });

  it('rate-limits reviews per caller address and in all: over the limit is refused at once without a review; cached tokens still pass', async () => {
    let now = 3_000_000;
    const a = make({ now: () => now, peerRateLimit: { perSecond: 1, burst: 3 }, rateLimit: { perSecond: 2, burst: 6 } });
    const attacker = 'ipv4:10.0.0.66:40000';
    await a.authenticate(md('agent-a'), attacker);
    const reviews = server.tokenReviews.length;
    for (let i = 0; i < 2; i++) expect(await refusal(a.authenticate(md(`flood-${i}`), attacker))).toMatch(/invalid bearer token/);
    const t = performance.now();
    for (let i = 2; i < 50; i++) expect(await refusal(a.authenticate(md(`flood-${i}`), attacker))).toBe('too many token reviews from 10.0.0.66: try again in 1000 ms');
    expect(performance.now() - t).toBeLessThan(500);
    expect(server.tokenReviews.length).toBe(reviews + 2);
    expect(a.counts.limited).toBe(48);
    // Its accepted token is cached: no review, no limit.
    await expect(a.authenticate(md('agent-a'), attacker)).resolves.toEqual({ node: 'node-a' });
    // Another caller still gets reviews, until the global bucket (6, 3 taken) is empty.
    await expect(a.authenticate(md('waypoint'), '10.0.0.7:5000')).resolves.toMatchObject({ workload: { name: 'shop-waypoint' } });
    await refusal(a.authenticate(md('other-1'), '[fd00::8]:5000'));
    await refusal(a.authenticate(md('other-2'), '[fd00::9]:5000'));
    expect(await refusal(a.authenticate(md('other-3'), '[fd00::a]:5000'))).toBe('too many token reviews: try again in 500 ms');
    expect(server.tokenReviews.length).toBe(reviews + 5);
    // Buckets refill with time.
    now += 1_000;
    expect(await refusal(a.authenticate(md('flood-50'), attacker))).toMatch(/invalid bearer token/);
    expect(server.tokenReviews.length).toBe(reviews + 6);
  });

  it('refuses an over-long token unread, and a review the API server does not answer in time (not cached)', async () => {
    const a = make();
    const reviews = server.tokenReviews.length;
    expect(await refusal(a.authenticate(md('x'.repeat(20_000))))).toBe('bearer token of 20000 bytes: longer than the 16384 a ServiceAccount token may have');
    expect(server.tokenReviews.length).toBe(reviews);
    let calls = 0;
    const hung = new TokenReviewAuthenticator({
      client: { request: () => { calls++; return new Promise(() => undefined); } }, trustDomain: 'cluster.local', isWaypoint: () => false, reviewTimeoutMs: 100,
    });
    const t = performance.now();
    expect(await refusal(hung.authenticate(md('agent-a')))).toBe('token review failed: no answer from the API server within 100 ms');
    expect(performance.now() - t).toBeLessThan(2_000);
    await refusal(hung.authenticate(md('agent-a')));
    expect(calls).toBe(2);
  });

  it('counts each review by its outcome: accepted, refused, rate limited, timed out, failed', async () => {
    const seen: ReviewOutcome[] = [];
    const a = make({ onReview: (o) => seen.push(o), peerRateLimit: { perSecond: 0.001, burst: 2 } });
    await a.authenticate(md('agent-a'), '10.9.9.9:1');
    await a.authenticate(md('agent-a'), '10.9.9.9:1'); // cached: no review
    await refusal(a.authenticate(md('bogus'), '10.9.9.9:1'));
    await refusal(a.authenticate(md('bogus-2'), '10.9.9.9:1'));
    expect(seen).toEqual(['accepted', 'refused', 'rate_limited']);
    const hung = new TokenReviewAuthenticator({ client: { request: () => new Promise(() => undefined) }, trustDomain: 'cluster.local', isWaypoint: () => false, reviewTimeoutMs: 50, onReview: (o) => seen.push(o) });
    await refusal(hung.authenticate(md('agent-a')));
    const broken = new TokenReviewAuthenticator({ client: { request: () => Promise.resolve({ status: 500, body: {} }) }, trustDomain: 'cluster.local', isWaypoint: () => false, onReview: (o) => seen.push(o) });
    await refusal(broken.authenticate(md('agent-a')));
    expect(seen).toEqual(['accepted', 'refused', 'rate_limited', 'timeout', 'error']);
  });

  it('reads the caller address out of gRPC peers', () => {
    expect(peerAddress('127.0.0.1:5555')).toBe('127.0.0.1');
    expect(peerAddress('ipv4:10.1.2.3:80')).toBe('10.1.2.3');
    expect(peerAddress('[fd00::1]:5555')).toBe('fd00::1');
    expect(peerAddress('ipv6:[::1]:1')).toBe('::1');
    expect(peerAddress(undefined)).toBe('');
  });
});

/**
 * Kubernetes 1.27–1.29: a pod-bound token names its pod (pod-name, pod-uid) but not its node, so
 * the node agent's node is read from its pod.
 */
describe('TokenReviewAuthenticator without the node-name extra', () => {
  const agentPod = (name: string, uid: string, node: string | undefined, over: { serviceAccountName?: string; owner?: Record<string, unknown> | null; phase?: string } = {}) => ({
    metadata: {
      name, namespace: 'ambit-system', uid,
      ...(over.owner === null ? {} : { ownerReferences: [over.owner ?? { apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'ambit-node', uid: 'ds-uid', controller: true, blockOwnerDeletion: true }] }),
    },
    spec: { ...(node ? { nodeName: node } : {}), serviceAccountName: over.serviceAccountName ?? 'ambit-node', containers: [{ name: 'agent', image: 'ambit' }] },
    status: { phase: over.phase ?? 'Running' },
  });
  /** A token of the node agent's account bound to pod `name` with `uid`, without the node. */
  const podToken = (token: string, name: string, uid: string) => {
    server.tokens.set(token, { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [POD_NAME_EXTRA]: [name], [POD_UID_EXTRA]: [uid] } } });
  };
  const gets = (name: string) => server.requests.filter((r) => r.method === 'GET' && r.url === `/api/v1/namespaces/ambit-system/pods/${name}`).length;

  beforeAll(() => {
    server.apply('Pod', agentPod('ambit-node-aaaaa', 'uid-a', 'node-a'));
    server.apply('Pod', agentPod('ambit-node-bbbbb', 'uid-b', 'node-b'));
    server.apply('Pod', agentPod('ambit-node-new', 'uid-new-2', 'node-a'));
    server.apply('Pod', agentPod('debug', 'uid-debug', 'node-a', { owner: null }));
    server.apply('Pod', agentPod('rs-pod', 'uid-rs', 'node-a', { owner: { apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'ambit-node-7d9f', uid: 'rs', controller: true } }));
    server.apply('Pod', agentPod('other-sa', 'uid-other', 'node-a', { serviceAccountName: 'default' }));
    server.apply('Pod', agentPod('pending', 'uid-pending', undefined));
    server.apply('Pod', agentPod('done', 'uid-done', 'node-a', { phase: 'Failed' }));
    podToken('pod-a', 'ambit-node-aaaaa', 'uid-a');
    podToken('pod-b', 'ambit-node-bbbbb', 'uid-b');
    podToken('pod-replaced', 'ambit-node-new', 'uid-new-1');
    podToken('pod-gone', 'ambit-node-gone', 'uid-gone');
    podToken('pod-debug', 'debug', 'uid-debug');
    podToken('pod-rs', 'rs-pod', 'uid-rs');
    podToken('pod-other-sa', 'other-sa', 'uid-other');
    podToken('pod-pending', 'pending', 'uid-pending');
    podToken('pod-done', 'done', 'uid-done');
    server.tokens.set('pod-name-only', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [POD_NAME_EXTRA]: ['ambit-node-aaaaa'] } } });
  });

  it('binds the token to the node its pod runs on, read with a GET when the pod cache does not hold it', async () => {
    const before = gets('ambit-node-aaaaa');
    await expect(make({ cachedPod: () => undefined }).authenticate(md('pod-a'))).resolves.toEqual({ node: 'node-a' });
    expect(gets('ambit-node-aaaaa')).toBe(before + 1);
  });

  it('binds a pod on another node to that node, not any other', async () => {
    await expect(make().authenticate(md('pod-b'))).resolves.toEqual({ node: 'node-b' });
  });

  it('reads the pod from the controller\'s cache when it holds it, and asks the API server when the cached one is older', async () => {
    const cached = agentPod('ambit-node-aaaaa', 'uid-a', 'node-a');
    const before = gets('ambit-node-aaaaa');
    await expect(make({ cachedPod: (ns, name) => (ns === 'ambit-system' && name === 'ambit-node-aaaaa' ? cached : undefined) }).authenticate(md('pod-a'))).resolves.toEqual({ node: 'node-a' });
    expect(gets('ambit-node-aaaaa')).toBe(before);
    // The cache still holds the pod that had this name before (another uid): the API server decides.
    const stale = agentPod('ambit-node-aaaaa', 'uid-old', 'node-b');
    await expect(make({ cachedPod: () => stale }).authenticate(md('pod-a'))).resolves.toEqual({ node: 'node-a' });
    expect(gets('ambit-node-aaaaa')).toBe(before + 1);
  });

  it('refuses a token whose pod was replaced by one of the same name (uid mismatch) or deleted', async () => {
    expect(await refusal(make().authenticate(md('pod-replaced')))).toBe('the token\'s pod ambit-system/ambit-node-new has uid uid-new-2, not the token\'s uid-new-1: the pod was replaced, and a token is good only for its own pod');
    expect(await refusal(make().authenticate(md('pod-gone')))).toBe('the token\'s pod ambit-system/ambit-node-gone does not exist (deleted since the token was issued?)');
  });

  it('refuses pods that are not the node agent DaemonSet\'s, run as another account, are unscheduled or finished', async () => {
    const a = make();
    expect(await refusal(a.authenticate(md('pod-debug')))).toBe('the token\'s pod ambit-system/debug is not a pod of the DaemonSet ambit-system/ambit-node (no such controller owner reference)');
    expect(await refusal(a.authenticate(md('pod-rs')))).toMatch(/rs-pod is not a pod of the DaemonSet ambit-system\/ambit-node/);
    expect(await refusal(a.authenticate(md('pod-other-sa')))).toBe('the token\'s pod ambit-system/other-sa runs as ServiceAccount default, not the node agent\'s ambit-node');
    expect(await refusal(a.authenticate(md('pod-pending')))).toBe('the token\'s pod ambit-system/pending is not scheduled on a node yet (no spec.nodeName)');
    expect(await refusal(a.authenticate(md('pod-done')))).toBe('the token\'s pod ambit-system/done has finished (phase Failed)');
    // The DaemonSet's name is configurable (AMBIT_NODE_DAEMONSET).
    await expect(make({ nodeAgent: { namespace: 'ambit-system', serviceAccount: 'ambit-node', daemonSet: 'ambit-node-7d9f' } }).authenticate(md('pod-a'))).rejects.toThrow(/not a pod of the DaemonSet ambit-system\/ambit-node-7d9f/);
  });

  it('refuses a token naming its pod without its uid', async () => {
    expect(await refusal(make().authenticate(md('pod-name-only')))).toMatch(/names neither its node .* nor its pod/);
  });

  it('refuses without caching when the pod cannot be read', async () => {
    const a = make();
    server.failNext('GET', '/pods/ambit-node-bbbbb', 500);
    expect(await refusal(a.authenticate(md('pod-b')))).toBe('token review failed: reading pod ambit-system/ambit-node-bbbbb: HTTP 500: GET /api/v1/namespaces/ambit-system/pods/ambit-node-bbbbb refused by the test');
    await expect(a.authenticate(md('pod-b'))).resolves.toEqual({ node: 'node-b' });
  });
});

/** A JWT-shaped token (unsigned: the stand-in API server vouches for it) expiring at `exp` (s). */
function jwt(exp: number): string {
  return ['eyJhbGciOiJSUzI1NiJ9', Buffer.from(JSON.stringify({ exp, sub: 'system:serviceaccount:ambit-system:ambit-node' })).toString('base64url'), 'c2ln'].join('.');
}
