/**
 * Tracing: W3C traceparent/tracestate and both B3 forms, their precedence, injection (round trip,
 * stale headers removed), parent-based sampling with a seeded random, spans, and the OTLP/HTTP
 * JSON exporter against a real collector on loopback (shape, batching, overflow, failures, close).
 */
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino, type Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createTracer, extract, inject, msToUnixNano, nowUnixNano, otlpValue, OtlpHttpExporter, parseTraceparent, parseTracestate,
  Sampler, Tracer, tracesUrl, tracingFromEnv, validateTracingOptions,
  type HeaderMap, type OtlpHttpExporterOptions, type ReadableSpan, type SpanContext, type SpanSink,
} from '../../src/telemetry/tracing.js';
import { seeded } from './helpers/random.js';

const T = '4bf92f3577b34da6a3ce929d0e0e4736';
const S = '00f067aa0ba902b7';
const P = 'e457b5a2e4d86bd1';
const tp = (flags = '01', trace = T, span = S, version = '00') => `${version}-${trace}-${span}-${flags}`;

class MemorySink implements SpanSink {
  spans: ReadableSpan[] = [];
  add(span: ReadableSpan): void {
    this.spans.push(span);
  }
}

describe('W3C traceparent', () => {
  it('parses a sampled and an unsampled version 00 header', () => {
    expect(parseTraceparent(tp('01'))).toEqual({ traceId: T, spanId: S, sampled: true });
    expect(parseTraceparent(tp('00'))).toEqual({ traceId: T, spanId: S, sampled: false });
  });

  it('reads only the sampled bit of the flags', () => {
    expect(parseTraceparent(tp('03'))?.sampled).toBe(true);
    expect(parseTraceparent(tp('02'))?.sampled).toBe(false);
  });

  it.each([
    ['all-zero trace id', tp('01', '0'.repeat(32))],
    ['all-zero span id', tp('01', T, '0'.repeat(16))],
    ['uppercase hex', tp('01', T.toUpperCase())],
    ['uppercase flags', tp('0A')],
    ['version ff', tp('01', T, S, 'ff')],
    ['non-hex version', tp('01', T, S, 'zz')],
    ['short trace id', tp('01', T.slice(1))],
    ['long span id', `00-${T}-${S}0-01`],
    ['version 00 with trailing data', `${tp()}-extra`],
    ['too short', '00-abc-def-01'],
    ['wrong separators', tp().replace(/-/g, '_')],
    ['empty', ''],
  ])('rejects %s', (_what, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
    expect(extract({ traceparent: value })).toBeUndefined();
  });

  it('parses a future version leniently, but not without a dash after the known fields', () => {
    expect(parseTraceparent(tp('01', T, S, '01'))).toEqual({ traceId: T, spanId: S, sampled: true });
    expect(parseTraceparent(`${tp('01', T, S, 'cc')}-what-the-future-holds`)).toEqual({ traceId: T, spanId: S, sampled: true });
    expect(parseTraceparent(`${tp('01', T, S, 'cc')}xyz`)).toBeUndefined();
  });

  it('extracts with tracestate carried unchanged, whatever the header name case', () => {
    const tracestate = 'congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,  vendor@tenant=x';
    expect(extract({ Traceparent: tp(), TraceState: tracestate })).toEqual({ traceId: T, spanId: S, sampled: true, tracestate, format: 'w3c' });
  });

  it('joins repeated tracestate headers', () => {
    expect(extract({ traceparent: tp(), tracestate: ['a=1', 'b=2'] })?.tracestate).toBe('a=1,b=2');
  });

  it('drops a tracestate over 512 characters or 32 members, keeps 32', () => {
    const members = (n: number) => Array.from({ length: n }, (_, i) => `k${i}=v`).join(',');
    expect(parseTracestate(members(32))).toBe(members(32));
    expect(parseTracestate(members(33))).toBeUndefined();
    expect(parseTracestate(`a=${'x'.repeat(255)},b=${'y'.repeat(255)}`)).toBeUndefined();
    const ctx = extract({ traceparent: tp(), tracestate: members(33) });
    expect(ctx?.traceId).toBe(T);
    expect(ctx?.tracestate).toBeUndefined();
  });

  it.each([['no equals sign', 'abc'], ['uppercase key', 'Key=v'], ['comma-less bad value', 'a=b=c'], ['duplicate keys', 'a=1,a=2'], ['empty', ' , ']])(
    'drops a malformed tracestate (%s)', (_what, value) => {
      expect(parseTracestate(value)).toBeUndefined();
    },
  );

  it('ignores tracestate without a valid traceparent, and repeated traceparents', () => {
    expect(extract({ traceparent: tp('01', '0'.repeat(32)), tracestate: 'a=1' })).toBeUndefined();
    expect(extract({ traceparent: [tp(), tp('00')] })).toBeUndefined();
    expect(extract({ traceparent: `${tp()}, ${tp('00')}` })).toBeUndefined();
  });
});

