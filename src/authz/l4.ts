/**
 * The node agent's L4 authorization: Istio AuthorizationPolicy and PeerAuthentication as ztunnel
 * applies them to connections arriving at a workload. Pure: policies are compiled once per model
 * version into predicates over one connection's facts, and evaluate() runs on every connection.
 *
 * Semantics (Istio's):
 * - Scope. A policy applies to a workload when it is in the root namespace without a selector
 *   (mesh-wide), in the root namespace with a selector matching the workload (any namespace), or
 *   in the workload's namespace without a selector or with a matching one. An empty selector is
 *   no selector. Policies with targetRef(s) are bound to waypoints: not applied here.
 * - Decision. A matching DENY policy denies; else, with no ALLOW policy applying, allow; else
 *   allow only if some rule of some ALLOW policy matches. AUDIT and CUSTOM do not take part.
 * - Matching. A policy without rules matches nothing; a rule `{}` matches everything. A rule
 *   matches when its `from` (any source), `to` (any operation) and `when` (every condition)
 *   match; every field present in a source or operation must match. Values are exact, "*"
 *   (any non-empty value), "prefix*" or "*suffix"; IP blocks are addresses or CIDRs.
 *   Plaintext has no principal or namespace: positive forms cannot match it, `not` forms do.
 *   At L4 the remote address (`remoteIpBlocks`, `remote.ip`) is the peer's address.
 * - L7 at L4. The node agent sees no HTTP and no JWT. An ALLOW rule using an L7 attribute never
 *   matches (it cannot allow what it cannot check); a DENY rule is enforced without its L7
 *   attributes, so it denies more than written, never less. Both draw a warning.
 * - PeerAuthentication. The workload's selector policy, else its namespace's, else the mesh's
 *   (root namespace, no selector), else PERMISSIVE; UNSET inherits from the next level, and a
 *   port-level mode (by target port, selector policies only) overrides the workload's mode.
 * - ServiceEntries (egress). A policy whose targetRefs name a ServiceEntry (group
 *   networking.istio.io) is enforced by the client's node agent on connections that matched
 *   that entry (evaluateServiceEntry): the client's identity is the source, `to.operation.hosts`
 *   is matched against the entry's host the connection is for (case-insensitive, Istio's
 *   wildcard forms) and `ports` against the entry's port. Other L7 attributes are handled as
 *   above. The policy's other targetRefs (a Gateway, a Service) stay with the waypoints.
 */
import { cidrContains, parseCidr, parseIp, type Cidr, type Ip } from '../util/ip.js';
import type { ConfigObject, Workload } from '../config/model.js';

export interface L4Connection {
  /** SPIFFE ID of the peer ("spiffe://cluster.local/ns/shop/sa/users"), undefined for plaintext. */
  sourceIdentity?: string;
  sourceIp: string;
  destinationIp: string;
  destinationPort: number;
  /** The ServiceEntry host the connection is for (egress only): what `to.operation.hosts` matches. */
  host?: string;
}

export interface AuthzDecision {
  allowed: boolean;
  /** e.g. 'denied by DENY policy shop/deny-legacy', 'allowed by ALLOW policy shop/allow-users', 'no ALLOW policy matched (2 apply)', 'no policy applies' */
  reason: string;
  /** namespace/name of the deciding policy, when one decided. */
  policy?: string;
}

export interface AuthzOptions {
  /** Istio's root namespace, whose policies apply mesh-wide. */
  rootNamespace?: string;
}

export type MtlsMode = 'STRICT' | 'PERMISSIVE' | 'DISABLE';

export const DEFAULT_ROOT_NAMESPACE = 'istio-system';

// ---------------------------------------------------------------------------------------------
// One connection's facts, and predicates over them.

interface Facts {
  /** The SPIFFE ID without "spiffe://". */
  readonly principal: string | undefined;
  readonly namespace: string | undefined;
  /** "<namespace>/<service account>". */
  readonly serviceAccount: string | undefined;
  readonly source: Ip | undefined;
  readonly destination: Ip | undefined;
  readonly port: number;
  /** The ServiceEntry host, lower-cased (egress only). */
  readonly host: string | undefined;
}

type Predicate = (f: Facts) => boolean;
const never: Predicate = () => false;

const SPIFFE = 'spiffe://';

/** What policies match of a peer: its principal, and its namespace and service account when it has that shape. */
export interface PeerIdentity { principal?: string; namespace?: string; serviceAccount?: string }

