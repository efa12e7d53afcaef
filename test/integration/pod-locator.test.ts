// Finding pods through /proc, as the node agent does on Kubernetes without a CNI plugin: real
// network namespaces with a sleeping process in each (one of them in a cgroup), found by their
// addresses. Then the same locator on a fake proc tree, for what real namespaces cannot show
// (conflicts, unreadable cgroups, throttled rescans), and the parsers on fixed text.
import { execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import type { Workload } from '../../src/config/model.js';
import { cgroup2Mount } from '../../src/ebpf/mounts.js';
import {
  normalizeIp, parseCgroupV2, parseFibTrieLocal, parseIfInet6, parseStartTime, PodLocatorError, ProcPodLocator,
} from '../../src/node/pod-locator.js';
import { until } from '../helpers/wait.js';
import { Lab } from './lab.js';
import { describeAsRoot } from './helpers/root.js';

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const ino = (path: string) => statSync(path).ino;
/** The start time of a process, and the time now, in clock ticks since boot (10 ms each). */
const startTicks = (pid: number) => parseStartTime(readFileSync(`/proc/${pid}/stat`, 'utf8'))!;
const uptimeTicks = () => Math.floor(Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100);

function workload(ips: string[], name = 'pod'): Workload {
  return {
    uid: `uid-${name}`, name, workload: name, namespace: 'test', serviceAccount: 'default',
    identity: 'spiffe://cluster.local/ns/test/sa/default', ips, node: 'node', labels: {}, enrolled: true, ports: {},
  };
}

/** The child's pid, once it is inside the netns (sh execs nsenter, which execs the command). */
function pidIn(child: ChildProcess, netnsPath: string): Promise<number> {
  const pid = child.pid!;
  return until(`process ${pid} to enter ${netnsPath}`, () => ino(`/proc/${pid}/ns/net`) === ino(netnsPath) && pid, { timeout: 5000, interval: 20 });
}

describeAsRoot('ProcPodLocator on real network namespaces', () => {
  const lab = new Lab('ambit-pl');
  // Random subnets, so that a second run beside this one does not claim the same addresses.
  const n = 1 + Math.floor(Math.random() * 250);
  const [v4a, v4b] = [`10.222.${n}.2`, `10.222.${n}.3`];
  const v4lo = `10.222.${n}.9`;
  const [v6a, v6b] = [`fd00:222:${n.toString(16)}::2`, `fd00:222:${n.toString(16)}::3`];
  const nameB = `ambit-${lab.id}-b`;
  const nsB = `/run/netns/${nameB}`;
  let nsA: string;
  let cgA: string;
  let sandboxA: number;
  let laterA: number;
  let childB: ChildProcess;
  let locator: ProcPodLocator;

  beforeAll(async () => {
    nsA = lab.netns('a');
    // Made here rather than by the lab: the last test deletes it.
    lab.defer(() => existsSync(nsB) && ip('netns', 'del', nameB));
    ip('netns', 'add', nameB);
    ip('-n', nameB, 'link', 'set', 'lo', 'up');
    lab.link(nsA, `${v4a}/24`, nsB, `${v4b}/24`);
    lab.link(nsA, `${v6a}/64`, nsB, `${v6b}/64`);
    // One address of A not on the link to B, which goes when B does.
    lab.addresses(nsA, `${v4lo}/32`);
    cgA = lab.cgroup('a');
    sandboxA = await pidIn(lab.spawn(nsA, cgA, ['sleep', '600']), nsA);
    // The next process gets a later start time once the clock has ticked past the sandbox's.
    await vi.waitFor(() => expect(uptimeTicks()).toBeGreaterThan(startTicks(sandboxA)), { timeout: 1000, interval: 5 });
    laterA = await pidIn(lab.spawn(nsA, undefined, ['sleep', '600']), nsA);
    expect(startTicks(laterA)).toBeGreaterThan(startTicks(sandboxA));
    childB = lab.spawn(nsB, undefined, ['sleep', '600']);
    await pidIn(childB, nsB);
    locator = new ProcPodLocator({ cgroupRoot: cgroup2Mount(), minRescanMs: 0 });
  });
  afterAll(() => lab.cleanup());

  it('finds a pod by its IPv4 address: the oldest process\'s netns and cgroup', () => {
    const where = locator.locate(workload([v4a]));
    expect(where).toBeDefined();
    expect(ino(where!.netnsPath)).toBe(ino(nsA));
    // The first process (the sandbox, in a pod) is preferred over the later one outside the cgroup.
    expect(where!.netnsPath).toBe(`/proc/${sandboxA}/ns/net`);
    expect(where!.netnsPath).not.toBe(`/proc/${laterA}/ns/net`);
    expect(where!.cgroupPath).toBe(cgA);
    expect(locator.explain(workload([v4a]))).toContain(`is in /proc/${sandboxA}/ns/net, cgroup ${cgA}`);
  });

  it('finds an IPv6-only pod, whatever form its address is written in', () => {
    for (const addr of [v6b, `FD00:0222:${n.toString(16).padStart(4, '0')}:0000:0000:0000:0000:0003`]) {
      const where = locator.locate(workload([addr]));
      expect(where, addr).toBeDefined();
      expect(ino(where!.netnsPath)).toBe(ino(nsB));
      expect(where!.cgroupPath).not.toBe(cgA);
    }
  });

  it('finds nothing for an unknown address, and says what it scanned', () => {
    expect(locator.locate(workload(['10.222.255.77']))).toBeUndefined();
    const why = locator.explain(workload(['10.222.255.77']));
    expect(why).toMatch(/^no network namespace on this node has 10\.222\.255\.77 \(scanned \d+ processes in \d+ namespaces under \/proc/);
    const stats = locator.lastScan!;
    expect(stats.processes).toBeGreaterThanOrEqual(3);
    expect(stats.namespaces).toBeGreaterThanOrEqual(2);
    // Even root may be refused a process (a non-dumpable one, another user namespace's): said so.
    if (stats.skippedPermission > 0) expect(why).toContain(`; ${stats.skippedPermission} unreadable: run with CAP_SYS_PTRACE`);
    else expect(why).not.toContain('unreadable');
  });

  it('never matches the host\'s own addresses or loopback', () => {
    const host = Object.values(networkInterfaces()).flat().map((i) => i!.address);
    for (const addr of ['127.0.0.1', '::1', ...host]) expect(locator.locate(workload([addr])), addr).toBeUndefined();
  });

  it('refuses a workload whose addresses are in two namespaces', () => {
    expect(locator.locate(workload([v4a, v6b]))).toBeUndefined();
    expect(locator.explain(workload([v4a, v6b]))).toContain('are in different network namespaces');
    // Addresses of one pod agree: either finds it.
    expect(ino(locator.locate(workload(['10.222.255.77', v6a]))!.netnsPath)).toBe(ino(nsA));
  });

  it('notices a pod whose process exited, rescanning or (throttled) refusing the stale path', async () => {
    const throttled = new ProcPodLocator({ minRescanMs: 600_000 });
    expect(locator.locate(workload([v4b]))).toBeDefined();
    expect(throttled.locate(workload([v4b]))).toBeDefined();
    const exited = new Promise((r) => childB.once('exit', r));
    childB.kill('SIGKILL');
    await exited;
    ip('netns', 'del', nameB);
    expect(locator.locate(workload([v4b]))).toBeUndefined();
    expect(locator.explain(workload([v4b]))).toContain(`no network namespace on this node has ${v4b}`);
    expect(throttled.locate(workload([v4b]))).toBeUndefined();
    expect(throttled.explain(workload([v4b]))).toMatch(/was in \/proc\/\d+\/ns\/net, but that process has exited/);
    // The other pod is unaffected. (By an address not on the link to B: the kernel removes that
    // link some time after B's last process exits.)
    expect(ino(locator.locate(workload([v4lo]))!.netnsPath)).toBe(ino(nsA));
  });
});

describeAsRoot('ProcPodLocator on a fake proc tree', () => {
  const root = mkdtempSync(join(tmpdir(), 'ambit-pl-'));
  const proc = join(root, 'proc');
  const nsFiles = join(root, 'ns');
  mkdirSync(proc);
  mkdirSync(nsFiles);
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  /** A process: its ns/net a hard link to the netns's file, so that processes of one netns share an inode. */
  function fakeProcess(pid: number, netns: string, opts: { v4?: string[]; v6?: string[]; cgroup?: string; start?: number }): void {
    const dir = join(proc, String(pid));
    mkdirSync(join(dir, 'ns'), { recursive: true });
    mkdirSync(join(dir, 'net'));
    const nsFile = join(nsFiles, netns);
    if (!existsSync(nsFile)) writeFileSync(nsFile, '');
    linkSync(nsFile, join(dir, 'ns', 'net'));
    const leaves = (opts.v4 ?? []).map((a) => `     |-- ${a}\n        /32 host LOCAL\n`).join('');
    writeFileSync(join(dir, 'net', 'fib_trie'), `Local:\n  +-- 0.0.0.0/0 3 0 5\n${leaves}`);
    writeFileSync(join(dir, 'net', 'if_inet6'), (opts.v6 ?? []).map((h) => `${h} 02 40 00 80     eth0\n`).join(''));
    writeFileSync(join(dir, 'cgroup'), `0::${opts.cgroup ?? '/'}\n`);
    writeFileSync(join(dir, 'stat'), `${pid} (sleep (x) y) S 1 ${pid} ${pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 ${opts.start ?? pid} 8 1\n`);
  }

  it('refuses an address claimed by two namespaces, and says so', () => {
    fakeProcess(10, 'n10', { v4: ['10.0.0.9'] });
    fakeProcess(11, 'n11', { v4: ['10.0.0.9'] });
    const locator = new ProcPodLocator({ procRoot: proc, minRescanMs: 0 });
    expect(locator.locate(workload(['10.0.0.9']))).toBeUndefined();
    expect(locator.explain(workload(['10.0.0.9']))).toMatch(/^10\.0\.0\.9 is local to 2 network namespaces \(.*\/10\/ns\/net, .*\/11\/ns\/net\); refusing to guess/);
  });

  it('takes the oldest process of a namespace, by start time rather than pid', () => {
    fakeProcess(20, 'n20', { v4: ['10.0.0.20'], cgroup: '/kubepods/app', start: 900 });
    fakeProcess(30, 'n20', { v4: ['10.0.0.20'], cgroup: '/kubepods/pause', start: 100 });
    const locator = new ProcPodLocator({ procRoot: proc, cgroupRoot: '/host/sys/fs/cgroup', minRescanMs: 0 });
    expect(locator.locate(workload(['10.0.0.20']))).toEqual({ netnsPath: join(proc, '30/ns/net'), cgroupPath: '/host/sys/fs/cgroup/kubepods/pause' });
  });

  it('leaves out a cgroup outside the agent\'s cgroup namespace', () => {
    fakeProcess(40, 'n40', { v6: ['fd000001000000000000000000000040'], cgroup: '/../../kubepods/x' });
    const locator = new ProcPodLocator({ procRoot: proc, minRescanMs: 0 });
    expect(locator.locate(workload(['fd00:1::40']))).toEqual({ netnsPath: join(proc, '40/ns/net') });
    expect(locator.explain(workload(['fd00:1::40']))).toContain('outside the agent\'s cgroup namespace');
  });

  it('skips the agent\'s own namespace', () => {
    fakeProcess(50, 'n50', { v4: ['10.0.0.50'] });
    const locator = new ProcPodLocator({ procRoot: proc, ownNetns: join(nsFiles, 'n50'), minRescanMs: 0 });
    expect(locator.locate(workload(['10.0.0.50']))).toBeUndefined();
  });

  it('rescans on a miss at most once per minRescanMs; refresh() rescans now', () => {
    const locator = new ProcPodLocator({ procRoot: proc, minRescanMs: 600_000 });
    expect(locator.locate(workload(['10.0.0.60']))).toBeUndefined();
    fakeProcess(60, 'n60', { v4: ['10.0.0.60'] });
    expect(locator.locate(workload(['10.0.0.60']))).toBeUndefined();
    locator.refresh();
    expect(locator.locate(workload(['10.0.0.60']))?.netnsPath).toBe(join(proc, '60/ns/net'));
  });

  it('reports a proc root it cannot read', () => {
    const locator = new ProcPodLocator({ procRoot: join(root, 'missing'), minRescanMs: 0 });
    expect(() => locator.refresh()).toThrow(PodLocatorError);
    expect(locator.locate(workload(['10.0.0.1']))).toBeUndefined();
    expect(locator.explain(workload(['10.0.0.1']))).toMatch(/^cannot scan .*missing: .*ENOENT/);
  });
});

describeAsRoot('parsers', () => {
  it('reads the local IPv4 addresses of fib_trie', () => {
    const text = `
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.1.2.0/24 2 0 2
        +-- 10.1.2.0/30 2 0 2
           |-- 10.1.2.0
              /24 link UNICAST
           |-- 10.1.2.3
              /32 host LOCAL
        |-- 10.1.2.255
           /32 link BROADCAST
     +-- 10.9.0.0/24 2 0 2
        |-- 10.9.0.0
           /24 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     |-- 172.16.0.7
        /16 link UNICAST
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.1.2.3
        /32 host LOCAL
     |-- 192.168.5.5
        /32 link BROADCAST
`;
    expect(parseFibTrieLocal(text)).toEqual(['10.1.2.3', '172.16.0.7']);
    expect(parseFibTrieLocal('')).toEqual([]);
  });

  it('reads IPv6 addresses of if_inet6 in Node\'s text form', () => {
    const text = `
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000001000000000000000000000005 05 40 00 80       d0
20010db8000000000001000000000000 05 40 00 80       d0
`;
    expect(parseIfInet6(text)).toEqual(['fd00::2', 'fd00:1::5', '2001:db8:0:0:1::']);
  });

  it('normalizes addresses, reads cgroup v2 paths and start times', () => {
    expect(normalizeIp('FD00:0001:0000:0000:0000:0000:0000:0005')).toBe('fd00:1::5');
    expect(normalizeIp('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(normalizeIp('not an address')).toBeUndefined();
    expect(parseCgroupV2('12:memory:/x\n0::/kubepods.slice/pod1.slice\n')).toBe('/kubepods.slice/pod1.slice');
    expect(parseCgroupV2('4:memory:/x\n')).toBeUndefined();
    expect(parseStartTime('77 (a) b) S 1 77 77 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 12345 8 1')).toBe(12345);
  });

  it('agrees with `ip addr` on the kernel\'s own fib_trie', () => {
    const v4 = parseFibTrieLocal(readFileSync('/proc/self/net/fib_trie', 'utf8')).sort();
    const fromIp = execFileSync('ip', ['-4', '-o', 'addr', 'show'], { encoding: 'utf8' })
      .split('\n').map((l) => /inet (\S+)\//.exec(l)?.[1]).filter((a): a is string => !!a && !a.startsWith('127.'));
    expect(v4).toEqual([...new Set(fromIp)].sort());
  });
});
