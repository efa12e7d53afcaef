/**
 * Validation of the configuration ambit reads, with the field semantics of each API:
 * Istio's networking.istio.io (VirtualService, DestinationRule, Gateway, ServiceEntry) and
 * security.istio.io (AuthorizationPolicy, PeerAuthentication), the Gateway API's Gateway,
 * HTTPRoute and GRPCRoute, Flagger's Canary and SMI's TrafficSplit. Unknown fields are errors,
 * as with Istio's CRD schemas; fields ambit accepts but does not act on draw a warning, and so
 * do whole kinds ambit does not act on.
 */
import {
  any, bool, describe, duration, durationMs, int, ipOrCidr, isObject, labels, list, map, number, object, oneOf, port, quantityValue, regex, string,
  type Path, type Reporter, type Schema,
} from './schema.js';
import { TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION, WAYPOINT_CLASS } from './model.js';
import { isIp } from '../util/ip.js';

const nonEmpty = string({ nonEmpty: true });
const strings = list(string());
const percent = object({ value: number(0, 100) });
const NOT_USED = 'accepted; not used by ambit';

// ---------------------------------------------------------------------------------------------
// networking.istio.io

const stringMatch: Schema = object(
  { exact: string(), prefix: string(), regex },
  // `{}` is Istio's presence match (headers, queryParams, withoutHeaders).
  { exactlyOne: [{ fields: ['exact', 'prefix', 'regex'] }] },
);

const portSelector = object({ number: port });
const destination = object({ host: [nonEmpty, { required: true }], subset: string(), port: portSelector });
const headerOps = object({ set: map(string()), add: map(string()), remove: strings });
const headers = object({ request: headerOps, response: headerOps });

const RETRY_ON = new Set([
  '5xx', 'gateway-error', 'reset', 'reset-before-request', 'connect-failure', 'envoy-ratelimited', 'retriable-4xx', 'refused-stream',
  'retriable-status-codes', 'retriable-headers', 'http3-post-connect-failure', 'cancelled', 'deadline-exceeded', 'internal',
  'resource-exhausted', 'unavailable',
]);
const retryOn: Schema = (v, p, r) => {
  if (typeof v !== 'string') return r.error(p, 'must be a comma-separated string');
  for (const item of v.split(',').map((s) => s.trim())) {
    if (!RETRY_ON.has(item) && !/^[1-5]\d\d$/.test(item)) r.error(p, `unknown retry condition "${item}" (known: ${[...RETRY_ON].join(', ')}, or an HTTP status code)`);
  }
};

const httpMatch = object({
  name: string(), uri: stringMatch, scheme: stringMatch, method: stringMatch, authority: stringMatch,
  headers: map(stringMatch), port, sourceLabels: labels, gateways: strings, queryParams: map(stringMatch),
  ignoreUriCase: bool, withoutHeaders: map(stringMatch), sourceNamespace: string(), statPrefix: string(),
});

const httpRouteDestination = object({ destination: [destination, { required: true }], weight: int(0, 100), headers });

/** Istio requires weights to total 100 when a route has more than one destination (or any weight). */
function checkWeights(route: unknown, p: Path, r: Reporter): void {
  if (!Array.isArray(route) || route.length === 0) return;
  const weights = route.map((d) => (isObject(d) && typeof d.weight === 'number' ? d.weight : undefined));
  if (route.length === 1 && (weights[0] === undefined || weights[0] === 100 || weights[0] === 0)) return;
  if (weights.some((w) => w === undefined)) return r.error(p, 'every destination needs a weight when a route has more than one');
  const total = weights.reduce<number>((a, b) => a + b!, 0);
  if (total !== 100) r.error(p, `weights must add up to 100, got ${total}`);
}

const fault = object({
  delay: object({ fixedDelay: duration, exponentialDelay: [duration, { warn: NOT_USED }], percentage: percent, percent: [int(0, 100), { warn: 'deprecated: use percentage' }] },
    { exactlyOne: [{ fields: ['fixedDelay', 'exponentialDelay'], required: true }] }),
  abort: object({ httpStatus: int(200, 599), grpcStatus: string(), http2Error: string(), percentage: percent },
    { exactlyOne: [{ fields: ['httpStatus', 'grpcStatus', 'http2Error'], required: true }] }),
});

const httpRoute = object({
  name: string(),
  match: list(httpMatch),
  route: list(httpRouteDestination),
  redirect: object({ uri: string(), authority: string(), port, derivePort: oneOf(['FROM_PROTOCOL_DEFAULT', 'FROM_REQUEST_PORT']), scheme: string(), redirectCode: int(300, 399) }),
  directResponse: object({ status: [int(200, 599), { required: true }], body: object({ string: string(), bytes: string() }) }),
  delegate: [object({ name: string(), namespace: string() }), { warn: NOT_USED }],
  rewrite: object({ uri: string(), authority: string(), uriRegexRewrite: object({ match: regex, rewrite: string() }) }),
  timeout: duration,
  retries: object({ attempts: int(0), perTryTimeout: duration, retryOn, retryRemoteLocalities: bool, retryIgnorePreviousHosts: bool, backoff: duration }),
  fault,
  mirror: destination,
  mirrors: list(object({ destination: [destination, { required: true }], percentage: percent })),
  mirrorPercentage: percent,
  mirrorPercent: [int(0, 100), { warn: 'deprecated: use mirrorPercentage' }],
  corsPolicy: [any, { warn: NOT_USED }],
  headers,
}, {
  exactlyOne: [{ fields: ['route', 'redirect', 'directResponse', 'delegate'], required: true }],
  check: (o, p, r) => checkWeights(o.route, [...p, 'route'], r),
});

const l4Match = object({ destinationSubnets: list(ipOrCidr), port, sourceLabels: labels, gateways: strings, sourceNamespace: string() });
const routeDestination = object({ destination: [destination, { required: true }], weight: int(0, 100) });
const tcpRoute = object({ match: list(l4Match), route: [list(routeDestination, { min: 1 }), { required: true }] }, { check: (o, p, r) => checkWeights(o.route, [...p, 'route'], r) });
const tlsRoute = object({
  match: [list(object({ sniHosts: [list(nonEmpty, { min: 1 }), { required: true }], destinationSubnets: list(ipOrCidr), port, sourceLabels: labels, gateways: strings, sourceNamespace: string() }), { min: 1 }), { required: true }],
  route: [list(routeDestination, { min: 1 }), { required: true }],
}, { check: (o, p, r) => checkWeights(o.route, [...p, 'route'], r) });

