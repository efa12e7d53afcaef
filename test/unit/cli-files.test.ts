/** `--token-file`: a projected ServiceAccount token the kubelet rotates in place is read at each use. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tokenFile } from '../../src/util/files.js';
import { authorization } from '../../src/identity/ca-server.js';

const dir = mkdtempSync(join(tmpdir(), 'ambit-token-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('tokenFile', () => {
  it('reads the token at each use, keeps the last one while the file is missing mid-rotation', () => {
    const path = join(dir, 'token');
    writeFileSync(path, 'first\n');
    const credential = tokenFile(path);
    expect(authorization(credential)).toBe('Bearer first');
    writeFileSync(path, 'second\n');
    expect(authorization(credential)).toBe('Bearer second');
    rmSync(path);
    expect(authorization(credential)).toBe('Bearer second');
    writeFileSync(path, '');
    expect(authorization(credential)).toBe('Bearer second');
  });

  it('an unreadable or empty file at start names the flag and the file', () => {
    expect(() => tokenFile(join(dir, 'absent'))).toThrow(/--token-file: cannot read .*absent/);
    writeFileSync(join(dir, 'empty'), '\n');
    expect(() => tokenFile(join(dir, 'empty'))).toThrow(/--token-file: .*empty is empty/);
    // An operator's mistake with its code and a hint (docs/ERRORS.md), not an unexpected error.
    expect(() => tokenFile(join(dir, 'empty'))).toThrow(expect.objectContaining({ code: 'AMBIT_E_FILE', hint: expect.stringMatching(/token/) }));
  });
});
