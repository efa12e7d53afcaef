/**
 * The mesh CA: a self-made root (ECDSA P-256, created on first start and persisted through a
 * CaStore) or a plug-in CA (the user's root, intermediate and key), signing workload SVIDs:
 * X.509 certificates whose only SAN is the workload's SPIFFE ID.
 *
 * Every refusal is a CaError whose code maps onto a gRPC status and whose message says exactly
 * what was wrong with the request.
 */
import { webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  certificateFacts, EC_P256, exportPrivateKeyPem, sanNames, type CryptoKey, type EcKeyImportParams, generateKeyPair, importPrivateKeyPem, randomSerial, SIGNING, splitPemBundle, x509,
} from './pki.js';
import { DEFAULT_TRUST_DOMAIN, parseSpiffeId, SpiffeIdError } from './spiffe.js';

export type CaErrorCode = 'INVALID_ARGUMENT' | 'PERMISSION_DENIED' | 'UNAUTHENTICATED' | 'FAILED_PRECONDITION';

export class CaError extends Error {
  override readonly name = 'CaError';
  constructor(readonly code: CaErrorCode, message: string) {
    super(message);
  }
}

/** The CA's signing material: the signing certificate first, the root last, and the signing key. */
export interface CaMaterial {
  chain: string[];
  key: string;
}

/** Where a self-made root lives between starts: the state directory locally, a Secret in Kubernetes. */
export interface CaStore {
  load(): Promise<CaMaterial | undefined>;
  save(material: CaMaterial): Promise<void>;
}

/** A CaStore in a directory: `ca-cert.pem` (chain) and `ca-key.pem` (mode 0600). */
export class FileCaStore implements CaStore {
  constructor(readonly dir: string) {}

  load(): Promise<CaMaterial | undefined> {
    const certFile = join(this.dir, 'ca-cert.pem');
    const keyFile = join(this.dir, 'ca-key.pem');
    if (!existsSync(certFile) || !existsSync(keyFile)) return Promise.resolve(undefined);
    return Promise.resolve({ chain: splitPemBundle(readFileSync(certFile, 'utf8')), key: readFileSync(keyFile, 'utf8') });
  }

  save(material: CaMaterial): Promise<void> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const write = (name: string, text: string, mode: number) => {
      const tmp = join(this.dir, `.${name}.tmp`);
      writeFileSync(tmp, text, { mode });
      chmodSync(tmp, mode);
      renameSync(tmp, join(this.dir, name));
    };
    // Key first: a crash between the two leaves no certificate without its key.
    write('ca-key.pem', material.key, 0o600);
    write('ca-cert.pem', material.chain.join(''), 0o644);
    return Promise.resolve();
  }
}

/** A user-supplied CA (Istio's "plug-in CA" files): the intermediate signs, the root is the trust anchor. */
export interface PluginCaFiles {
  /** PEM of the root (the trust anchor served to clients). */
  rootCert: string;
  /** PEM of the signing certificate, optionally followed by intermediates up to (not including) the root. */
  certChain: string;
  /** PEM PKCS#8 key of the signing certificate. */
  key: string;
}

export function readPluginCa(dir: string): PluginCaFiles {
  const read = (name: string) => {
    const path = join(dir, name);
    if (!existsSync(path)) throw new CaError('FAILED_PRECONDITION', `plug-in CA: ${path} is missing (expected root-cert.pem, cert-chain.pem, ca-key.pem)`);
    return readFileSync(path, 'utf8');
  };
  return { rootCert: read('root-cert.pem'), certChain: read('cert-chain.pem'), key: read('ca-key.pem') };
}

export interface CaOptions {
  trustDomain?: string;
  /** Default 24 h. */
  defaultTtlSeconds?: number;
  /** Default 7 days; a request over it is refused. */
  maxTtlSeconds?: number;
  /** Root lifetime for a self-made root; default 10 years. */
  rootTtlSeconds?: number;
  now?: () => number;
}

export interface SignRequest {
  csr: string;
  /** The identity the caller asks for; the CSR's SAN must be exactly this. */
  identity: string;
  /** 0 or absent: the default TTL. */
  ttlSeconds?: number;
}

export interface SignedCertificate {
  /** Leaf first, then the CA chain up to and including the root. */
  chain: string[];
  serial: string;
  notAfter: Date;
}

const HOUR = 3600;
/** Certificates start a minute in the past: the peer's clock may be a little behind. */
const BACKDATE_MS = 60_000;

