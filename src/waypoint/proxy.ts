/**
 * The waypoint's L7 proxy: HBONE in, HTTP routing, HBONE out.
 *
 * A node agent sends traffic for a service bound to this waypoint here: a CONNECT stream whose
 * `:authority` is the service's `VIP:port`. The first bytes of the stream say what it carries:
 * - the HTTP/2 connection preface: h2c (prior knowledge), which is how gRPC clients speak in
 *   plaintext; served by an HTTP/2 server, and sent upstream as h2c too, multiplexed on one
 *   pooled tunnel per endpoint, trailers and all;
 * - an HTTP/1.x request line: served by an HTTP/1.1 server, each request upstream on a tunnel
 *   stream of its own;
 * - anything else: passed through as TCP to one endpoint of the service (L4 only).
 * Each request is routed (`Router`: VirtualService / HTTPRoute / GRPCRoute semantics), sent to
 * one endpoint pod of the chosen destination over HBONE with the waypoint's own identity, and
 * the response streamed back. Request bodies are streamed, never buffered whole: up to
 * REPLAY_LIMIT bytes are kept on the side so that a request whose body has ended can be retried.
 */
import { randomUUID } from 'node:crypto';
import { Agent as HttpAgent, createServer, request as httpRequest, type ClientRequestArgs, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type Server } from 'node:http';
import {
  connect as http2Connect, constants as h2, createServer as createH2Server,
  type ClientHttp2Session, type ClientHttp2Stream, type Http2Server, type ServerHttp2Session, type ServerHttp2Stream,
} from 'node:http2';
import type { Socket } from 'node:net';
import { Duplex, type Readable, type Writable } from 'node:stream';
import type { Logger } from 'pino';
import { WAYPOINT_GATEWAY_LABEL, type ConfigObject, type Service, type Workload } from '../config/model.js';
import type { WorkloadCertificate } from '../identity/cert-manager.js';
import { isObject } from '../config/schema.js';
import { silentLogger } from '../telemetry/log.js';
import { extract, inject, type Span, type Tracer } from '../telemetry/tracing.js';
import { HboneError, HbonePool, HboneServer, type TunnelInfo } from '../hbone/hbone.js';
import { HBONE_CODES, refuseTunnel, type HboneLimiter } from '../hbone/limits.js';
import { normalizePath, type L7Authorizer, type L7Request, type L7Target } from './authz.js';
import { detect, DETECT_TIMEOUT_MS, HEADERS_TIMEOUT_MS, MAX_H2_STREAMS, MAX_HEADER_BYTES, MAX_HEADERS } from './detect.js';
import { createBalancer, type Balancer, type Endpoint } from './balancer.js';
import { ConnectionPool, OutlierDetector, rateLimitHeaders, RetryPolicy, TokenBucket, UPSTREAM_OVERFLOW_FLAG, type AttemptOutcome } from './resilience.js';
import type { Destination, ForwardAction, HeaderOps, RouteAction, Router } from './routing.js';
import { Exchange, grpcAnswer, grpcCode, GrpcMessages, type Req, type RequestRecord, type Res } from './exchange.js';

export type { RequestRecord };

/** An endpoint pod, or (for an ingress gateway) a waypoint pod in front of a service: then `authority` is the service's VIP:port. */
interface Member extends Endpoint { ip: string; port: number; workload: Workload; authority?: string }
interface Upstream { version: string; shape: string; members: Member[]; balancer: Balancer; outlier: OutlierDetector; outlierSpec: unknown; pool: ConnectionPool; poolSpec: string }
type PeerFacts = Pick<L7Request, 'sourceIdentity' | 'sourceIp' | 'destinationIp' | 'destinationPort'>;
/** A tunnel's facts, worked out once for all the requests it carries. */
type Tunnel = TunnelInfo & { stream: ServerHttp2Stream; service: Service; port: number; facts: PeerFacts; sourceNamespace?: string; target?: L7Target };

/** A tunnel refused at CONNECT time, as the access log sees it. */
export interface TunnelRefusal {
  id: string;
  start: number;
  authority: string;
  service: Service;
  sourceIdentity?: string;
  sourceIp: string;
  /** What the CONNECT was answered. */
  status: number;
  /** Why, naming the deciding policy. */
  reason: string;
  policy?: string;
}

/** What the waypoint knows at one config version. */
export interface WaypointState {
  version: string;
  router: Router;
  /** Services bound to this waypoint, by `vip:port` and by namespace/name. */
  services: Service[];
  workloads: Map<string, Workload>;
  /** ambit.dev RateLimit objects for this waypoint's services. */
  rateLimits?: ConfigObject[];
  /** AuthorizationPolicy bound to this waypoint or its services (targetRefs). */
  authorizer?: L7Authorizer;
}

/**
 * A request an ingress gateway's listener accepted from outside the mesh (src/waypoint/ingress/):
 * no tunnel, no peer identity; the listener says how it is routed (its servers' hosts and the
 * routes bound to them) and the proxy does the rest as for a waypoint's request.
 */
export interface IngressSource {
  /** The client's address (the TCP peer of the listener). */
  clientIp: string;
  /** The listener's port, and the address the client connected to. */
  port: number;
  localIp?: string;
  /** The SPIFFE ID of the client's certificate (MUTUAL, OPTIONAL_MUTUAL: its URI SAN), verified in the handshake. */
  peerIdentity?: string;
  /** Where the request goes, by its Host, path and headers (the gateway's routing). */
  route(req: { method: string; path: string; authority: string; headers: IncomingHttpHeaders }): RouteAction;
}

export interface WaypointProxyOptions {
  /** This waypoint's SPIFFE ID and certificate. */
  identity: string;
  /** Its Gateway, which AuthorizationPolicy targetRefs name. */
  gateway?: { namespace: string; name: string };
  /** Spans per request, and trace context passed on (none: headers pass through untouched). */
  tracer?: Tracer;
  certificate(): Promise<WorkloadCertificate>;
  roots(): string[];
  /** A fresh TCP socket fd for outbound HBONE (the waypoint's own netns). */
  socket(family: 4 | 6): number;
  log?: Logger;
  random?: () => number;
  /** How long a tunnel may take to send the bytes protocol detection needs (default DETECT_TIMEOUT_MS). */
  detectTimeoutMs?: number;
  /** How long an HTTP/1.1 request's line and headers may take (default HEADERS_TIMEOUT_MS; checked every second). */
  headersTimeoutMs?: number;
  /**
   * A destination service bound to a waypoint is reached through one of the waypoint's pods
   * (HBONE to the pod, the service's VIP:port as authority), as a node agent sends it, so that its
   * L7 policy applies: an ingress gateway's setting. A waypoint itself sends to endpoints.
   */
  viaWaypoints?: boolean;
  /**
   * The protocol upstream follows the destination port's name, as Istio reads it (`http2`,
   * `grpc`, `h2c` → HTTP/2; `http` → HTTP/1.1; other names: the request's own): an ingress
   * gateway's setting, whose clients speak HTTP/2 over TLS whatever the app speaks. A waypoint
   * sends each request as it came (its callers speak the app's protocol).
   */
  protocolByPort?: boolean;
}

/** Request bytes kept for a retry; a longer body streams on and is not retried. */
const REPLAY_LIMIT = 64 * 1024;
/** How long a pooled upstream h2c session may sit without streams. */
const H2_IDLE_MS = 60_000;
/** How long a kept-alive upstream HTTP/1.1 connection may sit idle: under the 5 s apps (Node's default) keep theirs. */
const H1_IDLE_MS = 4_000;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'host', 'http2-settings']);

type Outcome = { done: true; status: number; flags?: string } | { done: false; failure: AttemptOutcome; message: string };

export class WaypointProxy {
  private state?: WaypointState;
  private readonly hbone: HboneServer;

