/** What a route does: destinations, rewrites, redirects, header operations, retries and faults, compiled into templates. */
import { durationMs } from '../../config/schema.js';
import { defaultPort, num } from './common.js';
import { RequestView, type UriInfo } from './match.js';
import type { HeaderModifier, VsHeaderOps, VsHttpRoute } from './specs.js';
import { DEFAULT_RETRIES, type Destination, EMPTY_OPS, type FaultSpec, type ForwardAction, type HeaderOps, type RetrySpec, type RouteAction } from './types.js';

// ---------------------------------------------------------------------------------------------
// Action templates: everything resolved at compile time except what depends on the request.

export interface DestTemplate extends Omit<Destination, 'port'> { port?: number }

/** Destinations whose default port is the request's are materialized once per port. */
export class DestSet {
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

export interface RewriteTemplate {
  uri?: string;
  /** Gateway API ReplacePrefixMatch: the spec's segment-wise replacement. */
  segmentPrefix?: boolean;
  uriRegex?: { match: string; rewrite: string; re: RegExp };
  authority?: string;
}

export interface RedirectTemplate {
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

export type ActionTemplate =
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
export function replaceSegmentPrefix(path: string, prefix: string, replacement: string): string {
  const p = prefix === '/' ? '' : prefix.replace(/\/$/, '');
  const rest = path.slice(p.length);
  const out = replacement.replace(/\/+$/, '') + rest;
  return out === '' ? '/' : out.startsWith('/') ? out : `/${out}`;
}

/** RE2 GlobalReplace substitution (`\0`-`\9`, `\\`) over every match in the path. */
export function regexReplace(path: string, re: RegExp, substitution: string): string {
  return path.replace(re, (...args: unknown[]) => {
    const groups = args.slice(0, -2).filter((a) => typeof a === 'string' || a === undefined) as (string | undefined)[];
    return substitution.replace(/\\([0-9\\])/g, (_, d: string) => (d === '\\' ? '\\' : groups[Number(d)] ?? ''));
  });
}

export function rewritePath(t: RewriteTemplate, uri: UriInfo | undefined, c: RequestView): string | undefined {
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
export function redirectHost(host: string, newScheme: string, requestScheme: string, dropPort: boolean): string {
  const end = host.startsWith('[') ? (host.lastIndexOf(']:') < 0 ? -1 : host.lastIndexOf(']:') + 1) : host.lastIndexOf(':');
  if (end < 0) return host;
  const port = host.slice(end);
  const drop = dropPort || (newScheme !== requestScheme && ((requestScheme === 'https' && port === ':443') || (requestScheme === 'http' && port === ':80')));
  return drop ? host.slice(0, end) : host;
}

export function redirectLocation(t: RedirectTemplate, uri: UriInfo | undefined, c: RequestView): string {
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
export function headerOps(o: VsHeaderOps | undefined): { ops: HeaderOps; authority?: string } {
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
export function modifierOps(m: HeaderModifier | undefined): VsHeaderOps | undefined {
  if (!m) return undefined;
  const toMap = (list: { name: string; value: string }[] | undefined) => {
    const out: Record<string, string> = {};
    for (const { name, value } of list ?? []) if (!(name.toLowerCase() in out)) out[name.toLowerCase()] = value;
    return out;
  };
  return { set: toMap(m.set), add: toMap(m.add), remove: m.remove ?? [] };
}

export const isEmptyOps = (o: HeaderOps) => Object.keys(o.set).length === 0 && Object.keys(o.add).length === 0 && o.remove.length === 0;

// ---------------------------------------------------------------------------------------------
// Retries, faults, durations

export function positiveMs(d: string | undefined): number | undefined {
  if (d === undefined) return undefined;
  const ms = durationMs(d);
  return ms > 0 ? ms : undefined;
}

/** Istio's ConvertPolicy. */
export function vsRetries(r: VsHttpRoute['retries']): RetrySpec | undefined {
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

export function compileFault(f: VsHttpRoute['fault'], warn: (m: string) => void): FaultSpec | undefined {
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
