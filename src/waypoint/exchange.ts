/**
 * One request through the waypoint, as the proxy's stages pass it along (src/waypoint/proxy.ts):
 * the downstream request and response, the record the access log and the metrics get, the
 * request's span, and how it ends — a local answer (`reply`) or the upstream's (`finish`). Ending
 * is idempotent: the first end wins, so a route timeout and a late upstream answer report once.
 */
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import type { Writable } from 'node:stream';
import type { Service } from '../config/model.js';
import type { Span } from '../telemetry/tracing.js';

/** What the proxy needs of a downstream request, HTTP/1.1 or HTTP/2. */
export type Req = IncomingMessage | Http2ServerRequest;
/** What the proxy needs of a downstream response, HTTP/1.1 or HTTP/2. */
export interface Res extends Writable {
  headersSent: boolean;
  statusCode: number;
  writeHead(status: number, headers?: OutgoingHttpHeaders): unknown;
  setHeader(name: string, value: string | string[]): unknown;
  /** HTTP/2 only. */
  addTrailers?(trailers: OutgoingHttpHeaders): void;
}

/** One request as the access log and metrics see it. */
export interface RequestRecord {
  id: string;
  start: number;
  method: string;
  path: string;
  authority: string;
  /** 'HTTP/1.1' or 'HTTP/2'. */
  protocol: string;
  /** A gRPC request (content-type application/grpc...). */
  grpc: boolean;
  /** The gRPC status the answer carried (trailers, or headers of a trailers-only answer). */
  grpcStatus?: string;
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
  /** gRPC messages in the request and in the response (gRPC only). */
  requestMessages?: number;
  responseMessages?: number;
  durationMs?: number;
  /** Tries made (1 + retries). */
  attempts: number;
  /** What authorization decided, when a policy applied. */
  authz?: string;
  /** The request's trace (W3C ids), when tracing is on. */
  traceId?: string;
  spanId?: string;
}

/**
 * Counts gRPC's length-prefixed messages (a flag byte, a 4-byte big-endian length, the payload)
 * in a body as its chunks pass, wherever the chunks split them.
 */
export class GrpcMessages {
  count = 0;
  /** Header bytes of the current message read so far (0-4; 5 completes it). */
  private header = 0;
  private length = 0;
  /** Payload bytes of the current message still to come. */
  private remaining = 0;

  feed(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) this.count++;
        continue;
      }
      if (this.header > 0) this.length = this.length * 256 + chunk[i]!;
      this.header++;
      i++;
      if (this.header === 5) {
        if (this.length === 0) this.count++;
        else this.remaining = this.length;
        this.header = 0;
        this.length = 0;
      }
    }
  }
}

export class Exchange {
  private ended = false;

  constructor(
    readonly req: Req,
    readonly res: Res,
    readonly h2: boolean,
    readonly record: RequestRecord,
    readonly span: Span | undefined,
    private readonly report: ((r: RequestRecord) => void) | undefined,
  ) {}

  /** The request is over with this status: its span ends and it is reported (once). */
  finish(status: number, flags = this.record.flags): void {
    if (this.ended) return;
    this.ended = true;
    const r = this.record;
    r.status = status;
    r.flags = flags;
    r.durationMs = Date.now() - r.start;
    if (this.span) endSpan(this.span, r);
    this.report?.(r);
  }

  /** A local answer: for gRPC, HTTP 200 with a grpc-status that stands for the HTTP status. */
  reply(status: number, flags: string, body: string, extra: OutgoingHttpHeaders = {}): void {
    const res = this.res;
    if (res.headersSent) res.destroy();
    else if (this.record.grpc) {
      this.record.grpcStatus = String(grpcStatusOf(status, flags));
      grpcAnswer(res, this.record.grpcStatus, encodeURIComponent(body.trim()), extra);
    } else {
      res.writeHead(status, extra);
      res.end(body);
    }
    this.finish(status, flags);
  }
}

function endSpan(span: Span, r: RequestRecord): void {
  span.setAttribute('http.response.status_code', r.status ?? 0);
  span.setAttribute('response_flags', r.flags);
  if (r.route) span.setAttribute('http.route', r.route);
  if (r.upstream) span.setAttribute('upstream_cluster', `${r.upstream}`);
  if (r.grpcStatus !== undefined) span.setAttribute('rpc.grpc.status_code', Number(r.grpcStatus));
  if ((r.status ?? 0) >= 500 || (r.grpcStatus !== undefined && r.grpcStatus !== '0')) span.setStatus('error', r.flags !== '-' ? r.flags : undefined);
  span.end();
}

/** A gRPC answer: HTTP 200, the status in trailers (HTTP/2) or, failing those, in the headers; `message` percent-encoded. */
export function grpcAnswer(res: Res, grpcStatus: string, message: string, extra: OutgoingHttpHeaders = {}): void {
  const status = { 'grpc-status': grpcStatus, ...(message ? { 'grpc-message': message } : {}) };
  if (res.addTrailers) {
    res.writeHead(200, { ...extra, 'content-type': 'application/grpc' });
    res.addTrailers(status);
  } else res.writeHead(200, { ...extra, 'content-type': 'application/grpc', ...status });
  res.end();
}

const GRPC_CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];

/**
 * The gRPC status a local answer stands for: gRPC's HTTP-to-gRPC mapping (403 PERMISSION_DENIED,
 * 404 UNIMPLEMENTED, 429 and 502-504 UNAVAILABLE, ...), with a timeout as DEADLINE_EXCEEDED.
 */
export function grpcStatusOf(status: number, flags: string): number {
  if (flags === 'UT') return 4;
  switch (status) {
    case 400: return 13;
    case 401: return 16;
    case 403: return 7;
    case 404: return 12;
    case 429: case 502: case 503: case 504: return 14;
    default: return 2;
  }
}

/** A gRPC status by name ("UNAVAILABLE") or number, as its number's text. */
export function grpcCode(status: string): string {
  const i = GRPC_CODES.indexOf(status.toUpperCase());
  return i >= 0 ? String(i) : /^\d+$/.test(status) ? status : '2';
}
