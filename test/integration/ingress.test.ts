/**
 * Ingress gateways end to end in a local cluster: the write-up's Gateway and VirtualService
 * applied unchanged bring up Istio's default ingress gateway on node-1's address; a client
 * outside the mesh (the underlay netns) speaks HTTPS to it, checks the certificate against the
 * test's CA (SNI picks among two), and reaches a meshed backend that admits only the gateway's
 * identity; MUTUAL refuses a client without a certificate; a rotated Secret is served without
 * a restart; Istio's and the Gateway API's bookinfo gateways are taken unchanged (a port two of
 * them want is given to one, and the other's status says why); the gateway reports Istio's
 * metrics with reporter="source".
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { isReady, localCluster, NODE_IP } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
const GATEWAY_PRINCIPAL = 'spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account';
const NODE = NODE_IP['node-1']!;

const cluster = localCluster('ingress');
const pki = mkdtempSync(join(tmpdir(), 'ambit-ingress-pki-'));

/** openssl in the test's PKI directory. */
const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: pki, stdio: ['ignore', 'pipe', 'pipe'] });

/** A CA, and leaf certificates it signs (a server's for its host, or a client's). */
function makeCa(name: string): void {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`);
}
function makeLeaf(name: string, ca: string, cn: string, serial: number): string {
  writeFileSync(join(pki, `${name}.ext`), cn.includes('.') ? `subjectAltName=DNS:${cn}\nextendedKeyUsage=serverAuth\n` : 'extendedKeyUsage=clientAuth\n');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-set_serial', String(serial), '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`);
  return new X509Certificate(readFileSync(join(pki, `${name}.crt`))).fingerprint256;
}
const file = (name: string) => readFileSync(join(pki, name), 'utf8');
const b64 = (name: string) => Buffer.from(file(name)).toString('base64');

/** A Secret as `kubectl create secret tls` writes it (data, base64), or Opaque with the CA only. */
const tlsSecret = (name: string, leaf: string) => `apiVersion: v1
kind: Secret
metadata: { name: ${name}, namespace: istio-system }
type: kubernetes.io/tls
data:
  tls.crt: ${b64(`${leaf}.crt`)}
  tls.key: ${b64(`${leaf}.key`)}
`;
const caSecret = (name: string, ca: string) => `apiVersion: v1
kind: Secret
metadata: { name: ${name}, namespace: istio-system }
data:
  ca.crt: ${b64(`${ca}.crt`)}
`;

/**
 * A request from the underlay netns (outside every node and pod): HTTPS with the given SNI,
 * the server's certificate checked against `ca`, or plain HTTP without `ca`. Prints the status,
 * body and the certificate's SHA-256 fingerprint, or the error.
 */
const CLIENT = `const [url, sni, ca, cert, key] = process.argv.slice(1); const fs = require("fs"); const u = new URL(url);
const mod = require(u.protocol === "https:" ? "https" : "http"); let done = false; const out = (o) => { if (!done) { done = true; console.log(JSON.stringify(o)); } };
const req = mod.get({ host: u.hostname, port: u.port, path: u.pathname, headers: { host: sni }, servername: sni, agent: false, timeout: 5000,
  ...(ca ? { ca: fs.readFileSync(ca) } : {}), ...(cert ? { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } : {}) }, (res) => {
  const fp = res.socket.getPeerCertificate ? res.socket.getPeerCertificate().fingerprint256 : undefined; let b = "";
  res.on("data", (c) => b += c); res.on("end", () => out({ status: res.statusCode, body: b, fingerprint: fp })); res.on("error", (e) => out({ error: e.code || e.message }));
});
req.on("timeout", () => req.destroy(new Error("timeout"))); req.on("error", (e) => out({ error: e.code || e.message }));`;
interface Answer { status?: number; body?: string; fingerprint?: string; error?: string }
async function request(url: string, sni: string, tls: { ca?: string; client?: string } = {}): Promise<Answer> {
  const args = [url, sni, tls.ca ? join(pki, `${tls.ca}.crt`) : '', ...(tls.client ? [join(pki, `${tls.client}.crt`), join(pki, `${tls.client}.key`)] : [])];
  return JSON.parse(await cluster.ok(['local', 'exec', '--cluster', cluster.name, '--underlay', '--', 'node', '-e', CLIENT, ...args])) as Answer;
}

/** The write-up's Gateway and VirtualService, exactly as the seed has them. */
function seedGateway(): string {
  const text = readFileSync(join(SHARED, 'seed', '000_00ae23f618932bae.txt'), 'utf8');
  const block = text.split('```').find((b) => b.includes('name: frontend-gateway') && b.includes('name: frontend-route'));
  if (!block) throw new Error('the seed has no frontend-gateway block');
  return block.replace(/^yaml\n/, '');
}

