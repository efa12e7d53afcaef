/**
 * Discovery messages at the node agent: a `DiscoveryResponse` encoded with the real protobuf
 * definition (src/api/discovery.proto), its bytes sometimes corrupted, decoded by the same
 * deserializer gRPC uses, then applied as `DiscoveryClient` does — a delta over the last good
 * state — into `MeshState`. A refusal (undecodable, or `MeshStateError`: the agent NACKs and
 * keeps its state) is an answer; any other exception while building the state is a refusal
 * that names nothing. Once a state is accepted, the lookups every captured connection makes
 * (resolve, authorization, PeerAuthentication mode, named target ports) must never throw: they
 * run in socket callbacks, where a throw takes the node agent down.
 */
import { deflateSync } from 'node:zlib';
import * as fc from 'fast-check';
import { demandNameError, discoveryService, openPart, PAYLOAD_ENCODING, type WireResource, type WireResponse } from '../../../src/discovery/discovery.js';
import { MeshState, MeshStateError } from '../../../src/discovery/mesh-state.js';
import { discoveryResponse, lookup } from '../gen-mesh.js';
import { Finding, type FuzzTarget } from '../harness.js';

interface Codec {
  serialize(value: unknown): Buffer;
  deserialize(bytes: Buffer): { version: string; full: boolean; resources: WireResource[]; removed: string[] };
}

const mutation = fc.oneof(
  { weight: 6, arbitrary: fc.constant({ kind: 'none' as const }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 200 }) }) },
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(bytes: Buffer, m: Mutation): Buffer {
  switch (m.kind) {
    case 'none': return bytes;
    case 'flip': { const b = Buffer.from(bytes); if (b.length) b[m.at % b.length] = m.byte; return b; }
    case 'truncate': return bytes.subarray(0, bytes.length ? m.at % bytes.length : 0);
    case 'insert': { const at = bytes.length ? m.at % bytes.length : 0; return Buffer.concat([bytes.subarray(0, at), Buffer.from(m.bytes), bytes.subarray(at)]); }
    case 'random': return Buffer.from(m.bytes);
  }
}

export interface DiscoveryInput {
  response: unknown;
  mutation: Mutation;
  /** Sent as a compressed payload (Subscribe.accept_encoding), whose zlib bytes get this mutation too. */
  compressed: { payloadMutation: Mutation } | null;
  lookups: { ip: string; port: number; sourceIp: string; sourceIdentity?: string; node: string }[];
}

interface DiscoveryCtx { codec: Codec; state: Map<string, WireResource>; accepted: number }

const seededRandom = () => 0.5;

export const discoveryTarget: FuzzTarget<DiscoveryInput, DiscoveryCtx> = {
  name: 'discovery',
  what: 'DiscoveryResponse messages (protobuf bytes, sometimes corrupted) decoded and applied by the node agent as deltas into MeshState, then the data path\'s lookups on the accepted state',
  input: fc.record({ response: discoveryResponse, mutation, compressed: fc.option(fc.record({ payloadMutation: mutation }), { nil: null }), lookups: fc.array(lookup, { maxLength: 6 }) }),
  setup() {
    const stream = (discoveryService() as unknown as { service: { Stream: { responseSerialize(v: unknown): Buffer; responseDeserialize(b: Buffer): unknown } } }).service.Stream;
    const codec: Codec = { serialize: (v) => stream.responseSerialize(v), deserialize: (b) => stream.responseDeserialize(b) as ReturnType<Codec['deserialize']> };
    return Promise.resolve({ codec, state: new Map(), accepted: 0 });
  },
  run(ctx, input) {
    let res: ReturnType<Codec['deserialize']>;
    let bytes = ctx.codec.serialize(input.response);
    if (input.compressed) {
      // As the controller writes it for a subscriber that reads payloads: the part's resources
      // serialized, deflated, and carried in `payload` (both layers corrupted at times).
      const r = ctx.codec.deserialize(bytes) as WireResponse;
      const payload = mutate(deflateSync(ctx.codec.serialize({ resources: r.resources, removed: r.removed })), input.compressed.payloadMutation);
      bytes = ctx.codec.serialize({ version: r.version, full: r.full, encoding: PAYLOAD_ENCODING, payload });
    }
    try {
      res = ctx.codec.deserialize(mutate(bytes, input.mutation));
    } catch {
      return Promise.resolve('undecodable'); // gRPC fails the stream; the agent reconnects with its state
    }
    try {
      res = openPart(res as WireResponse);
    } catch (err) {
      // The agent NACKs the version naming why (the payload's encoding, zlib, its size, the inner message).
      if (err instanceof Error && err.constructor === Error && /^version [\s\S]*: (payload|inflated payload)/.test(err.message)) return Promise.resolve('nack-payload');
      throw new Finding(`a payload refused with an error that names nothing: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
    const next = res.full ? new Map<string, WireResource>() : new Map(ctx.state);
    for (const r of res.resources) next.set(r.key, r);
    for (const k of res.removed) next.delete(k);
    let state: MeshState;
    try {
      // Node scope: the lookups below also ask what is missing, as the agent's data path does first.
      state = new MeshState(res.version, next, { rootNamespace: 'istio-system', scope: 'node' });
    } catch (err) {
      if (err instanceof MeshStateError) return Promise.resolve('nack');
      throw new Finding(`refused with an error that names nothing: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
    ctx.state = next;
    ctx.accepted++;
    try {
      for (const l of input.lookups) {
        const missing = state.missing(l.ip) ?? state.missing(l.sourceIp);
        if (missing !== undefined && demandNameError(missing)) throw new Error(`missing() named a demand the controller refuses: ${missing}`);
        for (const s of state.services.values()) state.missingService(`${s.namespace}/${s.name}`);
        state.resolve(l.ip, l.port, l.node, seededRandom);
        state.enrolledOn(l.node);
        for (const w of state.workloads.values()) {
          state.authorizer.evaluate(w, { sourceIp: l.sourceIp, destinationIp: l.ip, destinationPort: l.port, ...(l.sourceIdentity ? { sourceIdentity: l.sourceIdentity } : {}) });
          state.authorizer.peerAuthenticationMode(w, l.port);
          for (const s of state.servicesOf.get(w.uid) ?? []) for (const p of s.ports) MeshState.targetPort(p, w);
        }
      }
      JSON.stringify({ workloads: [...state.workloads.values()], services: [...state.services.values()], policies: state.policies });
    } catch (err) {
      throw new Finding(`accepted state (version ${JSON.stringify(res.version)}) throws on the data path: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
    return Promise.resolve('applied');
  },
  teardown: () => Promise.resolve(),
};
