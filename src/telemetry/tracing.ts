/**
 * Distributed tracing for the waypoint: W3C Trace Context and B3 propagation, Istio-style
 * sampling (parent-based, else a percentage, default 1%), spans, and an OTLP/HTTP JSON exporter
 * that batches to a collector (`<endpoint>/v1/traces`).
 *
 * Per request the waypoint extracts the caller's context, starts a server span under it, and
 * injects the span's context into the upstream request, replacing every incoming propagation
 * header so that downstream sees one consistent context. Unsampled requests still get a new
 * span id (propagated with the sampled flag off) but record nothing.
 */
import { randomFillSync } from 'node:crypto';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import type { Logger } from 'pino';
import { packageVersion } from '../util/package.js';
import { silentLogger } from './log.js';

// ---------------------------------------------------------------------------------------------
// Contexts and propagation

/** Request headers as node:http has them (incoming) or takes them (outgoing). */
export type HeaderMap = Record<string, string | string[] | number | undefined>;

/** The context a span runs in: what goes on the wire to the next hop. */
export interface SpanContext {
  /** 32 lowercase hex digits, never all zero. */
  traceId: string;
  /** 16 lowercase hex digits, never all zero. */
  spanId: string;
  sampled: boolean;
  /** The span this one is a child of (sent as `x-b3-parentspanid`). */
  parentSpanId?: string;
  /** W3C `tracestate`, carried through unchanged. */
  tracestate?: string;
  /** B3 debug (`x-b3-flags: 1`, `b3: ...-d`): sampled whatever the percentage. */
  debug?: boolean;
}

/**
 * The caller's context as read from request headers. `traceId` and `spanId` are both present, or
 * both absent for a sampling-only B3 header (`b3: 0`, `x-b3-sampled: 1` alone): a new trace with
 * that decision. `sampled` is absent when the caller deferred the decision (B3 without a flag).
 * A `SpanContext` is a `ParentContext` too (for a child span in this process).
 */
export interface ParentContext {
  traceId?: string;
  spanId?: string;
  sampled?: boolean;
  debug?: boolean;
  tracestate?: string;
  /** Which header it came from. */
  format?: 'w3c' | 'b3-single' | 'b3-multi';
}

export type PropagationFormat = 'w3c' | 'b3-multi' | 'b3-single';
export const DEFAULT_FORMATS: readonly PropagationFormat[] = ['w3c', 'b3-multi'];

/** Every header that carries trace context; `inject` rewrites them all. */
export const PROPAGATION_HEADERS = [
  'traceparent', 'tracestate', 'b3', 'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags',
] as const;
const PROPAGATION_SET: ReadonlySet<string> = new Set(PROPAGATION_HEADERS);

const ZERO_TRACE = '0'.repeat(32);
const ZERO_SPAN = '0'.repeat(16);
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const HEX16 = /^[0-9a-f]{16}$/;
const HEX16_OR_32 = /^(?:[0-9a-f]{16}){1,2}$/;
const TRACESTATE_MAX_CHARS = 512;
const TRACESTATE_MAX_MEMBERS = 32;
const TRACESTATE_KEY = /^(?:[a-z0-9][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})$/;
// 1 to 256 printable ASCII characters other than ',' and '=', not ending in a space.
const TRACESTATE_VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;

/**
 * Parses a W3C `traceparent`. Version 00 must be exactly `00-{trace}-{span}-{flags}`; a later
 * version is read leniently (its first four fields, then anything after a '-'), as the spec asks.
 * Version ff, bad lengths, non-lowercase hex and all-zero ids are rejected.
 */
export function parseTraceparent(value: string): { traceId: string; spanId: string; sampled: boolean } | undefined {
  const v = value.trim();
  if (v.length < 55) return undefined;
  const version = v.slice(0, 2);
  if (version === 'ff') return undefined;
  if (version === '00' ? v.length !== 55 : v.length > 55 && v[55] !== '-') return undefined;
  const m = TRACEPARENT.exec(v.slice(0, 55));
  if (!m || m[2] === ZERO_TRACE || m[3] === ZERO_SPAN) return undefined;
  return { traceId: m[2]!, spanId: m[3]!, sampled: (parseInt(m[4]!, 16) & 1) === 1 };
}

