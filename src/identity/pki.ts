/**
 * X.509 and key plumbing over WebCrypto and @peculiar/x509: ECDSA P-256 keys, PKCS#10 CSRs
 * with a SPIFFE URI SAN, CA keys in the PEM forms operators bring, and the facts about a
 * certificate the rest of ambit shows.
 */
import { createPrivateKey, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export type CryptoKey = webcrypto.CryptoKey;
export type KeyPair = webcrypto.CryptoKeyPair;
export type EcKeyImportParams = webcrypto.EcKeyImportParams;

export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256' } as const;
export const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;

export async function generateKeyPair(): Promise<KeyPair> {
  // Extractable: Node's TLS takes the private key as a KeyObject (see privateKeyObject).
  return webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']) as Promise<KeyPair>;
}

/** The private key as Node's KeyObject: usable by tls, never printed (it inspects as an opaque object). */
export async function privateKeyObject(key: CryptoKey): Promise<KeyObject> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

export async function importPrivateKeyPem(pem: string, algorithm: EcKeyImportParams = EC_P256): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block in the key');
  return webcrypto.subtle.importKey('pkcs8', der, algorithm, true, ['sign']);
}

/** How a CA key signs: ECDSA with the hash that matches its curve, or RSA PKCS#1 v1.5 with SHA-256 (as Istio's CA). */
export type CaSigningAlgorithm =
  | { name: 'ECDSA'; hash: 'SHA-256' | 'SHA-384' }
  | { name: 'RSASSA-PKCS1-v1_5'; hash: 'SHA-256' };

export interface CaKey {
  /** The key as Node reads it: what certificates are checked against. */
  keyObject: KeyObject;
  /** The same key in WebCrypto, for @peculiar/x509's signing (not extractable). */
  signingKey: CryptoKey;
  algorithm: CaSigningAlgorithm;
  /** "ECDSA P-256", "RSA 4096", for messages. */
  description: string;
}

/** Node's curve names for the curves a CA key may use, and their WebCrypto names and hashes. */
const CA_CURVES: Readonly<Record<string, { namedCurve: 'P-256' | 'P-384'; hash: 'SHA-256' | 'SHA-384' }>> = {
  prime256v1: { namedCurve: 'P-256', hash: 'SHA-256' },
  secp384r1: { namedCurve: 'P-384', hash: 'SHA-384' },
};
export const MIN_RSA_BITS = 2048;

/**
 * Reads a CA private key in any PEM form openssl and Istio's tooling write: PKCS#8
 * ("PRIVATE KEY"), SEC1 ("EC PRIVATE KEY", `openssl ecparam -genkey`) or PKCS#1 ("RSA PRIVATE
 * KEY", `openssl genrsa` before 3.0). WebCrypto imports PKCS#8 only, so the key goes through
 * node:crypto first. Only ECDSA P-256/P-384 and RSA of 2048 bits or more sign; an encrypted key
 * is refused (the controller has no passphrase to give it). The error says what is wrong.
 */
export async function importCaKeyPem(pem: string): Promise<CaKey> {
  if (!/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(pem)) throw new Error('no PEM private key in it (expected a "BEGIN PRIVATE KEY", "BEGIN EC PRIVATE KEY" or "BEGIN RSA PRIVATE KEY" block)');
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    throw new Error('the key is encrypted; the controller cannot be given a passphrase: decrypt it with `openssl pkey -in KEY -out ca-key.pem`');
  }
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new Error(`the key cannot be read (${(err as Error).message})`);
  }
  const der = keyObject.export({ type: 'pkcs8', format: 'der' });
  const details = keyObject.asymmetricKeyDetails ?? {};
  if (keyObject.asymmetricKeyType === 'ec') {
    const curve = CA_CURVES[details.namedCurve ?? ''];
    if (!curve) throw new Error(`ECDSA key on curve ${details.namedCurve ?? 'unknown'} is not supported; use P-256 (prime256v1) or P-384 (secp384r1)`);
    const signingKey = await webcrypto.subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: curve.namedCurve }, false, ['sign']);
    return { keyObject, signingKey, algorithm: { name: 'ECDSA', hash: curve.hash }, description: `ECDSA ${curve.namedCurve}` };
  }
  if (keyObject.asymmetricKeyType === 'rsa') {
    const bits = details.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) throw new Error(`RSA key of ${bits} bits is too short; use ${MIN_RSA_BITS} bits or more`);
    const signingKey = await webcrypto.subtle.importKey('pkcs8', der, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, false, ['sign']);
    return { keyObject, signingKey, algorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, description: `RSA ${bits}` };
  }
  throw new Error(`${keyObject.asymmetricKeyType ?? 'unknown'} keys are not supported; use ECDSA P-256, P-384 or RSA (${MIN_RSA_BITS} bits or more)`);
}

/** A PKCS#10 request for a workload identity: the SPIFFE ID as the only (URI) SAN. */
export async function createCsr(keys: KeyPair, spiffeId: string): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    keys,
    signingAlgorithm: SIGNING,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }], true)],
  });
  return csr.toString('pem');
}

/** A positive random 128-bit serial, as hex (RFC 5280: at most 20 octets, non-negative). */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0]! &= 0x7f;
  return bytes.toString('hex');
}

export interface CertificateFacts {
  serial: string;
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  uris: string[];
  dns: string[];
  ips: string[];
}

export function certificateFacts(pem: string): CertificateFacts {
  const cert = new x509.X509Certificate(pem);
  const names = sanNames(cert);
  return {
    serial: cert.serialNumber,
    subject: cert.subject,
    issuer: cert.issuer,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    uris: names.filter((n) => n.type === 'url').map((n) => n.value),
    dns: names.filter((n) => n.type === 'dns').map((n) => n.value),
    ips: names.filter((n) => n.type === 'ip').map((n) => n.value),
  };
}

/** The SAN entries of a certificate or CSR. */
export function sanNames(item: x509.X509Certificate | x509.Pkcs10CertificateRequest): { type: string; value: string }[] {
  const ext = item.getExtension('2.5.29.17');
  return ext ? new x509.SubjectAlternativeNameExtension(ext.rawData).names.items.map((n) => ({ type: n.type, value: n.value })) : [];
}

/** Splits a PEM bundle into its certificates. */
export function splitPemBundle(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)?.map((c) => `${c}\n`) ?? [];
}

export { x509 };
