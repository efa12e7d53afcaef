/**
 * The Prometheus text exposition format (0.0.4), read: what `ambit stat` and `ambit dashboard`
 * take from a node agent's or a waypoint's `/metrics` when no Prometheus is configured.
 *
 * A scrape is text from another process, so it is read as untrusted: a size bound, a bound on
 * samples and label pairs, and a line that is not a sample is skipped and counted rather than
 * trusted or thrown on. Comments (`# HELP`, `# TYPE`) are read only for the type.
 */

export interface Sample {
  /** The sample's own name: `istio_requests_total`, `..._bucket`, `..._sum`, `..._count`. */
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  /** Metric family name → its `# TYPE`. */
  types: Map<string, string>;
  /** Lines that were neither a comment nor a well-formed sample. */
  skipped: number;
}

export const MAX_EXPOSITION_BYTES = 64 * 1024 * 1024;
export const MAX_SAMPLES = 1_000_000;
const MAX_LABELS = 64;

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;

export class ExpositionError extends Error {
  override readonly name = 'ExpositionError';
}

/** Parses one scrape. Throws only when the input is past the size or sample bounds. */
export function parseExposition(text: string): Exposition {
  if (text.length > MAX_EXPOSITION_BYTES) throw new ExpositionError(`the scrape is ${text.length} bytes, more than the ${MAX_EXPOSITION_BYTES} read`);
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  let skipped = 0;
  for (const raw of text.split('\n')) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '' || /^\s*$/.test(line)) continue;
    if (line.startsWith('#')) {
      const m = /^#\s+TYPE\s+([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(counter|gauge|histogram|summary|untyped)\s*$/.exec(line);
      if (m) types.set(m[1]!, m[2]!);
      continue;
    }
    const sample = parseSample(line);
    if (!sample) {
      skipped++;
      continue;
    }
    if (samples.length >= MAX_SAMPLES) throw new ExpositionError(`the scrape has more than ${MAX_SAMPLES} samples`);
    samples.push(sample);
  }
  return { samples, types, skipped };
}

function parseSample(line: string): Sample | undefined {
  const name = NAME.exec(line)?.[0];
  if (!name) return undefined;
  let i = name.length;
  const labels: Record<string, string> = Object.create(null) as Record<string, string>;
  if (line[i] === '{') {
    i++;
    let count = 0;
    for (;;) {
      while (line[i] === ' ' || line[i] === ',') i++;
      if (line[i] === '}') { i++; break; }
      const key = LABEL_NAME.exec(line.slice(i))?.[0];
      if (!key || ++count > MAX_LABELS) return undefined;
      i += key.length;
      while (line[i] === ' ') i++;
      if (line[i] !== '=') return undefined;
      i++;
      while (line[i] === ' ') i++;
      if (line[i] !== '"') return undefined;
      i++;
      let value = '';
      for (;;) {
        const c = line[i];
        if (c === undefined) return undefined;
        if (c === '"') { i++; break; }
        if (c === '\\') {
          const next = line[i + 1];
          value += next === 'n' ? '\n' : next === '\\' ? '\\' : next === '"' ? '"' : `\\${next ?? ''}`;
          i += 2;
          continue;
        }
        value += c;
        i++;
      }
      labels[key] = value;
    }
  }
  const rest = line.slice(i).trim().split(/\s+/);
  if (rest.length < 1 || rest.length > 2 || rest[0] === '') return undefined;
  const value = parseValue(rest[0]!);
  if (value === undefined) return undefined;
  return { name, labels, value };
}

function parseValue(text: string): number | undefined {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === 'NaN') return NaN;
  if (!/^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/.test(text)) return undefined;
  return Number(text);
}
