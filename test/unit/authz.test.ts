/**
 * L4 authorization at the node agent: every AuthorizationPolicy field and its `not` form, the
 * value forms, scope, the ALLOW/DENY decision, L7 attributes at L4, ignored policies, and
 * PeerAuthentication precedence; then the shared Istio samples, through the real manifest
 * parser, validation and model.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildModel, type ConfigObject, type Workload } from '../../src/config/model.js';
import { validateMeshObject } from '../../src/config/validate.js';
import { parseManifests } from '../../src/kube/manifests.js';
import { L4Authorizer, type AuthzDecision, type L4Connection } from '../../src/authz/l4.js';
import { parseCidr, parseIp } from '../../src/util/ip.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

// ---------------------------------------------------------------------------------------------
// Fixtures

const USERS = 'spiffe://cluster.local/ns/shop/sa/users';
const ORDERS = 'spiffe://cluster.local/ns/shop/sa/orders';
const LEGACY = 'spiffe://cluster.local/ns/legacy/sa/batch';

function policy(kind: 'AuthorizationPolicy' | 'PeerAuthentication', namespace: string, name: string, spec: unknown): ConfigObject {
  return { apiVersion: 'security.istio.io/v1', kind, namespace, name, spec };
}
const ap = (namespace: string, name: string, spec: unknown) => policy('AuthorizationPolicy', namespace, name, spec);
const pa = (namespace: string, name: string, spec: unknown) => policy('PeerAuthentication', namespace, name, spec);

function workload(over: Partial<Workload> = {}): Workload {
  const namespace = over.namespace ?? 'shop';
  return {
    uid: `${namespace}-payment-1`, name: 'payment-1', workload: 'payment', namespace, serviceAccount: 'payment',
    identity: `spiffe://cluster.local/ns/${namespace}/sa/payment`, ips: ['10.1.0.5'], node: 'node-1',
    labels: { app: 'payment', version: 'v1' }, enrolled: true, ports: {}, ...over,
  };
}
const PAYMENT = workload();

/** users (mTLS) from 10.1.0.7 to payment 10.1.0.5:8080; `plaintext` drops the identity. */
function conn(over: Partial<L4Connection> & { plaintext?: boolean } = {}): L4Connection {
  const { plaintext, ...rest } = over;
  const c: L4Connection = { sourceIdentity: USERS, sourceIp: '10.1.0.7', destinationIp: '10.1.0.5', destinationPort: 8080, ...rest };
  if (plaintext) delete c.sourceIdentity;
  return c;
}

const allowedBy = (key: string): AuthzDecision => ({ allowed: true, reason: `allowed by ALLOW policy ${key}`, policy: key });
const deniedBy = (key: string): AuthzDecision => ({ allowed: false, reason: `denied by DENY policy ${key}`, policy: key });
const noAllowMatched = (n: number): AuthzDecision => ({ allowed: false, reason: `no ALLOW policy matched (${n} ${n === 1 ? 'applies' : 'apply'})` });
const NO_POLICY: AuthzDecision = { allowed: true, reason: 'no policy applies' };
const NO_ALLOW: AuthzDecision = { allowed: true, reason: 'no ALLOW policy applies' };

/** One rule in an ALLOW and in a DENY policy selecting payment: a match allows / denies. */
function checkRule(rule: unknown, c: L4Connection, match: boolean): void {
  const allow = new L4Authorizer([ap('shop', 'p', { selector: { matchLabels: { app: 'payment' } }, rules: [rule] })]);
  expect(allow.evaluate(PAYMENT, c)).toEqual(match ? allowedBy('shop/p') : noAllowMatched(1));
  const deny = new L4Authorizer([ap('shop', 'p', { selector: { matchLabels: { app: 'payment' } }, action: 'DENY', rules: [rule] })]);
  expect(deny.evaluate(PAYMENT, c)).toEqual(match ? deniedBy('shop/p') : NO_ALLOW);
  expect([...allow.warnings, ...deny.warnings]).toEqual([]);
}

interface Case { title: string; rule: unknown; conn: L4Connection; match: boolean }
const from = (source: Record<string, unknown>) => ({ from: [{ source }] });
const to = (operation: Record<string, unknown>) => ({ to: [{ operation }] });
const when = (key: string, values: string[], not = false) => ({ when: [{ key, [not ? 'notValues' : 'values']: values }] });

// ---------------------------------------------------------------------------------------------

describe('addresses', () => {
  it.each([
    ['10.1.2.3', { v4: true, words: [0x0a010203] }],
    ['::ffff:10.1.2.3', { v4: true, words: [0x0a010203] }],
    ['::FFFF:a01:203', { v4: true, words: [0x0a010203] }],
    ['fd00::7', { v4: false, words: [0xfd000000, 0, 0, 7] }],
    ['2001:db8:0:0:0:0:0:1', { v4: false, words: [0x20010db8, 0, 0, 1] }],
    ['::', { v4: false, words: [0, 0, 0, 0] }],
    ['fe80::1%eth0', { v4: false, words: [0xfe800000, 0, 0, 1] }],
  ])('parses %s', (text, ip) => expect(parseIp(text)).toEqual(ip));

  it.each(['10.1.2', '10.1.2.256', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '1.2.3.4::', 'g::1', ''])('refuses %j', (text) => {
    expect(parseIp(text)).toBeUndefined();
  });

  it.each([
    ['10.0.0.0/8', { v4: true, words: [0x0a000000], masks: [0xff000000] }],
    ['10.9.9.9/8', { v4: true, words: [0x0a000000], masks: [0xff000000] }],
    ['10.1.2.3', { v4: true, words: [0x0a010203], masks: [0xffffffff] }],
    ['0.0.0.0/0', { v4: true, words: [0], masks: [0] }],
    ['::ffff:10.0.0.0/104', { v4: true, words: [0x0a000000], masks: [0xff000000] }],
    ['fd00::/8', { v4: false, words: [0xfd000000, 0, 0, 0], masks: [0xff000000, 0, 0, 0] }],
    ['2001:db8::/33', { v4: false, words: [0x20010db8, 0, 0, 0], masks: [0xffffffff, 0x80000000, 0, 0] }],
  ])('parses the CIDR %s', (text, cidr) => expect(parseCidr(text)).toEqual(cidr));

  it.each(['10.0.0.0/33', 'fd00::/129', '10.0.0.0/8/8', '10.0.0.0/x', 'nope/8'])('refuses the CIDR %j', (text) => {
    expect(parseCidr(text)).toBeUndefined();
  });
});

