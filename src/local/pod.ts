/**
 * A running pod of the local cluster: its containers as supervised processes (restart policy
 * with exponential backoff), their readiness probes, and its stop (SIGTERM, grace period, then
 * cgroup.kill). The pod's netns and cgroup are made by the runtime before start().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { request } from 'node:http';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import type { Logger } from 'pino';
import { socketInNetns } from '../host/netns.js';
import { expandArgv, type Container, type Probe } from '../kube/manifests.js';
import { cgroupProcs, launchArgv, removeCgroupTree, signalCgroup } from './process.js';
import { Backoff } from '../util/backoff.js';
import type { PodRecord } from './state.js';

export type Phase = 'Pending' | 'Running' | 'Succeeded' | 'Failed' | 'Terminating';

export interface ContainerStatus {
  name: string;
  state: 'waiting' | 'running' | 'terminated';
  reason?: string;
  exitCode?: number;
  pid?: number;
  restarts: number;
  ready: boolean;
  startedAt?: string;
}

/** Where a pod's processes run, and what they see. */
export interface PodEnvironment {
  netns: string;
  nodeNetns: string;
  cgroup: string;
  hostIp: string;
  files: { hosts: string; resolv: string };
  logFile(container: string): string;
  /** PATH and the like, before the container's own env. */
  baseEnv: Record<string, string>;
}

const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** A container that ran this long before exiting restarts without backoff, as after a clean run. */
const BACKOFF_RESET_MS = 30_000;

class ContainerProcess {
  status: ContainerStatus;
  child?: ChildProcess;
  private readonly backoff = new Backoff({ initialMs: BACKOFF_START_MS, maxMs: BACKOFF_MAX_MS });
  private restartTimer?: NodeJS.Timeout;
  private probeTimer?: NodeJS.Timeout;
  private probeOk = 0;
  private probeFail = 0;
  private startedMs = 0;

  constructor(private readonly pod: LocalPod, readonly spec: Container) {
    this.status = { name: spec.name, state: 'waiting', reason: 'ContainerCreating', restarts: 0, ready: false };
  }

  start(): void {
    const { env: podEnv, record } = this.pod;
    const env = { ...podEnv.baseEnv, HOSTNAME: record.spec.hostname ?? record.name, ...this.pod.containerEnv(this.spec) };
    const argv = launchArgv({
      cgroup: podEnv.cgroup,
      netns: podEnv.netns,
      files: { ...podEnv.files, hostname: record.spec.hostname ?? record.name },
      argv: expandArgv(this.spec.argv, env),
    });
    const log = openSync(podEnv.logFile(this.spec.name), 'a');
    try {
      // Detached: its own process group, untouched by signals aimed at the runtime's.
      this.child = spawn(argv[0]!, argv.slice(1), { cwd: this.spec.cwd, env, stdio: ['ignore', log, log], detached: true });
    } finally {
      closeSync(log);
    }
    this.startedMs = Date.now();
    this.status = { ...this.status, state: 'running', reason: undefined, exitCode: undefined, pid: this.child.pid, startedAt: new Date().toISOString(), ready: false };
    this.child.on('error', (err) => this.pod.log.warn({ container: this.spec.name, err: err.message }, 'container failed to start'));
    this.child.on('exit', (code, signal) => this.exited(code, signal));
    this.startProbe();
    this.pod.changed();
  }

  private exited(code: number | null, signal: NodeJS.Signals | null): void {
    this.child = undefined;
    this.stopProbe();
    const exitCode = code ?? 128 + (signal ? constants.signals[signal] : 0);
    this.status = { ...this.status, state: 'terminated', exitCode, pid: undefined, ready: false, reason: exitCode === 0 ? 'Completed' : 'Error' };
    if (this.pod.stopping) return this.pod.changed();
    this.pod.log.info({ container: this.spec.name, exitCode, signal }, 'container exited');
    const policy = this.pod.record.spec.restartPolicy;
    if (policy === 'Never' || (policy === 'OnFailure' && exitCode === 0)) return this.pod.changed();
    const ran = Date.now() - this.startedMs;
    // A container that ran long enough restarts at once, and its next crash waits BACKOFF_START_MS again.
    if (ran >= BACKOFF_RESET_MS) this.backoff.reset();
    const wait = ran >= BACKOFF_RESET_MS ? 0 : this.backoff.next();
    this.status = { ...this.status, state: 'waiting', reason: wait > BACKOFF_START_MS ? 'CrashLoopBackOff' : 'Restarting' };
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.pod.stopping) return;
      this.status.restarts++;
      this.start();
    }, wait);
    this.pod.changed();
  }

  private startProbe(): void {
    const probe = this.spec.readinessProbe;
    if (!probe) {
      this.status.ready = true;
      return;
    }
    this.probeOk = this.probeFail = 0;
    const tick = (): void => {
      void this.pod.probe(probe, this.spec).then((ok) => {
        if (!this.child) return;
        if (ok) { this.probeOk++; this.probeFail = 0; } else { this.probeFail++; this.probeOk = 0; }
        const ready = this.status.ready ? this.probeFail < probe.failureThreshold : this.probeOk >= probe.successThreshold;
        if (ready !== this.status.ready) {
          this.status.ready = ready;
          this.pod.changed();
        }
        this.probeTimer = setTimeout(tick, probe.periodSeconds * 1000);
      });
    };
    this.probeTimer = setTimeout(tick, probe.initialDelaySeconds * 1000);
  }

  private stopProbe(): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  cancel(): void {
    clearTimeout(this.restartTimer);
    this.stopProbe();
  }
}

