/** splice joins a captured connection to its destination: it ends exactly once, whatever order the sides go in. */
import { createServer, Socket, type AddressInfo, type Server } from 'node:net';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { splice } from '../../src/node/connections.js';

let server: Server;
let port = 0;
const held: Socket[] = [];
beforeAll(async () => {
  server = createServer((s) => { held.push(s); s.on('error', () => undefined); s.pause(); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterAll(() => {
  for (const s of held) s.destroy();
  server.close();
});

const connect = () => new Promise<Socket>((resolve, reject) => {
  const s = new Socket();
  s.on('error', () => undefined);
  s.once('connect', () => resolve(s)).once('error', reject).connect(port, '127.0.0.1');
});

it('ends when one side closed before the join (the client hung up while its upstream was dialled)', async () => {
  const client = await connect();
  const upstream = await connect();
  client.destroy();
  await new Promise((r) => client.once('close', r));
  let calls = 0;
  await new Promise<void>((resolve) => splice(client, upstream, () => { calls++; resolve(); }));
  expect(calls).toBe(1);
  expect(upstream.destroyed).toBe(true);
});

it('resets both sides of a join that moves no byte for idleMs', async () => {
  const client = await connect();
  const upstream = await connect();
  const t = Date.now();
  const err = await new Promise<Error | undefined>((resolve) => splice(client, upstream, resolve, { idleMs: 200 }));
  expect(err?.message).toBe('idle for 200 ms');
  expect(Date.now() - t).toBeGreaterThanOrEqual(190);
  expect(client.destroyed && upstream.destroyed).toBe(true);
});

it('keeps a join that moves bytes past idleMs', async () => {
  const client = await connect();
  const upstream = await connect();
  let ended: Error | undefined | null = null;
  const counter = { received: 0, sent: 0 };
  splice(client, upstream, (e) => { ended = e; }, { idleMs: 300, counter });
  // The server side of `upstream` writes every 100 ms: the join is not idle.
  const peer = held[held.length - 1]!;
  const timer = setInterval(() => peer.write('x'), 100);
  // Seven bytes carried, 100 ms apart: well over twice idleMs, and the join is still up.
  await expect.poll(() => counter.sent, { timeout: 5000, interval: 20 }).toBeGreaterThanOrEqual(7);
  clearInterval(timer);
  expect(ended).toBeNull();
  client.destroy();
  await expect.poll(() => ended !== null).toBe(true);
});

it('counts the bytes each way and passes a half-close on', async () => {
  // Both ends half-open, as the agent's sockets and HBONE streams are.
  const peers: Socket[] = [];
  const halfOpen = createServer({ allowHalfOpen: true }, (s) => { peers.push(s); s.pause(); });
  await new Promise<void>((r) => halfOpen.listen(0, '127.0.0.1', r));
  const at = (halfOpen.address() as AddressInfo).port;
  const dial = () => new Promise<Socket>((resolve) => { const s = new Socket({ allowHalfOpen: true }); s.connect(at, '127.0.0.1', () => resolve(s)); });
  try {
    const client = await dial();
    await expect.poll(() => peers.length).toBe(1);
    const upstream = await dial();
    await expect.poll(() => peers.length).toBe(2);
    const [clientPeer, upstreamPeer] = peers as [Socket, Socket];
    const counter = { received: 0, sent: 0 };
    let ended: Error | undefined | null = null;
    splice(client, upstream, (e) => { ended = e; }, { counter });
    let atUpstream = '';
    upstreamPeer.on('data', (c: Buffer) => { atUpstream += c.toString(); });
    let atClient = '';
    clientPeer.on('data', (c: Buffer) => { atClient += c.toString(); });
    const upstreamEnded = new Promise((r) => upstreamPeer.once('end', r));
    const clientEnded = new Promise((r) => clientPeer.once('end', r));
    upstreamPeer.resume();
    clientPeer.resume();
    clientPeer.end('hello');
    await upstreamEnded;
    expect(atUpstream).toBe('hello');
    // The other way still carries bytes after the first side's end.
    upstreamPeer.end('answer!');
    await clientEnded;
    expect(atClient).toBe('answer!');
    await expect.poll(() => ended).toBeUndefined();
    expect(counter).toEqual({ received: 5, sent: 7 });
  } finally {
    for (const s of peers) s.destroy();
    halfOpen.close();
  }
});

it('stops reading a side while the other side does not take its bytes', async () => {
  const client = await connect();
  const clientPeer = held[held.length - 1]!;
  const upstream = await connect();
  const upstreamPeer = held[held.length - 1]!;
  const counter = { received: 0, sent: 0 };
  splice(client, upstream, () => undefined, { counter });
  clientPeer.resume();
  // upstream's peer never reads: 16 MiB offered, the join holds at most a few socket buffers' worth.
  const chunk = Buffer.alloc(64 * 1024, 1);
  for (let i = 0; i < 256; i++) clientPeer.write(chunk);
  await expect.poll(() => client.isPaused(), { timeout: 10_000 }).toBe(true);
  const stalled = counter.received;
  await expect.poll(() => upstream.writableLength).toBeGreaterThan(0);
  expect(upstream.writableLength).toBeLessThan(4 * 1024 * 1024);
  // Taken again: it all arrives.
  let got = 0;
  upstreamPeer.on('data', (c: Buffer) => { got += c.length; });
  upstreamPeer.resume();
  await expect.poll(() => got, { timeout: 20_000 }).toBe(256 * chunk.length);
  expect(stalled).toBeLessThan(256 * chunk.length);
  client.destroy();
});

it('passes on an end that came before the join (a TCP probe: connect, then FIN at once), and ends', async () => {
  // The app answers a FIN by closing, as an HTTP server does with no request.
  const app = createServer((s) => { s.on('error', () => undefined); s.resume(); s.on('end', () => s.end()); });
  const appPort = await new Promise<number>((r) => app.listen(0, '127.0.0.1', () => r((app.address() as AddressInfo).port)));
  let ended: Error | undefined | null = null;
  const front = createServer((socket) => {
    socket.on('error', () => undefined);
    // The upstream is dialled only once the client's end has been read and emitted.
    socket.once('end', () => {
      const up = new Socket();
      up.on('error', () => undefined);
      up.connect(appPort, '127.0.0.1', () => {
        expect(socket.readableEnded).toBe(true);
        splice(socket, up, (e) => { ended = e; });
      });
    });
    socket.resume();
  });
  const port = await new Promise<number>((r) => front.listen(0, '127.0.0.1', () => r((front.address() as AddressInfo).port)));
  try {
    const probe = new Socket();
    probe.on('error', () => undefined);
    probe.connect(port, '127.0.0.1', () => probe.end());
    probe.resume();
    await expect.poll(() => ended, { timeout: 5_000 }).toBeUndefined();
  } finally {
    front.close();
    app.close();
  }
});
