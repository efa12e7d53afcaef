/**
 * Fixed-seed fuzzing (CI size) of the waypoint's protocol detection: whatever segments a tunnel's
 * first bytes come in, the decision (HTTP/1.1, h2c, TCP, a 400) is the one the whole prefix gives,
 * so no split gets HTTP past L7 policy as TCP.
 */
import { expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { waypointDetectTarget } from '../fuzz/targets/waypoint-detect.js';

it('waypoint protocol detection: 5,000 inputs, every split (seed 1)', async () => {
  const r = await fuzz(waypointDetectTarget, { runs: 5000, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(5000);
});
