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
  splice(client, upstream, (e) => { ended = e; }, { idleMs: 300 });
  // The server side of `upstream` writes every 100 ms: the join is not idle.
  const peer = held[held.length - 1]!;
  const timer = setInterval(() => peer.write('x'), 100);
  await new Promise((r) => setTimeout(r, 700));
  clearInterval(timer);
  expect(ended).toBeNull();
  client.destroy();
  await expect.poll(() => ended !== null).toBe(true);
});
