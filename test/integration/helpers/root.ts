/**
 * Integration tests run as root, as CI runs them. `describeAsRoot` is their `describe`: as root it
 * is `describe`; otherwise the suite's body is not run at all (it would make namespaces, cgroups or
 * pins), the suite is reported skipped under a name that says why, and the file prints one line.
 */
import { describe, it } from 'vitest';

export const isRoot = process.getuid?.() === 0;

/** Why an integration test does not run here. */
export const NEEDS_ROOT = 'skipped: integration tests need root (network namespaces, cgroups, bpffs pins, BPF programs, and ambit\'s processes and tools run as on a node)';

let said = false;

export function describeAsRoot(name: string, fn: () => void): void {
  if (isRoot) {
    describe(name, fn);
    return;
  }
  if (!said) {
    said = true;
    console.warn(NEEDS_ROOT);
  }
  describe.skip(`${name} (${NEEDS_ROOT})`, () => {
    it(NEEDS_ROOT, () => undefined);
  });
}
