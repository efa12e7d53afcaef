/**
 * Egress: where the node agent sends a connection that matched a ServiceEntry, and the resolver
 * it uses for DNS entries. Pure choices over a match (`egressTarget`) and one bounded TTL cache
 * in front of a node:dns Resolver the agent owns (servers from AMBIT_DNS_RESOLVERS, else the
 * system's), so a DNS entry costs one lookup per TTL, not one per connection.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { EgressMatch } from '../discovery/mesh-state.js';
import type { ServiceEntryInfo } from '../config/model.js';
import { OperatorError } from '../util/errors.js';

/** Resolves a hostname to addresses (IPv4 first). Rejects with a message that names the host. */
export interface HostResolver {
  resolve(host: string): Promise<string[]>;
}

/** One answer as node:dns gives it with `{ ttl: true }`. */
export interface DnsAnswer { address: string; ttl: number }
export type DnsLookup = (host: string) => Promise<DnsAnswer[]>;

export interface CachingResolverOptions {
  /** DNS servers ("1.1.1.1", "1.1.1.1:53", "[::1]:5353"); none: the system's (/etc/resolv.conf). */
  servers?: string[];
  /** The lookup itself, for tests; default: A, then AAAA, through a node:dns Resolver. */
  lookup?: DnsLookup;
  /** Hosts kept at most (default 1024); the oldest is dropped first. */
  maxEntries?: number;
  /** A record's TTL is kept within these bounds, in seconds (default 5 and 300). */
  minTtlS?: number;
  maxTtlS?: number;
  /** A failed lookup is remembered this long (ms, default 5000), so a dead name is not asked for on every connection. */
  negativeMs?: number;
  /** Per query (ms, default 2000), two tries. */
  timeoutMs?: number;
  now?: () => number;
}

interface CacheEntry { addresses?: string[]; error?: string; expires: number }

/** A bounded TTL cache over DNS lookups; concurrent lookups of one host share one query. */
export class CachingResolver implements HostResolver {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<string[]>>();
  private readonly lookup: DnsLookup;
  private readonly maxEntries: number;
  private readonly minTtlS: number;
  private readonly maxTtlS: number;
  private readonly negativeMs: number;
  private readonly now: () => number;

  constructor(opts: CachingResolverOptions = {}) {
    this.maxEntries = opts.maxEntries ?? 1024;
    this.minTtlS = opts.minTtlS ?? 5;
    this.maxTtlS = opts.maxTtlS ?? 300;
    this.negativeMs = opts.negativeMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.lookup = opts.lookup ?? dnsLookup(opts.servers ?? [], opts.timeoutMs ?? 2000);
  }

  /** Hosts cached now (answers and remembered failures). */
  get size(): number {
    return this.cache.size;
  }

  async resolve(host: string): Promise<string[]> {
    if (isIP(host) !== 0) return [host];
    const name = host.toLowerCase();
    const hit = this.cache.get(name);
    if (hit && hit.expires > this.now()) {
      if (hit.error) throw new Error(hit.error);
      return hit.addresses!;
    }
    let pending = this.inflight.get(name);
    if (!pending) {
      pending = this.query(name).finally(() => this.inflight.delete(name));
      this.inflight.set(name, pending);
    }
    return pending;
  }

  private async query(name: string): Promise<string[]> {
    try {
      const answers = await this.lookup(name);
      if (answers.length === 0) throw new Error('no A or AAAA record');
      const ttl = Math.min(this.maxTtlS, Math.max(this.minTtlS, Math.min(...answers.map((a) => a.ttl))));
      const addresses = answers.map((a) => a.address);
      this.store(name, { addresses, expires: this.now() + ttl * 1000 });
      return addresses;
    } catch (err) {
      const error = `resolving ${name}: ${(err as Error).message}`;
      this.store(name, { error, expires: this.now() + this.negativeMs });
      throw new Error(error);
    }
  }

  private store(name: string, entry: CacheEntry): void {
    this.cache.delete(name);
    while (this.cache.size >= this.maxEntries) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(name, entry);
  }
}

