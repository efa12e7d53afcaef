/**
 * `ambit proxy-config` against the node agents of a real 2-node local cluster: a meshed client
 * on node-1, a meshed echo server behind a Service on node-2, an AuthorizationPolicy. Each view
 * shows them — the client's workload with its SPIFFE identity and certificate, the certificate
 * itself, the Service, the policy — and, while the client holds a connection open, that
 * connection on both agents (outbound over mTLS on node-1, inbound on node-2) with its bytes.
 * Cleaned up by `ambit local down` in afterAll, whatever failed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { CertificatesAnswer, ConnectionsAnswer, PoliciesAnswer, ServicesAnswer, WorkloadsAnswer } from '../../src/api/proxy-config.js';
import { until } from '../helpers/wait.js';
import { ROOT } from './helpers/cli.js';
import { isReady, localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('pcfg');
const CLIENT_ID = 'spiffe://cluster.local/ns/mesh/sa/client';
const SERVER_ID = 'spiffe://cluster.local/ns/mesh/sa/server';

const MANIFESTS = `
apiVersion: v1
kind: Namespace
metadata: { name: mesh, labels: { ambit.dev/dataplane-mode: ambient } }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: client, namespace: mesh }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: server, namespace: mesh }
---
apiVersion: v1
kind: Pod
metadata: { name: server, namespace: mesh, labels: { app: server } }
spec:
  nodeName: node-2
  serviceAccountName: server
  containers:
  - name: c
    command: [node, -e, 'require("net").createServer((s) => s.pipe(s)).listen(7000)']
    ports: [{ name: echo, containerPort: 7000 }]
    readinessProbe: { tcpSocket: { port: 7000 }, periodSeconds: 1 }
---
apiVersion: v1
kind: Service
metadata: { name: echo, namespace: mesh }
spec: { selector: { app: server }, ports: [{ name: tcp, port: 70, targetPort: echo }] }
---
apiVersion: v1
kind: Pod
metadata: { name: client, namespace: mesh, labels: { app: client } }
spec: { nodeName: node-1, serviceAccountName: client, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-client, namespace: mesh }
spec:
  selector: { matchLabels: { app: server } }
  rules: [{ from: [{ source: { principals: [cluster.local/ns/mesh/sa/client] } }], to: [{ operation: { ports: ["7000"] } }] }]
`;

/** Connects to the echo service, says hello, prints "held" once it is echoed, and keeps the connection until killed (at most 2 minutes). */
const HOLD = 'const s = require("net").connect(70, "echo"); s.on("data", () => console.log("held")); s.on("error", (e) => { console.log("error " + e.code); process.exit(1); }); s.write("hello proxy-config"); setTimeout(() => process.exit(0), 120000);';

async function view<T>(name: string, node: string): Promise<T> {
  return JSON.parse(await cluster.ok(['proxy-config', name, '--node', node, '--cluster', cluster.name, '--json'])) as T;
}
const table = (name: string, node: string) => cluster.ok(['proxy-config', name, '--node', node, '--cluster', cluster.name]);

