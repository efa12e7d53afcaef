// Another program's socket load balancer on the cgroup ambit hooks, on the real kernel: a
// fixture connect4 program that rewrites a "ClusterIP" (as Cilium's socket LB does, and named as
// Cilium names its own) attached before ambit's datapath is reported with what to change; attached
// after it, it is not a conflict.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { checkSocketLb } from '../../src/node/checks.js';
import { describeConflict, detectSocketLbConflicts, effectivePrograms, type SockAddrFindings } from '../../src/ebpf/cgroup-programs.js';
import { Datapath } from '../../src/ebpf/datapath.js';
import { BpfLink } from '../../src/ebpf/link.js';
import { BpfObject } from '../../src/ebpf/object.js';
import { warnSocketLb } from '../../src/node/agent.js';
import { Lab } from './lab.js';
import { describeAsRoot } from './helpers/root.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/bpf/socklb.bpf.o', import.meta.url));
// The kernel keeps 15 characters of a program's name.
const FIXTURE_NAME = 'cil_sock4_conne';

const scratch = mkdtempSync(join(tmpdir(), 'ambit-socklb-'));
/** No Cilium on this machine: a node_config.h path that does not exist, unless a test writes one. */
const noCilium = join(scratch, 'absent-node_config.h');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Attaches the fixture to `cgroup` until the lab is cleaned up (an unpinned link detaches on close). */
function attachFixture(lab: Lab, cgroup: string): number {
  const obj = BpfObject.load(FIXTURE);
  lab.defer(() => obj.close());
  const program = obj.program('cil_sock4_connect');
  const link = BpfLink.attachCgroup(program, cgroup);
  lab.defer(() => link.close());
  return program.id;
}

function startDatapath(lab: Lab, cgroup: string): Datapath {
  const datapath = Datapath.load({ pinRoot: lab.pinRoot });
  lab.defer(() => datapath.close());
  datapath.attachOutbound(cgroup);
  return datapath;
}

describeAsRoot('a socket load balancer attached before ambit', () => {
  const lab = new Lab();
  let fixtureId = 0;
  let datapath: Datapath;
  let findings: SockAddrFindings;

  beforeAll(() => {
    fixtureId = attachFixture(lab, lab.cgroupRoot);
    datapath = startDatapath(lab, lab.cgroupRoot);
    findings = detectSocketLbConflicts({ cgroupPath: lab.cgroupRoot, pinRoot: lab.pinRoot, ciliumNodeConfigPath: noCilium });
  });
  afterAll(() => lab.cleanup());

  it('lists the programs of connect4 in the order they run, the fixture first', () => {
    const connect4 = findings.hooks.find((h) => h.hook === 'connect4')!;
    const mine = connect4.programs.filter((p) => p.id === fixtureId || p.owner === 'ambit');
    // ambit's DNS capture (UDP port 53) has its own connect4 program, attached after the TCP one.
    expect(mine.map((p) => [p.name, p.owner])).toEqual([[FIXTURE_NAME, 'cilium'], ['ambit_connect4', 'ambit'], ['ambit_dnsconn4', 'ambit']]);
    expect(mine[1]!.id).toBe(datapath.outboundProgramIds().own['ambit_connect4']);
    expect(mine[0]!.tag).toMatch(/^[0-9a-f]{16}$/);
    // A sub-cgroup sees the same programs (its ancestors'), in the same order.
    const child = effectivePrograms(lab.cgroup('pod'), 'connect4').filter((p) => p.id === fixtureId || p.name === 'ambit_connect4');
    expect(child.map((p) => p.name)).toEqual([FIXTURE_NAME, 'ambit_connect4']);
  });

  it('names the fixture as a conflict and says what to change in Cilium', () => {
    expect(findings.ambitAttached).toBe(true);
    const conflict = findings.conflicts.find((c) => c.program.id === fixtureId);
    expect(conflict).toMatchObject({ hook: 'connect4', owner: 'cilium', before: 'ambit_connect4' });
    expect(describeConflict(conflict!)).toBe(`connect4: ${FIXTURE_NAME} (id ${fixtureId}, cilium) runs before ambit_connect4`);
    expect(conflict!.fix).toMatch(/socketLB\.hostNamespaceOnly=true .*bpf-lb-sock-hostns-only: "true".*cni\.exclusive=false/);

    const check = checkSocketLb(findings);
    expect(check.ok).toBe(false);
    expect(check.detail).toContain(`${FIXTURE_NAME} (id ${fixtureId}, cilium) runs before ambit_connect4`);
    expect(check.hint).toMatch(/socketLB\.hostNamespaceOnly=true/);
  });

  it('the node agent says it in its log at start: the program, the hook and what to change', () => {
    const lines: { level: number; msg: string; program?: { id: number } }[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line) as (typeof lines)[number]); } });
    warnSocketLb(log, lab.cgroupRoot, lab.pinRoot, datapath, noCilium);
    const warning = lines.find((l) => l.program?.id === fixtureId);
    expect(warning).toMatchObject({ level: 40, hook: 'connect4', owner: 'cilium' });
    expect(warning!.msg).toMatch(new RegExp(`^connect4: ${FIXTURE_NAME} \\(id ${fixtureId}, cilium\\) runs before ambit_connect4: .*socketLB\\.hostNamespaceOnly=true`));
  });

  it('clears Cilium when its datapath is built host-namespace-only', () => {
    const nodeConfig = join(scratch, 'node_config.h');
    writeFileSync(nodeConfig, '#define ENABLE_IPV4 1\n#define ENABLE_SOCKET_LB_HOST_ONLY 1\n');
    const hostOnly = detectSocketLbConflicts({ cgroupPath: lab.cgroupRoot, pinRoot: lab.pinRoot, ciliumNodeConfigPath: nodeConfig });
    expect(hostOnly.conflicts.find((c) => c.program.id === fixtureId)).toBeUndefined();
    expect(hostOnly.cleared.find((c) => c.program.id === fixtureId)?.why).toMatch(/ENABLE_SOCKET_LB_HOST_ONLY/);
  });
});

