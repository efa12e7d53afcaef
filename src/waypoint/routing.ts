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
 */
import type { ConfigObject, Service } from '../config/model.js';
import { durationMs, isObject } from '../config/schema.js';

// ---------------------------------------------------------------------------------------------
// Public types

export interface RouteRequest {
  /** The service the request was sent to (the waypoint knows it from the tunnel's authority VIP:port). */
  service: Service;
  /** Service port. */
  port: number;
  method: string;
  /** With the query. */
  path: string;
  /** Host / :authority. */
  authority: string;
  /** Lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  sourceLabels?: Record<string, string>;
  sourceNamespace?: string;
  /** Informational: GRPCRoute rules match on the path, as in Istio, whatever the content type. */
  grpc?: boolean;
  /** The request's scheme; `http` when absent (waypoints receive plaintext HTTP inside HBONE). */
  scheme?: string;
}

export interface HeaderOps { set: Record<string, string>; add: Record<string, string>; remove: string[] }

export interface Destination {
  service: Service;
  port: number;
  subset?: string;
  /** Relative weight (a single destination: 100). */
  weight: number;
  /** Endpoints selected by the subset's labels. */
  selector?: Record<string, string>;
  /** Request header operations for this destination, applied after the route's. */
  headers?: HeaderOps;
  /** Response header operations for this destination, applied after the route's. */
  responseHeaders?: HeaderOps;
  /** Authority rewrite from this destination's header operations (only when the route sets none). */
  authority?: string;
  /** The destination cannot be reached (no such service or subset, invalid backendRef): answer `status`. */
  missing?: { status: number; reason: string };
}

export interface Mirror { destination: Destination; percent: number }

export interface RouteRewrite {
  uri?: string;
  uriRegex?: { match: string; rewrite: string };
  authority?: string;
  /** The `:path` to send upstream (with the query), when the path is rewritten. */
  path?: string;
}

export interface RetrySpec { attempts: number; perTryTimeoutMs?: number; retryOn: string[]; retriableStatusCodes: number[]; backoffMs?: number; ignorePreviousHosts?: boolean }
export interface FaultSpec { delay?: { ms: number; percent: number }; abort?: { status?: number; grpcStatus?: string; percent: number } }

export interface ForwardAction {
  kind: 'forward';
  /** "ns/name#rule-index" of the VirtualService or route, or `default`, for metrics and logs. */
  route: string;
  destinations: Destination[];
  rewrite?: RouteRewrite;
  requestHeaders: HeaderOps;
  responseHeaders: HeaderOps;
  timeoutMs?: number;
  retries?: RetrySpec;
  fault?: FaultSpec;
  mirror?: Mirror;
  mirrors?: Mirror[];
  corsPolicy?: unknown;
}

export type RouteAction =
  | ForwardAction
  | { kind: 'redirect'; route: string; status: number; location: string; responseHeaders?: HeaderOps }
  | { kind: 'direct-response'; route: string; status: number; body?: string; responseHeaders?: HeaderOps }
  /** 404 NR. */
  | { kind: 'no-route' };

export interface TrafficPolicy { loadBalancer?: unknown; connectionPool?: unknown; outlierDetection?: unknown; tls?: unknown; retryBudget?: unknown }

export interface RouterOptions {
  random?: () => number;
  /** Cluster domain for short names; by default the services' (`cluster.local`). */
  clusterDomain?: string;
}

/** Istio's retry policy for routes that set none. */
export const DEFAULT_RETRIES: RetrySpec = Object.freeze({
  attempts: 2,
  retryOn: Object.freeze(['connect-failure', 'refused-stream', 'unavailable', 'cancelled', 'retriable-status-codes']) as string[],
  retriableStatusCodes: Object.freeze([] as number[]) as number[],
});

export const DEFAULT_ROUTE = 'default';
const NO_ROUTE: RouteAction = Object.freeze({ kind: 'no-route' });
const EMPTY_OPS: HeaderOps = Object.freeze({ set: Object.freeze({}), add: Object.freeze({}), remove: Object.freeze([] as string[]) as string[] });

// ---------------------------------------------------------------------------------------------
// The config as validate.ts accepts it (integers may be strings of digits).

type Int = number | string;
interface StringMatch { exact?: string; prefix?: string; regex?: string }
interface VsHeaderOps { set?: Record<string, string>; add?: Record<string, string>; remove?: string[] }
interface VsHeaders { request?: VsHeaderOps; response?: VsHeaderOps }
interface VsDestination { host: string; subset?: string; port?: { number?: Int } }
interface VsMatch {
  uri?: StringMatch; scheme?: StringMatch; method?: StringMatch; authority?: StringMatch;
  headers?: Record<string, StringMatch>; withoutHeaders?: Record<string, StringMatch>; queryParams?: Record<string, StringMatch>;
  port?: Int; sourceLabels?: Record<string, string>; sourceNamespace?: string; gateways?: string[]; ignoreUriCase?: boolean;
}
interface Percent { value?: number }
interface VsRedirect { uri?: string; authority?: string; port?: Int; derivePort?: string; scheme?: string; redirectCode?: Int }
interface VsHttpRoute {
  match?: VsMatch[];
  route?: { destination: VsDestination; weight?: Int; headers?: VsHeaders }[];
  redirect?: VsRedirect;
  directResponse?: { status: Int; body?: { string?: string; bytes?: string } };
  delegate?: unknown;
  rewrite?: { uri?: string; authority?: string; uriRegexRewrite?: { match: string; rewrite: string } };
  timeout?: string;
  retries?: { attempts?: Int; perTryTimeout?: string; retryOn?: string; backoff?: string; retryIgnorePreviousHosts?: boolean };
  fault?: {
    delay?: { fixedDelay?: string; exponentialDelay?: string; percentage?: Percent; percent?: Int };
    abort?: { httpStatus?: Int; grpcStatus?: string; http2Error?: string; percentage?: Percent };
  };
  mirror?: VsDestination;
  mirrors?: { destination: VsDestination; percentage?: Percent }[];
  mirrorPercentage?: Percent;
  mirrorPercent?: Int;
  corsPolicy?: unknown;
  headers?: VsHeaders;
}
interface VsSpec { hosts?: string[]; gateways?: string[]; http?: VsHttpRoute[]; exportTo?: string[] }

interface PolicyFields { loadBalancer?: unknown; connectionPool?: unknown; outlierDetection?: unknown; tls?: unknown }
interface DrTrafficPolicy extends PolicyFields { portLevelSettings?: (PolicyFields & { port?: { number?: Int } })[]; retryBudget?: unknown }
interface DrSubset { name: string; labels?: Record<string, string>; trafficPolicy?: DrTrafficPolicy }
interface DrSpec { host: string; trafficPolicy?: DrTrafficPolicy; subsets?: DrSubset[]; exportTo?: string[]; workloadSelector?: unknown }

