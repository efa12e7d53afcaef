/**
 * Typed codecs for the structs of bpf/ambit.h. Offsets and sizes come from
 * layout.generated.ts (read from the compiled objects' BTF), never from hand-counted bytes.
 */
import { addrToBytes, bytesToAddr, parseCidr } from './addr.js';
import { AMBIT, LAYOUTS } from './layout.generated.js';

export interface Codec<T> {
  readonly size: number;
  encode(value: T): Buffer;
  decode(bytes: Buffer): T;
}

export const u32Codec: Codec<number> = {
  size: 4,
  encode: (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; },
  decode: (b) => b.readUInt32LE(0),
};

export const u64Codec: Codec<bigint> = {
  size: 8,
  encode: (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(v); return b; },
  decode: (b) => b.readBigUInt64LE(0),
};

export const addrCodec: Codec<string> = {
  size: LAYOUTS.ambit_addr.size,
  encode: (ip) => addrToBytes(ip),
  decode: (b) => bytesToAddr(b.subarray(0, 16)),
};

export interface PodConfig {
  captureOutbound: boolean;
  captureInbound: boolean;
  /** UDP to port 53 steered to the agent's DNS listener (AMBIT_PORT_DNS); absent: off. */
  captureDns?: boolean;
  outboundPort: number;
  inboundPort: number;
  excludedOutboundPorts: number[];
  excludedInboundPorts: number[];
  /** CIDR strings: `10.96.0.0/12`, `fd00::/8`. */
  excludedCidrs: string[];
}

function checkPorts(field: string, ports: number[]): void {
  if (ports.length > AMBIT.MAX_EXCLUDED_PORTS) {
    throw new RangeError(`${field}: at most ${AMBIT.MAX_EXCLUDED_PORTS} ports, got ${ports.length}`);
  }
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new RangeError(`${field}: ${p} is not a port (1..65535)`);
  }
}

const pod = LAYOUTS.ambit_pod_config;
const cidrLayout = LAYOUTS.ambit_cidr;

export const podConfigCodec: Codec<PodConfig> = {
  size: pod.size,
  encode(c) {
    checkPorts('excludedOutboundPorts', c.excludedOutboundPorts);
    checkPorts('excludedInboundPorts', c.excludedInboundPorts);
    checkPorts('outboundPort', [c.outboundPort]);
    checkPorts('inboundPort', [c.inboundPort]);
    if (c.excludedCidrs.length > AMBIT.MAX_EXCLUDED_CIDRS) {
      throw new RangeError(`excludedCidrs: at most ${AMBIT.MAX_EXCLUDED_CIDRS}, got ${c.excludedCidrs.length}`);
    }
    const cidrs = c.excludedCidrs.map(parseCidr);
    const b = Buffer.alloc(pod.size);
    const flags = (c.captureOutbound ? AMBIT.POD_CAPTURE_OUTBOUND : 0) | (c.captureInbound ? AMBIT.POD_CAPTURE_INBOUND : 0)
      | (c.captureDns ? AMBIT.POD_CAPTURE_DNS : 0);
    b.writeUInt32LE(flags, pod.fields.flags.offset);
    b.writeUInt16LE(c.outboundPort, pod.fields.outbound_port.offset);
    b.writeUInt16LE(c.inboundPort, pod.fields.inbound_port.offset);
    c.excludedOutboundPorts.forEach((p, i) => b.writeUInt16LE(p, pod.fields.excluded_outbound_ports.offset + 2 * i));
    c.excludedInboundPorts.forEach((p, i) => b.writeUInt16LE(p, pod.fields.excluded_inbound_ports.offset + 2 * i));
    cidrs.forEach((cidr, i) => {
      const at = pod.fields.excluded_cidrs.offset + i * cidrLayout.size;
      cidr.addr.copy(b, at + cidrLayout.fields.addr.offset);
      b.writeUInt32LE(cidr.prefixLen, at + cidrLayout.fields.prefix_len.offset);
    });
    b.writeUInt32LE(cidrs.length, pod.fields.excluded_cidr_count.offset);
    return b;
  },
  decode(b) {
    const flags = b.readUInt32LE(pod.fields.flags.offset);
    const ports = (offset: number) => {
      const out: number[] = [];
      for (let i = 0; i < AMBIT.MAX_EXCLUDED_PORTS; i++) {
        const p = b.readUInt16LE(offset + 2 * i);
        if (p !== 0) out.push(p);
      }
      return out;
    };
    const count = b.readUInt32LE(pod.fields.excluded_cidr_count.offset);
    const excludedCidrs: string[] = [];
    for (let i = 0; i < Math.min(count, AMBIT.MAX_EXCLUDED_CIDRS); i++) {
      const at = pod.fields.excluded_cidrs.offset + i * cidrLayout.size;
      const addr = b.subarray(at, at + 16);
      const len = b.readUInt32LE(at + cidrLayout.fields.prefix_len.offset);
      const text = bytesToAddr(addr);
      excludedCidrs.push(text.includes(':') ? `${text}/${len}` : `${text}/${len - 96}`);
    }
    return {
      captureOutbound: (flags & AMBIT.POD_CAPTURE_OUTBOUND) !== 0,
      captureInbound: (flags & AMBIT.POD_CAPTURE_INBOUND) !== 0,
      ...((flags & AMBIT.POD_CAPTURE_DNS) !== 0 ? { captureDns: true } : {}),
      outboundPort: b.readUInt16LE(pod.fields.outbound_port.offset),
      inboundPort: b.readUInt16LE(pod.fields.inbound_port.offset),
      excludedOutboundPorts: ports(pod.fields.excluded_outbound_ports.offset),
      excludedInboundPorts: ports(pod.fields.excluded_inbound_ports.offset),
      excludedCidrs,
    };
  },
};

