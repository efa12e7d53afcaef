/**
 * Prometheus metrics with Istio's standard names and labels, so that dashboards, Kiali and
 * Flagger built for Istio read ambit unchanged; plus ambit's own (`ambit_*`).
 *
 * Each TCP connection is reported twice, as in Istio: by the source's node agent
 * (`reporter="source"`) and by the destination's (`reporter="destination"`).
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** The labels of Istio's TCP metrics (Istio's "standard metrics"; the request metrics add two). */
export const TCP_LABELS = [
  'reporter',
  'source_workload', 'source_workload_namespace', 'source_principal', 'source_app', 'source_version',
  'source_canonical_service', 'source_canonical_revision', 'source_cluster',
  'destination_workload', 'destination_workload_namespace', 'destination_principal', 'destination_app', 'destination_version',
  'destination_service', 'destination_service_name', 'destination_service_namespace',
  'destination_canonical_service', 'destination_canonical_revision', 'destination_cluster',
  'request_protocol', 'response_flags', 'connection_security_policy',
] as const;
export type TcpLabels = Record<(typeof TCP_LABELS)[number], string>;

export const UNKNOWN = 'unknown';

/** One side of a connection as telemetry names it. */
export interface Peer {
  workload?: string;
  namespace?: string;
  /** SPIFFE ID, written as the principal label as it is (`spiffe://cluster.local/ns/NS/sa/SA`), as Istio writes it. */
  identity?: string;
  labels?: Record<string, string>;
}

/**
 * A workload's canonical service and revision as Istio derives them: the
 * `service.istio.io/canonical-name|revision` labels, else `app.kubernetes.io/name|version`, else
 * `app` / `version`; else the workload's name and `latest`.
 */
export function canonical(p: Peer): { service: string; revision: string } {
  const l = p.labels ?? {};
  return {
    service: l['service.istio.io/canonical-name'] || l['app.kubernetes.io/name'] || l.app || p.workload || UNKNOWN,
    revision: l['service.istio.io/canonical-revision'] || l['app.kubernetes.io/version'] || l.version || (p.workload ? 'latest' : UNKNOWN),
  };
}

export function tcpLabels(reporter: 'source' | 'destination' | 'waypoint', source: Peer, destination: Peer, service: { hostname?: string; name?: string; namespace?: string }, opts: { mtls: boolean; flags?: string; cluster?: string }): TcpLabels {
  const principal = (p: Peer) => p.identity ?? UNKNOWN;
  const cluster = opts.cluster ?? 'Kubernetes';
  const [src, dst] = [canonical(source), canonical(destination)];
  return {
    reporter,
    source_workload: source.workload ?? UNKNOWN,
    source_workload_namespace: source.namespace ?? UNKNOWN,
    source_principal: principal(source),
    source_app: source.labels?.app ?? UNKNOWN,
    source_version: source.labels?.version ?? UNKNOWN,
    source_canonical_service: src.service,
    source_canonical_revision: src.revision,
    source_cluster: cluster,
    destination_workload: destination.workload ?? UNKNOWN,
    destination_workload_namespace: destination.namespace ?? UNKNOWN,
    destination_principal: principal(destination),
    destination_app: destination.labels?.app ?? UNKNOWN,
    destination_version: destination.labels?.version ?? UNKNOWN,
    destination_service: service.hostname ?? UNKNOWN,
    destination_service_name: service.name ?? UNKNOWN,
    destination_service_namespace: service.namespace ?? UNKNOWN,
    destination_canonical_service: dst.service,
    destination_canonical_revision: dst.revision,
    destination_cluster: cluster,
    request_protocol: 'tcp',
    response_flags: opts.flags ?? '-',
    connection_security_policy: opts.mtls ? 'mutual_tls' : 'none',
  };
}

/** The labels of Istio's request metrics: the TCP ones plus the response code. */
export const HTTP_LABELS = [...TCP_LABELS, 'response_code', 'grpc_response_status'] as const;
export type HttpLabels = Record<(typeof HTTP_LABELS)[number], string>;