describe('B3 single header', () => {
  it('parses trace-span-sampled-parent', () => {
    expect(extract({ b3: `${T}-${S}-1-${P}` })).toEqual({ traceId: T, spanId: S, sampled: true, format: 'b3-single' });
    expect(extract({ b3: `${T}-${S}-0` })).toEqual({ traceId: T, spanId: S, sampled: false, format: 'b3-single' });
  });

  it('left-pads a 64-bit trace id and leaves a missing decision deferred', () => {
    expect(extract({ b3: `a3ce929d0e0e4736-${S}` })).toEqual({ traceId: '0000000000000000a3ce929d0e0e4736', spanId: S, format: 'b3-single' });
  });

  it('takes d as debug (sampled)', () => {
    expect(extract({ b3: `${T}-${S}-d` })).toEqual({ traceId: T, spanId: S, sampled: true, debug: true, format: 'b3-single' });
  });

  it.each([
    ['0', { sampled: false, format: 'b3-single' }],
    ['1', { sampled: true, format: 'b3-single' }],
    ['d', { sampled: true, debug: true, format: 'b3-single' }],
  ])('parses the sampling-only form b3: %s', (value, want) => {
    expect(extract({ b3: value })).toEqual(want);
  });

  it.each([
    ['a bad flag', `${T}-${S}-x`],
    ['true as a flag', `${T}-${S}-true`],
    ['a short span id', `${T}-${S.slice(2)}-1`],
    ['a zero trace id', `${'0'.repeat(32)}-${S}-1`],
    ['a zero span id', `${T}-${'0'.repeat(16)}-1`],
    ['a 20-digit trace id', `${T.slice(0, 20)}-${S}-1`],
    ['a bad parent', `${T}-${S}-1-xyz`],
    ['too many fields', `${T}-${S}-1-${P}-1`],
    ['a lone trace id', T],
    ['garbage', 'true'],
  ])('ignores a header with %s', (_what, value) => {
    expect(extract({ b3: value })).toBeUndefined();
  });
});