const virtualService = object({
  hosts: list(nonEmpty),
  gateways: strings,
  http: list(httpRoute),
  tcp: list(tcpRoute),
  tls: list(tlsRoute),
  exportTo: strings,
}, {
  check: (o, p, r) => {
    if (!Array.isArray(o.hosts) || o.hosts.length === 0) r.error([...p, 'hosts'], 'required: at least one host (delegate VirtualServices are not supported)');
    if (!o.http && !o.tcp && !o.tls) r.error(p, 'needs at least one of http, tcp, tls');
  },
});

const lbSimple = oneOf(['UNSPECIFIED', 'RANDOM', 'PASSTHROUGH', 'ROUND_ROBIN', 'LEAST_REQUEST', 'LEAST_CONN']);
const consistentHash = object({
  httpHeaderName: nonEmpty,
  httpCookie: object({ name: [nonEmpty, { required: true }], path: string(), ttl: duration, attributes: any }),
  useSourceIp: bool,
  httpQueryParameterName: nonEmpty,
  ringHash: object({ minimumRingSize: int(1) }),
  maglev: object({ tableSize: int(1) }),
  minimumRingSize: [int(1), { warn: 'deprecated: use ringHash.minimumRingSize' }],
}, {
  exactlyOne: [
    { fields: ['httpHeaderName', 'httpCookie', 'useSourceIp', 'httpQueryParameterName'], required: true },
    { fields: ['ringHash', 'maglev', 'minimumRingSize'] },
  ],
});
const loadBalancer = object({
  simple: lbSimple, consistentHash, localityLbSetting: [any, { warn: NOT_USED }], warmupDurationSecs: [duration, { warn: NOT_USED }], warmup: [any, { warn: NOT_USED }],
}, { exactlyOne: [{ fields: ['simple', 'consistentHash'] }] });

const connectionPool = object({
  tcp: object({
    maxConnections: int(1), connectTimeout: duration, tcpKeepalive: [object({ probes: int(0), time: duration, interval: duration }), { warn: NOT_USED }],
    maxConnectionDuration: duration, idleTimeout: duration,
  }),
  http: object({
    http1MaxPendingRequests: int(1), http2MaxRequests: int(1), maxRequestsPerConnection: int(0), maxRetries: int(0), idleTimeout: duration,
    h2UpgradePolicy: oneOf(['DEFAULT', 'DO_NOT_UPGRADE', 'UPGRADE']), useClientProtocol: bool, maxConcurrentStreams: int(1),
  }),
});

const outlierDetection = object({
  splitExternalLocalOriginErrors: bool, consecutiveLocalOriginFailures: int(0), consecutiveGatewayErrors: int(0), consecutive5xxErrors: int(0),
  consecutiveErrors: [int(0), { warn: 'deprecated: use consecutive5xxErrors (ambit reads it as consecutive5xxErrors)' }],
  interval: duration, baseEjectionTime: duration, maxEjectionPercent: int(0, 100), minHealthPercent: int(0, 100),
}, {
  check: (o, p, r) => {
    if (typeof o.interval === 'string' && /^(\d+(\.\d+)?(h|m|s|ms|us|µs|ns))+$/.test(o.interval) && durationMs(o.interval) < 1) r.error([...p, 'interval'], 'must be at least 1ms');
  },
});

const clientTls = object({
  mode: oneOf(['DISABLE', 'SIMPLE', 'MUTUAL', 'ISTIO_MUTUAL']), clientCertificate: string(), privateKey: string(), caCertificates: string(),
  credentialName: string(), subjectAltNames: strings, sni: string(), insecureSkipVerify: bool, caCrl: string(),
});

const trafficPolicyFields = { loadBalancer, connectionPool, outlierDetection, tls: [clientTls, { warn: 'ambit always uses its own mTLS between meshed workloads' }] as [Schema, { warn: string }] };
/** Envoy's retry budget: retries in flight up to percent % of the requests in flight (at least minRetryConcurrency); replaces http.maxRetries. */
const retryBudget = object({ percent: number(0, 100), minRetryConcurrency: int(0) });
const trafficPolicy = object({
  ...trafficPolicyFields,
  retryBudget,
  portLevelSettings: list(object({ port: portSelector, ...trafficPolicyFields })),
  tunnel: [any, { warn: NOT_USED }],
  proxyProtocol: [any, { warn: NOT_USED }],
});

const destinationRule = object({
  host: [nonEmpty, { required: true }],
  trafficPolicy,
  subsets: list(object({ name: [nonEmpty, { required: true }], labels, trafficPolicy })),
  exportTo: strings,
  workloadSelector: object({ matchLabels: labels }),
}, {
  check: (o, p, r) => {
    if (!Array.isArray(o.subsets)) return;
    const seen = new Set<string>();
    o.subsets.forEach((s, i) => {
      const name = isObject(s) ? s.name : undefined;
      if (typeof name === 'string' && seen.has(name)) r.error([...p, 'subsets', i, 'name'], `duplicate subset name "${name}"`);
      if (typeof name === 'string') seen.add(name);
    });
  },
});

const PROTOCOLS = ['HTTP', 'HTTPS', 'GRPC', 'HTTP2', 'MONGO', 'TCP', 'TLS'];
const protocol: Schema = (v, p, r) => {
  if (typeof v !== 'string' || !PROTOCOLS.includes(v.toUpperCase())) r.error(p, `must be one of ${PROTOCOLS.join(', ')} (any case), got ${JSON.stringify(v)}`);
};
const servicePort = object({ number: [port, { required: true }], protocol, name: string(), targetPort: port });

const serviceEntry = object({
  hosts: [list(nonEmpty, { min: 1 }), { required: true }],
  addresses: list(ipOrCidr),
  ports: list(servicePort),
  location: oneOf(['MESH_EXTERNAL', 'MESH_INTERNAL']),
  resolution: oneOf(['NONE', 'STATIC', 'DNS', 'DNS_ROUND_ROBIN']),
  endpoints: list(object({
    address: string(), ports: map(port), labels, network: [string(), { warn: NOT_USED }], locality: [string(), { warn: NOT_USED }],
    weight: [int(0), { warn: 'ambit picks endpoints at random, unweighted: accepted, not used' }], serviceAccount: [string(), { warn: NOT_USED }],
  })),
  workloadSelector: [object({ labels }), { warn: 'ambit does not select pods as ServiceEntry endpoints: accepted, not used (list them in endpoints, or use a Service)' }],
  exportTo: strings,
  subjectAltNames: [strings, { warn: 'the node agent passes MESH_EXTERNAL traffic through unchanged (the application does its own TLS): accepted, not used' }],
}, { check: checkServiceEntry });

