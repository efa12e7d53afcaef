/**
 * The node agent's side of the chained CNI plugin (`native/cni/ambit-cni.c`): for each pod
 * sandbox the container runtime runs the plugin after the primary CNI has set the pod's network
 * up, and the plugin asks the agent over a unix socket. The agent answers only once the pod is
 * enrolled — listeners in its netns, map entries, certificate — so the pod's containers, which
 * start after the plugin returns, never run outside the mesh (fail closed: an error makes the
 * kubelet retry the sandbox).
 *
 * Wire format (one request per connection): the plugin sends one line of JSON
 * `{command, containerId, netns, ifname, args, config}` (`config`: the network config it got on
 * stdin, with the primary plugin's `prevResult`) and half-closes; the agent answers
 * `<exit code>\n<stdout>` and closes. ADD's stdout is the result passed down the chain — the
 * primary plugin's, unchanged — or a CNI error object.
 *
 * What the agent decides from the API server (the controller learns of a pod's IP only once the
 * sandbox is up, too late): the Pod and its Namespace, read by name from CNI_ARGS
 * (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`). A pod that is not meshed (labels), or an
 * invocation that is not for a Kubernetes pod, passes through untouched.
 */
import { rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { KubeClient } from '../control/kube/client.js';
import { apiPod } from '../control/kube-source.js';
import { workloadOf, type Workload } from '../control/model.js';
import { isObject } from '../control/schema.js';
import { silentLogger } from '../telemetry/log.js';

/** What the agent does for the plugin (NodeAgent implements it). */
export interface CniTarget {
  enrollPod(w: Workload, netnsPath: string): Promise<void>;
  releasePod(uid: string): Promise<void>;
}

export interface CniServerOptions {
  /** The socket as the agent sees it (the host's /var/run/ambit/cni.sock, mounted). */
  path: string;
  client: KubeClient;
  target: CniTarget;
  node: string;
  trustDomain: string;
  /** The host's proc as the agent sees it: a CNI_NETNS of /proc/<pid>/ns/net is read there. */
  hostProc?: string;
  log?: Logger;
  /** Bound on one API read (ms). */
  apiTimeoutMs?: number;
}

interface CniRequest {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  config: Record<string, unknown>;
}

/** CNI error codes: 11 = try again later (the kubelet retries the sandbox); 100+ are ours. */
const TRY_AGAIN = 11;
const INVALID = 100;

/** A request line larger than this is refused (a network config is a few KiB). */
const MAX_REQUEST = 1024 * 1024;

class CniFailure extends Error {
  constructor(readonly code: number, message: string, readonly details = '') {
    super(message);
  }
}

/** `K=V;K=V` (CNI_ARGS) as a map. */
export function parseCniArgs(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of args.split(';')) {
    const i = pair.indexOf('=');
    if (i > 0) out[pair.slice(0, i)] = pair.slice(i + 1);
  }
  return out;
}

/** The pod's addresses in a CNI result (1.0/0.4/0.3 `ips[].address`, CIDR form), primary first. */
export function resultIps(result: unknown): string[] {
  if (!isObject(result) || !Array.isArray(result.ips)) return [];
  return result.ips.filter(isObject).map((ip) => (typeof ip.address === 'string' ? ip.address.split('/')[0]! : '')).filter(Boolean);
}

export class CniServer {
  private server?: Server;
  private readonly log: Logger;
  /** Sandbox (container id) → pod uid, for a DEL without K8S_POD_UID. */
  private readonly sandboxes = new Map<string, string>();

  constructor(private readonly opts: CniServerOptions) {
    this.log = (opts.log ?? silentLogger).child({ part: 'cni' });
  }

