/**
 * A stand-in Kubernetes API server over plain HTTP on 127.0.0.1 (port 0) that speaks the real
 * list/watch protocol for the resource types it is told to serve:
 *
 * - LIST  `GET /api/v1/pods`, `GET /apis/<group>/<version>/<plural>` →
 *   `{kind: PodList, apiVersion, metadata: {resourceVersion}, items}` (all namespaces);
 * - WATCH `?watch=1&resourceVersion=N&allowWatchBookmarks=true` → newline-delimited JSON events
 *   ADDED/MODIFIED/DELETED after N from its history, then live ones; BOOKMARK on request; an
 *   ERROR event with a 410 Status when N is older than the compacted history;
 * - `PATCH .../<name>/status` (merge patch) recorded in `statusPatches` and applied;
 * - `POST /apis/authentication.k8s.io/v1/tokenreviews` answered from `tokens`; `issueToken` makes
 *   a JWT-shaped token that is accepted until its `exp` and refused as expired after it;
 * - GET of one object; `PATCH` of an object with `application/apply-patch+yaml` (server-side
 *   apply: the body replaces the object, uid and status kept — or, with `applyMerges`, is merged
 *   into it, maps key by key and lists whole, as an apply of some fields leaves the others to
 *   their owners; recorded in `applyPatches`; a
 *   `metadata.resourceVersion` in the body is a precondition, 409 Conflict when stale) or
 *   `application/merge-patch+json` (RFC 7386); `DELETE` of an object. A namespaced write into a
 *   namespace that does not exist answers 404 when Namespaces are served;
 * - `POST` of a new object to its collection (409 AlreadyExists if it exists); `PUT` of one object,
 *   409 Conflict when its `metadata.resourceVersion` is not the stored one (optimistic concurrency,
 *   as leader election relies on);
 * - `GET /version` (`version`); `GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH` answered by
 *   `podProxy` (404 when unset);
 * - `failNext(...)`: the next matching requests answer an error instead;
 * - the pods/portforward subresource over WebSocket (`v4.channel.k8s.io`, as the kubelet frames
 *   it: channel 0 data, channel 1 errors, each opened by the port as two little-endian bytes),
 *   its connections made by `portForward` (404 when unset);
 * - 404 (a Status object) for anything else.
 *
 * Resource versions are one global counter, as etcd's are.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { KubernetesSettings } from '../../src/control/controller.js';

export interface ServedKind { group: string; version: string; kind: string; plural: string }

type Obj = Record<string, unknown> & { metadata: Record<string, unknown> & { name: string; namespace?: string; resourceVersion?: string } };
interface Event { type: 'ADDED' | 'MODIFIED' | 'DELETED'; rv: number; object: Obj }
interface Watcher { res: ServerResponse; kind: ServedKind }

export interface TokenReviewAnswer {
  authenticated: boolean;
  user?: { username: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  audiences?: string[];
  error?: string;
}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

export class FakeApiServer {
  private server?: Server;
  private rv = 100;
  private readonly objects = new Map<string, Map<string, Obj>>();
  private readonly history = new Map<string, Event[]>();
  /** Oldest version a watch may resume from, per kind (history before it was compacted). */
  private readonly compactedAt = new Map<string, number>();
  private readonly watchers = new Set<Watcher>();
  /** Upgraded (port-forward) connections, which the HTTP server no longer closes itself. */
  private readonly upgraded = new Set<Duplex>();
  private goneNext = 0;
  readonly statusPatches: { path: string; contentType: string; body: unknown }[] = [];
  readonly requests: { method: string; url: string; contentType?: string }[] = [];
  /** Server-side apply requests: path, query (fieldManager, force), content type and body. */
  readonly applyPatches: { method: string; path: string; query: Record<string, string>; contentType: string; body: Record<string, unknown> }[] = [];
  private readonly failures: { method: string; match: string; code: number; count: number }[] = [];
  readonly tokenReviews: unknown[] = [];
  /** token → answer; unknown tokens are not authenticated. */
  readonly tokens = new Map<string, TokenReviewAnswer>();
  /** Tokens made by issueToken → when they expire (ms since the epoch). */
  private readonly tokenExpiry = new Map<string, number>();
  /** What `GET /version` answers. */
  version: Record<string, string> = { major: '1', minor: '30', gitVersion: 'v1.30.0' };
  /** Answers the API server's pod proxy: (namespace, pod, port, path) → status and body; undefined → 503. */
  podProxy?: (namespace: string, pod: string, port: number, path: string) => { status: number; body: string } | undefined;
  /**
   * Makes a port-forward's connection to (namespace, pod, port): a stream to carry it, an error
   * message (written on the error channel, as the kubelet does when it cannot connect), or a
   * status to refuse the upgrade with (403, 404).
   */
  portForward?: (namespace: string, pod: string, port: number) => Duplex | { error: string } | { status: number };
  /** Server-side apply merges the body into an existing object instead of replacing it (see the header). */
  applyMerges = false;
  /** Status code to answer status patches with (e.g. 500 to test tolerance). */
  statusPatchCode = 200;
  url = '';

  constructor(readonly kinds: ServedKind[]) {
    for (const k of kinds) {
      this.objects.set(this.kindKey(k), new Map());
      this.history.set(this.kindKey(k), []);
    }
  }

  /**
   * A short-lived token, as the kubelet's projected tokens are: JWT-shaped (unsigned) with an
   * `exp` `ttlMs` from now, answered with `answer` until then and refused as expired after.
   */
  issueToken(answer: TokenReviewAnswer, ttlMs: number): string {
    const exp = Math.ceil((Date.now() + ttlMs) / 1000);
    const payload = Buffer.from(JSON.stringify({ exp, iat: Math.floor(Date.now() / 1000), sub: answer.user?.username ?? '', jti: Math.random().toString(36).slice(2) })).toString('base64url');
    const token = `eyJhbGciOiJSUzI1NiJ9.${payload}.c3RhbmQtaW4`;
    this.tokens.set(token, answer);
    this.tokenExpiry.set(token, exp * 1000);
    return token;
  }

  /** Starts serving a kind (a CRD installed later). */
  serve(k: ServedKind): void {
    this.kinds.push(k);
    this.objects.set(this.kindKey(k), new Map());
    this.history.set(this.kindKey(k), []);
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex) => this.upgrade(req, socket));
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    this.dropWatches();
    for (const s of this.upgraded) s.destroy();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  get resourceVersion(): number {
    return this.rv;
  }

  /** Open watch connections (per plural, or all). */
  watchCount(plural?: string): number {
    return [...this.watchers].filter((w) => !plural || w.kind.plural === plural).length;
  }

  private kindKey(k: { group: string; plural: string }): string {
    return `${k.group}/${k.plural}`;
  }

  private find(kind: string, group?: string): ServedKind {
    const k = this.kinds.find((x) => x.kind === kind && (group === undefined || x.group === group));
    if (!k) throw new Error(`not served: ${kind}`);
    return k;
  }

  private apiVersion(k: ServedKind): string {
    return k.group ? `${k.group}/${k.version}` : k.version;
  }

  private record(k: ServedKind, type: Event['type'], obj: Obj): void {
    const ev: Event = { type, rv: Number(obj.metadata.resourceVersion), object: clone(obj) };
    this.history.get(this.kindKey(k))!.push(ev);
    for (const w of this.watchers) if (w.kind === k) w.res.write(`${JSON.stringify({ type, object: ev.object })}\n`);
  }

  /** Creates or replaces an object (ADDED or MODIFIED); returns its new resourceVersion. */
  apply(kind: string, object: Record<string, unknown>, group?: string): string {
    const k = this.find(kind, group);
    const obj = clone(object) as Obj;
    obj.apiVersion = this.apiVersion(k);
    obj.kind = k.kind;
    const key = `${obj.metadata.namespace ?? ''}/${obj.metadata.name}`;
    const store = this.objects.get(this.kindKey(k))!;
    const prev = store.get(key);
    obj.metadata.resourceVersion = String(++this.rv);
    obj.metadata.uid ??= prev?.metadata.uid ?? `uid-${k.plural}-${key}`;
    if (prev && obj.status === undefined && prev.status !== undefined) obj.status = prev.status;
    store.set(key, obj);
    this.record(k, prev ? 'MODIFIED' : 'ADDED', obj);
    return obj.metadata.resourceVersion;
  }

  delete(kind: string, namespace: string, name: string, group?: string): void {
    const k = this.find(kind, group);
    const store = this.objects.get(this.kindKey(k))!;
    const key = `${namespace}/${name}`;
    const prev = store.get(key);
    if (!prev) return;
    store.delete(key);
    const obj = clone(prev);
    obj.metadata.resourceVersion = String(++this.rv);
    this.record(k, 'DELETED', obj);
  }

  get(kind: string, namespace: string, name: string, group?: string): Record<string, unknown> | undefined {
    return this.objects.get(this.kindKey(this.find(kind, group)))!.get(`${namespace}/${name}`);
  }

  /** The next `count` requests of `method` whose path contains `match` answer `code` (a Status). */
  failNext(method: string, match = '', code = 500, count = 1): void {
    this.failures.push({ method, match, code, count });
  }

  /** A BOOKMARK on every open watch of `kind` at the current version (which moves on first, as unrelated writes would). */
  bookmark(kind: string, group?: string): string {
    const k = this.find(kind, group);
    const rv = String(++this.rv);
    for (const w of this.watchers) {
      if (w.kind === k) w.res.write(`${JSON.stringify({ type: 'BOOKMARK', object: { kind: k.kind, apiVersion: this.apiVersion(k), metadata: { resourceVersion: rv } } })}\n`);
    }
    return rv;
  }

  /** Ends every open watch connection abruptly. */
  dropWatches(): void {
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
  }

  /** Forgets all history up to now: a watch from an older version gets 410 Gone. */
  compact(): void {
    for (const k of this.kinds) {
      this.history.set(this.kindKey(k), []);
      this.compactedAt.set(this.kindKey(k), this.rv);
    }
  }

  /** The next `n` watches answer 410 Gone whatever their version. */
  goneOnNextWatch(n = 1): void {
    this.goneNext = n;
  }

  /** `GET .../pods/NAME/portforward?ports=P` upgraded to a WebSocket (v4.channel.k8s.io). */
  private upgrade(req: IncomingMessage, socket: Duplex): void {
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push({ method: 'UPGRADE', url: `${url.pathname}${url.search}` });
    this.upgraded.add(socket);
    socket.on('close', () => this.upgraded.delete(socket));
    const refuse = (status: number, message: string) => {
      const body = JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, code: status });
      socket.end(`HTTP/1.1 ${status} Refused\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    };
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/portforward$/.exec(url.pathname);
    const port = Number(url.searchParams.get('ports'));
    const protocols = String(req.headers['sec-websocket-protocol'] ?? '').split(',').map((p) => p.trim());
    if (!m || !port || !this.portForward) return refuse(404, 'the server could not find the requested resource');
    if (!protocols.includes('v4.channel.k8s.io')) return refuse(400, 'the stand-in speaks v4.channel.k8s.io only');
    const target = this.portForward(m[1]!, m[2]!, port);
    if ('status' in target) return refuse(target.status, `pods "${m[2]}" is forbidden: port-forward refused by the test`);
    const accept = createHash('sha1').update(`${String(req.headers['sec-websocket-key'])}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ${accept}\r\nsec-websocket-protocol: v4.channel.k8s.io\r\n\r\n`);
    const portBytes = Buffer.from([port & 0xff, port >> 8]);
    socket.write(wsFrame(2, Buffer.concat([Buffer.from([0]), portBytes])));
    socket.write(wsFrame(2, Buffer.concat([Buffer.from([1]), portBytes])));
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      socket.end(wsFrame(8, Buffer.from([0x03, 0xe8])));
    };
    if ('error' in target) {
      socket.write(wsFrame(2, Buffer.concat([Buffer.from([1]), Buffer.from(target.error)])));
      close();
      return;
    }
    target.on('data', (chunk: Buffer) => { if (!closed) socket.write(wsFrame(2, Buffer.concat([Buffer.from([0]), chunk]))); });
    target.on('end', close);
    target.on('close', close);
    target.on('error', close);
    socket.on('error', () => target.destroy());
    socket.on('close', () => target.destroy());
    let buffered = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      for (let frame = readWsFrame(buffered); frame; frame = readWsFrame(buffered)) {
        buffered = buffered.subarray(frame.size);
        if (frame.opcode === 8) {
          target.end();
          close();
        } else if (frame.opcode === 9) socket.write(wsFrame(10, frame.payload));
        else if (frame.opcode === 2 && frame.payload[0] === 0) target.write(frame.payload.subarray(1));
      }
    });
  }

  private send(res: ServerResponse, code: number, body: unknown): void {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private status(res: ServerResponse, code: number, reason: string, message: string): void {
    this.send(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      this.requests.push({ method: req.method ?? '', url: `${url.pathname}${url.search}`, ...(req.headers['content-type'] ? { contentType: req.headers['content-type'] } : {}) });
      const text = Buffer.concat(chunks).toString('utf8');
      const failure = this.failures.find((f) => f.count > 0 && f.method === req.method && url.pathname.includes(f.match));
      if (failure) {
        failure.count--;
        return this.status(res, failure.code, failure.code === 500 ? 'InternalError' : 'Failure', `${req.method ?? ''} ${url.pathname} refused by the test`);
      }
      try {
        this.route(req, res, url, text);
      } catch (err) {
        this.status(res, 500, 'InternalError', String(err));
      }
    });
  }

  private route(req: IncomingMessage, res: ServerResponse, url: URL, text: string): void {
    if (req.method === 'POST' && url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') {
      const review = JSON.parse(text) as { spec?: { token?: string; audiences?: string[] } };
      this.tokenReviews.push(review);
      const expiry = this.tokenExpiry.get(review.spec?.token ?? '');
      const answer = expiry !== undefined && expiry <= Date.now()
        ? { authenticated: false, error: '[invalid bearer token, service account token has expired]' }
        : this.tokens.get(review.spec?.token ?? '') ?? { authenticated: false, error: 'invalid bearer token' };
      return this.send(res, 201, { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: review.spec, status: answer });
    }
    if (req.method === 'GET' && url.pathname === '/version') return this.send(res, 200, this.version);
    const proxy = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/:]+):(\d+)\/proxy(\/.*)$/.exec(url.pathname);
    if (proxy && req.method === 'GET') {
      const answer = this.podProxy?.(proxy[1]!, proxy[2]!, Number(proxy[3]), proxy[4]!);
      if (!answer) return this.status(res, 503, 'ServiceUnavailable', `error trying to reach service: dial tcp ${proxy[2]}:${proxy[3]}: connect: connection refused`);
      res.writeHead(answer.status, { 'content-type': 'text/plain' });
      return void res.end(answer.body);
    }
    // /api/v1/[namespaces/ns/]plural[/name[/status]] or /apis/group/version/...
    const parts = url.pathname.split('/').filter(Boolean);
    let group = '';
    let version: string | undefined;
    let rest: string[];
    if (parts[0] === 'api') {
      version = parts[1];
      rest = parts.slice(2);
    } else if (parts[0] === 'apis') {
      group = parts[1] ?? '';
      version = parts[2];
      rest = parts.slice(3);
    } else return this.status(res, 404, 'NotFound', 'the server could not find the requested resource');
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const k = this.kinds.find((x) => x.group === group && x.version === version && x.plural === rest[0]);
    if (!k) return this.status(res, 404, 'NotFound', 'the server could not find the requested resource');
    const store = this.objects.get(this.kindKey(k))!;

    if (req.method === 'PATCH' && rest.length === 3 && rest[2] === 'status') {
      const contentType = req.headers['content-type'] ?? '';
      const body = JSON.parse(text) as Record<string, unknown>;
      this.statusPatches.push({ path: url.pathname, contentType, body });
      if (this.statusPatchCode !== 200) return this.status(res, this.statusPatchCode, 'InternalError', 'status write refused by the test');
      const obj = store.get(`${namespace ?? ''}/${rest[1]}`);
      if (!obj) return this.status(res, 404, 'NotFound', `${k.plural} "${rest[1]}" not found`);
      const next = clone(obj);
      next.status = { ...(obj.status as object | undefined), ...(body.status as object) };
      this.apply(k.kind, next, k.group);
      return this.send(res, 200, store.get(`${namespace ?? ''}/${rest[1]}`));
    }
    if (rest.length === 2) return this.one(req, res, url, k, namespace, rest[1]!, text);
    if (req.method === 'POST' && rest.length === 1) {
      const body = JSON.parse(text) as Obj;
      const name = body.metadata?.name;
      if (!name) return this.status(res, 422, 'Invalid', `${k.kind} is invalid: metadata.name: Required value`);
      if (namespace !== undefined) body.metadata.namespace = namespace;
      const key = `${namespace ?? ''}/${name}`;
      if (store.has(key)) return this.status(res, 409, 'AlreadyExists', `${k.plural} "${name}" already exists`);
      delete body.metadata.resourceVersion;
      this.apply(k.kind, body, k.group);
      return this.send(res, 201, store.get(key));
    }
    if (req.method !== 'GET' || rest.length !== 1) return this.status(res, 405, 'MethodNotAllowed', 'not supported by the stand-in');

    if (url.searchParams.get('watch') === '1' || url.searchParams.get('watch') === 'true') {
      const from = Number(url.searchParams.get('resourceVersion') ?? '0');
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      const compacted = this.compactedAt.get(this.kindKey(k)) ?? 0;
      if (this.goneNext > 0 || from < compacted) {
        if (this.goneNext > 0) this.goneNext--;
        // As the real API server: a 200 stream with one ERROR event carrying a 410 Status.
        res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from} (${compacted})`, reason: 'Expired', code: 410 } })}\n`);
        return;
      }
      for (const ev of this.history.get(this.kindKey(k))!) if (ev.rv > from) res.write(`${JSON.stringify({ type: ev.type, object: ev.object })}\n`);
      const w: Watcher = { res, kind: k };
      this.watchers.add(w);
      res.on('close', () => this.watchers.delete(w));
      return;
    }
    const items = [...store.values()].filter((o) => namespace === undefined || o.metadata.namespace === namespace);
    this.send(res, 200, { kind: `${k.kind}List`, apiVersion: this.apiVersion(k), metadata: { resourceVersion: String(this.rv) }, items });
  }

  /** GET, PATCH (apply or merge) and DELETE of one object. */
  private one(req: IncomingMessage, res: ServerResponse, url: URL, k: ServedKind, namespace: string | undefined, name: string, text: string): void {
    const store = this.objects.get(this.kindKey(k))!;
    const key = `${namespace ?? ''}/${name}`;
    const notFound = () => this.status(res, 404, 'NotFound', `${k.plural} "${name}" not found`);
    if (req.method === 'GET') return store.has(key) ? this.send(res, 200, store.get(key)) : notFound();
    if (req.method === 'DELETE') {
      if (!store.has(key)) return notFound();
      this.delete(k.kind, namespace ?? '', name, k.group);
      return this.send(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, kind: k.plural } });
    }
    if (req.method === 'PUT') {
      const body = JSON.parse(text) as Obj;
      const prev = store.get(key);
      if (!prev) return notFound();
      if (body.metadata?.resourceVersion !== prev.metadata.resourceVersion) {
        return this.status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${k.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      }
      this.apply(k.kind, { ...body, metadata: { ...body.metadata, uid: prev.metadata.uid } }, k.group);
      return this.send(res, 200, store.get(key));
    }
    if (req.method !== 'PATCH') return this.status(res, 405, 'MethodNotAllowed', 'not supported by the stand-in');
    const nsKind = this.kinds.find((x) => x.group === '' && x.kind === 'Namespace');
    if (namespace !== undefined && nsKind && !this.objects.get(this.kindKey(nsKind))!.has(`/${namespace}`)) {
      return this.status(res, 404, 'NotFound', `namespaces "${namespace}" not found`);
    }
    const contentType = req.headers['content-type'] ?? '';
    const body = JSON.parse(text) as Record<string, unknown>;
    const prev = store.get(key);
    let next: Record<string, unknown>;
    if (contentType === 'application/apply-patch+yaml') {
      this.applyPatches.push({ method: 'PATCH', path: url.pathname, query: Object.fromEntries(url.searchParams), contentType, body });
      if (!url.searchParams.get('fieldManager')) return this.status(res, 400, 'BadRequest', 'PATCH with apply-patch requires a fieldManager');
      const meta = (body.metadata ?? {}) as Record<string, unknown>;
      if (meta.name !== name || (namespace !== undefined && meta.namespace !== namespace)) return this.status(res, 400, 'BadRequest', 'the name or namespace of the body does not match the URL');
      if (prev && meta.resourceVersion !== undefined && meta.resourceVersion !== prev.metadata.resourceVersion) {
        return this.status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${k.plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      }
      next = prev && this.applyMerges
        ? mergePatch(clone(prev), clone(body)) as Record<string, unknown>
        : { ...clone(body), metadata: { ...meta, ...(prev ? { uid: prev.metadata.uid } : {}) } };
    } else if (contentType === 'application/merge-patch+json') {
      if (!prev) return notFound();
      next = mergePatch(clone(prev), body) as Record<string, unknown>;
    } else return this.status(res, 415, 'UnsupportedMediaType', `the stand-in does not take ${contentType}`);
    this.apply(k.kind, next, k.group);
    this.send(res, prev ? 200 : 201, store.get(key));
  }
}

/** A server's WebSocket frame (RFC 6455: final, unmasked). */
function wsFrame(opcode: number, payload: Buffer): Buffer {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0x80 | opcode, n]) : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 0xff]) : Buffer.alloc(10);
  if (n >= 65536) {
    head[0] = 0x80 | opcode;
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  return Buffer.concat([head, payload]);
}

/** The first whole frame a client sent (masked, as clients must), or undefined until it has all arrived. */
function readWsFrame(b: Buffer): { opcode: number; payload: Buffer; size: number } | undefined {
  if (b.length < 2) return undefined;
  let len = b[1]! & 0x7f;
  let at = 2;
  if (len === 126) {
    if (b.length < 4) return undefined;
    len = b.readUInt16BE(2);
    at = 4;
  } else if (len === 127) {
    if (b.length < 10) return undefined;
    len = Number(b.readBigUInt64BE(2));
    at = 10;
  }
  const masked = (b[1]! & 0x80) !== 0;
  const mask = masked ? b.subarray(at, at + 4) : undefined;
  if (masked) at += 4;
  if (b.length < at + len) return undefined;
  const payload = Buffer.from(b.subarray(at, at + len));
  if (mask) for (let i = 0; i < payload.length; i++) payload[i] = payload[i]! ^ mask[i % 4]!;
  return { opcode: b[0]! & 0x0f, payload, size: at + len };
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** Writes a kubeconfig for `server` (the stand-in's URL) with a bearer token; returns the file. */
export function writeKubeconfig(file: string, server: string, token = 't0k3n'): string {
  writeFileSync(file, `apiVersion: v1
kind: Config
clusters: [{ name: stand-in, cluster: { server: "${server}", insecure-skip-tls-verify: true } }]
users: [{ name: u, user: { token: ${token} } }]
contexts: [{ name: c, context: { cluster: stand-in, user: u } }]
current-context: c
`);
  return file;
}

/** A TCP port free on 127.0.0.1 right now (for a child process to listen on). */
export async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
}

/** A controller against this API server as one replica that runs no waypoints: what most controller tests need. */
export const ONE_REPLICA: KubernetesSettings = { namespace: 'ambit-system', nodeAgent: { serviceAccount: 'ambit-node', daemonSet: 'ambit-node' }, waypoints: { managed: false, values: [] } };
