/**
 * `ambit proxy-config workloads|services|policies|certs|connections --node N | --waypoint NS/NAME`:
 * what one node agent or one waypoint holds, as tables or (`--json`) in the versioned schema of
 * src/api/proxy-config.ts (docs/PROXY-CONFIG.md). It asks `GET /proxy-config/<view>`. A node
 * agent: in a local cluster on its control socket (`<state>/nodes/<node>/agent.sock`, root only);
 * on Kubernetes (`--kubeconfig FILE`, `--kube`) on its localhost admin port 15000, through a
 * port-forward to the agent's pod on that node (the API server's pods/portforward, WebSocket
 * v4.channel.k8s.io). A waypoint: its admin port 15000 on its pod's loopback, in a local cluster
 * from a socket made in the pod's network namespace (root only), on Kubernetes through the same
 * port-forward to one of its pods.
 */
import { request, type ClientRequest, type RequestOptions } from 'node:http';
import { Duplex, PassThrough, Writable } from 'node:stream';
import { Argument, Command, Option } from 'commander';
import {
  PROXY_CONFIG_API_VERSION, PROXY_CONFIG_KINDS, PROXY_CONFIG_VIEWS,
  type ConnectionPeerItem, type ProxyConfigAnswer, type ProxyConfigView, type RouteRef, type UpstreamItem,
} from '../api/proxy-config.js';
import { WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { httpGetInNetns } from '../host/netns.js';
import { selectorLabels } from '../install/render.js';
import { defaultKubeconfig, KubeClient } from '../kube/client.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { readState } from '../local/state.js';
import { ADMIN_PORT } from '../node/admin.js';
import { CONTROL_SOCKET } from '../node/app.js';
import { OperatorError } from '../util/errors.js';
import { CliError } from './errors.js';
import { age, table } from './format.js';
import { apiMessage, isSuccess, kubeRequest } from './kube.js';

/** Where `ambit install` puts the node agents unless told otherwise. */
export const DEFAULT_NAMESPACE = 'ambit-system';
const TIMEOUT_MS = 15_000;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

interface Opts { node?: string; waypoint?: string; cluster: string; kubeconfig?: string; kube?: boolean; kubernetes?: boolean; namespace: string; json?: boolean }

export function register(program: Command): void {
  program.command('proxy-config')
    .description('what one node agent or waypoint holds: its workloads, services, policies, certificates or open connections (as istioctl ztunnel-config); --json gives the versioned schema of docs/PROXY-CONFIG.md')
    .addArgument(new Argument('<view>', 'workloads, services, policies, certs or connections').choices(PROXY_CONFIG_VIEWS))
    .addOption(new Option('--node <name>', 'the node whose agent to ask').conflicts('waypoint'))
    .addOption(new Option('--waypoint <ns/name>', 'the waypoint to ask (one of its pods), instead of a node agent').conflicts('node'))
    .addOption(new Option('--cluster <name>', 'the local cluster').default(DEFAULT_CLUSTER))
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one: the agent is reached through a port-forward to its pod')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config (or in-cluster)')
    // `ambit node` calls its Kubernetes mode --kubernetes: accepted here too.
    .addOption(new Option('--kubernetes', 'same as --kube').hideHelp())
    .option('-n, --namespace <ns>', 'the node agents\' namespace (Kubernetes)', DEFAULT_NAMESPACE)
    .option('--json', `the answer as JSON (apiVersion ${PROXY_CONFIG_API_VERSION})`)
    .action(async (view: ProxyConfigView, opts: Opts) => {
      const kubernetes = Boolean(opts.kubeconfig || opts.kube || opts.kubernetes);
      if (opts.waypoint !== undefined) {
        const ref = parseWaypointRef(opts.waypoint);
        const answer = kubernetes ? await waypointFromKubernetes(view, ref, opts.kubeconfig) : await waypointFromLocal(view, ref, opts.cluster);
        process.stdout.write(opts.json ? `${JSON.stringify(answer, null, 2)}\n` : `${renderProxyConfig(answer)}\n`);
        return;
      }
      if (opts.node === undefined) throw new CliError('say whose config to show: --node NODE (a node agent) or --waypoint NAMESPACE/NAME (a waypoint)');
      if (!DNS_SUBDOMAIN.test(opts.node) || opts.node.length > 253) throw new CliError(`--node must be a node name (lower case letters, digits, '-', '.'), got "${opts.node}"`);
      if (kubernetes && (!DNS_LABEL.test(opts.namespace) || opts.namespace.length > 63)) throw new CliError(`--namespace must be a DNS label, got "${opts.namespace}"`);
      const answer = kubernetes ? await fromKubernetes(view, { ...opts, node: opts.node }) : await fromLocal(view, opts.node, opts.cluster);
      process.stdout.write(opts.json ? `${JSON.stringify(answer, null, 2)}\n` : `${renderProxyConfig(answer)}\n`);
    });
}

