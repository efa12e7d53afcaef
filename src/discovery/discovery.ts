/**
 * The discovery stream (src/api/discovery.proto): the controller's side, which turns each new
 * model into per-subscriber snapshots and deltas, and the subscriber's side, which applies them,
 * ACKs or NACKs, keeps its last good config while the controller is away, and reconnects with
 * jittered exponential backoff.
 */
import { createHash, randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { deflateSync, inflateSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Logger } from 'pino';
import { authorization, type Authenticator, type Caller, type Credential } from '../identity/ca-server.js';
import { CaError } from '../identity/ca.js';
import { silentLogger } from '../telemetry/log.js';
import { packageRoot } from '../util/package.js';
import { backoffDelay } from '../util/backoff.js';
import { selectorMatches, WAYPOINT_GATEWAY_LABEL, type ConfigObject, type MeshModel, type Service, type Workload } from '../config/model.js';

export type SubscriberKind = 'node-agent' | 'waypoint' | 'gateway';
/**
 * What a node agent receives (Subscribe.scope): `cluster`, every workload and Service; `node`,
 * its node's view, and the rest on demand (Demand). docs/CONTROL.md, What a node agent holds.
 */
export type DiscoveryScope = 'cluster' | 'node';
export const DISCOVERY_SCOPES: readonly DiscoveryScope[] = ['cluster', 'node'];

export interface WireResource { key: string; type: string; json: string }
export interface WireResponse { version: string; full: boolean; resources: WireResource[]; removed: string[]; more?: boolean; encoding?: string; payload?: Buffer }

/**
 * A version is written in parts of about this many bytes (keys, types and JSON of its resources,
 * removed keys): gRPC receivers take 4 MiB per message by default, and a full snapshot of
 * 50,000 pods is ~17 MB. The subscriber applies the version once its last part is in.
 */
export const PART_BYTES = 1 << 20;
/**
 * The most a subscriber accepts in one message: a part, or one resource larger than a part
 * alone in its message (a Service with ~300,000 endpoints would be 16 MiB).
 */
export const MAX_MESSAGE_BYTES = 16 << 20;

/** A response cut into consecutive parts of about `limit` bytes each (one when it is smaller). */
export function partsOf(message: WireResponse, limit = PART_BYTES): WireResponse[] {
  const out: WireResponse[] = [];
  let part: WireResponse = { version: message.version, full: message.full, resources: [], removed: [] };
  let size = 0;
  const add = (bytes: number, put: () => void) => {
    if (size > 0 && size + bytes > limit) {
      out.push({ ...part, more: true });
      part = { version: message.version, full: message.full, resources: [], removed: [] };
      size = 0;
    }
    put();
    size += bytes;
  };
  // Per-field framing (tag, length) is a few bytes; 16 per resource covers it.
  for (const key of message.removed) add(Buffer.byteLength(key) + 4, () => part.removed.push(key));
  for (const r of message.resources) add(Buffer.byteLength(r.key) + Buffer.byteLength(r.type) + Buffer.byteLength(r.json) + 16, () => part.resources.push(r));
  out.push({ ...part, more: false });
  return out;
}
interface WireRequest {
  subscribe?: { node: string; kind: string; name: string; last_version: string; accept_encoding?: string[]; scope?: string; demand?: string[] };
  ack?: { version: string };
  nack?: { version: string; error: string };
  demand?: { names?: string[] };
}

/** Names a node-scoped subscriber holds on demand at most, per stream: beyond, the oldest go (and are asked for again when needed). */
export const MAX_DEMANDED = 4096;

/**
 * A demand name's fault, or undefined when it is one: "service/<namespace>/<name>" (Kubernetes
 * names) or "address/<ip>" (an IPv4 or IPv6 address, IPv4-mapped written as IPv4).
 */
export function demandNameError(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'a demand name must be a string';
  const shown = JSON.stringify(clip(name, 80));
  if (name.startsWith('service/')) {
    return /^service\/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/.test(name) ? undefined
      : `demand ${shown}: a service is named service/<namespace>/<name>, in Kubernetes' lower-case names`;
  }
  if (name.startsWith('address/')) {
    const ip = name.slice(8);
    if (isIP(ip) === 0) return `demand ${shown}: not an IP address`;
    return ip.toLowerCase().startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? `demand ${shown}: write an IPv4-mapped address as IPv4` : undefined;
  }
  return `demand ${shown}: names are service/<namespace>/<name> or address/<ip>`;
}

/** What is wrong with a demand's names (their number, or the first bad one), or undefined. */
function demandError(names: readonly unknown[]): string | undefined {
  if (names.length > MAX_DEMANDED) return `a demand names at most ${MAX_DEMANDED} resources, got ${names.length}`;
  for (const name of names) {
    const wrong = demandNameError(name);
    if (wrong) return wrong;
  }
  return undefined;
}

/**
 * Demanded names added to `held` (one asked again moves to the end), the oldest dropped beyond
 * MAX_DEMANDED: the controller and the subscriber keep the same order.
 */
function remember(held: Set<string>, names: readonly string[]): void {
  for (const name of names) {
    held.delete(name);
    held.add(name);
  }
  for (const name of held) {
    if (held.size <= MAX_DEMANDED) break;
    held.delete(name);
  }
}

/**
 * The payload encoding of DiscoveryResponse (discovery.proto): zlib. A node agent's snapshot is
 * JSON of workloads that differ in a few names and addresses, which level 1 shrinks ~10 times for
 * a few ms per MiB; a part is compressed once and shared by every subscriber of its view.
 */
export const PAYLOAD_ENCODING = 'deflate';
const DEFLATE_LEVEL = 1;
/** A part smaller than this (serialized) is sent plain even to a subscriber that reads compressed payloads. */
export const MIN_DEFLATE_BYTES = 8192;

interface StreamCodec { responseSerialize(v: unknown): Buffer; responseDeserialize(b: Buffer): WireResponse }

let service: grpc.ServiceClientConstructor | undefined;
export function discoveryService(): grpc.ServiceClientConstructor {
  if (!service) {
    const definition = grpc.loadPackageDefinition(protoLoader.loadSync(join(packageRoot(), 'src', 'api', 'discovery.proto'), { keepCase: true, defaults: true, oneofs: true }));
    service = (definition as unknown as { ambit: { discovery: { v1: { Discovery: grpc.ServiceClientConstructor } } } }).ambit.discovery.v1.Discovery;
    // The controller writes parts it serialized once for all subscribers of a view (wireOf): a
    // Buffer goes out as it is; anything else is serialized as usual.
    const stream = (service.service as unknown as { Stream: StreamCodec }).Stream;
    const serialize = stream.responseSerialize.bind(stream);
    stream.responseSerialize = (v: unknown) => (Buffer.isBuffer(v) ? v : serialize(v));
  }
  return service;
}

/** The serializer and deserializer of DiscoveryResponse (the generated ones; a Buffer is serialized as itself). */
export const responseCodec = (): StreamCodec => (discoveryService().service as unknown as { Stream: StreamCodec }).Stream;

/** The parts of a version as written: serialized, and compressed for subscribers that take it; computed once per parts array. */
const wireParts = new WeakMap<WireResponse[], { plain?: Buffer[]; deflate?: Buffer[] }>();

/**
 * A version's parts as the bytes of DiscoveryResponse messages, plain or with a compressed
 * payload (PAYLOAD_ENCODING): computed once per parts array, so that 100 subscribers of one
 * snapshot cost one serialization (and one compression), not 100.
 */
export function wireOf(parts: WireResponse[], encoding?: typeof PAYLOAD_ENCODING): Buffer[] {
  let cached = wireParts.get(parts);
  if (!cached) wireParts.set(parts, (cached = {}));
  const codec = responseCodec();
  if (encoding === PAYLOAD_ENCODING) {
    return cached.deflate ??= parts.map((p) => {
      const inner = codec.responseSerialize({ resources: p.resources, removed: p.removed });
      // A small part goes plain (a subscriber that reads payloads reads plain parts too): zlib's
      // set-up costs more than it saves there, and one-pod deltas are most of what is sent.
      if (inner.length < MIN_DEFLATE_BYTES) return codec.responseSerialize(p);
      return codec.responseSerialize({ version: p.version, full: p.full, more: p.more ?? false, encoding: PAYLOAD_ENCODING, payload: deflateSync(inner, { level: DEFLATE_LEVEL }) });
    });
  }
  return cached.plain ??= parts.map((p) => codec.responseSerialize(p));
}

/**
 * A part as the subscriber uses it: a compressed payload inflated (to at most `maxBytes`, so that
 * a hostile controller cannot make a subscriber hold a zip bomb) and decoded. Throws with what was
 * wrong: an unknown encoding, data that is not zlib, too large once inflated, or not a message.
 */
export function openPart(part: WireResponse, maxBytes = MAX_MESSAGE_BYTES): WireResponse {
  if (!part.encoding) return part;
  const at = `version ${clip(part.version, 64)}`;
  if (part.encoding !== PAYLOAD_ENCODING) throw new Error(`${at}: payload encoding "${clip(part.encoding, 32)}" unknown (this subscriber reads ${PAYLOAD_ENCODING})`);
  let bytes: Buffer;
  try {
    bytes = inflateSync(part.payload ?? Buffer.alloc(0), { maxOutputLength: maxBytes });
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') throw new Error(`${at}: payload inflates to more than ${maxBytes} bytes (the most one message may carry)`);
    throw new Error(`${at}: payload is not ${PAYLOAD_ENCODING} data: ${(err as Error).message}`);
  }
  let inner: WireResponse;
  try {
    inner = responseCodec().responseDeserialize(bytes);
  } catch (err) {
    throw new Error(`${at}: inflated payload is not a DiscoveryResponse: ${(err as Error).message}`);
  }
  return { version: part.version, full: part.full, more: part.more, resources: inner.resources, removed: inner.removed };
}

/**
 * The resources a subscriber gets, keyed: node agents all but L7, gateways and Secrets; a
 * waypoint the services bound to it and their L7 config; a gateway (ingressView) its Gateways,
 * their routes and Secrets.
 */
export function viewFor(model: MeshModel, kind: SubscriberKind, name = ''): Map<string, { type: string; value: unknown }> {
  const out = new Map<string, { type: string; value: unknown }>();
  const put = (type: string, id: string, value: unknown) => out.set(`${type}/${id}`, { type, value });
  for (const w of model.workloads) put('workload', w.uid, w);
  for (const p of model.policies) put('policy', `${p.kind}/${p.namespace}/${p.name}`, p);
  for (const g of model.waypoints) put('waypoint', `${g.namespace}/${g.name}`, g);
  if (kind === 'gateway') {
    for (const s of model.services) put('service', `${s.namespace}/${s.name}`, s);
    ingressView(model, name, put);
    return out;
  }
  if (kind === 'node-agent') {
    for (const s of model.services) put('service', `${s.namespace}/${s.name}`, s);
    // Egress: where ServiceEntry hosts go and what DNS answers for them, and whether unknown destinations pass.
    for (const e of model.serviceEntries) put('serviceentry', `${e.namespace}/${e.name}`, e);
    put('meshconfig', 'mesh', model.meshConfig);
    return out;
  }
  const [wpNs, wpName] = name.split('/');
  const served = model.services.filter((s) => s.waypoint?.namespace === wpNs && s.waypoint?.name === wpName);
  for (const s of served) put('service', `${s.namespace}/${s.name}`, s);
  const hosts = new Set(served.flatMap((s) => [s.name, `${s.name}.${s.namespace}`, `${s.name}.${s.namespace}.svc`, s.hostname]));
  for (const c of model.l7) {
    const spec = c.spec as { hosts?: string[]; host?: string; service?: unknown; parentRefs?: { name?: string; namespace?: string }[]; targetRefs?: { name?: string }[] };
    const refs = [...(spec.hosts ?? []), ...(spec.host ? [spec.host] : []), ...(c.kind === 'TrafficSplit' && typeof spec.service === 'string' ? [spec.service] : []),
      ...(spec.parentRefs ?? []).map((r) => `${r.name ?? ''}.${r.namespace ?? c.namespace}`),
      ...(spec.targetRefs ?? []).map((r) => `${r.name ?? ''}.${c.namespace}`)];
    if (refs.some((h) => hosts.has(h) || hosts.has(`${h}.${c.namespace}`))) put('l7', `${c.kind}/${c.namespace}/${c.name}`, c);
  }
  return out;
}

/** An object's reference list, or nothing when the field is not a list of objects. */
const refsOf = (v: unknown): Record<string, unknown>[] => (Array.isArray(v) ? v.filter((x): x is Record<string, unknown> => typeof x === 'object' && x !== null) : []);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/**
 * What the ingress gateway `ns/sa` serves (the contract with src/waypoint/ingress*): the Istio
 * Gateways (any namespace) whose selector matches one of its pods' labels, the Gateway API
 * Gateway `ns/sa` of an ingress class, the routes bound to them, every DestinationRule, and
 * the Secrets they name — Istio's `credentialName` (and `<name>-cacert` for MUTUAL) in the
 * gateway's own namespace, Gateway API `certificateRefs` in the Gateway's.
 */
function ingressView(model: MeshModel, name: string, put: (type: string, id: string, value: unknown) => void): void {
  const [ns = '', sa = ''] = name.split('/');
  const pods = model.workloads.filter((w) => w.namespace === ns && w.serviceAccount === sa);
  const selects = (spec: unknown) => {
    const selector = (spec as { selector?: unknown } | undefined)?.selector;
    return pods.some((w) => selectorMatches(selector, w.labels));
  };
  const istio: ConfigObject[] = [];
  let gatewayApi: ConfigObject | undefined;
  for (const g of model.gateways) {
    if (g.apiVersion.startsWith('networking.istio.io/') ? selects(g.spec) : g.namespace === ns && g.name === sa) {
      put('ingress', `${g.kind}/${g.namespace}/${g.name}`, g);
      if (g.apiVersion.startsWith('networking.istio.io/')) istio.push(g);
      else gatewayApi = g;
    }
  }
  const istioNames = new Set(istio.map((g) => `${g.namespace}/${g.name}`));
  for (const c of model.l7) {
    const spec = (c.spec ?? {}) as Record<string, unknown>;
    let bound = false;
    if (c.kind === 'DestinationRule') bound = true;
    else if (c.kind === 'VirtualService' && Array.isArray(spec.gateways)) {
      bound = spec.gateways.some((gw) => typeof gw === 'string' && istioNames.has(gw.includes('/') ? gw : `${c.namespace}/${gw}`));
    } else if ((c.kind === 'HTTPRoute' || c.kind === 'GRPCRoute') && gatewayApi) {
      bound = refsOf(spec.parentRefs).some((r) => (r.kind === undefined || r.kind === 'Gateway') && (r.group === undefined || r.group === 'gateway.networking.k8s.io')
        && r.name === gatewayApi.name && (str(r.namespace) ?? c.namespace) === gatewayApi.namespace);
    }
    if (bound) put('l7', `${c.kind}/${c.namespace}/${c.name}`, c);
  }
  const secrets = new Map(model.secrets.map((s) => [`${s.namespace}/${s.name}`, s]));
  const named = new Set<string>();
  for (const g of istio) {
    for (const server of refsOf((g.spec as { servers?: unknown } | undefined)?.servers)) {
      const tls = server.tls as { credentialName?: unknown; mode?: unknown } | undefined;
      const credential = str(tls?.credentialName);
      if (!credential) continue;
      named.add(`${ns}/${credential}`);
      if (tls?.mode === 'MUTUAL') named.add(`${ns}/${credential}-cacert`);
    }
  }
  if (gatewayApi) {
    for (const listener of refsOf((gatewayApi.spec as { listeners?: unknown } | undefined)?.listeners)) {
      for (const ref of refsOf((listener.tls as { certificateRefs?: unknown } | undefined)?.certificateRefs)) {
        // Another namespace's Secret would need a ReferenceGrant, which ambit does not read: not sent.
        if ((ref.kind ?? 'Secret') === 'Secret' && (ref.group ?? '') === '' && typeof ref.name === 'string' && (str(ref.namespace) ?? gatewayApi.namespace) === gatewayApi.namespace) {
          named.add(`${gatewayApi.namespace}/${ref.name}`);
        }
      }
    }
  }
  for (const key of named) {
    const secret = secrets.get(key);
    if (secret) put('secret', key, secret);
  }
}

/** The resource types a node agent is sent (viewFor's node-agent view): an allow-list, so a new type reaches agents only when named here. */
const NODE_AGENT_TYPES: ReadonlySet<string> = new Set(['workload', 'policy', 'waypoint', 'service', 'serviceentry', 'meshconfig']);
/**
 * What every node-scoped agent gets alike (its view's shared part): policies, waypoints, a head
 * of every service, ServiceEntries and the mesh config. The rest of its view is its own
 * (personalView): its node's workloads and their Services, waypoint pods, and what it asked for.
 */
const SCOPED_BASE_TYPES: ReadonlySet<string> = new Set(['policy', 'waypoint', 'servicehead', 'serviceentry', 'meshconfig']);

/** A Service as every node-scoped agent holds it: how it is called (addresses, ports, waypoint), not who serves it. */
export type ServiceHead = Omit<Service, 'endpoints'>;
const headOf = ({ endpoints: _, ...head }: Service): ServiceHead => head;

/** The answer to a demand for an address: the workload with that IP, if any (absent: none has it). */
export interface AddressAnswer { address: string; workload?: string }

/** A version changing more keys than this makes every node-scoped subscriber rebuild its own part (a cheap test per key is no longer cheap). */
const MAX_TRACKED_CHANGES = 1000;

/**
 * Node scope's lookups of the current model, kept from version to version: `apply` changes the
 * entries of the workloads and Services a version changed (endpoint lists by content), not the
 * whole index (at 10,000 pods a rebuild per change cost ~11 ms and its garbage); `update` makes
 * it anew when there is no record of what changed.
 */
export class ScopeIndex {
  /** Workload uids per node. */
  readonly byNode = new Map<string, Set<string>>();
  /** Waypoint pods' uids: every node agent sends to waypoints and checks their identities. */
  readonly waypointPods = new Set<string>();
  /** The services (namespace/name) each workload uid is an endpoint of. */
  readonly servicesOf = new Map<string, Set<string>>();
  readonly byIp = new Map<string, string>();
  readonly workloads = new Map<string, Workload>();
  readonly services = new Map<string, Service>();

  /** The index of `model`, made anew (the first time, and after more changes than are tracked). */
  update(model: MeshModel): void {
    for (const map of [this.byNode, this.waypointPods, this.servicesOf, this.byIp, this.workloads, this.services]) map.clear();
    for (const w of model.workloads) this.addWorkload(w);
    for (const svc of model.services) {
      const id = `${svc.namespace}/${svc.name}`;
      this.services.set(id, svc);
      this.link(id, svc.endpoints);
    }
  }

  /**
   * The index brought to a model that differs from the one it holds only in `keys`
   * (`workload/<uid>`, `service/<ns>/<name>`; others are not its), `current` giving each key's
   * object in the new model (undefined: gone).
   */
  apply(keys: Iterable<string>, current: (key: string) => unknown): void {
    for (const key of keys) {
      if (key.startsWith('workload/')) {
        const uid = key.slice(9);
        const old = this.workloads.get(uid);
        const w = current(key) as Workload | undefined;
        if (old === w) continue;
        if (old) this.removeWorkload(old);
        if (w) this.addWorkload(w);
      } else if (key.startsWith('service/')) {
        const id = key.slice(8);
        const old = this.services.get(id);
        const svc = current(key) as Service | undefined;
        if (old && !(svc && sameList(old.endpoints, svc.endpoints))) this.unlink(id, old.endpoints);
        if (svc && !(old && sameList(old.endpoints, svc.endpoints))) this.link(id, svc.endpoints);
        if (svc) this.services.set(id, svc);
        else this.services.delete(id);
      }
    }
  }

  private addWorkload(w: Workload): void {
    this.workloads.set(w.uid, w);
    let onNode = this.byNode.get(w.node);
    if (!onNode) this.byNode.set(w.node, (onNode = new Set()));
    onNode.add(w.uid);
    if (w.labels[WAYPOINT_GATEWAY_LABEL] !== undefined) this.waypointPods.add(w.uid);
    for (const ip of w.ips) this.byIp.set(ip, w.uid);
  }

  private link(id: string, endpoints: readonly string[]): void {
    for (const uid of endpoints) {
      let of = this.servicesOf.get(uid);
      if (!of) this.servicesOf.set(uid, (of = new Set()));
      of.add(id);
    }
  }

  private removeWorkload(w: Workload): void {
    this.workloads.delete(w.uid);
    const onNode = this.byNode.get(w.node);
    onNode?.delete(w.uid);
    if (onNode?.size === 0) this.byNode.delete(w.node);
    this.waypointPods.delete(w.uid);
    for (const ip of w.ips) if (this.byIp.get(ip) === w.uid) this.byIp.delete(ip);
  }

  private unlink(id: string, endpoints: readonly string[]): void {
    for (const uid of endpoints) {
      const of = this.servicesOf.get(uid);
      of?.delete(id);
      if (of?.size === 0) this.servicesOf.delete(uid);
    }
  }
}

const sameList = (a: readonly string[], b: readonly string[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);

interface SubscriberState {
  id: string;
  node: string;
  kind: SubscriberKind;
  name: string;
  call: grpc.ServerDuplexStream<WireRequest, WireResponse | Buffer>;
  /** The version the subscriber holds (its last ACK). */
  acked?: string;
  /** Versions sent and not yet answered, oldest first. */
  inflight: string[];
  /** After a NACK the subscriber's state is only known to be the last ACKed one: resync in full. */
  needFull: boolean;
  lastAck?: string;
  lastNack?: { version: string; error: string };
  /** When its credential is checked again (its expiry, or recheckMs from the last check). */
  recheck?: NodeJS.Timeout;
  /** The subscriber asked for compressed payloads (Subscribe.accept_encoding); absent: plain parts, as older agents read them. */
  encoding?: typeof PAYLOAD_ENCODING;
  /** A node agent of scope `node`: what it asked for, oldest first, and what it was sent of its own part of the view. */
  scoped?: {
    demanded: Set<string>;
    /** Key → hash of each resource of its own part, as last sent. */
    held: Map<string, string>;
    /** It asked for something its own part has not been rebuilt for since. */
    asked?: boolean;
    /** The model version its shared part was last sent at. */
    sentModel?: string;
    /** The model version a push to it was last named after; later pushes at that model are named `<model>.<n>`. */
    namedModel?: string;
    seq: number;
    /** The model version whose push it refused: it is sent nothing more until the model changes. */
    nackedModel?: string;
  };
}

export interface DiscoveryServerOptions {
  /**
   * A stream's credential is checked again when it expires (Caller.expiresAt) and at least this
   * often (ms; default 5 min), so a revoked one is noticed; if it is no longer good the stream is
   * closed with UNAUTHENTICATED and the subscriber reconnects with its current token.
   */
  recheckMs?: number;
  /** A stream that has not sent its Subscribe this long after opening is closed (ms; default 10 s). */
  subscribeTimeoutMs?: number;
  /** Told of every push and NACK, for metrics (ControllerMetrics). */
  observer?: DiscoveryObserver;
}

export interface DiscoveryObserver {
  /**
   * A version written to a subscriber: its config's bytes (as partsOf counts them, uncompressed),
   * the seconds building and writing it took, and the bytes of the messages written (compressed
   * parts for a subscriber that reads them).
   */
  pushed(kind: SubscriberKind, bytes: number, seconds: number, wireBytes: number): void;
  /** A subscriber NACKed a version sent to it. */
  rejected(kind: SubscriberKind): void;
}

/** The bytes of a push's parts, computed once per parts array (snapshots and deltas are shared by subscribers). */
const partBytes = new WeakMap<WireResponse[], number>();
function bytesOf(parts: WireResponse[]): number {
  let n = partBytes.get(parts);
  if (n === undefined) {
    n = 0;
    for (const p of parts) {
      for (const k of p.removed) n += Buffer.byteLength(k) + 4;
      for (const r of p.resources) n += Buffer.byteLength(r.key) + Buffer.byteLength(r.type) + Buffer.byteLength(r.json) + 16;
    }
    partBytes.set(parts, n);
  }
  return n;
}

/** Versions sent to a subscriber and not answered yet, at most. */
export const MAX_INFLIGHT = 2;
/** Streams open at once for one subscriber (a node agent's node, a waypoint's replicas); a newer one closes the oldest. */
export const MAX_STREAMS: Readonly<Record<SubscriberKind, number>> = { 'node-agent': 2, waypoint: 16, gateway: 16 };

/** A NACK's error is kept (status, logs) up to this many characters. */
export const MAX_NACK_ERROR = 1024;
const clip = (s: string, max: number): string => (s.length > max ? `${s.slice(0, max)}… (${s.length - max} more characters)` : s);

export interface SubscriberStatus {
  node: string;
  kind: SubscriberKind;
  name: string;
  lastAck?: string;
  lastNack?: { version: string; error: string };
}

/** An object as sent: its JSON and hash, and the model object they were made from (the latest one with that JSON). */
interface Encoded { type: string; json: string; hash: string; value: unknown }
/** Encoded models kept for subscribers that have not caught up yet. */
const HISTORY = 8;
/**
 * The model version a pushed version was named after: a node-scoped subscriber's later pushes at
 * one model (demands answered) are `<model>.<n>`; any other version is its model's own.
 */
export const modelVersionOf = (version: string): string => version.split('.')[0]!;
/** Parts followed by more parts of the same version (a node-scoped push's shared part, before its own): computed once per parts array. */
const continued = new WeakMap<WireResponse[], WireResponse[]>();
const continuedOf = (parts: WireResponse[]): WireResponse[] => {
  let out = continued.get(parts);
  if (!out) continued.set(parts, (out = parts.map((p) => ({ ...p, more: true }))));
  return out;
};

/** Whether a credential's expiry (by this controller's clock) has passed; API servers accept tokens a little after it. */
const expired = (caller: Caller): boolean => caller.expiresAt !== undefined && caller.expiresAt <= Date.now();

const hashOf = (json: string) => createHash('sha256').update(json).digest('base64url').slice(0, 16);

export class DiscoveryServer {
  private model?: MeshModel;
  /** Each model object serialized and hashed once per model, shared by every subscriber's view. */
  private encoded = new Map<string, Encoded>();
  /** The encoded models of recent versions: a subscriber's delta is computed against the one it holds. */
  private readonly history = new Map<string, Map<string, Encoded>>();
  /** View keys per version and subscriber kind/name, and deltas per (view, from, to): computed once, shared. */
  private readonly views = new Map<string, string[]>();
  private readonly deltas = new Map<string, { resources: WireResource[]; removed: string[]; parts?: WireResponse[] }>();
  /** Full snapshots per version and view, in parts. */
  private readonly snapshots = new Map<string, WireResponse[]>();
  private generation = 0;
  private readonly index = new ScopeIndex();
  /** The version `index` was last brought to. */
  private indexed?: string;
  /**
   * The keys whose encoding changed from previousVersion to this one, noted while encoding it
   * (undefined: more than MAX_TRACKED_CHANGES, or no previous version). Node-scoped subscribers
   * that hold none of them and would take none skip rebuilding their own part.
   */
  private changedKeys?: Set<string>;
  /** While encoding a version: the keys encoded anew (undefined once more than MAX_TRACKED_CHANGES) and how many were carried over. */
  private tracking?: { changed: Set<string>; kept: number; replaced: number };
  /** What changed since the index was last brought up to date (undefined: rebuild it from the model). */
  private indexPending?: Set<string>;
  private previousVersion?: string;
  private readonly boot = randomBytes(3).toString('hex');
  private readonly subscribers = new Set<SubscriberState>();

  /** Called whenever a subscriber connects, leaves, ACKs or NACKs. */
  onStatus?: (status: SubscriberStatus[]) => void;

  private readonly recheckMs: number;
  private readonly subscribeTimeoutMs: number;
  private readonly observer?: DiscoveryObserver;

  constructor(private readonly authenticator: Authenticator, private readonly log: Logger = silentLogger, opts: DiscoveryServerOptions = {}) {
    this.recheckMs = opts.recheckMs ?? 5 * 60_000;
    this.subscribeTimeoutMs = opts.subscribeTimeoutMs ?? 10_000;
    this.observer = opts.observer;
  }

  private changed(): void {
    this.onStatus?.(this.status());
  }

  get version(): string {
    return `${this.boot}-${this.generation}`;
  }

  status(): SubscriberStatus[] {
    return [...this.subscribers].map((s) => ({
      node: s.node, kind: s.kind, name: s.name,
      ...(s.lastAck ? { lastAck: s.lastAck } : {}), ...(s.lastNack ? { lastNack: s.lastNack } : {}),
    }));
  }

  /** A new model: every subscriber gets what changed for it (nothing when nothing did). */
  update(model: MeshModel): void {
    this.model = model;
    this.generation++;
    const previous = this.encoded;
    this.encoded = new Map();
    this.tracking = { changed: new Set(), kept: 0, replaced: 0 };
    for (const [key, { type, value }] of viewFor(model, 'node-agent')) this.encode(key, type, value, previous);
    for (const c of model.l7) this.encode(`l7/${c.kind}/${c.namespace}/${c.name}`, 'l7', c, previous);
    // What gateways alone get: their Gateways and Secrets (never a node agent's or a waypoint's view).
    for (const g of model.gateways) this.encode(`ingress/${g.kind}/${g.namespace}/${g.name}`, 'ingress', g, previous);
    for (const s of model.secrets) this.encode(`secret/${s.namespace}/${s.name}`, 'secret', s, previous);
    // What a node-scoped agent holds of a service it has not asked for: how it is called. A
    // service whose encoding stands (the same JSON as before) has the same head.
    for (const svc of model.services) {
      const id = `${svc.namespace}/${svc.name}`;
      const head = previous.get(`servicehead/${id}`);
      if (head && this.encoded.get(`service/${id}`) === previous.get(`service/${id}`)) this.keep(`servicehead/${id}`, head);
      else this.encode(`servicehead/${id}`, 'servicehead', svc, previous, () => JSON.stringify(headOf(svc)));
    }
    // What changed (for node scope): the keys encoded anew, and those gone, when few.
    let changed = this.generation > 1 ? this.tracking?.changed : undefined;
    // Keys of the previous version neither carried over nor encoded anew are gone: looked for only when there are some.
    const gone = previous.size - (this.tracking ? this.tracking.kept + this.tracking.replaced : 0);
    if (changed && gone > 0) {
      for (const key of previous.keys()) {
        if (changed.size > MAX_TRACKED_CHANGES) break;
        if (!this.encoded.has(key)) changed.add(key);
      }
    }
    if (changed && changed.size > MAX_TRACKED_CHANGES) changed = undefined;
    this.tracking = undefined;
    this.changedKeys = changed;
    this.previousVersion = this.generation > 1 ? `${this.boot}-${this.generation - 1}` : undefined;
    // Node scope's index is brought up to date by these changes at its next use, or rebuilt when they are too many.
    if (changed && this.indexPending) for (const key of changed) this.indexPending.add(key);
    if (!changed || (this.indexPending && this.indexPending.size > MAX_TRACKED_CHANGES)) this.indexPending = undefined;
    this.history.set(this.version, this.encoded);
    // Versions no subscriber holds or awaits any more are dropped; a few recent ones are kept.
    const needed = new Set([...this.subscribers].flatMap((x) => [x.acked, ...x.inflight]));
    const versions = [...this.history.keys()];
    for (const v of versions.slice(0, -HISTORY)) if (!needed.has(v)) this.forget(v);
    for (const v of versions.slice(0, -HISTORY * 4)) this.forget(v);
    for (const s of this.subscribers) this.push(s, false);
  }

  /** The gRPC implementation, to add to the control server. */
  implementation(): grpc.UntypedServiceImplementation {
    return { Stream: (call: grpc.ServerDuplexStream<WireRequest, WireResponse | Buffer>) => this.serve(call) };
  }

  private serve(call: grpc.ServerDuplexStream<WireRequest, WireResponse | Buffer>): void {
    let sub: SubscriberState | undefined;
    let subscribing = false;
    /** Demands that came while the subscription was being authenticated, applied once it is. */
    const early: unknown[][] = [];
    let ended = false;
    const fail = (code: grpc.status, details: string) => {
      this.log.warn({ peer: call.getPeer(), details }, 'discovery stream refused');
      call.emit('error', { code, details });
    };
    // A stream that never subscribes holds a connection for nothing.
    const hello = setTimeout(() => {
      if (!sub && !subscribing && !ended) fail(grpc.status.DEADLINE_EXCEEDED, `no subscribe within ${this.subscribeTimeoutMs} ms of opening the stream`);
    }, this.subscribeTimeoutMs).unref();
    call.on('data', (req: WireRequest) => {
      if (req.subscribe) {
        // One subscription per stream, also while the first one is still being authenticated.
        if (sub || subscribing) return fail(grpc.status.FAILED_PRECONDITION, 'already subscribed on this stream');
        subscribing = true;
        const { node, kind, name } = req.subscribe;
        void this.authenticator.authenticate(call.metadata, call.getPeer()).then((caller) => {
          // The stream may have gone while its credential was being checked.
          if (ended) return;
          if (expired(caller)) return fail(grpc.status.UNAUTHENTICATED, `credential expired at ${new Date(caller.expiresAt!).toISOString()}: reconnect with a fresh token`);
          if (kind !== 'node-agent' && kind !== 'waypoint' && kind !== 'gateway') return fail(grpc.status.INVALID_ARGUMENT, `subscribe.kind must be node-agent, waypoint or gateway, got "${kind.slice(0, 64)}"`);
          // The kind is bound to the credential: a node agent's (no workload) subscribes only as
          // its own node, a waypoint's only as that waypoint.
          if (kind === 'node-agent' && (caller.workload || node !== caller.node)) return fail(grpc.status.PERMISSION_DENIED, `authenticated as ${caller.workload ? `waypoint ${caller.workload.namespace}/${caller.workload.name}` : `node ${caller.node}`}, cannot subscribe as node ${node.slice(0, 253)}`);
          // A gateway is authorized as a waypoint is: its own credential, for exactly its ns/serviceAccount.
          if (kind !== 'node-agent' && !/^[a-z0-9-]+\/[a-z0-9.-]+$/.test(name)) return fail(grpc.status.INVALID_ARGUMENT, `subscribe.name must be NAMESPACE/NAME for a ${kind}, got "${name.slice(0, 253)}"`);
          if (kind !== 'node-agent' && !caller.workload) return fail(grpc.status.PERMISSION_DENIED, `authenticated as the node agent of node ${caller.node}, cannot subscribe as ${kind} ${name}: a ${kind} subscribes with its own credential`);
          if (kind !== 'node-agent' && caller.workload && name !== `${caller.workload.namespace}/${caller.workload.name}`) return fail(grpc.status.PERMISSION_DENIED, `authenticated as ${caller.workload.namespace}/${caller.workload.name}, cannot subscribe as ${kind} ${name}`);
          // Compressed payloads only for a subscriber that asked: an older one does not know the field.
          const encoding = req.subscribe?.accept_encoding?.includes(PAYLOAD_ENCODING) ? PAYLOAD_ENCODING : undefined;
          // Scope: older agents send none (every workload, as ever).
          const scope = req.subscribe?.scope || 'cluster';
          if (!(DISCOVERY_SCOPES as readonly string[]).includes(scope)) return fail(grpc.status.INVALID_ARGUMENT, `subscribe.scope must be ${DISCOVERY_SCOPES.join(' or ')}, got "${clip(scope, 32)}"`);
          if (scope === 'node' && kind !== 'node-agent') return fail(grpc.status.INVALID_ARGUMENT, `subscribe.scope "node" is a node agent's; a ${kind} subscribes with scope "cluster"`);
          sub = {
            id: randomBytes(4).toString('hex'), node, kind, name, call, inflight: [], needFull: false, ...(encoding ? { encoding } : {}),
            ...(scope === 'node' ? { scoped: { demanded: new Set<string>(), held: new Map<string, string>(), seq: 0 } } : {}),
          };
          for (const names of [req.subscribe?.demand ?? [], ...early]) {
            if (names.length === 0) continue;
            const wrong = this.demand(sub, names, false);
            if (wrong) return fail(grpc.status.INVALID_ARGUMENT, wrong);
          }
          // One credential cannot pile up streams (each holds a snapshot in flight): beyond a
          // few for the same subscriber, the oldest goes (a restarted agent's half-open one).
          const same = [...this.subscribers].filter((o) => o.kind === kind && o.node === node && o.name === name);
          for (const old of same.slice(0, Math.max(0, same.length - MAX_STREAMS[kind] + 1))) {
            this.subscribers.delete(old);
            old.call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details: `replaced by a newer stream of the same ${kind}: at most ${MAX_STREAMS[kind]} at once` });
          }
          this.subscribers.add(sub);
          this.log.info({ node, kind, name, lastVersion: clip(req.subscribe?.last_version ?? '', 64) }, 'subscriber connected');
          this.push(sub, true);
          this.changed();
          this.recheck(sub, caller, fail);
        }, (err: unknown) => fail(grpc.status.UNAUTHENTICATED, err instanceof CaError ? err.message : 'authentication failed'));
        return;
      }
      if (!sub) {
        // A demand written right after the Subscribe is kept until the subscription stands (a few, bounded like one demand).
        if (subscribing && req.demand && early.length < 4) return void early.push(req.demand.names ?? []);
        return fail(grpc.status.FAILED_PRECONDITION, 'subscribe first');
      }
      if (req.demand) {
        const wrong = this.demand(sub, req.demand.names ?? []);
        if (wrong) fail(grpc.status.INVALID_ARGUMENT, wrong);
        return;
      }
      if (req.ack) {
        // Only an answer to a version sent and not yet answered counts: repeated or made-up ones
        // change nothing (and write no status file).
        const i = sub.inflight.indexOf(req.ack.version);
        if (i < 0) return;
        sub.acked = req.ack.version;
        sub.inflight.splice(0, i + 1);
        sub.lastAck = clip(req.ack.version, 64);
        this.changed();
        // Versions held back while too many were unanswered go now, as one.
        this.push(sub, false);
      } else if (req.nack) {
        // The subscriber kept its last good config. The bad version is not sent again: the next
        // model change goes out as a new version, in full, since later deltas built on the
        // rejected one no longer apply.
        const i = sub.inflight.indexOf(req.nack.version);
        if (i < 0) return;
        sub.inflight.splice(i);
        sub.needFull = true;
        if (sub.scoped) sub.scoped.nackedModel = modelVersionOf(req.nack.version);
        // What a subscriber says is kept and logged within bounds.
        sub.lastNack = { version: clip(req.nack.version, 64), error: clip(req.nack.error, MAX_NACK_ERROR) };
        this.log.warn({ node: sub.node, kind: sub.kind, name: sub.name, ...sub.lastNack }, 'config rejected by subscriber (NACK)');
        this.observer?.rejected(sub.kind);
        this.changed();
        if (modelVersionOf(req.nack.version) !== this.version) this.push(sub, false);
      }
    });
    const drop = () => {
      ended = true;
      clearTimeout(hello);
      clearTimeout(sub?.recheck);
      if (sub) {
        if (this.subscribers.delete(sub)) this.changed();
        this.log.info({ node: sub.node, kind: sub.kind, name: sub.name }, 'subscriber disconnected');
      }
    };
    call.on('end', () => { drop(); call.end(); });
    call.on('error', drop);
    call.on('cancelled', drop);
  }

  /**
   * Checks the stream's credential again when it expires (or after recheckMs): still good and
   * still the same caller keeps the stream; otherwise it is closed with UNAUTHENTICATED.
   */
  private recheck(sub: SubscriberState, caller: Caller, fail: (code: grpc.status, details: string) => void): void {
    const due = Math.min(caller.expiresAt ?? Infinity, Date.now() + this.recheckMs);
    sub.recheck = setTimeout(() => {
      if (!this.subscribers.has(sub)) return;
      const who = { node: sub.node, kind: sub.kind, name: sub.name };
      this.authenticator.authenticate(sub.call.metadata, sub.call.getPeer()).then((again) => {
        if (!this.subscribers.has(sub)) return;
        if (expired(again)) {
          this.log.info(who, 'credential expired: stream closed');
          return fail(grpc.status.UNAUTHENTICATED, `credential expired at ${new Date(again.expiresAt!).toISOString()}: reconnect with a fresh token`);
        }
        if (again.node !== caller.node || again.workload?.identity !== caller.workload?.identity) {
          return fail(grpc.status.UNAUTHENTICATED, 'the credential now names another caller: reconnect');
        }
        this.recheck(sub, again, fail);
      }, (err: unknown) => {
        if (!this.subscribers.has(sub)) return;
        this.log.info({ ...who, err: err instanceof Error ? err.message : String(err) }, 'credential no longer valid: stream closed');
        fail(grpc.status.UNAUTHENTICATED, `credential no longer valid (${err instanceof CaError ? err.message : 'authentication failed'}): reconnect with a fresh token`);
      });
    }, Math.min(Math.max(0, due - Date.now()), 2 ** 31 - 1));
    sub.recheck.unref();
  }

  private forget(version: string): void {
    this.history.delete(version);
    for (const k of this.views.keys()) if (k.startsWith(`${version}|`)) this.views.delete(k);
    for (const k of this.deltas.keys()) if (k.includes(`|${version}|`) || k.endsWith(`|${version}`)) this.deltas.delete(k);
    for (const k of this.snapshots.keys()) if (k.startsWith(`${version}|`)) this.snapshots.delete(k);
  }

  private encode(key: string, type: string, value: unknown, previous: Map<string, Encoded>, toJson = () => JSON.stringify(value)): void {
    const old = previous.get(key);
    // The same object as in the previous model (buildModel reuses an unchanged pod's Workload):
    // its encoding stands, without serializing it again. Model objects are not changed once built.
    if (old && old.value === value && old.type === type) return this.keep(key, old);
    const json = toJson();
    if (old && old.json === json && old.type === type) {
      old.value = value;
      this.keep(key, old);
    } else {
      this.encoded.set(key, { type, json, hash: hashOf(json), value });
      if (this.tracking && old) this.tracking.replaced++;
      if (this.tracking && this.tracking.changed.add(key).size > MAX_TRACKED_CHANGES) this.tracking = undefined;
    }
  }

  /** A key's encoding carried over from the previous version. */
  private keep(key: string, e: Encoded): void {
    this.encoded.set(key, e);
    if (this.tracking) this.tracking.kept++;
  }

  private viewKeys(version: string, kind: SubscriberKind, name: string): string[] {
    const id = `${version}|${kind}/${name}`;
    let keys = this.views.get(id);
    if (!keys) {
      // Node agents see the encoded objects of their types only (never L7, Gateways or Secrets);
      // a waypoint's or gateway's view depends on the model of that version.
      keys = kind === 'node-agent'
        ? [...this.history.get(version)!].filter(([, e]) => NODE_AGENT_TYPES.has(e.type)).map(([k]) => k)
        : version === this.version ? [...viewFor(this.model!, kind, name).keys()] : [];
      this.views.set(id, keys);
    }
    return keys;
  }

  /** What a subscriber holding `from` needs to hold the current version; shared by all subscribers of one view. */
  private delta(kind: SubscriberKind, name: string, from: string): { resources: WireResource[]; removed: string[]; parts?: WireResponse[] } {
    const id = `${kind}/${name}|${from}|${this.version}`;
    let d = this.deltas.get(id);
    if (!d && kind === 'node-agent') d = this.typedDelta(NODE_AGENT_TYPES, id, from);
    if (!d) {
      const old = this.history.get(from)!;
      const oldKeys = new Set(this.viewKeys(from, kind, name));
      const keys = this.viewKeys(this.version, kind, name);
      const resources: WireResource[] = [];
      for (const key of keys) {
        const e = this.encoded.get(key)!;
        if (!oldKeys.has(key) || old.get(key)?.hash !== e.hash) resources.push({ key, type: e.type, json: e.json });
      }
      const current = new Set(keys);
      d = { resources, removed: [...oldKeys].filter((k) => !current.has(k)) };
      this.deltas.set(id, d);
    }
    return d;
  }

  /**
   * The change from `from` to the current version of a view that is every encoded object of some
   * types (in both versions, a key's type is its prefix): the two versions' maps are compared
   * directly, without key lists or sets of 10,000 entries made per change. Cached under `id`.
   */
  private typedDelta(types: ReadonlySet<string>, id: string, from: string): { resources: WireResource[]; removed: string[]; parts?: WireResponse[] } {
    const old = this.history.get(from)!;
    const resources: WireResource[] = [];
    for (const [key, e] of this.encoded) {
      if (types.has(e.type) && old.get(key)?.hash !== e.hash) resources.push({ key, type: e.type, json: e.json });
    }
    const removed: string[] = [];
    for (const [key, o] of old) if (types.has(o.type) && !this.encoded.has(key)) removed.push(key);
    const d = { resources, removed };
    this.deltas.set(id, d);
    return d;
  }

  /**
   * Names added to a node-scoped subscriber's demand (oldest dropped beyond MAX_DEMANDED) and its
   * view pushed; an error names what was wrong with the request (nothing is added then).
   */
  private demand(sub: SubscriberState, names: unknown[], push = true): string | undefined {
    if (!sub.scoped) return `demand needs a subscription of scope "node" (this one is ${sub.kind === 'node-agent' ? '"cluster"' : `a ${sub.kind}'s`}): it already holds everything it may ask for`;
    const wrong = demandError(names);
    if (wrong) return wrong;
    remember(sub.scoped.demanded, names as string[]);
    sub.scoped.asked = true;
    if (push) this.push(sub, false);
    return undefined;
  }

  /**
   * A node-scoped subscriber's own part of its view at the current model: its node's workloads
   * and the full Services they are endpoints of, every waypoint pod, and what it asked for — a
   * Service with its endpoints' workloads, an address's answer with the workload that has it.
   */
  private personalView(sub: SubscriberState): Map<string, { type: string; json: string; hash: string }> {
    const out = new Map<string, { type: string; json: string; hash: string }>();
    const index = this.scope();
    const add = (key: string) => {
      if (out.has(key)) return;
      const e = this.encoded.get(key);
      if (e) out.set(key, e);
    };
    for (const uid of index.byNode.get(sub.node) ?? []) {
      add(`workload/${uid}`);
      for (const id of index.servicesOf.get(uid) ?? []) add(`service/${id}`);
    }
    for (const uid of index.waypointPods) add(`workload/${uid}`);
    for (const name of sub.scoped!.demanded) {
      if (name.startsWith('service/')) {
        const svc = index.services.get(name.slice(8));
        if (!svc) continue;
        add(name);
        for (const uid of svc.endpoints) add(`workload/${uid}`);
      } else {
        const address = name.slice(8);
        const uid = index.byIp.get(address);
        const answer: AddressAnswer = { address, ...(uid ? { workload: uid } : {}) };
        const json = JSON.stringify(answer);
        out.set(name, { type: 'address', json, hash: json });
        if (uid) add(`workload/${uid}`);
      }
    }
    return out;
  }

  /**
   * A push to a node-scoped subscriber: the shared part of its view (policies, service heads,
   * ServiceEntries...; serialized once for all of them) as its leading parts, then its own part,
   * as one version. Sent when either changed, and in full when it holds nothing usable.
   */
  /**
   * Whether a changed key would enter a node-scoped subscriber's own part: a workload of its node,
   * a waypoint pod, or one with an address it asked about; a Service it asked for, or one with an
   * endpoint on its node. (One it holds already is checked by the caller.)
   */
  private concerns(sub: SubscriberState, key: string): boolean {
    const index = this.scope();
    const demanded = sub.scoped!.demanded;
    if (key.startsWith('workload/')) {
      const w = index.workloads.get(key.slice(9));
      return w !== undefined && (w.node === sub.node || w.labels[WAYPOINT_GATEWAY_LABEL] !== undefined || w.ips.some((ip) => demanded.has(`address/${ip}`)));
    }
    if (key.startsWith('service/')) {
      if (demanded.has(key)) return true;
      const svc = index.services.get(key.slice(8));
      return svc !== undefined && svc.endpoints.some((uid) => index.workloads.get(uid)?.node === sub.node);
    }
    return false;
  }

  /** The current model's lookups for node-scoped views: made once per version, when first needed. */
  private scope(): ScopeIndex {
    if (this.indexed !== this.version) {
      if (this.indexPending && this.indexed !== undefined) this.index.apply(this.indexPending, (key) => this.encoded.get(key)?.value);
      else this.index.update(this.model!);
      this.indexed = this.version;
      this.indexPending = new Set();
    }
    return this.index;
  }

  private pushScoped(sub: SubscriberState, fullRequested: boolean): void {
    const scoped = sub.scoped!;
    if (sub.inflight.length >= MAX_INFLIGHT) return;
    // After a refusal, nothing more at that model (it would be refused again): the next model goes in full.
    if (scoped.nackedModel === this.version) return;
    const started = performance.now();
    const full = fullRequested || sub.needFull || scoped.sentModel === undefined || !this.history.has(scoped.sentModel);
    // Sent this model already, and asked nothing since (an ACK calls here too): nothing can have changed.
    if (!full && !scoped.asked && scoped.sentModel === this.version) return;
    // A version is named after its model the first time this stream gets that model, `<model>.<n>`
    // after (a demand answered at the same model). A shared delta is only ever sent at a model's
    // first push, so its parts are named after the model and shared by every subscriber.
    const nameNext = () => (scoped.namedModel !== this.version ? this.version : `${this.version}.${++scoped.seq}`);
    let version: string | undefined;
    let shared: WireResponse[] = [];
    if (full) shared = this.scopedSnapshot((version = nameNext()));
    else if (scoped.sentModel !== this.version) {
      const id = `scoped/|${scoped.sentModel}|${this.version}`;
      const d = this.deltas.get(id) ?? this.typedDelta(SCOPED_BASE_TYPES, id, scoped.sentModel!);
      if (d.resources.length > 0 || d.removed.length > 0) {
        version = nameNext();
        shared = version === this.version ? (d.parts ??= partsOf({ version, full: false, resources: d.resources, removed: d.removed }))
          : partsOf({ version, full: false, resources: d.resources, removed: d.removed });
      }
    }
    // Its own part is rebuilt unless the model moved by one version that touched nothing it holds or would take.
    const changed = !full && !scoped.asked && scoped.sentModel === this.previousVersion ? this.changedKeys : undefined;
    const untouched = changed !== undefined && ![...changed].some((key) => scoped.held.has(key) || this.concerns(sub, key));
    const own = untouched ? undefined : this.personalView(sub);
    const held = full ? new Map<string, string>() : scoped.held;
    const resources: WireResource[] = [];
    const removed: string[] = [];
    if (own) {
      for (const [key, e] of own) if (held.get(key) !== e.hash) resources.push({ key, type: e.type, json: e.json });
      for (const key of held.keys()) if (!own.has(key)) removed.push(key);
      scoped.asked = false;
    }
    // Nothing of its view changed: it holds this model's view already.
    scoped.sentModel = this.version;
    if (!version && resources.length === 0 && removed.length === 0) return;
    version ??= nameNext();
    sub.needFull = false;
    scoped.namedModel = this.version;
    if (own) scoped.held = new Map([...own].map(([key, e]) => [key, e.hash]));
    // Nothing of its own: the shared parts alone are the version, the same bytes as every other subscriber's.
    const alone = shared.length > 0 && resources.length === 0 && removed.length === 0;
    const leading = alone ? shared : shared.length > 0 ? continuedOf(shared) : [];
    const mine = alone ? [] : partsOf({ version, full, resources, removed });
    sub.inflight.push(version);
    const written = this.write(sub, leading) + this.write(sub, mine);
    this.observer?.pushed(sub.kind, bytesOf(leading) + bytesOf(mine), (performance.now() - started) / 1000, written);
  }

  /** Writes parts to a subscriber as it reads them (wireOf); returns the bytes written. */
  private write(sub: SubscriberState, parts: WireResponse[]): number {
    let written = 0;
    for (const bytes of wireOf(parts, sub.encoding)) {
      sub.call.write(bytes);
      written += bytes.length;
    }
    return written;
  }

  /** The shared part of a node-scoped view in full, as parts of `version`: computed once per version name. */
  private scopedSnapshot(version: string): WireResponse[] {
    const id = `${this.version}|scoped|${version}`;
    let parts = this.snapshots.get(id);
    if (!parts) {
      const resources: WireResource[] = [];
      for (const [key, e] of this.encoded) if (SCOPED_BASE_TYPES.has(e.type)) resources.push({ key, type: e.type, json: e.json });
      parts = partsOf({ version, full: true, resources, removed: [] });
      this.snapshots.set(id, parts);
    }
    return parts;
  }

  private push(sub: SubscriberState, fullRequested: boolean): void {
    if (!this.model) return;
    if (sub.scoped) return this.pushScoped(sub, fullRequested);
    // Paced by the subscriber's answers: one that reads or answers nothing holds at most
    // MAX_INFLIGHT versions of the controller's memory; the rest goes, as one, at its next answer.
    if (sub.inflight.length >= MAX_INFLIGHT) return;
    const started = performance.now();
    const full = fullRequested || sub.needFull;
    sub.needFull = false;
    const base = sub.inflight.at(-1) ?? sub.acked;
    if (base === this.version && !full) return;
    const known = base !== undefined && this.history.has(base) && (sub.kind === 'node-agent' || this.views.has(`${base}|${sub.kind}/${sub.name}`));
    let parts: WireResponse[];
    if (full || !known) parts = this.snapshot(sub.kind, sub.name);
    else {
      const d = this.delta(sub.kind, sub.name, base);
      if (d.resources.length === 0 && d.removed.length === 0) return;
      parts = d.parts ??= partsOf({ version: this.version, full: false, resources: d.resources, removed: d.removed });
    }
    sub.inflight.push(this.version);
    const written = this.write(sub, parts);
    this.observer?.pushed(sub.kind, bytesOf(parts), (performance.now() - started) / 1000, written);
  }

  /** The current version of a view in full, in parts: computed once, shared by every subscriber of that view. */
  private snapshot(kind: SubscriberKind, name: string): WireResponse[] {
    const id = `${this.version}|${kind}/${name}`;
    let parts = this.snapshots.get(id);
    if (!parts) {
      const resources = this.viewKeys(this.version, kind, name).map((key) => {
        const e = this.encoded.get(key)!;
        return { key, type: e.type, json: e.json };
      });
      parts = partsOf({ version: this.version, full: true, resources, removed: [] });
      this.snapshots.set(id, parts);
    }
    return parts;
  }
}

