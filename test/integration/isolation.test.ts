// Two enrolled pods whose captured connections have the very same 4-tuple: the netns cookie in
// the key keeps their original destinations apart.
import type { Socket } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { OrigDst } from '../../src/ebpf/codecs.js';
import { Datapath } from '../../src/ebpf/datapath.js';
import { PodEnroller, type EnrolledPod } from '../../src/node/enroll.js';
import { Lab } from './lab.js';
import { reportingHandlers } from './pods.js';
import { describeAsRoot } from './helpers/root.js';

describeAsRoot('two enrolled pods with the same 4-tuple', () => {
  const lab = new Lab();
  let datapath: Datapath;
  const pods: { ns: string; cg: string }[] = [];
  // Held until both connections are in: both records must exist at once to show they don't collide.
  const waiting: { socket: Socket; pod: EnrolledPod }[] = [];

  beforeAll(async () => {
    datapath = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => datapath.close());
    datapath.attachOutbound(lab.cgroupRoot);
    const enroller = new PodEnroller(datapath, {
      ...reportingHandlers,
      outbound(socket, _dst, pod) {
        waiting.push({ socket, pod });
        if (waiting.length < 2) return;
        for (const w of waiting.splice(0)) {
          const dst: OrigDst | undefined = w.pod.originalDestination(w.socket);
          w.socket.end(`${w.socket.remoteAddress}:${w.socket.remotePort} -> ${dst ? `${dst.addr} ${dst.port}` : 'unknown'}\n`);
        }
      },
    });
    lab.defer(() => enroller.unenrollAll());
    for (const name of ['a', 'b']) {
      const ns = lab.netns(name);
      const cg = lab.cgroup(name);
      pods.push({ ns, cg });
      await enroller.enroll({ name: `test/${name}`, netnsPath: ns, cgroupPath: cg, ips: [] });
    }
  });
  afterAll(() => lab.cleanup());

  it('keeps identical 4-tuples in two pods apart', async () => {
    const [a, b] = pods as [typeof pods[0], typeof pods[0]];
    const [ra, rb] = await Promise.all([
      lab.client(a.ns, a.cg, '10.203.0.1', 1111, '--local-port', '41000'),
      lab.client(b.ns, b.cg, '10.203.0.2', 2222, '--local-port', '41000'),
    ]);
    expect(ra.stdout.trim()).toBe('127.0.0.1:41000 -> 10.203.0.1 1111');
    expect(rb.stdout.trim()).toBe('127.0.0.1:41000 -> 10.203.0.2 2222');
  });
});
