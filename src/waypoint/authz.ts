/**
 * The waypoint's L7 authorization: Istio AuthorizationPolicy as an Istio ambient waypoint applies
 * it to the HTTP requests it proxies. Pure: policies are compiled once per model version into
 * predicates indexed by what they bind to, and evaluate() runs on every request.
 *
 * Semantics (Istio's, for waypoints):
 * - Scope. Only policies with targetRef(s) act here; those with a selector or neither are the
 *   node agent's (src/authz/l4.ts). A ref binds within the policy's namespace (a ref naming
 *   another `namespace` binds nothing): kind Gateway (group gateway.networking.k8s.io) = every
 *   request through that waypoint; kind Service (group "") = requests for that service, through
 *   any waypoint. In the root namespace (istio-system unless configured), kind GatewayClass
 *   named ambit-waypoint or istio-waypoint binds every waypoint. Other refs (ServiceEntry, other
 *   kinds, groups or classes) bind nothing, with a warning. A policy is counted once per request
 *   however many of its refs bind.
 * - Decision. CUSTOM is not supported (ignored, warning). A matching DENY policy denies; else,
 *   with no ALLOW policy applying, allow; else allow only if some rule of some ALLOW policy
 *   matches. AUDIT does not decide: the first matching AUDIT policy is named in `audit`, on
 *   denied requests too (Istio runs its AUDIT filter before DENY). Root-namespace policies are
 *   tried first, then by namespace/name, which names the deciding policy.
 * - Matching. A policy without rules matches nothing (an ALLOW policy without rules denies all);
 *   a rule `{}` matches everything. A rule matches when its `from` (any source), `to` (any
 *   operation) and `when` (every condition) match; every field present in a source or operation
 *   must match and its `not` form must not. Values are exact, "*" (any non-empty value),
 *   "prefix*" or "*suffix"; IP blocks are addresses or CIDRs.
 *   - Peer: the principal is the SPIFFE ID without "spiffe://"; its namespace and service account
 *     come from the ".../ns/<ns>/sa/<sa>" shape, as at the node agent. `serviceAccounts` take
 *     "<ns>/<sa>" or "<sa>" (the policy's namespace), exact. Plaintext has no identity: positive
 *     forms cannot match it, `not` forms do. ipBlocks/source.ip test the peer's address;
 *     remoteIpBlocks/remote.ip the original client's (`remoteIp`), else the peer's.
 *   - hosts: the request authority, case-insensitive; a pattern without a port is matched against
 *     the authority without its port (ambit's choice: Istio compares the whole authority, so a
 *     port-less DENY misses "host:80"). ports and destination.port: the service port.
 *     methods: case-sensitive.
 *   - paths: the path without query or fragment, after Istio's default (BASE) normalization
 *     (normalizePath: percent-encoded unreserved characters decoded, dot segments removed).
 *     Templates as Istio hands them to Envoy: `{*}` is one non-empty segment, `{**}` zero or more
 *     characters, `/` included, and no operator may follow it; braces elsewhere are invalid.
 *   - when: request.headers[h] (any value of a repeated header matches; "*" = present),
 *     request.regex.headers[h] (a full match, RE2 syntax read by JS RegExp: a leading `(?i)`
 *     becomes a flag; patterns come from operators, not from requests), source.ip, remote.ip,
 *     source.namespace, source.principal, source.serviceAccount, destination.ip,
 *     destination.port. Header names are case-insensitive; `host`/`:authority`, `:method` and
 *     `:path` read the request's own. Never present at a waypoint: connection.sni (TLS ends at
 *     the HBONE tunnel) and, as ambit has no RequestAuthentication, the JWT attributes
 *     (requestPrincipals, request.auth.*) and experimental.* metadata. An absent attribute fails
 *     `values` and passes `notValues`.
 * - At CONNECT. decideTunnel() evaluates the same compiled rules on a tunnel's facts alone
 *   (principal, namespace, service account, source IP, destination IP and port), every request
 *   attribute unknown (three-valued: a rule is true, false, or depends on the request). A DENY
 *   that is true, or ALLOW policies that are all false, deny every request the tunnel could
 *   carry: the proxy refuses it before answering 200. It never decides against evaluate().
 * - Invalid values. Where Istio drops a rule it cannot translate, ambit fails closed: a rule
 *   that cannot be compiled (a bad CIDR, port, regex or path template, an unknown condition key
 *   or field) matches nothing in an ALLOW or AUDIT policy, and every request in a DENY policy.
 *   Each is reported once, at compile time, in `warnings` and through `log`. evaluate() does
 *   not throw: an unexpected error denies the request.
 */
import { WAYPOINT_CLASS, type ConfigObject } from '../config/model.js';
import { isObject } from '../config/schema.js';
import { allOf, anyOf, DEFAULT_ROOT_NAMESPACE, peerIdentity, stringMatcher, type AuthzDecision, type PeerIdentity } from '../authz/l4.js';
import { cidrContains, parseCidr, parseIp, type Cidr, type Ip } from '../util/ip.js';

