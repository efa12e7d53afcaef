/**
 * The waypoint's load balancers: which endpoint (pod) of a destination gets one request, from
 * Istio's DestinationRule `trafficPolicy.loadBalancer`, with Envoy's algorithms. Pure: the only
 * randomness is the injected `random`, the only state is what the proxy reports (in-flight
 * requests through onStart/onEnd) and tables cached per endpoint set.
 *
 * Semantics:
 * - `simple`. Unset or UNSPECIFIED is LEAST_REQUEST, Istio's default since 1.14
 *   (`defaultLBAlgorithm()` in pilot's cluster_traffic_policy.go). LEAST_REQUEST is Envoy's
 *   "power of two choices": two endpoints drawn at random (with replacement), the one with fewer
 *   requests in flight wins, a tie keeps the first draw. LEAST_CONN is its deprecated alias.
 *   ROUND_ROBIN walks the endpoints in the order given from a random start (as Envoy seeds it, so
 *   waypoints do not all begin with the same pod); RANDOM draws uniformly. PASSTHROUGH (Envoy's
 *   original-destination cluster) is balanced as RANDOM: a waypoint always picks an endpoint.
 * - Weights. An endpoint without a positive weight weighs 1. With unequal weights ROUND_ROBIN is
 *   smooth weighted round robin (exact shares every cycle, where Envoy uses an EDF schedule),
 *   RANDOM draws by weight, and LEAST_REQUEST draws both candidates by weight and compares
 *   in-flight requests per unit of weight (Envoy: weight / (active + 1), bias 1).
 * - `consistentHash`. The key is a header (values of a repeated header sorted first), a cookie,
 *   the source IP or a query parameter. A missing key hashes a random number, as Envoy does: the
 *   request still lands on an endpoint, chosen by weight. A missing `httpCookie` with a `ttl` is
 *   made up (16 hex digits) and hashed, and `setCookie` carries Envoy's Set-Cookie text for it:
 *   `name="value"; Max-Age=S; Path=P; <attributes>; HttpOnly` (no Max-Age when ttl is under 1s:
 *   a session cookie).
 * - Ring hash (the default algorithm; `ringHash.minimumRingSize`, or the deprecated top-level
 *   `minimumRingSize`, default 1024). Each endpoint gets points `id_0, id_1, ...` in proportion
 *   to its weight; a key goes to the first point at or after its hash, wrapping around. Unlike
 *   Envoy, which gives each endpoint ceil(minimumRingSize / N) points and so re-deals ~1/N of
 *   the keys again whenever N changes, the points per unit of weight stay at
 *   minimumRingSize while the ring stays under RING_STABLE_POINTS: adding or removing one of N
 *   endpoints then moves only that endpoint's ~1/N of keys. Past that the ring is sized as
 *   Envoy's (at least minimumRingSize points, at most 8M).
 * - Maglev (`maglev.tableSize`, default 65537). The paper's population: each endpoint's
 *   preference list is (offset + j·skip) mod M, endpoints take turns claiming their next free
 *   slot, a heavier one taking more turns (Envoy's weighted variant). M must be prime (Envoy
 *   rejects other sizes, Istio's schema does not check): a composite size is raised to the next
 *   prime, with a note. Lookups are table[hash mod M].
 * - Determinism. Tables are built from the endpoints sorted by id (the workload uid) with a
 *   32-bit murmur3 of the id, so every waypoint replica builds the same ring or table and sends a
 *   given key to the same pod. Tables are cached by the set's ids and weights (a few sets per
 *   balancer); endpoint arrays are treated as snapshots: replace them, do not mutate them.
 * - `localityLbSetting`, `warmupDurationSecs` and `warmup` are accepted and not used: ambit has
 *   no localities, and new endpoints get their full share at once. Each shows up in `notes`.
 */
import { durationMs, isObject } from '../config/schema.js';

export interface Endpoint {
  /** The workload's uid. */
  id: string;
  address: string;
  weight?: number;
}

