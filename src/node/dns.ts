/**
 * The node agent's DNS server (Istio's DNS proxying): the eBPF programs steer an enrolled pod's
 * UDP queries to port 53 to the agent's listener in the pod (127.0.0.1:15053, [::1]:15053), and
 * its TCP connections to port 53 reach the agent's outbound listener like any connection.
 *
 *   A/AAAA of a mesh service's host name   → its VIPs (a headless service: its endpoints' pods)
 *   A/AAAA of a ServiceEntry host          → its addresses, or the VIP the controller allocated
 *   a name the mesh knows, no address of the asked family → NOERROR, no answer (NODATA)
 *   anything else                          → forwarded, as sent, to the resolver the pod asked,
 *                                            from a socket in the pod's netns that the eBPF
 *                                            programs leave alone; SERVFAIL if it does not answer
 */
import { createSocket, type Socket as UdpSocket, type RemoteInfo } from 'node:dgram';
import { isIPv4, Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Service, Workload } from '../config/model.js';
import { AGENT_SOCKET_MARK, socketInNetns, udpSocketInNetns } from '../host/netns.js';
import type { Counter } from 'prom-client';
import {
  buildAnswer, buildError, DNS_CLASS_IN, DNS_MAX_QUERY_BYTES, DNS_TYPE_A, DNS_TYPE_AAAA, frame, isAnswerTo,
  parseQuery, RCODE, TcpFramer,
} from './dns-wire.js';

/** The addresses the mesh gives one name. */
export interface DnsRecordSet {
  v4: string[];
  v6: string[];
}

/** Lower-case fully qualified names (no trailing dot) → addresses. */
export type DnsTable = ReadonlyMap<string, DnsRecordSet>;

/** What the DNS server needs of a ServiceEntry (src/config/model.ts ServiceEntryInfo). */
export interface DnsServiceEntry {
  dnsAddresses: Record<string, string[]>;
}

/**
 * The names the mesh answers for: every service's host name (`<svc>.<ns>.svc.<cluster domain>`)
 * with its VIPs, or its endpoints' pod addresses when it has none (headless), and every
 * ServiceEntry host that is not a wildcard with its DNS addresses. Names in several are merged.
 */
export function buildDnsTable(services: Iterable<Service>, workloads: ReadonlyMap<string, Workload>, serviceEntries: Iterable<DnsServiceEntry> = []): Map<string, DnsRecordSet> {
  const table = new Map<string, { v4: Set<string>; v6: Set<string> }>();
  const add = (host: string, addrs: Iterable<string>) => {
    const name = host.toLowerCase().replace(/\.$/, '');
    if (name === '' || name.startsWith('*')) return;
    let set = table.get(name);
    if (!set) table.set(name, (set = { v4: new Set(), v6: new Set() }));
    for (const a of addrs) (isIPv4(a) ? set.v4 : set.v6).add(a);
  };
  for (const svc of services) {
    if (svc.vips.length > 0) add(svc.hostname, svc.vips);
    else add(svc.hostname, svc.endpoints.flatMap((uid) => workloads.get(uid)?.ips ?? []));
  }
  for (const se of serviceEntries) for (const [host, addrs] of Object.entries(se.dnsAddresses ?? {})) add(host, addrs);
  return new Map([...table].map(([name, s]) => [name, { v4: [...s.v4], v6: [...s.v6] }]));
}

export interface Resolver {
  addr: string;
  port: number;
}

/** Sends one query to a resolver and returns its answer: the pod's side of forwarding. */
export interface DnsUpstream {
  exchange(query: Buffer, resolver: Resolver, transport: 'udp' | 'tcp', timeoutMs: number): Promise<Buffer>;
}

/** One pod as the DNS server sees it. */
export interface DnsPod {
  /** namespace/name, for logs. */
  name: string;
  namespace: string;
  upstream: DnsUpstream;
  /** Forwards in flight (the server counts them against `maxPendingPerPod`). */
  pending: number;
}

export type DnsResult = 'local' | 'forwarded' | 'failed' | 'malformed';

export interface DnsServerOptions {
  /** The current names; undefined before the first config (everything is forwarded). */
  names: () => DnsTable | undefined;
  /**
   * A mesh name whose addresses the agent must ask the controller for first (a headless service
   * a node-scoped agent holds by its head only): resolves once they are known, or given up on.
   * Undefined: nothing to wait for.
   */
  pending?: (name: string) => Promise<void> | undefined;
  log: Logger;
  /** ambit_dns_queries_total{namespace, result}. */
  queries?: Counter;
  ttl?: number;
  timeoutMs?: number;
  maxPendingPerPod?: number;
  /** How long a DNS message over TCP may take from its first byte to its last (DNS_TCP_MESSAGE_MS). */
  tcpMessageMs?: number;
}

