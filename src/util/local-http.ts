/**
 * Hardened HTTP servers for ambit's local endpoints (the node agent's admin, metrics, health and
 * control socket; the controller's and the waypoint's health and metrics; the local runtime's
 * socket). Every byte that reaches them may be hostile, so one place bounds them:
 *
 * - the request line and headers are bounded (16 KiB: 431), headers must arrive within 10 s and
 *   the whole request within 30 s (408; a slow client is closed, checked every 250 ms), an idle
 *   keep-alive connection is closed after 5 s, any connection silent for 30 s (unless the endpoint
 *   answers slowly on purpose), at most 100 requests per connection and 256 connections at once;
 * - the request target is parsed here, never by `new URL` or `decodeURIComponent` in a handler:
 *   only origin-form (`/path?query`) with the characters RFC 3986 allows, at most 4 KiB (414),
 *   each path segment percent-decoded as UTF-8 — anything else is a 400 that says what was wrong;
 * - a handler that throws or rejects answers 500 and is logged with the request's context and the
 *   stack; the process goes on serving (an HttpError answers its own status instead);
 * - a unix socket is created mode 0600 with no moment at which it is wider.
 */
import { chmodSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';

export interface LocalHttpLimits {
  /** Bytes of request line plus headers. */
  maxHeaderBytes: number;
  /** Bytes of the request target (path and query). */
  maxTargetBytes: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** A connection silent this long while its answer is pending or unread is closed; 0: never (long operations). */
  idleTimeoutMs: number;
  maxRequestsPerSocket: number;
  maxConnections: number;
}

export const DEFAULT_LIMITS: Readonly<LocalHttpLimits> = {
  maxHeaderBytes: 16 * 1024,
  maxTargetBytes: 4 * 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 30_000,
  maxRequestsPerSocket: 100,
  maxConnections: 256,
};

/** A request as handlers see it: the target already parsed, so they never parse it themselves. */
export interface LocalRequest {
  method: string;
  /** The path as sent (still percent-encoded): match fixed routes on it. */
  path: string;
  /** The path's segments, each percent-decoded: take parameters from these. */
  segments: string[];
  query: URLSearchParams;
  raw: IncomingMessage;
}

export type LocalHandler = (req: LocalRequest, res: ServerResponse) => void | Promise<void>;

/** Thrown by a handler (or the target parser) to answer `status` with `message`. */
export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'HttpError';
  }
}

export interface LocalServerOptions {
  /** Which endpoint this is, for the log ("admin", "control socket"). */
  name: string;
  log: Logger;
  /** Answers as JSON `{error}` (true) or as a text line. */
  json?: boolean;
  limits?: Partial<LocalHttpLimits>;
}

// RFC 3986: pchar = unreserved / pct-encoded / sub-delims / ":" / "@"; a query adds "/" and "?".
const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$/;
const QUERY_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;
const BAD_PERCENT = /%(?![0-9A-Fa-f]{2})/;

function firstBad(text: string, allowed: RegExp): string {
  for (const ch of text) if (!allowed.test(ch)) return ch;
  return '';
}

