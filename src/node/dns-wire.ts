/**
 * The little of the DNS wire format (RFC 1035) the node agent's DNS server needs: the header
 * and the one question of a query, and answers of A/AAAA records. Strict on purpose: every byte
 * comes from a pod. What is not a well-formed standard query with one question is refused
 * (FORMERR) or dropped, never guessed at; upstream answers are relayed as bytes, not parsed.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { ipBytes } from '../util/ip.js';

export const DNS_HEADER_BYTES = 12;
/** A query longer than this is refused: a question is at most 255 + 4 bytes, EDNS adds a few dozen. */
export const DNS_MAX_QUERY_BYTES = 4096;
export const DNS_TYPE_A = 1;
export const DNS_TYPE_AAAA = 28;
export const DNS_CLASS_IN = 1;

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

const QR = 0x8000;
const AA = 0x0400;
const TC = 0x0200;
const RD = 0x0100;
const RA = 0x0080;

export interface DnsQuestion {
  /** Lower-case, without the trailing dot ("" for the root); undefined when a label holds a byte a host name cannot (a dot, a control character). */
  name: string | undefined;
  type: number;
  class: number;
}

export type ParsedQuery =
  /** Not worth an answer: shorter than a header, or a response (QR set) that could loop between two resolvers. */
  | { kind: 'drop'; why: string }
  /** Answer FORMERR with this id. */
  | { kind: 'formerr'; id: number; flags: number; why: string }
  /** A standard query with one question; `questionEnd`: where the question's bytes end. */
  | { kind: 'query'; id: number; flags: number; opcode: number; question: DnsQuestion; questionEnd: number };

/**
 * Reads the header and the question of a query. The question's name must be plain labels: a
 * compression pointer in the only question could only point into the header or back into the
 * name itself (a loop), so it is refused, as are label types 0x40/0x80 and names over 255 bytes.
 */
export function parseQuery(msg: Buffer): ParsedQuery {
  if (msg.length < DNS_HEADER_BYTES) return { kind: 'drop', why: `${msg.length} bytes: shorter than a DNS header` };
  const id = msg.readUInt16BE(0);
  const flags = msg.readUInt16BE(2);
  if (flags & QR) return { kind: 'drop', why: 'a response, not a query' };
  const formerr = (why: string): ParsedQuery => ({ kind: 'formerr', id, flags, why });
  if (msg.length > DNS_MAX_QUERY_BYTES) return formerr(`${msg.length} bytes: longer than ${DNS_MAX_QUERY_BYTES}`);
  const qdcount = msg.readUInt16BE(4);
  if (qdcount !== 1) return formerr(`${qdcount} questions: exactly one is answered`);
  const labels: string[] = [];
  let plain = true;
  let at = DNS_HEADER_BYTES;
  let nameBytes = 0;
  for (;;) {
    if (at >= msg.length) return formerr('the question\'s name runs past the end');
    const len = msg[at]!;
    if (len === 0) {
      at += 1;
      break;
    }
    if ((len & 0xc0) === 0xc0) return formerr('a compression pointer in the question');
    if (len & 0xc0) return formerr(`label type 0x${(len & 0xc0).toString(16)}`);
    nameBytes += len + 1;
    if (nameBytes > 254) return formerr('the question\'s name is longer than 255 bytes');
    if (at + 1 + len > msg.length) return formerr('a label runs past the end');
    const label = msg.subarray(at + 1, at + 1 + len);
    // A dot or a control byte inside a label has no text form that means the same name: never matched.
    if (label.some((b) => b === 0x2e || b < 0x21 || b > 0x7e)) plain = false;
    labels.push(label.toString('latin1').toLowerCase());
    at += 1 + len;
  }
  if (at + 4 > msg.length) return formerr('the question has no type and class');
  const question = { name: plain ? labels.join('.') : undefined, type: msg.readUInt16BE(at), class: msg.readUInt16BE(at + 2) };
  return { kind: 'query', id, flags, opcode: (flags >> 11) & 0xf, question, questionEnd: at + 4 };
}

/** The flags of an answer to a query with `queryFlags`: QR, the query's opcode and RD, RA, and `rcode`. */
function answerFlags(queryFlags: number, rcode: number, authoritative: boolean): number {
  return QR | (queryFlags & 0x7800) | (authoritative ? AA : 0) | (queryFlags & RD) | RA | (rcode & 0xf);
}

