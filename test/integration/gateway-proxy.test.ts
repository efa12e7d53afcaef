/**
 * The ingress gateway process (IngressGateway, what `ambit gateway run` starts) against an
 * in-process controller: its CA and discovery serving the model built from manifests as users
 * write them (an Istio Gateway selecting `istio: ingressgateway` in the app's namespace, a
 * VirtualService bound to it by its short name, the TLS Secret base64-encoded in istio-system,
 * where Istio reads credentialName). It subscribes as `gateway`
 * istio-system/istio-ingressgateway-service-account, gets its certificate with its own
 * credential, opens the HTTPS listener, and carries requests over mTLS HBONE with its own
 * identity to a stand-in destination node agent on 127.0.0.81; a new Secret version is served
 * to new handshakes without a restart. Its probes, metrics and admin answer as the contract says.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { connect as netConnect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildModel, type PodInfo } from '../../src/config/model.js';
import { DiscoveryServer, discoveryService } from '../../src/discovery/discovery.js';
import { HboneServer } from '../../src/hbone/hbone.js';
import { CaError, CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CaServer, type Authenticator, type Caller } from '../../src/identity/ca-server.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { parseManifests } from '../../src/kube/manifests.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { IngressGateway } from '../../src/waypoint/ingress/app.js';
import { freePort } from '../helpers/fake-apiserver.js';
import { testCa, testLeaf, type TestCa, type TestCert } from '../unit/helpers/edge-tls.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-gw-proxy-'));
const GATEWAY = 'spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account';
const REVIEWS = 'spiffe://cluster.local/ns/shop/sa/reviews';
const ENDPOINT_IP = '127.0.0.81';

const authenticator: Authenticator = {
  authenticate(metadata: Metadata): Promise<Caller> {
    const token = metadata.get('authorization')[0];
    if (token === 'Bearer gw-token') return Promise.resolve({ node: '', workload: { namespace: 'istio-system', name: 'istio-ingressgateway-service-account', identity: GATEWAY } });
    return Promise.reject(new CaError('UNAUTHENTICATED', 'unknown token'));
  },
};

let server: CaServer;
let discovery: DiscoveryServer;
let gateway: IngressGateway;
let userCa: TestCa;
let HTTPS = 0;
const closers: (() => unknown)[] = [];
const peers: string[] = [];

const b64 = (s: string) => Buffer.from(s).toString('base64');
const pod = (uid: string, ns: string, name: string, sa: string, ip: string, labels: Record<string, string>, owner: string): PodInfo => ({
  uid, namespace: ns, name, node: 'node-1', ip, labels, owner: { kind: 'Deployment', name: owner },
  spec: { serviceAccountName: sa, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 9080, protocol: 'TCP' }] }] },
});

/** The model the controller serves: the user's manifests, with `cert` in the Secret. */
function model(cert: TestCert) {
  const text = `
apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: shop }
spec: { clusterIP: 10.96.8.1, selector: { app: reviews }, ports: [{ name: http, port: 9080, targetPort: 9080 }] }
---
apiVersion: v1
kind: Secret
metadata: { name: shop-cert, namespace: istio-system }
type: kubernetes.io/tls
data: { tls.crt: ${b64(cert.cert)}, tls.key: ${b64(cert.key)} }
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: shop-gateway, namespace: shop }
spec:
  selector: { istio: ingressgateway }
  servers:
  - port: { number: ${HTTPS}, name: https, protocol: HTTPS }
    hosts: [shop.example.com]
    tls: { mode: SIMPLE, credentialName: shop-cert }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: shop, namespace: shop }
spec:
  hosts: [shop.example.com]
  gateways: [shop-gateway]
  http:
  - route: [{ destination: { host: reviews, port: { number: 9080 } } }]
`;
  const parsed = parseManifests([{ file: 'shop.yaml', text, dir }]);
  expect(parsed.diagnostics.filter((d) => d.severity === 'error')).toEqual([]);
  return buildModel({
    resources: parsed.resources,
    pods: [
      pod('r1', 'shop', 'reviews-1', 'reviews', ENDPOINT_IP, { app: 'reviews' }, 'reviews'),
      pod('g1', 'istio-system', 'istio-ingressgateway-1', 'istio-ingressgateway-service-account', '127.0.0.82', { istio: 'ingressgateway', app: 'istio-ingressgateway' }, 'istio-ingressgateway'),
    ],
  }, 'cluster.local');
}

function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });
}

function httpsGet(path: string): Promise<{ status: number; body: string; serial: string }> {
  return new Promise((resolve, reject) => {
    https.get({ host: '127.0.0.1', port: HTTPS, path, servername: 'shop.example.com', headers: { host: 'shop.example.com' }, ca: userCa.cert, agent: false }, (res) => {
      const serial = (res.socket as TLSSocket).getPeerCertificate().serialNumber.toLowerCase();
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, serial }));
    }).on('error', reject);
  });
}