interface ParentRef { group?: string; kind?: string; namespace?: string; name: string; sectionName?: string; port?: Int }
interface BackendRef { group?: string; kind?: string; name: string; namespace?: string; port?: Int; weight?: Int; filters?: unknown }
interface HeaderModifier { set?: { name: string; value: string }[]; add?: { name: string; value: string }[]; remove?: string[] }
interface PathModifier { type?: string; replaceFullPath?: string; replacePrefixMatch?: string }
interface GwFilter {
  type: string;
  requestHeaderModifier?: HeaderModifier;
  responseHeaderModifier?: HeaderModifier;
  requestMirror?: { backendRef: BackendRef; percent?: Int; fraction?: { numerator: Int; denominator?: Int } };
  requestRedirect?: { scheme?: string; hostname?: string; path?: PathModifier; port?: Int; statusCode?: Int };
  urlRewrite?: { hostname?: string; path?: PathModifier };
  cors?: unknown;
}
interface NameValueMatch { type?: string; name: string; value: string }
interface GwMatch {
  path?: { type?: string; value?: string };
  method?: string | { type?: string; service?: string; method?: string };
  headers?: NameValueMatch[];
  queryParams?: NameValueMatch[];
}
interface GwRule {
  matches?: GwMatch[];
  filters?: GwFilter[];
  backendRefs?: BackendRef[];
  timeouts?: { request?: string; backendRequest?: string };
  retry?: { codes?: Int[]; attempts?: Int; backoff?: string };
}
interface GwRouteSpec { parentRefs?: ParentRef[]; hostnames?: string[]; rules?: GwRule[] }

// ---------------------------------------------------------------------------------------------
// Small helpers

function num(v: unknown): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && /^-?\d+$/.test(v)) return Number(v);
  return undefined;
}

const ref = (c: ConfigObject) => `${c.namespace}/${c.name}`;
const byRef = (a: ConfigObject, b: ConfigObject) => (a.namespace === b.namespace ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.namespace < b.namespace ? -1 : 1);

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
function specificity(pattern: string, hostname: string): number {
  if (pattern === hostname) return Number.MAX_SAFE_INTEGER;
  if (pattern === '*') return 0;
  if (pattern.startsWith('*.')) return hostname.endsWith(pattern.slice(1)) ? pattern.length - 1 : -1;
  return -1;
}

/** Istio's exportTo: absent = everywhere; `.` = own namespace; `~` = nowhere. */
function visible(exportTo: string[] | undefined, own: string, to: string): boolean {
  if (!exportTo || exportTo.length === 0) return true;
  return exportTo.some((e) => e === '*' || e === to || (e === '.' && own === to));
}

/** A service the config names but the model does not have, so a Destination can still say which. */
function placeholder(host: string): Service {
  const m = /^([^.]+)\.([^.]+)\.svc\./.exec(host);
  return { namespace: m?.[2] ?? '', name: m?.[1] ?? host, hostname: host, vips: [], ports: [], endpoints: [] };
}

function defaultPort(svc: Service, requestPort: number): number {
  return svc.ports.length === 1 ? svc.ports[0]!.port : requestPort;
}

// ---------------------------------------------------------------------------------------------
// One request, with what matching needs computed once and the rest on demand.

class RequestView {
  /** The path without the query. */
  readonly pathOnly: string;
  /** `?...` or ''. */
  readonly query: string;
  private lower?: string;
  private params?: Map<string, string>;

  constructor(readonly req: RouteRequest) {
    const q = req.path.indexOf('?');
    this.pathOnly = q < 0 ? req.path : req.path.slice(0, q);
    this.query = q < 0 ? '' : req.path.slice(q);
  }

  /** Lower-case name; pseudo-headers and `host` answer from the request line. Repeated values are joined with ",". */
  header(name: string): string | undefined {
    switch (name) {
      case ':authority': case 'host': return this.req.authority;
      case ':method': return this.req.method;
      case ':path': return this.req.path;
      case ':scheme': return this.req.scheme ?? 'http';
    }
    const v = this.req.headers[name];
    return Array.isArray(v) ? v.join(',') : v;
  }

  lowerPath(): string {
    return (this.lower ??= this.req.path.toLowerCase());
  }

  /** The first value of a query parameter, undecoded ('' for `?a`). */
  param(name: string): string | undefined {
    if (!this.params) {
      this.params = new Map();
      for (const part of this.query.slice(1).split('&')) {
        if (part === '') continue;
        const eq = part.indexOf('=');
        const k = eq < 0 ? part : part.slice(0, eq);
        if (!this.params.has(k)) this.params.set(k, eq < 0 ? '' : part.slice(eq + 1));
      }
    }
    return this.params.get(name);
  }
}

// ---------------------------------------------------------------------------------------------
// Matchers

type Test = (c: RequestView) => boolean;
type StrTest = (v: string) => boolean;
const ALWAYS: Test = () => true;
const NEVER: StrTest = () => false;

/** RE2 syntax to a JS RegExp: a leading `(?flags)` group becomes flags; `anchored` makes it a full match. */
function re2(source: string, anchored: boolean, extraFlags = ''): RegExp {
  let src = source;
  let flags = extraFlags;
  const lead = /^\(\?([imsU]+)\)/.exec(src);
  if (lead) {
    src = src.slice(lead[0].length);
    for (const f of lead[1]!) if ('ims'.includes(f) && !flags.includes(f)) flags += f;
  }
  return new RegExp(anchored ? `^(?:${src})$` : src, flags);
}

function allOf(tests: Test[]): Test {
  if (tests.length === 0) return ALWAYS;
  if (tests.length === 1) return tests[0]!;
  return (c) => {
    for (const t of tests) if (!t(c)) return false;
    return true;
  };
}

interface UriInfo { kind: 'exact' | 'prefix' | 'regex'; value: string }

/** A compiled match entry: the rule it leads to and what the rewrite needs to know of the match. */
interface Entry {
  route: string;
  test: Test;
  uri?: UriInfo;
  /** Service port the entry is for (VirtualService `match.port`); undefined: any. */
  port?: number;
  action: ActionTemplate;
}

/** Gateway API entries carry what their precedence is sorted by. */
interface GwEntry extends Entry {
  hasMatch: boolean;
  rank: number;
  length: number;
  method: boolean;
  headers: number;
  query: number;
}

