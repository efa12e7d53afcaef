/**
 * The waypoint's routing engine: Istio VirtualService/DestinationRule and Gateway API
 * HTTPRoute/GRPCRoute compiled once per config version into per-service tables (regexes compiled,
 * destinations resolved, Gateway API matches sorted by precedence), then asked per request where
 * it goes and what to do with it. Pure: no I/O, no timers, randomness only through `random`.
 *
 * Semantics are Istio's translation to Envoy routes (pilot/pkg/networking/core/route,
 * pilot/pkg/config/kube/gateway/conversion.go). Where ambit had to choose:
 * - Which config applies to a service, per request port: HTTPRoutes/GRPCRoutes whose parentRefs
 *   name the Service (kind Service, group "" or "core"; namespace defaults to the route's; `port`
 *   or `sectionName` = port name restricts the port), else the VirtualService, else a default
 *   route to the service itself (port = request port, weight 100, route `default`). As in Istio's
 *   ambient waypoints, HTTPRoutes take precedence over a VirtualService for the same service (with
 *   a warning); a kind with no rule on the request's port does not apply on that port (Istio
 *   builds no routes for it there) and the next one is tried.
 * - SMI TrafficSplit (split.smi-spec.io v1alpha1 to v1alpha4) counts as VirtualService-level
 *   config for its root service and comes after it: HTTPRoutes/GRPCRoutes, then the
 *   VirtualService, then the TrafficSplit, per port, with a warning when more than one names the
 *   service (Istio users' VirtualService is the more specific config; SMI defines no order).
 *   `spec.service` resolves like a VirtualService host and must be in the TrafficSplit's own
 *   namespace (the producer's config, as for a waypoint; another namespace's split is ignored);
 *   several for one service: the first by namespace/name, with a warning. Backends get the
 *   request on the request's port (SMI: backends serve the root service's ports); a backend
 *   without that port gets none of its requests; an unknown backend keeps its share as a 503;
 *   zero weights are dropped, and a port where every backend weighs 0 answers 503. Weights are
 *   relative: v1alpha1 quantities (`900m` = 0.9) and later versions' integers alike. A split with
 *   `matches` (HTTPRouteGroup, TCPRoute: not implemented) is not applied (warning): applying it
 *   to all traffic would send everything where only the matched requests were meant to go.
 *   Unreadable specs (no backends, a weight that is not a number) are skipped with a warning.
 * - VirtualService choice: `gateways` absent or naming `mesh`, visible to the service's namespace
 *   (`exportTo`), a host naming the service: short names resolve in the VirtualService's namespace,
 *   `name.ns` and `name.ns.svc` get the cluster domain (an ambit convenience; Istio reads them
 *   literally), `*.suffix` wildcards. The most specific host wins (exact over the longest
 *   wildcard); then one in the service's own namespace (the producer's config, as a waypoint runs
 *   for the producer); then, as we have no creation timestamps, the first by namespace/name, with
 *   a warning (Istio takes the oldest; it merges VirtualServices only for gateways).
 * - DestinationRule choice: the same host resolution and visibility, service's namespace first,
 *   then the most specific host, then namespace/name; DestinationRules for the same host in that
 *   namespace are merged as Istio does (subsets added unless the name is taken; the first
 *   trafficPolicy). DestinationRules with a workloadSelector select client sidecars: ignored here.
 * - HTTPRoute producer/consumer (GEP-1294): a route in the Service's namespace applies to every
 *   request; a route in another namespace applies only to requests from that namespace, and for
 *   them replaces the producer routes. `hostnames` are ignored for Service parents (warning).
 *   Gateway API CRD defaults are applied (manifests here are not defaulted by an API server):
 *   rule matches `[{path: PathPrefix /}]`, path type PathPrefix value `/`, header and query
 *   types Exact, backend weight 1 and kind Service, redirect status 302.
 * - Precedence across HTTPRoute/GRPCRoute rules: Istio's order, one entry per match: Exact >
 *   PathPrefix > RegularExpression, then the longer path, then a method match, then more headers,
 *   then more query params; ties keep route order (namespace/name: no timestamps), rule order,
 *   match order. Rules without matches (a GRPCRoute rule, or `matches: []`) go last. Routes whose
 *   filter Istio rejects (ExtensionRef; redirect/rewrite on a GRPCRoute) are dropped (warning).
 * - Matching as Envoy does it: `uri` prefix against the whole `:path` (query included), exact and
 *   regex against the path without the query; regexes are RE2 full matches (anchored; a leading
 *   `(?i)`/`(?s)` becomes a flag); `{}` or regex `*` is a presence match; `withoutHeaders`
 *   treats a missing header as empty; repeated headers are joined with ","; query params are
 *   matched undecoded, first value; `ignoreUriCase` affects exact and prefix only; a match with
 *   `gateways` is kept only if it names `mesh` and then, as in Istio, skips its source checks.
 *   `sourceLabels`/`sourceNamespace` are checked per request against the caller (a sidecar checks
 *   them against itself at config time; a waypoint knows its caller); an unknown caller does not
 *   match them. `@request.auth.claims` header matches need JWT: they never match (warning).
 *   PathPrefix (and a GRPCRoute service-only method match) matches whole path segments.
 * - Rewrites are computed: `rewrite.path` is the `:path` to send. A VirtualService `rewrite.uri`
 *   replaces what the match matched (the prefix; the whole path for exact/regex; `/` when the
 *   match had no uri, as Envoy's prefix_rewrite does); `uriRegexRewrite` replaces every match in
 *   the path (query kept), `\1` = group 1. Gateway API ReplacePrefixMatch follows the spec's
 *   segment table; ReplaceFullPath replaces the path. The authority comes from `rewrite.authority`,
 *   a `host`/`:authority` request header op (set over add), or a destination's header op when
 *   the route sets none (then on the Destination: `authority`).
 * - Redirects build Location as Envoy: scheme (default the request's, `http`), host = the
 *   redirect authority or the request's, `:port` unless 80/http or 443/https, path = `uri` (+ the
 *   request's query unless `uri` has one) or the request's. The request's port leaves the host
 *   when the scheme changes from its default port (Envoy) and whenever a port is set or derived
 *   (`port`, `derivePort`, a Gateway API redirect): stricter than Envoy, which keeps it when the
 *   port set is the scheme's default, so `port: 80` cannot yield `host:8080`. A Gateway API
 *   redirect without a port uses the request's port, or the scheme's default when it sets a
 *   scheme. Codes: 301 by default for VirtualService, 302 for HTTPRoute.
 * - Weights: relative; a single destination weighs 100; zero-weight destinations are dropped
 *   when there are others. Unresolvable destinations stay in the list with `missing` (503 for a
 *   VirtualService host or subset that does not exist, as Envoy's cluster-not-found; 500 for an
 *   invalid Gateway API backendRef, as the spec requires for their share of traffic); a Gateway
 *   API rule without backends or with only zero weights is a 500 direct response.
 * - Retries: none set = Istio's default policy (2 attempts on connect-failure, refused-stream,
 *   unavailable, cancelled, retriable-status-codes); `attempts` absent or 0 disables retries;
 *   numbers in retryOn are retriable status codes (adding retriable-status-codes). HTTPRoute
 *   `retry` as Istio converts it; `timeouts.backendRequest` is the per-try timeout with a retry,
 *   else the route timeout. A zero timeout is no timeout.
 * - Faults: the percentage defaults to 100 (Istio's documented default; the deprecated integer
 *   `percent` is read); exponential delays and HTTP/2 errors are unsupported (warning).
 * - Mirrors: `mirror` with `mirrorPercentage`/`mirrorPercent` (default 100, 0 = off) and
 *   `mirrors`; `mirror` on the action is the first, `mirrors` all of them.
 * - Traffic policy: the DestinationRule's top level, replaced whole by a matching
 *   `portLevelSettings` entry (fields it omits are unset, per Istio); then each of loadBalancer,
 *   connectionPool, outlierDetection, tls the subset sets replaces the inherited one, and the
 *   subset's own port-level entry replaces all four. `consecutiveErrors` is also given as
 *   `consecutive5xxErrors` when that is unset.
 * Returned objects are shared between requests: treat them as read-only.
 *
 * This file is the router: which config applies to a service, per port and caller, and the
 * per-request walk. Each API has its compiler in ./routing/ (virtual-service.ts, gateway-api.ts,
 * traffic-split.ts; destination-rule.ts for traffic policies), sharing match.ts (the request view
 * and the tests) and actions.ts (destinations, rewrites, redirects, header operations, retries,
 * faults).
 */