/**
 * A label set's values as one string, each prefixed by its length: no value, whatever it holds,
 * can make two sets one key.
 */
function labelKey<N extends string>(names: readonly N[], labels: Record<N, string>): string {
  let key = '';
  for (const name of names) {
    const v = labels[name];
    key += `${v.length}:${v}`;
  }
  return key;
}

/** Istio's buckets for request durations (ms) and for request and response sizes (bytes). */
/** Envoy's default histogram buckets, which Istio's request duration uses (ms). */
export const DURATION_BUCKETS_MS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000] as const;
export const SIZE_BUCKETS = [1, 10, 100, 1000, 10_000, 100_000, 1_000_000, 10_000_000] as const;

/** One histogram's counts for one label set: per bucket (not cumulative), sum, count. */
class HistogramCounts {
  readonly buckets: Float64Array;
  sum = 0;
  count = 0;
  constructor(private readonly bounds: readonly number[]) {
    this.buckets = new Float64Array(bounds.length);
  }

  observe(value: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    if (i < b.length) this.buckets[i]!++;
    this.sum += value;
    this.count++;
  }
}

/** The four request metrics of one label set. */
interface RequestSeries {
  readonly labels: HttpLabels;
  requests: number;
  readonly duration: HistogramCounts;
  readonly requestBytes: HistogramCounts;
  readonly responseBytes: HistogramCounts;
  /** gRPC messages from the client and from the server. */
  requestMessages: number;
  responseMessages: number;
}

/** gRPC messages of one request, each way. */
export interface GrpcMessageCounts { request: number; response: number }

interface MetricValue { value: number; labels: Record<string, string | number>; metricName?: string; sharedLabels?: Record<string, string> }

/**
 * One of the request metrics as prom-client's registry reads it (`get`, `getForPromString`,
 * `reset`), its values made from the series at read time.
 */
class SeriesView {
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'histogram',
    private readonly values: () => MetricValue[],
    private readonly clear: () => void,
  ) {}

  async getForPromString(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: this.aggregator };
  }

  async get(): Promise<{ name: string; help: string; type: string; values: MetricValue[]; aggregator: string }> {
    const data = await this.getForPromString();
    // The JSON form carries every label on the value itself.
    data.values = data.values.map(({ sharedLabels, labels, ...v }) => ({ ...v, labels: { ...sharedLabels, ...labels } }));
    return data;
  }

  reset(): void {
    this.clear();
  }
}

/**
 * Istio's request metrics, for waypoints (reporter "waypoint", as Istio's waypoints report):
 * `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes` and
 * `istio_response_bytes`, with Istio's buckets; for gRPC also `istio_request_messages_total` and
 * `istio_response_messages_total`.
 *
 * prom-client checks and hashes the 21 labels on every increment and observation, four times per
 * request, even through `labels()`. Here a request finds its series once (by the caller's key,
 * or by its label values) and counts into plain numbers; the registry reads them as four metrics.
 */
export class RequestMetrics {
  /** By label values: one series per label set, as Prometheus sees it. */
  private readonly byLabels = new Map<string, RequestSeries>();
  /** By the caller's key (which determines the labels): a cache in front of byLabels, bounded. */
  private readonly byKey = new Map<string, RequestSeries>();