// ---------------------------------------------------------------------------------------------
// Asking the agent

interface HttpAnswer { status: number; text: string }

/** One GET over whatever `connection` gives (a unix socket path, or a stream made for the request). */
function httpGet(options: RequestOptions, timeoutMs = TIMEOUT_MS): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req: ClientRequest = request({ method: 'GET', ...options, headers: { host: 'localhost', connection: 'close', ...options.headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      res.on('error', reject);
    });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
    req.on('close', () => clearTimeout(timer));
    req.on('error', reject);
    req.end();
  });
}

/**
 * The agent's answer, checked: a 200 in the schema this ambit reads, else a CliError saying what
 * the agent said (`logs`: where its log is, the hint for an answer that is not one).
 */
export function readAnswer(view: ProxyConfigView, answer: HttpAnswer, agent: string, logs?: string, upgrade = 'upgrade the node agents to this ambit\'s version'): ProxyConfigAnswer {
  let body: unknown;
  try {
    body = JSON.parse(answer.text);
  } catch {
    throw new CliError(`${agent} sent an answer that is not JSON (HTTP ${answer.status}): ${answer.text.slice(0, 200)}`, logs);
  }
  const error = (body as { error?: unknown } | null)?.error;
  if (answer.status === 404 && typeof error === 'string' && error.startsWith('no route')) {
    throw new CliError(`${agent} does not serve /proxy-config/${view}: it is older than this ambit`, upgrade);
  }
  if (answer.status !== 200) throw new CliError(`${agent} answered ${answer.status}: ${typeof error === 'string' ? error : answer.text.slice(0, 200)}`, logs);
  const got = body as Partial<ProxyConfigAnswer> | null;
  if (got?.apiVersion !== PROXY_CONFIG_API_VERSION || got.kind !== PROXY_CONFIG_KINDS[view] || !Array.isArray(got.items)) {
    throw new CliError(`${agent} answered ${String(got?.apiVersion)} ${String(got?.kind)}; this ambit reads ${PROXY_CONFIG_API_VERSION} ${PROXY_CONFIG_KINDS[view]}`, 'use the ambit of the same version as the node agents');
  }
  return got as ProxyConfigAnswer;
}

