/** Fixed-seed fuzzing (CI size) of `ambit analyze`: diagnostics for every manifest, never an exception. */
import { expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { analyzeTarget } from '../fuzz/targets/analyze.js';

it('ambit analyze: 2,000 mutated, broken and random manifests (seed 1)', async () => {
  const r = await fuzz(analyzeTarget, { runs: 2000, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(2000);
});
