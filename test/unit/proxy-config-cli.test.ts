/**
 * `ambit proxy-config`, in process: its tables; a local cluster's agent found by its control
 * socket (and the errors for a missing cluster, node or agent); a Kubernetes cluster's agent pod
 * found on its node through a stand-in API server and reached through a real port-forward
 * round trip (WebSocket, v4.channel.k8s.io framing) to an admin endpoint on loopback, and the
 * errors when there is no agent pod there, it is not running, or the port-forward is refused.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { Duplex } from 'node:stream';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { PROXY_CONFIG_API_VERSION, type ProxyConfigAnswer } from '../../src/api/proxy-config.js';
import { buildProgram } from '../../src/cli/main.js';
import { readAnswer, renderProxyConfig } from '../../src/cli/proxy-config.js';
import { commonLabels } from '../../src/install/objects.js';
import { ClusterLayout } from '../../src/local/layout.js';
import { writeState, type ClusterState } from '../../src/local/state.js';
import { AdminServer } from '../../src/node/admin.js';
import type { ConfigDump, WorkloadsDump } from '../../src/node/agent.js';
import { CONTROL_SOCKET, serveControl } from '../../src/node/app.js';
import type { ProxyConfigSource } from '../../src/node/proxy-config.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { FakeApiServer, writeKubeconfig } from '../helpers/fake-apiserver.js';

const NOW = Date.parse('2025-01-01T10:01:35.000Z');
const envelope = { apiVersion: PROXY_CONFIG_API_VERSION, node: 'node-1', configVersion: 'v7' } as const;

describe('tables', () => {
  it('workloads: one row per workload, failures after the table', () => {
    const answer: ProxyConfigAnswer = {
      ...envelope, kind: 'Workloads', items: [
        { namespace: 'mesh', name: 'client', uid: 'u1', node: 'node-1', workload: 'client', serviceAccount: 'client', ips: ['10.244.1.3', 'fd00:10:244:1::3'], identity: 'spiffe://cluster.local/ns/mesh/sa/client', protocol: 'HBONE', status: 'enrolled', error: null, waypoint: null, connections: 1, certificate: { serial: '0a', notAfter: '2025-01-02T00:00:00.000Z' } },
        { namespace: 'mesh', name: 'broken', uid: 'u2', node: 'node-1', workload: 'broken', serviceAccount: 'default', ips: [], identity: 'spiffe://cluster.local/ns/mesh/sa/default', protocol: 'HBONE', status: 'failed', error: 'network namespace of mesh/broken not found', waypoint: { namespace: 'mesh', name: 'wp' }, connections: null, certificate: null },
      ],
    };
    expect(renderProxyConfig(answer, NOW)).toBe([
      'NAMESPACE  NAME    IP                           NODE    STATUS    PROTOCOL  WAYPOINT  IDENTITY                                   CONNECTIONS',
      'mesh       client  10.244.1.3,fd00:10:244:1::3  node-1  enrolled  HBONE     -         spiffe://cluster.local/ns/mesh/sa/client   1',
      'mesh       broken  -                            node-1  failed    HBONE     wp        spiffe://cluster.local/ns/mesh/sa/default  -',
      'mesh/broken failed: network namespace of mesh/broken not found',
    ].join('\n'));
  });

  it('services, policies and certificates', () => {
    expect(renderProxyConfig({
      ...envelope, kind: 'Services', items: [{ namespace: 'mesh', name: 'server', hostname: 'server.mesh.svc.cluster.local', vips: ['10.96.0.20'], ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }, { name: null, port: 9090, targetPort: 9090, protocol: 'TCP' }], endpoints: 2, waypoint: { namespace: 'mesh', name: 'wp' } }],
    }, NOW)).toBe([
      'NAMESPACE  NAME    VIPS        PORTS                        ENDPOINTS  WAYPOINT',
      'mesh       server  10.96.0.20  80/TCP->http,9090/TCP->9090  2          mesh/wp',
    ].join('\n'));
    expect(renderProxyConfig({
      ...envelope, kind: 'Policies', items: [
        { namespace: 'mesh', name: 'allow', kind: 'AuthorizationPolicy', scope: 'workload', selector: { app: 'server' }, action: 'ALLOW', enforced: true, rules: ['from principals=cluster.local/ns/mesh/sa/client', 'any'], warnings: [] },
        { namespace: 'mesh', name: 'nothing', kind: 'AuthorizationPolicy', scope: 'namespace', selector: null, action: 'ALLOW', enforced: true, rules: [], warnings: [] },
        { namespace: 'mesh', name: 'l7', kind: 'AuthorizationPolicy', scope: 'waypoint', selector: null, action: 'ALLOW', enforced: false, rules: ['to methods=GET'], warnings: ['bound to a waypoint by targetRef(s): not applied by the node agent'] },
        { namespace: 'mesh', name: 'strict', kind: 'PeerAuthentication', scope: 'namespace', selector: null, action: 'STRICT', enforced: true, rules: [], warnings: [] },
      ],
    }, NOW)).toBe([
      'NAMESPACE  NAME     KIND                 SCOPE      ACTION  ENFORCED  RULES',
      'mesh       allow    AuthorizationPolicy  workload   ALLOW   yes       from principals=cluster.local/ns/mesh/sa/client ; any',
      'mesh       nothing  AuthorizationPolicy  namespace  ALLOW   yes       (none: matches nothing)',
      'mesh       l7       AuthorizationPolicy  waypoint   ALLOW   no        to methods=GET',
      'mesh       strict   PeerAuthentication   namespace  STRICT  yes       -',
      'warning: AuthorizationPolicy mesh/l7: bound to a waypoint by targetRef(s): not applied by the node agent',
    ].join('\n'));
    expect(renderProxyConfig({
      ...envelope, kind: 'Certificates', items: [
        { identity: 'spiffe://cluster.local/ns/mesh/sa/client', serial: '0a', notBefore: '2025-01-01T00:00:00.000Z', notAfter: '2025-01-02T00:00:00.000Z', renewsAt: '2025-01-01T12:00:00.000Z', state: 'valid', error: null, pods: ['mesh/client', 'mesh/client-2'] },
        { identity: 'spiffe://cluster.local/ns/mesh/sa/x', serial: null, notBefore: null, notAfter: null, renewsAt: null, state: 'retrying', error: 'the CA is unreachable', pods: [] },
      ],
    }, NOW)).toBe([
      'IDENTITY                                  SERIAL  NOT BEFORE                NOT AFTER                 RENEWS                    STATE     PODS',
      'spiffe://cluster.local/ns/mesh/sa/client  0a      2025-01-01T00:00:00.000Z  2025-01-02T00:00:00.000Z  2025-01-01T12:00:00.000Z  valid     mesh/client,mesh/client-2',
      'spiffe://cluster.local/ns/mesh/sa/x       -       -                         -                         -                         retrying  -',
      'spiffe://cluster.local/ns/mesh/sa/x retrying: the CA is unreachable',
    ].join('\n'));
  });

  it('connections: both ends, identities, path, mTLS, bytes and age', () => {
    expect(renderProxyConfig({
      ...envelope, kind: 'Connections', items: [{
        id: 'c1', direction: 'outbound', reporter: 'source', pod: 'mesh/client',
        source: { ip: '10.244.1.3', port: null, workload: 'client', namespace: 'mesh', identity: 'spiffe://cluster.local/ns/mesh/sa/client' },
        destination: { ip: 'fd00:10:244:2::2', port: 8080, workload: 'server', namespace: 'mesh', identity: 'spiffe://cluster.local/ns/mesh/sa/server' },
        service: null, path: 'hbone', mtls: true, bytesSent: 4096, bytesReceived: 120, startedAt: '2025-01-01T10:00:00.000Z', ageSeconds: 95, exempt: null,
      }],
    }, NOW)).toBe([
      'POD          DIRECTION  SOURCE                    SOURCE IDENTITY                           DESTINATION                            DESTINATION IDENTITY                      PATH   MTLS  SENT  RECEIVED  AGE',
      'mesh/client  outbound   10.244.1.3 (mesh/client)  spiffe://cluster.local/ns/mesh/sa/client  [fd00:10:244:2::2]:8080 (mesh/server)  spiffe://cluster.local/ns/mesh/sa/server  hbone  yes   4096  120       95s',
    ].join('\n'));
  });

  it('says when a view is empty', () => {
    expect(renderProxyConfig({ ...envelope, kind: 'Connections', items: [] })).toBe('no connections on node node-1');
  });
});

describe('reading the agent\'s answer', () => {
  it('takes its own schema only, and names an agent too old to know the route', () => {
    const ok = { ...envelope, kind: 'Services', items: [] };
    expect(readAnswer('services', { status: 200, text: JSON.stringify(ok) }, 'agent')).toEqual(ok);
    expect(() => readAnswer('services', { status: 200, text: JSON.stringify({ ...ok, apiVersion: 'ambit.dev/proxy-config/v2' }) }, 'the node agent of node-1'))
      .toThrow('the node agent of node-1 answered ambit.dev/proxy-config/v2 Services; this ambit reads ambit.dev/proxy-config/v1 Services');
    expect(() => readAnswer('services', { status: 200, text: JSON.stringify({ ...ok, kind: 'Workloads' }) }, 'agent')).toThrow(/answered ambit.dev\/proxy-config\/v1 Workloads/);
    expect(() => readAnswer('certs', { status: 404, text: JSON.stringify({ error: 'no route /proxy-config/certs', routes: [] }) }, 'the agent')).toThrow('the agent does not serve /proxy-config/certs: it is older than this ambit');
    expect(() => readAnswer('certs', { status: 500, text: 'oops' }, 'the agent')).toThrow('the agent sent an answer that is not JSON (HTTP 500): oops');
  });
});

/** An agent-like state: one enrolled pod, nothing else. */
const SOURCE: ProxyConfigSource = {
  rootNamespace: 'istio-system',
  configDump: (): ConfigDump => ({
    node: 'node-1', version: 'v7', connected: true, services: [], policies: [], waypoints: [], warnings: [],
    workloads: [{ uid: 'u1', name: 'client', workload: 'client', namespace: 'mesh', serviceAccount: 'client', identity: 'spiffe://cluster.local/ns/mesh/sa/client', ips: ['10.244.1.3'], node: 'node-1', labels: {}, enrolled: true, ports: {} }],
  }),
  workloads: (): WorkloadsDump => ({ node: 'node-1', enrolled: [{ uid: 'u1', namespace: 'mesh', name: 'client', identity: 'spiffe://cluster.local/ns/mesh/sa/client', ips: ['10.244.1.3'], netns: '/x', netnsCookie: '1', connections: 0, certificate: null }], failed: [] }),
  connections: { list: () => [] },
  certs: { list: () => [] },
};