  /** The HBONE listener's caps and refusal counts, for the waypoint's metrics. */
  get hboneLimiter(): HboneLimiter {
    return this.hbone.limiter;
  }
  private readonly pool: HbonePool;
  private readonly http: Server;
  private readonly h2: Http2Server;
  private readonly log: Logger;
  private readonly random: () => number;
  /** Per-connection facts for the HTTP servers: which tunnel a request came in on. */
  private readonly tunnels = new WeakMap<object, Tunnel>();
  /** The tunnel an h2c session is being made for (the server's 'session' event runs synchronously). */
  private nextH2Tunnel?: Tunnel;
  /** Upstream h2c sessions, one per endpoint (address and identity). */
  private readonly h2Sessions = new Map<string, Promise<ClientHttp2Session>>();
  /** Retry policies by the route's retries spec, and with or without consistent hashing. */
  private readonly retryPolicies = new WeakMap<object, Map<boolean, RetryPolicy>>();
  private noRetries?: RetryPolicy;
  /** Kept-alive upstream HTTP/1.1 connections per endpoint, each over a tunnel of its own. */
  private readonly h1Agents = new Map<string, TunnelAgent>();
  /** A RateLimit's name and spec as a key, made once per config object (a bucket outlives config versions while both stay the same). */
  private readonly rateLimitIds = new WeakMap<ConfigObject, string>();
  /** Rate-limit buckets by (RateLimit, spec, route). */
  private readonly buckets = new Map<string, TokenBucket>();
  /** Per destination (service, port, subset): endpoints, balancer, outlier detector. */
  private readonly upstreams = new Map<string, Upstream>();
  private readonly detectTimeoutMs: number;
  onRequest?: (r: RequestRecord) => void;
  /** A tunnel refused at CONNECT time by authorization. */
  onTunnelRefused?: (r: TunnelRefusal) => void;

