import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { validateMeshObject } from '../../src/config/validate.js';
import {
  expandArgv, formatDiagnostic, parseManifests, type DeploymentResource, type Diagnostic, type PodResource, type ServiceResource,
} from '../../src/kube/manifests.js';

const parse = (text: string, opts = {}) => parseManifests([{ file: 'm.yaml', text, dir: '/srv/app' }], opts);
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map(formatDiagnostic);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map(formatDiagnostic);

const POD = `apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
spec:
  containers:
  - name: web
    command: ["node", "server.mjs"]
    args: ["--port", "$(PORT)", "$$(PORT)", "$(POD_NAME)"]
    workingDir: app
    env:
    - name: PORT
      value: "8080"
    - name: POD_NAME
      valueFrom: { fieldRef: { fieldPath: metadata.name } }
    ports: [{ name: http, containerPort: 8080 }]
    readinessProbe: { httpGet: { path: /healthz, port: http } }
`;

describe('parseManifests', () => {
  it('builds a pod with defaults, expansion and a resolved working directory', () => {
    const { resources, diagnostics } = parse(POD);
    expect(diagnostics).toEqual([]);
    const pod = resources[0] as PodResource;
    expect(pod.meta).toEqual({ name: 'web', namespace: 'shop', labels: {}, annotations: {} });
    expect(pod.spec).toMatchObject({ serviceAccountName: 'default', restartPolicy: 'Always', terminationGracePeriodSeconds: 30 });
    const c = pod.spec.containers[0]!;
    // $(PORT) is known at parse time; $(POD_NAME) comes from the downward API at pod start.
    expect(c.argv).toEqual(['node', 'server.mjs', '--port', '8080', '$(PORT)', '$(POD_NAME)']);
    expect(c.cwd).toBe('/srv/app/app');
    expect(c.env).toEqual([{ name: 'PORT', value: '8080' }, { name: 'POD_NAME', fieldRef: 'metadata.name' }]);
    expect(c.readinessProbe).toEqual({ httpGet: { path: '/healthz', port: 'http', scheme: 'HTTP' }, initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 });
  });

  it('expands $(VAR) like Kubernetes', () => {
    expect(expandArgv(['$(A)-$(B)', '$$(A)', '$(MISSING)'], { A: 'x' })).toEqual(['x-$(B)', '$(A)', '$(MISSING)']);
  });

  it('reads multi-document files and Lists, and skips empty documents', () => {
    const { resources, diagnostics } = parse(`---
apiVersion: v1
kind: List
items:
- { apiVersion: v1, kind: Namespace, metadata: { name: shop } }
- { apiVersion: v1, kind: ServiceAccount, metadata: { name: users, namespace: shop } }
---
---
apiVersion: apps/v1
kind: Deployment
metadata: { name: users, namespace: shop }
spec:
  selector: { matchLabels: { app: users } }
  template:
    metadata: { labels: { app: users, version: v1 } }
    spec: { containers: [{ name: users, command: [node] }] }
---
apiVersion: v1
kind: Service
metadata: { name: users, namespace: shop }
spec:
  selector: { app: users }
  ports: [{ port: 80, targetPort: http }]
`);
    expect(diagnostics).toEqual([]);
    expect(resources.map((r) => `${r.kind}/${r.meta.name}`)).toEqual(['Namespace/shop', 'ServiceAccount/users', 'Deployment/users', 'Service/users']);
    expect((resources[2] as DeploymentResource).replicas).toBe(1);
    expect((resources[3] as ServiceResource).spec).toEqual({ type: 'ClusterIP', selector: { app: 'users' }, ports: [{ port: 80, targetPort: 'http', protocol: 'TCP' }] });
    expect(resources[2]!.source).toEqual({ file: 'm.yaml', doc: 3, line: 9 });
  });

  it('names the file, document, resource, field and line of each error, and reports them all', () => {
    const { resources, diagnostics } = parse(`apiVersion: apps/v1
kind: Deployment
metadata: { name: api }
spec:
  replicas: three
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: other } }
    spec:
      restartPolicy: Sometimes
      containers:
      - name: api
        comand: ["node"]
        ports: [{ containerPort: 70000 }]
`);
    expect(resources).toEqual([]);
    expect(errors(diagnostics)).toEqual([
      'm.yaml:5: document 1 (Deployment default/api): spec.replicas: must be an integer, got string "three"',
      'm.yaml:10: document 1 (Deployment default/api): spec.template.spec.restartPolicy: must be one of "Always", "OnFailure", "Never", got string "Sometimes"',
      'm.yaml:13: document 1 (Deployment default/api): spec.template.spec.containers[0].comand: unknown field "comand"',
      'm.yaml:14: document 1 (Deployment default/api): spec.template.spec.containers[0].ports[0].containerPort: must be from 1 to 65535, got 70000',
    ]);
  });

  it('checks the Deployment selector against the template and requires a command', () => {
    const { diagnostics } = parse(`apiVersion: apps/v1
kind: Deployment
metadata: { name: api }
spec:
  selector: { matchLabels: { app: api } }
  template:
    metadata: { labels: { app: other } }
    spec:
      containers: [{ name: api, image: example/api }]
`);
    expect(errors(diagnostics)).toEqual([
      'm.yaml:7: document 1 (Deployment default/api): spec.template.metadata.labels: must match spec.selector.matchLabels {"app":"api"}',
      'm.yaml:9: document 1 (Deployment default/api): spec.template.spec.containers[0].command: required: the local cluster runs commands, not images (image is recorded only)',
    ]);
  });

  it('refuses invalid YAML with its line', () => {
    const { resources, diagnostics } = parse('apiVersion: v1\nkind: Pod\nmetadata: { name: x\n');
    expect(resources).toEqual([]);
    expect(diagnostics[0]!.severity).toBe('error');
    expect(formatDiagnostic(diagnostics[0]!)).toMatch(/^m\.yaml:4: document 1: invalid YAML: .*\(line 4, column 1\)$/);
  });

  it('refuses missing identity fields, wrong apiVersions and bad names; a later duplicate wins', () => {
    const { diagnostics } = parse(`kind: Pod
metadata: { name: a }
---
apiVersion: v1
kind: Deployment
metadata: { name: d }
---
apiVersion: v1
kind: Service
metadata: { name: Bad_Name }
spec: { ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Namespace
metadata: { name: ns }
---
apiVersion: v1
kind: Namespace
metadata: { name: ns }
`);
    expect(errors(diagnostics)).toEqual([
      'm.yaml:1: document 1: apiVersion: required: a non-empty string',
      'm.yaml:4: document 2 (Deployment default/d): apiVersion: Deployment is served as "apps/v1", got "v1"',
      'm.yaml:10: document 3 (Service default/Bad_Name): metadata.name: must be a DNS label (lower-case letters, digits and \'-\', at most 63 characters, starting and ending with a letter or digit), got string "Bad_Name"',
    ]);
    expect(warnings(diagnostics)).toEqual(['m.yaml:19: document 5 (Namespace ns): metadata.name: Namespace ns is also defined in m.yaml document 4; this later definition wins']);
  });

  it('checks services: port names, clusterIP, unsupported types', () => {
    const { diagnostics } = parse(`apiVersion: v1
kind: Service
metadata: { name: s }
spec:
  clusterIP: 10.96.0.300
  ports: [{ port: 80 }, { port: 80, name: b }]
---
apiVersion: v1
kind: Service
metadata: { name: e }
spec: { type: ExternalName, externalName: example.com, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: lb }
spec: { type: LoadBalancer, selector: { app: x }, ports: [{ port: 80 }] }
`);
    expect(errors(diagnostics)).toEqual([
      'm.yaml:5: document 1 (Service default/s): spec.clusterIP: must be an IPv4 address, "None" or "", got string "10.96.0.300"',
      'm.yaml:11: document 2 (Service default/e): spec.type: ExternalName services are not supported by the local cluster',
    ]);
    expect(warnings(diagnostics)).toEqual(expect.arrayContaining([
      'm.yaml:11: document 2 (Service default/e): spec.externalName: ignored by the local cluster',
      'm.yaml:16: document 3 (Service default/lb): spec.type: LoadBalancer behaves as ClusterIP in the local cluster',
    ]));
    const twoPorts = parse('apiVersion: v1\nkind: Service\nmetadata: { name: s }\nspec:\n  ports: [{ port: 80 }, { port: 81 }]\n');
    expect(errors(twoPorts.diagnostics)).toEqual([
      'm.yaml:5: document 1 (Service default/s): spec.ports[0].name: required when a service has more than one port',
      'm.yaml:5: document 1 (Service default/s): spec.ports[1].name: required when a service has more than one port',
    ]);
  });

  it('refuses env sources and probes the local cluster cannot serve', () => {
    const { diagnostics } = parse(`apiVersion: v1
kind: Pod
metadata: { name: p }
spec:
  containers:
  - name: c
    command: [sleep]
    env:
    - { name: A, valueFrom: { secretKeyRef: { name: s, key: k } } }
    - { name: B, valueFrom: { fieldRef: { fieldPath: metadata.uid } } }
    readinessProbe: { grpc: { port: 9000 } }
`);
    expect(errors(diagnostics).map((e) => e.split(': ').slice(1).join(': '))).toEqual([
      'document 1 (Pod default/p): spec.containers[0].env[0].valueFrom.secretKeyRef: secretKeyRef is not supported by the local cluster; use value or fieldRef',
      'document 1 (Pod default/p): spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: string "metadata.uid" is not supported by the local cluster (supported: metadata.name, metadata.namespace, status.podIP, spec.nodeName, spec.serviceAccountName, status.hostIP)',
      'document 1 (Pod default/p): spec.containers[0].readinessProbe.grpc: gRPC probes are not supported by the local cluster; use httpGet, tcpSocket or exec',
    ]);
  });

  it('checks that commands exist, keeping the resource for further checks', () => {
    const seen: [string, string][] = [];
    const { resources, diagnostics } = parse(POD, { commandExists: (cmd: string, cwd: string) => { seen.push([cmd, cwd]); return false; } });
    expect(seen).toEqual([['node', '/srv/app/app']]);
    expect(errors(diagnostics)).toEqual(['m.yaml:9: document 1 (Pod shop/web): spec.containers[0].command[0]: "node" not found on PATH']);
    expect(resources).toHaveLength(1);
  });

  it('accepts a real, image-based Bookinfo-style workload except for its missing command', () => {
    const { diagnostics } = parse(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: details-v1
  labels: { app: details, version: v1 }
spec:
  replicas: 1
  revisionHistoryLimit: 3
  strategy: { type: RollingUpdate }
  selector: { matchLabels: { app: details, version: v1 } }
  template:
    metadata:
      labels: { app: details, version: v1 }
      annotations: { sidecar.istio.io/inject: "false" }
    spec:
      serviceAccountName: bookinfo-details
      terminationGracePeriodSeconds: 5
      containers:
      - name: details
        image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
        imagePullPolicy: IfNotPresent
        ports: [{ containerPort: 9080 }]
        securityContext: { runAsUser: 1000 }
        volumeMounts: [{ name: tmp, mountPath: /tmp }]
      volumes: [{ name: tmp, emptyDir: {} }]
`);
    expect(errors(diagnostics)).toEqual([
      'm.yaml:19: document 1 (Deployment default/details-v1): spec.template.spec.containers[0].command: required: the local cluster runs commands, not images (image is recorded only)',
    ]);
    expect(warnings(diagnostics).map((w) => w.split(': ')[2])).toEqual([
      'spec.template.spec.containers[0].securityContext', 'spec.template.spec.containers[0].volumeMounts', 'spec.template.spec.volumes',
    ]);
  });

  it('keeps every Istio and Gateway API sample manifest, unchanged, for the controller', () => {
    // The shared conformance manifests sit next to the checkout (../shared); AMBIT_SHARED_DIR overrides.
    const shared = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
    const dir = new URL(`file://${shared.replace(/\/?$/, '/')}conformance/istio/`);
    if (!existsSync(dir)) throw new Error(`conformance manifests not found at ${dir.pathname}: set AMBIT_SHARED_DIR`);
    const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
    expect(files.length).toBeGreaterThan(5);
    for (const f of files) {
      const text = readFileSync(new URL(f, dir), 'utf8');
      const { resources, diagnostics } = parseManifests([{ file: f, text, dir: '/' }]);
      expect(errors(diagnostics), f).toEqual([]);
      expect(resources.length, f).toBeGreaterThan(0);
      for (const r of resources) {
        expect('other' in r, `${f}: ${r.kind}`).toBe(true);
        expect(r.raw.kind).toBe(r.kind);
      }
    }
  });
});

describe('hostile manifests', () => {
  it('reports an alias to a missing or later anchor as invalid YAML, and goes on with the other documents', () => {
    const { resources, diagnostics } = parse(`<<: *missing\n---\na: &a [1, 2]\nb: [*a]\nc: [*b]\n---\n${POD}`);
    expect(errors(diagnostics).some((e) => /invalid YAML: Unresolved alias/.test(e))).toBe(true);
    expect(resources.map((r) => r.kind)).toContain('Pod');
  });

  it('calls a field named after an Object.prototype member unknown, not a schema', () => {
    const { diagnostics } = parse(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: vs, namespace: shop }
spec: { hosts: [a], constructor: 1, toString: { x: 1 } }
`, { validate: validateMeshObject });
    expect(errors(diagnostics).join('\n')).toMatch(/unknown field "constructor"/);
    expect(errors(diagnostics).join('\n')).toMatch(/unknown field "toString"/);
  });
});

describe('hostile services', () => {
  it('names a service whose ports are not a list of objects, instead of crashing', () => {
    for (const ports of ['[null]', '[1]', '{ a: 1 }', '[]']) {
      const { diagnostics } = parse(`apiVersion: v1\nkind: Service\nmetadata: { name: s, namespace: shop }\nspec: { selector: { app: a }, ports: ${ports} }\n`, { validate: validateMeshObject });
      expect(errors(diagnostics).join('\n')).toMatch(/spec\.ports/);
    }
  });
});

describe('hostile routes', () => {
  it('names an HTTPRoute filter with an empty type, instead of crashing', () => {
    const { diagnostics } = parse(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: users, port: 80 }]
  rules: [{ filters: [{ type: "" }], backendRefs: [{ name: users, port: 80 }] }]
`, { validate: validateMeshObject });
    expect(errors(diagnostics).join('\n')).toMatch(/filters\[0\]\.type/);
  });
});
