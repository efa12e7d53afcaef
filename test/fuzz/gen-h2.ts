/**
 * Generators of hostile HTTP/2 as bytes a client sends after the TLS handshake: the preface
 * (sometimes broken), then frames of every type with odd flags, stream ids, lengths that lie,
 * padding longer than the frame, SETTINGS out of range, window updates that overflow, and header
 * blocks in HPACK — CONNECT-shaped or not — with indices outside the tables, string lengths that
 * run past the block, huge table-size updates. Also CONNECT requests (authority and headers) for
 * a real HTTP/2 client.
 */
import * as fc from 'fast-check';
import { latin1 } from './gen-http.js';

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** HPACK integer with an n-bit prefix (RFC 7541 §5.1); `first` holds the bits above the prefix. */
export function hpackInt(value: number, prefixBits: number, first = 0): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let v = value - max;
  while (v >= 128) {
    out.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** A string literal, not Huffman-coded; `lie` adds to the declared length. */
function hpackString(s: string, lie = 0): number[] {
  const bytes = [...Buffer.from(s, 'latin1')];
  return [...hpackInt(Math.max(0, bytes.length + lie), 7), ...bytes];
}

type Field =
  | { kind: 'indexed'; index: number }
  | { kind: 'literal'; name: string; value: string; indexing: boolean; lie: number }
  | { kind: 'literalIndexedName'; index: number; value: string }
  | { kind: 'tableSize'; size: number }
  | { kind: 'raw'; bytes: number[] };

export function encodeFields(fields: Field[]): Buffer {
  const out: number[] = [];
  for (const f of fields) {
    switch (f.kind) {
      case 'indexed': out.push(...hpackInt(f.index, 7, 0x80)); break;
      case 'literal': out.push(f.indexing ? 0x40 : 0x00, ...hpackString(f.name), ...hpackString(f.value, f.lie)); break;
      case 'literalIndexedName': out.push(...hpackInt(f.index, 4, 0x00), ...hpackString(f.value)); break;
      case 'tableSize': out.push(...hpackInt(f.size, 5, 0x20)); break;
      case 'raw': out.push(...f.bytes); break;
    }
  }
  return Buffer.from(out);
}

const authorityText = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(fc.oneof(fc.ipV4(), fc.ipV6().map((a) => `[${a}]`), fc.constantFrom('127.0.0.1', 'localhost', '[::1]', '[', ']', '', '10.0.0.9')),
    fc.oneof(fc.integer({ min: 0, max: 70_000 }).map(String), fc.constantFrom('', '-1', '080', '1e3', '65536', '99999999999999999999', '0x50', ' 80'))).map(([h, p]) => `${h}:${p}`) },
  { weight: 1, arbitrary: fc.string({ maxLength: 60 }) },
  { weight: 1, arbitrary: latin1(60) },
  { weight: 1, arbitrary: fc.constantFrom('a'.repeat(9000), '10.0.0.9:80\r\nx: y', '10.0.0.9:80/path', 'user@10.0.0.9:80', '::1:80', '[::ffff:10.0.0.9]:80', '%31%30.0.0.9:80') },
);
export const authority = authorityText;

const field: fc.Arbitrary<Field> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('literal' as const), name: fc.oneof(fc.constantFrom(':method', ':authority', ':path', ':scheme', ':protocol', ':status', 'forwarded', 'baggage', 'traceparent', 'connection', 'te', 'content-length', 'host', 'x-forwarded-for'), fc.stringMatching(/^[a-z0-9-]{1,12}$/), latin1(12)), value: fc.oneof(fc.constantFrom('CONNECT', 'GET', 'POST', 'https', '/', 'trailers', '0', '-1', 'keep-alive'), authorityText, latin1(30)), indexing: fc.boolean(), lie: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 1 << 20 }) }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('indexed' as const), index: fc.oneof(fc.integer({ min: 0, max: 70 }), fc.constantFrom(127, 128, 4096, 2 ** 28)) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('literalIndexedName' as const), index: fc.integer({ min: 0, max: 80 }), value: latin1(30) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('tableSize' as const), size: fc.oneof(fc.integer({ min: 0, max: 8192 }), fc.constantFrom(2 ** 31, 2 ** 32 + 5)) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('raw' as const), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 20 }) }) },
);