export interface HashInput {
  /** Request headers, names lower-case (as node:http gives them). */
  headers: Record<string, string | string[] | undefined>;
  /** Parsed cookies; when absent, the `cookie` header is parsed. */
  cookies?: Record<string, string>;
  sourceIp: string;
  query?: URLSearchParams;
}

export interface Pick {
  /** Undefined only when there is no endpoint to pick. */
  endpoint?: Endpoint;
  /** A Set-Cookie header value to add to the response (consistent hash on a generated cookie). */
  setCookie?: string;
}

export type BalancerPolicy = 'ROUND_ROBIN' | 'LEAST_REQUEST' | 'RANDOM' | 'RING_HASH' | 'MAGLEV';

export interface Balancer {
  readonly policy: BalancerPolicy;
  /** Fields accepted but not acted on and substitutions made, one sentence each, for a warning. */
  readonly notes: readonly string[];
  pick(endpoints: readonly Endpoint[], input?: HashInput): Pick;
  /** A request to this endpoint started (LEAST_REQUEST counts them; others need not be told). */
  onStart?(id: string): void;
  /** A request to this endpoint ended, however it ended. */
  onEnd?(id: string): void;
}

export interface BalancerDeps {
  /** Uniform in [0, 1). */
  random: () => number;
}

export const DEFAULT_MINIMUM_RING_SIZE = 1024;
export const DEFAULT_MAGLEV_TABLE_SIZE = 65537;
/** Envoy's limits: ring_hash_lb_config.maximum_ring_size default, maglev table_size maximum. */
export const MAX_RING_SIZE = 8 * 1024 * 1024;
export const MAX_MAGLEV_TABLE_SIZE = 5000011;
/** Below this many points the ring gives every unit of weight minimumRingSize points (see top). */
export const RING_STABLE_POINTS = 131072;

const NOT_USED = 'accepted; not used by ambit';

/** The balancer for a `trafficPolicy.loadBalancer` (already validated), or Istio's default for undefined. */
export function createBalancer(loadBalancer: unknown, deps: BalancerDeps): Balancer {
  const lb = isObject(loadBalancer) ? loadBalancer : {};
  const notes: string[] = [];
  if (lb.localityLbSetting !== undefined) notes.push(`loadBalancer.localityLbSetting: ${NOT_USED} (no localities)`);
  if (lb.warmupDurationSecs !== undefined) notes.push(`loadBalancer.warmupDurationSecs: ${NOT_USED} (no slow start)`);
  if (lb.warmup !== undefined) notes.push(`loadBalancer.warmup: ${NOT_USED} (no slow start)`);

  if (isObject(lb.consistentHash)) return createConsistentHash(lb.consistentHash, deps, notes);

  switch (lb.simple) {
    case 'ROUND_ROBIN':
      return new RoundRobin(deps, notes);
    case 'RANDOM':
      return new RandomPick(deps, notes);
    case 'PASSTHROUGH':
      notes.push('loadBalancer.simple PASSTHROUGH: balanced as RANDOM (a waypoint always picks an endpoint of the destination)');
      return new RandomPick(deps, notes);
    case 'LEAST_CONN':
      notes.push('loadBalancer.simple LEAST_CONN: deprecated, read as LEAST_REQUEST');
      return new LeastRequest(deps, notes);
    default:
      // LEAST_REQUEST, UNSPECIFIED or unset: Istio's default.
      return new LeastRequest(deps, notes);
  }
}

// ---------------------------------------------------------------------------------------------
// simple

function weightOf(e: Endpoint): number {
  const w = e.weight;
  return typeof w === 'number' && Number.isFinite(w) && w >= 1 ? Math.floor(w) : 1;
}

function equalWeights(endpoints: readonly Endpoint[]): boolean {
  const first = weightOf(endpoints[0]!);
  for (let i = 1; i < endpoints.length; i++) if (weightOf(endpoints[i]!) !== first) return false;
  return true;
}