/** Never throws: what the target is, or the HttpError that answers it. */
export function parseTarget(target: string | undefined, maxBytes = DEFAULT_LIMITS.maxTargetBytes): { path: string; segments: string[]; query: URLSearchParams } | HttpError {
  const raw = target ?? '';
  const shown = JSON.stringify(raw.length > 64 ? `${raw.slice(0, 64)}…` : raw);
  if (Buffer.byteLength(raw) > maxBytes) return new HttpError(414, `request target of ${Buffer.byteLength(raw)} bytes, over ${maxBytes}`);
  if (!raw.startsWith('/')) return new HttpError(400, `request target must be a path starting with "/" (origin-form), got ${shown}`);
  if (raw.startsWith('//')) return new HttpError(400, `request target must not start with "//", got ${shown}`);
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const search = q < 0 ? '' : raw.slice(q + 1);
  if (!PATH_CHARS.test(path)) return new HttpError(400, `request path has ${JSON.stringify(firstBad(path, /[A-Za-z0-9\-._~!$&'()*+,;=:@/%]/))}, which a path cannot hold: ${shown}`);
  if (!QUERY_CHARS.test(search)) return new HttpError(400, `request query has ${JSON.stringify(firstBad(search, /[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]/))}, which a query cannot hold: ${shown}`);
  if (BAD_PERCENT.test(raw)) return new HttpError(400, `request target has a "%" not followed by two hex digits: ${shown}`);
  const segments: string[] = [];
  for (const s of path.slice(1).split('/')) {
    try {
      segments.push(decodeURIComponent(s));
    } catch {
      return new HttpError(400, `request path segment ${JSON.stringify(s)} is not percent-encoded UTF-8`);
    }
  }
  // Every "%XX" is well formed by now, and URLSearchParams decodes bad UTF-8 to U+FFFD rather than throw.
  return { path, segments, query: new URLSearchParams(search) };
}

