/**
 * The mesh CA: a self-made root (ECDSA P-256, created on first start and persisted through a
 * CaStore) or a plug-in CA (the user's root, intermediates and key: ECDSA P-256/P-384 or RSA, as
 * Istio's cacerts), signing workload SVIDs: X.509 certificates whose only SAN is the workload's
 * SPIFFE ID. Workload keys are always ECDSA P-256; the CA signs with its own key's algorithm.
 *
 * Every refusal is a CaError whose code maps onto a gRPC status and whose message says exactly
 * what was wrong with the request.
 */
import { webcrypto, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  type CaKey, certificateFacts, EC_P256, exportPrivateKeyPem, generateKeyPair, importCaKeyPem, randomSerial, sanNames, SIGNING, splitPemBundle, type CryptoKey, x509,
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

/**
 * A user-supplied CA, as Istio's plug-in `cacerts`: the signing certificate and its key, the
 * intermediates up to the root, and the root(s) clients trust.
 */
export interface PluginCaFiles {
  /** PEM of the root (the trust anchor served to clients); several roots while one replaces another. */
  rootCert: string;
  /**
   * PEM chain: the signing certificate first (unless `caCert` gives it), then any intermediates,
   * optionally the root. Istio's tooling writes [signing, root]; older docs left it empty when the
   * root itself signs. Intermediates are found by issuer, so their order does not matter.
   */
  certChain: string;
  /** PEM key of the signing certificate: PKCS#8, SEC1 EC or PKCS#1 RSA. */
  key: string;
  /** Istio's `ca-cert.pem`: the signing certificate alone, when it is given apart from the chain. */
  caCert?: string;
  /** Where each part was read from, for messages; the file names when absent. */
  paths?: Partial<Record<'rootCert' | 'certChain' | 'key' | 'caCert', string>>;
}

/** The file names of a plug-in CA directory (and of the `ambit-ca` Secret's keys), as Istio's cacerts. */
export const PLUGIN_CA_FILES = { rootCert: 'root-cert.pem', certChain: 'cert-chain.pem', key: 'ca-key.pem', caCert: 'ca-cert.pem' } as const;

/**
 * Reads a plug-in CA directory: root-cert.pem and ca-key.pem, and cert-chain.pem or ca-cert.pem
 * (or both). Only presence is checked here; `checkCaFiles` checks what they hold.
 */
export function readPluginCa(dir: string): PluginCaFiles {
  const path = (name: string) => join(dir, name);
  const read = (name: string) => (existsSync(path(name)) ? readFileSync(path(name), 'utf8') : undefined);
  const expected = `expected ${PLUGIN_CA_FILES.rootCert}, ${PLUGIN_CA_FILES.key}, and ${PLUGIN_CA_FILES.certChain} or ${PLUGIN_CA_FILES.caCert}`;
  const required = (name: string) => {
    const text = read(name);
    if (text === undefined) throw new CaError('FAILED_PRECONDITION', `plug-in CA: ${path(name)} is missing (${expected})`);
    return text;
  };
  const rootCert = required(PLUGIN_CA_FILES.rootCert);
  const key = required(PLUGIN_CA_FILES.key);
  const certChain = read(PLUGIN_CA_FILES.certChain);
  const caCert = read(PLUGIN_CA_FILES.caCert);
  if (certChain === undefined && caCert === undefined) {
    throw new CaError('FAILED_PRECONDITION', `plug-in CA: ${dir} has neither ${PLUGIN_CA_FILES.certChain} nor ${PLUGIN_CA_FILES.caCert} (${expected})`);
  }
  return {
    rootCert, key, certChain: certChain ?? '', ...(caCert === undefined ? {} : { caCert }),
    paths: {
      rootCert: path(PLUGIN_CA_FILES.rootCert), key: path(PLUGIN_CA_FILES.key),
      certChain: path(PLUGIN_CA_FILES.certChain), ...(caCert === undefined ? {} : { caCert: path(PLUGIN_CA_FILES.caCert) }),
    },
  };
}

/** A CA whose files passed every check: what it signs with and what it serves. */
export interface CheckedCa {
  key: CaKey;
  signingCert: x509.X509Certificate;
  /** PEM, the signing certificate first, the root it leads to last. */
  chain: string[];
  /** PEM, every root of root-cert.pem. */
  roots: string[];
}

/** Longest chain followed from the signing certificate to a root. */
const MAX_CHAIN = 8;

interface Cert { pem: string; node: X509Certificate; x: x509.X509Certificate; file: string }

function parseCerts(text: string, file: string): Cert[] {
  return splitPemBundle(text).map((pem, i) => {
    try {
      return { pem, node: new X509Certificate(pem), x: new x509.X509Certificate(pem), file };
    } catch (err) {
      throw new CaError('FAILED_PRECONDITION', `${file}: certificate ${i + 1} cannot be parsed (${(err as Error).message})`);
    }
  });
}

const describeCert = (c: Cert) => `"${c.x.subject}" (${c.file})`;

/**
 * Checks a CA's files the way the controller depends on them: the key is of a kind that signs
 * and belongs to the signing certificate; every certificate from it to a root of root-cert.pem is
 * issued and signed by the next, is a CA (basicConstraints CA:TRUE, keyCertSign when keyUsage is
 * present) and is within its validity period. Every refusal names the file and what is wrong.
 */
export async function checkCaFiles(files: PluginCaFiles, now: number = Date.now()): Promise<CheckedCa> {
  const paths = {
    rootCert: files.paths?.rootCert ?? PLUGIN_CA_FILES.rootCert,
    certChain: files.paths?.certChain ?? PLUGIN_CA_FILES.certChain,
    key: files.paths?.key ?? PLUGIN_CA_FILES.key,
    caCert: files.paths?.caCert ?? PLUGIN_CA_FILES.caCert,
  };
  const fail = (message: string): never => { throw new CaError('FAILED_PRECONDITION', message); };
  const roots = parseCerts(files.rootCert, paths.rootCert);
  if (roots.length === 0) fail(`${paths.rootCert}: no PEM certificate in it`);
  const chain = parseCerts(files.certChain, paths.certChain);
  const caCert = files.caCert === undefined ? [] : parseCerts(files.caCert, paths.caCert);
  if (files.caCert !== undefined && caCert.length !== 1) fail(`${paths.caCert}: expected exactly one PEM certificate (the signing certificate), found ${caCert.length}`);
  // Istio: when ca-cert.pem is the root itself, cert-chain.pem may be empty.
  const signing = caCert[0] ?? chain[0] ?? roots[0]!;

  let key: CaKey;
  try {
    key = await importCaKeyPem(files.key);
  } catch (err) {
    return fail(`${paths.key}: ${(err as Error).message}`);
  }
  if (!signing.node.checkPrivateKey(key.keyObject)) {
    fail(`${paths.key}: the key does not belong to the signing certificate ${describeCert(signing)}`);
  }

  const path: Cert[] = [signing];
  const pool = [...caCert, ...chain];
  const isRoot = (c: Cert) => roots.some((r) => r.node.raw.equals(c.node.raw));
  let last = signing;
  while (!isRoot(last)) {
    if (last.node.checkIssued(last.node) && last.node.verify(last.node.publicKey)) {
      fail(`${last.file}: the chain ends at the self-signed ${describeCert(last)}, which is not in ${paths.rootCert}: put that root in ${paths.rootCert}, or the chain of the root that is there in ${paths.certChain}`);
    }
    const issuer = [...roots, ...pool].find((c) => !c.node.raw.equals(last.node.raw) && last.node.checkIssued(c.node));
    if (!issuer) {
      fail(`${paths.certChain}: no certificate in it or in ${paths.rootCert} issued ${describeCert(last)}, whose issuer is "${last.x.issuer}": the chain must lead from the signing certificate to a root in ${paths.rootCert}`);
    } else {
      if (!last.node.verify(issuer.node.publicKey)) fail(`${last.file}: the signature of ${describeCert(last)} does not verify with the key of its issuer ${describeCert(issuer)}`);
      if (path.some((c) => c.node.raw.equals(issuer.node.raw)) || path.length >= MAX_CHAIN) fail(`${paths.certChain}: the chain from ${describeCert(signing)} loops or is longer than ${MAX_CHAIN} certificates without reaching a root in ${paths.rootCert}`);
      path.push(issuer);
      last = issuer;
    }
  }

  for (const c of path) {
    const basic = c.x.getExtension(x509.BasicConstraintsExtension);
    if (!basic?.ca) fail(`${c.file}: ${describeCert(c)} is not a CA certificate (basicConstraints CA:TRUE is missing)`);
    const usage = c.x.getExtension(x509.KeyUsagesExtension);
    if (usage && (usage.usages & x509.KeyUsageFlags.keyCertSign) === 0) fail(`${c.file}: ${describeCert(c)} may not sign certificates (its keyUsage lacks keyCertSign)`);
    if (c.x.notAfter.getTime() <= now) fail(`${c.file}: ${describeCert(c)} expired on ${c.x.notAfter.toISOString()}`);
    if (c.x.notBefore.getTime() > now) fail(`${c.file}: ${describeCert(c)} is not valid before ${c.x.notBefore.toISOString()}`);
  }
  return { key, signingCert: signing.x, chain: path.map((c) => c.pem), roots: roots.map((r) => r.pem) };
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
    private readonly checked: CheckedCa,
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
    let files: PluginCaFiles;
    let origin: CertificateAuthority['origin'];
    if ('plugin' in source) {
      files = source.plugin;
      origin = 'plugin';
    } else {
      let material = await source.store.load();
      if (material) {
        origin = 'loaded';
      } else {
        material = await createRoot({ trustDomain, ttlSeconds: opts.rootTtlSeconds ?? 10 * 365 * 24 * HOUR, now: now() });
        await source.store.save(material);
        origin = 'created';
      }
      const where = source.store instanceof FileCaStore ? source.store.dir : 'the CA store';
      const chainFile = join(where, 'ca-cert.pem');
      const chain = material.chain.map((c) => (c.endsWith('\n') ? c : `${c}\n`));
      files = { certChain: chain.join(''), rootCert: chain[chain.length - 1] ?? '', key: material.key, paths: { certChain: chainFile, rootCert: chainFile, key: join(where, 'ca-key.pem') } };
    }
    const checked = await checkCaFiles(files, now());
    return new CertificateAuthority(checked, trustDomain, defaultTtl, maxTtl, now, origin);
  }

  /** How this CA signs, e.g. "ECDSA P-256" or "RSA 4096". */
  get keyDescription(): string {
    return this.checked.key.description;
  }

  /** The trust anchors clients verify against: every root of root-cert.pem (a self-made CA: its one root). */
  trustBundle(): string[] {
    return [...this.checked.roots];
  }

  /** The CA chain that follows a leaf: signing certificate up to the root. */
  caChain(): string[] {
    return [...this.checked.chain];
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
    const caNotAfter = this.checked.signingCert.notAfter;
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
      issuer: this.checked.signingCert.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter,
      // The CA key's own algorithm (ECDSA P-384 signs with SHA-384, RSA with SHA-256), as Istio's CA does.
      signingAlgorithm: this.checked.key.algorithm,
      publicKey,
      signingKey: this.checked.key.signingKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension(sans, true),
        await this.authorityKeyId(),
      ],
    });
    return { chain: [`${cert.toString('pem')}\n`, ...this.checked.chain], serial, notAfter };
  }

  private akid?: Promise<x509.AuthorityKeyIdentifierExtension>;
  /** Computed once: it hashes the CA's public key. */
  private authorityKeyId(): Promise<x509.AuthorityKeyIdentifierExtension> {
    this.akid ??= x509.AuthorityKeyIdentifierExtension.create(this.checked.signingCert);
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

export interface RootOptions {
  trustDomain: string;
  ttlSeconds: number;
  /** The root's organization (O=); default "ambit". */
  org?: string;
  /** Epoch ms the root's validity starts from (less a minute for clock skew). */
  now: number;
}

/** A new self-signed ECDSA P-256 root: CA:TRUE, keyCertSign and cRLSign, PKCS#8 key. */
export async function createRoot(opts: RootOptions): Promise<CaMaterial> {
  const keys = await generateKeyPair();
  const org = opts.org ?? 'ambit';
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    // As JSON, so that an organization with a comma or an equals sign stays one attribute.
    name: [{ O: [org] }, { CN: [`${org} root CA for ${opts.trustDomain}`] }],
    notBefore: new Date(opts.now - BACKDATE_MS),
    notAfter: new Date(opts.now + opts.ttlSeconds * 1000),
    signingAlgorithm: SIGNING,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { chain: [`${cert.toString('pem')}\n`], key: await exportPrivateKeyPem(keys.privateKey) };
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
