/**
 * Leader election through a Lease against the stand-in API server (which enforces
 * resourceVersion on PUT, as the real one does), with short durations.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { LeaderElector, type LeaderElectionOptions } from '../../src/control/kube/leader.js';
import { FakeApiServer } from '../helpers/fake-apiserver.js';
import { until } from '../helpers/wait.js';

const LEASE = { group: 'coordination.k8s.io', version: 'v1', kind: 'Lease', plural: 'leases' };
let api: FakeApiServer;
let client: KubeClient;
const electors: LeaderElector[] = [];

const lease = () => api.get('Lease', 'ambit-system', 'ambit-controller', 'coordination.k8s.io') as { spec: { holderIdentity: string; leaseTransitions: number; leaseDurationSeconds: number } } | undefined;

function elector(identity: string, extra: Partial<LeaderElectionOptions> = {}): LeaderElector & { events: string[] } {
  const events: string[] = [];
  const e = new LeaderElector(client, {
    namespace: 'ambit-system', name: 'ambit-controller', identity,
    leaseDurationMs: 1000, renewDeadlineMs: 600, retryPeriodMs: 100,
    onStartedLeading: () => events.push('start'), onStoppedLeading: () => events.push('stop'),
    ...extra,
  });
  electors.push(e);
  return Object.assign(e, { events });
}

beforeEach(async () => {
  api = new FakeApiServer([{ ...LEASE }]);
  await api.start();
  client = new KubeClient({ server: api.url });
});

afterEach(async () => {
  await Promise.all(electors.splice(0).map((e) => e.stop()));
  await api.close();
});

describe('LeaderElector', () => {
  it('creates the Lease and leads; a second replica follows and never leads at the same time', async () => {
    const a = elector('pod-a');
    a.start();
    await until('a leading', () => a.isLeader, { timeout: 5000, interval: 20 });
    expect(lease()?.spec.holderIdentity).toBe('pod-a');
    const b = elector('pod-b');
    b.start();
    // Several renewals (each a write): a keeps it, b only watches.
    await until('b observing a', () => b.holder === 'pod-a', { timeout: 5000, interval: 20 });
    const before = api.resourceVersion;
    await expect.poll(() => api.resourceVersion, { timeout: 5000, interval: 20, message: 'three renewals by a' }).toBeGreaterThanOrEqual(before + 3);
    expect(a.isLeader).toBe(true);
    expect(b.isLeader).toBe(false);
    expect(b.holder).toBe('pod-a');
    expect(b.events).toEqual([]);
  });

  it('hands over at once when the leader stops (the Lease is released)', async () => {
    const a = elector('pod-a');
    a.start();
    await until('a leading', () => a.isLeader, { timeout: 5000, interval: 20 });
    const b = elector('pod-b');
    b.start();
    await until('b observing a', () => b.holder === 'pod-a', { timeout: 5000, interval: 20 });
    const stopped = Date.now();
    await a.stop();
    expect(a.events).toEqual(['start', 'stop']);
    await until('b leading', () => b.isLeader, { timeout: 5000, interval: 20 });
    // Well before the 1 s lease duration would have run out.
    expect(Date.now() - stopped).toBeLessThan(800);
    expect(lease()?.spec).toMatchObject({ holderIdentity: 'pod-b', leaseTransitions: 1 });
  });

  it('takes over a Lease whose holder stopped renewing only after the lease duration, by its own clock', async () => {
    api.apply('Lease', { metadata: { name: 'ambit-controller', namespace: 'ambit-system' }, spec: { holderIdentity: 'crashed', leaseDurationSeconds: 1, renewTime: '2099-01-01T00:00:00.000000Z' } }, 'coordination.k8s.io');
    const b = elector('pod-b');
    const started = Date.now();
    b.start();
    await until('b leading', () => b.isLeader, { timeout: 4000, interval: 20 });
    // The holder's renewTime lies in the future (a skewed clock) and still does not keep the Lease.
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    expect(lease()?.spec.holderIdentity).toBe('pod-b');
  });

  it('of three replicas racing for a free Lease exactly one wins', async () => {
    const ids = ['pod-a', 'pod-b', 'pod-c'];
    const replicas = ids.map((id) => elector(id));
    for (const r of replicas) r.start();
    await until('a leader', () => replicas.some((r) => r.isLeader), { timeout: 5000, interval: 20 });
    const winner = ids[replicas.findIndex((r) => r.isLeader)]!;
    // The race is over once every replica has read the winner's Lease.
    await expect.poll(() => replicas.map((r) => r.holder), { timeout: 5000, interval: 20, message: 'every replica seeing the winner' }).toEqual(ids.map(() => winner));
    expect(replicas.filter((r) => r.isLeader)).toHaveLength(1);
    expect(lease()?.spec.holderIdentity).toBe(winner);
  });

  it('steps down when it cannot renew within the deadline, and leads again once the API server answers', async () => {
    const a = elector('pod-a');
    a.start();
    await until('a leading', () => a.isLeader, { timeout: 5000, interval: 20 });
    api.failNext('PUT', '/leases/', 500, 12);
    await until('a stepping down', () => !a.isLeader, { timeout: 3000, interval: 20 });
    expect(a.events).toEqual(['start', 'stop']);
    await until('a leading again', () => a.isLeader, { timeout: 5000, interval: 20 });
    expect(a.events).toEqual(['start', 'stop', 'start']);
  });

  it('rejects timings that could make two leaders', () => {
    expect(() => new LeaderElector(client, { namespace: 'n', name: 'l', identity: 'i', leaseDurationMs: 1000, renewDeadlineMs: 1000 })).toThrow(/renew deadline must be shorter/);
    expect(() => new LeaderElector(client, { namespace: 'n', name: 'l', identity: 'i', renewDeadlineMs: 1000, retryPeriodMs: 1000 })).toThrow(/retry period must be shorter/);
  });
});
