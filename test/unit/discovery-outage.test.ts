/**
 * A controller that stays away long enough for every backoff to grow, then comes back: the
 * subscriber holds its last good config meanwhile and is back on the stream within its reconnect
 * probe interval of the controller's return — not after whatever its stream backoff or gRPC's
 * connection backoff (1 s growing to 120 s) had reached.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService } from '../../src/discovery/discovery.js';
import { buildModel } from '../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../../src/identity/ca-server.js';
import { until } from '../helpers/wait.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-outage-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const credentials = new BootstrapTokenAuthenticator({ 'node-1': 'one' });
// A restarted controller has a new boot id, so its first version differs from the one held.
const model = () => buildModel({ resources: [], pods: [] }, 'cluster.local');

it('is back on the stream within the probe interval of a long-away controller\'s return, its config held meanwhile', async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  let port = 0;
  const start = async () => {
    const discovery = new DiscoveryServer(credentials);
    discovery.update(model());
    const server = await CaServer.start({
      ca, authenticator: credentials, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port,
      services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    });
    port = server.port;
    return { discovery, server };
  };
  let controller = await start();
  const client = new DiscoveryClient({
    address: `127.0.0.1:${port}`, roots: ca.trustBundle(), token: 'one', node: 'node-1', kind: 'node-agent',
    // The stream's own backoff is long, as in production: only the probe brings it back early.
    backoff: { initialMs: 500, maxMs: 30_000 }, reconnectProbeMs: 300,
    apply: () => undefined,
  });
  try {
    await until('the first snapshot', () => client.appliedVersion === controller.discovery.version, { timeout: 10_000, interval: 20 });
    const held = client.appliedVersion;
    controller.server.forceClose();
    await until('the disconnect', () => !client.connected, { timeout: 10_000, interval: 10 });
    // Away long enough that the stream's backoff is several seconds and gRPC's connection backoff
    // (1 s × 1.6ⁿ) is past 4 s.
    await new Promise((r) => setTimeout(r, 9000));
    expect(client.appliedVersion).toBe(held);
    const back = Date.now();
    controller = await start();
    await until('the resync', () => client.appliedVersion === controller.discovery.version, { timeout: 20_000, interval: 10 });
    expect(Date.now() - back).toBeLessThan(2000);
  } finally {
    client.close();
    controller.server.forceClose();
  }
}, 40_000);
