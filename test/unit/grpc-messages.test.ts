/** gRPC messages counted in a body as its chunks pass, however the chunks split them. */
import { describe, expect, it } from 'vitest';
import { GrpcMessages } from '../../src/waypoint/exchange.js';

const frame = (payload: number) => {
  const b = Buffer.alloc(5 + payload, 7);
  b[0] = 0;
  b.writeUInt32BE(payload, 1);
  return b;
};

describe('GrpcMessages', () => {
  it('counts whole messages, empty ones included, in one chunk', () => {
    const m = new GrpcMessages();
    m.feed(Buffer.concat([frame(3), frame(0), frame(70_000)]));
    expect(m.count).toBe(3);
  });

  it('counts the same whatever the chunks: one byte at a time, or cut inside headers and payloads', () => {
    const body = Buffer.concat([frame(10), frame(0), frame(300), frame(1)]);
    for (const size of [1, 2, 3, 4, 5, 6, 7, 13, 64, body.length]) {
      const m = new GrpcMessages();
      for (let i = 0; i < body.length; i += size) m.feed(body.subarray(i, i + size));
      expect(m.count, `chunks of ${size}`).toBe(4);
    }
  });

  it('does not count a message until its last byte', () => {
    const m = new GrpcMessages();
    const f = frame(100);
    m.feed(f.subarray(0, 50));
    expect(m.count).toBe(0);
    m.feed(f.subarray(50));
    expect(m.count).toBe(1);
  });

  it('reads a length past 2^31 without going negative', () => {
    const m = new GrpcMessages();
    m.feed(Buffer.from([0, 0x80, 0, 0, 0]));
    m.feed(Buffer.alloc(1000));
    expect(m.count).toBe(0);
  });
});
