/**
 * A waypoint's proxy-config, in process: each view built from a waypoint's state (its bound
 * services with their VirtualService, HTTPRoute and DestinationRule, the L7 policies bound to
 * it, its certificate, its endpoints with outlier state, no connections); its admin endpoint
 * (routes, 404, 405, read-only); `ambit proxy-config --waypoint` on a local cluster (the pod's
 * network namespace, with a stand-in for the socket made there) and on Kubernetes (the waypoint's
 * pod by its Gateway label, a real port-forward round trip through the stand-in API server), its
 * tables and its errors.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { PROXY_CONFIG_API_VERSION, type ProxyConfigAnswer, type ProxyConfigAnswers } from '../../src/api/proxy-config.js';
import { buildProgram } from '../../src/cli/main.js';
import { parseWaypointRef, renderProxyConfig, waypointFromLocal } from '../../src/cli/proxy-config.js';
import type { ConfigObject, Service, Workload } from '../../src/config/model.js';
import type { CertificateSummary } from '../../src/identity/cert-manager.js';
import { ClusterLayout } from '../../src/local/layout.js';
import { writeState, type ClusterState } from '../../src/local/state.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { waypointAdminAnswer, WaypointAdmin } from '../../src/waypoint/admin.js';
import { L7Authorizer } from '../../src/waypoint/authz.js';
import { waypointConfigView, type WaypointConfigSource } from '../../src/waypoint/proxy-config.js';
import { OutlierDetector } from '../../src/waypoint/resilience.js';
import { Router } from '../../src/waypoint/routing.js';
import { FakeApiServer, writeKubeconfig } from '../helpers/fake-apiserver.js';

const WP_ID = 'spiffe://cluster.local/ns/shop/sa/wp';
const workload = (name: string, ip: string, labels: Record<string, string>): Workload => ({
  uid: `uid-${name}`, name, workload: name.replace(/-\d+$/, ''), namespace: 'shop', serviceAccount: 'reviews', identity: 'spiffe://cluster.local/ns/shop/sa/reviews',
  ips: [ip], node: 'node-2', labels, enrolled: true, ports: { http: 9080 },
});
const workloads = [workload('reviews-1', '10.244.2.5', { app: 'reviews', version: 'v1' }), workload('reviews-2', '10.244.1.6', { app: 'reviews', version: 'v2' })];
const reviews: Service = {
  namespace: 'shop', name: 'reviews', hostname: 'reviews.shop.svc.cluster.local', vips: ['10.96.0.30'],
  ports: [{ name: 'http', port: 9080, targetPort: 'http', protocol: 'TCP' }], endpoints: workloads.map((w) => w.uid), waypoint: { namespace: 'shop', name: 'wp' },
};
const ratings: Service = {
  namespace: 'shop', name: 'ratings', hostname: 'ratings.shop.svc.cluster.local', vips: ['10.96.0.31'],
  ports: [{ port: 80, targetPort: 9080, protocol: 'TCP' }], endpoints: [], waypoint: { namespace: 'shop', name: 'wp' },
};
const l7: ConfigObject[] = [
  { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'reviews-canary', spec: { hosts: ['reviews'], http: [{ route: [{ destination: { host: 'reviews', subset: 'v1' }, weight: 90 }, { destination: { host: 'reviews', subset: 'v2' }, weight: 10 }] }] } },
  { apiVersion: 'networking.istio.io/v1', kind: 'DestinationRule', namespace: 'shop', name: 'reviews', spec: { host: 'reviews', subsets: [{ name: 'v1', labels: { version: 'v1' } }, { name: 'v2', labels: { version: 'v2' } }], trafficPolicy: { outlierDetection: { consecutive5xxErrors: 1, maxEjectionPercent: 100, baseEjectionTime: '30s' } } } },
  { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', namespace: 'shop', name: 'ratings-route', spec: { parentRefs: [{ group: '', kind: 'Service', name: 'ratings', port: 80 }], rules: [{ backendRefs: [{ name: 'ratings', port: 80 }] }] } },
];
const policies: ConfigObject[] = [
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'get-only', spec: { targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'wp' }], action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/web'] } }], to: [{ operation: { methods: ['GET'] } }] }] } },
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'no-admin', spec: { targetRefs: [{ group: '', kind: 'Service', name: 'ratings' }], action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin/*'] } }] }] } },
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'istio-system', name: 'mesh-audit', spec: { targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'GatewayClass', name: 'ambit-waypoint' }], action: 'AUDIT', rules: [{}] } },
  // Another waypoint's, and the node agent's: not this waypoint's.
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'other-wp', spec: { targetRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'other' }], rules: [{}] } },
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'l4', spec: { selector: { matchLabels: { app: 'reviews' } }, rules: [{}] } },
];
const cert: CertificateSummary = { identity: WP_ID, serial: '0b1f', notBefore: '2025-01-01T00:00:00.000Z', notAfter: '2025-01-02T00:00:00.000Z', rotatesAt: '2025-01-01T12:00:00.000Z', state: 'valid' } as CertificateSummary;

/** reviews v1's endpoint was sent one 503: with consecutive5xxErrors 1 it is ejected. */
function upstreams(): ReturnType<WaypointConfigSource['upstreams']> {
  const outlier = new OutlierDetector(l7[1]!.spec && (l7[1]!.spec as { trafficPolicy: { outlierDetection: unknown } }).trafficPolicy.outlierDetection, { now: () => Date.now() });
  outlier.setEndpoints(['uid-reviews-1']);
  outlier.record('uid-reviews-1', { status: 503 });
  return [{ service: 'shop/reviews', port: 9080, subset: 'v1', members: [{ id: 'uid-reviews-1', address: '10.244.2.5:9080' }], outlier }];
}