describeAsRoot('a socket load balancer attached after ambit', () => {
  const lab = new Lab();
  let fixtureId = 0;
  let findings: SockAddrFindings;

  beforeAll(() => {
    startDatapath(lab, lab.cgroupRoot);
    fixtureId = attachFixture(lab, lab.cgroupRoot);
    findings = detectSocketLbConflicts({ cgroupPath: lab.cgroupRoot, pinRoot: lab.pinRoot, ciliumNodeConfigPath: noCilium });
  });
  afterAll(() => lab.cleanup());

  it('runs after ambit\'s program and is no conflict', () => {
    const names = findings.hooks.find((h) => h.hook === 'connect4')!.programs
      .filter((p) => p.id === fixtureId || p.owner === 'ambit').map((p) => p.name);
    expect(names).toEqual(['ambit_connect4', 'ambit_dnsconn4', FIXTURE_NAME]);
    expect(findings.conflicts.filter((c) => c.program.id === fixtureId)).toEqual([]);
    expect(findings.ambitAttached).toBe(true);
  });
});

describeAsRoot('before ambit is installed', () => {
  const lab = new Lab();
  afterAll(() => lab.cleanup());

  it('reports a socket load balancer already attached: ambit\'s program would be appended after it', () => {
    const fixtureId = attachFixture(lab, lab.cgroupRoot);
    const findings = detectSocketLbConflicts({ cgroupPath: lab.cgroupRoot, pinRoot: lab.pinRoot, ciliumNodeConfigPath: noCilium });
    expect(findings.ambitAttached).toBe(false);
    const conflict = findings.conflicts.find((c) => c.program.id === fixtureId);
    expect(conflict?.before).toBe('ambit\'s, once attached');
    expect(describeConflict(conflict!)).toMatch(/will run before ambit's, once attached$/);
  });

  it('refuses a cgroup that does not exist, naming it', () => {
    expect(() => detectSocketLbConflicts({ cgroupPath: join(lab.cgroupRoot, 'missing'), ciliumNodeConfigPath: noCilium }))
      .toThrow(/cannot open cgroup .*\/missing \(ENOENT\)/);
  });
});