import type { ConfigObject, Service } from '../config/model.js';
import { redirectLocation, rewritePath } from './routing/actions.js';
import { byRef, type CompileContext, type GwBinding, HostIndex, num, ref, resolveHost, type ServiceTable, visible, type VsChoice } from './routing/common.js';
import { atPort, type MergedRule, normalizeOutlier } from './routing/destination-rule.js';
import { bindGatewayRoute, mergeSorted } from './routing/gateway-api.js';
import { type Entry, RequestView } from './routing/match.js';
import type { DrSpec, PolicyFields, VsSpec } from './routing/specs.js';
import { DEFAULT_RETRIES, DEFAULT_ROUTE, type Destination, EMPTY_OPS, type ForwardAction, NO_ROUTE, type RouteAction, type RouteRequest, type RouteRewrite, type RouterOptions, type TrafficPolicy } from './routing/types.js';
import { compileTrafficSplit, readTrafficSplit, SPLIT_GROUP, SPLIT_KIND, type TrafficSplit } from './routing/traffic-split.js';
import { compileVirtualService } from './routing/virtual-service.js';

export * from './routing/types.js';
export { resolveHost } from './routing/common.js';

export class Router {
  readonly warnings: string[] = [];
  private readonly random: () => number;
  private readonly domain: string;
  private readonly servicesByHost = new Map<string, Service>();
  private readonly servicesByName = new Map<string, Service>();
  /** VirtualServices and DestinationRules by the exact host they name, and those with wildcard hosts. */
  private readonly virtualServices = new HostIndex<{ cfg: ConfigObject; spec: VsSpec }>();
  private readonly destinationRules = new HostIndex<{ cfg: ConfigObject; spec: DrSpec; host: string }>();
  private readonly gwBindings = new Map<string, GwBinding[]>();
  /** TrafficSplits by their root service's hostname, in namespace/name order. */
  private readonly trafficSplits = new Map<string, TrafficSplit[]>();
  /** The TrafficSplit that applies to a service (by hostname), compiled. */
  private readonly splitTables = new Map<string, VsChoice>();
  private readonly vsCompiled = new Map<ConfigObject, Entry[]>();
  private readonly tables = new Map<string, ServiceTable>();
  private readonly drCache = new Map<string, MergedRule | null>();
  private readonly policyCache = new Map<string, TrafficPolicy>();
  private readonly defaults = new Map<string, ForwardAction>();
  private readonly warned = new Set<string>();
  /** What the compilers of each API (./routing/) see of this router. */
  private readonly context: CompileContext;

