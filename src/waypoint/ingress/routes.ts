/**
 * An ingress gateway's routing: which routes a request on one of its servers gets, by the host
 * it names. The rules themselves are the waypoint's (compiled by ./routing/ against the same
 * services and DestinationRules, matched and materialized by `Router.routeEntries`); what differs
 * is how they are chosen — by the gateways they are bound to and the hosts they name, not by
 * a called service. Pure, per config version.
 *
 * Where ambit had to choose (Istio's behaviour unless said otherwise):
 * - VirtualServices bind an Istio Gateway server when their `gateways` name its Gateway
 *   (`name` in the VirtualService's namespace, or `ns/name`), one of their `hosts` meets one of
 *   the server's hosts, and the server's host allows the VirtualService's namespace (`ns/host`).
 *   Hosts are taken literally (a name without dots is a service's short name in the
 *   VirtualService's namespace). For a request, every bound VirtualService whose host matches
 *   the Host header applies, most specific host first, then namespace/name; their http rules
 *   are tried in that order (Istio merges the VirtualServices of one host on a gateway).
 *   A `match` with `gateways` applies only if it names this gateway; `match.port` is the
 *   listener's port.
 * - HTTPRoutes and GRPCRoutes bind a Gateway API listener through `parentRefs` (kind Gateway,
 *   namespace defaulting to the route's, `sectionName` = the listener's name, `port` = its port)
 *   from a namespace its allowedRoutes accepts; a request gets the routes whose `hostnames`
 *   (none: any) match its host, their rules merged in the Gateway API's precedence.
 * - TLS passthrough: VirtualService `tls` rules (`match[].sniHosts`, `match[].port`) and
 *   TLSRoutes (`hostnames`, the first rule's backendRefs); TCP and terminated TLS servers:
 *   VirtualService `tcp` rules (`match[].port`). The first rule that matches wins; weights pick
 *   one destination per connection.
 * - No route: the request is answered 404 (NR); a connection with no route is closed.
 */
import type { ConfigObject, Service } from '../../config/model.js';
import { isObject } from '../../config/schema.js';
import type { Router } from '../routing.js';
import { type CompileContext, num, placeholder, ref, resolveHost } from '../routing/common.js';
import { compileGatewayRoute, mergeSorted } from '../routing/gateway-api.js';
import type { Entry, GwEntry } from '../routing/match.js';
import type { GwRouteSpec, VsDestination, VsHttpRoute, VsSpec } from '../routing/specs.js';
import type { Destination, RouteAction } from '../routing/types.js';
import { compileVirtualService, vsDestination } from '../routing/virtual-service.js';
import { hostScore, hostsIntersect, type IngressServer } from './servers.js';

/** Where a TCP or passed-through TLS connection goes, and which rule said so. */
export interface StreamTarget { destination: Destination; route: string }

interface BoundVs { cfg: ConfigObject; spec: VsSpec; hosts: string[]; gateways: Set<string> }
interface BoundRoute { cfg: ConfigObject; kind: string; hostnames: string[]; parents: { gateway: string; sectionName?: string; port?: number }[] }
interface StreamRule { route: string; sni?: string[]; port?: number; destinations: { template: VsDestination; weight: number; cfg: ConfigObject }[] }

/** Distinct request hosts whose rules are kept; more (a client making up hosts) are computed per request. */
const CACHE_LIMIT = 1024;

export class GatewayRoutes {
  private readonly ctx: CompileContext;
  private readonly virtualServices: BoundVs[] = [];
  private readonly routes: BoundRoute[] = [];
  /** Compiled http rules by `gateway|VirtualService`. */
  private readonly vsEntries = new Map<string, Entry[]>();
  private readonly routeEntries = new Map<ConfigObject, GwEntry[] | undefined>();
  private readonly cache = new Map<string, Entry[]>();

