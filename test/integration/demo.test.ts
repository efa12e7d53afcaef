/**
 * The README's main job, `make demo`, as a test: the shop from examples/shop on a 2-node local
 * cluster, checkouts driven from the client pod through all five services, every call carried
 * by the node agents over mTLS.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const stateRoot = mkdtempSync(join(tmpdir(), 'ambit-demo-'));
const CLUSTER = `demo${Math.random().toString(36).slice(2, 6)}`;

function ambit(group: string, verb: string, ...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin/ambit.js'), group, verb, '--cluster', CLUSTER, ...args], { cwd: ROOT, env: { ...process.env, AMBIT_LOCAL_STATE: stateRoot } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface Summary { requests: number; status: Record<string, number>; pods: Record<string, Record<string, number>> }

describeAsRoot('make demo: the shop on a local cluster', () => {
  afterAll(async () => {
    await ambit('local', 'down');
    rmSync(stateRoot, { recursive: true, force: true });
  }, 60_000);

  it('serves checkouts through users, orders, inventory, payment and shipping, all over mTLS', async () => {
    const up = await ambit('local', 'up', '-f', 'examples/shop');
    expect(up.code, up.stderr).toBe(0);
    expect(up.stdout).toContain('is ready: 2 nodes, 9 pods, 5 services');

    const run = await ambit('local', 'exec', 'shop/client', '--', 'node', 'loadgen.mjs', '--url', 'http://users/api/users/u1/checkout',
      '--method', 'POST', '--requests', '40', '--concurrency', '4', '--new-connections', '--json');
    expect(run.code, run.stderr).toBe(0);
    const summary = JSON.parse(run.stdout) as Summary;
    expect(summary.requests).toBe(40);
    expect(summary.status).toEqual({ 200: 40 });
    expect(Object.keys(summary.pods).sort()).toEqual(['inventory', 'orders', 'payment', 'shipping', 'users']);
    // The node agents carried every hop: connections to each service, reported by the destination, with mTLS.
    const services = new Set<string>();
    for (const [node, ip] of [['node-1', '172.30.0.11'], ['node-2', '172.30.0.12']] as const) {
      const m = await ambit('local', 'exec', '--node', node, '--', 'node', '-e', 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))', `http://${ip}:15020/metrics`);
      for (const line of m.stdout.split('\n')) {
        if (!line.startsWith('istio_tcp_connections_opened_total{') || !line.includes('reporter="destination"') || !line.includes('connection_security_policy="mutual_tls"')) continue;
        services.add(/destination_service_name="([^"]+)"/.exec(line)![1]!);
      }
    }
    expect([...services].sort()).toEqual(['inventory', 'orders', 'payment', 'shipping', 'users']);

    const down = await ambit('local', 'down');
    expect(down.code).toBe(0);
    expect(existsSync(join(stateRoot, CLUSTER))).toBe(false);
    expect(readdirSync('/run/netns').filter((n) => n.startsWith(`ambit-${CLUSTER}.`))).toEqual([]);
  }, 180_000);
});
