/**
 * X.509 and key plumbing over WebCrypto and @peculiar/x509: ECDSA P-256 keys, PKCS#10 CSRs
 * with a SPIFFE URI SAN, and the facts about a certificate the rest of ambit shows.
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