  constructor(config: ConfigObject[], services: Service[], opts: RouterOptions = {}) {
    this.random = opts.random ?? Math.random;
    const first = services[0]?.hostname;
    this.domain = opts.clusterDomain ?? (first?.includes('.svc.') ? first.slice(first.indexOf('.svc.') + 5) : 'cluster.local');
    this.context = {
      domain: this.domain,
      serviceByHost: (hostname) => this.servicesByHost.get(hostname),
      serviceByName: (key) => this.servicesByName.get(key),
      subsetLabels: (service, subset) => this.subsetLabels(service, subset),
      warn: (message) => this.warn(message),
      bind: (hostname, binding) => {
        let list = this.gwBindings.get(hostname);
        if (!list) this.gwBindings.set(hostname, (list = []));
        list.push(binding);
      },
    };
    for (const s of services) {
      this.servicesByHost.set(s.hostname, s);
      this.servicesByName.set(`${s.namespace}/${s.name}`, s);
    }
    const sorted = [...config].sort(byRef);
    const gwRoutes: ConfigObject[] = [];
    for (const cfg of sorted) {
      const group = cfg.apiVersion.split('/')[0];
      if (group === 'networking.istio.io' && cfg.kind === 'VirtualService') {
        const spec = cfg.spec as VsSpec;
        const gateways = spec.gateways ?? [];
        if (gateways.length > 0 && !gateways.includes('mesh')) continue;
        if (!spec.http || spec.http.length === 0) continue;
        this.virtualServices.add({ cfg, spec }, (spec.hosts ?? []).map((h) => resolveHost(h, cfg.namespace, this.domain)));
      } else if (group === 'networking.istio.io' && cfg.kind === 'DestinationRule') {
        const spec = cfg.spec as DrSpec;
        if (spec.workloadSelector !== undefined) {
          this.warn(`DestinationRule ${ref(cfg)}: has a workloadSelector, which selects client sidecars: ignored by waypoints`);
          continue;
        }
        const host = resolveHost(spec.host, cfg.namespace, this.domain);
        this.destinationRules.add({ cfg, spec, host }, [host]);
      } else if (group === 'gateway.networking.k8s.io' && (cfg.kind === 'HTTPRoute' || cfg.kind === 'GRPCRoute')) {
        gwRoutes.push(cfg);
      } else if (group === SPLIT_GROUP && cfg.kind === SPLIT_KIND) {
        const split = readTrafficSplit(cfg, this.domain, (m) => this.warn(m));
        if (!split) continue;
        let list = this.trafficSplits.get(split.apex);
        if (!list) this.trafficSplits.set(split.apex, (list = []));
        list.push(split);
      }
    }
    for (const cfg of gwRoutes) bindGatewayRoute(this.context, cfg);
    for (const s of services) this.tables.set(s.hostname, this.compileService(s));
  }