/**
 * An answer to `query` (parsed as `parsed`): the question echoed byte for byte (a client that
 * randomises the name's case checks it), then one record per address, its name a pointer to the
 * question's. `rcode` NOERROR with no addresses is NODATA.
 */
export function buildAnswer(query: Buffer, parsed: Extract<ParsedQuery, { kind: 'query' }>, rcode: number, addresses: readonly string[], ttl: number): Buffer {
  const type = parsed.question.type;
  const records = addresses.filter((a) => (type === DNS_TYPE_A ? isIPv4(a) : type === DNS_TYPE_AAAA && isIPv6(a)));
  const rdlen = type === DNS_TYPE_A ? 4 : 16;
  const question = query.subarray(DNS_HEADER_BYTES, parsed.questionEnd);
  const out = Buffer.alloc(DNS_HEADER_BYTES + question.length + records.length * (12 + rdlen));
  out.writeUInt16BE(parsed.id, 0);
  out.writeUInt16BE(answerFlags(parsed.flags, rcode, true), 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(records.length, 6);
  question.copy(out, DNS_HEADER_BYTES);
  let at = DNS_HEADER_BYTES + question.length;
  for (const addr of records) {
    out.writeUInt16BE(0xc000 | DNS_HEADER_BYTES, at);
    out.writeUInt16BE(type, at + 2);
    out.writeUInt16BE(DNS_CLASS_IN, at + 4);
    out.writeUInt32BE(ttl, at + 6);
    out.writeUInt16BE(rdlen, at + 10);
    const bytes = ipBytes(addr);
    (rdlen === 4 ? bytes.subarray(12, 16) : bytes).copy(out, at + 12);
    at += 12 + rdlen;
  }
  return out;
}

/** An error answer: FORMERR without the question (it could not be read), SERVFAIL and others with it. */
export function buildError(query: Buffer, parsed: Exclude<ParsedQuery, { kind: 'drop' }>, rcode: number): Buffer {
  if (parsed.kind === 'formerr') {
    const out = Buffer.alloc(DNS_HEADER_BYTES);
    out.writeUInt16BE(parsed.id, 0);
    out.writeUInt16BE(answerFlags(parsed.flags, rcode, false), 2);
    return out;
  }
  const question = query.subarray(DNS_HEADER_BYTES, parsed.questionEnd);
  const out = Buffer.alloc(DNS_HEADER_BYTES + question.length);
  out.writeUInt16BE(parsed.id, 0);
  out.writeUInt16BE(answerFlags(parsed.flags, rcode, false), 2);
  out.writeUInt16BE(1, 4);
  question.copy(out, DNS_HEADER_BYTES);
  return out;
}

/** Whether `reply` is an answer to the query with `id`: long enough, QR set, the same id. */
export function isAnswerTo(reply: Buffer, id: number): boolean {
  return reply.length >= DNS_HEADER_BYTES && reply.readUInt16BE(0) === id && (reply.readUInt16BE(2) & QR) !== 0;
}

/** The TC bit: the answer did not fit a UDP datagram. */
export function isTruncated(reply: Buffer): boolean {
  return reply.length >= DNS_HEADER_BYTES && (reply.readUInt16BE(2) & TC) !== 0;
}

export function rcodeOf(reply: Buffer): number {
  return reply.length >= DNS_HEADER_BYTES ? reply.readUInt16BE(2) & 0xf : -1;
}

/**
 * DNS over TCP (RFC 7766): every message behind a 2-byte length. Feed it what a connection
 * reads; it returns the complete messages, and throws when the peer announces more than `max`.
 */
export class TcpFramer {
  private buffered: Buffer = Buffer.alloc(0);

  constructor(private readonly max: number) {}

  push(chunk: Buffer): Buffer[] {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    const out: Buffer[] = [];
    while (this.buffered.length >= 2) {
      const len = this.buffered.readUInt16BE(0);
      if (len > this.max) throw new RangeError(`a ${len}-byte DNS message over TCP: at most ${this.max}`);
      if (this.buffered.length < 2 + len) break;
      out.push(this.buffered.subarray(2, 2 + len));
      this.buffered = this.buffered.subarray(2 + len);
    }
    return out;
  }

  /** Bytes of an incomplete message held. */
  get pending(): number {
    return this.buffered.length;
  }
}

export function frame(msg: Buffer): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(msg.length);
  return Buffer.concat([len, msg]);
}
