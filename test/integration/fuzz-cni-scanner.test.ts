/**
 * The ambit-cni plugin's JSON scanner under libFuzzer with AddressSanitizer and UBSan
 * (native/cni/fuzz): built from the plugin's source as it is now, run for 20,000 inputs from a
 * fixed seed over the committed corpus. Skipped, saying why, where clang's fuzzing runtime is not
 * installed (`scripts/setup.sh --fuzz`).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeAsRoot } from './helpers/root.js';

const root = join(import.meta.dirname, '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'ambit-fuzz-cni-scanner-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Whether clang links a libFuzzer + ASan program here. */
function toolchain(): boolean {
  const probe = join(dir, 'probe.c');
  writeFileSync(probe, '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n');
  return spawnSync('clang', ['-fsanitize=fuzzer,address', '-o', join(dir, 'probe'), probe], { stdio: 'ignore' }).status === 0;
}

describeAsRoot('ambit-cni JSON scanner', () => {
  const available = toolchain();
  if (!available) console.warn('fuzz-cni-scanner: clang with libFuzzer and ASan runtimes not found; run scripts/setup.sh --fuzz');

  it.skipIf(!available)('20,000 libFuzzer inputs (seed 1), no sanitizer report', () => {
    const binary = join(dir, 'scan-fuzz');
    execFileSync(join(root, 'native', 'cni', 'fuzz', 'build.sh'), [binary], { stdio: 'pipe' });
    const work = join(dir, 'corpus');
    execFileSync('mkdir', ['-p', work]);
    const run = spawnSync(binary, ['-seed=1', '-runs=20000', '-max_len=4096', '-timeout=10', `-artifact_prefix=${dir}/`, work, join(root, 'native', 'cni', 'fuzz', 'corpus')], { encoding: 'utf8', timeout: 50_000 });
    const report = `${run.stderr ?? ''}`.split('\n').filter((l) => /ERROR|SUMMARY|==\d+==|runtime error|deadly signal|Test unit written/.test(l)).slice(0, 30).join('\n');
    expect(run.status, report).toBe(0);
    expect(run.stderr).toMatch(/Done 20000 runs/);
  });
});