describe('decision', () => {
  const allowUsers = ap('shop', 'allow-users', { rules: [from({ principals: ['cluster.local/ns/shop/sa/users'] })] });

  it('allows when no policy applies', () => {
    expect(new L4Authorizer([]).evaluate(PAYMENT, conn())).toEqual(NO_POLICY);
    expect(new L4Authorizer([]).evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(NO_POLICY);
  });

  it('turns an ALLOW policy into an allow-list: what it does not allow is denied', () => {
    const authz = new L4Authorizer([allowUsers]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/allow-users'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: ORDERS }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(noAllowMatched(1));
  });

  it('takes ALLOW as the default action', () => {
    const authz = new L4Authorizer([ap('shop', 'a', { action: 'ALLOW', rules: [{}] }), ap('shop', 'b', { rules: [{}] })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/a'));
    expect(new L4Authorizer([ap('shop', 'b', { rules: [{}] })]).evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/b'));
  });

  it('applies DENY before ALLOW', () => {
    const deny = ap('shop', 'deny-users', { action: 'DENY', rules: [from({ principals: ['cluster.local/ns/shop/sa/users'] })] });
    const authz = new L4Authorizer([allowUsers, deny]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('shop/deny-users'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: ORDERS }))).toEqual(noAllowMatched(1));
  });

  it('allows what no DENY matches when no ALLOW policy applies', () => {
    const authz = new L4Authorizer([ap('shop', 'deny-legacy', { action: 'DENY', rules: [from({ namespaces: ['legacy'] })] })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(NO_ALLOW);
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: LEGACY }))).toEqual(deniedBy('shop/deny-legacy'));
  });

  it('allows when any ALLOW policy matches, and counts the ALLOW policies when none does', () => {
    const authz = new L4Authorizer([
      ap('shop', 'allow-orders', { rules: [from({ principals: ['cluster.local/ns/shop/sa/orders'] })] }),
      allowUsers,
      ap('shop', 'deny-nothing', { action: 'DENY' }),
    ]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/allow-users'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: ORDERS }))).toEqual(allowedBy('shop/allow-orders'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: LEGACY }))).toEqual(noAllowMatched(2));
  });

  it.each([
    ['spec: {}', {}],
    ['rules: []', { rules: [] }],
    ['action ALLOW, no rules', { action: 'ALLOW', selector: { matchLabels: { app: 'payment' } } }],
  ])('denies everything with an ALLOW policy without rules (%s)', (_, spec) => {
    const authz = new L4Authorizer([ap('shop', 'allow-nothing', spec)]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(noAllowMatched(1));
    expect(authz.evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(noAllowMatched(1));
    expect(authz.warnings).toEqual([]);
  });

  it('denies nothing with a DENY policy without rules', () => {
    for (const spec of [{ action: 'DENY' }, { action: 'DENY', rules: [] }]) {
      const authz = new L4Authorizer([ap('shop', 'deny', spec)]);
      expect(authz.evaluate(PAYMENT, conn())).toEqual(NO_ALLOW);
      expect(authz.evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(NO_ALLOW);
    }
  });

  it('matches every connection with a rule {} (ALLOW allows all, DENY denies all)', () => {
    for (const c of [conn(), conn({ plaintext: true }), conn({ sourceIp: 'fd00::9', destinationPort: 1 })]) checkRule({}, c, true);
  });

  it('matches every connection with empty parts: from/to/when [] and an empty source or operation', () => {
    for (const rule of [{ from: [], to: [], when: [] }, from({}), to({}), from({ principals: [] })]) checkRule(rule, conn({ plaintext: true }), true);
  });

  it('names the deciding policy: root namespace first, then by name', () => {
    const authz = new L4Authorizer([
      ap('shop', 'a-shop', { rules: [{}] }),
      ap('istio-system', 'z-mesh', { rules: [{}] }),
      ap('shop', 'deny-b', { action: 'DENY', rules: [{}] }),
      ap('shop', 'deny-a', { action: 'DENY', rules: [{}] }),
    ]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('shop/deny-a'));
    expect(new L4Authorizer([ap('shop', 'a-shop', { rules: [{}] }), ap('istio-system', 'z-mesh', { rules: [{}] })]).evaluate(PAYMENT, conn()))
      .toEqual(allowedBy('istio-system/z-mesh'));
  });
});

describe('scope', () => {
  const denyAll = (namespace: string, name: string, selector?: unknown) => ap(namespace, name, { action: 'DENY', rules: [{}], ...(selector ? { selector } : {}) });
  const OPS_PAYMENT = workload({ namespace: 'ops' });
  const SHOP_USERS = workload({ labels: { app: 'users' } });
  const ROOT_GATEWAY = workload({ namespace: 'istio-system', labels: { app: 'gateway' } });

  it.each([
    ['root namespace, no selector: every workload', denyAll('istio-system', 'mesh'), [PAYMENT, OPS_PAYMENT, SHOP_USERS, ROOT_GATEWAY], []],
    ['root namespace with a selector: matching workloads of any namespace', denyAll('istio-system', 'payments', { matchLabels: { app: 'payment' } }), [PAYMENT, OPS_PAYMENT], [SHOP_USERS, ROOT_GATEWAY]],
    ["workload's namespace, no selector", denyAll('shop', 'ns'), [PAYMENT, SHOP_USERS], [OPS_PAYMENT, ROOT_GATEWAY]],
    ["workload's namespace with a matching selector", denyAll('shop', 'sel', { matchLabels: { app: 'payment', version: 'v1' } }), [PAYMENT], [SHOP_USERS, OPS_PAYMENT]],
    ['a selector needs every label', denyAll('shop', 'sel', { matchLabels: { app: 'payment', version: 'v2' } }), [], [PAYMENT, SHOP_USERS]],
    ['another namespace: nothing outside it', denyAll('ops', 'ops-only'), [OPS_PAYMENT], [PAYMENT, SHOP_USERS, ROOT_GATEWAY]],
    ['selector: {} is no selector', denyAll('shop', 'empty', {}), [PAYMENT, SHOP_USERS], [OPS_PAYMENT]],
    ['matchLabels: {} is no selector', denyAll('shop', 'empty', { matchLabels: {} }), [PAYMENT, SHOP_USERS], [OPS_PAYMENT]],
    ['root namespace, selector: {}: mesh-wide', denyAll('istio-system', 'empty', { matchLabels: {} }), [PAYMENT, OPS_PAYMENT, ROOT_GATEWAY], []],
  ])('%s', (_, p, applies, not) => {
    const authz = new L4Authorizer([p]);
    const key = `${p.namespace}/${p.name}`;
    for (const w of applies) expect(authz.evaluate(w, conn()), `${w.namespace}/${w.labels.app}`).toEqual(deniedBy(key));
    for (const w of not) expect(authz.evaluate(w, conn()), `${w.namespace}/${w.labels.app}`).toEqual(NO_POLICY);
  });

  it('counts a root-namespace policy once for a workload of the root namespace', () => {
    const authz = new L4Authorizer([ap('istio-system', 'allow-nothing', {})]);
    expect(authz.evaluate(ROOT_GATEWAY, conn())).toEqual(noAllowMatched(1));
  });

  it('takes the root namespace from the options', () => {
    const policies = [denyAll('mesh-root', 'mesh'), denyAll('istio-system', 'not-root')];
    const authz = new L4Authorizer(policies, { rootNamespace: 'mesh-root' });
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('mesh-root/mesh'));
    expect(new L4Authorizer([denyAll('istio-system', 'not-root')], { rootNamespace: 'mesh-root' }).evaluate(PAYMENT, conn())).toEqual(NO_POLICY);
    expect(new L4Authorizer([denyAll('mesh-root', 'mesh')]).evaluate(PAYMENT, conn())).toEqual(NO_POLICY);
  });

  it('sees label changes in a new workload object (applicable policies are kept per object)', () => {
    const authz = new L4Authorizer([denyAll('shop', 'sel', { matchLabels: { app: 'payment' } })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('shop/sel'));
    expect(authz.evaluate({ ...PAYMENT, labels: { app: 'other' } }, conn())).toEqual(NO_POLICY);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('shop/sel'));
  });

  it('reads only security.istio.io AuthorizationPolicy and PeerAuthentication', () => {
    const other = { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', namespace: 'shop', name: 'vs', spec: { rules: [{}] } };
    const foreign = { apiVersion: 'example.com/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'x', spec: {} };
    const authz = new L4Authorizer([other, foreign]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(NO_POLICY);
    expect(authz.warnings).toEqual([]);
  });
});

describe('sources', () => {
  const cases: Case[] = [
    // principals: exact, any, prefix, suffix; plaintext has none
    { title: 'principals exact', rule: from({ principals: ['cluster.local/ns/shop/sa/users'] }), conn: conn(), match: true },
    { title: 'principals exact, another peer', rule: from({ principals: ['cluster.local/ns/shop/sa/users'] }), conn: conn({ sourceIdentity: ORDERS }), match: false },
    { title: 'principals exact, plaintext', rule: from({ principals: ['cluster.local/ns/shop/sa/users'] }), conn: conn({ plaintext: true }), match: false },
    { title: 'principals, any one value', rule: from({ principals: ['cluster.local/ns/x/sa/y', 'cluster.local/ns/shop/sa/users'] }), conn: conn(), match: true },
    { title: 'principals "*", mTLS', rule: from({ principals: ['*'] }), conn: conn({ sourceIdentity: LEGACY }), match: true },
    { title: 'principals "*", plaintext', rule: from({ principals: ['*'] }), conn: conn({ plaintext: true }), match: false },
    { title: 'principals prefix', rule: from({ principals: ['cluster.local/ns/shop/*'] }), conn: conn({ sourceIdentity: ORDERS }), match: true },
    { title: 'principals prefix, other namespace', rule: from({ principals: ['cluster.local/ns/shop/*'] }), conn: conn({ sourceIdentity: LEGACY }), match: false },
    { title: 'principals suffix', rule: from({ principals: ['*/sa/users'] }), conn: conn(), match: true },
    { title: 'principals suffix, other account', rule: from({ principals: ['*/sa/users'] }), conn: conn({ sourceIdentity: ORDERS }), match: false },
    { title: 'principals compare without spiffe://', rule: from({ principals: ['spiffe://cluster.local/ns/shop/sa/users'] }), conn: conn(), match: false },
    { title: 'principals, trust domain counts', rule: from({ principals: ['cluster.local/ns/shop/sa/users'] }), conn: conn({ sourceIdentity: 'spiffe://example.org/ns/shop/sa/users' }), match: false },
    { title: 'principals, identity that is not a SPIFFE ID', rule: from({ principals: ['*'] }), conn: conn({ sourceIdentity: 'users' }), match: false },
    { title: 'principals "*", empty SPIFFE ID', rule: from({ principals: ['*'] }), conn: conn({ sourceIdentity: 'spiffe://' }), match: false },
    { title: 'principals "*", SPIFFE ID of another shape', rule: from({ principals: ['*'] }), conn: conn({ sourceIdentity: 'spiffe://cluster.local/node/n1' }), match: true },
    { title: 'principals exact among prefixes and suffixes', rule: from({ principals: ['x*', '*y', 'cluster.local/ns/shop/sa/users'] }), conn: conn(), match: true },
    // notPrincipals: plaintext is in no list
    { title: 'notPrincipals, listed peer', rule: from({ notPrincipals: ['cluster.local/ns/shop/sa/users'] }), conn: conn(), match: false },
    { title: 'notPrincipals, other peer', rule: from({ notPrincipals: ['cluster.local/ns/shop/sa/users'] }), conn: conn({ sourceIdentity: ORDERS }), match: true },
    { title: 'notPrincipals, plaintext', rule: from({ notPrincipals: ['cluster.local/ns/shop/sa/users'] }), conn: conn({ plaintext: true }), match: true },
    { title: 'notPrincipals "*", plaintext', rule: from({ notPrincipals: ['*'] }), conn: conn({ plaintext: true }), match: true },
    { title: 'notPrincipals "*", mTLS', rule: from({ notPrincipals: ['*'] }), conn: conn(), match: false },
    { title: 'notPrincipals prefix', rule: from({ notPrincipals: ['cluster.local/ns/legacy/*'] }), conn: conn({ sourceIdentity: LEGACY }), match: false },
    // namespaces
    { title: 'namespaces exact', rule: from({ namespaces: ['shop'] }), conn: conn(), match: true },
    { title: 'namespaces exact, other namespace', rule: from({ namespaces: ['shop'] }), conn: conn({ sourceIdentity: LEGACY }), match: false },
    { title: 'namespaces, plaintext', rule: from({ namespaces: ['shop'] }), conn: conn({ plaintext: true }), match: false },
    { title: 'namespaces prefix', rule: from({ namespaces: ['sh*'] }), conn: conn(), match: true },
    { title: 'namespaces suffix', rule: from({ namespaces: ['*op'] }), conn: conn(), match: true },
    { title: 'namespaces suffix, no match', rule: from({ namespaces: ['*op'] }), conn: conn({ sourceIdentity: LEGACY }), match: false },
    { title: 'namespaces "*", plaintext', rule: from({ namespaces: ['*'] }), conn: conn({ plaintext: true }), match: false },
    { title: 'namespaces "*", mTLS', rule: from({ namespaces: ['*'] }), conn: conn({ sourceIdentity: LEGACY }), match: true },
    { title: 'namespaces, the service account is not the namespace', rule: from({ namespaces: ['users'] }), conn: conn(), match: false },
    ...['spiffe://cluster.local/nsx/shop/sa/users', 'spiffe://cluster.local/abcd/sa/users', 'spiffe://cluster.local/ns/shop/sa/', 'spiffe://cluster.local/ns/shop/sa/users/x', 'spiffe://cluster.local/ns//sa/users', 'spiffe:///ns/shop/sa/users', 'spiffe://cluster.local/ns/shop/sx/users']
      .map((id) => ({ title: `namespaces "*", no namespace in ${id}`, rule: from({ namespaces: ['*'] }), conn: conn({ sourceIdentity: id }), match: false })),
    ...['spiffe://cluster.local/ns/shop/sa/', 'spiffe://cluster.local/ns/shop/sa/users/x']
      .map((id) => ({ title: `notServiceAccounts, no service account in ${id}`, rule: from({ notServiceAccounts: ['shop/users', 'shop/'] }), conn: conn({ sourceIdentity: id }), match: true })),
    // notNamespaces
    { title: 'notNamespaces, listed', rule: from({ notNamespaces: ['shop'] }), conn: conn(), match: false },
    { title: 'notNamespaces, not listed', rule: from({ notNamespaces: ['legacy'] }), conn: conn(), match: true },
    { title: 'notNamespaces, plaintext', rule: from({ notNamespaces: ['shop'] }), conn: conn({ plaintext: true }), match: true },
    { title: 'notNamespaces prefix', rule: from({ notNamespaces: ['leg*'] }), conn: conn({ sourceIdentity: LEGACY }), match: false },
    // serviceAccounts ("ns/sa", or "sa" in the policy's namespace)
    { title: 'serviceAccounts ns/sa', rule: from({ serviceAccounts: ['shop/users'] }), conn: conn(), match: true },
    { title: "serviceAccounts sa in the policy's namespace", rule: from({ serviceAccounts: ['users'] }), conn: conn(), match: true },
    { title: 'serviceAccounts, other namespace', rule: from({ serviceAccounts: ['legacy/users'] }), conn: conn(), match: false },
    { title: 'serviceAccounts, plaintext', rule: from({ serviceAccounts: ['shop/users'] }), conn: conn({ plaintext: true }), match: false },
    { title: 'notServiceAccounts, listed', rule: from({ notServiceAccounts: ['shop/users'] }), conn: conn(), match: false },
    { title: 'notServiceAccounts, plaintext', rule: from({ notServiceAccounts: ['shop/users'] }), conn: conn({ plaintext: true }), match: true },
    // ipBlocks: addresses, CIDRs, IPv4, IPv6, IPv4-mapped
    { title: 'ipBlocks CIDR', rule: from({ ipBlocks: ['10.1.0.0/16'] }), conn: conn(), match: true },
    { title: 'ipBlocks CIDR, outside', rule: from({ ipBlocks: ['10.1.0.0/16'] }), conn: conn({ sourceIp: '10.2.0.7' }), match: false },
    { title: 'ipBlocks single address', rule: from({ ipBlocks: ['10.1.0.7'] }), conn: conn(), match: true },
    { title: 'ipBlocks single address, another', rule: from({ ipBlocks: ['10.1.0.8'] }), conn: conn(), match: false },
    { title: 'ipBlocks, plaintext has an address too', rule: from({ ipBlocks: ['10.1.0.7/32'] }), conn: conn({ plaintext: true }), match: true },
    { title: 'ipBlocks IPv4 CIDR, IPv4-mapped source', rule: from({ ipBlocks: ['10.0.0.0/8'] }), conn: conn({ sourceIp: '::ffff:10.1.0.7' }), match: true },
    { title: 'ipBlocks mapped CIDR, IPv4 source', rule: from({ ipBlocks: ['::ffff:10.0.0.0/104'] }), conn: conn(), match: true },
    { title: 'ipBlocks IPv6 CIDR', rule: from({ ipBlocks: ['fd00::/8'] }), conn: conn({ sourceIp: 'fd00::7' }), match: true },
    { title: 'ipBlocks IPv6 CIDR, outside', rule: from({ ipBlocks: ['fd00::/8'] }), conn: conn({ sourceIp: 'fe80::7' }), match: false },
    { title: 'ipBlocks IPv6 CIDR, IPv4 source', rule: from({ ipBlocks: ['::/0'] }), conn: conn(), match: false },
    { title: 'ipBlocks IPv4 CIDR, IPv6 source', rule: from({ ipBlocks: ['0.0.0.0/0'] }), conn: conn({ sourceIp: 'fd00::7' }), match: false },
    { title: 'ipBlocks IPv6 address, long form', rule: from({ ipBlocks: ['2001:db8::1'] }), conn: conn({ sourceIp: '2001:db8:0:0:0:0:0:1' }), match: true },
    { title: 'ipBlocks IPv6 /33', rule: from({ ipBlocks: ['2001:db8::/33'] }), conn: conn({ sourceIp: '2001:db8:7fff::1' }), match: true },
    { title: 'ipBlocks IPv6 /33, outside', rule: from({ ipBlocks: ['2001:db8::/33'] }), conn: conn({ sourceIp: '2001:db8:8000::1' }), match: false },
    { title: 'ipBlocks, any one block', rule: from({ ipBlocks: ['192.168.0.0/16', '10.1.0.0/24'] }), conn: conn(), match: true },
    { title: 'notIpBlocks, inside', rule: from({ notIpBlocks: ['10.1.0.0/16'] }), conn: conn(), match: false },
    { title: 'notIpBlocks, outside', rule: from({ notIpBlocks: ['10.1.0.0/16'] }), conn: conn({ sourceIp: '10.2.0.7' }), match: true },
    { title: 'notIpBlocks, mapped source inside', rule: from({ notIpBlocks: ['10.0.0.0/8'] }), conn: conn({ sourceIp: '::ffff:10.1.0.7' }), match: false },
    // remoteIpBlocks: at L4 the remote address is the peer's
    { title: 'remoteIpBlocks, inside', rule: from({ remoteIpBlocks: ['10.1.0.0/16'] }), conn: conn(), match: true },
    { title: 'remoteIpBlocks, outside', rule: from({ remoteIpBlocks: ['10.1.0.0/16'] }), conn: conn({ sourceIp: '172.16.0.1' }), match: false },
    { title: 'notRemoteIpBlocks, inside', rule: from({ notRemoteIpBlocks: ['10.1.0.0/16'] }), conn: conn(), match: false },
    { title: 'notRemoteIpBlocks, outside', rule: from({ notRemoteIpBlocks: ['10.1.0.0/16'] }), conn: conn({ sourceIp: '172.16.0.1' }), match: true },
    // every field of one source must match; any one source may
    { title: 'all fields of a source', rule: from({ principals: ['*'], ipBlocks: ['10.2.0.0/16'] }), conn: conn(), match: false },
    { title: 'a field and a not field', rule: from({ namespaces: ['shop'], notPrincipals: ['cluster.local/ns/shop/sa/orders'] }), conn: conn(), match: true },
    { title: 'a field and its not form', rule: from({ principals: ['cluster.local/ns/shop/*'], notPrincipals: ['*/sa/users'] }), conn: conn(), match: false },
    { title: 'any one source', rule: { from: [{ source: { namespaces: ['legacy'] } }, { source: { ipBlocks: ['10.1.0.7'] } }] }, conn: conn(), match: true },
    { title: 'no source matches', rule: { from: [{ source: { namespaces: ['legacy'] } }, { source: { ipBlocks: ['10.9.0.0/16'] } }] }, conn: conn(), match: false },
  ];
  it.each(cases)('$title: $match', ({ rule, conn: c, match }) => checkRule(rule, c, match));
});

describe('operations', () => {
  const cases: Case[] = [
    { title: 'ports', rule: to({ ports: ['8080'] }), conn: conn(), match: true },
    { title: 'ports, another port', rule: to({ ports: ['8080'] }), conn: conn({ destinationPort: 9090 }), match: false },
    { title: 'ports, any one', rule: to({ ports: ['9090', '8080'] }), conn: conn(), match: true },
    { title: 'notPorts, listed', rule: to({ notPorts: ['8080'] }), conn: conn(), match: false },
    { title: 'notPorts, not listed', rule: to({ notPorts: ['8080'] }), conn: conn({ destinationPort: 9090 }), match: true },
    { title: 'ports and notPorts', rule: to({ ports: ['8080', '9090'], notPorts: ['9090'] }), conn: conn({ destinationPort: 9090 }), match: false },
    { title: 'any one operation', rule: { to: [{ operation: { ports: ['9090'] } }, { operation: { ports: ['8080'] } }] }, conn: conn(), match: true },
    { title: 'from and to both', rule: { ...from({ principals: ['cluster.local/ns/shop/sa/users'] }), ...to({ ports: ['9090'] }) }, conn: conn(), match: false },
    { title: 'from and to both, matching', rule: { ...from({ principals: ['cluster.local/ns/shop/sa/users'] }), ...to({ ports: ['8080'] }) }, conn: conn(), match: true },
  ];
  it.each(cases)('$title: $match', ({ rule, conn: c, match }) => checkRule(rule, c, match));
});

describe('conditions', () => {
  const cases: Case[] = [
    { title: 'source.ip CIDR', rule: when('source.ip', ['10.1.0.0/16']), conn: conn(), match: true },
    { title: 'source.ip CIDR, outside', rule: when('source.ip', ['10.1.0.0/16']), conn: conn({ sourceIp: '10.2.0.1' }), match: false },
    { title: 'source.ip, mapped source', rule: when('source.ip', ['10.1.0.7']), conn: conn({ sourceIp: '::ffff:10.1.0.7' }), match: true },
    { title: 'source.ip IPv6', rule: when('source.ip', ['fd00::/64']), conn: conn({ sourceIp: 'fd00::7' }), match: true },
    { title: 'source.ip notValues', rule: when('source.ip', ['10.1.0.0/16'], true), conn: conn(), match: false },
    { title: 'source.ip notValues, outside', rule: when('source.ip', ['10.1.0.0/16'], true), conn: conn({ sourceIp: '10.2.0.1' }), match: true },
    { title: 'remote.ip', rule: when('remote.ip', ['10.1.0.7']), conn: conn(), match: true },
    { title: 'remote.ip, another', rule: when('remote.ip', ['10.1.0.8']), conn: conn(), match: false },
    { title: 'remote.ip notValues', rule: when('remote.ip', ['10.1.0.7'], true), conn: conn(), match: false },
    { title: 'destination.ip', rule: when('destination.ip', ['10.1.0.5']), conn: conn(), match: true },
    { title: 'destination.ip, another', rule: when('destination.ip', ['10.1.0.6']), conn: conn(), match: false },
    { title: 'destination.ip CIDR, IPv6', rule: when('destination.ip', ['fd00::/16']), conn: conn({ destinationIp: 'fd00::5' }), match: true },
    { title: 'destination.ip notValues', rule: when('destination.ip', ['10.1.0.6'], true), conn: conn(), match: true },
    { title: 'source.namespace', rule: when('source.namespace', ['shop']), conn: conn(), match: true },
    { title: 'source.namespace prefix', rule: when('source.namespace', ['sh*']), conn: conn(), match: true },
    { title: 'source.namespace, other', rule: when('source.namespace', ['shop']), conn: conn({ sourceIdentity: LEGACY }), match: false },
    { title: 'source.namespace, plaintext', rule: when('source.namespace', ['*']), conn: conn({ plaintext: true }), match: false },
    { title: 'source.namespace notValues, plaintext', rule: when('source.namespace', ['shop'], true), conn: conn({ plaintext: true }), match: true },
    { title: 'source.namespace notValues, listed', rule: when('source.namespace', ['shop'], true), conn: conn(), match: false },
    { title: 'source.principal', rule: when('source.principal', ['cluster.local/ns/shop/sa/users']), conn: conn(), match: true },
    { title: 'source.principal suffix, other', rule: when('source.principal', ['*/sa/users']), conn: conn({ sourceIdentity: ORDERS }), match: false },
    { title: 'source.principal "*", plaintext', rule: when('source.principal', ['*']), conn: conn({ plaintext: true }), match: false },
    { title: 'source.principal notValues "*", plaintext', rule: when('source.principal', ['*'], true), conn: conn({ plaintext: true }), match: true },
    { title: 'destination.port', rule: when('destination.port', ['8080']), conn: conn(), match: true },
    { title: 'destination.port, another', rule: when('destination.port', ['9090']), conn: conn(), match: false },
    { title: 'destination.port notValues', rule: when('destination.port', ['8080'], true), conn: conn(), match: false },
    { title: 'every condition must match', rule: { when: [{ key: 'source.namespace', values: ['shop'] }, { key: 'destination.port', values: ['9090'] }] }, conn: conn(), match: false },
    { title: 'every condition matches', rule: { when: [{ key: 'source.namespace', values: ['shop'] }, { key: 'destination.port', values: ['8080'] }] }, conn: conn(), match: true },
    { title: 'from, to and when together', rule: { ...from({ namespaces: ['shop'] }), ...to({ ports: ['8080'] }), ...when('source.ip', ['10.9.0.0/16']) }, conn: conn(), match: false },
  ];
  it.each(cases)('$title: $match', ({ rule, conn: c, match }) => checkRule(rule, c, match));

  it('never matches an invalid value, and says so', () => {
    const authz = new L4Authorizer([ap('shop', 'bad', { rules: [{ when: [{ key: 'source.ip', values: ['ten'] }, { key: 'destination.port', values: ['http'] }] }] })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(noAllowMatched(1));
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy shop/bad: source.ip: "ten" is not an IP address or CIDR: it matches nothing; destination.port: "http" is not a port number: it matches nothing',
    ]);
    const twice = new L4Authorizer([ap('shop', 'bad', { rules: [when('source.ip', ['ten']), when('source.ip', ['ten'])] })]);
    expect(twice.warnings).toEqual(['AuthorizationPolicy shop/bad: source.ip: "ten" is not an IP address or CIDR: it matches nothing']);
    const notForm = new L4Authorizer([ap('shop', 'bad', { rules: [{ when: [{ key: 'source.ip', notValues: ['ten'] }] }] })]);
    expect(notForm.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/bad'));
  });
});

describe('L7 attributes at L4', () => {
  const L7_PARTS: [string, Record<string, unknown>][] = [
    ['methods', to({ methods: ['GET'] })],
    ['notMethods', to({ notMethods: ['DELETE'] })],
    ['paths', to({ paths: ['/api/*'] })],
    ['notPaths', to({ notPaths: ['/admin'] })],
    ['hosts', to({ hosts: ['payment.shop'] })],
    ['notHosts', to({ notHosts: ['evil.example'] })],
    ['requestPrincipals', from({ requestPrincipals: ['*'] })],
    ['notRequestPrincipals', from({ notRequestPrincipals: ['*'] })],
    ['request.headers[x-user]', when('request.headers[x-user]', ['alice'])],
    ['request.auth.claims[iss]', when('request.auth.claims[iss]', ['https://accounts.google.com'])],
    ['experimental.envoy.filters.network.mysql_proxy[db.table]', when('experimental.envoy.filters.network.mysql_proxy[db.table]', ['[update]'])],
    ['connection.sni', when('connection.sni', ['payment.shop'])],
  ];

  it.each(L7_PARTS)('an ALLOW rule using %s never matches, with a warning', (attr, rule) => {
    const authz = new L4Authorizer([ap('shop', 'l7', { rules: [rule] })]);
    for (const c of [conn(), conn({ plaintext: true })]) expect(authz.evaluate(PAYMENT, c)).toEqual(noAllowMatched(1));
    expect(authz.warnings).toEqual([
      `AuthorizationPolicy shop/l7: rules[0] uses L7 attributes (${attr}): an ALLOW rule with L7 attributes never matches at L4, so it allows nothing; bind the policy to a waypoint with targetRefs to enforce them`,
    ]);
  });

  it.each(L7_PARTS)('a DENY rule using only %s is enforced without it: it denies everything, with a warning', (attr, rule) => {
    const authz = new L4Authorizer([ap('shop', 'l7', { action: 'DENY', rules: [rule] })]);
    for (const c of [conn(), conn({ plaintext: true })]) expect(authz.evaluate(PAYMENT, c)).toEqual(deniedBy('shop/l7'));
    expect(authz.warnings).toEqual([
      `AuthorizationPolicy shop/l7: rules[0] uses L7 attributes (${attr}): a DENY rule is enforced at L4 without its L7 attributes, so it denies more than written; bind the policy to a waypoint with targetRefs to enforce them`,
    ]);
  });

  it('keeps the L4 part of a mixed ALLOW rule from allowing, while its L4-only rules still allow', () => {
    const authz = new L4Authorizer([ap('shop', 'mixed', {
      rules: [
        { ...from({ principals: ['cluster.local/ns/shop/sa/users'] }), ...to({ methods: ['GET'], ports: ['8080'] }) },
        from({ principals: ['cluster.local/ns/shop/sa/orders'] }),
      ],
    })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(noAllowMatched(1));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: ORDERS }))).toEqual(allowedBy('shop/mixed'));
    expect(authz.warnings).toHaveLength(1);
    expect(authz.warnings[0]).toMatch(/^AuthorizationPolicy shop\/mixed: rules\[0\] uses L7 attributes \(methods\)/);
  });

  it('enforces a mixed DENY rule by its L4 part', () => {
    const authz = new L4Authorizer([ap('shop', 'deny-legacy-posts', {
      action: 'DENY',
      rules: [{ from: [{ source: { namespaces: ['legacy'], requestPrincipals: ['*'] } }], to: [{ operation: { methods: ['POST'], ports: ['8080'] } }], when: [{ key: 'request.headers[x-debug]', values: ['1'] }] }],
    })]);
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: LEGACY }))).toEqual(deniedBy('shop/deny-legacy-posts'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: LEGACY, destinationPort: 9090 }))).toEqual(NO_ALLOW);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(NO_ALLOW);
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy shop/deny-legacy-posts: rules[0] uses L7 attributes (requestPrincipals, methods, request.headers[x-debug]): a DENY rule is enforced at L4 without its L7 attributes, so it denies more than written; bind the policy to a waypoint with targetRefs to enforce them',
    ]);
  });

  it('turns an L7-only source of a DENY rule into one that matches every peer', () => {
    const authz = new L4Authorizer([ap('shop', 'd', { action: 'DENY', rules: [{ from: [{ source: { notRequestPrincipals: ['*'] } }, { source: { namespaces: ['legacy'] } }] }] })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(deniedBy('shop/d'));
  });

  it('reports every rule with L7 attributes in one warning for the policy', () => {
    const authz = new L4Authorizer([ap('shop', 'two', { rules: [to({ methods: ['GET'] }), {}, to({ paths: ['/x'] })] })]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/two'));
    expect(authz.warnings).toHaveLength(1);
    expect(authz.warnings[0]).toContain('rules[0] uses L7 attributes (methods)');
    expect(authz.warnings[0]).toContain('rules[2] uses L7 attributes (paths)');
  });
});

describe('policies the node agent does not apply', () => {
  it.each([
    ['CUSTOM', { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{}] }, 'action CUSTOM (external authorization) is not supported: ignored'],
    ['AUDIT', { action: 'AUDIT', rules: [{}] }, 'action AUDIT does not affect access: ignored'],
    ['targetRefs', { targetRefs: [{ kind: 'Service', group: '', name: 'payment' }], action: 'DENY', rules: [{}] }, 'bound to a waypoint by targetRef(s): not applied by the node agent'],
    ['targetRef', { targetRef: { kind: 'Gateway', group: 'gateway.networking.k8s.io', name: 'waypoint' }, rules: [] }, 'bound to a waypoint by targetRef(s): not applied by the node agent'],
  ])('ignores %s with a warning naming the policy', (_, spec, warning) => {
    const authz = new L4Authorizer([ap('shop', 'x', spec)]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(NO_POLICY);
    expect(authz.evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(NO_POLICY);
    expect(authz.warnings).toEqual([`AuthorizationPolicy shop/x: ${warning}`]);
  });

  it('keeps deciding with the policies that do apply', () => {
    const authz = new L4Authorizer([
      ap('shop', 'audit', { action: 'AUDIT', rules: [{}] }),
      ap('shop', 'custom', { action: 'CUSTOM', provider: { name: 'opa' }, rules: [{}] }),
      ap('shop', 'allow-users', { rules: [from({ principals: ['cluster.local/ns/shop/sa/users'] })] }),
    ]);
    expect(authz.evaluate(PAYMENT, conn())).toEqual(allowedBy('shop/allow-users'));
    expect(authz.evaluate(PAYMENT, conn({ sourceIdentity: ORDERS }))).toEqual(noAllowMatched(1));
    expect(authz.warnings).toHaveLength(2);
  });
});

describe('PeerAuthentication', () => {
  const SEL = { matchLabels: { app: 'payment' } };
  const mode = (policies: ConfigObject[], port = 8080, w = PAYMENT, rootNamespace?: string) =>
    new L4Authorizer(policies, rootNamespace ? { rootNamespace } : {}).peerAuthenticationMode(w, port);

  it.each([
    ['no policy: PERMISSIVE', [], 'PERMISSIVE'],
    ['mesh-wide STRICT', [pa('istio-system', 'default', { mtls: { mode: 'STRICT' } })], 'STRICT'],
    ['mesh-wide DISABLE', [pa('istio-system', 'default', { mtls: { mode: 'DISABLE' } })], 'DISABLE'],
    ['namespace over mesh', [pa('istio-system', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'default', { mtls: { mode: 'PERMISSIVE' } })], 'PERMISSIVE'],
    ['namespace UNSET inherits the mesh', [pa('istio-system', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'default', { mtls: { mode: 'UNSET' } })], 'STRICT'],
    ['namespace without mtls inherits the mesh', [pa('istio-system', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'default', {})], 'STRICT'],
    ['workload over namespace', [pa('shop', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'payment', { selector: SEL, mtls: { mode: 'DISABLE' } })], 'DISABLE'],
    ['workload over mesh', [pa('istio-system', 'default', { mtls: { mode: 'PERMISSIVE' } }), pa('shop', 'payment', { selector: SEL, mtls: { mode: 'STRICT' } })], 'STRICT'],
    ['workload UNSET inherits the namespace', [pa('shop', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'payment', { selector: SEL, mtls: { mode: 'UNSET' } })], 'STRICT'],
    ['workload and namespace UNSET inherit the mesh', [pa('istio-system', 'm', { mtls: { mode: 'STRICT' } }), pa('shop', 'n', {}), pa('shop', 'w', { selector: SEL })], 'STRICT'],
    ['all UNSET: PERMISSIVE', [pa('istio-system', 'm', { mtls: { mode: 'UNSET' } }), pa('shop', 'n', {}), pa('shop', 'w', { selector: SEL })], 'PERMISSIVE'],
    ['selector not matching', [pa('shop', 'default', { mtls: { mode: 'STRICT' } }), pa('shop', 'other', { selector: { matchLabels: { app: 'users' } }, mtls: { mode: 'PERMISSIVE' } })], 'STRICT'],
    ['another namespace', [pa('ops', 'default', { mtls: { mode: 'STRICT' } })], 'PERMISSIVE'],
    ['a selector in another namespace', [pa('ops', 'payment', { selector: SEL, mtls: { mode: 'STRICT' } })], 'PERMISSIVE'],
    ['a root-namespace selector applies to the root namespace only', [pa('istio-system', 'payment', { selector: SEL, mtls: { mode: 'STRICT' } })], 'PERMISSIVE'],
    ['empty selector is namespace-wide', [pa('shop', 'default', { selector: { matchLabels: {} }, mtls: { mode: 'STRICT' } })], 'STRICT'],
  ] as [string, ConfigObject[], string][])('%s', (_, policies, expected) => {
    expect(mode(policies)).toBe(expected);
  });

  it('applies a root-namespace selector policy to a matching workload of the root namespace', () => {
    const gateway = workload({ namespace: 'istio-system', labels: { app: 'payment' } });
    expect(mode([pa('istio-system', 'payment', { selector: SEL, mtls: { mode: 'STRICT' } })], 8080, gateway)).toBe('STRICT');
  });

  it('overrides by target port, and inherits for UNSET ports', () => {
    const policies = [
      pa('shop', 'default', { mtls: { mode: 'STRICT' } }),
      pa('shop', 'payment', { selector: SEL, portLevelMtls: { 8080: { mode: 'PERMISSIVE' }, 9090: { mode: 'UNSET' }, 9091: { mode: 'DISABLE' } } }),
    ];
    expect(mode(policies, 8080)).toBe('PERMISSIVE');
    expect(mode(policies, 9090)).toBe('STRICT');
    expect(mode(policies, 9091)).toBe('DISABLE');
    expect(mode(policies, 80)).toBe('STRICT');
  });

  it('makes one port STRICT in a PERMISSIVE workload', () => {
    const policies = [pa('shop', 'payment', { selector: SEL, mtls: { mode: 'PERMISSIVE' }, portLevelMtls: { '8443': { mode: 'STRICT' } } })];
    expect(mode(policies, 8443)).toBe('STRICT');
    expect(mode(policies, 8080)).toBe('PERMISSIVE');
  });

  it('ignores portLevelMtls without a selector, with a warning', () => {
    const authz = new L4Authorizer([pa('shop', 'default', { mtls: { mode: 'STRICT' }, portLevelMtls: { 8080: { mode: 'DISABLE' } } })]);
    expect(authz.peerAuthenticationMode(PAYMENT, 8080)).toBe('STRICT');
    expect(authz.warnings).toEqual(['PeerAuthentication shop/default: portLevelMtls needs a selector: ignored']);
  });

  it('takes the root namespace from the options', () => {
    expect(mode([pa('mesh-root', 'default', { mtls: { mode: 'STRICT' } })], 8080, PAYMENT, 'mesh-root')).toBe('STRICT');
    expect(mode([pa('mesh-root', 'default', { mtls: { mode: 'STRICT' } })])).toBe('PERMISSIVE');
  });

  it.each([
    ['mesh-wide', [pa('istio-system', 'b', { mtls: { mode: 'PERMISSIVE' } }), pa('istio-system', 'a', { mtls: { mode: 'STRICT' } })], 'istio-system/b', 'another mesh-wide PeerAuthentication, istio-system/a, takes precedence'],
    ['namespace-wide', [pa('shop', 'b', { mtls: { mode: 'PERMISSIVE' } }), pa('shop', 'a', { mtls: { mode: 'STRICT' } })], 'shop/b', 'another namespace-wide in shop PeerAuthentication, shop/a, takes precedence'],
    ['workload', [pa('shop', 'b', { selector: SEL, mtls: { mode: 'PERMISSIVE' } }), pa('shop', 'a', { selector: { matchLabels: { version: 'v1' } }, mtls: { mode: 'STRICT' } })], 'shop/b', 'its selector may select the same workloads as shop/a, which then takes precedence'],
  ] as [string, ConfigObject[], string, string][])('takes the first by name of several %s policies, with a warning', (_, policies, loser, text) => {
    const authz = new L4Authorizer(policies);
    expect(authz.peerAuthenticationMode(PAYMENT, 8080)).toBe('STRICT');
    expect(authz.warnings).toEqual([
      `PeerAuthentication ${loser}: ${text} (Istio keeps the oldest; ambit, without creation times, the first by name)`,
    ]);
  });

  it('does not warn about selectors that cannot select the same workload', () => {
    const authz = new L4Authorizer([
      pa('shop', 'payment', { selector: SEL, mtls: { mode: 'STRICT' } }),
      pa('shop', 'users', { selector: { matchLabels: { app: 'users' } }, mtls: { mode: 'DISABLE' } }),
    ]);
    expect(authz.peerAuthenticationMode(PAYMENT, 8080)).toBe('STRICT');
    expect(authz.peerAuthenticationMode(workload({ labels: { app: 'users' } }), 8080)).toBe('DISABLE');
    expect(authz.warnings).toEqual([]);
  });

  it('does not take part in authorization decisions', () => {
    const authz = new L4Authorizer([pa('shop', 'default', { mtls: { mode: 'STRICT' } })]);
    expect(authz.evaluate(PAYMENT, conn({ plaintext: true }))).toEqual(NO_POLICY);
  });
});

// ---------------------------------------------------------------------------------------------
// Manifests as users write them: through the manifest parser, validation and the model.

function policiesOf(text: string, file = 'policies.yaml'): ConfigObject[] {
  const { resources, diagnostics } = parseManifests([{ file, text, dir: '/' }], { validate: validateMeshObject });
  expect(diagnostics.filter((d) => d.severity === 'error')).toEqual([]);
  return buildModel({ resources, pods: [] }, 'cluster.local').policies;
}

describe('shared Istio samples and the write-up', () => {
  it("gives the conformance httpbin policy Istio's L4 meaning: its L7 rule allows nothing", () => {
    const policies = policiesOf(readFileSync(join(SHARED, 'conformance', 'istio', 'authorization-policy-httpbin.yaml'), 'utf8'));
    expect(policies.map((p) => `${p.namespace}/${p.name}`)).toEqual(['foo/httpbin']);
    const authz = new L4Authorizer(policies);
    const httpbinV1 = workload({ namespace: 'foo', name: 'httpbin-v1', labels: { app: 'httpbin', version: 'v1' } });
    const httpbinV2 = workload({ namespace: 'foo', name: 'httpbin-v2', labels: { app: 'httpbin', version: 'v2' } });
    expect(authz.evaluate(httpbinV1, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/sleep' }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(httpbinV1, conn({ sourceIdentity: 'spiffe://cluster.local/ns/dev/sa/anything' }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(httpbinV2, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/sleep' }))).toEqual(NO_POLICY);
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy foo/httpbin: rules[0] uses L7 attributes (methods, request.auth.claims[iss]): an ALLOW rule with L7 attributes never matches at L4, so it allows nothing; bind the policy to a waypoint with targetRefs to enforce them',
    ]);
  });

  it('allows what the L4 part of the httpbin policy allows once its L7 parts move to a waypoint', () => {
    const text = readFileSync(join(SHARED, 'conformance', 'istio', 'authorization-policy-httpbin.yaml'), 'utf8')
      .replace(/\n {3}to:[\s\S]*$/, '\n');
    const authz = new L4Authorizer(policiesOf(text));
    const httpbin = workload({ namespace: 'foo', labels: { app: 'httpbin', version: 'v1' } });
    expect(authz.evaluate(httpbin, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/sleep' }))).toEqual(allowedBy('foo/httpbin'));
    expect(authz.evaluate(httpbin, conn({ sourceIdentity: 'spiffe://cluster.local/ns/dev/sa/anything' }))).toEqual(allowedBy('foo/httpbin'));
    expect(authz.evaluate(httpbin, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/other' }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(httpbin, conn({ plaintext: true }))).toEqual(noAllowMatched(1));
    expect(authz.warnings).toEqual([]);
  });

  it("enforces the write-up's access rule (web may call backend, nothing else may) as an Istio ALLOW policy", () => {
    // The write-up states it as Consul intentions: allow web → backend, deny * → backend.
    const seed = readFileSync(join(SHARED, 'seed', '000_00ae23f618932bae.txt'), 'utf8');
    expect(seed).toMatch(/source_name\s*=\s*"web"\s*\n\s*destination_name\s*=\s*"backend"\s*\n\s*action\s*=\s*"allow"/);
    expect(seed).toMatch(/source_name\s*=\s*"\*"\s*\n\s*destination_name\s*=\s*"backend"\s*\n\s*action\s*=\s*"deny"/);
    const authz = new L4Authorizer(policiesOf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: backend-from-web, namespace: default }
spec:
  selector: { matchLabels: { app: backend } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["cluster.local/ns/default/sa/web"] } }]
`));
    const backend = workload({ namespace: 'default', labels: { app: 'backend' } });
    expect(authz.evaluate(backend, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/web' }))).toEqual(allowedBy('default/backend-from-web'));
    expect(authz.evaluate(backend, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/batch' }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(backend, conn({ plaintext: true }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(workload({ namespace: 'default', labels: { app: 'web' } }), conn())).toEqual(NO_POLICY);
  });

  it('applies the Bookinfo ambient policies: productpage-viewer on port 9080, allow-nothing, a DENY from dev', () => {
    const policies = policiesOf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: productpage-viewer, namespace: default }
spec:
  selector: { matchLabels: { app: productpage } }
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/sleep
        - cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account
    to:
    - operation: { ports: ["9080"] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-nothing, namespace: default }
spec:
  selector: { matchLabels: { app: ratings } }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-dev-posts, namespace: default }
spec:
  action: DENY
  rules:
  - from: [{ source: { namespaces: ["dev"] } }]
    to: [{ operation: { methods: ["POST"] } }]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: istio-system }
spec: { mtls: { mode: STRICT } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: ratings, namespace: default }
spec:
  selector: { matchLabels: { app: ratings } }
  portLevelMtls: { "9080": { mode: PERMISSIVE } }
`);
    const authz = new L4Authorizer(policies);
    const productpage = workload({ namespace: 'default', labels: { app: 'productpage' } });
    const ratings = workload({ namespace: 'default', labels: { app: 'ratings' } });
    const reviews = workload({ namespace: 'default', labels: { app: 'reviews' } });
    const sleep = 'spiffe://cluster.local/ns/default/sa/sleep';
    const gateway = 'spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account';
    expect(authz.evaluate(productpage, conn({ sourceIdentity: sleep, destinationPort: 9080 }))).toEqual(allowedBy('default/productpage-viewer'));
    expect(authz.evaluate(productpage, conn({ sourceIdentity: gateway, destinationPort: 9080 }))).toEqual(allowedBy('default/productpage-viewer'));
    expect(authz.evaluate(productpage, conn({ sourceIdentity: sleep, destinationPort: 15000 }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(productpage, conn({ sourceIdentity: 'spiffe://cluster.local/ns/default/sa/notsleep', destinationPort: 9080 }))).toEqual(noAllowMatched(1));
    expect(authz.evaluate(ratings, conn({ sourceIdentity: sleep, destinationPort: 9080 }))).toEqual(noAllowMatched(1));
    // The DENY's L7 part (POST) is dropped: everything from dev is denied, in every workload of default.
    expect(authz.evaluate(productpage, conn({ sourceIdentity: 'spiffe://cluster.local/ns/dev/sa/sleep', destinationPort: 9080 }))).toEqual(deniedBy('default/deny-dev-posts'));
    expect(authz.evaluate(reviews, conn({ sourceIdentity: 'spiffe://cluster.local/ns/dev/sa/sleep' }))).toEqual(deniedBy('default/deny-dev-posts'));
    expect(authz.evaluate(reviews, conn({ sourceIdentity: sleep }))).toEqual(NO_ALLOW);
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy default/deny-dev-posts: rules[0] uses L7 attributes (methods): a DENY rule is enforced at L4 without its L7 attributes, so it denies more than written; bind the policy to a waypoint with targetRefs to enforce them',
    ]);
    expect(authz.peerAuthenticationMode(ratings, 9080)).toBe('PERMISSIVE');
    expect(authz.peerAuthenticationMode(ratings, 9081)).toBe('STRICT');
    expect(authz.peerAuthenticationMode(productpage, 9080)).toBe('STRICT');
  });

  it('applies the istio.io L4 example (allow-curl-to-httpbin) and refuses its L7 variant', () => {
    const l4 = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: allow-curl-to-httpbin, namespace: ambient-demo }
spec:
  selector: { matchLabels: { app: httpbin } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: [cluster.local/ns/ambient-demo/sa/curl] } }]
`;
    const httpbin = workload({ namespace: 'ambient-demo', labels: { app: 'httpbin' } });
    const curl = conn({ sourceIdentity: 'spiffe://cluster.local/ns/ambient-demo/sa/curl' });
    expect(new L4Authorizer(policiesOf(l4)).evaluate(httpbin, curl)).toEqual(allowedBy('ambient-demo/allow-curl-to-httpbin'));
    expect(new L4Authorizer(policiesOf(l4)).evaluate(httpbin, conn())).toEqual(noAllowMatched(1));
    const l7 = `${l4}    to: [{ operation: { methods: ["GET"] } }]\n`;
    expect(new L4Authorizer(policiesOf(l7)).evaluate(httpbin, curl)).toEqual(noAllowMatched(1));
  });
});
