/**
 * The waypoint's load balancers: policy selection and Istio's default, each algorithm's
 * distribution with a seeded random, least-request preferring the less loaded, consistent hash
 * (ring hash and Maglev) stable per key, spread evenly, moving ~1/N of keys when one of N
 * endpoints goes, every hash input, and Envoy's generated cookie.
 */
import { describe, expect, it } from 'vitest';
import { buildMaglev, buildRing, createBalancer, hash32, isPrime, type Balancer, type Endpoint, type HashInput } from '../../src/waypoint/balancer.js';
import { seeded } from './helpers/random.js';

/** A random that returns the given values in turn. */
function sequence(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

function endpoints(n: number, weight?: (i: number) => number): Endpoint[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `uid-${String(i).padStart(3, '0')}`,
    address: `10.0.0.${i + 1}`,
    ...(weight ? { weight: weight(i) } : {}),
  }));
}

function tally(b: Balancer, eps: Endpoint[], picks: number, input?: (i: number) => HashInput): Map<string, number> {
  const counts = new Map<string, number>(eps.map((e) => [e.id, 0]));
  for (let i = 0; i < picks; i++) {
    const { endpoint } = b.pick(eps, input?.(i));
    counts.set(endpoint!.id, counts.get(endpoint!.id)! + 1);
  }
  return counts;
}

const req = (headers: HashInput['headers'], extra: Partial<HashInput> = {}): HashInput => ({ headers, sourceIp: '10.1.0.9', ...extra });

describe('policy selection', () => {
  it("defaults to LEAST_REQUEST, Istio's default since 1.14", () => {
    expect(createBalancer(undefined, { random: seeded(1) }).policy).toBe('LEAST_REQUEST');
    expect(createBalancer({ simple: 'UNSPECIFIED' }, { random: seeded(1) }).policy).toBe('LEAST_REQUEST');
    expect(createBalancer({ simple: 'LEAST_REQUEST' }, { random: seeded(1) }).notes).toEqual([]);
  });

  it('reads LEAST_CONN as LEAST_REQUEST and PASSTHROUGH as RANDOM, with a note', () => {
    const lc = createBalancer({ simple: 'LEAST_CONN' }, { random: seeded(1) });
    expect(lc.policy).toBe('LEAST_REQUEST');
    expect(lc.notes.join()).toMatch(/deprecated/);
    const pt = createBalancer({ simple: 'PASSTHROUGH' }, { random: seeded(1) });
    expect(pt.policy).toBe('RANDOM');
    expect(pt.notes.join()).toMatch(/PASSTHROUGH/);
  });

  it('accepts localityLbSetting and warmup, noting they are not used', () => {
    const b = createBalancer({ simple: 'ROUND_ROBIN', localityLbSetting: { enabled: true }, warmupDurationSecs: '60s' }, { random: seeded(1) });
    expect(b.policy).toBe('ROUND_ROBIN');
    expect(b.notes).toHaveLength(2);
    expect(b.notes.join('\n')).toMatch(/localityLbSetting.*not used/);
    expect(b.notes.join('\n')).toMatch(/warmupDurationSecs.*not used/);
  });

  it('chooses ring hash by default for consistentHash, Maglev when asked', () => {
    expect(createBalancer({ consistentHash: { httpHeaderName: 'x-user' } }, { random: seeded(1) }).policy).toBe('RING_HASH');
    expect(createBalancer({ consistentHash: { httpHeaderName: 'x-user', minimumRingSize: 2048 } }, { random: seeded(1) }).policy).toBe('RING_HASH');
    expect(createBalancer({ consistentHash: { useSourceIp: true, maglev: {} } }, { random: seeded(1) }).policy).toBe('MAGLEV');
  });

  it('raises a Maglev table size that is not prime to the next prime, with a note', () => {
    const b = createBalancer({ consistentHash: { useSourceIp: true, maglev: { tableSize: 1000 } } }, { random: seeded(1) });
    expect(b.notes.join()).toMatch(/1000 is not prime.*1009/);
    expect(isPrime(1009)).toBe(true);
    expect(isPrime(65537)).toBe(true);
    expect(isPrime(65536)).toBe(false);
  });

  it('picks nothing from no endpoints', () => {
    for (const lb of [undefined, { simple: 'ROUND_ROBIN' }, { simple: 'RANDOM' }, { consistentHash: { useSourceIp: true } }, { consistentHash: { useSourceIp: true, maglev: {} } }]) {
      expect(createBalancer(lb, { random: seeded(1) }).pick([], req({}))).toEqual({});
    }
  });
});