/** A local cluster: the agent's control socket, found by the cluster's layout. */
export async function fromLocal(view: ProxyConfigView, node: string, cluster: string): Promise<ProxyConfigAnswer> {
  const layout = new ClusterLayout(cluster);
  const state = readState(layout.stateFile);
  if (!state) throw new CliError(`cluster ${cluster} does not exist`, `create it with ambit local up --cluster ${cluster}, or name another with --cluster (for Kubernetes: --kubeconfig FILE or --kube)`);
  const nodes = state.nodes.map((n) => n.name);
  if (!nodes.includes(node)) throw new CliError(`cluster ${cluster} has no node "${node}"; its nodes: ${nodes.join(', ') || 'none'}`, nodes[0] ? `--node ${nodes[0]}` : undefined);
  const socketPath = CONTROL_SOCKET(layout.stateDir, node);
  const agent = `the node agent of ${node} (cluster ${cluster})`;
  const logs = `its log: ${layout.componentLog(`node-agent.${node}`)}`;
  let answer: HttpAnswer;
  try {
    answer = await httpGet({ socketPath, path: `/proxy-config/${view}` });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES') throw new CliError(`cannot open ${socketPath}: permission denied`, 'the agent\'s control socket is root\'s only (mode 0600): run as root');
    throw new CliError(`${agent} does not answer on its control socket ${socketPath} (${code ?? (err as Error).message})`,
      `ambit local status --cluster ${cluster} shows whether it runs; ${logs}`);
  }
  return readAnswer(view, answer, agent, logs);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: the agent's pod on the node, and a port-forward to its admin port

const AGENT_LABELS = selectorLabels('node');
const AGENT_SELECTOR = Object.entries(AGENT_LABELS).map(([k, v]) => `${k}=${v}`).join(',');

interface KubePod {
  metadata?: { name?: string; labels?: Record<string, string>; deletionTimestamp?: string };
  spec?: { nodeName?: string };
  status?: { phase?: string };
}

const isAgent = (p: KubePod) => Object.entries(AGENT_LABELS).every(([k, v]) => p.metadata?.labels?.[k] === v) && Boolean(p.metadata?.name);

/**
 * The node agent pod on `node` (the DaemonSet's, by its pod labels) that runs now. Selectors are
 * also applied here: a server may ignore them, and only an agent pod on that node will do.
 */
export async function findAgentPod(client: KubeClient, namespace: string, node: string): Promise<string> {
  const pods = async (query: string): Promise<KubePod[]> => {
    const res = await kubeRequest(client, 'GET', `/api/v1/namespaces/${namespace}/pods?${query}`);
    if (!isSuccess(res)) {
      throw new CliError(`cannot list the node agent pods in namespace ${namespace}: ${apiMessage(res)}`,
        res.status === 403 ? `your user needs "list" on pods in ${namespace} (kubectl auth can-i list pods -n ${namespace})` : undefined);
    }
    return ((res.body as { items?: KubePod[] } | undefined)?.items ?? []).filter(isAgent);
  };
  const selector = `labelSelector=${encodeURIComponent(AGENT_SELECTOR)}`;
  const here = (await pods(`${selector}&fieldSelector=${encodeURIComponent(`spec.nodeName=${node}`)}`)).filter((p) => p.spec?.nodeName === node);
  if (here.length === 0) {
    const elsewhere = [...new Set((await pods(`${selector}&limit=500`)).map((p) => p.spec?.nodeName).filter((n): n is string => Boolean(n)))].sort();
    if (elsewhere.length === 0) {
      throw new CliError(`no ambit node agent pod on node ${node} in namespace ${namespace}: none runs in that namespace`,
        `give the namespace ambit is installed in with -n (kubectl get daemonsets -A -l ${AGENT_SELECTOR})`);
    }
    const shown = elsewhere.slice(0, 10).join(', ') + (elsewhere.length > 10 ? `, and ${elsewhere.length - 10} more` : '');
    throw new CliError(`no ambit node agent pod on node ${node} in namespace ${namespace}; agents run on: ${shown}`,
      'give a node with an agent (kubectl get nodes; a node the DaemonSet does not schedule on, by taint or OS, has none)');
  }
  const running = here.find((p) => p.status?.phase === 'Running' && !p.metadata?.deletionTimestamp);
  if (!running) {
    const p = here[0]!;
    throw new CliError(`the node agent pod ${namespace}/${p.metadata!.name!} on node ${node} is ${p.metadata?.deletionTimestamp ? 'terminating' : p.status?.phase ?? 'not running'}`,
      `kubectl describe pod -n ${namespace} ${p.metadata!.name!}`);
  }
  return running.metadata!.name!;
}

