/**
 * The waypoint's probes on its metrics port (15020), against an in-process controller (CA and
 * discovery): ready only once it has both its first config and its certificate, each missing one
 * named in the 503; live throughout.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DiscoveryServer, discoveryService } from '../../src/discovery/discovery.js';
import { buildModel } from '../../src/config/model.js';
import { CaError, CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CaServer, type Authenticator, type Caller } from '../../src/identity/ca-server.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { Waypoint } from '../../src/waypoint/app.js';
import { freePort } from '../helpers/fake-apiserver.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-wp-health-'));
const WP = 'spiffe://cluster.local/ns/shop/sa/wp';
/** The waypoint's credential, good for another identity until `allowCert` (so its certificate is refused). */
let allowCert = false;
const authenticator: Authenticator = {
  authenticate(metadata: Metadata): Promise<Caller> {
    if (metadata.get('authorization')[0] !== 'Bearer wp-token') return Promise.reject(new CaError('UNAUTHENTICATED', 'unknown token'));
    return Promise.resolve({ node: '', workload: { namespace: 'shop', name: 'wp', identity: allowCert ? WP : 'spiffe://cluster.local/ns/shop/sa/not-wp' } });
  },
};
let server: CaServer;
let discovery: DiscoveryServer;
let waypoint: Waypoint;
let metricsPort = 0;

beforeAll(async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  // No model yet: the waypoint gets no config until the test gives one.
  discovery = new DiscoveryServer(authenticator);
  server = await CaServer.start({
    ca, authenticator, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
  });
  metricsPort = await freePort();
  waypoint = await Waypoint.start({
    namespace: 'shop', name: 'wp', trustDomain: 'cluster.local',
    controller: { address: `127.0.0.1:${server.port}`, token: 'wp-token', roots: ca.trustBundle() },
    listen: { host: '127.0.0.1', port: 0 }, metricsPort, log: silentLogger, accessLog: silentLogger,
  });
});

afterAll(async () => {
  await waypoint?.close();
  server?.forceClose();
  rmSync(dir, { recursive: true, force: true });
});

const get = async (path: string) => {
  const res = await fetch(`http://127.0.0.1:${metricsPort}${path}`);
  return { status: res.status, body: await res.text() };
};

describe('the waypoint\'s probes', () => {
  it('is not ready without config and certificate, and says why (the CA\'s refusal included)', async () => {
    await vi.waitFor(async () => expect(await get('/healthz/ready')).toEqual({
      status: 503,
      body: `not ready: no config from the controller yet; no certificate for ${WP} yet (CreateCertificate: the credential of shop/wp is for spiffe://cluster.local/ns/shop/sa/not-wp only, not ${WP})\n`,
    }), { timeout: 10_000, interval: 50 });
    expect(await get('/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
  });

  it('is still not ready with its certificate but no config', async () => {
    allowCert = true;
    await vi.waitFor(async () => expect(await get('/healthz/ready')).toEqual({ status: 503, body: 'not ready: no config from the controller yet\n' }), { timeout: 15_000, interval: 50 });
    expect((await get('/healthz/live')).status).toBe(200);
  });

  it('is ready once its first config is applied, and serves metrics on the same port', async () => {
    discovery.update(buildModel({ resources: [], pods: [] }, 'cluster.local'));
    await vi.waitFor(async () => expect(await get('/healthz/ready')).toEqual({ status: 200, body: 'ready\n' }), { timeout: 10_000, interval: 50 });
    expect((await get('/healthz/live')).status).toBe(200);
    expect((await get('/metrics')).status).toBe(200);
    expect(await get('/healthz')).toEqual({ status: 404, body: 'not found: try /metrics, /healthz/ready or /healthz/live\n' });
  });

  it('stays ready and live on its last config when the controller goes away', async () => {
    // Streams open: a graceful shutdown would wait for them.
    server.forceClose();
    expect(await get('/healthz/ready')).toEqual({ status: 200, body: 'ready\n' });
    expect(await get('/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
  });
});
