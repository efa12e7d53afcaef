/**
 * `ambit namespace enable|disable --kubeconfig`: the merge patch a Kubernetes API server gets
 * (against a stand-in that records it), and the errors a user sees. The local-cluster path is
 * exercised end to end by test/integration/mesh-l4.test.ts.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { writeKubeconfig } from '../helpers/fake-apiserver.js';
import { describeAsRoot } from './helpers/root.js';

const run = promisify(execFile);
const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-ns-'));
const seen: { method: string; url: string; type: string; body: unknown }[] = [];
let server: Server;
let kubeconfig = '';

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => { body += c.toString(); });
    req.on('end', () => {
      seen.push({ method: req.method ?? '', url: req.url ?? '', type: String(req.headers['content-type']), body: body ? JSON.parse(body) : undefined });
      res.setHeader('content-type', 'application/json');
      if (req.url?.startsWith('/api/v1/namespaces/missing')) {
        res.statusCode = 404;
        return res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404, message: 'namespaces "missing" not found' }));
      }
      res.end(JSON.stringify({ kind: 'Namespace', apiVersion: 'v1', metadata: { name: req.url?.split('/').at(-1) } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  kubeconfig = join(dir, 'kubeconfig');
  writeKubeconfig(kubeconfig, `http://127.0.0.1:${port}`);
});

afterAll(() => {
  server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describeAsRoot('ambit namespace against Kubernetes', () => {
  it('enables with a merge patch setting the label, disables with one removing it', async () => {
    expect((await run(process.execPath, [BIN, 'namespace', 'enable', 'shop', '--kubeconfig', kubeconfig])).stdout).toBe('namespace/shop enabled (ambient)\n');
    expect((await run(process.execPath, [BIN, 'namespace', 'disable', 'shop', '--kubeconfig', kubeconfig])).stdout).toBe('namespace/shop disabled\n');
    expect(seen).toEqual([
      { method: 'PATCH', url: '/api/v1/namespaces/shop', type: 'application/merge-patch+json', body: { metadata: { labels: { 'ambit.dev/dataplane-mode': 'ambient' } } } },
      { method: 'PATCH', url: '/api/v1/namespaces/shop', type: 'application/merge-patch+json', body: { metadata: { labels: { 'ambit.dev/dataplane-mode': null } } } },
    ]);
  });

  it('says which namespace is missing, and refuses a bad name or kubeconfig before any request', async () => {
    const missing = await run(process.execPath, [BIN, 'namespace', 'enable', 'missing', '--kubeconfig', kubeconfig]).catch((e: { code: number; stderr: string }) => e);
    expect(missing).toMatchObject({ code: 1 });
    expect((missing as { stderr: string }).stderr).toMatch(/namespace missing does not exist in http:\/\/127\.0\.0\.1:\d+/);
    const count = seen.length;
    const bad = await run(process.execPath, [BIN, 'namespace', 'enable', 'Shop_1', '--kubeconfig', kubeconfig]).catch((e: { stderr: string }) => e);
    expect((bad as { stderr: string }).stderr).toMatch(/namespace must be a DNS label .* got "Shop_1"/);
    const noFile = await run(process.execPath, [BIN, 'namespace', 'enable', 'shop', '--kubeconfig', join(dir, 'nope')]).catch((e: { stderr: string }) => e);
    expect((noFile as { stderr: string }).stderr).toMatch(/cannot read the kubeconfig .*nope/);
    expect(seen.length).toBe(count);
  });
});
