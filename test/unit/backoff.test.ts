/** The one exponential backoff every retry loop of ambit uses (src/util/backoff.ts). */
import { describe, expect, it } from 'vitest';
import { Backoff, backoffDelay } from '../../src/util/backoff.js';

describe('backoff', () => {
  it('doubles from the first wait up to the bound, and starts over after a success', () => {
    const b = new Backoff({ initialMs: 500, maxMs: 3000 });
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000, 3000, 3000]);
    expect(b.failures).toBe(5);
    b.reset();
    expect(b.next()).toBe(500);
  });

  it('with jitter, waits at random up to the bound and never under half the first wait', () => {
    const opts = { initialMs: 1000, maxMs: 30_000, jitter: true };
    expect(backoffDelay(4, { ...opts, random: () => 1 })).toBe(8000);
    expect(backoffDelay(4, { ...opts, random: () => 0.25 })).toBe(2000);
    expect(backoffDelay(4, { ...opts, random: () => 0 })).toBe(500);
    expect(backoffDelay(60, { ...opts, random: () => 1 })).toBe(30_000);
  });

  it('stays finite for any count of failures', () => {
    expect(backoffDelay(10_000, { initialMs: 100, maxMs: 60_000 })).toBe(60_000);
    expect(backoffDelay(0, { initialMs: 100, maxMs: 60_000 })).toBe(100);
  });
});