const SOURCE: WaypointConfigSource = {
  self: { namespace: 'shop', name: 'wp', pod: 'wp-waypoint' }, node: '', identity: WP_ID,
  state: () => ({
    version: 'v9', router: new Router(l7, [reviews, ratings]), services: [reviews, ratings], workloads: new Map(workloads.map((w) => [w.uid, w])),
    authorizer: new L7Authorizer(policies),
  }),
  certs: { list: () => [cert, { identity: 'spiffe://cluster.local/ns/shop/sa/someone-else', state: 'valid' } as CertificateSummary] },
  upstreams,
};
const envelope = { apiVersion: PROXY_CONFIG_API_VERSION as typeof PROXY_CONFIG_API_VERSION, node: '', configVersion: 'v9', waypoint: { namespace: 'shop', name: 'wp', pod: 'wp-waypoint' } };

describe('the waypoint\'s views', () => {
  it('services: those bound to it, with the routes and the DestinationRule that apply', () => {
    expect(waypointConfigView('services', SOURCE)).toEqual({
      ...envelope, kind: 'Services', items: [
        {
          namespace: 'shop', name: 'ratings', hostname: 'ratings.shop.svc.cluster.local', vips: ['10.96.0.31'], ports: [{ name: null, port: 80, targetPort: 9080, protocol: 'TCP' }],
          endpoints: 0, waypoint: { namespace: 'shop', name: 'wp' }, routes: [{ kind: 'HTTPRoute', namespace: 'shop', name: 'ratings-route', ports: [80], consumer: null }], destinationRule: null,
        },
        {
          namespace: 'shop', name: 'reviews', hostname: 'reviews.shop.svc.cluster.local', vips: ['10.96.0.30'], ports: [{ name: 'http', port: 9080, targetPort: 'http', protocol: 'TCP' }],
          endpoints: 2, waypoint: { namespace: 'shop', name: 'wp' }, routes: [{ kind: 'VirtualService', namespace: 'shop', name: 'reviews-canary', ports: null, consumer: null }], destinationRule: 'shop/reviews',
        },
      ],
    } satisfies ProxyConfigAnswers['services']);
  });

  it('policies: the L7 AuthorizationPolicies bound to it, its services or every waypoint, and what binds each', () => {
    const answer = waypointConfigView('policies', SOURCE);
    expect(answer.kind).toBe('Policies');
    expect(answer.items).toEqual([
      { namespace: 'istio-system', name: 'mesh-audit', kind: 'AuthorizationPolicy', scope: 'waypoint', selector: null, action: 'AUDIT', enforced: false, rules: ['any'], warnings: [], targetRefs: ['GatewayClass ambit-waypoint'] },
      { namespace: 'shop', name: 'get-only', kind: 'AuthorizationPolicy', scope: 'waypoint', selector: null, action: 'ALLOW', enforced: true, rules: ['from principals=cluster.local/ns/shop/sa/web; to methods=GET'], warnings: [], targetRefs: ['Gateway shop/wp'] },
      { namespace: 'shop', name: 'no-admin', kind: 'AuthorizationPolicy', scope: 'waypoint', selector: null, action: 'DENY', enforced: true, rules: ['to paths=/admin/*'], warnings: [], targetRefs: ['Service shop/ratings'] },
    ]);
  });

  it('certs: its own certificate only, fetching before the CA answered', () => {
    expect(waypointConfigView('certs', SOURCE).items).toEqual([
      { identity: WP_ID, serial: '0b1f', notBefore: '2025-01-01T00:00:00.000Z', notAfter: '2025-01-02T00:00:00.000Z', renewsAt: '2025-01-01T12:00:00.000Z', state: 'valid', error: null, pods: [] },
    ]);
    expect(waypointConfigView('certs', { ...SOURCE, certs: { list: () => [] } }).items).toEqual([
      { identity: WP_ID, serial: null, notBefore: null, notAfter: null, renewsAt: null, state: 'fetching', error: null, pods: [] },
    ]);
  });

  it('workloads: the endpoints of its services, and outlier detection\'s view of those a request went to', () => {
    const items = waypointConfigView('workloads', SOURCE).items;
    expect(items.map((w) => [w.name, w.status, w.services, w.connections, w.certificate])).toEqual([
      ['reviews-1', 'remote', ['shop/reviews'], null, null],
      ['reviews-2', 'remote', ['shop/reviews'], null, null],
    ]);
    expect(items[0]!.upstreams).toEqual([{
      service: 'shop/reviews', port: 9080, subset: 'v1', address: '10.244.2.5:9080',
      outlier: { ejected: true, ejections: 1, ejectionSeconds: 30, consecutive5xx: 0, consecutiveGatewayErrors: 1, consecutiveLocalOriginFailures: 0 },
    }]);
    expect(items[1]!.upstreams).toEqual([]);
  });

  it('connections: none listed (not tracked one by one), and nothing at all before the first config', () => {
    expect(waypointConfigView('connections', SOURCE)).toEqual({ ...envelope, kind: 'Connections', items: [] });
    const empty = { ...SOURCE, state: () => undefined };
    for (const view of ['workloads', 'services', 'policies'] as const) expect(waypointConfigView(view, empty)).toMatchObject({ configVersion: null, items: [] });
    expect(waypointConfigView('certs', empty).items).toHaveLength(1);
  });
});

