/**
 * The waypoint's L7 proxy: HBONE in, HTTP routing, HBONE out.
 *
 * A node agent sends traffic for a service bound to this waypoint here: a CONNECT stream whose
 * `:authority` is the service's `VIP:port`. The stream carries the app's HTTP/1.1; each request
 * is routed (`Router`: VirtualService / HTTPRoute semantics), sent to one endpoint pod of the
 * chosen destination over HBONE with the waypoint's own identity, and the response streamed
 * back. Request bodies are streamed, never buffered whole.
 */
import { randomUUID } from 'node:crypto';
import { createServer, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { ClientHttp2Stream, ServerHttp2Stream } from 'node:http2';
import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { ConfigObject, Service, Workload } from '../control/model.js';
import type { WorkloadCertificate } from '../identity/cert-manager.js';
import { silentLogger } from '../telemetry/log.js';
import { HboneError, HbonePool, HboneServer, type TunnelInfo } from '../node/hbone.js';
import { createBalancer, type Balancer, type Endpoint } from './balancer.js';
import { ConnectionPool, OutlierDetector, rateLimitHeaders, RetryPolicy, TokenBucket, UPSTREAM_OVERFLOW_FLAG, type AttemptOutcome } from './resilience.js';
import type { Destination, ForwardAction, HeaderOps, Router } from './routing.js';

interface Member extends Endpoint { ip: string; port: number; workload: Workload }
interface Upstream { shape: string; members: Member[]; balancer: Balancer; outlier: OutlierDetector; outlierSpec: unknown; pool: ConnectionPool; poolSpec: string }

/** What the waypoint knows at one config version. */
export interface WaypointState {
  version: string;
  router: Router;
  /** Services bound to this waypoint, by `vip:port` and by namespace/name. */
  services: Service[];
  workloads: Map<string, Workload>;
  /** ambit.dev RateLimit objects for this waypoint's services. */
  rateLimits?: ConfigObject[];
}

export interface WaypointProxyOptions {
  /** This waypoint's SPIFFE ID and certificate. */
  identity: string;
  certificate(): Promise<WorkloadCertificate>;
  roots(): string[];
  /** A fresh TCP socket fd for outbound HBONE (the waypoint's own netns). */
  socket(family: 4 | 6): number;
  log?: Logger;
  random?: () => number;
}

/** One request as the access log and metrics see it. */
export interface RequestRecord {
  id: string;
  start: number;
  method: string;
  path: string;
  authority: string;
  service: string;
  route?: string;
  upstream?: string;
  status?: number;
  flags: string;
  sourceIdentity?: string;
  /** The caller's address (the source pod: HBONE leaves from inside it). */
  sourceIp: string;
  /** The service the request was for. */
  serviceRef?: Service;
  bytesIn: number;
  bytesOut: number;
  durationMs?: number;
  /** Tries made (1 + retries). */
  attempts: number;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host']);

export class WaypointProxy {
  private state?: WaypointState;
  private readonly hbone: HboneServer;
  private readonly pool: HbonePool;
  private readonly http: Server;
  private readonly log: Logger;
  private readonly random: () => number;
  /** Per-connection facts for the HTTP server: which tunnel a request came in on. */
  private readonly tunnels = new WeakMap<object, TunnelInfo & { service: Service; port: number }>();
  /** Rate-limit buckets by (RateLimit, route, spec). */
  private readonly buckets = new Map<string, TokenBucket>();
  /** Per destination (service, port, subset): endpoints, balancer, outlier detector. */
  private readonly upstreams = new Map<string, Upstream>();
  onRequest?: (r: RequestRecord) => void;

  constructor(private readonly opts: WaypointProxyOptions) {
    this.log = opts.log ?? silentLogger;
    this.random = opts.random ?? Math.random;
    this.pool = new HbonePool({ log: this.log });
    this.hbone = new HboneServer({ certificate: opts.certificate, roots: opts.roots, onTunnel: (s, i) => this.tunnel(s, i), log: this.log });
    this.http = createServer({ keepAlive: true }, (req, res) => void this.serve(req, res));
    this.http.on('clientError', (err, socket: Duplex) => socket.destroy(err));
  }

  update(state: WaypointState): void {
    this.state = state;
  }

  /** A raw connection accepted on 15008. */
  handle(socket: Socket): Promise<void> {
    return this.hbone.handle(socket);
  }

  private tunnel(stream: ServerHttp2Stream, info: TunnelInfo): void {
    const state = this.state;
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(info.authority);
    const service = m && state?.services.find((s) => s.vips.includes(m[1]!) && s.ports.some((p) => p.port === Number(m[2])));
    if (!m || !service) {
      stream.respond({ ':status': 503, 'ambit-error': `${info.authority} is not a service of this waypoint` }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200 });
    const conn = byteStream(stream);
    this.tunnels.set(conn, { ...info, service, port: Number(m[2]) });
    // The tunnel carries the app's HTTP/1.1: serve it as a connection.
    this.http.emit('connection', conn);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const tunnel = this.tunnels.get(req.socket);
    const state = this.state;
    const record: RequestRecord = {
      id: String(req.headers['x-request-id'] ?? randomUUID()), start: Date.now(), method: req.method ?? 'GET', path: req.url ?? '/',
      authority: req.headers.host ?? '', service: tunnel ? `${tunnel.service.name}.${tunnel.service.namespace}` : '', flags: '-', bytesIn: 0, bytesOut: 0, attempts: 0,
      ...(tunnel?.peerIdentity ? { sourceIdentity: tunnel.peerIdentity } : {}),
      sourceIp: (tunnel?.remoteAddress ?? '').replace(/^::ffff:/, ''), ...(tunnel ? { serviceRef: tunnel.service } : {}),
    };
    const finish = (status: number, flags = record.flags) => {
      record.status = status;
      record.flags = flags;
      record.durationMs = Date.now() - record.start;
      this.onRequest?.(record);
    };
    if (!tunnel || !state) {
      res.writeHead(503).end('no config yet\n');
      finish(503, 'NC');
      return;
    }
    const action = state.router.route({
      service: tunnel.service, port: tunnel.port, method: record.method, path: record.path, authority: record.authority,
      headers: req.headers, ...(tunnel.peerIdentity ? { sourceNamespace: /\/ns\/([^/]+)\//.exec(tunnel.peerIdentity)?.[1] } : {}),
    });
    if (action.kind === 'no-route') {
      res.writeHead(404).end('no route\n');
      finish(404, 'NR');
      return;
    }
    if (action.kind === 'redirect') {
      res.writeHead(action.status, { location: action.location }).end();
      finish(action.status);
      return;
    }
    if (action.kind === 'direct-response') {
      res.writeHead(action.status).end(action.body ?? '');
      finish(action.status);
      return;
    }
    record.route = action.route;
    // Local rate limiting (ambit.dev RateLimit): one token bucket per route of the target service.
    for (const rl of state.rateLimits ?? []) {
      const spec = rl.spec as { targetRefs: { name: string }[]; requestsPerUnit: number; unit: 'second' | 'minute' | 'hour'; burst?: number };
      if (rl.namespace !== tunnel.service.namespace || !spec.targetRefs.some((t) => t.name === tunnel.service.name)) continue;
      const key = `${rl.namespace}/${rl.name}|${action.route}|${JSON.stringify(spec)}`;
      let bucket = this.buckets.get(key);
      if (!bucket) {
        const unitMs = { second: 1000, minute: 60_000, hour: 3_600_000 }[spec.unit];
        bucket = new TokenBucket({ maxTokens: spec.burst ?? spec.requestsPerUnit, tokensPerFill: 1, fillIntervalMs: unitMs / spec.requestsPerUnit }, { now: () => Date.now() });
        this.buckets.set(key, bucket);
      }
      const taken = bucket.take();
      if (!taken.ok) {
        res.writeHead(429, rateLimitHeaders(spec.burst ?? spec.requestsPerUnit, taken)).end('local rate limited\n');
        finish(429, 'RL');
        return;
      }
    }
    // Fault injection (VirtualService `fault`): a delay first, then perhaps an abort, each for its percentage of requests.
    const fault = action.fault;
    if (fault?.delay && this.random() * 100 < fault.delay.percent) {
      await new Promise((r) => setTimeout(r, fault.delay!.ms));
      record.flags = 'DI';
    }
    if (fault?.abort && this.random() * 100 < fault.abort.percent) {
      if (fault.abort.grpcStatus !== undefined) {
        res.writeHead(200, { 'content-type': 'application/grpc', 'grpc-status': grpcCode(fault.abort.grpcStatus), 'grpc-message': 'fault filter abort' }).end();
        finish(200, 'FI');
      } else {
        const status = fault.abort.status ?? 503;
        res.writeHead(status).end('fault filter abort');
        finish(status, 'FI');
      }
      return;
    }
    req.on('data', (c: Buffer) => { record.bytesIn += c.length; });
    // A request without a body can be sent again: only those are retried (a streamed body is gone once sent).
    const replayable = !req.headers['transfer-encoding'] && (req.headers['content-length'] === undefined || req.headers['content-length'] === '0');
    const policy = retryPolicy(action, this.random);
    // Mirroring: a copy of the request, fire and forget, to each mirror for its percentage (bodiless requests only: a streamed body is read once).
    if (replayable) for (const m of action.mirrors ?? (action.mirror ? [action.mirror] : [])) if (this.random() * 100 < m.percent) this.mirror(state, m.destination, req, record.path, tunnel.remoteAddress);
    let routeTimer: NodeJS.Timeout | undefined;
    let timedOut = false;
    /** The retry slot the try in flight holds, if it is a retry. */
    let retryLease: { release(): void } | undefined;
    /** Ends the try in flight (its upstream stream reset), so that it lets go of its pool slot. */
    const inFlight: { abort?: () => void } = {};
    if (action.timeoutMs) {
      routeTimer = setTimeout(() => {
        timedOut = true;
        if (!res.headersSent) res.writeHead(504).end('upstream request timeout\n');
        else res.destroy();
        finish(504, 'UT');
        // Then the try in flight goes, after the answer is on its way.
        setImmediate(() => inFlight.abort?.());
      }, action.timeoutMs);
    }
    try {
      for (let attempt = 1; ; attempt++) {
        const dest = state.router.pick(action);
        if (dest.missing) {
          res.writeHead(dest.missing.status).end(`${dest.missing.reason}\n`);
          finish(dest.missing.status, 'NR');
          return;
        }
        const upstream = this.upstreamOf(state, dest);
        const picked = upstream?.balancer.pick(upstream.outlier.eligible(upstream.members), { headers: req.headers, sourceIp: tunnel.remoteAddress, query: new URL(record.path, 'http://x').searchParams });
        const endpoint = picked?.endpoint as Member | undefined;
        if (!upstream || !endpoint) {
          res.writeHead(503).end('no healthy upstream\n');
          finish(503, 'UH');
          return;
        }
        if (picked?.setCookie && !res.headersSent) res.setHeader('set-cookie', picked.setCookie);
        record.upstream = endpoint.address;
        record.attempts = attempt;
        const mayRetry = replayable && attempt <= policy.attempts;
        const retriable = mayRetry ? (o: AttemptOutcome) => policy.shouldRetry(o, attempt) : undefined;
        // Circuit breaking: the destination's request and pending limits (DestinationRule connectionPool).
        const admission = upstream.pool.tryAcquireRequest();
        if (!admission.ok) {
          if (!res.headersSent) res.writeHead(503, { 'x-ambit-overflow': admission.reason }).end('upstream overflow\n');
          finish(503, UPSTREAM_OVERFLOW_FLAG);
          return;
        }
        if (admission.pending) await admission.ready;
        upstream.balancer.onStart?.(endpoint.id);
        const outcome = await this.attempt(req, res, action, dest, endpoint, tunnel.remoteAddress, record, retriable, policy.perTryTimeoutMs, inFlight)
          .finally(() => {
            upstream.balancer.onEnd?.(endpoint.id);
            admission.release();
            retryLease?.release();
            retryLease = undefined;
          });
        upstream.outlier.record(endpoint.id, outcome.done ? { status: outcome.status } : outcome.failure.status !== undefined ? { status: outcome.failure.status } : { error: outcome.failure.error ?? 'reset' });
        if (timedOut) return;
        if (outcome.done) {
          finish(outcome.status, outcome.flags);
          return;
        }
        if (!mayRetry || !policy.shouldRetry(outcome.failure, attempt)) {
          const status = outcome.failure.status ?? (outcome.failure.error === 'timeout' ? 504 : 503);
          if (!res.headersSent) res.writeHead(status).end(`${outcome.message}\n`);
          // URX: the retries were used up on a failure they would have retried.
          const exhausted = mayRetry === false && replayable && policy.attempts > 0 && policy.shouldRetry(outcome.failure, attempt);
          finish(status, exhausted ? 'URX' : outcome.failure.error === 'connect-failure' ? 'UF' : outcome.failure.error === 'timeout' ? 'UT' : outcome.failure.status ? '-' : 'UR');
          return;
        }
        // Retries in flight to a destination are capped too (connectionPool.http.maxRetries).
        const lease = upstream.pool.tryAcquireRetry();
        if (!lease.ok) {
          const status = outcome.failure.status ?? 503;
          if (!res.headersSent) res.writeHead(status).end(`${outcome.message}\n`);
          finish(status, 'URX');
          return;
        }
        retryLease = lease;
        await new Promise((r) => setTimeout(r, policy.backoffMs(attempt)));
        if (timedOut) return;
      }
    } finally {
      clearTimeout(routeTimer);
      // A retry that never got to its try (no endpoint, overflow) gives its slot back here.
      retryLease?.release();
    }
  }

  /**
   * One try at one endpoint. With `retriable`, a response it says to retry is not passed on
   * (its body is dropped) and comes back as a failure; everything else streams to the client.
   */
  private async attempt(
    req: IncomingMessage, res: ServerResponse, action: ForwardAction, dest: Destination,
    endpoint: { ip: string; port: number; workload: Workload }, clientIp: string, record: RequestRecord, retriable: ((o: AttemptOutcome) => boolean) | undefined, perTryMs: number | undefined,
    inFlight: { abort?: () => void },
  ): Promise<{ done: true; status: number; flags?: string } | { done: false; failure: AttemptOutcome; message: string }> {
    let upstream: ClientHttp2Stream;
    try {
      upstream = await this.pool.open(
        { pod: 'waypoint', cert: await this.opts.certificate(), roots: this.opts.roots(), socket: (f) => this.opts.socket(f) },
        { address: endpoint.ip, identity: endpoint.workload.identity, authority: `${endpoint.ip}:${endpoint.port}` },
        { forwarded: `for=${clientIp}` },
      );
    } catch (err) {
      const e = err as HboneError;
      return { done: false, failure: { error: e.status === 503 && /refused/.test(e.message) ? 'connect-failure' : e.kind === 'timeout' ? 'timeout' : 'connect-failure', requestSent: false }, message: `upstream connect error: ${e.message}` };
    }
    const headers = forwardHeaders(req, action.requestHeaders, dest.headers);
    const authority = action.rewrite?.authority ?? dest.authority;
    if (authority) headers.host = authority;
    return new Promise((resolve) => {
      let settled = false;
      /** This try's response is being passed on: a failure now can only cut it. */
      let streaming = false;
      const settle = (v: Awaited<ReturnType<WaypointProxy['attempt']>>) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(v);
      };
      const timer = perTryMs ? setTimeout(() => {
        out.destroy();
        upstream.destroy();
        settle({ done: false, failure: { error: 'timeout', requestSent: true }, message: 'upstream per-try timeout' });
      }, perTryMs) : undefined;
      inFlight.abort = () => {
        out.destroy();
        upstream.destroy();
        settle({ done: false, failure: { error: 'timeout', requestSent: true }, message: 'upstream request timeout' });
      };
      const out = httpRequest({
        method: record.method, path: action.rewrite?.path ?? record.path, headers,
        // No agent: with createConnection and no agent, the request goes over this stream.
        createConnection: () => byteStream(upstream) as unknown as Socket,
      }, (upstreamRes) => {
        const status = upstreamRes.statusCode ?? 502;
        const failure: AttemptOutcome = { status, headers: upstreamRes.headers, requestSent: true };
        if (retriable?.(failure)) {
          upstreamRes.resume();
          upstreamRes.on('end', () => upstream.end());
          settle({ done: false, failure, message: `upstream answered ${status}` });
          return;
        }
        clearTimeout(timer);
        streaming = true;
        const responseHeaders = applyHeaderOps(applyHeaderOps({ ...upstreamRes.headers }, action.responseHeaders), dest.responseHeaders);
        for (const h of HOP_BY_HOP) delete responseHeaders[h];
        res.writeHead(status, responseHeaders as OutgoingHttpHeaders);
        upstreamRes.on('data', (c: Buffer) => { record.bytesOut += c.length; });
        upstreamRes.pipe(res);
        upstreamRes.on('end', () => {
          upstream.end();
          settle({ done: true, status });
        });
        upstreamRes.on('error', () => {
          res.destroy();
          settle({ done: true, status, flags: 'UR' });
        });
      });
      out.on('error', (err) => {
        upstream.destroy();
        if (settled) return;
        if (streaming) {
          res.destroy(err);
          settle({ done: true, status: res.statusCode, flags: 'UR' });
        } else {
          settle({ done: false, failure: { error: 'reset', requestSent: true }, message: `upstream reset: ${err.message}` });
        }
      });
      if (retriable) out.end();
      else req.pipe(out);
    });
  }

  /** Sends a copy of a request to a mirror destination; its answer is dropped, its failure only logged. */
  private mirror(state: WaypointState, dest: Destination, req: IncomingMessage, path: string, clientIp: string): void {
    const upstream = this.upstreamOf(state, dest);
    const endpoint = upstream?.balancer.pick(upstream.outlier.eligible(upstream.members)).endpoint as Member | undefined;
    if (!endpoint) return;
    void (async () => {
      const stream = await this.pool.open(
        { pod: 'waypoint', cert: await this.opts.certificate(), roots: this.opts.roots(), socket: (f) => this.opts.socket(f) },
        { address: endpoint.ip, identity: endpoint.workload.identity, authority: `${endpoint.ip}:${endpoint.port}` },
        { forwarded: `for=${clientIp}` },
      );
      const headers = forwardHeaders(req, dest.headers);
      // As Envoy marks shadowed requests: the authority gets "-shadow".
      headers.host = `${String(req.headers.host ?? dest.service.hostname).replace(/:\d+$/, '')}-shadow`;
      const out = httpRequest({ method: req.method, path, headers, createConnection: () => byteStream(stream) as unknown as Socket }, (r) => {
        r.resume();
        r.on('end', () => stream.end());
      });
      out.on('error', () => stream.destroy());
      out.end();
    })().catch((err: Error) => this.log.debug({ err: err.message, mirror: `${dest.service.namespace}/${dest.service.name}` }, 'mirror failed'));
  }

  /**
   * The destination's endpoints (workloads behind the service, in the subset, serving the port),
   * with their balancer and outlier detector: kept per destination while its endpoints and its
   * traffic policy stay the same, so that LEAST_REQUEST counts, hash rings and ejections persist
   * across requests and config versions.
   */
  private upstreamOf(state: WaypointState, dest: Destination): Upstream | undefined {
    const servicePort = dest.service.ports.find((p) => p.port === dest.port) ?? dest.service.ports[0];
    if (!servicePort) return undefined;
    const selector = dest.selector ?? {};
    const members: Member[] = [];
    for (const uid of dest.service.endpoints) {
      const w = state.workloads.get(uid);
      if (!w || !w.ips[0]) continue;
      if (!Object.entries(selector).every(([k, v]) => w.labels[k] === v)) continue;
      const port = typeof servicePort.targetPort === 'number' ? servicePort.targetPort : /^\d+$/.test(servicePort.targetPort) ? Number(servicePort.targetPort) : w.ports[servicePort.targetPort];
      if (port !== undefined) members.push({ id: w.uid, address: `${w.ips[0]}:${port}`, ip: w.ips[0], port, workload: w });
    }
    const policy = state.router.trafficPolicy(dest);
    const key = `${dest.service.namespace}/${dest.service.name}:${dest.port}/${dest.subset ?? ''}`;
    const shape = JSON.stringify([members.map((m) => m.address), policy.loadBalancer ?? null, policy.outlierDetection ?? null, policy.connectionPool ?? null]);
    let u = this.upstreams.get(key);
    if (!u || u.shape !== shape) {
      const outlier = u && JSON.stringify(u.outlierSpec ?? null) === JSON.stringify(policy.outlierDetection ?? null) ? u.outlier : new OutlierDetector(policy.outlierDetection, { now: () => Date.now() });
      outlier.setEndpoints(members.map((m) => m.id));
      // The pool's counts survive an endpoint change; its limits follow the policy.
      const poolSpec = JSON.stringify(policy.connectionPool ?? null);
      const pool = u && u.poolSpec === poolSpec ? u.pool : new ConnectionPool(policy.connectionPool, { protocol: 'http1' });
      u = { shape, members, balancer: createBalancer(policy.loadBalancer, { random: this.random }), outlier, outlierSpec: policy.outlierDetection, pool, poolSpec };
      this.upstreams.set(key, u);
    }
    return u;
  }

  async close(): Promise<void> {
    this.pool.close();
    await this.hbone.close(1000);
    this.http.close();
  }
}

function applyHeaderOps(headers: Record<string, string | string[] | undefined>, ops: HeaderOps | undefined): Record<string, string | string[] | undefined> {
  if (!ops) return headers;
  for (const name of ops.remove) delete headers[name.toLowerCase()];
  for (const [k, v] of Object.entries(ops.set)) headers[k.toLowerCase()] = v;
  for (const [k, v] of Object.entries(ops.add)) {
    const key = k.toLowerCase();
    const prev = headers[key];
    headers[key] = prev === undefined ? v : [...(Array.isArray(prev) ? prev : [prev]), v];
  }
  return headers;
}

function forwardHeaders(req: IncomingMessage, ...ops: (HeaderOps | undefined)[]): OutgoingHttpHeaders {
  const headers: Record<string, string | string[] | undefined> = {};
  for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k) || k === 'host') headers[k] = v;
  for (const o of ops) applyHeaderOps(headers, o);
  return headers as OutgoingHttpHeaders;
}

/** The route's retries (or Istio's default when the route names none) as a policy. */
function retryPolicy(action: ForwardAction, random: () => number): RetryPolicy {
  const r = action.retries;
  if (!r) return new RetryPolicy({ attempts: 0 }, { random });
  return new RetryPolicy({
    attempts: r.attempts,
    ...(r.perTryTimeoutMs ? { perTryTimeout: `${r.perTryTimeoutMs}ms` } : {}),
    retryOn: [...r.retryOn, ...r.retriableStatusCodes.map(String)].join(','),
  }, { random });
}

/**
 * The HTTP/1.1 machinery writes strings with encodings; an HTTP/2 stream mangles such writes
 * when they come batched (writev). This duplex hands it Buffers only.
 */
function byteStream(stream: Duplex): Duplex {
  const out = new Duplex({
    read() { stream.resume(); },
    write(chunk: Buffer, _enc, cb) { stream.write(chunk, cb); },
    final(cb) { stream.end(); cb(); },
    destroy(err, cb) { stream.destroy(err ?? undefined); cb(err); },
  });
  stream.on('data', (c: Buffer) => { if (!out.push(c)) stream.pause(); });
  stream.on('end', () => out.push(null));
  stream.on('error', (err) => out.destroy(err));
  stream.on('close', () => { if (!out.destroyed) out.destroy(); });
  return out;
}

const GRPC_CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];

/** A gRPC status by name ("UNAVAILABLE") or number, as its number's text. */
function grpcCode(status: string): string {
  const i = GRPC_CODES.indexOf(status.toUpperCase());
  return i >= 0 ? String(i) : /^\d+$/.test(status) ? status : '2';
}
