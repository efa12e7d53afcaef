/** The ambit checkout or installed package this code runs from (src/ through tsx, or dist/src/ built). */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface PackageJson { name?: string; version?: string }

let root: { dir: string; pkg: PackageJson } | undefined;

function find(): { dir: string; pkg: PackageJson } {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const path = join(dir, 'package.json');
    if (existsSync(path)) {
      const pkg = JSON.parse(readFileSync(path, 'utf8')) as PackageJson;
      if (pkg.name === 'ambit') return { dir, pkg };
    }
    dir = dirname(dir);
  }
  throw new Error(`cannot find ambit's package.json above ${fileURLToPath(import.meta.url)}`);
}

export function packageRoot(): string {
  root ??= find();
  return root.dir;
}

export function packageVersion(): string {
  try {
    root ??= find();
    return root.pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The `ambit` executable, for starting ambit's own long-running processes. */
export function ambitBin(): string {
  return join(packageRoot(), 'bin', 'ambit.js');
}