describeAsRoot('ambit proxy-config against a local cluster', () => {
  let holder: ChildProcess | undefined;

  beforeAll(async () => {
    await cluster.up(MANIFESTS);
    await until('the meshed pods', async () => {
      const s = await cluster.status();
      const pods = s.pods.filter((p) => p.namespace === 'mesh');
      return pods.length === 2 && pods.every(isReady) && s.components.filter((c) => c.name === 'node-agent' && c.state === 'running').length === 2;
    }, { timeout: 120_000, interval: 500 });
  }, 300_000);

  afterAll(async () => {
    if (holder?.pid) {
      try { process.kill(-holder.pid, 'SIGKILL'); } catch { /* already gone */ }
    }
    await cluster.down();
  }, 120_000);

  it('workloads: the meshed client on its node, enrolled, with its SPIFFE identity and certificate', async () => {
    const answer = await until('the client enrolled on node-1', async () => {
      const a = await view<WorkloadsAnswer>('workloads', 'node-1');
      return a.items.find((w) => w.name === 'client' && w.status === 'enrolled') ? a : undefined;
    });
    expect(answer).toMatchObject({ apiVersion: 'ambit.dev/proxy-config/v1', kind: 'Workloads', node: 'node-1', configVersion: expect.any(String) });
    const client = answer.items.find((w) => w.name === 'client')!;
    expect(client).toMatchObject({ namespace: 'mesh', node: 'node-1', serviceAccount: 'client', identity: CLIENT_ID, protocol: 'HBONE', error: null, connections: expect.any(Number) });
    expect(client.ips[0]).toMatch(/^10\.244\.1\.\d+$/);
    expect(client.certificate?.serial).toMatch(/^[0-9a-f]+$/i);
    // Node scope: node-2's server is not held by node-1's agent until the client calls it; then it
    // is, as another node's workload.
    expect(answer.items.find((w) => w.name === 'server')).toBeUndefined();
    const services = await view<ServicesAnswer>('services', 'node-1');
    expect(services.items.find((s) => s.name === 'echo')).toMatchObject({ endpoints: null });
    expect(await cluster.exec('mesh/client', ['node', '-e', 'const s = require("net").connect(70, "echo", () => s.write("hi")); s.on("data", (d) => { process.stdout.write(d); s.end(); });'])).toBe('hi');
    const known = await view<WorkloadsAnswer>('workloads', 'node-1');
    expect(known.items.find((w) => w.name === 'server')).toMatchObject({ node: 'node-2', status: 'remote', identity: SERVER_ID, connections: null });
    const lines = (await table('workloads', 'node-1')).split('\n');
    expect(lines[0]).toMatch(/^NAMESPACE\s+NAME\s+IP\s+NODE\s+STATUS\s+PROTOCOL\s+WAYPOINT\s+IDENTITY\s+CONNECTIONS$/);
    expect(lines.find((l) => /^mesh\s+client\s/.test(l))).toMatch(new RegExp(`\\s10\\.244\\.1\\.\\d+(,\\S+)?\\s+node-1\\s+enrolled\\s+HBONE\\s+-\\s+${CLIENT_ID}\\s+\\d+$`));
  }, 60_000);

  it('certs: the client\'s certificate, valid, with its pod', async () => {
    const workloads = await view<WorkloadsAnswer>('workloads', 'node-1');
    const serial = workloads.items.find((w) => w.name === 'client')!.certificate!.serial;
    const answer = await view<CertificatesAnswer>('certs', 'node-1');
    expect(answer.kind).toBe('Certificates');
    const cert = answer.items.find((c) => c.identity === CLIENT_ID);
    expect(cert).toMatchObject({ serial, state: 'valid', error: null, pods: ['mesh/client'] });
    expect(Date.parse(cert!.notAfter!)).toBeGreaterThan(Date.now());
    expect(Date.parse(cert!.renewsAt!)).toBeLessThan(Date.parse(cert!.notAfter!));
    expect(await table('certs', 'node-1')).toMatch(new RegExp(`^${CLIENT_ID}\\s+${serial}\\s.*\\svalid\\s+mesh/client$`, 'm'));
  }, 60_000);

  it('services and policies: the echo Service with its endpoint, the policy with its scope and rule', async () => {
    const services = await view<ServicesAnswer>('services', 'node-1');
    expect(services.items.find((s) => s.namespace === 'mesh' && s.name === 'echo')).toMatchObject({
      hostname: 'echo.mesh.svc.cluster.local', vips: [expect.stringMatching(/^10\.96\./)], ports: [{ name: 'tcp', port: 70, targetPort: 'echo', protocol: 'TCP' }], endpoints: 1, waypoint: null,
    });
    const policies = await view<PoliciesAnswer>('policies', 'node-2');
    expect(policies.items).toEqual([{
      namespace: 'mesh', name: 'allow-client', kind: 'AuthorizationPolicy', scope: 'workload', selector: { app: 'server' }, action: 'ALLOW', enforced: true,
      rules: ['from principals=cluster.local/ns/mesh/sa/client; to ports=7000'], warnings: [],
    }]);
    expect(await table('policies', 'node-2')).toMatch(/^mesh\s+allow-client\s+AuthorizationPolicy\s+workload\s+ALLOW\s+yes\s+from principals=cluster\.local\/ns\/mesh\/sa\/client; to ports=7000$/m);
  }, 60_000);

  it('connections: one held open shows on both agents, over mTLS, with its bytes', async () => {
    expect((await view<ConnectionsAnswer>('connections', 'node-1')).items.filter((c) => c.pod === 'mesh/client')).toEqual([]);
    holder = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), 'local', 'exec', '--cluster', cluster.name, 'mesh/client', '--', 'node', '-e', HOLD], { cwd: ROOT, env: cluster.env, detached: true });
    let said = '';
    holder.stdout!.on('data', (c: Buffer) => { said += c.toString(); });
    await until('the echo through the mesh', () => said.includes('held'), { timeout: 30_000 });
    const out = await until('the outbound connection on node-1', async () => (await view<ConnectionsAnswer>('connections', 'node-1')).items.find((c) => c.pod === 'mesh/client' && c.direction === 'outbound'));
    expect(out).toMatchObject({
      reporter: 'source', path: 'hbone', mtls: true, exempt: null,
      source: { workload: 'client', namespace: 'mesh', identity: CLIENT_ID },
      destination: { port: 7000, workload: 'server', namespace: 'mesh', identity: SERVER_ID },
      service: { namespace: 'mesh', name: 'echo', hostname: 'echo.mesh.svc.cluster.local' },
    });
    expect(out.bytesReceived).toBe('hello proxy-config'.length);
    expect(out.bytesSent).toBe('hello proxy-config'.length);
    const inbound = await until('the inbound connection on node-2', async () => (await view<ConnectionsAnswer>('connections', 'node-2')).items.find((c) => c.pod === 'mesh/server' && c.direction === 'inbound'));
    expect(inbound).toMatchObject({ reporter: 'destination', path: 'hbone', mtls: true, source: { identity: CLIENT_ID, workload: 'client' }, destination: { port: 7000, identity: SERVER_ID } });
    const workloads = await view<WorkloadsAnswer>('workloads', 'node-1');
    expect(workloads.items.find((w) => w.name === 'client')!.connections).toBeGreaterThanOrEqual(1);
    const lines = (await table('connections', 'node-1')).split('\n');
    expect(lines[0]).toMatch(/^POD\s+DIRECTION\s+SOURCE\s+SOURCE IDENTITY\s+DESTINATION\s+DESTINATION IDENTITY\s+PATH\s+MTLS\s+SENT\s+RECEIVED\s+AGE$/);
    expect(lines.find((l) => l.startsWith('mesh/client'))).toMatch(new RegExp(`^mesh/client\\s+outbound\\s+10\\.244\\.1\\.\\d+ \\(mesh/client\\)\\s+${CLIENT_ID}\\s+10\\.244\\.2\\.\\d+:7000 \\(mesh/server\\)\\s+${SERVER_ID}\\s+hbone\\s+yes\\s+18\\s+18\\s+\\d+s$`));
    // Released: the connection leaves both views.
    process.kill(-holder.pid!, 'SIGKILL');
    await until('the connection closed on node-1', async () => (await view<ConnectionsAnswer>('connections', 'node-1')).items.every((c) => c.pod !== 'mesh/client'));
  }, 90_000);

  it('names the nodes for one that does not exist, and a 404 names the views', async () => {
    const r = await cluster.ambit(['proxy-config', 'workloads', '--node', 'node-3', '--cluster', cluster.name]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`ambit: cluster ${cluster.name} has no node "node-3"; its nodes: node-1, node-2\n  fix: --node node-1\n`);
    const unknown = await new Promise<{ status: number; body: { error: string; views: string[] } }>((resolve, reject) => {
      const req = request({ socketPath: join(cluster.stateDir, 'nodes', 'node-1', 'agent.sock'), path: '/proxy-config/routes' }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => { text += c.toString(); });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as { error: string; views: string[] } }));
      });
      req.on('error', reject);
      req.end();
    });
    expect(unknown.status).toBe(404);
    expect(unknown.body.views).toEqual(['workloads', 'services', 'policies', 'certs', 'connections']);
  }, 60_000);
});
