/**
 * The mesh CA with openssl: SVIDs checked with Debian's openssl (and Node's X509Certificate),
 * persistence across restarts, plug-in CAs made with openssl as operators make them (RSA root and
 * intermediate as Istio's tools/certs, SEC1 EC keys from `openssl ecparam`), and every refusal of
 * a plug-in CA's files. The CA in process and refused CSRs: test/unit/identity-ca.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CertificateAuthority, checkCaFiles, FileCaStore, readPluginCa, type PluginCaFiles } from '../../src/identity/ca.js';
import { certificateFacts, createCsr, exportPrivateKeyPem, generateKeyPair, x509 } from '../../src/identity/pki.js';
import { refusal } from '../helpers/refusal.js';
import { describeAsRoot } from './helpers/root.js';

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

beforeAll(async () => {
  ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'state')) });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describeAsRoot('CertificateAuthority, checked with openssl', () => {
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
    // The mesh's own root does not vouch for it: openssl says why.
    expect(() => opensslVerify(signed.chain, ca.trustBundle())).toThrow(/unable to get (local )?issuer certificate[\s\S]*verification failed/);
    await expect(CertificateAuthority.open({ plugin: { ...readPluginCa(plug), key: readFileSync(join(plug, 'root-key.pem'), 'utf8') } }))
      .rejects.toThrow(/the key does not belong to the signing certificate/);
    expect(() => readPluginCa(join(dir, 'nowhere'))).toThrow(/root-cert\.pem is missing/);
  });
});

/** Runs a shell line in `cwd` (openssl's pipes and redirections), failing with its stderr. */
function sh(cwd: string, cmd: string): string {
  return execFileSync('sh', ['-c', cmd], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** openssl config sections for a CA certificate, in the shape of Istio's tools/certs (root and intermediate). */
function caConf(dir: string, name: string, dn: string, ext: string): string {
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, [
    '[ req ]', 'encrypt_key = no', 'prompt = no', 'utf8 = yes', 'default_md = sha256',
    'req_extensions = req_ext', 'x509_extensions = req_ext', 'distinguished_name = req_dn',
    '[ req_ext ]', 'subjectKeyIdentifier = hash', ext,
    '[ req_dn ]', dn, '',
  ].join('\n'));
  return file;
}

const CA_USAGE = 'keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign';

/**
 * A root and an intermediate made by openssl the way Istio's tools/certs Makefile makes them
 * (self-signed root, intermediate signed by it with pathlen:0, cert-chain.pem = ca-cert.pem +
 * root-cert.pem), with the keys given by `keygen` (a shell line writing $OUT).
 */
function opensslCa(dir: string, opts: { rootKey: string; caKey: string; caExt?: string; days?: number }): string {
  mkdirSync(dir, { recursive: true });
  const rootConf = caConf(dir, 'root', 'O = Istio\nCN = Root CA', `basicConstraints = critical, CA:true\n${CA_USAGE}`);
  const caConfFile = caConf(dir, 'ca', 'O = Istio\nCN = Intermediate CA\nL = cluster1',
    opts.caExt ?? `basicConstraints = critical, CA:true, pathlen:0\n${CA_USAGE}\nsubjectAltName = DNS:istiod.istio-system.svc`);
  sh(dir, opts.rootKey.replaceAll('$OUT', 'root-key.pem'));
  sh(dir, `openssl req -new -key root-key.pem -config ${rootConf} -out root-cert.csr`);
  sh(dir, `openssl x509 -req -days 3650 -signkey root-key.pem -extensions req_ext -extfile ${rootConf} -in root-cert.csr -out root-cert.pem`);
  sh(dir, opts.caKey.replaceAll('$OUT', 'ca-key.pem'));
  sh(dir, `openssl req -new -key ca-key.pem -config ${caConfFile} -out ca-cert.csr`);
  sh(dir, `openssl x509 -req -days ${opts.days ?? 730} -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -extensions req_ext -extfile ${caConfFile} -in ca-cert.csr -out ca-cert.pem`);
  sh(dir, 'cat ca-cert.pem root-cert.pem > cert-chain.pem');
  return dir;
}

/** A workload's certificate from `ca` and its key, as Node's TLS takes them. */
async function workload(ca: CertificateAuthority, identity: string): Promise<{ cert: string; key: string; chain: string[] }> {
  const keys = await generateKeyPair();
  const signed = await ca.sign({ csr: await createCsr(keys, identity), identity });
  return { cert: signed.chain.slice(0, -1).join(''), key: await exportPrivateKeyPem(keys.privateKey), chain: signed.chain };
}

/**
 * Mutual TLS between two workloads of `ca`, each verifying the other against the CA's trust
 * bundle only: resolves with the identity each side saw, rejects on any verification failure.
 */
async function mutualTls(ca: CertificateAuthority, serverId: string, clientId: string): Promise<{ server: string; client: string }> {
  const [s, c] = [await workload(ca, serverId), await workload(ca, clientId)];
  const roots = ca.trustBundle();
  const peerUri = (sock: TLSSocket) => sock.getPeerX509Certificate()?.subjectAltName ?? 'none';
  let serverSaw = '';
  const server = createServer({ cert: s.cert, key: s.key, ca: roots, requestCert: true, rejectUnauthorized: true }, (sock) => {
    serverSaw = peerUri(sock);
    sock.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const port = (server.address() as { port: number }).port;
    const clientSaw = await new Promise<string>((resolve, reject) => {
      // The SVID names a SPIFFE ID, not a host: the peer is checked by the chain here and by its URI below.
      const sock = connect({ host: '127.0.0.1', port, cert: c.cert, key: c.key, ca: roots, checkServerIdentity: () => undefined }, () => {
        const seen = peerUri(sock);
        sock.on('data', () => undefined).on('end', () => resolve(seen));
      });
      sock.on('error', reject);
    });
    await expect.poll(() => serverSaw).not.toBe('');
    return { server: serverSaw, client: clientSaw };
  } finally {
    server.close();
  }
}

describeAsRoot('plug-in CAs as operators make them with openssl', () => {
  const CLIENT = 'spiffe://cluster.local/ns/shop/sa/orders';

  it('an RSA 4096 root and intermediate as Istio\'s tools/certs (PKCS#1 intermediate key): RSA-SHA256 SVIDs that openssl and Node\'s TLS accept', async () => {
    const plug = opensslCa(join(dir, 'istio-rsa'), { rootKey: 'openssl genrsa -out $OUT 4096', caKey: 'openssl genrsa -traditional -out $OUT 4096' });
    expect(readFileSync(join(plug, 'ca-key.pem'), 'utf8')).toMatch(/^-----BEGIN RSA PRIVATE KEY-----/);
    const rsa = await CertificateAuthority.open({ plugin: readPluginCa(plug) });
    expect(rsa.keyDescription).toBe('RSA 4096');
    expect(rsa.trustBundle()).toEqual([readFileSync(join(plug, 'root-cert.pem'), 'utf8')]);
    expect(rsa.caChain()).toEqual([readFileSync(join(plug, 'ca-cert.pem'), 'utf8'), readFileSync(join(plug, 'root-cert.pem'), 'utf8')]);
    const { chain } = await workload(rsa, ID);
    expect(chain).toHaveLength(3);
    const leaf = new X509Certificate(chain[0]!);
    expect(leaf.checkIssued(new X509Certificate(chain[1]!))).toBe(true);
    expect(leaf.verify(new X509Certificate(chain[1]!).publicKey)).toBe(true);
    expect(leaf.publicKey.asymmetricKeyDetails).toMatchObject({ namedCurve: 'prime256v1' }); // workload keys stay P-256
    writeFileSync(join(dir, 'leaf.pem'), chain[0]!);
    expect(openssl('x509', '-noout', '-text', '-in', join(dir, 'leaf.pem'))).toMatch(/Signature Algorithm: sha256WithRSAEncryption/);
    expect(opensslVerify(chain, rsa.trustBundle())).toMatch(/: OK$/);
    expect(await mutualTls(rsa, ID, CLIENT)).toEqual({ server: `URI:${CLIENT}`, client: `URI:${ID}` });
  });

  it('a SEC1 P-384 key from `openssl ecparam -genkey` (parameters block first) on an intermediate: ECDSA-SHA384 SVIDs', async () => {
    const plug = opensslCa(join(dir, 'ec384'), { rootKey: 'openssl ecparam -name secp384r1 -genkey -noout -out $OUT', caKey: 'openssl ecparam -name secp384r1 -genkey -out $OUT' });
    expect(readFileSync(join(plug, 'ca-key.pem'), 'utf8')).toMatch(/^-----BEGIN EC PARAMETERS-----[\s\S]+-----BEGIN EC PRIVATE KEY-----/);
    const ec = await CertificateAuthority.open({ plugin: readPluginCa(plug) });
    expect(ec.keyDescription).toBe('ECDSA P-384');
    const { chain } = await workload(ec, ID);
    writeFileSync(join(dir, 'leaf.pem'), chain[0]!);
    expect(openssl('x509', '-noout', '-text', '-in', join(dir, 'leaf.pem'))).toMatch(/Signature Algorithm: ecdsa-with-SHA384/);
    expect(opensslVerify(chain, ec.trustBundle())).toMatch(/: OK$/);
    expect(await mutualTls(ec, ID, CLIENT)).toEqual({ server: `URI:${CLIENT}`, client: `URI:${ID}` });
  });

  it('a self-signed SEC1 P-256 root that signs itself, given as ca-cert.pem with an empty cert-chain.pem (Istio\'s older layout)', async () => {
    const plug = join(dir, 'root-only');
    mkdirSync(plug, { recursive: true });
    const conf = caConf(plug, 'root', 'O = corp\nCN = corp mesh root', `basicConstraints = critical, CA:true\n${CA_USAGE}`);
    sh(plug, 'openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem');
    sh(plug, `openssl req -x509 -new -key ca-key.pem -config ${conf} -extensions req_ext -days 365 -out root-cert.pem`);
    copyFileSync(join(plug, 'root-cert.pem'), join(plug, 'ca-cert.pem'));
    writeFileSync(join(plug, 'cert-chain.pem'), '');
    const ec = await CertificateAuthority.open({ plugin: readPluginCa(plug) });
    expect(ec.caChain()).toEqual([readFileSync(join(plug, 'root-cert.pem'), 'utf8')]);
    const { chain } = await workload(ec, ID);
    expect(chain).toHaveLength(2);
    expect(opensslVerify(chain, ec.trustBundle())).toMatch(/: OK$/);
    expect(await mutualTls(ec, ID, CLIENT)).toEqual({ server: `URI:${CLIENT}`, client: `URI:${ID}` });
  });
});

describeAsRoot('plug-in CA refusals', () => {
  // One EC CA (fast to make) whose files each test spoils in its own way.
  let base: string;
  let good: PluginCaFiles;
  const file = (name: string) => readFileSync(join(base, name), 'utf8');
  const paths = () => ({ rootCert: join(base, 'root-cert.pem'), certChain: join(base, 'cert-chain.pem'), key: join(base, 'ca-key.pem'), caCert: join(base, 'ca-cert.pem') });
  const refused = async (files: Partial<PluginCaFiles>, now?: number) => refusal(checkCaFiles({ ...good, ...files }, now));
  const INTERMEDIATE = () => `"O=Istio, CN=Intermediate CA, L=cluster1" (${paths().caCert})`;

  beforeAll(() => {
    base = opensslCa(join(dir, 'refusals'), { rootKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT', caKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT' });
    good = readPluginCa(base);
  });

  it('takes the unspoilt files, so each refusal below is the spoilt part', async () => {
    const checked = await checkCaFiles(good);
    expect(checked.chain).toEqual([file('ca-cert.pem'), file('root-cert.pem')]);
    expect(checked.key.description).toBe('ECDSA P-256');
  });

  it('refuses a directory without the files, naming them', () => {
    const empty = join(dir, 'empty-ca');
    mkdirSync(empty, { recursive: true });
    expect(() => readPluginCa(empty)).toThrow(`plug-in CA: ${join(empty, 'root-cert.pem')} is missing (expected root-cert.pem, ca-key.pem, and cert-chain.pem or ca-cert.pem)`);
    writeFileSync(join(empty, 'root-cert.pem'), file('root-cert.pem'));
    writeFileSync(join(empty, 'ca-key.pem'), file('ca-key.pem'));
    expect(() => readPluginCa(empty)).toThrow(`plug-in CA: ${empty} has neither cert-chain.pem nor ca-cert.pem`);
  });

  it('refuses keys that cannot sign or cannot be read', async () => {
    const keyFile = paths().key;
    const gen = (cmd: string) => sh(dir, `${cmd} 2>/dev/null`);
    expect((await refused({ key: 'not a key' })).message).toBe(`${keyFile}: no PEM private key in it (expected a "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY" or "BEGIN RSA PRIVATE KEY" block)`);
    expect((await refused({ key: gen('openssl genrsa 1024') })).message).toBe(`${keyFile}: RSA key of 1024 bits is too short; use 2048 bits or more`);
    expect((await refused({ key: gen('openssl genpkey -algorithm ed25519') })).message).toBe(`${keyFile}: ed25519 keys are not supported; use ECDSA P-256, P-384 or RSA (2048 bits or more)`);
    expect((await refused({ key: gen('openssl ecparam -name secp521r1 -genkey -noout') })).message).toBe(`${keyFile}: ECDSA key on curve secp521r1 is not supported; use P-256 (prime256v1) or P-384 (secp384r1)`);
    expect((await refused({ key: gen('openssl genrsa -aes128 -passout pass:secret 2048') })).message).toMatch(new RegExp(`^${keyFile}: the key is encrypted`));
    expect((await refused({ key: gen('openssl genrsa -traditional -aes128 -passout pass:secret 2048') })).message).toMatch(/the key is encrypted; the controller cannot be given a passphrase/);
    expect((await refused({ key: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' })).message).toMatch(new RegExp(`^${keyFile}: the key cannot be read`));
  });

  it('refuses a key that is not the signing certificate\'s', async () => {
    expect((await refused({ key: file('root-key.pem') })).message)
      .toBe(`${paths().key}: the key does not belong to the signing certificate ${INTERMEDIATE()}`);
  });

  it('refuses a chain that does not lead to the root, and a signature that does not verify', async () => {
    const other = opensslCa(join(dir, 'other'), { rootKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT', caKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT' });
    const otherRoot = readFileSync(join(other, 'root-cert.pem'), 'utf8');
    expect((await refused({ rootCert: otherRoot })).message).toBe(
      `${paths().certChain}: the chain ends at the self-signed "O=Istio, CN=Root CA" (${paths().certChain}), which is not in ${paths().rootCert}: put that root in ${paths().rootCert}, or the chain of the root that is there in ${paths().certChain}`,
    );
    expect((await refused({ rootCert: otherRoot, certChain: file('ca-cert.pem') })).message).toBe(
      `${paths().certChain}: no certificate in it or in ${paths().rootCert} issued ${INTERMEDIATE()}, whose issuer is "O=Istio, CN=Root CA": the chain must lead from the signing certificate to a root in ${paths().rootCert}`,
    );
    expect((await refused({ rootCert: '' })).message).toBe(`${paths().rootCert}: no PEM certificate in it`);
    // The intermediate with its signature's last bytes flipped: same names, so only the signature check can catch it.
    const der = Buffer.from(new x509.X509Certificate(file('ca-cert.pem')).rawData);
    der[der.length - 3]! ^= 0xff;
    const tampered = `${x509.PemConverter.encode(der, 'CERTIFICATE')}\n`;
    expect((await refused({ caCert: tampered, certChain: tampered })).message).toBe(
      `${paths().caCert}: the signature of ${INTERMEDIATE()} does not verify with the key of its issuer "O=Istio, CN=Root CA" (${paths().rootCert})`,
    );
  });

  it('refuses a signing certificate that is not a CA, or may not sign certificates', async () => {
    const leafCa = opensslCa(join(dir, 'not-ca'), {
      rootKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT', caKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT',
      caExt: 'basicConstraints = critical, CA:false\nkeyUsage = critical, digitalSignature',
    });
    const files = (d: string) => ({ ...readPluginCa(d), paths: undefined });
    expect((await refusal(checkCaFiles(files(leafCa)))).message).toBe('ca-cert.pem: "O=Istio, CN=Intermediate CA, L=cluster1" (ca-cert.pem) is not a CA certificate (basicConstraints CA:TRUE is missing)');
    const noSign = opensslCa(join(dir, 'no-certsign'), {
      rootKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT', caKey: 'openssl ecparam -name prime256v1 -genkey -noout -out $OUT',
      caExt: 'basicConstraints = critical, CA:true\nkeyUsage = critical, digitalSignature, cRLSign',
    });
    expect((await refusal(checkCaFiles(files(noSign)))).message).toBe('ca-cert.pem: "O=Istio, CN=Intermediate CA, L=cluster1" (ca-cert.pem) may not sign certificates (its keyUsage lacks keyCertSign)');
  });

  it('refuses a CA outside its validity period, naming the certificate and the date', async () => {
    const notAfter = new X509Certificate(file('ca-cert.pem')).validTo;
    const later = Date.parse(notAfter) + 1000;
    expect((await refused({}, later)).message).toBe(`${paths().caCert}: ${INTERMEDIATE()} expired on ${new Date(Date.parse(notAfter)).toISOString()}`);
    const notBefore = Date.parse(new X509Certificate(file('ca-cert.pem')).validFrom);
    expect((await refused({}, notBefore - 3600_000)).message).toMatch(/^.*ca-cert\.pem: "O=Istio, CN=Intermediate CA, L=cluster1" \(.*\) is not valid before /);
    // The controller refuses to start on it the same way.
    await expect(CertificateAuthority.open({ plugin: readPluginCa(base) }, { now: () => later })).rejects.toThrow(/expired on/);
  });
});
