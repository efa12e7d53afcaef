/**
 * docs/ERRORS.md lists every code ambit gives: the kernel and host codes (AMBIT_E_*), the HBONE
 * refusal codes and the response flags. A code added to the source without a line there fails
 * here; so does a line for a code the source no longer has.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { HBONE_CODES } from '../../src/hbone/limits.js';
import { UPSTREAM_OVERFLOW_FLAG } from '../../src/waypoint/resilience.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const doc = readFileSync(join(ROOT, 'docs', 'ERRORS.md'), 'utf8');

function source(dir: string): string {
  return readdirSync(dir).map((n) => (statSync(join(dir, n)).isDirectory() ? source(join(dir, n)) : n.endsWith('.ts') ? readFileSync(join(dir, n), 'utf8') : '')).join('\n');
}
const src = source(join(ROOT, 'src'));

/** The codes in the first column of a section's table. */
function listed(section: string): Set<string> {
  const text = new RegExp(`^## ${section}\\n([\\s\\S]*?)(?=^## |$(?![\\s\\S]))`, 'm').exec(doc)?.[1] ?? '';
  return new Set([...text.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1] as string));
}

describe('docs/ERRORS.md', () => {
  it('lists every AMBIT_E_ code the source has, and no other', () => {
    const used = new Set([...src.matchAll(/'(AMBIT_E_[A-Z_]+)'/g)].map((m) => m[1] as string));
    expect(used.size).toBeGreaterThan(10);
    expect([...used].sort()).toEqual([...listed('Kernel and host: `AMBIT_E_\\*`'), ...listed('Operator errors')].sort());
  });

  it('lists every HBONE refusal code', () => {
    expect(Object.values(HBONE_CODES).sort()).toEqual([...listed('HBONE refusals: the `ambit-code` header')].sort());
  });

  it('lists every response flag the proxies set', () => {
    // Every short upper-case literal on a line that sets flags or answers a request.
    const set = new Set<string>();
    for (const line of src.split('\n')) {
      if (!/flags|reply\(|finish\(/.test(line)) continue;
      for (const m of line.matchAll(/'([A-Z]{2,4})'/g)) set.add(m[1] as string);
    }
    for (const notFlag of ['GET', 'POST', 'PUT', 'HEAD', 'TCP', 'UDP']) set.delete(notFlag);
    set.add(UPSTREAM_OVERFLOW_FLAG);
    set.add('DI');
    const documented = listed('Response flags');
    for (const flag of set) expect(documented, `flag ${flag}`).toContain(flag);
    expect(documented).toContain('-');
  });
});
