/** The `ambit` CLI as integration tests drive it: a child process with the test's environment, bounded in time. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';

export const ROOT = new URL('../../../', import.meta.url).pathname;

export interface Run { code: number | null; stdout: string; stderr: string }

export function cli(env: NodeJS.ProcessEnv): { ambit(args: string[], timeoutMs?: number): Promise<Run>; ok(args: string[]): Promise<string> } {
  const ambit = (args: string[], timeoutMs = 120_000): Promise<Run> => new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), ...args], { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`timed out: ambit ${args.join(' ')}`)); }, timeoutMs);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
  const ok = async (args: string[]): Promise<string> => {
    const r = await ambit(args);
    if (r.code !== 0) throw new Error(`ambit ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
    return r.stdout;
  };
  return { ambit, ok };
}