  route(req: RouteRequest): RouteAction {
    const table = this.table(req.service);
    const entries = this.entriesFor(table, req.port, req.sourceNamespace);
    if (!entries) return this.defaultRoute(req.service, req.port);
    const c = new RequestView(req);
    for (const e of entries) if (e.test(c)) return this.materialize(e, c);
    return NO_ROUTE;
  }

  /**
   * What the compilers of ./routing/ see of this router (its services, cluster domain,
   * DestinationRule subsets, warnings): an ingress gateway compiles the routes bound to its
   * gateways against it (src/waypoint/ingress/routes.ts). Its `bind` is not for them.
   */
  get compileContext(): CompileContext {
    return this.context;
  }

  /** The first of `entries` (compiled with compileContext) the request matches, materialized; none: NO_ROUTE. */
  routeEntries(entries: readonly Entry[], req: RouteRequest): RouteAction {
    const c = new RequestView(req);
    for (const e of entries) if (e.test(c)) return this.materialize(e, c);
    return NO_ROUTE;
  }

  /** Picks one destination of a forward action by weight (uses the injected random). */
  pick(action: Extract<RouteAction, { kind: 'forward' }>): Destination {
    const ds = action.destinations;
    if (ds.length === 1) return ds[0]!;
    if (ds.length === 0) throw new Error(`route ${action.route} has no destinations`);
    let total = 0;
    for (const d of ds) total += d.weight;
    let r = this.random() * total;
    for (const d of ds) {
      if (r < d.weight) return d;
      r -= d.weight;
    }
    return ds[ds.length - 1]!;
  }

