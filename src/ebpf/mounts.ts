/** Finds where bpffs and cgroup v2 are mounted, from /proc/mounts. */
import { readFileSync } from 'node:fs';

/** Where a node agent pins its maps and links by default, in the host's bpffs (the install's nodeAgent.pinRoot). */
export const DEFAULT_PIN_ROOT = '/sys/fs/bpf/ambit';

export interface Mount {
  source: string;
  target: string;
  type: string;
}

export function readMounts(path = '/proc/mounts'): Mount[] {
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => {
      const [source = '', target = '', type = ''] = line.split(' ');
      // /proc/mounts escapes spaces and other specials as octal.
      return { source, target: target.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), type };
    });
}

/** The cgroup v2 mount: `/sys/fs/cgroup` on unified hosts, e.g. `/sys/fs/cgroup/unified` on hybrid ones. */
export function cgroup2Mount(mounts = readMounts()): string | undefined {
  const v2 = mounts.filter((m) => m.type === 'cgroup2');
  return (v2.find((m) => m.target === '/sys/fs/cgroup') ?? v2[0])?.target;
}

export function bpffsMount(mounts = readMounts()): string | undefined {
  const bpf = mounts.filter((m) => m.type === 'bpf');
  return (bpf.find((m) => m.target === '/sys/fs/bpf') ?? bpf[0])?.target;
}
