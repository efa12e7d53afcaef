/**
 * SMI TrafficSplit at the waypoint's router: the write-up's 900/100 split read unchanged through
 * the manifest parser, validation and model, then weights (v1alpha1 quantities, integers,
 * zeros), ports, unknown backends, `matches`, the root service's name forms, precedence against
 * VirtualService and HTTPRoute, and specs the router must skip rather than crash on.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildModel, type ConfigObject, type MeshModel, type Service } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { parseManifests } from '../../src/kube/manifests.js';
import { DEFAULT_RETRIES, DEFAULT_ROUTE, Router, type Destination, type ForwardAction, type RouteAction, type RouteRequest } from '../../src/waypoint/routing.js';
import { quantityValue as quantity } from '../../src/config/schema.js';
import { waypointServiceItems } from '../../src/waypoint/proxy-config.js';
import { seeded } from './helpers/random.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

/** The write-up's TrafficSplit, as written there. */
function seedSplit(): string {
  const blocks = [...readFileSync(join(SHARED, 'seed', '000_00ae23f618932bae.txt'), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);
  const block = blocks.find((b) => b.includes('kind: TrafficSplit') && b.includes('name: backend-split\n'));
  if (!block) throw new Error('no TrafficSplit backend-split in the write-up');
  return block;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const NS = 'production';

function servicesYaml(list: { name: string; ports?: number[]; namespace?: string }[]): string {
  return list.map(({ name, ports = [8080], namespace = NS }) => `apiVersion: v1
kind: Service
metadata: { name: ${name}, namespace: ${namespace} }
spec: { selector: { app: ${name} }, ports: [${ports.map((p) => `{ name: p${p}, port: ${p}, targetPort: ${p + 1} }`).join(', ')}] }
---
`).join('');
}

const STANDARD = [{ name: 'backend-service' }, { name: 'backend-v1' }, { name: 'backend-v2' }];

function model(...texts: string[]): MeshModel {
  const { resources, diagnostics } = parseManifests(texts.map((text, i) => ({ file: `m${i}.yaml`, text, dir: '/' })), { validate: validateMeshObject });
  const errors = diagnostics.filter((d) => d.severity === 'error');
  if (errors.length > 0) throw new Error(errors.map((d) => `${d.path ?? ''}: ${d.message}`).join('\n'));
  return buildModel({ resources, pods: [] }, 'cluster.local');
}

/** A TrafficSplit as the router gets it (not through validation: the router must cope with what validation would reject). */
function split(spec: unknown, opts: { name?: string; namespace?: string; version?: string } = {}): ConfigObject {
  return { apiVersion: `split.smi-spec.io/${opts.version ?? 'v1alpha4'}`, kind: 'TrafficSplit', namespace: opts.namespace ?? NS, name: opts.name ?? 'backend-split', spec };
}

const canary = (weights: [unknown, unknown] = [900, 100], extra: Record<string, unknown> = {}) => ({
  service: 'backend-service', backends: [{ service: 'backend-v1', weight: weights[0] }, { service: 'backend-v2', weight: weights[1] }], ...extra,
});

interface World { router: Router; svc: (name: string, namespace?: string) => Service }

function world(config: ConfigObject[], opts: { services?: { name: string; ports?: number[]; namespace?: string }[]; yaml?: string[]; random?: () => number } = {}): World {
  const m = model(servicesYaml(opts.services ?? STANDARD), ...(opts.yaml ?? []));
  const router = new Router([...m.l7, ...config], m.services, { random: opts.random ?? seeded(3) });
  const svc = (name: string, namespace = NS) => {
    const s = m.services.find((x) => x.name === name && x.namespace === namespace);
    if (!s) throw new Error(`no service ${namespace}/${name}`);
    return s;
  };
  return { router, svc };
}

function request(service: Service, over: Partial<RouteRequest> = {}): RouteRequest {
  const port = over.port ?? service.ports[0]!.port;
  return { service, port, method: 'GET', path: '/', authority: `${service.name}.${service.namespace}:${port}`, headers: {}, ...over };
}

function forward(a: RouteAction): ForwardAction {
  if (a.kind !== 'forward') throw new Error(`expected a forward action, got ${JSON.stringify(a)}`);
  return a;
}

const summary = (d: Destination) => ({ to: d.service.name, port: d.port, weight: d.weight, ...(d.missing ? { missing: d.missing.status } : {}) });

/** Evenly spread randoms: i/n for i in 0..n-1, so that n picks show the weights exactly. */
function sweep(n: number): () => number {
  let i = 0;
  return () => (i++ % n) / n;
}

/** How many of n picks went to each backend. */
function counts(router: Router, action: ForwardAction, n: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const name = router.pick(action).service.name;
    out[name] = (out[name] ?? 0) + 1;
  }
  return out;
}

const apexRoute = (w: World, over: Partial<RouteRequest> = {}) => w.router.route(request(w.svc('backend-service'), over));

// ---------------------------------------------------------------------------------------------

describe("the write-up's TrafficSplit, unchanged", () => {
  it('is accepted and kept as L7 config, and splits backend-service 900/100 between backend-v1 and backend-v2', () => {
    const m = model(servicesYaml(STANDARD), seedSplit());
    expect(m.l7.map((c) => `${c.apiVersion} ${c.kind} ${c.namespace}/${c.name}`)).toEqual(['split.smi-spec.io/v1alpha1 TrafficSplit production/backend-split']);
    const router = new Router(m.l7, m.services, { random: sweep(1000) });
    const apex = m.services.find((s) => s.name === 'backend-service')!;
    const a = forward(router.route(request(apex)));
    expect(a.route).toBe('production/backend-split#0');
    expect(a.destinations.map(summary)).toEqual([{ to: 'backend-v1', port: 8080, weight: 900 }, { to: 'backend-v2', port: 8080, weight: 100 }]);
    expect(a.retries).toEqual(DEFAULT_RETRIES);
    expect(counts(router, a, 1000)).toEqual({ 'backend-v1': 900, 'backend-v2': 100 });
    expect(router.warnings).toEqual([]);
    // A backend is routed as itself: the split is on the root service only.
    expect(forward(router.route(request(m.services.find((s) => s.name === 'backend-v2')!))).route).toBe(DEFAULT_ROUTE);
  });

  it('holds 90/10 with a pseudo-random source over 20,000 picks', () => {
    const w = world([split(canary(), { version: 'v1alpha1' })], { random: seeded(11) });
    const c = counts(w.router, forward(apexRoute(w)), 20_000);
    // Binomial(20,000, 0.1): sd 42; within 4 sd.
    expect(Math.abs(c['backend-v2']! - 2000)).toBeLessThan(170);
    expect(c['backend-v1']! + c['backend-v2']!).toBe(20_000);
  });

  it('says which TrafficSplit applies in describe()', () => {
    const w = world([split(canary())]);
    expect(w.router.describe(w.svc('backend-service')).trafficSplit?.name).toBe('backend-split');
    expect(w.router.describe(w.svc('backend-v1')).trafficSplit).toBeUndefined();
    // `ambit proxy-config services` lists it among the service's routes.
    const items = waypointServiceItems([w.svc('backend-service')], w.router);
    expect(items[0]!.routes).toEqual([{ kind: 'TrafficSplit', namespace: 'production', name: 'backend-split', ports: null, consumer: null }]);
  });
});

describe('weights', () => {
  it('reads Kubernetes quantities', () => {
    expect(quantity('900')).toBe(900);
    expect(quantity('900m')).toBeCloseTo(0.9);
    expect(quantity('1.5')).toBe(1.5);
    expect(quantity('.5')).toBe(0.5);
    expect(quantity('1k')).toBe(1000);
    expect(quantity('1Ki')).toBe(1024);
    expect(quantity('1e3')).toBe(1000);
    expect(quantity('1e-3')).toBe(0.001);
    expect(quantity('1500m')).toBe(1.5);
    expect(quantity('0.3m')).toBe(0.0003);
    expect(quantity('+2')).toBe(2);
    expect(quantity('-1')).toBe(-1);
    for (const bad of ['', 'abc', '1.2.3', '10 m', '1kk', 'm', '1K']) expect(quantity(bad), bad).toBeUndefined();
  });

  it('v1alpha1: "900m" and "100m" split 90/10; "1" and "500m" 2:1', () => {
    let w = world([split(canary(['900m', '100m']), { version: 'v1alpha1' })], { random: sweep(1000) });
    let a = forward(apexRoute(w));
    expect(a.destinations.map((d) => d.weight)).toEqual([0.9, 0.1]);
    expect(counts(w.router, a, 1000)).toEqual({ 'backend-v1': 900, 'backend-v2': 100 });
    expect(w.router.warnings).toEqual([]);

    w = world([split(canary(['1', '500m']), { version: 'v1alpha1' })], { random: sweep(300) });
    a = forward(apexRoute(w));
    expect(counts(w.router, a, 300)).toEqual({ 'backend-v1': 200, 'backend-v2': 100 });
  });

  it('v1alpha2 and later: integers, as numbers or digit strings; a quantity is read, with a warning', () => {
    const w = world([split(canary(['90', 10]), { version: 'v1alpha2' })]);
    expect(forward(apexRoute(w)).destinations.map((d) => d.weight)).toEqual([90, 10]);
    expect(w.router.warnings).toEqual([]);

    const q = world([split(canary(['900m', '100m']), { version: 'v1alpha4' })], { random: sweep(10) });
    expect(counts(q.router, forward(apexRoute(q)), 10)).toEqual({ 'backend-v1': 9, 'backend-v2': 1 });
    expect(q.router.warnings).toContain('TrafficSplit production/backend-split: spec.backends[0].weight "900m" is a quantity (v1alpha1\'s form; v1alpha4 takes whole numbers): read as 0.9');
  });

  it('drops zero-weight backends; a single one left weighs 100', () => {
    const w = world([split(canary([100, 0]))]);
    expect(forward(apexRoute(w)).destinations.map(summary)).toEqual([{ to: 'backend-v1', port: 8080, weight: 100 }]);
    expect(w.router.warnings).toEqual([]);
  });

  it('every backend at 0: the root service answers 503 (the split withholds its traffic), with a warning', () => {
    const w = world([split(canary([0, '0']))]);
    expect(apexRoute(w)).toEqual({ kind: 'direct-response', route: 'production/backend-split#0', status: 503, body: 'no backend with a weight\n' });
    expect(w.router.warnings).toEqual(['TrafficSplit production/backend-split: every backend serving port 8080 weighs 0: requests to backend-service:8080 get 503']);
  });
});

describe('backends', () => {
  it('an unknown backend keeps its share, answered 503, as a VirtualService destination whose host does not exist', () => {
    const w = world([split({ service: 'backend-service', backends: [{ service: 'backend-v1', weight: 900 }, { service: 'backend-v3', weight: 100 }] })], { random: sweep(1000) });
    const a = forward(apexRoute(w));
    expect(a.destinations.map(summary)).toEqual([{ to: 'backend-v1', port: 8080, weight: 900 }, { to: 'backend-v3', port: 8080, weight: 100, missing: 503 }]);
    expect(a.destinations[1]!.missing!.reason).toBe('no service backend-v3.production.svc.cluster.local');
    expect(counts(w.router, a, 1000)).toEqual({ 'backend-v1': 900, 'backend-v3': 100 });
    expect(w.router.warnings).toEqual(['TrafficSplit production/backend-split: backend "backend-v3" (backend-v3.production.svc.cluster.local) is not a known service: its share of requests gets 503']);
  });

  it("get the request on the root service's port; a backend without that port gets none of its requests", () => {
    const w = world([split(canary())], {
      services: [{ name: 'backend-service', ports: [80, 9090] }, { name: 'backend-v1', ports: [80, 9090] }, { name: 'backend-v2', ports: [80] }],
    });
    expect(forward(apexRoute(w, { port: 80 })).destinations.map(summary)).toEqual([{ to: 'backend-v1', port: 80, weight: 900 }, { to: 'backend-v2', port: 80, weight: 100 }]);
    expect(forward(apexRoute(w, { port: 9090 })).destinations.map(summary)).toEqual([{ to: 'backend-v1', port: 9090, weight: 100 }]);
    expect(w.router.warnings).toEqual(['TrafficSplit production/backend-split: backend "backend-v2" has no port 9090 (a port of the root service backend-service): it gets none of that port\'s requests']);
  });

  it('a port no backend serves is not split: the root service routes as without it', () => {
    const w = world([split(canary())], {
      services: [{ name: 'backend-service', ports: [80, 9090] }, { name: 'backend-v1', ports: [80] }, { name: 'backend-v2', ports: [80] }],
    });
    expect(forward(apexRoute(w, { port: 80 })).route).toBe('production/backend-split#0');
    const a = forward(apexRoute(w, { port: 9090 }));
    expect([a.route, a.destinations.map(summary)]).toEqual([DEFAULT_ROUTE, [{ to: 'backend-service', port: 9090, weight: 100 }]]);
    expect(w.router.warnings).toContain('TrafficSplit production/backend-split: no backend serves port 9090 of backend-service: the split does not apply on that port');
  });
});

describe('the root service', () => {
  it.each([
    ['a short name', 'backend-service'],
    ['name.namespace', 'backend-service.production'],
    ['name.namespace.svc', 'backend-service.production.svc'],
    ['the FQDN', 'backend-service.production.svc.cluster.local'],
    ['the FQDN, in capitals', 'Backend-Service.Production.svc.cluster.local'],
  ])('named by %s', (_, service) => {
    const w = world([split(canary([900, 100], { service }))]);
    expect(forward(apexRoute(w)).route).toBe('production/backend-split#0');
    expect(w.router.warnings).toEqual([]);
  });

  it('a short name resolves in the TrafficSplit\'s namespace', () => {
    const w = world([split(canary(), { namespace: 'staging' })], {
      services: [...STANDARD, ...STANDARD.map((s) => ({ ...s, namespace: 'staging' }))],
    });
    expect(forward(apexRoute(w)).route).toBe(DEFAULT_ROUTE);
    const a = forward(w.router.route(request(w.svc('backend-service', 'staging'))));
    expect(a.route).toBe('staging/backend-split#0');
    expect(a.destinations.map((d) => d.service.hostname)).toEqual(['backend-v1.staging.svc.cluster.local', 'backend-v2.staging.svc.cluster.local']);
  });

  it("in another namespace: ignored, with a warning (a split is the root service's namespace's config)", () => {
    const w = world([split(canary([900, 100], { service: 'backend-service.production.svc.cluster.local' }), { namespace: 'intruder' })]);
    expect(forward(apexRoute(w)).route).toBe(DEFAULT_ROUTE);
    expect(w.router.warnings).toEqual(['TrafficSplit intruder/backend-split: spec.service "backend-service.production.svc.cluster.local" is in namespace production; a TrafficSplit applies to a root service in its own namespace (intruder): not applied']);
  });

  it('named by several TrafficSplits: the first by namespace/name, with a warning', () => {
    const w = world([split(canary([1, 0]), { name: 'b' }), split(canary([0, 1]), { name: 'a' })]);
    const a = forward(apexRoute(w));
    expect([a.route, a.destinations.map((d) => d.service.name)]).toEqual(['production/a#0', ['backend-v2']]);
    expect(w.router.warnings).toEqual(['backend-service.production.svc.cluster.local: several TrafficSplits name this root service (production/a, production/b); using production/a (the first by namespace/name)']);
  });
});

describe('matches (v1alpha3, v1alpha4)', () => {
  it('a split with matches is not applied: every request goes to the root service, with a warning saying so', () => {
    for (const version of ['v1alpha3', 'v1alpha4']) {
      const w = world([split(canary([0, 100], { matches: [{ kind: 'HTTPRouteGroup', name: 'ab-test' }] }), { version })]);
      const a = forward(apexRoute(w));
      expect([a.route, a.destinations.map(summary)]).toEqual([DEFAULT_ROUTE, [{ to: 'backend-service', port: 8080, weight: 100 }]]);
      expect(w.router.warnings).toHaveLength(1);
      expect(w.router.warnings[0]).toMatch(/^TrafficSplit production\/backend-split: spec\.matches \(HTTPRouteGroup, TCPRoute\) is not supported.*requests go to the root service.*: not applied$/);
    }
  });

  it('an empty matches list is no match at all: the split applies', () => {
    const w = world([split(canary([900, 100], { matches: [] }))]);
    expect(forward(apexRoute(w)).route).toBe('production/backend-split#0');
    expect(w.router.warnings).toEqual([]);
  });
});

describe('precedence', () => {
  const vsYaml = (spec: string) => `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: backend, namespace: ${NS} }
spec:
${spec}
`;

  it('a VirtualService for the same service wins, with a warning', () => {
    const w = world([split(canary())], { yaml: [vsYaml('  hosts: [backend-service]\n  http: [{ route: [{ destination: { host: backend-v2 } }] }]')] });
    const a = forward(apexRoute(w));
    expect([a.route, a.destinations.map((d) => d.service.name)]).toEqual(['production/backend#0', ['backend-v2']]);
    expect(w.router.warnings).toEqual(['backend-service.production.svc.cluster.local: VirtualService production/backend takes precedence over TrafficSplit production/backend-split; the split applies only on ports where it has no rule']);
    expect(w.router.describe(w.svc('backend-service'))).toMatchObject({ virtualService: { name: 'backend' }, trafficSplit: { name: 'backend-split' } });
  });

  it('on a port where the VirtualService has no rule, the TrafficSplit applies', () => {
    const w = world([split(canary())], {
      services: [{ name: 'backend-service', ports: [80, 9090] }, { name: 'backend-v1', ports: [80, 9090] }, { name: 'backend-v2', ports: [80, 9090] }],
      yaml: [vsYaml('  hosts: [backend-service]\n  http: [{ match: [{ port: 80 }], route: [{ destination: { host: backend-v2 } }] }]')],
    });
    expect(forward(apexRoute(w, { port: 80 })).route).toBe('production/backend#0');
    expect(forward(apexRoute(w, { port: 9090 })).route).toBe('production/backend-split#0');
  });

  it('an HTTPRoute for the same service wins too', () => {
    const route = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: backend, namespace: ${NS} }
spec:
  parentRefs: [{ kind: Service, group: "", name: backend-service }]
  rules: [{ backendRefs: [{ name: backend-v1, port: 8080 }] }]
`;
    const w = world([split(canary())], { yaml: [route] });
    expect(forward(apexRoute(w)).route).toBe('production/backend#0');
    expect(w.router.warnings).toContain('backend-service.production.svc.cluster.local: HTTPRoute/GRPCRoute(s) take precedence over TrafficSplit production/backend-split; the split applies only on ports where they have no rule');
  });
});

describe('specs the router cannot apply: skipped with a warning, never a crash', () => {
  it.each([
    ['no backends', { service: 'backend-service' }, 'spec.backends must list at least one backend'],
    ['an empty backends list', { service: 'backend-service', backends: [] }, 'spec.backends must list at least one backend'],
    ['backends not a list', { service: 'backend-service', backends: { service: 'backend-v1' } }, 'spec.backends must list at least one backend'],
    ['a backend that is not an object', { service: 'backend-service', backends: ['backend-v1'] }, 'spec.backends[0].service is required'],
    ['a backend without a service', { service: 'backend-service', backends: [{ weight: 1 }] }, 'spec.backends[0].service is required'],
    ['a non-numeric weight', canary([900, 'lots']), 'spec.backends[1].weight "lots" is not a number'],
    ['a weight of another type', canary([900, true]), 'spec.backends[1].weight true is not a number'],
    ['a missing weight', { service: 'backend-service', backends: [{ service: 'backend-v1' }] }, 'spec.backends[0].weight is required'],
    ['a negative weight', canary([-1, 100]), 'spec.backends[0].weight -1 is negative'],
    ['an infinite weight', canary([Infinity, 100]), 'spec.backends[0].weight Infinity is not a number'],
    ['no root service', { backends: [{ service: 'backend-v1', weight: 1 }] }, 'spec.service (the root service) is required'],
    ['a wildcard root service', canary([1, 1], { service: '*.production.svc.cluster.local' }), 'spec.service "*.production.svc.cluster.local" is a wildcard; it must name one Service'],
    ['no spec', null, 'spec.service (the root service) is required'],
  ])('%s', (_, spec, why) => {
    const w = world([split(spec)]);
    expect(forward(apexRoute(w)).route).toBe(DEFAULT_ROUTE);
    expect(w.router.warnings).toEqual([`TrafficSplit production/backend-split: ${why}: not applied`]);
  });

  it('an unknown version', () => {
    const w = world([split(canary(), { version: 'v1beta1' })]);
    expect(forward(apexRoute(w)).route).toBe(DEFAULT_ROUTE);
    expect(w.router.warnings).toEqual(['TrafficSplit production/backend-split: split.smi-spec.io/v1beta1 is not a version ambit reads (split.smi-spec.io/v1alpha1, split.smi-spec.io/v1alpha2, split.smi-spec.io/v1alpha3, split.smi-spec.io/v1alpha4): not applied']);
  });
});
