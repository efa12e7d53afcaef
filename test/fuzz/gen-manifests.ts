/**
 * Generators of manifests for `ambit analyze`: realistic Istio, Gateway API, ambit and
 * Kubernetes objects with values replaced, removed or wrapped at random paths, written as YAML or
 * JSON (several documents per file), sometimes with the text itself cut or spliced; and YAML that
 * only a parser could love (anchors and aliases, tags, deep nesting, odd scalars).
 */
import * as fc from 'fast-check';
import { stringify } from 'yaml';
import { latin1 } from './gen-http.js';

const BASES: Record<string, unknown>[] = [
  { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'orders', namespace: 'shop' }, spec: { hosts: ['orders'], http: [{ match: [{ headers: { 'x-canary': { exact: 'yes' } }, uri: { prefix: '/api' } }], route: [{ destination: { host: 'orders', subset: 'v2', port: { number: 80 } }, weight: 90 }, { destination: { host: 'orders', subset: 'v1' }, weight: 10 }], timeout: '2s', retries: { attempts: 3, perTryTimeout: '500ms', retryOn: '5xx,reset' }, fault: { delay: { percentage: { value: 10 }, fixedDelay: '1s' } }, mirror: { host: 'orders-shadow' }, rewrite: { uri: '/v2' } }] } },
  { apiVersion: 'networking.istio.io/v1', kind: 'DestinationRule', metadata: { name: 'orders', namespace: 'shop' }, spec: { host: 'orders', trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: 'x-user', ringHash: { minimumRingSize: 1024 } } }, connectionPool: { tcp: { maxConnections: 100 }, http: { http1MaxPendingRequests: 10 } }, outlierDetection: { consecutive5xxErrors: 5, interval: '10s', baseEjectionTime: '30s' } }, subsets: [{ name: 'v1', labels: { version: 'v1' } }, { name: 'v2', labels: { version: 'v2' } }] } },
  { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'payment', namespace: 'shop' }, spec: { selector: { matchLabels: { app: 'payment' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/orders'], ipBlocks: ['10.0.0.0/8'] } }], to: [{ operation: { ports: ['8080'], methods: ['POST'], paths: ['/pay*'] } }], when: [{ key: 'source.namespace', values: ['shop'] }] }] } },
  { apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name: 'default', namespace: 'istio-system' }, spec: { mtls: { mode: 'STRICT' }, portLevelMtls: { 8080: { mode: 'PERMISSIVE' } } } },
  { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'users', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'users', port: 80 }], rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/api' }, headers: [{ name: 'x-v', value: '2' }], method: 'GET' }], filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { add: [{ name: 'x-a', value: 'b' }] } }], backendRefs: [{ name: 'users-v2', port: 80, weight: 50 }], timeouts: { request: '3s' } }] } },
  { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'inv', namespace: 'shop' }, spec: { parentRefs: [{ kind: 'Service', name: 'inventory' }], rules: [{ matches: [{ method: { service: 'shop.Inventory', method: 'Get' } }], backendRefs: [{ name: 'inventory', port: 50051 }] }] } },
  { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'waypoint', namespace: 'shop', annotations: { 'ambit.dev/tracing-endpoint': 'http://otel:4318', 'ambit.dev/tracing-sampling': '10' } }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } },
  { apiVersion: 'networking.istio.io/v1', kind: 'ServiceEntry', metadata: { name: 'ext', namespace: 'shop' }, spec: { hosts: ['api.example.com'], ports: [{ number: 443, name: 'https', protocol: 'TLS' }], resolution: 'DNS', location: 'MESH_EXTERNAL' } },
  { apiVersion: 'ambit.dev/v1alpha1', kind: 'RateLimit', metadata: { name: 'orders', namespace: 'shop' }, spec: { targetRefs: [{ kind: 'Service', name: 'orders' }], requestsPerUnit: 100, unit: 'second', burst: 20 } },
  { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'orders', namespace: 'shop' }, spec: { replicas: 2, selector: { matchLabels: { app: 'orders' } }, template: { metadata: { labels: { app: 'orders', version: 'v1' } }, spec: { containers: [{ name: 'orders', image: 'node:20', command: ['node', 'service.mjs'], ports: [{ containerPort: 8080, name: 'http' }], env: [{ name: 'PORT', value: '8080' }], readinessProbe: { httpGet: { path: '/healthz', port: 8080 } } }] } } } },
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'orders', namespace: 'shop', labels: { 'ambit.dev/use-waypoint': 'waypoint' } }, spec: { selector: { app: 'orders' }, ports: [{ port: 80, targetPort: 'http', name: 'http' }] } },
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } },
];

