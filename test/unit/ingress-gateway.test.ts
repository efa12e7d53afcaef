/**
 * The ingress gateway's data path on loopback: its listeners opened from a view built directly
 * (the resources a `gateway` subscriber gets), real TLS clients checking the served certificate
 * with the user's CA, and real mTLS HBONE behind it to stand-in node agents (an endpoint's on
 * 127.0.0.71, a waypoint's on 127.0.0.72) in front of plain apps. Covers SNI picking the
 * certificate, rotation without restart, MUTUAL refusing a client without a certificate in the
 * handshake, httpsRedirect, PASSTHROUGH by SNI, routing by host and path (Istio and Gateway
 * API), a waypoint-bound service reached through its waypoint, 404 without a route, a missing
 * Secret, and the request metrics as a gateway reports them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import * as http from 'node:http';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import { connect as netConnect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer, type PeerCertificate, type TLSSocket } from 'node:tls';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Service, Workload } from '../../src/config/model.js';
import type { WireResource } from '../../src/discovery/discovery.js';
import { HboneServer } from '../../src/hbone/hbone.js';
import type { CertManager } from '../../src/identity/cert-manager.js';
import { MeshMetrics, RequestMetrics } from '../../src/telemetry/metrics.js';
import { Sampler, Tracer, type ReadableSpan } from '../../src/telemetry/tracing.js';
import { requestReporter } from '../../src/waypoint/app.js';
import { gatewayPeer, gatewayStateOf, streamReporter } from '../../src/waypoint/ingress/app.js';
import { IngressListeners } from '../../src/waypoint/ingress/listeners.js';
import { WaypointProxy } from '../../src/waypoint/proxy.js';
import type { MeshState } from '../../src/discovery/mesh-state.js';
import { testCa, testLeaf, type TestCa, type TestCert } from './helpers/edge-tls.js';
import { listener, loopbackSocket, meshCertificates, REVIEWS, WAYPOINT } from './helpers/waypoint-rig.js';

const GATEWAY = 'spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account';
const ENDPOINT_IP = '127.0.0.71';
/** A client certificate's SPIFFE ID (another trust domain's), which a policy at the gateway names. */
const PARTNER = 'spiffe://partner.example/ns/orders/sa/client';
const WAYPOINT_IP = '127.0.0.72';
const dir = mkdtempSync(join(tmpdir(), 'ambit-ingress-'));
const closers: (() => unknown)[] = [];
const listen = listener(closers);

let manager: CertManager;
let proxy: WaypointProxy;
let gateway: IngressListeners;
let mesh: MeshState | undefined;
const metrics = new MeshMetrics();
const access: Record<string, unknown>[] = [];
/** Spans the gateway ended. */
const spans: ReadableSpan[] = [];
/** What the stand-in agents saw: each tunnel's peer and authority. */
const tunnels: { at: string; peer?: string; authority: string }[] = [];
let userCa: TestCa;
let clientCa: TestCa;
const certs: Record<string, TestCert> = {};
let passCert: TestCert;
let HTTPS = 0;
let HTTP = 0;
let API = 0;
let TCP = 0;

function workload(uid: string, name: string, ns: string, sa: string, identity: string, ip: string, labels: Record<string, string>): Workload {
  return { uid, name: `${name}-1`, workload: name, namespace: ns, serviceAccount: sa, identity, ips: [ip], node: 'node-1', labels, enrolled: true, ports: {} };
}
const service = (name: string, vip: string, port: number, endpoints: string[], waypoint?: string): Service => ({
  namespace: 'shop', name, hostname: `${name}.shop.svc.cluster.local`, vips: [vip], endpoints, ports: [{ name: 'http', port, targetPort: port, protocol: 'TCP' }],
  ...(waypoint ? { waypoint: { namespace: 'shop', name: waypoint } } : {}),
});
const secret = (ns: string, name: string, data: Record<string, string>) => ({ namespace: ns, name, type: 'kubernetes.io/tls', data });

