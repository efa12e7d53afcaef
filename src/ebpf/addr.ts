/**
 * The 16-byte address form every ambit map uses: IPv6 as is, IPv4 as IPv4-mapped
 * (::ffff:a.b.c.d), so that one key layout serves both families.
 */
import { isIPv4, isIPv6 } from 'node:net';

export function addrToBytes(ip: string): Buffer {
  const out = Buffer.alloc(16);
  if (isIPv4(ip)) {
    out[10] = 0xff;
    out[11] = 0xff;
    ip.split('.').forEach((octet, i) => { out[12 + i] = Number(octet); });
    return out;
  }
  if (!isIPv6(ip)) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  let text = ip.replace(/%.*$/, '');
  // An embedded dotted quad (::ffff:10.0.0.1) becomes two hex groups.
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted?.[1]) {
    const b = dotted[1].split('.').map(Number) as [number, number, number, number];
    text = text.slice(0, dotted.index) + `${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined
    ? headGroups
    : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

export function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/** Mapped addresses come back as dotted IPv4; others in the compressed IPv6 text form. */
export function bytesToAddr(bytes: Uint8Array): string {
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

export interface Cidr {
  /** 16-byte form. */
  addr: Buffer;
  /** Prefix length over the 128-bit form: an IPv4 /24 is 120. */
  prefixLen: number;
}

/** Parses `10.0.0.0/8` or `fd00::/8`; throws with the offending text on bad input. */
export function parseCidr(text: string): Cidr {
  const [ip = '', lenText, extra] = text.split('/');
  const v4 = isIPv4(ip);
  if (extra !== undefined || (!v4 && !isIPv6(ip))) throw new TypeError(`not a CIDR: ${JSON.stringify(text)}`);
  const max = v4 ? 32 : 128;
  const len = lenText === undefined ? max : Number(lenText);
  if (!Number.isInteger(len) || len < 0 || len > max || (lenText !== undefined && !/^\d+$/.test(lenText))) {
    throw new TypeError(`bad prefix length in CIDR ${JSON.stringify(text)}: must be 0..${max}`);
  }
  return { addr: addrToBytes(ip), prefixLen: v4 ? 96 + len : len };
}
