/**
 * The dashboard's trace store: an OTLP/HTTP receiver (JSON, `POST /v1/traces`, as ambit's
 * waypoints export and any OpenTelemetry SDK can) that keeps the most recent traces in memory,
 * so a slow hop can be found without running a collector.
 *
 * What arrives is untrusted: the body is bounded before parsing, every field is checked for its
 * type and shape, ids must be hex of the right length, and the store is bounded in traces and
 * spans per trace (the oldest trace goes first). A span that fails a check is counted and
 * skipped; a request none of whose spans could be read is answered 400 with the first reason.
 */

export const MAX_OTLP_BODY_BYTES = 4 * 1024 * 1024;
export const MAX_TRACES = 500;
export const MAX_SPANS_PER_TRACE = 500;
const MAX_ATTRIBUTES = 64;
const MAX_STRING = 1024;

export interface StoredSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  name: string;
  service: string;
  kind: number;
  /** Milliseconds since the epoch, with sub-millisecond precision. */
  startMs: number;
  durationMs: number;
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  status: number;
  attributes: Record<string, string | number | boolean>;
}

export interface TraceSummary {
  traceId: string;
  root: string;
  service: string;
  startMs: number;
  durationMs: number;
  spans: number;
  errors: number;
}

export class OtlpError extends Error {
  override readonly name = 'OtlpError';
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v.slice(0, MAX_STRING) : undefined);

/** OTLP JSON's AnyValue, flattened to a scalar (arrays and maps as JSON text). */
function anyValue(v: unknown): string | number | boolean | undefined {
  if (!isObject(v)) return undefined;
  if (typeof v.stringValue === 'string') return v.stringValue.slice(0, MAX_STRING);
  if (typeof v.boolValue === 'boolean') return v.boolValue;
  if (typeof v.intValue === 'string' || typeof v.intValue === 'number') return Number(v.intValue);
  if (typeof v.doubleValue === 'number') return v.doubleValue;
  if (v.arrayValue !== undefined || v.kvlistValue !== undefined) return JSON.stringify(v.arrayValue ?? v.kvlistValue).slice(0, MAX_STRING);
  return undefined;
}

function attributes(list: unknown): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = Object.create(null) as Record<string, string | number | boolean>;
  if (!Array.isArray(list)) return out;
  for (const kv of list.slice(0, MAX_ATTRIBUTES)) {
    if (!isObject(kv) || typeof kv.key !== 'string') continue;
    const value = anyValue(kv.value);
    if (value !== undefined) out[kv.key.slice(0, 256)] = value;
  }
  return out;
}

/** Nanoseconds as OTLP JSON writes them (a decimal string, or a number) → milliseconds. */
function nanosToMs(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v / 1e6;
  if (typeof v === 'string' && /^[0-9]{1,20}$/.test(v)) return Number(BigInt(v) / 1000n) / 1000;
  return undefined;
}

/** Reads one OTLP/HTTP JSON request's spans; throws OtlpError when nothing in it is a span. */
export function parseOtlpJson(body: string): { spans: StoredSpan[]; rejected: number; firstReason?: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(body);
  } catch (err) {
    throw new OtlpError(`not JSON: ${(err as Error).message}`);
  }
  if (!isObject(doc) || !Array.isArray(doc.resourceSpans)) throw new OtlpError('expected an ExportTraceServiceRequest: {"resourceSpans": [...]}');
  const spans: StoredSpan[] = [];
  let rejected = 0;
  let firstReason: string | undefined;
  const reject = (why: string) => {
    rejected++;
    firstReason ??= why;
  };
  for (const rs of doc.resourceSpans) {
    if (!isObject(rs)) { reject('resourceSpans[] entry is not an object'); continue; }
    const resource = attributes(isObject(rs.resource) ? rs.resource.attributes : undefined);
    const service = String(resource['service.name'] ?? 'unknown');
    for (const ss of Array.isArray(rs.scopeSpans) ? rs.scopeSpans : []) {
      if (!isObject(ss) || !Array.isArray(ss.spans)) { reject('scopeSpans[] entry has no spans array'); continue; }
      for (const s of ss.spans) {
        if (!isObject(s)) { reject('span is not an object'); continue; }
        const traceId = str(s.traceId)?.toLowerCase();
        const spanId = str(s.spanId)?.toLowerCase();
        const parent = str(s.parentSpanId)?.toLowerCase();
        const start = nanosToMs(s.startTimeUnixNano);
        const end = nanosToMs(s.endTimeUnixNano);
        if (!traceId || !HEX32.test(traceId)) { reject(`traceId must be 32 hex digits (OTLP JSON), got ${JSON.stringify(str(s.traceId)?.slice(0, 40) ?? null)}`); continue; }
        if (!spanId || !HEX16.test(spanId)) { reject(`spanId must be 16 hex digits, got ${JSON.stringify(str(s.spanId)?.slice(0, 40) ?? null)}`); continue; }
        if (parent && !HEX16.test(parent)) { reject('parentSpanId must be 16 hex digits or empty'); continue; }
        if (start === undefined || end === undefined) { reject('startTimeUnixNano and endTimeUnixNano must be nanoseconds'); continue; }
        spans.push({
          traceId, spanId, parentSpanId: parent || null, name: str(s.name) ?? '', service,
          kind: typeof s.kind === 'number' ? s.kind : 0,
          startMs: start, durationMs: Math.max(0, end - start),
          status: isObject(s.status) && typeof s.status.code === 'number' ? s.status.code : 0,
          attributes: attributes(s.attributes),
        });
      }
    }
  }
  if (spans.length === 0 && rejected > 0) throw new OtlpError(`no span could be read: ${firstReason}`);
  return { spans, rejected, ...(firstReason ? { firstReason } : {}) };
}

export class TraceStore {
  /** Insertion order is age: the first key is the oldest trace. */
  private readonly traces = new Map<string, StoredSpan[]>();
  received = 0;
  rejected = 0;
  dropped = 0;

  constructor(private readonly maxTraces = MAX_TRACES, private readonly maxSpans = MAX_SPANS_PER_TRACE) {}

  add(spans: readonly StoredSpan[]): void {
    for (const span of spans) {
      let list = this.traces.get(span.traceId);
      if (!list) {
        if (this.traces.size >= this.maxTraces) this.traces.delete(this.traces.keys().next().value!);
        list = [];
        this.traces.set(span.traceId, list);
      }
      if (list.length >= this.maxSpans || list.some((s) => s.spanId === span.spanId)) {
        this.dropped++;
        continue;
      }
      list.push(span);
      this.received++;
    }
  }

  /** The most recent traces first. */
  list(limit = 100): TraceSummary[] {
    return [...this.traces.values()].reverse().slice(0, limit).map(summary);
  }

  get(traceId: string): StoredSpan[] | undefined {
    const spans = this.traces.get(traceId.toLowerCase());
    return spans ? [...spans].sort((a, b) => a.startMs - b.startMs) : undefined;
  }
}

function summary(spans: StoredSpan[]): TraceSummary {
  const ids = new Set(spans.map((s) => s.spanId));
  const roots = spans.filter((s) => !s.parentSpanId || !ids.has(s.parentSpanId));
  const root = roots.sort((a, b) => a.startMs - b.startMs)[0] ?? spans[0]!;
  const start = Math.min(...spans.map((s) => s.startMs));
  const end = Math.max(...spans.map((s) => s.startMs + s.durationMs));
  return { traceId: root.traceId, root: root.name, service: root.service, startMs: start, durationMs: end - start, spans: spans.length, errors: spans.filter((s) => s.status === 2).length };
}