  constructor(registry: Registry) {
    const clear = () => {
      this.byLabels.clear();
      this.byKey.clear();
    };
    const views = [
      new SeriesView('istio_requests_total', 'Requests', 'counter', () => [...this.byLabels.values()].map((s) => ({ value: s.requests, labels: s.labels })), clear),
      new SeriesView('istio_request_duration_milliseconds', 'Request duration (ms)', 'histogram', () => this.histogramValues('istio_request_duration_milliseconds', DURATION_BUCKETS_MS, (s) => s.duration), clear),
      new SeriesView('istio_request_bytes', 'Request body sizes', 'histogram', () => this.histogramValues('istio_request_bytes', SIZE_BUCKETS, (s) => s.requestBytes), clear),
      new SeriesView('istio_response_bytes', 'Response body sizes', 'histogram', () => this.histogramValues('istio_response_bytes', SIZE_BUCKETS, (s) => s.responseBytes), clear),
      // gRPC only, as Istio: the series of gRPC requests.
      new SeriesView('istio_request_messages_total', 'gRPC messages sent by clients', 'counter', () => this.grpcValues((s) => s.requestMessages), clear),
      new SeriesView('istio_response_messages_total', 'gRPC messages sent by servers', 'counter', () => this.grpcValues((s) => s.responseMessages), clear),
    ];
    for (const v of views) registry.registerMetric(v as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  record(labels: HttpLabels, durationMs: number, requestBytes: number, responseBytes: number, messages?: GrpcMessageCounts): void {
    this.count(this.seriesOf(labels), durationMs, requestBytes, responseBytes, messages);
  }

  /**
   * As record(), for a label set named by `key` (which must determine the labels): the labels are
   * built and looked up only the first time a key is seen. Keys are kept up to
   * SERIES_CACHE_LIMIT, then that cache (not the series) starts over.
   */
  recordKeyed(key: string, labels: () => HttpLabels, durationMs: number, requestBytes: number, responseBytes: number, messages?: GrpcMessageCounts): void {
    let s = this.byKey.get(key);
    if (!s) {
      s = this.seriesOf(labels());
      if (this.byKey.size >= SERIES_CACHE_LIMIT) this.byKey.clear();
      this.byKey.set(key, s);
    }
    this.count(s, durationMs, requestBytes, responseBytes, messages);
  }

  /** Label sets seen (what the metrics expose). */
  get size(): number {
    return this.byLabels.size;
  }

  private count(s: RequestSeries, durationMs: number, requestBytes: number, responseBytes: number, messages: GrpcMessageCounts | undefined): void {
    s.requests++;
    if (messages) {
      s.requestMessages += messages.request;
      s.responseMessages += messages.response;
    }
    s.duration.observe(durationMs);
    s.requestBytes.observe(requestBytes);
    s.responseBytes.observe(responseBytes);
  }

  private seriesOf(labels: HttpLabels): RequestSeries {
    const key = labelKey(HTTP_LABELS, labels);
    let s = this.byLabels.get(key);
    if (!s) {
      const own = {} as HttpLabels;
      for (const name of HTTP_LABELS) own[name] = labels[name];
      s = { labels: own, requests: 0, duration: new HistogramCounts(DURATION_BUCKETS_MS), requestBytes: new HistogramCounts(SIZE_BUCKETS), responseBytes: new HistogramCounts(SIZE_BUCKETS), requestMessages: 0, responseMessages: 0 };
      this.byLabels.set(key, s);
    }
    return s;
  }

  /** A gRPC message counter's values: one per series of gRPC requests. */
  private grpcValues(count: (s: RequestSeries) => number): MetricValue[] {
    const out: MetricValue[] = [];
    for (const s of this.byLabels.values()) if (s.labels.request_protocol === 'grpc') out.push({ value: count(s), labels: s.labels });
    return out;
  }

  /** A histogram's exposition: cumulative `_bucket` lines with `le`, then `_sum` and `_count`, per series. */
  private histogramValues(name: string, bounds: readonly number[], counts: (s: RequestSeries) => HistogramCounts): MetricValue[] {
    const out: MetricValue[] = [];
    for (const s of this.byLabels.values()) {
      const h = counts(s);
      let acc = 0;
      for (let i = 0; i < bounds.length; i++) {
        acc += h.buckets[i]!;
        out.push({ value: acc, labels: { le: bounds[i]! }, sharedLabels: s.labels, metricName: `${name}_bucket` });
      }
      out.push({ value: h.count, labels: { le: '+Inf' }, sharedLabels: s.labels, metricName: `${name}_bucket` });
      out.push({ value: h.sum, labels: {}, sharedLabels: s.labels, metricName: `${name}_sum` });
      out.push({ value: h.count, labels: {}, sharedLabels: s.labels, metricName: `${name}_count` });
    }
    return out;
  }
}

/**
 * How often the event loop's delay is sampled for the default process metrics. prom-client's
 * default, 10 ms, wakes an idle process 100 times a second: 0.9 % of a core for a proxy that has
 * nothing to do. Every 100 ms still sees any stall worth a look.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

const SERIES_CACHE_LIMIT = 10_000;

/**
 * Istio's four TCP counters for one label set, added to as plain numbers and handed to
 * prom-client when the metrics are read. prom-client checks and hashes a label set on every
 * increment (19 labels: about 2 µs each, four or more per connection); a series is looked up
 * once per connection instead, by the joined label values.
 */
export interface TcpSeries {
  readonly labels: TcpLabels;
  opened: number;
  closed: number;
  sent: number;
  received: number;
  /** Open connections counting into this series: it is forgotten after a flush only at zero. */
  users: number;
}

export class MeshMetrics {
  readonly registry = new Registry();
  readonly tcpOpened: Counter<(typeof TCP_LABELS)[number]>;
  readonly tcpClosed: Counter<(typeof TCP_LABELS)[number]>;
  readonly tcpSent: Counter<(typeof TCP_LABELS)[number]>;
  readonly tcpReceived: Counter<(typeof TCP_LABELS)[number]>;
  private readonly tcp = new Map<string, TcpSeries>();

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const labelNames = [...TCP_LABELS];
    const registers = [this.registry];
    // Reading any of the four (a scrape, a test) first hands every pending count to prom-client.
    const collect = () => this.flushTcp();
    this.tcpOpened = new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened', labelNames, registers, collect });
    this.tcpClosed = new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed', labelNames, registers, collect });
    this.tcpSent = new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent in the response direction (destination to source), as Istio counts them', labelNames, registers, collect });
    this.tcpReceived = new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received in the request direction (source to destination), as Istio counts them', labelNames, registers, collect });
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'ambit_process_', eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  /**
   * The series of `labels`, taken by one more connection (give it back with `releaseTcp`). Its
   * counts reach the counters at the next read of the metrics.
   */
  takeTcp(labels: TcpLabels): TcpSeries {
    const key = labelKey(TCP_LABELS, labels);
    const found = this.tcp.get(key);
    if (found) {
      found.users++;
      return found;
    }
    const series: TcpSeries = { labels, opened: 0, closed: 0, sent: 0, received: 0, users: 1 };
    this.tcp.set(key, series);
    // Label sets of closed connections are forgotten at a flush: bound what churn can leave.
    if (this.tcp.size > SERIES_CACHE_LIMIT) this.flushTcp();
    return series;
  }

  releaseTcp(series: TcpSeries): void {
    series.users--;
  }

  /** Hands the pending counts to prom-client, and forgets the series no open connection uses. */
  flushTcp(): void {
    for (const [key, s] of this.tcp) {
      if (s.opened > 0) this.tcpOpened.inc(s.labels, s.opened);
      if (s.closed > 0) this.tcpClosed.inc(s.labels, s.closed);
      if (s.sent > 0) this.tcpSent.inc(s.labels, s.sent);
      if (s.received > 0) this.tcpReceived.inc(s.labels, s.received);
      s.opened = s.closed = s.sent = s.received = 0;
      if (s.users <= 0) this.tcp.delete(key);
    }
  }

  /** Label sets held between flushes (for the agent's bounded-state gauges). */
  get tcpSeriesHeld(): number {
    return this.tcp.size;
  }

  gauge(name: string, help: string, labelNames: string[], collect: (g: Gauge) => void): Gauge {
    return new Gauge({ name, help, labelNames, registers: [this.registry], collect(this: Gauge) { collect(this); } });
  }

  counter(name: string, help: string, labelNames: string[] = []): Counter {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
