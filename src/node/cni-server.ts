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
 *
 * Sandboxes are told apart by their container ID (`CNI_CONTAINERID`): a pod keeps its UID across
 * sandboxes, and a DEL of an older one arriving late must not release the current one.
 *
 * Every byte on the socket is treated as hostile: the socket is created mode 0600 (in a private
 * directory, then renamed into place, so it is never reachable with wider rights), a request is
 * checked field by field and answered with an error naming what was wrong, and sizes, time and the
 * number of connections are bounded so that no client can crash the agent or hold its memory.
 */
import { chmodSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import { dirname, posix } from 'node:path';
import type { Logger } from 'pino';
import type { KubeClient } from '../kube/client.js';
import { apiPod } from '../config/api-objects.js';
import { workloadOf, type Workload } from '../config/model.js';
import { isObject } from '../config/schema.js';
import { silentLogger } from '../telemetry/log.js';
import { listenUnix, SocketPathTooLongError } from '../util/local-http.js';

/** What the agent does for the plugin (NodeAgent implements it). */
export interface CniTarget {
  /** Enrolls pod `w` in sandbox `containerId`, whose netns is `netnsPath`; a new sandbox of an enrolled pod replaces the old one. */
  enrollPod(w: Workload, netnsPath: string, containerId: string): Promise<void>;
  /** Releases the pod (by `uid`, else by its sandbox) if `containerId` is its current sandbox. */
  releasePod(uid: string | undefined, containerId: string, netnsPath: string): Promise<void>;
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
  /** Bounds on clients; the defaults suit a node (tests shrink them). */
  limits?: Partial<CniLimits>;
}

export interface CniLimits {
  /** A request larger than this is refused: the plugin's config is at most 1 MiB, plus its environment. */
  maxRequestBytes: number;
  /** Bytes of requests buffered at once, all connections together. */
  maxBufferedBytes: number;
  /** Connections open at once; more are answered "try again" at once. */
  maxConnections: number;
  /** From connect to the end of the request (ms): the plugin writes it at once. */
  requestTimeoutMs: number;
  /** From the end of the request to the answer (ms): enrollment, API reads included. */
  handleTimeoutMs: number;
  /** For the client to take the answer once written (ms). */
  answerTimeoutMs: number;
}

const DEFAULT_LIMITS: CniLimits = {
  maxRequestBytes: 2 * 1024 * 1024,
  maxBufferedBytes: 16 * 1024 * 1024,
  maxConnections: 64,
  requestTimeoutMs: 10_000,
  handleTimeoutMs: 60_000,
  answerTimeoutMs: 10_000,
};

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

/** The private directories the socket is bound in before it is renamed into place. */
const STAGING_PREFIX = '.ambit-cni-';
/** The CNI spec's container ID: alphanumerics, `_`, `.` and `-`, not starting with a separator. */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const POD_UID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** A pod has one address per family; a result listing more than this is not a pod's. */
const MAX_POD_IPS = 8;

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

/**
 * The request line as a CniRequest, or a CniFailure naming the first thing wrong with it. Only the
 * shape is checked here; what the values mean is checked where they are used.
 */
export function parseCniRequest(text: string): CniRequest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new CniFailure(INVALID, `malformed request from the plugin: not JSON (${(err as Error).message})`);
  }
  if (!isObject(value)) throw new CniFailure(INVALID, 'malformed request from the plugin: not a JSON object');
  for (const key of ['command', 'containerId', 'netns', 'ifname', 'args'] as const) {
    if (typeof value[key] !== 'string') throw new CniFailure(INVALID, `malformed request from the plugin: "${key}" must be a string`);
  }
  if (!isObject(value.config)) throw new CniFailure(INVALID, 'malformed request from the plugin: "config" must be a JSON object');
  return value as unknown as CniRequest;
}