// ---------------------------------------------------------------------------------------------
// The subscriber

export interface DiscoveryClientOptions {
  address: string;
  roots: string[];
  token: Credential;
  node: string;
  kind: SubscriberKind;
  name?: string;
  /**
   * Checks and takes a complete new state; throwing NACKs it (the previous state stays). The map
   * is the client's own, changed in place by later deltas: read it here, keep what you need.
   */
  apply: (resources: ReadonlyMap<string, WireResource>, version: string) => void;
  backoff?: { initialMs: number; maxMs: number };
  /** While the controller is unreachable, its address is tried at least this often (ms; default RECONNECT_PROBE_MS). */
  reconnectProbeMs?: number;
  log?: Logger;
  random?: () => number;
  /**
   * Ask for compressed payloads (Subscribe.accept_encoding; default true). False subscribes as an
   * agent from before the field did: plain parts.
   */
  compressed?: boolean;
  /** A node agent's scope (Subscribe.scope; default `cluster`): with `node`, it asks for the rest with demand(). */
  scope?: DiscoveryScope;
}

/**
 * While the controller is unreachable, the subscriber's channel tries its address at least this
 * often (gRPC's own connection backoff would grow to 120 s), and the stream is opened again as
 * soon as a connection is up, whatever the stream's backoff has grown to: a controller back from
 * a long outage is followed within seconds. A try is a TCP connect (and a TLS handshake once it
 * answers), so many subscribers probing a controller that is away cost it next to nothing.
 */