function reply(res: ServerResponse, status: number, message: string, json: boolean): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = json ? `${JSON.stringify({ error: message })}\n` : `${message}\n`;
  res.writeHead(status, { 'content-type': json ? 'application/json' : 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** What a malformed request (refused by Node's parser before any handler) is answered. */
function clientErrorAnswer(err: NodeJS.ErrnoException, limits: LocalHttpLimits): { status: number; message: string } {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW': return { status: 431, message: `request line and headers over ${limits.maxHeaderBytes} bytes` };
    case 'ERR_HTTP_REQUEST_TIMEOUT': return { status: 408, message: `request not complete within ${limits.requestTimeoutMs} ms (headers within ${limits.headersTimeoutMs} ms)` };
    default: return { status: 400, message: `malformed HTTP request (${err.code ?? err.message})` };
  }
}

/** An HTTP server for a local endpoint with the limits, target parsing and handler guard above. */
export function localServer(opts: LocalServerOptions, handler: LocalHandler): Server {
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const json = opts.json ?? false;
  const log = opts.log.child({ endpoint: opts.name });
  const server = createServer({
    maxHeaderSize: limits.maxHeaderBytes,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node checks the two timeouts above only this often (30 s by default).
    connectionsCheckingInterval: 250,
  }, (req, res) => {
    const target = parseTarget(req.url, limits.maxTargetBytes);
    if (target instanceof HttpError) {
      log.debug({ method: req.method, status: target.status, reason: target.message }, 'request refused');
      reply(res, target.status, target.message, json);
      return;
    }
    const context = () => ({ method: req.method, path: target.path, remote: req.socket.remoteAddress ?? 'unix socket' });
    const fail = (err: unknown) => {
      if (err instanceof HttpError) return reply(res, err.status, err.message, json);
      // The client went away (timed out, reset) while the handler read or waited: nobody to answer.
      if (req.socket.destroyed) {
        log.debug({ ...context(), err: err instanceof Error ? err.message : String(err) }, 'client gone before the answer');
        return;
      }
      // A bug in ambit: the request gets a 500 and the log gets the stack, the endpoint stays up.
      log.error({ ...context(), err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, 'request handler failed');
      reply(res, 500, `internal error: ${err instanceof Error ? err.message : String(err)}`, json);
    };
    try {
      const done = handler({ method: req.method ?? '', ...target, raw: req }, res);
      if (done) done.catch(fail);
    } catch (err) {
      fail(err);
    }
  });
  server.maxRequestsPerSocket = limits.maxRequestsPerSocket;
  server.maxConnections = limits.maxConnections;
  // A connection that stays silent (mid-body, or never reading the answer) is closed too.
  server.timeout = limits.idleTimeoutMs;
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const { status, message } = clientErrorAnswer(err, limits);
    log.debug({ code: err.code, status }, 'malformed request refused');
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const body = json ? `${JSON.stringify({ error: message })}\n` : `${message}\n`;
    socket.end(`HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Bad Request'}\r\nconnection: close\r\ncontent-type: ${json ? 'application/json' : 'text/plain; charset=utf-8'}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  // Once listening, an error here is a failed accept (EMFILE when the process is out of file
  // descriptors): the endpoint goes on with the connections it can take, the agent does not die.
  server.on('error', (err: NodeJS.ErrnoException) => {
    if (server.listening) log.warn({ code: err.code, err: err.message }, 'accepting a connection failed');
  });
  // CONNECT is for proxies; without this listener Node would drop the socket without a word.
  server.on('connect', (req: IncomingMessage, socket: Socket) => {
    const body = json ? `${JSON.stringify({ error: 'CONNECT is not served here' })}\n` : 'CONNECT is not served here\n';
    socket.on('error', () => socket.destroy());
    socket.end(`HTTP/1.1 405 Method Not Allowed\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  return server;
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 408: 'Request Timeout', 431: 'Request Header Fields Too Large' };

/** Answers `body` as JSON. */
export function sendJson(res: ServerResponse, status: number, body: unknown, pretty = false): void {
  const text = `${JSON.stringify(body, null, pretty ? 2 : undefined)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Listens on a TCP address; rejects with the listen error (EADDRINUSE, EACCES). */
export function listenTcp(server: Server, port: number, host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    server.once('error', reject).listen(port, host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

// sockaddr_un's sun_path holds 107 bytes and a NUL.
const MAX_SOCKET_PATH = 107;

const STAGING = '.ambit-sock-';
/** A staging directory this old was left by a process killed while binding (binding takes milliseconds). */
const STALE_STAGING_MS = 60_000;

/** A socket path longer than a unix socket address holds. */
export class SocketPathTooLongError extends Error {
  override readonly name = 'SocketPathTooLongError';
}

/** Removes the staging directories (named `prefix…`) of processes that died between binding and renaming. */
function removeStaleStaging(parent: string, prefix: string, maxAgeMs: number): void {
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return; // mkdtemp below says what is wrong with the directory
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const dir = join(parent, name);
    try {
      if (Date.now() - statSync(dir).mtimeMs >= maxAgeMs) rmSync(dir, { recursive: true, force: true });
    } catch {
      // gone meanwhile: another process cleaned it up
    }
  }
}

/**
 * Listens on a unix socket at `path`, mode 0600 from its first moment: it is bound inside a fresh
 * 0700 directory beside `path` (`.ambit-sock-XXXXXX`), made 0600, then renamed over `path`
 * (which also replaces a stale socket atomically). Only root (or the owner) can connect. Staging
 * directories left by a process killed while binding are removed here.
 */
export async function listenUnix<S extends NetServer>(server: S, path: string, opts: {
  /** The staging directories' prefix (default `.ambit-sock-`). */
  staging?: string;
  /** Staging directories at least this old are a dead process's (default 60 s; 0 where only this process binds). */
  stagingMaxAgeMs?: number;
} = {}): Promise<S> {
  const prefix = opts.staging ?? STAGING;
  removeStaleStaging(dirname(path), prefix, opts.stagingMaxAgeMs ?? STALE_STAGING_MS);
  const dir = mkdtempSync(join(dirname(path), prefix));
  const temp = join(dir, 's');
  try {
    const need = Math.max(Buffer.byteLength(path), Buffer.byteLength(temp));
    if (need > MAX_SOCKET_PATH) throw new SocketPathTooLongError(`socket path ${path} is too long: a unix socket path holds ${MAX_SOCKET_PATH} bytes, binding this one needs ${need}`);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject).listen(temp, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(temp, 0o600);
    renameSync(temp, path);
  } catch (err) {
    if (server.listening) server.close();
    throw err;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return server;
}
