/**
 * The discovery stream at 50,000 pods, in process over gRPC/TLS on loopback: the full snapshot
 * (~17 MB, four times gRPC's default 4 MiB receive limit) and a delta touching every pod reach
 * a node agent whole, in parts, applied and ACKed once per version.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiscoveryClient, DiscoveryServer, discoveryService, PART_BYTES, partsOf, type WireResource } from '../../src/discovery/discovery.js';
import { buildModel, type MeshModel, type PodInfo } from '../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../../src/identity/ca-server.js';
import type { Resource, ServiceResource } from '../../src/kube/manifests.js';

const PODS = 50_000;
const SERVICES = 1_000;
const dir = mkdtempSync(join(tmpdir(), 'ambit-disc-scale-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function model(revision: number): MeshModel {
  const pods: PodInfo[] = Array.from({ length: PODS }, (_, i) => ({
    uid: `pod-${i}`, namespace: 'scale', name: `pod-${i}`, node: `node-${i % 100}`,
    ip: `10.${Math.floor(i / 65536) + 100}.${Math.floor(i / 256) % 256}.${i % 256}`,
    labels: { app: `svc-${i % SERVICES}`, revision: String(revision) },
    spec: { serviceAccountName: `sa-${i % SERVICES}`, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
  }));
  const ns = { apiVersion: 'v1', kind: 'Namespace', meta: { name: 'scale', namespace: '', labels: { 'ambit.dev/dataplane-mode': 'ambient' }, annotations: {} }, source: { file: 'scale', doc: 1 }, raw: {} } as Resource;
  const services = Array.from({ length: SERVICES }, (_, i): ServiceResource => ({
    apiVersion: 'v1', kind: 'Service', meta: { name: `svc-${i}`, namespace: 'scale', labels: {}, annotations: {} }, source: { file: 'scale', doc: i + 2 }, raw: {},
    spec: { type: 'ClusterIP', clusterIP: `10.96.${Math.floor(i / 256)}.${i % 256}`, selector: { app: `svc-${i}` }, ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }] },
  }));
  return buildModel({ resources: [ns, ...services], pods }, 'cluster.local');
}

describe('the discovery stream at 50,000 pods', () => {
  let server: CaServer;
  let ca: CertificateAuthority;
  const discovery = new DiscoveryServer(new BootstrapTokenAuthenticator({ 'node-7': 'seven' }));

  beforeAll(async () => {
    ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
    server = await CaServer.start({
      ca, authenticator: new BootstrapTokenAuthenticator({ 'node-7': 'seven' }), directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0,
      services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
    });
  });

  afterAll(() => {
    server.forceClose();
  });

  it('delivers a full snapshot larger than 4 MiB, and a delta touching every pod, whole', async () => {
    const t0 = performance.now();
    discovery.update(model(0));
    const modelMs = performance.now() - t0;
    const applied: { version: string; size: number; workloads: number; bytes: number }[] = [];
    let last: ReadonlyMap<string, WireResource> = new Map();
    const client = new DiscoveryClient({
      address: `127.0.0.1:${server.port}`, roots: ca.trustBundle(), token: 'seven', node: 'node-7', kind: 'node-agent',
      apply: (resources, version) => {
        let workloads = 0;
        let bytes = 0;
        for (const [k, r] of resources) {
          if (k.startsWith('workload/')) workloads++;
          bytes += r.json.length;
        }
        applied.push({ version, size: resources.size, workloads, bytes });
        last = resources;
      },
    });
    try {
      const t1 = performance.now();
      await Promise.race([client.ready, new Promise((_, reject) => setTimeout(() => reject(new Error(`no snapshot: ${client.lastError?.details ?? 'no error'}`)), 20_000))]);
      const syncMs = performance.now() - t1;
      expect(applied).toHaveLength(1);
      expect(applied[0]!.workloads).toBe(PODS);
      // And the mesh config (meshconfig/mesh), one resource.
      expect(applied[0]!.size).toBe(PODS + SERVICES + 1);
      expect(applied[0]!.bytes).toBeGreaterThan(4 * 1024 * 1024);
      expect(JSON.parse(last.get('workload/pod-49999')!.json)).toMatchObject({ name: 'pod-49999', labels: { revision: '0' } });

      // Every pod relabelled: the delta is as large as the snapshot.
      discovery.update(model(1));
      await expect.poll(() => client.appliedVersion, { timeout: 20_000 }).toBe(discovery.version);
      expect(applied).toHaveLength(2);
      expect(applied[1]!.workloads).toBe(PODS);
      expect(JSON.parse(last.get('workload/pod-49999')!.json)).toMatchObject({ labels: { revision: '1' } });
      await expect.poll(() => discovery.status()[0]?.lastAck, { timeout: 5_000 }).toBe(discovery.version);
      console.log(`50,000 pods: model ${modelMs.toFixed(0)} ms, full sync ${syncMs.toFixed(0)} ms, snapshot ${(applied[0]!.bytes / 1e6).toFixed(1)} MB`);
    } finally {
      client.close();
    }
  }, 60_000);

  it('cuts a response into parts under the limit, in order, with one resource larger than a part alone in its own', () => {
    const r = (i: number, size: number): WireResource => ({ key: `workload/${i}`, type: 'workload', json: 'x'.repeat(size) });
    const big = { version: 'v', full: true, resources: [r(0, 400), r(1, 400), r(2, 1500), r(3, 10), r(4, 10)], removed: ['workload/9'] };
    const parts = partsOf(big, 1000);
    expect(parts.map((p) => [p.resources.map((x) => x.key), p.removed, p.more])).toEqual([
      [['workload/0', 'workload/1'], ['workload/9'], true],
      [['workload/2'], [], true],
      [['workload/3', 'workload/4'], [], false],
    ]);
    expect(parts.every((p) => p.version === 'v' && p.full)).toBe(true);
    expect(partsOf({ version: 'v', full: false, resources: [], removed: [] })).toEqual([{ version: 'v', full: false, resources: [], removed: [], more: false }]);
    expect(PART_BYTES).toBeLessThan(4 * 1024 * 1024);
  });
});
