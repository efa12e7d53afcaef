/**
 * The 16-byte address form every ambit map uses: IPv6 as is, IPv4 as IPv4-mapped
 * (::ffff:a.b.c.d), so that one key layout serves both families.
 */
import { bytesToIp, ipBytes, isIp, isIpv4, isV4Mapped } from '../util/ip.js';

export { isV4Mapped };
/** The 16-byte key form of an address (src/util/ip.ts); throws on what is not one. */
export const addrToBytes = ipBytes;
/** A key's address as text: mapped addresses as dotted IPv4, others as compressed IPv6. */
export const bytesToAddr = bytesToIp;

export interface Cidr {
  /** 16-byte form. */
  addr: Buffer;
  /** Prefix length over the 128-bit form: an IPv4 /24 is 120. */
  prefixLen: number;
}

/** Parses `10.0.0.0/8` or `fd00::/8`; throws with the offending text on bad input. */
export function parseCidr(text: string): Cidr {
  const [ip = '', lenText, extra] = text.split('/');
  const v4 = isIpv4(ip);
  if (extra !== undefined || !isIp(ip)) throw new TypeError(`not a CIDR: ${JSON.stringify(text)}`);
  const max = v4 ? 32 : 128;
  const len = lenText === undefined ? max : Number(lenText);
  if (!Number.isInteger(len) || len < 0 || len > max || (lenText !== undefined && !/^\d+$/.test(lenText))) {
    throw new TypeError(`bad prefix length in CIDR ${JSON.stringify(text)}: must be 0..${max}`);
  }
  return { addr: addrToBytes(ip), prefixLen: v4 ? 96 + len : len };
}
