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
}

const BACKOFF_MAX_MS = 30_000;

export class Component {
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;
  private readonly backoff = new Backoff({ initialMs: 500, maxMs: BACKOFF_MAX_MS });
  private startedMs = 0;
  private stopping = false;
  restarts = 0;
  lastExit?: string;

  constructor(readonly spec: ComponentSpec, private readonly log: Logger) {}

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
    this.child.on('exit', (code, signal) => {
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