/** The sandbox's container ID, refused unless it is what the CNI spec allows. */
function containerIdOf(req: CniRequest): string {
  if (!CONTAINER_ID.test(req.containerId)) {
    throw new CniFailure(INVALID, `invalid container ID ${JSON.stringify(req.containerId.slice(0, 300))}: CNI_CONTAINERID must be 1-256 letters, digits, '_', '.' or '-'`);
  }
  return req.containerId;
}

/** An absolute, normalized path (no `..`, no doubled `/`), or '' where `optional` allows none. */
function netnsOf(req: CniRequest, optional: boolean): string {
  const p = req.netns;
  if (p === '' && optional) return '';
  if (!p.startsWith('/') || p.length > 4096 || p.includes('\0') || posix.normalize(p) !== p) {
    throw new CniFailure(INVALID, `invalid netns ${JSON.stringify(p.slice(0, 300))}: CNI_NETNS must be an absolute, normalized path`);
  }
  return p;
}

export class CniServer {
  private server?: Server;
  private readonly log: Logger;
  private readonly limits: CniLimits;
  private readonly open = new Set<Socket>();
  private buffered = 0;

  constructor(private readonly opts: CniServerOptions) {
    this.log = (opts.log ?? silentLogger).child({ part: 'cni' });
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
  }

  /**
   * Listens on `path`, mode 0600 from the first moment: the socket is bound in a fresh private
   * directory (0700) beside it, made 0600, then renamed over `path` — which also replaces a
   * previous agent's socket file without a moment where there is none.
   */
  async start(): Promise<void> {
    const path = this.opts.path;
    const dir = dirname(path);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const stats = statSync(dir);
    if (!stats.isDirectory()) throw new Error(`CNI socket ${path}: ${dir} is not a directory`);
    if (stats.mode & 0o022) {
      // Anyone else who may write there could put their own socket in the plugin's way.
      chmodSync(dir, stats.mode & 0o755);
      this.log.warn({ dir, mode: (stats.mode & 0o777).toString(8) }, 'the CNI socket\'s directory was writable by others: made 0755 or narrower');
    }
    // allowHalfOpen: the plugin half-closes after its request and reads the answer after that.
    const server = createServer({ allowHalfOpen: true }, (socket) => this.connection(socket));
    try {
      // The directory is this agent's alone: a staging directory there is a killed agent's, whatever its age.
      await listenUnix(server, path, { staging: STAGING_PREFIX, stagingMaxAgeMs: 0 });
    } catch (err) {
      if (err instanceof SocketPathTooLongError) throw new Error(`CNI socket ${path}: the path is too long for a unix socket (${err.message}); use a shorter --cni-socket`, { cause: err });
      throw new Error(`CNI socket ${path}: ${(err as Error).message}`, { cause: err });
    }
    this.server = server;
    this.log.info({ socket: path }, 'CNI requests served');
  }

  /**
   * Stops serving. The socket file stays unless `remove`: while an agent restarts, the plugin
   * finds it and gets "connection refused" and fails the sandbox ("try again"), as it does when
   * the file is missing while ambit is installed (its marker, see cni-install.ts).
   */
  close(remove = false): void {
    // libuv unlinks the path it bound, the staging one, long gone: `path` stays unless removed here.
    this.server?.close();
    for (const socket of this.open) socket.destroy();
    if (remove) rmSync(this.opts.path, { force: true });
  }