export const RECONNECT_PROBE_MS = 5000;

export class DiscoveryClient {
  private state = new Map<string, WireResource>();
  private version = '';
  /** What was asked for (scope `node`), oldest first, as the controller keeps it: asked again on a new stream. */
  private readonly demanded = new Set<string>();
  /** The parts of a version received so far, until its last part (more = false) arrives. */
  private partial?: WireResponse;
  /** A version refused at one of its parts (a payload that could not be opened): its other parts are dropped. */
  private refused?: string;
  private call?: grpc.ClientDuplexStream<WireRequest, WireResponse>;
  private readonly client: grpc.Client;
  private failures = 0;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readyResolve?: () => void;
  /** Resolves at the first applied snapshot. */
  readonly ready: Promise<void>;
  connected = false;
  reconnects = 0;
  /** How the last stream ended with an error: the controller's status code and reason (a refusal names what was wrong). */
  lastError?: { code: grpc.status; details: string };

  constructor(private readonly opts: DiscoveryClientOptions) {
    const Service = discoveryService();
    const probeMs = opts.reconnectProbeMs ?? RECONNECT_PROBE_MS;
    this.client = new Service(opts.address, grpc.credentials.createSsl(Buffer.from(opts.roots.join(''))), {
      'grpc.ssl_target_name_override': 'localhost', 'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.initial_reconnect_backoff_ms': Math.min(1000, probeMs), 'grpc.max_reconnect_backoff_ms': probeMs,
    });
    this.ready = new Promise((r) => { this.readyResolve = r; });
    this.connect();
  }

