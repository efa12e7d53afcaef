/** What `ambit check` decides, as pure functions of what the probes read: one verdict per node requirement. */
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

export const VERIFIER_TAIL_LINES = 10;

/** The human report: one aligned line per check, the fix beside each failure, and a verdict. */
export function renderText(r: Report): string {
  const width = Math.max(...r.checks.map((c) => c.name.length));
  const lines: string[] = [];
  for (const c of r.checks) {
    let line = `${c.ok ? '✓' : '✗'} ${c.name.padEnd(width)}  ${c.detail}`;
    if (!c.ok && c.code) line += ` [${c.code}]`;
    if (!c.ok && c.hint) line += ` — fix: ${c.hint}`;
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
