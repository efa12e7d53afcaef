/**
 * `ambit proxy-config --waypoint` against a real local cluster: a namespace bound to its waypoint
 * (`ambit waypoint apply --enroll-namespace`), a Service with an HTTPRoute and an L7
 * AuthorizationPolicy bound to the waypoint's Gateway. The command reaches the waypoint's admin
 * endpoint from a socket made in its pod's network namespace and shows its certificate, the
 * bound service with its route and endpoints, and the policy it enforces.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { CertificatesAnswer, PoliciesAnswer, ServicesAnswer, WorkloadsAnswer } from '../../src/api/proxy-config.js';
import { until } from '../helpers/wait.js';
import { cli } from './helpers/cli.js';
import { describeAsRoot } from './helpers/root.js';

const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-pcw-'));
const CLUSTER = `pw${Math.random().toString(36).slice(2, 6)}`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-pcw-m-'));
const { ambit, ok } = cli({ ...process.env, AMBIT_LOCAL_STATE: stateRoot });

const APP = `
apiVersion: v1
kind: Namespace
metadata: { name: wpc, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: wpc }
spec: { selector: { app: web }, ports: [{ name: http, port: 80, targetPort: 9080 }] }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: wpc }
spec:
  replicas: 1
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers:
      - name: c
        command: [node, -e, 'require("http").createServer((q, s) => s.end("ok")).listen(9080)']
        readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: web-route, namespace: wpc }
spec:
  parentRefs: [{ group: "", kind: Service, name: web, port: 80 }]
  rules: [{ backendRefs: [{ name: web, port: 80 }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: get-only, namespace: wpc }
spec:
  targetRefs: [{ group: gateway.networking.k8s.io, kind: Gateway, name: waypoint }]
  action: ALLOW
  rules: [{ to: [{ operation: { methods: [GET] } }] }]
`;

const view = async <T>(name: string): Promise<T> => JSON.parse(await ok(['proxy-config', name, '--waypoint', 'wpc/waypoint', '--cluster', CLUSTER, '--json'])) as T;

describeAsRoot('ambit proxy-config --waypoint on a local cluster', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'app.yaml'), APP);
    await ok(['local', 'up', '--cluster', CLUSTER, '--nodes', '1', '-f', dir, '--timeout', '120']);
    await ok(['waypoint', 'apply', '-n', 'wpc', '--enroll-namespace', '--cluster', CLUSTER]);
    await until('the waypoint pod ready', async () => /wpc\s+waypoint\s+Running 1\/1/.test(await ok(['waypoint', 'list', '--cluster', CLUSTER])) || undefined, { timeout: 60_000, interval: 500 });
  }, 240_000);

  afterAll(async () => {
    await ambit(['local', 'down', '--cluster', CLUSTER]).catch(() => undefined);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows the waypoint\'s own certificate', async () => {
    const certs = await until('the waypoint\'s certificate', async () => {
      const a = await view<CertificatesAnswer>('certs');
      return a.items[0]?.state === 'valid' ? a : undefined;
    }, { timeout: 30_000, interval: 500 });
    expect(certs).toMatchObject({ kind: 'Certificates', node: 'node-1', waypoint: { namespace: 'wpc', name: 'waypoint', pod: expect.stringMatching(/waypoint/) } });
    expect(certs.items).toEqual([expect.objectContaining({ identity: 'spiffe://cluster.local/ns/wpc/sa/waypoint', state: 'valid', serial: expect.stringMatching(/^[0-9a-f]+$/), error: null })]);
    expect(Date.parse(certs.items[0]!.notAfter!)).toBeGreaterThan(Date.now());
    const table = await ok(['proxy-config', 'certs', '--waypoint', 'wpc/waypoint', '--cluster', CLUSTER]);
    expect(table).toMatch(/^IDENTITY\s+SERIAL[^\n]*\nspiffe:\/\/cluster\.local\/ns\/wpc\/sa\/waypoint\s+[0-9a-f]+\s/);
  }, 60_000);

  it('shows the service bound to it, its route and its endpoint', async () => {
    const services = await until('the bound service', async () => {
      const a = await view<ServicesAnswer>('services');
      return a.items.find((s) => s.name === 'web' && s.endpoints === 1) ? a : undefined;
    }, { timeout: 30_000, interval: 500 });
    expect(services.configVersion).not.toBeNull();
    expect(services.items.find((s) => s.name === 'web')).toMatchObject({
      namespace: 'wpc', hostname: 'web.wpc.svc.cluster.local', waypoint: { namespace: 'wpc', name: 'waypoint' },
      routes: [{ kind: 'HTTPRoute', namespace: 'wpc', name: 'web-route', ports: [80], consumer: null }],
    });
    expect(await ok(['proxy-config', 'services', '--waypoint', 'wpc/waypoint', '--cluster', CLUSTER])).toMatch(/\nwpc\s+web\s+\S+\s+80\/TCP->9080\s+1\s+HTTPRoute wpc\/web-route:80/);
    const workloads = await view<WorkloadsAnswer>('workloads');
    expect(workloads.items).toEqual([expect.objectContaining({ namespace: 'wpc', workload: 'web', services: ['wpc/web'], status: 'remote' })]);
  }, 60_000);

  it('shows the L7 policy it enforces', async () => {
    const policies = await until('the L7 policy', async () => {
      const a = await view<PoliciesAnswer>('policies');
      return a.items.length > 0 ? a : undefined;
    }, { timeout: 30_000, interval: 500 });
    expect(policies.items).toEqual([{
      namespace: 'wpc', name: 'get-only', kind: 'AuthorizationPolicy', scope: 'waypoint', selector: null, action: 'ALLOW', enforced: true,
      rules: ['to methods=GET'], warnings: [], targetRefs: ['Gateway wpc/waypoint'],
    }]);
    const connections = await ok(['proxy-config', 'connections', '--waypoint', 'wpc/waypoint', '--cluster', CLUSTER]);
    expect(connections).toContain('does not list its connections one by one');
  }, 60_000);
});
