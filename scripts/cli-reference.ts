/** Writes docs/CLI.md from the commands (`make docs`); test/unit/cli-reference.test.ts checks it is current. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildProgram } from '../src/cli/main.js';
import { cliReference } from '../src/cli/reference.js';
import { packageRoot } from '../src/util/package.js';

// Defaults that come from the environment are documented as the install leaves them: unset.
for (const name of ['AMBIT_HBONE_LIMITS', 'AMBIT_HOST_PROC']) delete process.env[name];
writeFileSync(join(packageRoot(), 'docs', 'CLI.md'), cliReference(buildProgram()));