  /** The traffic policy that applies to a destination: its host's DestinationRule at its port, merged with the subset's. */
  trafficPolicy(dest: Destination): TrafficPolicy {
    const key = `${dest.service.hostname}|${dest.port}|${dest.subset ?? ''}`;
    const cached = this.policyCache.get(key);
    if (cached) return cached;
    const dr = this.ruleFor(dest.service);
    let merged: PolicyFields = atPort(dr?.trafficPolicy, dest.port);
    const subsetPolicy = dest.subset !== undefined ? dr?.subsets.get(dest.subset)?.trafficPolicy : undefined;
    if (subsetPolicy) {
      merged = {
        loadBalancer: subsetPolicy.loadBalancer ?? merged.loadBalancer,
        connectionPool: subsetPolicy.connectionPool ?? merged.connectionPool,
        outlierDetection: subsetPolicy.outlierDetection ?? merged.outlierDetection,
        tls: subsetPolicy.tls ?? merged.tls,
      };
      const p = subsetPolicy.portLevelSettings?.find((s) => num(s.port?.number) === dest.port);
      if (p) merged = { loadBalancer: p.loadBalancer, connectionPool: p.connectionPool, outlierDetection: p.outlierDetection, tls: p.tls };
    }
    const out: TrafficPolicy = {};
    if (merged.loadBalancer !== undefined) out.loadBalancer = merged.loadBalancer;
    if (merged.connectionPool !== undefined) out.connectionPool = merged.connectionPool;
    if (merged.outlierDetection !== undefined) out.outlierDetection = normalizeOutlier(merged.outlierDetection);
    if (merged.tls !== undefined) out.tls = merged.tls;
    // The retry budget is set for the whole host or a whole subset (it has no port-level form).
    const budget = subsetPolicy?.retryBudget ?? dr?.trafficPolicy?.retryBudget;
    if (budget !== undefined) out.retryBudget = budget;
    this.policyCache.set(key, out);
    return out;
  }

  /**
   * What applies to a service, for the admin's views (not used per request): its VirtualService
   * and TrafficSplit, the HTTPRoutes and GRPCRoutes bound to it (producer and consumer routes,
   * with the ports they bind), and its DestinationRule(s), `namespace/name` joined by "+".
   */
  describe(service: Service): {
    virtualService?: ConfigObject; trafficSplit?: ConfigObject; routes: { cfg: ConfigObject; ports?: number[]; consumer?: string }[]; destinationRule?: string;
  } {
    const t = this.table(service);
    const routes = [...t.producer, ...[...t.consumers.values()].flat()].map((b) => ({
      cfg: b.route.cfg, ...(b.ports ? { ports: [...b.ports].sort((x, y) => x - y) } : {}), ...(b.consumer !== undefined ? { consumer: b.consumer } : {}),
    }));
    const dr = this.ruleFor(service);
    const split = this.splitTables.get(service.hostname);
    return { ...(t.vs ? { virtualService: t.vs.cfg } : {}), ...(split ? { trafficSplit: split.cfg } : {}), routes, ...(dr ? { destinationRule: dr.name } : {}) };
  }