export class CertificateAuthority {
  private constructor(
    private readonly signingKey: CryptoKey,
    private readonly signingCert: x509.X509Certificate,
    /** Signing certificate first, root last. */
    private readonly chain: string[],
    readonly trustDomain: string,
    readonly defaultTtlSeconds: number,
    readonly maxTtlSeconds: number,
    private readonly now: () => number,
    readonly origin: 'created' | 'loaded' | 'plugin',
  ) {}

  /** Opens the CA: the plug-in files when given, else the stored root, else a new root (then stored). */
  static async open(source: { store: CaStore } | { plugin: PluginCaFiles }, opts: CaOptions = {}): Promise<CertificateAuthority> {
    const trustDomain = opts.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const defaultTtl = opts.defaultTtlSeconds ?? 24 * HOUR;
    const maxTtl = opts.maxTtlSeconds ?? 7 * 24 * HOUR;
    if (defaultTtl > maxTtl) throw new CaError('FAILED_PRECONDITION', `default TTL ${defaultTtl}s is over the maximum TTL ${maxTtl}s`);
    const now = opts.now ?? Date.now;
    let material: CaMaterial;
    let origin: CertificateAuthority['origin'];
    if ('plugin' in source) {
      material = { chain: [...splitPemBundle(source.plugin.certChain), ...splitPemBundle(source.plugin.rootCert)], key: source.plugin.key };
      origin = 'plugin';
    } else {
      const stored = await source.store.load();
      if (stored) {
        material = stored;
        origin = 'loaded';
      } else {
        material = await createRoot(trustDomain, opts.rootTtlSeconds ?? 10 * 365 * 24 * HOUR, now);
        await source.store.save(material);
        origin = 'created';
      }
    }
    material = { ...material, chain: material.chain.map((c) => (c.endsWith('\n') ? c : `${c}\n`)) };
    if (material.chain.length === 0) throw new CaError('FAILED_PRECONDITION', 'CA: no certificate in the chain');
    const signingCert = new x509.X509Certificate(material.chain[0]!);
    let key: CryptoKey;
    try {
      key = await importPrivateKeyPem(material.key, signingCert.publicKey.algorithm as EcKeyImportParams);
    } catch (err) {
      throw new CaError('FAILED_PRECONDITION', `CA: the key cannot be read as PKCS#8 ECDSA: ${(err as Error).message}`);
    }
    await checkKeyMatches(key, signingCert);
    const basic = signingCert.getExtension(x509.BasicConstraintsExtension);
    if (!basic?.ca) throw new CaError('FAILED_PRECONDITION', `CA: the signing certificate ${signingCert.subject} is not a CA (basicConstraints CA:FALSE)`);
    return new CertificateAuthority(key, signingCert, material.chain, trustDomain, defaultTtl, maxTtl, now, origin);
  }

  /** The trust anchors clients verify against (the root). */
  trustBundle(): string[] {
    return [this.chain[this.chain.length - 1]!];
  }

  /** The CA chain that follows a leaf: signing certificate up to the root. */
  caChain(): string[] {
    return [...this.chain];
  }

  /** Checks a CSR and signs it for `identity`. */
  async sign(req: SignRequest): Promise<SignedCertificate> {
    const id = this.checkIdentity(req.identity);
    const ttl = this.checkTtl(req.ttlSeconds);
    const csr = await checkCsr(req.csr, req.identity);
    return this.issue(csr.publicKey, { uris: [id] }, ttl);
  }

  /** A serving certificate for ambit's own endpoints (the CA and discovery server): DNS and IP SANs. */
  async issueServing(publicKey: CryptoKey, names: { dns?: string[]; ips?: string[] }, ttlSeconds = 365 * 24 * HOUR): Promise<SignedCertificate> {
    return this.issue(new x509.PublicKey(await webcrypto.subtle.exportKey('spki', publicKey)), names, ttlSeconds);
  }

