/**
 * Fixed-seed fuzzing (CI size) of the messages a node agent and the CA decode: discovery
 * responses applied into MeshState (refused with a MeshStateError, or accepted and then safe for
 * every lookup of the data path), certificate requests to the CA (refused with a CaError, or
 * signed for exactly the requested identity), and bytes on a captured connection joined by
 * splice (ended once, every byte carried and counted).
 */
import { describe, expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { caTarget } from '../fuzz/targets/ca.js';
import { captureBytesTarget } from '../fuzz/targets/capture.js';
import { discoveryTarget } from '../fuzz/targets/discovery.js';

describe('fuzzing decoded messages and captured bytes (seed 1)', () => {
  it('discovery responses into MeshState: 2,000 messages', async () => {
    const r = await fuzz(discoveryTarget, { runs: 2000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
  });

  it('certificate requests to the CA: 1,000 requests', async () => {
    const r = await fuzz(caTarget, { runs: 1000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
  });

  it('bytes on a captured connection: 300 connections', async () => {
    const r = await fuzz(captureBytesTarget, { runs: 300, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
  });
});