describe('B3 multi headers', () => {
  it('parses trace, span, parent and sampled', () => {
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-parentspanid': P, 'x-b3-sampled': '1' }))
      .toEqual({ traceId: T, spanId: S, sampled: true, format: 'b3-multi' });
  });

  it.each([['1', true], ['true', true], ['True', true], ['0', false], ['false', false], ['maybe', undefined], [undefined, undefined]])(
    'reads x-b3-sampled %s as %s', (value, want) => {
      expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-sampled': value })?.sampled).toBe(want);
    },
  );

  it('left-pads a 64-bit trace id and lowercases ids', () => {
    expect(extract({ 'X-B3-TraceId': 'A3CE929D0E0E4736', 'X-B3-SpanId': S.toUpperCase() }))
      .toEqual({ traceId: '0000000000000000a3ce929d0e0e4736', spanId: S, format: 'b3-multi' });
  });

  it('takes x-b3-flags: 1 as debug, sampled even against x-b3-sampled: 0', () => {
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-sampled': '0', 'x-b3-flags': '1' }))
      .toEqual({ traceId: T, spanId: S, sampled: true, debug: true, format: 'b3-multi' });
  });

  it('takes a decision alone (no ids) as sampling-only', () => {
    expect(extract({ 'x-b3-sampled': '0' })).toEqual({ sampled: false, format: 'b3-multi' });
    expect(extract({ 'x-b3-flags': '1' })).toEqual({ sampled: true, debug: true, format: 'b3-multi' });
  });

  it('ignores incomplete or malformed headers', () => {
    expect(extract({ 'x-b3-traceid': T, 'x-b3-sampled': '1' })).toBeUndefined();
    expect(extract({ 'x-b3-spanid': S })).toBeUndefined();
    expect(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-parentspanid': 'nope' })).toBeUndefined();
    expect(extract({ 'x-b3-traceid': 'zz', 'x-b3-spanid': S })).toBeUndefined();
    expect(extract({ 'x-b3-traceid': [T, T], 'x-b3-spanid': S })).toBeUndefined();
  });
});

describe('extract precedence', () => {
  const B3M = { 'x-b3-traceid': '1'.repeat(32), 'x-b3-spanid': '2'.repeat(16), 'x-b3-sampled': '1' };
  const B3S = { b3: `${'3'.repeat(32)}-${'4'.repeat(16)}-0` };

  it('prefers a valid traceparent over both B3 forms', () => {
    expect(extract({ traceparent: tp('00'), ...B3S, ...B3M })).toMatchObject({ traceId: T, spanId: S, sampled: false, format: 'w3c' });
  });

  it('falls back to b3 when traceparent is invalid, then to x-b3-*', () => {
    expect(extract({ traceparent: tp('01', T.toUpperCase()), ...B3S, ...B3M })).toMatchObject({ traceId: '3'.repeat(32), format: 'b3-single' });
    expect(extract({ traceparent: 'junk', b3: 'junk', ...B3M })).toMatchObject({ traceId: '1'.repeat(32), format: 'b3-multi' });
  });

  it('returns undefined without context headers, and never throws on odd input', () => {
    expect(extract({})).toBeUndefined();
    expect(extract({ host: 'x', 'x-request-id': 'r' })).toBeUndefined();
    const odd: HeaderMap = { traceparent: 42, tracestate: [], b3: ['', ''], 'x-b3-traceid': undefined, 'x-b3-spanid': '\u0000'.repeat(16), 'x-b3-sampled': '' };
    expect(() => extract(odd)).not.toThrow();
    expect(extract(odd)).toBeUndefined();
  });
});

describe('inject', () => {
  const ctx: SpanContext = { traceId: T, spanId: P, sampled: true, parentSpanId: S, tracestate: 'a=1' };

  it('writes traceparent, tracestate and the x-b3 headers', () => {
    expect(inject(ctx, {})).toEqual({
      traceparent: `00-${T}-${P}-01`, tracestate: 'a=1',
      'x-b3-traceid': T, 'x-b3-spanid': P, 'x-b3-parentspanid': S, 'x-b3-sampled': '1',
    });
  });

  it('writes no parent span id for a root span, and sampled 0 when unsampled', () => {
    expect(inject({ traceId: T, spanId: P, sampled: false }, {})).toEqual({
      traceparent: `00-${T}-${P}-00`, 'x-b3-traceid': T, 'x-b3-spanid': P, 'x-b3-sampled': '0',
    });
  });

  it('removes stale context headers (any case) and keeps everything else', () => {
    const headers: HeaderMap = {
      host: 'reviews:9080', 'x-request-id': 'req-1', B3: `${'9'.repeat(32)}-${'9'.repeat(16)}-1`, 'X-B3-ParentSpanId': '8'.repeat(16),
      'x-b3-flags': '1', tracestate: 'old=1', traceparent: tp('01', '7'.repeat(32)), 'x-b3-sampled': '1',
    };
    inject({ traceId: T, spanId: P, sampled: false }, headers);
    expect(headers).toEqual({
      host: 'reviews:9080', 'x-request-id': 'req-1',
      traceparent: `00-${T}-${P}-00`, 'x-b3-traceid': T, 'x-b3-spanid': P, 'x-b3-sampled': '0',
    });
  });

  it('honours the formats asked for, and sends debug as x-b3-flags', () => {
    expect(inject(ctx, { b3: '1', 'x-b3-traceid': T }, ['w3c'])).toEqual({ traceparent: `00-${T}-${P}-01`, tracestate: 'a=1' });
    expect(inject(ctx, {}, ['b3-single'])).toEqual({ b3: `${T}-${P}-1-${S}` });
    expect(inject({ ...ctx, debug: true }, {}, ['b3-multi', 'b3-single'])).toEqual({
      'x-b3-traceid': T, 'x-b3-spanid': P, 'x-b3-parentspanid': S, 'x-b3-flags': '1', b3: `${T}-${P}-d-${S}`,
    });
  });

  it('round-trips: the next hop sees the same trace, with this span as its parent', () => {
    const tracer = new Tracer({ sampler: new Sampler(100) });
    const incoming = { traceparent: tp('01'), tracestate: 'congo=t61rcWkgMzE' };
    const server = tracer.startSpan({ name: 'in', kind: 'server', parent: extract(incoming) });
    const upstream = inject(server.context, { ...incoming });
    for (const headers of [upstream, { traceparent: upstream.traceparent }, { 'x-b3-traceid': upstream['x-b3-traceid'], 'x-b3-spanid': upstream['x-b3-spanid'], 'x-b3-sampled': upstream['x-b3-sampled'] }]) {
      const next = extract(headers);
      expect(next).toMatchObject({ traceId: T, spanId: server.context.spanId, sampled: true });
      const child = tracer.startSpan({ name: 'next', kind: 'server', parent: next });
      expect(child.context.traceId).toBe(T);
      expect(child.context.parentSpanId).toBe(server.context.spanId);
    }
    expect(extract(upstream)?.tracestate).toBe('congo=t61rcWkgMzE');
  });

  it('round-trips an unsampled and a 64-bit B3 context', () => {
    const tracer = new Tracer({ sampler: new Sampler(100) });
    const s = tracer.startSpan({ name: 'in', kind: 'server', parent: extract({ 'x-b3-traceid': 'a3ce929d0e0e4736', 'x-b3-spanid': S, 'x-b3-sampled': '0' }) });
    expect(s.context.sampled).toBe(false);
    const out = inject(s.context, {});
    expect(out['x-b3-traceid']).toBe('0000000000000000a3ce929d0e0e4736');
    expect(extract(out)).toMatchObject({ traceId: '0000000000000000a3ce929d0e0e4736', spanId: s.context.spanId, sampled: false });
  });
});

describe('Sampler', () => {
  it('defaults to 1%', () => {
    expect(new Sampler().percent).toBe(1);
  });

  it('honours the parent decision whatever the percentage', () => {
    expect(new Sampler(0).shouldSample({ traceId: T, spanId: S, sampled: true })).toBe(true);
    expect(new Sampler(100).shouldSample({ traceId: T, spanId: S, sampled: false })).toBe(false);
    expect(new Sampler(0).shouldSample(extract({ b3: '1' }))).toBe(true);
  });

  it('samples new traces with the given probability', () => {
    const sampler = new Sampler(25, seeded(42));
    let n = 0;
    for (let i = 0; i < 20_000; i++) if (sampler.shouldSample()) n++;
    expect(n / 20_000).toBeGreaterThan(0.23);
    expect(n / 20_000).toBeLessThan(0.27);
    expect(new Sampler(1, () => 0.0099).shouldSample()).toBe(true);
    expect(new Sampler(1, () => 0.01).shouldSample()).toBe(false);
  });

  it('uses the probability for a deferred B3 decision', () => {
    expect(new Sampler(50, () => 0.1).shouldSample(extract({ b3: `${T}-${S}` }))).toBe(true);
    expect(new Sampler(50, () => 0.9).shouldSample(extract({ b3: `${T}-${S}` }))).toBe(false);
  });

  it('never samples at 0%, always at 100%, without consulting random', () => {
    const random = () => {
      throw new Error('not called');
    };
    expect(new Sampler(0, random).shouldSample()).toBe(false);
    expect(new Sampler(100, random).shouldSample()).toBe(true);
  });

  it('always samples B3 debug, even at 0%', () => {
    expect(new Sampler(0).shouldSample(extract({ b3: 'd' }))).toBe(true);
    expect(new Sampler(0).shouldSample(extract({ 'x-b3-traceid': T, 'x-b3-spanid': S, 'x-b3-sampled': '0', 'x-b3-flags': '1' }))).toBe(true);
  });

  it.each([-1, 100.5, NaN, Infinity])('rejects %s percent', (p) => {
    expect(() => new Sampler(p)).toThrow(/tracing sampling must be a number from 0 to 100/);
  });
});

describe('Tracer and spans', () => {
  it('starts a new trace with fresh, non-zero lowercase hex ids', () => {
    const tracer = new Tracer({ sampler: new Sampler(100) });
    const ids = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const { context } = tracer.startSpan({ name: 'x', kind: 'server' });
      expect(context.traceId).toMatch(/^[0-9a-f]{32}$/);
      expect(context.spanId).toMatch(/^[0-9a-f]{16}$/);
      expect(context.traceId).not.toBe('0'.repeat(32));
      expect(context.parentSpanId).toBeUndefined();
      ids.add(context.spanId);
    }
    expect(ids.size).toBe(200);
  });

  it('starts a child of the caller with its trace id, parent span id and tracestate', () => {
    const tracer = new Tracer({ sampler: new Sampler(0) });
    const span = tracer.startSpan({ name: 'x', kind: 'server', parent: extract({ traceparent: tp(), tracestate: 'a=1' }) });
    expect(span.context).toMatchObject({ traceId: T, parentSpanId: S, sampled: true, tracestate: 'a=1' });
    expect(span.context.spanId).not.toBe(S);
  });

  it('starts a new trace for a sampling-only parent, keeping its decision and debug flag', () => {
    const span = new Tracer({ sampler: new Sampler(0) }).startSpan({ name: 'x', kind: 'server', parent: extract({ b3: 'd' }) });
    expect(span.context).toMatchObject({ sampled: true, debug: true });
    expect(span.context.parentSpanId).toBeUndefined();
  });

  it('records sampled spans: attributes, status, end once', () => {
    const sink = new MemorySink();
    const span = new Tracer({ sampler: new Sampler(100), sink }).startSpan({
      name: 'GET /reviews', kind: 'server', attributes: { 'http.request.method': 'GET', 'url.path': '/reviews', skipped: undefined },
    });
    span.setAttribute('http.response.status_code', 503).setAttribute('istio.canonical_service', 'reviews').setStatus('error', 'upstream reset');
    expect(span.recording).toBe(true);
    span.end();
    span.end();
    span.setAttribute('late', true).setStatus('ok');
    expect(sink.spans).toEqual([span]);
    expect(Object.fromEntries(span.attributes)).toEqual({
      'http.request.method': 'GET', 'url.path': '/reviews', 'http.response.status_code': 503, 'istio.canonical_service': 'reviews',
    });
    expect(span.status).toEqual({ code: 'error', message: 'upstream reset' });
  });

  it('keeps ok final and drops a message with ok', () => {
    const span = new Tracer({ sampler: new Sampler(100) }).startSpan({ name: 'x', kind: 'client' });
    span.setStatus('ok', 'ignored');
    expect(span.status).toEqual({ code: 'ok' });
    span.setStatus('error', 'too late');
    expect(span.status).toEqual({ code: 'ok' });
  });

  it('records nothing for an unsampled span, but gives it a context to propagate', () => {
    const sink = new MemorySink();
    const span = new Tracer({ sampler: new Sampler(0), sink }).startSpan({ name: 'x', kind: 'server', attributes: { a: 1 }, parent: extract({ traceparent: tp('00') }) });
    span.setAttribute('b', 2).setStatus('error');
    span.end();
    expect(span.recording).toBe(false);
    expect(span.attributes.size).toBe(0);
    expect(sink.spans).toHaveLength(0);
    expect(span.context).toMatchObject({ traceId: T, parentSpanId: S, sampled: false });
    expect(inject(span.context, {}).traceparent).toBe(`00-${T}-${span.context.spanId}-00`);
  });

  it('caps attributes at 128 and counts the rest as dropped', () => {
    const span = new Tracer({ sampler: new Sampler(100) }).startSpan({ name: 'x', kind: 'server' });
    for (let i = 0; i < 130; i++) span.setAttribute(`k${i}`, i);
    span.setAttribute('k0', 'replaced');
    expect(span.attributes.size).toBe(128);
    expect(span.droppedAttributesCount).toBe(2);
    expect(span.attributes.get('k0')).toBe('replaced');
  });

  it('takes times in unix nanoseconds with sub-millisecond resolution', () => {
    const before = BigInt(Date.now()) * 1_000_000n;
    const now = nowUnixNano();
    expect(now > before - 50_000_000n && now < before + 50_000_000n).toBe(true);
    expect(msToUnixNano(1_700_000_000_000.25)).toBe(1_700_000_000_000_250_000n);
    const span = new Tracer({ sampler: new Sampler(100) }).startSpan({ name: 'x', kind: 'server', startTimeMs: 1_700_000_000_000.5 });
    expect(span.startTimeUnixNano).toBe(1_700_000_000_000_500_000n);
    span.end(1_700_000_000_003.125);
    expect(span.endTimeUnixNano).toBe(1_700_000_000_003_125_000n);
  });

  it('never ends a span before it started', () => {
    const span = new Tracer({ sampler: new Sampler(100) }).startSpan({ name: 'x', kind: 'server', startTimeMs: 2000 });
    span.end(1000);
    expect(span.endTimeUnixNano).toBe(span.startTimeUnixNano);
  });
});