describe('ROUND_ROBIN', () => {
  it('cycles through the endpoints exactly, from a random start', () => {
    const eps = endpoints(4);
    const b = createBalancer({ simple: 'ROUND_ROBIN' }, { random: sequence(0.6) });
    const picks = Array.from({ length: 12 }, () => b.pick(eps).endpoint!.id);
    expect(picks.slice(0, 4).sort()).toEqual(eps.map((e) => e.id));
    expect(picks.slice(4, 8)).toEqual(picks.slice(0, 4));
    expect(picks.slice(8, 12)).toEqual(picks.slice(0, 4));
    // Consecutive in array order.
    const first = eps.findIndex((e) => e.id === picks[0]);
    expect(picks.slice(0, 4)).toEqual([0, 1, 2, 3].map((k) => eps[(first + k) % 4]!.id));
  });

  it('gives weighted endpoints their exact share every cycle, interleaved', () => {
    const eps = endpoints(3, (i) => i + 1); // 1, 2, 3
    const b = createBalancer({ simple: 'ROUND_ROBIN' }, { random: seeded(2) });
    const cycle = Array.from({ length: 6 }, () => b.pick(eps).endpoint!.id);
    expect(cycle.filter((id) => id === eps[0]!.id)).toHaveLength(1);
    expect(cycle.filter((id) => id === eps[1]!.id)).toHaveLength(2);
    expect(cycle.filter((id) => id === eps[2]!.id)).toHaveLength(3);
    const counts = tally(b, eps, 600);
    expect([...counts.values()]).toEqual([100, 200, 300]);
  });
});

describe('RANDOM', () => {
  it('spreads uniformly within tolerance', () => {
    const eps = endpoints(3);
    const counts = tally(createBalancer({ simple: 'RANDOM' }, { random: seeded(3) }), eps, 30_000);
    for (const c of counts.values()) expect(Math.abs(c - 10_000)).toBeLessThan(500);
  });

  it('draws by weight', () => {
    const eps = endpoints(2, (i) => (i === 0 ? 1 : 3));
    const counts = tally(createBalancer({ simple: 'RANDOM' }, { random: seeded(4) }), eps, 40_000);
    expect(Math.abs(counts.get(eps[0]!.id)! - 10_000)).toBeLessThan(500);
    expect(Math.abs(counts.get(eps[1]!.id)! - 30_000)).toBeLessThan(500);
  });
});

