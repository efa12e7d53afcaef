/**
 * Generators of the mesh config a node agent receives on the discovery stream: workloads,
 * services, waypoints and Istio policies (AuthorizationPolicy, PeerAuthentication) shaped as the
 * controller sends them, where any field may instead hold the wrong type, a hostile string or
 * be missing — the agent must not trust its controller's bytes further than it checks them.
 */
import * as fc from 'fast-check';
import { latin1 } from './gen-http.js';

/** A value of the wrong kind, for any field. */
const junk = fc.oneof(fc.constant(null), fc.constant(undefined), fc.integer(), fc.double(), fc.boolean(), fc.string({ maxLength: 12 }), fc.constant({}), fc.constant([]),
  fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty'), fc.jsonValue({ maxDepth: 2 }));

/** Mostly `good`, sometimes junk or absent. */
function field<T>(good: fc.Arbitrary<T>): fc.Arbitrary<unknown> {
  return fc.oneof({ weight: 14, arbitrary: good }, { weight: 1, arbitrary: junk });
}

const NAMESPACES = ['shop', 'istio-system', 'default', 'ns-x'];
const UIDS = ['u0', 'u1', 'u2', 'u3', 'u4'];
export const ip = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('10.0.0.1', '10.0.0.2', '10.0.0.3', '10.96.0.10', 'fd00::1', '::ffff:10.0.0.1', '127.0.0.1') },
  { weight: 2, arbitrary: fc.ipV4() },
  { weight: 1, arbitrary: fc.ipV6() },
  { weight: 1, arbitrary: fc.constantFrom('', '10.0.0', '999.1.1.1', '10.0.0.1/24', 'localhost', '::', '[::1]') },
);
const ns = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...NAMESPACES) }, { weight: 1, arbitrary: fc.string({ maxLength: 10 }) });
const name = fc.oneof({ weight: 5, arbitrary: fc.constantFrom('users', 'orders', 'payment', 'waypoint') }, { weight: 1, arbitrary: fc.string({ maxLength: 10 }) });
const labels = fc.dictionary(fc.constantFrom('app', 'version', 'gateway.networking.k8s.io/gateway-name', 'ambit.dev/use-waypoint', 'x', '__proto__'), fc.oneof(fc.constantFrom('users', 'orders', 'waypoint', 'v1', ''), fc.string({ maxLength: 8 })), { maxKeys: 4 });
const identity = fc.oneof({ weight: 4, arbitrary: fc.tuple(fc.constantFrom(...NAMESPACES), fc.constantFrom('users', 'orders', 'default')).map(([n, sa]) => `spiffe://cluster.local/ns/${n}/sa/${sa}`) },
  { weight: 1, arbitrary: fc.string({ maxLength: 30 }) });
const port = fc.oneof(fc.constantFrom(80, 8080, 443, 15008, 0, 65535, 65536, -1), fc.integer({ min: 1, max: 65535 }));

export const workload = fc.record({
  uid: field(fc.constantFrom(...UIDS)), name: field(name), workload: field(name), namespace: field(ns), serviceAccount: field(name),
  identity: field(identity), ips: field(fc.array(field(ip), { maxLength: 3 })), node: field(fc.constantFrom('node-a', 'node-b')),
  labels: field(labels), enrolled: field(fc.boolean()), waypoint: fc.option(field(name), { nil: undefined }),
  ports: field(fc.dictionary(fc.constantFrom('http', 'grpc', 'x'), field(port), { maxKeys: 3 })),
}, { requiredKeys: ['uid', 'ips'] });

const servicePort = fc.record({ name: field(fc.constantFrom('http', 'grpc')), port: field(port), targetPort: field(fc.oneof(port, fc.constantFrom('http', 'grpc', '8080', 'nope', ''))), protocol: field(fc.constantFrom('TCP', 'UDP', 'tcp')) }, { requiredKeys: ['port'] });
export const service = fc.record({
  namespace: field(ns), name: field(name), hostname: field(fc.constantFrom('users.shop.svc.cluster.local', 'x')), vips: field(fc.array(field(ip), { maxLength: 2 })),
  ports: field(fc.array(field(servicePort), { maxLength: 3 })), endpoints: field(fc.array(field(fc.constantFrom(...UIDS)), { maxLength: 4 })),
  waypoint: fc.option(field(fc.record({ name: field(name), namespace: field(ns) })), { nil: undefined }),
}, { requiredKeys: ['vips', 'ports', 'endpoints'] });
/** What a node-scoped agent holds of a service it has not asked for: a Service without endpoints. */
export const serviceHead = fc.record({
  namespace: field(ns), name: field(name), hostname: field(fc.constantFrom('users.shop.svc.cluster.local', 'orders.shop.svc.cluster.local', 'x')), vips: field(fc.array(field(ip), { maxLength: 2 })),
  ports: field(fc.array(field(servicePort), { maxLength: 3 })),
  waypoint: fc.option(field(fc.record({ name: field(name), namespace: field(ns) })), { nil: undefined }),
}, { requiredKeys: ['vips', 'ports'] });
/** The answer to a demand for an address: the workload that has it, if any. */
export const addressAnswer = fc.record({ address: field(ip), workload: fc.option(field(fc.constantFrom(...UIDS)), { nil: undefined }) }, { requiredKeys: ['address'] });