export interface L7Request {
  /** SPIFFE ID of the HBONE peer ("spiffe://cluster.local/ns/shop/sa/web"), undefined for plaintext. */
  sourceIdentity?: string;
  /** The peer's address. */
  sourceIp: string;
  /** The original client's address (X-Forwarded-For, PROXY protocol); defaults to sourceIp. */
  remoteIp?: string;
  destinationIp: string;
  /** The service port the request was sent to. */
  destinationPort: number;
  /** The request's authority (Host / :authority), port included if it was sent. */
  host: string;
  method: string;
  /** As received: query and fragment are ignored for matching. */
  path: string;
  /** Lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  /** The JWT principal "<iss>/<sub>"; ambit has no RequestAuthentication, so undefined. */
  requestPrincipal?: string;
}

export interface L7Target {
  /** The service the request is for; absent when the waypoint could not tell. */
  service?: { name: string; namespace: string };
  waypoint: { name: string; namespace: string };
}

export interface L7Decision extends AuthzDecision {
  /** namespace/name of the first AUDIT policy that matched the request. */
  audit?: string;
}

/** What a tunnel carries before any request: who sent it, and where to. */
export type TunnelFacts = Pick<L7Request, 'sourceIdentity' | 'sourceIp' | 'destinationIp' | 'destinationPort'>;

/**
 * The decision for a tunnel at CONNECT time. `deny`: every request it could carry would be
 * denied; `allow`: every one allowed (requests are still checked one by one); `request`: it
 * depends on what the requests carry (host, method, path, headers).
 */
export interface TunnelDecision extends L7Decision {
  verdict: 'allow' | 'deny' | 'request';
}

export interface L7AuthorizerOptions {
  /** Istio's root namespace, whose GatewayClass-bound policies apply to every waypoint. */
  rootNamespace?: string;
  /** Receives each compile-time warning (one line per policy). */
  log?: (msg: string) => void;
}

/** GatewayClass names whose root-namespace policies bind every waypoint. */
export const WAYPOINT_CLASSES: readonly string[] = [WAYPOINT_CLASS, 'istio-waypoint'];
const GATEWAY_GROUP = 'gateway.networking.k8s.io';

function asObject(v: unknown): Record<string, unknown> {
  return isObject(v) ? v : {};
}
function asList(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function isAuthorizationPolicy(p: ConfigObject): boolean {
  return p.kind === 'AuthorizationPolicy' && p.apiVersion.startsWith('security.istio.io/');
}

/** Whether a policy is the waypoint's (it has targetRef(s)) rather than the node agent's. */
export function appliesAtWaypoint(policy: ConfigObject): boolean {
  if (!isAuthorizationPolicy(policy)) return false;
  const spec = asObject(policy.spec);
  // The node agent's own test (src/authz/l4.ts), so that every policy lands on exactly one side.
  return spec.targetRef !== undefined || asList(spec.targetRefs).length > 0;
}

// ---------------------------------------------------------------------------------------------
// Paths

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * A request path as authorization sees it: without query and fragment, percent-encoded
 * unreserved characters decoded (other escapes upper-cased, "%2F" kept), dot segments removed
 * (RFC 3986 5.2.4). Istio's default BASE normalization; the proxy should forward this path.
 */
export function normalizePath(raw: string): string {
  let end = raw.length;
  const q = raw.indexOf('?');
  if (q >= 0) end = q;
  const h = raw.indexOf('#');
  if (h >= 0 && h < end) end = h;
  let path = end === raw.length ? raw : raw.slice(0, end);
  if (path.includes('%')) {
    path = path.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => {
      const c = String.fromCharCode(parseInt(hex, 16));
      return UNRESERVED.test(c) ? c : `%${hex.toUpperCase()}`;
    });
  }
  if (!path.startsWith('/') || !path.includes('/.')) return path;
  const segments = path.slice(1).split('/');
  const out: string[] = [];
  for (const [i, s] of segments.entries()) {
    const last = i === segments.length - 1;
    if (s === '.' || s === '..') {
      if (s === '..') out.pop();
      if (last) out.push('');
    } else out.push(s);
  }
  return `/${out.join('/')}`;
}

/** Envoy's uri_template pchar set (RFC 3986 pchar without "*"). */
const PCHAR = "A-Za-z0-9\\-._~%!$&'()+,;:@=";
const LITERAL_SEGMENT = new RegExp(`^[${PCHAR}]+$`);
const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A path with `{*}`/`{**}` to an anchored RegExp, or the reason it is invalid. */
function compilePathTemplate(template: string): RegExp | string {
  if (!template.startsWith('/')) return 'a path template must start with "/"';
  const segments = template.slice(1).split('/');
  const out: string[] = [];
  let seenAny = false;
  for (const [i, s] of segments.entries()) {
    if (s === '{*}' || s === '{**}') {
      if (seenAny) return '{**} must be the last operator';
      seenAny = s === '{**}';
      out.push(s === '{*}' ? `[${PCHAR}]+` : `[${PCHAR}/]*`);
    } else if (s === '') {
      if (i !== segments.length - 1) return 'empty segment ("//")';
      out.push('');
    } else if (!LITERAL_SEGMENT.test(s)) {
      return `segment "${s}" is neither {*}, {**} nor a literal`;
    } else out.push(escapeRegex(s));
  }
  return new RegExp(`^/${out.join('/')}$`);
}

// ---------------------------------------------------------------------------------------------
// One request's facts, each worked out when a predicate first asks for it.


