/**
 * Fixed-seed fuzzing (CI size) of the node agent's local listeners: admin (15000), metrics and
 * health (15020/15021), the control socket, the CNI socket. Each must answer every hostile request without a crash,
 * a hang or an uncaught error, and still serve a good request afterwards. `bench/fuzz.ts` runs
 * the same targets at 100,000 inputs.
 */
import { describe, expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { cniSocketTarget } from '../fuzz/targets/cni-socket.js';
import { adminTarget, controlSocketTarget, telemetryTarget } from '../fuzz/targets/local-http.js';

describe('fuzzing the node agent\'s local listeners (seed 1)', () => {
  it('admin endpoint: 2,000 raw HTTP requests', async () => {
    const r = await fuzz(adminTarget, { runs: 2000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(2000);
  });

  it('metrics and health listeners: 2,000 raw HTTP requests', async () => {
    const r = await fuzz(telemetryTarget, { runs: 2000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(2000);
  });

  it('control socket: 2,000 raw HTTP requests', async () => {
    const r = await fuzz(controlSocketTarget, { runs: 2000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(2000);
  });

  it('CNI socket: 2,000 mutated plugin requests and raw bytes', async () => {
    const r = await fuzz(cniSocketTarget, { runs: 2000, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(2000);
  });
});
