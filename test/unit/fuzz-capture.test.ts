/**
 * Fixed-seed fuzzing (CI size) of bytes on a captured connection (15001/15006), joined to its
 * destination by splice and counted by ConnectionTracker as the node agent does it: the join
 * ends exactly once whatever the peers do, and carries and counts every byte of a clean close.
 */
import { expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { captureBytesTarget } from '../fuzz/targets/capture.js';

it('bytes, half-closes and resets on a captured connection: 300 connections (seed 1)', async () => {
  const r = await fuzz(captureBytesTarget, { runs: 300, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(300);
});
