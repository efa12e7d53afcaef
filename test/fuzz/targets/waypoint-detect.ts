/**
 * The waypoint's protocol detection (`detect` in src/waypoint/detect.ts), which decides from a
 * tunnel's first bytes whether L7 policy applies (HTTP/1.1, h2c) or the bytes pass as TCP. The
 * bytes arrive in whatever segments the peer chooses, so the decision must not depend on them:
 * for every split of an input, a decision taken on a prefix must be the one taken on the whole
 * (else a peer could send `G`, then `ET /`, and have its HTTP treated as TCP, around L7 policy).
 * It must also never throw, never wait once it holds DETECT_MAX_BYTES, and read no further.
 */
import * as fc from 'fast-check';
import { DETECT_MAX_BYTES, detect, H2_PREFACE, type Detection } from '../../../src/waypoint/detect.js';
import { Finding, type FuzzTarget } from '../harness.js';

const piece = fc.oneof(
  fc.constantFrom('GET ', 'POST ', 'CONNECT ', 'PRI ', 'G', 'GE', 'get ', 'M-SEARCH ', 'PROPFIND ', 'A'.repeat(21), '\r\n', '\n', '\r', ' ', '/', 'HTTP/1.1\r\n', '\0'),
  fc.constant(H2_PREFACE.toString('latin1')),
  fc.constant(H2_PREFACE.toString('latin1').slice(0, 10)),
  fc.constant('\r\n'.repeat(17)),
  fc.string({ maxLength: 6 }),
  fc.uint8Array({ maxLength: 6 }).map((b) => Buffer.from(b).toString('latin1')),
);

export interface DetectInput { bytes: Buffer; tail: Buffer }

export const detectInput: fc.Arbitrary<DetectInput> = fc.tuple(fc.array(piece, { maxLength: 8 }), fc.uint8Array({ maxLength: 40 }))
  .map(([parts, tail]) => ({ bytes: Buffer.from(parts.join(''), 'latin1'), tail: Buffer.from(tail) }));

const same = (a: Detection, b: Detection) => a.kind === b.kind && (a.kind !== 'bad-http' || b.kind !== 'bad-http' || a.reason === b.reason);

export const waypointDetectTarget: FuzzTarget<DetectInput, undefined> = {
  name: 'waypoint-detect',
  what: 'a tunnel\'s first bytes to the waypoint\'s protocol detection, split at every point: the decision must not depend on the segments',
  input: detectInput,
  setup: () => Promise.resolve(undefined),
  run(_ctx, input) {
    const whole = detect(input.bytes);
    if (input.bytes.length >= DETECT_MAX_BYTES && whole.kind === 'wait') throw new Finding(`still waiting with ${input.bytes.length} bytes (bound ${DETECT_MAX_BYTES})`);
    // Bytes past the bound cannot change the decision.
    if (input.bytes.length >= DETECT_MAX_BYTES && !same(detect(Buffer.concat([input.bytes, input.tail])), whole)) throw new Finding('bytes past DETECT_MAX_BYTES changed the decision');
    for (let k = 0; k <= input.bytes.length; k++) {
      const early = detect(input.bytes.subarray(0, k));
      if (early.kind !== 'wait' && !same(early, whole)) {
        throw new Finding(`decided ${early.kind} on the first ${k} bytes ${JSON.stringify(input.bytes.subarray(0, k).toString('latin1'))}, ${whole.kind} on all ${input.bytes.length}`);
      }
    }
    return Promise.resolve(whole.kind);
  },
  teardown: () => Promise.resolve(),
};