/** The part of a port-forward WebSocket (the `ws` package's) this uses. */
interface ForwardSocket {
  close(): void;
  on(event: 'close', listener: () => void): void;
  on(event: 'error', listener: (err: Error) => void): void;
}

/**
 * A byte stream to `port` inside the pod, through the API server's pods/portforward (WebSocket,
 * v4.channel.k8s.io: data on channel 0, errors on channel 1, each opened by the port number).
 * Resolves once the WebSocket is open; the stream ends when the pod's side closes, or fails with
 * what the kubelet wrote on the error channel. `@kubernetes/client-node` is loaded only now: its
 * modules cost a process ~25 MB of heap (see src/kube/client.ts).
 */
export async function portForward(kubeconfig: string | undefined, namespace: string, pod: string, port: number): Promise<Duplex> {
  const { KubeConfig, PortForward } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    const file = kubeconfig ?? defaultKubeconfig();
    if (file) kc.loadFromFile(file);
    else kc.loadFromCluster();
  } catch (err) {
    throw new OperatorError(`cannot read the kubeconfig${kubeconfig ? ` ${kubeconfig}` : ''}: ${(err as Error).message}`,
      'give a kubeconfig that names a cluster and a user (the flag, $KUBECONFIG or ~/.kube/config), or run in a pod with a ServiceAccount', 1, 'AMBIT_E_KUBECONFIG');
  }
  const input = new PassThrough();
  /** The WebSocket, once open (the stream is made before it, to hand the client library). */
  const forward: { ws?: ForwardSocket } = {};
  let kubeletError = '';
  const conn = new Duplex({
    read() { /* pushed as the bytes arrive */ },
    write(chunk: Buffer, _encoding, done) { input.write(chunk, done); },
    // The request's end is not passed on: on v4 the client library closes the WebSocket at the
    // end of its input, which would lose the answer. The agent closes after answering.
    final(done) { done(); },
    destroy(err, done) {
      input.destroy();
      forward.ws?.close();
      done(err);
    },
  });
  const output = new Writable({
    write(chunk: Buffer, _encoding, done) {
      if (chunk.length > 0) conn.push(chunk);
      done();
    },
  });
  const errors = new Writable({
    write(chunk: Buffer, _encoding, done) {
      kubeletError += chunk.toString('utf8');
      done();
    },
  });
  const opened = await new PortForward(kc, true).portForward(namespace, pod, [port], output, errors, input, 0);
  const ws = forward.ws = opened as unknown as ForwardSocket;
  ws.on('error', (err) => conn.destroy(err));
  ws.on('close', () => {
    if (kubeletError.trim()) conn.destroy(new Error(kubeletError.trim()));
    else conn.push(null);
  });
  return conn;
}

async function fromKubernetes(view: ProxyConfigView, opts: Opts & { node: string }): Promise<ProxyConfigAnswer> {
  const client = KubeClient.fromFile(opts.kubeconfig);
  const pod = await findAgentPod(client, opts.namespace, opts.node);
  return askPod(view, client, opts.kubeconfig, opts.namespace, pod, {
    what: `the node agent pod ${opts.namespace}/${pod}`, where: ` on node ${opts.node}`,
    logs: `kubectl logs -n ${opts.namespace} ${pod} shows whether the agent runs`,
  });
}

/** A view from one node agent pod (by name) on Kubernetes: `ambit stat pod` asks every agent. */
export function agentPodView(view: ProxyConfigView, client: KubeClient, kubeconfig: string | undefined, namespace: string, pod: string): Promise<ProxyConfigAnswer> {
  return askPod(view, client, kubeconfig, namespace, pod, { what: `the node agent pod ${namespace}/${pod}`, where: '', logs: `kubectl logs -n ${namespace} ${pod} shows whether the agent runs` });
}

