// The shop demo (examples/shop): its five services as real child processes on 127.0.0.1, each on
// a port the kernel picked (PORT=0, read back from the `listening` log line), wired to each
// other through their *_URL env; loadgen.mjs driven against them. shop.yaml's shape:
// test/unit/shop.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer, request, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it, vi } from 'vitest';
import { until } from '../helpers/wait.js';
import { describeAsRoot } from './helpers/root.js';

const SHOP = fileURLToPath(new URL('../../examples/shop/', import.meta.url));
const children = new Set<ChildProcess>();

interface Exit { code: number | null; signal: NodeJS.Signals | null }

interface Proc {
  child: ChildProcess;
  lines: string[];
  stdout: () => string;
  stderr: () => string;
  exited: Promise<Exit>;
}

type Json = Record<string, unknown>;

interface Hop { service: string; version: string; pod: string; node?: string; request_id: string }

/** Rejects when `promise` has not settled within `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms}ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs examples/shop/<script> with only PATH from this environment plus `env`. */
function run(script: string, args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, [join(SHOP, script), ...args], {
    cwd: SHOP,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let out = '';
  let err = '';
  const lines: string[] = [];
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
    const parts = out.split('\n');
    lines.length = 0;
    lines.push(...parts.slice(0, -1));
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
  });
  const exited = new Promise<Exit>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return { child, lines, stdout: () => out, stderr: () => err, exited };
}

function logLines(p: Proc): Json[] {
  return p.lines.flatMap((line) => {
    try {
      return [JSON.parse(line) as Json];
    } catch {
      return [];
    }
  });
}

interface Service { proc: Proc; port: number; url: string }

/** Starts one service on a free port and waits for its `listening` line. */
async function service(name: string, env: Record<string, string> = {}): Promise<Service> {
  const proc = run('service.mjs', [], { SERVICE: name, PORT: '0', ...env });
  let exit: Exit | undefined;
  void proc.exited.then((e) => { exit = e; });
  const port = await until(`${name} listening`, () => {
    if (exit) throw new Error(`${name} exited ${exit.code} before listening: ${proc.stderr()}`);
    const line = logLines(proc).find((l) => l.msg === 'listening');
    return typeof line?.port === 'number' ? line.port : undefined;
  }, { timeout: 10_000, interval: 20 });
  return { proc, port, url: `http://127.0.0.1:${port}` };
}

async function post(url: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Json; headers: Headers }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: (await res.json()) as Json, headers: res.headers };
}

async function get(url: string): Promise<{ status: number; body: Json; text: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let body: Json = {};
  try {
    body = JSON.parse(text) as Json;
  } catch {
    // /healthz is plain text
  }
  return { status: res.status, body, text };
}

/**
 * A raw request through node:http: `chunks` are written one after the other; `end` false leaves it
 * open. `sent` is told the client's port once the whole request is handed to the kernel.
 */
function rawPost(port: number, path: string, headers: Record<string, string | number>, chunks: Buffer[], end = true, sent?: (clientPort: number) => void):
  Promise<{ status: number; headers: IncomingHttpHeaders; body: Json }> {
  return within(new Promise((resolve, reject) => {
    let answered = false;
    const req = request({ host: '127.0.0.1', port, method: 'POST', path, headers, agent: false }, (res) => {
      answered = true;
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => { text += c; });
      res.on('end', () => {
        req.destroy();
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) as Json });
      });
      res.on('error', reject);
    });
    req.on('error', (e) => { if (!answered) reject(e); });
    req.on('finish', () => sent?.(req.socket!.localPort!));
    if (chunks.length === 0) req.flushHeaders();
    for (const c of chunks) req.write(c);
    if (end) req.end();
  }), 10_000, `POST ${path}`);
}

/**
 * Bytes of the loopback connection from `clientPort` that the kernel still holds for the server on
 * `serverPort`, not yet read by it (/proc/net/tcp's rx_queue); undefined when there is no such socket.
 */
