/**
 * Validation of Istio and Gateway API config: every manifest of the product's write-up and
 * every shared sample is accepted unchanged; each rule refuses with the field path and reason.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateMeshObject } from '../../src/config/validate.js';
import { formatDiagnostic, parseManifests, type Diagnostic } from '../../src/kube/manifests.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

function analyze(text: string, file = 'm.yaml') {
  return parseManifests([{ file, text, dir: '/' }], { validate: validateMeshObject });
}
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map((d) => `${d.path ?? ''}: ${d.message}`);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map((d) => `${d.path ?? ''}: ${d.message}`);

/** The ```yaml blocks of the write-up that hold Istio resources. */
function seedManifests(): string[] {
  const seedDir = join(SHARED, 'seed');
  return readdirSync(seedDir).flatMap((f) => [...readFileSync(join(seedDir, f), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!))
    .filter((y) => /apiVersion: (networking|security)\.istio\.io/.test(y));
}

describe('mesh config validation', () => {
  it('accepts every Istio manifest of the write-up unchanged', () => {
    const blocks = seedManifests();
    expect(blocks.length).toBeGreaterThanOrEqual(8);
    let kinds = 0;
    for (const y of blocks) {
      const { resources, diagnostics } = analyze(y, 'seed');
      expect(errors(diagnostics), y).toEqual([]);
      kinds += resources.filter((r) => ['VirtualService', 'DestinationRule', 'Gateway'].includes(r.kind)).length;
    }
    expect(kinds).toBeGreaterThanOrEqual(9);
  });

  it('flags the deprecated fields of the write-up and the kind ambit does not act on, and nothing else, as warnings', () => {
    const found = new Set(seedManifests().flatMap((y) => warnings(analyze(y).diagnostics)));
    expect([...found].sort()).toEqual([
      'spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: deprecated: use ringHash.minimumRingSize',
      'spec.trafficPolicy.outlierDetection.consecutiveErrors: deprecated: use consecutive5xxErrors (ambit reads it as consecutive5xxErrors)',
    ]);
  });

  it('accepts every shared Istio and Gateway API sample unchanged', () => {
    const dir = join(SHARED, 'conformance', 'istio');
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.yaml'))) {
      const { diagnostics } = analyze(readFileSync(join(dir, f), 'utf8'), f);
      expect(errors(diagnostics), f).toEqual([]);
    }
  });

  const vs = (http: string) => `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: r }
spec:
  hosts: [reviews]
  http:
${http}`;

  it('checks VirtualService routes: weights, matches, retries, faults, durations', () => {
    const { diagnostics } = analyze(vs(`  - match: [{ uri: { prefix: /a, exact: /b } }, { headers: { x: { regex: "(" } } }]
    route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v2 }, weight: 30 }
    timeout: 5 seconds
    retries: { attempts: 3, retryOn: "5xx,sometimes" }
  - fault: { abort: { percentage: { value: 10 } } }
    route: [{ destination: { subset: v1 } }]
  - redirect: { uri: /x }
    route: [{ destination: { host: reviews } }]`));
    expect(errors(diagnostics)).toEqual([
      'spec.http[0].match[0].uri: only one of exact, prefix, regex may be set (found exact, prefix)',
      'spec.http[0].match[1].headers.x.regex: invalid regular expression: Invalid regular expression: /(/: Unterminated group',
      'spec.http[0].timeout: must be a duration such as "5s", "250ms" or "1m30s", got string "5 seconds"',
      'spec.http[0].retries.retryOn: unknown retry condition "sometimes" (known: 5xx, gateway-error, reset, reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status code)',
      'spec.http[0].route: weights must add up to 100, got 110',
      'spec.http[1].fault.abort: one of httpStatus, grpcStatus, http2Error is required',
      'spec.http[1].route[0].destination.host: required',
      'spec.http[2]: only one of route, redirect, directResponse, delegate may be set (found route, redirect)',
    ]);
  });

  it('checks DestinationRules: load balancer, subsets, pools, outlier detection', () => {
    const { diagnostics } = analyze(`apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: d }
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: { simple: FASTEST, consistentHash: { httpHeaderName: x, useSourceIp: true } }
    connectionPool: { tcp: { maxConnections: 0 }, http: { maxRetries: "many" } }
    outlierDetection: { maxEjectionPercent: 150, interval: 10 }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v1, labels: { version: v2 } }
  - { labels: { version: v3 } }`);
    expect(errors(diagnostics)).toEqual([
      'spec.trafficPolicy.loadBalancer.simple: must be one of UNSPECIFIED, RANDOM, PASSTHROUGH, ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, got string "FASTEST"',
      'spec.trafficPolicy.loadBalancer.consistentHash: only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName may be set (found httpHeaderName, useSourceIp)',
      'spec.trafficPolicy.loadBalancer: only one of simple, consistentHash may be set (found simple, consistentHash)',
      'spec.trafficPolicy.connectionPool.tcp.maxConnections: must be from 1 to 2147483647, got 0',
      'spec.trafficPolicy.connectionPool.http.maxRetries: must be an integer, got string "many"',
      'spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be from 0 to 100, got 150',
      'spec.trafficPolicy.outlierDetection.interval: must be a duration such as "5s", "250ms" or "1m30s", got number 10',
      'spec.subsets[2].name: required',
      'spec.subsets[1].name: duplicate subset name "v1"',
    ]);
  });

  it('checks AuthorizationPolicies: actions, providers, sources, conditions', () => {
    const { diagnostics } = analyze(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: a, namespace: shop }
spec:
  action: CUSTOM
  rules:
  - from: [{ source: { ipBlocks: ["10.0.0.0/33", "1.2.3.4"], principal: ["x"] } }]
    to: [{ operation: { ports: ["http"] } }]
    when: [{ key: source.color, values: [red] }, { key: "request.headers[x-user]" }]`);
    expect(errors(diagnostics)).toEqual([
      'spec.rules[0].from[0].source.ipBlocks[0]: must be an IP address or CIDR block, got "10.0.0.0/33"',
      'spec.rules[0].from[0].source.principal: unknown field "principal"',
      'spec.rules[0].to[0].operation.ports[0]: must be a port number as a string ("8080"), got "http"',
      'spec.rules[0].when[0].key: unknown condition key "source.color"',
      'spec.rules[0].when[1]: one of values, notValues is required',
      'spec.provider: required when action is CUSTOM',
    ]);
    expect(warnings(diagnostics)).toEqual(['spec.action: CUSTOM (external authorization) is not supported by ambit: this policy is ignored']);
  });

  it('checks PeerAuthentication, ServiceEntry and both kinds of Gateway', () => {
    const { diagnostics } = analyze(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: p }
spec: { mtls: { mode: MAYBE }, portLevelMtls: { "8080": { mode: DISABLE } } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: s }
spec: { hosts: [api.example.com], resolution: STATIC, ports: [{ number: 443, protocol: QUIC }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008 }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: h }
spec:
  parentRefs: [{ name: reviews, kind: Service, group: "" }]
  rules:
  - matches: [{ path: { type: PathPrefix, value: api } }]
    filters: [{ type: RequestHeaderModifier }]
    backendRefs: [{ name: reviews-v1 }]
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: { name: v }
spec: {}`);
    expect(errors(diagnostics)).toEqual([
      'spec.mtls.mode: must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got string "MAYBE"',
      'spec.portLevelMtls: needs a selector (port-level settings apply to one workload)',
      'spec.ports[0].protocol: must be one of HTTP, HTTPS, GRPC, HTTP2, MONGO, TCP, TLS (any case), got "QUIC"',
      'spec.endpoints: required when resolution is STATIC',
      'spec.listeners[0].protocol: required',
      'spec.rules[0].matches[0].path.value: must start with "/"',
      'spec.rules[0].filters[0].requestHeaderModifier: required when type is RequestHeaderModifier',
      'spec.rules[0].backendRefs[0].port: required for a Service backend',
      'apiVersion: VirtualService is served as networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3, got "networking.istio.io/v2"',
    ]);
  });

  it('checks ambit.dev RateLimit', () => {
    const good = analyze(`apiVersion: ambit.dev/v1alpha1
kind: RateLimit
metadata: { name: r, namespace: shop }
spec: { targetRefs: [{ kind: Service, name: reviews }], requestsPerUnit: 100, unit: second, burst: 150 }`);
    expect(errors(good.diagnostics)).toEqual([]);
    const { diagnostics } = analyze(`apiVersion: ambit.dev/v1alpha1
kind: RateLimit
metadata: { name: r }
spec: { targetRefs: [], requestsPerUnit: 0, unit: day, burst: -1, rate: 5 }`);
    expect(errors(diagnostics)).toEqual([
      'spec.targetRefs: must have at least 1 item',
      'spec.requestsPerUnit: must be from 1 to 1000000000, got 0',
      'spec.unit: must be one of second, minute, hour, got string "day"',
      'spec.burst: must be from 1 to 1000000000, got -1',
      'spec.rate: unknown field "rate"',
    ]);
  });

  it('checks waypoint bindings of AuthorizationPolicies, retry budgets and backoff, and a waypoint\'s tracing annotations', () => {
    const good = analyze(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: a, namespace: shop }
spec:
  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: waypoint }, { kind: Service, group: "", name: reviews }]
  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin/*] } }] }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: r, namespace: shop }
spec:
  host: reviews
  trafficPolicy: { retryBudget: { percent: 25.5, minRetryConcurrency: 3 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: r, namespace: shop }
spec:
  hosts: [reviews]
  http: [{ route: [{ destination: { host: reviews } }], retries: { attempts: 3, backoff: 50ms, retryIgnorePreviousHosts: false } }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop, annotations: { ambit.dev/tracing-endpoint: "http://collector.obs:4318", ambit.dev/tracing-sampling: "12.5" } }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008, protocol: HBONE }] }`);
    expect(errors(good.diagnostics)).toEqual([]);
    expect(warnings(good.diagnostics)).toEqual([]);
    const bad = analyze(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: a, namespace: shop }
spec:
  targetRefs: [{ kind: WorkloadEntry, group: networking.istio.io, name: ext }, { kind: Service, group: "", name: reviews, namespace: other }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: r, namespace: shop }
spec:
  host: reviews
  trafficPolicy: { retryBudget: { percent: 120, minRetryConcurrency: -1 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: r, namespace: shop }
spec:
  hosts: [reviews]
  http: [{ route: [{ destination: { host: reviews } }], retries: { attempts: 3, backoff: soon } }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop, annotations: { ambit.dev/tracing-endpoint: "collector:4318", ambit.dev/tracing-sampling: "all" } }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008, protocol: HBONE }] }`);
    expect(errors(bad.diagnostics)).toEqual([
      'spec.trafficPolicy.retryBudget.percent: must be from 0 to 100, got 120',
      'spec.trafficPolicy.retryBudget.minRetryConcurrency: must be from 0 to 2147483647, got -1',
      expect.stringMatching(/^spec\.http\[0\]\.retries\.backoff: /),
      'metadata.annotations.ambit.dev/tracing-endpoint: must be an http(s) URL of an OTLP/HTTP collector, got "collector:4318"',
      'metadata.annotations.ambit.dev/tracing-sampling: must be a percentage from 0 to 100, got "all"',
    ]);
    expect(warnings(bad.diagnostics)).toEqual([
      expect.stringMatching(/^spec\.targetRefs\[0\]: networking\.istio\.io\/WorkloadEntry binds nothing in ambit/),
      'spec.targetRefs[1].namespace: a policy binds only within its own namespace: this ref binds nothing',
    ]);
  });

  it('reports each error with its file, line, document and resource', () => {
    const { diagnostics, resources } = analyze(vs('  - route: [{ destination: { host: reviews }, weight: 50 }, { destination: { host: reviews } }]'), 'vs.yaml');
    expect(resources).toEqual([]);
    expect(diagnostics.map(formatDiagnostic)).toEqual(['vs.yaml:7: document 1 (VirtualService default/r): spec.http[0].route: every destination needs a weight when a route has more than one']);
  });
});