/** `GET /proxy-config/<view>` on a pod's localhost admin port, through a port-forward. */
async function askPod(view: ProxyConfigView, client: KubeClient, kubeconfig: string | undefined, namespace: string, pod: string,
  says: { what: string; where: string; logs: string; upgrade?: string }): Promise<ProxyConfigAnswer> {
  const where = `${namespace}/${pod}`;
  let conn: Duplex;
  try {
    conn = await portForward(kubeconfig, namespace, pod, ADMIN_PORT);
  } catch (err) {
    if (err instanceof OperatorError) throw err;
    const message = (err as Error).message ?? String(err);
    if (/\b403\b/.test(message)) {
      throw new CliError(`the API server at ${client.server} refused a port-forward to ${where} (403 Forbidden)`,
        `your user needs "create" on pods/portforward in ${namespace} (kubectl auth can-i create pods/portforward -n ${namespace})`);
    }
    throw new CliError(`cannot port-forward to ${where}:${ADMIN_PORT} through the API server at ${client.server}: ${message}`,
      `kubectl port-forward -n ${namespace} pod/${pod} ${ADMIN_PORT} takes the same path${says.upgrade ? `; ${says.upgrade}` : ''}`);
  }
  let answer: HttpAnswer;
  try {
    answer = await httpGet({ createConnection: () => conn, path: `/proxy-config/${view}` });
  } catch (err) {
    throw new CliError(`${says.what}${says.where} did not answer on its admin port ${ADMIN_PORT}: ${(err as Error).message}`, says.logs);
  } finally {
    // The WebSocket goes with the answer, whether or not the pod's side has closed yet.
    conn.destroy();
  }
  return readAnswer(view, answer, says.what, says.logs, says.upgrade);
}

// ---------------------------------------------------------------------------------------------
// Waypoints: the admin port on their pod's loopback

export interface WaypointRefArg { namespace: string; name: string }

const WAYPOINT_UPGRADE = 'a waypoint older than this ambit has no admin endpoint: upgrade it (its pods are made again)';

/** `--waypoint NS/NAME`. */
export function parseWaypointRef(text: string): WaypointRefArg {
  const m = /^([^/]+)\/([^/]+)$/.exec(text);
  if (!m || !DNS_LABEL.test(m[1]!) || m[1]!.length > 63 || !DNS_LABEL.test(m[2]!) || m[2]!.length > 63) {
    throw new CliError(`--waypoint must be NAMESPACE/NAME (its Gateway, both DNS labels), got "${text}"`, 'ambit waypoint list shows the waypoints');
  }
  return { namespace: m[1]!, name: m[2]! };
}

/**
 * A local cluster's waypoint: its pod (the Gateway's, by the gateway-name label), asked from a
 * socket made in the pod's network namespace (`/run/netns/<cluster prefix>.<ns>.<pod>`), where its
 * admin endpoint listens on 127.0.0.1. `get` is httpGetInNetns (root only); tests pass another.
 */