/** A Gateway API path match (Istio's translation) added to `tests`. */
function uriMatch(kind: UriInfo['kind'], value: string, tests: Test[]): UriInfo {
  if (kind === 'exact') {
    tests.push((c) => c.pathOnly === value);
    return { kind, value };
  }
  if (kind === 'regex') {
    const re = re2(value, true);
    tests.push((c) => re.test(c.pathOnly));
    return { kind, value };
  }
  // Envoy's path_separated_prefix, after Istio trims one trailing slash: whole segments only.
  const p = value === '/' ? '/' : value.replace(/\/$/, '');
  if (p !== '/') tests.push((c) => c.pathOnly === p || (c.pathOnly.startsWith(p) && c.pathOnly.charCodeAt(p.length) === 47));
  return { kind, value: p };
}

/** Gateway API header or query param matches added to `tests`; the first of equal names counts. Returns how many. */
function nameValueTests(list: NameValueMatch[] | undefined, caseInsensitive: boolean, get: (c: RequestView, name: string) => string | undefined, tests: Test[]): number {
  const seen = new Set<string>();
  for (const h of list ?? []) {
    const name = caseInsensitive ? h.name.toLowerCase() : h.name;
    if (seen.has(name)) continue; // "Subsequent entries with an equivalent name MUST be ignored."
    seen.add(name);
    if ((h.type ?? 'Exact') === 'RegularExpression') {
      const re = re2(h.value, true);
      tests.push((c) => {
        const v = get(c, name);
        return v !== undefined && re.test(v);
      });
    } else {
      const want = h.value;
      tests.push((c) => get(c, name) === want);
    }
  }
  return seen.size;
}

// ---------------------------------------------------------------------------------------------
// Action templates: everything resolved at compile time except what depends on the request.

interface DestTemplate extends Omit<Destination, 'port'> { port?: number }

/** Destinations whose default port is the request's are materialized once per port. */
class DestSet {
  private readonly byPort = new Map<number, Destination[]>();
  private readonly fixed?: Destination[];

  constructor(private readonly templates: DestTemplate[]) {
    if (templates.every((t) => t.port !== undefined)) this.fixed = templates.map((t) => ({ ...t, port: t.port! }));
  }

  get(requestPort: number): Destination[] {
    if (this.fixed) return this.fixed;
    let list = this.byPort.get(requestPort);
    if (!list) {
      list = this.templates.map((t) => ({ ...t, port: t.port ?? defaultPort(t.service, requestPort) }));
      this.byPort.set(requestPort, list);
    }
    return list;
  }
}

interface RewriteTemplate {
  uri?: string;
  /** Gateway API ReplacePrefixMatch: the spec's segment-wise replacement. */
  segmentPrefix?: boolean;
  uriRegex?: { match: string; rewrite: string; re: RegExp };
  authority?: string;
}

interface RedirectTemplate {
  kind: 'redirect';
  status: number;
  uri?: string;
  /** Gateway API ReplacePrefixMatch. */
  segmentPrefix?: boolean;
  authority?: string;
  scheme?: string;
  port?: number | 'request' | 'protocol-default';
  responseHeaders?: HeaderOps;
}

type ActionTemplate =
  | {
    kind: 'forward';
    base: Omit<ForwardAction, 'destinations' | 'rewrite' | 'mirror' | 'mirrors'>;
    dests: DestSet;
    rewrite?: RewriteTemplate;
    mirrors: { dests: DestSet; percent: number }[];
  }
  | RedirectTemplate
  | { kind: 'direct-response'; response: RouteAction };

// ---------------------------------------------------------------------------------------------
// Path rewriting

/** The Gateway API ReplacePrefixMatch table: whole segments, one slash between prefix and rest. */
function replaceSegmentPrefix(path: string, prefix: string, replacement: string): string {
  const p = prefix === '/' ? '' : prefix.replace(/\/$/, '');
  const rest = path.slice(p.length);
  const out = replacement.replace(/\/+$/, '') + rest;
  return out === '' ? '/' : out.startsWith('/') ? out : `/${out}`;
}

/** RE2 GlobalReplace substitution (`\0`-`\9`, `\\`) over every match in the path. */
function regexReplace(path: string, re: RegExp, substitution: string): string {
  return path.replace(re, (...args: unknown[]) => {
    const groups = args.slice(0, -2).filter((a) => typeof a === 'string' || a === undefined) as (string | undefined)[];
    return substitution.replace(/\\([0-9\\])/g, (_, d: string) => (d === '\\' ? '\\' : groups[Number(d)] ?? ''));
  });
}

function rewritePath(t: RewriteTemplate, uri: UriInfo | undefined, c: RequestView): string | undefined {
  if (t.uriRegex) return regexReplace(c.pathOnly, t.uriRegex.re, t.uriRegex.rewrite) + c.query;
  if (t.uri === undefined) return undefined;
  if (t.segmentPrefix) {
    if (uri?.kind === 'prefix') return replaceSegmentPrefix(c.pathOnly, uri.value, t.uri) + c.query;
    return (t.uri === '' ? '/' : t.uri) + c.query;
  }
  // Envoy's prefix_rewrite: the matched prefix, the whole path for exact and regex matches, and
  // the route's implicit prefix `/` when the match had no uri.
  if (!uri) return t.uri + c.req.path.slice(1);
  if (uri.kind === 'prefix') return t.uri + c.req.path.slice(uri.value.length);
  return t.uri + c.query;
}

/** Envoy's request host for a redirect: the port goes when a port is set or the scheme leaves its default port. */
function redirectHost(host: string, newScheme: string, requestScheme: string, dropPort: boolean): string {
  const end = host.startsWith('[') ? (host.lastIndexOf(']:') < 0 ? -1 : host.lastIndexOf(']:') + 1) : host.lastIndexOf(':');
  if (end < 0) return host;
  const port = host.slice(end);
  const drop = dropPort || (newScheme !== requestScheme && ((requestScheme === 'https' && port === ':443') || (requestScheme === 'http' && port === ':80')));
  return drop ? host.slice(0, end) : host;
}

function redirectLocation(t: RedirectTemplate, uri: UriInfo | undefined, c: RequestView): string {
  const requestScheme = c.req.scheme ?? 'http';
  const scheme = t.scheme ?? requestScheme;
  let port = t.port === 'request' ? c.req.port : typeof t.port === 'number' ? t.port : undefined;
  if (port !== undefined) {
    const s = t.scheme ?? 'http';
    if ((port === 80 && s === 'http') || (port === 443 && s === 'https')) port = undefined;
  }
  // Any port setting replaces the request's port (also one left out of Location as the scheme's default).
  const host = t.authority ?? redirectHost(c.req.authority, scheme, requestScheme, t.port !== undefined);
  let path: string;
  if (t.uri === undefined) path = c.req.path;
  else if (t.segmentPrefix) path = (uri?.kind === 'prefix' ? replaceSegmentPrefix(c.pathOnly, uri.value, t.uri) : t.uri || '/') + c.query;
  else path = t.uri.includes('?') ? t.uri : t.uri + c.query;
  return `${scheme}://${host}${port !== undefined ? `:${port}` : ''}${path}`;
}

