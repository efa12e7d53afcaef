import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/control/kube/client.js';
import { CaError } from '../../src/identity/ca.js';
import { NODE_NAME_EXTRA, TokenReviewAuthenticator, type TokenReviewOptions } from '../../src/identity/tokenreview.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const server = new FakeApiServer([]);
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
    expect(await refusal(a.authenticate(md('agent-unbound')))).toMatch(/bound to a pod on a node/);
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
});
