/**
 * The controller's Prometheus metrics on its monitoring port: a controller run in-process against
 * a stand-in API server, scraped after a node agent connected (and another NACKed and left),
 * certificates were issued and refused, and tokens reviewed. Every metric is checked by name,
 * type and labels; istiod's names are kept where the meaning is the same.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { configCounts, runController, type Controller } from '../../src/control/controller.js';
import { DiscoveryClient } from '../../src/discovery/discovery.js';
import { CaClient } from '../../src/identity/ca-server.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { splitPemBundle } from '../../src/identity/pki.js';
import { NODE_NAME_EXTRA } from '../../src/identity/tokenreview.js';
import type { Resource } from '../../src/kube/manifests.js';
import { FakeApiServer, ONE_REPLICA, writeKubeconfig } from '../helpers/fake-apiserver.js';


const dir = mkdtempSync(join(tmpdir(), 'ambit-ctl-metrics-'));
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
  { group: 'networking.istio.io', version: 'v1', kind: 'VirtualService', plural: 'virtualservices' },
]);
let controller: Controller;
const closers: (() => void)[] = [];

const pod = (name: string, node: string, ip: string) => ({
  metadata: { name, namespace: 'shop', labels: { app: name } },
  spec: { nodeName: node, serviceAccountName: name, containers: [{ name: 'c', image: 'app', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip },
});

/** One sample of the exposition text: metric name, labels, value. */
interface Sample { name: string; labels: Record<string, string>; value: number }
interface Scrape { types: Map<string, string>; samples: Sample[]; contentType: string }

async function scrape(): Promise<Scrape> {
  const res = await fetch(`http://127.0.0.1:${controller.monitoringPort}/metrics`);
  expect(res.status).toBe(200);
  const text = await res.text();
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) types.set(t[1]!, t[2]!);
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { types, samples, contentType: res.headers.get('content-type') ?? '' };
}

