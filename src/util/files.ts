/** Files the long-running processes read at start (credentials, trust bundles), with errors that name the flag. */
import { existsSync, readFileSync } from 'node:fs';
import { OperatorError } from './errors.js';

export function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new OperatorError(`${flag}: cannot read ${path}: ${(err as Error).message}`, 'the file is mounted and readable by this process', 1, 'AMBIT_E_FILE');
  }
}

/**
 * `--token-file`, read at each use: the kubelet rotates a projected ServiceAccount token in place
 * (`ambit install` mounts one of 1 h). A read that fails later (mid-rotation) falls back to the
 * last token read; an unreadable or empty file at start is an error.
 */
export function tokenFile(path: string): () => string {
  let last = readFlagFile('--token-file', path).trim();
  if (!last) throw new OperatorError(`--token-file: ${path} is empty`, 'the token is written there before the process starts (in Kubernetes: a projected ServiceAccount token)', 1, 'AMBIT_E_FILE');
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

/**
 * Waits (up to `timeoutMs`) for a file another process writes on its first start, as the
 * controller writes the mesh's root: an agent or a waypoint started beside it reads it then.
 */
export async function waitForFile(path: string, timeoutMs = 60_000): Promise<void> {
  for (const end = Date.now() + timeoutMs; !existsSync(path) && Date.now() < end;) await new Promise((r) => setTimeout(r, 100));
}