/**
 * "spiffe://<td>/ns/<ns>/sa/<sa>": the principal is all after "spiffe://"; namespace and
 * "<ns>/<sa>" only from exactly that shape. Shared with the waypoint's L7 evaluator.
 */
export function peerIdentity(id: string | undefined): PeerIdentity {
  if (!id?.startsWith(SPIFFE)) return {};
  const principal = id.slice(SPIFFE.length);
  const td = principal.indexOf('/');
  if (td <= 0 || !principal.startsWith('/ns/', td)) return { principal };
  const nsEnd = principal.indexOf('/', td + 4);
  if (nsEnd <= td + 4 || !principal.startsWith('/sa/', nsEnd)) return { principal };
  if (nsEnd + 4 === principal.length || principal.includes('/', nsEnd + 4)) return { principal };
  const namespace = principal.slice(td + 4, nsEnd);
  return { principal, namespace, serviceAccount: `${namespace}/${principal.slice(nsEnd + 4)}` };
}

/** A connection's facts, each worked out when a predicate first asks for it. */
class ConnectionFacts implements Facts {
  readonly port: number;
  readonly host: string | undefined;
  private peerValue: PeerIdentity | undefined;
  private sourceIp: Ip | null | undefined;
  private destinationIp: Ip | null | undefined;

  constructor(private readonly conn: L4Connection) {
    this.port = conn.destinationPort;
    this.host = conn.host?.toLowerCase();
  }

  private get peer(): PeerIdentity {
    return (this.peerValue ??= peerIdentity(this.conn.sourceIdentity));
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
  get source() {
    if (this.sourceIp === undefined) this.sourceIp = parseIp(this.conn.sourceIp) ?? null;
    return this.sourceIp ?? undefined;
  }
  get destination() {
    if (this.destinationIp === undefined) this.destinationIp = parseIp(this.conn.destinationIp) ?? null;
    return this.destinationIp ?? undefined;
  }
}

/** All of the predicates (none: always true). Shared with the waypoint's L7 evaluator. */
export function allOf<T>(preds: ((f: T) => boolean)[]): (f: T) => boolean {
  if (preds.length === 0) return () => true;
  if (preds.length === 1) return preds[0]!;
  return (f) => {
    for (const p of preds) if (!p(f)) return false;
    return true;
  };
}

/** Any of the predicates (none: always false). */
export function anyOf<T>(preds: ((f: T) => boolean)[]): (f: T) => boolean {
  if (preds.length === 0) return () => false;
  if (preds.length === 1) return preds[0]!;
  return (f) => {
    for (const p of preds) if (p(f)) return true;
    return false;
  };
}

/** Istio's string forms: exact, "*" (present), "prefix*", "*suffix". Absent or empty never matches. */
export function stringMatcher(patterns: string[]): (value: string | undefined) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  let presence = false;
  for (const p of patterns) {
    if (p === '*') presence = true;
    else if (p.startsWith('*')) suffixes.push(p.slice(1));
    else if (p.endsWith('*')) prefixes.push(p.slice(0, -1));
    else exact.add(p);
  }
  if (presence) return (v) => !!v;
  if (prefixes.length === 0 && suffixes.length === 0) return (v) => !!v && exact.has(v);
  return (v) => {
    if (!v) return false;
    if (exact.has(v)) return true;
    for (const x of prefixes) if (v.startsWith(x)) return true;
    for (const x of suffixes) if (v.endsWith(x)) return true;
    return false;
  };
}

/** What a compiled list of values tests a connection for. */
type ValueTest = (f: Facts) => boolean;

/** A field and its `not` form: any value matches / no value matches; absent or empty lists do not constrain. */
function positiveNegative(values: string[] | undefined, notValues: string[] | undefined, compile: (v: string[]) => ValueTest): Predicate[] {
  const preds: Predicate[] = [];
  if (values?.length) preds.push(compile(values));
  if (notValues?.length) {
    const test = compile(notValues);
    preds.push((f) => !test(f));
  }
  return preds;
}

// ---------------------------------------------------------------------------------------------
// Compiling AuthorizationPolicy.

type Warn = (message: string) => void;

interface ValueCompilers {
  strings(get: (f: Facts) => string | undefined): (v: string[]) => ValueTest;
  cidrs(get: (f: Facts) => Ip | undefined, field: string): (v: string[]) => ValueTest;
  ports(field: string): (v: string[]) => ValueTest;
  serviceAccounts: (v: string[]) => ValueTest;
}

