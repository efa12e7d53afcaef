/** The one address parser (src/util/ip.ts): what it takes, what it refuses, and the forms it gives. */
import { describe, expect, it } from 'vitest';
import { bytesToIp, cidrContains, intToIpv4, ipBytes, ipv4ToInt, isIp, isIpv4, parseCidr, parseIp } from '../../src/util/ip.js';

describe('ip', () => {
  it('refuses a leading zero in a dotted quad: inet_aton reads it as octal, others as decimal', () => {
    for (const bad of ['010.0.0.1', '10.00.0.1', '10.0.0.01', '::ffff:10.0.0.010']) {
      expect(isIp(bad), bad).toBe(false);
      expect(parseCidr(`${bad}/32`), bad).toBeUndefined();
      expect(() => ipBytes(bad), bad).toThrow(/not an IP address/);
    }
    expect(isIpv4('0.0.0.0')).toBe(true);
    expect(isIpv4('10.0.0.100')).toBe(true);
  });

  it('gives the 16-byte key form and reads it back, IPv4 as IPv4-mapped', () => {
    expect(ipBytes('10.1.2.3').toString('hex')).toBe('00000000000000000000ffff0a010203');
    expect(ipBytes('fd00::7').toString('hex')).toBe('fd000000000000000000000000000007');
    for (const [text, back] of [['10.1.2.3', '10.1.2.3'], ['::ffff:10.1.2.3', '10.1.2.3'], ['fd00:0:0:0:0:0:0:7', 'fd00::7'], ['2001:db8::1:0:0:1', '2001:db8::1:0:0:1'], ['::', '::']]) {
      expect(bytesToIp(ipBytes(text as string)), text).toBe(back);
    }
  });

  it('matches an IPv4 address against a block in either family', () => {
    const block = parseCidr('10.244.0.0/16')!;
    expect(cidrContains(block, parseIp('10.244.9.9')!)).toBe(true);
    expect(cidrContains(block, parseIp('::ffff:10.244.9.9')!)).toBe(true);
    expect(cidrContains(block, parseIp('10.245.0.1')!)).toBe(false);
    expect(cidrContains(parseCidr('fd00::/8')!, parseIp('10.244.9.9')!)).toBe(false);
  });

  it('converts IPv4 to a number and back', () => {
    expect(ipv4ToInt('10.96.0.10')).toBe(0x0a60000a);
    expect(intToIpv4(0x0a60000a)).toBe('10.96.0.10');
    expect(() => ipv4ToInt('fd00::1')).toThrow(/not an IPv4 address/);
  });
});