const ECHO = (who: string) => `require("http").createServer((q, s) => s.end("${who} " + q.url)).listen(Number(process.env.PORT))`;
const BASE = `
apiVersion: v1
kind: Namespace
metadata: { name: istio-system }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: backend }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: client }
---
apiVersion: v1
kind: Service
metadata: { name: backend-service }
spec: { selector: { app: backend }, ports: [{ name: http, port: 8080, targetPort: 8080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: backend, labels: { app: backend, ambit.dev/dataplane-mode: ambient } }
spec:
  nodeName: node-2
  serviceAccountName: backend
  containers: [{ name: c, command: [node, -e, '${ECHO('backend')}'], env: [{ name: PORT, value: "8080" }], readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 1 } }]
---
apiVersion: v1
kind: Service
metadata: { name: productpage }
spec: { selector: { app: productpage }, ports: [{ name: http, port: 9080, targetPort: 9080 }] }
---
apiVersion: v1
kind: Pod
metadata: { name: productpage, labels: { app: productpage, ambit.dev/dataplane-mode: ambient } }
spec:
  nodeName: node-2
  containers: [{ name: c, command: [node, -e, '${ECHO('productpage')}'], env: [{ name: PORT, value: "9080" }], readinessProbe: { tcpSocket: { port: 9080 }, periodSeconds: 1 } }]
---
apiVersion: v1
kind: Pod
metadata: { name: client, labels: { ambit.dev/dataplane-mode: ambient } }
spec:
  nodeName: node-1
  serviceAccountName: client
  containers: [{ name: c, command: [sleep, infinity] }]
---
# Only the ingress gateway may reach the backend: a meshed client with another identity may not.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: backend-from-ingress }
spec:
  selector: { matchLabels: { app: backend } }
  action: ALLOW
  rules: [{ from: [{ source: { principals: [cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account] } }] }]
`;

/**
 * A second HTTPS host on 443 (SNI chooses its certificate) and a MUTUAL server on 8443, in the
 * gateway's own namespace as Istio's docs put them; their VirtualServices in default name them
 * `istio-system/<name>`.
 */
const MORE_GATEWAYS = `
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: other-gateway, namespace: istio-system }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: 443, name: https-other, protocol: HTTPS }, tls: { mode: SIMPLE, credentialName: other-cert }, hosts: [other.example.com] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: other-route }
spec:
  hosts: [other.example.com]
  gateways: [istio-system/other-gateway]
  http: [{ route: [{ destination: { host: productpage, port: { number: 9080 } } }] }]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: mtls-gateway, namespace: istio-system }
spec:
  selector: { istio: ingressgateway }
  servers: [{ port: { number: 8443, name: https-mtls, protocol: HTTPS }, tls: { mode: MUTUAL, credentialName: mtls-cert }, hosts: [mtls.example.com] }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: mtls-route }
spec:
  hosts: [mtls.example.com]
  gateways: [istio-system/mtls-gateway]
  http: [{ route: [{ destination: { host: backend-service, port: { number: 8080 } } }] }]
`;

const fingerprints: Record<string, string> = {};

