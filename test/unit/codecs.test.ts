// The byte layouts shared with the kernel side, and the address forms they use.
import { describe, expect, it, onTestFinished } from 'vitest';
import { addrToBytes, bytesToAddr, parseCidr } from '../../src/ebpf/addr.js';
import { origDstCodec, podConfigCodec, sockKeyCodec, type PodConfig } from '../../src/ebpf/codecs.js';
import { errnoName } from '../../src/ebpf/errors.js';
import { AMBIT, LAYOUTS } from '../../src/ebpf/layout.generated.js';
import { cgroup2Mount, bpffsMount, readMounts } from '../../src/ebpf/mounts.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

describe('addresses', () => {
  it.each([
    ['10.1.2.3', '00000000000000000000ffff0a010203'],
    ['::ffff:10.1.2.3', '00000000000000000000ffff0a010203'],
    ['::1', '00000000000000000000000000000001'],
    ['fd00::9', 'fd000000000000000000000000000009'],
    ['2001:db8:0:1:2:3:4:5', '20010db8000000010002000300040005'],
    ['fe80::1%eth0', 'fe800000000000000000000000000001'],
  ])('%s encodes to the 16-byte form', (ip, hex) => {
    expect(addrToBytes(ip).toString('hex')).toBe(hex);
  });

  it.each([['10.1.2.3'], ['::1'], ['fd00::9'], ['2001:db8:0:1:2:3:4:5'], ['::'], ['fd00:1::2:0:0:3']])('%s round-trips', (ip) => {
    expect(bytesToAddr(addrToBytes(ip))).toBe(ip);
  });

  it('rejects what is not an address', () => {
    expect(() => addrToBytes('10.1.2')).toThrow(/not an IP address: "10.1.2"/);
    expect(() => addrToBytes('pod-a')).toThrow(/not an IP address/);
  });

  it('parses CIDRs onto the 128-bit prefix', () => {
    expect(parseCidr('10.96.0.0/12').prefixLen).toBe(108);
    expect(parseCidr('fd00::/8').prefixLen).toBe(8);
    expect(parseCidr('10.0.0.1').prefixLen).toBe(128);
    expect(() => parseCidr('10.0.0.0/33')).toThrow(/bad prefix length in CIDR "10.0.0.0\/33": must be 0..32/);
    expect(() => parseCidr('10.0.0.0/8/9')).toThrow(/not a CIDR/);
    expect(() => parseCidr('fd00::/1x')).toThrow(/bad prefix length/);
  });
});

describe('codecs follow the generated layouts', () => {
  const config: PodConfig = {
    captureOutbound: true,
    captureInbound: false,
    outboundPort: AMBIT.PORT_OUTBOUND,
    inboundPort: AMBIT.PORT_INBOUND,
    excludedOutboundPorts: [22, 5432],
    excludedInboundPorts: [9090],
    excludedCidrs: ['10.96.0.0/12', 'fd00::/8'],
  };

  it('round-trips a pod config and places fields where the C struct has them', () => {
    const bytes = podConfigCodec.encode(config);
    expect(bytes.length).toBe(LAYOUTS.ambit_pod_config.size);
    expect(bytes.readUInt32LE(LAYOUTS.ambit_pod_config.fields.flags.offset)).toBe(AMBIT.POD_CAPTURE_OUTBOUND);
    expect(bytes.readUInt16LE(LAYOUTS.ambit_pod_config.fields.excluded_outbound_ports.offset + 2)).toBe(5432);
    expect(podConfigCodec.decode(bytes)).toEqual(config);
  });

  it('refuses configs the kernel side cannot hold, naming the field', () => {
    const tooMany = Array.from({ length: AMBIT.MAX_EXCLUDED_PORTS + 1 }, (_, i) => i + 1);
    expect(() => podConfigCodec.encode({ ...config, excludedOutboundPorts: tooMany })).toThrow(/excludedOutboundPorts: at most 16 ports, got 17/);
    expect(() => podConfigCodec.encode({ ...config, excludedInboundPorts: [0] })).toThrow(/excludedInboundPorts: 0 is not a port/);
    expect(() => podConfigCodec.encode({ ...config, excludedCidrs: Array(9).fill('10.0.0.0/8') })).toThrow(/excludedCidrs: at most 8/);
  });

  it('round-trips connection keys and original destinations', () => {
    const key = { netnsCookie: 42n, clientAddr: '127.0.0.1', clientPort: 41000, listenerAddr: '127.0.0.1', listenerPort: 15001 };
    expect(sockKeyCodec.decode(sockKeyCodec.encode(key))).toEqual(key);
    expect(sockKeyCodec.encode(key).length).toBe(LAYOUTS.ambit_sock_key.size);
    const dst = { addr: 'fd00::9', port: 443, family: 6 as const, socketCookie: 7n };
    expect(origDstCodec.decode(origDstCodec.encode(dst))).toEqual(dst);
  });
});

describe('errors and mounts', () => {
  it('names kernel and libbpf errnos', () => {
    expect(errnoName(-1)).toBe('EPERM');
    expect(errnoName(13)).toBe('EACCES');
    expect(errnoName(4001)).toBe('LIBBPF_ERRNO__FORMAT');
    expect(errnoName(9999)).toBe('errno 9999');
  });

  it('finds cgroup v2 on unified and hybrid hosts, and bpffs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-mounts-'));
    onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'mounts');
    writeFileSync(file, 'cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n');
    expect(cgroup2Mount(readMounts(file))).toBe('/sys/fs/cgroup');
    expect(bpffsMount(readMounts(file))).toBe('/sys/fs/bpf');
    writeFileSync(file, 'tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n');
    expect(cgroup2Mount(readMounts(file))).toBe('/sys/fs/cgroup/unified');
    expect(bpffsMount(readMounts(file))).toBeUndefined();
  });
});