/**
 * What the node agent needs of a ServiceEntry to carry its traffic (docs/EDGE.md, Egress): a
 * STATIC entry's endpoints are IP addresses, a DNS entry without endpoints has hosts it can
 * resolve (no wildcard), and it has ports (its destinations are matched by address and port).
 */
function checkServiceEntry(o: Record<string, unknown>, p: Path, r: Reporter): void {
  const endpoints = Array.isArray(o.endpoints) ? o.endpoints.filter(isObject) : [];
  const hosts = Array.isArray(o.hosts) ? o.hosts.filter((h): h is string => typeof h === 'string') : [];
  if (o.resolution === 'STATIC' && !o.endpoints && !o.workloadSelector) r.error([...p, 'endpoints'], 'required when resolution is STATIC');
  if (o.resolution === 'STATIC') {
    endpoints.forEach((e, i) => {
      if (typeof e.address === 'string' && !isIp(e.address)) {
        r.error([...p, 'endpoints', i, 'address'], `must be an IP address when resolution is STATIC (ambit carries TCP, not Unix sockets), got ${JSON.stringify(e.address)}; use resolution DNS for a hostname`);
      }
    });
  }
  if ((o.resolution === 'DNS' || o.resolution === 'DNS_ROUND_ROBIN') && endpoints.length === 0) {
    hosts.forEach((h, i) => {
      if (h.startsWith('*')) r.error([...p, 'hosts', i], `a wildcard host cannot be resolved: resolution ${String(o.resolution)} without endpoints needs hostnames (or use resolution NONE)`);
    });
  }
  if (!Array.isArray(o.ports) || o.ports.length === 0) r.warn([...p, 'ports'], 'a ServiceEntry without ports matches no connection in ambit (its destinations are matched by address and port)');
  if ((o.resolution === undefined || o.resolution === 'NONE') && !Array.isArray(o.addresses) && hosts.length > 0 && o.location !== 'MESH_INTERNAL') {
    r.warn([...p, 'addresses'], 'resolution NONE without addresses matches no connection in ambit (it matches by address and port, and allocates no VIP for NONE): add addresses, or use resolution DNS or STATIC');
  }
}


/** Certificates from files in the gateway's pod: Istio's older way, which ambit does not read. */
const FROM_FILES = 'ambit reads a gateway\'s certificate from the Secret named by credentialName only: accepted, not used';
const gatewayTls = object({
  httpsRedirect: bool, mode: oneOf(['PASSTHROUGH', 'SIMPLE', 'MUTUAL', 'AUTO_PASSTHROUGH', 'ISTIO_MUTUAL', 'OPTIONAL_MUTUAL']),
  serverCertificate: [string(), { warn: FROM_FILES }], privateKey: [string(), { warn: FROM_FILES }], caCertificates: [string(), { warn: FROM_FILES }],
  caCrl: [string(), { warn: NOT_USED }], credentialName: string(), credentialNames: [strings, { warn: 'ambit reads one certificate per server, from credentialName: accepted, not used' }],
  tlsCertificates: [any, { warn: FROM_FILES }], subjectAltNames: [strings, { warn: NOT_USED }], verifyCertificateSpki: [strings, { warn: NOT_USED }], verifyCertificateHash: [strings, { warn: NOT_USED }],
  minProtocolVersion: string(), maxProtocolVersion: string(), cipherSuites: [strings, { warn: NOT_USED }],
}, {
  // A missing Secret is a runtime state (the gateway serves the server once it exists), not a mistake in the Gateway.
  check: (o, p, r) => {
    if (o.mode === 'ISTIO_MUTUAL' || o.mode === 'AUTO_PASSTHROUGH') r.warn([...p, 'mode'], `${String(o.mode)} is for Istio's sidecars and east-west gateways (multi-cluster): ambit does not act on it, and the server is not served`);
    if ((o.mode === undefined || o.mode === 'SIMPLE' || o.mode === 'MUTUAL' || o.mode === 'OPTIONAL_MUTUAL') && o.credentialName === undefined && o.httpsRedirect !== true) {
      r.warn([...p, 'credentialName'], `a ${String(o.mode ?? 'SIMPLE')} server needs its certificate: ambit reads it from the Secret credentialName names (in the gateway's namespace), and serves the server only with one`);
    }
  },
});
const istioGateway = object({
  selector: labels,
  servers: [list(object({
    port: [servicePort, { required: true }], bind: [string(), { warn: NOT_USED }], hosts: [list(nonEmpty, { min: 1 }), { required: true }],
    tls: gatewayTls,
    name: string(), defaultEndpoint: [string(), { warn: NOT_USED }],
  }), { min: 1 }), { required: true }],
});

// ---------------------------------------------------------------------------------------------
// security.istio.io

const selector = object({ matchLabels: labels });
/**
 * What an AuthorizationPolicy binds to at a waypoint: its Gateway, a Service (requests for it
 * through any waypoint), or in the root namespace the waypoint GatewayClass (every waypoint);
 * or a ServiceEntry, whose clients' node agents enforce it (docs/EDGE.md, Egress).
 */
const policyTargetRef = object({ group: string(), kind: [nonEmpty, { required: true }], name: [nonEmpty, { required: true }], namespace: string() }, {
  check: (o, p, r) => {
    const group = typeof o.group === 'string' ? o.group : '';
    const ok = (o.kind === 'Gateway' && group === 'gateway.networking.k8s.io') || (o.kind === 'Service' && group === '')
      || (o.kind === 'GatewayClass' && group === 'gateway.networking.k8s.io') || (o.kind === 'ServiceEntry' && group === 'networking.istio.io');
    if (!ok) r.warn(p, `${group ? `${group}/` : ''}${String(o.kind)} binds nothing in ambit: a policy targets a Gateway (group gateway.networking.k8s.io, a waypoint), a Service (group ""), a ServiceEntry (group networking.istio.io, enforced by its clients' node agents), or in the root namespace the GatewayClass ambit-waypoint`);
    if (typeof o.namespace === 'string' && o.namespace !== '') r.warn([...p, 'namespace'], 'a policy binds only within its own namespace: this ref binds nothing');
  },
});
const portString: Schema = (v, p, r) => {
  if (typeof v !== 'string' || !/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 65535) r.error(p, `must be a port number as a string ("8080"), got ${JSON.stringify(v)}`);
};

