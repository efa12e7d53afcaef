/**
 * `ambit check --kubeconfig` through the CLI, against the stand-in API server seeded with the
 * objects `ambit install` renders: the exit codes, the text and the JSON. The checks themselves, in
 * process: test/unit/cluster-check.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import type { Check } from '../../src/node/checks.js';
import { cli } from './helpers/cli.js';
import { describeAsRoot } from './helpers/root.js';
import { type FakeApiServer, writeKubeconfig } from '../helpers/fake-apiserver.js';
import { NS, startStandIn } from '../helpers/stand-in-cluster.js';

let server: FakeApiServer;

beforeEach(async () => {
  ({ server } = await startStandIn());
});

afterEach(async () => {
  await server.close();
});

const { ambit } = cli(process.env);

describeAsRoot('ambit check --kubeconfig', () => {
  let dir = '';
  const kubeconfig = (server: string) => {
    const file = join(dir, `kubeconfig-${server.replace(/\W/g, '')}`);
    writeKubeconfig(file, server);
    return file;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ambit-cluster-check-'));
    // The CLI judges the Lease by the real clock.
    const lease = server.get('Lease', NS, 'ambit-controller', 'coordination.k8s.io') as { spec: Record<string, unknown> };
    server.apply('Lease', { ...lease, spec: { ...lease.spec, renewTime: new Date().toISOString(), leaseDurationSeconds: 600 } }, 'coordination.k8s.io');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('exits 0 on a healthy cluster, one line per check, and the JSON parses', async () => {
    const text = await ambit(['check', '--kubeconfig', kubeconfig(server.url)]);
    expect(text.stderr).toBe('');
    expect(text.code).toBe(0);
    const lines = text.stdout.trimEnd().split('\n');
    expect(lines.filter((l) => l.startsWith('✓'))).toHaveLength(13);
    expect(lines.filter((l) => l.startsWith('✗'))).toEqual([]);
    expect(lines.at(-1)).toBe('all 13 checks passed: ambit runs on this cluster');

    const json = await ambit(['check', '--json', '--kubeconfig', kubeconfig(server.url)]);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { ok: boolean; checks: Check[] };
    expect(parsed.ok).toBe(true);
    expect(parsed.checks.map((c) => c.name)).toContain('node node-b: requirements');
    expect(parsed.checks.every((c) => c.ok)).toBe(true);
  }, 60_000);

  it('--pre with a missing Secret exits 1 with the command that makes it', async () => {
    server.delete('Secret', NS, 'ambit-ca');
    const out = await ambit(['check', '--pre', '--kubeconfig', kubeconfig(server.url)]);
    expect(out.code).toBe(1);
    expect(out.stdout).toMatch(/✗ Secret ambit-system\/ambit-ca\s+missing — fix: the controller mounts the mesh CA from it: ambit ca create \| kubectl apply -f -/);
    expect(out.stdout).toMatch(/1 of 9 checks failed: fix them before installing ambit\n$/);
    expect(out.stdout).toMatch(/✓ install command +ambit install --set platform=generic --set cni\.chained=auto \| kubectl apply -f -\n/);
    expect(out.stdout).not.toMatch(/Deployment ambit-controller|DaemonSet ambit-node/);

    const elsewhere = await ambit(['check', '--pre', '--namespace', 'mesh', '--json', '--kubeconfig', kubeconfig(server.url)]);
    const parsed = JSON.parse(elsewhere.stdout) as { ok: boolean; checks: Check[] };
    expect(parsed.ok).toBe(false);
    expect(parsed.checks.map((c) => c.name)).toContain('Secret mesh/ambit-ca');
  }, 60_000);

  it('an API server on a closed port: one failed check, exit 1, no stack trace', async () => {
    const out = await ambit(['check', '--kubeconfig', kubeconfig('http://127.0.0.1:1')]);
    expect(out.code).toBe(1);
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^✗ API server reachable {2}cannot reach http:\/\/127\.0\.0\.1:1: .*ECONNREFUSED.* — fix: /);
    expect(out.stdout).toMatch(/\n1 of 1 checks failed/);
    expect(out.stdout).not.toMatch(/\n\s+at /);
  }, 60_000);

  it('refuses --namespace without a cluster, and --cgroup with one', async () => {
    const out = await ambit(['check', '--namespace', 'mesh']);
    expect(out.code).toBe(2);
    expect(out.stderr).toMatch(/--namespace checks a cluster: add --kubeconfig FILE or --kube/);
    const both = await ambit(['check', '--cgroup', '/sys/fs/cgroup', '--kubeconfig', kubeconfig(server.url)]);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/--cgroup, --pin-root and --host-root check this node/);
  }, 60_000);
});

