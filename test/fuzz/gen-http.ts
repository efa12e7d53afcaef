/**
 * Generators of hostile HTTP/1.x requests as raw bytes: request lines with odd methods, targets
 * (percent-encodings that are not UTF-8, `//[`, absolute and asterisk forms, control bytes, very
 * long), versions, headers (duplicates, framing conflicts, obs-fold, bare LF) and bodies; and
 * plain random bytes. Also the client that writes them to a listener and reads the answer.
 */
import { connect, type NetConnectOpts } from 'node:net';
import * as fc from 'fast-check';

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,16}$/;

/** Bytes as a latin1 string (one char per byte), so every byte value can appear. */
export const latin1 = (maxLength = 64) => fc.string({ unit: fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c)), maxLength });

const pctByte = fc.integer({ min: 0, max: 255 }).map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`);
/** Pieces a path is made of: plain, reserved, percent-encodings (valid UTF-8 or not), broken escapes. */
const pathPiece = fc.oneof(
  fc.constantFrom('a', 'v1', 'pods', 'healthz', 'ready', 'check', 'metrics', 'certs', 'logging', '..', '.', '', 'x'.repeat(300)),
  fc.constantFrom('%', '%E0', '%C3%28', '%FF', '%00', '%2F', '%%', '%G1', '%e2%82', '%F0%9F%92%A9', '%ED%A0%80', '[', ']', '@', ':', ';', ',', '=', '+', '*', '#', '?', '\\', '\t', ' ', '\u00e9', '\u{1F4A9}'),
  pctByte,
  fc.string({ maxLength: 8 }),
);
const path = fc.array(pathPiece, { maxLength: 12 }).map((parts) => parts.join(''));
const knownPath = fc.constantFrom('/healthz', '/certificates', '/certs', '/config_dump', '/workloads', '/connections', '/logging',
  '/metrics', '/stats/prometheus', '/healthz/ready', '/healthz/check', '/v1/pods/', '/v1/pods/uid-1', '/', '');
const query = fc.oneof(
  fc.constant(''),
  fc.tuple(fc.constantFrom('level', 'timeoutMs', 'x', '', 'level[]', 'timeoutMs%00'), fc.oneof(path, fc.constantFrom('debug', 'silent', 'fatal', '-1', '1e309', 'NaN', '99999999999', ''))).map(([k, v]) => `?${k}=${v}`),
  path.map((p) => `?${p}`),
);

export const requestTarget = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(knownPath, fc.constantFrom('', '?level=debug', '?timeoutMs=10', '?x=%E0', '?'), fc.constantFrom('', '/', '%2F', '/x')).map(([k, q, tail]) => `${k}${tail}${q}`) },
  { weight: 4, arbitrary: fc.tuple(knownPath, path, query).map(([k, p, q]) => `${k}${p}${q}`) },
  { weight: 2, arbitrary: fc.tuple(path, query).map(([p, q]) => `/${p}${q}`) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('//', '//[', '//[::1', '///', '//a@b', '//%'), path).map(([a, p]) => `${a}${p}`) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('http://', 'https://', 'HTTP://', 'file://', 'javascript:', 'http://[', 'http://admin:x@'), fc.constantFrom('127.0.0.1', 'localhost', '[::1]', '', '[', 'a b', '256.1.1.1'), fc.constantFrom('', ':0', ':99999', ':'), knownPath, path).map((a) => a.join('')) },
  { weight: 1, arbitrary: fc.constantFrom('*', '*/x', 'localhost:15000', ':', '?', '#', '%', 'x'.repeat(70_000)) },
  { weight: 1, arbitrary: latin1(40) },
);

const method = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'TRACE') },
  { weight: 1, arbitrary: fc.stringMatching(TOKEN) },
  { weight: 1, arbitrary: fc.constantFrom('get', 'GET ', 'PRI', 'G\0ET', '') },
  { weight: 1, arbitrary: latin1(10) },
);
const version = fc.oneof(
  { weight: 8, arbitrary: fc.constant('HTTP/1.1') },
  { weight: 2, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.1x', 'http/1.1', 'HTTP/9.9', '') },
  { weight: 1, arbitrary: latin1(10) },
);

const header = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.constantFrom('Host', 'Content-Length', 'Transfer-Encoding', 'Connection', 'Expect', 'Upgrade', 'Content-Type', 'Accept', 'X-Forwarded-For', 'Cookie', 'Authorization'),
    fc.constantFrom('localhost', '0', '1', '-1', '10', '99999999999999999999', 'chunked', 'gzip, chunked', 'chunked, identity', 'close', 'keep-alive', 'upgrade', 'Upgrade, HTTP2-Settings', 'h2c', '100-continue', 'websocket', '', ' ', '1 2')) },
  { weight: 2, arbitrary: fc.tuple(fc.stringMatching(TOKEN), fc.string({ maxLength: 40 })) },
  { weight: 1, arbitrary: fc.tuple(latin1(12), latin1(40)) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('X-Long'), fc.constant('v'.repeat(20_000))) },
);
const body = fc.oneof(
  fc.constant(''),
  fc.constantFrom('0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'ffffffffffffffff\r\n', 'zz\r\n', '1;ext=\x00\r\nx\r\n0\r\n\r\n'),
  latin1(200),
);
const eol = fc.oneof({ weight: 9, arbitrary: fc.constant('\r\n') }, { weight: 1, arbitrary: fc.constantFrom('\n', '\r', '\r\n ', '\n\r') });

export interface HttpRequestInput {
  /** The bytes as latin1: every byte value can appear. */
  raw: string;
}

/** One request (sometimes two, pipelined), or random bytes. */
export const httpRequest: fc.Arbitrary<HttpRequestInput> = fc.oneof(
  { weight: 9, arbitrary: fc.tuple(method, requestTarget, version, fc.array(header, { maxLength: 8 }), body, eol, fc.boolean(), fc.nat(9)).map(([m, t, v, hs, b, nl, twice, host]) => {
    // Most requests carry a Host: HTTP/1.1 servers refuse those without one before any handler runs.
    const all: [string, string][] = host > 0 ? [['Host', 'localhost'], ...hs] : hs;
    const one = `${m} ${t} ${v}${nl}${all.map(([k, val]) => `${k}: ${val}${nl}`).join('')}${nl}${b}`;
    return { raw: twice ? `${one}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n` : one };
  }) },
  { weight: 1, arbitrary: latin1(300).map((raw) => ({ raw })) },
);

export interface RawAnswer {
  /** What came back before the server closed (or the client gave up). */
  bytes: Buffer;
  /** The server ended or reset the connection. */
  closed: boolean;
  error?: string;
}

/**
 * Writes `data` to a TCP or unix socket listener, half-closes, and collects the answer until the
 * server closes; after `timeoutMs` the socket is destroyed and `closed` is false.
 */
export function sendRaw(where: NetConnectOpts, data: Buffer, timeoutMs = 3000): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const socket = connect(where);
    const finish = (closed: boolean, error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ bytes: Buffer.concat(chunks), closed, ...(error ? { error } : {}) });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', (c: Buffer) => { if (chunks.length < 64) chunks.push(c); });
    socket.on('error', (err: NodeJS.ErrnoException) => finish(true, err.code ?? err.message));
    socket.on('close', () => finish(true));
    socket.on('end', () => finish(true));
    socket.end(data);
  });
}

/** The status codes of the responses in `bytes` (`-` when the server closed without a word). */
export function statusTag(a: RawAnswer): string {
  const codes = [...a.bytes.toString('latin1').matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => m[1]);
  if (codes.length > 0) return codes.join('+');
  return a.error ? `reset` : a.closed ? 'closed' : 'open';
}