const strings = field(fc.array(field(fc.oneof(fc.constantFrom('*', 'cluster.local/ns/shop/sa/users', 'shop', '10.0.0.0/8', '10.0.0.1', 'fd00::/8', '*users', 'users*', '80', '8080', '0', '-1', '10.0.0.0/33'), fc.string({ maxLength: 12 }))), { maxLength: 3 }));
const selector = field(fc.record({ matchLabels: field(labels) }));
const authorizationPolicy = fc.record({
  selector, action: field(fc.constantFrom('ALLOW', 'DENY', 'AUDIT', 'CUSTOM', 'allow')),
  rules: field(fc.array(field(fc.record({
    from: field(fc.array(field(fc.record({ source: field(fc.record({ principals: strings, notPrincipals: strings, namespaces: strings, notNamespaces: strings, ipBlocks: strings, notIpBlocks: strings, remoteIpBlocks: strings, requestPrincipals: strings }, { requiredKeys: [] })) })), { maxLength: 2 })),
    to: field(fc.array(field(fc.record({ operation: field(fc.record({ ports: strings, notPorts: strings, hosts: strings, methods: strings, paths: strings }, { requiredKeys: [] })) })), { maxLength: 2 })),
    when: field(fc.array(field(fc.record({ key: field(fc.constantFrom('source.ip', 'source.namespace', 'source.principal', 'destination.port', 'destination.ip', 'request.headers[x]', 'x')), values: strings, notValues: strings })), { maxLength: 2 })),
  }, { requiredKeys: [] })), { maxLength: 3 })),
}, { requiredKeys: [] });
const mode = field(fc.constantFrom('STRICT', 'PERMISSIVE', 'DISABLE', 'UNSET', 'strict'));
const peerAuthentication = fc.record({
  selector, mtls: field(fc.record({ mode })), portLevelMtls: field(fc.dictionary(fc.oneof(fc.constantFrom('80', '8080', '0', 'x', '99999'), fc.string({ maxLength: 5 })), field(fc.record({ mode })), { maxKeys: 3 })),
}, { requiredKeys: [] });
export const policy = fc.oneof(
  fc.record({ apiVersion: field(fc.constant('security.istio.io/v1')), kind: fc.constant('AuthorizationPolicy'), namespace: field(ns), name: field(name), spec: field(authorizationPolicy) }),
  fc.record({ apiVersion: field(fc.constant('security.istio.io/v1')), kind: fc.constant('PeerAuthentication'), namespace: field(ns), name: field(name), spec: field(peerAuthentication) }),
);
const waypoint = fc.record({ apiVersion: fc.constant('gateway.networking.k8s.io/v1'), kind: fc.constant('Gateway'), namespace: field(ns), name: field(name), spec: field(fc.jsonValue({ maxDepth: 2 })) });

/** One discovery resource: a typed object as JSON (or not JSON at all), under some key and type. */
export const wireResource = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.constant('workload'), workload) },
  { weight: 3, arbitrary: fc.tuple(fc.constant('service'), service) },
  { weight: 2, arbitrary: fc.tuple(fc.constant('servicehead'), serviceHead) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('address'), addressAnswer) },
  { weight: 3, arbitrary: fc.tuple(fc.constant('policy'), policy) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('waypoint'), waypoint) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('l7', 'unknown', '', 'Workload'), fc.jsonValue({ maxDepth: 2 })) },
).chain(([type, value]) => fc.tuple(
  fc.oneof({ weight: 6, arbitrary: fc.constant(`${type}/${Math.abs(JSON.stringify(value ?? null).length % 7)}`) }, { weight: 1, arbitrary: fc.string({ maxLength: 10 }) }),
  fc.oneof({ weight: 19, arbitrary: fc.constant(JSON.stringify(value ?? null)) }, { weight: 1, arbitrary: latin1(20) }),
).map(([key, json]) => ({ key, type, json })));

/** A DiscoveryResponse as the node agent decodes it. */
export const discoveryResponse = fc.record({
  version: fc.oneof(fc.constantFrom('1', '2', ''), fc.string({ maxLength: 10 })),
  full: fc.boolean(),
  resources: fc.array(wireResource, { maxLength: 12 }),
  removed: fc.array(fc.oneof(fc.constantFrom('workload/1', 'service/2'), fc.string({ maxLength: 8 })), { maxLength: 3 }),
});

/** Where a captured connection was going, and from where: what the data path asks the state. */
export const lookup = fc.record({ ip, port, sourceIp: ip, sourceIdentity: fc.option(identity, { nil: undefined }), node: fc.constantFrom('node-a', 'node-b', '') });
