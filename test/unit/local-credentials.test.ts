/**
 * The local cluster's credentials in the CA and the discovery stream: node agents' tokens, and
 * a waypoint's token that is good for that waypoint's identity only — picked up when it is
 * written after the controller started.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService } from '../../src/discovery/discovery.js';
import { LocalCredentials } from '../../src/local/controller-origins.js';
import { buildModel } from '../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CaClient, CaServer } from '../../src/identity/ca-server.js';
import { CertManager } from '../../src/identity/cert-manager.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-creds-'));
const WP = 'spiffe://cluster.local/ns/shop/sa/waypoint';
let ca: CertificateAuthority;
let server: CaServer;
let creds: LocalCredentials;

function token(path: string, value: string): void {
  mkdirSync(join(dir, path), { recursive: true });
  writeFileSync(join(dir, path, 'token'), `${value}\n`);
}
const bearer = (t: string) => {
  const md = new Metadata();
  md.set('authorization', `Bearer ${t}`);
  return md;
};

beforeAll(async () => {
  token('nodes/node-1', 'node-one');
  ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  creds = new LocalCredentials(dir, 'cluster.local');
  const discovery = new DiscoveryServer(creds);
  discovery.update(buildModel({ resources: [], pods: [] }, 'cluster.local'));
  server = await CaServer.start({
    ca, authenticator: creds, directory: { identitiesOnNode: () => new Set(['spiffe://cluster.local/ns/shop/sa/users']) }, host: '127.0.0.1', port: 0,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
  });
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('local credentials', () => {
  it('knows node tokens, and a waypoint token written later once it is used', async () => {
    expect(await creds.authenticate(bearer('node-one'))).toEqual({ node: 'node-1' });
    await expect(creds.authenticate(bearer('wp-secret'))).rejects.toThrow('unknown bootstrap token');
    token('waypoints/shop.waypoint', 'wp-secret');
    // Re-read on a miss at most once a second: accepted once that second is over.
    await vi.waitFor(async () => expect(await creds.authenticate(bearer('wp-secret'))).toEqual({ node: '', workload: { namespace: 'shop', name: 'waypoint', identity: WP } }), { timeout: 3000, interval: 100 });
    await expect(creds.authenticate(new Metadata())).rejects.toThrow('no credential');
  });

  it('lets a waypoint get its own identity and nothing else', async () => {
    const client = new CaClient({ address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: 'wp-secret' });
    const certs = new CertManager({ source: client });
    await certs.start();
    expect((await certs.acquire(WP)).identity).toBe(WP);
    await expect(certs.get('spiffe://cluster.local/ns/shop/sa/users')).rejects.toThrow('the credential of shop/waypoint is for spiffe://cluster.local/ns/shop/sa/waypoint only');
    certs.close();
    client.close();
  });

  it('lets a waypoint subscribe as itself only, never as a node agent or another waypoint', async () => {
    const subscribe = (kind: 'node-agent' | 'waypoint', name?: string) => new DiscoveryClient({
      address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: 'wp-secret', node: 'node-1', kind, ...(name ? { name } : {}),
      backoff: { initialMs: 1000, maxMs: 1000 }, apply: () => undefined,
    });
    const own = subscribe('waypoint', 'shop/waypoint');
    await own.ready;
    const other = subscribe('waypoint', 'shop/other');
    const node = subscribe('node-agent');
    // Each is refused by its error, and never applies a version.
    await vi.waitFor(() => expect(other.lastError?.code).toBe(grpc.status.PERMISSION_DENIED));
    await vi.waitFor(() => expect(node.lastError?.code).toBe(grpc.status.PERMISSION_DENIED));
    expect(other.appliedVersion).toBe('');
    expect(node.appliedVersion).toBe('');
    for (const c of [own, other, node]) c.close();
  });
});
