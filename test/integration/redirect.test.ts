// Outbound and inbound capture on the real kernel: one enrolled pod, one pod that is not,
// and a peer outside both, each in its own network namespace and cgroup.
import { createServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Datapath } from '../../src/ebpf/datapath.js';
import { AMBIT } from '../../src/ebpf/layout.generated.js';
import { PodEnroller, type EnrolledPod } from '../../src/node/enroll.js';
import { Lab } from './lab.js';
import { closeServer, reportingHandlers, startApp } from './pods.js';
import { describeAsRoot } from './helpers/root.js';

describeAsRoot('redirection', () => {
  const lab = new Lab();
  let pod: string;
  let podCg: string;
  let other: string;
  let otherCg: string;
  let outside: string;
  let datapath: Datapath;
  let enroller: PodEnroller;
  let enrolled: EnrolledPod;

  beforeAll(async () => {
    pod = lab.netns('pod');
    other = lab.netns('other');
    outside = lab.netns('out');
    podCg = lab.cgroup('pod');
    otherCg = lab.cgroup('other');
    lab.link(outside, '10.201.9.1/24', pod, '10.201.9.2/24');
    lab.link(outside, 'fd09::1/64', pod, 'fd09::2/64');
    lab.link(outside, '10.201.8.1/24', other, '10.201.8.2/24');
    for (const [ns, port] of [[pod, 8080], [pod, 8081], [pod, 9090], [other, 8080]] as const) {
      const app = await startApp(ns, port);
      lab.defer(() => closeServer(app));
    }
    datapath = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => datapath.close());
    datapath.attachOutbound(lab.cgroupRoot);
    enroller = new PodEnroller(datapath, reportingHandlers);
    lab.defer(() => enroller.unenrollAll());
    enrolled = await enroller.enroll({
      name: 'test/pod', netnsPath: pod, cgroupPath: podCg, ips: ['10.201.9.2', 'fd09::2'],
      excludedOutboundPorts: [5432], excludedInboundPorts: [9090], excludedCidrs: ['10.202.0.0/16', 'fd0a::/32'],
    });
  });
  afterAll(() => lab.cleanup());

  const inPod = (host: string, port: number, ...args: string[]) => lab.client(pod, podCg, host, port, ...args).then((r) => r.stdout.trim());

  it('captures an IPv4 connect and tells the agent the original destination', async () => {
    expect(await inPod('10.200.0.9', 80)).toBe('captured 10.200.0.9 80 v4');
    expect(await inPod('10.201.9.1', 8080)).toBe('captured 10.201.9.1 8080 v4');
  });

  it('captures IPv6 and IPv4-mapped connects', async () => {
    expect(await inPod('fd00::9', 443)).toBe('captured fd00::9 443 v6');
    expect(await inPod('::ffff:10.200.0.10', 81)).toBe('captured 10.200.0.10 81 v4');
  });

  it('leaves loopback, excluded ports and excluded CIDRs alone', async () => {
    expect(await inPod('127.0.0.1', 8080)).toBe('app 8080');
    expect(await inPod('::1', 8081)).toBe('app 8081');
    // 5432 and 10.202.0.0/16 are excluded: the connect goes where it was sent (nothing listens).
    expect(await inPod('10.201.9.1', 5432)).toBe('error ECONNREFUSED');
    expect(await inPod('10.202.3.4', 80)).toMatch(/^error (ENETUNREACH|EHOSTUNREACH)$/);
    expect(await inPod('fd0a::1', 80)).toMatch(/^error (ENETUNREACH|EHOSTUNREACH)$/);
  });

  it('leaves the agent\'s own (marked) sockets alone', async () => {
    expect(await inPod('10.201.9.2', 8080, '--mark', String(AMBIT.SOCKET_MARK))).toBe('app 8080');
    expect(await inPod('10.201.9.2', 8080)).toBe('captured 10.201.9.2 8080 v4');
  });

  it('leaves processes outside the mesh cgroup and pods that are not enrolled alone', async () => {
    const outsideCgroup = await lab.client(pod, undefined, '10.201.9.2', 8080);
    expect(outsideCgroup.stdout.trim()).toBe('app 8080');
    const notEnrolled = await lab.client(other, otherCg, '10.201.8.2', 8080);
    expect(notEnrolled.stdout.trim()).toBe('app 8080');
  });

  it('leaves host processes alone, even inside the mesh cgroup', async () => {
    // A host-netns process under the hooked cgroup: the hook runs, finds no pod for the host's
    // netns and lets the connect through (to a server on the host's loopback, here).
    const server = createServer((s) => s.end('host\n'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    lab.defer(() => closeServer(server));
    const before = datapath.counters().connect_not_enrolled;
    const r = await lab.client(undefined, lab.cgroup('host-proc'), '127.0.0.1', (server.address() as AddressInfo).port);
    expect(r.stdout.trim()).toBe('host');
    expect(datapath.counters().connect_not_enrolled).toBeGreaterThan(before);
  });

  it('steers inbound plaintext to 15006 but leaves HBONE and excluded ports alone', async () => {
    const fromOutside = (host: string, port: number) => lab.client(outside, undefined, host, port).then((r) => r.stdout.trim());
    expect(await fromOutside('10.201.9.2', 8080)).toBe('inbound 10.201.9.2 8080');
    expect(await fromOutside('fd09::2', 8081)).toBe('inbound fd09::2 8081');
    expect(await fromOutside('10.201.9.2', AMBIT.PORT_HBONE)).toBe('hbone');
    expect(await fromOutside('10.201.9.2', 9090)).toBe('app 9090');
    expect(await fromOutside('10.201.8.2', 8080)).toBe('app 8080');
  });

  it('counts what it did and deletes connection records on close', async () => {
    const before = datapath.counters();
    await inPod('10.200.0.9', 80);
    const after = datapath.counters();
    expect(after.connect_redirected - before.connect_redirected).toBe(1n);
    expect(after.origdst_recorded - before.origdst_recorded).toBe(1n);
    expect(after.connect_excluded).toBeGreaterThan(0n);
    expect(after.connect_not_enrolled).toBeGreaterThan(0n);
    expect(after.inbound_steered).toBeGreaterThan(0n);
    expect(after.errors).toBe(0n);
    // Both ends closed: the record is gone once the kernel reports TCP_CLOSE.
    await expect.poll(() => datapath.maps.origDst.size(), { timeout: 5000 }).toBe(0);
  });

  it('unenrolling stops capture and removes the pod\'s entries', async () => {
    await enroller.unenroll(enrolled.netnsCookie);
    expect(datapath.maps.pods.get(enrolled.netnsCookie)).toBeUndefined();
    expect(datapath.maps.podAddrs.get('10.201.9.2')).toBeUndefined();
    expect(await inPod('10.201.9.2', 8080)).toBe('app 8080');
    const r = await lab.client(outside, undefined, '10.201.9.2', 8080);
    expect(r.stdout.trim()).toBe('app 8080');
  });
});