/** A, then AAAA when there is no A record, through a Resolver of these servers (none: the system's). */
function dnsLookup(servers: string[], timeoutMs: number): DnsLookup {
  const resolver = new Resolver({ timeout: timeoutMs, tries: 2 });
  if (servers.length > 0) resolver.setServers(servers);
  const noRecord = (err: unknown) => ['ENODATA', 'ENOTFOUND'].includes((err as NodeJS.ErrnoException).code ?? '');
  return async (host) => {
    try {
      const v4 = await resolver.resolve4(host, { ttl: true });
      if (v4.length > 0) return v4;
    } catch (err) {
      if (!noRecord(err)) throw err;
    }
    return resolver.resolve6(host, { ttl: true });
  };
}

/**
 * AMBIT_DNS_RESOLVERS (or --dns-resolvers): comma-separated servers, each an address with an
 * optional port ("10.0.0.10", "10.0.0.10:53", "[fd00::a]:53"). Empty: the system's.
 */
export function parseDnsResolvers(text: string | undefined, what = 'AMBIT_DNS_RESOLVERS'): string[] {
  if (!text?.trim()) return [];
  return text.split(',').map((s) => s.trim()).filter(Boolean).map((server) => {
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(server);
    const addr = m?.[1] ?? m?.[2];
    const port = m?.[3] === undefined ? undefined : Number(m[3]);
    if (!addr || isIP(addr) === 0 || (m?.[1] !== undefined && isIP(addr) !== 6) || (port !== undefined && (port < 1 || port > 65535))) {
      throw new OperatorError(`${what}: "${server}" is not a DNS server address`, 'give IP addresses with an optional port, comma-separated: 10.96.0.10,10.96.0.11:53,[fd00::a]:53');
    }
    return server;
  });
}

/** The port an endpoint serves an entry's port on: its own ports map by the port's name, else the targetPort, else the number. */
export function endpointPort(port: EgressMatch['port'], endpoint?: ServiceEntryInfo['endpoints'][number]): number {
  return (port.name !== undefined ? endpoint?.ports?.[port.name] : undefined) ?? port.targetPort ?? port.number;
}

export type EgressTarget = { ip: string; port: number } | { error: string };

/**
 * Where a connection that matched a ServiceEntry goes (Istio's cluster types):
 * - NONE: the address and port the app called (ORIGINAL_DST).
 * - STATIC: the endpoint the app called, else one of the entry's endpoints at random.
 * - DNS: an endpoint at random (its address resolved when it is a name), or without endpoints the
 *   host the app called, resolved; any of the addresses at random (STRICT_DNS).
 * - DNS_ROUND_ROBIN: as DNS, but the first address of the answer (LOGICAL_DNS).
 */
export async function egressTarget(match: EgressMatch, called: { ip: string; port: number }, resolver: HostResolver, random: () => number = Math.random): Promise<EgressTarget> {
  const { entry, port } = match;
  const pickOne = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  switch (entry.resolution) {
    case 'NONE':
      return { ...called };
    case 'STATIC': {
      const endpoints = entry.endpoints.filter((e) => isIP(e.address) !== 0);
      const endpoint = match.endpoint ?? (endpoints.length > 0 ? pickOne(endpoints) : undefined);
      if (!endpoint) return { error: `ServiceEntry ${entry.namespace}/${entry.name} (STATIC) has no endpoint with an IP address` };
      return { ip: endpoint.address, port: endpointPort(port, endpoint) };
    }
    case 'DNS':
    case 'DNS_ROUND_ROBIN': {
      const endpoint = entry.endpoints.length > 0 ? pickOne(entry.endpoints) : undefined;
      const name = endpoint?.address ?? match.host;
      if (name.startsWith('*')) return { error: `ServiceEntry ${entry.namespace}/${entry.name}: the wildcard host ${name} cannot be resolved` };
      let addresses: string[];
      try {
        addresses = await resolver.resolve(name);
      } catch (err) {
        return { error: `ServiceEntry ${entry.namespace}/${entry.name}: ${(err as Error).message}` };
      }
      const ip = entry.resolution === 'DNS' ? pickOne(addresses) : addresses[0]!;
      return { ip, port: endpointPort(port, endpoint) };
    }
  }
}
