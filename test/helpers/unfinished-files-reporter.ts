/**
 * A vitest reporter that names the test files that never finished. When a file's worker process
 * dies (a native crash or an abort), vitest says only "Worker exited unexpectedly", without the
 * file, and that file's tests count as neither passed nor failed: the run fails with "0 failed".
 * Each such file is printed here and, when AMBIT_UNFINISHED_FILES names a file, listed there
 * one a line ("<tests that did not run><TAB><file>") for scripts/test.sh, which counts it as a
 * failure and its tests that did not run as not skipped.
 */
import { appendFileSync } from 'node:fs';
import { relative } from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';

export default class UnfinishedFilesReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const list = process.env.AMBIT_UNFINISHED_FILES;
    for (const m of modules) {
      // A file that ran to its end is passed, failed or skipped; one whose worker died stays pending.
      const state = m.state();
      if (state !== 'pending' && state !== 'queued') continue;
      const tests = [...m.children.allTests()];
      const ran = tests.filter((t) => t.result().state !== 'pending').length;
      const file = relative(process.cwd(), m.moduleId);
      process.stderr.write(`${file} did not finish (its worker exited?): results for ${ran} of its ${tests.length} tests\n`);
      if (list) appendFileSync(list, `${tests.length - ran}\t${file}\n`);
    }
  }
}
