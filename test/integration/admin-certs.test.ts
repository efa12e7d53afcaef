/** The node agent's admin endpoint and `ambit certs`: certificates shown, keys never. */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { CertificateAuthority, FileCaStore } from '../../src/identity/ca.js';
import { CertManager } from '../../src/identity/cert-manager.js';
import { AdminServer } from '../../src/node/admin.js';
import { describeAsRoot } from './helpers/root.js';

const run = promisify(execFile);
const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-admin-'));
const IDS = ['spiffe://cluster.local/ns/shop/sa/users', 'spiffe://cluster.local/ns/shop/sa/orders'];
let manager: CertManager;
let admin: AdminServer;
let serials: string[];

beforeAll(async () => {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(dir) });
  manager = new CertManager({
    source: {
      createCertificate: async (csr, identity, ttl) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
      trustBundle: () => Promise.resolve(ca.trustBundle()),
    },
  });
  await manager.start();
  serials = (await Promise.all(IDS.map((id) => manager.acquire(id)))).map((c) => c.serial);
  admin = await AdminServer.start({ certificates: manager }, '127.0.0.1', 0);
});

afterAll(async () => {
  manager.close();
  await admin.close();
  rmSync(dir, { recursive: true, force: true });
});

describeAsRoot('ambit certs', () => {
  it('lists identity, serial, expiry and state of every certificate, and the trust bundle', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'certs', '--admin', `http://127.0.0.1:${admin.port}`]);
    const lines = stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^IDENTITY\s+SERIAL\s+NOT AFTER\s+RENEWS\s+STATE\s+PODS$/);
    expect(lines[1]).toMatch(new RegExp(`^${IDS[1]}\\s+${serials[1]}\\s`));
    expect(lines[2]).toMatch(new RegExp(`^${IDS[0]}\\s+${serials[0]}\\s`));
    expect(lines[1]).toMatch(/valid\s+1$/);
    expect(lines[3]).toMatch(/^trust: O=ambit, CN=ambit root CA for cluster.local/);
    expect(stdout).not.toContain('PRIVATE KEY');
  });

  it('answers JSON without key material', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'certs', '--json', '--admin', `http://127.0.0.1:${admin.port}`]);
    const body = JSON.parse(stdout) as { certificates: { identity: string; serial: string }[] };
    expect(body.certificates.map((c) => c.serial).sort()).toEqual([...serials].sort());
    expect(stdout).not.toMatch(/PRIVATE|"key"/);
  });

  it('says clearly when no agent answers', async () => {
    // A port that was just free: nothing listens there.
    const probe = await AdminServer.start({}, '127.0.0.1', 0);
    const port = probe.port;
    await probe.close();
    const err = await run(process.execPath, [BIN, 'certs', '--admin', `http://127.0.0.1:${port}`]).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stderr: string }).stderr).toContain(`cannot reach the node agent's admin endpoint at http://127.0.0.1:${port} (ECONNREFUSED)`);
  });
});