function randomIndex(random: () => number, n: number): number {
  return Math.min(n - 1, Math.floor(random() * n));
}

function weightedDraw(random: () => number, endpoints: readonly Endpoint[]): Endpoint {
  let total = 0;
  for (const e of endpoints) total += weightOf(e);
  let r = random() * total;
  for (const e of endpoints) {
    r -= weightOf(e);
    if (r < 0) return e;
  }
  return endpoints[endpoints.length - 1]!;
}

class RoundRobin implements Balancer {
  readonly policy = 'ROUND_ROBIN';
  private next: number;
  /** Smooth weighted round robin's running weights, by endpoint id. */
  private readonly current = new Map<string, number>();

  constructor(deps: BalancerDeps, readonly notes: readonly string[]) {
    this.next = Math.floor(deps.random() * 2 ** 31);
  }

  pick(endpoints: readonly Endpoint[]): Pick {
    const n = endpoints.length;
    if (n === 0) return {};
    if (equalWeights(endpoints)) {
      const endpoint = endpoints[this.next % n]!;
      this.next = (this.next + 1) % 2 ** 52;
      return { endpoint };
    }
    // Each pick every endpoint gains its weight; the richest is picked and pays the total.
    if (this.current.size > 2 * n) this.current.clear();
    let total = 0;
    let best: Endpoint | undefined;
    let bestValue = -Infinity;
    for (const e of endpoints) {
      const w = weightOf(e);
      total += w;
      const v = (this.current.get(e.id) ?? 0) + w;
      this.current.set(e.id, v);
      if (v > bestValue) {
        bestValue = v;
        best = e;
      }
    }
    this.current.set(best!.id, bestValue - total);
    return { endpoint: best };
  }
}

class RandomPick implements Balancer {
  readonly policy = 'RANDOM';
  constructor(private readonly deps: BalancerDeps, readonly notes: readonly string[]) {}

  pick(endpoints: readonly Endpoint[]): Pick {
    if (endpoints.length === 0) return {};
    if (equalWeights(endpoints)) return { endpoint: endpoints[randomIndex(this.deps.random, endpoints.length)] };
    return { endpoint: weightedDraw(this.deps.random, endpoints) };
  }
}

class LeastRequest implements Balancer {
  readonly policy = 'LEAST_REQUEST';
  private readonly active = new Map<string, number>();
  constructor(private readonly deps: BalancerDeps, readonly notes: readonly string[]) {}

  onStart(id: string): void {
    this.active.set(id, (this.active.get(id) ?? 0) + 1);
  }

  onEnd(id: string): void {
    const n = (this.active.get(id) ?? 0) - 1;
    if (n > 0) this.active.set(id, n);
    else this.active.delete(id);
  }

  /** Requests in flight to an endpoint, as reported through onStart/onEnd. */
  inFlight(id: string): number {
    return this.active.get(id) ?? 0;
  }

  pick(endpoints: readonly Endpoint[]): Pick {
    const n = endpoints.length;
    if (n === 0) return {};
    if (n === 1) return { endpoint: endpoints[0] };
    const { random } = this.deps;
    if (equalWeights(endpoints)) {
      const a = endpoints[randomIndex(random, n)]!;
      const b = endpoints[randomIndex(random, n)]!;
      return { endpoint: this.inFlight(b.id) < this.inFlight(a.id) ? b : a };
    }
    const a = weightedDraw(random, endpoints);
    const b = weightedDraw(random, endpoints);
    const load = (e: Endpoint) => (this.inFlight(e.id) + 1) / weightOf(e);
    return { endpoint: load(b) < load(a) ? b : a };
  }
}

// ---------------------------------------------------------------------------------------------
// consistent hash

type HashKey =
  | { kind: 'header'; name: string }
  | { kind: 'cookie'; name: string; path?: string; ttlMs?: number; attributes: { name: string; value?: string }[] }
  | { kind: 'sourceIp' }
  | { kind: 'query'; name: string };

