/**
 * Ingress gateways on the control side: v1 Secrets validated (shape, PEM) without their bytes
 * in any message, Istio Gateway warnings for what ambit does not act on, the model's gateways
 * and Secrets, and the discovery view of a gateway (its Gateways, bound routes, the Secrets it
 * names — and nobody else's view holding a Secret).
 */
import { describe, expect, it } from 'vitest';
import { buildModel, ISTIO_INGRESS, selectsIstioIngress, type PodInfo } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { viewFor } from '../../src/discovery/discovery.js';
import { parseManifests, type Diagnostic, type PodSpec } from '../../src/kube/manifests.js';

const CERT = '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUSECRETCERTBYTES\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49SECRETKEYBYTES\n-----END PRIVATE KEY-----\n';
const b64 = (s: string) => Buffer.from(s).toString('base64');

function analyze(text: string) {
  return parseManifests([{ file: 'm.yaml', text, dir: '/' }], { validate: validateMeshObject });
}
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map((d) => `${d.path ?? ''}: ${d.message}`);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map((d) => `${d.path ?? ''}: ${d.message}`);

const secret = (name: string, ns: string, data: Record<string, string>, type = 'kubernetes.io/tls') => `apiVersion: v1
kind: Secret
metadata: { name: ${name}, namespace: ${ns} }
type: ${type}
data:
${Object.entries(data).map(([k, v]) => `  ${k}: ${v}`).join('\n')}
`;

describe('v1 Secret validation', () => {
  it('accepts a kubernetes.io/tls Secret (data) and an Opaque one (stringData) with no warning', () => {
    const { resources, diagnostics } = analyze(`${secret('frontend-cert', 'istio-system', { 'tls.crt': b64(CERT), 'tls.key': b64(KEY) })}---
apiVersion: v1
kind: Secret
metadata: { name: frontend-cert-cacert, namespace: istio-system }
stringData:
  ca.crt: |
${CERT.split('\n').filter(Boolean).map((l) => `    ${l}`).join('\n')}
`);
    expect(errors(diagnostics)).toEqual([]);
    expect(warnings(diagnostics)).toEqual([]);
    expect(resources).toHaveLength(2);
  });

  it('names the key and never its bytes: missing tls.key, not PEM, not base64', () => {
    const { diagnostics } = analyze(`${secret('a', 'default', { 'tls.crt': b64('SECRETBYTES-not-a-cert') })}---
${secret('b', 'default', { 'tls.crt': '"%%%SECRETBYTES"', 'tls.key': b64(KEY) })}`);
    expect(errors(diagnostics)).toEqual([
      'data.tls.key: required in a kubernetes.io/tls Secret',
      'data.tls.crt: must be a PEM certificate chain (-----BEGIN CERTIFICATE-----)',
      'data.tls.crt: must be base64 (data); put text under stringData',
      'data.tls.crt: required in a kubernetes.io/tls Secret',
    ]);
    for (const d of diagnostics) expect(JSON.stringify(d)).not.toMatch(/SECRET/);
  });

  it('keeps Secrets of other types with a warning, and refuses unknown fields', () => {
    const { diagnostics } = analyze(`apiVersion: v1
kind: Secret
metadata: { name: pull }
type: kubernetes.io/dockerconfigjson
data: { .dockerconfigjson: e30= }
extra: 1
`);
    expect(errors(diagnostics)).toEqual(['extra: unknown field "extra"']);
    expect(warnings(diagnostics)).toEqual(["type: a Secret of type kubernetes.io/dockerconfigjson is kept but not used: ambit's gateways read kubernetes.io/tls and Opaque Secrets"]);
  });
});

describe('Istio Gateway validation', () => {
  it('acts on the seed\'s SIMPLE server, and warns on ISTIO_MUTUAL and certificates from files', () => {
    const seed = analyze(`apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: frontend-gateway }
spec:
  selector: { istio: ingressgateway }
  servers:
  - port: { number: 443, name: https, protocol: HTTPS }
    tls: { mode: SIMPLE, credentialName: frontend-cert }
    hosts: ["app.example.com"]
`);
    expect(errors(seed.diagnostics)).toEqual([]);
    expect(warnings(seed.diagnostics)).toEqual([]);
    const other = analyze(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: east-west }
spec:
  selector: { istio: eastwestgateway }
  servers:
  - port: { number: 15443, name: tls, protocol: TLS }
    tls: { mode: ISTIO_MUTUAL }
    hosts: ["*.local"]
  - port: { number: 443, name: https, protocol: HTTPS }
    tls: { mode: SIMPLE, serverCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem, subjectAltNames: [a] }
    hosts: ["*"]
`);
    expect(errors(other.diagnostics)).toEqual([]);
    expect(warnings(other.diagnostics)).toEqual([
      "spec.servers[0].tls.mode: ISTIO_MUTUAL is for Istio's sidecars and east-west gateways (multi-cluster): ambit does not act on it, and the server is not served",
      "spec.servers[1].tls.serverCertificate: ambit reads a gateway's certificate from the Secret named by credentialName only: accepted, not used",
      "spec.servers[1].tls.privateKey: ambit reads a gateway's certificate from the Secret named by credentialName only: accepted, not used",
      'spec.servers[1].tls.subjectAltNames: accepted; not used by ambit',
      "spec.servers[1].tls.credentialName: a SIMPLE server needs its certificate: ambit reads it from the Secret credentialName names (in the gateway's namespace), and serves the server only with one",
    ]);
  });
});

const SPEC = (sa: string): PodSpec => ({ serviceAccountName: sa, restartPolicy: 'Always', terminationGracePeriodSeconds: 1, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [] }] });
const MANIFESTS = `apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: frontend-gateway }
spec:
  selector: { istio: ingressgateway }
  servers:
  - port: { number: 443, name: https, protocol: HTTPS }
    tls: { mode: MUTUAL, credentialName: frontend-cert }
    hosts: ["app.example.com"]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: other-gateway, namespace: shop }
spec:
  selector: { istio: private-gateway }
  servers: [{ port: { number: 80, name: http, protocol: HTTP }, hosts: ["*"] }]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: frontend-route }
spec:
  hosts: ["app.example.com"]
  gateways: [frontend-gateway]
  http: [{ route: [{ destination: { host: backend-service, port: { number: 8080 } } }] }]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: mesh-route }