/** "[::1]:80" → "[::1]", "a.b:80" → "a.b"; a bare IPv6 address is left alone. */
function stripPort(host: string): string {
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end > 0 ? host.slice(0, end + 1) : host;
  }
  const colon = host.indexOf(':');
  return colon < 0 || host.includes(':', colon + 1) ? host : host.slice(0, colon);
}

class RequestFacts {
  private peerValue: PeerIdentity | undefined;
  private sourceValue: Ip | null | undefined;
  private remoteValue: Ip | null | undefined;
  private destinationValue: Ip | null | undefined;
  private hostValue: string | undefined;
  private hostNoPortValue: string | undefined;
  private pathValue: string | undefined;

  constructor(readonly req: L7Request) {}

  get port(): number { return this.req.destinationPort; }
  get method(): string { return this.req.method; }
  get requestPrincipal(): string | undefined { return this.req.requestPrincipal; }

  private get peer(): PeerIdentity {
    return (this.peerValue ??= peerIdentity(this.req.sourceIdentity));
  }
  get principal() {
    return this.peer.principal;
  }
  get namespace() {
    return this.peer.namespace;
  }
  get serviceAccount() {
    return this.peer.serviceAccount;
  }
  get source(): Ip | undefined {
    if (this.sourceValue === undefined) this.sourceValue = parseIp(this.req.sourceIp) ?? null;
    return this.sourceValue ?? undefined;
  }
  get remote(): Ip | undefined {
    if (this.remoteValue === undefined) this.remoteValue = this.req.remoteIp === undefined ? this.source ?? null : parseIp(this.req.remoteIp) ?? null;
    return this.remoteValue ?? undefined;
  }
  get destination(): Ip | undefined {
    if (this.destinationValue === undefined) this.destinationValue = parseIp(this.req.destinationIp) ?? null;
    return this.destinationValue ?? undefined;
  }
  /** Lower-cased, port included. */
  get host(): string {
    return (this.hostValue ??= (this.req.host ?? '').toLowerCase());
  }
  get hostNoPort(): string {
    return (this.hostNoPortValue ??= stripPort(this.host));
  }
  get path(): string {
    return (this.pathValue ??= normalizePath(this.req.path ?? ''));
  }

  /** A header's values (name lower-cased), undefined when absent; pseudo-headers from the request. */
  header(name: string): string[] | undefined {
    if ((name === 'host' || name === ':authority') && this.req.host) return [this.req.host];
    if (name === ':method') return [this.req.method];
    if (name === ':path') return [this.req.path];
    const v = this.req.headers[name];
    if (v === undefined || v === null) return undefined;
    return Array.isArray(v) ? v.map(String) : [String(v)];
  }
}

// ---------------------------------------------------------------------------------------------
// Predicates

type Predicate = (f: RequestFacts) => boolean;
/**
 * What a predicate says from a tunnel's facts alone (peer identity and address, destination
 * address and port): true or false for every request the tunnel could carry, or undefined when
 * the answer depends on a request's attributes (host, method, path, headers).
 */
type TunnelPredicate = (f: RequestFacts) => boolean | undefined;
/** A compiled test: `match` runs per request (the hot path); `tunnel` at CONNECT time. */
interface Test { match: Predicate; tunnel: TunnelPredicate }

const always: Predicate = () => true;
const never: Predicate = () => false;
const needsRequest: TunnelPredicate = () => undefined;
const ALWAYS: Test = { match: always, tunnel: always };
const NEVER: Test = { match: never, tunnel: never };
/** A test on the tunnel's facts: the same answer at CONNECT time as per request. */
const onTunnel = (match: Predicate): Test => ({ match, tunnel: match });
/** A test on a request's attributes: unknown at CONNECT time. */
const onRequest = (match: Predicate): Test => ({ match, tunnel: needsRequest });

/** Every test (none: true); at CONNECT time false if one is false, unknown if one is unknown. */
function all(tests: Test[]): Test {
  if (tests.length === 1) return tests[0]!;
  const tunnels = tests.map((t) => t.tunnel);
  return {
    match: allOf(tests.map((t) => t.match)),
    tunnel: (f) => {
      let unknown = false;
      for (const t of tunnels) {
        const v = t(f);
        if (v === false) return false;
        if (v === undefined) unknown = true;
      }
      return unknown ? undefined : true;
    },
  };
}

/** Any test (none: false); at CONNECT time true if one is true, unknown if one is unknown. */
function any(tests: Test[]): Test {
  if (tests.length === 1) return tests[0]!;
  const tunnels = tests.map((t) => t.tunnel);
  return {
    match: anyOf(tests.map((t) => t.match)),
    tunnel: (f) => {
      let unknown = false;
      for (const t of tunnels) {
        const v = t(f);
        if (v === true) return true;
        if (v === undefined) unknown = true;
      }
      return unknown ? undefined : false;
    },
  };
}

function not(t: Test): Test {
  const { match, tunnel } = t;
  return {
    match: (f) => !match(f),
    tunnel: (f) => {
      const v = tunnel(f);
      return v === undefined ? undefined : !v;
    },
  };
}

/** Compiling one rule: the policy's namespace, and the reasons the rule cannot be enforced. */
interface Ctx { policyNamespace: string; errors: string[] }