export async function waypointFromLocal(view: ProxyConfigView, ref: WaypointRefArg, cluster: string, get = httpGetInNetns): Promise<ProxyConfigAnswer> {
  const layout = new ClusterLayout(cluster);
  const state = readState(layout.stateFile);
  if (!state) throw new CliError(`cluster ${cluster} does not exist`, `create it with ambit local up --cluster ${cluster}, or name another with --cluster (for Kubernetes: --kubeconfig FILE or --kube)`);
  const waypointPods = Object.values(state.pods).filter((p) => p.labels[WAYPOINT_GATEWAY_LABEL] !== undefined);
  const pod = waypointPods.filter((p) => p.namespace === ref.namespace && p.labels[WAYPOINT_GATEWAY_LABEL] === ref.name).sort((a, b) => a.name.localeCompare(b.name))[0];
  if (!pod) {
    const known = [...new Set(waypointPods.map((p) => `${p.namespace}/${p.labels[WAYPOINT_GATEWAY_LABEL]!}`))].sort();
    throw new CliError(`cluster ${cluster} has no waypoint ${ref.namespace}/${ref.name}; its waypoints: ${known.join(', ') || 'none'}`,
      known[0] ? `--waypoint ${known[0]}` : `make one with ambit waypoint apply -n ${ref.namespace} --name ${ref.name} --cluster ${cluster}`);
  }
  const netns = `/run/netns/${layout.podNetns(pod.namespace, pod.name)}`;
  const what = `the waypoint ${ref.namespace}/${ref.name} (pod ${pod.name}, cluster ${cluster})`;
  const logs = `ambit local logs -n ${pod.namespace} ${pod.name} --cluster ${cluster} shows whether it runs`;
  let answer: { status: number; body: string };
  try {
    answer = await get(netns, '127.0.0.1', ADMIN_PORT, `/proxy-config/${view}`, TIMEOUT_MS);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EPERM' || e.code === 'EACCES' || /\bEPERM\b|operation not permitted/i.test(e.message)) {
      throw new CliError(`cannot enter the network namespace of ${pod.namespace}/${pod.name} (${netns}): ${e.message}`, 'a socket in a pod\'s network namespace is made with setns: run as root');
    }
    throw new CliError(`${what} does not answer on 127.0.0.1:${ADMIN_PORT} in its network namespace (${e.code ?? e.message})`,
      `${logs}; ${WAYPOINT_UPGRADE}`);
  }
  return readAnswer(view, { status: answer.status, text: answer.body }, what, logs, WAYPOINT_UPGRADE);
}

const isRunning = (p: KubePod) => p.status?.phase === 'Running' && !p.metadata?.deletionTimestamp;

/** The running pod of a waypoint on Kubernetes: its Deployment's pods carry the Gateway's name in `gateway.networking.k8s.io/gateway-name`. */
export async function findWaypointPod(client: KubeClient, ref: WaypointRefArg): Promise<string> {
  const path = `/api/v1/namespaces/${ref.namespace}/pods?labelSelector=${encodeURIComponent(`${WAYPOINT_GATEWAY_LABEL}=${ref.name}`)}`;
  const res = await kubeRequest(client, 'GET', path);
  if (!isSuccess(res)) {
    throw new CliError(`cannot list the pods of waypoint ${ref.namespace}/${ref.name}: ${apiMessage(res)}`,
      res.status === 403 ? `your user needs "list" on pods in ${ref.namespace} (kubectl auth can-i list pods -n ${ref.namespace})` : undefined);
  }
  // The selector is applied here too: a server may ignore it.
  const pods = ((res.body as { items?: KubePod[] } | undefined)?.items ?? [])
    .filter((p) => p.metadata?.name && p.metadata.labels?.[WAYPOINT_GATEWAY_LABEL] === ref.name)
    .sort((a, b) => a.metadata!.name!.localeCompare(b.metadata!.name!));
  if (pods.length === 0) {
    throw new CliError(`no pod of waypoint ${ref.namespace}/${ref.name} (label ${WAYPOINT_GATEWAY_LABEL}=${ref.name}) in namespace ${ref.namespace}`,
      `ambit waypoint list -n ${ref.namespace} --kube shows its Gateway and Deployment; kubectl get deployment -n ${ref.namespace} ${ref.name}`);
  }
  const running = pods.find(isRunning);
  if (!running) {
    const p = pods[0]!;
    throw new CliError(`the pod ${ref.namespace}/${p.metadata!.name!} of waypoint ${ref.namespace}/${ref.name} is ${p.metadata?.deletionTimestamp ? 'terminating' : p.status?.phase ?? 'not running'}`,
      `kubectl describe pod -n ${ref.namespace} ${p.metadata!.name!}`);
  }
  return running.metadata!.name!;
}