/** A built ring or table: the index (into the endpoints sorted by id) a 32-bit hash goes to. */
interface HashTable {
  lookup(hash: number): number;
}

interface Resolved {
  table: HashTable;
  /** The endpoints sorted by id, deduplicated: what lookup() indexes. */
  sorted: Endpoint[];
  length: number;
  first: Endpoint | undefined;
  last: Endpoint | undefined;
}

/** Tables kept per balancer: the current endpoint set and a few recent ones (subsets, churn). */
const TABLE_CACHE_SIZE = 4;

function createConsistentHash(ch: Record<string, unknown>, deps: BalancerDeps, notes: string[]): Balancer {
  const key = hashKeyOf(ch);
  if (isObject(ch.maglev)) {
    let size = typeof ch.maglev.tableSize === 'number' && ch.maglev.tableSize > 0 ? Math.floor(ch.maglev.tableSize) : DEFAULT_MAGLEV_TABLE_SIZE;
    if (size > MAX_MAGLEV_TABLE_SIZE) {
      notes.push(`consistentHash.maglev.tableSize ${size} is above Envoy's limit; using ${MAX_MAGLEV_TABLE_SIZE}`);
      size = MAX_MAGLEV_TABLE_SIZE;
    }
    if (!isPrime(size)) {
      const prime = nextPrime(size);
      notes.push(`consistentHash.maglev.tableSize ${size} is not prime (Envoy rejects it); using ${prime}`);
      size = prime;
    }
    const tableSize = size;
    return new ConsistentHash('MAGLEV', key, (weights, ids) => buildMaglev(weights, ids, tableSize), deps, notes);
  }
  const fromRing = isObject(ch.ringHash) ? ch.ringHash.minimumRingSize : undefined;
  const raw = typeof fromRing === 'number' ? fromRing : ch.minimumRingSize;
  const minimumRingSize = typeof raw === 'number' && raw >= 1 ? Math.min(Math.floor(raw), MAX_RING_SIZE) : DEFAULT_MINIMUM_RING_SIZE;
  return new ConsistentHash('RING_HASH', key, (weights, ids) => buildRing(weights, ids, minimumRingSize), deps, notes);
}

function hashKeyOf(ch: Record<string, unknown>): HashKey | undefined {
  if (typeof ch.httpHeaderName === 'string') return { kind: 'header', name: ch.httpHeaderName.toLowerCase() };
  if (isObject(ch.httpCookie) && typeof ch.httpCookie.name === 'string') {
    const c = ch.httpCookie;
    const attributes = Array.isArray(c.attributes)
      ? c.attributes.filter(isObject).filter((a) => typeof a.name === 'string')
        .map((a) => ({ name: a.name as string, ...(typeof a.value === 'string' && a.value !== '' ? { value: a.value } : {}) }))
      : [];
    return {
      kind: 'cookie', name: c.name as string, attributes,
      ...(typeof c.path === 'string' && c.path !== '' ? { path: c.path } : {}),
      ...(typeof c.ttl === 'string' ? { ttlMs: durationMs(c.ttl) } : {}),
    };
  }
  if (ch.useSourceIp === true) return { kind: 'sourceIp' };
  if (typeof ch.httpQueryParameterName === 'string') return { kind: 'query', name: ch.httpQueryParameterName };
  return undefined;
}

class ConsistentHash implements Balancer {
  private readonly byArray = new WeakMap<readonly Endpoint[], Resolved>();
  private readonly tables = new Map<string, HashTable>();

  constructor(
    readonly policy: 'RING_HASH' | 'MAGLEV',
    private readonly key: HashKey | undefined,
    private readonly build: (weights: number[], ids: string[]) => HashTable,
    private readonly deps: BalancerDeps,
    readonly notes: readonly string[],
  ) {}

  pick(endpoints: readonly Endpoint[], input?: HashInput): Pick {
    if (endpoints.length === 0) return {};
    const { hash, setCookie } = this.hashOf(input);
    const resolved = this.resolve(endpoints);
    const endpoint = resolved.sorted[resolved.table.lookup(hash ?? Math.floor(this.deps.random() * 2 ** 32) >>> 0)];
    return setCookie === undefined ? { endpoint } : { endpoint, setCookie };
  }

