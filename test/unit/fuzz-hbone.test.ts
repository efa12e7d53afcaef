/**
 * Fixed-seed fuzzing (CI size) of HBONE (15008) from a meshed peer: CONNECT requests through a
 * real mTLS HTTP/2 client, and raw HTTP/2 frames after a real TLS 1.3 handshake. No crash, no
 * hang, no uncaught error, and a good tunnel still works afterwards.
 */
import { describe, expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { hboneConnectTarget, hboneFramesTarget } from '../fuzz/targets/hbone.js';

describe('fuzzing HBONE (seed 1)', () => {
  it('CONNECT authorities, headers and early resets: 1,500 requests', async () => {
    const r = await fuzz(hboneConnectTarget, { runs: 1500, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(1500);
  });

  it('raw HTTP/2 frames after the handshake: 300 connections', async () => {
    const r = await fuzz(hboneFramesTarget, { runs: 300, seed: 1 });
    expect(r.crashes, describeCrashes(r)).toBe(0);
    expect(r.runs).toBe(300);
  });
});