/** The view a `gateway` subscriber istio-system/istio-ingressgateway-service-account gets (plus a Gateway API Gateway). */
function view(overrides: { secrets?: Record<string, unknown> } = {}): Map<string, WireResource> {
  const objects: [string, string, unknown][] = [
    ['workload/w1', 'workload', workload('w1', 'reviews', 'shop', 'reviews', REVIEWS, ENDPOINT_IP, { app: 'reviews', version: 'v1' })],
    ['workload/wp', 'workload', workload('wp', 'waypoint', 'shop', 'waypoint', WAYPOINT, WAYPOINT_IP, { 'gateway.networking.k8s.io/gateway-name': 'waypoint' })],
    ['workload/gw', 'workload', workload('gw', 'istio-ingressgateway', 'istio-system', 'istio-ingressgateway-service-account', GATEWAY, '127.0.0.1', { istio: 'ingressgateway', app: 'istio-ingressgateway' })],
    ['service/shop/reviews', 'service', service('reviews', '10.96.7.71', 9080, ['w1'])],
    ['service/shop/secure', 'service', service('secure', '10.96.7.72', 8443, ['w1'])],
    ['service/shop/ratings', 'service', service('ratings', '10.96.7.73', 9090, ['w1'], 'waypoint')],
    ['service/shop/echo', 'service', { ...service('echo', '10.96.7.74', 50051, ['w1']), ports: [{ name: 'grpc', port: 50051, targetPort: 50051, protocol: 'TCP' }] }],
    // In the app's namespace, as the seed's: its credentialNames are still read in istio-system (Istio's rule).
    ['ingress/Gateway/shop/gw', 'ingress', {
      apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace: 'shop', name: 'gw', spec: {
        selector: { istio: 'ingressgateway' },
        servers: [
          { port: { number: HTTPS, name: 'https-a', protocol: 'HTTPS' }, hosts: ['a.example.com'], tls: { mode: 'SIMPLE', credentialName: 'a-cert' } },
          { port: { number: HTTPS, name: 'https-b', protocol: 'HTTPS' }, hosts: ['shop/*.b.example.com'], tls: { mode: 'SIMPLE', credentialName: 'b-cert', minProtocolVersion: 'TLSV1_3' } },
          { port: { number: HTTPS, name: 'https-m', protocol: 'HTTPS' }, hosts: ['m.example.com'], tls: { mode: 'MUTUAL', credentialName: 'm-cert' } },
          { port: { number: HTTPS, name: 'https-o', protocol: 'HTTPS' }, hosts: ['o.example.com'], tls: { mode: 'OPTIONAL_MUTUAL', credentialName: 'o-cert' } },
          { port: { number: HTTPS, name: 'https-x', protocol: 'HTTPS' }, hosts: ['missing.example.com'], tls: { mode: 'SIMPLE', credentialName: 'no-such-secret' } },
          { port: { number: HTTPS, name: 'tls-pass', protocol: 'TLS' }, hosts: ['pass.example.com'], tls: { mode: 'PASSTHROUGH' } },
          { port: { number: HTTP, name: 'http', protocol: 'HTTP' }, hosts: ['plain.example.com', 'a.example.com', 'x.example.com'] },
          { port: { number: HTTP, name: 'http-redirect', protocol: 'HTTP' }, hosts: ['secure.example.com'], tls: { httpsRedirect: true } },
          { port: { number: TCP, name: 'tcp', protocol: 'TCP' }, hosts: ['*'] },
        ],
      },
    }],
    // A second Istio Gateway on the same plaintext port: its VirtualService's host is served even where the first Gateway's server names the host too.
    ['ingress/Gateway/shop/gw2', 'ingress', {
      apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace: 'shop', name: 'gw2', spec: {
        selector: { istio: 'ingressgateway' }, servers: [{ port: { number: HTTP, name: 'http', protocol: 'HTTP' }, hosts: ['*.example.com'] }],
      },
    }],
    ['l7/VirtualService/shop/x', 'l7', {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'x', spec: {
        hosts: ['x.example.com'], gateways: ['gw2'], http: [{ directResponse: { status: 200, body: { string: 'from gw2' } } }],
      },
    }],
    ['ingress/Gateway/shop/web', 'ingress', {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', namespace: 'shop', name: 'web', spec: {
        gatewayClassName: 'istio', listeners: [{ name: 'https', port: API, protocol: 'HTTPS', hostname: 'api.example.com', tls: { certificateRefs: [{ kind: 'Secret', name: 'api-cert' }] } }],
      },
    }],
    // At the gateway: Istio's selector policy for its pods applies; one selecting other pods, or in another namespace, does not.
    ['policy/AuthorizationPolicy/istio-system/no-admin', 'policy', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'istio-system', name: 'no-admin',
      spec: { selector: { matchLabels: { istio: 'ingressgateway' } }, action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin*'] } }] }] },
    }],
    ['policy/AuthorizationPolicy/istio-system/m-partner-only', 'policy', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'istio-system', name: 'm-partner-only',
      spec: { selector: { matchLabels: { app: 'istio-ingressgateway' } }, action: 'DENY', rules: [{ from: [{ source: { notPrincipals: ['partner.example/ns/orders/sa/client'] } }], to: [{ operation: { hosts: ['m.example.com'] } }] }] },
    }],
    ['policy/AuthorizationPolicy/istio-system/other-pods', 'policy', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'istio-system', name: 'other-pods', spec: { selector: { matchLabels: { app: 'other' } }, action: 'DENY', rules: [{}] },
    }],
    ['policy/AuthorizationPolicy/shop/reviews-from-gateway', 'policy', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'reviews-from-gateway',
      spec: { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account'] } }] }] },
    }],
    ['l7/VirtualService/shop/web', 'l7', {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'web', spec: {
        hosts: ['a.example.com', '*.b.example.com', 'm.example.com', 'o.example.com', 'plain.example.com'], gateways: ['gw'],
        http: [
          { match: [{ uri: { prefix: '/ratings' } }], route: [{ destination: { host: 'ratings' } }] },
          { match: [{ uri: { prefix: '/old' } }], rewrite: { uri: '/new' }, route: [{ destination: { host: 'reviews', port: { number: 9080 } } }] },
          { match: [{ uri: { prefix: '/' } }], route: [{ destination: { host: 'reviews.shop.svc.cluster.local', port: { number: 9080 } } }] },
        ],
      },
    }],
    ['l7/VirtualService/shop/mesh-only', 'l7', {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'mesh-only', spec: { hosts: ['other.example.com'], http: [{ route: [{ destination: { host: 'reviews' } }] }] },
    }],
    ['l7/VirtualService/shop/pass', 'l7', {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'pass', spec: {
        hosts: ['pass.example.com'], gateways: ['shop/gw'],
        tls: [{ match: [{ sniHosts: ['pass.example.com'], port: HTTPS }], route: [{ destination: { host: 'secure', port: { number: 8443 } } }] }],
      },
    }],
    ['l7/VirtualService/shop/tcp', 'l7', {
      apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'tcp', spec: {
        hosts: ['*'], gateways: ['gw'], tcp: [{ match: [{ port: TCP }], route: [{ destination: { host: 'reviews', port: { number: 9080 } } }] }],
      },
    }],
    ['l7/GRPCRoute/shop/api-grpc', 'l7', {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', namespace: 'shop', name: 'api-grpc', spec: {
        parentRefs: [{ name: 'web', sectionName: 'https' }], hostnames: ['api.example.com'],
        rules: [{ matches: [{ method: { service: 'test.Echo' } }], backendRefs: [{ name: 'echo', port: 50051 }] }],
      },
    }],
    ['l7/HTTPRoute/shop/api', 'l7', {
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', namespace: 'shop', name: 'api', spec: {
        parentRefs: [{ name: 'web', sectionName: 'https' }], hostnames: ['api.example.com'],
        rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/v1' } }], backendRefs: [{ name: 'reviews', port: 9080 }] }],
      },
    }],
  ];
  const secrets: Record<string, unknown> = {
    'secret/istio-system/a-cert': secret('istio-system', 'a-cert', { 'tls.crt': certs.a!.cert, 'tls.key': certs.a!.key }),
    'secret/istio-system/b-cert': secret('istio-system', 'b-cert', { 'tls.crt': certs.b!.cert, 'tls.key': certs.b!.key }),
    'secret/istio-system/m-cert': secret('istio-system', 'm-cert', { 'tls.crt': certs.m!.cert, 'tls.key': certs.m!.key, 'ca.crt': clientCa.cert }),
    'secret/istio-system/o-cert': secret('istio-system', 'o-cert', { 'tls.crt': certs.o!.cert, 'tls.key': certs.o!.key, 'ca.crt': clientCa.cert }),
    'secret/shop/api-cert': secret('shop', 'api-cert', { 'tls.crt': certs.api!.cert, 'tls.key': certs.api!.key }),
    ...overrides.secrets,
  };
  const out = new Map<string, WireResource>();
  for (const [key, type, value] of objects) out.set(key, { key, type, json: JSON.stringify(value) });
  for (const [key, value] of Object.entries(secrets)) if (value !== undefined) out.set(key, { key, type: 'secret', json: JSON.stringify(value) });
  return out;
}