  constructor(l7: readonly ConfigObject[], private readonly router: Router, private readonly random: () => number = Math.random) {
    this.ctx = router.compileContext;
    const sorted = [...l7].sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    for (const cfg of sorted) {
      if (cfg.apiVersion.startsWith('networking.istio.io/') && cfg.kind === 'VirtualService') {
        const spec = (isObject(cfg.spec) ? cfg.spec : {}) as VsSpec;
        const gateways = new Set((spec.gateways ?? []).filter((g) => g !== 'mesh').map((g) => gatewayRef(g, cfg.namespace)));
        if (gateways.size === 0) continue;
        this.virtualServices.push({ cfg, spec, gateways, hosts: (spec.hosts ?? []).map((h) => literalHost(h, cfg.namespace, this.ctx.domain)) });
      } else if (cfg.apiVersion.startsWith('gateway.networking.k8s.io/') && (cfg.kind === 'HTTPRoute' || cfg.kind === 'GRPCRoute' || cfg.kind === 'TLSRoute')) {
        const spec = (isObject(cfg.spec) ? cfg.spec : {}) as GwRouteSpec & { hostnames?: string[] };
        const parents = (spec.parentRefs ?? [])
          .filter((p) => (p.kind ?? 'Gateway') === 'Gateway' && (p.group ?? 'gateway.networking.k8s.io') === 'gateway.networking.k8s.io')
          .map((p) => ({ gateway: `${p.namespace ?? cfg.namespace}/${p.name}`, ...(p.sectionName !== undefined ? { sectionName: p.sectionName } : {}), ...(num(p.port) !== undefined ? { port: num(p.port)! } : {}) }));
        if (parents.length > 0) this.routes.push({ cfg, kind: cfg.kind, parents, hostnames: (spec.hostnames ?? []).map((h) => h.toLowerCase()) });
      }
    }
  }

  /** Warnings of compiling the routes (the router's, shared with it). */
  get warnings(): readonly string[] {
    return this.router.warnings;
  }

  /** Where an HTTP request on `server` for `host` goes (no bound route matches: NO_ROUTE, a 404). */
  route(server: IngressServer | readonly IngressServer[], host: string, req: { method: string; path: string; authority: string; headers: Record<string, string | string[] | undefined>; scheme: string }): RouteAction {
    const servers = Array.isArray(server) ? server as readonly IngressServer[] : [server as IngressServer];
    // Plaintext servers of one port share their routes (Envoy's one route table per port): each
    // server's rules in turn, the server that names the host most specifically first.
    const entries = servers.length === 1 ? this.httpEntries(servers[0]!, host) : [...new Set(servers.flatMap((s) => this.httpEntries(s, host)))];
    return this.router.routeEntries(entries, {
      service: placeholder(host), port: servers[0]?.port ?? 0, method: req.method, path: req.path, authority: req.authority, headers: req.headers, scheme: req.scheme,
    });
  }

  /** The HTTP rules a request on `server` for `host` is tried against, in order. */
  httpEntries(server: IngressServer, host: string): Entry[] {
    const key = `${server.id}|${host}`;
    const cached = this.cache.get(key);
    if (cached) return cached;
    const entries = server.api === 'istio' ? this.istioEntries(server, host) : this.gatewayApiEntries(server, host);
    if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
    this.cache.set(key, entries);
    return entries;
  }

  /** Where a passed-through TLS connection with this SNI goes (VirtualService tls rules, TLSRoutes). */
  tlsTarget(server: IngressServer, sni: string | undefined): StreamTarget | undefined {
    if (server.api === 'gateway-api') {
      if (sni === undefined) return undefined;
      for (const r of this.attached(server, ['TLSRoute'])) {
        if (r.hostnames.length > 0 && !r.hostnames.some((h) => hostScore(h, sni) >= 0)) continue;
        const rules = (isObject(r.cfg.spec) && Array.isArray(r.cfg.spec.rules) ? r.cfg.spec.rules : []) as { backendRefs?: { name: string; namespace?: string; port?: number; weight?: number; kind?: string }[] }[];
        const backends = (rules[0]?.backendRefs ?? []).filter((b) => (b.kind ?? 'Service') === 'Service');
        const rule: StreamRule = {
          route: `${ref(r.cfg)}#0`,
          destinations: backends.map((b) => ({ cfg: r.cfg, weight: num(b.weight) ?? 1, template: { host: `${b.name}.${b.namespace ?? r.cfg.namespace}.svc.${this.ctx.domain}`, ...(num(b.port) !== undefined ? { port: { number: num(b.port)! } } : {}) } })),
        };
        return this.pick(rule, server);
      }
      return undefined;
    }
    for (const vs of this.boundVirtualServices(server, sni)) {
      for (const rule of streamRules(vs.cfg, 'tls')) {
        if (rule.port !== undefined && rule.port !== server.port) continue;
        if (rule.sni && (sni === undefined || !rule.sni.some((h) => hostScore(h, sni) >= 0))) continue;
        return this.pick(rule, server);
      }
    }
    return undefined;
  }

