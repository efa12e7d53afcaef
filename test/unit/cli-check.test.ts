// `ambit check`'s verdicts from sample inputs: kernel releases, capability masks, /proc/mounts texts, load outcomes.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cgroupLayout, checkBpffs, checkBtf, checkCapabilities, checkCgroup2, checkKernel, checkLibbpf, checkObject,
  checkObjectsDir, hasCapability, parseCapEff, parseKernelRelease, renderJson, renderText, report, type Check,
} from '../../src/cli/checks.js';
import { BpfError } from '../../src/ebpf/errors.js';
import { readMounts, type Mount } from '../../src/ebpf/mounts.js';

const tmp = mkdtempSync(join(tmpdir(), 'ambit-cli-check-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// Through the real /proc/mounts parser, so the samples are read exactly as the probe reads them.
let sample = 0;
function mounts(text: string): Mount[] {
  const path = join(tmp, `mounts-${sample++}`);
  writeFileSync(path, text);
  return readMounts(path);
}

const UNIFIED = `sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0
bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0
`;
const HYBRID = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
`;
const V1_ONLY = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
`;

describe('kernel version', () => {
  it('parses releases with distribution suffixes', () => {
    expect(parseKernelRelease('6.18.44-fc-v782')).toEqual({ major: 6, minor: 18, patch: 44 });
    expect(parseKernelRelease('5.17')).toEqual({ major: 5, minor: 17, patch: 0 });
    expect(parseKernelRelease('garbage')).toBeUndefined();
  });

  it('accepts 5.17 and newer', () => {
    expect(checkKernel('6.18.44-fc-v782')).toMatchObject({ ok: true, detail: '6.18.44-fc-v782' });
    expect(checkKernel('5.17.0-1-amd64').ok).toBe(true);
    expect(checkKernel('6.1.0').ok).toBe(true);
  });

  it('fails older kernels with a hint naming the minimum', () => {
    const c = checkKernel('5.10.0');
    expect(c.ok).toBe(false);
    expect(c.detail).toBe('5.10.0 is older than 5.17');
    expect(c.hint).toMatch(/5\.17 or newer/);
    expect(checkKernel('4.19.0').ok).toBe(false);
  });

  it('fails an unparseable release instead of guessing', () => {
    expect(checkKernel('weird')).toMatchObject({ ok: false, detail: 'cannot parse kernel release "weird"' });
  });
});

describe('capabilities', () => {
  const status = (capEff: string) => `Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t${capEff}\nCapBnd:\t000001ffffffffff\n`;

  it('decodes CapEff as a hex mask', () => {
    const mask = parseCapEff(status('000001fffeffffff'));
    expect(mask).toBe(0x1fffeffffffn);
    expect(hasCapability(mask!, 39)).toBe(true);
    expect(hasCapability(mask!, 24)).toBe(false);
    expect(parseCapEff('Name:\tnode\n')).toBeUndefined();
  });

  it('passes a full root mask', () => {
    const checks = checkCapabilities(status('000001ffffffffff'));
    expect(checks.map((c) => c.name)).toEqual(['CAP_BPF', 'CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
    expect(checks.every((c) => c.ok)).toBe(true);
  });

  it('names CAP_BPF when it is missing', () => {
    const withoutBpf = (0x1ffffffffffn & ~(1n << 39n)).toString(16).padStart(16, '0');
    const checks = checkCapabilities(status(withoutBpf));
    const bpf = checks.find((c) => c.name === 'CAP_BPF')!;
    expect(bpf.ok).toBe(false);
    expect(bpf.detail).toContain('CAP_BPF not in the effective set');
    expect(bpf.hint).toMatch(/CAP_BPF is needed .*run as root/);
    expect(checks.filter((c) => c.ok).map((c) => c.name)).toEqual(['CAP_NET_ADMIN', 'CAP_SYS_ADMIN']);
  });

  it('fails every capability of an unprivileged process', () => {
    expect(checkCapabilities(status('0000000000000000')).some((c) => c.ok)).toBe(false);
  });

  it('fails when CapEff is absent', () => {
    expect(checkCapabilities('Name:\tnode\n')[0]).toMatchObject({ ok: false, detail: 'no CapEff line in /proc/self/status' });
  });
});

describe('cgroup v2 and bpffs', () => {
  it('detects a unified hierarchy', () => {
    expect(cgroupLayout(mounts(UNIFIED))).toEqual({ layout: 'unified', path: '/sys/fs/cgroup' });
    expect(checkCgroup2(mounts(UNIFIED))).toMatchObject({ ok: true, detail: '/sys/fs/cgroup (unified)' });
  });

  it('detects a hybrid hierarchy and says where v2 is', () => {
    expect(cgroupLayout(mounts(HYBRID))).toEqual({ layout: 'hybrid', path: '/sys/fs/cgroup/unified' });
    const c = checkCgroup2(mounts(HYBRID));
    expect(c.ok).toBe(true);
    expect(c.detail).toMatch(/^\/sys\/fs\/cgroup\/unified \(hybrid/);
  });

  it('fails a v1-only host with how to get v2', () => {
    expect(cgroupLayout(mounts(V1_ONLY))).toEqual({ layout: 'v1-only' });
    const c = checkCgroup2(mounts(V1_ONLY));
    expect(c).toMatchObject({ ok: false, detail: 'only cgroup v1 is mounted' });
    expect(c.hint).toContain('mount -t cgroup2');
    expect(checkCgroup2([])).toMatchObject({ ok: false, detail: 'no cgroup hierarchy is mounted' });
  });

  it('finds bpffs, and says how to mount it when missing', () => {
    expect(checkBpffs(mounts(HYBRID))).toEqual({ name: 'bpffs', ok: true, detail: 'mounted at /sys/fs/bpf' });
    const c = checkBpffs(mounts(V1_ONLY));
    expect(c).toMatchObject({ ok: false, detail: 'not mounted' });
    expect(c.hint).toContain('mount -t bpf bpf /sys/fs/bpf');
  });
});

describe('BTF, libbpf and objects', () => {
  it('checks BTF presence', () => {
    expect(checkBtf(true).ok).toBe(true);
    expect(checkBtf(false).hint).toContain('CONFIG_DEBUG_INFO_BTF');
  });

  it('hints at the package when libbpf is missing', () => {
    expect(checkLibbpf(true)).toEqual({ name: 'libbpf.so.1', ok: true, detail: 'loaded' });
    expect(checkLibbpf(false).hint).toContain('apt-get install libbpf1');
  });

  it('reports a loaded object with its programs', () => {
    expect(checkObject('outbound.bpf.o', { loaded: true, programs: ['ambit_connect4', 'ambit_sockops'] })).toEqual({
      name: 'BPF object outbound.bpf.o', ok: true, detail: 'loads and passes the verifier (ambit_connect4, ambit_sockops)',
    });
  });

  it('marks objects not run when libbpf is missing', () => {
    expect(checkObject('inbound.bpf.o', { loaded: false, skipped: 'libbpf.so.1 cannot be loaded' }))
      .toMatchObject({ ok: false, detail: 'not run: libbpf.so.1 cannot be loaded' });
  });

  it('splits a BpfError into detail, code, hint and logs', () => {
    const error = new BpfError('AMBIT_E_BPF_OPEN', 'cannot open BPF object /x/broken.bpf.o', {
      call: 'bpf_object__open_file', errno: 4001, hint: 'is it an eBPF ELF object?', libbpfLog: ['libbpf: elf: not a proper ELF object'],
    });
    expect(checkObject('broken.bpf.o', { loaded: false, error })).toEqual({
      name: 'BPF object broken.bpf.o', ok: false,
      detail: 'cannot open BPF object /x/broken.bpf.o (bpf_object__open_file: LIBBPF_ERRNO__FORMAT)',
      code: 'AMBIT_E_BPF_OPEN', hint: 'is it an eBPF ELF object?', libbpfLog: ['libbpf: elf: not a proper ELF object'],
    });
  });

  it('keeps the whole verifier log of a rejected object', () => {
    const verifierLog = Array.from({ length: 25 }, (_, i) => `${i}: insn ${i}`).join('\n');
    const error = new BpfError('AMBIT_E_BPF_VERIFIER', 'the kernel verifier rejected a program of /x/r.bpf.o', {
      call: 'bpf_object__load', errno: 13, verifierLog, hint: 'rebuild',
    });
    const c = checkObject('r.bpf.o', { loaded: false, error });
    expect(c).toMatchObject({ ok: false, code: 'AMBIT_E_BPF_VERIFIER', verifierLog });
    expect(c.detail).toBe('the kernel verifier rejected a program of /x/r.bpf.o (bpf_object__load: EACCES)');
    expect(c.hint).toContain('make bpf');
  });

  it('fails an objects directory that is missing or empty', () => {
    expect(checkObjectsDir('/d', ['a.bpf.o'])).toBeUndefined();
    expect(checkObjectsDir('/d', undefined)).toMatchObject({ ok: false, detail: '/d does not exist' });
    expect(checkObjectsDir('/d', [])?.hint).toContain('AMBIT_BPF_DIR');
  });
});

describe('rendering', () => {
  const passing: Check[] = [
    { name: 'kernel >= 5.17', ok: true, detail: '6.18.44' },
    { name: 'bpffs', ok: true, detail: 'mounted at /sys/fs/bpf' },
  ];
  const longLog = Array.from({ length: 30 }, (_, i) => `line ${i}`).join('\n');
  const failing: Check[] = [
    ...passing.slice(0, 1),
    { name: 'bpffs', ok: false, detail: 'not mounted', hint: 'mount -t bpf bpf /sys/fs/bpf' },
    { name: 'BPF object r.bpf.o', ok: false, detail: 'rejected', code: 'AMBIT_E_BPF_VERIFIER', hint: 'rebuild', verifierLog: longLog },
  ];

  it('prints one aligned ✓ line per check and a verdict', () => {
    const text = renderText(report(passing));
    expect(text.split('\n')).toEqual([
      '✓ kernel >= 5.17  6.18.44',
      '✓ bpffs           mounted at /sys/fs/bpf',
      '',
      'all 2 checks passed: this node can run ambit',
      '',
    ]);
  });

  it('prints ✗ with the fix, and only the tail of a verifier log', () => {
    const lines = renderText(report(failing)).split('\n');
    expect(lines).toContain('✗ bpffs               not mounted — fix: mount -t bpf bpf /sys/fs/bpf');
    expect(lines).toContain('✗ BPF object r.bpf.o  rejected [AMBIT_E_BPF_VERIFIER] — fix: rebuild');
    expect(lines).toContain('    verifier log (last 10 of 30 lines; all with --json):');
    expect(lines).toContain('    | line 29');
    expect(lines).toContain('    | line 20');
    expect(lines).not.toContain('    | line 19');
    expect(lines).toContain('2 of 3 checks failed: fix them before running ambit on this node');
  });

  it('prints the JSON shape with the full verifier log', () => {
    const parsed = JSON.parse(renderJson(report(failing))) as { ok: boolean; checks: Check[] };
    expect(parsed.ok).toBe(false);
    expect(parsed.checks).toHaveLength(3);
    expect(parsed.checks[0]).toEqual({ name: 'kernel >= 5.17', ok: true, detail: '6.18.44' });
    expect(parsed.checks[1]).toEqual({ name: 'bpffs', ok: false, detail: 'not mounted', hint: 'mount -t bpf bpf /sys/fs/bpf' });
    expect(parsed.checks[2]?.verifierLog).toBe(longLog);
    expect(JSON.parse(renderJson(report(passing)))).toEqual({ ok: true, checks: passing });
  });
});