function unreadByServer(serverPort: number, clientPort: number): number | undefined {
  const hex = (port: number) => `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  // A server on `::` has the connection in tcp6 (with the IPv4 address mapped).
  const lines = ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((f) => readFileSync(f, 'utf8').split('\n').slice(1));
  for (const line of lines) {
    const [, local, remote, , queues] = line.trim().split(/\s+/);
    if (local?.endsWith(hex(serverPort)) && remote?.endsWith(hex(clientPort))) return parseInt(queues!.split(':')[1]!, 16);
  }
  return undefined;
}

async function exitOf(p: Proc, ms = 10_000): Promise<Exit> {
  return within(p.exited, ms, 'process exit');
}

/** A port nothing listens on: bound by the kernel, then released. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  await Promise.all([...children].map((c) => (c.exitCode === null && c.signalCode === null
    ? within(new Promise((resolve) => c.once('exit', resolve)), 5000, 'kill').catch(() => undefined)
    : undefined)));
});

// The healthy shop: pods named so the traces can be checked.
let users: Service;
let orders: Service;
let inventory: Service;
let payment: Service;
let shipping: Service;

beforeAll(async () => {
  [inventory, payment, shipping] = await Promise.all([
    service('inventory', { POD_NAME: 'inventory-0' }),
    service('payment', { POD_NAME: 'payment-v2-0', VERSION: 'v2' }),
    service('shipping', { POD_NAME: 'shipping-0', NODE_NAME: 'node-1' }),
  ]);
  orders = await service('orders', {
    POD_NAME: 'orders-0', INVENTORY_URL: inventory.url, PAYMENT_URL: payment.url, SHIPPING_URL: `${shipping.url}/`,
  });
  users = await service('users', { POD_NAME: 'users-0', ORDERS_URL: orders.url });
});

describeAsRoot('checkout through the five services', () => {
  it('goes users → orders → inventory, payment, shipping and traces every hop', async () => {
    const { status, body, headers } = await post(`${users.url}/api/users/u1/checkout`);
    expect(status).toBe(200);
    expect(body).toMatchObject({ service: 'users', version: 'v1', pod: 'users-0', user: 'u1' });
    const trace = body.trace as Hop[];
    expect(trace.map((h) => h.service)).toEqual(['users', 'orders', 'inventory', 'payment', 'shipping']);
    expect(trace.map((h) => h.pod)).toEqual(['users-0', 'orders-0', 'inventory-0', 'payment-v2-0', 'shipping-0']);
    expect(trace[3]).toMatchObject({ service: 'payment', version: 'v2' });
    expect(trace[4]?.node).toBe('node-1');
    // The default cart: one coffee (899) and three apples (120).
    const order = body.order as Json;
    expect(order).toMatchObject({ user: 'u1', status: 'confirmed', total_cents: 1259, currency: 'EUR' });
    expect(order.id).toMatch(/^ord-[0-9a-f]{12}$/);
    expect(order.charge_id).toMatch(/^ch-/);
    expect(order.shipment_id).toMatch(/^shp-/);
    // A generated request id, the same at every hop and in the response header.
    const id = headers.get('x-request-id');
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect(body.request_id).toBe(id);
    expect(new Set(trace.map((h) => h.request_id))).toEqual(new Set([id]));

    const stored = await get(`${orders.url}/api/orders/${String(order.id)}`);
    expect(stored.status).toBe(200);
    expect(stored.body.order).toEqual(order);
  });

  it('takes a cart in the body', async () => {
    const { status, body } = await post(`${users.url}/api/users/u2/checkout`, { items: [{ sku: 'sku-tea', qty: 2 }] });
    expect(status).toBe(200);
    expect(body.order).toMatchObject({ user: 'u2', total_cents: 1300, items: [{ sku: 'sku-tea', qty: 2, unit_cents: 650 }] });
  });

  it('propagates x-request-id, traceparent, baggage and B3 headers to every upstream call', async () => {
    const sent = {
      'x-request-id': 'shop-test-propagation-1',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
      tracestate: 'ambit=1',
      baggage: 'tenant=demo',
      'x-b3-traceid': '80f198ee56343ba864fe8b2a57d3eff7',
      'x-b3-sampled': '1',
    };
    const { status, body, headers } = await post(`${users.url}/api/users/u3/checkout`, undefined, sent);
    expect(status).toBe(200);
    expect(headers.get('x-request-id')).toBe(sent['x-request-id']);
    expect(body.request_id).toBe(sent['x-request-id']);
    expect((body.trace as Hop[]).every((h) => h.request_id === sent['x-request-id'])).toBe(true);
    // Each service logs the tracing headers it received.
    const { 'x-request-id': _id, ...traceHeaders } = sent;
    for (const s of [users, orders, inventory, payment, shipping]) {
      const line = await until('the access log line of the request', () => logLines(s.proc).find((l) => l.msg === 'request' && l.request_id === sent['x-request-id']), { timeout: 5000, interval: 20 });
      expect(line).toMatchObject({ method: 'POST', status: 200, trace_headers: traceHeaders });
      expect(typeof line.duration_ms).toBe('number');
    }
  });

  it('logs one JSON line per request', async () => {
    await get(`${inventory.url}/healthz`);
    const line = await until('the healthz log line', () => logLines(inventory.proc).find((l) => l.path === '/healthz'), { timeout: 5000, interval: 20 });
    expect(line).toMatchObject({ msg: 'request', service: 'inventory', method: 'GET', path: '/healthz', status: 200 });
  });
});

describeAsRoot('routes and errors', () => {
  it('answers /healthz, GET /api/users/:id and the route list', async () => {
    for (const s of [users, orders, inventory, payment, shipping]) {
      expect(await get(`${s.url}/healthz`)).toMatchObject({ status: 200, text: 'ok' });
    }
    const user = await get(`${users.url}/api/users/u1`);
    expect(user.status).toBe(200);
    expect(user.body).toMatchObject({ service: 'users', pod: 'users-0', user: { id: 'u1', name: 'Ada Lovelace' } });
    expect((await get(`${orders.url}/`)).body.routes).toEqual(['GET /', 'GET /healthz', 'POST /api/orders', 'GET /api/orders/:id']);
  });

  it('404s unknown routes, users and orders with JSON', async () => {
    const route = await get(`${users.url}/nope`);
    expect(route.status).toBe(404);
    expect(route.body).toMatchObject({ service: 'users', version: 'v1', pod: 'users-0', error: 'no route GET /nope' });
    expect((await get(`${users.url}/api/users/u9`)).status).toBe(404);
    expect((await post(`${users.url}/api/users/u9/checkout`)).status).toBe(404);
    expect((await get(`${orders.url}/api/orders/ord-000000000000`)).status).toBe(404);
  });

  it('405s a known path with the wrong method', async () => {
    const res = await fetch(`${users.url}/api/users/u1`, { method: 'DELETE', signal: AbortSignal.timeout(10_000) });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET');
    await res.body?.cancel();
  });

  it('400s malformed JSON and bad carts', async () => {
    const malformed = await post(`${users.url}/api/users/u1/checkout`, '{"items": [');
    expect(malformed.status).toBe(400);
    expect(malformed.body).toMatchObject({ service: 'users', error: 'malformed JSON body' });
    expect((await post(`${users.url}/api/users/u1/checkout`, '[1]')).status).toBe(400);
    const qty = await post(`${users.url}/api/users/u1/checkout`, { items: [{ sku: 'sku-tea', qty: 0 }] });
    expect(qty.status).toBe(400);
    expect(qty.body.error).toMatch(/qty/);
    expect((await post(`${orders.url}/api/orders`)).status).toBe(400);
  });

  it('413s bodies over 1 MB, declared or streamed', async () => {
    const declared = await rawPost(users.port, '/api/users/u1/checkout',
      { 'content-type': 'application/json', 'content-length': 1024 * 1024 + 1 }, [Buffer.alloc(1024 * 1024 + 1, 0x20)]);
    expect(declared.status).toBe(413);
    expect(declared.body).toMatchObject({ service: 'users', error: 'request body larger than 1 MB' });
    const streamed = await rawPost(users.port, '/api/users/u1/checkout',
      { 'content-type': 'application/json' }, [Buffer.alloc(700 * 1024, 0x20), Buffer.alloc(700 * 1024, 0x20)]);
    expect(streamed.status).toBe(413);
    expect(streamed.headers['transfer-encoding']).toBeUndefined();
    // Declared far too large: answered from the headers alone, without reading a byte.
    const huge = await rawPost(users.port, '/api/users/u1/checkout', { 'content-length': 100 * 1024 * 1024 }, [], false);
    expect(huge.status).toBe(413);
    expect(huge.headers.connection).toBe('close');
  });

  it('502s an unknown sku, naming the upstream chain', async () => {
    const { status, body } = await post(`${users.url}/api/users/u1/checkout`, { items: [{ sku: 'sku-nope', qty: 1 }] });
    expect(status).toBe(502);
    expect(body).toMatchObject({ upstream: 'orders', upstream_status: 502, detail: 'upstream inventory answered 422' });
  });
});

describeAsRoot('fault knobs', () => {
  let badPayment: Service;
  let badOrders: Service;
  let badUsers: Service;

  beforeAll(async () => {
    badPayment = await service('payment', { POD_NAME: 'payment-bad', FAIL_RATE: '1' });
    badOrders = await service('orders', {
      POD_NAME: 'orders-bad', INVENTORY_URL: inventory.url, PAYMENT_URL: badPayment.url, SHIPPING_URL: shipping.url,
    });
    badUsers = await service('users', { POD_NAME: 'users-bad', ORDERS_URL: badOrders.url });
  });

  it('FAIL_RATE=1 on payment: 503 from payment, 502 from orders naming payment', async () => {
    const direct = await post(`${badPayment.url}/api/charge`, { amount_cents: 1 });
    expect(direct.status).toBe(503);
    expect(direct.body).toMatchObject({ service: 'payment', pod: 'payment-bad', error: 'injected failure (FAIL_RATE)' });
    expect((await get(`${badPayment.url}/healthz`)).status).toBe(200);

    const { status, body } = await post(`${badOrders.url}/api/orders`, { user: 'u1', items: [{ sku: 'sku-apple', qty: 1 }] });
    expect(status).toBe(502);
    expect(body).toMatchObject({
      service: 'orders', error: 'upstream payment answered 503', upstream: 'payment', upstream_status: 503,
      detail: 'injected failure (FAIL_RATE)',
    });
    expect((body.trace as Hop[]).map((h) => `${h.service}/${h.pod}`))
      .toEqual(['orders/orders-bad', 'inventory/inventory-0', 'payment/payment-bad', 'shipping/shipping-0']);

    const chained = await post(`${badUsers.url}/api/users/u1/checkout`);
    expect(chained.status).toBe(502);
    expect(chained.body).toMatchObject({ upstream: 'orders', upstream_status: 502, detail: 'upstream payment answered 503' });
  });

  it('502s an unreachable upstream with its error code', async () => {
    const lonely = await service('users', { POD_NAME: 'users-lonely', ORDERS_URL: `http://127.0.0.1:${await closedPort()}` });
    const { status, body } = await post(`${lonely.url}/api/users/u1/checkout`);
    expect(status).toBe(502);
    expect(body).toMatchObject({ upstream: 'orders', upstream_error: 'ECONNREFUSED', error: 'upstream orders failed: ECONNREFUSED' });
    lonely.proc.child.kill('SIGTERM');
    expect(await exitOf(lonely.proc)).toEqual({ code: 0, signal: null });
  });

  it('exits 1 naming the variable on bad env values', async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{ SERVICE: 'payment', FAIL_RATE: '1.5' }, /invalid FAIL_RATE="1\.5": must be a number from 0 to 1/],
      [{ SERVICE: 'payment', FAIL_RATE: 'often' }, /invalid FAIL_RATE="often"/],
      [{ SERVICE: 'payment', DELAY_MS: '-5' }, /invalid DELAY_MS="-5"/],
      [{ SERVICE: 'payment', PORT: '70000' }, /invalid PORT="70000"/],
      [{ SERVICE: 'users', ORDERS_URL: 'ftp://orders' }, /invalid ORDERS_URL="ftp:\/\/orders"/],
      [{ SERVICE: 'cart' }, /invalid SERVICE="cart": must be one of users\|orders\|payment\|inventory\|shipping/],
      [{}, /SERVICE is not set/],
    ];
    for (const [env, message] of cases) {
      const proc = run('service.mjs', [], env);
      expect(await exitOf(proc)).toEqual({ code: 1, signal: null });
      expect(proc.stderr()).toMatch(message);
      expect(proc.stdout()).toBe('');
    }
  });

  it('DELAY_MS adds latency to API requests, and SIGTERM lets the request in flight finish', async () => {
    const slow = await service('inventory', { POD_NAME: 'inventory-slow', DELAY_MS: '400' });
    const started = Date.now();
    const reserve = Buffer.from(JSON.stringify({ items: [{ sku: 'sku-bread', qty: 1 }] }));
    let clientPort = 0;
    const inFlight = rawPost(slow.port, '/api/reserve', { 'content-type': 'application/json', 'content-length': reserve.length }, [reserve], true, (p) => { clientPort = p; });
    // In flight: the whole request sent, and read by the service (the kernel holds none of it for it).
    await vi.waitFor(() => {
      expect(clientPort, 'the request sent').toBeGreaterThan(0);
      expect(unreadByServer(slow.port, clientPort), 'the request read by the service').toBe(0);
    }, { timeout: 5000, interval: 5 });
    slow.proc.child.kill('SIGTERM');
    const { status, body } = await inFlight;
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
    expect(status).toBe(200);
    expect(body.reservation).toMatchObject({ total_cents: 450 });
    expect(await exitOf(slow.proc)).toEqual({ code: 0, signal: null });
    expect(logLines(slow.proc).map((l) => l.msg)).toEqual(['listening', 'shutting down', 'request', 'stopped']);
  });
});

