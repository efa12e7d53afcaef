/**
 * Every environment variable a process of ambit reads is listed in docs/ARCHITECTURE.md
 * (Environment variables), and every one listed there is read: the table cannot drift.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** What the operating system sets for every program: not ambit's settings. */
const SYSTEM = new Set(['PATH', 'HOME', 'LANG', 'TERM']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : n.endsWith('.ts') || n.endsWith('.js') ? [join(dir, n)] : []));
}

it('docs/ARCHITECTURE.md lists exactly the environment variables the processes read', () => {
  const read = new Set<string>();
  for (const f of [...files(join(ROOT, 'src')), join(ROOT, 'bin', 'ambit.js')]) {
    const text = readFileSync(f, 'utf8');
    for (const m of text.matchAll(/process\.env(?:\.([A-Z][A-Z0-9_]+)|\[['"]([A-Z][A-Z0-9_]+)['"]\])|\benv\.([A-Z][A-Z0-9_]{3,})\b/g)) {
      const name = m[1] ?? m[2] ?? m[3] ?? '';
      if (!SYSTEM.has(name)) read.add(name);
    }
  }
  const doc = readFileSync(join(ROOT, 'docs', 'ARCHITECTURE.md'), 'utf8');
  const section = /^## Environment variables\n([\s\S]*?)(?=^## )/m.exec(doc)?.[1] ?? '';
  const listed = new Set<string>();
  for (const line of section.split('\n')) {
    const first = /^\| ([^|]+) \|/.exec(line)?.[1] ?? '';
    for (const m of first.matchAll(/`([A-Z][A-Z0-9_]+)`/g)) listed.add(m[1] as string);
  }
  expect([...read].filter((v) => !listed.has(v)).sort()).toEqual([]);
  expect([...listed].filter((v) => !read.has(v)).sort()).toEqual([]);
  expect(read.size).toBeGreaterThan(10);
});