/**
 * Checks a W3C `tracestate` (at most 512 characters and 32 members, well-formed and unique keys)
 * and returns it unchanged, or undefined when it should be dropped.
 */
export function parseTracestate(value: string): string | undefined {
  const v = value.trim();
  if (v === '' || v.length > TRACESTATE_MAX_CHARS) return undefined;
  const keys = new Set<string>();
  for (const raw of v.split(',')) {
    const member = raw.trim();
    if (member === '') continue;
    const eq = member.indexOf('=');
    if (eq <= 0) return undefined;
    const key = member.slice(0, eq);
    if (!TRACESTATE_KEY.test(key) || !TRACESTATE_VALUE.test(member.slice(eq + 1)) || keys.has(key)) return undefined;
    keys.add(key);
    if (keys.size > TRACESTATE_MAX_MEMBERS) return undefined;
  }
  return keys.size > 0 ? v : undefined;
}

/** A B3 trace id (16 or 32 hex, any case) as 32 lowercase hex; a 64-bit id is left-padded. */
function b3TraceId(value: string | undefined): string | undefined {
  const v = value?.toLowerCase();
  if (v === undefined || !HEX16_OR_32.test(v)) return undefined;
  const id = v.padStart(32, '0');
  return id === ZERO_TRACE ? undefined : id;
}

function b3SpanId(value: string | undefined): string | undefined {
  const v = value?.toLowerCase();
  return v !== undefined && HEX16.test(v) && v !== ZERO_SPAN ? v : undefined;
}

/** Parses a single `b3` header: `{trace}-{span}[-{0|1|d}[-{parent}]]`, or just `0`, `1`, `d`. */
export function parseB3Single(value: string): ParentContext | undefined {
  const v = value.trim();
  if (v === '0') return { sampled: false, format: 'b3-single' };
  if (v === '1') return { sampled: true, format: 'b3-single' };
  if (v === 'd') return { sampled: true, debug: true, format: 'b3-single' };
  const parts = v.split('-');
  if (parts.length < 2 || parts.length > 4) return undefined;
  const [t, s, flag, parent] = parts;
  const traceId = b3TraceId(t);
  const spanId = b3SpanId(s);
  if (!traceId || !spanId) return undefined;
  if (parent !== undefined && !b3SpanId(parent)) return undefined;
  const ctx: ParentContext = { traceId, spanId, format: 'b3-single' };
  if (flag === '1') ctx.sampled = true;
  else if (flag === '0') ctx.sampled = false;
  else if (flag === 'd') {
    ctx.sampled = true;
    ctx.debug = true;
  }
  else if (flag !== undefined) return undefined;
  return ctx;
}

function b3Sampled(value: string | undefined): boolean | undefined {
  switch (value?.toLowerCase()) {
    case '1': case 'true': return true;
    case '0': case 'false': return false;
    default: return undefined;
  }
}

/** Parses the B3 multi headers (`x-b3-*`, names in lowercase). */
export function parseB3Multi(get: (name: string) => string | undefined): ParentContext | undefined {
  const debug = get('x-b3-flags') === '1';
  const sampledRaw = get('x-b3-sampled');
  const sampled = debug ? true : b3Sampled(sampledRaw);
  const rawTrace = get('x-b3-traceid');
  const rawSpan = get('x-b3-spanid');
  if (rawTrace === undefined && rawSpan === undefined) {
    if (sampled === undefined) return undefined;
    return { sampled, ...(debug ? { debug } : {}), format: 'b3-multi' };
  }
  const traceId = b3TraceId(rawTrace);
  const spanId = b3SpanId(rawSpan);
  if (!traceId || !spanId) return undefined;
  const parent = get('x-b3-parentspanid');
  if (parent !== undefined && !b3SpanId(parent)) return undefined;
  return { traceId, spanId, ...(sampled !== undefined ? { sampled } : {}), ...(debug ? { debug } : {}), format: 'b3-multi' };
}

/**
 * The caller's trace context: `traceparent` (with its `tracestate`) if valid, else `b3`, else the
 * `x-b3-*` headers. Invalid headers are ignored (undefined: a new trace); this never throws.
 */
