/** Writes deploy/grafana/*.json from src/observe/dashboards.ts (`make docs`); test/unit/dashboards.test.ts checks they are current. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dashboardFiles } from '../src/observe/dashboards.js';
import { packageRoot } from '../src/util/package.js';

const dir = join(packageRoot(), 'deploy', 'grafana');
mkdirSync(dir, { recursive: true });
for (const f of dashboardFiles()) writeFileSync(join(dir, f.name), f.text);