  constructor(private readonly opts: WaypointProxyOptions) {
    this.log = opts.log ?? silentLogger;
    this.random = opts.random ?? Math.random;
    this.detectTimeoutMs = opts.detectTimeoutMs ?? DETECT_TIMEOUT_MS;
    this.pool = new HbonePool({ log: this.log });
    this.hbone = new HboneServer({ certificate: opts.certificate, roots: opts.roots, onTunnel: (s, i) => this.tunnel(s, i), log: this.log });
    // The parser keeps one header over the limit, so that serve() can tell a request that has too many.
    this.http = createServer({ keepAlive: true, maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: opts.headersTimeoutMs ?? HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 1_000 }, (req, res) => void this.serve(req, res));
    this.http.maxHeadersCount = MAX_HEADERS + 1;
    // It never listens (tunnels are handed to it): 'listening' starts Node's tracking of its
    // connections, which is what enforces headersTimeout.
    this.http.emit('listening');
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket));
    // h2c per tunnel: bounded header lists (pseudo-headers are counted as pairs) and streams.
    this.h2 = createH2Server({
      maxHeaderListPairs: MAX_HEADERS + 4,
      settings: { maxConcurrentStreams: MAX_H2_STREAMS, maxHeaderListSize: MAX_HEADER_BYTES, enablePush: false },
    }, (req, res) => void this.serve(req, res as unknown as Res));
    this.h2.on('session', (session: ServerHttp2Session) => {
      if (this.nextH2Tunnel) this.tunnels.set(session, this.nextH2Tunnel);
      this.nextH2Tunnel = undefined;
      session.on('error', (err) => this.log.debug({ err: err.message }, 'downstream h2c session error'));
    });
  }

  update(state: WaypointState): void {
    this.state = state;
  }

  /** The config it serves now (undefined before the first one): for the admin's views. */
  get current(): WaypointState | undefined {
    return this.state;
  }

  /**
   * The destinations it has balanced over so far (made at a destination's first request), each
   * with its endpoints and outlier detector: for the admin's views, read when they are asked for.
   */
  upstreamsNow(): { service: string; port: number; subset: string | null; members: { id: string; address: string }[]; outlier: OutlierDetector }[] {
    return [...this.upstreams.entries()].map(([key, u]) => {
      const m = /^(.*):(\d+)\/(.*)$/.exec(key)!;
      return { service: m[1]!, port: Number(m[2]), subset: m[3] === '' ? null : m[3]!, members: u.members.map((x) => ({ id: x.id, address: x.address })), outlier: u.outlier };
    });
  }

  /** A raw connection accepted on 15008. */
  handle(socket: Socket): Promise<void> {
    return this.hbone.handle(socket);
  }

  private tunnel(stream: ServerHttp2Stream, info: TunnelInfo): void {
    const state = this.state;
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(info.authority);
    const service = m && state?.services.find((s) => s.vips.includes(m[1]!) && s.ports.some((p) => p.port === Number(m[2])));
    if (!state || !m || !service) {
      // As a node agent answers for a workload it does not serve: the peer gets a code, no more.
      refuseTunnel(stream, 503, HBONE_CODES.notEnrolled);
      return;
    }
    const port = Number(m[2]);
    const facts: PeerFacts = { ...(info.peerIdentity ? { sourceIdentity: info.peerIdentity } : {}), sourceIp: info.remoteAddress.replace(/^::ffff:/, ''), destinationIp: m[1]!, destinationPort: port };
    // L4 authorization before the 200: what the tunnel's facts alone decide is answered now.
    if (state.authorizer) {
      const decision = state.authorizer.decideTunnel(facts, this.authzTarget(service));
      if (decision.verdict === 'deny') {
        // The peer learns a stable code; the policy is named in the log and the access log only.
        refuseTunnel(stream, 401, HBONE_CODES.denied);
        const refusal: TunnelRefusal = {
          id: info.id, start: Date.now(), authority: info.authority, service, sourceIp: facts.sourceIp, status: 401, reason: decision.reason,
          ...(info.peerIdentity ? { sourceIdentity: info.peerIdentity } : {}), ...(decision.policy ? { policy: decision.policy } : {}),
        };
        this.log.info({ service: `${service.namespace}/${service.name}`, source: info.peerIdentity ?? facts.sourceIp, policy: decision.policy, reason: decision.reason }, 'tunnel refused by authorization policy');
        this.onTunnelRefused?.(refusal);
        return;
      }
    }
    stream.respond({ ':status': 200 });
    const sourceNamespace = info.peerIdentity ? /\/ns\/([^/]+)\//.exec(info.peerIdentity)?.[1] : undefined;
    const tunnel: Tunnel = { ...info, stream, service, port, facts, ...(sourceNamespace ? { sourceNamespace } : {}) };
    const conn = byteStream(stream);
    // A peer's reset surfaces as an error on `conn`: with no listener it would take the process
    // down. Whoever takes the tunnel over (HTTP server, passthrough) reports errors its own way.
    conn.on('error', (err: Error) => this.log.debug({ err: err.message, tunnel: info.id }, 'tunnel error'));
    // The first bytes say what the tunnel carries: the h2c preface, an HTTP/1 request line, or
    // other TCP. At most DETECT_MAX_BYTES are held for that, for at most detectTimeoutMs.
    let head: Buffer = Buffer.alloc(0);
    let httpLike = false;
    const timer = setTimeout(() => {
      conn.off('data', sniff);
      const where = { service: `${service.namespace}/${service.name}`, source: info.peerIdentity ?? facts.sourceIp, bytes: head.length };
      if (httpLike) {
        this.log.info(where, 'protocol detection timed out on a partial request line: 408');
        answerAndClose(stream, 408, 'Request Timeout', 'request line not received in time\n');
      } else {
        this.log.info(where, 'protocol detection timed out: no bytes, tunnel closed');
        closeTunnel(stream);
      }
    }, this.detectTimeoutMs);
    const sniff = (chunk: Buffer) => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const found = detect(head);
      if (found.kind === 'wait') {
        httpLike = found.httpLike;
        return;
      }
      clearTimeout(timer);
      conn.off('data', sniff);
      if (found.kind === 'bad-http') {
        this.log.info({ service: `${service.namespace}/${service.name}`, source: info.peerIdentity ?? facts.sourceIp, reason: found.reason }, 'bad request at protocol detection: 400');
        answerAndClose(stream, 400, 'Bad Request', `${found.reason}\n`);
        return;
      }
      conn.pause();
      conn.unshift(head);
      if (found.kind === 'h2c') {
        this.nextH2Tunnel = tunnel;
        this.h2.emit('connection', conn);
        this.nextH2Tunnel = undefined;
        conn.resume();
      } else if (found.kind === 'http1') {
        this.tunnels.set(conn, tunnel);
        this.http.emit('connection', conn);
        conn.resume();
      } else {
        this.passthrough(conn, tunnel);
      }
    };
    conn.on('data', sniff);
    conn.once('close', () => clearTimeout(timer));
  }

  /**
   * An HTTP/1.1 request the parser refused (a head over MAX_HEADER_BYTES, bad syntax, headers
   * not in within HEADERS_TIMEOUT_MS): answered 431, 400 or 408 when no response is under way
   * on the connection, then the tunnel is closed.
   */
  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const tunnel = this.tunnels.get(socket);
    // As Node's own handler: a response already started on the connection cannot be followed by another.
    const busy = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    const [status, text] = err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout'] : [400, 'Bad Request'];
    this.log.info({ err: err.code ?? err.message, status, service: tunnel ? `${tunnel.service.namespace}/${tunnel.service.name}` : undefined, source: tunnel?.peerIdentity }, 'HTTP/1.1 request refused by the parser');
    if (!tunnel || busy || !socket.writable) {
      socket.destroy();
      return;
    }
    const why = status === 431 ? `request line and headers over ${MAX_HEADER_BYTES} bytes` : status === 408 ? 'request headers not received in time' : `malformed request (${err.code ?? 'parse error'})`;
    answerAndClose(tunnel.stream, status, text, `${why}\n`);
  }

  /** A tunnel that carries neither HTTP/1 nor h2c: its bytes go to one endpoint of the service, as TCP. */
  private passthrough(conn: Duplex, tunnel: Tunnel): void {
    const state = this.state;
    // Policy on a byte stream: it has no HTTP attributes, so it passes only when the tunnel's
    // facts alone allow it; a DENY policy that could match on HTTP attributes refuses it (fail
    // closed) and ALLOW rules naming HTTP attributes cannot match.
    const decision = state?.authorizer?.decideTunnel(tunnel.facts, this.authzTarget(tunnel.service));
    if (decision && decision.verdict !== 'allow') {
      this.log.info({ service: `${tunnel.service.namespace}/${tunnel.service.name}`, source: tunnel.peerIdentity, policy: decision.policy, reason: decision.reason }, 'TCP passthrough denied');
      resetTunnel(tunnel.stream);
      return;
    }
    const upstream = state && this.upstreamOf(state, { service: tunnel.service, port: tunnel.port, weight: 100 });
    const endpoint = upstream?.balancer.pick(upstream.outlier.eligible(upstream.members)).endpoint as Member | undefined;
    if (!endpoint) {
      resetTunnel(tunnel.stream);
      return;
    }
    void this.openTunnel(endpoint, tunnel.remoteAddress).then((out) => {
      conn.pipe(out).pipe(conn);
      out.on('error', () => resetTunnel(tunnel.stream));
      conn.on('error', () => out.destroy());
      conn.resume();
    }, (err: Error) => {
      this.log.debug({ err: err.message, upstream: endpoint.address }, 'TCP passthrough: upstream connect failed');
      resetTunnel(tunnel.stream);
    });
  }

  /**
   * A byte stream an ingress gateway's listener accepted (TLS passed through, TCP) to one endpoint
   * of `dest` over HBONE, with `head` (what the listener read of it already) first. The endpoint's
   * address, or an error saying why it could not be reached (the listener then closes the stream).
   */
  async forwardStream(conn: Duplex, head: Buffer, dest: Destination, clientIp: string): Promise<string> {
    const state = this.state;
    if (!state) throw new Error('no config yet');
    const upstream = this.upstreamOf(state, dest);
    const endpoint = upstream?.balancer.pick(upstream.outlier.eligible(upstream.members)).endpoint as Member | undefined;
    if (!endpoint) throw new Error(`no endpoint of ${dest.service.namespace}/${dest.service.name} serves port ${dest.port}`);
    const out = await this.openTunnel(endpoint, clientIp);
    // The client may have gone while the tunnel was opening: the tunnel goes too.
    if (conn.destroyed) {
      out.close(h2.NGHTTP2_CANCEL);
      throw new Error('the client closed the connection before the tunnel was open');
    }
    if (head.length > 0) out.write(head);
    conn.pipe(out).pipe(conn);
    out.on('error', () => conn.destroy());
    conn.on('error', () => out.destroy());
    conn.on('close', () => { if (!out.destroyed) out.close(h2.NGHTTP2_CANCEL); });
    return endpoint.address;
  }

  private authzTarget(service: Service): { service: { name: string; namespace: string }; waypoint: { name: string; namespace: string } } {
    return { service: { name: service.name, namespace: service.namespace }, waypoint: this.opts.gateway ?? { name: '', namespace: '' } };
  }

  private openTunnel(endpoint: Member, clientIp?: string): Promise<ClientHttp2Stream> {
    return this.opts.certificate().then((cert) => this.pool.open(
      { pod: 'waypoint', cert, roots: this.opts.roots(), socket: (f) => this.opts.socket(f) },
      { address: endpoint.ip, identity: endpoint.workload.identity, authority: endpoint.authority ?? `${endpoint.ip}:${endpoint.port}` },
      clientIp ? { forwarded: `for=${clientIp}` } : {},
    ));
  }

  /**
   * One request, stage by stage: admitted (config, header count), authorized (L7 policy),
   * routed (no route, redirect, direct response, or a forward action), rate-limited, faults
   * injected, then forwarded with retries. A stage that answers ends the request.
   */
  private async serve(req: Req, res: Res): Promise<void> {
    const h2req = 'stream' in req;
    const tunnel = this.tunnels.get(h2req ? req.stream.session! : req.socket);
    const state = this.state;
    const ex = this.exchange(req, res, h2req, tunnel);
    if (!tunnel || !state) return ex.reply(503, 'NC', 'no config yet\n');
    // HTTP/1.1's parser keeps one header over MAX_HEADERS (h2c refuses such a stream itself):
    // one more would have been dropped, unseen by policy and routing, so the request is refused.
    if (!h2req && req.rawHeaders.length > 2 * MAX_HEADERS) {
      res.setHeader('connection', 'close');
      return ex.reply(431, '-', `more than ${MAX_HEADERS} header fields\n`);
    }
    if (!this.authorize(ex, state, tunnel)) return;
    const action = this.route(ex, state, tunnel);
    if (!action || !this.rateLimit(ex, state, tunnel, action) || !(await this.injectFault(ex, action))) return;
    await this.forward(ex, state, tunnel.remoteAddress, action);
  }

  /**
   * A request from an ingress gateway's listener: admitted as a tunnel's (header count), routed by
   * the listener (no route: 404 NR, as Istio's gateways answer), faults injected, then forwarded
   * as a waypoint forwards, over HBONE with this proxy's identity. The record's service is the
   * destination picked for it (a gateway has no called service).
   */
  async serveIngress(req: Req, res: Res, source: IngressSource): Promise<void> {
    const h2req = 'stream' in req;
    const state = this.state;
    const ex = this.exchange(req, res, h2req, undefined, source);
    if (!state) return ex.reply(503, 'NC', 'no config yet\n');
    if (!h2req && req.rawHeaders.length > 2 * MAX_HEADERS) {
      res.setHeader('connection', 'close');
      return ex.reply(431, '-', `more than ${MAX_HEADERS} header fields\n`);
    }
    const r = ex.record;
    if (state.authorizer) {
      // AuthorizationPolicy at the gateway itself (its pods' selector, or its Gateway as targetRef): the
      // client's principal is its certificate's SPIFFE ID, if it gave one; remote.ip its address (no trusted proxies).
      const decision = state.authorizer.evaluate(
        { sourceIdentity: source.peerIdentity, sourceIp: r.sourceIp, remoteIp: r.sourceIp, destinationIp: source.localIp ?? '', destinationPort: source.port, host: r.authority, method: r.method, path: r.path, headers: req.headers as IncomingHttpHeaders },
        { waypoint: this.opts.gateway ?? { namespace: '', name: '' } },
      );
      if (decision.reason !== 'no policy applies') r.authz = decision.reason;
      if (!decision.allowed) return ex.reply(403, '-', 'RBAC: access denied\n');
    }
    const action = this.settleRoute(ex, source.route({ method: r.method, path: r.path, authority: r.authority, headers: req.headers as IncomingHttpHeaders }));
    if (!action) return;
    const first = action.destinations[0];
    if (first) {
      r.serviceRef = first.service;
      r.service = `${first.service.name}.${first.service.namespace}`;
    }
    if (!(await this.injectFault(ex, action))) return;
    await this.forward(ex, state, source.clientIp, action, true);
  }

  /** The request's record and span, and how it ends. */
  private exchange(req: Req, res: Res, h2req: boolean, tunnel: Tunnel | undefined, ingress?: IngressSource): Exchange {
    const headers = req.headers as IncomingHttpHeaders;
    // Paths are normalized (Istio's default, BASE) before policy and routing see them, and sent on so.
    const rawPath = req.url ?? '/';
    const q = rawPath.search(/[?#]/);
    const path = q < 0 ? normalizePath(rawPath) : `${normalizePath(rawPath.slice(0, q))}${rawPath.slice(q)}`;
    const record: RequestRecord = {
      id: String(headers['x-request-id'] ?? randomUUID()), start: Date.now(), method: req.method ?? 'GET', path,
      authority: String(headers[':authority'] ?? headers.host ?? ''), protocol: h2req ? 'HTTP/2' : 'HTTP/1.1',
      grpc: /^application\/grpc/.test(String(headers['content-type'] ?? '')),
      service: tunnel ? `${tunnel.service.name}.${tunnel.service.namespace}` : '', flags: '-', bytesIn: 0, bytesOut: 0, attempts: 0,
      ...(tunnel?.peerIdentity ?? ingress?.peerIdentity ? { sourceIdentity: (tunnel?.peerIdentity ?? ingress?.peerIdentity)! } : {}),
      sourceIp: (tunnel?.remoteAddress ?? ingress?.clientIp ?? '').replace(/^::ffff:/, ''), ...(tunnel ? { serviceRef: tunnel.service } : {}),
    };
    const span = !this.opts.tracer ? undefined
      : tunnel ? this.startSpan(this.opts.tracer, record, headers, `${tunnel.service.hostname}:${tunnel.port}/*`, { 'istio.canonical_service': tunnel.service.name, 'istio.namespace': tunnel.service.namespace, ...(tunnel.peerIdentity ? { 'peer.principal': tunnel.peerIdentity } : {}) })
      : ingress ? this.startSpan(this.opts.tracer, record, headers, `${record.authority.replace(/:\d+$/, '')}:${ingress.port}/*`, { 'client.address': record.sourceIp }) : undefined;
    return new Exchange(req, res, h2req, record, span, this.onRequest);
  }

  /** L7 authorization (AuthorizationPolicy with targetRefs to this waypoint or the service), before routing: false when denied (403). */
  private authorize(ex: Exchange, state: WaypointState, tunnel: Tunnel): boolean {
    if (!state.authorizer) return true;
    const r = ex.record;
    // Built field by field (an object spread per request cost more than the evaluation).
    const f = tunnel.facts;
    const decision = state.authorizer.evaluate(
      { sourceIdentity: f.sourceIdentity, sourceIp: f.sourceIp, destinationIp: f.destinationIp, destinationPort: f.destinationPort, host: r.authority, method: r.method, path: r.path, headers: ex.req.headers as IncomingHttpHeaders },
      tunnel.target ??= this.authzTarget(tunnel.service),
    );
    if (decision.reason !== 'no policy applies') r.authz = decision.reason;
    if (decision.allowed) return true;
    ex.reply(403, '-', 'RBAC: access denied\n');
    return false;
  }

  /** Where the request goes: a forward action, or undefined when the route answered it (no route, redirect, direct response). */
  private route(ex: Exchange, state: WaypointState, tunnel: Tunnel): ForwardAction | undefined {
    const r = ex.record;
    return this.settleRoute(ex, state.router.route({
      service: tunnel.service, port: tunnel.port, method: r.method, path: r.path, authority: r.authority,
      headers: ex.req.headers as IncomingHttpHeaders, ...(tunnel.sourceNamespace ? { sourceNamespace: tunnel.sourceNamespace } : {}),
    }));
  }

  /** A route's answer given here (no route, redirect, direct response), or its forward action. */
  private settleRoute(ex: Exchange, action: RouteAction): ForwardAction | undefined {
    const r = ex.record;
    if (action.kind === 'no-route') {
      ex.reply(404, 'NR', 'no route\n');
      return undefined;
    }
    if (action.kind === 'redirect') {
      ex.res.writeHead(action.status, { location: action.location });
      ex.res.end();
      ex.finish(action.status);
      return undefined;
    }
    if (action.kind === 'direct-response') {
      ex.res.writeHead(action.status);
      ex.res.end(action.body ?? '');
      ex.finish(action.status);
      return undefined;
    }
    r.route = action.route;
    return action;
  }

  /** Local rate limiting (ambit.dev RateLimit): one token bucket per route of the target service; false when limited (429). */
  private rateLimit(ex: Exchange, state: WaypointState, tunnel: Tunnel, action: ForwardAction): boolean {
    for (const rl of state.rateLimits ?? []) {
      const spec = rl.spec as { targetRefs: { name: string }[]; requestsPerUnit: number; unit: 'second' | 'minute' | 'hour'; burst?: number };
      if (rl.namespace !== tunnel.service.namespace || !spec.targetRefs.some((t) => t.name === tunnel.service.name)) continue;
      let id = this.rateLimitIds.get(rl);
      if (id === undefined) this.rateLimitIds.set(rl, (id = `${rl.namespace}/${rl.name}|${JSON.stringify(spec)}`));
      const key = `${id}|${action.route}`;
      let bucket = this.buckets.get(key);
      if (!bucket) {
        const unitMs = { second: 1000, minute: 60_000, hour: 3_600_000 }[spec.unit];
        bucket = new TokenBucket({ maxTokens: spec.burst ?? spec.requestsPerUnit, tokensPerFill: 1, fillIntervalMs: unitMs / spec.requestsPerUnit }, { now: () => Date.now() });
        this.buckets.set(key, bucket);
      }
      const taken = bucket.take();
      if (!taken.ok) {
        ex.reply(429, 'RL', 'local rate limited\n', rateLimitHeaders(spec.burst ?? spec.requestsPerUnit, taken));
        return false;
      }
    }
    return true;
  }

  /** Fault injection (VirtualService `fault`): a delay first, then perhaps an abort, each for its percentage of requests; false when aborted. */
  private async injectFault(ex: Exchange, action: ForwardAction): Promise<boolean> {
    const fault = action.fault;
    if (!fault) return true;
    if (fault.delay && this.random() * 100 < fault.delay.percent) {
      await new Promise((r) => setTimeout(r, fault.delay!.ms));
      ex.record.flags = 'DI';
    }
    if (!fault.abort || this.random() * 100 >= fault.abort.percent) return true;
    if (fault.abort.grpcStatus !== undefined) {
      ex.record.grpcStatus = grpcCode(fault.abort.grpcStatus);
      grpcAnswer(ex.res, ex.record.grpcStatus, encodeURIComponent('fault filter abort'));
      ex.finish(200, 'FI');
    } else {
      ex.reply(fault.abort.status ?? 503, 'FI', 'fault filter abort');
    }
    return false;
  }

  /**
   * The request upstream: mirrored where the route says, then tried at an endpoint of a
   * destination picked by weight, and retried (elsewhere, while it can) on what the policy
   * retries, within the route timeout, the destination's circuit breakers and its retry cap.
   */
  private async forward(ex: Exchange, state: WaypointState, clientIp: string, action: ForwardAction, recordDestination = false): Promise<void> {
    const { req, res, record } = ex;
    // The body streams upstream as it comes; its first REPLAY_LIMIT bytes are kept for a retry.
    // gRPC: its messages are counted too (istio_request_messages_total, istio_response_messages_total).
    const requestMessages = record.grpc ? new GrpcMessages() : undefined;
    const body = new BodyTap(req, REPLAY_LIMIT, (c) => {
      record.bytesIn += c.length;
      if (requestMessages) {
        requestMessages.feed(c);
        record.requestMessages = requestMessages.count;
      }
    });
    const firstPolicy = action.destinations[0] ? state.router.trafficPolicy(action.destinations[0]) : {};
    const policy = this.retryPolicy(action, isObject(firstPolicy.loadBalancer) && firstPolicy.loadBalancer.consistentHash !== undefined);
    /** Endpoints tried for this request: retries go elsewhere while they can (Envoy's previous-hosts predicate). */
    const tried = new Set<string>();
    // Mirroring: a copy of the request, fire and forget, to each mirror for its percentage (bodiless requests only: a streamed body is read once).
    if (body.empty) for (const m of action.mirrors ?? (action.mirror ? [action.mirror] : [])) if (this.random() * 100 < m.percent) this.mirror(state, m.destination, req, record.path, clientIp, ex.h2);
    let routeTimer: NodeJS.Timeout | undefined;
    let timedOut = false;
    /** The retry slot the try in flight holds, if it is a retry. */
    let retryLease: { release(): void } | undefined;
    /** Ends the try in flight (its upstream stream reset), so that it lets go of its pool slot. */
    const inFlight: { abort?: () => void } = {};
    if (action.timeoutMs) {
      routeTimer = setTimeout(() => {
        timedOut = true;
        ex.reply(504, 'UT', 'upstream request timeout\n');
        // Then the try in flight goes, after the answer is on its way.
        setImmediate(() => inFlight.abort?.());
      }, action.timeoutMs);
    }
    try {
      for (let attempt = 1; ; attempt++) {
        const dest = state.router.pick(action);
        if (recordDestination) {
          record.serviceRef = dest.service;
          record.service = `${dest.service.name}.${dest.service.namespace}`;
        }
        if (dest.missing) return ex.reply(dest.missing.status, 'NR', `${dest.missing.reason}\n`);
        const upstream = this.upstreamOf(state, dest);
        const eligible = upstream ? upstream.outlier.eligible(upstream.members) : [];
        const fresh = policy.ignorePreviousHosts && tried.size > 0 ? eligible.filter((m) => !tried.has(m.id)) : eligible;
        const picked = upstream?.balancer.pick(fresh.length > 0 ? fresh : eligible, new PickRequest(req.headers as IncomingHttpHeaders, clientIp, record.path));
        const endpoint = picked?.endpoint as Member | undefined;
        if (!upstream || !endpoint) return ex.reply(503, 'UH', 'no healthy upstream\n');
        if (picked?.setCookie && !res.headersSent) res.setHeader('set-cookie', picked.setCookie);
        record.upstream = endpoint.address;
        record.attempts = attempt;
        tried.add(endpoint.id);
        const mayRetry = attempt <= policy.attempts;
        // A response to retry is held back only while the request could still be sent again.
        const retriable = mayRetry ? (o: AttemptOutcome) => body.replayable && policy.shouldRetry(o, attempt) : undefined;
        // Circuit breaking: the destination's request and pending limits (DestinationRule connectionPool).
        const admission = upstream.pool.tryAcquireRequest();
        if (!admission.ok) return ex.reply(503, UPSTREAM_OVERFLOW_FLAG, 'upstream overflow\n', { 'x-ambit-overflow': admission.reason });
        if (admission.pending) await admission.ready;
        upstream.balancer.onStart?.(endpoint.id);
        const outcome = await this.attempt(req, res, ex.h2, action, dest, endpoint, clientIp, record, ex.span, body, attempt, retriable, policy.perTryTimeoutMs, inFlight)
          .finally(() => {
            upstream.balancer.onEnd?.(endpoint.id);
            admission.release();
            retryLease?.release();
            retryLease = undefined;
          });
        upstream.outlier.record(endpoint.id, outcome.done ? { status: outcome.status } : outcome.failure.status !== undefined ? { status: outcome.failure.status } : { error: outcome.failure.error ?? 'reset' });
        if (timedOut) return;
        if (outcome.done) return ex.finish(outcome.status, outcome.flags);
        const wouldRetry = policy.shouldRetry(outcome.failure, attempt);
        if (!mayRetry || !wouldRetry || !body.replayable) return this.giveUp(ex, outcome, !mayRetry && policy.attempts > 0 && wouldRetry);
        // Retries in flight to a destination are capped too (connectionPool.http.maxRetries).
        const lease = upstream.pool.tryAcquireRetry();
        if (!lease.ok) return ex.reply(outcome.failure.status ?? 503, 'URX', `${outcome.message}\n`);
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

  /** The last try failed and no retry follows: the upstream's own answer passed on, or a local one. `exhausted`: the retries were used up on a failure they would have retried (URX). */
  private giveUp(ex: Exchange, outcome: Extract<Outcome, { done: false }>, exhausted: boolean): void {
    const { failure } = outcome;
    const status = failure.status ?? (failure.error === 'timeout' ? 504 : 503);
    const flags = exhausted ? 'URX' : failure.error === 'connect-failure' ? 'UF' : failure.error === 'timeout' ? 'UT' : failure.status ? '-' : 'UR';
    if (failure.status !== undefined && failure.grpcStatus !== undefined) ex.record.grpcStatus = failure.grpcStatus;
    if (failure.status === undefined || ex.res.headersSent) return ex.reply(status, flags, `${outcome.message}\n`);
    // The upstream's own answer (held back for a retry that is not coming): pass its status on.
    if (failure.grpcStatus !== undefined) grpcAnswer(ex.res, failure.grpcStatus, String(failure.headers?.['grpc-message'] ?? ''));
    else {
      ex.res.writeHead(status);
      ex.res.end(`${outcome.message}\n`);
    }
    ex.finish(status, flags);
  }

  /**
   * One try at one endpoint. With `retriable`, a response it says to retry is not passed on
   * (its body is dropped) and comes back as a failure; everything else streams to the client.
   * HTTP/1.1 goes on a tunnel stream of its own; HTTP/2 on the endpoint's pooled h2c session.
   */
  private async attempt(
    req: Req, res: Res, h2down: boolean, action: ForwardAction, dest: Destination, endpoint: Member, clientIp: string, record: RequestRecord, span: Span | undefined,
    body: BodyTap, attempt: number, retriable: ((o: AttemptOutcome) => boolean) | undefined, perTryMs: number | undefined, inFlight: { abort?: () => void },
  ): Promise<Outcome> {
    const h2req = this.upstreamH2(dest, h2down);
    const headers = forwardHeaders(req.headers as IncomingHttpHeaders, h2req, action.requestHeaders, dest.headers);
    headers['x-request-id'] = record.id;
    if (span) inject(span.context, headers as Record<string, string>);
    const authority = action.rewrite?.authority ?? dest.authority ?? record.authority;
    const path = action.rewrite?.path ?? record.path;
    let call: UpstreamCall;
    try {
      call = h2req
        ? await this.h2Call(endpoint, { ...headers, ':method': record.method, ':path': path, ':authority': authority, ':scheme': 'http' })
        : this.h1Call(endpoint, record.method, path, { ...headers, host: authority });
    } catch (err) {
      const e = err as HboneError;
      return { done: false, failure: { error: e.status === 503 && /refused/.test(e.message) ? 'connect-failure' : e.kind === 'timeout' ? 'timeout' : 'connect-failure', requestSent: false }, message: `upstream connect error: ${e.message}` };
    }
    return new Promise<Outcome>((resolve) => {
      let settled = false;
      /** This try's response is being passed on: a failure now can only cut it. */
      let streaming = false;
      const settle = (v: Outcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(v);
      };
      const timer = perTryMs ? setTimeout(() => {
        settle({ done: false, failure: { error: 'timeout', requestSent: true }, message: 'upstream per-try timeout' });
        call.abort();
      }, perTryMs) : undefined;
      inFlight.abort = () => {
        settle({ done: false, failure: { error: 'timeout', requestSent: true }, message: 'upstream request timeout' });
        call.abort();
      };
      call.onResponse = (status, upstreamHeaders, upstreamBody) => {
        const grpcStatus = upstreamHeaders['grpc-status'] as string | undefined;
        const failure: AttemptOutcome = { status, headers: upstreamHeaders, requestSent: true, ...(grpcStatus !== undefined ? { grpcStatus } : {}) };
        if (retriable?.(failure)) {
          upstreamBody.resume();
          upstreamBody.on('end', () => call.done());
          settle({ done: false, failure, message: `upstream answered ${status}${grpcStatus !== undefined ? ` grpc-status ${grpcStatus}` : ''}` });
          return;
        }
        clearTimeout(timer);
        streaming = true;
        if (grpcStatus !== undefined) record.grpcStatus = grpcStatus;
        const responseHeaders = applyHeaderOps(applyHeaderOps({ ...upstreamHeaders }, action.responseHeaders), dest.responseHeaders);
        for (const h of Object.keys(responseHeaders)) if (HOP_BY_HOP.has(h) || h.startsWith(':')) delete responseHeaders[h];
        // A trailers-only gRPC answer: its status goes on as trailers (an HTTP/2 response here is
        // headers, then trailers; clients read a status in headers only from a frame that ends the stream).
        if (grpcStatus !== undefined && res.addTrailers) {
          res.addTrailers({ 'grpc-status': grpcStatus, ...(responseHeaders['grpc-message'] !== undefined ? { 'grpc-message': responseHeaders['grpc-message'] } : {}) });
          delete responseHeaders['grpc-status'];
          delete responseHeaders['grpc-message'];
        }
        res.writeHead(status, responseHeaders as OutgoingHttpHeaders);
        const responseMessages = record.grpc ? new GrpcMessages() : undefined;
        if (responseMessages) record.responseMessages = 0;
        upstreamBody.on('data', (c: Buffer) => {
          record.bytesOut += c.length;
          if (responseMessages) {
            responseMessages.feed(c);
            record.responseMessages = responseMessages.count;
          }
        });
        call.onTrailers = (trailers) => {
          if (trailers['grpc-status'] !== undefined) record.grpcStatus = String(trailers['grpc-status']);
          res.addTrailers?.(stripPseudo(trailers));
        };
        upstreamBody.pipe(res);
        upstreamBody.on('end', () => {
          call.done();
          settle({ done: true, status });
        });
      };
      call.onError = (err, refused) => {
        if (settled) return;
        if (err instanceof HboneError && !streaming) {
          // The tunnel could not be opened: nothing was sent.
          settle({ done: false, failure: { error: err.kind === 'timeout' ? 'timeout' : 'connect-failure', requestSent: false }, message: `upstream connect error: ${err.message}` });
          return;
        }
        if (streaming) {
          res.destroy(err);
          settle({ done: true, status: res.statusCode, flags: 'UR' });
        } else {
          settle({ done: false, failure: { error: refused ? 'refused-stream' : 'reset', requestSent: !refused }, message: `upstream reset: ${err.message}` });
        }
      };
      // The body: the live request on the first try, what was kept of it on a retry.
      if (attempt === 1) body.pipeTo(call.body);
      else body.replayTo(call.body);
    });
  }

  /** Whether a request goes upstream as HTTP/2: as it came, or (protocolByPort) as the destination port's name says. */
  private upstreamH2(dest: Destination, h2down: boolean): boolean {
    if (!this.opts.protocolByPort) return h2down;
    const name = (dest.service.ports.find((p) => p.port === dest.port)?.name ?? '').toLowerCase();
    const protocol = name.split('-')[0];
    if (protocol === 'http2' || protocol === 'grpc' || protocol === 'h2c') return true;
    if (protocol === 'http') return false;
    return h2down;
  }

  /** The route's retry policy, made once per route's retries (they are the router's, per config version). */
  private retryPolicy(action: ForwardAction, consistentHash: boolean): RetryPolicy {
    if (!action.retries) return (this.noRetries ??= retryPolicy(action, this.random, false));
    let byHash = this.retryPolicies.get(action.retries);
    if (!byHash) this.retryPolicies.set(action.retries, (byHash = new Map()));
    let policy = byHash.get(consistentHash);
    if (!policy) byHash.set(consistentHash, (policy = retryPolicy(action, this.random, consistentHash)));
    return policy;
  }

  /** The request's server span: a child of the caller's trace context (W3C or B3), or a new trace. */
  private startSpan(tracer: Tracer, record: RequestRecord, headers: IncomingHttpHeaders, name: string, attributes: Record<string, string>): Span {
    // Named as Istio's proxies name theirs: the service's host (a gateway: the request's) and port, then the path pattern.
    const span = tracer.startSpan({
      name, kind: 'server', parent: extract(headers),
      attributes: {
        'http.request.method': record.method, 'url.path': record.path.replace(/[?#].*$/, ''), 'server.address': record.authority,
        'network.protocol.version': record.protocol === 'HTTP/2' ? '2' : '1.1', 'guid:x-request-id': record.id,
        'istio.mesh_id': 'cluster.local', ...attributes, 'node_id': this.opts.identity,
      },
    });
    record.traceId = span.context.traceId;
    record.spanId = span.context.spanId;
    return span;
  }

  /** An HTTP/1.1 exchange on a kept-alive connection to the endpoint (a new one over a new tunnel when none is free). */
  private h1Call(endpoint: Member, method: string, path: string, headers: OutgoingHttpHeaders): UpstreamCall {
    const key = `${endpoint.ip}|${endpoint.address}|${endpoint.workload.identity}`;
    let agent = this.h1Agents.get(key);
    if (!agent) this.h1Agents.set(key, (agent = new TunnelAgent(() => this.openTunnel(endpoint))));
    const out = httpRequest({ method, path, headers, agent });
    const call: UpstreamCall = {
      body: out,
      abort: () => out.destroy(),
      done: () => undefined,
    };
    out.on('response', (r: IncomingMessage) => {
      call.onResponse?.(r.statusCode ?? 502, r.headers, r);
      r.on('error', (err) => call.onError?.(err, false));
    });
    out.on('error', (err) => call.onError?.(err, false));
    return call;
  }

  /** An HTTP/2 exchange on the endpoint's pooled h2c session. */
  private async h2Call(endpoint: Member, headers: OutgoingHttpHeaders): Promise<UpstreamCall> {
    const session = await this.h2Session(endpoint);
    const stream = session.request(headers, { endStream: false });
    const call: UpstreamCall = {
      body: stream,
      abort: () => { if (!stream.destroyed) stream.close(h2.NGHTTP2_CANCEL); },
      done: () => undefined,
    };
    stream.on('response', (h) => call.onResponse?.(Number(h[':status'] ?? 502), h, stream));
    stream.on('trailers', (t) => call.onTrailers?.(t));
    stream.on('error', (err: Error & { code?: string }) => call.onError?.(err, stream.rstCode === h2.NGHTTP2_REFUSED_STREAM));
    stream.on('close', () => {
      if (stream.rstCode && stream.rstCode !== h2.NGHTTP2_NO_ERROR) call.onError?.(new Error(`stream reset (code ${stream.rstCode})`), stream.rstCode === h2.NGHTTP2_REFUSED_STREAM);
    });
    return call;
  }

  /** The endpoint's h2c session over one HBONE tunnel, made on first use and kept while it is used. */
  private h2Session(endpoint: Member): Promise<ClientHttp2Session> {
    const key = `${endpoint.ip}|${endpoint.address}|${endpoint.workload.identity}`;
    let pending = this.h2Sessions.get(key);
    if (!pending) {
      pending = this.openTunnel(endpoint).then((tunnel) => new Promise<ClientHttp2Session>((resolve, reject) => {
        const session = http2Connect(`http://${endpoint.address}`, { createConnection: () => byteStream(tunnel) as unknown as Socket });
        const drop = () => { if (this.h2Sessions.get(key) === pending) this.h2Sessions.delete(key); };
        session.once('connect', () => resolve(session));
        session.on('error', (err) => { drop(); reject(err); });
        session.on('close', () => { drop(); tunnel.destroy(); });
        session.on('goaway', drop);
        session.setTimeout(H2_IDLE_MS, () => session.close());
      }));
      this.h2Sessions.set(key, pending);
      pending.catch(() => { if (this.h2Sessions.get(key) === pending) this.h2Sessions.delete(key); });
    }
    return pending;
  }

  /** Sends a copy of a request to a mirror destination; its answer is dropped, its failure only logged. */
  private mirror(state: WaypointState, dest: Destination, req: Req, path: string, clientIp: string, h2down: boolean): void {
    const h2req = this.upstreamH2(dest, h2down);
    const upstream = this.upstreamOf(state, dest);
    const endpoint = upstream?.balancer.pick(upstream.outlier.eligible(upstream.members)).endpoint as Member | undefined;
    if (!endpoint) return;
    const headers = forwardHeaders(req.headers as IncomingHttpHeaders, h2req, dest.headers);
    // As Envoy marks shadowed requests: the authority gets "-shadow".
    const authority = `${String(req.headers[':authority'] ?? req.headers.host ?? dest.service.hostname).replace(/:\d+$/, '')}-shadow`;
    const method = req.method ?? 'GET';
    void (async () => {
      const call = h2req
        ? await this.h2Call(endpoint, { ...headers, ':method': method, ':path': path, ':authority': authority, ':scheme': 'http' })
        : this.h1Call(endpoint, method, path, { ...headers, host: authority });
      call.onResponse = (_status, _headers, body) => {
        body.resume();
        body.on('end', () => call.done());
      };
      call.onError = (err) => this.log.debug({ err: err.message, mirror: `${dest.service.namespace}/${dest.service.name}` }, 'mirror failed');
      call.body.end();
    })().catch((err: Error) => this.log.debug({ err: err.message, mirror: `${dest.service.namespace}/${dest.service.name}` }, 'mirror failed'));
  }

  /**
   * The destination's endpoints (workloads behind the service, in the subset, serving the port),
   * with their balancer and outlier detector: kept per destination while its endpoints and its
   * traffic policy stay the same, so that LEAST_REQUEST counts, hash rings and ejections persist
   * across requests and config versions.
   */
  private upstreamOf(state: WaypointState, dest: Destination): Upstream | undefined {
    const key = `${dest.service.namespace}/${dest.service.name}:${dest.port}/${dest.subset ?? ''}`;
    const known = this.upstreams.get(key);
    // Endpoints and policy change only with the config version.
    if (known?.version === state.version) return known;
    const servicePort = dest.service.ports.find((p) => p.port === dest.port) ?? dest.service.ports[0];
    if (!servicePort) return undefined;
    const selector = dest.selector ?? {};
    const members: Member[] = [];
    const wp = this.opts.viaWaypoints ? dest.service.waypoint : undefined;
    // Through the service's waypoint: its pods are the members, the service's VIP:port the authority.
    if (wp) for (const w of state.workloads.values()) {
      const vip = dest.service.vips[0];
      if (w.namespace !== wp.namespace || w.labels[WAYPOINT_GATEWAY_LABEL] !== wp.name || !w.ips[0] || !vip) continue;
      const authority = `${vip.includes(':') ? `[${vip}]` : vip}:${dest.port}`;
      // Its address is the waypoint pod's HBONE listener: what the access log and metrics name as the upstream.
      const address = `${w.ips[0].includes(':') ? `[${w.ips[0]}]` : w.ips[0]}:15008`;
      members.push({ id: w.uid, address, ip: w.ips[0], port: dest.port, workload: w, authority });
    }
    else for (const uid of dest.service.endpoints) {
      const w = state.workloads.get(uid);
      if (!w || !w.ips[0]) continue;
      if (!Object.entries(selector).every(([k, v]) => w.labels[k] === v)) continue;
      const port = typeof servicePort.targetPort === 'number' ? servicePort.targetPort : /^\d+$/.test(servicePort.targetPort) ? Number(servicePort.targetPort) : w.ports[servicePort.targetPort];
      if (port !== undefined) members.push({ id: w.uid, address: `${w.ips[0]}:${port}`, ip: w.ips[0], port, workload: w });
    }
    const policy = state.router.trafficPolicy(dest);
    const shape = JSON.stringify([members.map((m) => m.address), policy.loadBalancer ?? null, policy.outlierDetection ?? null, policy.connectionPool ?? null, policy.retryBudget ?? null]);
    let u = known;
    if (u && u.shape === shape) u.version = state.version;
    else {
      const outlier = u && JSON.stringify(u.outlierSpec ?? null) === JSON.stringify(policy.outlierDetection ?? null) ? u.outlier : new OutlierDetector(policy.outlierDetection, { now: () => Date.now() });
      outlier.setEndpoints(members.map((m) => m.id));
      // The pool's counts survive an endpoint change; its limits follow the policy.
      const poolSpec = JSON.stringify([policy.connectionPool ?? null, policy.retryBudget ?? null]);
      const pool = u && u.poolSpec === poolSpec ? u.pool : new ConnectionPool(policy.connectionPool, { protocol: 'http1', retryBudget: policy.retryBudget });
      u = { version: state.version, shape, members, balancer: createBalancer(policy.loadBalancer, { random: this.random }), outlier, outlierSpec: policy.outlierDetection, pool, poolSpec };
      this.upstreams.set(key, u);
    }
    return u;
  }

  async close(): Promise<void> {
    for (const a of this.h1Agents.values()) a.destroy();
    this.h1Agents.clear();
    for (const s of this.h2Sessions.values()) void s.then((session) => session.close(), () => undefined);
    this.h2Sessions.clear();
    this.pool.close();
    await this.hbone.close(1000);
    this.http.close();
    this.h2.close();
  }
}

/**
 * An HTTP agent whose connections are HBONE tunnels: keep-alive and reuse as Node's agent does
 * them (idle connections closed after H1_IDLE_MS, or sooner when the app's Keep-Alive says so).
 */
class TunnelAgent extends HttpAgent {
  constructor(private readonly open: () => Promise<Duplex>) {
    super({ keepAlive: true, timeout: H1_IDLE_MS });
  }

  override createConnection(_options: ClientRequestArgs, done: (err: Error | null, socket?: Duplex) => void): undefined {
    this.open().then((tunnel) => done(null, socketLike(byteStream(tunnel))), (err: Error) => done(err));
    return undefined;
  }
}

/** What Node's HTTP agent and client call on a socket, for a tunnel: idle timeouts real, the rest no-ops. */
export function socketLike(stream: Duplex): Duplex {
  const s = stream as Duplex & { timeout?: number; setTimeout(ms: number, cb?: () => void): unknown; setKeepAlive(): unknown; setNoDelay(): unknown; ref(): unknown; unref(): unknown };
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    if (s.timeout) timer = setTimeout(() => s.emit('timeout'), s.timeout).unref();
  };
  // As net.Socket's: 0 turns the timeout off and takes the callback away again.
  s.setTimeout = (ms: number, cb?: () => void) => {
    s.timeout = ms;
    if (cb && ms === 0) s.removeListener('timeout', cb);
    else if (cb) s.once('timeout', cb);
    arm();
    return s;
  };
  s.on('data', arm);
  const write = s.write.bind(s) as (...args: unknown[]) => boolean;
  s.write = ((...args: unknown[]) => { arm(); return write(...args); }) as typeof s.write;
  s.on('close', () => clearTimeout(timer));
  s.setKeepAlive = () => s;
  s.setNoDelay = () => s;
  s.ref = () => s;
  s.unref = () => s;
  return s;
}

/** What a balancer may hash on; the query is parsed only if one asks for it (a getter on the class, not a literal's per request). */
class PickRequest {
  constructor(readonly headers: IncomingHttpHeaders, readonly sourceIp: string, private readonly path: string) {}
  get query(): URLSearchParams {
    return new URL(this.path, 'http://x').searchParams;
  }
}

/** One exchange with an upstream: the request body goes to `body`; the rest comes to the handlers. */
interface UpstreamCall {
  body: Writable;
  onResponse?: (status: number, headers: IncomingHttpHeaders, body: Readable) => void;
  onTrailers?: (trailers: IncomingHttpHeaders) => void;
  /** A failure; `refused`: the upstream refused the stream before reading any of it. */
  onError?: (err: Error, refused: boolean) => void;
  /** Cancels the exchange. */
  abort(): void;
  /** The response was read to its end. */
  done(): void;
}

/**
 * A request body on its way upstream: streamed as it arrives, with its first `limit` bytes kept
 * so that a retry can send it again once it has ended (Envoy's per-request buffer, likewise).
 */
class BodyTap {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private overflow = false;
  private ended = false;
  readonly empty: boolean;

  constructor(private readonly req: Req, limit: number, counted: (chunk: Buffer) => void) {
    const h = req.headers as IncomingHttpHeaders;
    // HTTP/1.1 says in its headers whether a body follows; HTTP/2 only once the stream ends.
    this.empty = 'stream' in req ? req.stream.endAfterHeaders : !h['transfer-encoding'] && (h['content-length'] === undefined || h['content-length'] === '0');
    // Paused until a try takes the body (pipe resumes it): listening alone would let it flow away.
    req.pause();
    req.on('data', (c: Buffer) => {
      counted(c);
      if (this.overflow) return;
      this.size += c.length;
      if (this.size > limit) {
        this.overflow = true;
        this.chunks.length = 0;
      } else this.chunks.push(c);
    });
    req.on('end', () => { this.ended = true; });
  }

  /** Whether the whole body is at hand, to be sent again. */
  get replayable(): boolean {
    return (this.empty || this.ended || this.req.readableEnded) && !this.overflow;
  }

  /** The first try: the live body, as it comes. */
  pipeTo(out: Writable): void {
    if (this.empty) out.end();
    else this.req.pipe(out);
  }

  /** A retry: what was kept. */
  replayTo(out: Writable): void {
    for (const c of this.chunks) out.write(c);
    out.end();
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

/** The request headers to send upstream: hop-by-hop and pseudo-headers dropped (`te: trailers` kept for HTTP/2), the operations applied. */
function forwardHeaders(from: IncomingHttpHeaders, h2req: boolean, ...ops: (HeaderOps | undefined)[]): OutgoingHttpHeaders {
  const headers: Record<string, string | string[] | undefined> = {};
  for (const [k, v] of Object.entries(from)) if (!HOP_BY_HOP.has(k) && !k.startsWith(':')) headers[k] = v;
  if (h2req && from.te === 'trailers') headers.te = 'trailers';
  for (const o of ops) applyHeaderOps(headers, o);
  return headers as OutgoingHttpHeaders;
}

function stripPseudo(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':')) out[k] = v;
  return out;
}

/** The route's retries (or Istio's default when the route names none) as a policy. */
function retryPolicy(action: ForwardAction, random: () => number, consistentHash: boolean): RetryPolicy {
  const r = action.retries;
  if (!r) return new RetryPolicy({ attempts: 0 }, { random });
  return new RetryPolicy({
    attempts: r.attempts,
    ...(r.perTryTimeoutMs ? { perTryTimeout: `${r.perTryTimeoutMs}ms` } : {}),
    ...(r.backoffMs ? { backoff: `${r.backoffMs}ms` } : {}),
    ...(r.ignorePreviousHosts !== undefined ? { retryIgnorePreviousHosts: r.ignorePreviousHosts } : {}),
    retryOn: [...r.retryOn, ...r.retriableStatusCodes.map(String)].join(','),
  }, { random, consistentHash });
}

/**
 * Resets a tunnel stream, never from inside the session's read: this code runs in 'data'
 * handlers, and Node 20's http2 resetting a stream while nghttp2 is still processing the
 * incoming bytes can spin in SendPendingData until the process dies of std::bad_alloc (Node
 * issue #64113, fixed upstream by deferring the reset).
 */
function resetLater(stream: ServerHttp2Stream, code: number): void {
  setImmediate(() => { if (!stream.destroyed) stream.close(code); });
}

/**
 * Ends a tunnel with a plain HTTP/1.1 answer of the waypoint's own, then resets the stream with
 * NO_ERROR once the answer is out (RFC 9113 8.1: the rest of the request is not wanted), so that
 * a peer still sending is not read any further.
 */
function answerAndClose(stream: ServerHttp2Stream, status: number, text: string, body: string): void {
  if (stream.destroyed) return;
  if (stream.writableEnded) return closeTunnel(stream);
  const head = `HTTP/1.1 ${status} ${text}\r\ncontent-type: text/plain\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n`;
  stream.end(Buffer.from(head + body), () => resetLater(stream, h2.NGHTTP2_NO_ERROR));
}

/** Ends a tunnel without a word: END_STREAM, then a NO_ERROR reset so that the peer's side closes too. */
function closeTunnel(stream: ServerHttp2Stream): void {
  if (stream.destroyed) return;
  if (stream.writableEnded) resetLater(stream, h2.NGHTTP2_NO_ERROR);
  else stream.end(() => resetLater(stream, h2.NGHTTP2_NO_ERROR));
}

/**
 * Resets a tunnel with CONNECT_ERROR (RFC 9113 8.5, the TCP stream failed), which the caller's
 * node agent turns into a TCP reset for the app: a plain destroy would reset it with NO_ERROR,
 * which reads as neither an end nor a failure.
 */
function resetTunnel(stream: ServerHttp2Stream): void {
  resetLater(stream, h2.NGHTTP2_CONNECT_ERROR);
}

/**
 * The HTTP/1.1 machinery writes strings with encodings; an HTTP/2 stream mangles such writes
 * when they come batched (writev). This duplex hands it Buffers only.
 */
export function byteStream(stream: Duplex): Duplex {
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