export function extract(headers: HeaderMap): ParentContext | undefined {
  // One pass: header names may come in any case, and a repeated header is an array.
  const found = new Map<string, string | string[]>();
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    const name = k.toLowerCase();
    if (!PROPAGATION_SET.has(name)) continue;
    const value = typeof v === 'number' ? String(v) : v;
    const prev = found.get(name);
    found.set(name, prev === undefined ? value : [...[prev].flat(), ...[value].flat()]);
  }
  if (found.size === 0) return undefined;
  // A repeated context header is ambiguous: ignored (node:http joins unknown repeated headers with ", ").
  const single = (name: string): string | undefined => {
    const v = found.get(name);
    if (Array.isArray(v)) return v.length === 1 ? v[0]!.trim() : undefined;
    return v?.trim();
  };
  const traceparent = single('traceparent');
  const w3c = traceparent !== undefined ? parseTraceparent(traceparent) : undefined;
  if (w3c) {
    const ts = found.get('tracestate');
    const tracestate = ts === undefined ? undefined : parseTracestate(Array.isArray(ts) ? ts.join(',') : ts);
    return { ...w3c, ...(tracestate ? { tracestate } : {}), format: 'w3c' };
  }
  const b3 = single('b3');
  const fromSingle = b3 !== undefined ? parseB3Single(b3) : undefined;
  if (fromSingle) return fromSingle;
  return parseB3Multi(single);
}

/**
 * Writes `ctx` into outgoing headers (default: `traceparent` + `tracestate`, and the `x-b3-*`
 * headers), first removing every incoming propagation header (any case), so a stale `b3` or
 * `x-b3-parentspanid` never contradicts the new context.
 */
export function inject(ctx: SpanContext, headers: HeaderMap, formats: readonly PropagationFormat[] = DEFAULT_FORMATS): HeaderMap {
  for (const k of Object.keys(headers)) if (PROPAGATION_SET.has(k.toLowerCase())) delete headers[k];
  if (formats.includes('w3c')) {
    headers.traceparent = `00-${ctx.traceId}-${ctx.spanId}-${ctx.sampled ? '01' : '00'}`;
    if (ctx.tracestate) headers.tracestate = ctx.tracestate;
  }
  if (formats.includes('b3-multi')) {
    headers['x-b3-traceid'] = ctx.traceId;
    headers['x-b3-spanid'] = ctx.spanId;
    if (ctx.parentSpanId) headers['x-b3-parentspanid'] = ctx.parentSpanId;
    // B3: debug implies sampled, and is sent instead of x-b3-sampled.
    if (ctx.debug) headers['x-b3-flags'] = '1';
    else headers['x-b3-sampled'] = ctx.sampled ? '1' : '0';
  }
  if (formats.includes('b3-single')) {
    const flag = ctx.debug ? 'd' : ctx.sampled ? '1' : '0';
    headers.b3 = `${ctx.traceId}-${ctx.spanId}-${flag}${ctx.parentSpanId ? `-${ctx.parentSpanId}` : ''}`;
  }
  return headers;
}

// ---------------------------------------------------------------------------------------------
// Sampling

function quote(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/** A sampling percentage (number or numeric string) from 0 to 100; throws naming the bad value. */
export function parseSamplingPercent(value: unknown): number {
  const n = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > 100) throw new Error(`tracing sampling must be a number from 0 to 100, got ${quote(value)}`);
  return n;
}

/** Istio's default: 1% of new traces. */
export const DEFAULT_SAMPLING_PERCENT = 1;

/**
 * Parent-based sampling: B3 debug always samples; a parent's decision is honoured; a new trace
 * (or a deferred decision) is sampled with probability `percent`/100.
 */
export class Sampler {
  readonly percent: number;

  constructor(percent: number = DEFAULT_SAMPLING_PERCENT, private readonly random: () => number = Math.random) {
    this.percent = parseSamplingPercent(percent);
  }

  shouldSample(parent?: ParentContext): boolean {
    if (parent?.debug) return true;
    if (parent?.sampled !== undefined) return parent.sampled;
    if (this.percent <= 0) return false;
    if (this.percent >= 100) return true;
    return this.random() * 100 < this.percent;
  }
}

// ---------------------------------------------------------------------------------------------
// Spans

export type SpanKind = 'server' | 'client';
export type AttributeValue = string | number | boolean | bigint | readonly string[] | readonly number[] | readonly boolean[];
export type Attributes = Record<string, AttributeValue | undefined>;
export type StatusCode = 'unset' | 'ok' | 'error';