/** A header block: a CONNECT as HBONE sends it (perhaps with more fields), or anything. */
export const headerBlock: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(authorityText, fc.array(field, { maxLength: 6 })).map(([a, extra]) => encodeFields([
    { kind: 'literal', name: ':method', value: 'CONNECT', indexing: false, lie: 0 },
    { kind: 'literal', name: ':authority', value: a, indexing: false, lie: 0 },
    ...extra,
  ])) },
  { weight: 2, arbitrary: fc.array(field, { maxLength: 10 }).map(encodeFields) },
);

const streamId = fc.oneof(fc.constantFrom(0, 1, 2, 3, 5, 0x7fffffff, 0x80000001), fc.integer({ min: 0, max: 0x7fffffff }));
const u32 = fc.oneof(fc.constantFrom(0, 1, 65535, 65536, 16384, 0x7fffffff, 0x80000000, 0xffffffff), fc.nat());
const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((b) => Buffer.from(b));
const be32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; };

interface Frame { type: number; flags: number; stream: number; payload: Buffer; lengthLie?: number }

const settingsPayload = fc.tuple(
  fc.array(fc.tuple(fc.oneof(fc.integer({ min: 0, max: 9 }), fc.integer({ min: 0, max: 65535 })), u32), { maxLength: 8 }),
  fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 5 }) }),
).map(([pairs, extra]) => {
  const b = Buffer.alloc(pairs.length * 6 + extra);
  pairs.forEach(([id, v], i) => { b.writeUInt16BE(id, i * 6); b.writeUInt32BE(v >>> 0, i * 6 + 2); });
  return b;
});

/** DATA/HEADERS payload, padded when the PADDED flag is set (the pad length may exceed the frame). */
const padded = (inner: fc.Arbitrary<Buffer>) => fc.tuple(inner, fc.boolean(), fc.integer({ min: 0, max: 255 }), fc.boolean()).map(([data, pad, padLen, honest]) => {
  if (!pad) return { flag: 0, payload: data };
  const fill = honest ? padLen : 0;
  return { flag: 0x8, payload: Buffer.concat([Buffer.from([padLen]), data, Buffer.alloc(Math.min(fill, 255))]) };
});

export const frame: fc.Arbitrary<Frame> = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(streamId, fc.integer({ min: 0, max: 255 }), padded(bytes(64))).map(([stream, flags, p]) => ({ type: 0, flags: (flags & ~0x8) | p.flag, stream, payload: p.payload })) },
  { weight: 5, arbitrary: fc.tuple(streamId, fc.integer({ min: 0, max: 255 }), padded(headerBlock), fc.boolean(), bytes(5)).map(([stream, flags, p, prio, prioBytes]) => ({
    type: 1, flags: (flags & ~0x28) | p.flag | (prio ? 0x20 : 0), stream, payload: prio ? Buffer.concat([Buffer.concat([prioBytes, Buffer.alloc(5)]).subarray(0, 5), p.payload]) : p.payload,
  })) },
  { weight: 1, arbitrary: fc.tuple(streamId, bytes(8)).map(([stream, payload]) => ({ type: 2, flags: 0, stream, payload })) },
  { weight: 2, arbitrary: fc.tuple(streamId, u32).map(([stream, code]) => ({ type: 3, flags: 0, stream, payload: be32(code) })) },
  { weight: 2, arbitrary: fc.tuple(fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: streamId }), fc.constantFrom(0, 1), settingsPayload).map(([stream, flags, payload]) => ({ type: 4, flags, stream, payload: flags ? (payload.length % 2 ? payload : Buffer.alloc(0)) : payload })) },
  { weight: 1, arbitrary: fc.tuple(streamId, u32, headerBlock).map(([stream, promised, block]) => ({ type: 5, flags: 4, stream, payload: Buffer.concat([be32(promised), block]) })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(0, 1), bytes(10)).map(([flags, payload]) => ({ type: 6, flags, stream: 0, payload })) },
  { weight: 1, arbitrary: fc.tuple(streamId, u32, bytes(20)).map(([last, code, debug]) => ({ type: 7, flags: 0, stream: 0, payload: Buffer.concat([be32(last), be32(code), debug]) })) },
  { weight: 2, arbitrary: fc.tuple(streamId, u32).map(([stream, inc]) => ({ type: 8, flags: 0, stream, payload: be32(inc) })) },
  { weight: 1, arbitrary: fc.tuple(streamId, fc.integer({ min: 0, max: 255 }), headerBlock).map(([stream, flags, payload]) => ({ type: 9, flags, stream, payload })) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 10, max: 255 }), fc.integer({ min: 0, max: 255 }), streamId, bytes(32)).map(([type, flags, stream, payload]) => ({ type, flags, stream, payload })) },
).chain((f) => fc.oneof({ weight: 12, arbitrary: fc.constant(f) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 1 << 16 }).map((lie) => ({ ...f, lengthLie: lie })) }));