  /** Where a TCP connection (a TCP server, or TLS terminated on a TLS server) goes: VirtualService tcp rules. */
  tcpTarget(server: IngressServer, sni?: string): StreamTarget | undefined {
    if (server.api !== 'istio') return undefined;
    for (const vs of this.boundVirtualServices(server, sni)) {
      for (const rule of streamRules(vs.cfg, 'tcp')) {
        if (rule.port !== undefined && rule.port !== server.port) continue;
        return this.pick(rule, server);
      }
    }
    return undefined;
  }

  // -------------------------------------------------------------------------------------------

  /** The Istio VirtualServices bound to this server whose host matches `host` (all bound ones when it is undefined), most specific first. */
  private boundVirtualServices(server: IngressServer, host: string | undefined): BoundVs[] {
    const gw = `${server.gateway.namespace}/${server.gateway.name}`;
    const scored: { vs: BoundVs; score: number }[] = [];
    for (const vs of this.virtualServices) {
      if (!vs.gateways.has(gw)) continue;
      let score = -1;
      for (const h of vs.hosts) {
        // The server must serve the host for this VirtualService's namespace.
        const allowed = server.hosts.some((sh) => (sh.namespace === '*' || sh.namespace === vs.cfg.namespace) && hostsIntersect(sh.host, h) && (host === undefined || hostScore(sh.host, host) >= 0));
        if (!allowed) continue;
        score = Math.max(score, host === undefined ? 0 : hostScore(h, host));
      }
      if (score >= 0) scored.push({ vs, score });
    }
    return scored.sort((a, b) => b.score - a.score).map((s) => s.vs);
  }

  private istioEntries(server: IngressServer, host: string): Entry[] {
    const out: Entry[] = [];
    const gw = `${server.gateway.namespace}/${server.gateway.name}`;
    for (const vs of this.boundVirtualServices(server, host)) {
      const key = `${gw}|${ref(vs.cfg)}`;
      let entries = this.vsEntries.get(key);
      if (!entries) {
        const { rules, dropped } = forGateway(vs.spec.http ?? [], vs.cfg.namespace, gw);
        entries = compileVirtualService(this.ctx, vs.cfg, { ...vs.spec, http: rules }).filter((e) => !dropped.has(e.route.slice(e.route.lastIndexOf('#') + 1)));
        this.vsEntries.set(key, entries);
      }
      for (const e of entries) if (e.port === undefined || e.port === server.port) out.push(e);
    }
    return out;
  }

  private gatewayApiEntries(server: IngressServer, host: string): Entry[] {
    const bindings = [];
    for (const r of this.attached(server, ['HTTPRoute', 'GRPCRoute'])) {
      if (r.hostnames.length > 0 && !r.hostnames.some((h) => hostScore(h, host) >= 0)) continue;
      let entries = this.routeEntries.get(r.cfg);
      if (!this.routeEntries.has(r.cfg)) this.routeEntries.set(r.cfg, (entries = compileGatewayRoute(this.ctx, r.cfg, r.cfg.spec as GwRouteSpec)));
      if (entries) bindings.push({ route: { cfg: r.cfg, entries } });
    }
    return mergeSorted(bindings);
  }

  /** Gateway API routes of these kinds attached to a listener. */
  private attached(server: IngressServer, kinds: string[]): BoundRoute[] {
    const gw = `${server.gateway.namespace}/${server.gateway.name}`;
    const allowed = server.hosts[0]?.namespace ?? server.gateway.namespace;
    return this.routes.filter((r) => kinds.includes(r.kind)
      && (allowed === '*' || allowed === r.cfg.namespace)
      && r.parents.some((p) => p.gateway === gw && (p.sectionName === undefined || p.sectionName === server.name) && (p.port === undefined || p.port === server.port))
      && (r.hostnames.length === 0 || server.hosts.some((sh) => r.hostnames.some((h) => hostsIntersect(sh.host, h)))));
  }

