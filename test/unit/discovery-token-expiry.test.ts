/**
 * A discovery stream lives no longer than its credential: with TokenReview against the stand-in
 * API server and a short-lived projected token, the controller checks the stream again when the
 * token expires, closes it with UNAUTHENTICATED, and the subscriber comes back with the token the
 * kubelet rotated in (re-read at each connect); a subscriber that only has the expired token
 * stays out.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService } from '../../src/discovery/discovery.js';
import { KubeClient } from '../../src/kube/client.js';
import { buildModel } from '../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CaServer } from '../../src/identity/ca-server.js';
import { NODE_NAME_EXTRA, TokenReviewAuthenticator } from '../../src/identity/tokenreview.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-exp-'));
const api = new FakeApiServer([]);
const AGENT = { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-1'] } } };
let ca: CertificateAuthority;
let server: CaServer;
let discovery: DiscoveryServer;

beforeAll(async () => {
  await api.start();
  ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  const authenticator = new TokenReviewAuthenticator({ client: new KubeClient({ server: api.url }), trustDomain: 'cluster.local', isWaypoint: () => false });
  discovery = new DiscoveryServer(authenticator);
  discovery.update(buildModel({ resources: [], pods: [] }, 'cluster.local'));
  server = await CaServer.start({
    ca, authenticator, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
  });
});

afterAll(async () => {
  server.forceClose();
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('a discovery stream and its token', () => {
  it('is closed with UNAUTHENTICATED when its token expires, and comes back with the rotated token', async () => {
    // The projected token's file: read at each connect.
    let current = api.issueToken(AGENT, 1_500);
    const client = new DiscoveryClient({
      address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: () => current, node: 'node-1', kind: 'node-agent',
      backoff: { initialMs: 50, maxMs: 200 }, apply: () => undefined,
    });
    try {
      await client.ready;
      expect(discovery.status()).toHaveLength(1);
      const expired = current;
      current = api.issueToken(AGENT, 60_000);
      await expect.poll(() => client.lastError, { timeout: 10_000 }).toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      expect(client.lastError!.details).toMatch(/^credential (expired at .*|no longer valid \(token refused by the API server: .*service account token has expired\]\)): reconnect with a fresh token$/);
      await expect.poll(() => client.connected && client.reconnects > 0, { timeout: 10_000 }).toBe(true);
      expect(discovery.status().map((s) => s.node)).toEqual(['node-1']);

      // Whoever holds only the expired token is refused.
      const stale = new DiscoveryClient({
        address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: expired, node: 'node-1', kind: 'node-agent',
        backoff: { initialMs: 5_000, maxMs: 5_000 }, apply: () => undefined,
      });
      try {
        await expect.poll(() => stale.lastError, { timeout: 10_000 }).toEqual({ code: grpc.status.UNAUTHENTICATED, details: 'token refused by the API server: [invalid bearer token, service account token has expired]' });
        expect(stale.appliedVersion).toBe('');
      } finally {
        stale.close();
      }
    } finally {
      client.close();
    }
  }, 30_000);
});
