/**
 * The mesh CA: roots, SVIDs (checked with Debian's openssl and Node's X509Certificate),
 * persistence across restarts, plug-in CAs, and every way a CSR is refused.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CaError, CertificateAuthority, FileCaStore, readPluginCa } from '../../src/identity/ca.js';
import { certificateFacts, createCsr, generateKeyPair, x509 } from '../../src/identity/pki.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-ca-'));
const ID = 'spiffe://cluster.local/ns/shop/sa/users';
let ca: CertificateAuthority;

function openssl(...args: string[]): string {
  return execFileSync('openssl', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** `openssl verify` of a chain's leaf against the given roots, with the chain's middle as untrusted intermediates. */
function opensslVerify(chain: string[], roots: string[]): string {
  const leaf = join(dir, 'leaf.pem');
  const rootsFile = join(dir, 'roots.pem');
  const untrusted = join(dir, 'untrusted.pem');
  writeFileSync(leaf, chain[0]!);
  writeFileSync(rootsFile, roots.join(''));
  const middle = chain.slice(1, -1);
  writeFileSync(untrusted, middle.join(''));
  return openssl('verify', '-purpose', 'sslclient', '-CAfile', rootsFile, ...(middle.length ? ['-untrusted', untrusted] : []), leaf).trim();
}

async function refusal(p: Promise<unknown>): Promise<CaError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CaError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

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
    expect(execFileSync('stat', ['-c', '%a', join(dir, 'state', 'ca-key.pem')], { encoding: 'utf8' }).trim()).toBe('600');
  });

  it('issues an SVID: SPIFFE URI SAN only, 24 h default, client and server auth, verified by openssl and Node', async () => {
    const keys = await generateKeyPair();
    const signed = await ca.sign({ csr: await createCsr(keys, ID), identity: ID });
    expect(signed.chain).toHaveLength(2);
    const leaf = new X509Certificate(signed.chain[0]!);
    expect(leaf.subjectAltName).toBe(`URI:${ID}`);
    expect(leaf.ca).toBe(false);
    expect(leaf.checkIssued(new X509Certificate(ca.trustBundle()[0]!))).toBe(true);
    expect(leaf.verify(new X509Certificate(ca.trustBundle()[0]!).publicKey)).toBe(true);
    const lifetime = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    expect(lifetime).toBe(24 * 3600_000 + 60_000); // backdated a minute for clock skew
    expect(leaf.serialNumber.toLowerCase().replace(/^0+/, '')).toBe(signed.serial.replace(/^0+/, ''));
    expect(opensslVerify(signed.chain, ca.trustBundle())).toBe(`${join(dir, 'leaf.pem')}: OK`);
    const text = openssl('x509', '-noout', '-text', '-in', join(dir, 'leaf.pem'));
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/cluster\.local\/ns\/shop\/sa\/users\n/);
    expect(text).toMatch(/TLS Web Server Authentication, TLS Web Client Authentication/);
  });

  it('keeps its root across a restart, so earlier certificates stay valid', async () => {
    const before = await ca.sign({ csr: await createCsr(await generateKeyPair(), ID), identity: ID });
    const reopened = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'state')) });
    expect(reopened.origin).toBe('loaded');
    expect(reopened.trustBundle()).toEqual(ca.trustBundle());
    expect(opensslVerify(before.chain, reopened.trustBundle())).toMatch(/: OK$/);
    const after = await reopened.sign({ csr: await createCsr(await generateKeyPair(), ID), identity: ID, ttlSeconds: 3600 });
    expect(opensslVerify(after.chain, ca.trustBundle())).toMatch(/: OK$/);
    expect(certificateFacts(after.chain[0]!).notAfter.getTime() - Date.now()).toBeLessThanOrEqual(3600_000);
  });

  it('signs with a plug-in CA: its intermediate signs, its root is the trust anchor', async () => {
    const plug = join(dir, 'plugin');
    execFileSync('mkdir', ['-p', plug]);
    const ext = join(plug, 'ext.cnf');
    writeFileSync(ext, '[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n');
    const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { cwd: plug, stdio: ['ignore', 'pipe', 'pipe'] });
    sh('openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out root-key.pem');
    sh(`openssl req -x509 -new -key root-key.pem -subj "/O=corp/CN=corp root" -days 3650 -out root-cert.pem -extensions v3_ca -config ${ext} -batch 2>/dev/null || openssl req -x509 -new -key root-key.pem -subj "/O=corp/CN=corp root" -days 3650 -out root-cert.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign`);
    sh('openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out ca-key.pem');
    sh('openssl req -new -key ca-key.pem -subj "/O=corp/CN=mesh intermediate" -out int.csr');
    sh(`openssl x509 -req -in int.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 365 -extfile ${ext} -extensions v3_ca -out cert-chain.pem`);
    const plugin = await CertificateAuthority.open({ plugin: readPluginCa(plug) });
    expect(plugin.origin).toBe('plugin');
    expect(plugin.trustBundle()[0]).toContain(readFileSync(join(plug, 'root-cert.pem'), 'utf8').trim().split('\n')[1]);
    const signed = await plugin.sign({ csr: await createCsr(await generateKeyPair(), ID), identity: ID });
    expect(signed.chain).toHaveLength(3);
    expect(new X509Certificate(signed.chain[0]!).issuer).toContain('CN=mesh intermediate');
    expect(opensslVerify(signed.chain, plugin.trustBundle())).toMatch(/: OK$/);
    // The mesh's own root does not vouch for it.
    expect(() => opensslVerify(signed.chain, ca.trustBundle())).toThrow();
    await expect(CertificateAuthority.open({ plugin: { ...readPluginCa(plug), key: readFileSync(join(plug, 'root-key.pem'), 'utf8') } }))
      .rejects.toThrow(/the key does not belong to the signing certificate/);
    expect(() => readPluginCa(join(dir, 'nowhere'))).toThrow(/root-cert\.pem is missing/);
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
