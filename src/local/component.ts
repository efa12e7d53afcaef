/**
 * A cluster component (the controller; node agents later) supervised by the local runtime: one
 * process in a netns of the cluster and a cgroup of its own, restarted with backoff when it
 * exits, its output appended to logs/<name>.log.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import type { Logger } from 'pino';
import { Backoff } from '../util/backoff.js';
import { launchArgv, removeCgroupTree, signalCgroup, cgroupProcs } from './process.js';

export interface ComponentSpec {
  name: string;
  node?: string;
  netns: string;
  cgroup: string;
  argv: string[];
  env: Record<string, string>;
  logFile: string;
  /** A check that the component serves (e.g. a TCP connect); absent: alive is healthy. */
  health?: () => Promise<boolean>;
  /** The first restart's delay after an exit (500 ms unless said; doubling up to 30 s). */
  restartDelayMs?: number;
}

const BACKOFF_MAX_MS = 30_000;

export class Component {
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;
  private readonly backoff: Backoff;
  private startedMs = 0;
  private stopping = false;
  restarts = 0;
  lastExit?: string;

  constructor(readonly spec: ComponentSpec, private readonly log: Logger) {
    this.backoff = new Backoff({ initialMs: spec.restartDelayMs ?? 500, maxMs: BACKOFF_MAX_MS });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Whether it was stopped on purpose (`ambit local component stop`), as opposed to exited. */
  get stopped(): boolean {
    return this.stopping;
  }

  start(): void {
    this.stopping = false;
    mkdirSync(this.spec.cgroup, { recursive: true });
    const out = openSync(this.spec.logFile, 'a');
    const argv = launchArgv({ cgroup: this.spec.cgroup, netns: this.spec.netns, argv: this.spec.argv });
    try {
      this.child = spawn(argv[0]!, argv.slice(1), { env: this.spec.env, stdio: ['ignore', out, out], detached: true });
    } finally {
      closeSync(out);
    }
    this.startedMs = Date.now();
    const child = this.child;
    child.on('exit', (code, signal) => {
      // A process handed over to its successor (`handover`) exits as told: not a crash.
      if (this.child !== child) return;
      this.child = undefined;
      if (this.stopping) return;
      this.lastExit = signal ? `signal ${signal}` : `exit ${code}`;
      // A component that ran for 30 s starts over at 500 ms.
      if (Date.now() - this.startedMs > 30_000) this.backoff.reset();
      const wait = this.backoff.next();
      this.log.warn({ component: this.spec.name, node: this.spec.node, exit: this.lastExit, restartInMs: wait }, 'component exited');
      this.timer = setTimeout(() => {
        this.restarts++;
        this.start();
      }, wait);
    });
  }

  async healthy(): Promise<boolean> {
    if (!this.child) return false;
    return this.spec.health ? this.spec.health().catch(() => false) : true;
  }

  /**
   * Replaces the running process with a new one without a moment where none serves: the new one
   * starts beside the old (same cgroup and netns), and once `ready(pid)` says it serves, the old
   * one gets SIGTERM (SIGKILL after `graceMs`) and is waited for. The node agent's handover
   * (docs/DATAPATH.md, "Restarts and upgrades"). If the new one exits or is not ready within
   * `readyTimeoutMs`, it is killed and the old one keeps running.
   */
  async handover(ready: (pid: number) => Promise<boolean>, opts: { readyTimeoutMs: number; graceMs: number }): Promise<{ oldPid?: number; pid?: number; readyMs: number; oldExitMs: number }> {
    const old = this.child;
    const t0 = Date.now();
    if (!old) {
      this.start();
      return { ...(this.pid ? { pid: this.pid } : {}), readyMs: 0, oldExitMs: 0 };
    }
    clearTimeout(this.timer);
    this.start();
    const next = this.child!;
    const deadline = t0 + opts.readyTimeoutMs;
    let ok = false;
    while (Date.now() < deadline && next.exitCode === null && next.signalCode === null) {
      if (next.pid !== undefined && await ready(next.pid).catch(() => false)) {
        ok = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!ok) {
      this.child = old;
      if (next.exitCode === null && next.signalCode === null) {
        next.kill('SIGKILL');
        await new Promise((r) => next.once('exit', r));
      }
      throw new Error(`the new ${this.spec.name} (pid ${next.pid}) was not ready within ${opts.readyTimeoutMs} ms${next.exitCode !== null ? ` (it exited with ${next.exitCode})` : ''}; the old one (pid ${old.pid}) keeps running`);
    }
    const readyMs = Date.now() - t0;
    const exited = new Promise((r) => old.once('exit', r));
    if (old.exitCode === null && old.signalCode === null) {
      old.kill('SIGTERM');
      const killer = setTimeout(() => old.kill('SIGKILL'), opts.graceMs);
      await exited;
      clearTimeout(killer);
    }
    this.log.info({ component: this.spec.name, node: this.spec.node, oldPid: old.pid, pid: next.pid, readyMs, oldExitMs: Date.now() - t0 - readyMs }, 'component handed over');
    return { ...(old.pid ? { oldPid: old.pid } : {}), ...(next.pid ? { pid: next.pid } : {}), readyMs, oldExitMs: Date.now() - t0 - readyMs };
  }

  async stop(graceMs = 5000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    signalCgroup(this.spec.cgroup, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && cgroupProcs(this.spec.cgroup).length > 0) await new Promise((r) => setTimeout(r, 25));
    const child = this.child;
    await removeCgroupTree(this.spec.cgroup);
    // Stopped means its process has been reaped: a start right after must not see the old one.
    if (child && child.exitCode === null && child.signalCode === null) await new Promise((r) => child.once('exit', r));
  }
}
