/**
 * The API client's two ways in: a pod's ServiceAccount (in-cluster: no client library, the
 * projected token re-read for every request, the cluster CA pinned) and a kubeconfig file (the
 * server read from its current context; the library loaded only to sign the first request).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeClient, kubeconfigServer } from '../../src/kube/client.js';
import { EC_P256, exportPrivateKeyPem, generateKeyPair, randomSerial, SIGNING, x509 } from '../../src/identity/pki.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-kube-client-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('in a pod', () => {
  let server: Server;
  const seen: (string | undefined)[] = [];
  const env = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };

  beforeAll(async () => {
    // The API server's certificate, signed by nothing but itself: the client must trust exactly ca.crt.
    const keys = await generateKeyPair();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(), name: 'CN=kubernetes', keys, signingAlgorithm: { ...EC_P256, ...SIGNING },
      notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 24 * 3600_000),
      extensions: [new x509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }])],
    });
    writeFileSync(join(dir, 'server.key'), await exportPrivateKeyPem(keys.privateKey));
    writeFileSync(join(dir, 'ca.crt'), cert.toString('pem'));
    writeFileSync(join(dir, 'token'), 'first-token\n');
    server = createServer({ key: readFileSync(join(dir, 'server.key')), cert: readFileSync(join(dir, 'ca.crt')) }, (req, res) => {
      seen.push(req.headers.authorization);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"kind":"Status"}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    process.env.KUBERNETES_SERVICE_HOST = '127.0.0.1';
    process.env.KUBERNETES_SERVICE_PORT = String((server.address() as AddressInfo).port);
  });
  afterAll(() => {
    server.close();
    for (const [key, value] of [['KUBERNETES_SERVICE_HOST', env.host], ['KUBERNETES_SERVICE_PORT', env.port]] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  it('talks to KUBERNETES_SERVICE_HOST over TLS pinned to ca.crt, with the token as it is in its file at each request', async () => {
    const client = KubeClient.inCluster(dir);
    expect(client.server).toBe(`https://127.0.0.1:${process.env.KUBERNETES_SERVICE_PORT}`);
    expect((await client.request('GET', '/version')).status).toBe(200);
    writeFileSync(join(dir, 'token'), 'rotated-token\n');
    expect((await client.request('GET', '/version')).status).toBe(200);
    expect(seen).toEqual(['Bearer first-token', 'Bearer rotated-token']);
  });

  it('outside a pod, says so', () => {
    const host = process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_HOST;
    try {
      expect(() => KubeClient.inCluster(dir)).toThrow(/not in a pod \(no KUBERNETES_SERVICE_HOST\)/);
    } finally {
      process.env.KUBERNETES_SERVICE_HOST = host;
    }
  });
});

describe('a kubeconfig file', () => {
  const file = join(dir, 'kubeconfig');
  writeFileSync(file, [
    'apiVersion: v1', 'kind: Config', 'current-context: b',
    'clusters:', '- name: one', '  cluster: { server: "https://10.0.0.1:6443" }', '- name: two', '  cluster: { server: "https://10.0.0.2:6443" }',
    'contexts:', '- name: a', '  context: { cluster: one, user: u }', '- name: b', '  context: { cluster: two, user: u }',
    'users:', '- name: u', '  user: { token: abc }', '',
  ].join('\n'));

  it('names the current context\'s server without loading the client library', () => {
    expect(kubeconfigServer(file)).toBe('https://10.0.0.2:6443');
    expect(KubeClient.fromFile(file).server).toBe('https://10.0.0.2:6443');
  });

  it('refuses a kubeconfig whose current context has no server, naming the file', () => {
    const bad = join(dir, 'bad-kubeconfig');
    writeFileSync(bad, 'apiVersion: v1\nkind: Config\ncurrent-context: nope\ncontexts: []\nclusters: []\n');
    expect(() => KubeClient.fromFile(bad)).toThrow(new RegExp(`${bad}: no server for the current context "nope"`));
  });
});
