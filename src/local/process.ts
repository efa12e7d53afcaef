/**
 * Starting processes as a pod's own, and the cgroup plumbing around them.
 *
 * A pod process is started by a short shell chain, each step exec'ing the next so that the
 * process the runtime holds *is* the application in the end:
 *   sh: join the pod's cgroup (every socket made from then on belongs to the pod, which is
 *       what ambit's cgroup eBPF hooks key on)
 *   nsenter --net: enter the pod's netns (setns, not `ip netns exec`, which remounts /sys)
 *   unshare --mount --uts: a private mount and UTS namespace, so that the pod's own
 *       /etc/hosts and /etc/resolv.conf can be bind-mounted and its hostname set without
 *       touching the host's files
 *   sh: the bind mounts and the hostname, then exec the command.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface PodLaunch {
  cgroup?: string;
  netns: string;
  /** When set: bind-mounted over /etc/hosts and /etc/resolv.conf, and the UTS hostname. */
  files?: { hosts: string; resolv: string; hostname: string };
  argv: string[];
}

const SETUP = [
  'mount --bind "$1" /etc/hosts',
  '{ [ ! -e /etc/resolv.conf ] || mount --bind "$2" /etc/resolv.conf; }',
  'echo "$3" > /proc/sys/kernel/hostname',
  'shift 3',
  'exec "$@"',
].join(' && ');

/** The argv to spawn (`sh -c ...`) that runs `launch.argv` inside the pod. */
export function launchArgv(launch: PodLaunch): string[] {
  const join = launch.cgroup ? 'echo $$ > "$1/cgroup.procs" && ' : '';
  const nsenter = `exec nsenter --net=/run/netns/${shellQuote(launch.netns)} --`;
  if (!launch.files) return ['sh', '-c', `${join}shift 1 && ${nsenter} "$@"`, 'ambit-pod', launch.cgroup ?? '', ...launch.argv];
  const { hosts, resolv, hostname } = launch.files;
  const unshare = `unshare --mount --uts --propagation private -- sh -c '${SETUP}' ambit-pod "$@"`;
  return ['sh', '-c', `${join}shift 1 && ${nsenter} ${unshare}`, 'ambit-pod', launch.cgroup ?? '', hosts, resolv, hostname, ...launch.argv];
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

export function cgroupProcs(cgroup: string): number[] {
  try {
    return readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Signals every process in the cgroup (and its children). */
export function signalCgroup(cgroup: string, signal: NodeJS.Signals): void {
  for (const pid of cgroupTreeProcs(cgroup)) {
    try { process.kill(pid, signal); } catch { /* already gone */ }
  }
}

function cgroupTreeProcs(cgroup: string): number[] {
  if (!existsSync(cgroup)) return [];
  const children = readdirSync(cgroup, { withFileTypes: true }).filter((e) => e.isDirectory());
  return [...cgroupProcs(cgroup), ...children.flatMap((c) => cgroupTreeProcs(join(cgroup, c.name)))];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Kills everything in a cgroup tree and removes it, bottom-up. cgroup.kill (Linux 5.14+)
 * kills atomically, so a process forking at that moment cannot escape.
 */
export async function removeCgroupTree(cgroup: string): Promise<void> {
  if (!existsSync(cgroup)) return;
  for (const entry of readdirSync(cgroup, { withFileTypes: true })) {
    if (entry.isDirectory()) await removeCgroupTree(join(cgroup, entry.name));
  }
  const killFile = join(cgroup, 'cgroup.kill');
  if (existsSync(killFile)) writeFileSync(killFile, '1');
  else signalCgroup(cgroup, 'SIGKILL');
  // The kernel empties cgroup.procs once the killed processes have been reaped.
  for (let i = 0; i < 250 && cgroupProcs(cgroup).length > 0; i++) await sleep(20);
  for (let i = 0; ; i++) {
    try {
      rmdirSync(cgroup);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      if (i >= 50) throw new Error(`cannot remove cgroup ${cgroup}: ${(err as Error).message} (processes: ${cgroupProcs(cgroup).join(', ') || 'none'})`);
      await sleep(20);
    }
  }
}
