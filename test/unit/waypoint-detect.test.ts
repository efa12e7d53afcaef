/**
 * The waypoint's protocol detection (src/waypoint/detect.ts) on its own: what it decides from a
 * tunnel's first bytes, and that it never asks for more than DETECT_MAX_BYTES; and the L4
 * authorization decision taken at CONNECT time (L7Authorizer.decideTunnel): never 'deny' where
 * some request on the tunnel would be allowed, never 'allow' where one would be denied.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ConfigObject } from '../../src/config/model.js';
import { L7Authorizer, type L7Request, type L7Target } from '../../src/waypoint/authz.js';
import { detect, DETECT_MAX_BYTES, H2_PREFACE, MAX_LEADING_BLANK_BYTES } from '../../src/waypoint/detect.js';

const b = (s: string | Buffer) => (typeof s === 'string' ? Buffer.from(s, 'latin1') : s);

describe('protocol detection', () => {
  it('tells h2c, HTTP/1.1 and TCP apart, waiting only while the bytes could still be either', () => {
    expect(detect(b(H2_PREFACE))).toEqual({ kind: 'h2c' });
    expect(detect(b('PRI * HTTP/2'))).toEqual({ kind: 'wait', httpLike: true });
    expect(detect(b('PRI * HTTP/1.1\r\n'))).toEqual({ kind: 'http1' });
    expect(detect(b('GET / HTTP/1.1\r\n'))).toEqual({ kind: 'http1' });
    expect(detect(b('\r\n\r\nPOST /x'))).toEqual({ kind: 'http1' });
    expect(detect(b(`${'M'.repeat(20)} /`))).toEqual({ kind: 'http1' });
    expect(detect(b('M'.repeat(21)))).toEqual({ kind: 'tcp' });
    expect(detect(b('get / HTTP/1.1'))).toEqual({ kind: 'tcp' });
    expect(detect(b('\x16\x03\x01'))).toEqual({ kind: 'tcp' });
    expect(detect(b('GE'))).toEqual({ kind: 'wait', httpLike: true });
    expect(detect(b(''))).toEqual({ kind: 'wait', httpLike: false });
  });

  it(`skips up to ${MAX_LEADING_BLANK_BYTES} bytes of empty lines, and refuses more at once`, () => {
    expect(detect(b('\r\n'.repeat(MAX_LEADING_BLANK_BYTES / 2)))).toEqual({ kind: 'wait', httpLike: true });
    expect(detect(b(`${'\r\n'.repeat(MAX_LEADING_BLANK_BYTES / 2)}GET `))).toEqual({ kind: 'http1' });
    expect(detect(b(`${'\r\n'.repeat(MAX_LEADING_BLANK_BYTES / 2)}\n`))).toMatchObject({ kind: 'bad-http' });
    expect(detect(b('\r\n'.repeat(500_000)))).toMatchObject({ kind: 'bad-http' });
  });

  it(`decides on any ${DETECT_MAX_BYTES} bytes, and reads no further`, () => {
    const interesting = fc.constantFrom(...'\r\n GETPOSTRI*HT/2.0SM\x00a'.split(''));
    fc.assert(fc.property(fc.array(interesting, { minLength: DETECT_MAX_BYTES, maxLength: DETECT_MAX_BYTES * 2 }), (chars) => {
      const head = b(chars.join(''));
      const found = detect(head);
      expect(found.kind).not.toBe('wait');
      // Only the first DETECT_MAX_BYTES count: what follows them changes nothing.
      expect(detect(Buffer.concat([head.subarray(0, DETECT_MAX_BYTES), b('zzzz')]))).toEqual(found);
    }), { numRuns: 2000 });
  });
});

// ---------------------------------------------------------------------------------------------

const TARGET: L7Target = { service: { name: 'payment', namespace: 'shop' }, waypoint: { name: 'waypoint', namespace: 'shop' } };
const ap = (name: string, spec: Record<string, unknown>): ConfigObject =>
  ({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name, spec: { targetRefs: [{ kind: 'Service', group: '', name: 'payment' }], ...spec } });

const PEERS = [
  { sourceIdentity: 'spiffe://cluster.local/ns/shop/sa/web', sourceIp: '10.1.0.7' },
  { sourceIdentity: 'spiffe://cluster.local/ns/legacy/sa/batch', sourceIp: '10.2.0.9' },
  { sourceIp: '10.3.0.1' },
];
const tunnelOf = (peer: number, port: number) => ({ ...PEERS[peer]!, destinationIp: '10.96.0.20', destinationPort: port });

/** Rule pieces: on the tunnel's facts (principal, namespace, IP, port) and on the request's (method, path, header, host). */
const fromClause = fc.constantFrom(
  { principals: ['cluster.local/ns/shop/sa/web'] }, { namespaces: ['legacy'] }, { notNamespaces: ['shop'] }, { ipBlocks: ['10.3.0.0/16'] },
  { serviceAccounts: ['legacy/batch'] }, { requestPrincipals: ['*'] }, { notPrincipals: ['*'] },
);
const toClause = fc.constantFrom(
  { ports: ['8080'] }, { notPorts: ['9090'] }, { methods: ['GET'] }, { paths: ['/admin*'] }, { notPaths: ['/public/*'] }, { hosts: ['payment*'] },
  { ports: ['9090'], methods: ['POST'] },
);
const when = fc.constantFrom(
  { key: 'request.headers[x-tenant]', values: ['acme'] }, { key: 'source.namespace', values: ['shop'] }, { key: 'destination.port', notValues: ['8080'] },
  { key: 'request.auth.claims[iss]', values: ['x'] },
);
const rule = fc.record({
  from: fc.option(fc.array(fromClause.map((source) => ({ source })), { minLength: 1, maxLength: 2 }), { nil: undefined }),
  to: fc.option(fc.array(toClause.map((operation) => ({ operation })), { minLength: 1, maxLength: 2 }), { nil: undefined }),
  when: fc.option(fc.array(when, { minLength: 1, maxLength: 2 }), { nil: undefined }),
}, { requiredKeys: [] });
const policies = fc.array(fc.record({ action: fc.constantFrom('ALLOW', 'DENY', 'AUDIT'), rules: fc.array(rule, { maxLength: 3 }) }), { minLength: 0, maxLength: 4 })
  .map((list) => list.map((p, i) => ap(`p${i}`, JSON.parse(JSON.stringify(p)) as Record<string, unknown>)));
