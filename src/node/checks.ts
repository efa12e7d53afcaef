/** What `ambit check` decides, as pure functions of what the probes read: one verdict per node requirement. */
import type { SockAddrFindings } from '../ebpf/cgroup-programs.js';
import { BpfError } from '../ebpf/errors.js';
import { bpffsMount, cgroup2Mount, type Mount } from '../ebpf/mounts.js';

export interface Check {
  name: string;
  ok: boolean;
  /** What was found, in a few words. */
  detail: string;
  /** What the operator should do; set on failures. */
  hint?: string;
  /** AMBIT_E_* code of the error behind a failed object check. */
  code?: string;
  /** The kernel verifier's full log for a rejected object; the text report shows its tail. */
  verifierLog?: string;
  /** libbpf's warnings while opening or loading a failed object. */
  libbpfLog?: string[];
  /** What the finding means for `ambit install` (`--set key=value ...`), pass or fail. */
  implies?: string;
}

export interface Report {
  ok: boolean;
  checks: Check[];
}

export function report(checks: Check[]): Report {
  return { ok: checks.every((c) => c.ok), checks };
}

/** sk_lookup's `ingress_ifindex`, which inbound steering reads, arrived in 5.17. */
export const MIN_KERNEL: readonly [number, number] = [5, 17];

export function parseKernelRelease(release: string): { major: number; minor: number; patch: number } | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0) };
}

export function checkKernel(release: string): Check {
  const [minMajor, minMinor] = MIN_KERNEL;
  const name = `kernel >= ${minMajor}.${minMinor}`;
  const hint = `upgrade to Linux ${minMajor}.${minMinor} or newer (sk_lookup's ingress_ifindex, which inbound steering needs, is missing before it)`;
  const version = parseKernelRelease(release);
  if (!version) return { name, ok: false, detail: `cannot parse kernel release "${release}"`, hint };
  const ok = version.major > minMajor || (version.major === minMajor && version.minor >= minMinor);
  return ok
    ? { name, ok, detail: release }
    : { name, ok, detail: `${release} is older than ${minMajor}.${minMinor}`, hint };
}

export const BTF_PATH = '/sys/kernel/btf/vmlinux';

export function checkBtf(present: boolean, path = BTF_PATH): Check {
  return present
    ? { name: 'kernel BTF', ok: true, detail: `${path} present` }
    : {
        name: 'kernel BTF', ok: false, detail: `${path} missing`,
        hint: 'the objects relocate against kernel BTF (CO-RE): boot a kernel built with CONFIG_DEBUG_INFO_BTF=y',
      };
}

export type CgroupLayout = 'unified' | 'hybrid' | 'v1-only' | 'none';

/** Unified when cgroup2 is the hierarchy at /sys/fs/cgroup; hybrid when it is mounted elsewhere, e.g. beside v1 controllers. */
export function cgroupLayout(mounts: Mount[]): { layout: CgroupLayout; path?: string } {
  const path = cgroup2Mount(mounts);
  if (path !== undefined) return { layout: path === '/sys/fs/cgroup' ? 'unified' : 'hybrid', path };
  return { layout: mounts.some((m) => m.type === 'cgroup') ? 'v1-only' : 'none' };
}

export function checkCgroup2(mounts: Mount[]): Check {
  const name = 'cgroup v2';
  const { layout, path } = cgroupLayout(mounts);
  switch (layout) {
    case 'unified':
      return { name, ok: true, detail: `${path} (unified)` };
    case 'hybrid':
      return { name, ok: true, detail: `${path} (hybrid: cgroup v1 elsewhere)` };
    case 'v1-only':
    case 'none':
      return {
        name, ok: false,
        detail: layout === 'v1-only' ? 'only cgroup v1 is mounted' : 'no cgroup hierarchy is mounted',
        hint: 'the outbound hooks attach to a cgroup v2: boot with systemd.unified_cgroup_hierarchy=1, '
          + 'or mount one: mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified',
      };
  }
}