describe('OTLP JSON encoding', () => {
  it('encodes attribute values as OTLP AnyValues', () => {
    expect(otlpValue('a')).toEqual({ stringValue: 'a' });
    expect(otlpValue(200)).toEqual({ intValue: '200' });
    expect(otlpValue(-3)).toEqual({ intValue: '-3' });
    expect(otlpValue(1.5)).toEqual({ doubleValue: 1.5 });
    expect(otlpValue(2 ** 60)).toEqual({ doubleValue: 2 ** 60 });
    expect(otlpValue(NaN)).toEqual({ doubleValue: 'NaN' });
    expect(otlpValue(true)).toEqual({ boolValue: true });
    expect(otlpValue(2n ** 62n)).toEqual({ intValue: '4611686018427387904' });
    expect(otlpValue(['a', 'b'])).toEqual({ arrayValue: { values: [{ stringValue: 'a' }, { stringValue: 'b' }] } });
  });

  it.each([
    ['http://collector.observability:4318', 'http://collector.observability:4318/v1/traces'],
    ['http://collector.observability:4318/', 'http://collector.observability:4318/v1/traces'],
    ['https://otel.example.com/v1/traces', 'https://otel.example.com/v1/traces'],
    ['http://gw:4318/otlp', 'http://gw:4318/otlp/v1/traces'],
    ['http://[::1]:4318', 'http://[::1]:4318/v1/traces'],
  ])('sends %s to %s', (endpoint, want) => {
    expect(tracesUrl(endpoint).href).toBe(want);
  });

  it.each(['collector:4318', 'ftp://collector/', 'grpc://collector:4317', 'not a url', ''])('rejects the endpoint %j', (endpoint) => {
    expect(() => tracesUrl(endpoint)).toThrow(`tracing endpoint must be an http(s) URL, got ${JSON.stringify(endpoint)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// The exporter against a real collector on loopback

interface Received { method: string; path: string; headers: IncomingHttpHeaders; body: { resourceSpans: { resource: unknown; scopeSpans: { scope: unknown; spans: Record<string, unknown>[] }[] }[] } }

const servers: Server[] = [];
const exporters: OtlpHttpExporter[] = [];

afterEach(async () => {
  await Promise.all(exporters.splice(0).map((e) => e.close()));
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

/** A collector on 127.0.0.1; `answer` decides each response (default 200 `{}`). */
async function collector(answer?: (res: ServerResponse, n: number) => void): Promise<{ endpoint: string; received: Received[]; inFlight: () => number; maxInFlight: () => number }> {
  const received: Received[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const server = createServer((req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString()) as Received['body'] });
      if (answer) answer(res, received.length);
      else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received, inFlight: () => inFlight, maxInFlight: () => maxInFlight };
}

function exporter(opts: Partial<OtlpHttpExporterOptions> & { endpoint: string }): OtlpHttpExporter {
  const e = new OtlpHttpExporter({ serviceName: 'waypoint.shop', flushIntervalMs: 60_000, ...opts });
  exporters.push(e);
  return e;
}

function capture(): { log: Logger; lines: { level: number; msg: string; reason?: string }[] } {
  const lines: { level: number; msg: string; reason?: string }[] = [];
  const log: Logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as (typeof lines)[number]) });
  return { log, lines };
}

const recorder = (sink: SpanSink) => new Tracer({ sampler: new Sampler(100), sink });
const spans = (r: Received[]) => r.flatMap((x) => x.body.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)));

describe('OtlpHttpExporter', () => {
  it('POSTs OTLP/HTTP JSON to /v1/traces in exactly the OTLP shape', async () => {
    const c = await collector();
    const e = exporter({ endpoint: c.endpoint, resourceAttributes: { 'k8s.namespace.name': 'shop' }, scopeVersion: '1.2.3' });
    const tracer = recorder(e);
    const server = tracer.startSpan({
      name: 'reviews.shop.svc.cluster.local:9080/*', kind: 'server', parent: extract({ traceparent: tp(), tracestate: 'a=1' }), startTimeMs: 1_700_000_000_000.5,
      attributes: { 'http.request.method': 'GET', 'url.path': '/reviews/1', 'server.address': 'reviews.shop.svc.cluster.local', 'network.protocol.version': '1.1', upstream_cluster: 'outbound|9080||reviews', 'istio.canonical_service': 'reviews' },
    });
    server.setAttribute('http.response.status_code', 200).setAttribute('retried', false).setAttribute('ratio', 0.25).setStatus('ok');
    server.end(1_700_000_000_012.75);
    const client = tracer.startSpan({ name: 'upstream', kind: 'client', parent: server.context });
    client.setStatus('error', 'reset');
    client.end();
    await e.flush();

    expect(c.received).toHaveLength(1);
    const req = c.received[0]!;
    expect(req.method).toBe('POST');
    expect(req.path).toBe('/v1/traces');
    expect(req.headers['content-type']).toBe('application/json');
    expect(req.body).toEqual({
      resourceSpans: [{
        resource: { attributes: [{ key: 'k8s.namespace.name', value: { stringValue: 'shop' } }, { key: 'service.name', value: { stringValue: 'waypoint.shop' } }] },
        scopeSpans: [{
          scope: { name: 'ambit', version: '1.2.3' },
          spans: [
            {
              traceId: T, spanId: server.context.spanId, parentSpanId: S, traceState: 'a=1',
              name: 'reviews.shop.svc.cluster.local:9080/*', kind: 2,
              startTimeUnixNano: '1700000000000500000', endTimeUnixNano: '1700000000012750000',
              attributes: [
                { key: 'http.request.method', value: { stringValue: 'GET' } },
                { key: 'url.path', value: { stringValue: '/reviews/1' } },
                { key: 'server.address', value: { stringValue: 'reviews.shop.svc.cluster.local' } },
                { key: 'network.protocol.version', value: { stringValue: '1.1' } },
                { key: 'upstream_cluster', value: { stringValue: 'outbound|9080||reviews' } },
                { key: 'istio.canonical_service', value: { stringValue: 'reviews' } },
                { key: 'http.response.status_code', value: { intValue: '200' } },
                { key: 'retried', value: { boolValue: false } },
                { key: 'ratio', value: { doubleValue: 0.25 } },
              ],
              status: { code: 1 },
            },
            {
              traceId: T, spanId: client.context.spanId, parentSpanId: server.context.spanId, traceState: 'a=1',
              name: 'upstream', kind: 3, startTimeUnixNano: expect.stringMatching(/^\d{19}$/), endTimeUnixNano: expect.stringMatching(/^\d{19}$/),
              attributes: [], status: { code: 2, message: 'reset' },
            },
          ],
        }],
      }],
    });
    const sent = spans(c.received)[1]!;
    expect(BigInt(sent.endTimeUnixNano as string) >= BigInt(sent.startTimeUnixNano as string)).toBe(true);
    expect(e.stats).toEqual({ exported: 2, dropped: 0, failedExports: 0, failedSpans: 0 });
  });

  it('accepts an endpoint that already ends in /v1/traces', async () => {
    const c = await collector();
    const e = exporter({ endpoint: `${c.endpoint}/v1/traces` });
    recorder(e).startSpan({ name: 'x', kind: 'server' }).end();
    await e.flush();
    expect(c.received.map((r) => r.path)).toEqual(['/v1/traces']);
  });

  it('sends a batch as soon as maxBatchSize spans wait', async () => {
    const c = await collector();
    const e = exporter({ endpoint: c.endpoint, maxBatchSize: 3 });
    const tracer = recorder(e);
    for (let i = 0; i < 7; i++) tracer.startSpan({ name: `s${i}`, kind: 'server' }).end();
    await expect.poll(() => c.received.length, { timeout: 3000, interval: 5, message: 'two batches at the collector' }).toBe(2);
    expect(c.received.map((r) => spans([r]).length)).toEqual([3, 3]);
    expect(e.queued).toBe(1);
    await e.flush();
    expect(spans(c.received).map((s) => s.name)).toEqual(['s0', 's1', 's2', 's3', 's4', 's5', 's6']);
    expect(e.stats.exported).toBe(7);
  });

  it('sends what waits every flushIntervalMs', async () => {
    const c = await collector();
    const e = exporter({ endpoint: c.endpoint, flushIntervalMs: 30 });
    const tracer = recorder(e);
    tracer.startSpan({ name: 'a', kind: 'server' }).end();
    tracer.startSpan({ name: 'b', kind: 'server' }).end();
    await expect.poll(() => c.received.length, { timeout: 3000, interval: 5, message: 'the first batch at the collector' }).toBe(1);
    expect(spans(c.received).map((s) => s.name)).toEqual(['a', 'b']);
    tracer.startSpan({ name: 'c', kind: 'server' }).end();
    await expect.poll(() => c.received.length, { timeout: 3000, interval: 5, message: 'two batches at the collector' }).toBe(2);
    expect(spans(c.received).map((s) => s.name)).toEqual(['a', 'b', 'c']);
  });

  it('keeps one request in flight at a time', async () => {
    const c = await collector((res) => setTimeout(() => res.writeHead(200).end('{}'), 40));
    const e = exporter({ endpoint: c.endpoint, maxBatchSize: 2 });
    const tracer = recorder(e);
    for (let i = 0; i < 8; i++) tracer.startSpan({ name: `s${i}`, kind: 'server' }).end();
    await e.flush();
    expect(c.received).toHaveLength(4);
    expect(c.maxInFlight()).toBe(1);
    expect(e.stats.exported).toBe(8);
  });

  it('drops the newest spans when the queue is full, and counts them', async () => {
    const c = await collector();
    const e = exporter({ endpoint: c.endpoint, maxQueueSize: 5, maxBatchSize: 100 });
    const tracer = recorder(e);
    for (let i = 0; i < 8; i++) tracer.startSpan({ name: `s${i}`, kind: 'server' }).end();
    expect(e.stats.dropped).toBe(3);
    expect(tracer.stats.dropped).toBe(3);
    await e.flush();
    expect(spans(c.received).map((s) => s.name)).toEqual(['s0', 's1', 's2', 's3', 's4']);
  });

  it('counts and logs a collector answering 500, without throwing', async () => {
    const c = await collector((res) => res.writeHead(500).end('overloaded'));
    const { log, lines } = capture();
    const e = exporter({ endpoint: c.endpoint, log });
    const tracer = recorder(e);
    tracer.startSpan({ name: 'a', kind: 'server' }).end();
    tracer.startSpan({ name: 'b', kind: 'server' }).end();
    await expect(e.flush()).resolves.toBeUndefined();
    expect(e.stats).toEqual({ exported: 0, dropped: 0, failedExports: 1, failedSpans: 2 });
    expect(lines).toContainEqual(expect.objectContaining({ level: 40, msg: 'trace export failed', reason: 'collector answered 500: overloaded' }));
    // It goes on exporting afterwards.
    tracer.startSpan({ name: 'c', kind: 'server' }).end();
    await e.flush();
    expect(e.stats.failedExports).toBe(2);
    expect(c.received).toHaveLength(2);
  });

  it('counts a collector that is down as a failure, without throwing', async () => {
    const c = await collector();
    const down = c.endpoint;
    const s = servers.pop()!;
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
    const e = exporter({ endpoint: down });
    recorder(e).startSpan({ name: 'a', kind: 'server' }).end();
    await e.flush();
    expect(e.stats).toMatchObject({ exported: 0, failedExports: 1, failedSpans: 1 });
  });

  it('gives up on a collector that does not answer within timeoutMs', async () => {
    const c = await collector(() => { /* never answers */ });
    const e = exporter({ endpoint: c.endpoint, timeoutMs: 100 });
    recorder(e).startSpan({ name: 'a', kind: 'server' }).end();
    const t0 = Date.now();
    await e.flush();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(e.stats).toMatchObject({ exported: 0, failedExports: 1, failedSpans: 1 });
  });

  it('counts spans a collector rejects in a partial success', async () => {
    const c = await collector((res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"partialSuccess":{"rejectedSpans":"1","errorMessage":"bad span"}}'));
    const e = exporter({ endpoint: c.endpoint });
    const tracer = recorder(e);
    tracer.startSpan({ name: 'a', kind: 'server' }).end();
    tracer.startSpan({ name: 'b', kind: 'server' }).end();
    await e.flush();
    expect(e.stats).toMatchObject({ exported: 1, failedExports: 0, failedSpans: 1 });
  });

  it('flushes on close, then drops what comes later; close is idempotent', async () => {
    const c = await collector();
    const e = exporter({ endpoint: c.endpoint });
    const tracer = recorder(e);
    tracer.startSpan({ name: 'a', kind: 'server' }).end();
    tracer.startSpan({ name: 'b', kind: 'server' }).end();
    await Promise.all([tracer.close(), e.close()]);
    expect(spans(c.received).map((s) => s.name)).toEqual(['a', 'b']);
    tracer.startSpan({ name: 'late', kind: 'server' }).end();
    await e.close();
    expect(e.stats).toMatchObject({ exported: 2, dropped: 1 });
    expect(c.received).toHaveLength(1);
  });

  it('validates its sizes', () => {
    expect(() => new OtlpHttpExporter({ endpoint: 'http://127.0.0.1:1', serviceName: 'x', maxBatchSize: 0 })).toThrow('tracing batch size must be a positive integer, got 0');
  });
});

describe('configuration', () => {
  it('reads the endpoint and sampling from the environment', () => {
    expect(tracingFromEnv({ AMBIT_TRACING_ENDPOINT: 'http://collector.observability:4318', AMBIT_TRACING_SAMPLING: '12.5' }, 'waypoint.shop'))
      .toEqual({ serviceName: 'waypoint.shop', endpoint: 'http://collector.observability:4318', samplingPercent: 12.5 });
    expect(tracingFromEnv({ AMBIT_TRACING_ENDPOINT: '' }, 'waypoint.shop')).toEqual({ serviceName: 'waypoint.shop', samplingPercent: 1 });
  });

  it('names the bad value', () => {
    expect(() => tracingFromEnv({ AMBIT_TRACING_SAMPLING: 'abc' }, 'w')).toThrow('tracing sampling must be a number from 0 to 100, got "abc"');
    expect(() => tracingFromEnv({ AMBIT_TRACING_ENDPOINT: 'collector:4318' }, 'w')).toThrow('tracing endpoint must be an http(s) URL, got "collector:4318"');
    expect(() => validateTracingOptions({ serviceName: 'w', samplingPercent: 150 })).toThrow('tracing sampling must be a number from 0 to 100, got 150');
    expect(() => validateTracingOptions({ serviceName: '' })).toThrow('tracing service name must be a non-empty string, got ""');
  });

  it('without an endpoint, propagates context and exports nothing', async () => {
    const tracer = createTracer({ serviceName: 'waypoint.shop', samplingPercent: 100 });
    const span = tracer.startSpan({ name: 'x', kind: 'server', parent: extract({ traceparent: tp() }) });
    span.end();
    expect(inject(span.context, {}).traceparent).toBe(`00-${T}-${span.context.spanId}-01`);
    expect(tracer.stats).toEqual({ exported: 0, dropped: 0, failedExports: 0, failedSpans: 0 });
    await tracer.close();
  });

  it('with an endpoint, exports through the collector', async () => {
    const c = await collector();
    const tracer = createTracer({ serviceName: 'waypoint.shop', endpoint: c.endpoint }, { random: () => 0 });
    tracer.startSpan({ name: 'x', kind: 'server' }).end();
    await tracer.close();
    expect(spans(c.received).map((s) => s.name)).toEqual(['x']);
    expect(tracer.stats.exported).toBe(1);
  });
});