// ---------------------------------------------------------------------------------------------
// Header operations

/** Istio's header operations: `host`/`:authority` become an authority rewrite (set over add); other pseudo-headers are dropped. */
function headerOps(o: VsHeaderOps | undefined): { ops: HeaderOps; authority?: string } {
  if (!o) return { ops: EMPTY_OPS };
  const internal = (k: string) => k.startsWith(':') || k === 'host';
  const isAuthority = (k: string) => k === ':authority' || k === 'host';
  let setAuthority: string | undefined;
  let addAuthority: string | undefined;
  const set: Record<string, string> = {};
  const add: Record<string, string> = {};
  for (const [k, v] of Object.entries(o.set ?? {})) {
    const name = k.toLowerCase();
    if (isAuthority(name)) setAuthority = v;
    if (!internal(name)) set[name] = v;
  }
  for (const [k, v] of Object.entries(o.add ?? {})) {
    const name = k.toLowerCase();
    if (isAuthority(name)) addAuthority = v;
    if (!internal(name)) add[name] = v;
  }
  const remove = (o.remove ?? []).map((k) => k.toLowerCase()).filter((k) => !internal(k));
  const authority = setAuthority ?? addAuthority;
  return { ops: { set, add, remove }, ...(authority !== undefined ? { authority } : {}) };
}

/** A Gateway API header modifier as Istio converts it: names lower-case, the first of equal names wins. */
function modifierOps(m: HeaderModifier | undefined): VsHeaderOps | undefined {
  if (!m) return undefined;
  const toMap = (list: { name: string; value: string }[] | undefined) => {
    const out: Record<string, string> = {};
    for (const { name, value } of list ?? []) if (!(name.toLowerCase() in out)) out[name.toLowerCase()] = value;
    return out;
  };
  return { set: toMap(m.set), add: toMap(m.add), remove: m.remove ?? [] };
}

const isEmptyOps = (o: HeaderOps) => Object.keys(o.set).length === 0 && Object.keys(o.add).length === 0 && o.remove.length === 0;

// ---------------------------------------------------------------------------------------------
// Retries, faults, durations

function positiveMs(d: string | undefined): number | undefined {
  if (d === undefined) return undefined;
  const ms = durationMs(d);
  return ms > 0 ? ms : undefined;
}

/** Istio's ConvertPolicy. */
function vsRetries(r: VsHttpRoute['retries']): RetrySpec | undefined {
  if (!r) return DEFAULT_RETRIES;
  const attempts = num(r.attempts) ?? 0;
  if (attempts <= 0) return undefined;
  let retryOn = DEFAULT_RETRIES.retryOn;
  const codes: number[] = [];
  if (r.retryOn) {
    retryOn = [];
    for (const part of r.retryOn.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (/^\d+$/.test(part) && Number(part) >= 100 && Number(part) <= 599) codes.push(Number(part));
      else retryOn.push(part);
    }
    if (codes.length > 0 && !retryOn.includes('retriable-status-codes')) retryOn.push('retriable-status-codes');
  }
  const perTry = positiveMs(r.perTryTimeout);
  const backoff = positiveMs(r.backoff);
  return {
    attempts, retryOn, retriableStatusCodes: codes, ...(perTry !== undefined ? { perTryTimeoutMs: perTry } : {}), ...(backoff !== undefined ? { backoffMs: backoff } : {}),
    ...(typeof r.retryIgnorePreviousHosts === 'boolean' ? { ignorePreviousHosts: r.retryIgnorePreviousHosts } : {}),
  };
}

function compileFault(f: VsHttpRoute['fault'], warn: (m: string) => void): FaultSpec | undefined {
  if (!f) return undefined;
  const out: FaultSpec = {};
  if (f.delay) {
    if (f.delay.fixedDelay !== undefined) {
      out.delay = { ms: durationMs(f.delay.fixedDelay), percent: f.delay.percentage?.value ?? num(f.delay.percent) ?? 100 };
    } else warn('fault.delay.exponentialDelay is not supported: no delay is injected');
  }
  if (f.abort) {
    const percent = f.abort.percentage?.value ?? 100;
    const status = num(f.abort.httpStatus);
    if (status !== undefined) out.abort = { status, percent };
    else if (f.abort.grpcStatus !== undefined) out.abort = { grpcStatus: f.abort.grpcStatus, percent };
    else warn('fault.abort.http2Error is not supported: no abort is injected');
  }
  return out.delay || out.abort ? out : undefined;
}

// ---------------------------------------------------------------------------------------------
// DestinationRules

interface MergedRule {
  name: string;
  trafficPolicy?: DrTrafficPolicy;
  subsets: Map<string, DrSubset>;
}

function atPort(tp: DrTrafficPolicy | undefined, port: number): PolicyFields {
  if (!tp) return {};
  const p = tp.portLevelSettings?.find((s) => num(s.port?.number) === port);
  const src = p ?? tp;
  return { loadBalancer: src.loadBalancer, connectionPool: src.connectionPool, outlierDetection: src.outlierDetection, tls: src.tls };
}

function normalizeOutlier(od: unknown): unknown {
  if (!isObject(od) || od.consecutiveErrors === undefined || od.consecutive5xxErrors !== undefined) return od;
  return { ...od, consecutive5xxErrors: od.consecutiveErrors };
}

// ---------------------------------------------------------------------------------------------
// The router

/** Config by the hosts it names: exact hosts in a map, wildcards (few) scanned; `order` keeps the config's namespace/name order. */
class HostIndex<T> {
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

interface GwRoute { cfg: ConfigObject; entries: GwEntry[] }
interface GwBinding { route: GwRoute; ports?: Set<number>; consumer?: string }
interface VsChoice { cfg: ConfigObject; entries: Entry[] }

interface ServiceTable {
  service: Service;
  producer: GwBinding[];
  consumers: Map<string, GwBinding[]>;
  vs?: VsChoice;
  /** Entries by `port` or `port|consumer namespace`; null: the default route. */
  cache: Map<string, Entry[] | null>;
}

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
  private readonly vsCompiled = new Map<ConfigObject, Entry[]>();
  private readonly tables = new Map<string, ServiceTable>();
  private readonly drCache = new Map<string, MergedRule | null>();
  private readonly policyCache = new Map<string, TrafficPolicy>();
  private readonly defaults = new Map<string, ForwardAction>();
  private readonly warned = new Set<string>();

