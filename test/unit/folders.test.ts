/**
 * Which folder may import which: the table in docs/ARCHITECTURE.md (Folders) is the rule, and
 * every import under src/ and native/ is held against it. A folder is a directory right under
 * src/ (its subfolders belong to it) or native/.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The table: folder → the folders it may import ('*': any folder under src/). */
function rules(): Map<string, Set<string> | '*'> {
  const doc = readFileSync(join(ROOT, 'docs', 'ARCHITECTURE.md'), 'utf8');
  const section = /^## Folders\n([\s\S]*?)(?=^## )/m.exec(doc)?.[1];
  if (!section) throw new Error('docs/ARCHITECTURE.md has no "## Folders" section');
  const out = new Map<string, Set<string> | '*'>();
  for (const line of section.split('\n')) {
    const m = /^\| `([^`]+)\/` \|[^|]*\| (.*) \|$/.exec(line);
    if (!m) continue;
    const folder = m[1] as string;
    const allowed = m[2] as string;
    if (allowed.startsWith('every folder')) out.set(folder, '*');
    else out.set(folder, new Set([...allowed.matchAll(/`([^`]+)`/g)].map((x) => (x[1] === 'native' ? 'native' : `src/${x[1]}`))));
  }
  return out;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? tsFiles(path) : name.endsWith('.ts') ? [path] : [];
  });
}

/** The folder a repository path belongs to. */
function folderOf(path: string): string {
  const parts = path.split('/');
  return parts[0] === 'native' ? 'native' : parts.slice(0, 2).join('/');
}

interface Import { from: string; spec: string; target: string }

/** Every relative import (static, re-export, dynamic, `typeof import()`) and every bare one, per file. */
function imports(): Import[] {
  const out: Import[] = [];
  for (const file of [...tsFiles(join(ROOT, 'src')), ...tsFiles(join(ROOT, 'native'))]) {
    const from = relative(ROOT, file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|^import\s+)'([^']+)'/gm)) {
      const spec = m[1] as string;
      const target = spec.startsWith('.') ? normalize(join(dirname(from), spec)) : spec;
      out.push({ from, spec, target });
    }
  }
  return out;
}

describe('folders', () => {
  const table = rules();
  const all = imports();

  it('every folder is in the table', () => {
    const folders = new Set([...tsFiles(join(ROOT, 'src')), ...tsFiles(join(ROOT, 'native'))].map((f) => folderOf(relative(ROOT, f))));
    expect([...folders].filter((f) => !table.has(f)).sort()).toEqual([]);
    expect(table.size).toBeGreaterThan(10);
  });

  it('imports only what the table allows', () => {
    const wrong: string[] = [];
    for (const i of all) {
      if (!i.spec.startsWith('.')) continue;
      const [a, b] = [folderOf(i.from), folderOf(i.target)];
      if (a === b) continue;
      const allowed = table.get(a);
      if (allowed === '*' ? !b.startsWith('src/') : !allowed?.has(b)) wrong.push(`${i.from} imports ${i.spec} (${b})`);
    }
    expect(wrong).toEqual([]);
  });

  it('only native/ loads koffi', () => {
    expect(all.filter((i) => i.spec === 'koffi' && folderOf(i.from) !== 'native').map((i) => i.from)).toEqual([]);
    expect(all.some((i) => i.spec === 'koffi')).toBe(true);
  });

  it('the folders form no cycle', () => {
    const edges = new Map<string, Set<string>>();
    for (const i of all) {
      if (!i.spec.startsWith('.')) continue;
      const [a, b] = [folderOf(i.from), folderOf(i.target)];
      if (a !== b) edges.set(a, (edges.get(a) ?? new Set()).add(b));
    }
    // Depth-first: a folder met again while still on the path closes a cycle.
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (f: string, path: string[]) => {
      if (state.get(f) === 'done') return;
      if (state.get(f) === 'open') {
        cycles.push([...path.slice(path.indexOf(f)), f].join(' → '));
        return;
      }
      state.set(f, 'open');
      for (const g of edges.get(f) ?? []) visit(g, [...path, f]);
      state.set(f, 'done');
    };
    for (const f of edges.keys()) visit(f, []);
    expect(cycles).toEqual([]);
  });
});