/** Addresses per local answer over UDP: 8 AAAA records and the longest question fit 512 bytes. */
const MAX_UDP_ANSWERS = 8;
const MAX_TCP_ANSWERS = 64;
/** A TCP connection that sends no complete query for this long is closed. */
export const DNS_TCP_IDLE_MS = 30_000;
/** A DNS message over TCP must arrive whole within this long of its first byte. */
export const DNS_TCP_MESSAGE_MS = 10_000;

export class DnsServer {
  readonly ttl: number;
  readonly timeoutMs: number;
  readonly maxPendingPerPod: number;

  constructor(private readonly opts: DnsServerOptions) {
    this.ttl = opts.ttl ?? 30;
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.maxPendingPerPod = opts.maxPendingPerPod ?? 256;
  }

  private count(pod: DnsPod, result: DnsResult): void {
    this.opts.queries?.inc({ namespace: pod.namespace, result });
  }

  /**
   * The answer to one query from `pod`, addressed to `resolver` (undefined: the eBPF record was
   * not found), or undefined to send nothing.
   */
  async answer(query: Buffer, pod: DnsPod, resolver: Resolver | undefined, transport: 'udp' | 'tcp'): Promise<Buffer | undefined> {
    const parsed = parseQuery(query);
    if (parsed.kind === 'drop') {
      this.count(pod, 'malformed');
      return undefined;
    }
    if (parsed.kind === 'formerr') {
      this.count(pod, 'malformed');
      this.opts.log.debug({ pod: pod.name, why: parsed.why }, 'malformed DNS query: FORMERR');
      return buildError(query, parsed, RCODE.FORMERR);
    }
    const { question } = parsed;
    const lookup = parsed.opcode === 0 && question.class === DNS_CLASS_IN && (question.type === DNS_TYPE_A || question.type === DNS_TYPE_AAAA) && question.name !== undefined
      ? question.name : undefined;
    let local = lookup === undefined ? undefined : this.opts.names()?.get(lookup);
    if (lookup !== undefined && !local) {
      const wait = this.opts.pending?.(lookup);
      if (wait) {
        await wait;
        local = this.opts.names()?.get(lookup);
      }
    }
    if (local) {
      this.count(pod, 'local');
      const all = question.type === DNS_TYPE_A ? local.v4 : local.v6;
      return buildAnswer(query, parsed, RCODE.NOERROR, all.slice(0, transport === 'udp' ? MAX_UDP_ANSWERS : MAX_TCP_ANSWERS), this.ttl);
    }
    const fail = (why: string) => {
      this.count(pod, 'failed');
      this.opts.log.debug({ pod: pod.name, name: question.name, type: question.type, resolver: resolver && `${resolver.addr}:${resolver.port}`, why }, 'DNS query not forwarded: SERVFAIL');
      return buildError(query, parsed, RCODE.SERVFAIL);
    };
    if (!resolver) return fail('the resolver the pod asked is not known (no eBPF record for its socket)');
    if (pod.pending >= this.maxPendingPerPod) return fail(`${pod.pending} queries of the pod are forwarded already`);
    pod.pending++;
    try {
      const reply = await pod.upstream.exchange(query, resolver, transport, this.timeoutMs);
      this.count(pod, 'forwarded');
      return reply;
    } catch (err) {
      return fail((err as Error).message);
    } finally {
      pod.pending--;
    }
  }

  /** Serves queries arriving on a pod's UDP listener; `resolverOf` finds where each was addressed. */
  serveUdp(socket: UdpSocket, pod: DnsPod, resolverOf: (rinfo: RemoteInfo) => Resolver | undefined): void {
    socket.on('message', (msg, rinfo) => {
      let resolver: Resolver | undefined;
      try {
        resolver = resolverOf(rinfo);
      } catch (err) {
        this.opts.log.warn({ pod: pod.name, err: (err as Error).message }, 'reading the DNS record failed');
      }
      void this.answer(msg, pod, resolver, 'udp').then((reply) => {
        if (reply) socket.send(reply, rinfo.port, rinfo.address, () => undefined);
      });
    });
    socket.on('error', (err) => this.opts.log.warn({ pod: pod.name, err: err.message }, 'DNS listener error'));
  }

