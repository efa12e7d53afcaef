/**
 * The waypoint's routing engine: the write-up's canary and Istio's Bookinfo samples through the
 * real manifest parser, validation and model; then every match type, precedence rule, rewrite,
 * redirect, fault/mirror/retry/timeout field, traffic-policy merge and Gateway API behaviour,
 * table by table.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildModel, type MeshModel, type Service } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { parseManifests } from '../../src/kube/manifests.js';
import {
  DEFAULT_RETRIES, resolveHost, Router, type Destination, type ForwardAction, type RouteAction, type RouteRequest,
} from '../../src/waypoint/routing.js';
import { seeded } from './helpers/random.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);
const ISTIO = join(SHARED, 'conformance', 'istio');
const sample = (file: string) => readFileSync(join(ISTIO, file), 'utf8');

// ---------------------------------------------------------------------------------------------
// Fixtures

function services(namespace: string, names: string[], ports: number[] = [80]): string {
  return names.map((name) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${namespace} }
spec: { selector: { app: ${name} }, ports: [${ports.map((p) => `{ name: p${p}, port: ${p}, targetPort: ${p} }`).join(', ')}] }
---
`).join('');
}

function model(...texts: string[]): MeshModel {
  const { resources, diagnostics } = parseManifests(texts.map((text, i) => ({ file: `m${i}.yaml`, text, dir: '/' })), { validate: validateMeshObject });
  const errors = diagnostics.filter((d) => d.severity === 'error');
  if (errors.length > 0) throw new Error(errors.map((d) => `${d.path ?? ''}: ${d.message}`).join('\n'));
  return buildModel({ resources, pods: [] }, 'cluster.local');
}

interface World { router: Router; svc: (name: string, namespace?: string) => Service; model: MeshModel }

function world(texts: string[], opts: { namespace?: string; random?: () => number } = {}): World {
  const m = model(...texts);
  const router = new Router(m.l7, m.services, { random: opts.random ?? seeded(7) });
  const svc = (name: string, namespace = opts.namespace ?? 'shop') => {
    const s = m.services.find((x) => x.name === name && x.namespace === namespace);
    if (!s) throw new Error(`no service ${namespace}/${name}`);
    return s;
  };
  return { router, svc, model: m };
}

function request(service: Service, over: Partial<RouteRequest> = {}): RouteRequest {
  const port = over.port ?? service.ports[0]!.port;
  return { service, port, method: 'GET', path: '/', authority: `${service.name}.${service.namespace}:${port}`, headers: {}, ...over };
}

function forward(a: RouteAction): ForwardAction {
  if (a.kind !== 'forward') throw new Error(`expected a forward action, got ${JSON.stringify(a)}`);
  return a;
}

const summary = (d: Destination) => ({ to: d.service.name, port: d.port, subset: d.subset, weight: d.weight, selector: d.selector, missing: d.missing?.status });

/** The share of each destination's service/subset over n picks. */
function shares(router: Router, action: ForwardAction, n = 10_000): Record<string, number> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const d = router.pick(action);
    const key = d.subset ?? d.service.name;
    counts[key] = (counts[key] ?? 0) + 1;
  }
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v / n]));
}

const vs = (name: string, spec: string, namespace = 'shop') => `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: ${name}, namespace: ${namespace} }
spec:
${spec}
---
`;
const dr = (name: string, spec: string, namespace = 'shop') => `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: ${name}, namespace: ${namespace} }
spec:
${spec}
---
`;
const httpRoute = (name: string, spec: string, namespace = 'shop', kind = 'HTTPRoute') => `apiVersion: gateway.networking.k8s.io/v1
kind: ${kind}
metadata: { name: ${name}, namespace: ${namespace} }
spec:
${spec}
---
`;

// ---------------------------------------------------------------------------------------------
// Conformance: the write-up's canary and Istio's Bookinfo samples