let version = 0;
async function apply(resources: Map<string, WireResource>): Promise<void> {
  const state = gatewayStateOf(resources, String(++version), { namespace: 'istio-system', name: 'istio-ingressgateway-service-account', identity: GATEWAY });
  mesh = state.mesh;
  proxy.update({ version: state.gateway.version, router: state.router, services: [...state.mesh.services.values()], workloads: state.mesh.workloads, authorizer: state.authorizer });
  await gateway.update(state.gateway);
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

interface Answer { status: number; body: string; headers: http.IncomingHttpHeaders; cert?: PeerCertificate; protocol?: string | false | null }

/** One HTTPS request to the gateway on a fresh connection, the certificate checked with `ca` for `servername`. */
function httpsGet(port: number, servername: string, path: string, opts: { ca?: string; cert?: TestCert; agent?: https.Agent } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port, path, servername, headers: { host: servername }, ca: opts.ca ?? userCa.cert, agent: opts.agent ?? false,
      ...(opts.cert ? { cert: opts.cert.cert, key: opts.cert.key } : {}),
    }, (res) => {
      let body = '';
      const socket = res.socket as TLSSocket;
      const cert = socket.getPeerCertificate();
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers, cert }));
    });
    req.on('error', reject);
    req.end();
  });
}

function httpGet(port: number, host: string, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers: { host }, agent: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A stand-in node agent (or waypoint) at ip:15008 as `identity`: records each tunnel, sends it to the app for its port. */
async function standIn(ip: string, identity: string, apps: Map<number, number>): Promise<void> {
  const server = new HboneServer({
    certificate: () => manager.acquire(identity), roots: () => manager.trustBundle,
    onTunnel: (stream, info) => {
      tunnels.push({ at: ip, authority: info.authority, ...(info.peerIdentity ? { peer: info.peerIdentity } : {}) });
      const port = apps.get(Number(info.authority.split(':').pop()));
      if (!port) return void stream.respond({ ':status': 503 }, { endStream: true });
      stream.respond({ ':status': 200 });
      const app = netConnect(port, '127.0.0.1');
      stream.pipe(app).pipe(stream);
      app.on('error', () => stream.destroy());
      stream.on('error', () => app.destroy());
    },
  });
  await listen(createServer((s) => void server.handle(s)), ip, 15008);
  closers.push(() => server.close());
}

beforeAll(async () => {
  manager = await meshCertificates(dir);
  userCa = await testCa('user CA');
  clientCa = await testCa('client CA');
  certs.a = await testLeaf(userCa, ['a.example.com']);
  certs.b = await testLeaf(userCa, ['*.b.example.com']);
  certs.m = await testLeaf(userCa, ['m.example.com']);
  certs.o = await testLeaf(userCa, ['o.example.com']);
  certs.api = await testLeaf(userCa, ['api.example.com']);
  certs.client = await testLeaf(clientCa, ['client.example.com'], 'client');
  certs.partner = await testLeaf(clientCa, ['partner.example.com'], 'client', [PARTNER]);
  passCert = await testLeaf(userCa, ['pass.example.com']);
  [HTTPS, HTTP, API, TCP] = [await freePort(), await freePort(), await freePort(), await freePort()];

  // The app behind reviews: what it was asked and with which forwarding headers.
  const app = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ app: 'reviews', url: req.url, host: req.headers.host, xfp: req.headers['x-forwarded-proto'], xff: req.headers['x-forwarded-for'], rid: req.headers['x-request-id'], tp: req.headers.traceparent }));
  });
  const wpApp = http.createServer((req, res) => res.end(JSON.stringify({ app: 'waypoint', url: req.url, host: req.headers.host })));
  // The passthrough backend terminates TLS itself, with its own certificate.
  const tlsApp = createTlsServer({ cert: passCert.cert, key: passCert.key }, (s) => s.end('passed through\n'));
  // A gRPC app (h2c): a unary answer with its status in trailers.
  const grpcApp = http2.createServer();
  grpcApp.on('stream', (stream, headers) => {
    stream.resume();
    stream.on('end', () => {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'x-path': String(headers[':path']) }));
      stream.end(Buffer.from([0, 0, 0, 0, 2, 0x6f, 0x6b]));
    });
  });
  await standIn(ENDPOINT_IP, REVIEWS, new Map([[9080, await listen(app)], [8443, await listen(tlsApp)], [50051, await listen(grpcApp)]]));
  await standIn(WAYPOINT_IP, WAYPOINT, new Map([[9090, await listen(wpApp)]]));

  proxy = new WaypointProxy({ gateway: { namespace: 'istio-system', name: 'istio-ingressgateway-service-account' }, tracer: new Tracer({ sampler: new Sampler(100), sink: { add: (span) => spans.push(span) } }), identity: GATEWAY, certificate: () => manager.acquire(GATEWAY), roots: () => manager.trustBundle, socket: loopbackSocket, viaWaypoints: true, protocolByPort: true });
  const accessLog = pino({ level: 'info' }, { write: (line: string) => void access.push(JSON.parse(line) as Record<string, unknown>) });
  proxy.onRequest = requestReporter(new RequestMetrics(metrics.registry), accessLog, () => mesh, () => gatewayPeer(mesh, GATEWAY, 'istio-system', 'istio-ingressgateway-service-account'));
  const self = () => gatewayPeer(mesh, GATEWAY, 'istio-system', 'istio-ingressgateway-service-account');
  gateway = new IngressListeners({ proxy, host: '127.0.0.1', accessLog, streamMetrics: streamReporter(metrics, () => mesh, self) });
  closers.push(() => gateway.close(), () => proxy.close());
  await apply(view());
});

