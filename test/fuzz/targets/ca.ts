/**
 * The mesh CA's certificate requests: `CertificateAuthority.sign` given CSRs that are valid,
 * DER-corrupted, truncated, re-armored garbage, for other key types or other SANs, several in one
 * PEM, with identities and TTLs from valid to hostile. A `CaError` (the CA server answers it
 * with its gRPC code) is an answer; any other exception is a refusal that names nothing (the
 * server says "internal error"); a certificate signed for anything but a valid CSR whose only SAN
 * is the requested identity is a bypass.
 */
import { webcrypto } from 'node:crypto';
import * as fc from 'fast-check';
import { CaError } from '../../../src/identity/ca.js';
import { createCsr, generateKeyPair, sanNames, SIGNING, x509 } from '../../../src/identity/pki.js';
import { latin1 } from '../gen-http.js';
import { Finding, type FuzzTarget } from '../harness.js';
import { meshPki, type MeshPki } from '../mesh-pki.js';

const ID = 'spiffe://cluster.local/ns/shop/sa/users';

type Csr = { kind: 'valid' } | { kind: 'other'; which: number } | { kind: 'flip'; at: number; byte: number } | { kind: 'flipKey'; at: number; byte: number } | { kind: 'truncate'; at: number }
  | { kind: 'base64'; bytes: Uint8Array } | { kind: 'text'; text: string } | { kind: 'double' } | { kind: 'armor'; label: string; body: string };

export interface CaInput { csr: Csr; identity: string; ttl: number }

const identity = fc.oneof(
  { weight: 6, arbitrary: fc.constant(ID) },
  { weight: 1, arbitrary: fc.constantFrom('spiffe://cluster.local/ns/shop/sa/orders', 'spiffe://other.domain/ns/shop/sa/users', 'spiffe://cluster.local/ns/shop/sa/users/', 'spiffe://cluster.local/ns//sa/users',
    'spiffe://CLUSTER.local/ns/shop/sa/users', 'spiffe://cluster.local/ns/shop/sa/users?x', 'spiffe://cluster.local/ns/shop/sa/%75sers', 'spiffe://cluster.local/ns/shop/sa/users\0', '', 'http://cluster.local/ns/shop/sa/users') },
  { weight: 1, arbitrary: fc.string({ maxLength: 60 }) },
);
const ttl = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 3600, 86_400) },
  { weight: 1, arbitrary: fc.constantFrom(-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53, 7 * 86_400 + 1, 1e12) },
  { weight: 1, arbitrary: fc.integer() },
);
const csr: fc.Arbitrary<Csr> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ kind: 'valid' as const }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('other' as const), which: fc.nat() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('flipKey' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('base64' as const), bytes: fc.uint8Array({ maxLength: 400 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('text' as const), text: fc.oneof(latin1(200), fc.string({ maxLength: 200 })) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'double' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('armor' as const), label: fc.constantFrom('CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST', 'CERTIFICATE', 'PRIVATE KEY', ''), body: fc.oneof(fc.base64String({ maxLength: 200 }), latin1(100)) }) },
);

/** `keyAt`: where the request's public key algorithm and curve are in its DER. */
interface CaCtx { pki: MeshPki; valid: string; der: Buffer; keyAt: number; others: string[] }

const armor = (der: Buffer, label = 'CERTIFICATE REQUEST') => `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END ${label}-----\n`;

function pemOf(ctx: CaCtx, c: Csr): string {
  switch (c.kind) {
    case 'valid': return ctx.valid;
    case 'other': return ctx.others[c.which % ctx.others.length]!;
    case 'flip': { const d = Buffer.from(ctx.der); d[c.at % d.length] = c.byte; return armor(d); }
    case 'flipKey': { const d = Buffer.from(ctx.der); d[ctx.keyAt + (c.at % 24)] = c.byte; return armor(d); }
    case 'truncate': return armor(ctx.der.subarray(0, c.at % ctx.der.length));
    case 'base64': return armor(Buffer.from(c.bytes));
    case 'text': return c.text;
    case 'double': return `${ctx.others[0]}${ctx.valid}`;
    case 'armor': return `-----BEGIN ${c.label}-----\n${c.body}\n-----END ${c.label}-----\n`;
  }
}

