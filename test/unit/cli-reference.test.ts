/** docs/CLI.md is made from the commands: it must be what `make docs` writes now. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/main.js';
import { cliReference } from '../../src/cli/reference.js';
import { packageRoot } from '../../src/util/package.js';

const saved = { AMBIT_HBONE_LIMITS: process.env.AMBIT_HBONE_LIMITS, AMBIT_HOST_PROC: process.env.AMBIT_HOST_PROC };
afterAll(() => {
  for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
});

it('docs/CLI.md is the reference the commands make (run `make docs` after changing a command)', () => {
  for (const k of Object.keys(saved)) delete process.env[k];
  const made = cliReference(buildProgram());
  expect(readFileSync(join(packageRoot(), 'docs', 'CLI.md'), 'utf8')).toBe(made);
  // Every command that users run is in it, with its options.
  for (const heading of ['## ambit local up', '## ambit waypoint apply', '## ambit node', '## ambit install', '## ambit check']) expect(made).toContain(heading);
  expect(made).toContain('`--cluster <name>`');
  expect(made).not.toContain('## ambit local runtime');
});