function valueCompilers(policyNamespace: string, warn: Warn): ValueCompilers {
  return {
    strings: (get) => (values) => {
      const m = stringMatcher(values);
      return (f) => m(get(f));
    },
    cidrs: (get, field) => (values) => {
      const cidrs: Cidr[] = [];
      for (const v of values) {
        const c = parseCidr(v);
        if (c) cidrs.push(c);
        else warn(`${field}: "${v}" is not an IP address or CIDR: it matches nothing`);
      }
      return (f) => {
        const ip = get(f);
        if (ip === undefined) return false;
        for (const c of cidrs) if (cidrContains(c, ip)) return true;
        return false;
      };
    },
    ports: (field) => (values) => {
      const ports = new Set<number>();
      for (const v of values) {
        if (/^\d{1,5}$/.test(v) && Number(v) <= 65535) ports.add(Number(v));
        else warn(`${field}: "${v}" is not a port number: it matches nothing`);
      }
      return (f) => ports.has(f.port);
    },
    // "<ns>/<sa>", or "<sa>" in the policy's namespace; exact, as ztunnel compares them.
    serviceAccounts: (values) => {
      const set = new Set(values.map((v) => (v.includes('/') ? v : `${policyNamespace}/${v}`)));
      return (f) => f.serviceAccount !== undefined && set.has(f.serviceAccount);
    },
  };
}

const L7_SOURCE_FIELDS = ['requestPrincipals', 'notRequestPrincipals'];
const L7_OPERATION_FIELDS = ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'];

type Fields = Record<string, string[] | undefined>;

function asObject(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}
function asList(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}
function asStrings(v: unknown): string[] | undefined {
  return Array.isArray(v) ? v.map(String) : undefined;
}
function fieldsOf(v: unknown): Fields {
  const out: Fields = {};
  for (const [k, x] of Object.entries(asObject(v))) out[k] = asStrings(x);
  return out;
}

/** The L7 fields a source/operation uses (non-empty lists only). */
function l7Used(fields: Fields, names: string[]): string[] {
  return names.filter((n) => (fields[n]?.length ?? 0) > 0);
}

function compileSource(s: Fields, vc: ValueCompilers): Predicate {
  const sourceIp = vc.cidrs((f) => f.source, 'ipBlocks');
  const remoteIp = vc.cidrs((f) => f.source, 'remoteIpBlocks');
  return allOf([
    ...positiveNegative(s.principals, s.notPrincipals, vc.strings((f) => f.principal)),
    ...positiveNegative(s.namespaces, s.notNamespaces, vc.strings((f) => f.namespace)),
    ...positiveNegative(s.serviceAccounts, s.notServiceAccounts, vc.serviceAccounts),
    ...positiveNegative(s.ipBlocks, s.notIpBlocks, sourceIp),
    // At L4 the remote address is the peer's address.
    ...positiveNegative(s.remoteIpBlocks, s.notRemoteIpBlocks, remoteIp),
  ]);
}

function compileOperation(o: Fields, vc: ValueCompilers, hostsAtL4: boolean): Predicate {
  const hosts = (values: string[]): ValueTest => {
    const m = stringMatcher(values.map((v) => v.toLowerCase()));
    return (f) => m(f.host);
  };
  return allOf([
    ...positiveNegative(o.ports, o.notPorts, vc.ports('ports')),
    ...(hostsAtL4 ? positiveNegative(o.hosts, o.notHosts, hosts) : []),
  ]);
}

/** The compiler for an L4 condition key, or undefined for an L7 one. */
function conditionCompiler(key: string, vc: ValueCompilers): ((v: string[]) => ValueTest) | undefined {
  switch (key) {
    case 'source.ip':
    case 'remote.ip': return vc.cidrs((f) => f.source, key);
    case 'destination.ip': return vc.cidrs((f) => f.destination, key);
    case 'source.namespace': return vc.strings((f) => f.namespace);
    case 'source.principal': return vc.strings((f) => f.principal);
    case 'destination.port': return vc.ports(key);
    default: return undefined; // request.*, experimental.*, connection.sni: L7
  }
}

interface CompiledRule { match: Predicate; l7: string[] }

/**
 * One rule; its L7 attributes are dropped from the predicate and reported in `l7`. With
 * `hostsAtL4` (a policy bound to a ServiceEntry) `hosts` is the entry's host, known at L4.
 */
