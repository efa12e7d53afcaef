/**
 * Ingress gateways on Kubernetes: the install's opt-in Istio default ingress gateway
 * (`ingressGateway.enabled`), the objects of a Gateway API Gateway of class ambit/istio (valid
 * against Kubernetes' schemas), and the controller's reconciler writing them against the
 * stand-in API server while leaving waypoints' objects alone.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { buildModel, type SourceSnapshot } from '../../src/config/model.js';
import { KubernetesSource } from '../../src/control/kube-source.js';
import { ingressGatewayReconciler } from '../../src/control/kube/gateways.js';
import { WaypointReconciler } from '../../src/control/kube/waypoints.js';
import { ingressGatewayObjects, isIngressGatewayObject } from '../../src/install/gateway.js';
import type { K8sObject } from '../../src/install/objects.js';
import { renderInstall } from '../../src/install/render.js';
import { checkSchemas } from '../../src/install/schema-check.js';
import { defaultValues, resolveValues } from '../../src/install/values.js';
import { KubeClient } from '../../src/kube/client.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, type ServedKind } from '../helpers/fake-apiserver.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests walk rendered objects by path */

const find = (objects: K8sObject[], kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name) as any;
const bookinfo = {
  apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway',
  metadata: { name: 'bookinfo-gateway', namespace: 'default', uid: 'u-1' },
  spec: { gatewayClassName: 'istio', listeners: [{ name: 'http', port: 80, protocol: 'HTTP' }, { name: 'HTTPS_Main', port: 443, protocol: 'HTTPS' }] },
};

describe('ambit install: Istio\'s default ingress gateway', () => {
  it('is not installed by default', () => {
    expect(renderInstall(defaultValues()).filter((o) => o.metadata.namespace === 'istio-system' || o.metadata.name === 'istio-system')).toEqual([]);
  });

  it('ingressGateway.enabled: istio-system/istio-ingressgateway under Istio\'s names, non-root on ports below 1024, probes on 15020, the waypoints\' credential mounts', async () => {
    const objects = renderInstall(resolveValues(['ingressGateway.enabled=true']));
    const ours = objects.filter((o) => o.metadata.namespace === 'istio-system' || (o.kind === 'Namespace' && o.metadata.name === 'istio-system'));
    expect(ours.map((o) => `${o.kind}/${o.metadata.name}`)).toEqual(['Namespace/istio-system', 'ServiceAccount/istio-ingressgateway-service-account', 'Deployment/istio-ingressgateway', 'Service/istio-ingressgateway']);
    expect(find(ours, 'ServiceAccount', 'istio-ingressgateway-service-account').metadata.labels['ambit.dev/ingress-gateway']).toBe('istio-ingressgateway');
    const d = find(ours, 'Deployment', 'istio-ingressgateway');
    expect(d.spec.selector.matchLabels).toEqual({ istio: 'ingressgateway', app: 'istio-ingressgateway' });
    const pod = d.spec.template.spec;
    expect(d.spec.template.metadata.labels).toMatchObject({ istio: 'ingressgateway', app: 'istio-ingressgateway', 'ambit.dev/dataplane-mode': 'none' });
    expect(pod.serviceAccountName).toBe('istio-ingressgateway-service-account');
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, sysctls: [{ name: 'net.ipv4.ip_unprivileged_port_start', value: '0' }] });
    const c = pod.containers[0];
    expect(c.args.slice(0, 4)).toEqual(['gateway', 'run', '--name', 'istio-system/istio-ingressgateway-service-account']);
    expect(c.args).toContain('--token-file');
    expect(c.readinessProbe.httpGet).toEqual({ path: '/healthz/ready', port: 15020 });
    expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz/live', port: 15020 });
    expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'] });
    expect(c.volumeMounts.map((m: any) => m.name)).toEqual(['ambit-token', 'ambit-roots', 'tmp']);
    const svc = find(ours, 'Service', 'istio-ingressgateway');
    expect(svc.spec).toMatchObject({ type: 'LoadBalancer', selector: { istio: 'ingressgateway', app: 'istio-ingressgateway' } });
    expect(svc.spec.ports.map((p: any) => [p.name, p.port])).toEqual([['http2', 80], ['https', 443]]);
    const results = await checkSchemas(ours);
    expect(results.filter((r) => r.errors.length > 0)).toEqual([]);
  });
});

