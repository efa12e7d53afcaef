/**
 * `ambit controller --kubernetes` as a process against a stand-in API server: config from the
 * list/watch protocol, node agents authenticated by TokenReview; a node agent's token gets the
 * discovery stream (a pod added by a watch event shows up) and certificates for its own node's
 * pods only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { DiscoveryClient, type WireResource } from '../../src/discovery/discovery.js';
import { CaClient } from '../../src/identity/ca-server.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { splitPemBundle } from '../../src/identity/pki.js';
import { NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA } from '../../src/identity/tokenreview.js';
import { FakeApiServer, freePort, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-ctl-k8s-'));
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'Service', plural: 'services' },
]);
let controller: ChildProcess | undefined;
let output = '';
let port = 0;
const closers: (() => void)[] = [];

const pod = (name: string, node: string, ip: string) => ({
  metadata: { name, namespace: 'shop', labels: { app: name } },
  spec: { nodeName: node, serviceAccountName: name, containers: [{ name: 'c', image: 'app', ports: [{ name: 'http', containerPort: 8080 }] }] },
  status: { phase: 'Running', podIP: ip },
});


/** `until`, with what the controller said when it times out. */
const untilController = <T>(what: string, f: () => T | undefined, timeout = 15_000): Promise<T> =>
  until(what, f, { timeout, interval: 100 }).catch((err: Error) => { throw new Error(`${err.message}; controller said:\n${output}`); });

beforeAll(async () => {
  await api.start();
  api.tokens.set('agent-a', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: ['node-a'] } } });
  api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  api.apply('Service', { metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: '10.96.0.20', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  api.apply('Pod', pod('web', 'node-a', '10.244.1.5'));
  api.apply('Pod', pod('db', 'node-b', '10.244.2.5'));
  // The node agent of node-b on Kubernetes 1.27–1.29: its token names its pod, not its node.
  api.apply('Pod', {
    metadata: { name: 'ambit-node-x7k2p', namespace: 'ambit-system', uid: 'agent-b-uid', ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'ambit-node', uid: 'ds', controller: true }] },
    spec: { nodeName: 'node-b', serviceAccountName: 'ambit-node', containers: [{ name: 'agent', image: 'ambit' }] },
    status: { phase: 'Running' },
  });
  api.tokens.set('agent-b-129', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [POD_NAME_EXTRA]: ['ambit-node-x7k2p'], [POD_UID_EXTRA]: ['agent-b-uid'] } } });
  const kubeconfig = join(dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, api.url, 'controller-token');
  port = await freePort();
  controller = spawn(process.execPath, [BIN, 'controller', '--kubernetes', kubeconfig, '--ca-dir', join(dir, 'ca'), '--listen', `127.0.0.1:${port}`, '--health', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  controller.stdout!.on('data', (c: Buffer) => { output += c.toString(); });
  controller.stderr!.on('data', (c: Buffer) => { output += c.toString(); });
  await untilController('the controller serving', () => (/"msg":"model updated"/.test(output) ? true : undefined), 30_000);
}, 60_000);