  constructor(config: ConfigObject[], services: Service[], opts: RouterOptions = {}) {
    this.random = opts.random ?? Math.random;
    const first = services[0]?.hostname;
    this.domain = opts.clusterDomain ?? (first?.includes('.svc.') ? first.slice(first.indexOf('.svc.') + 5) : 'cluster.local');
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
      }
    }
    for (const cfg of gwRoutes) this.bindGatewayRoute(cfg);
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
      if (!entries) this.vsCompiled.set(vs.cfg, (entries = this.compileVirtualService(vs.cfg, vs.spec)));
      t.vs = { cfg: vs.cfg, entries };
      if (t.producer.length > 0 || t.consumers.size > 0) {
        this.warn(`${svc.hostname}: both VirtualService ${ref(vs.cfg)} and HTTPRoute/GRPCRoute(s) apply; as in Istio's waypoints, the routes take precedence on the ports they bind`);
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

  private compileVirtualService(cfg: ConfigObject, spec: VsSpec): Entry[] {
    const entries: Entry[] = [];
    const warn = (m: string) => this.warn(`VirtualService ${ref(cfg)}: ${m}`);
    (spec.http ?? []).forEach((rule, i) => {
      if (rule.delegate !== undefined) return warn(`http[${i}]: delegate is not supported: rule ignored`);
      const route = `${ref(cfg)}#${i}`;
      const action = this.vsAction(cfg, rule, i, warn);
      if (!rule.match || rule.match.length === 0) {
        entries.push({ route, test: ALWAYS, action });
        return;
      }
      rule.match.forEach((m, j) => {
        const compiled = this.vsMatch(m, (msg) => warn(`http[${i}].match[${j}]: ${msg}`));
        if (compiled) entries.push({ route, action, ...compiled });
      });
    });
    return entries;
  }

  private vsMatch(m: VsMatch, warn: (m: string) => void): Pick<Entry, 'test' | 'uri' | 'port'> | undefined {
    const tests: Test[] = [];
    const compile = (sm: StringMatch, what: string, ignoreCase = false): StrTest | 'present' => {
      if (sm.regex !== undefined) {
        if (sm.regex === '*') return 'present';
        try {
          const re = re2(sm.regex, true);
          return (v) => re.test(v);
        } catch (err) {
          warn(`${what}: regex ${JSON.stringify(sm.regex)} does not compile (${(err as Error).message}): never matches`);
          return NEVER;
        }
      }
      if (sm.exact !== undefined) {
        const x = ignoreCase ? sm.exact.toLowerCase() : sm.exact;
        return ignoreCase ? (v) => v.toLowerCase() === x : (v) => v === x;
      }
      if (sm.prefix !== undefined) {
        const x = ignoreCase ? sm.prefix.toLowerCase() : sm.prefix;
        return ignoreCase ? (v) => v.toLowerCase().startsWith(x) : (v) => v.startsWith(x);
      }
      return 'present';
    };
    let uri: UriInfo | undefined;
    if (m.uri) {
      const ic = m.ignoreUriCase === true;
      if (m.uri.exact !== undefined) {
        const x = ic ? m.uri.exact.toLowerCase() : m.uri.exact;
        tests.push(ic ? (c) => c.pathOnly.toLowerCase() === x : (c) => c.pathOnly === x);
        uri = { kind: 'exact', value: m.uri.exact };
      } else if (m.uri.prefix !== undefined) {
        const x = ic ? m.uri.prefix.toLowerCase() : m.uri.prefix;
        tests.push(ic ? (c) => c.lowerPath().startsWith(x) : (c) => c.req.path.startsWith(x));
        uri = { kind: 'prefix', value: m.uri.prefix };
      } else if (m.uri.regex !== undefined) {
        const t = compile(m.uri, 'uri');
        if (t !== 'present') tests.push((c) => t(c.pathOnly));
        uri = { kind: 'regex', value: m.uri.regex };
      }
    }
    const pseudo: [StringMatch | undefined, string][] = [[m.method, ':method'], [m.authority, ':authority'], [m.scheme, ':scheme']];
    for (const [sm, name] of pseudo) {
      if (!sm) continue;
      const t = compile(sm, name.slice(1));
      if (t !== 'present') tests.push((c) => t(c.header(name)!));
    }
    for (const [rawName, sm] of Object.entries(m.headers ?? {})) {
      const name = rawName.toLowerCase();
      if (name.startsWith('@request.auth.claims')) {
        warn(`headers.${rawName}: JWT claim matches need RequestAuthentication, which ambit does not support: never matches`);
        tests.push(() => false);
        continue;
      }
      const t = compile(sm, `headers.${rawName}`);
      tests.push(t === 'present' ? (c) => c.header(name) !== undefined : (c) => {
        const v = c.header(name);
        return v !== undefined && t(v);
      });
    }
    for (const [rawName, sm] of Object.entries(m.withoutHeaders ?? {})) {
      const name = rawName.toLowerCase();
      if (name.startsWith('@request.auth.claims')) {
        warn(`withoutHeaders.${rawName}: JWT claim matches need RequestAuthentication, which ambit does not support: always absent`);
        continue;
      }
      const t = compile(sm, `withoutHeaders.${rawName}`);
      tests.push(t === 'present' ? (c) => c.header(name) === undefined : (c) => !t(c.header(name) ?? ''));
    }
    for (const [name, sm] of Object.entries(m.queryParams ?? {})) {
      const t = compile(sm, `queryParams.${name}`);
      tests.push(t === 'present' ? (c) => c.param(name) !== undefined : (c) => {
        const v = c.param(name);
        return v !== undefined && t(v);
      });
    }
    if (m.gateways && m.gateways.length > 0) {
      // Istio's sourceMatchHTTP: a match naming gateways is judged by them alone.
      if (!m.gateways.includes('mesh')) return undefined;
    } else {
      const labels = Object.entries(m.sourceLabels ?? {});
      if (labels.length > 0) tests.push((c) => labels.every(([k, v]) => c.req.sourceLabels?.[k] === v));
      const ns = m.sourceNamespace;
      if (ns) tests.push((c) => c.req.sourceNamespace === ns);
    }
    const port = num(m.port);
    return { test: allOf(tests), ...(uri ? { uri } : {}), ...(port !== undefined ? { port } : {}) };
  }

  private vsAction(cfg: ConfigObject, rule: VsHttpRoute, i: number, warn: (m: string) => void): ActionTemplate {
    const ruleHeaders = headerOps(rule.headers?.request);
    const responseHeaders = headerOps(rule.headers?.response).ops;
    if (rule.redirect) {
      const r = rule.redirect;
      const code = num(r.redirectCode) ?? 301;
      if (![301, 302, 303, 307, 308].includes(code)) warn(`http[${i}].redirect.redirectCode ${code} is not one Istio supports (301, 302, 303, 307, 308): sent as is`);
      const port = num(r.port);
      return {
        kind: 'redirect', status: code,
        ...(r.uri !== undefined ? { uri: r.uri } : {}),
        ...(r.authority !== undefined ? { authority: r.authority } : {}),
        ...(r.scheme !== undefined ? { scheme: r.scheme } : {}),
        ...(port !== undefined ? { port } : r.derivePort === 'FROM_REQUEST_PORT' ? { port: 'request' as const } : r.derivePort === 'FROM_PROTOCOL_DEFAULT' ? { port: 'protocol-default' as const } : {}),
        ...(isEmptyOps(responseHeaders) ? {} : { responseHeaders }),
      };
    }
    if (rule.directResponse) {
      const b = rule.directResponse.body;
      const body = b?.string ?? (b?.bytes !== undefined ? Buffer.from(b.bytes, 'base64').toString('utf8') : undefined);
      return {
        kind: 'direct-response',
        response: {
          kind: 'direct-response', route: `${ref(cfg)}#${i}`, status: num(rule.directResponse.status) ?? 200,
          ...(body !== undefined ? { body } : {}), ...(isEmptyOps(responseHeaders) ? {} : { responseHeaders }),
        },
      };
    }
    let authority = ruleHeaders.authority;
    let rewrite: RewriteTemplate | undefined;
    if (rule.rewrite) {
      rewrite = {};
      const rr = rule.rewrite.uriRegexRewrite;
      if (rr) {
        try {
          rewrite.uriRegex = { match: rr.match, rewrite: rr.rewrite, re: re2(rr.match, false, 'g') };
        } catch (err) {
          warn(`http[${i}].rewrite.uriRegexRewrite: ${(err as Error).message}: not rewritten`);
        }
      } else if (rule.rewrite.uri) rewrite.uri = rule.rewrite.uri;
      if (rule.rewrite.authority) authority = rule.rewrite.authority;
    }
    if (authority !== undefined) (rewrite ??= {}).authority = authority;
    const routes = rule.route ?? [];
    const weighted = routes.length > 1 ? routes.filter((d) => (num(d.weight) ?? 0) > 0) : routes;
    const dests = new DestSet(weighted.map((d) => {
      const t = this.vsDestination(cfg, d.destination, routes.length > 1 ? num(d.weight) ?? 0 : 100, warn);
      const req = headerOps(d.headers?.request);
      const resp = headerOps(d.headers?.response).ops;
      if (!isEmptyOps(req.ops)) t.headers = req.ops;
      if (!isEmptyOps(resp)) t.responseHeaders = resp;
      if (req.authority !== undefined && authority === undefined) t.authority = req.authority;
      return t;
    }));
    const mirrors: { dests: DestSet; percent: number }[] = [];
    if (rule.mirror) {
      const percent = rule.mirrorPercentage?.value ?? num(rule.mirrorPercent) ?? 100;
      if (percent > 0) mirrors.push({ dests: new DestSet([this.vsDestination(cfg, rule.mirror, 100, warn)]), percent });
    }
    for (const m of rule.mirrors ?? []) {
      const percent = m.percentage?.value ?? 100;
      if (percent > 0) mirrors.push({ dests: new DestSet([this.vsDestination(cfg, m.destination, 100, warn)]), percent });
    }
    const timeoutMs = positiveMs(rule.timeout);
    const retries = vsRetries(rule.retries);
    const fault = compileFault(rule.fault, (m) => warn(`http[${i}]: ${m}`));
    return {
      kind: 'forward', dests, mirrors, ...(rewrite ? { rewrite } : {}),
      base: {
        kind: 'forward', route: `${ref(cfg)}#${i}`, requestHeaders: ruleHeaders.ops, responseHeaders,
        ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(retries ? { retries } : {}), ...(fault ? { fault } : {}),
        ...(rule.corsPolicy !== undefined ? { corsPolicy: rule.corsPolicy } : {}),
      },
    };
  }

  private vsDestination(cfg: ConfigObject, d: VsDestination, weight: number, warn: (m: string) => void): DestTemplate {
    const host = resolveHost(d.host, cfg.namespace, this.domain);
    const port = num(d.port?.number);
    const svc = this.servicesByHost.get(host);
    const base = { weight, ...(port !== undefined ? { port } : {}), ...(d.subset !== undefined ? { subset: d.subset } : {}) };
    if (!svc) {
      warn(`destination host "${d.host}" (${host}) is not a known service: its requests get 503`);
      return { ...base, service: placeholder(host), missing: { status: 503, reason: `no service ${host}` } };
    }
    if (d.subset === undefined) return { ...base, service: svc };
    const selector = this.subsetLabels(svc, d.subset);
    if (!selector) {
      warn(`subset "${d.subset}" of ${host} is not defined by a DestinationRule: its requests get 503`);
      return { ...base, service: svc, missing: { status: 503, reason: `no subset ${d.subset} for ${host}` } };
    }
    return { ...base, service: svc, selector };
  }

  // -------------------------------------------------------------------------------------------
  // Compilation: HTTPRoute and GRPCRoute

  private bindGatewayRoute(cfg: ConfigObject): void {
    const spec = cfg.spec as GwRouteSpec;
    const targets = new Map<string, { ports?: Set<number>; all: boolean }>();
    for (const p of spec.parentRefs ?? []) {
      if (p.kind !== 'Service' || !(p.group === undefined || p.group === '' || p.group === 'core')) continue;
      const namespace = p.namespace ?? cfg.namespace;
      const svc = this.servicesByName.get(`${namespace}/${p.name}`);
      if (!svc) {
        this.warn(`${cfg.kind} ${ref(cfg)}: parent Service ${namespace}/${p.name} does not exist: not attached`);
        continue;
      }
      let port = num(p.port);
      if (p.sectionName !== undefined) {
        const byName = svc.ports.find((sp) => sp.name === p.sectionName)?.port;
        if (byName === undefined || (port !== undefined && port !== byName)) {
          this.warn(`${cfg.kind} ${ref(cfg)}: Service ${namespace}/${p.name} has no port named "${p.sectionName}"${port !== undefined ? ` numbered ${port}` : ''}: not attached`);
          continue;
        }
        port = byName;
      }
      let t = targets.get(svc.hostname);
      if (!t) targets.set(svc.hostname, (t = { all: false }));
      if (port === undefined) t.all = true;
      else (t.ports ??= new Set()).add(port);
    }
    if (targets.size === 0) return;
    if ((spec.hostnames ?? []).length > 0) this.warn(`${cfg.kind} ${ref(cfg)}: hostnames are ignored for Service parents`);
    const entries = this.compileGatewayRoute(cfg, spec);
    if (!entries) return;
    const route: GwRoute = { cfg, entries };
    for (const [hostname, t] of targets) {
      const svc = this.servicesByHost.get(hostname)!;
      const binding: GwBinding = { route, ...(t.all ? {} : { ports: t.ports! }), ...(svc.namespace !== cfg.namespace ? { consumer: cfg.namespace } : {}) };
      let list = this.gwBindings.get(hostname);
      if (!list) this.gwBindings.set(hostname, (list = []));
      list.push(binding);
    }
  }

  /** A route's entries in rule and match order, or undefined when Istio would reject the route. */
  private compileGatewayRoute(cfg: ConfigObject, spec: GwRouteSpec): GwEntry[] | undefined {
    const grpc = cfg.kind === 'GRPCRoute';
    const entries: GwEntry[] = [];
    const state: { rejected?: string } = {};
    const warn = (m: string) => this.warn(`${cfg.kind} ${ref(cfg)}: ${m}`);
    const rules = spec.rules ?? [];
    for (let i = 0; i < rules.length; i++) {
      const rule = rules[i]!;
      const action = this.gwAction(cfg, rule, i, grpc, warn, (reason) => (state.rejected ??= reason));
      const route = `${ref(cfg)}#${i}`;
      // The CRD's default for an HTTPRoute rule without matches is one PathPrefix "/" match; an
      // explicitly empty list (or a GRPCRoute rule without matches) matches everything, last.
      const matches: (GwMatch | undefined)[] = rule.matches && rule.matches.length > 0 ? rule.matches : grpc || rule.matches ? [undefined] : [{}];
      for (let j = 0; j < matches.length; j++) {
        try {
          entries.push({ route, action, ...this.gwMatch(matches[j], grpc, (msg) => warn(`rules[${i}].matches[${j}]: ${msg}`)) });
        } catch (err) {
          state.rejected ??= `rules[${i}].matches[${j}]: ${(err as Error).message}`;
        }
      }
    }
    if (state.rejected !== undefined) {
      warn(`${state.rejected}: the route is not used`);
      return undefined;
    }
    return entries;
  }

  private gwMatch(m: GwMatch | undefined, grpc: boolean, warn: (m: string) => void): Omit<GwEntry, 'route' | 'action'> {
    if (!m) return { test: ALWAYS, hasMatch: false, rank: -1, length: 0, method: false, headers: 0, query: 0 };
    const tests: Test[] = [];
    let uri: UriInfo | undefined;
    let length = 0;
    let method = false;
    if (grpc) {
      const gm = typeof m.method === 'object' ? m.method : undefined;
      if (gm && (gm.service || gm.method)) {
        // Istio's createGRPCURIMatch: /service/method as path matches.
        const { service: s, method: mm } = gm;
        if ((gm.type ?? 'Exact') === 'Exact') {
          if (!mm) uri = uriMatch('prefix', `/${s}/`, tests);
          else if (!s) uri = uriMatch('regex', `/[^/]+/${mm}`, tests);
          else uri = uriMatch('exact', `/${s}/${mm}`, tests);
        } else if (!mm) uri = uriMatch('regex', `/${s}/.+`, tests);
        else uri = uriMatch('regex', `/${s ?? '[^/]+'}/${mm}`, tests);
        length = !mm ? `/${s}/`.length : uri.value.length;
      } else if (gm) warn('a method match needs a service or a method: matches every method');
    } else {
      const type = m.path?.type ?? 'PathPrefix';
      uri = uriMatch(type === 'Exact' ? 'exact' : type === 'RegularExpression' ? 'regex' : 'prefix', m.path?.value ?? '/', tests);
      length = uri.value.length;
      if (typeof m.method === 'string') {
        const want = m.method;
        method = true;
        tests.push((c) => c.req.method === want);
      }
    }
    const headers = nameValueTests(m.headers, true, (c, n) => c.header(n), tests);
    const query = grpc ? 0 : nameValueTests(m.queryParams, false, (c, n) => c.param(n), tests);
    const rank = !uri ? -1 : uri.kind === 'exact' ? 3 : uri.kind === 'prefix' ? 2 : 1;
    return { test: allOf(tests), ...(uri ? { uri } : {}), hasMatch: true, rank, length, method, headers, query };
  }

  private gwAction(cfg: ConfigObject, rule: GwRule, i: number, grpc: boolean, warn: (m: string) => void, reject: (reason: string) => void): ActionTemplate {
    let requestHeaders: VsHeaderOps | undefined;
    let responseHeaders: VsHeaderOps | undefined;
    let redirect: RedirectTemplate | undefined;
    let rewrite: RewriteTemplate | undefined;
    let corsPolicy: unknown;
    const mirrors: { dests: DestSet; percent: number }[] = [];
    const filters = rule.filters ?? [];
    for (let j = 0; j < filters.length; j++) {
      const f = filters[j]!;
      const at = `rules[${i}].filters[${j}]`;
      if (f.type === 'RequestHeaderModifier') requestHeaders = modifierOps(f.requestHeaderModifier);
      else if (f.type === 'ResponseHeaderModifier') responseHeaders = modifierOps(f.responseHeaderModifier);
      else if (f.type === 'RequestMirror' && f.requestMirror) {
        const m = f.requestMirror;
        const percent = m.fraction ? (100 * (num(m.fraction.numerator) ?? 0)) / (num(m.fraction.denominator) ?? 100) : num(m.percent) ?? 100;
        const dest = this.gwBackend(cfg, m.backendRef, 100);
        if (dest.missing) warn(`${at}: mirror backend: ${dest.missing.reason}: not mirrored`);
        else if (percent > 0) mirrors.push({ dests: new DestSet([dest]), percent });
      } else if (!grpc && f.type === 'RequestRedirect' && f.requestRedirect) {
        const r = f.requestRedirect;
        const port = num(r.port);
        redirect = {
          kind: 'redirect', status: num(r.statusCode) ?? 302,
          ...(r.hostname !== undefined ? { authority: r.hostname } : {}),
          ...(r.scheme !== undefined ? { scheme: r.scheme } : {}),
          port: port ?? (r.scheme !== undefined ? 'protocol-default' : 'request'),
          ...(r.path?.type === 'ReplaceFullPath' && r.path.replaceFullPath !== undefined ? { uri: r.path.replaceFullPath } : {}),
          ...(r.path?.type === 'ReplacePrefixMatch' && r.path.replacePrefixMatch !== undefined ? { uri: r.path.replacePrefixMatch, segmentPrefix: true } : {}),
        };
      } else if (!grpc && f.type === 'URLRewrite' && f.urlRewrite) {
        const u = f.urlRewrite;
        const rw: RewriteTemplate = {};
        if (u.path?.type === 'ReplacePrefixMatch' && u.path.replacePrefixMatch !== undefined) {
          rw.uri = u.path.replacePrefixMatch.replace(/\/$/, '') || '/';
          rw.segmentPrefix = true;
        } else if (u.path?.type === 'ReplaceFullPath' && u.path.replaceFullPath !== undefined) {
          // Istio: a regex rewrite of "/.*"; the replacement is literal.
          rw.uriRegex = { match: '/.*', rewrite: u.path.replaceFullPath.replace(/\\/g, '\\\\'), re: /\/.*/g };
        }
        if (u.hostname !== undefined) rw.authority = u.hostname;
        rewrite = rw;
      } else if (!grpc && f.type === 'CORS') corsPolicy = f.cors;
      else reject(`${at}: filter ${f.type} is not supported${grpc ? ' on a GRPCRoute' : ''}`);
    }
    const reqOps = headerOps(requestHeaders);
    const respOps = headerOps(responseHeaders).ops;
    if (reqOps.authority !== undefined && rewrite?.authority === undefined) rewrite = { ...rewrite, authority: reqOps.authority };
    if (redirect) return isEmptyOps(respOps) ? redirect : { ...redirect, responseHeaders: respOps };

    // Istio drops zero-weight backends; none left is the spec's 500.
    const backends = (rule.backendRefs ?? []).filter((b) => (num(b.weight) ?? 1) > 0);
    if (backends.length === 0) return { kind: 'direct-response', response: { kind: 'direct-response', route: `${ref(cfg)}#${i}`, status: 500 } };
    const routeAuthority = rewrite?.authority;
    const templates: DestTemplate[] = [];
    for (let j = 0; j < backends.length; j++) {
      const b = backends[j]!;
      const t = this.gwBackend(cfg, b, backends.length === 1 ? 100 : num(b.weight) ?? 1);
      if (t.missing) warn(`rules[${i}].backendRefs: ${t.missing.reason}: its share of requests gets 500`);
      for (const f of Array.isArray(b.filters) ? (b.filters as unknown[]) : []) {
        if (!isObject(f)) continue;
        const filter = f as unknown as GwFilter;
        if (filter.type === 'RequestHeaderModifier') {
          const ops = headerOps(modifierOps(filter.requestHeaderModifier));
          t.headers = ops.ops;
          if (ops.authority !== undefined && routeAuthority === undefined) t.authority = ops.authority;
        } else if (filter.type === 'ResponseHeaderModifier') t.responseHeaders = headerOps(modifierOps(filter.responseHeaderModifier)).ops;
        else reject(`rules[${i}].backendRefs[${j}].filters: filter ${String(filter.type)} is not supported on a backend`);
      }
      templates.push(t);
    }

    // Istio's conversion of retry and timeouts.
    let retries: RetrySpec | undefined = DEFAULT_RETRIES;
    if (rule.retry) {
      const attempts = num(rule.retry.attempts) ?? 2;
      const codes = (rule.retry.codes ?? []).map(num).filter((c): c is number => c !== undefined);
      const backoffMs = positiveMs(rule.retry.backoff);
      retries = attempts <= 0 ? undefined : {
        attempts,
        retryOn: ['connect-failure', 'refused-stream', 'unavailable', 'cancelled', ...(codes.length > 0 ? ['retriable-status-codes'] : [])],
        retriableStatusCodes: codes, ...(backoffMs !== undefined ? { backoffMs } : {}),
      };
    }
    let timeoutMs = positiveMs(rule.timeouts?.request);
    const backendMs = positiveMs(rule.timeouts?.backendRequest);
    if (backendMs !== undefined) {
      if (rule.retry && retries) retries = { ...retries, perTryTimeoutMs: backendMs };
      else timeoutMs = backendMs;
    }
    return {
      kind: 'forward', dests: new DestSet(templates), mirrors, ...(rewrite ? { rewrite } : {}),
      base: {
        kind: 'forward', route: `${ref(cfg)}#${i}`, requestHeaders: reqOps.ops, responseHeaders: respOps,
        ...(timeoutMs !== undefined ? { timeoutMs } : {}), ...(retries ? { retries } : {}),
        ...(corsPolicy !== undefined ? { corsPolicy } : {}),
      },
    };
  }

  /** A backendRef to a destination; invalid ones are kept as `missing` (500), as the Gateway API requires. */
  private gwBackend(cfg: ConfigObject, b: BackendRef, weight: number): DestTemplate {
    const namespace = b.namespace ?? cfg.namespace;
    const host = `${b.name}.${namespace}.svc.${this.domain}`;
    const port = num(b.port);
    const base = { weight, ...(port !== undefined ? { port } : {}) };
    const invalid = (reason: string): DestTemplate => ({ ...base, service: placeholder(host), missing: { status: 500, reason } });
    if ((b.kind ?? 'Service') !== 'Service' || !(b.group === undefined || b.group === '' || b.group === 'core')) {
      return invalid(`backendRef kind ${b.group ? `${b.group}/` : ''}${b.kind} is not supported`);
    }
    if (b.name.includes('.')) return invalid(`backendRef "${b.name}" must be a Service name, not a hostname`);
    const svc = this.servicesByHost.get(host);
    if (!svc) return invalid(`backend Service ${namespace}/${b.name} does not exist`);
    if (port === undefined) return invalid(`backendRef to Service ${namespace}/${b.name} needs a port`);
    return { ...base, service: svc };
  }

  private warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.warnings.push(message);
  }
}

/** Gateway API entries of several routes in precedence order (Istio's sortHTTPRoutes; stable, so route/rule/match order breaks ties). */
function mergeSorted(bindings: GwBinding[]): GwEntry[] {
  const all: GwEntry[] = [];
  for (const b of bindings) all.push(...b.route.entries);
  return all.sort((a, b) => {
    if (!a.hasMatch || !b.hasMatch) return Number(!a.hasMatch) - Number(!b.hasMatch);
    return b.rank - a.rank || b.length - a.length || Number(b.method) - Number(a.method) || b.headers - a.headers || b.query - a.query;
  });
}