/** At most this many attributes per span (OpenTelemetry's default limit); more are counted as dropped. */
export const MAX_ATTRIBUTES = 128;

/** Unix time in nanoseconds with sub-millisecond resolution (performance.timeOrigin + performance.now()). */
export function nowUnixNano(): bigint {
  const origin = performance.timeOrigin;
  const now = performance.now();
  const o = Math.trunc(origin);
  const n = Math.trunc(now);
  return (BigInt(o) + BigInt(n)) * 1_000_000n + BigInt(Math.round((origin - o + (now - n)) * 1e6));
}

/** Unix milliseconds (fractions allowed) as unix nanoseconds. */
export function msToUnixNano(ms: number): bigint {
  const whole = Math.floor(ms);
  return BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1e6));
}

/** Random bytes drawn from a pool refilled 4 KiB at a time: one call into the CSPRNG per ~170 spans, not two per span. */
const idPool = Buffer.alloc(4096);
let idPoolUsed = idPool.length;

function randomId(bytes: number): string {
  for (;;) {
    if (idPoolUsed + bytes > idPool.length) {
      randomFillSync(idPool);
      idPoolUsed = 0;
    }
    const b = idPool.subarray(idPoolUsed, (idPoolUsed += bytes));
    if (b.some((x) => x !== 0)) return b.toString('hex');
  }
}

/** A finished span as exporters read it. */
export interface ReadableSpan {
  readonly name: string;
  readonly kind: SpanKind;
  readonly context: SpanContext;
  readonly startTimeUnixNano: bigint;
  readonly endTimeUnixNano: bigint | undefined;
  readonly attributes: ReadonlyMap<string, AttributeValue>;
  readonly droppedAttributesCount: number;
  readonly status: { readonly code: StatusCode; readonly message?: string };
}

/** Where ended, sampled spans go. */
export interface SpanSink {
  add(span: ReadableSpan): void;
  /** Counters for metrics (the OTLP exporter has them). */
  readonly stats?: ExportStats;
  flush?(): Promise<void>;
  close?(): Promise<void>;
}

export class Span implements ReadableSpan {
  readonly startTimeUnixNano: bigint;
  private end_?: bigint;
  private readonly attrs = new Map<string, AttributeValue>();
  private dropped = 0;
  private status_: { code: StatusCode; message?: string } = { code: 'unset' };

  constructor(
    readonly name: string,
    readonly kind: SpanKind,
    readonly context: SpanContext,
    private readonly sink: SpanSink | undefined,
    private readonly clock: () => bigint,
    startTimeUnixNano?: bigint,
  ) {
    this.startTimeUnixNano = startTimeUnixNano ?? clock();
  }

  /** Whether this span records (it is sampled); an unsampled span only propagates. */
  get recording(): boolean {
    return this.context.sampled;
  }

  get ended(): boolean {
    return this.end_ !== undefined;
  }

  get endTimeUnixNano(): bigint | undefined {
    return this.end_;
  }

  get attributes(): ReadonlyMap<string, AttributeValue> {
    return this.attrs;
  }

  get droppedAttributesCount(): number {
    return this.dropped;
  }

  get status(): { readonly code: StatusCode; readonly message?: string } {
    return this.status_;
  }

  /** Sets one attribute (undefined is ignored); no-op once ended or when not recording. */
  setAttribute(key: string, value: AttributeValue | undefined): this {
    if (value === undefined || !this.recording || this.ended) return this;
    if (!this.attrs.has(key) && this.attrs.size >= MAX_ATTRIBUTES) this.dropped++;
    else this.attrs.set(key, value);
    return this;
  }

  setAttributes(attributes: Attributes): this {
    for (const [k, v] of Object.entries(attributes)) this.setAttribute(k, v);
    return this;
  }

  /** OpenTelemetry's rules: 'ok' is final; a message goes with 'error' only. */
  setStatus(code: 'ok' | 'error', message?: string): this {
    if (!this.recording || this.ended || this.status_.code === 'ok') return this;
    this.status_ = code === 'error' && message !== undefined ? { code, message } : { code };
    return this;
  }