describe('LEAST_REQUEST (power of two choices)', () => {
  it('takes the less loaded of two random draws; a tie keeps the first', () => {
    const eps = endpoints(4);
    // Draws: index 0 then index 2 (random 0.0 and 0.5 of 4).
    const b = createBalancer({ simple: 'LEAST_REQUEST' }, { random: sequence(0, 0.5) });
    expect(b.pick(eps).endpoint!.id).toBe(eps[0]!.id);
    b.onStart!(eps[0]!.id);
    expect(b.pick(eps).endpoint!.id).toBe(eps[2]!.id);
    b.onStart!(eps[2]!.id);
    b.onStart!(eps[2]!.id);
    expect(b.pick(eps).endpoint!.id).toBe(eps[0]!.id);
    b.onEnd!(eps[2]!.id);
    b.onEnd!(eps[2]!.id);
    b.onEnd!(eps[2]!.id); // one too many: counts never go negative
    expect(b.pick(eps).endpoint!.id).toBe(eps[2]!.id);
  });

  it('keeps load off a busy endpoint: it wins only when drawn twice', () => {
    const eps = endpoints(4);
    const b = createBalancer(undefined, { random: seeded(5) });
    for (let i = 0; i < 10; i++) b.onStart!(eps[0]!.id);
    const counts = tally(b, eps, 16_000);
    // P(busy) = 1/16 → ~1000; the others share the rest evenly (~5000 each).
    expect(counts.get(eps[0]!.id)!).toBeGreaterThan(800);
    expect(counts.get(eps[0]!.id)!).toBeLessThan(1200);
    for (const e of eps.slice(1)) expect(Math.abs(counts.get(e.id)! - 5000)).toBeLessThan(400);
  });

  it('balances in-flight requests when they are reported', () => {
    const eps = endpoints(5);
    const b = createBalancer(undefined, { random: seeded(6) });
    const inFlight = new Map<string, number>(eps.map((e) => [e.id, 0]));
    for (let i = 0; i < 1000; i++) {
      const id = b.pick(eps).endpoint!.id;
      b.onStart!(id);
      inFlight.set(id, inFlight.get(id)! + 1);
    }
    const loads = [...inFlight.values()];
    expect(Math.max(...loads) - Math.min(...loads)).toBeLessThanOrEqual(4);
  });

  it('compares load per unit of weight when weights differ', () => {
    const eps = endpoints(2, (i) => (i === 0 ? 1 : 4));
    const b = createBalancer(undefined, { random: seeded(7) });
    for (let i = 0; i < 1000; i++) b.onStart!(b.pick(eps).endpoint!.id);
    // Each pick goes to the endpoint with less in flight per unit of weight, when the two draws differ.
    const heavy = tally(createBalancer(undefined, { random: seeded(7) }), eps, 10_000).get(eps[1]!.id)!;
    expect(heavy).toBeGreaterThan(7000);
  });
});