describeAsRoot('SIGTERM', () => {
  it('closes the server, idle keep-alive connections included, and exits 0', async () => {
    const s = await service('shipping', { POD_NAME: 'shipping-term' });
    // Leaves a keep-alive connection open in fetch's pool.
    expect((await get(`${s.url}/healthz`)).status).toBe(200);
    s.proc.child.kill('SIGTERM');
    expect(await exitOf(s.proc, 5000)).toEqual({ code: 0, signal: null });
    expect(logLines(s.proc).at(-1)).toMatchObject({ msg: 'stopped' });
  });
});

describeAsRoot('loadgen', () => {
  interface Summary {
    requests: number; ok: number; failed: number; concurrency: number;
    status: Record<string, number>; errors: Record<string, number>;
    latency_ms: { p50: number | null; p90: number | null; p99: number | null; max: number | null };
    pods: Record<string, Record<string, number>>; versions: Record<string, Record<string, number>>;
  }

  async function loadgen(args: string[]): Promise<{ exit: Exit; out: string; err: string }> {
    const proc = run('loadgen.mjs', args);
    const exit = await exitOf(proc, 30_000);
    return { exit, out: proc.stdout(), err: proc.stderr() };
  }

  it('drives checkouts: exit 0, and the --json summary counts match', async () => {
    const { exit, out } = await loadgen([
      '--url', `${users.url}/api/users/u1/checkout`, '--method', 'POST', '--requests', '20', '--concurrency', '4', '--json',
    ]);
    expect(exit).toEqual({ code: 0, signal: null });
    const s = JSON.parse(out) as Summary;
    expect(s).toMatchObject({ requests: 20, ok: 20, failed: 0, concurrency: 4, status: { 200: 20 }, errors: {} });
    expect(s.pods).toEqual({
      users: { 'users-0': 20 }, orders: { 'orders-0': 20 }, inventory: { 'inventory-0': 20 },
      payment: { 'payment-v2-0': 20 }, shipping: { 'shipping-0': 20 },
    });
    expect(s.versions.payment).toEqual({ v2: 20 });
    const { p50, p90, p99, max } = s.latency_ms;
    expect(p50).toBeGreaterThan(0);
    expect(p50!).toBeLessThanOrEqual(p90!);
    expect(p90!).toBeLessThanOrEqual(p99!);
    expect(p99!).toBeLessThanOrEqual(max!);
  });

  it('prints a table of the pods that served each service', async () => {
    const { exit, out } = await loadgen(['--url', `${users.url}/api/users/u2`, '--requests', '5', '--header', 'x-demo: 1']);
    expect(exit.code).toBe(0);
    expect(out).toContain(`GET ${users.url}/api/users/u2`);
    expect(out).toMatch(/^status {3}200: 5$/m);
    expect(out).toMatch(/^errors {3}none$/m);
    expect(out).toMatch(/^latency {2}p50 [\d.]+ms {2}p90 [\d.]+ms {2}p99 [\d.]+ms/m);
    expect(out).toMatch(/^SERVICE\s+POD\s+REQUESTS$/m);
    expect(out).toMatch(/^users\s+users-0\s+5$/m);
  });

  it('exits 1 on failures and counts them by status and by error code', async () => {
    const failing = await loadgen(['--url', `http://127.0.0.1:${users.port}/api/users/u9`, '--requests', '6', '--json']);
    expect(failing.exit.code).toBe(1);
    expect(JSON.parse(failing.out)).toMatchObject({ requests: 6, ok: 0, failed: 6, status: { 404: 6 } });

    const refused = await loadgen(['--url', `http://127.0.0.1:${await closedPort()}/`, '--requests', '3', '--json']);
    expect(refused.exit.code).toBe(1);
    const s = JSON.parse(refused.out) as Summary;
    expect(s).toMatchObject({ requests: 3, failed: 3, status: {}, errors: { ECONNREFUSED: 3 }, pods: {} });
    expect(s.latency_ms.p50).toBeNull();
  });

  it('exits 2 on usage errors', async () => {
    for (const args of [[], ['--url', 'http://127.0.0.1:1/', '--requests', '0'], ['--url', 'nope'], ['--bogus']]) {
      const { exit, err } = await loadgen(args);
      expect(exit.code).toBe(2);
      expect(err).toMatch(/^loadgen: .*\nusage: /);
    }
  });
});