/** Compiles a non-empty list of values (for `field`) into a test. */
type Compile = (values: string[], field: string, ctx: Ctx) => Test;

/** A list of strings, undefined when absent; anything else is an error. */
function stringList(obj: Record<string, unknown>, key: string, where: string, ctx: Ctx): string[] | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) {
    ctx.errors.push(`${where}.${key}: must be a list`);
    return undefined;
  }
  const out: string[] = [];
  for (const x of v) {
    if (typeof x === 'string' || typeof x === 'number') out.push(String(x));
    else ctx.errors.push(`${where}.${key}: ${JSON.stringify(x)} is not a string`);
  }
  return out;
}

const notName = (name: string) => `not${name[0]!.toUpperCase()}${name.slice(1)}`;

/** A field and its `not` form: some value matches / no value matches; absent or empty lists do not constrain. */
function positiveNegative(obj: Record<string, unknown>, name: string, where: string, ctx: Ctx, compile: Compile): Test[] {
  const preds: Test[] = [];
  const values = stringList(obj, name, where, ctx);
  if (values?.length) preds.push(compile(values, `${where}.${name}`, ctx));
  const notValues = stringList(obj, notName(name), where, ctx);
  if (notValues?.length) {
    preds.push(not(compile(notValues, `${where}.${notName(name)}`, ctx)));
  }
  return preds;
}

/** Strings read from the tunnel's facts (`tunnel`) or from each request. */
const strings = (get: (f: RequestFacts) => string | undefined, from: 'tunnel' | 'request'): Compile => (values) => {
  const m = stringMatcher(values);
  const match: Predicate = (f) => m(get(f));
  return from === 'tunnel' ? onTunnel(match) : onRequest(match);
};

/** An attribute a waypoint never has: `values` fail, `notValues` pass (known at CONNECT time too). */
const absent: Compile = () => NEVER;

const cidrs = (get: (f: RequestFacts) => Ip | undefined): Compile => (values, field, ctx) => {
  const list: Cidr[] = [];
  for (const v of values) {
    const c = parseCidr(v);
    if (c) list.push(c);
    else ctx.errors.push(`${field}: "${v}" is not an IP address or CIDR`);
  }
  return onTunnel((f) => {
    const ip = get(f);
    if (ip === undefined) return false;
    for (const c of list) if (cidrContains(c, ip)) return true;
    return false;
  });
};

const ports: Compile = (values, field, ctx) => {
  const set = new Set<number>();
  for (const v of values) {
    if (/^\d{1,5}$/.test(v) && Number(v) <= 65535) set.add(Number(v));
    else ctx.errors.push(`${field}: "${v}" is not a port number`);
  }
  return onTunnel((f) => set.has(f.port));
};

/** "<ns>/<sa>", or "<sa>" in the policy's namespace; exact, no wildcards (Istio's rules). */
const serviceAccounts: Compile = (values, field, ctx) => {
  const set = new Set<string>();
  for (const v of values) {
    const [ns, sa, extra] = v.includes('/') ? v.split('/') : [ctx.policyNamespace, v];
    if (extra !== undefined || !ns || !sa || v.includes('*')) ctx.errors.push(`${field}: "${v}" is not "<namespace>/<service account>" or "<service account>"`);
    else set.add(`${ns}/${sa}`);
  }
  return onTunnel((f) => f.serviceAccount !== undefined && set.has(f.serviceAccount));
};

/** Case-insensitive; a pattern without a port is matched against the host without its port. */
const hosts: Compile = (values) => {
  const withPort: string[] = [];
  const withoutPort: string[] = [];
  for (const raw of values) {
    const v = raw.toLowerCase();
    if (v === '*') return onRequest((f) => f.host !== '');
    (v.replace(/\[[^\]]*\]/g, '').includes(':') ? withPort : withoutPort).push(v);
  }
  const full = withPort.length > 0 ? stringMatcher(withPort) : undefined;
  const bare = withoutPort.length > 0 ? stringMatcher(withoutPort) : undefined;
  return onRequest((f) => (bare !== undefined && bare(f.hostNoPort)) || (full !== undefined && full(f.host)));
};

const paths: Compile = (values, field, ctx) => {
  const plain: string[] = [];
  const templates: RegExp[] = [];
  for (const v of values) {
    if (v.includes('{*}') || v.includes('{**}')) {
      const re = compilePathTemplate(v);
      if (typeof re === 'string') ctx.errors.push(`${field}: "${v}": ${re}`);
      else templates.push(re);
    } else if (/[{}]/.test(v)) {
      ctx.errors.push(`${field}: "${v}": "{" and "}" are only allowed in {*} and {**}`);
    } else plain.push(v);
  }
  const m = plain.length > 0 ? stringMatcher(plain) : undefined;
  return onRequest((f) => {
    const path = f.path;
    if (m?.(path)) return true;
    for (const re of templates) if (re.test(path)) return true;
    return false;
  });
};

/** request.headers[name]: "*" = present; otherwise some value of the header matches. */
const header = (name: string): Compile => (values) => {
  const present = values.includes('*');
  const m = stringMatcher(values.filter((v) => v !== '*'));
  return onRequest((f) => {
    const hv = f.header(name);
    if (hv === undefined) return false;
    if (present) return true;
    for (const v of hv) if (m(v)) return true;
    return false;
  });
};