let cert: TestCert;
let metricsPort = 0;

beforeAll(async () => {
  userCa = await testCa('shop CA');
  cert = await testLeaf(userCa, ['shop.example.com']);
  HTTPS = await freePort();
  metricsPort = await freePort();
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  discovery = new DiscoveryServer(authenticator);
  server = await CaServer.start({
    ca, authenticator, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
  });
  // The destination's node agent, reduced to its HBONE listener, in front of the app.
  const agentCerts = new CertManager({ source: {
    createCertificate: async (csr: string, identity: string, ttl: number) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(ca.trustBundle()),
  } });
  await agentCerts.start();
  closers.push(() => agentCerts.close());
  const app = http.createServer((req, res) => res.end(JSON.stringify({ url: req.url, xfp: req.headers['x-forwarded-proto'] })));
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve));
  closers.push(() => app.close());
  const appPort = (app.address() as { port: number }).port;
  const agent = new HboneServer({
    certificate: () => agentCerts.acquire(REVIEWS), roots: () => agentCerts.trustBundle,
    onTunnel: (stream, info) => {
      peers.push(info.peerIdentity ?? '');
      stream.respond({ ':status': 200 });
      const s = netConnect(appPort, '127.0.0.1');
      stream.pipe(s).pipe(stream);
      s.on('error', () => stream.destroy());
      stream.on('error', () => s.destroy());
    },
  });
  const hbone: Server = createServer((s) => void agent.handle(s));
  await new Promise<void>((resolve) => hbone.listen(15008, ENDPOINT_IP, resolve));
  closers.push(() => hbone.close(), () => agent.close());

  gateway = await IngressGateway.start({
    namespace: 'istio-system', name: 'istio-ingressgateway-service-account', trustDomain: 'cluster.local',
    controller: { address: `127.0.0.1:${server.port}`, token: 'gw-token', roots: ca.trustBundle() },
    listenHost: '127.0.0.1', metricsPort, adminPort: 0, log: silentLogger, accessLog: silentLogger,
  });
  closers.unshift(() => gateway.close());
}, 30_000);

afterAll(async () => {
  for (const c of closers) await c();
  server?.forceClose();
  rmSync(dir, { recursive: true, force: true });
});

describe('ambit gateway run (in-process) with a controller', () => {
  it('is not ready before its first config, and ready once it has it and its certificate', async () => {
    await vi.waitFor(async () => expect(await get(metricsPort, '/healthz/ready')).toMatchObject({ status: 503, body: expect.stringContaining('no config from the controller yet') }), { timeout: 10_000, interval: 50 });
    discovery.update(model(cert));
    await vi.waitFor(async () => expect(await get(metricsPort, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' }), { timeout: 15_000, interval: 50 });
    expect(gateway.listeners.ports).toEqual([HTTPS]);
  });

  it('serves HTTPS with the Secret\'s certificate and reaches the service over HBONE as the gateway', async () => {
    const r = await httpsGet('/products?id=1');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ url: '/products?id=1', xfp: 'https' });
    expect(r.serial).toBe(cert.serial.toLowerCase());
    expect(peers.length).toBeGreaterThan(0);
    expect(new Set(peers)).toEqual(new Set([GATEWAY]));
    const metrics = (await get(metricsPort, '/metrics')).body;
    expect(metrics).toMatch(new RegExp(`istio_requests_total\\{reporter="source",source_workload="istio-ingressgateway",source_workload_namespace="istio-system",source_principal="${GATEWAY}"[^}]*destination_workload="reviews"[^}]*destination_service="reviews.shop.svc.cluster.local"[^}]*response_code="200"`));
  });

  it('serves a rotated Secret to new handshakes without a restart', async () => {
    const next = await testLeaf(userCa, ['shop.example.com']);
    discovery.update(model(next));
    await vi.waitFor(async () => expect((await httpsGet('/')).serial).toBe(next.serial.toLowerCase()), { timeout: 15_000, interval: 100 });
  });

  it('lists its listeners on the admin endpoint with certificate metadata, never the key', async () => {
    const r = await get(gateway.adminPort!, '/listeners');
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body) as { ports: number[]; servers: { id: string; served: boolean; certificate?: { secret: string; subject: string } }[] };
    expect(body.ports).toEqual([HTTPS]);
    expect(body.servers).toEqual([expect.objectContaining({ id: 'Gateway/shop/shop-gateway#0', served: true, certificate: expect.objectContaining({ secret: 'istio-system/shop-cert', subject: 'CN=shop.example.com' }) })]);
    expect(r.body).not.toMatch(/PRIVATE KEY/);
  });

  it('closes the listener when its Gateway goes', async () => {
    const m = model(cert);
    discovery.update({ ...m, gateways: [] });
    await vi.waitFor(() => expect(gateway.listeners.ports).toEqual([]), { timeout: 15_000, interval: 50 });
    await expect(httpsGet('/')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
