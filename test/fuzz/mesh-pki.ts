/**
 * A mesh CA and a certificate manager for the fuzz targets: the project's own CA code in a
 * temporary directory, so listeners present real SPIFFE certificates and verify real peers.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager } from '../../src/identity/cert-manager.js';

export interface MeshPki {
  ca: CertificateAuthority;
  certs: CertManager;
  dir: string;
  close(): void;
}

export async function meshPki(prefix: string): Promise<MeshPki> {
  const dir = mkdtempSync(join(tmpdir(), `ambit-fuzz-${prefix}-`));
  try {
    const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
    const certs = new CertManager({
      source: {
        createCertificate: async (csr, identity, ttl) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
        trustBundle: () => Promise.resolve(ca.trustBundle()),
      },
    });
    await certs.start();
    return { ca, certs, dir, close: () => { certs.close(); rmSync(dir, { recursive: true, force: true }); } };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** A logger that writes nowhere but is adjustable (the admin endpoint changes its level). */
export function quietLogger(): Logger {
  return pino({ level: 'silent' }, { write: () => undefined });
}