  /** Serves DNS over TCP on a connection the pod opened to `resolver` port 53 (captured to 15001). */
  serveTcp(socket: Socket, pod: DnsPod, resolver: Resolver): void {
    const framer = new TcpFramer(DNS_MAX_QUERY_BYTES);
    socket.setTimeout(DNS_TCP_IDLE_MS, () => socket.destroy());
    // A message begun must be complete within DNS_TCP_MESSAGE_MS, however slowly its bytes trickle.
    let incomplete: NodeJS.Timeout | undefined;
    socket.on('close', () => clearTimeout(incomplete));
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      let queries: Buffer[];
      try {
        queries = framer.push(chunk);
      } catch (err) {
        this.count(pod, 'malformed');
        this.opts.log.debug({ pod: pod.name, err: (err as Error).message }, 'DNS over TCP: connection closed');
        socket.destroy();
        return;
      }
      if (framer.pending === 0) {
        clearTimeout(incomplete);
        incomplete = undefined;
      } else {
        incomplete ??= setTimeout(() => {
          this.count(pod, 'malformed');
          socket.destroy();
        }, this.opts.tcpMessageMs ?? DNS_TCP_MESSAGE_MS);
      }
      for (const q of queries) {
        void this.answer(Buffer.from(q), pod, resolver, 'tcp').then((reply) => {
          // A client that sends queries and never reads its answers is not read any further.
          if (reply && !socket.destroyed && !socket.write(frame(reply))) socket.pause();
        });
      }
    });
    socket.on('drain', () => socket.resume());
  }
}

/**
 * Forwarding from inside a pod's netns: a fresh socket per query (a random source port, as a stub
 * resolver uses), marked so that ambit's programs leave it alone, and an answer taken only from
 * the resolver asked and only with the query's id.
 */
export function netnsUpstream(netnsPath: string): DnsUpstream {
  return {
    exchange(query, resolver, transport, timeoutMs) {
      return transport === 'udp' ? udpExchange(netnsPath, query, resolver, timeoutMs) : tcpExchange(netnsPath, query, resolver, timeoutMs);
    },
  };
}

function udpExchange(netnsPath: string, query: Buffer, resolver: Resolver, timeoutMs: number): Promise<Buffer> {
  const v4 = isIPv4(resolver.addr);
  const id = query.readUInt16BE(0);
  return new Promise((resolve, reject) => {
    let socket: UdpSocket;
    try {
      const fd = udpSocketInNetns(netnsPath, v4 ? '0.0.0.0' : '::', 0, { mark: AGENT_SOCKET_MARK });
      socket = createSocket(v4 ? 'udp4' : 'udp6');
      socket.bind({ fd });
    } catch (err) {
      reject(err as Error);
      return;
    }
    let settled = false;
    const done = (err: Error | undefined, reply?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.close();
      if (err) reject(err);
      else resolve(reply!);
    };
    const timer = setTimeout(() => done(new Error(`no answer from ${resolver.addr}:${resolver.port} within ${timeoutMs} ms`)), timeoutMs);
    socket.on('error', (err) => done(err));
    socket.on('message', (msg, rinfo) => {
      if (rinfo.address.replace(/^::ffff:/, '') !== resolver.addr || rinfo.port !== resolver.port || !isAnswerTo(msg, id)) return;
      done(undefined, msg);
    });
    socket.send(query, resolver.port, resolver.addr, (err) => {
      if (err) done(err);
    });
  });
}

function tcpExchange(netnsPath: string, query: Buffer, resolver: Resolver, timeoutMs: number): Promise<Buffer> {
  const id = query.readUInt16BE(0);
  return new Promise((resolve, reject) => {
    let socket: Socket;
    try {
      socket = new Socket({ fd: socketInNetns(netnsPath, isIPv4(resolver.addr) ? 4 : 6, { mark: AGENT_SOCKET_MARK }), readable: true, writable: true });
    } catch (err) {
      reject(err as Error);
      return;
    }
    const framer = new TcpFramer(0xffff);
    let settled = false;
    const done = (err: Error | undefined, reply?: Buffer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(reply!);
    };
    const timer = setTimeout(() => done(new Error(`no answer from ${resolver.addr}:${resolver.port} (TCP) within ${timeoutMs} ms`)), timeoutMs);
    socket.on('error', (err) => done(err));
    socket.on('close', () => done(new Error(`${resolver.addr}:${resolver.port} (TCP) closed without an answer`)));
    socket.on('data', (chunk: Buffer) => {
      const reply = framer.push(chunk).find((m) => isAnswerTo(m, id));
      if (reply) done(undefined, Buffer.from(reply));
    });
    socket.connect(resolver.port, resolver.addr, () => socket.write(frame(query)));
  });
}
