/**
 * The CA's CreateCertificate on the wire: the real `CaServer` (gRPC over TLS, its serving
 * certificate from the mesh CA) on loopback, called by a node agent's credential with raw
 * protobuf bytes — a `CreateCertificateRequest` encoded by hand from the CA target's CSRs,
 * identities and TTLs (negative and 64-bit varints included), then sometimes given unknown
 * fields, wrong wire types, repeated fields, or its bytes flipped, cut or replaced — and with odd
 * `authorization` metadata. Every call must end with a gRPC status that names the problem; an
 * `internal error` (the handler threw something that is not a CaError) is a finding.
 */
import * as grpc from '@grpc/grpc-js';
import * as fc from 'fast-check';
import { BootstrapTokenAuthenticator, CaServer } from '../../../src/identity/ca-server.js';
import { createCsr, generateKeyPair } from '../../../src/identity/pki.js';
import { Finding, type FuzzTarget } from '../harness.js';
import { meshPki, type MeshPki } from '../mesh-pki.js';

const ID = 'spiffe://cluster.local/ns/shop/sa/users';
const TOKEN = 'node-a-bootstrap-token';
const METHOD = '/ambit.ca.v1.CertificateService/CreateCertificate';

function varint(v: bigint): number[] {
  let x = BigInt.asUintN(64, v);
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x) b |= 0x80;
    out.push(b);
  } while (x);
  return out;
}
const key = (field: number, wire: number) => varint(BigInt((field << 3) | wire));
const bytesField = (field: number, b: Buffer) => [...key(field, 2), ...varint(BigInt(b.length)), ...b];

type Field = { kind: 'csr'; which: 'valid' | 'garbage' | 'empty'; text: string } | { kind: 'identity'; value: string } | { kind: 'ttl'; value: bigint }
  | { kind: 'unknown'; field: number; wire: number; bytes: Uint8Array } | { kind: 'wrongWire'; field: number };

export interface CaWireInput {
  fields: Field[];
  mutation: { kind: 'none' } | { kind: 'flip'; at: number; byte: number } | { kind: 'truncate'; at: number } | { kind: 'random'; bytes: Uint8Array };
  auth: string | null;
}

const field: fc.Arbitrary<Field> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('csr' as const), which: fc.constantFrom('valid' as const, 'valid' as const, 'garbage' as const, 'empty' as const), text: fc.string({ maxLength: 80 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('identity' as const), value: fc.oneof(fc.constant(ID), fc.constant('spiffe://cluster.local/ns/shop/sa/orders'), fc.string({ maxLength: 40 })) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('ttl' as const), value: fc.oneof(fc.constantFrom(0n, 3600n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 53n + 1n), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('unknown' as const), field: fc.integer({ min: 4, max: 2 ** 29 - 1 }), wire: fc.constantFrom(0, 1, 2, 5), bytes: fc.uint8Array({ maxLength: 12 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('wrongWire' as const), field: fc.integer({ min: 1, max: 3 }) }) },
);

export const caWireInput: fc.Arbitrary<CaWireInput> = fc.record({
  // Mostly a request that gets as far as the CSR checks (a CSR and this node's identity), with more fields.
  fields: fc.oneof(
    { weight: 3, arbitrary: fc.tuple(field, fc.array(field, { maxLength: 3 })).map(([f, extra]) => [{ kind: 'csr' as const, which: 'valid' as const, text: '' }, { kind: 'identity' as const, value: ID }, f, ...extra]) },
    { weight: 1, arbitrary: fc.array(field, { maxLength: 6 }) },
  ),
  mutation: fc.oneof(
    { weight: 8, arbitrary: fc.constant({ kind: 'none' as const }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 64 }) }) },
  ),
  auth: fc.oneof({ weight: 8, arbitrary: fc.constant(`Bearer ${TOKEN}`) }, { weight: 1, arbitrary: fc.constantFrom(null, 'Bearer', `Bearer  ${TOKEN}`, `bearer ${TOKEN}`, `Bearer ${TOKEN}x`, 'Basic eDp5') }, { weight: 1, arbitrary: fc.string({ maxLength: 30 }) }),
});

interface CaWireCtx { pki: MeshPki; server: CaServer; client: grpc.Client; csr: string }

