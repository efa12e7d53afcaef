// `ambit check`'s verdicts from sample inputs: kernel releases, capability masks, /proc/mounts texts,
// load outcomes, the programs on a cgroup's connect hooks, and (--pre) fixture trees of real nodes.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  cgroupLayout, chainedFor, checkAppArmor, checkBpffs, checkBtf, checkCapabilities, checkCgroup2, checkKernel,
  checkKubeletCgroup, checkLibbpf, checkObject, checkObjectsDir, checkSelinux, checkSocketLb, checkSocketLbFailed,
  hasCapability, parseCapEff, parseCgroupV2Path, parseKernelRelease, renderJson, renderText, report,
  type Check,
} from '../../src/node/checks.js';
import { preChecks } from '../../src/node/probes.js';
import { runtimeConfig } from '../../src/node/cni-install.js';
import { analyzeSockAddr, ciliumSocketLbMode, type AttachedProgram } from '../../src/ebpf/cgroup-programs.js';
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

describe('other programs on connect4/connect6 (socket load balancing)', () => {
  const prog = (id: number, name: string): AttachedProgram => ({ id, name, tag: id.toString(16).padStart(16, '0') });
  const ambit4 = prog(40, 'ambit_connect4');
  const ambit6 = prog(41, 'ambit_connect6');
  const cilium4 = prog(7, 'cil_sock4_conne');
  const cilium6 = prog(8, 'cil_sock6_conne');
  const calico4 = prog(9, 'calico_connect_');
  const own = new Set([40, 41]);
  const hooks = (connect4: AttachedProgram[], connect6: AttachedProgram[] = [], rest: { hook: 'sendmsg4'; programs: AttachedProgram[] }[] = []) =>
    [{ hook: 'connect4' as const, programs: connect4 }, { hook: 'connect6' as const, programs: connect6 }, ...rest];

  it('reports Cilium\'s programs running before ambit\'s, per hook, with the Helm values and ConfigMap keys to change', () => {
    const f = analyzeSockAddr('/sys/fs/cgroup', hooks([cilium4, ambit4], [cilium6, ambit6]), { ownIds: own });
    expect(f.ambitAttached).toBe(true);
    expect(f.conflicts.map((c) => c.summary)).toEqual([
      'connect4: cil_sock4_conne (id 7, cilium) runs before ambit_connect4',
      'connect6: cil_sock6_conne (id 8, cilium) runs before ambit_connect6',
    ]);
    const check = checkSocketLb(f);
    expect(check.ok).toBe(false);
    expect(check.detail).toMatch(/^connect4: cil_sock4_conne .*; connect6: .* on \/sys\/fs\/cgroup: ambit would see pod addresses/);
    // One fix, not one per hook.
    expect(check.hint).toBe(f.conflicts[0]!.fix);
    expect(check.hint).toMatch(/socketLB\.hostNamespaceOnly=true \(Helm; bpf-lb-sock-hostns-only: "true" in ConfigMap kube-system\/cilium-config\) and cni\.exclusive=false \(cni-exclusive: "false"\)/);
  });

  it('tells Calico eBPF to turn connect-time load balancing off', () => {
    const f = analyzeSockAddr('/sys/fs/cgroup', hooks([calico4, ambit4]), { ownIds: own });
    expect(f.conflicts).toHaveLength(1);
    expect(f.conflicts[0]!.owner).toBe('calico');
    expect(f.conflicts[0]!.fix).toMatch(/bpfConnectTimeLoadBalancing":"Disabled","bpfHostNetworkedNATWithoutCTLB":"Enabled"/);
  });

  it('no conflict when ambit\'s program runs first; the others are listed', () => {
    const f = analyzeSockAddr('/sys/fs/cgroup', hooks([ambit4, cilium4], [ambit6], [{ hook: 'sendmsg4', programs: [prog(10, 'cil_sock4_sendm')] }]), { ownIds: own });
    expect(f.conflicts).toEqual([]);
    const check = checkSocketLb(f);
    expect(check).toEqual({
      name: 'socket load balancing', ok: true,
      detail: 'ambit\'s connect4/connect6 run before any other program on /sys/fs/cgroup; others attached: connect4: cil_sock4_conne, sendmsg4: cil_sock4_sendm',
    });
  });

  it('before install, any program already on connect4 will run before ambit\'s', () => {
    const f = analyzeSockAddr('/sys/fs/cgroup', hooks([prog(3, 'lb_connect')]));
    expect(f.ambitAttached).toBe(false);
    expect(f.conflicts.map((c) => [c.summary, c.owner])).toEqual([['connect4: lb_connect (id 3, unknown) will run before ambit\'s, once attached', 'unknown']]);
    expect(f.conflicts[0]!.fix).toMatch(/limit it to the host network namespace/);
    expect(checkSocketLb(analyzeSockAddr('/sys/fs/cgroup', hooks([])))).toMatchObject({ ok: true, detail: 'no other program on connect4/connect6 of /sys/fs/cgroup' });
  });

  it('another agent\'s ambit program (another pin root) marks where ambit runs', () => {
    const f = analyzeSockAddr('/sys/fs/cgroup', hooks([prog(50, 'ambit_connect4'), cilium4]));
    expect(f.hooks[0]!.programs.map((p) => p.owner)).toEqual(['other-ambit', 'cilium']);
    expect(f.conflicts).toEqual([]);
    expect(f.ambitAttached).toBe(true);
  });

  it('clears Cilium when its node_config.h says host-namespace-only, not when it says full', () => {
    expect(ciliumSocketLbMode('#define ENABLE_IPV4 1\n#define ENABLE_SOCKET_LB_HOST_ONLY 1\n')).toBe('host-only');
    expect(ciliumSocketLbMode('#define ENABLE_SOCKET_LB_FULL 1\n')).toBe('full');
    expect(ciliumSocketLbMode('/* nothing */')).toBeUndefined();
    const hostOnly = analyzeSockAddr('/sys/fs/cgroup', hooks([cilium4, ambit4]), { ownIds: own, ciliumNodeConfig: '#define ENABLE_SOCKET_LB_HOST_ONLY 1\n' });
    expect(hostOnly.conflicts).toEqual([]);
    expect(checkSocketLb(hostOnly).detail).toMatch(/cleared: connect4: cil_sock4_conne \(Cilium's datapath is built with ENABLE_SOCKET_LB_HOST_ONLY/);
    const full = analyzeSockAddr('/sys/fs/cgroup', hooks([cilium4, ambit4]), { ownIds: own, ciliumNodeConfig: '#define ENABLE_SOCKET_LB_FULL 1\n' });
    expect(full.conflicts).toHaveLength(1);
    expect(full.conflicts[0]!.fix).not.toMatch(/could not be confirmed/);
    // Unreadable: still a conflict, saying it could not be confirmed either way.
    const unknown = analyzeSockAddr('/sys/fs/cgroup', hooks([cilium4, ambit4]), { ownIds: own });
    expect(unknown.conflicts[0]!.fix).toMatch(/could not be confirmed: its \/var\/run\/cilium\/state\/globals\/node_config\.h is not readable here\)$/);
  });

  it('a listing that fails is a failed check naming the cgroup and how to run it', () => {
    const c = checkSocketLbFailed('/sys/fs/cgroup', new BpfError('AMBIT_E_BPF_CGROUP', 'cannot list the connect4 programs of cgroup /sys/fs/cgroup', { call: 'bpf_prog_query', errno: 1 }));
    expect(c).toMatchObject({ ok: false, code: 'AMBIT_E_BPF_CGROUP', detail: 'cannot list the programs on /sys/fs/cgroup: cannot list the connect4 programs of cgroup /sys/fs/cgroup (bpf_prog_query: EPERM)' });
    expect(c.hint).toMatch(/run as root/);
  });
});

describe('--pre: what a node implies for the install values', () => {
  /** A node's tree under a temp root: { 'etc/cni/net.d/10-x.conflist': text, ... }; a key ending in / is a directory. */
  function node(files: Record<string, string>): string {
    const root = mkdtempSync(join(tmp, 'node-'));
    for (const [path, text] of Object.entries(files)) {
      const full = join(root, path);
      if (path.endsWith('/')) {
        mkdirSync(full, { recursive: true });
        continue;
      }
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, text);
    }
    return root;
  }
  const byName = (checks: Check[], name: string) => checks.find((c) => c.name === name)!;
  const proc = (pid: number, comm: string, cgroup: string) => ({ [`proc/${pid}/comm`]: `${comm}\n`, [`proc/${pid}/cgroup`]: cgroup });

  // As Cilium's agent writes it (cni.exclusive=false keeps other files).
  const CILIUM_CONFLIST = '{\n  "cniVersion": "0.3.1",\n  "name": "cilium",\n  "plugins": [\n    {\n       "type": "cilium-cni",\n       "enable-debug": false,\n       "log-file": "/var/run/cilium/cilium-cni.log"\n    }\n  ]\n}\n';
  // As k3s writes its flannel config.
  const K3S_FLANNEL = '{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"forceAddress":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}';
  const AWS_CONFLIST = '{"cniVersion":"0.4.0","name":"aws-cni","disableCheck":true,"plugins":[{"name":"aws-cni","type":"aws-cni","vethPrefix":"eni","mtu":"9001","podSGEnforcingMode":"strict"},{"name":"egress-cni","type":"egress-cni","mtu":"9001","enabled":"false"},{"type":"portmap","capabilities":{"portMappings":true},"snat":true}]}';

  it('a kubeadm node on a unified hierarchy with Cilium, AppArmor on and SELinux off', () => {
    const root = node({
      'proc/mounts': UNIFIED,
      ...proc(1, 'systemd', '0::/init.scope\n'),
      ...proc(812, 'kubelet', '0::/system.slice/kubelet.service\n'),
      'sys/module/apparmor/parameters/enabled': 'Y\n',
      'var/lib/kubelet/kubeadm-flags.env': 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock"\n',
      'etc/cni/net.d/05-cilium.conflist': CILIUM_CONFLIST,
      'etc/cni/net.d/10-containerd-net.conflist': '{"cniVersion":"1.0.0","name":"containerd-net","plugins":[{"type":"bridge"}]}',
    });
    const checks = preChecks(root);
    expect(checks.map((c) => c.name)).toEqual(['platform', 'AppArmor', 'SELinux', 'kubelet cgroup', 'CNI config']);
    expect(byName(checks, 'platform')).toMatchObject({ ok: true, detail: 'kubeadm (found /var/lib/kubelet/kubeadm-flags.env)', implies: '--set platform=kubeadm' });
    expect(byName(checks, 'AppArmor')).toMatchObject({ ok: true, detail: 'enabled' });
    expect(byName(checks, 'AppArmor').implies).toMatch(/^nothing to set: .*nodeAgent\.appArmorProfile=unconfined/);
    expect(byName(checks, 'SELinux')).toEqual({ name: 'SELinux', ok: true, detail: 'not enabled' });
    expect(byName(checks, 'kubelet cgroup')).toEqual({
      name: 'kubelet cgroup', ok: true, detail: '/sys/fs/cgroup/system.slice/kubelet.service (process kubelet (pid 812); unified)',
      implies: '--set nodeAgent.kubeletCgroup=system.slice/kubelet.service',
    });
    expect(byName(checks, 'CNI config')).toEqual({
      name: 'CNI config', ok: true, detail: '/etc/cni/net.d/05-cilium.conflist: primary plugin cilium-cni (network "cilium")',
      implies: '--set cni.chained=cilium',
    });
  });

  it('a k3s agent: k3s\'s own CNI dir and bin dir, the kubelet inside k3s, a hybrid hierarchy', () => {
    const root = node({
      'proc/mounts': HYBRID,
      ...proc(655, 'k3s-agent', '12:pids:/system.slice/k3s-agent.service\n1:name=systemd:/system.slice/k3s-agent.service\n0::/system.slice/k3s-agent.service\n'),
      'var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist': K3S_FLANNEL,
    });
    const checks = preChecks(root);
    expect(byName(checks, 'platform').implies).toBe('--set platform=k3s');
    expect(byName(checks, 'kubelet cgroup')).toMatchObject({
      ok: true, detail: '/sys/fs/cgroup/unified/system.slice/k3s-agent.service (process k3s-agent (pid 655); hybrid)',
      implies: '--set nodeAgent.kubeletCgroup=system.slice/k3s-agent.service --set nodeAgent.cgroupRoot=/sys/fs/cgroup/unified',
    });
    expect(byName(checks, 'CNI config').implies).toBe('--set cni.chained=flannel --set platform=k3s');
  });

  it('an EKS node with the VPC CNI and SELinux enforcing', () => {
    const root = node({
      'proc/mounts': UNIFIED,
      'etc/eks/': '',
      'sys/fs/cgroup/system.slice/kubelet.service/': '',
      'sys/fs/selinux/enforce': '1',
      'etc/cni/net.d/10-aws.conflist': AWS_CONFLIST,
    });
    const checks = preChecks(root);
    expect(byName(checks, 'platform').implies).toBe('--set platform=eks');
    // No kubelet process in the fixture: the unit's cgroup is there.
    expect(byName(checks, 'kubelet cgroup')).toMatchObject({ ok: true, implies: '--set nodeAgent.kubeletCgroup=system.slice/kubelet.service' });
    expect(byName(checks, 'kubelet cgroup').detail).toMatch(/exists; no kubelet process seen/);
    expect(byName(checks, 'CNI config').implies).toBe('--set cni.chained=aws-vpc-cni');
    const selinux = byName(checks, 'SELinux');
    expect(selinux).toMatchObject({ ok: true, detail: 'enforcing' });
    expect(selinux.implies).toMatch(/^nothing to set: the install runs the node agent as SELinux type spc_t/);
    expect(checkSelinux('0')).toMatchObject({ ok: true, detail: 'permissive (denials are logged, not enforced)' });
  });

  it('a bare machine: generic, no kubelet, no CNI config, each failure saying what to do', () => {
    const root = node({ 'proc/mounts': V1_ONLY });
    const checks = preChecks(root);
    expect(byName(checks, 'platform')).toMatchObject({ ok: true, implies: '--set platform=generic' });
    expect(byName(checks, 'kubelet cgroup')).toMatchObject({ ok: false, detail: 'no cgroup v2 (v1-only)' });
    const cni = byName(checks, 'CNI config');
    expect(cni).toMatchObject({ ok: false, detail: 'no CNI config that loads in /etc/cni/net.d or /var/lib/rancher/k3s/agent/etc/cni/net.d' });
    expect(cni.hint).toMatch(/--set cni\.enabled=false/);
    expect(checkAppArmor('N\n')).toEqual({ name: 'AppArmor', ok: true, detail: 'disabled' });
  });

  it('a kubelet found nowhere, and a kubelet in the root cgroup, fail with what to pass', () => {
    const none = checkKubeletCgroup(mounts(UNIFIED), undefined);
    expect(none).toMatchObject({ ok: false, implies: '--set nodeAgent.kubeletCgroup=<path>' });
    expect(none.hint).toMatch(/cat \/proc\/\$\(pidof kubelet\)\/cgroup/);
    expect(checkKubeletCgroup(mounts(UNIFIED), { path: '', how: 'process kubelet (pid 9)' })).toMatchObject({ ok: false, detail: expect.stringMatching(/root cgroup/) });
    expect(parseCgroupV2Path('0::/system.slice/kubelet.service\n')).toBe('system.slice/kubelet.service');
    expect(parseCgroupV2Path('4:memory:/x\n')).toBeUndefined();
  });

  it('the primary CNI config is the first in byte order that loads, as containerd picks it', () => {
    const confDir = (files: Record<string, string>) => {
      const d = mkdtempSync(join(tmp, 'cni-conf-'));
      for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
      return d;
    };
    expect(runtimeConfig(confDir({
      README: 'not a config',
      '00-broken.conflist': '{ not json',
      '10-calico.conflist': '{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico"},{"type":"bandwidth"},{"type":"portmap"}]}',
      '05-Empty.conflist': '{"name":"x","plugins":[]}',
      '87-podman.conflist': '{"name":"podman","plugins":[{"type":"bridge"}]}',
    }))).toEqual({ name: '10-calico.conflist', type: 'calico', network: 'k8s-pod-network' });
    expect(runtimeConfig(confDir({ '10-bridge.conf': '{"cniVersion":"0.3.1","name":"bridge","type":"bridge"}' }))).toEqual({ name: '10-bridge.conf', type: 'bridge', network: 'bridge' });
  });

  it('maps each primary plugin to the cni.chained value', () => {
    expect(chainedFor('cilium-cni', 'cilium')).toBe('cilium');
    expect(chainedFor('calico', 'k8s-pod-network')).toBe('calico');
    // GKE with network policy (Calico) and without (ptp) name their network gke-pod-network.
    expect(chainedFor('calico', 'gke-pod-network')).toBe('gke');
    expect(chainedFor('ptp', 'gke-pod-network')).toBe('gke');
    expect(chainedFor('ptp', 'kindnet')).toBe('kindnet');
    expect(chainedFor('aws-cni', 'aws-cni')).toBe('aws-vpc-cni');
    expect(chainedFor('flannel', 'cbr0')).toBe('flannel');
    expect(chainedFor('bridge', 'mynet')).toBe('bridge');
  });

  it('renders what a check implies beside it, pass or fail', () => {
    const text = renderText(report([{ name: 'platform', ok: true, detail: 'k3s (found /var/lib/rancher/k3s)', implies: '--set platform=k3s' }]));
    expect(text.split('\n')[0]).toBe('✓ platform  k3s (found /var/lib/rancher/k3s) → --set platform=k3s');
  });
});
