/**
 * Bytes on the capture listeners (15001 outbound, 15006 inbound). The node agent does not parse
 * them: it joins the captured socket to the destination with `splice` and counts them with
 * `ConnectionTracker` (metrics, access log), which is what runs here, on real loopback sockets,
 * as the agent wires it (begin → join → count → finish). What varies is what the peers do: the
 * application writes any bytes in any chunks, half-closes or resets at any point; the destination
 * echoes, closes early, resets, or does not read. The join must end exactly once, carry every
 * byte when both sides end cleanly, count what it carried, and throw nothing.
 *
 * Two variants: `capture-bytes` with half-open sockets on both sides, as splice's contract
 * ("half-closes pass through") needs; `capture-bytes-agent-sockets` with the socket options the
 * agent's listeners (src/node/enroll.ts) and its upstream sockets (src/node/agent.ts) use today
 * (Node's defaults: a half-close closes the whole socket).
 */
import { createServer, Socket, type AddressInfo, type Server } from 'node:net';
import * as fc from 'fast-check';
import { ConnectionTracker, resetOrDestroy, splice } from '../../../src/node/connections.js';
import { MeshMetrics } from '../../../src/telemetry/metrics.js';
import { Finding, type FuzzTarget } from '../harness.js';
import { quietLogger } from '../mesh-pki.js';

type Step = { kind: 'write'; bytes: Uint8Array } | { kind: 'big'; size: number } | { kind: 'end' } | { kind: 'reset' } | { kind: 'tick' };
type App = 'echo' | 'close-early' | 'reset-early' | 'no-read';

export interface CaptureInput { steps: Step[]; app: App; workload: string; inbound: boolean }

const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('write' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 2048 }) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('big' as const), size: fc.integer({ min: 65_536, max: 1 << 20 }) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'end' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reset' as const }) },
  { weight: 2, arbitrary: fc.constant({ kind: 'tick' as const }) },
);

export const captureInput: fc.Arbitrary<CaptureInput> = fc.record({
  steps: fc.array(step, { maxLength: 8 }),
  app: fc.oneof({ weight: 5, arbitrary: fc.constant('echo' as const) }, { weight: 1, arbitrary: fc.constantFrom('close-early' as const, 'reset-early' as const, 'no-read' as const) }),
  workload: fc.oneof(fc.constantFrom('users', ''), fc.string({ maxLength: 20 })),
  inbound: fc.boolean(),
});

interface CaptureCtx { app: Server; capture: Server; tracker: ConnectionTracker; appPort: number; port: number; mode: Map<number, App>; input: Map<number, CaptureInput>; result: Map<number, (r: { err?: Error; received: number; sent: number; calls: number }) => void>; seen: Set<number>; sockets: Set<Socket> }

const tick = () => new Promise((r) => setImmediate(r));