  /** Ends the span (once) at `endTimeMs` (unix ms, fractions allowed) or now, and hands it to the exporter. */
  end(endTimeMs?: number): void {
    if (this.ended) return;
    const end = endTimeMs === undefined ? this.clock() : msToUnixNano(endTimeMs);
    this.end_ = end < this.startTimeUnixNano ? this.startTimeUnixNano : end;
    if (this.recording) this.sink?.add(this);
  }
}

export interface StartSpanOptions {
  name: string;
  kind: SpanKind;
  /** The caller's context (from `extract`) or a local span's. None: a new trace. */
  parent?: ParentContext;
  attributes?: Attributes;
  /** Unix ms (fractions allowed); default now. */
  startTimeMs?: number;
}

export interface TracerOptions {
  /** Default: 1% (parent-based). */
  sampler?: Sampler;
  /** Where sampled spans go when they end; none: nothing is recorded (context still propagates). */
  sink?: SpanSink;
  /** Unix nanoseconds; default `nowUnixNano`. */
  clock?: () => bigint;
}

export interface ExportStats {
  /** Spans the collector accepted. */
  exported: number;
  /** Spans dropped before sending (queue full, or added after close). */
  dropped: number;
  /** Export requests that failed (error, timeout, non-2xx). */
  failedExports: number;
  /** Spans lost in failed requests or rejected by the collector. */
  failedSpans: number;
}

export class Tracer {
  readonly sampler: Sampler;
  private readonly sink: SpanSink | undefined;
  private readonly clock: () => bigint;

  constructor(opts: TracerOptions = {}) {
    this.sampler = opts.sampler ?? new Sampler();
    this.sink = opts.sink;
    this.clock = opts.clock ?? nowUnixNano;
  }

  startSpan(opts: StartSpanOptions): Span {
    const parent = opts.parent;
    const sampled = this.sampler.shouldSample(parent);
    const remote = parent?.traceId !== undefined && parent.spanId !== undefined;
    const context: SpanContext = {
      traceId: remote ? parent.traceId! : randomId(16),
      spanId: randomId(8),
      sampled,
      ...(remote ? { parentSpanId: parent.spanId! } : {}),
      ...(remote && parent.tracestate ? { tracestate: parent.tracestate } : {}),
      ...(parent?.debug ? { debug: true } : {}),
    };
    const span = new Span(opts.name, opts.kind, context, this.sink, this.clock, opts.startTimeMs === undefined ? undefined : msToUnixNano(opts.startTimeMs));
    if (opts.attributes) span.setAttributes(opts.attributes);
    return span;
  }

  /** The exporter's counters (zeros without one), for metrics. */
  get stats(): ExportStats {
    const s = this.sink?.stats;
    return s ? { ...s } : { exported: 0, dropped: 0, failedExports: 0, failedSpans: 0 };
  }

  flush(): Promise<void> {
    return this.sink?.flush?.() ?? Promise.resolve();
  }

  /** Flushes what is queued and stops the exporter. */
  close(): Promise<void> {
    return this.sink?.close?.() ?? Promise.resolve();
  }
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP JSON export

export interface OtlpHttpExporterOptions {
  /** The collector, e.g. `http://collector.observability:4318` (`/v1/traces` is appended unless there). */
  endpoint: string;
  /** `service.name` of the resource, e.g. `waypoint.shop`. */
  serviceName: string;
  resourceAttributes?: Record<string, AttributeValue>;
  /** The instrumentation scope's version; default ambit's package version. */
  scopeVersion?: string;
  /** Extra request headers (e.g. a tenant or auth header). */
  headers?: Record<string, string>;
  /** Default 1000. */
  flushIntervalMs?: number;
  /** Spans per request, and the queue length that triggers one early. Default 512. */
  maxBatchSize?: number;
  /** Spans waiting at most; more are dropped (the newest). Default 2048. */
  maxQueueSize?: number;
  /** Per request. Default 5000. */
  timeoutMs?: number;
  log?: Logger;
}

export const SCOPE_NAME = 'ambit';
const KIND: Record<SpanKind, number> = { server: 2, client: 3 };
const STATUS: Record<StatusCode, number> = { unset: 0, ok: 1, error: 2 };
/** Failures are logged at warn at most this often (the rest at debug). */
const WARN_EVERY_MS = 30_000;
const MAX_RESPONSE_BYTES = 64 * 1024;

export type OtlpAnyValue =
  | { stringValue: string }
  | { boolValue: boolean }
  | { intValue: string }
  | { doubleValue: number | string }
  | { arrayValue: { values: OtlpAnyValue[] } };
export interface OtlpKeyValue { key: string; value: OtlpAnyValue }

/** One attribute value in OTLP JSON: int64 as a decimal string, non-finite doubles as "NaN"/"Infinity". */
export function otlpValue(v: AttributeValue): OtlpAnyValue {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'bigint') return { intValue: v.toString() };
  if (typeof v === 'number') {
    if (Number.isSafeInteger(v)) return { intValue: String(v) };
    return { doubleValue: Number.isFinite(v) ? v : String(v) };
  }
  return { arrayValue: { values: (v as readonly (string | number | boolean)[]).map(otlpValue) } };
}

