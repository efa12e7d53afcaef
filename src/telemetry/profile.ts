/**
 * V8 CPU profiles of a running process, started after it has set itself up. `node --cpu-prof`
 * samples with SIGPROF from the first instruction, and the kernel's BPF verifier gives up with
 * EAGAIN whenever a signal is pending: a node agent started under it cannot load its programs.
 * This profiler starts through the inspector once the datapath is loaded, and writes the profile
 * (open it in Chrome DevTools or speedscope) when the process stops.
 *
 * Enabled by `AMBIT_CPU_PROFILE_DIR=DIR` (and `AMBIT_CPU_PROFILE_INTERVAL_US`, default 1000):
 * meant for benches (`bench/l4-hop.ts --profile`), never on by default.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

export interface CpuProfiler {
  /** Stops sampling and writes the profile; returns its path. */
  stop(): Promise<string>;
}

function post<T>(session: Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => {
    session.post(method, params ?? {}, (err, result) => (err ? reject(err) : resolve(result as T)));
  });
}

/** Starts sampling this process into `dir` as `<name>.<pid>.cpuprofile`. */
export async function startCpuProfile(dir: string, name: string, intervalUs = 1000): Promise<CpuProfiler> {
  mkdirSync(dir, { recursive: true });
  const session = new Session();
  session.connect();
  await post(session, 'Profiler.enable');
  await post(session, 'Profiler.setSamplingInterval', { interval: intervalUs });
  await post(session, 'Profiler.start');
  let written: Promise<string> | undefined;
  return {
    stop: () => (written ??= (async () => {
      const { profile } = await post<{ profile: unknown }>(session, 'Profiler.stop');
      session.disconnect();
      const path = join(dir, `${name}.${process.pid}.cpuprofile`);
      writeFileSync(path, JSON.stringify(profile));
      return path;
    })()),
  };
}

/** The profiler `AMBIT_CPU_PROFILE_DIR` asks for, or none. */
export async function cpuProfileFromEnv(name: string): Promise<CpuProfiler | undefined> {
  const dir = process.env.AMBIT_CPU_PROFILE_DIR;
  if (!dir) return undefined;
  const interval = Number(process.env.AMBIT_CPU_PROFILE_INTERVAL_US ?? 1000);
  return startCpuProfile(dir, name, Number.isInteger(interval) && interval > 0 ? interval : 1000);
}
