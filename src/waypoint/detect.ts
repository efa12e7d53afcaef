/**
 * Protocol detection for a waypoint tunnel: what its first bytes say it carries, decided from a
 * bounded prefix. The waypoint holds at most DETECT_MAX_BYTES of a tunnel before deciding, and
 * waits at most DETECT_TIMEOUT_MS for them: a peer that sends blank lines forever, or a method
 * that never ends, or nothing at all, gets an answer (or the tunnel closed), never a buffer that
 * grows or a tunnel held open. Also the limits the HTTP servers behind detection apply.
 */

/** The HTTP/2 connection preface: h2c with prior knowledge. */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/**
 * Empty-line bytes (CR, LF) accepted before a request line. RFC 9112 2.2 asks servers to skip
 * at least one empty line; 16 of them is generous, and more is not HTTP from any real client.
 */
export const MAX_LEADING_BLANK_BYTES = 32;
/** The longest method detection waits for (the registered ones are at most 17 letters). */
export const MAX_METHOD_LENGTH = 20;
/** What detection may hold: empty lines, a method and its space; the preface is shorter. */
export const DETECT_MAX_BYTES = Math.max(H2_PREFACE.length, MAX_LEADING_BLANK_BYTES + MAX_METHOD_LENGTH + 1);
/** How long a tunnel may take to send enough bytes for detection. */
export const DETECT_TIMEOUT_MS = 5_000;

/**
 * Request line and headers of one HTTP request, in bytes (HTTP/1.1: the parser's limit; h2c:
 * the header list size the waypoint announces). Envoy's default, as Istio's waypoints have it.
 */
export const MAX_HEADER_BYTES = 60 * 1024;
/** Header fields per request (pseudo-headers not counted). Envoy's default, as Istio's waypoints have it. */
export const MAX_HEADERS = 100;
/** Concurrent h2c streams per tunnel. */
export const MAX_H2_STREAMS = 100;
/** How long an HTTP/1.1 request line and headers may take once their first byte came. */
export const HEADERS_TIMEOUT_MS = 10_000;

export type Detection =
  /** Too few bytes yet to tell. */
  | { kind: 'wait'; httpLike: boolean }
  | { kind: 'h2c' }
  | { kind: 'http1' }
  | { kind: 'tcp' }
  /** HTTP-looking but not acceptable: answer 400 with `reason`. */
  | { kind: 'bad-http'; reason: string };

const CR = 0x0d;
const LF = 0x0a;
const SPACE = 0x20;
const isUpper = (c: number) => c >= 0x41 && c <= 0x5a;

/**
 * What a tunnel's first bytes are. Reads at most DETECT_MAX_BYTES of `head`, and decides (never
 * 'wait') once `head` has that many. `httpLike` on 'wait': what is there so far (empty lines,
 * capital letters) can only be the start of an HTTP request.
 */
export function detect(head: Buffer): Detection {
  const n = Math.min(head.length, DETECT_MAX_BYTES);
  // The preface, or a prefix of it: h2c, or not yet known.
  let preface = true;
  for (let i = 0; i < n && i < H2_PREFACE.length; i++) {
    if (head[i] !== H2_PREFACE[i]) {
      preface = false;
      break;
    }
  }
  if (preface && n >= H2_PREFACE.length) return { kind: 'h2c' };
  if (preface) return { kind: 'wait', httpLike: n > 0 };
  // HTTP parsers skip empty lines before a request line: so does detection, up to a bound.
  let start = 0;
  while (start < n && (head[start] === CR || head[start] === LF)) start++;
  if (start > MAX_LEADING_BLANK_BYTES) return { kind: 'bad-http', reason: `more than ${MAX_LEADING_BLANK_BYTES} bytes of empty lines before the request line` };
  let end = start;
  while (end < n && end - start < MAX_METHOD_LENGTH && isUpper(head[end]!)) end++;
  if (end < n) {
    // A method of capital letters then a space is a request line; anything else is TCP.
    return end > start && head[end] === SPACE ? { kind: 'http1' } : { kind: 'tcp' };
  }
  // Empty lines, perhaps the start of a method: not enough yet (at most 32 + 20 bytes, under the bound).
  return { kind: 'wait', httpLike: n > 0 };
}
