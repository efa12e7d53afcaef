/**
 * The node agent's load shedding (src/node/shedding.ts): its limits as the environment gives
 * them, a refusal at the connection bound and while the event loop is behind, each counted by
 * reason and listener, and recovery once the loop catches up.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { LoadShedder, parseAdmissionLimits, DEFAULT_ADMISSION_LIMITS } from '../../src/node/shedding.js';
import { MeshMetrics } from '../../src/telemetry/metrics.js';
import { until } from '../helpers/wait.js';

describe('AMBIT_AGENT_LIMITS', () => {
  it('takes either limit, in any order, and keeps the defaults otherwise', () => {
    expect(parseAdmissionLimits(undefined)).toEqual(DEFAULT_ADMISSION_LIMITS);
    expect(parseAdmissionLimits('maxLagMs=100, maxConnections=10')).toEqual({ maxConnections: 10, maxLagMs: 100 });
  });
  it('names what is wrong', () => {
    expect(() => parseAdmissionLimits('maxConns=1')).toThrow(/unknown limit "maxConns" \(known: maxConnections, maxLagMs\)/);
    expect(() => parseAdmissionLimits('maxLagMs=5')).toThrow(/maxLagMs must be an integer from 10 to 60000, got "5"/);
    expect(() => parseAdmissionLimits('maxConnections=1.5')).toThrow(/maxConnections must be an integer/);
  });
});

describe('load shedding', () => {
  let shedder: LoadShedder | undefined;
  afterEach(() => shedder?.close());

  const refusals = async (metrics: MeshMetrics) => (await metrics.registry.getSingleMetricAsString('ambit_connections_refused_total')).split('\n').filter((l) => !l.startsWith('#'));

  it('refuses past the connection bound, counting the reason and the listener', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    let open = 2;
    shedder = new LoadShedder({ maxConnections: 3, maxLagMs: 60_000 }, () => open, metrics);
    expect(shedder.refuse('outbound')).toBeUndefined();
    open = 3;
    expect(shedder.refuse('outbound')).toBe('max-connections');
    expect(shedder.refuse('hbone')).toBe('max-connections');
    expect(await refusals(metrics)).toEqual([
      'ambit_connections_refused_total{reason="max-connections",listener="outbound"} 1',
      'ambit_connections_refused_total{reason="max-connections",listener="hbone"} 1',
    ]);
  });

  it('sheds while the event loop is behind, and takes connections again once it has stayed caught up for a second', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    const lags: number[] = [];
    let now = 0;
    shedder = new LoadShedder({ maxConnections: 1000, maxLagMs: 50 }, () => 0, metrics, { read: () => lags.shift() ?? 10, close: () => undefined }, () => now);
    const step = (lag: number) => { lags.push(lag); now += 100; shedder!.sample(); };
    step(10);
    expect(shedder.overloaded).toBe(false);
    step(300);
    expect(shedder.refuse('inbound')).toBe('overload');
    // Under half the bound, but not yet for a second: still shedding; a relapse starts the second over.
    for (let i = 0; i < 5; i++) step(10);
    step(40);
    for (let i = 0; i < 10; i++) step(10);
    expect(shedder.overloaded).toBe(true);
    step(10);
    expect(shedder.overloaded).toBe(false);
    expect(shedder.refuse('inbound')).toBeUndefined();
    expect(shedder.lagMs).toBe(10);
    expect(await refusals(metrics)).toEqual(['ambit_connections_refused_total{reason="overload",listener="inbound"} 1']);
  });

  it('measures the real event loop: a loop kept busy reads as behind, an idle one does not', async () => {
    const metrics = new MeshMetrics({ defaultMetrics: false });
    shedder = new LoadShedder({ maxConnections: 1000, maxLagMs: 50 }, () => 0, metrics);
    const s = shedder;
    await until('an idle sample', () => (s.lagMs >= 0 && s.lagMs < 20 ? true : undefined), { timeout: 5000, interval: 50 });
    // 80 ms of work in every turn of the loop, for up to 3 s.
    const stop = Date.now() + 3000;
    const busy = () => { const t = Date.now() + 80; while (Date.now() < t) { /* busy */ } if (Date.now() < stop && !s.overloaded) setTimeout(busy, 0); };
    busy();
    await until('the agent to see itself behind', () => s.overloaded || undefined, { timeout: 10_000, interval: 50 });
    expect(s.lagMs).toBeGreaterThan(50);
  });
});
