/**
 * Fixed-seed fuzzing (CI size) of certificate requests to the mesh CA: each is refused with a
 * CaError that names what was wrong (the gRPC code the node agent sees), or signed for exactly
 * the identity asked, from a valid CSR whose only SAN is that identity; on the wire (the CA
 * server over gRPC/TLS, raw protobuf bytes), every call ends with a status that names the problem.
 */
import { expect, it } from 'vitest';
import { describeCrashes, fuzz } from '../fuzz/harness.js';
import { caTarget } from '../fuzz/targets/ca.js';
import { caWireTarget } from '../fuzz/targets/ca-grpc.js';

it('certificate requests to the CA: 1,000 requests (seed 1)', async () => {
  const r = await fuzz(caTarget, { runs: 1000, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(1000);
});

it('CreateCertificate as raw protobuf over gRPC/TLS: 1,000 calls (seed 1)', async () => {
  const r = await fuzz(caWireTarget, { runs: 1000, seed: 1 });
  expect(r.crashes, describeCrashes(r)).toBe(0);
  expect(r.runs).toBe(1000);
});
