/**
 * The CLI's side of a local cluster: finding and starting its runtime, talking to it over its
 * unix socket, reading manifest files, and tearing the whole cluster down.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { dirname, extname, join, resolve } from 'node:path';
import { ambitBin } from '../util/package.js';
import { LocalError } from './errors.js';
import type { ClusterLayout } from './layout.js';
import type { Diagnostic, ManifestInput } from '../kube/manifests.js';
import { removeKernelObjects } from './runtime.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The runtime's pid when it is alive: the pid file names it and the process sits in the cluster's runtime cgroup. */
export function runtimePid(layout: ClusterLayout): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(layout.pidFile, 'utf8').trim());
  } catch {
    return undefined;
  }
  try {
    // A recycled pid would not be in this cluster's cgroup.
    const cgroup = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    return cgroup.includes(`/${layout.prefix}/system/runtime`) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A refused request, with the runtime's diagnostics when it refused manifests. */
export class RuntimeRequestError extends LocalError {
  constructor(message: string, hint: string | undefined, readonly diagnostics?: Diagnostic[]) {
    super(message, hint);
  }
}

export class RuntimeClient {
  constructor(readonly layout: ClusterLayout) {}

  async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolvePromise, reject) => {
      const req = request({ socketPath: this.layout.socketPath, method, path, headers: payload ? { 'content-type': 'application/json' } : {} }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return reject(new LocalError(`the runtime of cluster ${this.layout.name} sent an unreadable answer to ${method} ${path}`));
          }
          if ((res.statusCode ?? 500) >= 400) {
            const e = parsed as { error?: string; hint?: string; diagnostics?: Diagnostic[] };
            return reject(new RuntimeRequestError(e.error ?? `HTTP ${res.statusCode}`, e.hint, e.diagnostics));
          }
          resolvePromise(parsed as T);
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new LocalError(`cluster ${this.layout.name} is not running`, `start it: ambit local up --cluster ${this.layout.name}`));
        } else reject(err);
      });
      req.end(payload);
    });
  }
}

/** Starts the cluster's runtime in the background (it creates or recovers the cluster) and waits until it answers. */
export async function startRuntime(layout: ClusterLayout, nodes: number | undefined, timeoutMs = 60_000): Promise<number> {
  mkdirSync(layout.logDir, { recursive: true });
  const logFile = layout.componentLog('runtime');
  const out = openSync(logFile, 'a');
  const args = [ambitBin(), 'local', 'runtime', '--cluster', layout.name, ...(nodes === undefined ? [] : ['--nodes', String(nodes)])];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out], env: { ...process.env, AMBIT_LOG_LEVEL: process.env.AMBIT_LOG_LEVEL ?? 'info' } });
  closeSync(out);
  let exited: number | null | undefined;
  child.on('exit', (code) => { exited = code; });
  child.unref();
  const client = new RuntimeClient(layout);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited !== undefined) break;
    const pid = runtimePid(layout);
    if (pid !== undefined && pid === child.pid) {
      try {
        await client.request('GET', '/v1/status');
        return pid;
      } catch { /* not listening yet */ }
    }
    await sleep(100);
  }
  if (exited === undefined) child.kill('SIGKILL');
  throw new LocalError(`the runtime of cluster ${layout.name} did not start${exited !== undefined ? ` (exit ${exited})` : ''}:\n${tail(logFile, 15)}`, `full log: ${logFile}`);
}

/** The last lines of a log file, pino's JSON lines reduced to their messages. */
export function tail(file: string, lines: number): string {
  if (!existsSync(file)) return '  (no log)';
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((line) => {
    try {
      const rec = JSON.parse(line) as { msg?: string; err?: string };
      return `  ${rec.msg ?? ''}${rec.err ? `: ${rec.err}` : ''}`;
    } catch {
      return `  ${line}`;
    }
  }).join('\n');
}

/**
 * Stops the runtime (its pods get SIGTERM and a grace period) and removes every process,
 * cgroup, netns, pinned BPF object and state file of the cluster. Safe to run again, and on a
 * cluster whose runtime crashed.
 */
export async function removeCluster(layout: ClusterLayout): Promise<{ existed: boolean }> {
  const existed = existsSync(layout.stateDir) || existsSync(layout.cgroupRoot);
  const pid = runtimePid(layout);
  if (pid !== undefined) {
    try {
      await new RuntimeClient(layout).request('POST', '/v1/shutdown');
    } catch { /* it may die before answering */ }
    for (let i = 0; i < 300 && runtimePid(layout) === pid; i++) await sleep(50);
    if (runtimePid(layout) === pid) process.kill(pid, 'SIGKILL');
  }
  await removeKernelObjects(layout);
  rmSync(layout.stateDir, { recursive: true, force: true });
  return { existed };
}

const MANIFEST_EXTENSIONS = new Set(['.yaml', '.yml', '.json']);

/** Reads `-f` arguments: files, directories (their *.yaml, *.yml, *.json, recursively, sorted) and `-` for stdin. */
export function readManifestInputs(paths: string[]): ManifestInput[] {
  const inputs: ManifestInput[] = [];
  const add = (path: string) => inputs.push({ file: path, text: readFileSync(path, 'utf8'), dir: dirname(resolve(path)) });
  for (const path of paths) {
    if (path === '-') {
      inputs.push({ file: '<stdin>', text: readFileSync(0, 'utf8'), dir: process.cwd() });
      continue;
    }
    let stat;
    try {
      stat = statSync(path);
    } catch {
      throw new LocalError(`${path}: no such file or directory`);
    }
    if (!stat.isDirectory()) {
      add(path);
      continue;
    }
    const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true })
      .sort((a, b) => a.name.localeCompare(b.name))
      .flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : MANIFEST_EXTENSIONS.has(extname(e.name)) ? [join(dir, e.name)] : []));
    const files = walk(path);
    if (files.length === 0) throw new LocalError(`${path}: no .yaml, .yml or .json files in this directory`);
    files.forEach(add);
  }
  return inputs;
}
