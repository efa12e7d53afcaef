/**
 * `ambit waypoint apply|delete --kubeconfig` against the stand-in API server: the Gateway applied
 * server-side, the namespace labelled, and what it says when a namespace, a waypoint or the API
 * server is missing. The controller's reconciler of the same Gateways: test/unit/kube-waypoints.test.ts.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { FakeApiServer, type ServedKind, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { describeAsRoot } from './helpers/root.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk stored objects by path */

const KINDS: ServedKind[] = [
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
];

let server: FakeApiServer;

beforeEach(async () => {
  server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
  await server.start();
  server.apply('Namespace', { metadata: { name: 'shop' } });
});

afterEach(async () => {
  await server.close();
});

const run = promisify(execFile);
const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;

describeAsRoot('ambit waypoint apply|delete --kubeconfig', () => {
  let dir = '';
  let kubeconfig = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ambit-wp-'));
    kubeconfig = join(dir, 'kubeconfig');
    writeKubeconfig(kubeconfig, server.url);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('applies the Gateway server-side and labels the namespace for --for namespace; delete removes it', async () => {
    server.apply('Namespace', { metadata: { name: 'shop', labels: { team: 'a' } } });
    const out = await run(process.execPath, [BIN, 'waypoint', 'apply', '-n', 'shop', '--name', 'reviews-wp', '--for', 'namespace', '--tracing-sampling', '5', '--kubeconfig', kubeconfig]);
    expect(out.stdout).toMatch(/gateway\.gateway\.networking\.k8s\.io\/reviews-wp applied/);
    expect(out.stdout).toMatch(/namespace\/shop labelled ambit\.dev\/use-waypoint=reviews-wp/);
    const [apply] = server.applyPatches;
    expect(apply).toMatchObject({ path: '/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/reviews-wp', contentType: 'application/apply-patch+yaml', query: { force: 'true' } });
    expect(apply!.query.fieldManager).toBeTruthy();
    const gw = server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io') as any;
    expect(gw.spec.gatewayClassName).toBe('ambit-waypoint');
    expect(gw.metadata.annotations['ambit.dev/tracing-sampling']).toBe('5');
    const ns = server.get('Namespace', '', 'shop') as any;
    expect(ns.metadata.labels).toEqual({ team: 'a', 'ambit.dev/use-waypoint': 'reviews-wp' });
    expect(server.requests.find((r) => r.method === 'PATCH' && r.url === '/api/v1/namespaces/shop')?.contentType).toBe('application/merge-patch+json');

    const del = await run(process.execPath, [BIN, 'waypoint', 'delete', 'reviews-wp', '-n', 'shop', '--kubeconfig', kubeconfig]);
    expect(del.stdout).toMatch(/gateway\.gateway\.networking\.k8s\.io\/reviews-wp deleted/);
    expect(server.get('Gateway', 'shop', 'reviews-wp', 'gateway.networking.k8s.io')).toBeUndefined();
  }, 30_000);

  it('says which namespace or waypoint is missing, and when the API server cannot be reached', async () => {
    const missing = await run(process.execPath, [BIN, 'waypoint', 'apply', '-n', 'nope', '--kubeconfig', kubeconfig]).catch((e: { code: number; stderr: string }) => e);
    expect(missing).toMatchObject({ code: 1 });
    expect((missing as { stderr: string }).stderr).toMatch(/namespace nope does not exist in http:\/\/127\.0\.0\.1:\d+/);
    const gone = await run(process.execPath, [BIN, 'waypoint', 'delete', 'ghost', '-n', 'shop', '--kubeconfig', kubeconfig]).catch((e: { stderr: string }) => e);
    expect((gone as { stderr: string }).stderr).toMatch(/waypoint shop\/ghost not found/);
    writeKubeconfig(kubeconfig, 'http://127.0.0.1:1');
    const down = await run(process.execPath, [BIN, 'waypoint', 'apply', '-n', 'shop', '--kubeconfig', kubeconfig]).catch((e: { stderr: string }) => e);
    expect((down as { stderr: string }).stderr).toMatch(/cannot reach the Kubernetes API server at http:\/\/127\.0\.0\.1:1/);
  }, 30_000);
});
