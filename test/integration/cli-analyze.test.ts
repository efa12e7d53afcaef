/** `ambit analyze`: offline diagnostics and the exit status. */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { describeAsRoot } from './helpers/root.js';

const run = promisify(execFile);
const BIN = new URL('../../bin/ambit.js', import.meta.url).pathname;
const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-analyze-'));

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describeAsRoot('ambit analyze', () => {
  it('passes the shared samples and the shop, with warnings only', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'analyze', '-f', join(SHARED, 'conformance', 'istio'), '-f', 'examples/shop']);
    expect(stdout.trim().split('\n').at(-1)).toMatch(/^\d+ resources valid, 0 errors, \d+ warnings$/);
    expect(stdout).toContain('this later definition wins');
  });

  it('exits 1 and names file, line, resource and field for each error', async () => {
    const bad = join(dir, 'canary.yaml');
    writeFileSync(bad, `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: canary }
spec:
  hosts: [payment]
  http:
  - route:
    - { destination: { host: payment, subset: v1 }, weight: 95 }
    - { destination: { host: payment, subset: v2 }, weight: 10 }
`);
    const err = await run(process.execPath, [BIN, 'analyze', '-f', bad]).catch((e: { code: number; stdout: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stdout: string }).stdout).toBe(`error: ${bad}:7: document 1 (VirtualService default/canary): spec.http[0].route: weights must add up to 100, got 105\n0 resources valid, 1 error, 0 warnings\n`);
  });
  it('takes image-only pods as Kubernetes would, and asks for commands with --local', async () => {
    const file = join(dir, 'deploy.yaml');
    writeFileSync(file, `apiVersion: apps/v1
kind: Deployment
metadata: { name: web, namespace: shop }
spec:
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec: { containers: [{ name: web, image: nginx:1.27 }] }
`);
    const { stdout } = await run(process.execPath, [BIN, 'analyze', '-f', file]);
    expect(stdout).toMatch(/^1 resource valid, 0 errors/m);
    const local = await run(process.execPath, [BIN, 'analyze', '--local', '-f', file]).catch((e: { code: number; stdout: string }) => e);
    expect(local).toMatchObject({ code: 1 });
    expect(local.stdout).toContain('spec.template.spec.containers[0].command: required');
  });
});