describeAsRoot('ingress gateways', () => {
  beforeAll(async () => {
    makeCa('server-ca');
    makeCa('client-ca');
    fingerprints.app = makeLeaf('app', 'server-ca', 'app.example.com', 1001);
    fingerprints.other = makeLeaf('other', 'server-ca', 'other.example.com', 1003);
    fingerprints.otherRotated = makeLeaf('other-rotated', 'server-ca', 'other.example.com', 1005);
    fingerprints.mtls = makeLeaf('mtls', 'server-ca', 'mtls.example.com', 1004);
    makeLeaf('alice', 'client-ca', 'alice', 2001);
    await cluster.up(`${BASE}---\n${tlsSecret('frontend-cert', 'app')}---\n${tlsSecret('other-cert', 'other')}---\n${tlsSecret('mtls-cert', 'mtls')}---\n${caSecret('mtls-cert-cacert', 'client-ca')}`);
    await cluster.apply('seed-gateway.yaml', seedGateway());
    await cluster.apply('more-gateways.yaml', MORE_GATEWAYS);
    await until('the ingress gateway to be ready', async () => (await cluster.status()).gateways.find((g) => g.name === 'istio-ingressgateway' && g.ready), { timeout: 30_000 });
  }, 90_000);

  afterAll(async () => {
    await cluster.down();
    rmSync(pki, { recursive: true, force: true });
  }, 60_000);

  it('runs Istio\'s default ingress gateway on node-1\'s address, and keeps Secrets out of status and logs', async () => {
    const status = await cluster.status();
    const gw = status.gateways.find((g) => g.name === 'istio-ingressgateway')!;
    expect(gw).toMatchObject({ namespace: 'istio-system', serviceAccount: 'istio-ingressgateway-service-account', address: NODE, hostPorts: [443, 8443], errors: [] });
    expect(gw.from.sort()).toEqual(['Gateway.networking.istio.io/default/frontend-gateway', 'Gateway.networking.istio.io/istio-system/mtls-gateway', 'Gateway.networking.istio.io/istio-system/other-gateway']);
    const pod = status.pods.find((p) => p.namespace === 'istio-system' && p.name === 'istio-ingressgateway')!;
    expect(pod.labels).toMatchObject({ istio: 'ingressgateway', app: 'istio-ingressgateway' });
    expect(status.controller?.subscribers.some((s) => s.kind === 'gateway' && s.name === 'istio-system/istio-ingressgateway-service-account')).toBe(true);
    // The state holds the private keys: only its owner reads it; status and logs name Secrets only.
    expect(statSync(join(cluster.stateDir, 'cluster.json')).mode & 0o777).toBe(0o600);
    const key = file('app.key').split('\n')[1]!;
    const text = await cluster.ok(['local', 'status', '--cluster', cluster.name]);
    expect(text).toContain('Secret istio-system/frontend-cert');
    expect(text).toContain(`${NODE}:443,${NODE}:8443`);
    for (const log of ['controller.log', 'node-agent.node-1.log', 'node-agent.node-2.log', 'runtime.log'].map((f) => join(cluster.stateDir, 'logs', f))) {
      expect(existsSync(log), log).toBe(true);
      expect(readFileSync(log, 'utf8'), log).not.toContain(key);
    }
    expect(readFileSync(join(cluster.stateDir, 'pods', 'istio-system.istio-ingressgateway', 'istio-proxy.log'), 'utf8')).not.toContain(key);
  });

  it('MUTUAL: refuses a client without a certificate, serves one with a certificate from the Secret\'s CA', async () => {
    const refused = await request(`https://${NODE}:8443/x`, 'mtls.example.com', { ca: 'server-ca' });
    expect(refused.status).toBeUndefined();
    expect(refused.error).toMatch(/CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE|ECONNRESET|socket hang up/i);
    const answer = await until('an answer through the MUTUAL server', async () => {
      const a = await request(`https://${NODE}:8443/x`, 'mtls.example.com', { ca: 'server-ca', client: 'alice' });
      return a.status === 200 && a;
    }, { timeout: 20_000, interval: 500 });
    expect(answer).toEqual({ status: 200, body: 'backend /x', fingerprint: fingerprints.mtls });
  });

  it('carries requests into the mesh with the gateway\'s own identity: the backend admits it, and refuses a meshed client with another', async () => {
    // The backend's node agent admitted the gateway's connection under its identity (the policy allows only that one)...
    const opened = (await cluster.metrics('node-2')).split('\n').find((l) => l.startsWith('istio_tcp_connections_opened_total{') && l.includes('reporter="destination"')
      && l.includes(`source_principal="${GATEWAY_PRINCIPAL}"`) && l.includes('destination_workload="backend"'));
    expect(opened).toBeDefined();
    // ... and refuses a meshed client with another identity.
    const direct = await cluster.ambit(['local', 'exec', '--cluster', cluster.name, 'default/client', '--', 'node', '-e',
      'require("http").get("http://backend-service:8080/api/x", (r) => { console.log(r.statusCode); r.resume(); }).on("error", (e) => { console.log(e.code); })']);
    expect(direct.stdout.trim()).toMatch(/^(ECONNRESET|ECONNREFUSED|EPIPE)$/);
  });

  it('picks the certificate by SNI, and checks it against the client\'s CA', async () => {
    expect(await request(`https://${NODE}:443/`, 'other.example.com', { ca: 'server-ca' })).toEqual({ status: 200, body: 'productpage /', fingerprint: fingerprints.other });
    // A client that trusts another CA refuses the gateway's certificate.
    expect((await request(`https://${NODE}:443/`, 'other.example.com', { ca: 'client-ca' })).error).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('serves a rotated Secret without restarting the gateway', async () => {
    const before = (await cluster.status()).pods.find((p) => p.name === 'istio-ingressgateway')!;
    await cluster.apply('rotated.yaml', tlsSecret('other-cert', 'other-rotated'));
    await until('the rotated certificate', async () => (await request(`https://${NODE}:443/`, 'other.example.com', { ca: 'server-ca' })).fingerprint === fingerprints.otherRotated, { timeout: 15_000, interval: 300 });
    const after = (await cluster.status()).pods.find((p) => p.name === 'istio-ingressgateway')!;
    expect({ restarts: after.restarts, createdAt: after.createdAt, ready: isReady(after) }).toEqual({ restarts: before.restarts, createdAt: before.createdAt, ready: true });
  });

  it('serves the seed\'s Gateway and VirtualService, unchanged: its credentialName is read in the gateway\'s namespace (istio-system), as Istio does', async () => {
    const answer = await until('an answer through frontend-gateway', async () => {
      const a = await request(`https://${NODE}:443/api/orders`, 'app.example.com', { ca: 'server-ca' });
      return a.status === 200 && a;
    }, { timeout: 20_000, interval: 500 });
    expect(answer).toEqual({ status: 200, body: 'backend /api/orders', fingerprint: fingerprints.app });
    // The VirtualService routes /api only.
    expect((await request(`https://${NODE}:443/other`, 'app.example.com', { ca: 'server-ca' })).status).toBe(404);
  });

  it('takes Istio\'s and the Gateway API\'s bookinfo gateways unchanged; a port both want goes to one, and status says why', async () => {
    const ingressPod = async () => (await cluster.status()).pods.find((p) => p.name === 'istio-ingressgateway')!;
    const before = await ingressPod();
    const istio = await cluster.apply('bookinfo-gateway.yaml', readFileSync(join(SHARED, 'conformance', 'istio', 'bookinfo-gateway.yaml'), 'utf8'));
    expect(istio).toContain('gateway.networking.istio.io/bookinfo-gateway created');
    await until('bookinfo through the Istio gateway on port 80', async () => (await request(`http://${NODE}:80/productpage`, 'bookinfo.example')).body === 'productpage /productpage', { timeout: 20_000, interval: 500 });
    await cluster.apply('gateway-api-bookinfo-gateway.yaml', readFileSync(join(SHARED, 'conformance', 'istio', 'gateway-api-bookinfo-gateway.yaml'), 'utf8'));
    const both = (await cluster.status()).gateways.find((g) => g.name === 'bookinfo-gateway-gateway')!;
    expect(both).toMatchObject({ namespace: 'default', serviceAccount: 'bookinfo-gateway', hostPorts: [] });
    expect(both.errors).toEqual([`port 80 is not exposed on node-1 (${NODE}): istio-system/istio-ingressgateway already exposes it (two gateways cannot share a port of one node)`]);
    // Without Istio's bookinfo Gateway, port 80 is the Gateway API gateway's.
    await cluster.remove('bookinfo-gateway.yaml');
    await until('the Gateway API gateway on port 80', async () => {
      const g = (await cluster.status()).gateways.find((x) => x.name === 'bookinfo-gateway-gateway');
      return g?.ready && g.hostPorts.includes(80);
    }, { timeout: 30_000 });
    const answer = await until('bookinfo through the Gateway API gateway', async () => {
      const a = await request(`http://${NODE}:80/productpage`, 'bookinfo.example');
      return a.body === 'productpage /productpage' && a;
    }, { timeout: 20_000, interval: 500 });
    expect(answer.status).toBe(200);
    expect((await request(`http://${NODE}:80/nothing-here`, 'bookinfo.example')).status).toBe(404);
    const pod = (await cluster.status()).pods.find((p) => p.name === 'bookinfo-gateway-gateway')!;
    const metrics = await cluster.nodeFetch('node-1', `http://${pod.ip}:15020/metrics`);
    expect(metrics).toMatch(/istio_requests_total\{[^}]*reporter="source"[^}]*destination_service_name="productpage"[^}]*\} [1-9]/);
    // Port 80 came and went on Istio's gateway: its listeners followed, the pod stayed.
    const after = await ingressPod();
    expect({ createdAt: after.createdAt, restarts: after.restarts }).toEqual({ createdAt: before.createdAt, restarts: before.restarts });
    expect((await cluster.status()).gateways.find((g) => g.name === 'istio-ingressgateway')!.hostPorts).toEqual([443, 8443]);
  }, 90_000);

  it('reports Istio\'s request metrics with reporter="source" on the gateway\'s 15020', async () => {
    const pod = (await cluster.status()).pods.find((p) => p.name === 'istio-ingressgateway')!;
    const metrics = await cluster.nodeFetch('node-1', `http://${pod.ip}:15020/metrics`);
    const line = metrics.split('\n').find((l) => l.startsWith('istio_requests_total{') && l.includes('destination_service_name="backend-service"') && l.includes('response_code="200"'));
    expect(line, metrics.split('\n').filter((l) => l.startsWith('istio_requests_total{')).join('\n')).toBeDefined();
    expect(line).toContain('reporter="source"');
    expect(line).toContain('source_workload="istio-ingressgateway"');
    expect(line).toContain('source_principal="spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"');
  });
});