describe('a Gateway of class ambit or istio', () => {
  it('runs as Deployment and LoadBalancer Service G-gateway with account G, the listeners\' ports, owned by the Gateway', async () => {
    expect(isIngressGatewayObject(bookinfo)).toBe(true);
    expect(isIngressGatewayObject({ ...bookinfo, spec: { gatewayClassName: 'ambit-waypoint' } })).toBe(false);
    const objects = ingressGatewayObjects(bookinfo, defaultValues());
    expect(objects.map((o) => `${o.kind}/${o.metadata.namespace}/${o.metadata.name}`)).toEqual(['ServiceAccount/default/bookinfo-gateway', 'Deployment/default/bookinfo-gateway-gateway', 'Service/default/bookinfo-gateway-gateway']);
    for (const o of objects) {
      expect(o.metadata.labels!['gateway.networking.k8s.io/gateway-name']).toBe('bookinfo-gateway');
      expect((o.metadata as any).ownerReferences[0]).toMatchObject({ kind: 'Gateway', name: 'bookinfo-gateway', uid: 'u-1', controller: true });
    }
    const d = find(objects, 'Deployment', 'bookinfo-gateway-gateway');
    expect(d.spec.template.spec.serviceAccountName).toBe('bookinfo-gateway');
    expect(d.spec.template.spec.containers[0].args.slice(0, 4)).toEqual(['gateway', 'run', '--name', 'default/bookinfo-gateway']);
    // A listener name that is no DNS label becomes protocol-port.
    expect(find(objects, 'Service', 'bookinfo-gateway-gateway').spec.ports.map((p: any) => [p.name, p.port])).toEqual([['http', 80], ['https-443', 443]]);
    expect((await checkSchemas(objects)).filter((r) => r.errors.length > 0)).toEqual([]);
    expect(() => ingressGatewayObjects({ ...bookinfo, spec: { gatewayClassName: 'ambit', listeners: [] } })).toThrow(/no listener with a port/);
  });
});