const request = fc.record({
  method: fc.constantFrom('GET', 'POST'), path: fc.constantFrom('/', '/admin/x', '/public/a', '/api'),
  host: fc.constantFrom('payment.shop:8080', 'other'), tenant: fc.constantFrom('acme', undefined),
});

describe('L4 authorization at CONNECT time', () => {
  it('is sound: a tunnel denied at CONNECT would have had every request denied, one allowed every request allowed', () => {
    fc.assert(fc.property(policies, fc.integer({ min: 0, max: 2 }), fc.constantFrom(8080, 9090), fc.array(request, { minLength: 1, maxLength: 8 }), (list, peer, port, requests) => {
      const authz = new L7Authorizer(list);
      const tunnel = tunnelOf(peer, port);
      const verdict = authz.decideTunnel(tunnel, TARGET).verdict;
      for (const r of requests) {
        const req: L7Request = { ...tunnel, method: r.method, path: r.path, host: r.host, headers: r.tenant ? { 'x-tenant': r.tenant } : {} };
        const allowed = authz.evaluate(req, TARGET).allowed;
        if (verdict === 'deny') expect(allowed).toBe(false);
        if (verdict === 'allow') expect(allowed).toBe(true);
      }
    }), { numRuns: 3000 });
  });

  it('decides what the tunnel alone decides, and leaves the rest to the requests', () => {
    const denyLegacy = ap('no-legacy', { action: 'DENY', rules: [{ from: [{ source: { namespaces: ['legacy'] } }] }] });
    const denyAdmin = ap('no-admin', { action: 'DENY', rules: [{ to: [{ operation: { paths: ['/admin'] } }] }] });
    const allowShopGets = ap('shop-gets', { rules: [{ from: [{ source: { namespaces: ['shop'] } }], to: [{ operation: { methods: ['GET'] } }] }] });
    expect(new L7Authorizer([denyLegacy]).decideTunnel(tunnelOf(1, 8080), TARGET)).toMatchObject({ verdict: 'deny', policy: 'shop/no-legacy', reason: 'denied by DENY policy shop/no-legacy' });
    expect(new L7Authorizer([denyLegacy]).decideTunnel(tunnelOf(0, 8080), TARGET)).toMatchObject({ verdict: 'allow' });
    expect(new L7Authorizer([denyAdmin]).decideTunnel(tunnelOf(0, 8080), TARGET)).toMatchObject({ verdict: 'request', policy: 'shop/no-admin' });
    // Only shop may GET: legacy is refused at CONNECT, shop waits for its requests' methods.
    expect(new L7Authorizer([allowShopGets]).decideTunnel(tunnelOf(1, 8080), TARGET)).toMatchObject({ verdict: 'deny', reason: expect.stringMatching(/^no ALLOW policy matched \(1 applies/) as unknown });
    expect(new L7Authorizer([allowShopGets]).decideTunnel(tunnelOf(0, 8080), TARGET)).toMatchObject({ verdict: 'request', policy: 'shop/shop-gets' });
    // A DENY rule that cannot be compiled matches everything: refused at CONNECT too (fail closed).
    expect(new L7Authorizer([ap('bad', { action: 'DENY', rules: [{ from: [{ source: { ipBlocks: ['not-a-cidr'] } }] }] })]).decideTunnel(tunnelOf(0, 8080), TARGET)).toMatchObject({ verdict: 'deny' });
    expect(new L7Authorizer([]).decideTunnel(tunnelOf(2, 8080), TARGET)).toEqual({ verdict: 'allow', allowed: true, reason: 'no policy applies' });
  });
});