const CONDITION_KEYS: [RegExp, 'ok' | 'l7' | 'jwt'][] = [
  [/^source\.ip$/, 'ok'], [/^remote\.ip$/, 'ok'], [/^source\.namespace$/, 'ok'], [/^source\.principal$/, 'ok'],
  [/^destination\.ip$/, 'ok'], [/^destination\.port$/, 'ok'], [/^connection\.sni$/, 'ok'],
  [/^request\.headers\[[^\]]+\]$/, 'l7'], [/^request\.auth\.(principal|audiences|presenter)$/, 'jwt'], [/^request\.auth\.claims\[[^\]]+\](\[[^\]]+\])*$/, 'jwt'],
  [/^request\.regex\.headers\[[^\]]+\]$/, 'l7'], [/^experimental\.envoy\.filters\..+$/, 'jwt'],
];
const condition = object({ key: [nonEmpty, { required: true }], values: strings, notValues: strings }, {
  exactlyOne: [{ fields: ['values', 'notValues'], required: true }],
  check: (o, p, r) => {
    if (typeof o.key !== 'string') return;
    const kind = CONDITION_KEYS.find(([re]) => re.test(o.key as string))?.[1];
    if (!kind) r.error([...p, 'key'], `unknown condition key "${o.key}"`);
    else if (kind === 'jwt') r.warn([...p, 'key'], `"${o.key}" needs RequestAuthentication (JWT), which ambit does not support: this condition never matches`);
  },
});

const authorizationPolicy = object({
  selector,
  targetRef: [policyTargetRef, { warn: 'deprecated: use targetRefs' }],
  targetRefs: list(policyTargetRef),
  action: oneOf(['ALLOW', 'DENY', 'AUDIT', 'CUSTOM']),
  provider: object({ name: [nonEmpty, { required: true }] }),
  rules: list(object({
    from: list(object({ source: [object({
      principals: strings, notPrincipals: strings, requestPrincipals: strings, notRequestPrincipals: strings,
      namespaces: strings, notNamespaces: strings, ipBlocks: list(ipOrCidr), notIpBlocks: list(ipOrCidr),
      remoteIpBlocks: list(ipOrCidr), notRemoteIpBlocks: list(ipOrCidr), serviceAccounts: strings, notServiceAccounts: strings,
    }), { required: true }] })),
    to: list(object({ operation: [object({
      hosts: strings, notHosts: strings, ports: list(portString), notPorts: list(portString),
      methods: strings, notMethods: strings, paths: strings, notPaths: strings,
    }), { required: true }] })),
    when: list(condition),
  })),
}, {
  check: (o, p, r) => {
    if (o.action === 'CUSTOM' && !o.provider) r.error([...p, 'provider'], 'required when action is CUSTOM');
    if (o.provider && o.action !== 'CUSTOM') r.error([...p, 'provider'], 'only allowed when action is CUSTOM');
    if (o.action === 'CUSTOM') r.warn([...p, 'action'], 'CUSTOM (external authorization) is not supported by ambit: this policy is ignored');
    if (o.selector && (o.targetRef || o.targetRefs)) r.error(p, 'selector and targetRef(s) cannot both be set');
  },
});

const mtlsMode = oneOf(['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT']);
const peerAuthentication = object({
  selector,
  mtls: object({ mode: mtlsMode }),
  portLevelMtls: map(object({ mode: mtlsMode }), (k, p, r) => portString(k, p, r)),
}, {
  check: (o, p, r) => {
    if (o.portLevelMtls && !o.selector) r.error([...p, 'portLevelMtls'], 'needs a selector (port-level settings apply to one workload)');
  },
});

// ---------------------------------------------------------------------------------------------
// gateway.networking.k8s.io

const parentRef = object({ group: string(), kind: string(), namespace: string(), name: [nonEmpty, { required: true }], sectionName: string(), port });
const backendRef = object({ group: string(), kind: string(), name: [nonEmpty, { required: true }], namespace: string(), port, weight: int(0, 1_000_000), filters: any }, {
  check: (o, p, r) => {
    if ((o.kind === undefined || o.kind === 'Service') && (o.group === undefined || o.group === '') && o.port === undefined) r.error([...p, 'port'], 'required for a Service backend');
  },
});
const headerModifier = object({ set: list(object({ name: nonEmpty, value: string() })), add: list(object({ name: nonEmpty, value: string() })), remove: strings });
const httpFilter = object({
  type: [oneOf(['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror', 'RequestRedirect', 'URLRewrite', 'ExtensionRef', 'CORS']), { required: true }],
  requestHeaderModifier: headerModifier, responseHeaderModifier: headerModifier,
  requestMirror: object({ backendRef: [backendRef, { required: true }], percent: int(0, 100), fraction: object({ numerator: int(0), denominator: int(1) }) }),
  requestRedirect: object({ scheme: oneOf(['http', 'https']), hostname: string(), path: any, port, statusCode: (v, p, r) => ([301, 302].includes(v as number) ? undefined : r.error(p, `must be 301 or 302, got ${JSON.stringify(v)}`)) }),
  urlRewrite: object({ hostname: string(), path: object({ type: oneOf(['ReplaceFullPath', 'ReplacePrefixMatch']), replaceFullPath: string(), replacePrefixMatch: string() }) }),
  extensionRef: [any, { warn: NOT_USED }], cors: [any, { warn: NOT_USED }],
}, {
  check: (o, p, r) => {
    const field = typeof o.type === 'string' && o.type !== '' ? o.type[0]!.toLowerCase() + o.type.slice(1) : '';
    const key = field === 'uRLRewrite' ? 'urlRewrite' : field === 'cORS' ? 'cors' : field;
    if (key && o[key] === undefined) r.error([...p, key], `required when type is ${String(o.type)}`);
  },
});

