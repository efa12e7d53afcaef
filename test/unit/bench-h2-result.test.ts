/**
 * The waypoint bench's HTTP/2 runs read h2load's per-request log (send time in µs since the
 * epoch, status, µs to the end of the answer) and its summary line. What a run reports must
 * follow from them: warmup left out, non-2xx answers and failed streams counted as errors, and
 * requests that were due but never answered reported as late (the path did not keep up).
 */
import { describe, expect, it } from 'vitest';
import { h2Result, percentiles } from '../../bench/lib.js';

const T0 = 1_800_000_000_000_000;
/** One log line per request: `n` requests per second for `seconds`, each taking `us`. */
function log(rate: number, seconds: number, us: (i: number) => number, status: (i: number) => number = () => 200): string {
  const lines: string[] = [];
  for (let i = 0; i < rate * seconds; i++) lines.push(`${T0 + Math.round((i * 1e6) / rate)}\t${status(i)}\t${us(i)}`);
  return `${lines.join('\n')}\n`;
}

describe('h2load results', () => {
  it('leaves the warmup out of the percentiles and counts every answer in the CPU window', () => {
    // 1 s of warmup at 10 ms per request, then 4 s at 100 µs, 100 req/s.
    const text = log(100, 5, (i) => (i < 100 ? 10_000 : 100));
    const r = h2Result(text, { rate: 100, connections: 2, duration: 4, warmup: 1 }, { started: 502, done: 500, failed: 0, connects: 2 });
    expect(r.scheduled).toBe(400);
    expect(r.completed).toBe(400);
    expect(r.completed_all).toBe(500);
    expect(r.late).toBe(0);
    expect(r.errors).toBe(0);
    expect(r.corrected_us.p99).toBe(100);
    expect(r.corrected_us.max).toBe(100);
    // Two streams were cut when the run stopped: not errors of the path, but not answers either.
    expect(r.errors_all).toBe(2);
    // Every due request answered: the last answer comes right after the last send.
    expect(r.elapsed_s).toBeCloseTo(4.99, 2);
  });

  it('counts non-2xx answers and failed streams as errors', () => {
    const text = log(100, 2, () => 200, (i) => (i % 10 === 0 ? 503 : 200));
    const r = h2Result(text, { rate: 100, connections: 1, duration: 2, warmup: 0 }, { started: 203, done: 203, failed: 3, connects: 1 });
    expect(r.non_200).toBe(20);
    expect(r.completed).toBe(180);
    expect(r.errors).toBe(23);
    expect(r.first_error).toMatch(/3 of 203 streams failed/);
  });

  it('reports the requests that were due but not answered as late, and the run as behind schedule', () => {
    // Half the rate answered: the path kept up with 50 of 100 req/s.
    const text = log(50, 4, () => 1000);
    const r = h2Result(text, { rate: 100, connections: 1, duration: 4, warmup: 0 }, { started: 300, done: 200, failed: 0, connects: 1 });
    expect(r.late).toBe(200);
    expect(r.achieved_rps).toBe(50);
    // 2 s worth of requests missing on top of the 4 s the log spans.
    expect(r.elapsed_s).toBeGreaterThan(5.9);
  });

  it('takes percentiles by rank, and gives none for no answers', () => {
    const p = percentiles(Array.from({ length: 1000 }, (_, i) => i + 1));
    expect([p.p50, p.p90, p.p99, p.p999, p.max]).toEqual([500, 900, 990, 999, 1000]);
    expect(p.mean).toBe(500.5);
    expect(Number.isNaN(percentiles([]).p50)).toBe(true);
    expect(Number.isNaN(h2Result('', { rate: 10, connections: 1, duration: 1, warmup: 0 }, { started: 0, done: 0, failed: 0, connects: 1 }).elapsed_s)).toBe(true);
  });
});
