/**
 * IP addresses and CIDR blocks, parsed once for all of ambit: policy matching (every connection
 * and request), the eBPF maps' 16-byte keys, the local cluster's address plans and manifest
 * validation. The parser is ambit's own and strict: dotted quads of 1-3 digits up to 255 without a
 * leading zero (inet_aton reads "010" as octal), IPv6
 * groups of 1-4 hex digits with at most one "::", an IPv4 tail only last; a zone ("%eth0") is
 * dropped. Anything else is not an address.
 */

/** An address: IPv4 as one 32-bit word, IPv6 as four; IPv4-mapped IPv6 is IPv4. */
export interface Ip { v4: boolean; words: number[] }
/** A block: its address words, masked, and the masks. */
export interface Cidr { v4: boolean; words: number[]; masks: number[] }

/** Dotted quad to a 32-bit number; a character loop, as it runs for every connection. */
export function parseV4(text: string): number | undefined {
  let n = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      // No leading zero ("010" is octal to inet_aton, decimal to others: neither is taken).
      if (digits === 1 && octet === 0) return undefined;
      octet = octet * 10 + (c - 48);
      if (++digits > 3 || octet > 255) return undefined;
    } else if (c === 46 && digits > 0 && dots < 3) {
      n = n * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else return undefined;
  }
  return dots === 3 && digits > 0 ? n * 256 + octet : undefined;
}

/** IPv6 text to eight 16-bit groups; an embedded IPv4 tail ("::ffff:10.0.0.1") is two groups. */
function parseV6Groups(text: string): number[] | undefined {
  const halves = text.replace(/%.*$/, '').split('::');
  if (halves.length > 2) return undefined;
  const groups = (part: string, last: boolean): number[] | undefined => {
    if (part === '') return [];
    const out: number[] = [];
    const items = part.split(':');
    for (const [i, item] of items.entries()) {
      if (last && i === items.length - 1 && item.includes('.')) {
        const v4 = parseV4(item);
        if (v4 === undefined) return undefined;
        out.push(Math.floor(v4 / 0x10000), v4 % 0x10000);
      } else if (/^[0-9a-f]{1,4}$/i.test(item)) out.push(parseInt(item, 16));
      else return undefined;
    }
    return out;
  };
  const head = groups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? groups(halves[1]!, true) : [];
  if (!head || !tail) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const fill = 8 - head.length - tail.length;
  return fill >= 1 ? [...head, ...new Array<number>(fill).fill(0), ...tail] : undefined;
}

/** Any address as 128 bits (IPv4 mapped into ::ffff:0:0/96), four 32-bit words. */
export function parseIp128(text: string): number[] | undefined {
  if (!text.includes(':')) {
    const v4 = parseV4(text);
    return v4 === undefined ? undefined : [0, 0, 0xffff, v4];
  }
  const g = parseV6Groups(text);
  return g && [0, 2, 4, 6].map((i) => g[i]! * 0x10000 + g[i + 1]!);
}

const isMapped = (w: number[]) => w[0] === 0 && w[1] === 0 && w[2] === 0xffff;

export function parseIp(text: string): Ip | undefined {
  const w = parseIp128(text);
  if (!w) return undefined;
  return isMapped(w) ? { v4: true, words: [w[3]!] } : { v4: false, words: w };
}

function maskWords(bits: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => {
    const b = Math.min(32, Math.max(0, bits - 32 * i));
    return b === 0 ? 0 : (0xffffffff << (32 - b)) >>> 0;
  });
}

/** "10.0.0.0/8", "fd00::/8", "::ffff:10.0.0.0/104" or a single address. */
export function parseCidr(text: string): Cidr | undefined {
  const [addr, len, extra] = text.split('/');
  if (extra !== undefined || addr === undefined) return undefined;
  const w = parseIp128(addr);
  if (!w) return undefined;
  const ipv4Text = !addr.includes(':');
  let bits = ipv4Text ? 32 : 128;
  if (len !== undefined) {
    if (!/^\d{1,3}$/.test(len) || Number(len) > bits) return undefined;
    bits = Number(len);
  }
  if (ipv4Text) bits += 96;
  if (bits >= 96 && isMapped(w)) {
    const masks = maskWords(bits - 96, 1);
    return { v4: true, words: [(w[3]! & masks[0]!) >>> 0], masks };
  }
  const masks = maskWords(bits, 4);
  return { v4: false, words: w.map((x, i) => (x & masks[i]!) >>> 0), masks };
}

export function cidrContains(c: Cidr, ip: Ip): boolean {
  if (c.v4 !== ip.v4) return false;
  for (let i = 0; i < c.words.length; i++) if (((ip.words[i]! & c.masks[i]!) >>> 0) !== c.words[i]) return false;
  return true;
}

/** Whether the text is an IPv4 or IPv6 address as parseIp takes it. */
export const isIp = (text: string): boolean => parseIp128(text) !== undefined;

/** Whether the text is a dotted-quad IPv4 address. */
export const isIpv4 = (text: string): boolean => parseV4(text) !== undefined;

/** An IPv4 address as a 32-bit number, and back. */
export function ipv4ToInt(text: string): number {
  const n = parseV4(text);
  if (n === undefined) throw new TypeError(`not an IPv4 address: ${JSON.stringify(text)}`);
  return n;
}
export const intToIpv4 = (n: number): string => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');

/**
 * The 16-byte form every eBPF map key uses: IPv6 as is, IPv4 as IPv4-mapped (::ffff:a.b.c.d),
 * so that one key layout serves both families. Throws on what is not an address.
 */
export function ipBytes(text: string): Buffer {
  const w = parseIp128(text);
  if (!w) throw new TypeError(`not an IP address: ${JSON.stringify(text)}`);
  const out = Buffer.alloc(16);
  w.forEach((word, i) => out.writeUInt32BE(word >>> 0, i * 4));
  return out;
}

export function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Mapped addresses come back as dotted IPv4; others in the compressed IPv6 text form (RFC 5952). */
export function bytesToIp(bytes: Uint8Array): string {
  if (isV4Mapped(bytes)) return Array.from(bytes.subarray(12, 16)).join('.');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0));
  // Compress the longest run of two or more zero groups.
  let best = { start: -1, len: 0 };
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len && j - i >= 2) best = { start: i, len: j - i };
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.start < 0) return hex.join(':');
  return `${hex.slice(0, best.start).join(':')}::${hex.slice(best.start + best.len).join(':')}`;
}
