/**
 * An ingress gateway's listeners: the ports its servers name, opened and closed as config
 * changes, facing clients outside the mesh. Per connection, by the port's kind
 * (./servers.ts):
 * - `http`: plaintext HTTP/1.1, or HTTP/2 with prior knowledge (its preface), the server picked
 *   per request by the Host header;
 * - `tls`: the ClientHello is read (bounded, timed) for its SNI, which picks the server; a
 *   PASSTHROUGH server's bytes go on untouched to the destination its tls routes name, the
 *   others are terminated with the server's certificate (MUTUAL: a client certificate is
 *   required and verified in the handshake) and carry HTTP/1.1 or HTTP/2 by ALPN (a TLS-protocol
 *   server: TCP, by its tcp routes);
 * - `tcp`: the bytes go to the destination of the VirtualService's tcp rules.
 * HTTP requests are then the waypoint proxy's (`serveIngress`): routed by the gateway's routes,
 * sent over HBONE with the gateway's identity, reported per request. Streams (passthrough,
 * TCP) go over HBONE too (`forwardStream`), one access-log line each.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createH2Server, type Http2Server, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { silentLogger } from '../../telemetry/log.js';
import { H2_PREFACE, HEADERS_TIMEOUT_MS, MAX_H2_STREAMS, MAX_HEADER_BYTES, MAX_HEADERS } from '../detect.js';
import type { Res } from '../exchange.js';
import { byteStream, type WaypointProxy } from '../proxy.js';
import type { Destination, RouteAction } from '../routing/types.js';
import type { GatewayRoutes, StreamTarget } from './routes.js';
import { hostScore, serverFor, serversFor, type IngressServer, type PortPlan } from './servers.js';
import { ContextStore, MAX_CLIENT_HELLO_BYTES, parseClientHello, type CertificateInfo, type SecretValue, type ServerContext } from './tls.js';

/** What the gateway serves at one config version. */
export interface GatewayState {
  version: string;
  /** Listeners by port. */
  plans: ReadonlyMap<number, PortPlan>;
  routes: GatewayRoutes;
  /** Secrets by `namespace/name`. */
  secrets: ReadonlyMap<string, SecretValue>;
}

export interface IngressListenersOptions {
  proxy: WaypointProxy;
  /** Where listeners bind: `::` (both families) by default, `0.0.0.0` where IPv6 is off. */
  host?: string;
  log?: Logger;
  /** One line per passed-through or TCP stream. */
  accessLog?: Logger;
  /** Istio's TCP metrics of a stream: told when its tunnel is open; what it returns, how it ended (bytes each way). */
  streamMetrics?: (s: { destination: Destination; upstream: string }) => { end(received: number, sent: number): void };
  /** How long a client may take to send its ClientHello, or an HTTP/2 preface's first bytes (default 10 s). */
  helloTimeoutMs?: number;
  /** How long a TLS handshake may take (default 10 s). */
  handshakeTimeoutMs?: number;
  /** A connection with no bytes either way for this long is closed (default 5 min; streams 1 h, Envoy's TCP default). */
  idleTimeoutMs?: number;
  streamIdleTimeoutMs?: number;
  /** Connections per listener (default 10,000). */
  maxConnections?: number;
}

/** A server's state, for readiness and the admin: served, or why not. */
export interface ServerStatus { id: string; port: number; protocol: string; hosts: string[]; tls?: string; served: boolean; problem?: string; certificate?: CertificateInfo }

/** Per accepted connection: where it came in and, once TLS picked it, the server. */
interface Conn { port: number; clientIp: string; localIp: string; scheme: 'http' | 'https'; server?: IngressServer; sni?: string; peerIdentity?: string }

export class IngressListeners {
  private state?: GatewayState;
  private readonly log: Logger;
  private readonly listeners = new Map<number, Server>();
  /** Ports that could not be bound, with the error. */
  readonly bindErrors = new Map<number, string>();
  /** Servers not served, with why (a missing or bad Secret). */
  private problems = new Map<string, string>();
  private readonly contexts = new ContextStore();
  private readonly served = new Map<string, ServerContext>();
  private readonly http: HttpServer;
  private readonly h2: Http2Server;
  private readonly conns = new WeakMap<object, Conn>();
  /** The connection an HTTP/2 session is being made for (the server's 'session' event runs synchronously). */
  private nextH2?: Conn;
  private readonly sockets = new Set<Duplex>();