function encode(ctx: CaWireCtx, input: CaWireInput): Buffer {
  const out: number[] = [];
  for (const f of input.fields) {
    if (f.kind === 'csr') out.push(...bytesField(1, Buffer.from(f.which === 'valid' ? ctx.csr : f.which === 'empty' ? '' : f.text)));
    if (f.kind === 'identity') out.push(...bytesField(3, Buffer.from(f.value)));
    if (f.kind === 'ttl') out.push(...key(2, 0), ...varint(f.value));
    if (f.kind === 'unknown') out.push(...key(f.field, f.wire), ...(f.wire === 2 ? varint(BigInt(f.bytes.length)) : []), ...(f.wire === 0 ? varint(BigInt(f.bytes.length)) : f.wire === 1 ? [...f.bytes.slice(0, 8), ...new Array(Math.max(0, 8 - f.bytes.length)).fill(0)] : f.wire === 5 ? [...f.bytes.slice(0, 4), ...new Array(Math.max(0, 4 - f.bytes.length)).fill(0)] : [...f.bytes]));
    if (f.kind === 'wrongWire') out.push(...key(f.field, f.field === 2 ? 2 : 0), 1, 0x41);
  }
  const b = Buffer.from(out);
  const m = input.mutation;
  if (m.kind === 'flip' && b.length) b[m.at % b.length] = m.byte;
  if (m.kind === 'truncate') return b.subarray(0, b.length ? m.at % b.length : 0);
  if (m.kind === 'random') return Buffer.from(m.bytes);
  return b;
}

export const caWireTarget: FuzzTarget<CaWireInput, CaWireCtx> = {
  name: 'ca-grpc',
  what: 'CreateCertificate calls to the CA server (gRPC over TLS on loopback) as raw protobuf bytes built from CSRs, identities and TTLs, mutated, with odd authorization metadata',
  input: caWireInput,
  concurrency: 8,
  async setup() {
    const pki = await meshPki('ca-grpc');
    const server = await CaServer.start({
      ca: pki.ca, host: '127.0.0.1', port: 0,
      authenticator: new BootstrapTokenAuthenticator({ 'node-a': TOKEN }),
      directory: { identitiesOnNode: () => new Set([ID]) },
    });
    const client = new grpc.Client(server.address, grpc.credentials.createSsl(Buffer.from(pki.ca.trustBundle().join(''))), { 'grpc.ssl_target_name_override': 'localhost' });
    return { pki, server, client, csr: await createCsr(await generateKeyPair(), ID) };
  },
  run(ctx, input) {
    const metadata = new grpc.Metadata();
    if (input.auth !== null) metadata.set('authorization', input.auth);
    return new Promise((resolve, reject) => {
      ctx.client.makeUnaryRequest(METHOD, (b: Buffer) => b, (b: Buffer) => b, encode(ctx, input), metadata, { deadline: Date.now() + 4000 }, (err) => {
        if (!err) return resolve('signed');
        if (err.code === grpc.status.INTERNAL && /internal error/.test(err.details)) return reject(new Finding(`the CA answered "internal error": its handler threw something that is not a CaError (see the CA's log)`));
        if (err.code === grpc.status.DEADLINE_EXCEEDED || err.code === grpc.status.UNAVAILABLE) return reject(new Finding(`no answer: ${grpc.status[err.code]} ${err.details}`));
        resolve(err.code === grpc.status.INTERNAL ? `INTERNAL:${err.details.split(':')[0]!.slice(0, 40)}` : grpc.status[err.code] ?? String(err.code));
      });
    });
  },
  async alive(ctx) {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${TOKEN}`);
    const body = Buffer.from([...bytesField(1, Buffer.from(ctx.csr)), ...bytesField(3, Buffer.from(ID))]);
    await new Promise<void>((resolve, reject) => ctx.client.makeUnaryRequest(METHOD, (b: Buffer) => b, (b: Buffer) => b, body, metadata, { deadline: Date.now() + 4000 }, (err) => (err ? reject(err) : resolve())));
  },
  async teardown(ctx) {
    ctx.client.close();
    ctx.server.forceClose();
    ctx.pki.close();
  },
};