  /** The labels a subset selects, from the DestinationRule of the service's host; undefined subset (or none defined) → undefined. */
  subsetLabels(service: Service, subset: string | undefined): Record<string, string> | undefined {
    if (subset === undefined) return undefined;
    const s = this.ruleFor(service)?.subsets.get(subset);
    return s ? s.labels ?? {} : undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Per request

  private table(service: Service): ServiceTable {
    let t = this.tables.get(service.hostname);
    if (!t) this.tables.set(service.hostname, (t = this.compileService(service)));
    return t;
  }

  private entriesFor(t: ServiceTable, port: number, sourceNamespace: string | undefined): Entry[] | null {
    const consumer = sourceNamespace !== undefined && t.consumers.has(sourceNamespace) ? sourceNamespace : undefined;
    const key = consumer === undefined ? String(port) : `${port}|${consumer}`;
    const cached = t.cache.get(key);
    if (cached !== undefined) return cached;
    const onPort = (bindings: GwBinding[]): Entry[] => mergeSorted(bindings.filter((b) => !b.ports || b.ports.has(port)));
    let entries: Entry[] = consumer !== undefined ? onPort(t.consumers.get(consumer)!) : [];
    if (entries.length === 0) entries = onPort(t.producer);
    if (entries.length === 0 && t.vs) entries = t.vs.entries.filter((e) => e.port === undefined || e.port === port);
    if (entries.length === 0) entries = this.splitTables.get(t.service.hostname)?.entries.filter((e) => e.port === port) ?? [];
    const result = entries.length > 0 ? entries : null;
    t.cache.set(key, result);
    return result;
  }

  private defaultRoute(service: Service, port: number): ForwardAction {
    const key = `${service.hostname}|${port}`;
    let a = this.defaults.get(key);
    if (!a) {
      a = {
        kind: 'forward', route: DEFAULT_ROUTE, destinations: [{ service, port, weight: 100 }],
        requestHeaders: EMPTY_OPS, responseHeaders: EMPTY_OPS, retries: DEFAULT_RETRIES,
      };
      this.defaults.set(key, a);
    }
    return a;
  }

  private materialize(e: Entry, c: RequestView): RouteAction {
    const a = e.action;
    if (a.kind === 'direct-response') return a.response;
    if (a.kind === 'redirect') {
      return { kind: 'redirect', route: e.route, status: a.status, location: redirectLocation(a, e.uri, c), ...(a.responseHeaders ? { responseHeaders: a.responseHeaders } : {}) };
    }
    const out: ForwardAction = { ...a.base, destinations: a.dests.get(c.req.port) };
    if (a.rewrite) {
      const rw: RouteRewrite = {};
      if (a.rewrite.uri !== undefined) rw.uri = a.rewrite.uri;
      if (a.rewrite.uriRegex) rw.uriRegex = { match: a.rewrite.uriRegex.match, rewrite: a.rewrite.uriRegex.rewrite };
      if (a.rewrite.authority !== undefined) rw.authority = a.rewrite.authority;
      const path = rewritePath(a.rewrite, e.uri, c);
      if (path !== undefined) rw.path = path;
      out.rewrite = rw;
    }
    if (a.mirrors.length > 0) {
      out.mirrors = a.mirrors.map((m) => ({ destination: m.dests.get(c.req.port)[0]!, percent: m.percent }));
      out.mirror = out.mirrors[0];
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // Compilation: services

  private compileService(svc: Service): ServiceTable {
    const t: ServiceTable = { service: svc, producer: [], consumers: new Map(), cache: new Map() };
    for (const b of this.gwBindings.get(svc.hostname) ?? []) {
      if (b.consumer === undefined) t.producer.push(b);
      else {
        let list = t.consumers.get(b.consumer);
        if (!list) t.consumers.set(b.consumer, (list = []));
        list.push(b);
      }
    }
    const vs = this.chooseVirtualService(svc);
    if (vs) {
      let entries = this.vsCompiled.get(vs.cfg);
      if (!entries) this.vsCompiled.set(vs.cfg, (entries = compileVirtualService(this.context, vs.cfg, vs.spec)));
      t.vs = { cfg: vs.cfg, entries };
      if (t.producer.length > 0 || t.consumers.size > 0) {
        this.warn(`${svc.hostname}: both VirtualService ${ref(vs.cfg)} and HTTPRoute/GRPCRoute(s) apply; as in Istio's waypoints, the routes take precedence on the ports they bind`);
      }
    }
    const split = this.chooseTrafficSplit(svc);
    if (split) {
      this.splitTables.set(svc.hostname, { cfg: split.cfg, entries: compileTrafficSplit(this.context, split, svc) });
      const over = [...(t.producer.length > 0 || t.consumers.size > 0 ? ['HTTPRoute/GRPCRoute(s)'] : []), ...(vs ? [`VirtualService ${ref(vs.cfg)}`] : [])];
      if (over.length > 0) {
        const many = over.length > 1 || t.vs === undefined;
        this.warn(`${svc.hostname}: ${over.join(' and ')} ${many ? 'take' : 'takes'} precedence over TrafficSplit ${ref(split.cfg)}; the split applies only on ports where ${many ? 'they have' : 'it has'} no rule`);
      }
    }
    return t;
  }

  private chooseVirtualService(svc: Service): { cfg: ConfigObject; spec: VsSpec } | undefined {
    const candidates = this.virtualServices.lookup(svc.hostname)
      .filter((c) => visible(c.item.spec.exportTo, c.item.cfg.namespace, svc.namespace))
      .map((c) => ({ ...c.item, score: c.score, order: c.order, local: c.item.cfg.namespace === svc.namespace }));
    if (candidates.length === 0) return undefined;
    candidates.sort((a, b) => b.score - a.score || Number(b.local) - Number(a.local) || a.order - b.order);
    const [chosen] = candidates;
    const rivals = candidates.filter((c) => c !== chosen && c.score === chosen!.score);
    if (rivals.length > 0) {
      const why = chosen!.local && rivals.every((r) => !r.local) ? "the one in the service's namespace" : 'the first by namespace/name; Istio would use the oldest';
      this.warn(`${svc.hostname}: several VirtualServices name this host (${[chosen!, ...rivals].map((c) => ref(c.cfg)).join(', ')}); using ${ref(chosen!.cfg)} (${why})`);
    }
    return chosen;
  }

  /** The TrafficSplit whose root is this service: the first by namespace/name (warning when there are more). */
  private chooseTrafficSplit(svc: Service): TrafficSplit | undefined {
    const [chosen, ...rivals] = this.trafficSplits.get(svc.hostname) ?? [];
    if (chosen && rivals.length > 0) {
      this.warn(`${svc.hostname}: several TrafficSplits name this root service (${[chosen, ...rivals].map((s) => ref(s.cfg)).join(', ')}); using ${ref(chosen.cfg)} (the first by namespace/name)`);
    }
    return chosen;
  }

  /** The DestinationRule of a service's host, merged as Istio merges rules for one host in one namespace. */
  private ruleFor(svc: Service): MergedRule | undefined {
    const cached = this.drCache.get(svc.hostname);
    if (cached !== undefined) return cached ?? undefined;
    const candidates = this.destinationRules.lookup(svc.hostname)
      .filter((c) => visible(c.item.spec.exportTo, c.item.cfg.namespace, svc.namespace))
      .map((c) => ({ ...c.item, score: c.score, order: c.order, local: c.item.cfg.namespace === svc.namespace }))
      .sort((a, b) => Number(b.local) - Number(a.local) || b.score - a.score || a.order - b.order);
    let merged: MergedRule | null = null;
    const [first] = candidates;
    if (first) {
      const same = candidates.filter((d) => d.cfg.namespace === first.cfg.namespace && d.host === first.host);
      merged = { name: same.map((d) => ref(d.cfg)).join('+'), subsets: new Map() };
      for (const d of same) {
        if (!merged.trafficPolicy && d.spec.trafficPolicy) merged.trafficPolicy = d.spec.trafficPolicy;
        for (const s of d.spec.subsets ?? []) {
          if (merged.subsets.has(s.name)) this.warn(`DestinationRule ${ref(d.cfg)}: subset "${s.name}" is already defined for ${first.host} by ${merged.name.split('+')[0]}: ignored`);
          else merged.subsets.set(s.name, s);
        }
      }
      const rivals = candidates.filter((d) => !same.includes(d) && d.local === first.local && d.score === first.score);
      if (rivals.length > 0) this.warn(`${svc.hostname}: DestinationRules ${rivals.map((d) => ref(d.cfg)).join(', ')} are ignored in favour of ${merged.name}`);
    }
    this.drCache.set(svc.hostname, merged);
    return merged ?? undefined;
  }

  // -------------------------------------------------------------------------------------------
  // Compilation: VirtualService

  private warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.warnings.push(message);
  }
}