/** The ```yaml blocks of the write-up. */
function seedBlocks(): string[] {
  return [...readFileSync(join(SHARED, 'seed', '000_00ae23f618932bae.txt'), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
}
const seedBlock = (name: string) => {
  const block = seedBlocks().find((b) => b.includes(`name: ${name}\n`));
  if (!block) throw new Error(`no block ${name} in the write-up`);
  return block;
};

describe("the write-up's canary", () => {
  const canary = () => world([services('default', ['backend-service'], [8080]), seedBlock('backend-route'), seedBlock('backend-destination')], { namespace: 'default', random: seeded(1) });

  it('sends user-type: internal to v2 and splits the rest 90/10 between v1 and v2', () => {
    const { router, svc } = canary();
    const backend = svc('backend-service');
    const internal = forward(router.route(request(backend, { headers: { 'user-type': 'internal' } })));
    expect(internal.route).toBe('default/backend-route#0');
    expect(internal.destinations.map(summary)).toEqual([{ to: 'backend-service', port: 8080, subset: 'v2', weight: 100, selector: { version: 'v2' }, missing: undefined }]);

    const rest = forward(router.route(request(backend, { headers: { 'user-type': 'external' } })));
    expect(rest.route).toBe('default/backend-route#1');
    expect(rest.destinations.map(summary)).toEqual([
      { to: 'backend-service', port: 8080, subset: 'v1', weight: 90, selector: { version: 'v1' }, missing: undefined },
      { to: 'backend-service', port: 8080, subset: 'v2', weight: 10, selector: { version: 'v2' }, missing: undefined },
    ]);
    const s = shares(router, rest);
    expect(s.v1).toBeGreaterThan(0.88);
    expect(s.v1).toBeLessThan(0.92);
    expect(s.v2).toBeGreaterThan(0.08);
    expect(s.v2).toBeLessThan(0.12);
    expect(router.warnings).toEqual([]);
  });

  it("gives every subset the rule's traffic policy, consecutiveErrors read as consecutive5xxErrors", () => {
    const { router } = canary();
    const [v1] = forward(router.route(request(canary().svc('backend-service')))).destinations;
    expect(router.trafficPolicy(v1!)).toEqual({
      loadBalancer: { consistentHash: { httpHeaderName: 'user-id' } },
      connectionPool: { tcp: { maxConnections: 100 }, http: { http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 2 } },
      outlierDetection: { consecutiveErrors: 5, consecutive5xxErrors: 5, interval: '30s', baseEjectionTime: '30s', maxEjectionPercent: 50 },
    });
    expect(router.subsetLabels(canary().svc('backend-service'), 'v2')).toEqual({ version: 'v2' });
  });

  it("extracts the write-up's retries and timeouts", () => {
    const { router, svc } = world([services('default', ['backend-service'], [8080]), seedBlock('backend-retries')], { namespace: 'default' });
    const a = forward(router.route(request(svc('backend-service'))));
    expect(a.timeoutMs).toBe(10_000);
    expect(a.retries).toEqual({ attempts: 3, perTryTimeoutMs: 3000, retryOn: ['5xx', 'reset', 'connect-failure', 'refused-stream'], retriableStatusCodes: [] });
  });

  it('uses one of several VirtualServices for a host, first by namespace/name, and says so', () => {
    const blocks = ['backend-route', 'backend-retries', 'backend-timeouts', 'backend-canary'].map(seedBlock);
    const { router, svc } = world([services('default', ['backend-service'], [8080]), ...blocks, seedBlock('backend-destination')], { namespace: 'default' });
    const a = forward(router.route(request(svc('backend-service'))));
    expect(a.route).toBe('default/backend-canary#1');
    expect(a.destinations.map((d) => [d.subset, d.weight])).toEqual([['v1', 95], ['v2', 5]]);
    expect(router.warnings.join('\n')).toMatch(/several VirtualServices name this host \(default\/backend-canary, default\/backend-retries, default\/backend-route, default\/backend-timeouts\); using default\/backend-canary \(the first by namespace\/name; Istio would use the oldest\)/);
  });
});

describe("Istio's Bookinfo samples", () => {
  const BOOKINFO = services('default', ['productpage', 'reviews', 'ratings', 'details', 'reviews-v1', 'reviews-v2'], [9080]);
  const bookinfo = (...files: string[]) => world([BOOKINFO, ...files.map(sample)], { namespace: 'default', random: seeded(3) });

  it('routes end-user: jason to reviews v2 and everyone else to v3', () => {
    const { router, svc } = bookinfo('destination-rule-all.yaml', 'virtual-service-reviews-jason-v2-v3.yaml');
    const reviews = svc('reviews');
    const cases: [Record<string, string>, string, string][] = [
      [{ 'end-user': 'jason' }, 'v2', 'default/reviews#0'],
      [{ 'end-user': 'Jason' }, 'v3', 'default/reviews#1'],
      [{ 'end-user': 'jason2' }, 'v3', 'default/reviews#1'],
      [{}, 'v3', 'default/reviews#1'],
    ];
    for (const [headers, subset, route] of cases) {
      const a = forward(router.route(request(reviews, { headers })));
      expect([a.route, a.destinations.map(summary)], JSON.stringify(headers)).toEqual([route, [{ to: 'reviews', port: 9080, subset, weight: 100, selector: { version: subset }, missing: undefined }]]);
    }
  });

  it('delays jason on ratings by 7s (the deprecated integer percent) and aborts details with 555', () => {
    const { router, svc } = bookinfo('destination-rule-all.yaml', 'virtual-service-ratings-test-delay.yaml', 'fault-injection-details-v1.yaml');
    expect(forward(router.route(request(svc('ratings'), { headers: { 'end-user': 'jason' } }))).fault).toEqual({ delay: { ms: 7000, percent: 100 } });
    expect(forward(router.route(request(svc('ratings')))).fault).toBeUndefined();
    const details = forward(router.route(request(svc('details'))));
    expect(details.fault).toEqual({ abort: { status: 555, percent: 100 } });
    expect(details.destinations.map((d) => d.subset)).toEqual(['v1']);
  });

  it('leaves the gateway-bound VirtualService and the Gateway-parented HTTPRoute out of mesh routing', () => {
    const { router, svc } = bookinfo('bookinfo-gateway.yaml', 'gateway-api-bookinfo-gateway.yaml', 'destination-rule-all.yaml');
    const a = forward(router.route(request(svc('productpage'), { path: '/productpage' })));
    expect(a.route).toBe('default');
    expect(a.destinations.map(summary)).toEqual([{ to: 'productpage', port: 9080, subset: undefined, weight: 100, selector: undefined, missing: undefined }]);
  });

  it('splits reviews 90/10 between reviews-v1 and reviews-v2 by the Gateway API route', () => {
    const { router, svc } = bookinfo('gateway-api-route-reviews-90-10.yaml');
    const a = forward(router.route(request(svc('reviews'), { path: '/reviews/0' })));
    expect(a.route).toBe('default/reviews#0');
    expect(a.destinations.map(summary)).toEqual([
      { to: 'reviews-v1', port: 9080, subset: undefined, weight: 90, selector: undefined, missing: undefined },
      { to: 'reviews-v2', port: 9080, subset: undefined, weight: 10, selector: undefined, missing: undefined },
    ]);
    const s = shares(router, a);
    expect(Math.abs(s['reviews-v1']! - 0.9)).toBeLessThan(0.02);
    expect(Math.abs(s['reviews-v2']! - 0.1)).toBeLessThan(0.02);
  });

  it('prefers the HTTPRoute over the VirtualService for the same service, with a warning', () => {
    const { router, svc } = bookinfo('destination-rule-all.yaml', 'virtual-service-reviews-jason-v2-v3.yaml', 'gateway-api-route-reviews-90-10.yaml');
    const a = forward(router.route(request(svc('reviews'), { headers: { 'end-user': 'jason' } })));
    expect(a.destinations.map((d) => d.service.name)).toEqual(['reviews-v1', 'reviews-v2']);
    expect(router.warnings).toContain('reviews.default.svc.cluster.local: both VirtualService default/reviews and HTTPRoute/GRPCRoute(s) apply; as in Istio\'s waypoints, the routes take precedence on the ports they bind');
  });
});

// ---------------------------------------------------------------------------------------------
// VirtualService matching

describe('VirtualService match fields', () => {
  const RULES = `  hosts: [api]
  http:
  - { match: [{ uri: { exact: /exact } }], directResponse: { status: 210 } }
  - { match: [{ uri: { prefix: /pre } }], directResponse: { status: 211 } }
  - { match: [{ uri: { regex: "/re/[0-9]+" } }], directResponse: { status: 212 } }
  - { match: [{ uri: { exact: /case }, ignoreUriCase: true }], directResponse: { status: 213 } }
  - { match: [{ uri: { prefix: /CasePre }, ignoreUriCase: true }], directResponse: { status: 233 } }
  - { match: [{ uri: { regex: "/CaseRe" }, ignoreUriCase: true }], directResponse: { status: 234 } }
  - { match: [{ uri: { exact: /method }, method: { exact: PUT } }], directResponse: { status: 214 } }
  - { match: [{ uri: { exact: /authority }, authority: { prefix: "api." } }], directResponse: { status: 215 } }
  - { match: [{ uri: { exact: /scheme }, scheme: { exact: https } }], directResponse: { status: 216 } }
  - { match: [{ uri: { exact: /hdr }, headers: { X-A: { exact: one } } }], directResponse: { status: 217 } }
  - { match: [{ uri: { exact: /hre }, headers: { x-b: { regex: "v[0-9]" } } }], directResponse: { status: 218 } }
  - { match: [{ uri: { exact: /hp }, headers: { x-c: {} } }], directResponse: { status: 219 } }
  - { match: [{ uri: { exact: /hpre }, headers: { x-d: { prefix: ab } } }], directResponse: { status: 220 } }
  - { match: [{ uri: { exact: /wo }, withoutHeaders: { x-e: { exact: bad } } }], directResponse: { status: 221 } }
  - { match: [{ uri: { exact: /wop }, withoutHeaders: { x-f: {} } }], directResponse: { status: 222 } }
  - { match: [{ uri: { exact: /q }, queryParams: { a: { exact: "1" } } }], directResponse: { status: 223 } }
  - { match: [{ uri: { exact: /qr }, queryParams: { v: { regex: "[a-z]+" } } }], directResponse: { status: 224 } }
  - { match: [{ uri: { exact: /qp }, queryParams: { flag: {} } }], directResponse: { status: 225 } }
  - { match: [{ uri: { exact: /port }, port: 8080 }], directResponse: { status: 226 } }
  - { match: [{ uri: { exact: /src }, sourceLabels: { app: users } }], directResponse: { status: 227 } }
  - { match: [{ uri: { exact: /ns }, sourceNamespace: shop }], directResponse: { status: 228 } }
  - { match: [{ uri: { exact: /gw }, gateways: [edge] }], directResponse: { status: 235 } }
  - { match: [{ uri: { exact: /gwm }, gateways: [mesh], sourceLabels: { app: nobody } }], directResponse: { status: 229 } }
  - { match: [{ uri: { exact: /or1 } }, { uri: { exact: /or2 } }], directResponse: { status: 230 } }
  - { match: [{ uri: { exact: /and }, method: { exact: POST }, headers: { x-z: { exact: "1" } } }], directResponse: { status: 231 } }
  - { match: [{ uri: { exact: /jwt }, headers: { "@request.auth.claims.group": { exact: admin } } }], directResponse: { status: 232 } }
  - directResponse: { status: 299 }`;
  const { router, svc } = world([services('shop', ['api'], [80, 8080]), vs('api', RULES)]);
  const api = svc('api');

  it.each<[string, Partial<RouteRequest>, number]>([
    ['uri exact', { path: '/exact' }, 210],
    ['uri exact ignores the query', { path: '/exact?x=1' }, 210],
    ['uri exact is exact', { path: '/exact/' }, 299],
    ['uri exact is case-sensitive', { path: '/EXACT' }, 299],
    ['uri prefix is a string prefix', { path: '/prefix' }, 211],
    ['uri prefix', { path: '/pre/x?y' }, 211],
    ['uri regex', { path: '/re/12' }, 212],
    ['uri regex ignores the query', { path: '/re/12?q=1' }, 212],
    ['uri regex is anchored at the end', { path: '/re/12x' }, 299],
    ['uri regex is anchored at the start', { path: '/x/re/1' }, 299],
    ['ignoreUriCase on exact', { path: '/CaSe' }, 213],
    ['ignoreUriCase on prefix', { path: '/casepre/x' }, 233],
    ['ignoreUriCase leaves regex alone', { path: '/casere' }, 299],
    ['ignoreUriCase leaves regex alone (same case)', { path: '/CaseRe' }, 234],
    ['method', { path: '/method', method: 'PUT' }, 214],
    ['method mismatch', { path: '/method' }, 299],
    ['authority prefix', { path: '/authority', authority: 'api.shop' }, 215],
    ['authority mismatch', { path: '/authority', authority: 'api:80' }, 299],
    ['scheme', { path: '/scheme', scheme: 'https' }, 216],
    ['scheme defaults to http', { path: '/scheme' }, 299],
    ['header exact, name case-insensitive', { path: '/hdr', headers: { 'x-a': 'one' } }, 217],
    ['header exact on repeated values joined with ","', { path: '/hdr', headers: { 'x-a': ['one', 'two'] } }, 299],
    ['header missing', { path: '/hdr' }, 299],
    ['header regex', { path: '/hre', headers: { 'x-b': 'v1' } }, 218],
    ['header regex is anchored at the end', { path: '/hre', headers: { 'x-b': 'v10' } }, 299],
    ['header regex is anchored at the start', { path: '/hre', headers: { 'x-b': 'xv1' } }, 299],
    ['header presence with an empty value', { path: '/hp', headers: { 'x-c': '' } }, 219],
    ['header presence, absent', { path: '/hp' }, 299],
    ['header prefix', { path: '/hpre', headers: { 'x-d': 'abc' } }, 220],
    ['header prefix mismatch', { path: '/hpre', headers: { 'x-d': 'xab' } }, 299],
    ['withoutHeaders, header absent', { path: '/wo' }, 221],
    ['withoutHeaders, other value', { path: '/wo', headers: { 'x-e': 'good' } }, 221],
    ['withoutHeaders, the value', { path: '/wo', headers: { 'x-e': 'bad' } }, 299],
    ['withoutHeaders presence, absent', { path: '/wop' }, 222],
    ['withoutHeaders presence, present', { path: '/wop', headers: { 'x-f': 'x' } }, 299],
    ['query exact', { path: '/q?a=1' }, 223],
    ['query exact mismatch', { path: '/q?a=10' }, 299],
    ['query uses the first value', { path: '/q?a=1&a=2' }, 223],
    ['query uses the first value (mismatch)', { path: '/q?b=1&a=2' }, 299],
    ['query regex', { path: '/qr?v=abc' }, 224],
    ['query regex is anchored', { path: '/qr?v=abc1' }, 299],
    ['query presence without a value', { path: '/qp?flag' }, 225],
    ['query presence, absent', { path: '/qp?other=1' }, 299],
    ['port', { path: '/port', port: 8080 }, 226],
    ['port mismatch', { path: '/port', port: 80 }, 299],
    ['sourceLabels subset', { path: '/src', sourceLabels: { app: 'users', version: 'v1' } }, 227],
    ['sourceLabels mismatch', { path: '/src', sourceLabels: { app: 'orders' } }, 299],
    ['sourceLabels, unknown caller', { path: '/src' }, 299],
    ['sourceNamespace', { path: '/ns', sourceNamespace: 'shop' }, 228],
    ['sourceNamespace mismatch', { path: '/ns', sourceNamespace: 'other' }, 299],
    ['a match for another gateway never applies to the mesh', { path: '/gw' }, 299],
    ['a match naming mesh skips the source checks, as Istio does', { path: '/gwm' }, 229],
    ['match entries are ORed (first)', { path: '/or1' }, 230],
    ['match entries are ORed (second)', { path: '/or2' }, 230],
    ['fields of one entry are ANDed', { path: '/and', method: 'POST', headers: { 'x-z': '1' } }, 231],
    ['fields of one entry are ANDed (one missing)', { path: '/and', method: 'POST' }, 299],
    ['JWT claim matches never match', { path: '/jwt', headers: { '@request.auth.claims.group': 'admin' } }, 299],
  ])('%s', (_, over, status) => {
    const a = router.route(request(api, over));
    expect(a).toMatchObject({ kind: 'direct-response', status });
  });

  it('names the rule that answered', () => {
    expect(router.route(request(api, { path: '/exact' }))).toEqual({ kind: 'direct-response', route: 'shop/api#0', status: 210 });
  });

  it('warns about JWT claim matches', () => {
    expect(router.warnings.some((w) => w.includes('@request.auth.claims.group: JWT claim matches need RequestAuthentication'))).toBe(true);
  });

  it("reads RE2's leading (?i) as a flag (validate.ts refuses it today, so the config is built directly)", () => {
    const spec = { hosts: ['api'], http: [{ match: [{ headers: { 'x-v': { regex: '(?i)yes|ok' } } }], directResponse: { status: 201 } }, { directResponse: { status: 404 } }] };
    const r = new Router([{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'api', spec }], [api]);
    const status = (v: string) => (r.route(request(api, { headers: { 'x-v': v } })) as { status: number }).status;
    expect([status('YES'), status('ok'), status('Ok'), status('yes!'), status('noyes')]).toEqual([201, 201, 201, 404, 404]);
  });
});

// ---------------------------------------------------------------------------------------------
// Which config applies

describe('which VirtualService applies', () => {
  const route = `  http: [{ route: [{ destination: { host: reviews.ns.svc.cluster.local, subset: v1 } }] }]`;
  it.each<[string, string, string, boolean]>([
    ['a short name in its own namespace', 'reviews', 'ns', true],
    ['a short name in another namespace names another service', 'reviews', 'other', false],
    ['name.namespace', 'reviews.ns', 'other', true],
    ['name.namespace.svc', 'reviews.ns.svc', 'other', true],
    ['the FQDN', 'reviews.ns.svc.cluster.local', 'other', true],
    ['a wildcard', '"*.ns.svc.cluster.local"', 'other', true],
    ['a wildcard for another namespace', '"*.x.svc.cluster.local"', 'other', false],
    ['another host', 'ratings', 'ns', false],
  ])('%s', (_, host, namespace, applies) => {
    const { router, svc } = world([services('ns', ['reviews', 'ratings']), vs('r', `  hosts: [${host}]\n${route}`, namespace)]);
    const a = forward(router.route(request(svc('reviews', 'ns'))));
    expect(a.route).toBe(applies ? `${namespace}/r#0` : 'default');
  });

  it.each<[string, string, string]>([
    ['gateways naming mesh apply', '  gateways: [mesh, edge]', 'ns/r#0'],
    ['gateways without mesh do not', '  gateways: [edge]', 'default'],
    ['exportTo "." hides it from other namespaces', '  exportTo: ["."]', 'default'],
    ['exportTo naming the namespace shows it', '  exportTo: [other, ns]', 'ns/r#0'],
  ])('%s', (_, extra, expected) => {
    const { router, svc } = world([services('other', ['reviews']), services('ns', ['reviews']), vs('r', `  hosts: [reviews.other.svc.cluster.local]\n${extra}\n${route}`, 'ns')]);
    expect(forward(router.route(request(svc('reviews', 'other')))).route).toBe(expected);
  });

  it("prefers the exact host over a wildcard, then the service's namespace, then namespace/name", () => {
    const texts = [
      services('ns', ['reviews']),
      vs('a-wild', `  hosts: ["*.ns.svc.cluster.local"]\n${route}`, 'aaa'),
      vs('z-exact', `  hosts: [reviews.ns.svc.cluster.local]\n${route}`, 'zzz'),
      vs('m-exact', `  hosts: [reviews.ns.svc.cluster.local]\n${route}`, 'mmm'),
    ];
    const { router, svc } = world(texts);
    expect(forward(router.route(request(svc('reviews', 'ns'))))).toMatchObject({ route: 'mmm/m-exact#0' });
    const local = world([...texts, vs('local', `  hosts: [reviews]\n${route}`, 'ns')]);
    expect(forward(local.router.route(request(local.svc('reviews', 'ns'))))).toMatchObject({ route: 'ns/local#0' });
  });

  it('resolves host names as the config namespace sees them', () => {
    expect(resolveHost('reviews', 'ns')).toBe('reviews.ns.svc.cluster.local');
    expect(resolveHost('Reviews.NS', 'x')).toBe('reviews.ns.svc.cluster.local');
    expect(resolveHost('reviews.ns.svc', 'x')).toBe('reviews.ns.svc.cluster.local');
    expect(resolveHost('reviews.ns.svc.cluster.local', 'x')).toBe('reviews.ns.svc.cluster.local');
    expect(resolveHost('*.ns.svc.cluster.local', 'x')).toBe('*.ns.svc.cluster.local');
    expect(resolveHost('api.example.com', 'x')).toBe('api.example.com');
  });
});

describe('default route and no route', () => {
  it('routes a service without config to itself, on the request port, with Istio\'s default retries', () => {
    const { router, svc } = world([services('shop', ['cart'], [80, 8080])]);
    const a = router.route(request(svc('cart'), { port: 8080 }));
    expect(a).toEqual({
      kind: 'forward', route: 'default', destinations: [{ service: svc('cart'), port: 8080, weight: 100 }],
      requestHeaders: { set: {}, add: {}, remove: [] }, responseHeaders: { set: {}, add: {}, remove: [] }, retries: DEFAULT_RETRIES,
    });
    expect(router.trafficPolicy((a as ForwardAction).destinations[0]!)).toEqual({});
  });

  it('answers no-route when a VirtualService applies and no rule matches', () => {
    const { router, svc } = world([services('shop', ['cart']), vs('cart', `  hosts: [cart]
  http: [{ match: [{ headers: { x-beta: { exact: "1" } } }], route: [{ destination: { host: cart } }] }]`)]);
    expect(router.route(request(svc('cart')))).toEqual({ kind: 'no-route' });
    expect(forward(router.route(request(svc('cart'), { headers: { 'x-beta': '1' } }))).route).toBe('shop/cart#0');
  });

  it('does not apply a VirtualService on a port none of its rules is for (Istio builds no routes there)', () => {
    const { router, svc } = world([services('shop', ['cart'], [80, 8080]), vs('cart', `  hosts: [cart]
  http: [{ match: [{ port: 8080 }], route: [{ destination: { host: cart } }] }]`)]);
    expect(forward(router.route(request(svc('cart'), { port: 80 }))).route).toBe('default');
    expect(forward(router.route(request(svc('cart'), { port: 8080 }))).route).toBe('shop/cart#0');
  });
});

// ---------------------------------------------------------------------------------------------
// VirtualService actions

describe('VirtualService destinations and weights', () => {
  const { router, svc } = world([
    services('shop', ['cart', 'orders']),
    services('shop', ['multi'], [80, 8080]),
    dr('cart', '  host: cart\n  subsets: [{ name: v1, labels: { version: v1 } }, { name: v2, labels: { version: v2 } }]'),
    vs('cart', `  hosts: [cart]
  http:
  - match: [{ uri: { prefix: /half } }]
    route:
    - { destination: { host: cart, subset: v1 }, weight: 50 }
    - { destination: { host: cart, subset: v2 }, weight: 50 }
  - match: [{ uri: { prefix: /zero } }]
    route:
    - { destination: { host: cart, subset: v1 }, weight: 100 }
    - { destination: { host: cart, subset: v2 }, weight: 0 }
  - match: [{ uri: { prefix: /multi } }]
    route: [{ destination: { host: multi } }]
  - match: [{ uri: { prefix: /pinned } }]
    route: [{ destination: { host: multi, port: { number: 8080 } } }]
  - match: [{ uri: { prefix: /missing } }]
    route:
    - { destination: { host: nowhere }, weight: 30 }
    - { destination: { host: cart, subset: v9 }, weight: 30 }
    - { destination: { host: orders.shop }, weight: 40 }
  - route: [{ destination: { host: orders } }]`),
  ], { random: seeded(11) });
  const cart = svc('cart');

  it('splits 50/50 within 2% over 10,000 seeded picks, and reproducibly', () => {
    const a = forward(router.route(request(cart, { path: '/half' })));
    const s = shares(router, a);
    expect(Math.abs(s.v1! - 0.5)).toBeLessThan(0.02);
    expect(Math.abs(s.v2! - 0.5)).toBeLessThan(0.02);
    const again = world([services('shop', ['x'])], { random: seeded(5) }).router;
    const other = world([services('shop', ['x'])], { random: seeded(5) }).router;
    expect(Array.from({ length: 50 }, () => again.pick(a).subset)).toEqual(Array.from({ length: 50 }, () => other.pick(a).subset));
  });

  it.each<[string, Partial<RouteRequest>, ReturnType<typeof summary>[]]>([
    ['drops zero-weight destinations', { path: '/zero' }, [{ to: 'cart', port: 80, subset: 'v1', weight: 100, selector: { version: 'v1' }, missing: undefined }]],
    ['uses the request port for a multi-port service', { path: '/multi', port: 8080 }, [{ to: 'multi', port: 8080, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ['uses the request port for a multi-port service (80)', { path: '/multi', port: 80 }, [{ to: 'multi', port: 80, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ['uses the destination port when set', { path: '/pinned', port: 80 }, [{ to: 'multi', port: 8080, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ["uses a one-port service's port", { path: '/other', port: 8080 }, [{ to: 'orders', port: 80, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ['keeps unknown hosts and subsets as 503s with their weight', { path: '/missing' }, [
      { to: 'nowhere', port: 80, subset: undefined, weight: 30, selector: undefined, missing: 503 },
      { to: 'cart', port: 80, subset: 'v9', weight: 30, selector: undefined, missing: 503 },
      { to: 'orders', port: 80, subset: undefined, weight: 40, selector: undefined, missing: undefined },
    ]],
  ])('%s', (_, over, expected) => {
    expect(forward(router.route(request(cart, over))).destinations.map(summary)).toEqual(expected);
  });

  it('warns about unknown hosts and subsets', () => {
    expect(router.warnings).toEqual(expect.arrayContaining([
      'VirtualService shop/cart: destination host "nowhere" (nowhere.shop.svc.cluster.local) is not a known service: its requests get 503',
      'VirtualService shop/cart: subset "v9" of cart.shop.svc.cluster.local is not defined by a DestinationRule: its requests get 503',
    ]));
  });
});

describe('VirtualService rewrites, redirects and direct responses', () => {
  const { router, svc } = world([services('shop', ['api'], [80, 8080]), vs('api', `  hosts: [api]
  http:
  - { match: [{ uri: { prefix: /v1/api } }], rewrite: { uri: /api }, route: [{ destination: { host: api } }] }
  - { match: [{ uri: { prefix: /CI }, ignoreUriCase: true }], rewrite: { uri: /ci }, route: [{ destination: { host: api } }] }
  - { match: [{ uri: { exact: /old } }], rewrite: { uri: /new }, route: [{ destination: { host: api } }] }
  - { match: [{ uri: { regex: "/legacy/.*" } }], rewrite: { uri: /modern }, route: [{ destination: { host: api } }] }
  - match: [{ uri: { prefix: /service/ } }]
    rewrite: { uriRegexRewrite: { match: "^/service/([^/]+)(/.*)$", rewrite: '\\2/instance/\\1' } }
    route: [{ destination: { host: api } }]
  - { match: [{ uri: { prefix: /host } }], rewrite: { authority: backend.internal }, route: [{ destination: { host: api } }] }
  - { match: [{ uri: { prefix: /hdr-host } }], headers: { request: { set: { Host: set.internal }, add: { host: add.internal } } }, route: [{ destination: { host: api } }] }
  - { match: [{ uri: { prefix: /r1 } }], redirect: { uri: /moved } }
  - { match: [{ uri: { prefix: /r2 } }], redirect: { uri: "/moved?z=1", authority: other.example, scheme: https, port: 8443, redirectCode: 302 } }
  - { match: [{ uri: { prefix: /r3 } }], redirect: { derivePort: FROM_REQUEST_PORT } }
  - { match: [{ uri: { prefix: /r4 } }], redirect: { scheme: https } }
  - { match: [{ uri: { prefix: /r5 } }], redirect: { scheme: https, derivePort: FROM_PROTOCOL_DEFAULT } }
  - { match: [{ uri: { prefix: /r6 } }], redirect: { port: 80 } }
  - { match: [{ uri: { prefix: /dr } }], directResponse: { status: 503, body: { string: "down for maintenance" } }, headers: { response: { set: { retry-after: "60" } } } }
  - { match: [{ uri: { prefix: /db } }], directResponse: { status: 200, body: { bytes: "aGVsbG8=" } } }
  - { rewrite: { uri: /v2 }, route: [{ destination: { host: api } }] }`)]);
  const api = svc('api');

  it.each<[string, string, string]>([
    ['replaces the matched prefix', '/v1/api/users?x=1', '/api/users?x=1'],
    ['replaces the matched prefix whatever its case', '/cI/items', '/ci/items'],
    ['replaces the whole path of an exact match, keeping the query', '/old?q=1', '/new?q=1'],
    ['replaces the whole path of a regex match', '/legacy/a/b?k', '/modern?k'],
    ['rewrites by regex with groups, keeping the query', '/service/foo/v1/api?x=1', '/v1/api/instance/foo?x=1'],
    ["replaces Envoy's implicit prefix / when the match has no uri", '/foo?y', '/v2foo?y'],
  ])('%s', (_, path, rewritten) => {
    expect(forward(router.route(request(api, { path }))).rewrite?.path).toBe(rewritten);
  });

  it('rewrites the authority, from rewrite or from a host header op (set over add)', () => {
    expect(forward(router.route(request(api, { path: '/host' }))).rewrite).toEqual({ authority: 'backend.internal' });
    const a = forward(router.route(request(api, { path: '/hdr-host' })));
    expect(a.rewrite).toEqual({ authority: 'set.internal' });
    expect(a.requestHeaders).toEqual({ set: {}, add: {}, remove: [] });
    expect(forward(router.route(request(api, { path: '/v1/api' }))).rewrite).toEqual({ uri: '/api', path: '/api' });
    expect(forward(router.route(request(api, { path: '/service/foo/bar' }))).rewrite).toEqual({ uriRegex: { match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1' }, path: '/bar/instance/foo' });
  });

  it.each<[string, Partial<RouteRequest>, number, string]>([
    ['uri, 301 by default, the query kept', { path: '/r1/x?a=1', authority: 'api.shop' }, 301, 'http://api.shop/moved?a=1'],
    ['uri with a query replaces the query; authority, scheme, port, code', { path: '/r2?a=1' }, 302, 'https://other.example:8443/moved?z=1'],
    ['FROM_REQUEST_PORT', { path: '/r3/p?q', port: 8080, authority: 'api.shop:8080' }, 301, 'http://api.shop:8080/r3/p?q'],
    ['FROM_REQUEST_PORT replaces the port of the host', { path: '/r3', port: 8080, authority: 'api.shop:9999' }, 301, 'http://api.shop:8080/r3'],
    ['a scheme change drops the old default port', { path: '/r4', authority: 'api.shop:80' }, 301, 'https://api.shop/r4'],
    ['a scheme change keeps another port', { path: '/r4', authority: 'api.shop:8080' }, 301, 'https://api.shop:8080/r4'],
    ['FROM_PROTOCOL_DEFAULT drops the port', { path: '/r5', authority: 'api.shop:8080' }, 301, 'https://api.shop/r5'],
    ['no :80 for http', { path: '/r6', authority: 'api.shop' }, 301, 'http://api.shop/r6'],
    ['port 80 replaces the request port', { path: '/r6', authority: 'api.shop:8080' }, 301, 'http://api.shop/r6'],
  ])('redirects: %s', (_, over, status, location) => {
    expect(router.route(request(api, over))).toEqual({ kind: 'redirect', route: expect.any(String), status, location });
  });

  it('answers directly, with the body and the response headers', () => {
    expect(router.route(request(api, { path: '/dr' }))).toEqual({
      kind: 'direct-response', route: 'shop/api#13', status: 503, body: 'down for maintenance', responseHeaders: { set: { 'retry-after': '60' }, add: {}, remove: [] },
    });
    expect(router.route(request(api, { path: '/db' }))).toMatchObject({ status: 200, body: 'hello' });
  });
});

describe('VirtualService headers, faults, mirrors, retries, timeouts', () => {
  const rule = (fields: string) => `  hosts: [api]
  http:
  - route: [{ destination: { host: api } }]
${fields.split('\n').map((l) => `    ${l}`).join('\n')}`;
  const action = (fields: string) => {
    const { router, svc } = world([services('shop', ['api', 'shadow']), vs('api', rule(fields))]);
    return { a: forward(router.route(request(svc('api')))), router };
  };

  it.each<[string, string, Partial<ForwardAction>]>([
    ['a delay with a percentage', 'fault: { delay: { fixedDelay: 5s, percentage: { value: 10 } } }', { fault: { delay: { ms: 5000, percent: 10 } } }],
    ['a delay without a percentage delays all', 'fault: { delay: { fixedDelay: 250ms } }', { fault: { delay: { ms: 250, percent: 100 } } }],
    ['an abort without a percentage aborts all', 'fault: { abort: { httpStatus: 503 } }', { fault: { abort: { status: 503, percent: 100 } } }],
    ['a gRPC abort', 'fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 25.5 } } }', { fault: { abort: { grpcStatus: 'UNAVAILABLE', percent: 25.5 } } }],
    ['a delay and an abort', 'fault: { delay: { fixedDelay: 1s, percentage: { value: 50 } }, abort: { httpStatus: 500, percentage: { value: 1 } } }', { fault: { delay: { ms: 1000, percent: 50 }, abort: { status: 500, percent: 1 } } }],
    ['a timeout', 'timeout: 1.5s', { timeoutMs: 1500 }],
    ['retries with status codes in retryOn', 'retries: { attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error, connect-failure,503" }', { retries: { attempts: 3, perTryTimeoutMs: 2000, retryOn: ['gateway-error', 'connect-failure', 'retriable-status-codes'], retriableStatusCodes: [503] } }],
    ['retries without retryOn take the default conditions', 'retries: { attempts: 5 }', { retries: { attempts: 5, retryOn: DEFAULT_RETRIES.retryOn, retriableStatusCodes: [] } }],
    ['no retries set: the default policy', 'timeout: 0s', { retries: DEFAULT_RETRIES }],
    ['rule headers', 'headers: { request: { set: { X-Env: prod }, add: { x-trace: "1" }, remove: [Cookie, ":path"] }, response: { remove: [server] } }', {
      requestHeaders: { set: { 'x-env': 'prod' }, add: { 'x-trace': '1' }, remove: ['cookie'] },
      responseHeaders: { set: {}, add: {}, remove: ['server'] },
    }],
    ['a CORS policy is passed on', 'corsPolicy: { allowOrigins: [{ exact: "https://shop.example" }] }', { corsPolicy: { allowOrigins: [{ exact: 'https://shop.example' }] } }],
  ])('%s', (_, fields, expected) => {
    expect(action(fields).a).toMatchObject(expected);
  });

  it.each<[string, string]>([
    ['retries with attempts 0 are off', 'retries: { attempts: 0, retryOn: 5xx }'],
    ['retries without attempts are off, as in Istio', 'retries: { perTryTimeout: 1s }'],
  ])('%s', (_, fields) => {
    expect(action(fields).a.retries).toBeUndefined();
  });

  it('has no fault, timeout, mirror or rewrite unless set', () => {
    const { a } = action('timeout: 0s');
    expect([a.fault, a.timeoutMs, a.mirror, a.mirrors, a.rewrite]).toEqual([undefined, undefined, undefined, undefined, undefined]);
  });

  it.each<[string, string, { to: string; percent: number }[] | undefined]>([
    ['mirror with mirrorPercentage', 'mirror: { host: shadow }\nmirrorPercentage: { value: 5 }', [{ to: 'shadow', percent: 5 }]],
    ['mirror defaults to 100%', 'mirror: { host: shadow }', [{ to: 'shadow', percent: 100 }]],
    ['the deprecated mirrorPercent', 'mirror: { host: shadow }\nmirrorPercent: 30', [{ to: 'shadow', percent: 30 }]],
    ['a zero percentage turns the mirror off', 'mirror: { host: shadow }\nmirrorPercentage: { value: 0 }', undefined],
    ['mirrors', 'mirrors: [{ destination: { host: shadow }, percentage: { value: 20 } }, { destination: { host: api } }]', [{ to: 'shadow', percent: 20 }, { to: 'api', percent: 100 }]],
  ])('%s', (_, fields, expected) => {
    const { a } = action(fields);
    expect(a.mirrors?.map((m) => ({ to: m.destination.service.name, percent: m.percent }))).toEqual(expected);
    expect(a.mirror).toEqual(a.mirrors?.[0]);
    if (a.mirror) expect(a.mirror.destination.port).toBe(80);
  });

  it('warns about faults it cannot inject', () => {
    const { a, router } = action('fault: { delay: { exponentialDelay: 1s }, abort: { http2Error: CANCEL } }');
    expect(a.fault).toBeUndefined();
    expect(router.warnings).toEqual([
      'VirtualService shop/api: http[0]: fault.delay.exponentialDelay is not supported: no delay is injected',
      'VirtualService shop/api: http[0]: fault.abort.http2Error is not supported: no abort is injected',
    ]);
  });

  it('keeps per-destination headers on the destination, and their authority only when the route sets none', () => {
    const { router, svc } = world([services('shop', ['api', 'shadow']), vs('api', `  hosts: [api]
  http:
  - match: [{ uri: { prefix: /a } }]
    route: [{ destination: { host: api }, headers: { request: { set: { x-dest: "1", ":authority": dest.internal } }, response: { add: { x-served: api } } } }]
  - match: [{ uri: { prefix: /b } }]
    rewrite: { authority: route.internal }
    route: [{ destination: { host: api }, headers: { request: { set: { host: dest.internal } } } }]`)]);
    const [a] = forward(router.route(request(svc('api'), { path: '/a' }))).destinations;
    expect([a!.headers, a!.responseHeaders, a!.authority]).toEqual([{ set: { 'x-dest': '1' }, add: {}, remove: [] }, { set: {}, add: { 'x-served': 'api' }, remove: [] }, 'dest.internal']);
    const b = forward(router.route(request(svc('api'), { path: '/b' })));
    expect([b.rewrite?.authority, b.destinations[0]!.authority]).toEqual(['route.internal', undefined]);
  });
});

// ---------------------------------------------------------------------------------------------
// DestinationRules

describe('DestinationRule subsets and traffic policy', () => {
  const RULE = dr('cart', `  host: cart
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    connectionPool: { tcp: { maxConnections: 100 } }
    outlierDetection: { consecutive5xxErrors: 7 }
    portLevelSettings:
    - { port: { number: 8080 }, loadBalancer: { simple: LEAST_REQUEST } }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 }, trafficPolicy: { loadBalancer: { simple: RANDOM } } }
  - name: v3
    labels: { version: v3 }
    trafficPolicy:
      outlierDetection: { consecutive5xxErrors: 1 }
      portLevelSettings: [{ port: { number: 80 }, connectionPool: { http: { http2MaxRequests: 5 } } }]
  - { name: all }`);
  const { router, svc } = world([services('shop', ['cart'], [80, 8080]), RULE]);
  const cart = svc('cart');
  const dest = (port: number, subset?: string): Destination => ({ service: cart, port, weight: 100, ...(subset ? { subset } : {}) });

  it.each<[string, Destination, object]>([
    ['top level', dest(80), { loadBalancer: { simple: 'ROUND_ROBIN' }, connectionPool: { tcp: { maxConnections: 100 } }, outlierDetection: { consecutive5xxErrors: 7 } }],
    ['a port-level entry replaces the whole policy (no inheritance)', dest(8080), { loadBalancer: { simple: 'LEAST_REQUEST' } }],
    ['a subset without a policy inherits', dest(80, 'v1'), { loadBalancer: { simple: 'ROUND_ROBIN' }, connectionPool: { tcp: { maxConnections: 100 } }, outlierDetection: { consecutive5xxErrors: 7 } }],
    ['a subset field replaces the inherited one', dest(80, 'v2'), { loadBalancer: { simple: 'RANDOM' }, connectionPool: { tcp: { maxConnections: 100 } }, outlierDetection: { consecutive5xxErrors: 7 } }],
    ['a subset over the port-level entry', dest(8080, 'v2'), { loadBalancer: { simple: 'RANDOM' } }],
    ["a subset's port-level entry replaces everything", dest(80, 'v3'), { connectionPool: { http: { http2MaxRequests: 5 } } }],
    ["a subset's field on another port", dest(8080, 'v3'), { loadBalancer: { simple: 'LEAST_REQUEST' }, outlierDetection: { consecutive5xxErrors: 1 } }],
  ])('%s', (_, d, expected) => {
    expect(router.trafficPolicy(d)).toEqual(expected);
  });

  it('gives subset labels, {} for a subset without labels, undefined otherwise', () => {
    expect(router.subsetLabels(cart, 'v2')).toEqual({ version: 'v2' });
    expect(router.subsetLabels(cart, 'all')).toEqual({});
    expect(router.subsetLabels(cart, 'v9')).toBeUndefined();
    expect(router.subsetLabels(cart, undefined)).toBeUndefined();
  });

  it("prefers the service's namespace, merges rules for one host there, and ignores client-side and hidden rules", () => {
    const texts = [
      services('shop', ['cart']),
      dr('a-remote', '  host: cart.shop.svc.cluster.local\n  subsets: [{ name: v1, labels: { from: remote } }]', 'aaa'),
      dr('b-hidden', '  host: cart.shop.svc.cluster.local\n  exportTo: ["."]\n  subsets: [{ name: v7, labels: { from: hidden } }]', 'bbb'),
      dr('one', '  host: cart\n  trafficPolicy: { loadBalancer: { simple: RANDOM } }\n  subsets: [{ name: v1, labels: { from: one } }]'),
      dr('two', '  host: cart\n  trafficPolicy: { loadBalancer: { simple: LEAST_REQUEST } }\n  subsets: [{ name: v1, labels: { from: two } }, { name: v2, labels: { from: two } }]'),
      dr('selected', '  host: cart\n  workloadSelector: { matchLabels: { app: client } }\n  subsets: [{ name: v3, labels: { from: selected } }]'),
    ];
    const { router: r, svc: s } = world(texts);
    const c = s('cart');
    expect([r.subsetLabels(c, 'v1'), r.subsetLabels(c, 'v2'), r.subsetLabels(c, 'v3'), r.subsetLabels(c, 'v7')]).toEqual([{ from: 'one' }, { from: 'two' }, undefined, undefined]);
    expect(r.trafficPolicy({ service: c, port: 80, weight: 100 })).toEqual({ loadBalancer: { simple: 'RANDOM' } });
    expect(r.warnings).toEqual([
      'DestinationRule shop/selected: has a workloadSelector, which selects client sidecars: ignored by waypoints',
      'DestinationRule shop/two: subset "v1" is already defined for cart.shop.svc.cluster.local by shop/one: ignored',
    ]);
    // Without a rule in its namespace, the exported one elsewhere applies.
    const remote = world(texts.slice(0, 3));
    expect(remote.router.subsetLabels(remote.svc('cart'), 'v1')).toEqual({ from: 'remote' });
  });
});

// ---------------------------------------------------------------------------------------------
// HTTPRoute

describe('HTTPRoute matching and precedence', () => {
  const BACKENDS = ['root', 'prefix-a', 'regex', 'method', 'prefix-ab', 'exact', 'header', 'query', 'tie-a', 'tie-z', 'seg'];
  const parent = '  parentRefs: [{ group: "", kind: Service, name: api, port: 80 }]';
  const backend = (name: string) => `backendRefs: [{ name: ${name}, port: 80 }]`;
  const { router, svc } = world([
    services('shop', ['api', ...BACKENDS]),
    httpRoute('alpha', `${parent}
  rules:
  - { ${backend('root')} }
  - { matches: [{ path: { type: PathPrefix, value: /a } }], ${backend('prefix-a')} }
  - { matches: [{ path: { type: RegularExpression, value: "/a/.*" } }], ${backend('regex')} }
  - { matches: [{ path: { type: PathPrefix, value: /a }, method: POST }], ${backend('method')} }
  - { matches: [{ path: { type: PathPrefix, value: /tie } }], ${backend('tie-a')} }
  - { matches: [{ path: { type: PathPrefix, value: /seg/ } }], ${backend('seg')} }`),
    httpRoute('beta', `${parent}
  rules:
  - { matches: [{ path: { type: PathPrefix, value: /a/b } }], ${backend('prefix-ab')} }
  - { matches: [{ path: { type: Exact, value: /a/b } }], ${backend('exact')} }
  - { matches: [{ path: { value: /a }, headers: [{ name: X-H, value: "1" }] }], ${backend('header')} }
  - { matches: [{ path: { value: /a }, headers: [{ name: x-h, value: "1" }], queryParams: [{ name: q, value: "1" }] }], ${backend('query')} }
  - { matches: [{ path: { type: PathPrefix, value: /tie } }], ${backend('tie-z')} }`),
  ]);
  const api = svc('api');
  const to = (over: Partial<RouteRequest>) => forward(router.route(request(api, over))).destinations[0]!.service.name;

  it.each<[string, Partial<RouteRequest>, string]>([
    ['exact beats a prefix of the same length', { path: '/a/b' }, 'exact'],
    ['the longest prefix wins', { path: '/a/b/c' }, 'prefix-ab'],
    ['a prefix beats a regex', { path: '/a/x' }, 'prefix-a'],
    ['a method match beats header matches', { path: '/a/x', method: 'POST', headers: { 'x-h': '1' } }, 'method'],
    ['more headers win', { path: '/a/x', headers: { 'x-h': '1' } }, 'header'],
    ['then more query params', { path: '/a/x?q=1', headers: { 'x-h': '1' } }, 'query'],
    ['PathPrefix matches the path itself', { path: '/a' }, 'prefix-a'],
    ['PathPrefix matches with a trailing slash', { path: '/a/' }, 'prefix-a'],
    ['PathPrefix ignores the query', { path: '/a?x=1' }, 'prefix-a'],
    ['PathPrefix matches whole segments only', { path: '/ab' }, 'root'],
    ['a trailing slash in the prefix is ignored', { path: '/seg' }, 'seg'],
    ['a trailing slash in the prefix is ignored (deeper)', { path: '/seg/x' }, 'seg'],
    ['ties go to the first route by namespace/name', { path: '/tie' }, 'tie-a'],
    ['no matches is PathPrefix /', { path: '/anything' }, 'root'],
  ])('%s', (_, over, expected) => {
    expect(to(over)).toBe(expected);
  });

  it('names the route and rule', () => {
    expect(forward(router.route(request(api, { path: '/a/b' }))).route).toBe('shop/beta#1');
  });

  it('counts the first of equal header names only, and an explicitly empty matches list last', () => {
    const { router: r, svc: s } = world([services('shop', ['api', 'first', 'both', 'fallback']), httpRoute('dup', `${parent}
  rules:
  - { matches: [], backendRefs: [{ name: fallback, port: 80 }] }
  - { matches: [{ path: { value: /d }, headers: [{ name: x-h, value: a }, { name: X-H, value: b }] }], backendRefs: [{ name: first, port: 80 }] }`)]);
    const name = (v: string) => forward(r.route(request(s('api'), { path: '/d', headers: { 'x-h': v } }))).destinations[0]!.service.name;
    expect([name('a'), name('b')]).toEqual(['first', 'fallback']);
  });

  it('answers no-route when routes apply and none matches', () => {
    const { router: r, svc: s } = world([services('shop', ['api']), httpRoute('only', `${parent}
  rules: [{ matches: [{ path: { type: Exact, value: /only } }], backendRefs: [{ name: api, port: 80 }] }]`)]);
    expect(r.route(request(s('api'), { path: '/other' }))).toEqual({ kind: 'no-route' });
  });
});

describe('HTTPRoute binding', () => {
  it('binds to the parentRef port (or sectionName) only, falling back to the VirtualService elsewhere', () => {
    const { router, svc } = world([
      services('shop', ['api', 'v-next'], [80, 8080]),
      vs('api', '  hosts: [api]\n  http: [{ route: [{ destination: { host: api } }] }]'),
      httpRoute('by-port', '  parentRefs: [{ kind: Service, name: api, port: 8080 }]\n  rules: [{ backendRefs: [{ name: v-next, port: 8080 }] }]'),
    ]);
    expect(forward(router.route(request(svc('api'), { port: 8080 }))).route).toBe('shop/by-port#0');
    expect(forward(router.route(request(svc('api'), { port: 80 }))).route).toBe('shop/api#0');
    const named = world([services('shop', ['api', 'v-next'], [80, 8080]), httpRoute('by-name', '  parentRefs: [{ kind: Service, name: api, sectionName: p80 }]\n  rules: [{ backendRefs: [{ name: v-next, port: 80 }] }]')]);
    expect(forward(named.router.route(request(named.svc('api'), { port: 80 }))).route).toBe('shop/by-name#0');
    expect(forward(named.router.route(request(named.svc('api'), { port: 8080 }))).route).toBe('default');
  });

  it('ignores Gateway parents and a Service kind in another group, and warns about hostnames and missing parents', () => {
    const { router, svc } = world([services('shop', ['api']), httpRoute('r', `  parentRefs: [{ name: api }, { group: example.com, kind: Service, name: api }, { kind: Service, name: ghost }, { kind: Service, name: api }]
  hostnames: [api.example.com]
  rules: [{ backendRefs: [{ name: api, port: 80 }] }]`)]);
    expect(forward(router.route(request(svc('api')))).route).toBe('shop/r#0');
    expect(router.warnings).toEqual(['HTTPRoute shop/r: parent Service shop/ghost does not exist: not attached', 'HTTPRoute shop/r: hostnames are ignored for Service parents']);
  });

  it('applies a consumer route (another namespace) only to requests from its namespace, in place of the producer routes', () => {
    const { router, svc } = world([
      services('shop', ['api', 'canary', 'stable']),
      httpRoute('producer', '  parentRefs: [{ kind: Service, name: api }]\n  rules: [{ backendRefs: [{ name: stable, port: 80 }] }]'),
      httpRoute('consumer', '  parentRefs: [{ kind: Service, name: api, namespace: shop }]\n  rules: [{ backendRefs: [{ name: canary, namespace: shop, port: 80 }] }]', 'tester'),
    ]);
    const name = (sourceNamespace?: string) => forward(router.route(request(svc('api'), { ...(sourceNamespace ? { sourceNamespace } : {}) }))).destinations[0]!.service.name;
    expect([name(), name('shop'), name('tester')]).toEqual(['stable', 'stable', 'canary']);
  });
});

describe('HTTPRoute backends and filters', () => {
  const parent = '  parentRefs: [{ kind: Service, name: api }]';
  const one = (rule: string, extra: string[] = []) => {
    const { router, svc } = world([services('shop', ['api', 'b1', 'b2', 'shadow']), services('other', ['far']), ...extra, httpRoute('r', `${parent}\n  rules:\n  - ${rule}`)], { random: seeded(9) });
    return { router, api: svc('api') };
  };

  it.each<[string, string, ReturnType<typeof summary>[]]>([
    ['weights default to 1', '{ backendRefs: [{ name: b1, port: 80 }, { name: b2, port: 80 }] }', [
      { to: 'b1', port: 80, subset: undefined, weight: 1, selector: undefined, missing: undefined },
      { to: 'b2', port: 80, subset: undefined, weight: 1, selector: undefined, missing: undefined }]],
    ['zero weights are dropped', '{ backendRefs: [{ name: b1, port: 80, weight: 0 }, { name: b2, port: 80, weight: 3 }] }', [
      { to: 'b2', port: 80, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ['another namespace (no ReferenceGrant needed for mesh routes, as in Istio)', '{ backendRefs: [{ name: far, namespace: other, port: 80 }] }', [
      { to: 'far', port: 80, subset: undefined, weight: 100, selector: undefined, missing: undefined }]],
    ['a missing Service keeps its share as 500s', '{ backendRefs: [{ name: ghost, port: 80, weight: 1 }, { name: b1, port: 80, weight: 3 }] }', [
      { to: 'ghost', port: 80, subset: undefined, weight: 1, selector: undefined, missing: 500 },
      { to: 'b1', port: 80, subset: undefined, weight: 3, selector: undefined, missing: undefined }]],
    ['an unsupported kind is a 500', '{ backendRefs: [{ group: example.com, kind: Bucket, name: b1, port: 80 }] }', [
      { to: 'b1', port: 80, subset: undefined, weight: 100, selector: undefined, missing: 500 }]],
  ])('%s', (_, rule, expected) => {
    const { router, api } = one(rule);
    expect(forward(router.route(request(api))).destinations.map(summary)).toEqual(expected);
  });

  it('splits equal weights evenly', () => {
    const { router, api } = one('{ backendRefs: [{ name: b1, port: 80 }, { name: b2, port: 80 }] }');
    const s = shares(router, forward(router.route(request(api))));
    expect(Math.abs(s.b1! - 0.5)).toBeLessThan(0.02);
  });

  it.each<[string, string]>([
    ['no backendRefs', '{ filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: { add: [{ name: x, value: y }] } }] }'],
    ['only zero weights', '{ backendRefs: [{ name: b1, port: 80, weight: 0 }] }'],
  ])('answers 500 with %s', (_, rule) => {
    const { router, api } = one(rule);
    expect(router.route(request(api))).toEqual({ kind: 'direct-response', route: 'shop/r#0', status: 500 });
  });

  it('modifies request and response headers, the first of equal names winning, and a Host set as the authority', () => {
    const { router, api } = one(`filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: { set: [{ name: X-Env, value: a }, { name: x-env, value: b }, { name: Host, value: internal.api }], add: [{ name: x-add, value: "1" }], remove: [X-Drop] }
    - type: ResponseHeaderModifier
      responseHeaderModifier: { set: [{ name: cache-control, value: no-store }] }
    backendRefs:
    - name: b1
      port: 80
      filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: x-backend, value: b1 }] } }]`);
    const a = forward(router.route(request(api)));
    expect(a.requestHeaders).toEqual({ set: { 'x-env': 'a' }, add: { 'x-add': '1' }, remove: ['x-drop'] });
    expect(a.responseHeaders).toEqual({ set: { 'cache-control': 'no-store' }, add: {}, remove: [] });
    expect(a.rewrite).toEqual({ authority: 'internal.api' });
    expect(a.destinations[0]!.headers).toEqual({ set: { 'x-backend': 'b1' }, add: {}, remove: [] });
  });

  it.each<[string, string, Partial<RouteRequest>, number, string]>([
    ['302 by default, to the hostname', '{ type: RequestRedirect, requestRedirect: { hostname: new.example } }', { authority: 'api.shop:80' }, 302, 'http://new.example/x?q=1'],
    ['the request port, left out when it is 80', '{ type: RequestRedirect, requestRedirect: { path: { type: ReplaceFullPath, replaceFullPath: /y } } }', { authority: 'api.shop:80' }, 302, 'http://api.shop/y?q=1'],
    ['the request port', '{ type: RequestRedirect, requestRedirect: { hostname: new.example } }', { port: 8080, authority: 'api.shop:8080' }, 302, 'http://new.example:8080/x?q=1'],
    ['a scheme drops the port', '{ type: RequestRedirect, requestRedirect: { scheme: https, statusCode: 301 } }', { authority: 'api.shop:8080' }, 301, 'https://api.shop/x?q=1'],
    ['a port', '{ type: RequestRedirect, requestRedirect: { port: 8443, scheme: https } }', {}, 302, 'https://api.shop:8443/x?q=1'],
    ['ReplaceFullPath', '{ type: RequestRedirect, requestRedirect: { path: { type: ReplaceFullPath, replaceFullPath: /full } } }', { authority: 'api.shop' }, 302, 'http://api.shop/full?q=1'],
    ['ReplacePrefixMatch', '{ type: RequestRedirect, requestRedirect: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /y } } }', { authority: 'api.shop', path: '/x/z?q=1' }, 302, 'http://api.shop/y/z?q=1'],
  ])('redirects: %s', (_, filter, over, status, location) => {
    const { router, api } = one(`{ matches: [{ path: { value: /x } }], filters: [${filter}], backendRefs: [{ name: b1, port: 80 }] }`);
    expect(router.route(request(api, { path: '/x?q=1', ...over }))).toEqual({ kind: 'redirect', route: 'shop/r#0', status, location });
  });

  // The Gateway API's ReplacePrefixMatch table.
  it.each<[string, string, string, string]>([
    ['/foo/bar', '/foo', '/xyz', '/xyz/bar'],
    ['/foo/bar', '/foo', '/xyz/', '/xyz/bar'],
    ['/foo/bar', '/foo/', '/xyz', '/xyz/bar'],
    ['/foo/bar', '/foo/', '/xyz/', '/xyz/bar'],
    ['/foo', '/foo', '/xyz', '/xyz'],
    ['/foo/', '/foo', '/xyz', '/xyz/'],
    ['/foo/bar', '/foo', '/', '/bar'],
    ['/foo/', '/foo', '/', '/'],
    ['/foo', '/foo', '/', '/'],
    ['/foo/bar?x=1', '/', '/xyz', '/xyz/foo/bar?x=1'],
  ])('URLRewrite ReplacePrefixMatch: %s with prefix %s replaced by %s is %s', (path, prefix, replacement, expected) => {
    const { router, api } = one(`{ matches: [{ path: { type: PathPrefix, value: "${prefix}" } }], filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: "${replacement}" } } }], backendRefs: [{ name: b1, port: 80 }] }`);
    expect(forward(router.route(request(api, { path }))).rewrite?.path).toBe(expected);
  });

  it('URLRewrite ReplaceFullPath and hostname', () => {
    const { router, api } = one('{ filters: [{ type: URLRewrite, urlRewrite: { hostname: internal.api, path: { type: ReplaceFullPath, replaceFullPath: /v2/all } } }], backendRefs: [{ name: b1, port: 80 }] }');
    expect(forward(router.route(request(api, { path: '/a/b?c=d' }))).rewrite).toEqual({ uriRegex: { match: '/.*', rewrite: '/v2/all' }, authority: 'internal.api', path: '/v2/all?c=d' });
  });

  it.each<[string, string, number]>([
    ['percent', 'percent: 25', 25],
    ['fraction', 'fraction: { numerator: 1, denominator: 8 }', 12.5],
    ['default', '', 100],
  ])('mirrors with a %s', (_, extra, percent) => {
    const { router, api } = one(`{ filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: shadow, port: 80 }${extra ? `, ${extra}` : ''} } }], backendRefs: [{ name: b1, port: 80 }] }`);
    const a = forward(router.route(request(api)));
    expect(a.mirror).toEqual({ destination: { service: expect.objectContaining({ name: 'shadow' }), port: 80, weight: 100 }, percent });
  });

  it.each<[string, string, Partial<ForwardAction>]>([
    ['timeouts.request', 'timeouts: { request: 3s }', { timeoutMs: 3000, retries: DEFAULT_RETRIES }],
    ['backendRequest without a retry is the route timeout', 'timeouts: { request: 3s, backendRequest: 1s }', { timeoutMs: 1000 }],
    ['retry', 'retry: { attempts: 4, codes: [503, 502], backoff: 100ms }', { retries: { attempts: 4, retryOn: ['connect-failure', 'refused-stream', 'unavailable', 'cancelled', 'retriable-status-codes'], retriableStatusCodes: [503, 502], backoffMs: 100 } }],
    ['retry with backendRequest as the per-try timeout', 'retry: {}\n    timeouts: { backendRequest: 2s }', { retries: { attempts: 2, retryOn: ['connect-failure', 'refused-stream', 'unavailable', 'cancelled'], retriableStatusCodes: [], perTryTimeoutMs: 2000 } }],
  ])('%s', (_, fields, expected) => {
    const { router, api } = one(`backendRefs: [{ name: b1, port: 80 }]\n    ${fields}`);
    expect(forward(router.route(request(api)))).toMatchObject(expected);
  });

  it('drops a route with a filter Istio rejects, and says so', () => {
    const { router, api } = one('{ filters: [{ type: ExtensionRef, extensionRef: { group: x, kind: y, name: z } }], backendRefs: [{ name: b1, port: 80 }] }');
    expect(forward(router.route(request(api))).route).toBe('default');
    expect(router.warnings).toContain('HTTPRoute shop/r: rules[0].filters[0]: filter ExtensionRef is not supported: the route is not used');
  });
});

// ---------------------------------------------------------------------------------------------
// GRPCRoute

describe('GRPCRoute', () => {
  const { router, svc } = world([services('shop', ['grpc', 'add', 'cart-any', 'get-any', 'regex', 'hdr', 'rest']), httpRoute('g', `  parentRefs: [{ kind: Service, name: grpc }]
  rules:
  - { backendRefs: [{ name: rest, port: 80 }] }
  - { matches: [{ method: { service: shop.Cart } }], backendRefs: [{ name: cart-any, port: 80 }] }
  - { matches: [{ method: { service: shop.Cart, method: Add } }], backendRefs: [{ name: add, port: 80 }] }
  - { matches: [{ method: { method: Get } }], backendRefs: [{ name: get-any, port: 80 }] }
  - { matches: [{ method: { type: RegularExpression, service: "shop\\\\.Inv.*", method: "List.*" } }], backendRefs: [{ name: regex, port: 80 }] }
  - { matches: [{ headers: [{ name: x-tenant, value: blue }] }], backendRefs: [{ name: hdr, port: 80 }] }`, 'shop', 'GRPCRoute')]);
  const to = (path: string, headers: Record<string, string> = {}) => forward(router.route(request(svc('grpc'), { method: 'POST', path, headers, grpc: true }))).destinations[0]!.service.name;

  it.each<[string, string, Record<string, string>, string]>([
    ['service and method: exact', '/shop.Cart/Add', {}, 'add'],
    ['exact is exact', '/shop.Cart/AddItem', {}, 'cart-any'],
    ['service only: any method of it', '/shop.Cart/Remove', {}, 'cart-any'],
    ['service only: whole service name', '/shop.CartX/Remove', {}, 'rest'],
    ['method only: any service', '/other.Svc/Get', {}, 'get-any'],
    ['regular expressions', '/shop.Inventory/ListItems', {}, 'regex'],
    ['regular expressions are anchored', '/a/shop.Inventory/ListItems', {}, 'rest'],
    ['headers', '/x.Y/Z', { 'x-tenant': 'blue' }, 'hdr'],
    ['a rule without matches goes last', '/x.Y/Z', {}, 'rest'],
  ])('%s', (_, path, headers, expected) => {
    expect(to(path, headers)).toBe(expected);
  });
});