const junk = fc.oneof(fc.constant(null), fc.integer(), fc.double(), fc.boolean(), fc.string({ maxLength: 16 }), fc.constant({}), fc.constant([]),
  fc.constantFrom('__proto__', 'constructor', '1e309', '-0', '0x10', '1h2m', '-1s', '999999999999s', '.*', '(', '[', '*', '10.0.0.0/33', '::/129', 'a'.repeat(300)),
  fc.jsonValue({ maxDepth: 3 }));

type Op = { path: number; op: 'replace' | 'delete' | 'wrap' | 'unwrap' | 'key'; value: unknown; key: string };
const op: fc.Arbitrary<Op> = fc.record({ path: fc.nat(), op: fc.constantFrom('replace' as const, 'replace' as const, 'delete' as const, 'wrap' as const, 'unwrap' as const, 'key' as const), value: junk, key: fc.oneof(fc.constantFrom('__proto__', 'constructor', 'spec', 'x', ''), fc.string({ maxLength: 8 })) });

function paths(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v && typeof v === 'object') for (const k of Object.keys(v)) paths((v as Record<string, unknown>)[k], [...at, k], out);
  return out;
}

/** Applies `ops` to a deep copy of `base`, each at one of its paths (chosen by number). */
export function mutateObject(base: unknown, ops: Op[]): unknown {
  const root = { v: structuredClone(base) as unknown };
  for (let o of ops) {
    const all = paths(root.v, ['v']).map((p) => p);
    const path = all[o.path % all.length]!;
    let parent: Record<string | number, unknown> = root as unknown as Record<string, unknown>;
    for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
    const last = path.at(-1)!;
    const current = parent[last];
    // fast-check hands out one instance per constant: a copy, or a later op could make a cycle.
    o = { ...o, value: structuredClone(o.value) };
    switch (o.op) {
      case 'replace': parent[last] = o.value; break;
      case 'delete': if (Array.isArray(parent)) parent.splice(Number(last), 1); else delete parent[last]; break;
      case 'wrap': parent[last] = [current]; break;
      case 'unwrap': parent[last] = Array.isArray(current) ? current[0] : current && typeof current === 'object' ? Object.values(current)[0] : current; break;
      case 'key': if (current && typeof current === 'object' && !Array.isArray(current)) Object.defineProperty(current, o.key, { value: o.value, enumerable: true, configurable: true, writable: true }); break;
    }
  }
  return root.v;
}

const doc = fc.tuple(fc.nat(BASES.length - 1), fc.array(op, { maxLength: 5 })).map(([i, ops]) => mutateObject(BASES[i], ops));

/** YAML no serializer writes, but a hand or an attacker might. */
const oddYaml = fc.constantFrom(
  'a: &x [*x]\n', 'a: &a [1,2]\nb: [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b]\n', '? [a, b]\n: c\n', 'apiVersion: !!binary aGVsbG8=\nkind: Pod\n', '%YAML 1.1\n---\nkind: !!timestamp 2001-12-14\n',
  'kind: !custom x\n', `${'['.repeat(500)}${']'.repeat(500)}\n`, `${'- '.repeat(300)}x\n`, '<<: *missing\n', 'metadata: {name: a, name: b}\n', '\t- tab\n', '---\n---\n...\n', '\uFEFFapiVersion: v1\n',
  'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: 0x1F\n', 'apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1e3}]}\n', 'a: "\\uD800"\n', 'a: b: c\n', 'x: |\n  \x00\n',
);

export interface ManifestText { text: string }

export const manifests: fc.Arbitrary<ManifestText> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.array(doc, { minLength: 1, maxLength: 4 }), fc.boolean()).map(([docs, json]) => ({ text: json ? docs.map((d) => JSON.stringify(d)).join('\n---\n') : docs.map((d) => safeYaml(d)).join('---\n') })) },
  { weight: 2, arbitrary: fc.tuple(doc, fc.nat(), fc.oneof(fc.constant(''), latin1(6), fc.constantFrom(': ', '\n- ', '{', '"', '&a ', '*a', '!!', '\t', '\n---\n'))).map(([d, at, insert]) => {
    const text = safeYaml(d);
    const i = at % (text.length + 1);
    return { text: `${text.slice(0, i)}${insert}${insert === '' ? '' : text.slice(i)}` };
  }) },
  { weight: 1, arbitrary: oddYaml.map((text) => ({ text })) },
  { weight: 1, arbitrary: fc.oneof(latin1(200), fc.string({ maxLength: 200 })).map((text) => ({ text })) },
);

function safeYaml(v: unknown): string {
  try {
    return (stringify(v) as string | undefined) ?? 'null\n';
  } catch {
    return JSON.stringify(v) ?? 'null';
  }
}
