/**
 * The mesh CA inside a local cluster: the controller runs in the underlay netns on
 * 172.30.0.1:15012; a node's agent, from the node's netns with its bootstrap token, gets
 * certificates for its own pods' identities and is refused another node's. The CA's root
 * survives a controller restart and certificates issued before stay valid.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { ClusterStatus } from '../../src/local/runtime.js';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-localca-'));
const CLUSTER = `ca${Math.random().toString(36).slice(2, 6)}`;
const stateDir = join(stateRoot, CLUSTER);
const dir = mkdtempSync(join(tmpdir(), 'ambit-localca-m-'));

function ambit(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), ...args], { cwd: ROOT, env: { ...process.env, AMBIT_LOCAL_STATE: stateRoot } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the CA request helper from a node's netns with that node's token. */
async function request(node: string, identity: string): Promise<{ chain?: string[]; code?: number; error?: string }> {
  const r = await ambit(['local', 'exec', '--cluster', CLUSTER, '--node', node, '--', process.execPath, '--import', 'tsx',
    join(ROOT, 'test/integration/helpers/ca-request.ts'), '172.30.0.1:15012', join(stateDir, 'nodes', node, 'token'), join(stateDir, 'ca', 'ca-cert.pem'), identity]);
  if (r.code !== 0) throw new Error(`ca-request exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as { chain?: string[]; code?: number; error?: string };
}

const A = 'spiffe://cluster.local/ns/default/sa/alpha';
const B = 'spiffe://cluster.local/ns/default/sa/beta';

function verify(chain: string[]): string {
  writeFileSync(join(dir, 'leaf.pem'), chain[0]!);
  writeFileSync(join(dir, 'root.pem'), readFileSync(join(stateDir, 'ca', 'ca-cert.pem')));
  return execFileSync('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' }).trim();
}

describeAsRoot('the CA in a local cluster', () => {
  beforeAll(async () => {
    writeFileSync(join(dir, 'pods.yaml'), `
apiVersion: v1
kind: ServiceAccount
metadata: { name: alpha }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: beta }
---
apiVersion: v1
kind: Pod
metadata: { name: a }
spec: { nodeName: node-1, serviceAccountName: alpha, containers: [{ name: c, command: [sleep, infinity] }] }
---
apiVersion: v1
kind: Pod
metadata: { name: b }
spec: { nodeName: node-2, serviceAccountName: beta, containers: [{ name: c, command: [sleep, infinity] }] }
`);
    const up = await ambit(['local', 'up', '--cluster', CLUSTER, '-f', join(dir, 'pods.yaml')]);
    if (up.code !== 0) throw new Error(`up failed: ${up.stdout}\n${up.stderr}`);
  }, 180_000);

  afterAll(async () => {
    await ambit(['local', 'down', '--cluster', CLUSTER]);
    rmSync(stateRoot, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('runs the controller as a healthy component with per-node credentials', async () => {
    const status = JSON.parse((await ambit(['local', 'status', '--json', '--cluster', CLUSTER])).stdout) as ClusterStatus;
    expect(status.components.find((c) => c.name === 'controller')).toMatchObject({ state: 'running', detail: 'CA and discovery on 172.30.0.1:15012, metrics on :15014' });
    const t1 = readFileSync(join(stateDir, 'nodes', 'node-1', 'token'), 'utf8');
    const t2 = readFileSync(join(stateDir, 'nodes', 'node-2', 'token'), 'utf8');
    expect(t1).not.toBe(t2);
    expect(execFileSync('stat', ['-c', '%a', join(stateDir, 'nodes', 'node-1', 'token')], { encoding: 'utf8' }).trim()).toBe('600');
  });

  it("issues a node its own pods' certificates and refuses another node's", async () => {
    const ok = await request('node-1', A);
    expect(ok.chain).toHaveLength(2);
    expect(verify(ok.chain!)).toMatch(/: OK$/);
    const refused = await request('node-1', B);
    expect(refused).toEqual({ code: 7, error: `CreateCertificate: node node-1 runs no pod with identity ${B}` });
    expect((await request('node-2', B)).chain).toHaveLength(2);
    const log = readFileSync(join(stateDir, 'logs', 'controller.log'), 'utf8');
    expect(log).toContain('certificate request refused');
    expect(log).not.toContain('PRIVATE KEY');
  });

  it('keeps its root when the controller restarts; earlier certificates stay valid', async () => {
    const before = await request('node-1', A);
    const root = readFileSync(join(stateDir, 'ca', 'ca-cert.pem'), 'utf8');
    const status = JSON.parse((await ambit(['local', 'status', '--json', '--cluster', CLUSTER])).stdout) as ClusterStatus;
    process.kill(status.components.find((c) => c.name === 'controller')!.pid!, 'SIGKILL');
    const after = await until('a certificate from the restarted controller', async () => {
      const r = await request('node-1', A);
      return r.chain ? r : undefined;
    }, { timeout: 40_000, interval: 200 });
    expect(after.chain).toHaveLength(2);
    expect(readFileSync(join(stateDir, 'ca', 'ca-cert.pem'), 'utf8')).toBe(root);
    expect(verify(before.chain!)).toMatch(/: OK$/);
    expect(verify(after.chain!)).toMatch(/: OK$/);
  }, 60_000);
});
