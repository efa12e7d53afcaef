// `ambit check` as an operator runs it: the real CLI in a child process, against this node's kernel.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Datapath } from '../../src/ebpf/datapath.js';
import { BpfLink } from '../../src/ebpf/link.js';
import { BpfObject } from '../../src/ebpf/object.js';
import { Lab } from './lab.js';
import { describeAsRoot } from './helpers/root.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin', 'ambit.js');
const tmpDirs: string[] = [];
afterAll(() => {
  for (const dir of tmpDirs) rmSync(dir, { recursive: true, force: true });
});

interface JsonReport {
  ok: boolean;
  checks: Array<{ name: string; ok: boolean; detail: string; hint?: string; code?: string; verifierLog?: string; implies?: string }>;
}

/** Runs `node bin/ambit.js <args>`, optionally under a wrapper command; an env value of undefined unsets it. */
function ambit(args: string[], env: Record<string, string | undefined> = {}, wrapper: string[] = []) {
  const merged: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete merged[k];
  const [cmd, ...rest] = [...wrapper, process.execPath, bin, ...args] as [string, ...string[]];
  const r = spawnSync(cmd, rest, { cwd: root, env: merged, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function lineFor(stdout: string, name: string): string {
  const line = stdout.split('\n').find((l) => l.slice(2).startsWith(`${name} `));
  if (line === undefined) throw new Error(`no line for ${name} in:\n${stdout}`);
  return line;
}

/** A directory of objects that really fail: garbage bytes, and a program this kernel's verifier refuses. */
function badObjectsDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-cli-check-'));
  tmpDirs.push(dir);
  writeFileSync(join(dir, 'broken.bpf.o'), Buffer.from('this is not an ELF object, just garbage bytes\n'));
  copyFileSync(join(root, 'test', 'fixtures', 'bpf', 'reject.bpf.o'), join(dir, 'reject.bpf.o'));
  return dir;
}

describeAsRoot('on this node', () => {
  it('passes every check and exits 0', () => {
    const r = ambit(['check'], { AMBIT_BPF_DIR: undefined });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).not.toContain('✗');
    for (const name of ['kernel >= 5.17', 'kernel BTF', 'cgroup v2', 'bpffs', 'CAP_BPF', 'CAP_NET_ADMIN', 'CAP_SYS_ADMIN', 'libbpf.so.1']) {
      expect(lineFor(r.stdout, name)).toMatch(/^✓ /);
    }
    expect(lineFor(r.stdout, 'BPF object outbound.bpf.o')).toMatch(/^✓ .*ambit_connect4, ambit_connect6, ambit_sockops/);
    expect(lineFor(r.stdout, 'BPF object inbound.bpf.o')).toMatch(/^✓ .*ambit_sk_lookup/);
    expect(lineFor(r.stdout, 'socket load balancing')).toMatch(/^✓ socket load balancing +(no other program on connect4\/connect6 of |ambit's connect4\/connect6 run before any other program on )\//);
    expect(r.stdout).toMatch(/all \d+ checks passed/);
  });

  it('--pre adds what this node implies for the install values, each with its value or its fix', () => {
    const r = ambit(['check', '--pre', '--json'], { AMBIT_BPF_DIR: undefined });
    const report = JSON.parse(r.stdout) as JsonReport;
    const pre = report.checks.slice(-5);
    expect(pre.map((c) => c.name)).toEqual(['platform', 'AppArmor', 'SELinux', 'kubelet cgroup', 'CNI config']);
    expect(pre[0]).toMatchObject({ ok: true, implies: expect.stringMatching(/^--set platform=(generic|kubeadm|eks|gke|k3s|aks)$/) });
    for (const c of pre) if (!c.ok) expect(c.hint).toBeTruthy();
    for (const c of pre.filter((x) => x.name === 'kubelet cgroup' || x.name === 'CNI config')) expect(c.implies ?? c.hint).toMatch(/--set (nodeAgent\.kubeletCgroup|cni\.)/);
    expect(r.status).toBe(report.ok ? 0 : 1);
  });

  it('--pre --host-root reads another root, as from a `kubectl debug node` pod (the host at /host)', () => {
    const host = mkdtempSync(join(tmpdir(), 'ambit-host-root-'));
    tmpDirs.push(host);
    const files: Record<string, string> = {
      'proc/self/status': '',
      'proc/mounts': 'cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n',
      'etc/eks/bootstrap.sh': '',
      'sys/fs/cgroup/system.slice/kubelet.service/cgroup.procs': '',
      'etc/cni/net.d/10-aws.conflist': '{"cniVersion": "0.4.0", "name": "aws-cni", "plugins": [{"type": "aws-cni"}, {"type": "portmap"}]}',
    };
    for (const [path, text] of Object.entries(files)) {
      mkdirSync(dirname(join(host, path)), { recursive: true });
      writeFileSync(join(host, path), text);
    }
    const r = ambit(['check', '--pre', '--json', '--host-root', host], { AMBIT_BPF_DIR: undefined });
    const pre = (JSON.parse(r.stdout) as JsonReport).checks.slice(-5);
    expect(pre.find((c) => c.name === 'platform')).toMatchObject({ ok: true, implies: '--set platform=eks' });
    expect(pre.find((c) => c.name === 'kubelet cgroup')).toMatchObject({ ok: true, implies: '--set nodeAgent.kubeletCgroup=system.slice/kubelet.service' });
    expect(pre.find((c) => c.name === 'CNI config')).toMatchObject({ ok: true, implies: '--set cni.chained=aws-vpc-cni' });

    const noPre = ambit(['check', '--host-root', host]);
    expect(noPre.status).toBe(2);
    expect(noPre.stderr).toMatch(/--host-root is for --pre/);
    const notHost = ambit(['check', '--pre', '--host-root', join(host, 'etc')]);
    expect(notHost.status).toBe(2);
    expect(notHost.stderr).toMatch(/--host-root .*\/etc has no proc filesystem/);
  });

  it('reports the same as JSON', () => {
    const r = ambit(['check', '--json'], { AMBIT_BPF_DIR: undefined });
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout) as JsonReport;
    expect(report.ok).toBe(true);
    expect(report.checks.filter((c) => !c.ok)).toEqual([]);
    expect(report.checks.map((c) => c.name)).toEqual(expect.arrayContaining(['BPF object outbound.bpf.o', 'BPF object inbound.bpf.o']));
    for (const c of report.checks) expect(Object.keys(c).sort()).toEqual(['detail', 'name', 'ok']);
  });
});

describeAsRoot('when something is wrong', () => {
  it('fails objects that do not open or do not verify, with the reason', () => {
    const r = ambit(['check'], { AMBIT_BPF_DIR: badObjectsDir() });
    expect(r.status).toBe(1);
    const broken = lineFor(r.stdout, 'BPF object broken.bpf.o');
    expect(broken).toMatch(/^✗ /);
    expect(broken).toContain('cannot open BPF object');
    expect(broken).toContain('LIBBPF_ERRNO__FORMAT');
    expect(broken).toContain('fix: ');
    expect(r.stdout).toContain('is not a proper ELF object');
    const reject = lineFor(r.stdout, 'BPF object reject.bpf.o');
    expect(reject).toMatch(/^✗ .*verifier rejected.*\[AMBIT_E_BPF_VERIFIER\]/);
    expect(r.stdout).toMatch(/\| invalid bpf_context access/);
    expect(r.stdout).toMatch(/2 of \d+ checks failed/);
    // The node itself is fine: only the objects fail.
    expect(lineFor(r.stdout, 'libbpf.so.1')).toMatch(/^✓ /);
  });

  it('gives the failing objects, codes and the full verifier log as JSON', () => {
    const r = ambit(['check', '--json'], { AMBIT_BPF_DIR: badObjectsDir() });
    expect(r.status).toBe(1);
    const report = JSON.parse(r.stdout) as JsonReport;
    expect(report.ok).toBe(false);
    const failed = report.checks.filter((c) => !c.ok);
    expect(failed.map((c) => [c.name, c.code])).toEqual([
      ['BPF object broken.bpf.o', 'AMBIT_E_BPF_OPEN'],
      ['BPF object reject.bpf.o', 'AMBIT_E_BPF_VERIFIER'],
    ]);
    expect(failed.every((c) => c.hint)).toBe(true);
    expect(failed[1]?.verifierLog).toMatch(/invalid bpf_context access/);
  });

  it('fails an objects directory that does not exist', () => {
    const r = ambit(['check'], { AMBIT_BPF_DIR: '/nonexistent/ambit-bpf' });
    expect(r.status).toBe(1);
    expect(lineFor(r.stdout, 'BPF objects')).toMatch(/^✗ .*\/nonexistent\/ambit-bpf does not exist.*AMBIT_BPF_DIR/);
  });

  const setpriv = spawnSync('setpriv', ['--version']).status === 0;
  it.skipIf(!setpriv)('names CAP_BPF when the process runs without it', () => {
    const r = ambit(['check'], { AMBIT_BPF_DIR: undefined }, ['setpriv', '--bounding-set', '-bpf']);
    expect(r.status).toBe(1);
    expect(lineFor(r.stdout, 'CAP_BPF')).toMatch(/^✗ CAP_BPF .*not in the effective set.*fix: .*run as root/);
    expect(lineFor(r.stdout, 'CAP_NET_ADMIN')).toMatch(/^✓ /);
  });

  it('rejects an unknown option with usage on stderr, not a stack trace', () => {
    const r = ambit(['check', '--bogus']);
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain("unknown option '--bogus'");
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describeAsRoot('another program\'s socket load balancer on the cgroup', () => {
  // The fixture rewrites a ClusterIP in connect4, named as Cilium's socket LB; attached before ambit's datapath.
  const lab = new Lab();
  beforeAll(() => {
    const obj = BpfObject.load(join(root, 'test', 'fixtures', 'bpf', 'socklb.bpf.o'));
    lab.defer(() => obj.close());
    const link = BpfLink.attachCgroup(obj.program('cil_sock4_connect'), lab.cgroupRoot);
    lab.defer(() => link.close());
    const datapath = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => datapath.close());
    datapath.attachOutbound(lab.cgroupRoot);
  });
  afterAll(() => lab.cleanup());

  it('fails the socket load balancing line with the program and what to change in Cilium', () => {
    const r = ambit(['check', '--cgroup', lab.cgroupRoot, '--pin-root', lab.pinRoot], { AMBIT_BPF_DIR: undefined });
    expect(r.status).toBe(1);
    const line = lineFor(r.stdout, 'socket load balancing');
    expect(line).toMatch(/^✗ socket load balancing +connect4: cil_sock4_conne \(id \d+, cilium\) runs before ambit_connect4 on /);
    expect(line).toMatch(/— fix: .*socketLB\.hostNamespaceOnly=true .*cni\.exclusive=false/);
    expect(r.stdout).toMatch(/1 of \d+ checks failed/);
  });

  it('refuses a --cgroup that does not exist', () => {
    const r = ambit(['check', '--cgroup', join(lab.cgroupRoot, 'nope')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--cgroup .*\/nope does not exist/);
  });
});