function otlpAttributes(attrs: Iterable<[string, AttributeValue]>): OtlpKeyValue[] {
  return Array.from(attrs, ([key, v]) => ({ key, value: otlpValue(v) }));
}

/** One span in OTLP JSON (ids in lowercase hex, kind and status as enum numbers, times as decimal strings). */
export function otlpSpan(span: ReadableSpan): Record<string, unknown> {
  const c = span.context;
  return {
    traceId: c.traceId,
    spanId: c.spanId,
    ...(c.tracestate ? { traceState: c.tracestate } : {}),
    ...(c.parentSpanId ? { parentSpanId: c.parentSpanId } : {}),
    name: span.name,
    kind: KIND[span.kind],
    startTimeUnixNano: span.startTimeUnixNano.toString(),
    endTimeUnixNano: (span.endTimeUnixNano ?? span.startTimeUnixNano).toString(),
    attributes: otlpAttributes(span.attributes),
    ...(span.droppedAttributesCount > 0 ? { droppedAttributesCount: span.droppedAttributesCount } : {}),
    status: { code: STATUS[span.status.code], ...(span.status.message !== undefined ? { message: span.status.message } : {}) },
  };
}

/** `<endpoint>/v1/traces`, unless the endpoint already ends so; throws for a non-http(s) URL. */
export function tracesUrl(endpoint: string): URL {
  const url = parseEndpoint(endpoint);
  if (!/\/v1\/traces\/?$/.test(url.pathname)) url.pathname = `${url.pathname.replace(/\/+$/, '')}/v1/traces`;
  return url;
}

function parseEndpoint(endpoint: unknown): URL {
  let url: URL | undefined;
  try {
    url = typeof endpoint === 'string' ? new URL(endpoint.trim()) : undefined;
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) {
    throw new Error(`tracing endpoint must be an http(s) URL, got ${quote(endpoint)}`);
  }
  return url;
}

function positiveInt(name: string, value: number | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  if (!Number.isInteger(value) || value <= 0) throw new Error(`tracing ${name} must be a positive integer, got ${quote(value)}`);
  return value;
}

/**
 * Batches spans and POSTs them as OTLP/HTTP JSON, one request at a time: every `flushIntervalMs`,
 * or as soon as `maxBatchSize` are waiting. Failures are logged and counted, never thrown.
 */
export class OtlpHttpExporter implements SpanSink {
  readonly url: URL;
  readonly stats: ExportStats = { exported: 0, dropped: 0, failedExports: 0, failedSpans: 0 };
  private readonly log: Logger;
  private readonly resource: OtlpKeyValue[];
  private readonly scope: { name: string; version: string };
  private readonly headers: Record<string, string>;
  private readonly maxBatchSize: number;
  private readonly maxQueueSize: number;
  private readonly timeoutMs: number;
  private readonly agent: HttpAgent;
  private readonly timer: NodeJS.Timeout;
  private queue: ReadableSpan[] = [];
  /** Spans ever queued, and ever taken off the queue (for flush to know when its spans are gone). */
  private enqueued = 0;
  private dequeued = 0;
  private inflight: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private lastWarn = -Infinity;
  private suppressed = 0;