afterAll(async () => {
  for (const c of closers) c();
  controller?.kill('SIGTERM');
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describeAsRoot('ambit controller --kubernetes', () => {
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => new Promise<{ code: number | null; err: string }>((resolve) => {
    const p = spawn(process.execPath, [BIN, 'controller', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    p.stderr!.on('data', (c: Buffer) => { err += c.toString(); });
    p.on('close', (code) => resolve({ code, err }));
  });

  it('rejects starting without a CA or with both sources', async () => {
    expect(await run(['--kubernetes'])).toMatchObject({ code: 1, err: expect.stringMatching(/--plugin-ca DIR .* or --ca-dir DIR/) });
    expect(await run(['--kubernetes', '--local-state', dir, '--ca-dir', dir])).toMatchObject({ code: 1, err: expect.stringMatching(/one of --local-state DIR .* or --kubernetes/) });
  });

  it('names an operator\'s mistake and how to fix it, never as an unexpected error', async () => {
    const cases: [string[], NodeJS.ProcessEnv, RegExp][] = [
      [['--kubernetes', join(dir, 'no-such-kubeconfig'), '--ca-dir', join(dir, 'ca-x')], {}, /cannot read the kubeconfig .*no-such-kubeconfig[\s\S]*fix: /],
      [['--kubernetes', join(dir, 'kubeconfig'), '--plugin-ca', join(dir, 'no-such-cacerts')], {}, /plug-in CA: .*no-such-cacerts.*root-cert\.pem is missing[\s\S]*fix: /],
      [['--kubernetes', join(dir, 'kubeconfig'), '--ca-dir', join(dir, 'ca-y')], { AMBIT_WAYPOINT_VALUES: 'waypoint.replicas=many' }, /AMBIT_WAYPOINT_VALUES: .*replicas[\s\S]*fix: /],
      [['--kubernetes', join(dir, 'kubeconfig'), '--ca-dir', join(dir, 'ca-z')], { AMBIT_WAYPOINTS_MANAGED: 'yes' }, /AMBIT_WAYPOINTS_MANAGED must be true or false, got "yes"/],
    ];
    for (const [args, env, message] of cases) {
      const r = await run(['--listen', '127.0.0.1:0', ...args], env);
      expect(r.err).not.toMatch(/unexpected error/);
      expect(r).toMatchObject({ code: 1, err: expect.stringMatching(message) });
    }
  });

  it('serves a TokenReview-authenticated node agent the mesh from the API server, watch events included', async () => {
    const roots = splitPemBundle(readFileSync(join(dir, 'ca', 'ca-cert.pem'), 'utf8')).slice(-1);
    let latest = new Map<string, WireResource>();
    const client = new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots, token: 'agent-a', node: 'node-a', kind: 'node-agent', backoff: { initialMs: 100, maxMs: 500 },
      apply: (resources) => { latest = new Map(resources); },
    });
    closers.push(() => client.close());
    const names = () => [...latest.values()].filter((r) => r.type === 'workload').map((r) => (JSON.parse(r.json) as { name: string }).name).sort();
    expect(await untilController('the workloads', () => (names().length >= 2 ? names() : undefined))).toEqual(['db', 'web']);
    api.apply('Pod', pod('cart', 'node-a', '10.244.1.6'));
    expect(await untilController('the new pod', () => (names().includes('cart') ? names() : undefined))).toEqual(['cart', 'db', 'web']);
    expect(api.tokenReviews.length).toBeGreaterThanOrEqual(1);
  });

  it('signs certificates for pods on the node agent\'s own node only', async () => {
    const roots = splitPemBundle(readFileSync(join(dir, 'ca', 'ca-cert.pem'), 'utf8')).slice(-1);
    const certs = new CertManager({ source: new CaClient({ address: `127.0.0.1:${port}`, roots, token: 'agent-a' }) });
    closers.push(() => certs.close());
    const mine = await certs.acquire('spiffe://cluster.local/ns/shop/sa/web');
    expect(mine.identity).toBe('spiffe://cluster.local/ns/shop/sa/web');
    await expect(certs.acquire('spiffe://cluster.local/ns/shop/sa/db')).rejects.toThrow(/node-a/);
  });

  it('binds a node agent token without node-name (Kubernetes 1.27–1.29) to the node of its pod', async () => {
    const roots = splitPemBundle(readFileSync(join(dir, 'ca', 'ca-cert.pem'), 'utf8')).slice(-1);
    const certs = new CertManager({ source: new CaClient({ address: `127.0.0.1:${port}`, roots, token: 'agent-b-129' }) });
    closers.push(() => certs.close());
    expect((await certs.acquire('spiffe://cluster.local/ns/shop/sa/db')).identity).toBe('spiffe://cluster.local/ns/shop/sa/db');
    await expect(certs.acquire('spiffe://cluster.local/ns/shop/sa/web')).rejects.toThrow('CreateCertificate: node node-b runs no pod with identity spiffe://cluster.local/ns/shop/sa/web');
  });
});