  constructor(private readonly opts: IngressListenersOptions) {
    this.log = opts.log ?? silentLogger;
    this.http = createHttpServer({ keepAlive: true, maxHeaderSize: MAX_HEADER_BYTES, headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 300_000, connectionsCheckingInterval: 1_000 }, (req, res) => this.request(req, res));
    this.http.maxHeadersCount = MAX_HEADERS + 1;
    // It never listens (connections are handed to it): 'listening' starts the tracking that enforces headersTimeout.
    this.http.emit('listening');
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
      this.log.debug({ err: err.code ?? err.message }, 'HTTP/1.1 request refused by the parser');
      if (socket.writable && !(socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) socket.end(`HTTP/1.1 ${status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
      socket.destroy();
    });
    this.h2 = createH2Server({
      maxHeaderListPairs: MAX_HEADERS + 4,
      settings: { maxConcurrentStreams: MAX_H2_STREAMS, maxHeaderListSize: MAX_HEADER_BYTES, enablePush: false },
    }, (req, res) => this.request(req, res));
    this.h2.on('session', (session: ServerHttp2Session) => {
      if (this.nextH2) this.conns.set(session, this.nextH2);
      this.nextH2 = undefined;
      session.setTimeout(this.opts.idleTimeoutMs ?? 300_000, () => session.close());
      session.on('error', (err) => this.log.debug({ err: err.message }, 'downstream HTTP/2 session error'));
    });
  }

  /** The config: certificates (re)built for the servers that terminate TLS, listeners opened and closed. */
  async update(state: GatewayState): Promise<void> {
    this.state = state;
    const problems = new Map<string, string>();
    const ids = new Set<string>();
    this.served.clear();
    for (const plan of state.plans.values()) {
      for (const s of plan.servers) {
        ids.add(s.id);
        if (!s.tls || s.tls.mode === 'PASSTHROUGH') continue;
        const ctx = this.contexts.contextFor(s, state.secrets);
        if (ctx instanceof Error) problems.set(s.id, ctx.message);
        else this.served.set(s.id, ctx);
      }
    }
    this.contexts.retain(ids);
    // A clear line when a server stops (or starts again) being served; not again while it stays so.
    for (const [id, why] of problems) if (this.problems.get(id) !== why) this.log.warn({ server: id, version: state.version }, `server not served: ${why}`);
    for (const id of this.problems.keys()) if (!problems.has(id) && ids.has(id)) this.log.info({ server: id, version: state.version }, 'server served again');
    this.problems = problems;
    for (const [port, server] of this.listeners) {
      if (state.plans.has(port)) continue;
      // Stops accepting; connections made finish as they go.
      server.close();
      this.listeners.delete(port);
      this.log.info({ port }, 'listener closed');
    }
    for (const port of this.bindErrors.keys()) if (!state.plans.has(port)) this.bindErrors.delete(port);
    await Promise.all([...state.plans.keys()].filter((p) => !this.listeners.has(p)).map((p) => this.open(p)));
  }

  /** The ports listened on. */
  get ports(): number[] {
    return [...this.listeners.keys()].sort((a, b) => a - b);
  }

  /** Every configured server, served or why not; and the ports that could not be bound. */
  status(): { servers: ServerStatus[]; bindErrors: { port: number; error: string }[] } {
    const servers: ServerStatus[] = [];
    for (const plan of this.state?.plans.values() ?? []) {
      for (const s of plan.servers) {
        const problem = this.problems.get(s.id) ?? this.bindErrors.get(s.port);
        const ctx = this.served.get(s.id);
        servers.push({
          id: s.id, port: s.port, protocol: s.protocol, hosts: s.hosts.map((h) => (h.namespace === '*' ? h.host : `${h.namespace}/${h.host}`)),
          ...(s.tls ? { tls: s.tls.mode } : {}), served: problem === undefined, ...(problem ? { problem } : {}), ...(ctx ? { certificate: ctx.info } : {}),
        });
      }
    }
    return { servers, bindErrors: [...this.bindErrors].map(([port, error]) => ({ port, error })) };
  }

  async close(): Promise<void> {
    for (const s of this.listeners.values()) s.close();
    this.listeners.clear();
    for (const s of this.sockets) s.destroy();
    this.http.close();
    this.h2.close();
  }

  // -------------------------------------------------------------------------------------------

  private async open(port: number): Promise<void> {
    const server = createServer((socket) => this.accept(port, socket));
    server.maxConnections = this.opts.maxConnections ?? 10_000;
    const listen = (host: string) => new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host, ...(host === '::' ? { ipv6Only: false } : {}) }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const host = this.opts.host ?? '::';
    try {
      await listen(host).catch(async (err: NodeJS.ErrnoException) => {
        // No IPv6 in this network namespace: IPv4 only.
        if (this.opts.host === undefined && (err.code === 'EAFNOSUPPORT' || err.code === 'EADDRNOTAVAIL')) return listen('0.0.0.0');
        throw err;
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      this.bindErrors.set(port, `cannot listen on port ${port}: ${e.code ?? e.message}`);
      this.log.error({ port, err: e.message }, 'listener not opened: its servers are not served');
      return;
    }
    server.on('error', (err) => this.log.warn({ port, err: err.message }, 'listener error'));
    this.bindErrors.delete(port);
    this.listeners.set(port, server);
    this.log.info({ port, kind: this.state?.plans.get(port)?.kind }, 'listener open');
  }

  private accept(port: number, socket: Socket): void {
    const plan = this.state?.plans.get(port);
    socket.on('error', (err) => this.log.debug({ port, err: err.message }, 'downstream connection error'));
    if (!plan) return void socket.destroy();
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    const conn: Conn = {
      port, clientIp: (socket.remoteAddress ?? '').replace(/^::ffff:/, ''), localIp: (socket.localAddress ?? '').replace(/^::ffff:/, ''), scheme: plan.kind === 'tls' ? 'https' : 'http',
    };
    if (plan.kind === 'tls') {
      this.sniff(socket, MAX_CLIENT_HELLO_BYTES, (buf) => {
        const hello = parseClientHello(buf);
        if (hello.kind === 'wait') return undefined;
        if (hello.kind === 'bad') {
          this.log.info({ port, client: conn.clientIp, reason: hello.reason }, 'not a usable ClientHello: connection closed');
          return null;
        }
        return () => this.tlsConnection(socket, buf, plan, conn, hello.sni);
      }, 'ClientHello');
    } else if (plan.kind === 'http') {
      this.sniff(socket, H2_PREFACE.length, (buf) => {
        const n = Math.min(buf.length, H2_PREFACE.length);
        const maybeH2 = buf.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (maybeH2 && buf.length < H2_PREFACE.length) return undefined;
        return () => this.httpConnection(socket, buf, conn, maybeH2);
      }, 'request');
    } else {
      const server = plan.servers[0]!;
      socket.setTimeout(this.opts.streamIdleTimeoutMs ?? 3_600_000, () => socket.destroy());
      this.stream(socket, Buffer.alloc(0), conn, server, this.state?.routes.tcpTarget(server), undefined);
    }
  }

  /**
   * Holds a connection's first bytes (at most `max`, for at most helloTimeoutMs) until `decide`
   * knows what they are: undefined waits, null closes, a function takes the connection over.
   */
  private sniff(socket: Socket, max: number, decide: (buf: Buffer) => (() => void) | null | undefined, what: string): void {
    let buf: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.off('data', onData);
      this.log.debug({ client: socket.remoteAddress, bytes: buf.length }, `no ${what} in time: connection closed`);
      socket.destroy();
    }, this.opts.helloTimeoutMs ?? 10_000);
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      const next = decide(buf);
      if (next === undefined && buf.length < max) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.pause();
      if (!next) return void socket.destroy();
      next();
    };
    socket.on('data', onData);
    socket.once('close', () => clearTimeout(timer));
  }

  /** A TLS connection whose ClientHello (`head`) named `sni`: passed through, or terminated with its server's certificate. */
  private tlsConnection(socket: Socket, head: Buffer, plan: PortPlan, conn: Conn, sni: string | undefined): void {
    const server = serverFor(plan.servers, sni);
    if (!server) {
      this.log.info({ port: plan.port, client: conn.clientIp, sni: sni ?? null }, 'no server for this SNI: connection closed');
      return void socket.destroy();
    }
    conn.server = server;
    if (sni) conn.sni = sni;
    if (server.tls?.mode === 'PASSTHROUGH') {
      socket.setTimeout(this.opts.streamIdleTimeoutMs ?? 3_600_000, () => socket.destroy());
      return this.stream(socket, head, conn, server, this.state?.routes.tlsTarget(server, sni), sni);
    }
    const ctx = this.served.get(server.id);
    if (!ctx) {
      this.log.info({ server: server.id, client: conn.clientIp, why: this.problems.get(server.id) }, 'server not served: connection closed');
      return void socket.destroy();
    }
    // The bytes read go first, through a stream of JS (a socket's handle would skip them).
    const raw = byteStream(socket);
    raw.unshift(head);
    raw.on('error', () => socket.destroy());
    const tls = new TLSSocket(raw as unknown as Socket, {
      isServer: true, secureContext: ctx.context, requestCert: ctx.requestCert, rejectUnauthorized: ctx.requireCert,
      ALPNProtocols: server.protocol === 'TLS' ? [] : ['h2', 'http/1.1'],
    });
    this.sockets.add(tls);
    tls.once('close', () => this.sockets.delete(tls));
    const timer = setTimeout(() => {
      this.log.info({ server: server.id, client: conn.clientIp }, 'TLS handshake not done in time: connection closed');
      tls.destroy();
    }, this.opts.handshakeTimeoutMs ?? 10_000);
    tls.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      this.log.info({ server: server.id, client: conn.clientIp, err: err.code ?? err.message }, 'TLS connection failed');
      socket.destroy();
    });
    tls.once('close', () => {
      clearTimeout(timer);
      socket.destroy();
    });
    tls.once('secure', () => {
      clearTimeout(timer);
      // A client certificate is verified against the server's CA here: OpenSSL refuses a missing
      // one in the handshake (MUTUAL), Node's TLS leaves a bad one to the server that made the
      // socket (a tls.Server does this check; this socket has none). OPTIONAL_MUTUAL: no
      // certificate is fine, one that does not verify is not.
      if (ctx.requestCert) {
        const presented = Object.keys(tls.getPeerCertificate()).length > 0;
        const verifyError = (tls as unknown as { _handle?: { verifyError(): (Error & { code?: string }) | null } })._handle?.verifyError();
        if ((presented || ctx.requireCert) && (verifyError || !presented)) {
          this.log.info({ server: server.id, client: conn.clientIp, err: verifyError?.code ?? verifyError?.message ?? 'no certificate' }, 'client certificate refused: connection closed');
          return void tls.destroy();
        }
        const id = presented ? spiffeUri(tls.getPeerCertificate().subjectaltname) : undefined;
        if (id) conn.peerIdentity = id;
      }
      if (server.protocol === 'TLS') {
        tls.setTimeout(this.opts.streamIdleTimeoutMs ?? 3_600_000, () => tls.destroy());
        return this.stream(tls, Buffer.alloc(0), conn, server, this.state?.routes.tcpTarget(server, sni), sni);
      }
      tls.setTimeout(this.opts.idleTimeoutMs ?? 300_000, () => tls.destroy());
      this.handToHttp(tls, conn, tls.alpnProtocol === 'h2');
    });
    socket.resume();
  }

  /** A plaintext HTTP connection: `head` read already (the HTTP/2 preface, or the start of a request). */
  private httpConnection(socket: Socket, head: Buffer, conn: Conn, h2c: boolean): void {
    socket.setTimeout(this.opts.idleTimeoutMs ?? 300_000, () => socket.destroy());
    socket.unshift(head);
    this.handToHttp(socket, conn, h2c);
    socket.resume();
  }

  private handToHttp(socket: Duplex, conn: Conn, h2: boolean): void {
    if (h2) {
      this.nextH2 = conn;
      // Through a plain stream: a server-side TLSSocket made without a tls.Server never stops
      // `secureConnecting`, which the HTTP/2 session waits on, and a TCP socket's handle would
      // be read natively, past the bytes read already and put back.
      this.h2.emit('connection', byteStream(socket));
      this.nextH2 = undefined;
    } else {
      this.conns.set(socket, conn);
      this.http.emit('connection', socket);
    }
  }

  /** One HTTP request: its server (the connection's, or by Host), the forwarding headers, then the proxy. */
  private request(req: IncomingMessage | Http2ServerRequest, res: ServerResponse | Http2ServerResponse): void {
    const h2req = 'stream' in req;
    const conn = h2req ? this.conns.get(req.stream.session!) : this.conns.get(req.socket);
    const state = this.state;
    const proxy = this.opts.proxy;
    const headers = req.headers;
    const authority = String((h2req ? headers[':authority'] : undefined) ?? headers.host ?? '');
    const host = authority.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '').toLowerCase();
    if (!conn || !state) {
      res.writeHead(503).end('no config yet\n');
      return;
    }
    const plan = state.plans.get(conn.port);
    // A terminated connection's server was picked by SNI; its Host must be one of the server's
    // hosts (Envoy's virtual hosts of that server), else no route.
    const server = conn.server ?? (plan ? serverFor(plan.servers, host) : undefined);
    const served = server !== undefined && server.hosts.some((h) => hostScore(h.host, host) >= 0);
    // As Envoy at the edge: the client's address appended to X-Forwarded-For, the scheme it used.
    const xff = headers['x-forwarded-for'];
    headers['x-forwarded-for'] = xff ? `${String(xff)}, ${conn.clientIp}` : conn.clientIp;
    headers['x-forwarded-proto'] = conn.scheme;
    headers['x-envoy-external-address'] = conn.clientIp;
    let route: (r: { method: string; path: string; authority: string; headers: Record<string, string | string[] | undefined> }) => RouteAction;
    if (!served) route = () => ({ kind: 'no-route' });
    else if (server.httpsRedirect) {
      route = (r) => ({ kind: 'redirect', route: `${server.id} httpsRedirect`, status: 301, location: `https://${authority.replace(/:\d+$/, '')}${r.path}` });
    } else {
      // A plaintext port's servers that serve this host (not redirecting), the most specific first.
      const servers = conn.server ? [server] : serversFor(plan?.servers ?? [], host);
      route = (r) => state.routes.route(servers, host, { ...r, scheme: conn.scheme });
    }
    void proxy.serveIngress(req, res as unknown as Res, { clientIp: conn.clientIp, localIp: conn.localIp, port: conn.port, route, ...(conn.peerIdentity ? { peerIdentity: conn.peerIdentity } : {}) }).catch((err: Error) => {
      this.log.warn({ err: err.message }, 'ingress request failed');
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  }

  /** A passed-through TLS or TCP connection to its route's destination over HBONE, or closed when it has none. */
  private stream(socket: Duplex, head: Buffer, conn: Conn, server: IngressServer, target: StreamTarget | undefined, sni: string | undefined): void {
    // Held until the tunnel is open (the pipe lets it flow): nothing read before is lost.
    socket.pause();
    const start = Date.now();
    let bytesIn = head.length;
    let bytesOut = 0;
    const line = (fields: Record<string, unknown>) => this.opts.accessLog?.info({
      timestamp: new Date(start).toISOString(), source: { ip: conn.clientIp }, listener: { port: conn.port, server: server.id, sni: sni ?? null },
      route: target?.route ?? null, destination: target ? { service: `${target.destination.service.name}.${target.destination.service.namespace}`, port: target.destination.port } : null, ...fields,
    }, 'stream');
    if (!target) {
      line({ response: { flags: 'NR' } });
      this.log.info({ server: server.id, client: conn.clientIp, sni: sni ?? null }, 'no tls/tcp route: connection closed');
      return void socket.destroy();
    }
    socket.on('data', (c: Buffer) => { bytesIn += c.length; });
    const dest: Destination = target.destination;
    this.opts.proxy.forwardStream(socket, head, dest, conn.clientIp).then((upstream) => {
      const write = socket.write.bind(socket) as (...a: unknown[]) => boolean;
      socket.write = ((chunk: Buffer, ...rest: unknown[]) => { bytesOut += chunk.length; return write(chunk, ...rest); }) as typeof socket.write;
      const counted = this.opts.streamMetrics?.({ destination: dest, upstream });
      socket.once('close', () => {
        counted?.end(bytesIn, bytesOut);
        line({ upstream, response: { flags: '-', bytes_received: bytesIn, bytes_sent: bytesOut, duration_ms: Date.now() - start } });
      });
      socket.resume();
    }, (err: Error) => {
      line({ response: { flags: 'UF', error: err.message } });
      this.log.info({ server: server.id, destination: `${dest.service.namespace}/${dest.service.name}`, err: err.message }, 'stream upstream unreachable: connection closed');
      socket.destroy();
    });
  }
}

/** The first `spiffe://` URI SAN of a certificate's subjectAltName text (`URI:spiffe://..., DNS:...`), as Envoy takes a peer's principal. */
export function spiffeUri(subjectAltName: string | undefined): string | undefined {
  for (const part of (subjectAltName ?? '').split(/,\s*/)) {
    const m = /^URI:(spiffe:\/\/[^\s,"]{1,2048})$/.exec(part);
    if (m) return m[1];
  }
  return undefined;
}
