/**
 * L7 authorization at the waypoint: which policies bind (Gateway, Service, GatewayClass targets),
 * the DENY/ALLOW/AUDIT decision, every source and operation field and its `not` form, hosts,
 * paths and path templates, `when` conditions, JWT attributes a waypoint without
 * RequestAuthentication never has, rules that cannot be compiled (fail closed in DENY), and
 * Istio manifests as users write them, parsed with `yaml` and checked by ambit's validator.
 */
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import type { ConfigObject } from '../../src/config/model.js';
import type { Path } from '../../src/config/schema.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { L4Authorizer } from '../../src/authz/l4.js';
import { appliesAtWaypoint, L7Authorizer, normalizePath, type L7Decision, type L7Request, type L7Target } from '../../src/waypoint/authz.js';

// ---------------------------------------------------------------------------------------------
// Fixtures

const WEB = 'spiffe://cluster.local/ns/shop/sa/web';
const ORDERS = 'spiffe://cluster.local/ns/shop/sa/orders';
const LEGACY = 'spiffe://cluster.local/ns/legacy/sa/batch';

const ap = (namespace: string, name: string, spec: unknown): ConfigObject =>
  ({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace, name, spec });

const SERVICE_REF = { kind: 'Service', group: '', name: 'payment' };
const GATEWAY_REF = { kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' };
const CLASS_REF = { kind: 'GatewayClass', group: 'gateway.networking.k8s.io', name: 'ambit-waypoint' };

/** A policy in shop bound to the payment service. */
const onPayment = (name: string, spec: Record<string, unknown>) => ap('shop', name, { targetRefs: [SERVICE_REF], ...spec });

/** payment.shop through the shop waypoint. */
const TARGET: L7Target = { service: { name: 'payment', namespace: 'shop' }, waypoint: { name: 'waypoint', namespace: 'shop' } };

/** web (mTLS) from 10.1.0.7: GET payment.shop.svc.cluster.local:8080/api/orders?limit=5; `plaintext` drops the identity. */
function req(over: Partial<L7Request> & { plaintext?: boolean } = {}): L7Request {
  const { plaintext, ...rest } = over;
  const r: L7Request = {
    sourceIdentity: WEB, sourceIp: '10.1.0.7', destinationIp: '10.96.0.20', destinationPort: 8080,
    host: 'payment.shop.svc.cluster.local:8080', method: 'GET', path: '/api/orders?limit=5',
    headers: { 'user-agent': 'curl/8.5.0', 'x-tenant': 'acme', accept: ['application/json', 'text/plain'] },
    ...rest,
  };
  if (plaintext) delete r.sourceIdentity;
  return r;
}

const allowedBy = (key: string): L7Decision => ({ allowed: true, reason: `allowed by ALLOW policy ${key}`, policy: key });
const deniedBy = (key: string): L7Decision => ({ allowed: false, reason: `denied by DENY policy ${key}`, policy: key });
const noAllowMatched = (n: number): L7Decision => ({ allowed: false, reason: `no ALLOW policy matched (${n} ${n === 1 ? 'applies' : 'apply'})` });
const NO_POLICY: L7Decision = { allowed: true, reason: 'no policy applies' };
const NO_ALLOW: L7Decision = { allowed: true, reason: 'no ALLOW policy applies' };

/** One rule in an ALLOW and in a DENY policy bound to payment: a match allows / denies. */
function checkRule(rule: unknown, r: L7Request, match: boolean): void {
  const allow = new L7Authorizer([onPayment('p', { rules: [rule] })]);
  expect(allow.evaluate(r, TARGET)).toEqual(match ? allowedBy('shop/p') : noAllowMatched(1));
  const deny = new L7Authorizer([onPayment('p', { action: 'DENY', rules: [rule] })]);
  expect(deny.evaluate(r, TARGET)).toEqual(match ? deniedBy('shop/p') : NO_ALLOW);
  expect([...allow.warnings, ...deny.warnings]).toEqual([]);
}

interface Case { title: string; rule: unknown; req: L7Request; match: boolean }
const from = (source: Record<string, unknown>) => ({ from: [{ source }] });
const to = (operation: Record<string, unknown>) => ({ to: [{ operation }] });
const when = (key: string, values: string[], not = false) => ({ when: [{ key, [not ? 'notValues' : 'values']: values }] });

// ---------------------------------------------------------------------------------------------

describe('scope', () => {
  const denyAll = (namespace: string, name: string, extra: Record<string, unknown>) => ap(namespace, name, { action: 'DENY', rules: [{}], ...extra });
  const OTHER_SERVICE: L7Target = { service: { name: 'users', namespace: 'shop' }, waypoint: TARGET.waypoint };
  const OTHER_WAYPOINT: L7Target = { service: TARGET.service, waypoint: { name: 'payments-wp', namespace: 'shop' } };
  const OPS: L7Target = { service: { name: 'payment', namespace: 'ops' }, waypoint: { name: 'waypoint', namespace: 'ops' } };
  const NO_SERVICE: L7Target = { waypoint: TARGET.waypoint };
  const ROOT_WAYPOINT: L7Target = { service: { name: 'api', namespace: 'istio-system' }, waypoint: { name: 'waypoint', namespace: 'istio-system' } };
  const ALL = [TARGET, OTHER_SERVICE, OTHER_WAYPOINT, OPS, NO_SERVICE, ROOT_WAYPOINT];
  const label = (t: L7Target) => `${t.waypoint.namespace}/${t.waypoint.name} → ${t.service ? `${t.service.namespace}/${t.service.name}` : '?'}`;

  it.each([
    ['Gateway: every request through that waypoint', denyAll('shop', 'gw', { targetRefs: [GATEWAY_REF] }), [TARGET, OTHER_SERVICE, NO_SERVICE]],
    ['Service: requests for that service, through any waypoint', denyAll('shop', 'svc', { targetRefs: [SERVICE_REF] }), [TARGET, OTHER_WAYPOINT]],
    ['Service with the group omitted', denyAll('shop', 'svc', { targetRefs: [{ kind: 'Service', name: 'payment' }] }), [TARGET, OTHER_WAYPOINT]],
    ['the older singular targetRef', denyAll('shop', 'svc', { targetRef: { kind: 'Service', group: '', name: 'payment' } }), [TARGET, OTHER_WAYPOINT]],
    ['GatewayClass ambit-waypoint in the root namespace: every waypoint', denyAll('istio-system', 'mesh', { targetRefs: [CLASS_REF] }), ALL],
    ['GatewayClass istio-waypoint in the root namespace', denyAll('istio-system', 'mesh', { targetRefs: [{ ...CLASS_REF, name: 'istio-waypoint' }] }), ALL],
    ['GatewayClass outside the root namespace: nothing', denyAll('shop', 'cls', { targetRefs: [CLASS_REF] }), []],
    ['GatewayClass of another class: nothing', denyAll('istio-system', 'cls', { targetRefs: [{ ...CLASS_REF, name: 'istio' }] }), []],
    ['a ref to another namespace: nothing', denyAll('shop', 'x', { targetRefs: [{ ...SERVICE_REF, namespace: 'ops' }] }), []],
    ['a ref naming its own namespace binds', denyAll('shop', 'x', { targetRefs: [{ ...SERVICE_REF, namespace: 'shop' }] }), [TARGET, OTHER_WAYPOINT]],
    ['a Service ref in another namespace than the service: not that service', denyAll('ops', 'svc', { targetRefs: [SERVICE_REF] }), [OPS]],
    ['Gateway without its group: nothing', denyAll('shop', 'gw', { targetRefs: [{ kind: 'Gateway', name: 'waypoint' }] }), []],
    ['ServiceEntry (unsupported): nothing', denyAll('shop', 'se', { targetRefs: [{ kind: 'ServiceEntry', group: 'networking.istio.io', name: 'payment' }] }), []],
    ['a selector policy is the node agent\'s', denyAll('shop', 'sel', { selector: { matchLabels: { app: 'payment' } } }), []],
    ['a namespace-wide policy is the node agent\'s', denyAll('shop', 'ns', {}), []],
    ['a mesh-wide policy is the node agent\'s', denyAll('istio-system', 'mesh', {}), []],
    ['targetRefs: [] is no targetRef', denyAll('shop', 'empty', { targetRefs: [] }), []],
  ] as [string, ConfigObject, L7Target[]][])('%s', (_, p, applies) => {
    const authz = new L7Authorizer([p]);
    const key = `${p.namespace}/${p.name}`;
    for (const t of ALL) expect(authz.evaluate(req(), t), label(t)).toEqual(applies.includes(t) ? deniedBy(key) : NO_POLICY);
  });

  it('warns about refs that bind nothing, naming the policy', () => {
    const authz = new L7Authorizer([
      ap('shop', 'x', { targetRefs: [{ ...SERVICE_REF, namespace: 'ops' }, { kind: 'ServiceEntry', group: 'networking.istio.io', name: 'ext' }] }),
      ap('shop', 'y', { targetRefs: [CLASS_REF] }),
    ]);
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy shop/x: targetRefs[0] (Service "payment") names namespace "ops": a policy binds only in its own namespace, ignored; targetRefs[1] (ServiceEntry "ext"): ServiceEntry targets are not supported by ambit waypoints: ignored',
      'AuthorizationPolicy shop/y: targetRefs[0] (GatewayClass "ambit-waypoint") binds only from the root namespace (istio-system): ignored',
    ]);
  });

  it('binds through any one of several refs, and counts a policy bound twice once', () => {
    const authz = new L7Authorizer([ap('shop', 'both', { targetRefs: [GATEWAY_REF, SERVICE_REF, { ...SERVICE_REF, name: 'users' }], rules: [from({ namespaces: ['ops'] })] })]);
    expect(authz.evaluate(req(), TARGET)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(req(), OTHER_WAYPOINT)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(req(), { service: { name: 'users', namespace: 'shop' }, waypoint: { name: 'other', namespace: 'shop' } })).toEqual(noAllowMatched(1));
  });

  it('takes the root namespace from the options', () => {
    const mesh = denyAll('mesh-root', 'mesh', { targetRefs: [CLASS_REF] });
    expect(new L7Authorizer([mesh], { rootNamespace: 'mesh-root' }).evaluate(req(), TARGET)).toEqual(deniedBy('mesh-root/mesh'));
    expect(new L7Authorizer([mesh]).evaluate(req(), TARGET)).toEqual(NO_POLICY);
    expect(new L7Authorizer([denyAll('istio-system', 'm', { targetRefs: [CLASS_REF] })], { rootNamespace: 'mesh-root' }).evaluate(req(), TARGET)).toEqual(NO_POLICY);
  });

  it('reads only security.istio.io AuthorizationPolicy', () => {
    const foreign = { apiVersion: 'example.com/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'x', spec: { targetRefs: [SERVICE_REF], action: 'DENY', rules: [{}] } };
    const pa = { apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', namespace: 'shop', name: 'x', spec: { mtls: { mode: 'STRICT' } } };
    const authz = new L7Authorizer([foreign, pa]);
    expect(authz.evaluate(req(), TARGET)).toEqual(NO_POLICY);
    expect(authz.warnings).toEqual([]);
  });

  it('splits policies between the node agent and the waypoint: appliesAtWaypoint is the node agent\'s skip test', () => {
    const policies = [
      ap('shop', 'svc', { targetRefs: [SERVICE_REF], action: 'DENY', rules: [{}] }),
      ap('shop', 'gw', { targetRef: GATEWAY_REF, action: 'DENY', rules: [{}] }),
      ap('shop', 'sel', { selector: { matchLabels: { app: 'payment' } }, action: 'DENY', rules: [{}] }),
      ap('shop', 'ns', { action: 'DENY', rules: [{}] }),
      ap('shop', 'empty-refs', { targetRefs: [], action: 'DENY', rules: [{}] }),
    ];
    expect(policies.filter(appliesAtWaypoint).map((p) => p.name)).toEqual(['svc', 'gw']);
    expect(appliesAtWaypoint({ apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', namespace: 'shop', name: 'pa', spec: {} })).toBe(false);
    // The node agent ignores exactly the waypoint's policies, with a warning each.
    const l4 = new L4Authorizer(policies);
    expect(l4.warnings.map((w) => w.split(':')[0])).toEqual(['AuthorizationPolicy shop/gw', 'AuthorizationPolicy shop/svc']);
  });
});

describe('decision', () => {
  const allowWeb = onPayment('allow-web', { rules: [from({ principals: ['cluster.local/ns/shop/sa/web'] })] });

  it('allows when no policy applies', () => {
    expect(new L7Authorizer([]).evaluate(req(), TARGET)).toEqual(NO_POLICY);
    expect(new L7Authorizer([]).evaluate(req({ plaintext: true }), TARGET)).toEqual(NO_POLICY);
  });

  it('turns an ALLOW policy into an allow-list', () => {
    const authz = new L7Authorizer([allowWeb]);
    expect(authz.evaluate(req(), TARGET)).toEqual(allowedBy('shop/allow-web'));
    expect(authz.evaluate(req({ sourceIdentity: ORDERS }), TARGET)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(req({ plaintext: true }), TARGET)).toEqual(noAllowMatched(1));
  });

  it('applies DENY before ALLOW, and allows what no DENY matches when no ALLOW applies', () => {
    const deny = onPayment('deny-delete', { action: 'DENY', rules: [to({ methods: ['DELETE'] })] });
    expect(new L7Authorizer([allowWeb, deny]).evaluate(req({ method: 'DELETE' }), TARGET)).toEqual(deniedBy('shop/deny-delete'));
    expect(new L7Authorizer([allowWeb, deny]).evaluate(req(), TARGET)).toEqual(allowedBy('shop/allow-web'));
    expect(new L7Authorizer([deny]).evaluate(req(), TARGET)).toEqual(NO_ALLOW);
  });

  it('allows when any ALLOW policy matches, and counts the ALLOW policies when none does', () => {
    const authz = new L7Authorizer([
      onPayment('allow-orders', { rules: [from({ principals: ['cluster.local/ns/shop/sa/orders'] })] }),
      allowWeb,
      ap('shop', 'allow-gw-get', { targetRefs: [GATEWAY_REF], rules: [to({ methods: ['GET'] })] }),
    ]);
    expect(authz.evaluate(req({ sourceIdentity: ORDERS }), TARGET)).toEqual(allowedBy('shop/allow-gw-get'));
    expect(authz.evaluate(req({ sourceIdentity: ORDERS, method: 'POST' }), TARGET)).toEqual(allowedBy('shop/allow-orders'));
    expect(authz.evaluate(req({ sourceIdentity: LEGACY, method: 'POST' }), TARGET)).toEqual(noAllowMatched(3));
  });

  it.each([
    ['rules omitted', {}],
    ['rules: []', { rules: [] }],
    ['action ALLOW, no rules', { action: 'ALLOW' }],
  ])('denies everything with an ALLOW policy without rules (%s)', (_, spec) => {
    const authz = new L7Authorizer([onPayment('allow-nothing', spec)]);
    expect(authz.evaluate(req(), TARGET)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(req({ plaintext: true, method: 'OPTIONS' }), TARGET)).toEqual(noAllowMatched(1));
    expect(authz.warnings).toEqual([]);
  });

  it('denies nothing with a DENY policy without rules', () => {
    for (const spec of [{ action: 'DENY' }, { action: 'DENY', rules: [] }]) {
      expect(new L7Authorizer([onPayment('deny', spec)]).evaluate(req(), TARGET)).toEqual(NO_ALLOW);
    }
  });

  it('matches every request with a rule {} and with empty parts', () => {
    for (const rule of [{}, { from: [], to: [], when: [] }, from({}), to({}), from({ principals: [] }), to({ paths: [], notMethods: [] })]) {
      for (const r of [req(), req({ plaintext: true, method: 'PATCH', path: '/', host: '' })]) checkRule(rule, r, true);
    }
  });

  it('ignores CUSTOM policies, with a warning', () => {
    const authz = new L7Authorizer([onPayment('ext', { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{}] })]);
    expect(authz.evaluate(req(), TARGET)).toEqual(NO_POLICY);
    expect(authz.warnings).toEqual(['AuthorizationPolicy shop/ext: action CUSTOM (external authorization) is not supported: ignored']);
  });

  it('names the deciding policy: root namespace first, then by namespace/name', () => {
    const authz = new L7Authorizer([
      ap('shop', 'a-shop', { targetRefs: [GATEWAY_REF], rules: [{}] }),
      ap('istio-system', 'z-mesh', { targetRefs: [CLASS_REF], rules: [{}] }),
      onPayment('deny-b', { action: 'DENY', rules: [{}] }),
      onPayment('deny-a', { action: 'DENY', rules: [{}] }),
    ]);
    expect(authz.evaluate(req(), TARGET)).toEqual(deniedBy('shop/deny-a'));
    expect(new L7Authorizer([ap('shop', 'a-shop', { targetRefs: [GATEWAY_REF], rules: [{}] }), ap('istio-system', 'z-mesh', { targetRefs: [CLASS_REF], rules: [{}] })])
      .evaluate(req(), TARGET)).toEqual(allowedBy('istio-system/z-mesh'));
  });

  it('returns a fresh decision object each time', () => {
    const authz = new L7Authorizer([allowWeb]);
    const first = authz.evaluate(req(), TARGET);
    (first as { reason: string }).reason = 'changed';
    expect(authz.evaluate(req(), TARGET)).toEqual(allowedBy('shop/allow-web'));
  });
});

describe('AUDIT', () => {
  const auditAdmin = onPayment('audit-admin', { action: 'AUDIT', rules: [to({ paths: ['/admin/*'] })] });

  it('reports the matching AUDIT policy without changing the decision', () => {
    expect(new L7Authorizer([auditAdmin]).evaluate(req({ path: '/admin/users' }), TARGET)).toEqual({ ...NO_ALLOW, audit: 'shop/audit-admin' });
    expect(new L7Authorizer([auditAdmin]).evaluate(req(), TARGET)).toEqual(NO_ALLOW);
  });

  it('reports it on allowed and on denied requests', () => {
    const policies = [auditAdmin, onPayment('allow-web', { rules: [from({ principals: ['*/sa/web'] })] }), onPayment('deny-post', { action: 'DENY', rules: [to({ methods: ['POST'] })] })];
    const authz = new L7Authorizer(policies);
    expect(authz.evaluate(req({ path: '/admin/x' }), TARGET)).toEqual({ ...allowedBy('shop/allow-web'), audit: 'shop/audit-admin' });
    expect(authz.evaluate(req({ path: '/admin/x', sourceIdentity: ORDERS }), TARGET)).toEqual({ ...noAllowMatched(1), audit: 'shop/audit-admin' });
    expect(authz.evaluate(req({ path: '/admin/x', method: 'POST' }), TARGET)).toEqual({ ...deniedBy('shop/deny-post'), audit: 'shop/audit-admin' });
    expect(authz.evaluate(req({ method: 'POST' }), TARGET)).toEqual(deniedBy('shop/deny-post'));
  });

  it('names the first matching AUDIT policy, and an AUDIT policy without rules audits nothing', () => {
    const authz = new L7Authorizer([onPayment('b-audit', { action: 'AUDIT', rules: [{}] }), onPayment('a-audit', { action: 'AUDIT' }), auditAdmin]);
    expect(authz.evaluate(req({ path: '/admin/x' }), TARGET).audit).toBe('shop/audit-admin');
    expect(authz.evaluate(req(), TARGET).audit).toBe('shop/b-audit');
  });
});

describe('sources', () => {
  const cases: Case[] = [
    { title: 'principals exact', rule: from({ principals: ['cluster.local/ns/shop/sa/web'] }), req: req(), match: true },
    { title: 'principals exact, another peer', rule: from({ principals: ['cluster.local/ns/shop/sa/web'] }), req: req({ sourceIdentity: ORDERS }), match: false },
    { title: 'principals, plaintext', rule: from({ principals: ['cluster.local/ns/shop/sa/web'] }), req: req({ plaintext: true }), match: false },
    { title: 'principals "*", plaintext', rule: from({ principals: ['*'] }), req: req({ plaintext: true }), match: false },
    { title: 'principals prefix', rule: from({ principals: ['cluster.local/ns/shop/*'] }), req: req({ sourceIdentity: ORDERS }), match: true },
    { title: 'principals suffix, other account', rule: from({ principals: ['*/sa/web'] }), req: req({ sourceIdentity: ORDERS }), match: false },
    { title: 'principals compare without spiffe://', rule: from({ principals: ['spiffe://cluster.local/ns/shop/sa/web'] }), req: req(), match: false },
    { title: 'notPrincipals, listed', rule: from({ notPrincipals: ['cluster.local/ns/shop/sa/web'] }), req: req(), match: false },
    { title: 'notPrincipals, plaintext', rule: from({ notPrincipals: ['*'] }), req: req({ plaintext: true }), match: true },
    { title: 'namespaces', rule: from({ namespaces: ['shop'] }), req: req(), match: true },
    { title: 'namespaces, other', rule: from({ namespaces: ['shop'] }), req: req({ sourceIdentity: LEGACY }), match: false },
    { title: 'namespaces prefix', rule: from({ namespaces: ['leg*'] }), req: req({ sourceIdentity: LEGACY }), match: true },
    { title: 'namespaces "*", plaintext', rule: from({ namespaces: ['*'] }), req: req({ plaintext: true }), match: false },
    { title: 'namespaces, not a SPIFFE workload ID', rule: from({ namespaces: ['*'] }), req: req({ sourceIdentity: 'spiffe://cluster.local/node/n1' }), match: false },
    { title: 'notNamespaces, listed', rule: from({ notNamespaces: ['shop'] }), req: req(), match: false },
    { title: 'notNamespaces, plaintext', rule: from({ notNamespaces: ['shop'] }), req: req({ plaintext: true }), match: true },
    { title: 'serviceAccounts ns/sa (Istio 1.23+)', rule: from({ serviceAccounts: ['shop/web'] }), req: req(), match: true },
    { title: 'serviceAccounts sa in the policy namespace', rule: from({ serviceAccounts: ['web'] }), req: req(), match: true },
    { title: 'serviceAccounts, same name in another namespace', rule: from({ serviceAccounts: ['legacy/web'] }), req: req(), match: false },
    { title: 'serviceAccounts, plaintext', rule: from({ serviceAccounts: ['shop/web'] }), req: req({ plaintext: true }), match: false },
    { title: 'notServiceAccounts, listed', rule: from({ notServiceAccounts: ['shop/web'] }), req: req(), match: false },
    { title: 'notServiceAccounts, plaintext', rule: from({ notServiceAccounts: ['shop/web'] }), req: req({ plaintext: true }), match: true },
    { title: 'ipBlocks CIDR', rule: from({ ipBlocks: ['10.1.0.0/16'] }), req: req(), match: true },
    { title: 'ipBlocks CIDR, outside', rule: from({ ipBlocks: ['10.1.0.0/16'] }), req: req({ sourceIp: '10.2.0.7' }), match: false },
    { title: 'ipBlocks IPv6, IPv4-mapped source', rule: from({ ipBlocks: ['10.0.0.0/8', 'fd00::/8'] }), req: req({ sourceIp: '::ffff:10.1.0.7' }), match: true },
    { title: 'ipBlocks, plaintext has an address', rule: from({ ipBlocks: ['10.1.0.7'] }), req: req({ plaintext: true }), match: true },
    { title: 'ipBlocks is the peer, not the remote client', rule: from({ ipBlocks: ['203.0.113.0/24'] }), req: req({ remoteIp: '203.0.113.9' }), match: false },
    { title: 'notIpBlocks, inside', rule: from({ notIpBlocks: ['10.1.0.0/16'] }), req: req(), match: false },
    { title: 'remoteIpBlocks, the remote client', rule: from({ remoteIpBlocks: ['203.0.113.0/24'] }), req: req({ remoteIp: '203.0.113.9' }), match: true },
    { title: 'remoteIpBlocks default to the peer', rule: from({ remoteIpBlocks: ['10.1.0.7/32'] }), req: req(), match: true },
    { title: 'remoteIpBlocks, remote client outside', rule: from({ remoteIpBlocks: ['10.1.0.7/32'] }), req: req({ remoteIp: '203.0.113.9' }), match: false },
    { title: 'notRemoteIpBlocks, remote inside', rule: from({ notRemoteIpBlocks: ['203.0.113.0/24'] }), req: req({ remoteIp: '203.0.113.9' }), match: false },
    { title: 'every field of a source', rule: from({ namespaces: ['shop'], ipBlocks: ['10.2.0.0/16'] }), req: req(), match: false },
    { title: 'a field and its not form', rule: from({ principals: ['cluster.local/ns/shop/*'], notPrincipals: ['*/sa/web'] }), req: req(), match: false },
    { title: 'any one source', rule: { from: [{ source: { namespaces: ['legacy'] } }, { source: { ipBlocks: ['10.1.0.7'] } }] }, req: req(), match: true },
  ];
  it.each(cases)('$title: $match', ({ rule, req: r, match }) => checkRule(rule, r, match));
});

describe('JWT attributes (no RequestAuthentication in ambit)', () => {
  const cases: Case[] = [
    { title: 'requestPrincipals "*" never matches', rule: from({ requestPrincipals: ['*'] }), req: req(), match: false },
    { title: 'requestPrincipals exact never matches', rule: from({ requestPrincipals: ['https://accounts.google.com/alice'] }), req: req(), match: false },
    { title: 'notRequestPrincipals "*" matches', rule: from({ notRequestPrincipals: ['*'] }), req: req(), match: true },
    { title: 'notRequestPrincipals, plaintext', rule: from({ notRequestPrincipals: ['issuer/*'] }), req: req({ plaintext: true }), match: true },
    { title: 'request.auth.claims values never match', rule: when('request.auth.claims[iss]', ['https://accounts.google.com']), req: req(), match: false },
    { title: 'request.auth.claims notValues match', rule: when('request.auth.claims[groups]', ['admins'], true), req: req(), match: true },
    { title: 'request.auth.principal values never match', rule: when('request.auth.principal', ['*']), req: req(), match: false },
    { title: 'request.auth.audiences notValues match', rule: when('request.auth.audiences', ['shop'], true), req: req(), match: true },
    { title: 'request.auth.presenter values never match', rule: when('request.auth.presenter', ['web']), req: req(), match: false },
    { title: 'experimental.* metadata is never present', rule: when('experimental.envoy.filters.network.mysql_proxy[db.table]', ['[update]']), req: req(), match: false },
    { title: 'a JWT principal, if ever supplied, is matched', rule: from({ requestPrincipals: ['https://issuer.example/*'] }), req: req({ requestPrincipal: 'https://issuer.example/alice' }), match: true },
  ];
  it.each(cases)('$title: $match', ({ rule, req: r, match }) => checkRule(rule, r, match));
});

describe('operations', () => {
  const cases: Case[] = [
    // hosts: case-insensitive; a pattern without a port ignores the request's port
    { title: 'hosts exact, request with a port', rule: to({ hosts: ['payment.shop.svc.cluster.local'] }), req: req(), match: true },
    { title: 'hosts exact, request without a port', rule: to({ hosts: ['payment.shop.svc.cluster.local'] }), req: req({ host: 'payment.shop.svc.cluster.local' }), match: true },
    { title: 'hosts, case-insensitive', rule: to({ hosts: ['Payment.Shop.svc.cluster.local'] }), req: req({ host: 'PAYMENT.shop.SVC.cluster.local:8080' }), match: true },
    { title: 'hosts with a port, same port', rule: to({ hosts: ['payment.shop.svc.cluster.local:8080'] }), req: req(), match: true },
    { title: 'hosts with a port, another port', rule: to({ hosts: ['payment.shop.svc.cluster.local:9090'] }), req: req(), match: false },
    { title: 'hosts with a port, request without one', rule: to({ hosts: ['payment.shop.svc.cluster.local:8080'] }), req: req({ host: 'payment.shop.svc.cluster.local' }), match: false },
    { title: 'hosts short name does not match the FQDN', rule: to({ hosts: ['payment'] }), req: req(), match: false },
    { title: 'hosts suffix', rule: to({ hosts: ['*.svc.cluster.local'] }), req: req(), match: true },
    { title: 'hosts suffix, other domain', rule: to({ hosts: ['*.example.com'] }), req: req(), match: false },
    { title: 'hosts prefix', rule: to({ hosts: ['payment.*'] }), req: req(), match: true },
    { title: 'hosts prefix with a port wildcard', rule: to({ hosts: ['payment.shop.svc.cluster.local:*'] }), req: req(), match: true },
    { title: 'hosts "*", any host', rule: to({ hosts: ['*'] }), req: req(), match: true },
    { title: 'hosts "*", no host', rule: to({ hosts: ['*'] }), req: req({ host: '' }), match: false },
    { title: 'hosts IPv6 literal with a port', rule: to({ hosts: ['[fd00::20]'] }), req: req({ host: '[FD00::20]:8080' }), match: true },
    { title: 'notHosts, listed (port ignored)', rule: to({ notHosts: ['payment.shop.svc.cluster.local'] }), req: req(), match: false },
    { title: 'notHosts, not listed', rule: to({ notHosts: ['*.example.com'] }), req: req(), match: true },
    // ports: the service port
    { title: 'ports', rule: to({ ports: ['8080'] }), req: req(), match: true },
    { title: 'ports, another', rule: to({ ports: ['9090'] }), req: req(), match: false },
    { title: 'notPorts, listed', rule: to({ notPorts: ['8080'] }), req: req(), match: false },
    { title: 'notPorts, not listed', rule: to({ notPorts: ['9090'] }), req: req(), match: true },
    // methods: case-sensitive
    { title: 'methods', rule: to({ methods: ['GET', 'HEAD'] }), req: req(), match: true },
    { title: 'methods, another', rule: to({ methods: ['POST'] }), req: req(), match: false },
    { title: 'methods are case-sensitive', rule: to({ methods: ['get'] }), req: req(), match: false },
    { title: 'notMethods, listed', rule: to({ notMethods: ['GET'] }), req: req(), match: false },
    { title: 'notMethods, not listed', rule: to({ notMethods: ['DELETE'] }), req: req(), match: true },
    // paths: query and fragment ignored
    { title: 'paths exact, query ignored', rule: to({ paths: ['/api/orders'] }), req: req(), match: true },
    { title: 'paths exact, fragment ignored', rule: to({ paths: ['/api/orders'] }), req: req({ path: '/api/orders#top' }), match: true },
    { title: 'paths exact, longer path', rule: to({ paths: ['/api/orders'] }), req: req({ path: '/api/orders/7' }), match: false },
    { title: 'paths exact, case-sensitive', rule: to({ paths: ['/API/orders'] }), req: req(), match: false },
    { title: 'paths exact cannot match the query', rule: to({ paths: ['/api/orders?limit=5'] }), req: req(), match: false },
    { title: 'paths prefix', rule: to({ paths: ['/api/*'] }), req: req(), match: true },
    { title: 'paths prefix, other', rule: to({ paths: ['/admin/*'] }), req: req(), match: false },
    { title: 'paths suffix', rule: to({ paths: ['*/orders'] }), req: req(), match: true },
    { title: 'paths suffix sees no query', rule: to({ paths: ['*=5'] }), req: req(), match: false },
    { title: 'paths "*"', rule: to({ paths: ['*'] }), req: req({ path: '/' }), match: true },
    { title: 'notPaths, listed', rule: to({ notPaths: ['/api/orders'] }), req: req(), match: false },
    { title: 'notPaths prefix, not listed', rule: to({ notPaths: ['/admin*'] }), req: req(), match: true },
    // paths: normalization
    { title: 'paths after dot segments are removed', rule: to({ paths: ['/admin/*'] }), req: req({ path: '/public/../admin/users' }), match: true },
    { title: 'paths after ./ is removed', rule: to({ paths: ['/admin/users'] }), req: req({ path: '/admin/./users' }), match: true },
    { title: 'paths after unreserved escapes are decoded', rule: to({ paths: ['/admin/*'] }), req: req({ path: '/%61dmin/users' }), match: true },
    { title: 'paths keep an encoded slash', rule: to({ paths: ['/admin/users'] }), req: req({ path: '/admin%2fusers' }), match: false },
    // paths: templates
    { title: 'template {*}: one segment', rule: to({ paths: ['/api/{*}'] }), req: req(), match: true },
    { title: 'template {*}: not two segments', rule: to({ paths: ['/api/{*}'] }), req: req({ path: '/api/orders/7' }), match: false },
    { title: 'template {*}: not an empty segment', rule: to({ paths: ['/api/{*}'] }), req: req({ path: '/api/' }), match: false },
    { title: 'template {*} in the middle', rule: to({ paths: ['/api/{*}/items'] }), req: req({ path: '/api/orders/items?x=1' }), match: true },
    { title: 'template {*} in the middle, wrong tail', rule: to({ paths: ['/api/{*}/items'] }), req: req({ path: '/api/orders/lines' }), match: false },
    { title: 'template {**}: any remaining segments', rule: to({ paths: ['/api/{**}'] }), req: req({ path: '/api/orders/7/items' }), match: true },
    { title: 'template {**}: zero characters', rule: to({ paths: ['/api/{**}'] }), req: req({ path: '/api/' }), match: true },
    { title: 'template {**}: needs the slash', rule: to({ paths: ['/api/{**}'] }), req: req({ path: '/api' }), match: false },
    { title: 'template {**} then a literal', rule: to({ paths: ['/static/{**}/logo.png'] }), req: req({ path: '/static/img/v2/logo.png' }), match: true },
    { title: 'template literal segments are exact', rule: to({ paths: ['/{*}/orders'] }), req: req({ path: '/api/orders.json' }), match: false },
    { title: 'notPaths template', rule: to({ notPaths: ['/api/{**}'] }), req: req(), match: false },
    // operations combine
    { title: 'every field of an operation', rule: to({ methods: ['GET'], paths: ['/admin/*'] }), req: req(), match: false },
    { title: 'any one operation', rule: { to: [{ operation: { methods: ['POST'] } }, { operation: { paths: ['/api/*'] } }] }, req: req(), match: true },
    { title: 'from and to both', rule: { ...from({ namespaces: ['shop'] }), ...to({ methods: ['POST'] }) }, req: req(), match: false },
  ];
  it.each(cases)('$title: $match', ({ rule, req: r, match }) => checkRule(rule, r, match));
});

describe('conditions', () => {
  const cases: Case[] = [
    // request.headers: exact, prefix, suffix, presence, repeated, absent
    { title: 'header exact', rule: when('request.headers[x-tenant]', ['acme']), req: req(), match: true },
    { title: 'header exact, other value', rule: when('request.headers[x-tenant]', ['globex']), req: req(), match: false },
    { title: 'header value is case-sensitive', rule: when('request.headers[x-tenant]', ['ACME']), req: req(), match: false },
    { title: 'header name is case-insensitive', rule: when('request.headers[X-Tenant]', ['acme']), req: req(), match: true },
    { title: 'header prefix', rule: when('request.headers[user-agent]', ['curl/*']), req: req(), match: true },
    { title: 'header suffix', rule: when('request.headers[user-agent]', ['*/8.5.0']), req: req(), match: true },
    { title: 'header presence', rule: when('request.headers[x-tenant]', ['*']), req: req(), match: true },
    { title: 'header presence, empty value', rule: when('request.headers[x-debug]', ['*']), req: req({ headers: { 'x-debug': '' } }), match: true },
    { title: 'header presence, absent', rule: when('request.headers[x-debug]', ['*']), req: req(), match: false },
    { title: 'header repeated: any value matches', rule: when('request.headers[accept]', ['text/*']), req: req(), match: true },
    { title: 'header repeated: no value matches', rule: when('request.headers[accept]', ['text/html']), req: req(), match: false },
    { title: 'header absent: values fail', rule: when('request.headers[x-debug]', ['1']), req: req(), match: false },
    { title: 'header absent: notValues pass', rule: when('request.headers[x-debug]', ['1'], true), req: req(), match: true },
    { title: 'header notValues, listed', rule: when('request.headers[x-tenant]', ['acme'], true), req: req(), match: false },
    { title: 'header notValues, repeated with one listed', rule: when('request.headers[accept]', ['text/plain'], true), req: req(), match: false },
    { title: 'header host is the authority', rule: when('request.headers[host]', ['payment.*']), req: req(), match: true },
    { title: 'header :authority', rule: when('request.headers[:authority]', ['*:8080']), req: req(), match: true },
    { title: 'header :method', rule: when('request.headers[:method]', ['GET']), req: req(), match: true },
    { title: 'header :path includes the query', rule: when('request.headers[:path]', ['*limit=5']), req: req(), match: true },
    // request.regex.headers: full match
    { title: 'regex header full match', rule: when('request.regex.headers[x-tenant]', ['ac.e']), req: req(), match: true },
    { title: 'regex header is anchored', rule: when('request.regex.headers[x-tenant]', ['cm']), req: req(), match: false },
    { title: 'regex header with (?i)', rule: when('request.regex.headers[x-tenant]', ['(?i)ACME']), req: req(), match: true },
    { title: 'regex header, alternation stays anchored', rule: when('request.regex.headers[x-tenant]', ['globex|ac']), req: req(), match: false },
    { title: 'regex header, any repeated value', rule: when('request.regex.headers[accept]', ['text/.+']), req: req(), match: true },
    { title: 'regex header absent', rule: when('request.regex.headers[x-debug]', ['.*']), req: req(), match: false },
    { title: 'regex header absent, notValues', rule: when('request.regex.headers[x-debug]', ['.*'], true), req: req(), match: true },
    // addresses, identity, port
    { title: 'source.ip', rule: when('source.ip', ['10.1.0.0/24']), req: req(), match: true },
    { title: 'source.ip notValues', rule: when('source.ip', ['10.1.0.0/24'], true), req: req(), match: false },
    { title: 'remote.ip defaults to the peer', rule: when('remote.ip', ['10.1.0.7']), req: req(), match: true },
    { title: 'remote.ip is the remote client', rule: when('remote.ip', ['203.0.113.0/24']), req: req({ remoteIp: '203.0.113.9' }), match: true },
    { title: 'remote.ip, unparseable remote address', rule: when('remote.ip', ['0.0.0.0/0']), req: req({ remoteIp: 'unknown' }), match: false },
    { title: 'destination.ip', rule: when('destination.ip', ['10.96.0.0/12']), req: req(), match: true },
    { title: 'destination.ip, another', rule: when('destination.ip', ['10.97.0.1']), req: req(), match: false },
    { title: 'destination.port', rule: when('destination.port', ['8080']), req: req(), match: true },
    { title: 'destination.port notValues', rule: when('destination.port', ['8080'], true), req: req(), match: false },
    { title: 'source.namespace', rule: when('source.namespace', ['shop']), req: req(), match: true },
    { title: 'source.namespace, plaintext', rule: when('source.namespace', ['*']), req: req({ plaintext: true }), match: false },
    { title: 'source.namespace notValues, plaintext', rule: when('source.namespace', ['shop'], true), req: req({ plaintext: true }), match: true },
    { title: 'source.principal suffix', rule: when('source.principal', ['*/sa/web']), req: req(), match: true },
    { title: 'source.serviceAccount', rule: when('source.serviceAccount', ['shop/web']), req: req(), match: true },
    { title: 'connection.sni values never match', rule: when('connection.sni', ['*']), req: req(), match: false },
    { title: 'connection.sni notValues match', rule: when('connection.sni', ['payment.shop'], true), req: req(), match: true },
    { title: 'every condition must match', rule: { when: [{ key: 'source.namespace', values: ['shop'] }, { key: 'request.headers[x-tenant]', values: ['globex'] }] }, req: req(), match: false },
    { title: 'from, to and when together', rule: { ...from({ namespaces: ['shop'] }), ...to({ methods: ['GET'], paths: ['/api/*'] }), ...when('request.headers[x-tenant]', ['acme']) }, req: req(), match: true },
  ];
  it.each(cases)('$title: $match', ({ rule, req: r, match }) => checkRule(rule, r, match));
});

describe('rules that cannot be compiled', () => {
  const bad: [string, unknown, string][] = [
    ['a bad CIDR', from({ ipBlocks: ['10.0.0.0/33'] }), 'from[0].source.ipBlocks: "10.0.0.0/33" is not an IP address or CIDR'],
    ['a bad CIDR in a not form', from({ notRemoteIpBlocks: ['ten'] }), 'from[0].source.notRemoteIpBlocks: "ten" is not an IP address or CIDR'],
    ['a bad condition CIDR', when('source.ip', ['10.1.0.300']), 'when[0](source.ip).values: "10.1.0.300" is not an IP address or CIDR'],
    ['a bad port', to({ ports: ['http'] }), 'to[0].operation.ports: "http" is not a port number'],
    ['a bad regex', when('request.regex.headers[x-tenant]', ['(acme']), 'when[0](request.regex.headers[x-tenant]).values: regex "(acme" does not compile'],
    ['a lookahead (not RE2)', when('request.regex.headers[x-tenant]', ['(?=a)acme']), 'lookaround and backreferences are not RE2 syntax'],
    ['{**} before another operator', to({ paths: ['/api/{**}/{*}'] }), 'to[0].operation.paths: "/api/{**}/{*}": {**} must be the last operator'],
    ['a brace outside a template', to({ paths: ['/api/{id}'] }), '"/api/{id}": "{" and "}" are only allowed in {*} and {**}'],
    ['a template inside a segment', to({ paths: ['/api/v{*}'] }), 'segment "v{*}" is neither {*}, {**} nor a literal'],
    ['an unknown condition key', when('request.path', ['/admin']), 'when[0].key: unknown condition key "request.path"'],
    ['an unknown source field', from({ principal: ['x'] }), 'from[0].source: unknown field "principal"'],
    ['a field that is not a list', to({ methods: 'GET' }), 'to[0].operation.methods: must be a list'],
    ['a service account with a wildcard', from({ serviceAccounts: ['shop/*'] }), 'from[0].source.serviceAccounts: "shop/*" is not'],
  ];

  it.each(bad)('%s: a DENY rule fails closed (matches every request), logged once', (_, rule, message) => {
    const log: string[] = [];
    const authz = new L7Authorizer([onPayment('deny', { action: 'DENY', rules: [rule] })], { log: (m) => log.push(m) });
    for (const r of [req(), req({ plaintext: true, method: 'HEAD', path: '/x', host: '' })]) expect(authz.evaluate(r, TARGET)).toEqual(deniedBy('shop/deny'));
    expect(log).toHaveLength(1);
    expect(log[0]).toContain('AuthorizationPolicy shop/deny: rules[0] cannot be enforced (');
    expect(log[0]).toContain(message);
    expect(log[0]).toMatch(/: it matches every request \(fail closed\)$/);
    expect(authz.warnings).toEqual(log);
  });

  it.each(bad)('%s: an ALLOW rule matches nothing', (_, rule, message) => {
    const authz = new L7Authorizer([onPayment('allow', { rules: [rule] })]);
    expect(authz.evaluate(req(), TARGET)).toEqual(noAllowMatched(1));
    expect(authz.warnings[0]).toContain(message);
    expect(authz.warnings[0]).toMatch(/: it matches nothing$/);
  });

  it('fails closed for the bad rule only: other policies and rules still decide', () => {
    const authz = new L7Authorizer([
      onPayment('allow-get', { rules: [to({ methods: ['GET'] })] }),
      onPayment('allow-mixed', { rules: [from({ ipBlocks: ['nope'] }), to({ methods: ['POST'] })] }),
    ]);
    expect(authz.evaluate(req(), TARGET)).toEqual(allowedBy('shop/allow-get'));
    expect(authz.evaluate(req({ method: 'POST' }), TARGET)).toEqual(allowedBy('shop/allow-mixed'));
    expect(authz.evaluate(req({ method: 'PUT' }), TARGET)).toEqual(noAllowMatched(2));
    // A DENY policy with one bad rule denies everything it is bound to.
    const deny = new L7Authorizer([onPayment('deny-legacy', { action: 'DENY', rules: [from({ namespaces: ['legacy'] }), when('remote.ip', ['203.0.113.0/40'])] })]);
    expect(deny.evaluate(req(), TARGET)).toEqual(deniedBy('shop/deny-legacy'));
    expect(deny.evaluate(req(), { waypoint: TARGET.waypoint, service: { name: 'users', namespace: 'shop' } })).toEqual(NO_POLICY);
  });

  it('does not throw on odd requests', () => {
    const authz = new L7Authorizer([onPayment('p', {
      rules: [{ ...from({ ipBlocks: ['10.0.0.0/8'], remoteIpBlocks: ['10.0.0.0/8'] }), ...to({ hosts: ['x'], paths: ['/{*}'] }), ...when('request.headers[x]', ['y']) }],
    })]);
    const odd = { ...req(), sourceIp: 'garbage', destinationIp: '', host: '[', path: '%zz/../..', headers: { x: ['', 'y'] } };
    expect(() => authz.evaluate(odd, TARGET)).not.toThrow();
    expect(authz.evaluate(odd, TARGET)).toEqual(noAllowMatched(1));
  });
});

describe('normalizePath', () => {
  it.each([
    ['/api/orders?limit=5#x', '/api/orders'],
    ['/a/b/../c', '/a/c'],
    ['/a/b/..', '/a/'],
    ['/a/./b/.', '/a/b/'],
    ['/../../etc/passwd', '/etc/passwd'],
    ['/%7Euser/%2e%2e/admin', '/admin'],
    ['/a%2fb/%3a', '/a%2Fb/%3A'],
    ['//double//slash', '//double//slash'],
    ['*', '*'],
  ])('%s → %s', (raw, normalized) => expect(normalizePath(raw)).toBe(normalized));
});

// ---------------------------------------------------------------------------------------------
// Istio manifests as users write them.

/** YAML documents → AuthorizationPolicies, each accepted by ambit's validator (warnings allowed). */
function policiesOf(text: string): ConfigObject[] {
  return parseAllDocuments(text).map((doc) => {
    const obj = doc.toJS() as { apiVersion: string; kind: string; metadata: { name: string; namespace: string }; spec: unknown };
    const errors: string[] = [];
    validateMeshObject(obj, { error: (p: Path, m: string) => errors.push(`${p.join('.')}: ${m}`), warn: () => undefined });
    expect(errors, obj.metadata.name).toEqual([]);
    return { apiVersion: obj.apiVersion, kind: obj.kind, namespace: obj.metadata.namespace, name: obj.metadata.name, spec: obj.spec };
  });
}

describe('Istio manifests', () => {
  it('applies the ambient productpage policy bound to the waypoint (istio.io L7 example)', () => {
    const policies = policiesOf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-viewer
  namespace: default
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/curl
    to:
    - operation:
        methods: ["GET"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: default
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/{**}"]
        notMethods: ["OPTIONS"]
`);
    const authz = new L7Authorizer(policies);
    const productpage: L7Target = { service: { name: 'productpage', namespace: 'default' }, waypoint: { name: 'waypoint', namespace: 'default' } };
    const reviews: L7Target = { service: { name: 'reviews', namespace: 'default' }, waypoint: { name: 'waypoint', namespace: 'default' } };
    const curl = 'spiffe://cluster.local/ns/default/sa/curl';
    const page = (over: Partial<L7Request>) => req({ sourceIdentity: curl, host: 'productpage:9080', path: '/productpage', destinationPort: 9080, ...over });
    expect(authz.evaluate(page({}), productpage)).toEqual(allowedBy('default/productpage-viewer'));
    expect(authz.evaluate(page({ method: 'DELETE' }), productpage)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(page({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/reviews' }), productpage)).toEqual(noAllowMatched(1));
    expect(authz.evaluate(page({ path: '/admin/users?all=1' }), productpage)).toEqual(deniedBy('default/deny-admin'));
    expect(authz.evaluate(page({ path: '/admin' }), reviews)).toEqual(deniedBy('default/deny-admin'));
    expect(authz.evaluate(page({ path: '/admin', method: 'OPTIONS' }), reviews)).toEqual(NO_ALLOW);
    expect(authz.evaluate(page({ path: '/administrator' }), reviews)).toEqual(NO_ALLOW);
    expect(authz.warnings).toEqual([]);
  });

  it('applies the httpbin sample bound to a service: its JWT condition never matches without RequestAuthentication', () => {
    const text = `
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
 name: httpbin
 namespace: foo
spec:
 targetRefs:
 - kind: Service
   group: ""
   name: httpbin
 rules:
 - from:
   - source:
       principals: ["cluster.local/ns/default/sa/sleep"]
   - source:
       namespaces: ["dev"]
   to:
   - operation:
       methods: ["GET"]
   when:
   - key: request.auth.claims[iss]
     values: ["https://accounts.google.com"]
`;
    const httpbin: L7Target = { service: { name: 'httpbin', namespace: 'foo' }, waypoint: { name: 'waypoint', namespace: 'foo' } };
    const sleep = req({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/sleep', host: 'httpbin.foo:8000', path: '/headers' });
    expect(new L7Authorizer(policiesOf(text)).evaluate(sleep, httpbin)).toEqual(noAllowMatched(1));
    // Without its JWT condition, the rule allows GETs from sleep and from dev.
    const withoutJwt = new L7Authorizer(policiesOf(text.replace(/\n {3}when:[\s\S]*$/, '\n')));
    expect(withoutJwt.evaluate(sleep, httpbin)).toEqual(allowedBy('foo/httpbin'));
    expect(withoutJwt.evaluate({ ...sleep, sourceIdentity: 'spiffe://cluster.local/ns/dev/sa/anything' }, httpbin)).toEqual(allowedBy('foo/httpbin'));
    expect(withoutJwt.evaluate({ ...sleep, method: 'POST' }, httpbin)).toEqual(noAllowMatched(1));
  });

  it('applies a mesh-wide waypoint policy from the root namespace with header and ip conditions', () => {
    const authz = new L7Authorizer(policiesOf(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: block-debug
  namespace: istio-system
spec:
  targetRefs:
  - kind: GatewayClass
    group: gateway.networking.k8s.io
    name: istio-waypoint
  action: DENY
  rules:
  - when:
    - key: request.headers[x-debug]
      values: ["*"]
    - key: remote.ip
      notValues: ["10.0.0.0/8"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-writes
  namespace: istio-system
spec:
  targetRefs:
  - kind: GatewayClass
    group: gateway.networking.k8s.io
    name: istio-waypoint
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["POST", "PUT", "PATCH", "DELETE"]
`));
    const anywhere: L7Target = { service: { name: 'ledger', namespace: 'bank' }, waypoint: { name: 'bank-wp', namespace: 'bank' } };
    expect(authz.evaluate(req({ headers: { 'x-debug': '1' }, remoteIp: '198.51.100.4' }), anywhere)).toEqual(deniedBy('istio-system/block-debug'));
    expect(authz.evaluate(req({ headers: { 'x-debug': '1' } }), anywhere)).toEqual(NO_ALLOW);
    expect(authz.evaluate(req({ method: 'PUT', remoteIp: '198.51.100.4' }), anywhere)).toEqual({ ...NO_ALLOW, audit: 'istio-system/audit-writes' });
  });
});
