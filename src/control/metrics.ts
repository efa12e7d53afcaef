/**
 * The controller's Prometheus metrics (served on 15014 at /metrics, as istiod serves its own).
 *
 * Where istiod has a metric of the same meaning it is used under istiod's name, type and labels
 * (pilot_xds, pilot_xds_pushes, pilot_xds_push_time, pilot_xds_config_size_bytes,
 * pilot_total_xds_rejects, pilot_services, citadel_server_*), so dashboards and alerts made for
 * istiod read ambit's controller; the rest are `ambit_controller_*`. prom-client's default
 * metrics go under their standard names (process_*, nodejs_*): istiod's own process_* series
 * have the same names and meaning.
 */
import { X509Certificate } from 'node:crypto';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SubscriberKind } from '../discovery/discovery.js';
import type { ReviewOutcome } from '../identity/tokenreview.js';
import { EVENT_LOOP_SAMPLE_MS } from '../telemetry/metrics.js';

/** How one certificate request ended: issued, or the status it was refused with. */
export type CertificateOutcome = 'issued' | 'UNAUTHENTICATED' | 'PERMISSION_DENIED' | 'INVALID_ARGUMENT' | 'FAILED_PRECONDITION' | 'INTERNAL';

/** Config objects of one kind in the controller's current view. */
export interface ConfigCount { kind: string; accepted: number; rejected: number }

const SUBSCRIBER_KINDS: SubscriberKind[] = ['node-agent', 'waypoint', 'gateway'];