describe('consistent hash', () => {
  const KEYS = 10_000;
  const key = (i: number) => `user-${i}`;
  const byHeader = (i: number) => req({ 'x-user': key(i) });

  for (const [name, lb] of [
    ['ring hash', { consistentHash: { httpHeaderName: 'X-User' } }],
    ['Maglev', { consistentHash: { httpHeaderName: 'X-User', maglev: {} } }],
  ] as const) {
    describe(name, () => {
      it('sends a key to the same endpoint every time, whatever the order of the endpoints', () => {
        const eps = endpoints(7);
        const b = createBalancer(lb, { random: seeded(8) });
        const other = createBalancer(lb, { random: seeded(9) }); // another waypoint replica
        const reversed = [...eps].reverse();
        for (let i = 0; i < 500; i++) {
          const first = b.pick(eps, byHeader(i)).endpoint!.id;
          expect(b.pick(eps, byHeader(i)).endpoint!.id).toBe(first);
          expect(b.pick(reversed, byHeader(i)).endpoint!.id).toBe(first);
          expect(other.pick([...eps], byHeader(i)).endpoint!.id).toBe(first);
        }
      });

      it('spreads 10,000 keys evenly within tolerance', () => {
        const eps = endpoints(5);
        const counts = tally(createBalancer(lb, { random: seeded(10) }), eps, KEYS, byHeader);
        for (const c of counts.values()) expect(Math.abs(c - KEYS / 5)).toBeLessThan(KEYS / 5 * 0.15);
      });

      it('moves only about 1/N of the keys when one of N endpoints goes', () => {
        for (const n of [5, 8, 10]) {
          const eps = endpoints(n);
          const b = createBalancer(lb, { random: seeded(11) });
          const before = Array.from({ length: KEYS }, (_, i) => b.pick(eps, byHeader(i)).endpoint!.id);
          const gone = eps[2]!.id;
          const fewer = eps.filter((e) => e.id !== gone);
          const after = Array.from({ length: KEYS }, (_, i) => b.pick(fewer, byHeader(i)).endpoint!.id);
          const moved = before.filter((id, i) => id !== after[i]).length;
          const stayedAway = before.filter((id, i) => id !== gone && id !== after[i]).length;
          expect(after).not.toContain(gone);
          // The removed endpoint's keys must move; few others may.
          expect(moved / KEYS).toBeLessThan(1 / n + 0.03);
          expect(stayedAway / KEYS).toBeLessThan(0.03);
          // And they come back when it does.
          const again = Array.from({ length: KEYS }, (_, i) => b.pick(eps, byHeader(i)).endpoint!.id);
          expect(again).toEqual(before);
        }
      });

      it('gives weighted endpoints their share of keys', () => {
        const eps = endpoints(2, (i) => (i === 0 ? 1 : 3));
        const counts = tally(createBalancer(lb, { random: seeded(12) }), eps, KEYS, byHeader);
        expect(Math.abs(counts.get(eps[1]!.id)! / KEYS - 0.75)).toBeLessThan(0.04);
      });

      it('falls back to a random endpoint when the key is missing', () => {
        const eps = endpoints(4);
        const counts = tally(createBalancer(lb, { random: seeded(13) }), eps, 8000, () => req({}));
        for (const c of counts.values()) expect(Math.abs(c - 2000)).toBeLessThan(300);
        // No input at all: also random, not an error.
        expect(createBalancer(lb, { random: seeded(13) }).pick(eps).endpoint).toBeDefined();
      });
    });
  }

  it('hashes a repeated header by its sorted values', () => {
    const eps = endpoints(9);
    const b = createBalancer({ consistentHash: { httpHeaderName: 'x-tenant' } }, { random: seeded(14) });
    for (let i = 0; i < 50; i++) {
      const one = b.pick(eps, req({ 'x-tenant': [`a${i}`, `b${i}`] })).endpoint!.id;
      expect(b.pick(eps, req({ 'x-tenant': [`b${i}`, `a${i}`] })).endpoint!.id).toBe(one);
    }
  });

  it('hashes the source IP', () => {
    const eps = endpoints(6);
    const b = createBalancer({ consistentHash: { useSourceIp: true } }, { random: seeded(15) });
    const counts = tally(b, eps, 6000, (i) => req({}, { sourceIp: `10.2.${i >> 8}.${i & 255}` }));
    for (const c of counts.values()) expect(Math.abs(c - 1000)).toBeLessThan(200);
    const one = b.pick(eps, req({}, { sourceIp: '10.9.9.9' })).endpoint!.id;
    for (let i = 0; i < 20; i++) expect(b.pick(eps, req({ 'x-noise': String(i) }, { sourceIp: '10.9.9.9' })).endpoint!.id).toBe(one);
  });

  it('hashes a query parameter', () => {
    const eps = endpoints(6);
    const b = createBalancer({ consistentHash: { httpQueryParameterName: 'session' } }, { random: seeded(16) });
    const at = (q: string) => b.pick(eps, req({}, { query: new URLSearchParams(q) })).endpoint!.id;
    for (let i = 0; i < 50; i++) expect(at(`session=s${i}&page=1`)).toBe(at(`page=2&session=s${i}`));
    const counts = tally(b, eps, 6000, (i) => req({}, { query: new URLSearchParams(`session=s${i}`) }));
    for (const c of counts.values()) expect(Math.abs(c - 1000)).toBeLessThan(200);
  });

  describe('httpCookie', () => {
    const eps = endpoints(8);

    it('hashes the cookie from the parsed map or the cookie header, quoted or not', () => {
      const b = createBalancer({ consistentHash: { httpCookie: { name: 'sid', ttl: '1h' } } }, { random: seeded(17) });
      for (let i = 0; i < 50; i++) {
        const one = b.pick(eps, req({}, { cookies: { sid: `s${i}` } }));
        expect(one.setCookie).toBeUndefined();
        expect(b.pick(eps, req({ cookie: `a=1; sid=s${i}; b=2` })).endpoint).toBe(one.endpoint);
        expect(b.pick(eps, req({ cookie: `sid="s${i}"` })).endpoint).toBe(one.endpoint);
      }
    });

    it('makes one up when it is absent and a ttl is set, as Envoy does, and the cookie then sticks', () => {
      const b = createBalancer({ consistentHash: { httpCookie: { name: 'sid', path: '/', ttl: '3600s' } } }, { random: seeded(18) });
      const first = b.pick(eps, req({}));
      expect(first.setCookie).toMatch(/^sid="[0-9a-f]{16}"; Max-Age=3600; Path=\/; HttpOnly$/);
      const value = /"(.*)"/.exec(first.setCookie!)![1]!;
      for (let i = 0; i < 10; i++) {
        const next = b.pick(eps, req({ cookie: `sid="${value}"` }));
        expect(next.endpoint).toBe(first.endpoint);
        expect(next.setCookie).toBeUndefined();
      }
      // Each new client gets its own cookie.
      expect(b.pick(eps, req({})).setCookie).not.toBe(first.setCookie);
    });

    it('makes a session cookie for a zero ttl, with the attributes given', () => {
      const b = createBalancer(
        { consistentHash: { httpCookie: { name: 'sid', ttl: '0s', attributes: [{ name: 'SameSite', value: 'Strict' }, { name: 'Secure' }] } } },
        { random: seeded(19) },
      );
      expect(b.pick(eps, req({})).setCookie).toMatch(/^sid="[0-9a-f]{16}"; SameSite=Strict; Secure; HttpOnly$/);
    });

    it('without a ttl, makes none and picks at random', () => {
      const b = createBalancer({ consistentHash: { httpCookie: { name: 'sid' } } }, { random: seeded(20) });
      const picks = Array.from({ length: 40 }, () => b.pick(eps, req({})));
      expect(picks.every((p) => p.setCookie === undefined)).toBe(true);
      expect(new Set(picks.map((p) => p.endpoint!.id)).size).toBeGreaterThan(3);
    });
  });

  it('builds rings with points proportional to weight', () => {
    const ids = ['a', 'b', 'c'];
    const counts = (t: { lookup(h: number): number }) => {
      const c = [0, 0, 0];
      for (let i = 0; i < 30_000; i++) c[t.lookup(hash32(`k${i}`))]!++;
      return c;
    };
    const even = counts(buildRing([1, 1, 1], ids, 1024));
    for (const c of even) expect(Math.abs(c - 10_000)).toBeLessThan(1000);
    const weighted = counts(buildRing([1, 2, 1], ids, 1024));
    expect(Math.abs(weighted[1]! / 30_000 - 0.5)).toBeLessThan(0.05);
    // A one-point-per-host ring still answers for every hash.
    expect(buildRing([1, 1, 1], ids, 1).lookup(0xffffffff)).toBeGreaterThanOrEqual(0);
  });

  it("fills every Maglev slot, each endpoint's share within one slot of even", () => {
    const t = buildMaglev([1, 1, 1, 1, 1, 1, 1], ['a', 'b', 'c', 'd', 'e', 'f', 'g'], 65537);
    const c = Array(7).fill(0) as number[];
    for (let slot = 0; slot < 65537; slot++) c[t.lookup(slot)]!++;
    expect(c.reduce((a, b) => a + b)).toBe(65537);
    expect(Math.max(...c) - Math.min(...c)).toBeLessThanOrEqual(1);
  });
});

describe('hash32', () => {
  it('is MurmurHash3 x86_32', () => {
    expect(hash32('')).toBe(0);
    expect(hash32('', 1)).toBe(0x514e28b7);
    expect(hash32('hello')).toBe(0x248bfa47);
    expect(hash32('The quick brown fox jumps over the lazy dog')).toBe(0x2e4ff723);
  });

  it('hashes UTF-8 and long strings', () => {
    expect(hash32('é')).not.toBe(hash32('e'));
    const long = 'x'.repeat(10_000);
    expect(hash32(long)).toBe(hash32(long));
    expect(hash32(long)).not.toBe(hash32(`${long}y`));
  });
});
