/**
 * Which ServiceAccounts are waypoint credentials: with the Kubernetes source against the stand-in
 * API server, the account of an ambit-waypoint Gateway is one only when it was made for that
 * Gateway (labelled gateway.networking.k8s.io/gateway-name), so creating a Gateway named after an
 * application's account does not turn that application's tokens into a waypoint's.
 */
import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { KubernetesSource } from '../../src/control/kube-source.js';
import { CaError } from '../../src/identity/ca.js';
import { TokenReviewAuthenticator } from '../../src/identity/tokenreview.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const GW = 'gateway.networking.k8s.io';
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
  { group: GW, version: 'v1', kind: 'Gateway', plural: 'gateways' },
]);
let source: KubernetesSource;
let snapshots = 0;

const gateway = (name: string) => ({ metadata: { name, namespace: 'shop' }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } });
const md = (token: string) => {
  const m = new Metadata();
  m.set('authorization', `Bearer ${token}`);
  return m;
};

beforeAll(async () => {
  await api.start();
  api.apply('Namespace', { metadata: { name: 'shop' } });
  // The waypoint's own account, as the controller makes it; and an application's account that a Gateway is named after.
  api.apply('ServiceAccount', { metadata: { name: 'reviews-wp', namespace: 'shop', labels: { 'app.kubernetes.io/managed-by': 'ambit-controller', 'gateway.networking.k8s.io/gateway-name': 'reviews-wp' } } });
  api.apply('ServiceAccount', { metadata: { name: 'cart', namespace: 'shop', labels: { app: 'cart' } } });
  api.apply('Gateway', gateway('reviews-wp'), GW);
  api.apply('Gateway', gateway('cart'), GW);
  api.tokens.set('wp-token', { authenticated: true, user: { username: 'system:serviceaccount:shop:reviews-wp' } });
  api.tokens.set('cart-token', { authenticated: true, user: { username: 'system:serviceaccount:shop:cart' } });
  source = new KubernetesSource(new KubeClient({ server: api.url }), { debounceMs: 10, backoffMs: 20, resyncMs: 0 });
  source.start(() => { snapshots++; });
  await vi.waitFor(() => expect(snapshots, 'a snapshot from the Kubernetes source').toBeGreaterThan(0), { timeout: 5_000, interval: 10 });
});

afterAll(async () => {
  source.stop();
  await api.close();
});

describe('waypoint credentials', () => {
  it('accepts the account made for a waypoint, refuses an application\'s account a Gateway is named after', async () => {
    const auth = new TokenReviewAuthenticator({ client: new KubeClient({ server: api.url }), trustDomain: 'cluster.local', isWaypoint: (ns, name) => source.isWaypoint(ns, name) });
    await expect(auth.authenticate(md('wp-token'))).resolves.toMatchObject({ node: '', workload: { namespace: 'shop', name: 'reviews-wp' } });
    const err = await auth.authenticate(md('cart-token')).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(CaError);
    expect((err as CaError).code).toBe('UNAUTHENTICATED');
    expect((err as CaError).message).toBe('system:serviceaccount:shop:cart is neither the node agent (ambit-system/ambit-node) nor a waypoint (the account of a Gateway of class ambit-waypoint, made for it)');
    expect(source.isWaypoint('shop', 'cart')).toBe(false);
    expect(source.isWaypoint('shop', 'reviews-wp')).toBe(true);
    expect(source.isWaypoint('shop', 'nope')).toBe(false);
  });
});