  private hashOf(input: HashInput | undefined): { hash?: number; setCookie?: string } {
    const key = this.key;
    if (!key || !input) return {};
    switch (key.kind) {
      case 'header': {
        const v = input.headers[key.name];
        if (v === undefined) return {};
        return { hash: hash32(Array.isArray(v) ? [...v].sort().join('\n') : v) };
      }
      case 'sourceIp':
        return input.sourceIp ? { hash: hash32(input.sourceIp) } : {};
      case 'query': {
        const v = input.query?.get(key.name);
        return v === null || v === undefined ? {} : { hash: hash32(v) };
      }
      case 'cookie': {
        const raw = input.cookies?.[key.name] ?? cookieFromHeader(input.headers.cookie, key.name);
        const value = raw === undefined ? '' : unquote(raw);
        if (value !== '') return { hash: hash32(value) };
        if (key.ttlMs === undefined) return {};
        const made = hex8(Math.floor(this.deps.random() * 2 ** 32)) + hex8(Math.floor(this.deps.random() * 2 ** 32));
        return { hash: hash32(made), setCookie: setCookieText(key, made) };
      }
    }
  }

  private resolve(endpoints: readonly Endpoint[]): Resolved {
    const hit = this.byArray.get(endpoints);
    if (hit && hit.length === endpoints.length && hit.first === endpoints[0] && hit.last === endpoints[endpoints.length - 1]) return hit;
    // Sorted by id, an endpoint listed twice kept once (it would otherwise weigh double).
    const sorted: Endpoint[] = [];
    for (const e of [...endpoints].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))) {
      if (sorted.length === 0 || sorted[sorted.length - 1]!.id !== e.id) sorted.push(e);
    }
    const weights = sorted.map(weightOf);
    const ids = sorted.map((e) => e.id);
    const cacheKey = ids.map((id, i) => `${id}\u0000${weights[i]}`).join('\u0001');
    let table = this.tables.get(cacheKey);
    if (table) {
      this.tables.delete(cacheKey); // re-insert: most recently used last
    } else {
      table = this.build(weights, ids);
      if (this.tables.size >= TABLE_CACHE_SIZE) this.tables.delete(this.tables.keys().next().value!);
    }
    this.tables.set(cacheKey, table);
    const resolved: Resolved = { table, sorted, length: endpoints.length, first: endpoints[0], last: endpoints[endpoints.length - 1] };
    this.byArray.set(endpoints, resolved);
    return resolved;
  }
}

function cookieFromHeader(header: string | string[] | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const line of Array.isArray(header) ? header : [header]) {
    for (const part of line.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
    }
  }
  return undefined;
}

/** Envoy writes the value quoted and reads it back without the quotes. */
function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

/** Envoy's Http::Utility::makeSetCookieValue, HttpOnly as the hash policy asks. */
function setCookieText(key: Extract<HashKey, { kind: 'cookie' }>, value: string): string {
  let text = `${key.name}="${value}"`;
  const maxAge = Math.floor((key.ttlMs ?? 0) / 1000);
  if (maxAge > 0) text += `; Max-Age=${maxAge}`;
  if (key.path !== undefined) text += `; Path=${key.path}`;
  for (const a of key.attributes) text += a.value === undefined ? `; ${a.name}` : `; ${a.name}=${a.value}`;
  return `${text}; HttpOnly`;
}

// ---------------------------------------------------------------------------------------------
// ring hash

