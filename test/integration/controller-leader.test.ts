/**
 * Two `ambit controller --kubernetes` replicas against one stand-in API server, as the install's
 * Deployment runs them (AMBIT_LEADER_ELECTION=lease): one holds the Lease and alone writes
 * (status conditions, the trust-bundle ConfigMaps); both serve and report ready on their health
 * port; when the leader stops, the other takes over within a retry period.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FakeApiServer, freePort, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-ctl-leader-'));
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
  { group: '', version: 'v1', kind: 'ConfigMap', plural: 'configmaps' },
  { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases' },
  { group: 'security.istio.io', version: 'v1', kind: 'AuthorizationPolicy', plural: 'authorizationpolicies' },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
]);

interface Replica { name: string; proc: ChildProcess; output: string; health: number; exited: boolean }
const replicas: Replica[] = [];


/** `until`, with what the replicas said when it times out. */
const untilReplicas = <T>(what: string, f: () => T | undefined | false, timeout = 15_000): Promise<T> =>
  until(what, f, { timeout, interval: 100 }).catch((err: Error) => { throw new Error(`${err.message}; replicas said:\n${replicas.map((r) => `--- ${r.name}\n${r.output}`).join('\n')}`); });

async function start(name: string, kubeconfig: string): Promise<Replica> {
  const [port, health] = [await freePort(), await freePort()];
  const proc = spawn(process.execPath, [BIN, 'controller', '--kubernetes', kubeconfig, '--ca-dir', join(dir, 'ca'), '--listen', `127.0.0.1:${port}`, '--health', `127.0.0.1:${health}`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, AMBIT_LEADER_ELECTION: 'lease', AMBIT_LEADER_ELECTION_LEASE: 'ambit-controller', POD_NAMESPACE: 'ambit-system', POD_NAME: name,
      AMBIT_ROOT_CERT_CONFIGMAP: 'ambit-root-cert', AMBIT_WAYPOINTS_MANAGED: 'false',
    },
  });
  const r: Replica = { name, proc, output: '', health, exited: false };
  proc.stdout!.on('data', (c: Buffer) => { r.output += c.toString(); });
  proc.stderr!.on('data', (c: Buffer) => { r.output += c.toString(); });
  proc.on('exit', () => { r.exited = true; });
  replicas.push(r);
  return r;
}

const holder = () => (api.get('Lease', 'ambit-system', 'ambit-controller', 'coordination.k8s.io') as { spec?: { holderIdentity?: string } } | undefined)?.spec?.holderIdentity;
const rootCert = (ns: string) => (api.get('ConfigMap', ns, 'ambit-root-cert') as { data?: Record<string, string> } | undefined)?.data?.['root-cert.pem'];
const ready = async (r: Replica) => (await fetch(`http://127.0.0.1:${r.health}/healthz/ready`)).status;

beforeAll(async () => {
  await api.start();
  api.apply('Namespace', { metadata: { name: 'ambit-system' } });
  api.apply('Namespace', { metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
  const kubeconfig = join(dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, api.url, 'controller-token');
  // The first replica makes the CA root in the shared directory; the second reads it.
  await start('ctl-a', kubeconfig);
  await untilReplicas('ctl-a leading', () => holder() === 'ctl-a');
  await start('ctl-b', kubeconfig);
  await untilReplicas('ctl-b serving', () => /"msg":"model updated"/.test(replicas[1]!.output));
}, 60_000);

afterAll(async () => {
  for (const r of replicas) r.proc.kill('SIGKILL');
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describeAsRoot('controller replicas with leader election', () => {
  it('both replicas report ready on their health port; only one holds the Lease', async () => {
    expect(await ready(replicas[0]!)).toBe(200);
    expect(await ready(replicas[1]!)).toBe(200);
    expect(holder()).toBe('ctl-a');
    expect(replicas[1]!.output).not.toMatch(/leading/);
  });

  it('the leader publishes the trust bundle to its namespace and to each namespace with a waypoint', async () => {
    const bundle = await untilReplicas('the root ConfigMap', () => rootCert('ambit-system'));
    expect(bundle).toMatch(/^-----BEGIN CERTIFICATE-----/);
    api.apply('Gateway', { metadata: { name: 'waypoint', namespace: 'shop' }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } }, 'gateway.networking.k8s.io');
    expect(await untilReplicas('the ConfigMap in shop', () => rootCert('shop'))).toBe(bundle);
    const writers = new Set(api.applyPatches.filter((p) => p.path.endsWith('/configmaps/ambit-root-cert')).map((p) => p.query.fieldManager));
    expect([...writers]).toEqual(['ambit-controller']);
  });

  it('only the leader writes the status of a rejected policy', async () => {
    api.apply('AuthorizationPolicy', { metadata: { name: 'bad', namespace: 'shop' }, spec: { action: 'MAYBE' } }, 'security.istio.io');
    await untilReplicas('both replicas rejecting it', () => replicas.every((r) => /"object":"AuthorizationPolicy shop\/bad"/.test(r.output)));
    await untilReplicas('the status write', () => api.statusPatches.some((p) => p.path.endsWith('/authorizationpolicies/bad/status')));
    // A fixed wait is the assertion: the follower logged its rejection above, and a status write of
    // its own would follow that line within milliseconds; none comes in half a second.
    await new Promise((r) => setTimeout(r, 500));
    expect(api.statusPatches.filter((p) => p.path.endsWith('/authorizationpolicies/bad/status'))).toHaveLength(1);
  });

  it('when the leader stops, the other replica takes the Lease and its duties at once', async () => {
    const [a, b] = replicas as [Replica, Replica];
    const stopped = Date.now();
    a.proc.kill('SIGTERM');
    await untilReplicas('ctl-a gone', () => a.exited);
    await untilReplicas('ctl-b leading', () => holder() === 'ctl-b', 10_000);
    // Released, not expired: the Lease lasts 15 s, the handover takes a retry period (2 s).
    expect(Date.now() - stopped).toBeLessThan(8000);
    api.apply('Namespace', { metadata: { name: 'cart', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
    api.apply('Gateway', { metadata: { name: 'waypoint', namespace: 'cart' }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } }, 'gateway.networking.k8s.io');
    expect(await untilReplicas('the ConfigMap in cart', () => rootCert('cart'))).toBe(rootCert('ambit-system'));
    expect(await ready(b)).toBe(200);
  });
});