spec:
  hosts: [backend-service]
  http: [{ route: [{ destination: { host: backend-service } }] }]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: backend }
spec: { host: backend-service, trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: web, namespace: shop }
spec:
  gatewayClassName: ambit
  listeners:
  - name: https
    port: 8443
    protocol: HTTPS
    # Another namespace's Secret needs a ReferenceGrant (not read): never sent.
    tls: { mode: Terminate, certificateRefs: [{ name: web-cert }, { name: frontend-cert, namespace: istio-system }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: web-route, namespace: shop }
spec:
  parentRefs: [{ name: web }]
  rules: [{ backendRefs: [{ name: backend-service, namespace: default, port: 8080 }] }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: elsewhere, namespace: default }
spec:
  parentRefs: [{ name: web }]
  rules: [{ backendRefs: [{ name: backend-service, port: 8080 }] }]
---
${secret('frontend-cert', 'istio-system', { 'tls.crt': b64(CERT), 'tls.key': b64(KEY) })}---
${secret('frontend-cert-cacert', 'istio-system', { 'ca.crt': b64(CERT) }, 'Opaque')}---
${secret('frontend-cert', 'default', { 'tls.crt': b64(CERT), 'tls.key': b64(KEY) })}---
${secret('web-cert', 'shop', { 'tls.crt': b64(CERT), 'tls.key': b64(KEY) })}`;

describe('a gateway\'s model and discovery view', () => {
  const { resources, diagnostics } = analyze(MANIFESTS);
  const pods: PodInfo[] = [
    { uid: 'gw', namespace: ISTIO_INGRESS.namespace, name: 'istio-ingressgateway', node: 'node-1', ip: '10.244.1.5', labels: { ...ISTIO_INGRESS.labels }, spec: SPEC(ISTIO_INGRESS.serviceAccount) },
    { uid: 'web', namespace: 'shop', name: 'web-gateway', node: 'node-1', ip: '10.244.1.6', labels: { 'gateway.networking.k8s.io/gateway-name': 'web' }, spec: SPEC('web') },
  ];
  const model = buildModel({ resources, pods }, 'cluster.local');

  it('holds the ingress Gateways and the TLS Secrets, decoded', () => {
    expect(errors(diagnostics)).toEqual([]);
    expect(model.gateways.map((g) => `${g.kind}/${g.namespace}/${g.name}`)).toEqual(['Gateway/default/frontend-gateway', 'Gateway/shop/other-gateway', 'Gateway/shop/web']);
    expect(model.secrets.map((s) => `${s.namespace}/${s.name}`)).toEqual(['default/frontend-cert', 'istio-system/frontend-cert', 'istio-system/frontend-cert-cacert', 'shop/web-cert']);
    expect(model.secrets[1]!.data).toEqual({ 'tls.crt': CERT, 'tls.key': KEY });
    expect(selectsIstioIngress({ selector: { istio: 'ingressgateway' } })).toBe(true);
    expect(selectsIstioIngress({ selector: { istio: 'private-gateway' } })).toBe(false);
  });

  it('gives Istio\'s ingress gateway its Gateway, the bound VirtualService, DestinationRules and the Secrets in its own namespace', () => {
    const keys = [...viewFor(model, 'gateway', `${ISTIO_INGRESS.namespace}/${ISTIO_INGRESS.serviceAccount}`).keys()].filter((k) => !/^(workload|service|policy|waypoint)\//.test(k));
    expect(keys.sort()).toEqual([
      'ingress/Gateway/default/frontend-gateway',
      'l7/DestinationRule/default/backend',
      'l7/VirtualService/default/frontend-route',
      // Istio's rule: credentialName in the gateway's namespace (not default's), and its -cacert for MUTUAL.
      'secret/istio-system/frontend-cert',
      'secret/istio-system/frontend-cert-cacert',
    ]);
  });

  it('gives a Gateway API gateway its Gateway, the HTTPRoutes whose parentRefs name it, and its certificateRefs in its namespace', () => {
    const keys = [...viewFor(model, 'gateway', 'shop/web').keys()].filter((k) => !/^(workload|service|policy|waypoint)\//.test(k));
    expect(keys.sort()).toEqual(['ingress/Gateway/shop/web', 'l7/DestinationRule/default/backend', 'l7/HTTPRoute/shop/web-route', 'secret/shop/web-cert']);
  });

  it('gives no Secret and no Gateway to node agents, waypoints, or a gateway nothing selects', () => {
    for (const [kind, name] of [['node-agent', ''], ['waypoint', 'default/waypoint'], ['gateway', 'default/nobody']] as const) {
      const keys = [...viewFor(model, kind, name).keys()];
      expect(keys.filter((k) => k.startsWith('secret/') || k.startsWith('ingress/')), `${kind} ${name}`).toEqual([]);
    }
  });
});
