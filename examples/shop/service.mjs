// The shop demo: one program that is any of its five services, chosen by env SERVICE.
//
//   users ──► orders ──► inventory            (first: prices the cart)
//                    ├─► payment   ┐          (then both at once)
//                    └─► shipping  ┘
//
// Plain Node.js (node:* only, no build step) so `ambit local up` can run it as `node service.mjs`.
// Every JSON answer carries who served it (service, version, pod, node) and a `trace` of every hop
// behind it; tracing headers are copied from the inbound request onto every upstream call.
// See README.md in this directory for the routes and the env knobs.
import { randomBytes, randomUUID } from 'node:crypto';
import { Agent, createServer, request as httpRequest } from 'node:http';
import { hostname } from 'node:os';

const SERVICES = ['users', 'orders', 'payment', 'inventory', 'shipping'];
const UPSTREAMS = { orders: 'ORDERS_URL', payment: 'PAYMENT_URL', inventory: 'INVENTORY_URL', shipping: 'SHIPPING_URL' };
const MAX_BODY = 1024 * 1024;
const DRAIN_LIMIT = 4 * 1024 * 1024; // of an oversized body, read and dropped before the 413
const SHUTDOWN_GRACE_MS = 10_000;
// Copied from the inbound request onto upstream calls, so a mesh can stitch traces without app changes.
const PROPAGATED = [
  'x-request-id', 'traceparent', 'tracestate', 'baggage',
  'x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags', 'b3',
];

// ---------------------------------------------------------------------------------------------
// Configuration: every env value is checked up front; a bad one stops the process with exit 1.

class ConfigError extends Error {}

function readConfig(env) {
  const errors = [];
  const get = (name) => (env[name] === undefined || env[name] === '' ? undefined : env[name]);
  const check = (fn) => {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      errors.push(e.message);
      return undefined;
    }
  };
  const integer = (name, fallback, min, max) => check(() => {
    const raw = get(name);
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      throw new ConfigError(`invalid ${name}=${JSON.stringify(raw)}: must be an integer from ${min} to ${max}`);
    }
    return Number(raw);
  });

  const service = check(() => {
    const raw = get('SERVICE');
    if (raw === undefined) throw new ConfigError(`SERVICE is not set: must be one of ${SERVICES.join('|')}`);
    if (!SERVICES.includes(raw)) throw new ConfigError(`invalid SERVICE=${JSON.stringify(raw)}: must be one of ${SERVICES.join('|')}`);
    return raw;
  });
  const port = integer('PORT', 8080, 0, 65535);
  const version = check(() => {
    const raw = get('VERSION') ?? 'v1';
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(raw)) {
      throw new ConfigError(`invalid VERSION=${JSON.stringify(raw)}: letters, digits, '.', '_' or '-', at most 63 characters`);
    }
    return raw;
  });
  const failRate = check(() => {
    const raw = get('FAIL_RATE');
    if (raw === undefined) return 0;
    const n = /^\d+(\.\d+)?$|^\.\d+$/.test(raw) ? Number(raw) : NaN;
    if (!(n >= 0 && n <= 1)) throw new ConfigError(`invalid FAIL_RATE=${JSON.stringify(raw)}: must be a number from 0 to 1`);
    return n;
  });
  const delayMs = integer('DELAY_MS', 0, 0, 300_000);
  const upstreamTimeoutMs = integer('UPSTREAM_TIMEOUT_MS', 10_000, 1, 300_000);
  const upstreams = {};
  for (const [name, variable] of Object.entries(UPSTREAMS)) {
    upstreams[name] = check(() => {
      const raw = get(variable) ?? `http://${name}`;
      let url;
      try {
        url = new URL(raw);
      } catch {
        throw new ConfigError(`invalid ${variable}=${JSON.stringify(raw)}: not a URL`);
      }
      if (url.protocol !== 'http:' || url.username || url.password || url.search || url.hash) {
        throw new ConfigError(`invalid ${variable}=${JSON.stringify(raw)}: must be a plain http:// base URL (the mesh adds mTLS)`);
      }
      return {
        host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: url.port ? Number(url.port) : 80,
        prefix: url.pathname.replace(/\/+$/, ''),
        text: raw,
      };
    });
  }
  if (errors.length > 0) throw new ConfigError(errors.join('\n'));
  return {
    service, port, version, failRate, delayMs, upstreamTimeoutMs, upstreams,
    pod: get('POD_NAME') ?? hostname(),
    node: get('NODE_NAME'),
  };
}