afterAll(async () => {
  for (const c of closers.reverse()) await c();
  manager?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('ingress gateway: TLS', () => {
  it('listens on the ports its servers name', () => {
    expect(gateway.ports).toEqual([HTTPS, HTTP, API, TCP].sort((a, b) => a - b));
  });

  it('picks the certificate by SNI (exact and wildcard hosts), checked by the client with the user CA', async () => {
    const a = await httpsGet(HTTPS, 'a.example.com', '/');
    expect(a.status).toBe(200);
    expect(a.cert?.serialNumber.toLowerCase()).toBe(certs.a!.serial.toLowerCase());
    const b = await httpsGet(HTTPS, 'shop.b.example.com', '/');
    expect(b.status).toBe(200);
    expect(b.cert?.serialNumber.toLowerCase()).toBe(certs.b!.serial.toLowerCase());
    // The client refuses a certificate that is not for the name it asked for: SNI chose right.
    await expect(httpsGet(HTTPS, 'a.example.com', '/', { ca: clientCa.cert })).rejects.toMatchObject({ code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
  });

  it('closes a connection whose SNI no server serves, and one that is not TLS', async () => {
    await expect(httpsGet(HTTPS, 'unknown.example.com', '/')).rejects.toMatchObject({ code: expect.stringMatching(/ECONNRESET|EPIPE/) });
    const garbage = await new Promise<string>((resolve) => {
      const s = netConnect(HTTPS, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nhost: a\r\n\r\n'));
      let got = '';
      s.on('data', (c: Buffer) => { got += c.toString(); });
      s.on('close', () => resolve(got));
      s.on('error', () => undefined);
    });
    expect(garbage).toBe('');
  });

  it('picks up a rotated Secret without restart: new handshakes get the new certificate, a kept connection its old one', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
    closers.push(() => agent.destroy());
    const before = await httpsGet(HTTPS, 'a.example.com', '/', { agent });
    const old = certs.a!;
    certs.a = await testLeaf(userCa, ['a.example.com']);
    await apply(view());
    const fresh = await httpsGet(HTTPS, 'a.example.com', '/');
    expect(fresh.cert?.serialNumber.toLowerCase()).toBe(certs.a.serial.toLowerCase());
    expect(fresh.cert?.serialNumber.toLowerCase()).not.toBe(old.serial.toLowerCase());
    // The kept-alive connection is the one made before: it still carries requests with its certificate.
    const kept = await httpsGet(HTTPS, 'a.example.com', '/', { agent });
    expect(before.cert?.serialNumber.toLowerCase()).toBe(old.serial.toLowerCase());
    expect(kept.status).toBe(200);
    expect(kept.cert?.serialNumber.toLowerCase()).toBe(old.serial.toLowerCase());
  });

  it('MUTUAL refuses a client without a certificate in the handshake, and serves one with a certificate the CA signed', async () => {
    await expect(httpsGet(HTTPS, 'm.example.com', '/')).rejects.toMatchObject({ code: 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED' });
    const other = await testLeaf(userCa, ['intruder.example.com'], 'client');
    await expect(httpsGet(HTTPS, 'm.example.com', '/', { cert: other })).rejects.toMatchObject({ code: expect.stringMatching(/ECONNRESET|EPIPE/) });
    const ok = await httpsGet(HTTPS, 'm.example.com', '/', { cert: certs.partner });
    expect(ok.status).toBe(200);
    // The certificate's SPIFFE ID is the request's principal for policies at the gateway (one names it for this host).
    const noSpiffe = await httpsGet(HTTPS, 'm.example.com', '/', { cert: certs.client });
    expect(noSpiffe.status).toBe(403);
    expect(access.find((a) => (a.request as { authority?: string } | undefined)?.authority === 'm.example.com' && (a.response as { code?: number }).code === 200)).toMatchObject({ source: { principal: PARTNER } });
  });

  it('OPTIONAL_MUTUAL serves a client without a certificate and one with a good one, and closes one whose certificate does not verify', async () => {
    expect((await httpsGet(HTTPS, 'o.example.com', '/')).status).toBe(200);
    expect((await httpsGet(HTTPS, 'o.example.com', '/', { cert: certs.client })).status).toBe(200);
    const other = await testLeaf(userCa, ['intruder.example.com'], 'client');
    await expect(httpsGet(HTTPS, 'o.example.com', '/', { cert: other })).rejects.toMatchObject({ code: expect.stringMatching(/ECONNRESET|EPIPE/) });
  });

  it('leaves a server whose Secret is missing unserved (status says why), the others served', async () => {
    const status = gateway.status();
    const missing = status.servers.find((s) => s.hosts.includes('missing.example.com'))!;
    expect(missing.served).toBe(false);
    expect(missing.problem).toMatch(/Secret istio-system\/no-such-secret not found/);
    expect(status.servers.find((s) => s.hosts.includes('a.example.com') && s.protocol === 'HTTPS')).toMatchObject({ served: true, certificate: { secret: 'istio-system/a-cert' } });
    expect(JSON.stringify(status)).not.toContain('PRIVATE KEY');
    await expect(httpsGet(HTTPS, 'missing.example.com', '/')).rejects.toMatchObject({ code: expect.stringMatching(/ECONNRESET|EPIPE/) });
  });

  it('PASSTHROUGH forwards the TLS bytes by SNI: the client sees the backend\'s own certificate', async () => {
    const { text, cert } = await new Promise<{ text: string; cert: PeerCertificate }>((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port: HTTPS, servername: 'pass.example.com', ca: userCa.cert }, () => {
        const cert = s.getPeerCertificate();
        let text = '';
        s.on('data', (c: Buffer) => { text += c.toString(); });
        s.on('end', () => resolve({ text, cert }));
      });
      s.on('error', reject);
    });
    expect(text).toBe('passed through\n');
    expect(cert.serialNumber.toLowerCase()).toBe(passCert.serial.toLowerCase());
    expect(tunnels.some((t) => t.at === ENDPOINT_IP && t.authority === `${ENDPOINT_IP}:8443` && t.peer === GATEWAY)).toBe(true);
  });
});

describe('ingress gateway: routing', () => {
  it('routes by host and path to a backend over HBONE with the gateway\'s identity, with forwarding headers', async () => {
    const r = await httpsGet(HTTPS, 'a.example.com', '/old/page?x=1');
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as Record<string, string>;
    expect(seen).toMatchObject({ app: 'reviews', url: '/new/page?x=1', host: 'a.example.com', xfp: 'https', xff: '127.0.0.1' });
    expect(seen.rid).toMatch(/[0-9a-f-]{36}/);
    // A server span per request, named as Istio's gateways name theirs; its context goes upstream.
    const span = spans.find((x) => x.attributes.get('guid:x-request-id') === seen.rid)!;
    expect(span).toMatchObject({ name: `a.example.com:${HTTPS}/*`, kind: 'server' });
    expect(seen.tp).toContain(span.context.traceId);
    // Tunnels are pooled: the gateway's tunnels to the endpoint, as the endpoint's agent saw them.
    expect(tunnels).toContainEqual({ at: ENDPOINT_IP, peer: GATEWAY, authority: `${ENDPOINT_IP}:9080` });
    expect(tunnels.every((t) => t.peer === GATEWAY)).toBe(true);
  });

  it('applies AuthorizationPolicy selecting the gateway\'s pods at the gateway (403), and not those for other workloads', async () => {
    const denied = await httpsGet(HTTPS, 'a.example.com', '/admin/users');
    expect(denied.status).toBe(403);
    expect(denied.body).toBe('RBAC: access denied\n');
    expect(access.find((a) => (a.request as { path?: string } | undefined)?.path === '/admin/users')).toMatchObject({ response: { code: 403 }, authorization: expect.stringContaining('no-admin') });
    expect((await httpsGet(HTTPS, 'a.example.com', '/administrator-not')).status).toBe(403);
    expect((await httpsGet(HTTPS, 'a.example.com', '/users')).status).toBe(200);
  });

  it('reaches a service bound to a waypoint through the waypoint (its VIP:port as authority)', async () => {
    const r = await httpsGet(HTTPS, 'a.example.com', '/ratings');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toMatchObject({ app: 'waypoint', url: '/ratings' });
    expect(tunnels).toContainEqual({ at: WAYPOINT_IP, peer: GATEWAY, authority: '10.96.7.73:9090' });
    // Reported with the waypoint's pod as the destination workload, the service as the destination service.
    const entry = access.find((a) => (a.request as { path?: string } | undefined)?.path === '/ratings');
    expect(entry).toMatchObject({ destination: { service: 'ratings.shop', upstream: `${WAYPOINT_IP}:15008` } });
    expect(await metrics.text()).toMatch(/istio_requests_total\{reporter="source"[^}]*destination_workload="waypoint"[^}]*destination_service="ratings.shop.svc.cluster.local"/);
  });

  it('serves plaintext HTTP by Host, answers 404 without a route, and redirects httpsRedirect servers', async () => {
    const plain = await httpGet(HTTP, 'plain.example.com:8080', '/x');
    expect(plain.status).toBe(200);
    expect(JSON.parse(plain.body)).toMatchObject({ app: 'reviews', url: '/x', xfp: 'http' });
    expect((await httpGet(HTTP, 'other.example.com', '/')).status).toBe(404);
    expect(await httpGet(HTTP, 'x.example.com', '/')).toMatchObject({ status: 200, body: 'from gw2' });
    const redirect = await httpGet(HTTP, 'secure.example.com', '/a/b?c=d');
    expect(redirect.status).toBe(301);
    expect(redirect.headers.location).toBe('https://secure.example.com/a/b?c=d');
  });

  it('sends a TCP server\'s bytes to its VirtualService tcp route over HBONE, one access-log line per stream', async () => {
    const answer = await new Promise<string>((resolve) => {
      const s = netConnect(TCP, '127.0.0.1', () => s.write('GET /over-tcp HTTP/1.1\r\nhost: raw\r\nconnection: close\r\n\r\n'));
      let got = '';
      s.on('data', (c: Buffer) => { got += c.toString(); });
      s.on('close', () => resolve(got));
      s.on('error', () => undefined);
    });
    expect(answer).toMatch(/^HTTP\/1.1 200/);
    expect(answer).toContain('"url":"/over-tcp"');
    await expect.poll(() => access.find((a) => (a.listener as { port?: number } | undefined)?.port === TCP)).toMatchObject({
      route: 'shop/tcp#tcp0', destination: { service: 'reviews.shop', port: 9080 }, upstream: `${ENDPOINT_IP}:9080`, response: { flags: '-' },
    });
    // Istio's TCP metrics, as a gateway reports them.
    const text = await metrics.text();
    const opened = text.split('\n').find((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('destination_service="reviews.shop.svc.cluster.local"'));
    expect(opened).toMatch(/reporter="source",source_workload="istio-ingressgateway",source_workload_namespace="istio-system"/);
    expect(opened).toContain('destination_workload="reviews"');
    expect(text).toMatch(/istio_tcp_connections_closed_total\{reporter="source"[^}]*destination_service="reviews.shop.svc.cluster.local"[^}]*\} [1-9]/);
    expect(text).toMatch(/istio_tcp_sent_bytes_total\{reporter="source"[^}]*destination_service="reviews.shop.svc.cluster.local"[^}]*\} [1-9]/);
  });

  it('serves HTTP/2 with prior knowledge (h2c) on a plaintext port, sent to an HTTP/1.1 app as HTTP/1.1 (its port is named http)', async () => {
    const { connect } = await import('node:http2');
    const session = connect(`http://127.0.0.1:${HTTP}`);
    closers.push(() => session.destroy());
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const s = session.request({ ':path': '/h2c', ':authority': 'plain.example.com' });
      let body = '';
      let status = 0;
      s.on('response', (h) => { status = Number(h[':status']); });
      s.on('data', (c: Buffer) => { body += c.toString(); });
      s.on('end', () => resolve({ status, body }));
      s.on('error', reject);
    });
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({ app: 'reviews', url: '/h2c', host: 'plain.example.com', xfp: 'http' });
  });

  it('answers 404 for a Host the SNI-chosen server does not serve', async () => {
    const r = await new Promise<number>((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', port: HTTPS, path: '/', servername: 'a.example.com', headers: { host: 'plain.example.com' }, ca: userCa.cert, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(r).toBe(404);
  });

  it('serves a Gateway API listener with its HTTPRoute (hostnames, sectionName), over HTTP/2 by ALPN too', async () => {
    const r = await httpsGet(API, 'api.example.com', '/v1/items');
    expect(r.status).toBe(200);
    expect(r.cert?.serialNumber.toLowerCase()).toBe(certs.api!.serial.toLowerCase());
    expect((await httpsGet(API, 'api.example.com', '/v2')).status).toBe(404);
    const { connect } = await import('node:http2');
    const session = connect(`https://api.example.com:${API}`, { ca: userCa.cert, servername: 'api.example.com', host: '127.0.0.1' } as never);
    closers.push(() => session.destroy());
    const h2 = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const s = session.request({ ':path': '/v1/h2' });
      let body = '';
      let status = 0;
      s.on('response', (h) => { status = Number(h[':status']); });
      s.on('data', (c: Buffer) => { body += c.toString(); });
      s.on('end', () => resolve({ status, body }));
      s.on('error', reject);
    });
    expect(h2.status).toBe(200);
    expect(JSON.parse(h2.body)).toMatchObject({ app: 'reviews', url: '/v1/h2', xfp: 'https' });
  });

  it('sends gRPC on a Gateway API listener to its GRPCRoute\'s backend over HTTP/2, trailers and all; other paths to the HTTPRoute', async () => {
    const session = http2.connect(`https://api.example.com:${API}`, { ca: userCa.cert, servername: 'api.example.com', host: '127.0.0.1' } as never);
    closers.push(() => session.destroy());
    const call = await new Promise<{ status: number; trailers: http2.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const s = session.request({ ':method': 'POST', ':path': '/test.Echo/Unary', 'content-type': 'application/grpc', te: 'trailers' });
      const chunks: Buffer[] = [];
      let status = 0;
      let trailers: http2.IncomingHttpHeaders = {};
      s.on('response', (h) => { status = Number(h[':status']); });
      s.on('trailers', (t) => { trailers = t; });
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => resolve({ status, trailers, body: Buffer.concat(chunks) }));
      s.on('error', reject);
      s.end(Buffer.from([0, 0, 0, 0, 2, 0x68, 0x69]));
    });
    expect(call).toMatchObject({ status: 200, trailers: { 'grpc-status': '0', 'x-path': '/test.Echo/Unary' } });
    expect(call.body.subarray(5).toString()).toBe('ok');
    const text = await metrics.text();
    expect(text).toMatch(/istio_requests_total\{reporter="source"[^}]*destination_service="echo.shop.svc.cluster.local"[^}]*request_protocol="grpc"[^}]*grpc_response_status="0"/);
    expect((await httpsGet(API, 'api.example.com', '/v1/still-http')).status).toBe(200);
  });

  it('reports each request as Istio\'s gateways do: reporter="source", the gateway as source, the endpoint as destination', async () => {
    await httpsGet(HTTPS, 'a.example.com', '/metrics-check');
    const text = await metrics.text();
    const line = text.split('\n').find((l) => l.startsWith('istio_requests_total{') && l.includes('response_code="200"') && l.includes('destination_service="reviews.shop.svc.cluster.local"'));
    expect(line).toBeDefined();
    expect(line).toContain('reporter="source"');
    expect(line).toContain('source_workload="istio-ingressgateway"');
    expect(line).toContain('source_workload_namespace="istio-system"');
    expect(line).toContain(`source_principal="${GATEWAY}"`);
    expect(line).toContain('destination_workload="reviews"');
    expect(line).toContain(`destination_principal="${REVIEWS}"`);
    expect(text).toMatch(/istio_requests_total\{[^}]*reporter="source"[^}]*response_code="404"/);
    const entry = access.find((a) => (a.request as { path?: string } | undefined)?.path === '/metrics-check');
    expect(entry).toMatchObject({ source: { principal: null, ip: '127.0.0.1' }, destination: { service: 'reviews.shop', upstream: `${ENDPOINT_IP}:9080` }, response: { code: 200 } });
  });
});