  /** One destination of a stream rule, by weight, resolved against the services. */
  private pick(rule: StreamRule, server: IngressServer): StreamTarget | undefined {
    const total = rule.destinations.reduce((t, d) => t + Math.max(0, d.weight), 0);
    if (rule.destinations.length === 0) return undefined;
    let at = this.random() * total;
    let chosen = rule.destinations[0]!;
    for (const d of rule.destinations) {
      at -= Math.max(0, d.weight);
      if (at < 0) {
        chosen = d;
        break;
      }
    }
    const t = vsDestination(this.ctx, chosen.cfg, chosen.template, 100, (m) => this.ctx.warn(`${chosen.cfg.kind} ${ref(chosen.cfg)}: ${m}`));
    const port = t.port ?? defaultStreamPort(t.service, server.port);
    if (t.missing || port === undefined) return undefined;
    return { route: rule.route, destination: { ...t, port } };
  }
}

/** A VirtualService `gateways` entry as `ns/name`. */
function gatewayRef(g: string, namespace: string): string {
  return g.includes('/') ? g : `${namespace}/${g}`;
}

/** A VirtualService host on a gateway: literal, except a short name, which is a service in the VirtualService's namespace. */
function literalHost(h: string, namespace: string, domain: string): string {
  const host = h.toLowerCase();
  return host.includes('.') || host === '*' ? host : resolveHost(host, namespace, domain);
}

/** The destination port of a stream whose rule names none: the service's only port, else the listener's if the service has it. */
function defaultStreamPort(svc: Service, listenerPort: number): number | undefined {
  if (svc.ports.length === 1) return svc.ports[0]!.port;
  return svc.ports.some((p) => p.port === listenerPort) ? listenerPort : undefined;
}

/**
 * A VirtualService's http rules for one gateway: a match naming `gateways` is kept (without the
 * field) only if it names this one; a rule all of whose matches named others is `dropped` (by
 * index, so that the other rules keep their names `ns/name#i`).
 */
function forGateway(rules: VsHttpRoute[], namespace: string, gw: string): { rules: VsHttpRoute[]; dropped: Set<string> } {
  const dropped = new Set<string>();
  const out = rules.map((rule, i) => {
    if (!rule.match?.some((m) => m.gateways && m.gateways.length > 0)) return rule;
    const match = rule.match
      .filter((m) => !m.gateways || m.gateways.length === 0 || m.gateways.some((g) => gatewayRef(g, namespace) === gw))
      .map(({ gateways: _gateways, ...rest }) => rest);
    if (match.length === 0) dropped.add(String(i));
    return { ...rule, match };
  });
  return { rules: out, dropped };
}

/** A VirtualService's tls or tcp rules, read. */
function streamRules(cfg: ConfigObject, kind: 'tls' | 'tcp'): StreamRule[] {
  const spec = isObject(cfg.spec) ? cfg.spec : {};
  const rules = Array.isArray(spec[kind]) ? spec[kind] as unknown[] : [];
  const out: StreamRule[] = [];
  rules.forEach((r, i) => {
    if (!isObject(r)) return;
    const routes = (Array.isArray(r.route) ? r.route : []).filter(isObject);
    const destinations = routes.filter((d) => isObject(d.destination) && typeof d.destination.host === 'string')
      .map((d) => ({ cfg, template: d.destination as unknown as VsDestination, weight: routes.length > 1 ? num(d.weight) ?? 0 : 1 }));
    const matches = (Array.isArray(r.match) ? r.match : [undefined]).map((m) => (isObject(m) ? m : {}));
    for (const m of matches) {
      const sni = Array.isArray(m.sniHosts) ? m.sniHosts.filter((h): h is string => typeof h === 'string').map((h) => h.toLowerCase()) : undefined;
      const port = num(m.port);
      out.push({ route: `${ref(cfg)}#${kind}${i}`, destinations, ...(sni && sni.length > 0 ? { sni } : {}), ...(port !== undefined ? { port } : {}) });
    }
  });
  return out;
}