async function waypointFromKubernetes(view: ProxyConfigView, ref: WaypointRefArg, kubeconfig: string | undefined): Promise<ProxyConfigAnswer> {
  const client = KubeClient.fromFile(kubeconfig);
  const pod = await findWaypointPod(client, ref);
  return askPod(view, client, kubeconfig, ref.namespace, pod, {
    what: `the waypoint ${ref.namespace}/${ref.name} (pod ${pod})`, where: '',
    logs: `kubectl logs -n ${ref.namespace} ${pod} shows whether it runs`, upgrade: WAYPOINT_UPGRADE,
  });
}

// ---------------------------------------------------------------------------------------------
// Tables

const dash = (v: string | number | null | undefined) => (v === null || v === undefined || v === '' ? '-' : String(v));

function endpoint(p: ConnectionPeerItem): string {
  const address = p.port === null ? p.ip : `${p.ip.includes(':') ? `[${p.ip}]` : p.ip}:${p.port}`;
  return p.workload ? `${address} (${p.namespace ? `${p.namespace}/` : ''}${p.workload})` : address;
}

/** A waypoint's route, as a table cell: `HTTPRoute mesh/r` (with `:80` for the ports it binds, `(from ns)` for a consumer route). */
function routeCell(r: RouteRef): string {
  return `${r.kind} ${r.namespace}/${r.name}${r.ports ? `:${r.ports.join(',')}` : ''}${r.consumer ? ` (for ${r.consumer})` : ''}`;
}

/** What outlier detection says of an endpoint, over the destinations it is in. */
function outlierCell(upstreams: UpstreamItem[] | undefined): string {
  const watched = (upstreams ?? []).filter((u) => u.outlier);
  if (watched.length === 0) return '-';
  const ejected = watched.filter((u) => u.outlier!.ejected);
  const times = Math.max(...watched.map((u) => u.outlier!.ejections));
  return ejected.length > 0 ? `ejected (${ejected.map((u) => `${u.service}:${u.port}`).join(',')})` : `healthy${times > 0 ? ` (ejected ${times}x before)` : ''}`;
}

/** The tables of a waypoint's answer, where they differ from a node agent's. */
function waypointTable(answer: ProxyConfigAnswer): { head: string[]; rows: string[][] } | undefined {
  switch (answer.kind) {
    case 'Workloads':
      return {
        head: ['NAMESPACE', 'NAME', 'IP', 'NODE', 'STATUS', 'IDENTITY', 'SERVICES', 'UPSTREAMS', 'OUTLIER'],
        rows: answer.items.map((w) => [w.namespace, w.name, dash(w.ips.join(',')), w.node, w.status, w.identity, dash((w.services ?? []).join(',')),
          dash([...new Set((w.upstreams ?? []).map((u) => u.address))].join(',')), outlierCell(w.upstreams)]),
      };
    case 'Services':
      return {
        head: ['NAMESPACE', 'NAME', 'VIPS', 'PORTS', 'ENDPOINTS', 'ROUTES', 'DESTINATION RULE'],
        rows: answer.items.map((s) => [s.namespace, s.name, dash(s.vips.join(',')), dash(s.ports.map((p) => `${p.port}/${p.protocol}->${p.targetPort}`).join(',')), s.endpoints === null ? 'on demand' : String(s.endpoints),
          (s.routes ?? []).length > 0 ? s.routes!.map(routeCell).join(', ') : '(default: all to the service)', dash(s.destinationRule)]),
      };
    case 'Policies':
      return {
        head: ['NAMESPACE', 'NAME', 'ACTION', 'ENFORCED', 'BOUND TO', 'RULES'],
        rows: answer.items.map((p) => [p.namespace, p.name, p.action, p.enforced ? 'yes' : 'no', dash((p.targetRefs ?? []).join(', ')),
          p.rules.length > 0 ? p.rules.join(' ; ') : '(none: matches nothing)']),
      };
    default:
      return undefined;
  }
}