/** Runs `ambit ...` in this process; its stdout, or the error it failed with. */
async function ambit(args: string[]): Promise<string> {
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    out += String(chunk);
    return true;
  });
  try {
    await buildProgram().parseAsync(args, { from: 'user' });
  } finally {
    spy.mockRestore();
  }
  return out;
}

describe('a local cluster', () => {
  const root = mkdtempSync(join(tmpdir(), 'ambit-pc-local-'));
  const saved = process.env.AMBIT_LOCAL_STATE;
  let control: { close(): void } | undefined;

  beforeAll(async () => {
    process.env.AMBIT_LOCAL_STATE = root;
    const layout = new ClusterLayout('pc');
    writeState(layout.stateFile, {
      version: 1, name: 'pc', createdAt: new Date().toISOString(), resources: {}, pods: {}, services: {},
      nodes: [{ name: 'node-1', index: 1, ip: '172.30.0.11', podCidr: '10.244.1.0/24' }, { name: 'node-2', index: 2, ip: '172.30.0.12', podCidr: '10.244.2.0/24' }],
    } as ClusterState);
    // Where the runtime makes each node agent's control socket.
    const socket = CONTROL_SOCKET(layout.stateDir, 'node-1');
    mkdirSync(dirname(socket), { recursive: true });
    control = await serveControl({ podReadiness: () => Promise.resolve(undefined), version: 'v7' }, socket, { proxyConfig: SOURCE, logger: silentLogger }, silentLogger);
  });

  afterAll(() => {
    control?.close();
    if (saved === undefined) delete process.env.AMBIT_LOCAL_STATE;
    else process.env.AMBIT_LOCAL_STATE = saved;
    rmSync(root, { recursive: true, force: true });
  });

  it('asks the node\'s agent on its control socket', async () => {
    const json = JSON.parse(await ambit(['proxy-config', 'workloads', '--node', 'node-1', '--cluster', 'pc', '--json'])) as ProxyConfigAnswer;
    expect(json).toMatchObject({ apiVersion: PROXY_CONFIG_API_VERSION, kind: 'Workloads', node: 'node-1', configVersion: 'v7', items: [{ name: 'client', status: 'enrolled' }] });
    expect(await ambit(['proxy-config', 'workloads', '--node', 'node-1', '--cluster', 'pc'])).toMatch(/^NAMESPACE\s+NAME\s+IP[^\n]*\nmesh\s+client\s+10\.244\.1\.3\s+node-1\s+enrolled\s+HBONE\s+-\s+spiffe:\/\/cluster\.local\/ns\/mesh\/sa\/client\s+0\n$/);
    expect(await ambit(['proxy-config', 'certs', '--node', 'node-1', '--cluster', 'pc'])).toBe('no certificates on node node-1\n');
  });

  it('names the cluster, the nodes it has, or the agent that does not answer', async () => {
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-1', '--cluster', 'nope'])).rejects.toMatchObject({ message: 'cluster nope does not exist', hint: expect.stringContaining('ambit local up --cluster nope') });
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-9', '--cluster', 'pc'])).rejects.toMatchObject({ message: 'cluster pc has no node "node-9"; its nodes: node-1, node-2', hint: '--node node-1' });
    const socket = CONTROL_SOCKET(join(root, 'pc'), 'node-2');
    await expect(ambit(['proxy-config', 'services', '--node', 'node-2', '--cluster', 'pc'])).rejects.toMatchObject({
      message: `the node agent of node-2 (cluster pc) does not answer on its control socket ${socket} (ENOENT)`,
      hint: `ambit local status --cluster pc shows whether it runs; its log: ${join(root, 'pc', 'logs', 'node-agent.node-2.log')}`,
    });
    await expect(ambit(['proxy-config', 'services', '--node', 'Node_1', '--cluster', 'pc'])).rejects.toThrow('--node must be a node name');
  });
});