const series = (s: Scrape, name: string) => s.samples.filter((x) => x.name === name);
const value = (s: Scrape, name: string, labels: Record<string, string> = {}) => {
  const found = series(s, name).filter((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  if (found.length !== 1) throw new Error(`${name}${JSON.stringify(labels)}: ${found.length} series, want 1: ${JSON.stringify(series(s, name))}`);
  return found[0]!.value;
};
/** The label names of every series of `name` (histogram buckets without `le`). */
const labelNames = (s: Scrape, name: string) => [...new Set(series(s, name).flatMap((x) => Object.keys(x.labels).filter((k) => k !== 'le')))].sort();

beforeAll(async () => {
  await api.start();
  api.tokens.set('agent-a', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-a'] } } });
  api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  api.apply('Service', { metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: '10.96.0.20', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  api.apply('Pod', pod('web', 'node-a', '10.244.1.5'));
  api.apply('Pod', pod('db', 'node-b', '10.244.2.5'));
  api.apply('VirtualService', { metadata: { name: 'web', namespace: 'shop' }, spec: { hosts: ['web'], http: [{ route: [{ destination: { host: 'web' } }] }] } });
  api.apply('VirtualService', { metadata: { name: 'broken', namespace: 'shop' }, spec: { hosts: ['broken'], tcp: 'nope' } });
  controller = await runController({
    kubernetes: { settings: ONE_REPLICA, kubeconfig: writeKubeconfig(join(dir, 'kubeconfig'), api.url) }, caDir: join(dir, 'ca'), host: '127.0.0.1', port: 0, trustDomain: 'cluster.local',
    health: { host: '127.0.0.1', port: 0 }, monitoring: { host: '127.0.0.1', port: 0 },
  });
  await vi.waitFor(async () => expect((await fetch(`http://127.0.0.1:${controller.healthPort}/healthz/ready`)).status).toBe(200), { timeout: 15_000, interval: 100 });
}, 30_000);

afterAll(async () => {
  for (const c of closers) c();
  await controller?.close();
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('controller metrics on the monitoring port', () => {
  it('reports streams, pushes, NACKs, certificates, token reviews, leadership, the model and the process', async () => {
    const roots = splitPemBundle(readFileSync(join(dir, 'ca', 'ca-cert.pem'), 'utf8')).slice(-1);
    const address = `127.0.0.1:${controller.server.port}`;
    // A node agent that stays, and one that NACKs what it gets and leaves.
    let applied = 0;
    const agent = new DiscoveryClient({ address, roots, token: 'agent-a', node: 'node-a', kind: 'node-agent', apply: () => { applied++; } });
    closers.push(() => agent.close());
    let nacked = 0;
    const picky = new DiscoveryClient({ address, roots, token: 'agent-a', node: 'node-a', kind: 'node-agent', apply: () => { nacked++; throw new Error('cannot use this'); } });
    await expect.poll(() => applied > 0 && nacked > 0, { timeout: 10_000 }).toBe(true);
    await expect.poll(async () => value(await scrape(), 'pilot_total_xds_rejects', { type: 'node-agent' }), { timeout: 10_000 }).toBe(1);
    expect(value(await scrape(), 'pilot_xds', { kind: 'node-agent' })).toBe(2);
    picky.close();
    await expect.poll(async () => value(await scrape(), 'pilot_xds', { kind: 'node-agent' }), { timeout: 10_000 }).toBe(1);
    // Certificates: one issued, one refused for its node, one refused for its credential.
    const certs = new CertManager({ source: new CaClient({ address, roots, token: 'agent-a' }), backoff: { initialMs: 60_000, maxMs: 60_000 } });
    closers.push(() => certs.close());
    await certs.acquire('spiffe://cluster.local/ns/shop/sa/web');
    await expect(certs.acquire('spiffe://cluster.local/ns/shop/sa/db')).rejects.toThrow(/node node-a runs no pod/);
    const stranger = new CaClient({ address, roots, token: 'nobody' });
    closers.push(() => stranger.close());
    await expect(stranger.createCertificate('csr', 'spiffe://cluster.local/ns/shop/sa/web', 3600)).rejects.toThrow(/invalid bearer token/);

    const s = await scrape();
    expect(s.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const expected: Record<string, { type: string; labels: string[] }> = {
      pilot_xds: { type: 'gauge', labels: ['kind'] },
      pilot_xds_pushes: { type: 'counter', labels: ['type'] },
      pilot_xds_push_time: { type: 'histogram', labels: ['type'] },
      pilot_xds_config_size_bytes: { type: 'histogram', labels: ['type'] },
      ambit_xds_pushed_bytes_total: { type: 'counter', labels: ['type'] },
      pilot_total_xds_rejects: { type: 'counter', labels: ['type'] },
      pilot_services: { type: 'gauge', labels: [] },
      ambit_controller_workloads: { type: 'gauge', labels: [] },
      ambit_controller_config_objects: { type: 'gauge', labels: ['kind', 'state'] },
      citadel_server_csr_count: { type: 'counter', labels: [] },
      citadel_server_success_cert_issuance_count: { type: 'counter', labels: [] },
      citadel_server_authentication_failure_count: { type: 'counter', labels: [] },
      citadel_server_root_cert_expiry_timestamp: { type: 'gauge', labels: [] },
      ambit_controller_certificates_refused_total: { type: 'counter', labels: ['reason'] },
      ambit_controller_token_reviews_total: { type: 'counter', labels: ['outcome'] },
      ambit_controller_leader: { type: 'gauge', labels: [] },
      process_cpu_seconds_total: { type: 'counter', labels: [] },
      process_resident_memory_bytes: { type: 'gauge', labels: [] },
      process_start_time_seconds: { type: 'gauge', labels: [] },
      nodejs_heap_size_used_bytes: { type: 'gauge', labels: [] },
      nodejs_eventloop_lag_seconds: { type: 'gauge', labels: [] },
    };
    for (const [name, want] of Object.entries(expected)) {
      expect({ name, type: s.types.get(name) }).toEqual({ name, type: want.type });
      const sampleName = want.type === 'histogram' ? `${name}_bucket` : name;
      expect({ name, labels: labelNames(s, sampleName) }).toEqual({ name, labels: want.labels });
    }

    // Discovery: the open stream by kind, pushes with their size and time, the NACK.
    expect(value(s, 'pilot_xds', { kind: 'waypoint' })).toBe(0);
    expect(value(s, 'pilot_xds', { kind: 'gateway' })).toBe(0);
    const pushes = value(s, 'pilot_xds_pushes', { type: 'node-agent' });
    expect(pushes).toBeGreaterThanOrEqual(2);
    expect(value(s, 'pilot_xds_pushes', { type: 'waypoint' })).toBe(0);
    expect(value(s, 'pilot_xds_config_size_bytes_count', { type: 'node-agent' })).toBe(pushes);
    expect(value(s, 'pilot_xds_config_size_bytes_sum', { type: 'node-agent' })).toBeGreaterThan(500);
    expect(value(s, 'pilot_xds_config_size_bytes_bucket', { type: 'node-agent', le: '1' })).toBe(0);
    // On the wire: every message written, a little more than the config here (framing; nothing this small is compressed).
    expect(value(s, 'ambit_xds_pushed_bytes_total', { type: 'node-agent' })).toBeGreaterThan(value(s, 'pilot_xds_config_size_bytes_sum', { type: 'node-agent' }) * 0.5);
    expect(value(s, 'pilot_xds_push_time_count', { type: 'node-agent' })).toBe(pushes);
    expect(value(s, 'pilot_xds_push_time_bucket', { type: 'node-agent', le: '30' })).toBe(pushes);
    expect(value(s, 'pilot_total_xds_rejects', { type: 'waypoint' })).toBe(0);
    // The model and the objects behind it.
    expect(value(s, 'pilot_services')).toBe(1);
    expect(value(s, 'ambit_controller_workloads')).toBe(2);
    expect(value(s, 'ambit_controller_config_objects', { kind: 'VirtualService', state: 'accepted' })).toBe(1);
    expect(value(s, 'ambit_controller_config_objects', { kind: 'VirtualService', state: 'rejected' })).toBe(1);
    expect(value(s, 'ambit_controller_config_objects', { kind: 'Service', state: 'accepted' })).toBe(1);
    expect(value(s, 'ambit_controller_config_objects', { kind: 'Namespace', state: 'accepted' })).toBe(1);
    expect(series(s, 'ambit_controller_config_objects').some((x) => x.labels.kind === 'Pod')).toBe(false);
    // The CA: three requests, one issued, one refused for the node, one for the credential.
    expect(value(s, 'citadel_server_csr_count')).toBe(3);
    expect(value(s, 'citadel_server_success_cert_issuance_count')).toBe(1);
    expect(value(s, 'citadel_server_authentication_failure_count')).toBe(1);
    expect(value(s, 'ambit_controller_certificates_refused_total', { reason: 'permission_denied' })).toBe(1);
    expect(value(s, 'ambit_controller_certificates_refused_total', { reason: 'unauthenticated' })).toBe(1);
    expect(value(s, 'ambit_controller_certificates_refused_total', { reason: 'invalid_argument' })).toBe(0);
    expect(value(s, 'citadel_server_root_cert_expiry_timestamp')).toBeGreaterThan(Date.now() / 1000 + 365 * 24 * 3600);
    // TokenReview: agent-a reviewed once and cached, "nobody" refused once.
    expect(value(s, 'ambit_controller_token_reviews_total', { outcome: 'accepted' })).toBe(1);
    expect(value(s, 'ambit_controller_token_reviews_total', { outcome: 'refused' })).toBe(1);
    for (const outcome of ['rate_limited', 'timeout', 'error']) expect(value(s, 'ambit_controller_token_reviews_total', { outcome })).toBe(0);
    // The only replica (no leader election) leads.
    expect(value(s, 'ambit_controller_leader')).toBe(1);
    expect(value(s, 'process_resident_memory_bytes')).toBeGreaterThan(0);
  }, 30_000);

  it('follows the model: a service added and a rejected object fixed show in the next scrape', async () => {
    api.apply('Service', { metadata: { name: 'db', namespace: 'shop' }, spec: { clusterIP: '10.96.0.21', selector: { app: 'db' }, ports: [{ name: 'tcp', port: 5432, targetPort: 5432 }] } });
    api.apply('VirtualService', { metadata: { name: 'broken', namespace: 'shop' }, spec: { hosts: ['broken'], http: [{ route: [{ destination: { host: 'web' } }] }] } });
    await expect.poll(async () => value(await scrape(), 'pilot_services'), { timeout: 10_000 }).toBe(2);
    await expect.poll(async () => value(await scrape(), 'ambit_controller_config_objects', { kind: 'VirtualService', state: 'rejected' }), { timeout: 10_000 }).toBe(0);
    expect(value(await scrape(), 'ambit_controller_config_objects', { kind: 'VirtualService', state: 'accepted' })).toBe(2);
  });

  it('answers only GET /metrics on the monitoring port', async () => {
    const base = `http://127.0.0.1:${controller.monitoringPort}`;
    expect((await fetch(`${base}/debug`)).status).toBe(404);
    expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).toBe(405);
  });
});

describe('configCounts', () => {
  it('counts accepted objects by kind without pods, and each rejected object once however many errors it has', () => {
    const r = (kind: string, name: string) => ({ apiVersion: 'v1', kind, meta: { name, namespace: 'shop', labels: {}, annotations: {} }, source: { file: 'f', doc: 1 }, raw: {} }) as unknown as Resource;
    const err = (kind: string | undefined, name: string | undefined, doc = 1) => ({ severity: 'error' as const, source: { file: 'a.yaml', doc }, ...(kind ? { kind } : {}), ...(name ? { name, namespace: 'shop' } : {}), message: 'bad' });
    expect(configCounts([r('Service', 'a'), r('Service', 'b'), r('Pod', 'p'), r('VirtualService', 'v')], [
      err('VirtualService', 'x'), err('VirtualService', 'x'), err('AuthorizationPolicy', 'y'), err(undefined, undefined, 3),
      { severity: 'warning', source: { file: 'a.yaml', doc: 4 }, kind: 'Service', name: 'w', message: 'odd' },
    ])).toEqual([
      { kind: 'AuthorizationPolicy', accepted: 0, rejected: 1 },
      { kind: 'Service', accepted: 2, rejected: 0 },
      { kind: 'unknown', accepted: 0, rejected: 1 },
      { kind: 'VirtualService', accepted: 1, rejected: 1 },
    ]);
  });
});