describe('the waypoint\'s admin endpoint', () => {
  let admin: WaypointAdmin;
  const bundle = { trustBundle: [] as string[], list: () => SOURCE.certs.list() };

  beforeAll(async () => {
    admin = await WaypointAdmin.start({ certificates: bundle, proxyConfig: SOURCE, log: silentLogger }, '127.0.0.1', 0);
  });
  afterAll(() => admin.close());

  const get = async (path: string, method = 'GET') => {
    const res = await fetch(`http://127.0.0.1:${admin.port}${path}`, { method });
    return { status: res.status, body: await res.json() as Record<string, unknown> };
  };

  it('serves /healthz, its own certificate, and every view', async () => {
    expect(await get('/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
    expect(await get('/certificates')).toEqual({ status: 200, body: { trustBundle: [], certificates: [cert] } });
    for (const view of ['workloads', 'services', 'policies', 'certs', 'connections']) {
      const { status, body } = await get(`/proxy-config/${view}`);
      expect(status).toBe(200);
      expect(body).toMatchObject({ apiVersion: PROXY_CONFIG_API_VERSION, waypoint: { namespace: 'shop', name: 'wp' } });
    }
  });

  it('is read-only, and names its views and routes', async () => {
    expect(await get('/proxy-config/routes')).toMatchObject({ status: 404, body: { views: ['workloads', 'services', 'policies', 'certs', 'connections'] } });
    expect(await get('/proxy-config/services', 'POST')).toMatchObject({ status: 405 });
    expect(await get('/logging', 'POST')).toMatchObject({ status: 404, body: { routes: expect.arrayContaining(['/healthz', '/certificates']) } });
    expect(await get('/healthz', 'DELETE')).toMatchObject({ status: 405 });
    expect(waypointAdminAnswer({ certificates: bundle, proxyConfig: SOURCE }, { method: 'GET', path: '/certs', segments: ['certs'] }).status).toBe(200);
  });
});

describe('ambit proxy-config --waypoint', () => {
  /** Runs `ambit ...` in this process; its stdout, or the error it failed with. */
  async function ambit(args: string[]): Promise<string> {
    let out = '';
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out += String(chunk);
      return true;
    });
    try {
      await buildProgram().parseAsync(args, { from: 'user' });
    } finally {
      spy.mockRestore();
    }
    return out;
  }

  it('takes NAMESPACE/NAME, and either --node or --waypoint', async () => {
    expect(parseWaypointRef('shop/wp')).toEqual({ namespace: 'shop', name: 'wp' });
    expect(() => parseWaypointRef('wp')).toThrow('--waypoint must be NAMESPACE/NAME');
    expect(() => parseWaypointRef('Shop/wp')).toThrow('--waypoint must be NAMESPACE/NAME');
    await expect(ambit(['proxy-config', 'services'])).rejects.toThrow('--node NODE (a node agent) or --waypoint NAMESPACE/NAME');
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await expect(ambit(['proxy-config', 'services', '--node', 'n', '--waypoint', 'shop/wp'])).rejects.toThrow(/cannot be used with/);
    } finally {
      stderr.mockRestore();
    }
  });

  it('tables: routes and DestinationRule per service, what binds each policy, endpoints with outlier state, no connections', () => {
    expect(renderProxyConfig(waypointConfigView('services', SOURCE))).toBe([
      'NAMESPACE  NAME     VIPS        PORTS           ENDPOINTS  ROUTES                              DESTINATION RULE',
      'shop       ratings  10.96.0.31  80/TCP->9080    0          HTTPRoute shop/ratings-route:80     -',
      'shop       reviews  10.96.0.30  9080/TCP->http  2          VirtualService shop/reviews-canary  shop/reviews',
    ].join('\n'));
    expect(renderProxyConfig(waypointConfigView('policies', SOURCE))).toContain('shop          no-admin    DENY    yes       Service shop/ratings         to paths=/admin/*');
    const workloadsTable = renderProxyConfig(waypointConfigView('workloads', SOURCE));
    expect(workloadsTable).toMatch(/reviews-1 .* shop\/reviews +10\.244\.2\.5:9080 +ejected \(shop\/reviews:9080\)/);
    expect(workloadsTable).toMatch(/reviews-2 .* shop\/reviews +- +-$/m);
    expect(renderProxyConfig(waypointConfigView('connections', SOURCE))).toContain('waypoint shop/wp does not list its connections one by one');
    expect(renderProxyConfig(waypointConfigView('services', { ...SOURCE, state: () => undefined }))).toBe('no services at waypoint shop/wp (pod wp-waypoint): it has no config from the controller yet');
  });

  describe('a local cluster', () => {
    const root = mkdtempSync(join(tmpdir(), 'ambit-pcw-local-'));
    const saved = process.env.AMBIT_LOCAL_STATE;
    beforeAll(() => {
      process.env.AMBIT_LOCAL_STATE = root;
      const pod = (namespace: string, name: string, labels: Record<string, string>) => ({ uid: `u-${name}`, namespace, name, node: 'node-1', ip: '10.244.1.9', labels, annotations: {}, spec: { containers: [] }, createdAt: '' });
      writeState(new ClusterLayout('pcw').stateFile, {
        version: 1, name: 'pcw', createdAt: new Date().toISOString(), resources: {}, services: {},
        nodes: [{ name: 'node-1', index: 1, ip: '172.30.0.11', podCidr: '10.244.1.0/24' }],
        pods: {
          'shop/wp-waypoint': pod('shop', 'wp-waypoint', { 'gateway.networking.k8s.io/gateway-name': 'wp' }),
          'shop/web': pod('shop', 'web', { app: 'web' }),
        },
      } as unknown as ClusterState);
    });
    afterAll(() => {
      if (saved === undefined) delete process.env.AMBIT_LOCAL_STATE;
      else process.env.AMBIT_LOCAL_STATE = saved;
      rmSync(root, { recursive: true, force: true });
    });

    it('asks 127.0.0.1:15000 from a socket in the waypoint pod\'s network namespace', async () => {
      const asked: unknown[] = [];
      const answer = await waypointFromLocal('services', { namespace: 'shop', name: 'wp' }, 'pcw', (netns, host, port, path) => {
        asked.push([netns, host, port, path]);
        return Promise.resolve({ status: 200, body: JSON.stringify(waypointConfigView('services', SOURCE)) });
      });
      expect(asked).toEqual([[`/run/netns/${new ClusterLayout('pcw').podNetns('shop', 'wp-waypoint')}`, '127.0.0.1', 15000, '/proxy-config/services']]);
      expect(answer).toMatchObject({ kind: 'Services', waypoint: { name: 'wp' }, items: [{ name: 'ratings' }, { name: 'reviews' }] });
    });

    it('names the waypoints the cluster has, and a waypoint that does not answer', async () => {
      await expect(waypointFromLocal('services', { namespace: 'shop', name: 'nope' }, 'pcw')).rejects.toMatchObject({ message: 'cluster pcw has no waypoint shop/nope; its waypoints: shop/wp', hint: '--waypoint shop/wp' });
      await expect(waypointFromLocal('services', { namespace: 'shop', name: 'wp' }, 'missing')).rejects.toMatchObject({ message: 'cluster missing does not exist' });
      const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:15000'), { code: 'ECONNREFUSED' });
      await expect(waypointFromLocal('certs', { namespace: 'shop', name: 'wp' }, 'pcw', () => Promise.reject(refused))).rejects.toMatchObject({
        message: 'the waypoint shop/wp (pod wp-waypoint, cluster pcw) does not answer on 127.0.0.1:15000 in its network namespace (ECONNREFUSED)',
        hint: expect.stringContaining('ambit local logs -n shop wp-waypoint --cluster pcw'),
      });
    });
  });

  describe('a Kubernetes cluster', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-pcw-kube-'));
    const kubeconfig = join(dir, 'kubeconfig');
    let server: FakeApiServer;
    let admin: WaypointAdmin;
    const wpPod = (name: string, phase: string, gateway = 'wp') => ({
      metadata: { name, namespace: 'shop', labels: { 'gateway.networking.k8s.io/gateway-name': gateway } }, spec: { nodeName: 'node-a' }, status: { phase },
    });

    beforeAll(async () => {
      admin = await WaypointAdmin.start({ certificates: { trustBundle: [], list: () => [cert] }, proxyConfig: SOURCE, log: silentLogger }, '127.0.0.1', 0);
    });
    beforeEach(async () => {
      server = new FakeApiServer([{ group: '', version: 'v1', kind: 'Pod', plural: 'pods' }]);
      await server.start();
      writeKubeconfig(kubeconfig, server.url);
      server.apply('Pod', wpPod('wp-6d4f-aaaa', 'Running'));
      server.apply('Pod', wpPod('other-6d4f-bbbb', 'Running', 'other'));
      server.apply('Pod', { metadata: { name: 'web', namespace: 'shop', labels: { app: 'web' } }, spec: {}, status: { phase: 'Running' } });
      server.portForward = (_ns, _pod, port) => connect(port === 15000 ? admin.port : 1, '127.0.0.1');
    });
    afterEach(() => server.close());
    afterAll(async () => {
      await admin.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('finds the waypoint\'s pod by its Gateway label and asks its admin port through a port-forward', async () => {
      const json = JSON.parse(await ambit(['proxy-config', 'policies', '--waypoint', 'shop/wp', '--kubeconfig', kubeconfig, '--json'])) as ProxyConfigAnswer;
      expect(json).toMatchObject({ kind: 'Policies', waypoint: { namespace: 'shop', name: 'wp' }, items: [{ name: 'mesh-audit' }, { name: 'get-only' }, { name: 'no-admin' }] });
      const urls = server.requests.map((r) => `${r.method} ${r.url}`);
      expect(urls).toContain(`GET /api/v1/namespaces/shop/pods?labelSelector=${encodeURIComponent('gateway.networking.k8s.io/gateway-name=wp')}`);
      expect(urls).toContain('UPGRADE /api/v1/namespaces/shop/pods/wp-6d4f-aaaa/portforward?ports=15000');
      expect(await ambit(['proxy-config', 'certs', '--waypoint', 'shop/wp', '--kubeconfig', kubeconfig])).toMatch(new RegExp(`^IDENTITY[^\\n]*\\n${WP_ID}\\s+0b1f\\s`));
    }, 20_000);

    it('names the waypoint when it has no pod, or none that runs', async () => {
      await expect(ambit(['proxy-config', 'services', '--waypoint', 'shop/gone', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
        message: 'no pod of waypoint shop/gone (label gateway.networking.k8s.io/gateway-name=gone) in namespace shop',
      });
      server.apply('Pod', wpPod('wp-6d4f-aaaa', 'Pending'));
      await expect(ambit(['proxy-config', 'services', '--waypoint', 'shop/wp', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
        message: 'the pod shop/wp-6d4f-aaaa of waypoint shop/wp is Pending', hint: 'kubectl describe pod -n shop wp-6d4f-aaaa',
      });
      expect(server.requests.some((r) => r.method === 'UPGRADE')).toBe(false);
    });
  });
});