/** A captured connection as the agent sees it on accept. */
export interface SockKey {
  netnsCookie: bigint;
  clientAddr: string;
  clientPort: number;
  listenerAddr: string;
  listenerPort: number;
}

const key = LAYOUTS.ambit_sock_key;

export const sockKeyCodec: Codec<SockKey> = {
  size: key.size,
  encode(k) {
    const b = Buffer.alloc(key.size);
    b.writeBigUInt64LE(k.netnsCookie, key.fields.netns_cookie.offset);
    addrToBytes(k.clientAddr).copy(b, key.fields.client_addr.offset);
    addrToBytes(k.listenerAddr).copy(b, key.fields.listener_addr.offset);
    b.writeUInt16LE(k.clientPort, key.fields.client_port.offset);
    b.writeUInt16LE(k.listenerPort, key.fields.listener_port.offset);
    return b;
  },
  decode(b) {
    const at = (o: number) => b.subarray(o, o + 16);
    return {
      netnsCookie: b.readBigUInt64LE(key.fields.netns_cookie.offset),
      clientAddr: bytesToAddr(at(key.fields.client_addr.offset)),
      clientPort: b.readUInt16LE(key.fields.client_port.offset),
      listenerAddr: bytesToAddr(at(key.fields.listener_addr.offset)),
      listenerPort: b.readUInt16LE(key.fields.listener_port.offset),
    };
  },
};

export interface OrigDst {
  addr: string;
  port: number;
  /** The family the application connected with: 4 or 6 (an IPv4-mapped connect is 4). */
  family: 4 | 6;
  socketCookie: bigint;
}

const dst = LAYOUTS.ambit_orig_dst;
const AF_INET = 2;
const AF_INET6 = 10;

export const origDstCodec: Codec<OrigDst> = {
  size: dst.size,
  encode(d) {
    const b = Buffer.alloc(dst.size);
    addrToBytes(d.addr).copy(b, dst.fields.addr.offset);
    b.writeUInt16LE(d.port, dst.fields.port.offset);
    b.writeUInt16LE(d.family === 4 ? AF_INET : AF_INET6, dst.fields.family.offset);
    b.writeBigUInt64LE(d.socketCookie, dst.fields.socket_cookie.offset);
    return b;
  },
  decode(b) {
    return {
      addr: bytesToAddr(b.subarray(dst.fields.addr.offset, dst.fields.addr.offset + 16)),
      port: b.readUInt16LE(dst.fields.port.offset),
      family: b.readUInt16LE(dst.fields.family.offset) === AF_INET ? 4 : 6,
      socketCookie: b.readBigUInt64LE(dst.fields.socket_cookie.offset),
    };
  },
};