/** A view as a table (kubectl's style), with the notes that do not fit a column after it. */
export function renderProxyConfig(answer: ProxyConfigAnswer, now = Date.now()): string {
  const notes: string[] = [];
  let head: string[];
  let rows: string[][];
  switch (answer.kind) {
    case 'Workloads':
      head = ['NAMESPACE', 'NAME', 'IP', 'NODE', 'STATUS', 'PROTOCOL', 'WAYPOINT', 'IDENTITY', 'CONNECTIONS'];
      rows = answer.items.map((w) => [w.namespace, w.name, dash(w.ips.join(',')), w.node, w.status, w.protocol, w.waypoint ? w.waypoint.name : '-', w.identity, dash(w.connections)]);
      for (const w of answer.items) if (w.error) notes.push(`${w.namespace}/${w.name} ${w.status}: ${w.error}`);
      break;
    case 'Services':
      head = ['NAMESPACE', 'NAME', 'VIPS', 'PORTS', 'ENDPOINTS', 'WAYPOINT'];
      rows = answer.items.map((s) => [s.namespace, s.name, dash(s.vips.join(',')), dash(s.ports.map((p) => `${p.port}/${p.protocol}->${p.targetPort}`).join(',')), s.endpoints === null ? 'on demand' : String(s.endpoints), s.waypoint ? `${s.waypoint.namespace}/${s.waypoint.name}` : '-']);
      break;
    case 'Policies':
      head = ['NAMESPACE', 'NAME', 'KIND', 'SCOPE', 'ACTION', 'ENFORCED', 'RULES'];
      rows = answer.items.map((p) => [p.namespace, p.name, p.kind, p.scope, p.action, p.enforced ? 'yes' : 'no',
        p.rules.length > 0 ? p.rules.join(' ; ') : p.kind === 'AuthorizationPolicy' ? '(none: matches nothing)' : '-']);
      for (const p of answer.items) for (const w of p.warnings) notes.push(`warning: ${p.kind} ${p.namespace}/${p.name}: ${w}`);
      break;
    case 'Certificates':
      head = ['IDENTITY', 'SERIAL', 'NOT BEFORE', 'NOT AFTER', 'RENEWS', 'STATE', 'PODS'];
      rows = answer.items.map((c) => [c.identity, dash(c.serial), dash(c.notBefore), dash(c.notAfter), dash(c.renewsAt), c.state, dash(c.pods.join(','))]);
      for (const c of answer.items) if (c.error) notes.push(`${c.identity} ${c.state}: ${c.error}`);
      break;
    case 'Connections':
      head = ['POD', 'DIRECTION', 'SOURCE', 'SOURCE IDENTITY', 'DESTINATION', 'DESTINATION IDENTITY', 'PATH', 'MTLS', 'SENT', 'RECEIVED', 'AGE'];
      rows = answer.items.map((c) => [c.pod, c.direction, endpoint(c.source), dash(c.source.identity), endpoint(c.destination), dash(c.destination.identity), c.path, c.mtls ? 'yes' : 'no', String(c.bytesSent), String(c.bytesReceived), age(c.startedAt, now)]);
      break;
  }
  const wp = answer.waypoint;
  if (wp) {
    if (answer.kind === 'Connections') {
      return `waypoint ${wp.namespace}/${wp.name} does not list its connections one by one (that would be work on every tunnel); its open HBONE connections and streams are in its metrics on 15020 (docs/PROXY-CONFIG.md)`;
    }
    const own = waypointTable(answer);
    if (own) ({ head, rows } = own);
    if (rows.length === 0) return `no ${answer.kind.toLowerCase()} at waypoint ${wp.namespace}/${wp.name}${wp.pod ? ` (pod ${wp.pod})` : ''}${answer.configVersion === null ? ': it has no config from the controller yet' : ''}`;
  }
  if (rows.length === 0) return `no ${answer.kind.toLowerCase()} on node ${answer.node}`;
  return [table(head, rows), ...notes].join('\n');
}