export class LocalPod {
  readonly containers: ContainerProcess[];
  stopping = false;

  constructor(
    readonly record: PodRecord,
    readonly env: PodEnvironment,
    readonly log: Logger,
    private readonly onChange: (pod: LocalPod) => void,
  ) {
    this.containers = record.spec.containers.map((c) => new ContainerProcess(this, c));
  }

  get key(): string {
    return `${this.record.namespace}/${this.record.name}`;
  }

  start(): void {
    for (const c of this.containers) c.start();
  }

  changed(): void {
    this.onChange(this);
  }

  /** The container's env with Kubernetes' downward API (fieldRef) values filled in. */
  containerEnv(container: Container): Record<string, string> {
    const fields: Record<string, string> = {
      'metadata.name': this.record.name,
      'metadata.namespace': this.record.namespace,
      'status.podIP': this.record.ip,
      'spec.nodeName': this.record.node,
      'spec.serviceAccountName': this.record.spec.serviceAccountName,
      'status.hostIP': this.env.hostIp,
    };
    const env: Record<string, string> = {};
    for (const v of container.env) env[v.name] = 'value' in v ? expandArgv([v.value], env)[0]! : fields[v.fieldRef] ?? '';
    return env;
  }

  get phase(): Phase {
    if (this.stopping) return 'Terminating';
    const states = this.containers.map((c) => c.status);
    if (states.some((s) => s.state === 'running' || s.reason === 'Restarting' || s.reason === 'CrashLoopBackOff')) return 'Running';
    if (states.every((s) => s.state === 'terminated')) return states.every((s) => s.exitCode === 0) ? 'Succeeded' : 'Failed';
    return 'Pending';
  }

  get ready(): boolean {
    return !this.stopping && this.containers.every((c) => c.status.state === 'running' && c.status.ready);
  }

  get restarts(): number {
    return this.containers.reduce((n, c) => n + c.status.restarts, 0);
  }

  /** Resolves a probe or service port: a number, or the name of a container port. */
  resolvePort(port: number | string, container?: Container): number | undefined {
    if (typeof port === 'number') return port;
    const containers = container ? [container] : this.record.spec.containers;
    for (const c of containers) {
      const found = c.ports.find((p) => p.name === port);
      if (found) return found.containerPort;
    }
    return undefined;
  }

  /** Runs one readiness probe from the node's netns, as the kubelet does from the node. */
  async probe(probe: Probe, container: Container): Promise<boolean> {
    const timeoutMs = probe.timeoutSeconds * 1000;
    if (probe.exec) {
      return new Promise((resolve) => {
        const argv = launchArgv({ cgroup: this.env.cgroup, netns: this.env.netns, argv: probe.exec!.command });
        const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', cwd: container.cwd, env: { ...this.env.baseEnv, ...this.containerEnv(container) } });
        const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
        child.on('error', () => resolve(false));
        child.on('exit', (code) => { clearTimeout(timer); resolve(code === 0); });
      });
    }
    const target = probe.tcpSocket ?? probe.httpGet;
    const port = target ? this.resolvePort(target.port, container) : undefined;
    if (port === undefined) return false;
    let socket: Socket;
    try {
      socket = new Socket({ fd: socketInNetns(`/run/netns/${this.env.nodeNetns}`, 4), readable: true, writable: true });
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'probe socket');
      return false;
    }
    return new Promise((resolve) => {
      let done = false;
      const finish = (ok: boolean) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        socket.destroy();
        resolve(ok);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      socket.on('error', () => finish(false));
      socket.connect(port, this.record.ip, () => {
        if (!probe.httpGet) return finish(true);
        const req = request({ createConnection: () => socket, path: probe.httpGet.path, headers: { 'user-agent': 'ambit-probe', host: `${this.record.ip}:${port}` } }, (res) => {
          res.resume();
          const code = res.statusCode ?? 0;
          finish(code >= 200 && code < 400);
        });
        req.on('error', () => finish(false));
        req.end();
      });
    });
  }

  status(): ContainerStatus[] {
    return this.containers.map((c) => ({ ...c.status }));
  }

  /** SIGTERM to every process of the pod, SIGKILL (cgroup.kill) after the grace period. */
  async stop(maxGraceMs = 30_000): Promise<void> {
    this.stopping = true;
    for (const c of this.containers) c.cancel();
    this.changed();
    signalCgroup(this.env.cgroup, 'SIGTERM');
    const deadline = Date.now() + Math.min(maxGraceMs, this.record.spec.terminationGracePeriodSeconds * 1000);
    while (Date.now() < deadline && cgroupProcs(this.env.cgroup).length > 0) await new Promise((r) => setTimeout(r, 25));
    await removeCgroupTree(this.env.cgroup);
  }
}