export class ControllerMetrics {
  readonly registry = new Registry();
  private readonly pushes: Counter<'type'>;
  private readonly pushTime: Histogram<'type'>;
  private readonly configSize: Histogram<'type'>;
  private readonly wireBytes: Counter<'type'>;
  private readonly rejects: Counter<'type'>;
  private readonly csrs: Counter;
  private readonly issued: Counter;
  private readonly authnFailures: Counter;
  private readonly refused: Counter<'reason'>;
  private readonly reviews: Counter<'outcome'>;
  private readonly leader: Gauge;
  private readonly services: Gauge;
  private readonly workloads: Gauge;
  private readonly configObjects: Gauge<'kind' | 'state'>;
  private readonly rootExpiry: Gauge;
  private streams: () => { kind: SubscriberKind }[] = () => [];
  private lastConfig: ConfigCount[] = [];

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    const streams = () => this.streams();
    new Gauge({
      name: 'pilot_xds', help: 'Number of endpoints connected to this pilot using XDS: open discovery streams, by subscriber kind (node-agent, waypoint, gateway).', labelNames: ['kind'], registers,
      collect(this: Gauge<'kind'>) {
        const open = streams();
        for (const kind of SUBSCRIBER_KINDS) this.set({ kind }, open.filter((s) => s.kind === kind).length);
      },
    });
    // istiod labels these by xDS type; ambit's one stream carries every type, so `type` is the subscriber kind.
    this.pushes = new Counter({ name: 'pilot_xds_pushes', help: 'Config versions pushed to subscribers (type: node-agent or waypoint).', labelNames: ['type'], registers });
    this.pushTime = new Histogram({ name: 'pilot_xds_push_time', help: 'Total time in seconds to build and send one push (snapshot or delta) to a subscriber.', labelNames: ['type'], registers, buckets: [0.01, 0.1, 1, 3, 5, 10, 20, 30] });
    this.configSize = new Histogram({ name: 'pilot_xds_config_size_bytes', help: 'Distribution of configuration sizes pushed to clients', labelNames: ['type'], registers, buckets: [1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000] });
    this.wireBytes = new Counter({ name: 'ambit_xds_pushed_bytes_total', help: 'Bytes written on discovery streams, by subscriber kind: the messages as sent, compressed for subscribers that read compressed payloads (pilot_xds_config_size_bytes counts the config uncompressed)', labelNames: ['type'], registers });
    this.rejects = new Counter({ name: 'pilot_total_xds_rejects', help: 'Total number of XDS responses from pilot rejected by proxy (NACKs, by subscriber kind).', labelNames: ['type'], registers });
    this.services = new Gauge({ name: 'pilot_services', help: 'Total services known to pilot.', registers });
    this.workloads = new Gauge({ name: 'ambit_controller_workloads', help: 'Workloads (scheduled pods with an address) in the controller\'s current model.', registers });
    this.configObjects = new Gauge({ name: 'ambit_controller_config_objects', help: 'Config objects in the controller\'s current view by kind: accepted (in effect) or rejected (failed validation; a last accepted version may still be in effect).', labelNames: ['kind', 'state'], registers });
    this.csrs = new Counter({ name: 'citadel_server_csr_count', help: 'The number of CSRs received by Citadel server.', registers });
    this.issued = new Counter({ name: 'citadel_server_success_cert_issuance_count', help: 'The number of certificates issuances that have succeeded.', registers });
    this.authnFailures = new Counter({ name: 'citadel_server_authentication_failure_count', help: 'The number of authentication failures.', registers });
    this.refused = new Counter({ name: 'ambit_controller_certificates_refused_total', help: 'Certificate requests refused, by reason (the gRPC status: unauthenticated, permission_denied, invalid_argument, failed_precondition, internal).', labelNames: ['reason'], registers });
    this.rootExpiry = new Gauge({ name: 'citadel_server_root_cert_expiry_timestamp', help: 'The unix timestamp, in seconds, when Citadel root cert will expire. A negative time indicates the cert is expired.', registers });
    this.reviews = new Counter({ name: 'ambit_controller_token_reviews_total', help: 'TokenReviews by outcome: accepted, refused, rate_limited (not sent), timeout, error (the API server failed). Cached answers are not counted.', labelNames: ['outcome'], registers });
    this.leader = new Gauge({ name: 'ambit_controller_leader', help: '1 while this replica is the leader (writes status, runs waypoints, publishes the trust bundle), else 0.', registers });
    // Zero series from the start, so that rate() and absence alerts see every label value.
    for (const type of SUBSCRIBER_KINDS) {
      this.pushes.inc({ type }, 0);
      this.rejects.inc({ type }, 0);
    }
    for (const outcome of ['accepted', 'refused', 'rate_limited', 'timeout', 'error'] satisfies ReviewOutcome[]) this.reviews.inc({ outcome }, 0);
    for (const reason of ['unauthenticated', 'permission_denied', 'invalid_argument', 'failed_precondition', 'internal']) this.refused.inc({ reason }, 0);
    if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
  }

  /** Where the open discovery streams are read at each scrape (DiscoveryServer.status). */
  watchStreams(source: () => { kind: SubscriberKind }[]): void {
    this.streams = source;
  }

  /** One push written to a subscriber: its size in bytes and how long building and writing it took. */
  pushed(kind: SubscriberKind, bytes: number, seconds: number, wireBytes = bytes): void {
    this.wireBytes.inc({ type: kind }, wireBytes);
    this.pushes.inc({ type: kind });
    this.configSize.observe({ type: kind }, bytes);
    this.pushTime.observe({ type: kind }, seconds);
  }

  /** A subscriber NACKed a version. */
  rejected(kind: SubscriberKind): void {
    this.rejects.inc({ type: kind });
  }

  certificate(outcome: CertificateOutcome): void {
    this.csrs.inc();
    if (outcome === 'issued') return void this.issued.inc();
    if (outcome === 'UNAUTHENTICATED') this.authnFailures.inc();
    this.refused.inc({ reason: outcome.toLowerCase() });
  }

  review(outcome: ReviewOutcome): void {
    this.reviews.inc({ outcome });
  }

  setLeader(leading: boolean): void {
    this.leader.set(leading ? 1 : 0);
  }

  /** The root the CA's trust bundle ends in (PEM): its expiry. */
  setRoot(pem: string): void {
    this.rootExpiry.set(Math.floor(Date.parse(new X509Certificate(pem).validTo) / 1000));
  }

  /** The current model's size and the config objects behind it. */
  setModel(counts: { services: number; workloads: number }, config: ConfigCount[]): void {
    this.services.set(counts.services);
    this.workloads.set(counts.workloads);
    // Kinds that are gone go to zero rather than vanish, so a dashboard sees them leave.
    const now = new Set(config.map((c) => c.kind));
    for (const c of this.lastConfig) {
      if (now.has(c.kind)) continue;
      this.configObjects.set({ kind: c.kind, state: 'accepted' }, 0);
      this.configObjects.set({ kind: c.kind, state: 'rejected' }, 0);
    }
    for (const c of config) {
      this.configObjects.set({ kind: c.kind, state: 'accepted' }, c.accepted);
      this.configObjects.set({ kind: c.kind, state: 'rejected' }, c.rejected);
    }
    this.lastConfig = config;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
