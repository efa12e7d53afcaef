// The loader's failures are clear: each names what was wrong, the call and errno, and a fix.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { Datapath } from '../../src/ebpf/datapath.js';
import { BpfError } from '../../src/ebpf/errors.js';
import { BpfObject } from '../../src/ebpf/object.js';
import { EnrollError, PodEnroller } from '../../src/node/enroll.js';
import { Lab } from './lab.js';
import { reportingHandlers } from './pods.js';
import { describeAsRoot } from './helpers/root.js';

describeAsRoot('the loader and enroller errors', () => {
  const lab = new Lab();
  afterAll(() => lab.cleanup());

  function caught(fn: () => unknown): BpfError {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(BpfError);
      return err as BpfError;
    }
    throw new Error('expected a BpfError');
  }

  it('names a missing object file', () => {
    const err = caught(() => BpfObject.load('/nonexistent/ambit.bpf.o'));
    expect(err.code).toBe('AMBIT_E_BPF_OBJECT_MISSING');
    expect(err.message).toContain('/nonexistent/ambit.bpf.o does not exist');
    expect(err.message).toContain('make bpf');
  });

  it('says when a file is not a BPF object', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ambit-'));
    try {
      writeFileSync(join(dir, 'junk.bpf.o'), 'not an ELF file');
      const err = caught(() => BpfObject.load(join(dir, 'junk.bpf.o')));
      expect(err.code).toBe('AMBIT_E_BPF_OPEN');
      expect(err.call).toBe('bpf_object__open_file');
      expect(err.errnoName).toBe('LIBBPF_ERRNO__FORMAT');
      expect(err.message).toContain('make bpf');
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('carries the verifier log when the kernel rejects a program', () => {
    const path = new URL('../fixtures/bpf/reject.bpf.o', import.meta.url).pathname;
    const err = caught(() => BpfObject.load(path));
    expect(err.code).toBe('AMBIT_E_BPF_VERIFIER');
    expect(err.errnoName).toBe('EACCES');
    expect(err.verifierLog).toMatch(/invalid bpf_context access/);
    expect(err.message).toContain('verifier log:');
  });

  it('refuses to pin outside bpffs', () => {
    const err = caught(() => Datapath.load({ pinRoot: join(tmpdir(), `ambit-nobpffs-${lab.id}`) }));
    expect(err.code).toBe('AMBIT_E_BPF_BPFFS');
    expect(err.message).toMatch(/outside bpffs|bpffs is not mounted/);
    expect(err.message).toContain('mount -t bpf bpf /sys/fs/bpf');
  });

  it('names an unknown program or map with the ones that exist', () => {
    const datapath = Datapath.load({ pinRoot: lab.pinRoot });
    try {
      const obj = BpfObject.load(new URL('../../bpf/outbound.bpf.o', import.meta.url).pathname);
      try {
        const err = caught(() => obj.program('ambit_nope'));
        expect(err.code).toBe('AMBIT_E_BPF_NOT_FOUND');
        expect(err.message).toContain('ambit_connect4');
      } finally {
        obj.close();
      }
    } finally {
      datapath.close();
    }
  });

  it('rejects a bad pod config before touching any state', async () => {
    const datapath = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => datapath.close());
    const ns = lab.netns('bad');
    const enroller = new PodEnroller(datapath, reportingHandlers);
    await expect(enroller.enroll({ name: 'test/bad', netnsPath: ns, ips: [], excludedOutboundPorts: [70000] }))
      .rejects.toThrow(/enroll test\/bad: excludedOutboundPorts: 70000 is not a port/);
    await expect(enroller.enroll({ name: 'test/bad', netnsPath: ns, ips: [], excludedCidrs: ['10.0.0.0/33'] }))
      .rejects.toThrow(EnrollError);
    await expect(enroller.enroll({ name: 'test/missing', netnsPath: '/run/netns/does-not-exist', ips: [] }))
      .rejects.toThrow(/does-not-exist/);
    datapath.attachOutbound(lab.cgroupRoot);
    await expect(enroller.enroll({ name: 'test/elsewhere', netnsPath: ns, cgroupPath: '/sys/fs/cgroup', ips: [] }))
      .rejects.toThrow(/its cgroup \/sys\/fs\/cgroup is not under the mesh cgroup .*ambit-test-.*would not be captured/);
    expect(datapath.maps.pods.size()).toBe(0);
    expect(enroller.enrolled).toHaveLength(0);
  });
});
