/**
 * A throwaway lab of network namespaces, veth links, cgroups and a bpffs pin root, all named
 * after one random id and all removed by cleanup(), which is safe after any failure and twice.
 * Used by the integration tests, the benchmarks and the redirection demo. Nothing here gets a
 * link or route to the host's network.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { Datapath } from '../ebpf/datapath.js';
import { cgroup2Mount } from '../ebpf/mounts.js';

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export class Lab {
  readonly id = `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  readonly cgroupRoot: string;
  readonly pinRoot: string;
  private readonly namespaces: string[] = [];
  private readonly cgroups: string[] = [];
  private readonly children = new Set<ChildProcess>();
  private readonly cleanups: (() => unknown)[] = [];
  private links = 0;

  constructor(prefix = 'ambit-test') {
    const cg = cgroup2Mount();
    if (!cg) throw new Error('cgroup v2 is not mounted (see `ambit check`)');
    this.cgroupRoot = join(cg, `${prefix}-${this.id}`);
    this.pinRoot = `/sys/fs/bpf/${prefix}-${this.id}`;
    mkdirSync(this.cgroupRoot);
    this.cgroups.push(this.cgroupRoot);
  }

  /** A new netns with loopback up; returns its path. */
  netns(name: string): string {
    const full = `ambit-${this.id}-${name}`;
    ip('netns', 'add', full);
    this.namespaces.push(full);
    ip('-n', full, 'link', 'set', 'lo', 'up');
    return `/run/netns/${full}`;
  }

  private nsName(path: string): string {
    return path.slice('/run/netns/'.length);
  }

  /** Gives the netns local addresses (on its loopback): `10.1.0.2/32`, `fd00::2/128`. */
  addresses(netnsPath: string, ...cidrs: string[]): void {
    const ns = this.nsName(netnsPath);
    for (const cidr of cidrs) ip('-n', ns, 'addr', 'add', cidr, 'dev', 'lo', ...(cidr.includes(':') ? ['nodad'] : []));
  }

  /** A veth between two namespaces with an address on each end (same /24 or /64). */
  link(a: string, aCidr: string, b: string, bCidr: string): void {
    const n = this.links++;
    const [ea, eb] = [`va${this.id}${n}`.slice(0, 15), `vb${this.id}${n}`.slice(0, 15)];
    ip('link', 'add', ea, 'netns', this.nsName(a), 'type', 'veth', 'peer', 'name', eb, 'netns', this.nsName(b));
    for (const [ns, dev, cidr] of [[a, ea, aCidr], [b, eb, bCidr]] as const) {
      ip('-n', this.nsName(ns), 'addr', 'add', cidr, 'dev', dev, ...(cidr.includes(':') ? ['nodad'] : []));
      ip('-n', this.nsName(ns), 'link', 'set', dev, 'up');
    }
  }

  /** A cgroup under the lab's root; returns its path. */
  cgroup(name: string): string {
    const path = join(this.cgroupRoot, name);
    mkdirSync(path);
    this.cgroups.push(path);
    return path;
  }

  /** Registers extra cleanup (run first, in reverse order). */
  defer(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  /**
   * Runs a command inside a netns and, when given, a cgroup: the shell joins the cgroup before
   * exec, so every socket the command makes belongs to it (as a pod's processes do).
   */
  spawn(netnsPath: string | undefined, cgroupPath: string | undefined, cmd: string[]): ChildProcess {
    const join = cgroupPath ? `echo $$ > '${cgroupPath}/cgroup.procs' && ` : '';
    const enter = netnsPath ? `nsenter --net='${netnsPath}' -- ` : '';
    const child = spawn('sh', ['-c', `${join}exec ${enter}"$@"`, 'sh', ...cmd], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  run(netnsPath: string | undefined, cgroupPath: string | undefined, cmd: string[], timeoutMs = 20_000): Promise<RunResult> {
    const child = this.spawn(netnsPath, cgroupPath, cmd);
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`timed out: ${cmd.join(' ')}\n${stderr}`)); }, timeoutMs);
      child.on('close', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
    });
  }

  async cleanup(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (fn: () => unknown) => { try { await fn(); } catch (err) { errors.push(err); } };
    for (const fn of this.cleanups.splice(0).reverse()) await attempt(fn);
    for (const child of this.children) child.kill('SIGKILL');
    await Promise.all([...this.children].map((c) => new Promise((r) => (c.exitCode !== null ? r(null) : c.once('exit', r)))));
    await attempt(() => Datapath.remove(this.pinRoot));
    for (const ns of this.namespaces.splice(0).reverse()) await attempt(() => ip('netns', 'del', ns));
    for (const cg of this.cgroups.splice(0).reverse()) {
      await attempt(async () => {
        if (!existsSync(cg)) return;
        // A process that just exited may still be listed for a moment.
        for (let i = 0; i < 50 && readFileSync(join(cg, 'cgroup.procs'), 'utf8').trim() !== ''; i++) await new Promise((r) => setTimeout(r, 20));
        rmdirSync(cg);
      });
    }
    if (errors.length > 0) throw new AggregateError(errors, `lab ${this.id}: cleanup failed`);
  }
}