  get appliedVersion(): string {
    return this.version;
  }

  get resources(): ReadonlyMap<string, WireResource> {
    return this.state;
  }

  private connect(): void {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', authorization(this.opts.token));
    const call = (this.client as unknown as { Stream(md: grpc.Metadata): grpc.ClientDuplexStream<WireRequest, WireResponse> }).Stream(metadata);
    this.call = call;
    this.partial = undefined;
    this.refused = undefined;
    call.write({ subscribe: {
      node: this.opts.node, kind: this.opts.kind, name: this.opts.name ?? '', last_version: this.version,
      accept_encoding: this.opts.compressed === false ? [] : [PAYLOAD_ENCODING],
      ...(this.opts.scope ? { scope: this.opts.scope } : {}), demand: [...this.demanded],
    } });
    call.on('data', (res: WireResponse) => this.receive(call, res));
    call.on('error', (err: grpc.ServiceError) => {
      if (call === this.call) this.lastError = { code: err.code, details: err.details || err.message };
      this.lost(call, err.details || err.message);
    });
    call.on('end', () => this.lost(call, 'stream ended'));
  }

  private receive(call: grpc.ClientDuplexStream<WireRequest, WireResponse>, wire: WireResponse): void {
    if (call !== this.call) return;
    this.connected = true;
    this.failures = 0;
    if (wire.version === this.refused) return;
    this.refused = undefined;
    let part: WireResponse;
    try {
      part = openPart(wire);
    } catch (err) {
      // The whole version is refused, whatever parts of it came or are still to come; the
      // controller sends the next one in full.
      const error = (err as Error).message;
      this.opts.log?.warn({ version: wire.version, error }, 'config rejected; keeping the last good one');
      this.partial = undefined;
      this.refused = wire.version;
      call.write({ nack: { version: wire.version, error } });
      return;
    }
    // Parts of one version are gathered; it is applied (and ACKed) once, at its last part.
    let res = part;
    if (this.partial && this.partial.version !== part.version) this.partial = undefined;
    if (part.more || this.partial) {
      const into = this.partial ??= { version: part.version, full: part.full, resources: [], removed: [] };
      for (const r of part.resources) into.resources.push(r);
      for (const k of part.removed) into.removed.push(k);
      if (part.more) return;
      this.partial = undefined;
      res = into;
    }
    // A snapshot is a new map; a delta changes the current one in place and is undone if refused:
    // a copy per delta would cost the whole state (10,000 resources at 10,000 pods) for one pod.
    const next = res.full ? new Map<string, WireResource>() : this.state;
    const undo: [string, WireResource | undefined][] = [];
    for (const r of res.resources) {
      if (!res.full) undo.push([r.key, next.get(r.key)]);
      next.set(r.key, r);
    }
    for (const k of res.removed) {
      const old = next.get(k);
      if (old && !res.full) undo.push([k, old]);
      next.delete(k);
    }
    try {
      this.opts.apply(next, res.version);
    } catch (err) {
      for (const [k, old] of undo.reverse()) {
        if (old) next.set(k, old);
        else next.delete(k);
      }
      const error = (err as Error).message;
      this.opts.log?.warn({ version: res.version, error }, 'config rejected; keeping the last good one');
      call.write({ nack: { version: res.version, error } });
      return;
    }
    this.state = next;
    this.version = res.version;
    call.write({ ack: { version: res.version } });
    this.readyResolve?.();
  }