describe('a Kubernetes cluster', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-pc-kube-'));
  const kubeconfig = join(dir, 'kubeconfig');
  const labels = commonLabels('node');
  let server: FakeApiServer;
  let admin: AdminServer;

  const agentPod = (name: string, node: string, phase: string, podLabels: Record<string, string> = labels) => ({
    metadata: { name, namespace: 'ambit-system', labels: podLabels }, spec: { nodeName: node, hostNetwork: true }, status: { phase },
  });

  beforeAll(async () => {
    admin = await AdminServer.start({ proxyConfig: SOURCE, logger: silentLogger }, '127.0.0.1', 0);
  });

  beforeEach(async () => {
    server = new FakeApiServer([{ group: '', version: 'v1', kind: 'Pod', plural: 'pods' }]);
    await server.start();
    writeKubeconfig(kubeconfig, server.url);
    // A rolling update: the old agent pod on node-a is terminating, the new one runs.
    server.apply('Pod', { ...agentPod('ambit-node-old', 'node-a', 'Running'), metadata: { name: 'ambit-node-old', namespace: 'ambit-system', labels, deletionTimestamp: '2025-01-01T00:00:00Z' } });
    server.apply('Pod', agentPod('ambit-node-aaaa', 'node-a', 'Running'));
    server.apply('Pod', agentPod('ambit-node-bbbb', 'node-b', 'Pending'));
    // Another workload on node-c: not an agent, whatever a server does with the selector.
    server.apply('Pod', agentPod('app', 'node-c', 'Running', { app: 'x' }));
    // The pod's localhost admin port, here an admin endpoint on loopback.
    server.portForward = (_ns, _pod, port) => connect(port === 15000 ? admin.port : 1, '127.0.0.1');
  });

  afterEach(() => server.close());

  afterAll(async () => {
    await admin.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('finds the agent pod on the node and asks its admin port through a port-forward', async () => {
    const json = JSON.parse(await ambit(['proxy-config', 'workloads', '--node', 'node-a', '--kubeconfig', kubeconfig, '--json'])) as ProxyConfigAnswer;
    expect(json).toMatchObject({ apiVersion: PROXY_CONFIG_API_VERSION, kind: 'Workloads', node: 'node-1', items: [{ name: 'client', identity: 'spiffe://cluster.local/ns/mesh/sa/client' }] });
    const urls = server.requests.map((r) => `${r.method} ${r.url}`);
    expect(urls).toContain(`GET /api/v1/namespaces/ambit-system/pods?labelSelector=${encodeURIComponent('app.kubernetes.io/name=ambit-node,app.kubernetes.io/part-of=ambit')}&fieldSelector=${encodeURIComponent('spec.nodeName=node-a')}`);
    expect(urls).toContain('UPGRADE /api/v1/namespaces/ambit-system/pods/ambit-node-aaaa/portforward?ports=15000');
    // One port-forward per answer, and a table through the same path.
    expect(await ambit(['proxy-config', 'workloads', '--node', 'node-a', '--kube'].concat(['--kubeconfig', kubeconfig]))).toMatch(/^NAMESPACE\s+NAME[^\n]*\nmesh\s+client\s+10\.244\.1\.3/);
    expect(server.requests.filter((r) => r.method === 'UPGRADE')).toHaveLength(2);
  }, 20_000);

  it('closes the port-forward once it has the answer, even if the pod\'s side keeps it open', async () => {
    const body = JSON.stringify({ ...envelope, kind: 'Services', items: [] });
    let closed = false;
    server.portForward = () => new Duplex({
      read() { /* answers below */ },
      write(_chunk, _encoding, done) {
        this.push(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
        done();
      },
      destroy(err, done) {
        closed = true;
        done(err);
      },
    });
    expect(await ambit(['proxy-config', 'services', '--node', 'node-a', '--kubeconfig', kubeconfig])).toBe('no services on node node-1\n');
    await vi.waitFor(() => expect(closed).toBe(true));
  });

  it('names the node and the namespace when no agent pod runs there', async () => {
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-c', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: 'no ambit node agent pod on node node-c in namespace ambit-system; agents run on: node-a, node-b',
      hint: expect.stringContaining('give a node with an agent'),
    });
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-a', '-n', 'elsewhere', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: 'no ambit node agent pod on node node-a in namespace elsewhere: none runs in that namespace',
      hint: 'give the namespace ambit is installed in with -n (kubectl get daemonsets -A -l app.kubernetes.io/name=ambit-node,app.kubernetes.io/part-of=ambit)',
    });
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-b', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: 'the node agent pod ambit-system/ambit-node-bbbb on node node-b is Pending', hint: 'kubectl describe pod -n ambit-system ambit-node-bbbb',
    });
    server.failNext('GET', '/pods', 403);
    await expect(ambit(['proxy-config', 'workloads', '--node', 'node-a', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: expect.stringMatching(/^cannot list the node agent pods in namespace ambit-system: GET .* refused by the test$/),
      hint: 'your user needs "list" on pods in ambit-system (kubectl auth can-i list pods -n ambit-system)',
    });
    expect(server.requests.some((r) => r.method === 'UPGRADE')).toBe(false);
  });

  it('says when the port-forward is refused, or the kubelet cannot reach the port', async () => {
    server.portForward = () => ({ status: 403 });
    await expect(ambit(['proxy-config', 'certs', '--node', 'node-a', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: `the API server at ${server.url} refused a port-forward to ambit-system/ambit-node-aaaa (403 Forbidden)`,
      hint: 'your user needs "create" on pods/portforward in ambit-system (kubectl auth can-i create pods/portforward -n ambit-system)',
    });
    const refused = 'error forwarding port 15000 to pod 0123, uid : failed to execute portforward in network namespace "/var/run/netns/cni-1": failed to connect to localhost:15000 inside namespace "0123", IPv4: dial tcp4 127.0.0.1:15000: connect: connection refused';
    server.portForward = () => ({ error: refused });
    await expect(ambit(['proxy-config', 'certs', '--node', 'node-a', '--kubeconfig', kubeconfig])).rejects.toMatchObject({
      message: `the node agent pod ambit-system/ambit-node-aaaa on node node-a did not answer on its admin port 15000: ${refused}`,
      hint: 'kubectl logs -n ambit-system ambit-node-aaaa shows whether the agent runs',
    });
  }, 20_000);
});
