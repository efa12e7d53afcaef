/**
 * Certificates for edge tests, as users bring them to a gateway: a CA of their own (not the
 * mesh's), server certificates for DNS names, client certificates for MUTUAL. ECDSA P-256,
 * made in-process.
 */
import * as x509 from '@peculiar/x509';
import { exportPrivateKeyPem, generateKeyPair, randomSerial, SIGNING, type KeyPair } from '../../../src/identity/pki.js';

export interface TestCa { cert: string; keys: KeyPair; name: string }
export interface TestCert { cert: string; key: string; serial: string }

const DAY = 86_400_000;

export async function testCa(name: string): Promise<TestCa> {
  const keys = await generateKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(), name: `CN=${name}`, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + DAY),
    signingAlgorithm: SIGNING, keys,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  return { cert: `${cert.toString('pem')}\n`, keys, name };
}

/** A leaf the CA signs: a server certificate for `dnsNames` (the first is the CN), or a client one (with `uris` as URI SANs). */
export async function testLeaf(ca: TestCa, dnsNames: string[], usage: 'server' | 'client' = 'server', uris: string[] = []): Promise<TestCert> {
  const keys = await generateKeyPair();
  const serial = randomSerial();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial, subject: `CN=${dnsNames[0]}`, issuer: `CN=${ca.name}`, notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + DAY),
    signingAlgorithm: SIGNING, publicKey: keys.publicKey, signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.ExtendedKeyUsageExtension([usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([...dnsNames.map((value) => ({ type: 'dns' as const, value })), ...uris.map((value) => ({ type: 'url' as const, value }))]),
    ],
  });
  return { cert: `${cert.toString('pem')}\n`, key: await exportPrivateKeyPem(keys.privateKey), serial: cert.serialNumber };
}
