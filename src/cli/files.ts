/** Files the long-running commands read at start (credentials, trust bundles), with errors that name the flag. */
import { readFileSync } from 'node:fs';
import type { Credential } from '../identity/ca-server.js';
import { CliError } from './errors.js';

export function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new CliError(`${flag}: cannot read ${path}: ${(err as Error).message}`);
  }
}

/**
 * `--token-file`, read at each use: the kubelet rotates a projected ServiceAccount token in place
 * (`ambit install` mounts one of 1 h). A read that fails later (mid-rotation) falls back to the
 * last token read; an unreadable or empty file at start is an error.
 */
export function tokenFile(path: string): Credential {
  let last = readFlagFile('--token-file', path).trim();
  if (!last) throw new CliError(`--token-file: ${path} is empty`);
  return () => {
    try {
      const token = readFileSync(path, 'utf8').trim();
      if (token) last = token;
    } catch {
      // keep the last token
    }
    return last;
  };
}