/** CSRs the CA must refuse whatever the identity: other curves and algorithms, other SANs. */
async function otherCsrs(): Promise<string[]> {
  const p384 = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
  const rsa = await webcrypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify']);
  const p256 = await generateKeyPair();
  const make = async (keys: webcrypto.CryptoKeyPair, alg: Parameters<typeof x509.Pkcs10CertificateRequestGenerator.create>[0]['signingAlgorithm'], sans: { type: 'url' | 'dns' | 'ip' | 'email'; value: string }[]) =>
    (await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: alg, ...(sans.length ? { extensions: [new x509.SubjectAlternativeNameExtension(sans, true)] } : {}) })).toString('pem');
  return [
    await make(p384, { name: 'ECDSA', hash: 'SHA-384' }, [{ type: 'url', value: ID }]),
    await make(rsa, { name: 'RSASSA-PKCS1-v1_5' }, [{ type: 'url', value: ID }]),
    await make(p256, SIGNING, [{ type: 'url', value: ID }, { type: 'url', value: 'spiffe://cluster.local/ns/shop/sa/orders' }]),
    await make(p256, SIGNING, [{ type: 'url', value: ID }, { type: 'dns', value: 'users.shop.svc' }]),
    await make(p256, SIGNING, [{ type: 'dns', value: ID }]),
    await make(p256, SIGNING, []),
    await make(p256, SIGNING, [{ type: 'url', value: `${ID}\0.evil` }]),
  ];
}

export const caTarget: FuzzTarget<CaInput, CaCtx> = {
  name: 'ca-csr',
  what: 'certificate requests (CSR PEM, identity, TTL) to the mesh CA\'s signing (CertificateAuthority.sign, behind CreateCertificate on 15012)',
  input: fc.record({ csr, identity, ttl }),
  concurrency: 4,
  async setup() {
    const pki = await meshPki('ca');
    const valid = await createCsr(await generateKeyPair(), ID);
    const der = Buffer.from(new x509.Pkcs10CertificateRequest(valid).rawData);
    // The key's algorithm identifier (id-ecPublicKey) and curve (prime256v1), where a parser of keys is most exposed.
    const keyAt = Math.max(0, der.indexOf(Buffer.from('06072a8648ce3d0201', 'hex')) - 2);
    return { pki, valid, der, keyAt, others: await otherCsrs() };
  },
  async run(ctx, input) {
    const pem = pemOf(ctx, input.csr);
    let chain: string[];
    try {
      chain = (await ctx.pki.ca.sign({ csr: pem, identity: input.identity, ttlSeconds: input.ttl })).chain;
    } catch (err) {
      if (err instanceof CaError) return `refused:${err.code}`;
      throw new Finding(`refused with an error that names nothing: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
    // Signed: the request must have been exactly a valid one for this identity.
    const leaf = new x509.X509Certificate(chain[0]!);
    const sans = sanNames(leaf).map((n) => `${n.type}:${n.value}`);
    const request = new x509.Pkcs10CertificateRequest(pem);
    const asked = sanNames(request).map((n) => `${n.type}:${n.value}`);
    if (sans.length !== 1 || sans[0] !== `url:${input.identity}` || asked.join() !== `url:${input.identity}` || input.identity !== ID) {
      throw new Finding(`signed ${sans.join(', ')} for a request with SANs ${asked.join(', ') || 'none'} asking for ${JSON.stringify(input.identity)}`);
    }
    return input.csr.kind === 'valid' ? 'signed' : `signed:${input.csr.kind}`;
  },
  teardown: (ctx) => Promise.resolve(ctx.pki.close()),
};