  private async issue(publicKey: x509.PublicKey, names: { uris?: string[]; dns?: string[]; ips?: string[] }, ttlSeconds: number): Promise<SignedCertificate> {
    const now = this.now();
    const notAfter = new Date(now + ttlSeconds * 1000);
    const caNotAfter = this.signingCert.notAfter;
    if (notAfter > caNotAfter) throw new CaError('FAILED_PRECONDITION', `the CA certificate expires at ${caNotAfter.toISOString()}, before the requested ${notAfter.toISOString()}`);
    const serial = randomSerial();
    const sans = [
      ...(names.uris ?? []).map((value) => ({ type: 'url' as const, value })),
      ...(names.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
      ...(names.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
    ];
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      // Workload SVIDs carry their identity in the SAN only (SPIFFE X.509-SVID), so the subject names the trust domain.
      subject: `O=${this.trustDomain}`,
      issuer: this.signingCert.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter,
      signingAlgorithm: SIGNING,
      publicKey,
      signingKey: this.signingKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension(sans, true),
        await this.authorityKeyId(),
      ],
    });
    return { chain: [`${cert.toString('pem')}\n`, ...this.chain], serial, notAfter };
  }

  private akid?: Promise<x509.AuthorityKeyIdentifierExtension>;
  /** Computed once: it hashes the CA's public key. */
  private authorityKeyId(): Promise<x509.AuthorityKeyIdentifierExtension> {
    this.akid ??= x509.AuthorityKeyIdentifierExtension.create(this.signingCert);
    return this.akid;
  }

  private checkIdentity(identity: string): string {
    try {
      const id = parseSpiffeId(identity);
      if (id.trustDomain !== this.trustDomain) throw new CaError('INVALID_ARGUMENT', `identity ${identity} is outside this CA's trust domain "${this.trustDomain}"`);
      return identity;
    } catch (err) {
      if (err instanceof SpiffeIdError) throw new CaError('INVALID_ARGUMENT', `identity: ${err.message}`);
      throw err;
    }
  }

  private checkTtl(ttl: number | undefined): number {
    if (ttl === undefined || ttl === 0) return this.defaultTtlSeconds;
    if (!Number.isInteger(ttl) || ttl < 0) throw new CaError('INVALID_ARGUMENT', `validity_duration must be a whole number of seconds >= 0, got ${ttl}`);
    if (ttl > this.maxTtlSeconds) throw new CaError('INVALID_ARGUMENT', `requested TTL ${ttl}s is over the maximum ${this.maxTtlSeconds}s`);
    return ttl;
  }
}

async function createRoot(trustDomain: string, ttlSeconds: number, now: () => number): Promise<CaMaterial> {
  const keys = await generateKeyPair();
  const t = now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `O=ambit, CN=ambit root CA for ${trustDomain}`,
    notBefore: new Date(t - BACKDATE_MS),
    notAfter: new Date(t + ttlSeconds * 1000),
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { chain: [cert.toString('pem')], key: await exportPrivateKeyPem(keys.privateKey) };
}

async function checkKeyMatches(key: CryptoKey, cert: x509.X509Certificate): Promise<void> {
  const probe = Buffer.from('ambit ca key check');
  const signature = await webcrypto.subtle.sign({ ...SIGNING }, key, probe);
  const publicKey = await cert.publicKey.export(cert.publicKey.algorithm as EcKeyImportParams, ['verify']);
  if (!(await webcrypto.subtle.verify({ ...SIGNING }, publicKey, signature, probe))) {
    throw new CaError('FAILED_PRECONDITION', `CA: the key does not belong to the signing certificate ${cert.subject}`);
  }
}

/**
 * Parses and checks a CSR: PEM PKCS#10, signature, an ECDSA P-256 key, and a SAN that is exactly
 * `identity`. The parser reads parts of the request lazily, so a malformed key or extension can
 * throw from any step: every such error is the caller's bad request, and says so.
 */
async function checkCsr(pem: string, identity: string): Promise<x509.Pkcs10CertificateRequest> {
  try {
    return await readCsr(pem, identity);
  } catch (err) {
    if (err instanceof CaError) throw err;
    throw new CaError('INVALID_ARGUMENT', `csr: a malformed part of the request cannot be read (${(err as Error).message})`);
  }
}

async function readCsr(pem: string, identity: string): Promise<x509.Pkcs10CertificateRequest> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch (err) {
    throw new CaError('INVALID_ARGUMENT', `csr: not a PEM PKCS#10 certificate request (${(err as Error).message})`);
  }
  const alg = csr.publicKey.algorithm as { name: string; namedCurve?: string };
  if (alg.name !== EC_P256.name || alg.namedCurve !== EC_P256.namedCurve) {
    throw new CaError('INVALID_ARGUMENT', `csr: key type ${alg.name}${alg.namedCurve ? ` ${alg.namedCurve}` : ''} is not allowed; use ECDSA P-256`);
  }
  let valid = false;
  try {
    valid = await csr.verify();
  } catch { /* treated as invalid */ }
  if (!valid) throw new CaError('INVALID_ARGUMENT', 'csr: the signature does not verify with the request\'s own key');
  const names = sanNames(csr);
  const uris = names.filter((n) => n.type === 'url').map((n) => n.value);
  const others = names.filter((n) => n.type !== 'url');
  if (uris.length !== 1 || uris[0] !== identity || others.length > 0) {
    const found = names.map((n) => `${n.type}:${n.value}`).join(', ') || 'none';
    throw new CaError('INVALID_ARGUMENT', `csr: the SAN must be exactly URI ${identity} (found ${found})`);
  }
  return csr;
}

export { certificateFacts };