export function encodeFrame(f: Frame): Buffer {
  const length = Math.min(0xffffff, f.lengthLie ?? f.payload.length);
  const head = Buffer.alloc(9);
  head.writeUIntBE(length, 0, 3);
  head.writeUInt8(f.type & 0xff, 3);
  head.writeUInt8(f.flags & 0xff, 4);
  head.writeUInt32BE(f.stream >>> 0, 5);
  return Buffer.concat([head, f.payload]);
}

export interface H2Input {
  preface: 'good' | 'broken' | 'none';
  settings: boolean;
  frames: Frame[];
  /** Bytes once encoded (for the report). */
}

export const h2Input: fc.Arbitrary<H2Input> = fc.record({
  preface: fc.oneof({ weight: 18, arbitrary: fc.constant('good' as const) }, { weight: 1, arbitrary: fc.constantFrom('broken' as const, 'none' as const) }),
  settings: fc.oneof({ weight: 9, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
  frames: fc.array(frame, { minLength: 1, maxLength: 10 }),
});

export function encodeH2(input: H2Input): Buffer {
  const parts: Buffer[] = [];
  if (input.preface === 'good') parts.push(PREFACE);
  if (input.preface === 'broken') parts.push(Buffer.from('PRI * HTTP/2.0\r\n\r\nXM\r\n\r\n', 'latin1'));
  if (input.settings) parts.push(encodeFrame({ type: 4, flags: 0, stream: 0, payload: Buffer.alloc(0) }));
  for (const f of input.frames) parts.push(encodeFrame(f));
  return Buffer.concat(parts);
}

/** Names of HTTP/2 error codes (RFC 9113 §7), for tallies. */
export const H2_ERRORS = ['NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT', 'STREAM_CLOSED', 'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR', 'ENHANCE_YOUR_CALM', 'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED'];

/** What the server said in `bytes`: the GOAWAY's error code and the HEADERS/RST_STREAM it sent, as a tag. */
export function h2Answer(bytes: Buffer): string {
  const seen = new Set<string>();
  for (let i = 0; i + 9 <= bytes.length;) {
    const len = bytes.readUIntBE(i, 3);
    const type = bytes[i + 3]!;
    const payload = bytes.subarray(i + 9, i + 9 + len);
    if (type === 7 && payload.length >= 8) seen.add(`goaway:${H2_ERRORS[payload.readUInt32BE(4)] ?? payload.readUInt32BE(4)}`);
    if (type === 3 && payload.length >= 4) seen.add(`rst:${H2_ERRORS[payload.readUInt32BE(0)] ?? payload.readUInt32BE(0)}`);
    if (type === 1) seen.add('headers');
    i += 9 + len;
  }
  return [...seen].sort().join(',') || 'silent';
}

export interface ConnectInput {
  method: string;
  authority: string;
  headers: [string, string][];
  /** Bytes sent on the tunnel once it is open. */
  data: Buffer;
  /** Reset the stream right after sending the request (before any answer). */
  resetEarly: boolean;
}

export const connectInput: fc.Arbitrary<ConnectInput> = fc.record({
  method: fc.oneof({ weight: 9, arbitrary: fc.constant('CONNECT') }, { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'connect', 'PRI', 'CONNECT ') }),
  authority: authorityText,
  headers: fc.array(fc.tuple(
    fc.oneof(fc.constantFrom('forwarded', 'baggage', 'traceparent', 'x-forwarded-for', 'ambit-code', 'ambit-error', 'content-length', ':protocol', 'te', 'proxy-authorization'), fc.stringMatching(/^[a-z0-9-]{1,16}$/)),
    fc.oneof(fc.constantFrom('for=10.0.0.5', 'for="[::1]"', 'for=', 'k8s.namespace.name=shop', 'trailers', '0', '5', 'websocket'), fc.string({ maxLength: 200 }), fc.constant('v'.repeat(9000))),
  ), { maxLength: 6 }),
  data: bytes(256),
  resetEarly: fc.oneof({ weight: 5, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
});
