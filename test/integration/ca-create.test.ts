/**
 * `ambit ca create`, run as a process: the YAML it prints (the install's Namespace and the
 * immutable `ambit-ca` Secret) loads into the controller's CA, which then issues SVIDs that
 * openssl verifies; `--from` takes an operator's CA in Istio's cacerts layout after the
 * controller's checks, or refuses it naming the file; `--out-dir` writes the files once.
 */
import { execFile, execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { CertificateAuthority, readPluginCa } from '../../src/identity/ca.js';
import { createCsr, generateKeyPair } from '../../src/identity/pki.js';
import type { K8sObject } from '../../src/install/objects.js';
import { CA_SECRET, renderInstall } from '../../src/install/render.js';
import { resolveValues } from '../../src/install/values.js';
import { describeAsRoot } from './helpers/root.js';

const run = promisify(execFile);
const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-ca-create-'));
const ID = 'spiffe://cluster.local/ns/shop/sa/users';

interface Result { code: number; stdout: string; stderr: string }

async function ambit(...args: string[]): Promise<Result> {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

function sh(cwd: string, cmd: string): string {
  return execFileSync('sh', ['-c', cmd], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The printed Secret's files, written into a directory as the controller's mount has them. */
function mountSecret(secret: K8sObject, name: string): string {
  const mount = join(dir, name);
  mkdirSync(mount, { recursive: true });
  for (const [file, b64] of Object.entries(secret.data as Record<string, string>)) writeFileSync(join(mount, file), Buffer.from(b64, 'base64'));
  return mount;
}

function objects(stdout: string): K8sObject[] {
  return parseAllDocuments(stdout).map((d) => d.toJS() as K8sObject).filter(Boolean);
}

/** The CA of a mounted Secret signs an SVID that openssl verifies against the Secret's root-cert.pem. */
async function signsVerifiably(mount: string): Promise<{ ca: CertificateAuthority; chain: string[] }> {
  const ca = await CertificateAuthority.open({ plugin: readPluginCa(mount) });
  const signed = await ca.sign({ csr: await createCsr(await generateKeyPair(), ID), identity: ID });
  writeFileSync(join(mount, 'leaf.pem'), signed.chain[0]!);
  writeFileSync(join(mount, 'untrusted.pem'), signed.chain.slice(1, -1).join(''));
  const untrusted = signed.chain.length > 2 ? ' -untrusted untrusted.pem' : '';
  expect(sh(mount, `openssl verify -purpose sslclient -CAfile root-cert.pem${untrusted} leaf.pem`).trim()).toBe('leaf.pem: OK');
  return { ca, chain: signed.chain };
}

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describeAsRoot('ambit ca create', () => {
  it('prints the install\'s Namespace and an immutable Opaque Secret whose new P-256 root the controller loads and signs with', async () => {
    const out = await ambit('ca', 'create', '-n', 'mesh', '--trust-domain', 'corp.example', '--org', 'Corp, Inc.');
    expect(out.code).toBe(0);
    const [ns, secret, ...rest] = objects(out.stdout);
    expect(rest).toEqual([]);
    expect(ns).toEqual(renderInstall(resolveValues(['namespace=mesh'])).find((o) => o.kind === 'Namespace'));
    expect(secret).toMatchObject({ apiVersion: 'v1', kind: 'Secret', metadata: { name: CA_SECRET, namespace: 'mesh' }, type: 'Opaque', immutable: true });
    expect(Object.keys(secret!.data as object)).toEqual(['ca-cert.pem', 'ca-key.pem', 'cert-chain.pem', 'root-cert.pem']);
    expect(out.stdout).toMatch(/^# .*\n# Contains the mesh CA's PRIVATE KEY\. Apply with: kubectl apply -f -\n---\n/);
    expect(out.stderr).toMatch(/the output holds the mesh CA's private key \(ca-key\.pem\)/);
    expect(out.stderr).toMatch(/The Secret mesh\/ambit-ca is immutable: applying a different CA over it is refused/);
    expect(out.stderr).toMatch(/kubectl -n mesh rollout restart deployment\/ambit-controller, then daemonset\/ambit-node/);

    const mount = mountSecret(secret!, 'new-root');
    const root = new X509Certificate(readFileSync(join(mount, 'root-cert.pem')));
    expect(root.ca).toBe(true);
    // One O attribute holding the comma (Node escapes it), not O=Corp plus a stray attribute.
    expect(root.subject).toBe('O=Corp\\, Inc.\nCN=Corp\\, Inc. root CA for corp.example');
    expect(root.checkIssued(root)).toBe(true);
    expect(root.publicKey.asymmetricKeyDetails).toEqual({ namedCurve: 'prime256v1' });
    const lifetimeDays = (Date.parse(root.validTo) - Date.parse(root.validFrom)) / 86_400_000;
    expect(Math.round(lifetimeDays)).toBe(3650);
    expect(readFileSync(join(mount, 'ca-key.pem'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(readFileSync(join(mount, 'cert-chain.pem'), 'utf8')).toBe(readFileSync(join(mount, 'root-cert.pem'), 'utf8'));
    const { ca, chain } = await signsVerifiably(mount);
    expect(ca.keyDescription).toBe('ECDSA P-256');
    expect(chain).toHaveLength(2);
  });

  it('makes a new root each run, with the lifetime --days gives', async () => {
    const [a, b] = await Promise.all([ambit('ca', 'create', '--days', '30'), ambit('ca', 'create')]);
    const rootOf = (r: Result) => new X509Certificate(Buffer.from((objects(r.stdout)[1]!.data as Record<string, string>)['root-cert.pem']!, 'base64'));
    expect(objects(a.stdout)[1]!.metadata.namespace).toBe('ambit-system');
    expect(Math.round((Date.parse(rootOf(a).validTo) - Date.parse(rootOf(a).validFrom)) / 86_400_000)).toBe(30);
    expect(rootOf(a).fingerprint256).not.toBe(rootOf(b).fingerprint256);
  });

  it('refuses bad flags before making anything', async () => {
    const [zero, ns, td, both, missing] = await Promise.all([
      ambit('ca', 'create', '--days', '0'),
      ambit('ca', 'create', '-n', 'Not_A_Label'),
      ambit('ca', 'create', '--trust-domain', 'Bad Domain'),
      ambit('ca', 'create', '--from', dir, '--days', '5', '--org', 'x'),
      ambit('ca', 'create', '--from', join(dir, 'nowhere')),
    ]);
    expect(zero).toMatchObject({ code: 1, stdout: '' });
    expect(zero.stderr).toMatch(/option '--days <n>' argument '0' is invalid\. a whole number of days from 1 to 36500, got "0"/);
    expect(ns).toMatchObject({ code: 2, stdout: '' });
    expect(ns.stderr).toMatch(/^ambit: -n\/--namespace: namespace must be a DNS label .* got "Not_A_Label"/);
    expect(td).toMatchObject({ code: 2, stdout: '' });
    expect(td.stderr).toMatch(/^ambit: --trust-domain: trustDomain .*"Bad Domain"/);
    expect(both).toMatchObject({ code: 2, stdout: '' });
    expect(both.stderr).toMatch(/^ambit: --from takes the CA as it is; --days, --org only apply to a new root/);
    expect(missing).toMatchObject({ code: 1, stdout: '' });
    expect(missing.stderr).toMatch(`ambit: --from ${join(dir, 'nowhere')}: not a directory`);
  });
});

describeAsRoot('ambit ca create --from: an operator\'s CA in Istio\'s cacerts layout', () => {
  let istio: string;

  beforeAll(() => {
    // As Istio's older docs lay it out: SEC1 EC keys from `openssl ecparam`, ca-cert.pem signed by
    // root-cert.pem, cert-chain.pem holding only ca-cert.pem (the root not repeated).
    istio = join(dir, 'istio');
    mkdirSync(istio);
    writeFileSync(join(istio, 'ext.cnf'), '[ca]\nbasicConstraints = critical, CA:true\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n');
    sh(istio, 'openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem');
    sh(istio, 'openssl req -x509 -new -key root-key.pem -subj "/O=corp/CN=corp root" -days 3650 -extensions ca -config ext.cnf -out root-cert.pem 2>/dev/null || openssl req -x509 -new -key root-key.pem -subj "/O=corp/CN=corp root" -days 3650 -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" -out root-cert.pem');
    sh(istio, 'openssl ecparam -name prime256v1 -genkey -out ca-key.pem');
    sh(istio, 'openssl req -new -key ca-key.pem -subj "/O=corp/CN=mesh intermediate" -out ca.csr');
    sh(istio, 'openssl x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 365 -extfile ext.cnf -extensions ca -out ca-cert.pem');
    sh(istio, 'cp ca-cert.pem cert-chain.pem');
  });

  it('checks it and prints it with cert-chain.pem completed up to the root; the key as given', async () => {
    const out = await ambit('ca', 'create', '--from', istio, '-n', 'mesh');
    expect(out.stderr).not.toMatch(/^ambit: /m);
    expect(out.code).toBe(0);
    const secret = objects(out.stdout)[1]!;
    const mount = mountSecret(secret, 'from-istio');
    const file = (d: string, f: string) => readFileSync(join(d, f), 'utf8');
    expect(file(mount, 'ca-key.pem')).toBe(file(istio, 'ca-key.pem'));
    expect(file(mount, 'root-cert.pem')).toBe(file(istio, 'root-cert.pem'));
    expect(file(mount, 'ca-cert.pem')).toBe(file(istio, 'ca-cert.pem'));
    expect(file(mount, 'cert-chain.pem')).toBe(file(istio, 'ca-cert.pem') + file(istio, 'root-cert.pem'));
    const { chain } = await signsVerifiably(mount);
    expect(new X509Certificate(chain[0]!).issuer).toBe('O=corp\nCN=mesh intermediate');
  });

  it('refuses a CA the controller would refuse, naming the file, and prints nothing', async () => {
    const bad = join(dir, 'istio-bad');
    sh(dir, `cp -r ${istio} ${bad} && cp ${bad}/root-key.pem ${bad}/ca-key.pem`);
    const out = await ambit('ca', 'create', '--from', bad);
    expect(out).toMatchObject({ code: 1, stdout: '' });
    expect(out.stderr).toContain(`ambit: the CA in ${bad} is refused: ${join(bad, 'ca-key.pem')}: the key does not belong to the signing certificate "O=corp, CN=mesh intermediate" (${join(bad, 'ca-cert.pem')})`);
  });

  it('--out-dir writes the four files (key 0600) once and never overwrites them', async () => {
    const out = join(dir, 'out');
    const first = await ambit('ca', 'create', '--from', istio, '--out-dir', out);
    expect(first.code).toBe(0);
    expect(first.stdout).toBe(['ca-key.pem', 'ca-cert.pem', 'cert-chain.pem', 'root-cert.pem'].map((f) => `wrote ${join(out, f)}\n`).join(''));
    expect(first.stderr).toContain(`kubectl create secret generic ambit-ca -n ambit-system --from-file=${join(out, 'ca-key.pem')}`);
    expect(statSync(join(out, 'ca-key.pem')).mode & 0o777).toBe(0o600);
    expect(statSync(join(out, 'root-cert.pem')).mode & 0o777).toBe(0o644);
    await signsVerifiably(out);
    const before = readFileSync(join(out, 'ca-key.pem'), 'utf8');
    const second = await ambit('ca', 'create', '--out-dir', out);
    expect(second).toMatchObject({ code: 1, stdout: '' });
    expect(second.stderr).toMatch(/already exist; nothing was written/);
    expect(readFileSync(join(out, 'ca-key.pem'), 'utf8')).toBe(before);
  });
});