function captureTarget(name: string, allowHalfOpen: boolean, what: string): FuzzTarget<CaptureInput, CaptureCtx> {
  return {
  name,
  what,
  input: captureInput,
  concurrency: 8,
  timeoutMs: 10_000,
  async setup() {
    const ctx = { mode: new Map(), input: new Map(), result: new Map(), seen: new Set() } as unknown as CaptureCtx;
    // The destination: the first bytes it reads say which behaviour (and which input) this is.
    ctx.sockets = new Set();
    const track = (s: Socket) => { ctx.sockets.add(s); s.once('close', () => ctx.sockets.delete(s)); };
    ctx.app = createServer({ allowHalfOpen }, (s) => {
      track(s);
      s.on('error', () => undefined);
      s.once('data', (first: Buffer) => {
        const id = first.readUInt32BE(0);
        const app = ctx.mode.get(id) ?? 'echo';
        if (app === 'close-early') return s.end();
        if (app === 'reset-early') return s.resetAndDestroy();
        if (app === 'no-read') return s.pause();
        s.write(first.subarray(4));
        s.pipe(s);
      });
    });
    ctx.tracker = new ConnectionTracker(new MeshMetrics(), quietLogger());
    // The capture listener, wired as the agent wires a captured connection.
    ctx.capture = createServer({ allowHalfOpen }, (client) => {
      track(client);
      client.on('error', () => undefined);
      client.once('readable', () => {
        const head = client.read(4) as Buffer | null;
        if (!head) return resetOrDestroy(client);
        const id = head.readUInt32BE(0);
        ctx.seen.add(id);
        const input = ctx.input.get(id);
        const conn = ctx.tracker.begin({
          reporter: input?.inbound ? 'destination' : 'source', source: { ip: '10.0.0.1', workload: input?.workload ?? '' }, destination: { ip: '10.0.0.2', port: ctx.appPort },
          mtls: false, path: input?.inbound ? 'plaintext' : 'passthrough', pod: 'shop/users',
        });
        const upstream = new Socket({ allowHalfOpen });
        track(upstream);
        upstream.once('error', (err) => { ctx.tracker.finish(conn, { flags: 'UF', error: err.message }); resetOrDestroy(client); ctx.result.get(id)?.({ err, received: 0, sent: 0, calls: 1 }); });
        upstream.connect(ctx.appPort, '127.0.0.1', () => {
          upstream.removeAllListeners('error');
          upstream.write(head);
          let calls = 0;
          // The agent's idle timeout is an hour; here it is short enough to be seen ending a join
          // whose peer vanished while the application does not read.
          splice(client, upstream, (err) => {
            calls++;
            ctx.tracker.finish(conn, err ? { flags: 'UR', error: err.message } : {});
            ctx.result.get(id)?.({ err, received: conn.received, sent: conn.sent, calls });
          }, { idleMs: 500, counter: conn });
        });
      });
    });
    await new Promise<void>((r) => ctx.app.listen(0, '127.0.0.1', r));
    await new Promise<void>((r) => ctx.capture.listen(0, '127.0.0.1', r));
    ctx.appPort = (ctx.app.address() as AddressInfo).port;
    ctx.port = (ctx.capture.address() as AddressInfo).port;
    return ctx;
  },
  async run(ctx, input) {
    const id = nextId++;
    ctx.mode.set(id, input.app);
    ctx.input.set(id, input);
    const joined = new Promise<{ err?: Error; received: number; sent: number; calls: number }>((resolve) => ctx.result.set(id, resolve));
    const client = new Socket({ allowHalfOpen });
    const got: Buffer[] = [];
    let sent = 0;
    let clean = true;
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.on('data', (c: Buffer) => got.push(c));
    client.on('error', () => { clean = false; });
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject).connect(ctx.port, '127.0.0.1'));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(id);
    client.write(head);
    let ended = false;
    for (const s of input.steps) {
      if (client.destroyed || ended) break;
      if (s.kind === 'write') { client.write(s.bytes); sent += s.bytes.length; }
      if (s.kind === 'big') { client.write(Buffer.alloc(s.size, 0x61)); sent += s.size; }
      if (s.kind === 'tick') await tick();
      if (s.kind === 'reset') { clean = false; client.resetAndDestroy(); }
      if (s.kind === 'end') { ended = true; client.end(); }
    }
    if (!client.destroyed && !ended) client.end();
    if (input.app === 'no-read') setTimeout(() => client.destroy(), 200).unref();
    const wait = (ms: number) => new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms).unref());
    const hungUp = await Promise.race([closed.then(() => true), wait(3000)]);
    if (!hungUp) client.destroy();
    // A reset can beat the id to the listener: then nothing was joined, and nothing is owed.
    const r = await Promise.race([joined, wait(2000)]);
    const seen = ctx.seen.delete(id);
    ctx.mode.delete(id);
    ctx.input.delete(id);
    ctx.result.delete(id);
    if (!r) {
      if (seen) throw new Finding(`the join never ended after ${hungUp ? 'both peers closed' : 'the application gave up waiting 3 s for its close'}`);
      return 'not-joined';
    }
    if (r.calls !== 1) throw new Finding(`the join ended ${r.calls} times`);
    if (!hungUp) throw new Finding('the application\'s connection was not closed within 3 s of its half-close');
    if (input.app === 'echo' && clean && !r.err) {
      const back = Buffer.concat(got).length;
      if (back !== sent) throw new Finding(`echoed ${back} of ${sent} bytes on a cleanly closed connection`);
      // The 4-byte id was read before counting began.
      if (r.received !== sent) throw new Finding(`counted ${r.received} bytes received, ${sent} were sent`);
    }
    return r.err ? `reset:${input.app}` : `closed:${input.app}`;
  },
  async teardown(ctx) {
    ctx.tracker.close();
    for (const s of ctx.sockets) s.destroy();
    await Promise.all([ctx.app, ctx.capture].map((s) => new Promise((r) => s.close(r))));
  },
  };
}

export const captureBytesTarget = captureTarget('capture-bytes', true,
  'bytes, half-closes and resets on a captured connection (15001/15006) joined to its destination by splice and counted by ConnectionTracker, half-open sockets on loopback');
export const captureAgentSocketsTarget = captureTarget('capture-bytes-agent-sockets', false,
  'the same with the socket options of the agent\'s capture listeners and upstream sockets today (Node\'s defaults: no half-open)');

let nextId = 1;
