/**
 * The mesh CA in process: its root, stored for its owner only, and every way a CSR is refused.
 * SVIDs checked with openssl, persistence across restarts, plug-in CAs made with openssl as
 * operators make them and every refusal of their files: test/integration/identity-ca-openssl.test.ts.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { createCsr, generateKeyPair, x509 } from '../../src/identity/pki.js';
import { refusal } from '../helpers/refusal.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-ca-'));
const ID = 'spiffe://cluster.local/ns/shop/sa/users';
let ca: CertificateAuthority;

beforeAll(async () => {
  ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'state')) });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('CertificateAuthority', () => {
  it('creates a P-256 root on first start and stores it, key readable by its owner only', () => {
    expect(ca.origin).toBe('created');
    const root = new X509Certificate(ca.trustBundle()[0]!);
    expect(root.ca).toBe(true);
    expect(root.subject).toContain('CN=ambit root CA for cluster.local');
    expect(root.publicKey.asymmetricKeyDetails).toMatchObject({ namedCurve: 'prime256v1' });
    expect(readFileSync(join(dir, 'state', 'ca-key.pem'), 'utf8')).toContain('BEGIN PRIVATE KEY');
    expect(statSync(join(dir, 'state', 'ca-key.pem')).mode & 0o777).toBe(0o600);
  });
});

describe('bad certificate requests', () => {
  const signWith = async (csr: string, identity = ID, ttlSeconds?: number) => refusal(ca.sign({ csr, identity, ttlSeconds }));

  it('refuses what is not a CSR', async () => {
    expect((await signWith('hello')).message).toMatch(/^csr: not a PEM PKCS#10 certificate request/);
    expect((await signWith('-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n')).code).toBe('INVALID_ARGUMENT');
  });

  it('refuses keys other than ECDSA P-256', async () => {
    const rsa = await x509.Pkcs10CertificateRequestGenerator.create({
      keys: await crypto.subtle.generateKey({ name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }, true, ['sign', 'verify']),
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: ID }])],
    });
    expect((await signWith(rsa.toString('pem'))).message).toBe('csr: key type RSASSA-PKCS1-v1_5 is not allowed; use ECDSA P-256');
    const p384 = await x509.Pkcs10CertificateRequestGenerator.create({
      keys: await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']),
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: ID }])],
    });
    expect((await signWith(p384.toString('pem'))).message).toBe('csr: key type ECDSA P-384 is not allowed; use ECDSA P-256');
  });

  it('refuses a CSR whose signature does not verify', async () => {
    const good = new x509.Pkcs10CertificateRequest(await createCsr(await generateKeyPair(), ID));
    const raw = new Uint8Array(good.rawData);
    raw[raw.length - 5]! ^= 0xff; // inside the signature
    const tampered = x509.PemConverter.encode(raw.buffer, 'CERTIFICATE REQUEST');
    expect((await signWith(tampered)).message).toMatch(/csr: (the signature does not verify|not a PEM PKCS#10)/);
  });

  it('refuses a SAN that is not exactly the identity asked for', async () => {
    const other = await createCsr(await generateKeyPair(), 'spiffe://cluster.local/ns/shop/sa/admin');
    expect((await signWith(other)).message).toBe(`csr: the SAN must be exactly URI ${ID} (found url:spiffe://cluster.local/ns/shop/sa/admin)`);
    const keys = await generateKeyPair();
    const extra = await x509.Pkcs10CertificateRequestGenerator.create({
      keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: ID }, { type: 'dns', value: 'evil.example' }])],
    });
    expect((await signWith(extra.toString('pem'))).message).toBe(`csr: the SAN must be exactly URI ${ID} (found url:${ID}, dns:evil.example)`);
    const none = await x509.Pkcs10CertificateRequestGenerator.create({ keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }, name: 'CN=x' });
    expect((await signWith(none.toString('pem'))).message).toBe(`csr: the SAN must be exactly URI ${ID} (found none)`);
  });

  it('refuses TTLs over the maximum and identities outside the trust domain', async () => {
    const csr = await createCsr(await generateKeyPair(), ID);
    expect((await signWith(csr, ID, 8 * 24 * 3600)).message).toBe('requested TTL 691200s is over the maximum 604800s');
    expect((await signWith(csr, ID, -5)).message).toBe('validity_duration must be a whole number of seconds >= 0, got -5');
    expect((await signWith(csr, 'spiffe://other.domain/ns/shop/sa/users')).message).toBe('identity spiffe://other.domain/ns/shop/sa/users is outside this CA\'s trust domain "cluster.local"');
    expect((await signWith(csr, 'spiffe://cluster.local/users')).message).toMatch(/^identity: "spiffe:\/\/cluster.local\/users" is not a workload SPIFFE ID/);
  });
});
