/**
 * SMI TrafficSplit validation, and the warning every kind ambit does not act on gets: nothing a
 * user applies is taken in silence.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { quantityValue, type Path } from '../../src/config/schema.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { formatDiagnostic, parseManifests, type Diagnostic } from '../../src/kube/manifests.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

function analyze(text: string, file = 'm.yaml') {
  return parseManifests([{ file, text, dir: '/' }], { validate: validateMeshObject });
}
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map((d) => `${d.path ?? ''}: ${d.message}`);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map((d) => `${d.path ?? ''}: ${d.message}`);

const split = (version: string, spec: string) => `apiVersion: split.smi-spec.io/${version}
kind: TrafficSplit
metadata: { name: backend-split, namespace: production }
spec:
${spec}`;

const MATCHES = 'HTTPRouteGroup/TCPRoute matches are not supported: ambit does not apply this split, and requests go to the root service as without it '
  + '(for a match-based split, use an HTTPRoute or a VirtualService)';

describe('SMI TrafficSplit', () => {
  it("accepts the write-up's TrafficSplit with no error and no warning", () => {
    const seedDir = join(SHARED, 'seed');
    const blocks = readdirSync(seedDir).flatMap((f) => [...readFileSync(join(seedDir, f), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!))
      .filter((y) => /apiVersion: split\.smi-spec\.io\//.test(y));
    expect(blocks.length).toBeGreaterThanOrEqual(1);
    for (const y of blocks) {
      const { resources, diagnostics } = analyze(y);
      expect(diagnostics.map(formatDiagnostic), y).toEqual([]);
      expect(resources.map((r) => `${r.kind} ${r.meta.namespace}/${r.meta.name}`)).toEqual(['TrafficSplit production/backend-split']);
    }
  });

  it('takes v1alpha1 weights as Kubernetes quantities', () => {
    const good = analyze(split('v1alpha1', `  service: backend-service
  backends:
  - { service: backend-v1, weight: 900 }
  - { service: backend-v2, weight: "900m" }
  - { service: backend-v3, weight: "1" }
  - { service: backend-v4, weight: "1k" }
  - { service: backend-v5, weight: 0 }`));
    expect(good.diagnostics).toEqual([]);
    const bad = analyze(split('v1alpha1', `  service: backend-service
  backends:
  - { service: backend-v1, weight: nine }
  - { service: backend-v2, weight: -1 }
  - { service: backend-v3, weight: [1] }`));
    expect(errors(bad.diagnostics)).toEqual([
      'spec.backends[0].weight: must be a Kubernetes quantity such as 900, "900m" or "1", got string "nine"',
      'spec.backends[1].weight: must not be negative, got -1',
      'spec.backends[2].weight: must be a Kubernetes quantity such as 900, "900m" or "1", got a list',
    ]);
    expect(quantityValue('900m')).toBeCloseTo(0.9);
    expect([quantityValue(100), quantityValue('1Ki'), quantityValue('1e3'), quantityValue('.5'), quantityValue('1.5M')]).toEqual([100, 1024, 1000, 0.5, 1_500_000]);
    expect([quantityValue('abc'), quantityValue('1 k'), quantityValue(''), quantityValue(Infinity), quantityValue(null)]).toEqual([undefined, undefined, undefined, undefined, undefined]);
  });

  it('takes whole-number weights from v1alpha2 on, and reads a quantity there with a warning (SMI converts versions without touching fields)', () => {
    for (const v of ['v1alpha2', 'v1alpha3', 'v1alpha4']) {
      expect(analyze(split(v, '  service: backend\n  backends: [{ service: v1, weight: 90 }, { service: v2, weight: 10 }]')).diagnostics, v).toEqual([]);
      const { diagnostics } = analyze(split(v, '  service: backend\n  backends: [{ service: v1, weight: "900m" }, { service: v2, weight: 1.5 }, { service: v3, weight: -1 }, { service: v4, weight: ten }, { service: v5, weight: "-1" }]'));
      expect(errors(diagnostics), v).toEqual([
        'spec.backends[2].weight: must be from 0 to 2147483647, got -1',
        'spec.backends[3].weight: must be a whole number, got string "ten"',
        'spec.backends[4].weight: must not be negative, got "-1"',
      ]);
      expect(warnings(diagnostics), v).toEqual([
        `spec.backends[0].weight: "900m" is a quantity (v1alpha1's form; ${v} takes whole numbers): read as 0.9`,
        `spec.backends[1].weight: 1.5 is a quantity (v1alpha1's form; ${v} takes whole numbers): read as 1.5`,
      ]);
    }
  });

  it('requires the root service and at least one backend, and weights that are not all zero', () => {
    expect(errors(analyze(split('v1alpha2', '  backends: []')).diagnostics)).toEqual(['spec.service: required', 'spec.backends: must have at least 1 item']);
    expect(errors(analyze(split('v1alpha2', '  service: ""')).diagnostics)).toEqual(['spec.backends: required', 'spec.service: must not be empty']);
    expect(errors(analyze(split('v1alpha2', '  service: backend\n  backends: [{ weight: 10 }, { service: "", weight: 5 }, { service: v3 }]')).diagnostics))
      .toEqual(['spec.backends[0].service: required', 'spec.backends[1].service: must not be empty', 'spec.backends[2].weight: required']);
    expect(errors(analyze(split('v1alpha1', '  service: "*"\n  backends: [{ service: v1, weight: 1 }]')).diagnostics))
      .toEqual(['spec.service: must be the name of one Service, not a wildcard, got "*"']);
    const zero = 'spec.backends: the weights must not all be zero: no backend would get traffic';
    expect(errors(analyze(split('v1alpha2', '  service: backend\n  backends: [{ service: v1, weight: 0 }, { service: v2, weight: 0 }]')).diagnostics)).toEqual([zero]);
    expect(errors(analyze(split('v1alpha1', '  service: backend\n  backends: [{ service: v1, weight: "0m" }, { service: v2, weight: 0 }]')).diagnostics)).toEqual([zero]);
    expect(errors(analyze(split('v1alpha2', '  service: backend\n  backends: [{ service: v1, weight: 0 }, { service: v2, weight: 100 }]')).diagnostics)).toEqual([]);
  });

  it('warns that a root service in another namespace is not split', () => {
    for (const service of ['backend.staging', 'backend.staging.svc', 'backend.staging.svc.cluster.local']) {
      const { diagnostics } = analyze(split('v1alpha2', `  service: ${service}\n  backends: [{ service: v1, weight: 1 }]`));
      expect(errors(diagnostics), service).toEqual([]);
      expect(warnings(diagnostics), service).toEqual(['spec.service: names a Service in namespace staging: a TrafficSplit applies to a root service in its own namespace (production), so ambit does not apply this one']);
    }
    for (const service of ['backend', 'backend.production', 'backend.production.svc.cluster.local', 'api.example.com']) {
      expect(analyze(split('v1alpha2', `  service: ${service}\n  backends: [{ service: v1, weight: 1 }]`)).diagnostics, service).toEqual([]);
    }
  });

  it('accepts matches from v1alpha3 on with a warning that such a split is not applied', () => {
    for (const v of ['v1alpha3', 'v1alpha4']) {
      const { diagnostics } = analyze(split(v, `  service: website
  matches: [{ kind: HTTPRouteGroup, name: ab-test, apiGroup: specs.smi-spec.io }]
  backends: [{ service: website-v1, weight: 0 }, { service: website-v2, weight: 100 }]`));
      expect(errors(diagnostics), v).toEqual([]);
      expect(warnings(diagnostics), v).toEqual([`spec.matches: ${MATCHES}`]);
      expect(analyze(split(v, '  service: website\n  matches: []\n  backends: [{ service: a, weight: 1 }]')).diagnostics, v).toEqual([]);
      expect(errors(analyze(split(v, '  service: website\n  matches: [{ apiGroup: specs.smi-spec.io }]\n  backends: [{ service: a, weight: 1 }]')).diagnostics))
        .toEqual(['spec.matches[0].kind: required', 'spec.matches[0].name: required']);
    }
    for (const v of ['v1alpha1', 'v1alpha2']) {
      expect(errors(analyze(split(v, '  service: website\n  matches: [{ kind: HTTPRouteGroup, name: ab-test }]\n  backends: [{ service: a, weight: 1 }]')).diagnostics), v)
        .toEqual(['spec.matches: unknown field "matches"']);
    }
  });

  it('names the versions it serves', () => {
    expect(errors(analyze(split('v1alpha5', '  service: a\n  backends: [{ service: b, weight: 1 }]')).diagnostics))
      .toEqual(['apiVersion: TrafficSplit is served as split.smi-spec.io/v1alpha1, split.smi-spec.io/v1alpha2, split.smi-spec.io/v1alpha3, split.smi-spec.io/v1alpha4, got "split.smi-spec.io/v1alpha5"']);
  });
});

describe('kinds ambit does not act on', () => {
  it('accepts a kind it does not know with a warning that says so', () => {
    const { resources, diagnostics } = analyze('apiVersion: example.com/v1\nkind: Widget\nmetadata: { name: w, namespace: shop }\nspec: { size: 3 }\n', 'widget.yaml');
    expect(resources.map((r) => r.kind)).toEqual(['Widget']);
    expect(diagnostics.map((d) => `${d.severity}: ${formatDiagnostic(d)}`))
      .toEqual(['warning: widget.yaml:2: document 1 (Widget shop/w): kind: Widget (example.com/v1) is not a kind ambit acts on: accepted, not used']);
  });

  it('says so once for a core kind the local cluster does not run (and as before without a validator)', () => {
    const text = 'apiVersion: v1\nkind: ConfigMap\nmetadata: { name: c }\ndata: { a: b }\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata: { name: d }\nspec: {}\n';
    expect(warnings(analyze(text).diagnostics)).toEqual([
      'kind: ConfigMap (v1) is not a kind ambit acts on: accepted, not used',
      'kind: DaemonSet (apps/v1) is not a kind ambit acts on: accepted, not used',
    ]);
    expect(warnings(parseManifests([{ file: 'm.yaml', text, dir: '/' }]).diagnostics)).toEqual([
      'kind: ConfigMap is kept for the controller but not run by the local cluster',
      'kind: DaemonSet is kept for the controller but not run by the local cluster',
    ]);
  });

  it('acts on Istio Gateways and ServiceEntries (no kind warning)', () => {
    const { resources, diagnostics } = analyze(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: ingress }
spec: { selector: { istio: ingressgateway }, servers: [{ port: { number: 80, name: http, protocol: HTTP }, hosts: ["*"] }] }
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: { name: api }
spec: { hosts: [api.example.com], ports: [{ number: 443, name: https, protocol: TLS }], resolution: DNS }`);
    expect(errors(diagnostics)).toEqual([]);
    expect(resources).toHaveLength(2);
    expect(warnings(diagnostics)).toEqual([]);
    // Validated: a mistake is an error.
    expect(errors(analyze('apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: api }\nspec: { hosts: [] }').diagnostics))
      .toEqual(['spec.hosts: must have at least 1 item']);
  });

  it('gives no kind warning to the kinds ambit acts on', () => {
    const { diagnostics } = analyze(`apiVersion: v1
kind: Namespace
metadata: { name: shop, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: web, namespace: shop }
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  template: { metadata: { labels: { app: web } }, spec: { containers: [{ name: web, image: nginx, command: [nginx] }] } }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec: { selector: { app: web }, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: p, namespace: shop }
spec: { containers: [{ name: c, command: [sleep, "1"] }] }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: web, namespace: shop }
spec: { hosts: [web], http: [{ route: [{ destination: { host: web } }] }] }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: strict, namespace: shop }
spec: { mtls: { mode: STRICT } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: waypoint, namespace: shop }
spec: { gatewayClassName: ambit-waypoint, listeners: [{ name: mesh, port: 15008, protocol: HBONE }] }
---
apiVersion: ambit.dev/v1alpha1
kind: RateLimit
metadata: { name: r, namespace: shop }
spec: { targetRefs: [{ kind: Service, name: web }], requestsPerUnit: 10, unit: second }`);
    expect(diagnostics.map(formatDiagnostic)).toEqual([]);
  });

  it('tells the caller whether it knew the kind', () => {
    const found: string[] = [];
    const r = { error: (p: Path, m: string) => found.push(`error ${p.join('.')}: ${m}`), warn: (p: Path, m: string) => found.push(`warn ${p.join('.')}: ${m}`) };
    expect(validateMeshObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }, r)).toBe('not-mesh');
    expect(validateMeshObject({ apiVersion: 'split.smi-spec.io/v1alpha2', kind: 'TrafficSplit', metadata: { name: 's' }, spec: { service: 'a', backends: [{ service: 'b', weight: 1 }] } }, r)).toBe('checked');
    expect(found).toEqual(['warn kind: Widget (example.com/v1) is not a kind ambit acts on: accepted, not used']);
  });

  it('warns on the shared samples only for what ambit does not act on, and accepts them all', () => {
    const dir = join(SHARED, 'conformance', 'istio');
    const kindWarnings: string[] = [];
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.yaml'))) {
      const { diagnostics } = analyze(readFileSync(join(dir, f), 'utf8'), f);
      expect(errors(diagnostics), f).toEqual([]);
      kindWarnings.push(...diagnostics.filter((d) => d.path === 'kind').map((d) => `${f}: ${d.message}`));
    }
    // ambit acts on every kind of the samples (the ServiceEntry since egress, the Gateways since ingress).
    expect(kindWarnings.sort()).toEqual([]);
  });
});