const httpPathMatch = object({ type: oneOf(['Exact', 'PathPrefix', 'RegularExpression']), value: string() }, {
  check: (o, p, r) => {
    if (o.type === 'RegularExpression') regex(o.value, [...p, 'value'], r);
    else if (typeof o.value === 'string' && !o.value.startsWith('/')) r.error([...p, 'value'], 'must start with "/"');
  },
});
const nameValueMatch = object({ type: oneOf(['Exact', 'RegularExpression']), name: [nonEmpty, { required: true }], value: [string(), { required: true }] }, {
  check: (o, p, r) => { if (o.type === 'RegularExpression') regex(o.value, [...p, 'value'], r); },
});

const httpRouteRule = object({
  name: string(),
  matches: list(object({ path: httpPathMatch, headers: list(nameValueMatch), queryParams: list(nameValueMatch), method: oneOf(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']) })),
  filters: list(httpFilter),
  backendRefs: list(backendRef),
  timeouts: object({ request: duration, backendRequest: duration }),
  retry: object({ codes: list(int(400, 599)), attempts: int(0), backoff: duration }),
  sessionPersistence: [any, { warn: NOT_USED }],
});

const grpcRouteRule = object({
  name: string(),
  matches: list(object({
    method: object({ type: oneOf(['Exact', 'RegularExpression']), service: string(), method: string() }),
    headers: list(nameValueMatch),
  })),
  filters: list(httpFilter),
  backendRefs: list(backendRef),
  sessionPersistence: [any, { warn: NOT_USED }],
});

const routeSpec = (rule: Schema) => object({ parentRefs: list(parentRef), hostnames: list(nonEmpty), rules: list(rule), useDefaultGateways: [any, { warn: NOT_USED }] });

const gatewayApiGateway = object({
  gatewayClassName: [nonEmpty, { required: true }],
  listeners: [list(object({
    name: [nonEmpty, { required: true }], hostname: string(), port: [port, { required: true }], protocol: [nonEmpty, { required: true }],
    tls: any, allowedRoutes: any,
  }), { min: 1 }), { required: true }],
  addresses: list(object({ type: string(), value: [nonEmpty, { required: true }] })),
  infrastructure: any,
  backendTLS: any,
});

// ---------------------------------------------------------------------------------------------
// ambit.dev: local rate limiting at waypoints

/**
 * RateLimit (ambit.dev/v1alpha1): a token bucket per route of each target Service, enforced by
 * its waypoint; requests past it get 429 with x-ratelimit-* headers.
 *   spec: { targetRefs: [{ kind: Service, name }], requestsPerUnit: 100, unit: second|minute|hour, burst?: 150 }
 */
const rateLimit = object({
  targetRefs: [list(object({ group: string(), kind: [oneOf(['Service']), { required: true }], name: [nonEmpty, { required: true }] }), { min: 1 }), { required: true }],
  requestsPerUnit: [int(1, 1_000_000_000), { required: true }],
  unit: [oneOf(['second', 'minute', 'hour']), { required: true }],
  burst: int(1, 1_000_000_000),
});

// ---------------------------------------------------------------------------------------------
// flagger.app: canary releases

/** A count as a CRD's `type: number` takes it: a JSON number (a string such as "5" is refused). */
function whole(min: number, max = 2 ** 31 - 1): Schema {
  const range = int(min, max);
  return (v, p, r) => (typeof v === 'number' ? range(v, p, r) : r.error(p, `must be an integer, got ${describe(v)}`));
}

/**
 * An interval or timeout as Flagger takes it: a Go duration that also fits its CRD's pattern
 * `^[0-9]+(m|s)`, so whole seconds or minutes first ("30s", "1m", "1m30s"; not "1h" or "1.5m").
 */
const flaggerDuration: Schema = (v, p, r) => {
  if (typeof v === 'string' && /^\d+(m|s)/.test(v)) return duration(v, p, r);
  r.error(p, `must be a duration starting with whole seconds or minutes, such as "30s", "1m" or "1m30s" (Flagger's CRD pattern ^[0-9]+(m|s)), got ${describe(v)}`);
};

const httpUrl: Schema = (v, p, r) => {
  let ok = false;
  if (typeof v === 'string' && /^https?:\/\/[^/\s]+/.test(v)) {
    try {
      new URL(v);
      ok = true;
    } catch { /* reported below */ }
  }
  if (!ok) r.error(p, `must be an http(s) URL, got ${describe(v)}`);
};

const numeric = number(-Number.MAX_VALUE, Number.MAX_VALUE);

/** The metrics ambit's canary controller evaluates (src/canary), from its waypoints' request metrics. */
const CANARY_METRICS = ['request-success-rate', 'request-duration'];
const METRICS_ONLY = 'ambit evaluates only the built-in metrics request-success-rate and request-duration; MetricTemplate metrics are not supported';

/**
 * A metric gate. Anything ambit cannot evaluate is an error, not a warning: a gate skipped in
 * silence would promote a canary nobody checked.
 */
const canaryMetric = object({
  name: [nonEmpty, { required: true }],
  interval: flaggerDuration,
  thresholdRange: object({ min: numeric, max: numeric }, {
    check: (o, p, r) => {
      if (o.min === undefined && o.max === undefined) r.error(p, 'needs min, max or both');
      if (typeof o.min === 'number' && typeof o.max === 'number' && o.min > o.max) r.error(p, `min (${o.min}) is above max (${o.max}): no value passes`);
    },
  }),
  threshold: [numeric, { warn: 'deprecated, and not read by ambit: use thresholdRange' }],
  query: [string(), { warn: 'deprecated: use templateRef' }],
  templateRef: object({ name: [nonEmpty, { required: true }], namespace: string() }),
  templateVariables: map(string()),
}, {
  check: (o, p, r) => {
    if (o.templateRef !== undefined) r.error([...p, 'templateRef'], METRICS_ONLY);
    else if (o.query !== undefined) r.error([...p, 'query'], `Prometheus queries are not evaluated: ${METRICS_ONLY}`);
    else if (typeof o.name === 'string' && o.name !== '' && !CANARY_METRICS.includes(o.name)) r.error([...p, 'name'], `"${o.name}": ${METRICS_ONLY}`);
    if (o.thresholdRange === undefined) r.error([...p, 'thresholdRange'], 'required: the range the metric must stay in (min, max or both)');
    const bounds: [Path, unknown][] = isObject(o.thresholdRange) ? [[[...p, 'thresholdRange', 'min'], o.thresholdRange.min], [[...p, 'thresholdRange', 'max'], o.thresholdRange.max]] : [];
    bounds.push([[...p, 'threshold'], o.threshold]);
    for (const [at, n] of bounds) {
      if (typeof n !== 'number') continue;
      if (o.name === 'request-success-rate' && (n < 0 || n > 100)) r.error(at, `request-success-rate is a percentage: must be from 0 to 100, got ${n}`);
      if (o.name === 'request-duration' && n < 0) r.error(at, `request-duration is in milliseconds: must not be negative, got ${n}`);
    }
  },
});

const HOOK_TYPES = ['pre-rollout', 'rollout', 'confirm-rollout', 'confirm-promotion', 'post-rollout', 'rollback', 'event', 'confirm-traffic-increase'];
const hookType = oneOf(HOOK_TYPES);
const canaryWebhook = object({
  name: [nonEmpty, { required: true }],
  // Empty is the CRD's default: a rollout hook.
  type: (v, p, r) => (v === '' ? undefined : hookType(v, p, r)),
  url: [httpUrl, { required: true }],
  timeout: flaggerDuration,
  metadata: map(string()),
  muteAlert: bool,
  retries: whole(0),
  disableTLS: [bool, { warn: NOT_USED }],
});

const canaryAnalysis = object({
  interval: [flaggerDuration, { required: true }],
  // Flagger's code falls back to 1, but its CRD requires the field.
  threshold: [whole(1), { required: true }],
  maxWeight: whole(1, 100),
  stepWeight: whole(1, 100),
  stepWeights: list(whole(1, 100), { min: 1 }),
  stepWeightPromotion: whole(1, 100),
  iterations: whole(1),
  // ambit waits for every replica to be ready (Flagger's default of 100 %).
  primaryReadyThreshold: [whole(0, 100), { warn: NOT_USED }],
  canaryReadyThreshold: [whole(0, 100), { warn: NOT_USED }],
  mirror: [bool, { warn: NOT_USED }],
  mirrorWeight: [whole(0, 100), { warn: NOT_USED }],
  match: [any, { warn: NOT_USED }],
  sessionAffinity: [any, { warn: NOT_USED }],
  alerts: [any, { warn: NOT_USED }],
  metrics: list(canaryMetric),
  webhooks: list(canaryWebhook),
}, {
  // Flagger's CRD: a oneOf of {stepWeight}, {stepWeights}, {iterations} (blue/green), so setting
  // two of them is refused by the API server, not resolved by precedence.
  exactlyOne: [{ fields: ['stepWeight', 'stepWeights', 'iterations'], required: true }],
  check: (o, p, r) => {
    if (typeof o.maxWeight === 'number' && typeof o.stepWeight === 'number' && o.stepWeight > o.maxWeight) {
      r.error([...p, 'maxWeight'], `must be at least stepWeight (${o.stepWeight}), got ${o.maxWeight}`);
    }
    if (Array.isArray(o.stepWeights)) {
      o.stepWeights.forEach((w: unknown, i, all: unknown[]) => {
        const prev = all[i - 1];
        if (typeof w === 'number' && typeof prev === 'number' && w <= prev) r.error([...p, 'stepWeights', i], `must be greater than the step before it (${prev}), got ${w}`);
      });
      if (o.maxWeight !== undefined) r.warn([...p, 'maxWeight'], 'ignored when stepWeights is set: the last step is the maximum weight');
    }
    if (o.iterations !== undefined && o.maxWeight !== undefined) r.warn([...p, 'maxWeight'], 'ignored with iterations (blue/green): the canary gets no share of traffic before promotion');
  },
});

const canaryTargetRef = object({
  apiVersion: [nonEmpty, { required: true }],
  kind: [oneOf(['Deployment', 'DaemonSet', 'Service']), { required: true }],
  name: [nonEmpty, { required: true }],
}, {
  check: (o, p, r) => {
    if (o.kind === 'DaemonSet' || o.kind === 'Service') r.error([...p, 'kind'], `ambit runs canaries of Deployments, got ${o.kind}`);
    if (o.kind === 'Deployment' && typeof o.apiVersion === 'string' && o.apiVersion !== 'apps/v1') r.error([...p, 'apiVersion'], `a Deployment is apps/v1, got "${o.apiVersion}"`);
  },
});

const notUsed: [Schema, { warn: string }] = [any, { warn: NOT_USED }];
const canaryService = object({
  port: [whole(1, 65535), { required: true }],
  targetPort: (v, p, r) => (typeof v === 'string' ? nonEmpty(v, p, r) : whole(1, 65535)(v, p, r)),
  portName: string(),
  name: string(),
  portDiscovery: notUsed, appProtocol: notUsed, hosts: notUsed, gateways: notUsed, gatewayRefs: notUsed, delegation: notUsed,
  trafficPolicy: notUsed, match: notUsed, retries: notUsed, timeout: notUsed, backendTimeout: notUsed, headers: notUsed,
  corsPolicy: notUsed, rewrite: notUsed, mirror: notUsed, apex: notUsed, primary: notUsed, canary: notUsed, unmanagedMetadata: notUsed,
  backends: notUsed, meshName: notUsed, headless: notUsed, trafficDistribution: notUsed,
});

/**
 * Canary (flagger.app/v1beta1), as Flagger's CRD defines it; ambit runs the canary of a
 * Deployment itself, shifting weight at the service's waypoint and gating on its own metrics.
 */
const canary = object({
  provider: string(),
  metricsServer: notUsed,
  targetRef: [canaryTargetRef, { required: true }],
  autoscalerRef: notUsed, ingressRef: notUsed, routeRef: notUsed, upstreamRef: notUsed,
  service: [canaryService, { required: true }],
  analysis: canaryAnalysis,
  canaryAnalysis: [canaryAnalysis, { warn: 'deprecated: use analysis' }],
  progressDeadlineSeconds: whole(1),
  skipAnalysis: bool,
  suspend: bool,
  revertOnDeletion: [bool, { warn: NOT_USED }],
}, {
  check: (o, p, r) => {
    if (o.analysis === undefined && o.canaryAnalysis === undefined) r.error([...p, 'analysis'], 'required');
    if (o.analysis !== undefined && o.canaryAnalysis !== undefined) r.warn([...p, 'canaryAnalysis'], 'ignored: analysis is set');
    if (typeof o.provider === 'string' && o.provider !== 'istio') r.warn([...p, 'provider'], `ambit routes the canary through its waypoint whatever the provider, got "${o.provider}"`);
  },
});

// ---------------------------------------------------------------------------------------------
// split.smi-spec.io

const quantityWeight: Schema = (v, p, r) => {
  const n = quantityValue(v);
  if (n === undefined) return r.error(p, `must be a Kubernetes quantity such as 900, "900m" or "1", got ${describe(v)}`);
  if (n < 0) r.error(p, `must not be negative, got ${JSON.stringify(v)}`);
};

/**
 * A weight from v1alpha2 on: a whole number. A quantity is read too, with a warning, as the
 * router reads it: SMI's CRDs convert between versions with `strategy: None`, so an object
 * written as v1alpha1 ("900m") reaches the controller, which reads the newest version, unchanged.
 */
function wholeWeight(version: string): Schema {
  const range = whole(0);
  return (v, p, r) => {
    if (typeof v === 'number' && Number.isInteger(v)) return range(v, p, r);
    const n = quantityValue(v);
    if (n === undefined) return r.error(p, `must be a whole number, got ${describe(v)}`);
    if (n < 0) return r.error(p, `must not be negative, got ${JSON.stringify(v)}`);
    r.warn(p, `${JSON.stringify(v)} is a quantity (v1alpha1's form; ${version} takes whole numbers): read as ${n}`);
  };
}

/** As the waypoint's router does (src/waypoint/routing/traffic-split.ts): such a split is left out. */
const SPLIT_MATCHES = 'HTTPRouteGroup/TCPRoute matches are not supported: ambit does not apply this split, and requests go to the root service as without it '
  + '(for a match-based split, use an HTTPRoute or a VirtualService)';

/**
 * TrafficSplit: v1alpha1 weighs backends with quantities, later versions with whole numbers;
 * v1alpha3 added matches. Weights are relative, so not all of them may be zero.
 */
function trafficSplit(version: string): Schema {
  return object({
    service: [string({ nonEmpty: true, pattern: /^[^*]*$/, what: 'the name of one Service, not a wildcard' }), { required: true }],
    backends: [list(object({
      service: [nonEmpty, { required: true }],
      weight: [version === 'v1alpha1' ? quantityWeight : wholeWeight(version), { required: true }],
    }), { min: 1 }), { required: true }],
    ...(['v1alpha3', 'v1alpha4'].includes(version) ? { matches: list(object({ kind: [nonEmpty, { required: true }], name: [nonEmpty, { required: true }], apiGroup: string() })) } : {}),
  }, {
    check: (o, p, r) => {
      // An empty list matches nothing, and the split applies.
      if (Array.isArray(o.matches) && o.matches.length > 0) r.warn([...p, 'matches'], SPLIT_MATCHES);
      if (!Array.isArray(o.backends) || o.backends.length === 0) return;
      const weights = o.backends.map((b) => (isObject(b) ? quantityValue(b.weight) : undefined));
      if (weights.every((w) => w === 0)) r.error([...p, 'backends'], 'the weights must not all be zero: no backend would get traffic');
    },
  });
}

/** A TrafficSplit applies only to a root service in its own namespace; the router leaves out the others. */
function trafficSplitNamespace(obj: Record<string, unknown>, r: Reporter): void {
  if (obj.kind !== 'TrafficSplit' || !isObject(obj.spec) || typeof obj.spec.service !== 'string') return;
  const own = isObject(obj.metadata) && typeof obj.metadata.namespace === 'string' && obj.metadata.namespace !== '' ? obj.metadata.namespace : 'default';
  const labels = obj.spec.service.toLowerCase().split('.');
  const namespace = labels.length === 2 || labels[2] === 'svc' ? labels[1] : undefined;
  if (namespace !== undefined && namespace !== own) {
    r.warn(['spec', 'service'], `names a Service in namespace ${namespace}: a TrafficSplit applies to a root service in its own namespace (${own}), so ambit does not apply this one`);
  }
}

interface KindRule {
  versions: string[];
  /** The spec's schema, or one per version when they differ. */
  spec: Schema | Record<string, Schema>;
  /** Validated so that mistakes show, but nothing in ambit reads it yet. */
  notActedOn?: true;
}

/** group/Kind → accepted versions and the spec's schema. */
export const KINDS: Record<string, KindRule> = {
  'networking.istio.io/VirtualService': { versions: ['v1', 'v1beta1', 'v1alpha3'], spec: virtualService },
  'networking.istio.io/DestinationRule': { versions: ['v1', 'v1beta1', 'v1alpha3'], spec: destinationRule },
  'networking.istio.io/Gateway': { versions: ['v1', 'v1beta1', 'v1alpha3'], spec: istioGateway },
  'networking.istio.io/ServiceEntry': { versions: ['v1', 'v1beta1', 'v1alpha3'], spec: serviceEntry },
  'security.istio.io/AuthorizationPolicy': { versions: ['v1', 'v1beta1'], spec: authorizationPolicy },
  'security.istio.io/PeerAuthentication': { versions: ['v1', 'v1beta1'], spec: peerAuthentication },
  'gateway.networking.k8s.io/Gateway': { versions: ['v1', 'v1beta1'], spec: gatewayApiGateway },
  'gateway.networking.k8s.io/HTTPRoute': { versions: ['v1', 'v1beta1'], spec: routeSpec(httpRouteRule) },
  'gateway.networking.k8s.io/GRPCRoute': { versions: ['v1', 'v1alpha2'], spec: routeSpec(grpcRouteRule) },
  'ambit.dev/RateLimit': { versions: ['v1alpha1'], spec: rateLimit },
  'flagger.app/Canary': { versions: ['v1beta1'], spec: canary },
  'split.smi-spec.io/TrafficSplit': {
    versions: ['v1alpha1', 'v1alpha2', 'v1alpha3', 'v1alpha4'],
    spec: Object.fromEntries(['v1alpha1', 'v1alpha2', 'v1alpha3', 'v1alpha4'].map((v) => [v, trafficSplit(v)])),
  },
};

/** A waypoint Gateway's own annotations (tracing), checked as the waypoint reads them. */
function waypointAnnotations(obj: Record<string, unknown>, r: Reporter): void {
  if (obj.kind !== 'Gateway' || !isObject(obj.spec) || obj.spec.gatewayClassName !== WAYPOINT_CLASS) return;
  const annotations = isObject(obj.metadata) && isObject(obj.metadata.annotations) ? obj.metadata.annotations : {};
  const endpoint = annotations[TRACING_ENDPOINT_ANNOTATION];
  if (endpoint !== undefined && (typeof endpoint !== 'string' || !/^https?:\/\/[^/\s]+/.test(endpoint))) {
    r.error(['metadata', 'annotations', TRACING_ENDPOINT_ANNOTATION], `must be an http(s) URL of an OTLP/HTTP collector, got ${JSON.stringify(endpoint)}`);
  }
  const sampling = annotations[TRACING_SAMPLING_ANNOTATION];
  if (sampling !== undefined && (typeof sampling !== 'string' || !/^\d+(\.\d+)?$/.test(sampling) || Number(sampling) > 100)) {
    r.error(['metadata', 'annotations', TRACING_SAMPLING_ANNOTATION], `must be a percentage from 0 to 100, got ${JSON.stringify(sampling)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// v1 Secret: the certificates of ingress gateways

/** A Secret's size limit in the API server (etcd's value limit): a larger one is refused as there. */
const MAX_SECRET_BYTES = 1 << 20;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/;
const PEM_KEY = /-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----[\s\S]+?-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----/;
/** Keys a gateway reads, and the PEM block each must hold (Istio's generic-Secret names `cert`, `key`, `cacert` too). */
const SECRET_PEM: Record<string, { what: string; re: RegExp }> = {
  'tls.crt': { what: 'a PEM certificate chain (-----BEGIN CERTIFICATE-----)', re: PEM_CERT },
  'tls.key': { what: 'a PEM private key (-----BEGIN PRIVATE KEY----- or RSA/EC)', re: PEM_KEY },
  'ca.crt': { what: 'PEM CA certificates (-----BEGIN CERTIFICATE-----)', re: PEM_CERT },
  cert: { what: 'a PEM certificate chain (-----BEGIN CERTIFICATE-----)', re: PEM_CERT },
  key: { what: 'a PEM private key (-----BEGIN PRIVATE KEY----- or RSA/EC)', re: PEM_KEY },
  cacert: { what: 'PEM CA certificates (-----BEGIN CERTIFICATE-----)', re: PEM_CERT },
};
const SECRET_KEY = /^[-._a-zA-Z0-9]{1,253}$/;

/**
 * A v1 Secret as the API server and Istio's gateways take it: `data` values base64, `stringData`
 * text, a `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`, and every key a gateway reads
 * holding a PEM block. Messages name the key, never its bytes.
 */
function validateSecret(obj: Record<string, unknown>, r: Reporter): void {
  for (const key of Object.keys(obj)) {
    if (!['apiVersion', 'kind', 'metadata', 'type', 'data', 'stringData', 'immutable'].includes(key)) r.error([key], `unknown field "${key}"`);
  }
  const type = obj.type ?? 'Opaque';
  if (typeof type !== 'string') return r.error(['type'], `must be a string, got ${describe(type)}`);
  if (obj.immutable !== undefined && typeof obj.immutable !== 'boolean') r.error(['immutable'], `must be a boolean, got ${describe(obj.immutable)}`);
  const values = new Map<string, { path: Path; text: string }>();
  let bytes = 0;
  for (const field of ['data', 'stringData'] as const) {
    const m = obj[field];
    if (m === undefined || m === null) continue;
    if (!isObject(m)) { r.error([field], `must be a map of key to ${field === 'data' ? 'base64' : 'text'}, got ${describe(m)}`); continue; }
    for (const [k, v] of Object.entries(m)) {
      const path = [field, k];
      if (!SECRET_KEY.test(k)) r.error(path, 'a Secret key is letters, digits, "-", "_" and "." (up to 253)');
      if (typeof v !== 'string') { r.error(path, `must be a string, got ${v === null ? 'null' : typeof v}`); continue; }
      if (field === 'data' && !/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(v)) { r.error(path, 'must be base64 (data); put text under stringData'); continue; }
      const text = field === 'data' ? Buffer.from(v, 'base64').toString('utf8') : v;
      bytes += text.length;
      values.set(k, { path, text });
    }
  }
  if (bytes > MAX_SECRET_BYTES) r.error(['data'], `${bytes} bytes of data: a Secret holds at most ${MAX_SECRET_BYTES} (1 MiB)`);
  if (type === 'kubernetes.io/tls') {
    for (const k of ['tls.crt', 'tls.key']) if (!values.has(k)) r.error(['data', k], `required in a kubernetes.io/tls Secret`);
  } else if (type !== 'Opaque') {
    r.warn(['type'], `a Secret of type ${type} is kept but not used: ambit's gateways read kubernetes.io/tls and Opaque Secrets`);
    return;
  }
  for (const [k, { path, text }] of values) {
    const pem = SECRET_PEM[k];
    if (pem && !pem.re.test(text)) r.error(path, `must be ${pem.what}`);
  }
}

/**
 * Validates one config object of a kind the local cluster does not run (its apiVersion, kind and
 * spec). A kind ambit does not act on is accepted with a warning that says so, so that nothing
 * is taken in silence: `not-mesh` for a kind ambit does not know at all.
 */
export function validateMeshObject(obj: Record<string, unknown>, r: Reporter): 'checked' | 'not-mesh' {
  const apiVersion = typeof obj.apiVersion === 'string' ? obj.apiVersion : '';
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') as [string, string] : ['', apiVersion];
  const kind = String(obj.kind);
  if (apiVersion === 'v1' && kind === 'Secret') {
    validateSecret(obj, r);
    return 'checked';
  }
  const rule = KINDS[`${group}/${kind}`];
  if (!rule) {
    r.warn(['kind'], `${kind} (${apiVersion}) is not a kind ambit acts on: accepted, not used`);
    return 'not-mesh';
  }
  if (!rule.versions.includes(version)) {
    r.error(['apiVersion'], `${kind} is served as ${rule.versions.map((v) => `${group}/${v}`).join(', ')}, got "${apiVersion}"`);
    return 'checked';
  }
  if (rule.notActedOn) r.warn(['kind'], `ambit validates ${kind} (${apiVersion}) but does not act on it yet: accepted, not used`);
  for (const key of Object.keys(obj)) {
    if (!['apiVersion', 'kind', 'metadata', 'spec', 'status'].includes(key)) r.error([key], `unknown field "${key}"`);
  }
  const spec = typeof rule.spec === 'function' ? rule.spec : rule.spec[version]!;
  if (obj.spec === undefined) r.error(['spec'], 'required');
  else spec(obj.spec, ['spec'], r);
  waypointAnnotations(obj, r);
  trafficSplitNamespace(obj, r);
  return 'checked';
}