export function checkBpffs(mounts: Mount[]): Check {
  const path = bpffsMount(mounts);
  return path !== undefined
    ? { name: 'bpffs', ok: true, detail: `mounted at ${path}` }
    : {
        name: 'bpffs', ok: false, detail: 'not mounted',
        hint: 'maps and links are pinned there: mount -t bpf bpf /sys/fs/bpf',
      };
}

/** The capabilities ambit uses, with why: the hint names the reason so the operator can judge. */
export const REQUIRED_CAPABILITIES = [
  { name: 'CAP_BPF', bit: 39, why: 'load BPF programs and create maps' },
  { name: 'CAP_NET_ADMIN', bit: 12, why: 'attach to cgroups and network namespaces' },
  { name: 'CAP_SYS_ADMIN', bit: 21, why: 'enter pod network namespaces (setns)' },
] as const;

/** The effective capability mask from /proc/<pid>/status text (`CapEff:` is hex). */
export function parseCapEff(statusText: string): bigint | undefined {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(statusText);
  return m ? BigInt(`0x${m[1]}`) : undefined;
}

export function hasCapability(mask: bigint, bit: number): boolean {
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

export function checkCapabilities(statusText: string): Check[] {
  const mask = parseCapEff(statusText);
  return REQUIRED_CAPABILITIES.map(({ name, bit, why }) => {
    const hint = `${name} is needed to ${why}: run as root, or grant it (docker run --cap-add ${name.slice(4)}; systemd AmbientCapabilities=${name})`;
    if (mask === undefined) return { name, ok: false, detail: 'no CapEff line in /proc/self/status', hint };
    const shown = mask.toString(16).padStart(16, '0');
    return hasCapability(mask, bit)
      ? { name, ok: true, detail: 'in the effective set' }
      : { name, ok: false, detail: `${name} not in the effective set (CapEff ${shown})`, hint };
  });
}

export function checkLibbpf(available: boolean, reason?: string): Check {
  return available
    ? { name: 'libbpf.so.1', ok: true, detail: 'loaded' }
    : {
        name: 'libbpf.so.1', ok: false, detail: reason ?? 'cannot be loaded',
        hint: 'apt-get install libbpf1 (libbpf >= 1.1)',
      };
}

export function objectCheckName(file: string): string {
  return `BPF object ${file}`;
}

/** How trying one object went: it loaded (with these programs), it failed, or it was not tried. */
export type ObjectOutcome =
  | { loaded: true; programs: string[] }
  | { loaded: false; error: unknown }
  | { loaded: false; skipped: string };

export function checkObject(file: string, outcome: ObjectOutcome): Check {
  const name = objectCheckName(file);
  if (outcome.loaded) {
    return { name, ok: true, detail: `loads and passes the verifier (${outcome.programs.join(', ')})` };
  }
  if ('skipped' in outcome) {
    return { name, ok: false, detail: `not run: ${outcome.skipped}`, hint: 'fix the libbpf check first' };
  }
  const err = outcome.error;
  if (err instanceof BpfError) {
    // The message's first line ends with "; <hint>" and the verifier log follows: both get their own fields.
    let first = err.message.split('\n', 1)[0] ?? '';
    if (err.hint && first.endsWith(`; ${err.hint}`)) first = first.slice(0, -(err.hint.length + 2));
    const check: Check = { name, ok: false, detail: first, code: err.code };
    // The loader's verifier hint points back at `ambit check`; here the operator needs the way out instead.
    const hint = err.code === 'AMBIT_E_BPF_VERIFIER'
      ? 'this kernel\'s verifier refuses the object (its log below says where): rebuild it with `make bpf` on this kernel, or run a newer kernel'
      : err.hint;
    if (hint) check.hint = hint;
    if (err.verifierLog) check.verifierLog = err.verifierLog;
    if (err.libbpfLog.length > 0) check.libbpfLog = err.libbpfLog;
    return check;
  }
  return {
    name, ok: false, detail: err instanceof Error ? err.message : String(err),
    hint: 'unexpected failure: rerun with AMBIT_DEBUG=ebpf and report it',
  };
}

export function checkObjectsDir(dir: string, files: string[] | undefined): Check | undefined {
  if (files !== undefined && files.length > 0) return undefined;
  return {
    name: 'BPF objects', ok: false,
    detail: files === undefined ? `${dir} does not exist` : `no *.bpf.o in ${dir}`,
    hint: 'point AMBIT_BPF_DIR at the directory holding outbound.bpf.o and inbound.bpf.o, or run `make bpf`',
  };
}

export const SOCKET_LB_CHECK = 'socket load balancing';

/** Whether another program (a CNI's socket load balancer) rewrites connect() before ambit's capture. */
export function checkSocketLb(f: SockAddrFindings): Check {
  const name = SOCKET_LB_CHECK;
  if (f.conflicts.length > 0) {
    return {
      name, ok: false,
      detail: `${f.conflicts.map((c) => c.summary).join('; ')} on ${f.cgroup}: ambit would see pod addresses where applications asked for Services (service-bound waypoints and VirtualServices would not apply)`,
      hint: [...new Set(f.conflicts.map((c) => c.fix))].join('; '),
    };
  }
  const others = f.hooks.flatMap((h) => h.programs.filter((p) => p.owner !== 'ambit' && p.owner !== 'other-ambit').map((p) => `${h.hook}: ${p.name}`));
  const cleared = f.cleared.map((c) => `${c.hook}: ${c.program.name} (${c.why})`);
  const parts = [f.ambitAttached ? `ambit's connect4/connect6 run before any other program on ${f.cgroup}` : `no other program on connect4/connect6 of ${f.cgroup}`];
  if (cleared.length > 0) parts.push(`cleared: ${cleared.join('; ')}`);
  const rest = others.filter((o) => !f.cleared.some((c) => o === `${c.hook}: ${c.program.name}`));
  if (rest.length > 0) parts.push(`others attached: ${rest.join(', ')}`);
  return { name, ok: true, detail: parts.join('; ') };
}

/** The socket-LB check when the programs could not be listed. */
export function checkSocketLbFailed(cgroup: string, err: unknown): Check {
  const check: Check = {
    name: SOCKET_LB_CHECK, ok: false, detail: `cannot list the programs on ${cgroup}: ${err instanceof Error ? err.message.split('\n', 1)[0] : String(err)}`,
    hint: 'run as root (CAP_BPF and CAP_SYS_ADMIN list the programs of a cgroup), with --cgroup naming the cgroup v2 directory ambit attaches to',
  };
  if (err instanceof BpfError) check.code = err.code;
  return check;
}

// --- `ambit check --pre` on a node: what the machine implies for `ambit install`. ---

export const DEFAULT_KUBELET_CGROUP = 'system.slice/kubelet.service';

/** /sys/module/apparmor/parameters/enabled ("Y"/"N"); undefined: the module is not there. */
export function checkAppArmor(enabled: string | undefined): Check {
  const name = 'AppArmor';
  if (enabled === undefined || enabled.trim() !== 'Y') return { name, ok: true, detail: enabled === undefined ? 'not in this kernel' : 'disabled' };
  return {
    name, ok: true, detail: 'enabled',
    implies: 'nothing to set: the install runs the node agent AppArmor-unconfined (nodeAgent.appArmorProfile=unconfined, the default), since containerd\'s default profile denies the writes under /sys/fs/bpf it needs',
  };
}

/** /sys/fs/selinux/enforce ("1" enforcing, "0" permissive); undefined: SELinux is off. */
export function checkSelinux(enforce: string | undefined): Check {
  const name = 'SELinux';
  if (enforce === undefined) return { name, ok: true, detail: 'not enabled' };
  if (enforce.trim() !== '1') return { name, ok: true, detail: 'permissive (denials are logged, not enforced)' };
  return {
    name, ok: true, detail: 'enforcing',
    implies: 'nothing to set: the install runs the node agent as SELinux type spc_t (a container_t process may not use the host\'s bpffs, cgroups and pod network namespaces), as Istio\'s node components run on such hosts',
  };
}

export interface KubeletCgroup {
  /** Relative to the cgroup v2 mount, e.g. system.slice/kubelet.service. */
  path: string;
  /** How it was found: "process kubelet (pid 812)" or "exists". */
  how: string;
}

/** The kubelet's cgroup v2 path from /proc/<pid>/cgroup text ("0::/system.slice/kubelet.service"). */
export function parseCgroupV2Path(procCgroup: string): string | undefined {
  const m = /^0::\/(.*)$/m.exec(procCgroup);
  return m ? m[1]!.trim() : undefined;
}

/** The kubelet's cgroup, and the install values for it and for where cgroup v2 is mounted. */
export function checkKubeletCgroup(mounts: Mount[], found: KubeletCgroup | undefined): Check {
  const name = 'kubelet cgroup';
  const { layout, path: mount } = cgroupLayout(mounts);
  if (mount === undefined) return { name, ok: false, detail: `no cgroup v2 (${layout})`, hint: 'fix the cgroup v2 check first' };
  const root = mount === '/sys/fs/cgroup' ? '' : ` --set nodeAgent.cgroupRoot=${mount}`;
  if (!found) {
    return {
      name, ok: false, detail: `no kubelet process and none of ${KUBELET_CGROUP_CANDIDATES.join(', ')} under ${mount}`,
      hint: `find the kubelet's cgroup (cat /proc/$(pidof kubelet)/cgroup) and pass it relative to ${mount}: --set nodeAgent.kubeletCgroup=<path>; without it health probes count as plaintext and STRICT refuses them`,
      implies: `--set nodeAgent.kubeletCgroup=<path>${root}`.trim(),
    };
  }
  if (found.path === '' || found.path === '/') {
    return {
      name, ok: false, detail: `the kubelet runs in the root cgroup of ${mount} (${found.how}): every process there would count as the health prober`,
      hint: 'run the kubelet in its own cgroup (systemd: a kubelet.service unit), then check again',
    };
  }
  return { name, ok: true, detail: `${mount}/${found.path} (${found.how}; ${layout})`, implies: `--set nodeAgent.kubeletCgroup=${found.path}${root}` };
}

/** Where kubelets live: systemd's unit (kubeadm, EKS, GKE, AKS), k3s's server and agent units (the kubelet runs inside k3s). */
export const KUBELET_CGROUP_CANDIDATES = ['system.slice/kubelet.service', 'system.slice/k3s.service', 'system.slice/k3s-agent.service'] as const;

/** The host's CNI config directories, k3s's own first found wins after the standard one. */
export const CNI_CONF_DIRS = ['/etc/cni/net.d', '/var/lib/rancher/k3s/agent/etc/cni/net.d'] as const;

/** ambit's `cni.chained` value for a primary plugin: the CNI that wrote it. */
export function chainedFor(type: string, network: string): string {
  switch (type) {
    case 'cilium-cni': return 'cilium';
    case 'calico': return network === 'gke-pod-network' ? 'gke' : 'calico';
    case 'aws-cni': return 'aws-vpc-cni';
    case 'flannel': return 'flannel';
    default:
      // kindnet and GKE both write a ptp config; its network name tells them apart.
      if (network === 'kindnet') return 'kindnet';
      if (network === 'gke-pod-network') return 'gke';
      return type;
  }
}

/** The node's primary CNI config (`dirs` in order; the first holding a config wins) and the values it implies. */
export function checkCniConfig(found: { dir: string; primary?: { name: string; type: string; network: string } }[]): Check {
  const name = 'CNI config';
  for (const { dir, primary } of found) {
    if (!primary) continue;
    const chained = chainedFor(primary.type, primary.network);
    const k3s = dir.startsWith('/var/lib/rancher/k3s/');
    // k3s's preset sets its config and bin directories and the kubelet's cgroup (k3s before
    // v1.28.15/v1.29.10/v1.30.6/v1.31.2 keeps plugins in data/current/bin: set cni.binDir to it).
    const where = k3s ? ' --set platform=k3s' : dir === '/etc/cni/net.d' ? '' : ` --set cni.confDir=${dir}`;
    return {
      name, ok: true,
      detail: `${dir}/${primary.name}: primary plugin ${primary.type}${primary.network ? ` (network "${primary.network}")` : ''}`,
      implies: `--set cni.chained=${chained}${where}`,
    };
  }
  const dirs = found.map((f) => f.dir);
  return {
    name, ok: false, detail: `no CNI config that loads in ${dirs.join(' or ')}`,
    hint: 'ambit chains its plugin after the node\'s primary CNI: install the cluster\'s CNI first, give its directory with --set cni.confDir=DIR, or --set cni.enabled=false (pods found once running, fail open at start)',
  };
}

export type Platform = 'generic' | 'kubeadm' | 'eks' | 'gke' | 'k3s' | 'aks';

/** Files that each platform leaves on its nodes, most specific first. */
export const PLATFORM_MARKERS: readonly { platform: Platform; path: string }[] = [
  { platform: 'k3s', path: '/var/lib/rancher/k3s' },
  { platform: 'eks', path: '/etc/eks' },
  { platform: 'gke', path: '/home/kubernetes/bin' },
  { platform: 'aks', path: '/etc/kubernetes/azure.json' },
  { platform: 'kubeadm', path: '/var/lib/kubelet/kubeadm-flags.env' },
];

/** The platform from the first marker present (`present` says which of PLATFORM_MARKERS' paths exist). */
export function checkPlatform(present: (path: string) => boolean): Check {
  const name = 'platform';
  const hit = PLATFORM_MARKERS.find((m) => present(m.path));
  if (!hit) return { name, ok: true, detail: `generic: none of ${PLATFORM_MARKERS.map((m) => m.path).join(', ')}`, implies: '--set platform=generic' };
  return { name, ok: true, detail: `${hit.platform} (found ${hit.path})`, implies: `--set platform=${hit.platform}` };
}

export const VERIFIER_TAIL_LINES = 10;

/** The human report: one aligned line per check, the fix beside each failure, and a verdict. */
export function renderText(r: Report): string {
  const width = Math.max(...r.checks.map((c) => c.name.length));
  const lines: string[] = [];
  for (const c of r.checks) {
    let line = `${c.ok ? '✓' : '✗'} ${c.name.padEnd(width)}  ${c.detail}`;
    if (!c.ok && c.code) line += ` [${c.code}]`;
    if (!c.ok && c.hint) line += ` — fix: ${c.hint}`;
    if (c.implies) line += ` → ${c.implies}`;
    lines.push(line);
    if (c.verifierLog) {
      const log = c.verifierLog.split('\n');
      const tail = log.slice(-VERIFIER_TAIL_LINES);
      const omitted = log.length - tail.length;
      lines.push(`    verifier log${omitted > 0 ? ` (last ${tail.length} of ${log.length} lines; all with --json)` : ''}:`);
      for (const l of tail) lines.push(`    | ${l}`);
    } else if (!c.ok && c.libbpfLog) {
      for (const l of c.libbpfLog.slice(-3)) lines.push(`    | ${l}`);
    }
  }
  const failed = r.checks.filter((c) => !c.ok).length;
  lines.push('');
  lines.push(failed === 0
    ? `all ${r.checks.length} checks passed: this node can run ambit`
    : `${failed} of ${r.checks.length} checks failed: fix them before running ambit on this node`);
  return `${lines.join('\n')}\n`;
}

export function renderJson(r: Report): string {
  return `${JSON.stringify(r, null, 2)}\n`;
}
