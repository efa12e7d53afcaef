/**
 * An unexpected error in a service process (a throw in a timer, a rejection nobody handled) is
 * logged with its stack and context and exits the process 70 for its supervisor; in a one-shot
 * command it goes to stderr as a bug report. Each case is a real process running ambit's handlers.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'ambit-crash-'));

const MAIN = JSON.stringify(join(ROOT, 'src/cli/main.ts'));

/** A process that installs ambit's handlers, names its command, then fails as `body` says. */
function crash(command: string, body: string): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  return runScript(`import { exitOnUnexpected } from ${MAIN};\nexitOnUnexpected(() => ${JSON.stringify(command)});\nsetInterval(() => undefined, 1000);\n${body}\n`);
}

function runScript(source: string): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const script = join(dir, `crash-${Math.random().toString(36).slice(2)}.mts`);
  writeFileSync(script, source);
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, env: { ...process.env, AMBIT_LOG_LEVEL: 'info' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`the process did not exit: ${stdout} ${stderr}`)); }, 30_000);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr, ms: Date.now() - t0 }); });
  });
}

describeAsRoot('an unexpected error in a service process', () => {
  it('is logged with its stack and context, and the process exits 70', async () => {
    const r = await crash('node', 'setTimeout(() => { throw new RangeError("boom in a timer"); }, 50);');
    expect(r.code).toBe(70);
    const line = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { level: number; component: string; origin: string; command: string; pid: number; err: { type: string; message: string; stack: string }; msg: string };
    expect(line).toMatchObject({ level: 60, component: 'process', origin: 'uncaughtException', command: 'node', err: { type: 'RangeError', message: 'boom in a timer' } });
    expect(line.err.stack).toMatch(/^RangeError: boom in a timer\n\s+at /);
    expect(line.msg).toBe('unexpected error (uncaughtException): node exits so its supervisor restarts it');
  });

  it('exits 70 on a rejection nobody handled', async () => {
    const r = await crash('waypoint run', 'void Promise.reject(new Error("lost rejection"));');
    expect(r.code).toBe(70);
    expect(r.stdout).toContain('"origin":"unhandledRejection"');
    expect(r.stdout).toContain('"command":"waypoint run"');
    expect(r.stdout).toContain('lost rejection');
  });

  it('is told apart by the subcommand commander runs (ambit waypoint run)', async () => {
    const r = await runScript(`import { buildProgram, exitOnUnexpected } from ${MAIN};
exitOnUnexpected();
const program = buildProgram();
const run = program.commands.find((c) => c.name() === 'waypoint')!.commands.find((c) => c.name() === 'run')!;
run.action(() => { setTimeout(() => { throw new Error('bug in the waypoint'); }, 10); return new Promise(() => undefined); });
await program.parseAsync(['node', 'ambit', 'waypoint', 'run', '--name', 'ns/wp', '--controller', '127.0.0.1:1', '--token-file', 't', '--ca-file', 'c']);
`);
    expect(r.code).toBe(70);
    expect(JSON.parse(r.stdout.trim().split('\n').at(-1)!)).toMatchObject({ level: 60, command: 'waypoint run', origin: 'uncaughtException', err: { message: 'bug in the waypoint' } });
  });

  it('in a one-shot command, goes to stderr as a bug report', async () => {
    const r = await crash('check', 'setTimeout(() => { throw new Error("check broke"); }, 10);');
    expect(r.code).toBe(70);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^ambit: unexpected error \(uncaughtException\) in check, please report it:\nError: check broke\n\s+at /);
  });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));