function compileRule(rule: unknown, vc: ValueCompilers, hostsAtL4 = false): CompiledRule {
  const r = asObject(rule);
  const l7 = new Set<string>();
  const clauses: Predicate[] = [];

  const from = asList(r.from).map((e) => fieldsOf(asObject(e).source));
  if (from.length > 0) {
    from.forEach((s) => l7Used(s, L7_SOURCE_FIELDS).forEach((n) => l7.add(n)));
    clauses.push(anyOf(from.map((s) => compileSource(s, vc))));
  }
  const to = asList(r.to).map((e) => fieldsOf(asObject(e).operation));
  if (to.length > 0) {
    const l7Fields = hostsAtL4 ? L7_OPERATION_FIELDS.filter((n) => n !== 'hosts' && n !== 'notHosts') : L7_OPERATION_FIELDS;
    to.forEach((o) => l7Used(o, l7Fields).forEach((n) => l7.add(n)));
    clauses.push(anyOf(to.map((o) => compileOperation(o, vc, hostsAtL4))));
  }
  for (const c of asList(r.when).map(asObject)) {
    const key = String(c.key);
    const compile = conditionCompiler(key, vc);
    if (compile) clauses.push(...positiveNegative(asStrings(c.values), asStrings(c.notValues), compile));
    else l7.add(key);
  }
  return { match: allOf(clauses), l7: [...l7] };
}

interface CompiledPolicy {
  /** namespace/name */
  key: string;
  /** The decision when this policy matches. */
  decision: AuthzDecision;
  action: 'ALLOW' | 'DENY';
  selector?: [string, string][];
  /** Any rule matches; a policy without rules matches nothing. */
  matches: Predicate;
}

function selectorOf(spec: Record<string, unknown>): [string, string][] | undefined {
  const entries = Object.entries(asObject(asObject(spec.selector).matchLabels)).map(([k, v]): [string, string] => [k, String(v)]);
  return entries.length > 0 ? entries : undefined;
}

function selects(selector: [string, string][] | undefined, labels: Record<string, string>): boolean {
  return !selector || selector.every(([k, v]) => labels[k] === v);
}

const IGNORED_ACTIONS: Record<string, string> = {
  CUSTOM: 'action CUSTOM (external authorization) is not supported: ignored',
  AUDIT: 'action AUDIT does not affect access: ignored',
};

/** A policy's targetRef and targetRefs, as objects. */
function targetRefsOf(spec: Record<string, unknown>): Record<string, unknown>[] {
  return [...(spec.targetRef !== undefined ? [spec.targetRef] : []), ...asList(spec.targetRefs)].map(asObject);
}

const isServiceEntryRef = (ref: Record<string, unknown>) => ref.kind === 'ServiceEntry' && ref.group === 'networking.istio.io';

/**
 * The ServiceEntries (namespace/name) a policy's targetRefs name: Istio allows only the
 * policy's own namespace, so a ref to another is ignored with a warning.
 */
function serviceEntryRefs(p: ConfigObject, warn: Warn): string[] {
  const out: string[] = [];
  for (const ref of targetRefsOf(asObject(p.spec)).filter(isServiceEntryRef)) {
    const namespace = typeof ref.namespace === 'string' && ref.namespace !== '' ? ref.namespace : p.namespace;
    if (namespace !== p.namespace) warn(`targetRefs: ServiceEntry ${namespace}/${String(ref.name)} is in another namespace: ignored (a policy binds to ServiceEntries of its own namespace)`);
    else if (typeof ref.name === 'string') out.push(`${namespace}/${ref.name}`);
  }
  return out;
}

/**
 * A policy for the node agent, or undefined (with a warning) when it does not act here. With
 * `boundToServiceEntry`, the same policy compiled for the ServiceEntries its targetRefs name.
 */