  private connection(socket: Socket): void {
    const { limits } = this;
    socket.on('error', () => socket.destroy());
    if (this.open.size >= limits.maxConnections) {
      this.answer(socket, 1, JSON.stringify({ cniVersion: '1.0.0', code: TRY_AGAIN, msg: `ambit node agent busy: ${limits.maxConnections} CNI requests in progress` }));
      return;
    }
    this.open.add(socket);
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const release = () => {
      this.buffered -= size;
      size = 0;
      chunks.length = 0;
    };
    socket.once('close', () => {
      clearTimeout(timer);
      release();
      this.open.delete(socket);
    });
    const refuse = (code: number, msg: string) => {
      done = true;
      clearTimeout(timer);
      release();
      socket.removeAllListeners('data');
      socket.pause();
      this.answer(socket, 1, JSON.stringify({ cniVersion: '1.0.0', code, msg }));
    };
    const timer = setTimeout(() => refuse(TRY_AGAIN, `request not received in full within ${limits.requestTimeoutMs} ms`), limits.requestTimeoutMs);
    socket.on('data', (c: Buffer) => {
      if (done) return;
      if (size + c.length > limits.maxRequestBytes) {
        refuse(INVALID, `request too large: over ${limits.maxRequestBytes} bytes`);
        return;
      }
      if (this.buffered + c.length > limits.maxBufferedBytes) {
        refuse(TRY_AGAIN, 'ambit node agent busy: too many request bytes in flight');
        return;
      }
      size += c.length;
      this.buffered += c.length;
      chunks.push(c);
    });
    socket.on('end', () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString('utf8');
      release();
      this.serve(socket, text);
    });
  }

  /** Answers one complete request: `0\n<result>`, or `1\n<CNI error>`. */
  private serve(socket: Socket, text: string): void {
    let req: CniRequest;
    try {
      req = parseCniRequest(text);
    } catch (err) {
      const f = err as CniFailure;
      this.log.warn({ err: f.message }, 'malformed CNI request refused');
      this.answer(socket, 1, JSON.stringify({ cniVersion: '1.0.0', code: f.code, msg: f.message }));
      return;
    }
    const version = typeof req.config.cniVersion === 'string' ? req.config.cniVersion.slice(0, 64) : '1.0.0';
    let timeout: NodeJS.Timeout | undefined;
    const bounded = new Promise<never>((_, reject) => {
      timeout = setTimeout(() => reject(new CniFailure(TRY_AGAIN, `${req.command} not done within ${this.limits.handleTimeoutMs} ms`)), this.limits.handleTimeoutMs);
    });
    Promise.race([this.handle(req), bounded]).then((body) => this.answer(socket, 0, body), (err: unknown) => {
      const f = err instanceof CniFailure ? err : new CniFailure(TRY_AGAIN, (err as Error).message);
      this.log[f.code === TRY_AGAIN ? 'info' : 'warn']({ command: req.command, sandbox: req.containerId.slice(0, 64), err: f.message }, 'CNI request failed');
      this.answer(socket, 1, JSON.stringify({ cniVersion: version, code: f.code, msg: f.message, details: f.details }));
    }).finally(() => clearTimeout(timeout));
  }

  /** Writes the answer and closes; a client that does not take it in time is cut off. */
  private answer(socket: Socket, code: number, body: string): void {
    if (socket.destroyed) return;
    const timer = setTimeout(() => socket.destroy(), this.limits.answerTimeoutMs);
    socket.once('close', () => clearTimeout(timer));
    // What the client still sends (a request refused before it was read) is read and dropped: a
    // unix socket closed with unread bytes resets its peer, which then never reads this answer.
    // The socket goes once the answer is written and the client has ended, or at the timer.
    socket.removeAllListeners('data');
    socket.on('data', () => { /* dropped */ });
    socket.resume();
    socket.end(`${code}\n${body}`);
  }

  private async handle(req: CniRequest): Promise<string> {
    if (req.command !== 'ADD' && req.command !== 'DEL') return '';
    const containerId = containerIdOf(req);
    const args = parseCniArgs(req.args);
    const namespace = args.K8S_POD_NAMESPACE;
    const name = args.K8S_POD_NAME;
    const uid = args.K8S_POD_UID;
    if (uid !== undefined && uid !== '' && !POD_UID.test(uid)) throw new CniFailure(INVALID, `invalid K8S_POD_UID ${JSON.stringify(uid.slice(0, 300))}`);
    if (req.command === 'DEL') {
      await this.opts.target.releasePod(uid || undefined, containerId, this.hostPath(netnsOf(req, true)));
      return '';
    }
    const pass = JSON.stringify(isObject(req.config.prevResult) ? req.config.prevResult : { cniVersion: req.config.cniVersion ?? '1.0.0' });
    if (!namespace || !name) return pass;
    if (!DNS_LABEL.test(namespace)) throw new CniFailure(INVALID, `invalid K8S_POD_NAMESPACE ${JSON.stringify(namespace.slice(0, 300))}: not a namespace name`);
    if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) throw new CniFailure(INVALID, `invalid K8S_POD_NAME ${JSON.stringify(name.slice(0, 300))}: not a pod name`);
    const netns = this.hostPath(netnsOf(req, false));
    const ips = resultIps(req.config.prevResult);
    if (ips.length === 0) throw new CniFailure(INVALID, `no pod address in the previous plugin's result for ${namespace}/${name}: ambit-cni must come after the primary CNI plugin in the chain`);
    if (ips.length > MAX_POD_IPS) throw new CniFailure(INVALID, `${ips.length} addresses in the previous plugin's result for ${namespace}/${name}: a pod has at most ${MAX_POD_IPS}`);
    const bad = ips.find((ip) => isIP(ip) === 0);
    if (bad !== undefined) throw new CniFailure(INVALID, `the previous plugin's result for ${namespace}/${name} has ${JSON.stringify(bad.slice(0, 100))}, not an IP address`);
    const started = Date.now();
    const pod = await this.read(`/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, `pod ${namespace}/${name}`);
    const ns = await this.read(`/api/v1/namespaces/${encodeURIComponent(namespace)}`, `namespace ${namespace}`);
    const meta = isObject(pod.metadata) ? pod.metadata : {};
    if (uid && meta.uid !== uid) throw new CniFailure(TRY_AGAIN, `pod ${namespace}/${name} in the API server is not the sandbox's (uid ${String(meta.uid)}, sandbox for ${uid})`);
    // The controller's view of the pod, as it will stream it once the kubelet reports the IP.
    const info = apiPod({ ...pod, spec: { ...(isObject(pod.spec) ? pod.spec : {}), nodeName: this.opts.node }, status: { phase: 'Pending', podIP: ips[0], podIPs: ips.map((ip) => ({ ip })) } });
    if (!info) throw new CniFailure(INVALID, `pod ${namespace}/${name} could not be read as a pod`);
    const nsMeta = isObject(ns.metadata) ? ns.metadata : {};
    const w = workloadOf(info, isObject(nsMeta.labels) ? nsMeta.labels as Record<string, string> : {}, this.opts.trustDomain);
    if (!w.enrolled) return pass;
    if (sameFile(netns, '/proc/self/ns/net')) throw new CniFailure(INVALID, `netns ${req.netns} is the node agent's own network namespace (the host's): not a pod sandbox`);
    try {
      await this.opts.target.enrollPod(w, netns, containerId);
    } catch (err) {
      throw new CniFailure(TRY_AGAIN, `ambit could not enroll ${namespace}/${name}: ${(err as Error).message}`);
    }
    this.log.info({ pod: `${namespace}/${name}`, sandbox: containerId, netns, ip: ips[0], ms: Date.now() - started }, 'pod enrolled before its containers start');
    return pass;
  }

  /** A CNI_NETNS of /proc/<pid>/ns/net as the agent sees the host's proc. */
  private hostPath(netns: string): string {
    return this.opts.hostProc && netns.startsWith('/proc/') ? `${this.opts.hostProc}${netns.slice('/proc'.length)}` : netns;
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

/** Whether two paths are the same file (a netns: the same namespace); false if either cannot be read. */
function sameFile(a: string, b: string): boolean {
  try {
    const [x, y] = [statSync(a), statSync(b)];
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}
