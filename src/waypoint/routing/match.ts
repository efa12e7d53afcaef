/** Matching: one request's view, and the tests compiled from match clauses. */
import type { ActionTemplate } from './actions.js';
import type { NameValueMatch } from './specs.js';
import type { RouteRequest } from './types.js';

// ---------------------------------------------------------------------------------------------
// One request, with what matching needs computed once and the rest on demand.

export class RequestView {
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

export type Test = (c: RequestView) => boolean;
export type StrTest = (v: string) => boolean;
export const ALWAYS: Test = () => true;
export const NEVER: StrTest = () => false;

/** RE2 syntax to a JS RegExp: a leading `(?flags)` group becomes flags; `anchored` makes it a full match. */
export function re2(source: string, anchored: boolean, extraFlags = ''): RegExp {
  let src = source;
  let flags = extraFlags;
  const lead = /^\(\?([imsU]+)\)/.exec(src);
  if (lead) {
    src = src.slice(lead[0].length);
    for (const f of lead[1]!) if ('ims'.includes(f) && !flags.includes(f)) flags += f;
  }
  return new RegExp(anchored ? `^(?:${src})$` : src, flags);
}

export function allOf(tests: Test[]): Test {
  if (tests.length === 0) return ALWAYS;
  if (tests.length === 1) return tests[0]!;
  return (c) => {
    for (const t of tests) if (!t(c)) return false;
    return true;
  };
}

export interface UriInfo { kind: 'exact' | 'prefix' | 'regex'; value: string }

/** A compiled match entry: the rule it leads to and what the rewrite needs to know of the match. */
export interface Entry {
  route: string;
  test: Test;
  uri?: UriInfo;
  /** Service port the entry is for (VirtualService `match.port`); undefined: any. */
  port?: number;
  action: ActionTemplate;
}

/** Gateway API entries carry what their precedence is sorted by. */
export interface GwEntry extends Entry {
  hasMatch: boolean;
  rank: number;
  length: number;
  method: boolean;
  headers: number;
  query: number;
}

/** A Gateway API path match (Istio's translation) added to `tests`. */
export function uriMatch(kind: UriInfo['kind'], value: string, tests: Test[]): UriInfo {
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
export function nameValueTests(list: NameValueMatch[] | undefined, caseInsensitive: boolean, get: (c: RequestView, name: string) => string | undefined, tests: Test[]): number {
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
