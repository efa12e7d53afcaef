// A restarted agent adopts the pinned links: its programs are swapped in while a pod keeps
// connecting, and not one connect escapes capture.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Datapath } from '../../src/ebpf/datapath.js';
import { PodEnroller } from '../../src/node/enroll.js';
import { Lab } from './lab.js';
import { closeServer, reportingHandlers, startApp } from './pods.js';
import { describeAsRoot } from './helpers/root.js';

describeAsRoot('a restarted agent adopting the pinned links', () => {
  const lab = new Lab();
  let ns: string;
  let cg: string;

  beforeAll(async () => {
    ns = lab.netns('pod');
    cg = lab.cgroup('pod');
    lab.addresses(ns, '10.204.0.2/32');
    // Were a connect to escape capture, this app would answer it instead of the agent.
    const app = await startApp(ns, 8080);
    lab.defer(() => closeServer(app));
  });
  afterAll(() => lab.cleanup());

  it('swaps programs into pinned links without a gap', async () => {
    const first = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => first.close());
    expect(first.attachOutbound(lab.cgroupRoot)).toEqual({ adopted: false });
    const enroller = new PodEnroller(first, reportingHandlers);
    lab.defer(() => enroller.unenrollAll());
    const pod = await enroller.enroll({ name: 'test/pod', netnsPath: ns, cgroupPath: cg, ips: ['10.204.0.2'] });

    const connects = 150;
    const run = lab.client(ns, cg, '10.204.0.2', 8080, '--repeat', String(connects), '--interval', '5');
    // Let some connects happen with the first agent, then restart: a second loader adopts.
    await expect.poll(() => first.counters().connect_redirected, { timeout: 10_000, interval: 10, message: 'connects captured by the first agent' }).toBeGreaterThanOrEqual(20n);
    const second = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => second.close());
    expect(second.attachOutbound(lab.cgroupRoot)).toEqual({ adopted: true });
    expect(second.adoptPodLinks()).toEqual([pod.netnsCookie]);
    const ids = second.outboundProgramIds();
    expect(ids.attached).toEqual(ids.own);
    expect(ids.own).not.toEqual(first.outboundProgramIds().own);

    const lines = (await run).stdout.trim().split('\n');
    expect(lines).toHaveLength(connects);
    expect(lines.filter((l) => l !== 'captured 10.204.0.2 8080 v4')).toEqual([]);
    // The maps were reused, not recreated: the pod's entry made through the first agent is there.
    expect(second.maps.pods.get(pod.netnsCookie)?.captureOutbound).toBe(true);
    expect(second.counters().connect_redirected).toBeGreaterThanOrEqual(BigInt(connects));
  });

  it('removes every pinned object, and removing twice is fine', () => {
    Datapath.remove(lab.pinRoot);
    Datapath.remove(lab.pinRoot);
    expect(() => Datapath.load({ pinRoot: lab.pinRoot }).close()).not.toThrow();
    Datapath.remove(lab.pinRoot);
  });
});