  async start(): Promise<void> {
    rmSync(this.opts.path, { force: true });
    // allowHalfOpen: the plugin half-closes after its request and reads the answer after that.
    const server = createServer({ allowHalfOpen: true }, (socket) => this.connection(socket));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(this.opts.path, resolve));
    this.server = server;
    this.log.info({ socket: this.opts.path }, 'CNI requests served');
  }

  /**
   * Stops serving. The socket file stays unless `remove`: while an agent restarts, the plugin
   * finds it and gets "connection refused", fails the sandbox and the kubelet retries — a missing
   * file means "ambit is not installed here" and lets pods through unmeshed.
   */
  close(remove = false): void {
    // libuv unlinks a unix socket's file when its server closes: a restart leaves the server to
    // the process's exit (requests meanwhile are answered "try again"), an uninstall closes it.
    if (!remove) return;
    this.server?.close();
    rmSync(this.opts.path, { force: true });
  }

  private connection(socket: Socket): void {
    const chunks: Buffer[] = [];
    let size = 0;
    socket.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST) {
        socket.end(`1\n${JSON.stringify({ cniVersion: '1.0.0', code: INVALID, msg: 'request too large' })}`);
        socket.destroy();
        return;
      }
      chunks.push(c);
    });
    socket.on('error', () => socket.destroy());
    socket.on('end', () => {
      let req: CniRequest;
      try {
        req = JSON.parse(Buffer.concat(chunks).toString('utf8')) as CniRequest;
        if (!isObject(req) || typeof req.command !== 'string' || !isObject(req.config)) throw new Error('not a request object');
      } catch (err) {
        socket.end(`1\n${JSON.stringify({ cniVersion: '1.0.0', code: INVALID, msg: `malformed request from the plugin: ${(err as Error).message}` })}`);
        return;
      }
      const version = typeof req.config.cniVersion === 'string' ? req.config.cniVersion : '1.0.0';
      this.handle(req).then((body) => socket.end(`0\n${body}`), (err: unknown) => {
        const f = err instanceof CniFailure ? err : new CniFailure(TRY_AGAIN, (err as Error).message);
        socket.end(`1\n${JSON.stringify({ cniVersion: version, code: f.code, msg: f.message, details: f.details })}`);
      });
    });
  }

  private async handle(req: CniRequest): Promise<string> {
    const args = parseCniArgs(req.args);
    const namespace = args.K8S_POD_NAMESPACE;
    const name = args.K8S_POD_NAME;
    const pass = JSON.stringify(isObject(req.config.prevResult) ? req.config.prevResult : { cniVersion: req.config.cniVersion ?? '1.0.0' });
    if (req.command === 'DEL') {
      const uid = args.K8S_POD_UID || this.sandboxes.get(req.containerId);
      this.sandboxes.delete(req.containerId);
      if (uid) await this.opts.target.releasePod(uid);
      return '';
    }
    if (req.command !== 'ADD') return '';
    if (!namespace || !name) return pass;
    const started = Date.now();
    const pod = await this.read(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, `pod ${namespace}/${name}`);
    const ns = await this.read(`/api/v1/namespaces/${encodeURIComponent(namespace)}`, `namespace ${namespace}`);
    const meta = isObject(pod.metadata) ? pod.metadata : {};
    if (args.K8S_POD_UID && meta.uid !== args.K8S_POD_UID) throw new CniFailure(TRY_AGAIN, `pod ${namespace}/${name} in the API server is not the sandbox's (uid ${String(meta.uid)}, sandbox for ${args.K8S_POD_UID})`);
    const ips = resultIps(req.config.prevResult);
    if (ips.length === 0) throw new CniFailure(INVALID, `no pod address in the previous plugin's result for ${namespace}/${name}: ambit-cni must come after the primary CNI plugin in the chain`);
    // The controller's view of the pod, as it will stream it once the kubelet reports the IP.
    const info = apiPod({ ...pod, spec: { ...(isObject(pod.spec) ? pod.spec : {}), nodeName: this.opts.node }, status: { phase: 'Pending', podIP: ips[0] } });
    if (!info) throw new CniFailure(INVALID, `pod ${namespace}/${name} could not be read as a pod`);
    const nsMeta = isObject(ns.metadata) ? ns.metadata : {};
    const w = workloadOf(info, isObject(nsMeta.labels) ? nsMeta.labels as Record<string, string> : {}, this.opts.trustDomain);
    if (!w.enrolled) return pass;
    const netns = this.opts.hostProc && req.netns.startsWith('/proc/') ? `${this.opts.hostProc}${req.netns.slice('/proc'.length)}` : req.netns;
    try {
      await this.opts.target.enrollPod(w, netns);
    } catch (err) {
      throw new CniFailure(TRY_AGAIN, `ambit could not enroll ${namespace}/${name}: ${(err as Error).message}`);
    }
    this.sandboxes.set(req.containerId, w.uid);
    this.log.info({ pod: `${namespace}/${name}`, netns, ip: ips[0], ms: Date.now() - started }, 'pod enrolled before its containers start');
    return pass;
  }

  /** One object from the API server; any failure is "try again" (the kubelet retries the sandbox). */
  private async read(path: string, what: string): Promise<Record<string, unknown>> {
    let res;
    try {
      res = await this.opts.client.request('GET', path, undefined, undefined, AbortSignal.timeout(this.opts.apiTimeoutMs ?? 5000));
    } catch (err) {
      throw new CniFailure(TRY_AGAIN, `cannot read ${what} from the API server: ${(err as Error).message}`);
    }
    if (res.status !== 200 || !isObject(res.body)) {
      const message = isObject(res.body) && typeof res.body.message === 'string' ? res.body.message : `HTTP ${res.status}`;
      throw new CniFailure(TRY_AGAIN, `cannot read ${what} from the API server: ${message}`);
    }
    return res.body;
  }
}
