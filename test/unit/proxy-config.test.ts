/**
 * The node agent's proxy-config views (src/node/proxy-config.ts) built from an agent-like state —
 * its config dump, enrolled and failed pods, certificates and a real ConnectionTracker — and
 * served by the admin routes on TCP and on the control socket: the v1 envelope, each view's
 * items, and a 404 that names the views.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROXY_CONFIG_API_VERSION, PROXY_CONFIG_VIEWS, type ProxyConfigAnswer } from '../../src/api/proxy-config.js';
import { L4Authorizer } from '../../src/authz/l4.js';
import type { ConfigObject, Service, Workload } from '../../src/config/model.js';
import type { CertificateSummary } from '../../src/identity/cert-manager.js';
import { AdminServer, type AdminSources } from '../../src/node/admin.js';
import type { ConfigDump, WorkloadsDump } from '../../src/node/agent.js';
import { serveControl } from '../../src/node/app.js';
import { ConnectionTracker } from '../../src/node/connections.js';
import { proxyConfigView, ruleSummary, type ProxyConfigSource } from '../../src/node/proxy-config.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { MeshMetrics } from '../../src/telemetry/metrics.js';

const TD = 'spiffe://cluster.local';
const id = (ns: string, sa: string) => `${TD}/ns/${ns}/sa/${sa}`;

function workload(ns: string, name: string, over: Partial<Workload> = {}): Workload {
  return {
    uid: `uid-${name}`, name, workload: name, namespace: ns, serviceAccount: name, identity: id(ns, name),
    ips: ['10.244.1.9'], node: 'node-1', labels: { app: name }, enrolled: true, ports: {}, ...over,
  };
}

const WORKLOADS: Workload[] = [
  workload('mesh', 'client', { ips: ['10.244.1.3'], workload: 'client-deploy', serviceAccount: 'client' }),
  workload('mesh', 'broken', { ips: ['10.244.1.4'] }),
  workload('mesh', 'fresh', { ips: ['10.244.1.5'] }),
  workload('mesh', 'server', { ips: ['10.244.2.2', 'fd00:10:244:2::2'], node: 'node-2', waypoint: 'wp' }),
  workload('mesh', 'optout', { ips: ['10.244.1.6'], waypoint: 'none', enrolled: false }),
  workload('legacy', 'old', { ips: ['10.244.1.7'], enrolled: false }),
];

const SERVICES: Service[] = [
  { namespace: 'mesh', name: 'server', hostname: 'server.mesh.svc.cluster.local', vips: ['10.96.0.20'], ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }, { port: 9090, targetPort: 9090, protocol: 'TCP' }], endpoints: ['uid-server', 'uid-other'], waypoint: { namespace: 'mesh', name: 'wp' } },
  { namespace: 'legacy', name: 'old', hostname: 'old.legacy.svc.cluster.local', vips: ['10.96.0.21'], ports: [{ port: 5432, targetPort: 5432, protocol: 'TCP' }], endpoints: [] },
];

const policy = (kind: string, namespace: string, name: string, spec: unknown): ConfigObject => ({ apiVersion: 'security.istio.io/v1', kind, namespace, name, spec });
const POLICIES: ConfigObject[] = [
  policy('AuthorizationPolicy', 'mesh', 'allow-client', {
    selector: { matchLabels: { app: 'server' } },
    rules: [
      { from: [{ source: { principals: ['cluster.local/ns/mesh/sa/client'] } }, { source: { namespaces: ['ops'] } }], to: [{ operation: { ports: ['8080'] } }], when: [{ key: 'source.ip', values: ['10.244.0.0/16'] }] },
      {},
    ],
  }),
  policy('AuthorizationPolicy', 'mesh', 'deny-legacy', { action: 'DENY', rules: [{ from: [{ source: { notNamespaces: ['mesh'] } }] }] }),
  policy('AuthorizationPolicy', 'mesh', 'l7-only', { targetRefs: [{ kind: 'Service', name: 'server' }], rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }),
  policy('AuthorizationPolicy', 'mesh', 'audit', { action: 'AUDIT', rules: [{}] }),
  policy('AuthorizationPolicy', 'mesh', 'allow-get', { rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }),
  policy('AuthorizationPolicy', 'istio-system', 'allow-nothing', {}),
  policy('PeerAuthentication', 'mesh', 'strict', { selector: { matchLabels: { app: 'server' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { 8080: { mode: 'PERMISSIVE' } } }),
  policy('PeerAuthentication', 'istio-system', 'default', { mtls: {} }),
  { apiVersion: 'networking.istio.io/v1', kind: 'Sidecar', namespace: 'mesh', name: 'not-a-policy', spec: {} },
];

const CERTS: CertificateSummary[] = [
  { identity: id('mesh', 'client'), serial: '0abc', notBefore: '2025-01-01T00:00:00.000Z', notAfter: '2025-01-02T00:00:00.000Z', rotatesAt: '2025-01-01T12:00:00.000Z', state: 'valid', pods: 1 },
  { identity: id('mesh', 'broken'), state: 'retrying', lastError: 'the CA is unreachable', pods: 1 },
];

const tracker = new ConnectionTracker(new MeshMetrics(), silentLogger);
const START = Date.parse('2025-01-01T10:00:00.000Z');

const source: ProxyConfigSource = {
  rootNamespace: 'istio-system',
  configDump: (): ConfigDump => ({
    node: 'node-1', version: 'v42', connected: true, workloads: WORKLOADS, services: SERVICES, policies: POLICIES, waypoints: [],
    warnings: new L4Authorizer(POLICIES, { rootNamespace: 'istio-system' }).warnings,
  }),
  workloads: (): WorkloadsDump => ({
    node: 'node-1',
    enrolled: [
      { uid: 'uid-client', namespace: 'mesh', name: 'client', identity: id('mesh', 'client'), ips: ['10.244.1.3'], netns: '/run/netns/x', netnsCookie: '7', connections: 2, certificate: { serial: 'old', notAfter: '2024-12-31T00:00:00.000Z' } },
      // Enrolled on the CNI plugin's word: the controller does not list it yet.
      { uid: 'uid-held', namespace: 'mesh', name: 'held', identity: id('mesh', 'held-sa'), ips: ['10.244.1.8'], netns: '/run/netns/y', netnsCookie: '8', connections: 0, certificate: { serial: '0def', notAfter: '2025-01-02T00:00:00.000Z' } },
    ],
    failed: [{ uid: 'uid-broken', error: 'certificate for spiffe://cluster.local/ns/mesh/sa/broken: the CA is unreachable' }],
  }),
  connections: tracker,
  certs: { list: () => CERTS },
};

beforeAll(() => {
  const out = tracker.begin({
    reporter: 'source', pod: 'mesh/client', mtls: true, path: 'hbone',
    source: { ip: '10.244.1.3', workload: 'client-deploy', namespace: 'mesh', identity: id('mesh', 'client') },
    destination: { ip: '10.244.2.2', port: 8080, workload: 'server', namespace: 'mesh', identity: id('mesh', 'server') },
    service: { hostname: 'server.mesh.svc.cluster.local', name: 'server', namespace: 'mesh' },
  });
  out.start = START;
  out.received = 120;
  out.sent = 4096;
  const probe = tracker.begin({
    reporter: 'destination', pod: 'mesh/client', mtls: false, path: 'plaintext', exempt: 'kubelet-probe',
    source: { ip: '172.30.0.11' }, destination: { ip: '10.244.1.3', port: 8080, workload: 'client-deploy', namespace: 'mesh', identity: id('mesh', 'client') },
  });
  probe.start = START + 30_000;
});

afterAll(() => tracker.close());

const NOW = START + 95_000;

describe('the views', () => {
  it('share one envelope: apiVersion, kind, node, configVersion, items', () => {
    const kinds = PROXY_CONFIG_VIEWS.map((v) => {
      const a = proxyConfigView(v, source, NOW);
      expect(Object.keys(a)).toEqual(['apiVersion', 'kind', 'node', 'configVersion', 'items']);
      expect(a).toMatchObject({ apiVersion: PROXY_CONFIG_API_VERSION, node: 'node-1', configVersion: 'v42' });
      expect(Array.isArray(a.items)).toBe(true);
      return a.kind;
    });
    expect(kinds).toEqual(['Workloads', 'Services', 'Policies', 'Certificates', 'Connections']);
  });

  it('says configVersion null before the first config', () => {
    const empty: ProxyConfigSource = { ...source, configDump: () => ({ ...source.configDump(), version: null, workloads: [], services: [], policies: [], warnings: [] }) };
    expect(proxyConfigView('services', empty, NOW)).toEqual({ apiVersion: PROXY_CONFIG_API_VERSION, kind: 'Services', node: 'node-1', configVersion: null, items: [] });
  });

  it('workloads: every workload known, with this node\'s enrollment, identity, waypoint, connections and certificate', () => {
    const items = proxyConfigView('workloads', source, NOW).items;
    expect(items.map((w) => `${w.namespace}/${w.name} ${w.status} ${w.protocol}`)).toEqual([
      'legacy/old not-meshed TCP',
      'mesh/broken failed HBONE',
      'mesh/client enrolled HBONE',
      'mesh/fresh pending HBONE',
      'mesh/held enrolled HBONE',
      'mesh/optout not-meshed TCP',
      'mesh/server remote HBONE',
    ]);
    const byName = Object.fromEntries(items.map((w) => [w.name, w]));
    expect(byName.client).toEqual({
      namespace: 'mesh', name: 'client', uid: 'uid-client', node: 'node-1', workload: 'client-deploy', serviceAccount: 'client',
      ips: ['10.244.1.3'], identity: 'spiffe://cluster.local/ns/mesh/sa/client', protocol: 'HBONE', status: 'enrolled', error: null,
      waypoint: null, connections: 2,
      // The certificate the manager holds now, not the one the pod was enrolled with.
      certificate: { serial: '0abc', notAfter: '2025-01-02T00:00:00.000Z' },
    });
    expect(byName.broken).toMatchObject({ status: 'failed', error: 'certificate for spiffe://cluster.local/ns/mesh/sa/broken: the CA is unreachable', connections: null, certificate: null });
    expect(byName.server).toMatchObject({ node: 'node-2', ips: ['10.244.2.2', 'fd00:10:244:2::2'], waypoint: { namespace: 'mesh', name: 'wp' }, error: null, connections: null });
    expect(byName.optout!.waypoint).toBeNull();
    expect(byName.held).toMatchObject({ node: 'node-1', serviceAccount: 'held-sa', identity: id('mesh', 'held-sa'), connections: 0, certificate: { serial: '0def', notAfter: '2025-01-02T00:00:00.000Z' } });
  });

  it('services: VIPs, ports, endpoint count and waypoint', () => {
    expect(proxyConfigView('services', source, NOW).items).toEqual([
      { namespace: 'legacy', name: 'old', hostname: 'old.legacy.svc.cluster.local', vips: ['10.96.0.21'], ports: [{ name: null, port: 5432, targetPort: 5432, protocol: 'TCP' }], endpoints: 0, waypoint: null },
      {
        namespace: 'mesh', name: 'server', hostname: 'server.mesh.svc.cluster.local', vips: ['10.96.0.20'],
        ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }, { name: null, port: 9090, targetPort: 9090, protocol: 'TCP' }],
        endpoints: 2, waypoint: { namespace: 'mesh', name: 'wp' },
      },
    ]);
  });

  it('policies: scope, action, whether the agent enforces it, rules in one line each, and its warnings', () => {
    const items = proxyConfigView('policies', source, NOW).items;
    expect(items.map((p) => [`${p.kind} ${p.namespace}/${p.name}`, p.scope, p.action, p.enforced])).toEqual([
      ['AuthorizationPolicy istio-system/allow-nothing', 'global', 'ALLOW', true],
      ['PeerAuthentication istio-system/default', 'global', 'UNSET', true],
      ['AuthorizationPolicy mesh/allow-client', 'workload', 'ALLOW', true],
      ['AuthorizationPolicy mesh/allow-get', 'namespace', 'ALLOW', true],
      ['AuthorizationPolicy mesh/audit', 'namespace', 'AUDIT', false],
      ['AuthorizationPolicy mesh/deny-legacy', 'namespace', 'DENY', true],
      ['AuthorizationPolicy mesh/l7-only', 'waypoint', 'ALLOW', false],
      ['PeerAuthentication mesh/strict', 'workload', 'STRICT', true],
    ]);
    const byName = Object.fromEntries(items.map((p) => [p.name, p]));
    expect(byName['allow-client']).toMatchObject({
      selector: { app: 'server' },
      rules: ['from principals=cluster.local/ns/mesh/sa/client | namespaces=ops; to ports=8080; when source.ip=10.244.0.0/16', 'any'],
      warnings: [],
    });
    expect(byName['allow-nothing']).toMatchObject({ selector: null, rules: [] });
    expect(byName['deny-legacy']!.rules).toEqual(['from namespaces!=mesh']);
    expect(byName.strict).toMatchObject({ selector: { app: 'server' }, rules: ['port 8080: PERMISSIVE'] });
    // The authorizer's own warnings, matched to their policy.
    expect(byName['l7-only']!.warnings).toEqual(['bound to a waypoint by targetRef(s): not applied by the node agent']);
    expect(byName.audit!.warnings).toEqual(['action AUDIT does not affect access: ignored']);
    expect(byName['allow-get']!.warnings).toEqual(['rules[0] uses L7 attributes (methods): an ALLOW rule with L7 attributes never matches at L4, so it allows nothing; bind the policy to a waypoint with targetRefs to enforce them']);
  });

  it('summarizes a rule\'s not-forms and conditions', () => {
    expect(ruleSummary({ from: [{ source: { principals: ['a', 'b'], notIpBlocks: ['10.0.0.0/8'] } }], when: [{ key: 'destination.port', notValues: ['22'] }] }))
      .toBe('from principals=a,b ipBlocks!=10.0.0.0/8; when destination.port!=22');
    expect(ruleSummary({})).toBe('any');
    expect(ruleSummary('not a rule')).toBe('any');
  });

  it('certs: serial, validity, renewal, state and error, and the pods that use each', () => {
    expect(proxyConfigView('certs', source, NOW).items).toEqual([
      { identity: id('mesh', 'broken'), serial: null, notBefore: null, notAfter: null, renewsAt: null, state: 'retrying', error: 'the CA is unreachable', pods: [] },
      { identity: id('mesh', 'client'), serial: '0abc', notBefore: '2025-01-01T00:00:00.000Z', notAfter: '2025-01-02T00:00:00.000Z', renewsAt: '2025-01-01T12:00:00.000Z', state: 'valid', error: null, pods: ['mesh/client'] },
    ]);
  });

  it('connections: both ends with workloads and identities, direction, mTLS, bytes and age', () => {
    const items = proxyConfigView('connections', source, NOW).items;
    expect(items).toHaveLength(2);
    expect(items[0]).toEqual({
      id: expect.any(String), direction: 'outbound', reporter: 'source', pod: 'mesh/client',
      source: { ip: '10.244.1.3', port: null, workload: 'client-deploy', namespace: 'mesh', identity: id('mesh', 'client') },
      destination: { ip: '10.244.2.2', port: 8080, workload: 'server', namespace: 'mesh', identity: id('mesh', 'server') },
      service: { namespace: 'mesh', name: 'server', hostname: 'server.mesh.svc.cluster.local' },
      path: 'hbone', mtls: true, bytesSent: 4096, bytesReceived: 120,
      startedAt: '2025-01-01T10:00:00.000Z', ageSeconds: 95, exempt: null,
    });
    expect(items[1]).toMatchObject({ direction: 'inbound', reporter: 'destination', mtls: false, path: 'plaintext', exempt: 'kubelet-probe', ageSeconds: 65, service: null, source: { ip: '172.30.0.11', workload: null, identity: null } });
  });
});

/** One GET; the status and the parsed body. */
function get(target: { port: number } | { socketPath: string }, path: string, method = 'GET'): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...('port' in target ? { host: '127.0.0.1', port: target.port } : target), path, method, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('GET /proxy-config/<view>', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-pc-'));
  const socketPath = join(dir, 'agent.sock');
  const sources: AdminSources = { agent: source, proxyConfig: source, logger: silentLogger };
  let admin: AdminServer;
  let control: { close(): void };

  beforeAll(async () => {
    admin = await AdminServer.start(sources, '127.0.0.1', 0);
    control = await serveControl({ podReadiness: () => Promise.resolve(undefined), version: 'v42' }, socketPath, sources, silentLogger);
  });

  afterAll(async () => {
    control.close();
    await admin.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers every view on the admin port and on the control socket alike', async () => {
    for (const view of PROXY_CONFIG_VIEWS) {
      const tcp = await get(admin, `/proxy-config/${view}`);
      const unix = await get({ socketPath }, `/proxy-config/${view}`);
      expect(tcp.status).toBe(200);
      expect(unix.status).toBe(200);
      const a = tcp.body as unknown as ProxyConfigAnswer;
      expect(a.apiVersion).toBe(PROXY_CONFIG_API_VERSION);
      expect((unix.body as unknown as ProxyConfigAnswer).kind).toBe(a.kind);
      // Connection ages move with the clock; everything else is the same answer.
      if (view !== 'connections') expect(unix.body).toEqual(tcp.body);
    }
    expect(((await get(admin, '/proxy-config/workloads')).body.items as { name: string }[]).map((w) => w.name)).toContain('client');
  });

  it('answers an unknown view with a 404 that names the views', async () => {
    const views = ['workloads', 'services', 'policies', 'certs', 'connections'];
    for (const path of ['/proxy-config/routes', '/proxy-config', '/proxy-config/workloads/extra', '/proxy-config/%2e%2e']) {
      const r = await get(admin, path);
      expect(r.status, path).toBe(404);
      expect(r.body.views).toEqual(views);
      expect(r.body.error).toContain('GET /proxy-config/<view>, where <view> is one of workloads, services, policies, certs, connections');
    }
    expect((await get(admin, '/proxy-config/routes')).body.error).toMatch(/^no view "routes"/);
    expect((await get({ socketPath }, '/proxy-config/nope')).status).toBe(404);
  });

  it('takes GET only', async () => {
    const r = await get(admin, '/proxy-config/workloads', 'POST');
    expect(r.status).toBe(405);
    expect(r.body.error).toBe('POST /proxy-config/workloads not allowed: GET only');
  });

  it('leaves the other routes as they were, and lists the new one in a 404', async () => {
    expect((await get(admin, '/config_dump')).body).toMatchObject({ node: 'node-1', version: 'v42' });
    expect((await get(admin, '/workloads')).body).toMatchObject({ node: 'node-1', failed: [{ uid: 'uid-broken' }] });
    const miss = await get(admin, '/nope');
    expect(miss.status).toBe(404);
    expect(miss.body.routes).toEqual(['/healthz', '/certificates', '/certs', '/logging', '/config_dump', '/workloads', '/connections', '/proxy-config/{workloads|services|policies|certs|connections}']);
  });

  it('is not served by a listener without the agent', async () => {
    const bare = await AdminServer.start({ logger: silentLogger }, '127.0.0.1', 0);
    try {
      const r = await get(bare, '/proxy-config/workloads');
      expect(r.status).toBe(404);
      expect(r.body.routes).toEqual(['/healthz', '/certificates', '/certs', '/logging']);
    } finally {
      await bare.close();
    }
  });
});