/** RE2 syntax to an anchored JS RegExp: a leading `(?flags)` becomes flags, `(?P<` a named group. */
function re2(source: string): RegExp {
  if (/\(\?<[=!]|\(\?[=!]|\\[1-9]/.test(source)) throw new Error('lookaround and backreferences are not RE2 syntax');
  let src = source.replace(/\(\?P</g, '(?<');
  let flags = '';
  const lead = /^\(\?([imsU]+)\)/.exec(src);
  if (lead) {
    src = src.slice(lead[0].length);
    for (const f of lead[1]!) if ('ims'.includes(f) && !flags.includes(f)) flags += f;
  }
  return new RegExp(`^(?:${src})$`, flags);
}

/** request.regex.headers[name]: some value of the header fully matches some pattern. */
const regexHeader = (name: string): Compile => (values, field, ctx) => {
  const res: RegExp[] = [];
  for (const v of values) {
    try {
      res.push(re2(v));
    } catch (err) {
      ctx.errors.push(`${field}: regex ${JSON.stringify(v)} does not compile (${(err as Error).message})`);
    }
  }
  return onRequest((f) => {
    const hv = f.header(name);
    if (hv === undefined) return false;
    for (const v of hv) for (const re of res) if (re.test(v)) return true;
    return false;
  });
};

const bracketed = (key: string, prefix: string): string | undefined => {
  if (!key.startsWith(`${prefix}[`) || !key.endsWith(']')) return undefined;
  const name = key.slice(prefix.length + 1, -1).trim().toLowerCase();
  return name && !/[[\]]/.test(name) ? name : undefined;
};

/** The compiler for a condition key, or undefined for an unknown key. */
function conditionCompiler(key: string): Compile | undefined {
  switch (key) {
    case 'source.ip': return cidrs((f) => f.source);
    case 'remote.ip': return cidrs((f) => f.remote);
    case 'destination.ip': return cidrs((f) => f.destination);
    case 'source.namespace': return strings((f) => f.namespace, 'tunnel');
    case 'source.principal': return strings((f) => f.principal, 'tunnel');
    case 'source.serviceAccount': return serviceAccounts;
    case 'destination.port': return ports;
    case 'connection.sni': return absent;
    case 'request.auth.principal': return strings((f) => f.requestPrincipal, 'request');
  }
  if (key.startsWith('request.auth.') || key.startsWith('experimental.envoy.filters.')) return absent;
  const h = bracketed(key, 'request.headers');
  if (h !== undefined) return header(h);
  const r = bracketed(key, 'request.regex.headers');
  if (r !== undefined) return regexHeader(r);
  return undefined;
}

const SOURCE_FIELDS = ['principals', 'requestPrincipals', 'namespaces', 'serviceAccounts', 'ipBlocks', 'remoteIpBlocks'];
const OPERATION_FIELDS = ['hosts', 'ports', 'methods', 'paths'];
const withNot = (names: string[]) => new Set(names.flatMap((n) => [n, notName(n)]));
const SOURCE_KEYS = withNot(SOURCE_FIELDS);
const OPERATION_KEYS = withNot(OPERATION_FIELDS);
const RULE_KEYS = new Set(['from', 'to', 'when']);
const CONDITION_KEYS = new Set(['key', 'values', 'notValues']);

function unknownFields(obj: Record<string, unknown>, known: Set<string>, where: string, ctx: Ctx): void {
  for (const k of Object.keys(obj)) if (!known.has(k)) ctx.errors.push(`${where}: unknown field "${k}"`);
}

function compileSource(s: Record<string, unknown>, where: string, ctx: Ctx): Test {
  unknownFields(s, SOURCE_KEYS, where, ctx);
  const field = (name: string, compile: Compile) => positiveNegative(s, name, where, ctx, compile);
  return all([
    ...field('principals', strings((f) => f.principal, 'tunnel')),
    ...field('requestPrincipals', strings((f) => f.requestPrincipal, 'request')),
    ...field('namespaces', strings((f) => f.namespace, 'tunnel')),
    ...field('serviceAccounts', serviceAccounts),
    ...field('ipBlocks', cidrs((f) => f.source)),
    ...field('remoteIpBlocks', cidrs((f) => f.remote)),
  ]);
}

function compileOperation(o: Record<string, unknown>, where: string, ctx: Ctx): Test {
  unknownFields(o, OPERATION_KEYS, where, ctx);
  const field = (name: string, compile: Compile) => positiveNegative(o, name, where, ctx, compile);
  return all([...field('hosts', hosts), ...field('ports', ports), ...field('methods', strings((f) => f.method, 'request')), ...field('paths', paths)]);
}

/** `from`/`to`: a list of `{ <inner>: {...} }`; absent or empty does not constrain. */
function compileClauses(rule: Record<string, unknown>, list: 'from' | 'to', inner: 'source' | 'operation', ctx: Ctx,
  compile: (o: Record<string, unknown>, where: string, ctx: Ctx) => Test): Test | undefined {
  const v = rule[list];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) {
    ctx.errors.push(`${list}: must be a list`);
    return undefined;
  }
  if (v.length === 0) return undefined;
  return any(v.map((entry, i) => {
    const where = `${list}[${i}]`;
    const e = asObject(entry);
    unknownFields(e, new Set([inner]), where, ctx);
    if (!isObject(e[inner])) {
      ctx.errors.push(`${where}.${inner}: required`);
      return NEVER;
    }
    return compile(e[inner], `${where}.${inner}`, ctx);
  }));
}

function compileCondition(c: unknown, where: string, ctx: Ctx): Test[] {
  if (!isObject(c)) {
    ctx.errors.push(`${where}: must be an object`);
    return [];
  }
  unknownFields(c, CONDITION_KEYS, where, ctx);
  if (typeof c.key !== 'string' || c.key === '') {
    ctx.errors.push(`${where}.key: required`);
    return [];
  }
  const compile = conditionCompiler(c.key);
  if (!compile) {
    ctx.errors.push(`${where}.key: unknown condition key "${c.key}"`);
    return [];
  }
  const values = stringList(c, 'values', where, ctx);
  const notValues = stringList(c, 'notValues', where, ctx);
  if (!values?.length && !notValues?.length) {
    ctx.errors.push(`${where}: needs values or notValues`);
    return [];
  }
  const preds: Test[] = [];
  if (values?.length) preds.push(compile(values, `${where}(${c.key}).values`, ctx));
  if (notValues?.length) preds.push(not(compile(notValues, `${where}(${c.key}).notValues`, ctx)));
  return preds;
}

function compileRule(rule: unknown, ctx: Ctx): Test {
  if (!isObject(rule)) {
    ctx.errors.push('must be an object');
    return NEVER;
  }
  unknownFields(rule, RULE_KEYS, 'rule', ctx);
  const clauses: Test[] = [];
  const from = compileClauses(rule, 'from', 'source', ctx, compileSource);
  if (from) clauses.push(from);
  const to = compileClauses(rule, 'to', 'operation', ctx, compileOperation);
  if (to) clauses.push(to);
  if (rule.when !== undefined && rule.when !== null) {
    if (!Array.isArray(rule.when)) ctx.errors.push('when: must be a list');
    else rule.when.forEach((c, i) => clauses.push(...compileCondition(c, `when[${i}]`, ctx)));
  }
  return all(clauses);
}

// ---------------------------------------------------------------------------------------------
// Policies and what they bind to

type Action = 'ALLOW' | 'DENY' | 'AUDIT';

interface CompiledPolicy {
  /** namespace/name */
  key: string;
  action: Action;
  /** Position in evaluation order: root namespace first, then namespace/name. */
  rank: number;
  /** The decision when this policy matches (ALLOW/DENY). */
  decision: L7Decision;
  /** Any rule matches; a policy without rules matches nothing. */
  matches: Predicate;
  /** The same from a tunnel's facts alone: undefined when it depends on the requests. */
  matchesTunnel: TunnelPredicate;
}

type Warn = (message: string) => void;

interface Binding { to: 'waypoint' | 'service' | 'every-waypoint'; key: string }

function bindingsOf(p: ConfigObject, spec: Record<string, unknown>, rootNamespace: string, warn: Warn): Binding[] {
  const refs: [string, unknown][] = [];
  if (spec.targetRef !== undefined) refs.push(['targetRef', spec.targetRef]);
  asList(spec.targetRefs).forEach((r, i) => refs.push([`targetRefs[${i}]`, r]));
  const out: Binding[] = [];
  for (const [where, raw] of refs) {
    const ref = asObject(raw);
    const kind = typeof ref.kind === 'string' ? ref.kind : '';
    const name = typeof ref.name === 'string' ? ref.name : '';
    const group = typeof ref.group === 'string' ? ref.group : '';
    const what = `${where} (${kind || 'no kind'} ${JSON.stringify(name)})`;
    if (ref.namespace !== undefined && ref.namespace !== '' && ref.namespace !== p.namespace) {
      warn(`${what} names namespace ${JSON.stringify(ref.namespace)}: a policy binds only in its own namespace, ignored`);
      continue;
    }
    if (!name) {
      warn(`${what} has no name: ignored`);
      continue;
    }
    if (kind === 'Gateway' && group === GATEWAY_GROUP) out.push({ to: 'waypoint', key: `${p.namespace}/${name}` });
    else if (kind === 'Service' && group === '') out.push({ to: 'service', key: `${p.namespace}/${name}` });
    else if (kind === 'GatewayClass' && group === GATEWAY_GROUP) {
      if (p.namespace !== rootNamespace) warn(`${what} binds only from the root namespace (${rootNamespace}): ignored`);
      else if (!WAYPOINT_CLASSES.includes(name)) warn(`${what} is not a waypoint class (${WAYPOINT_CLASSES.join(', ')}): ignored`);
      else out.push({ to: 'every-waypoint', key: '' });
    } else if (kind === 'Gateway' || kind === 'GatewayClass') {
      warn(`${what} needs group ${GATEWAY_GROUP}, got ${JSON.stringify(group)}: ignored`);
    } else if (kind === 'Service') {
      warn(`${what} needs group "" (core), got ${JSON.stringify(group)}: ignored`);
    } else if (kind === 'ServiceEntry') {
      warn(`${what}: ServiceEntry targets are not supported by ambit waypoints: ignored`);
    } else warn(`${what}: kind ${JSON.stringify(kind)} cannot be a waypoint policy target: ignored`);
  }
  return out;
}

const EFFECT: Record<Action, string> = {
  ALLOW: 'it matches nothing',
  AUDIT: 'it matches nothing',
  DENY: 'it matches every request (fail closed)',
};

function compilePolicy(p: ConfigObject, action: Action, rank: number, warn: Warn): CompiledPolicy {
  const key = `${p.namespace}/${p.name}`;
  const spec = asObject(p.spec);
  const rules = spec.rules === undefined || spec.rules === null ? [] : spec.rules;
  let matches: Test;
  if (!Array.isArray(rules)) {
    warn(`rules: must be a list; the policy cannot be enforced: ${EFFECT[action]}`);
    matches = action === 'DENY' ? ALWAYS : NEVER;
  } else {
    matches = any(rules.map((r, i) => {
      const ctx: Ctx = { policyNamespace: p.namespace, errors: [] };
      const pred = compileRule(r, ctx);
      if (ctx.errors.length === 0) return pred;
      warn(`rules[${i}] cannot be enforced (${ctx.errors.join('; ')}): ${EFFECT[action]}`);
      return action === 'DENY' ? ALWAYS : NEVER;
    }));
  }
  const decision: L7Decision = action === 'DENY'
    ? { allowed: false, reason: `denied by DENY policy ${key}`, policy: key }
    : { allowed: true, reason: `allowed by ALLOW policy ${key}`, policy: key };
  return { key, action, rank, decision, matches: matches.match, matchesTunnel: matches.tunnel };
}

// ---------------------------------------------------------------------------------------------

interface Applicable { deny: CompiledPolicy[]; allow: CompiledPolicy[]; audit: CompiledPolicy[] }

const NO_POLICIES: Applicable = { deny: [], allow: [], audit: [] };
/** Distinct (waypoint, service) pairs remembered; past it the cache starts over. */
const CACHE_LIMIT = 4096;

/** A policy the authorizer binds somewhere, and to what (for the admin's views, not for requests). */
export interface BoundPolicy {
  policy: ConfigObject;
  /** `waypoint` and `service` keys are namespace/name; `every-waypoint` has key "". */
  bindings: readonly { to: 'waypoint' | 'service' | 'every-waypoint'; key: string }[];
}

export class L7Authorizer {
  /** Warnings found while compiling, one string per policy, naming it. */
  readonly warnings: string[] = [];
  /** Every policy that binds something, in evaluation order: what `/proxy-config/policies` lists. */
  readonly bound: BoundPolicy[] = [];
  private readonly rootNamespace: string;
  private readonly log: ((msg: string) => void) | undefined;
  private readonly byWaypoint = new Map<string, CompiledPolicy[]>();
  private readonly byService = new Map<string, CompiledPolicy[]>();
  private readonly everyWaypoint: CompiledPolicy[] = [];
  private readonly applicable = new Map<string, Applicable>();

  constructor(policies: ConfigObject[], opts: L7AuthorizerOptions = {}) {
    this.rootNamespace = opts.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    this.log = opts.log;
    const issues = new Map<string, string[]>();
    const warner = (p: ConfigObject): Warn => (message) => {
      const id = `${p.kind} ${p.namespace}/${p.name}`;
      const list = issues.get(id) ?? [];
      if (!list.includes(message)) list.push(message);
      issues.set(id, list);
    };
    const root = (p: ConfigObject) => (p.namespace === this.rootNamespace ? 0 : 1);
    const ordered = policies.filter(appliesAtWaypoint).sort((a, b) =>
      root(a) - root(b) || `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
    ordered.forEach((p, rank) => this.add(p, rank, warner(p)));
    for (const [id, list] of issues) this.warnings.push(`${id}: ${list.join('; ')}`);
    for (const w of this.warnings) this.log?.(w);
  }

  private add(p: ConfigObject, rank: number, warn: Warn): void {
    const spec = asObject(p.spec);
    const action = spec.action ?? 'ALLOW';
    if (action === 'CUSTOM') return warn('action CUSTOM (external authorization) is not supported: ignored');
    if (action !== 'ALLOW' && action !== 'DENY' && action !== 'AUDIT') return warn(`unknown action ${JSON.stringify(action)}: ignored`);
    if (spec.selector !== undefined) warn('selector is ignored: the policy is bound by its targetRef(s)');
    const bindings = bindingsOf(p, spec, this.rootNamespace, warn);
    if (bindings.length === 0) return;
    const compiled = compilePolicy(p, action, rank, warn);
    this.bound.push({ policy: p, bindings });
    for (const b of bindings) {
      if (b.to === 'every-waypoint') pushOnce(this.everyWaypoint, compiled);
      else pushOnce(getOrCreate(b.to === 'waypoint' ? this.byWaypoint : this.byService, b.key), compiled);
    }
  }

  /**
   * What the policies say of a tunnel from its facts alone, before any of its bytes: a DENY
   * policy that matches whatever the requests carry denies; so do ALLOW policies none of which
   * could match (each rule fails on the tunnel's facts). A TCP stream, which has no request
   * attributes, may pass only on `allow`. Does not throw: an unexpected error denies.
   */
  decideTunnel(peer: TunnelFacts, target: L7Target): TunnelDecision {
    try {
      return this.decideOnTunnel(peer, target);
    } catch (err) {
      const message = `waypoint authorization failed, tunnel refused: ${(err as Error).message}`;
      this.log?.(message);
      return { verdict: 'deny', allowed: false, reason: message };
    }
  }

  private decideOnTunnel(peer: TunnelFacts, target: L7Target): TunnelDecision {
    const { deny, allow, audit } = this.policiesFor(target);
    if (deny.length === 0 && allow.length === 0 && audit.length === 0) return { verdict: 'allow', allowed: true, reason: 'no policy applies' };
    // Only the tunnel's facts are read: the request's attributes are never asked for.
    const facts = new RequestFacts({ ...peer, host: '', method: '', path: '', headers: {} });
    const audited = audit.find((p) => p.matchesTunnel(facts) === true);
    const withAudit = (d: TunnelDecision): TunnelDecision => (audited ? { ...d, audit: audited.key } : d);
    let undecidedDeny: CompiledPolicy | undefined;
    for (const p of deny) {
      const v = p.matchesTunnel(facts);
      if (v === true) return withAudit({ ...p.decision, verdict: 'deny' });
      if (v === undefined) undecidedDeny ??= p;
    }
    let allowedBy: CompiledPolicy | undefined;
    let undecidedAllow: CompiledPolicy | undefined;
    for (const p of allow) {
      const v = p.matchesTunnel(facts);
      if (v === true) {
        allowedBy = p;
        break;
      }
      if (v === undefined) undecidedAllow ??= p;
    }
    if (allow.length > 0 && !allowedBy && !undecidedAllow) {
      return withAudit({ verdict: 'deny', allowed: false, reason: `no ALLOW policy matched (${allow.length} ${allow.length === 1 ? 'applies' : 'apply'}; none can match this peer)` });
    }
    if (undecidedDeny) return withAudit({ verdict: 'request', allowed: false, reason: `DENY policy ${undecidedDeny.key} matches on request attributes`, policy: undecidedDeny.key });
    if (allow.length === 0) return withAudit({ verdict: 'allow', allowed: true, reason: 'no ALLOW policy applies' });
    if (allowedBy) return withAudit({ ...allowedBy.decision, verdict: 'allow' });
    return withAudit({ verdict: 'request', allowed: false, reason: `ALLOW policy ${undecidedAllow!.key} matches on request attributes`, policy: undecidedAllow!.key });
  }

  /** The decision for one request for `target.service` arriving at `target.waypoint`. */
  evaluate(req: L7Request, target: L7Target): L7Decision {
    try {
      return this.decide(req, target);
    } catch (err) {
      const message = `waypoint authorization failed, request denied: ${(err as Error).message}`;
      this.log?.(message);
      return { allowed: false, reason: message };
    }
  }

  private decide(req: L7Request, target: L7Target): L7Decision {
    const { deny, allow, audit } = this.policiesFor(target);
    if (deny.length === 0 && allow.length === 0 && audit.length === 0) return { allowed: true, reason: 'no policy applies' };
    const facts = new RequestFacts(req);
    const audited = audit.find((p) => p.matches(facts));
    const withAudit = (d: L7Decision): L7Decision => (audited ? { ...d, audit: audited.key } : d);
    for (const p of deny) if (p.matches(facts)) return withAudit({ ...p.decision });
    if (allow.length === 0) return withAudit({ allowed: true, reason: 'no ALLOW policy applies' });
    for (const p of allow) if (p.matches(facts)) return withAudit({ ...p.decision });
    return withAudit({ allowed: false, reason: `no ALLOW policy matched (${allow.length} ${allow.length === 1 ? 'applies' : 'apply'})` });
  }

  /** The DENY, ALLOW and AUDIT policies for a (waypoint, service) pair, each in evaluation order. */
  private policiesFor(target: L7Target): Applicable {
    const waypointKey = `${target.waypoint.namespace}/${target.waypoint.name}`;
    const serviceKey = target.service ? `${target.service.namespace}/${target.service.name}` : '';
    const cacheKey = `${waypointKey}\u0000${serviceKey}`;
    let found = this.applicable.get(cacheKey);
    if (found) return found;
    const all = new Set([
      ...this.everyWaypoint,
      ...(this.byWaypoint.get(waypointKey) ?? []),
      ...(serviceKey ? this.byService.get(serviceKey) ?? [] : []),
    ]);
    if (all.size === 0) found = NO_POLICIES;
    else {
      const sorted = [...all].sort((a, b) => a.rank - b.rank);
      found = {
        deny: sorted.filter((p) => p.action === 'DENY'),
        allow: sorted.filter((p) => p.action === 'ALLOW'),
        audit: sorted.filter((p) => p.action === 'AUDIT'),
      };
    }
    if (this.applicable.size >= CACHE_LIMIT) this.applicable.clear();
    this.applicable.set(cacheKey, found);
    return found;
  }
}

function getOrCreate<T>(map: Map<string, T[]>, key: string): T[] {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  return list;
}

function pushOnce<T>(list: T[], value: T): void {
  if (!list.includes(value)) list.push(value);
}
