/** What every part of routing shares: hosts and their resolution, the index of configs by host, the compiled tables and the compilers' context. */
import type { ConfigObject, Service } from '../../config/model.js';
import type { Entry, GwEntry } from './match.js';

// ---------------------------------------------------------------------------------------------
// Small helpers

export function num(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return undefined;
}

export const ref = (c: ConfigObject) => `${c.namespace}/${c.name}`;
export const byRef = (a: ConfigObject, b: ConfigObject) => (a.namespace === b.namespace ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.namespace < b.namespace ? -1 : 1);

/** A host as written in a namespace, to the form a service hostname has. */
export function resolveHost(host: string, namespace: string, clusterDomain = 'cluster.local'): string {
  const h = host.toLowerCase();
  if (h.includes('*')) return h;
  const dots = h.split('.').length - 1;
  if (dots === 0) return `${h}.${namespace}.svc.${clusterDomain}`;
  if (dots === 1) return `${h}.svc.${clusterDomain}`;
  if (h.endsWith('.svc')) return `${h}.${clusterDomain}`;
  return h;
}

/** How specifically a resolved host names a hostname: the name itself beats the longest wildcard; -1: not at all. */
export function specificity(pattern: string, hostname: string): number {
  if (pattern === hostname) return Number.MAX_SAFE_INTEGER;
  if (pattern === '*') return 0;
  if (pattern.startsWith('*.')) return hostname.endsWith(pattern.slice(1)) ? pattern.length - 1 : -1;
  return -1;
}

/** Istio's exportTo: absent = everywhere; `.` = own namespace; `~` = nowhere. */
export function visible(exportTo: string[] | undefined, own: string, to: string): boolean {
  if (!exportTo || exportTo.length === 0) return true;
  return exportTo.some((e) => e === '*' || e === to || (e === '.' && own === to));
}

/** A service the config names but the model does not have, so a Destination can still say which. */
export function placeholder(host: string): Service {
  const m = /^([^.]+)\.([^.]+)\.svc\./.exec(host);
  return { namespace: m?.[2] ?? '', name: m?.[1] ?? host, hostname: host, vips: [], ports: [], endpoints: [] };
}

export function defaultPort(svc: Service, requestPort: number): number {
  return svc.ports.length === 1 ? svc.ports[0]!.port : requestPort;
}

// ---------------------------------------------------------------------------------------------
// The router

/** Config by the hosts it names: exact hosts in a map, wildcards (few) scanned; `order` keeps the config's namespace/name order. */
export class HostIndex<T> {
  private readonly exact = new Map<string, { item: T; order: number }[]>();
  private readonly wildcards: { item: T; order: number; pattern: string }[] = [];
  private count = 0;

  add(item: T, hosts: string[]): void {
    const order = this.count++;
    for (const h of new Set(hosts)) {
      if (h.includes('*')) this.wildcards.push({ item, order, pattern: h });
      else {
        let list = this.exact.get(h);
        if (!list) this.exact.set(h, (list = []));
        list.push({ item, order });
      }
    }
  }

  /** Every item naming the hostname, once, with how specifically (its most specific host). */
  lookup(hostname: string): { item: T; order: number; score: number }[] {
    const out = new Map<number, { item: T; order: number; score: number }>();
    for (const e of this.exact.get(hostname) ?? []) out.set(e.order, { ...e, score: specificity(hostname, hostname) });
    for (const w of this.wildcards) {
      const score = specificity(w.pattern, hostname);
      const seen = out.get(w.order);
      if (score >= 0 && (!seen || seen.score < score)) out.set(w.order, { item: w.item, order: w.order, score });
    }
    return [...out.values()];
  }
}

export interface GwRoute { cfg: ConfigObject; entries: GwEntry[] }
export interface GwBinding { route: GwRoute; ports?: Set<number>; consumer?: string }
export interface VsChoice { cfg: ConfigObject; entries: Entry[] }

export interface ServiceTable {
  service: Service;
  producer: GwBinding[];
  consumers: Map<string, GwBinding[]>;
  vs?: VsChoice;
  /** Entries by `port` or `port|consumer namespace`; null: the default route. */
  cache: Map<string, Entry[] | null>;
}

/** What the compilers need of the router: the services, the cluster domain, subsets, and where warnings and bindings go. */
export interface CompileContext {
  readonly domain: string;
  serviceByHost(hostname: string): Service | undefined;
  /** By "<namespace>/<name>". */
  serviceByName(key: string): Service | undefined;
  /** The labels a subset of a service selects (its DestinationRule), undefined when it has none by that name. */
  subsetLabels(service: Service, subset: string | undefined): Record<string, string> | undefined;
  warn(message: string): void;
  /** An HTTPRoute or GRPCRoute attached to a service. */
  bind(hostname: string, binding: GwBinding): void;
}
