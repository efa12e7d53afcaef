/**
 * `ambit local component stop|start|restart`: a stopped component stays stopped (it is not
 * restarted as an exit would be) until it is started; a restart gives it a new process; a name
 * that is no component is refused with the list of those that are.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/wait.js';
import { localCluster } from './helpers/cluster.js';
import { describeAsRoot } from './helpers/root.js';

const cluster = localCluster('comp');
const component = async (name: string, node?: string) =>
  (await cluster.status()).components.find((c) => c.name === name && (node === undefined || c.node === node))!;

describeAsRoot('local cluster components on request', () => {
  beforeAll(async () => {
    await cluster.up('apiVersion: v1\nkind: Namespace\nmetadata: { name: empty }\n');
  }, 120_000);
  afterAll(() => cluster.down(), 60_000);

  it('stops the controller until it is started again, and restarts a node agent with a new process', async () => {
    const before = await component('controller');
    expect(await cluster.ok(['local', 'component', 'stop', 'controller', '--cluster', cluster.name])).toMatch(/^controller: stopped/);
    const stopped = await component('controller');
    expect(stopped).toMatchObject({ state: 'stopped', detail: expect.stringMatching(/stopped on request/) });
    expect(stopped.pid).toBeUndefined();
    // Watched past three times the supervisor's first restart delay (500 ms): never back.
    const since = Date.now();
    await until('1.5 s of the controller staying stopped', async () => {
      expect((await component('controller')).state).toBe('stopped');
      return Date.now() - since > 1500 || undefined;
    }, { timeout: 10_000, interval: 100 });
    expect(await cluster.ok(['local', 'component', 'start', 'controller', '--cluster', cluster.name])).toMatch(/^controller: running \(pid \d+\)/);
    await until('the controller healthy again', async () => (await component('controller')).state === 'running' || undefined, { timeout: 30_000, interval: 200 });
    expect((await component('controller')).pid).not.toBe(before.pid);

    const agent = await component('node-agent', 'node-1');
    expect(await cluster.ok(['local', 'component', 'restart', 'node-agent', '--node', 'node-1', '--cluster', cluster.name])).toMatch(/^node-agent on node-1: running/);
    await until('the new node agent healthy', async () => {
      const c = await component('node-agent', 'node-1');
      return c.state === 'running' && c.pid !== agent.pid ? c : undefined;
    }, { timeout: 30_000, interval: 200 });
  }, 90_000);

  it('refuses what is not a component, naming those that are', async () => {
    const r = await cluster.ambit(['local', 'component', 'stop', 'node-agent', '--cluster', cluster.name]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/2 components are named node-agent: give --node/);
    const u = await cluster.ambit(['local', 'component', 'stop', 'etcd', '--cluster', cluster.name]);
    expect(u.stderr).toMatch(/no component etcd in cluster .*\n.*controller, node-agent --node node-1, node-agent --node node-2/);
    const a = await cluster.ambit(['local', 'component', 'pause', 'controller', '--cluster', cluster.name]);
    expect(a.stderr).toMatch(/unknown action "pause"/);
  });
});