  /**
   * Asks the controller for resources beyond the node's view (scope `node`): "service/<ns>/<name>"
   * or "address/<ip>" (demandNameError says what a name may be). They arrive as a new version, and
   * stay in the view, kept current. Ask only for what the applied state lacks: the controller may
   * have dropped an old demand (MAX_DEMANDED), and a name asked again is refreshed.
   */
  demand(names: readonly string[]): void {
    if (this.opts.scope !== 'node') throw new Error('demand() needs a subscription of scope "node"');
    const wrong = demandError(names);
    if (wrong) throw new Error(wrong);
    remember(this.demanded, names);
    if (names.length > 0) this.call?.write({ demand: { names: [...names] } });
  }

  private lost(call: grpc.ClientDuplexStream<WireRequest, WireResponse>, why: string): void {
    if (call !== this.call || this.closed) return;
    this.call = undefined;
    this.connected = false;
    this.failures++;
    const delay = backoffDelay(this.failures, { ...(this.opts.backoff ?? { initialMs: 500, maxMs: 30_000 }), jitter: true, ...(this.opts.random ? { random: this.opts.random } : {}) });
    this.opts.log?.warn({ why, retryInMs: Math.round(delay), version: this.version }, 'controller unreachable; serving the last good config');
    call.cancel();
    let waiting = true;
    const reconnect = () => {
      if (!waiting || this.closed) return;
      waiting = false;
      clearTimeout(this.timer);
      this.reconnects++;
      this.connect();
    };
    this.timer = setTimeout(reconnect, delay);
    // A controller that answered and ended or refused the stream is asked again after the backoff
    // only (no hot loop); one that could not be reached is asked as soon as the channel connects.
    if (this.client.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY) {
      this.client.waitForReady(Date.now() + delay, (err) => {
        if (!err) {
          this.opts.log?.info({ version: this.version }, 'controller reachable again; resubscribing');
          reconnect();
        }
      });
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.call?.cancel();
    this.client.close();
  }
}