let config;
try {
  config = readConfig(process.env);
} catch (e) {
  if (!(e instanceof ConfigError)) throw e;
  for (const line of e.message.split('\n')) process.stderr.write(`shop service: ${line}\n`);
  process.exit(1);
}

const self = { service: config.service, version: config.version, pod: config.pod, ...(config.node ? { node: config.node } : {}) };

function log(fields) {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...self, ...fields })}\n`);
}

// ---------------------------------------------------------------------------------------------
// Data: fixed users and catalog; orders live in the memory of the orders pod that took them.

const USERS = {
  u1: { id: 'u1', name: 'Ada Lovelace', email: 'ada@example.com' },
  u2: { id: 'u2', name: 'Grace Hopper', email: 'grace@example.com' },
  u3: { id: 'u3', name: 'Alan Turing', email: 'alan@example.com' },
};
const CATALOG = {
  'sku-apple': { name: 'Apple', unit_cents: 120 },
  'sku-bread': { name: 'Sourdough loaf', unit_cents: 450 },
  'sku-coffee': { name: 'Coffee beans 250g', unit_cents: 899 },
  'sku-tea': { name: 'Green tea', unit_cents: 650 },
};
const DEFAULT_CART = [{ sku: 'sku-coffee', qty: 1 }, { sku: 'sku-apple', qty: 3 }];
const CURRENCY = 'EUR';
const MAX_ORDERS = 1000;
const orders = new Map();

const newId = (prefix) => `${prefix}-${randomBytes(6).toString('hex')}`;
const ID = '([A-Za-z0-9_-]{1,64})'; // what :id matches in a route

class HttpError extends Error {
  constructor(status, message, extra = {}) {
    super(message);
    this.status = status;
    this.extra = extra;
  }
}

function objectBody(body, required) {
  if (body === undefined) {
    if (required) throw new HttpError(400, 'a JSON object body is required');
    return {};
  }
  return body;
}

function checkItems(items) {
  if (!Array.isArray(items) || items.length < 1 || items.length > 20) {
    throw new HttpError(400, 'items must be an array of 1 to 20 {sku, qty}');
  }
  return items.map((item, i) => {
    if (typeof item !== 'object' || item === null || typeof item.sku !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(item.sku)) {
      throw new HttpError(400, `items[${i}].sku must be a string of letters, digits, '_' or '-'`);
    }
    if (!Number.isInteger(item.qty) || item.qty < 1 || item.qty > 100) {
      throw new HttpError(400, `items[${i}].qty must be an integer from 1 to 100`);
    }
    return { sku: item.sku, qty: item.qty };
  });
}

// ---------------------------------------------------------------------------------------------
// Upstream calls: keep-alive, bounded in time and size, never throw (they resolve an outcome).

const agent = new Agent({ keepAlive: true, maxSockets: 128, timeout: 30_000 });

function callUpstream(ctx, name, path, payload) {
  const target = config.upstreams[name];
  const data = Buffer.from(JSON.stringify(payload));
  return new Promise((resolve) => {
    let settled = false;
    const done = (outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ upstream: name, ...outcome });
    };
    const req = httpRequest({
      agent, host: target.host, port: target.port, method: 'POST', path: `${target.prefix}${path}`,
      headers: { ...ctx.forward, 'content-type': 'application/json', accept: 'application/json', 'content-length': data.length },
    }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_BODY) {
          req.destroy();
          done({ status: res.statusCode, error: 'response larger than 1 MB' });
        } else {
          chunks.push(chunk);
        }
      });
      res.on('end', () => {
        let body;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          body = undefined;
        }
        done({ status: res.statusCode, body: typeof body === 'object' && body !== null ? body : undefined });
      });
      res.on('error', (e) => done({ status: res.statusCode, error: e.code ?? e.message }));
    });
    const timer = setTimeout(() => {
      req.destroy();
      done({ error: `timeout after ${config.upstreamTimeoutMs}ms` });
    }, config.upstreamTimeoutMs);
    req.on('error', (e) => done({ error: e.code ?? e.message }));
    req.end(data);
  });
}

const succeeded = (o) => o.error === undefined && o.status >= 200 && o.status < 300 && o.body !== undefined;
const hopsOf = (o) => (Array.isArray(o.body?.trace) ? o.body.trace : []);

/** 502 naming the first failed upstream (`failures` lists them all when several failed), with the hops seen so far. */
function upstreamFailure(outcomes, hops) {
  const failures = outcomes.filter((o) => !succeeded(o)).map((o) => ({
    upstream: o.upstream,
    ...(o.status !== undefined ? { upstream_status: o.status } : {}),
    ...(o.error !== undefined ? { upstream_error: o.error } : {}),
    ...(typeof o.body?.error === 'string' ? { detail: o.body.error } : {}),
  }));
  const first = failures[0];
  const why = first.upstream_error !== undefined ? `failed: ${first.upstream_error}` : `answered ${first.upstream_status}`;
  throw new HttpError(502, `upstream ${first.upstream} ${why}`, { ...first, ...(failures.length > 1 ? { failures } : {}), hops });
}

// ---------------------------------------------------------------------------------------------
// Routes. A handler gets (ctx, params, body) and returns { body, hops? } (status 200).

const ROUTES = {
  users: [
    ['GET', '/api/users/:id', (_ctx, [id]) => {
      const user = USERS[id];
      if (!user) throw new HttpError(404, `no user ${id}`);
      return { body: { user } };
    }],
    ['POST', '/api/users/:id/checkout', async (ctx, [id], raw) => {
      if (!USERS[id]) throw new HttpError(404, `no user ${id}`);
      const body = objectBody(raw, false);
      const items = body.items === undefined ? DEFAULT_CART : checkItems(body.items);
      const placed = await callUpstream(ctx, 'orders', '/api/orders', { user: id, items });
      const hops = hopsOf(placed);
      if (!succeeded(placed) || typeof placed.body.order !== 'object') upstreamFailure([placed], hops);
      return { body: { user: id, order: placed.body.order }, hops };
    }],
  ],
  orders: [
    ['POST', '/api/orders', async (ctx, _params, raw) => {
      const body = objectBody(raw, true);
      if (typeof body.user !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(body.user)) {
        throw new HttpError(400, 'user must be a user id');
      }
      const items = checkItems(body.items);
      const id = newId('ord');
      const reserved = await callUpstream(ctx, 'inventory', '/api/reserve', { order_id: id, items });
      const hops = [...hopsOf(reserved)];
      const reservation = reserved.body?.reservation;
      if (!succeeded(reserved) || typeof reservation?.total_cents !== 'number') upstreamFailure([reserved], hops);
      const [charged, shipped] = await Promise.all([
        callUpstream(ctx, 'payment', '/api/charge', { order_id: id, user: body.user, amount_cents: reservation.total_cents, currency: CURRENCY }),
        callUpstream(ctx, 'shipping', '/api/ship', { order_id: id, user: body.user, items }),
      ]);
      hops.push(...hopsOf(charged), ...hopsOf(shipped));
      if (!succeeded(charged) || !succeeded(shipped)) upstreamFailure([charged, shipped], hops);
      const order = {
        id, user: body.user, status: 'confirmed', items: reservation.items, total_cents: reservation.total_cents,
        currency: CURRENCY, reservation_id: reservation.id, charge_id: charged.body.charge?.id,
        shipment_id: shipped.body.shipment?.id, eta_days: shipped.body.shipment?.eta_days,
        created_at: new Date().toISOString(),
      };
      orders.set(id, order);
      if (orders.size > MAX_ORDERS) orders.delete(orders.keys().next().value);
      return { body: { order }, hops };
    }],
    ['GET', '/api/orders/:id', (_ctx, [id]) => {
      const order = orders.get(id);
      // Orders are kept in the memory of the replica that took them; another replica says 404.
      if (!order) throw new HttpError(404, `no order ${id} on this pod`);
      return { body: { order } };
    }],
  ],
  inventory: [
    ['POST', '/api/reserve', (_ctx, _params, raw) => {
      const body = objectBody(raw, true);
      const items = checkItems(body.items).map(({ sku, qty }) => {
        const entry = CATALOG[sku];
        if (!entry) throw new HttpError(422, `unknown sku ${sku}`);
        return { sku, name: entry.name, qty, unit_cents: entry.unit_cents };
      });
      const total = items.reduce((sum, i) => sum + i.qty * i.unit_cents, 0);
      const orderId = typeof body.order_id === 'string' ? body.order_id : undefined;
      return { body: { reservation: { id: newId('res'), order_id: orderId, items, total_cents: total, currency: CURRENCY } } };
    }],
  ],
  payment: [
    ['POST', '/api/charge', (_ctx, _params, raw) => {
      const body = objectBody(raw, true);
      if (!Number.isInteger(body.amount_cents) || body.amount_cents < 0) {
        throw new HttpError(400, 'amount_cents must be a non-negative integer');
      }
      const orderId = typeof body.order_id === 'string' ? body.order_id : undefined;
      return { body: { charge: { id: newId('ch'), order_id: orderId, amount_cents: body.amount_cents, currency: CURRENCY, status: 'captured' } } };
    }],
  ],
  shipping: [
    ['POST', '/api/ship', (_ctx, _params, raw) => {
      const body = objectBody(raw, true);
      const items = checkItems(body.items);
      const orderId = typeof body.order_id === 'string' ? body.order_id : undefined;
      const parcels = Math.max(1, Math.ceil(items.reduce((n, i) => n + i.qty, 0) / 10));
      return { body: { shipment: { id: newId('shp'), order_id: orderId, carrier: 'ambit-post', parcels, eta_days: 2 } } };
    }],
  ],
}[config.service].map(([method, path, handler]) => ({ method, path, pattern: new RegExp(`^${path.replaceAll(':id', ID)}$`), handler }));
const USES = { users: ['orders'], orders: ['inventory', 'payment', 'shipping'] }[config.service] ?? [];

// ---------------------------------------------------------------------------------------------
// Serving.

/**
 * The JSON object body, or undefined when empty. Over 1 MB → 413: up to DRAIN_LIMIT more bytes are
 * read and dropped first, so the client has finished sending and reads the 413 rather than a
 * reset; beyond that (or a larger declared content-length) it is answered at once, and closed.
 */
function readBody(req) {
  const declared = Number(req.headers['content-length']);
  if (declared > MAX_BODY + DRAIN_LIMIT) return Promise.reject(new HttpError(413, 'request body larger than 1 MB', { close: true }));
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    const onData = (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY) {
        chunks.push(chunk);
      } else if (size > MAX_BODY + DRAIN_LIMIT) {
        req.off('data', onData);
        req.pause();
        reject(new HttpError(413, 'request body larger than 1 MB', { close: true }));
      }
    };
    req.on('data', onData);
    req.on('end', () => {
      if (size > MAX_BODY) return reject(new HttpError(413, 'request body larger than 1 MB', { close: true }));
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve(undefined);
      let body;
      try {
        body = JSON.parse(text);
      } catch {
        return reject(new HttpError(400, 'malformed JSON body'));
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) return reject(new HttpError(400, 'JSON body must be an object'));
      resolve(body);
    });
    req.on('error', reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let shuttingDown = false;

function sendJson(res, ctx, status, payload, hops = [], headers = {}) {
  const body = JSON.stringify({ ...self, request_id: ctx.requestId, ...payload, trace: [{ ...self, request_id: ctx.requestId }, ...hops] });
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-request-id': ctx.requestId });
  res.end(body);
}

async function handle(req, res, ctx) {
  if (ctx.path === '/healthz') {
    const [status, text] = shuttingDown ? [503, 'shutting down'] : [200, 'ok'];
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': text.length });
    res.end(text);
    return;
  }
  if (ctx.path === '/' && req.method === 'GET') {
    sendJson(res, ctx, 200, { routes: ['GET /', 'GET /healthz', ...ROUTES.map((r) => `${r.method} ${r.path}`)] });
    return;
  }
  let params;
  const allowed = [];
  let route;
  for (const r of ROUTES) {
    const m = r.pattern.exec(ctx.path);
    if (!m) continue;
    allowed.push(r.method);
    if (r.method === req.method) {
      route = r;
      params = m.slice(1);
      break;
    }
  }
  if (!route) {
    if (allowed.length > 0) throw new HttpError(405, `method ${req.method} not allowed on ${ctx.path}`, { allow: allowed.join(', ') });
    throw new HttpError(404, `no route ${req.method} ${ctx.path}`);
  }
  // Fault knobs, for mesh demos (timeouts, retries, outlier detection): API routes only.
  if (config.delayMs > 0) await sleep(config.delayMs);
  if (config.failRate > 0 && Math.random() < config.failRate) throw new HttpError(503, 'injected failure (FAIL_RATE)');
  const body = req.method === 'POST' ? await readBody(req) : undefined;
  const result = await route.handler(ctx, params, body);
  sendJson(res, ctx, 200, result.body, result.hops ?? []);
}

function onRequest(req, res) {
  const started = process.hrtime.bigint();
  const inbound = req.headers['x-request-id'];
  const requestId = typeof inbound === 'string' && inbound.length > 0 && inbound.length <= 200 ? inbound : randomUUID();
  const forward = {};
  for (const name of PROPAGATED) {
    if (typeof req.headers[name] === 'string') forward[name] = req.headers[name];
  }
  forward['x-request-id'] = requestId;
  let path;
  try {
    path = new URL(req.url ?? '/', 'http://localhost').pathname;
  } catch {
    path = req.url ?? '';
  }
  const ctx = { requestId, forward, path };
  if (shuttingDown) res.setHeader('connection', 'close');

  res.on('close', () => {
    const traceHeaders = Object.fromEntries(Object.entries(forward).filter(([k]) => k !== 'x-request-id'));
    log({
      msg: 'request', method: req.method, path, status: res.statusCode,
      duration_ms: Math.round(Number(process.hrtime.bigint() - started) / 1e4) / 100,
      request_id: requestId,
      ...(Object.keys(traceHeaders).length > 0 ? { trace_headers: traceHeaders } : {}),
      ...(res.writableFinished ? {} : { aborted: true }),
    });
    if (shuttingDown) server.closeIdleConnections();
  });

  handle(req, res, ctx).catch((e) => {
    const error = e instanceof HttpError ? e : new HttpError(500, 'internal error');
    if (!(e instanceof HttpError)) log({ msg: 'handler error', error: String(e?.stack ?? e) });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const { hops = [], allow, close, ...extra } = error.extra;
    const headers = { ...(allow ? { allow } : {}), ...(close ? { connection: 'close' } : {}) };
    sendJson(res, ctx, error.status, { error: error.message, ...extra }, hops, headers);
  });
}

const server = createServer({ keepAliveTimeout: 65_000 }, onRequest);

function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  log({ msg: 'shutting down', signal });
  server.close(() => {
    agent.destroy();
    log({ msg: 'stopped' });
    process.exit(0);
  });
  server.closeIdleConnections();
  // In-flight requests get the grace period; then their connections are cut and we still exit 0.
  setTimeout(() => server.closeAllConnections(), SHUTDOWN_GRACE_MS).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.on('error', (e) => {
  process.stderr.write(`shop service: cannot listen on port ${config.port}: ${e.code ?? e.message}\n`);
  process.exit(1);
});
// No host: all addresses, IPv6 and IPv4 when the namespace has IPv6, IPv4 alone otherwise.
server.listen(config.port, () => {
  log({
    msg: 'listening', port: server.address().port, fail_rate: config.failRate, delay_ms: config.delayMs,
    ...(USES.length > 0 ? { upstreams: Object.fromEntries(USES.map((n) => [n, config.upstreams[n].text])) } : {}),
  });
});
