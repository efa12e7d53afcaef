/**
 * The real probes behind `ambit check`: read this node's kernel, mounts and capabilities, load each
 * BPF object, and list the programs on the cgroup ambit hooks. With `pre`, also what the node
 * implies for `ambit install` (platform, AppArmor, SELinux, the kubelet's cgroup, the CNI config),
 * read under a root directory so that fixture trees test them.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { cgroup2Mount, DEFAULT_PIN_ROOT, readMounts, type Mount } from '../ebpf/mounts.js';
import { runtimeConfig } from './cni-install.js';
import {
  BTF_PATH, checkAppArmor, checkBpffs, checkBtf, checkCapabilities, checkCgroup2, checkCniConfig, checkKernel,
  checkKubeletCgroup, checkLibbpf, checkObject, checkObjectsDir, checkPlatform, checkSelinux, checkSocketLb,
  checkSocketLbFailed, CNI_CONF_DIRS, KUBELET_CGROUP_CANDIDATES, parseCgroupV2Path, type Check,
  type KubeletCgroup, type ObjectOutcome,
} from './checks.js';

export interface NodeCheckOptions {
  /** Add the pre-install findings (`ambit check --pre`). */
  pre?: boolean;
  /** The cgroup ambit attaches to (the agent's --cgroup); the cgroup v2 mount unless given. */
  cgroup?: string;
  /** The agent's pin root, whose links tell ambit's programs from others' (default: the install's). */
  pinRoot?: string;
  /** Where the host's root is seen, for the pre-install findings (`kubectl debug node` mounts it at /host). */
  hostRoot?: string;
}

export { DEFAULT_PIN_ROOT };

export async function runChecks(opts: NodeCheckOptions = {}): Promise<Check[]> {
  const mounts = readMounts();
  const cgroup = opts.cgroup ?? cgroup2Mount(mounts);
  return [
    checkKernel(release()),
    checkBtf(existsSync(BTF_PATH)),
    checkCgroup2(mounts),
    checkBpffs(mounts),
    ...checkCapabilities(readFileSync('/proc/self/status', 'utf8')),
    ...(await probeBpf(cgroup, opts.pinRoot ?? DEFAULT_PIN_ROOT)),
    ...(opts.pre ? preChecks(opts.hostRoot ?? '/') : []),
  ];
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** The pre-install findings from the tree under `root` ("/" on a node): its /proc, /sys and config dirs. */
export function preChecks(root: string): Check[] {
  const at = (path: string) => join(root, path);
  const mounts = readMounts(at('/proc/mounts'));
  return [
    checkPlatform((path) => existsSync(at(path))),
    checkAppArmor(readText(at('/sys/module/apparmor/parameters/enabled'))),
    checkSelinux(readText(at('/sys/fs/selinux/enforce'))),
    checkKubeletCgroup(mounts, findKubeletCgroup(root, mounts)),
    checkCniConfig(CNI_CONF_DIRS.map((dir) => ({ dir, primary: primaryConfig(at(dir)) }))),
  ];
}

/** Process names the kubelet runs under: its own, k3s's (the kubelet runs inside it), MicroK8s's kubelite. */
const KUBELET_COMMS = new Set(['kubelet', 'k3s-server', 'k3s-agent', 'k3s', 'kubelite']);

/** The running kubelet's cgroup from <root>/proc, else the first of the usual units that exists. */
export function findKubeletCgroup(root: string, mounts: Mount[]): KubeletCgroup | undefined {
  const proc = join(root, 'proc');
  let pids: string[] = [];
  try {
    pids = readdirSync(proc).filter((p) => /^\d+$/.test(p)).sort((a, b) => Number(a) - Number(b));
  } catch {
    pids = [];
  }
  for (const pid of pids) {
    const comm = readText(join(proc, pid, 'comm'))?.trim();
    if (!comm || !KUBELET_COMMS.has(comm)) continue;
    const path = parseCgroupV2Path(readText(join(proc, pid, 'cgroup')) ?? '');
    if (path !== undefined) return { path, how: `process ${comm} (pid ${pid})` };
  }
  const mount = cgroup2Mount(mounts);
  if (mount === undefined) return undefined;
  const hit = KUBELET_CGROUP_CANDIDATES.find((c) => existsSync(join(root, mount, c)));
  return hit ? { path: hit, how: 'exists; no kubelet process seen' } : undefined;
}

/** The runtime's config in `dir`, as the CNI installer judges it; none when the dir cannot be read. */
function primaryConfig(dir: string): ReturnType<typeof runtimeConfig> {
  try {
    return runtimeConfig(dir);
  } catch {
    return undefined;
  }
}

function objectFiles(dir: string): string[] | undefined {
  if (!existsSync(dir)) return undefined;
  return readdirSync(dir).filter((f) => f.endsWith('.bpf.o')).sort();
}

async function probeBpf(cgroup: string | undefined, pinRoot: string): Promise<Check[]> {
  // Imported here, not at the top: koffi is a native addon, and when it cannot load on this
  // platform the other checks must still report.
  let object: typeof import('../ebpf/object.js');
  let datapath: typeof import('../ebpf/datapath.js');
  let programs: typeof import('../ebpf/cgroup-programs.js');
  try {
    [object, datapath, programs] = await Promise.all([
      import('../ebpf/object.js'), import('../ebpf/datapath.js'), import('../ebpf/cgroup-programs.js'),
    ]);
  } catch (err) {
    const reason = `native bindings (koffi) do not load: ${(err as Error).message}`;
    return [checkLibbpf(false, reason), checkObject('*.bpf.o', { loaded: false, skipped: reason })];
  }

  const available = object.libbpfAvailable();
  const dir = datapath.defaultObjectsDir();
  const files = objectFiles(dir);
  const dirProblem = checkObjectsDir(dir, files);
  const socketLb = (): Check[] => {
    if (!available || cgroup === undefined) return [];
    try {
      return [checkSocketLb(programs.detectSocketLbConflicts({ cgroupPath: cgroup, pinRoot }))];
    } catch (err) {
      return [checkSocketLbFailed(cgroup, err)];
    }
  };
  if (dirProblem) return [checkLibbpf(available), dirProblem, ...socketLb()];

  return [checkLibbpf(available), ...(files ?? []).map((file) => {
    let outcome: ObjectOutcome;
    if (!available) {
      outcome = { loaded: false, skipped: 'libbpf.so.1 cannot be loaded' };
    } else {
      try {
        // No pinning: the maps live only as long as this handle, so a check never touches a running agent's state.
        const obj = object.BpfObject.load(join(dir, file));
        try {
          outcome = { loaded: true, programs: obj.programNames() };
        } finally {
          obj.close();
        }
      } catch (error) {
        outcome = { loaded: false, error };
      }
    }
    return checkObject(file, outcome);
  }), ...socketLb()];
}