function compileAuthorizationPolicy(p: ConfigObject, warn: Warn, boundToServiceEntry = false): CompiledPolicy | undefined {
  const spec = asObject(p.spec);
  const key = `${p.namespace}/${p.name}`;
  const refs = targetRefsOf(spec);
  if (!boundToServiceEntry && refs.length > 0) {
    if (!refs.every(isServiceEntryRef)) warn('bound to a waypoint by targetRef(s): not applied by the node agent');
    return undefined;
  }
  const action = spec.action ?? 'ALLOW';
  if (action !== 'ALLOW' && action !== 'DENY') {
    warn(IGNORED_ACTIONS[String(action)] ?? `unknown action ${JSON.stringify(action)}: ignored`);
    return undefined;
  }

  const vc = valueCompilers(p.namespace, warn);
  const rules = asList(spec.rules).map((r, i) => {
    const rule = compileRule(r, vc, boundToServiceEntry);
    if (rule.l7.length === 0) return rule.match;
    const effect = action === 'ALLOW'
      ? 'an ALLOW rule with L7 attributes never matches at L4, so it allows nothing'
      : 'a DENY rule is enforced at L4 without its L7 attributes, so it denies more than written';
    warn(`rules[${i}] uses L7 attributes (${rule.l7.join(', ')}): ${effect}; ${boundToServiceEntry ? 'the node agent enforces a ServiceEntry\'s policies at L4 (hosts and ports)' : 'bind the policy to a waypoint with targetRefs to enforce them'}`);
    return action === 'ALLOW' ? never : rule.match;
  });
  // A policy bound by targetRefs has no selector (Istio refuses both).
  const selector = boundToServiceEntry ? undefined : selectorOf(spec);
  const decision = action === 'ALLOW'
    ? { allowed: true, reason: `allowed by ALLOW policy ${key}`, policy: key }
    : { allowed: false, reason: `denied by DENY policy ${key}`, policy: key };
  return { key, decision, action, ...(selector ? { selector } : {}), matches: anyOf(rules) };
}

// ---------------------------------------------------------------------------------------------
// Compiling PeerAuthentication.

type ModeOrUnset = MtlsMode | undefined;

interface CompiledPeerAuth {
  key: string;
  selector?: [string, string][];
  mode: ModeOrUnset;
  ports: Map<number, ModeOrUnset>;
}

function modeOf(mtls: unknown): ModeOrUnset {
  const mode = asObject(mtls).mode;
  return mode === 'STRICT' || mode === 'PERMISSIVE' || mode === 'DISABLE' ? mode : undefined;
}

function compilePeerAuthentication(p: ConfigObject, warn: Warn): CompiledPeerAuth {
  const spec = asObject(p.spec);
  const selector = selectorOf(spec);
  const ports = new Map<number, ModeOrUnset>();
  const portLevel = Object.entries(asObject(spec.portLevelMtls));
  if (portLevel.length > 0 && !selector) warn('portLevelMtls needs a selector: ignored');
  else for (const [port, mtls] of portLevel) ports.set(Number(port), modeOf(mtls));
  return { key: `${p.namespace}/${p.name}`, ...(selector ? { selector } : {}), mode: modeOf(spec.mtls), ports };
}

/** Two selectors can select one workload unless they require different values for one label. */
function overlap(a: [string, string][], b: [string, string][]): boolean {
  const am = new Map(a);
  return b.every(([k, v]) => !am.has(k) || am.get(k) === v);
}

// ---------------------------------------------------------------------------------------------

interface Applicable { deny: CompiledPolicy[]; allow: CompiledPolicy[] }