  constructor(opts: OtlpHttpExporterOptions) {
    this.url = tracesUrl(opts.endpoint);
    this.log = opts.log ?? silentLogger;
    this.resource = otlpAttributes(Object.entries({ ...opts.resourceAttributes, 'service.name': opts.serviceName }));
    this.scope = { name: SCOPE_NAME, version: opts.scopeVersion ?? packageVersion() };
    this.headers = { ...opts.headers };
    const interval = positiveInt('flush interval', opts.flushIntervalMs, 1000);
    this.maxBatchSize = positiveInt('batch size', opts.maxBatchSize, 512);
    this.maxQueueSize = positiveInt('queue size', opts.maxQueueSize, 2048);
    this.timeoutMs = positiveInt('export timeout', opts.timeoutMs, 5000);
    const agentOpts = { keepAlive: true, maxSockets: 1 };
    this.agent = this.url.protocol === 'https:' ? new HttpsAgent(agentOpts) : new HttpAgent(agentOpts);
    this.timer = setInterval(() => void this.pump(), interval);
    this.timer.unref();
  }

  /** Spans waiting to be sent. */
  get queued(): number {
    return this.queue.length;
  }

  add(span: ReadableSpan): void {
    if (this.closing || this.queue.length >= this.maxQueueSize) {
      this.stats.dropped++;
      return;
    }
    this.queue.push(span);
    this.enqueued++;
    if (this.queue.length >= this.maxBatchSize) void this.pump();
  }

  /** Sends everything queued now (in batches, one request at a time); resolves when done, never rejects. */
  async flush(): Promise<void> {
    const target = this.enqueued;
    while (this.dequeued < target) await (this.inflight ?? this.pump());
    await this.inflight;
  }

  /** Flushes once, stops the timer and closes the connection. Spans added later are dropped. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer);
      await this.flush();
      this.agent.destroy();
    })();
    return this.closing;
  }

  /** Starts sending one batch unless a request is in flight; a full batch waiting follows at once. */
  private pump(): Promise<void> {
    if (this.inflight) return this.inflight;
    if (this.queue.length === 0) return Promise.resolve();
    const batch = this.queue.splice(0, this.maxBatchSize);
    this.dequeued += batch.length;
    this.inflight = this.send(batch).finally(() => {
      this.inflight = undefined;
      if (this.queue.length >= this.maxBatchSize) void this.pump();
    });
    return this.inflight;
  }

  /** The OTLP ExportTraceServiceRequest for some spans. */
  body(spans: readonly ReadableSpan[]): { resourceSpans: unknown[] } {
    return {
      resourceSpans: [{
        resource: { attributes: this.resource },
        scopeSpans: [{ scope: this.scope, spans: spans.map(otlpSpan) }],
      }],
    };
  }

  private async send(batch: ReadableSpan[]): Promise<void> {
    try {
      const res = await this.post(JSON.stringify(this.body(batch)));
      if (res.status < 200 || res.status > 299) {
        this.failed(batch.length, `collector answered ${res.status}${res.body ? `: ${res.body.slice(0, 200)}` : ''}`);
        return;
      }
      const rejected = rejectedSpans(res.body);
      this.stats.exported += batch.length - rejected.count;
      if (rejected.count > 0) {
        this.stats.failedSpans += rejected.count;
        this.log.warn({ endpoint: this.url.href, rejected: rejected.count, reason: rejected.message }, 'collector rejected some spans');
      }
    } catch (err) {
      this.failed(batch.length, (err as Error).message);
    }
  }

  private failed(spans: number, reason: string): void {
    this.stats.failedExports++;
    this.stats.failedSpans += spans;
    const now = Date.now();
    if (now - this.lastWarn >= WARN_EVERY_MS) {
      this.log.warn({ endpoint: this.url.href, spans, reason, ...(this.suppressed ? { suppressed: this.suppressed } : {}) }, 'trace export failed');
      this.lastWarn = now;
      this.suppressed = 0;
    } else {
      this.suppressed++;
      this.log.debug({ endpoint: this.url.href, spans, reason }, 'trace export failed');
    }
  }

  private post(body: string): Promise<{ status: number; body: string }> {
    const u = this.url;
    const request = u.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | undefined, res?: { status: number; body: string }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(res!);
      };
      const req = request({
        protocol: u.protocol,
        hostname: u.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: u.port || undefined,
        path: `${u.pathname}${u.search}`,
        method: 'POST',
        agent: this.agent,
        ...(u.username ? { auth: `${decodeURIComponent(u.username)}:${decodeURIComponent(u.password)}` } : {}),
        headers: { ...this.headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      }, (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          if (size < MAX_RESPONSE_BYTES) chunks.push(c);
          size += c.length;
        });
        res.on('end', () => settle(undefined, { status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8').slice(0, MAX_RESPONSE_BYTES) }));
        res.on('error', (err) => settle(err));
        res.on('close', () => settle(new Error('response aborted')));
      });
      const timer = setTimeout(() => req.destroy(new Error(`timed out after ${this.timeoutMs} ms`)), this.timeoutMs);
      timer.unref();
      req.on('error', (err) => settle(err));
      req.end(body);
    });
  }
}

