/**
 * A small declarative checker for API objects: each field's type and meaning, unknown fields
 * refused, every problem reported at its field path (the caller maps paths to file lines).
 */
import { parseCidr } from '../util/ip.js';
export type Path = (string | number)[];

export interface Reporter {
  error(path: Path, message: string): void;
  warn(path: Path, message: string): void;
}

export type Schema = (value: unknown, path: Path, r: Reporter) => void;

interface FieldOptions {
  required?: boolean;
  /** Accepted, with this warning (a deprecated or unsupported field). */
  warn?: string;
}
type Field = Schema | [Schema, FieldOptions];

export function describe(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export const any: Schema = () => undefined;

export function string(opts: { nonEmpty?: boolean; pattern?: RegExp; what?: string } = {}): Schema {
  return (v, p, r) => {
    if (typeof v !== 'string') return r.error(p, `must be a string, got ${describe(v)}`);
    if (opts.nonEmpty && v === '') return r.error(p, 'must not be empty');
    if (opts.pattern && !opts.pattern.test(v)) r.error(p, `must be ${opts.what ?? `a string matching ${String(opts.pattern)}`}, got ${JSON.stringify(v)}`);
  };
}

export function int(min = -(2 ** 31), max = 2 ** 31 - 1): Schema {
  return (v, p, r) => {
    // Kubernetes and protobuf JSON both allow 64-bit integers as strings.
    const n = typeof v === 'string' && /^-?\d+$/.test(v) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n)) return r.error(p, `must be an integer, got ${describe(v)}`);
    if (n < min || n > max) r.error(p, `must be from ${min} to ${max}, got ${n}`);
  };
}

export function number(min: number, max: number): Schema {
  return (v, p, r) => {
    if (typeof v !== 'number' || Number.isNaN(v)) return r.error(p, `must be a number, got ${describe(v)}`);
    if (v < min || v > max) r.error(p, `must be from ${min} to ${max}, got ${v}`);
  };
}

export const bool: Schema = (v, p, r) => (typeof v === 'boolean' ? undefined : r.error(p, `must be true or false, got ${describe(v)}`));

export function oneOf(values: readonly string[]): Schema {
  return (v, p, r) => {
    if (!values.includes(v as string)) r.error(p, `must be one of ${values.join(', ')}, got ${describe(v)}`);
  };
}

/** A Go/protobuf duration as Istio takes it: `30s`, `1.5s`, `100ms`, `1h30m`. */
const DURATION = /^(\d+(\.\d+)?(h|m|s|ms|us|µs|ns))+$/;
export const duration: Schema = (v, p, r) => {
  if (typeof v !== 'string' || !DURATION.test(v)) r.error(p, `must be a duration such as "5s", "250ms" or "1m30s", got ${describe(v)}`);
};

export function durationMs(v: string): number {
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001, µs: 0.001, ns: 0.000001 };
  let total = 0;
  for (const m of v.matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) total += Number(m[1]) * units[m[2]!]!;
  return total;
}

/** Kubernetes quantity suffixes as powers of 2 or 10 (`m`: 10^-3). */
const QUANTITY_SUFFIX: Record<string, [base: number, power: number]> = {
  Ki: [2, 10], Mi: [2, 20], Gi: [2, 30], Ti: [2, 40], Pi: [2, 50], Ei: [2, 60],
  n: [10, -9], u: [10, -6], m: [10, -3], k: [10, 3], M: [10, 6], G: [10, 9], T: [10, 12], P: [10, 15], E: [10, 18],
};
const QUANTITY = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?\d+))?$/;

/** A Kubernetes quantity (a number, or "900", "900m", "1.5", "1Ki", "1e3") as a number; undefined when it is none. */
export function quantityValue(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? v : undefined;
  const m = typeof v === 'string' ? QUANTITY.exec(v) : null;
  if (!m) return undefined;
  const [, sign, digits, suffix, exponent] = m;
  const [base, power] = suffix !== undefined ? QUANTITY_SUFFIX[suffix]! : [10, Number(exponent ?? 0)];
  // Divided by 10^3 rather than multiplied by 10^-3, which a double cannot hold: "900m" is 0.9.
  const value = power < 0 ? Number(digits) / base ** -power : Number(digits) * base ** power;
  return sign === '-' ? -value : value;
}

export function list(item: Schema, opts: { min?: number } = {}): Schema {
  return (v, p, r) => {
    if (!Array.isArray(v)) return r.error(p, `must be a list, got ${describe(v)}`);
    if (opts.min !== undefined && v.length < opts.min) r.error(p, `must have at least ${opts.min} item${opts.min === 1 ? '' : 's'}`);
    v.forEach((x, i) => item(x, [...p, i], r));
  };
}

export function map(value: Schema, key?: Schema): Schema {
  return (v, p, r) => {
    if (!isObject(v)) return r.error(p, `must be a map, got ${describe(v)}`);
    for (const [k, x] of Object.entries(v)) {
      key?.(k, [...p, k], r);
      value(x, [...p, k], r);
    }
  };
}

export function object(fields: Record<string, Field>, opts: {
  /** Exactly one of these may be set (when `required`, one must be). */
  exactlyOne?: { fields: string[]; required?: boolean }[];
  check?: (obj: Record<string, unknown>, path: Path, r: Reporter) => void;
} = {}): Schema {
  return (v, p, r) => {
    if (!isObject(v)) return r.error(p, `must be an object, got ${describe(v)}`);
    for (const [name, field] of Object.entries(fields)) {
      const [, o] = Array.isArray(field) ? field : [field, {} as FieldOptions];
      if (o.required && (v[name] === undefined || v[name] === null)) r.error([...p, name], 'required');
    }
    for (const [k, x] of Object.entries(v)) {
      // Own fields only: a key such as "constructor" must not find Object.prototype's.
      const field = Object.hasOwn(fields, k) ? fields[k] : undefined;
      if (!field) {
        r.error([...p, k], `unknown field "${k}"`);
        continue;
      }
      if (x === null) continue;
      const [schema, o] = Array.isArray(field) ? field : [field, {} as FieldOptions];
      if (o.warn) r.warn([...p, k], o.warn);
      schema(x, [...p, k], r);
    }
    for (const group of opts.exactlyOne ?? []) {
      const set = group.fields.filter((f) => v[f] !== undefined && v[f] !== null);
      if (set.length > 1) r.error(p, `only one of ${group.fields.join(', ')} may be set (found ${set.join(', ')})`);
      else if (set.length === 0 && group.required) r.error(p, `one of ${group.fields.join(', ')} is required`);
    }
    opts.check?.(v, p, r);
  };
}

/** A regular expression as Istio and the Gateway API take it (RE2); checked by compiling it. */
export const regex: Schema = (v, p, r) => {
  if (typeof v !== 'string') return r.error(p, `must be a string, got ${describe(v)}`);
  if (/\(\?[<=!]|\\[1-9]/.test(v)) return r.error(p, `"${v}": lookaround and backreferences are not RE2 syntax`);
  try {
    new RegExp(v);
  } catch (err) {
    r.error(p, `invalid regular expression: ${(err as Error).message}`);
  }
};

/** An IP address or CIDR block. */
export const ipOrCidr: Schema = (v, p, r) => {
  if (typeof v !== 'string') return r.error(p, `must be a string, got ${describe(v)}`);
  if (parseCidr(v) === undefined) r.error(p, `must be an IP address or CIDR block, got ${JSON.stringify(v)}`);
};

export const port: Schema = int(1, 65535);
export const labels: Schema = map(string());
