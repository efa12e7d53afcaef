/** Istio VirtualService compiled into route entries (semantics: the comment of src/waypoint/routing.ts). */
import type { ConfigObject } from '../../config/model.js';
import { type ActionTemplate, compileFault, DestSet, type DestTemplate, headerOps, isEmptyOps, positiveMs, type RewriteTemplate, vsRetries } from './actions.js';
import { type CompileContext, num, placeholder, ref, resolveHost } from './common.js';
import { allOf, ALWAYS, type Entry, NEVER, re2, type StrTest, type Test, type UriInfo } from './match.js';
import type { StringMatch, VsDestination, VsHttpRoute, VsMatch, VsSpec } from './specs.js';

export function compileVirtualService(ctx: CompileContext, cfg: ConfigObject, spec: VsSpec): Entry[] {
  const entries: Entry[] = [];
  const warn = (m: string) => ctx.warn(`VirtualService ${ref(cfg)}: ${m}`);
  (spec.http ?? []).forEach((rule, i) => {
    if (rule.delegate !== undefined) return warn(`http[${i}]: delegate is not supported: rule ignored`);
    const route = `${ref(cfg)}#${i}`;
    const action = vsAction(ctx, cfg, rule, i, warn);
    if (!rule.match || rule.match.length === 0) {
      entries.push({ route, test: ALWAYS, action });
      return;
    }
    rule.match.forEach((m, j) => {
      const compiled = vsMatch(ctx, m, (msg) => warn(`http[${i}].match[${j}]: ${msg}`));
      if (compiled) entries.push({ route, action, ...compiled });
    });
  });
  return entries;
}

export function vsMatch(ctx: CompileContext, m: VsMatch, warn: (m: string) => void): Pick<Entry, 'test' | 'uri' | 'port'> | undefined {
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

export function vsAction(ctx: CompileContext, cfg: ConfigObject, rule: VsHttpRoute, i: number, warn: (m: string) => void): ActionTemplate {
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
    const t = vsDestination(ctx, cfg, d.destination, routes.length > 1 ? num(d.weight) ?? 0 : 100, warn);
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
    if (percent > 0) mirrors.push({ dests: new DestSet([vsDestination(ctx, cfg, rule.mirror, 100, warn)]), percent });
  }
  for (const m of rule.mirrors ?? []) {
    const percent = m.percentage?.value ?? 100;
    if (percent > 0) mirrors.push({ dests: new DestSet([vsDestination(ctx, cfg, m.destination, 100, warn)]), percent });
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

export function vsDestination(ctx: CompileContext, cfg: ConfigObject, d: VsDestination, weight: number, warn: (m: string) => void): DestTemplate {
  const host = resolveHost(d.host, cfg.namespace, ctx.domain);
  const port = num(d.port?.number);
  const svc = ctx.serviceByHost(host);
  const base = { weight, ...(port !== undefined ? { port } : {}), ...(d.subset !== undefined ? { subset: d.subset } : {}) };
  if (!svc) {
    warn(`destination host "${d.host}" (${host}) is not a known service: its requests get 503`);
    return { ...base, service: placeholder(host), missing: { status: 503, reason: `no service ${host}` } };
  }
  if (d.subset === undefined) return { ...base, service: svc };
  const selector = ctx.subsetLabels(svc, d.subset);
  if (!selector) {
    warn(`subset "${d.subset}" of ${host} is not defined by a DestinationRule: its requests get 503`);
    return { ...base, service: svc, missing: { status: 503, reason: `no subset ${d.subset} for ${host}` } };
  }
  return { ...base, service: svc, selector };
}
