/**
 * The controller's probes on its health port (15021), with controllers run in-process: readiness
 * waits for the first config snapshot; liveness answers whenever the process does, with or
 * without an API server (a liveness failure would restart the controller for nothing).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { runController, type Controller } from '../../src/control/controller.js';
import { FakeApiServer, ONE_REPLICA, writeKubeconfig } from '../helpers/fake-apiserver.js';


const dir = mkdtempSync(join(tmpdir(), 'ambit-ctl-health-'));
const api = new FakeApiServer([
  { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
  { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
]);
const controllers: Controller[] = [];

async function start(name: string, server: string): Promise<Controller> {
  const c = await runController({
    kubernetes: { settings: ONE_REPLICA, kubeconfig: writeKubeconfig(join(dir, `${name}.kubeconfig`), server) }, caDir: join(dir, name), host: '127.0.0.1', port: 0, trustDomain: 'cluster.local',
    health: { host: '127.0.0.1', port: 0 },
  });
  controllers.push(c);
  return c;
}

const get = async (c: Controller, path: string, method = 'GET') => {
  const res = await fetch(`http://127.0.0.1:${c.healthPort}${path}`, { method });
  return { status: res.status, body: await res.text() };
};

beforeAll(async () => {
  await api.start();
  api.apply('Namespace', { metadata: { name: 'shop' } });
});

afterAll(async () => {
  await Promise.all(controllers.map((c) => c.close()));
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('the controller\'s probes', () => {
  it('is live but never ready while its API server cannot be reached', async () => {
    const c = await start('unreachable', 'http://127.0.0.1:1');
    expect(await get(c, '/healthz/ready')).toEqual({ status: 503, body: 'not ready: no config snapshot from the source yet\n' });
    expect(await get(c, '/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
  });

  it('is ready after the first snapshot, and stays live (and ready, on its last model) when the API server goes away', async () => {
    const c = await start('reachable', api.url);
    expect((await get(c, '/healthz/live')).status).toBe(200);
    await vi.waitFor(async () => expect(await get(c, '/healthz/ready')).toEqual({ status: 200, body: 'ready\n' }), { timeout: 15_000, interval: 100 });
    await api.close();
    expect(await get(c, '/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
    expect((await get(c, '/healthz/ready')).status).toBe(200);
  });

  it('answers HEAD, refuses other methods and unknown paths by name', async () => {
    const c = controllers[0]!;
    expect((await get(c, '/healthz/live', 'HEAD')).status).toBe(200);
    expect(await get(c, '/healthz/live', 'DELETE')).toEqual({ status: 405, body: 'DELETE not allowed: GET /healthz/live\n' });
    expect(await get(c, '/metrics')).toEqual({ status: 404, body: 'not found: try /healthz/ready or /healthz/live\n' });
  });
});

describe('the controller\'s CPU profile', () => {
  it('is written at close when AMBIT_CPU_PROFILE_DIR asks for one', async () => {
    const profiles = join(dir, 'profiles');
    process.env.AMBIT_CPU_PROFILE_DIR = profiles;
    let c: Controller;
    try {
      c = await runController({ kubernetes: { settings: ONE_REPLICA, kubeconfig: writeKubeconfig(join(dir, 'profiled.kubeconfig'), 'http://127.0.0.1:1') }, caDir: join(dir, 'profiled'), host: '127.0.0.1', port: 0, trustDomain: 'cluster.local' });
    } finally {
      delete process.env.AMBIT_CPU_PROFILE_DIR;
    }
    await c.close();
    const written = join(profiles, `controller.${process.pid}.cpuprofile`);
    expect(existsSync(written)).toBe(true);
    expect(JSON.parse(readFileSync(written, 'utf8'))).toMatchObject({ nodes: expect.any(Array), startTime: expect.any(Number) });
  });
});