describe('the controller\'s ingress gateway reconciler', () => {
  const KINDS: ServedKind[] = [
    { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
    { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
    { group: '', version: 'v1', kind: 'Service', plural: 'services' },
    { group: 'apps', version: 'v1', kind: 'Deployment', plural: 'deployments' },
    { group: 'policy', version: 'v1', kind: 'PodDisruptionBudget', plural: 'poddisruptionbudgets' },
    { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
  ];
  let server: FakeApiServer;
  let ingress: WaypointReconciler;
  let waypoints: WaypointReconciler;
  beforeEach(async () => {
    server = new FakeApiServer(KINDS.map((k) => ({ ...k })));
    await server.start();
    server.apply('Namespace', { metadata: { name: 'default' } });
    const client = new KubeClient({ server: server.url });
    ingress = ingressGatewayReconciler(client, { values: defaultValues(), log: silentLogger, resyncMs: 0 });
    waypoints = new WaypointReconciler(client, { backoffMs: 1, resyncMs: 0 });
  });
  afterEach(async () => {
    ingress.stop();
    waypoints.stop();
    await server.close();
  });

  it('writes a Gateway\'s objects, deletes them when it goes, and leaves the waypoints\' alone', async () => {
    const waypoint = { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'waypoint', namespace: 'default' }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } };
    server.apply('Gateway', bookinfo, 'gateway.networking.k8s.io');
    server.apply('Gateway', waypoint, 'gateway.networking.k8s.io');
    const all = [server.get('Gateway', 'default', 'bookinfo-gateway', 'gateway.networking.k8s.io')!, server.get('Gateway', 'default', 'waypoint', 'gateway.networking.k8s.io')!];
    await waypoints.reconcile(all);
    await ingress.reconcile(all);
    expect((server.get('Deployment', 'default', 'bookinfo-gateway-gateway', 'apps') as any).spec.template.spec.serviceAccountName).toBe('bookinfo-gateway');
    expect((server.get('Service', 'default', 'bookinfo-gateway-gateway') as any).spec.type).toBe('LoadBalancer');
    expect(server.get('Deployment', 'default', 'waypoint', 'apps')).toBeDefined();
    // Programmed, and the Service's load balancer as the Gateway's addresses once it has one.
    const gw = () => server.get('Gateway', 'default', 'bookinfo-gateway', 'gateway.networking.k8s.io') as any;
    expect(gw().status.conditions.find((c: any) => c.type === 'Programmed')).toMatchObject({ status: 'True', reason: 'Programmed', message: expect.stringContaining('no load balancer address yet') });
    const svc = server.get('Service', 'default', 'bookinfo-gateway-gateway') as any;
    server.apply('Service', { ...svc, status: { loadBalancer: { ingress: [{ ip: '203.0.113.7' }, { hostname: 'lb.example.com' }] } } });
    await ingress.reconcile([gw(), all[1]!]);
    expect(gw().status.addresses).toEqual([{ type: 'IPAddress', value: '203.0.113.7' }, { type: 'Hostname', value: 'lb.example.com' }]);
    expect(gw().status.conditions.find((c: any) => c.type === 'Programmed').message).toContain('203.0.113.7, lb.example.com');
    // The waypoint's Gateway gets no addresses.
    expect((server.get('Gateway', 'default', 'waypoint', 'gateway.networking.k8s.io') as any).status?.addresses).toBeUndefined();
    // The ingress Gateway goes: its objects go; the waypoint's stay (also for a new reconciler adopting what it finds).
    ingress.stop();
    ingress = ingressGatewayReconciler(new KubeClient({ server: server.url }), { values: defaultValues(), log: silentLogger, resyncMs: 0 });
    await ingress.reconcile([all[1]!]);
    expect(server.get('Deployment', 'default', 'bookinfo-gateway-gateway', 'apps')).toBeUndefined();
    expect(server.get('ServiceAccount', 'default', 'bookinfo-gateway')).toBeUndefined();
    expect(server.get('Deployment', 'default', 'waypoint', 'apps')).toBeDefined();
    expect(server.get('ServiceAccount', 'default', 'waypoint')).toBeDefined();
  });
});

describe('the Kubernetes source and ingress gateways', () => {
  it('watches TLS Secrets only (a field selector), takes a rotation as a change, and an ingress gateway\'s own account as its credential', async () => {
    const server = new FakeApiServer([
      { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
      { group: '', version: 'v1', kind: 'ServiceAccount', plural: 'serviceaccounts' },
      { group: '', version: 'v1', kind: 'Secret', plural: 'secrets' },
      { group: 'gateway.networking.k8s.io', version: 'v1', kind: 'Gateway', plural: 'gateways' },
    ]);
    await server.start();
    const pem = (tag: string) => Buffer.from(`-----BEGIN CERTIFICATE-----\n${tag}\n-----END CERTIFICATE-----\n`).toString('base64');
    const key = Buffer.from('-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n').toString('base64');
    server.apply('Secret', { metadata: { name: 'web-cert', namespace: 'default' }, type: 'kubernetes.io/tls', data: { 'tls.crt': pem('one'), 'tls.key': key } });
    server.apply('Gateway', bookinfo, 'gateway.networking.k8s.io');
    server.apply('ServiceAccount', { metadata: { name: 'bookinfo-gateway', namespace: 'default', labels: { 'gateway.networking.k8s.io/gateway-name': 'bookinfo-gateway' } } });
    server.apply('ServiceAccount', { metadata: { name: 'istio-ingressgateway-service-account', namespace: 'istio-system', labels: { 'ambit.dev/ingress-gateway': 'istio-ingressgateway' } } });
    server.apply('ServiceAccount', { metadata: { name: 'app', namespace: 'default' } });
    const snapshots: SourceSnapshot[] = [];
    const source = new KubernetesSource(new KubeClient({ server: server.url }), { debounceMs: 10, absentRetryMs: 60_000, backoffMs: 20, resyncMs: 0 });
    source.start((snap) => snapshots.push(snap));
    const certOf = () => buildModel(snapshots.at(-1) ?? { resources: [], pods: [] }, 'cluster.local').secrets.find((x) => x.name === 'web-cert')?.data['tls.crt'];
    try {
      await vi.waitFor(() => expect(certOf()).toContain('one'), { timeout: 5000, interval: 10 });
      const secretRequests = server.requests.filter((r) => r.url.startsWith('/api/v1/secrets'));
      expect(secretRequests.length).toBeGreaterThan(0);
      expect(secretRequests.filter((r) => !r.url.includes('fieldSelector=type%3Dkubernetes.io%2Ftls'))).toEqual([]);
      server.apply('Secret', { metadata: { name: 'web-cert', namespace: 'default' }, type: 'kubernetes.io/tls', data: { 'tls.crt': pem('two'), 'tls.key': key } });
      await vi.waitFor(() => expect(certOf()).toContain('two'), { timeout: 5000, interval: 10 });
      expect(source.isWaypoint('default', 'bookinfo-gateway')).toBe(true);
      expect(source.isWaypoint('istio-system', 'istio-ingressgateway-service-account')).toBe(true);
      expect(source.isWaypoint('default', 'app')).toBe(false);
    } finally {
      source.stop();
      await server.close();
    }
  });
});
