/** Gateway API HTTPRoute and GRPCRoute attached to services and compiled into route entries, in Istio's precedence. */
import type { ConfigObject } from '../../config/model.js';
import { isObject } from '../../config/schema.js';
import { type ActionTemplate, DestSet, type DestTemplate, headerOps, isEmptyOps, modifierOps, positiveMs, type RedirectTemplate, type RewriteTemplate } from './actions.js';
import { type CompileContext, type GwBinding, type GwRoute, num, placeholder, ref } from './common.js';
import { allOf, ALWAYS, type GwEntry, nameValueTests, type Test, type UriInfo, uriMatch } from './match.js';
import type { BackendRef, GwFilter, GwMatch, GwRouteSpec, GwRule, VsHeaderOps } from './specs.js';
import { DEFAULT_RETRIES, type RetrySpec } from './types.js';

export function bindGatewayRoute(ctx: CompileContext, cfg: ConfigObject): void {
  const spec = cfg.spec as GwRouteSpec;
  const targets = new Map<string, { ports?: Set<number>; all: boolean }>();
  for (const p of spec.parentRefs ?? []) {
    if (p.kind !== 'Service' || !(p.group === undefined || p.group === '' || p.group === 'core')) continue;
    const namespace = p.namespace ?? cfg.namespace;
    const svc = ctx.serviceByName(`${namespace}/${p.name}`);
    if (!svc) {
      ctx.warn(`${cfg.kind} ${ref(cfg)}: parent Service ${namespace}/${p.name} does not exist: not attached`);
      continue;
    }
    let port = num(p.port);
    if (p.sectionName !== undefined) {
      const byName = svc.ports.find((sp) => sp.name === p.sectionName)?.port;
      if (byName === undefined || (port !== undefined && port !== byName)) {
        ctx.warn(`${cfg.kind} ${ref(cfg)}: Service ${namespace}/${p.name} has no port named "${p.sectionName}"${port !== undefined ? ` numbered ${port}` : ''}: not attached`);
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
  if ((spec.hostnames ?? []).length > 0) ctx.warn(`${cfg.kind} ${ref(cfg)}: hostnames are ignored for Service parents`);
  const entries = compileGatewayRoute(ctx, cfg, spec);
  if (!entries) return;
  const route: GwRoute = { cfg, entries };
  for (const [hostname, t] of targets) {
    const svc = ctx.serviceByHost(hostname)!;
    const binding: GwBinding = { route, ...(t.all ? {} : { ports: t.ports! }), ...(svc.namespace !== cfg.namespace ? { consumer: cfg.namespace } : {}) };
    ctx.bind(hostname, binding);
  }
}

/** A route's entries in rule and match order, or undefined when Istio would reject the route. */
export function compileGatewayRoute(ctx: CompileContext, cfg: ConfigObject, spec: GwRouteSpec): GwEntry[] | undefined {
  const grpc = cfg.kind === 'GRPCRoute';
  const entries: GwEntry[] = [];
  const state: { rejected?: string } = {};
  const warn = (m: string) => ctx.warn(`${cfg.kind} ${ref(cfg)}: ${m}`);
  const rules = spec.rules ?? [];
  for (let i = 0; i < rules.length; i++) {
    const rule = rules[i]!;
    const action = gwAction(ctx, cfg, rule, i, grpc, warn, (reason) => (state.rejected ??= reason));
    const route = `${ref(cfg)}#${i}`;
    // The CRD's default for an HTTPRoute rule without matches is one PathPrefix "/" match; an
    // explicitly empty list (or a GRPCRoute rule without matches) matches everything, last.
    const matches: (GwMatch | undefined)[] = rule.matches && rule.matches.length > 0 ? rule.matches : grpc || rule.matches ? [undefined] : [{}];
    for (let j = 0; j < matches.length; j++) {
      try {
        entries.push({ route, action, ...gwMatch(ctx, matches[j], grpc, (msg) => warn(`rules[${i}].matches[${j}]: ${msg}`)) });
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

export function gwMatch(ctx: CompileContext, m: GwMatch | undefined, grpc: boolean, warn: (m: string) => void): Omit<GwEntry, 'route' | 'action'> {
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

export function gwAction(ctx: CompileContext, cfg: ConfigObject, rule: GwRule, i: number, grpc: boolean, warn: (m: string) => void, reject: (reason: string) => void): ActionTemplate {
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
      const dest = gwBackend(ctx, cfg, m.backendRef, 100);
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
    const t = gwBackend(ctx, cfg, b, backends.length === 1 ? 100 : num(b.weight) ?? 1);
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
export function gwBackend(ctx: CompileContext, cfg: ConfigObject, b: BackendRef, weight: number): DestTemplate {
  const namespace = b.namespace ?? cfg.namespace;
  const host = `${b.name}.${namespace}.svc.${ctx.domain}`;
  const port = num(b.port);
  const base = { weight, ...(port !== undefined ? { port } : {}) };
  const invalid = (reason: string): DestTemplate => ({ ...base, service: placeholder(host), missing: { status: 500, reason } });
  if ((b.kind ?? 'Service') !== 'Service' || !(b.group === undefined || b.group === '' || b.group === 'core')) {
    return invalid(`backendRef kind ${b.group ? `${b.group}/` : ''}${b.kind} is not supported`);
  }
  if (b.name.includes('.')) return invalid(`backendRef "${b.name}" must be a Service name, not a hostname`);
  const svc = ctx.serviceByHost(host);
  if (!svc) return invalid(`backend Service ${namespace}/${b.name} does not exist`);
  if (port === undefined) return invalid(`backendRef to Service ${namespace}/${b.name} needs a port`);
  return { ...base, service: svc };
}


/** Gateway API entries of several routes in precedence order (Istio's sortHTTPRoutes; stable, so route/rule/match order breaks ties). */
export function mergeSorted(bindings: GwBinding[]): GwEntry[] {
  const all: GwEntry[] = [];
  for (const b of bindings) all.push(...b.route.entries);
  return all.sort((a, b) => {
    if (!a.hasMatch || !b.hasMatch) return Number(!a.hasMatch) - Number(!b.hasMatch);
    return b.rank - a.rank || b.length - a.length || Number(b.method) - Number(a.method) || b.headers - a.headers || b.query - a.query;
  });
}
