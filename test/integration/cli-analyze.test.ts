/** `ambit analyze`: offline diagnostics and the exit status. */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

/** The write-up's ```yaml block of this apiVersion, as written there. */
function seedBlock(apiVersion: RegExp): string {
  const seedDir = join(SHARED, 'seed');
  const block = readdirSync(seedDir).flatMap((f) => [...readFileSync(join(seedDir, f), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!))
    .find((y) => apiVersion.test(y));
  if (!block) throw new Error(`no ${String(apiVersion)} block in the write-up`);
  return block;
}

describeAsRoot('ambit analyze', () => {
  it('passes the shared samples and the shop, with warnings only', async () => {
    const { stdout } = await run(process.execPath, [BIN, 'analyze', '-f', join(SHARED, 'conformance', 'istio'), '-f', 'examples/shop']);
    expect(stdout.trim().split('\n').at(-1)).toMatch(/^\d+ resources valid, 0 errors, \d+ warnings$/);
    expect(stdout).toContain('this later definition wins');
    // Istio's Gateway and ServiceEntry are acted on (docs/EDGE.md): no kind in the samples is taken without use.
    expect(stdout).not.toContain('does not act on');
    expect(stdout).not.toMatch(/bookinfo-gateway|egress-rule-google-apis/);
  });

  it("passes the write-up's Canary and TrafficSplit with no error and no warning", async () => {
    const canary = join(dir, 'seed-canary.yaml');
    const split = join(dir, 'seed-split.yaml');
    writeFileSync(canary, seedBlock(/apiVersion: flagger\.app\/v1beta1/));
    writeFileSync(split, seedBlock(/apiVersion: split\.smi-spec\.io\//));
    const { stdout } = await run(process.execPath, [BIN, 'analyze', '-f', canary, '-f', split]);
    expect(stdout).toBe('2 resources valid, 0 errors, 0 warnings\n');
  });

  it('exits 1 for a Canary with stepWeight: "abc", naming the field', async () => {
    const bad = join(dir, 'canary-abc.yaml');
    const text = seedBlock(/apiVersion: flagger\.app\/v1beta1/).replace(/stepWeight: 5\b/, 'stepWeight: "abc"');
    writeFileSync(bad, text);
    const line = text.split('\n').findIndex((l) => l.includes('stepWeight: "abc"')) + 1;
    const err = await run(process.execPath, [BIN, 'analyze', '-f', bad]).catch((e: { code: number; stdout: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    expect((err as { stdout: string }).stdout)
      .toBe(`error: ${bad}:${line}: document 1 (Canary production/backend): spec.analysis.stepWeight: must be an integer, got string "abc"\n0 resources valid, 1 error, 0 warnings\n`);
  });

  it('warns for a kind ambit does not act on, and still exits 0', async () => {
    const file = join(dir, 'widget.yaml');
    writeFileSync(file, 'apiVersion: example.com/v1\nkind: Widget\nmetadata: { name: w, namespace: shop }\nspec: { size: 3 }\n');
    const { stdout } = await run(process.execPath, [BIN, 'analyze', '-f', file]);
    expect(stdout).toBe(`warning: ${file}:2: document 1 (Widget shop/w): kind: Widget (example.com/v1) is not a kind ambit acts on: accepted, not used\n1 resource valid, 0 errors, 1 warning\n`);
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
