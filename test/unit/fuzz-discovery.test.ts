/**
 * Fixed-seed fuzzing (CI size) of discovery messages at the node agent: each DiscoveryResponse
 * is refused with a MeshStateError (the agent NACKs it, naming what was wrong) or accepted, and an
 * accepted state must be safe for every lookup the data path makes on it.
 */
import { expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { discoveryTarget } from '../fuzz/targets/discovery.js';

it('discovery responses into MeshState: 2,000 messages (seed 1)', async () => {
  const r = await fuzz(discoveryTarget, { runs: 2000, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(2000);
});