const OWNER_BITS = 2 ** 21;

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/** weights[i] and ids[i] are the endpoints sorted by id. */
export function buildRing(weights: number[], ids: string[], minimumRingSize: number): HashTable {
  const g = weights.reduce(gcd, 0) || 1;
  const units = weights.map((w) => w / g);
  const totalUnits = units.reduce((a, b) => a + b, 0);
  let perUnit = Math.max(Math.ceil(minimumRingSize / totalUnits), Math.min(minimumRingSize, Math.floor(RING_STABLE_POINTS / totalUnits)));
  perUnit = Math.max(1, Math.min(perUnit, Math.floor(MAX_RING_SIZE / totalUnits)));
  const size = perUnit * totalUnits;
  // hash · 2^21 + owner: one numeric sort orders the points by hash, ties by owner.
  const packed = new Float64Array(size);
  let k = 0;
  for (let i = 0; i < ids.length; i++) {
    const prefix = `${ids[i]}_`;
    const points = perUnit * units[i]!;
    for (let j = 0; j < points; j++) packed[k++] = hash32(prefix + j) * OWNER_BITS + i;
  }
  packed.sort();
  const hashes = new Uint32Array(size);
  const owners = new Int32Array(size);
  for (let p = 0; p < size; p++) {
    const v = packed[p]!;
    const owner = v % OWNER_BITS;
    owners[p] = owner;
    hashes[p] = (v - owner) / OWNER_BITS;
  }
  return {
    lookup(hash: number): number {
      // The first point at or after the hash; past the last point, the first.
      let lo = 0;
      let hi = size;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (hashes[mid]! < hash) lo = mid + 1;
        else hi = mid;
      }
      return owners[lo === size ? 0 : lo]!;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Maglev

const MAGLEV_OFFSET_SEED = 0x9e3779b9;
const MAGLEV_SKIP_SEED = 0x7f4a7c15;

/** weights[i] and ids[i] are the endpoints sorted by id; size must be prime. */
export function buildMaglev(weights: number[], ids: string[], size: number): HashTable {
  const n = ids.length;
  const next = new Float64Array(n);
  const skip = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = hash32(ids[i]!, MAGLEV_OFFSET_SEED) % size;
    skip[i] = (hash32(ids[i]!, MAGLEV_SKIP_SEED) % (size - 1)) + 1;
  }
  const table = new Int32Array(size).fill(-1);
  const maxWeight = Math.max(...weights);
  const target = new Float64Array(n);
  let filled = 0;
  for (let iteration = 1; filled < size; iteration++) {
    for (let i = 0; i < n && filled < size; i++) {
      // An endpoint of weight maxWeight/3 takes a turn every third iteration.
      if (iteration * weights[i]! < target[i]!) continue;
      target[i]! += maxWeight;
      let c = next[i]!;
      const s = skip[i]!;
      while (table[c] !== -1) {
        c += s;
        if (c >= size) c -= size;
      }
      table[c] = i;
      c += s;
      if (c >= size) c -= size;
      next[i] = c;
      filled++;
    }
  }
  return { lookup: (hash: number) => table[hash % size]! };
}

export function isPrime(n: number): boolean {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

function nextPrime(n: number): number {
  let p = Math.max(2, n);
  while (!isPrime(p)) p++;
  return p;
}

// ---------------------------------------------------------------------------------------------
// hashing

const encoder = new TextEncoder();
let scratch = new Uint8Array(256);

/** MurmurHash3 x86_32 of the string's UTF-8 bytes: stable across processes and versions. */
export function hash32(s: string, seed = 0): number {
  if (s.length * 3 > scratch.length) scratch = new Uint8Array(s.length * 3 + 64);
  const { written } = encoder.encodeInto(s, scratch);
  return murmur3(scratch, written, seed);
}

function murmur3(b: Uint8Array, len: number, seed: number): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  let h = seed | 0;
  const blocks = len & ~3;
  for (let i = 0; i < blocks; i += 4) {
    let k = b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const tail = len & 3;
  if (tail > 0) {
    let k = 0;
    if (tail === 3) k ^= b[blocks + 2]! << 16;
    if (tail >= 2) k ^= b[blocks + 1]! << 8;
    k ^= b[blocks]!;
    k = Math.imul(k, c1);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, c2);
    h ^= k;
  }
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