const byKey = (a: ConfigObject, b: ConfigObject) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`);

function isSecurity(p: ConfigObject, kind: string): boolean {
  return p.kind === kind && p.apiVersion.startsWith('security.istio.io/');
}

export class L4Authorizer {
  /** Warnings found while compiling, one string per policy, naming it. */
  readonly warnings: string[] = [];
  private readonly rootNamespace: string;
  /** Authorization policies by namespace, in name order. */
  private readonly authz = new Map<string, CompiledPolicy[]>();
  /** Authorization policies bound to a ServiceEntry (targetRefs), by the entry's namespace/name, in name order. */
  private readonly egressAuthz = new Map<string, CompiledPolicy[]>();
  /** Per workload object (a model version's workloads are not mutated): the policies that apply. */
  private readonly applicable = new WeakMap<Workload, Applicable>();
  private readonly peerAuthWide = new Map<string, CompiledPeerAuth>();
  private readonly peerAuthSelected = new Map<string, CompiledPeerAuth[]>();

  constructor(policies: ConfigObject[], opts: AuthzOptions = {}) {
    this.rootNamespace = opts.rootNamespace ?? DEFAULT_ROOT_NAMESPACE;
    const issues = new Map<string, string[]>();
    const warner = (p: ConfigObject): Warn => (message) => {
      const id = `${p.kind} ${p.namespace}/${p.name}`;
      const list = issues.get(id) ?? [];
      if (!list.includes(message)) list.push(message);
      issues.set(id, list);
    };
    const sorted = [...policies].sort(byKey);
    for (const p of sorted.filter((x) => isSecurity(x, 'AuthorizationPolicy'))) {
      const compiled = compileAuthorizationPolicy(p, warner(p));
      if (compiled) push(this.authz, p.namespace, compiled);
      const entries = serviceEntryRefs(p, warner(p));
      const bound = entries.length > 0 ? compileAuthorizationPolicy(p, warner(p), true) : undefined;
      if (bound) for (const entry of entries) push(this.egressAuthz, entry, bound);
    }
    this.compilePeerAuthentications(sorted.filter((x) => isSecurity(x, 'PeerAuthentication')), warner);
    for (const [id, list] of issues) this.warnings.push(`${id}: ${list.join('; ')}`);
  }

  private compilePeerAuthentications(policies: ConfigObject[], warner: (p: ConfigObject) => Warn): void {
    for (const p of policies) {
      const warn = warner(p);
      const pa = compilePeerAuthentication(p, warn);
      if (!pa.selector) {
        const first = this.peerAuthWide.get(p.namespace);
        const scope = p.namespace === this.rootNamespace ? 'mesh-wide' : `namespace-wide in ${p.namespace}`;
        if (first) warn(`another ${scope} PeerAuthentication, ${first.key}, takes precedence (Istio keeps the oldest; ambit, without creation times, the first by name)`);
        else this.peerAuthWide.set(p.namespace, pa);
        continue;
      }
      const siblings = this.peerAuthSelected.get(p.namespace) ?? [];
      const rival = siblings.find((s) => overlap(s.selector!, pa.selector!));
      if (rival) warn(`its selector may select the same workloads as ${rival.key}, which then takes precedence (Istio keeps the oldest; ambit, without creation times, the first by name)`);
      push(this.peerAuthSelected, p.namespace, pa);
    }
  }

  evaluate(workload: Workload, conn: L4Connection): AuthzDecision {
    const { deny, allow } = this.policiesFor(workload);
    if (deny.length === 0 && allow.length === 0) return { allowed: true, reason: 'no policy applies' };
    const facts = new ConnectionFacts(conn);
    for (const p of deny) if (p.matches(facts)) return { ...p.decision };
    if (allow.length === 0) return { allowed: true, reason: 'no ALLOW policy applies' };
    for (const p of allow) if (p.matches(facts)) return { ...p.decision };
    return { allowed: false, reason: `no ALLOW policy matched (${allow.length} ${allow.length === 1 ? 'applies' : 'apply'})` };
  }

  /**
   * A connection a client makes to a ServiceEntry (`conn.host`: the entry's host it is for),
   * decided by the client's node agent against the policies whose targetRefs name the entry:
   * a matching DENY denies; with ALLOW policies, one must match; with none, allowed.
   */
  evaluateServiceEntry(entry: { namespace: string; name: string }, conn: L4Connection): AuthzDecision {
    const bound = this.egressAuthz.get(`${entry.namespace}/${entry.name}`);
    if (!bound) return { allowed: true, reason: 'no policy applies' };
    const facts = new ConnectionFacts(conn);
    const allow = bound.filter((p) => p.action === 'ALLOW');
    for (const p of bound) if (p.action === 'DENY' && p.matches(facts)) return { ...p.decision };
    if (allow.length === 0) return { allowed: true, reason: 'no ALLOW policy applies' };
    for (const p of allow) if (p.matches(facts)) return { ...p.decision };
    return { allowed: false, reason: `no ALLOW policy matched (${allow.length} ${allow.length === 1 ? 'applies' : 'apply'} to ServiceEntry ${entry.namespace}/${entry.name})` };
  }

  /** The mTLS mode for plaintext arriving at this workload and (target) port. */
  peerAuthenticationMode(workload: Workload, port: number): MtlsMode {
    const own = this.peerAuthSelected.get(workload.namespace)?.find((pa) => selects(pa.selector, workload.labels));
    return own?.ports.get(port)
      ?? own?.mode
      ?? this.peerAuthWide.get(workload.namespace)?.mode
      ?? this.peerAuthWide.get(this.rootNamespace)?.mode
      ?? 'PERMISSIVE';
  }

  /** The ALLOW and DENY policies that apply to a workload: the root namespace's first, each in name order. */
  private policiesFor(workload: Workload): Applicable {
    let found = this.applicable.get(workload);
    if (found) return found;
    found = { deny: [], allow: [] };
    const root = this.authz.get(this.rootNamespace) ?? [];
    const own = workload.namespace === this.rootNamespace ? [] : this.authz.get(workload.namespace) ?? [];
    for (const p of [...root, ...own]) {
      if (selects(p.selector, workload.labels)) (p.action === 'DENY' ? found.deny : found.allow).push(p);
    }
    this.applicable.set(workload, found);
    return found;
  }
}

function push<T>(map: Map<string, T[]>, key: string, value: T): void {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