/** The collector's partial success answer, if any: `{"partialSuccess":{"rejectedSpans":"2","errorMessage":"..."}}`. */
function rejectedSpans(body: string): { count: number; message?: string } {
  if (!body.trim().startsWith('{')) return { count: 0 };
  try {
    const p = (JSON.parse(body) as { partialSuccess?: { rejectedSpans?: string | number; errorMessage?: string } }).partialSuccess;
    const count = Number(p?.rejectedSpans ?? 0);
    return { count: Number.isSafeInteger(count) && count > 0 ? count : 0, ...(p?.errorMessage ? { message: p.errorMessage } : {}) };
  } catch {
    return { count: 0 };
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration

export interface TracingOptions {
  /** `service.name`, e.g. `waypoint.shop`. */
  serviceName: string;
  /** OTLP/HTTP collector; none: context still propagates, nothing is exported. */
  endpoint?: string;
  /** Percentage of new traces sampled, 0–100; default 1. */
  samplingPercent?: number;
  resourceAttributes?: Record<string, AttributeValue>;
}

export const TRACING_ENDPOINT_ENV = 'AMBIT_TRACING_ENDPOINT';
export const TRACING_SAMPLING_ENV = 'AMBIT_TRACING_SAMPLING';

/** Checks tracing options, throwing an Error that names the bad value; returns them normalized. */
export function validateTracingOptions(opts: TracingOptions): TracingOptions {
  if (typeof opts.serviceName !== 'string' || opts.serviceName.trim() === '') {
    throw new Error(`tracing service name must be a non-empty string, got ${quote(opts.serviceName)}`);
  }
  const endpoint = typeof opts.endpoint === 'string' && opts.endpoint.trim() === '' ? undefined : opts.endpoint;
  if (endpoint !== undefined) parseEndpoint(endpoint);
  const samplingPercent = opts.samplingPercent === undefined ? DEFAULT_SAMPLING_PERCENT : parseSamplingPercent(opts.samplingPercent);
  return {
    serviceName: opts.serviceName.trim(),
    ...(endpoint !== undefined ? { endpoint: endpoint.trim() } : {}),
    samplingPercent,
    ...(opts.resourceAttributes ? { resourceAttributes: opts.resourceAttributes } : {}),
  };
}

/** Tracing options from AMBIT_TRACING_ENDPOINT and AMBIT_TRACING_SAMPLING (percent); throws on bad values. */
export function tracingFromEnv(env: Record<string, string | undefined>, serviceName: string): TracingOptions {
  const endpoint = env[TRACING_ENDPOINT_ENV]?.trim();
  const sampling = env[TRACING_SAMPLING_ENV];
  return validateTracingOptions({
    serviceName,
    ...(endpoint ? { endpoint } : {}),
    ...(sampling !== undefined && sampling.trim() !== '' ? { samplingPercent: parseSamplingPercent(sampling) } : {}),
  });
}

/** A tracer from options: parent-based sampling at the percentage, exporting to the endpoint if any. */
export function createTracer(
  options: TracingOptions,
  deps: { log?: Logger; random?: () => number; exporter?: Omit<OtlpHttpExporterOptions, 'endpoint' | 'serviceName' | 'resourceAttributes' | 'log'> } = {},
): Tracer {
  const o = validateTracingOptions(options);
  const sampler = new Sampler(o.samplingPercent, deps.random);
  const sink = o.endpoint
    ? new OtlpHttpExporter({
      ...deps.exporter, endpoint: o.endpoint, serviceName: o.serviceName,
      ...(o.resourceAttributes ? { resourceAttributes: o.resourceAttributes } : {}), ...(deps.log ? { log: deps.log } : {}),
    })
    : undefined;
  return new Tracer({ sampler, ...(sink ? { sink } : {}) });
}
