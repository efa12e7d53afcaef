/**
 * The floor under ambit's L4 hop: HBONE's wire (HTTP/2 CONNECT streams over pooled mutual TLS
 * 1.3) between two bare Node.js processes, and nothing else: no metrics, logs, policy, limits or
 * connection tracking. bench/l4-hop.ts runs one on each node ("node relay"), so ambit's figures
 * read against what Node's TLS and HTTP/2 cost by themselves.
 *
 *   client  plaintext TCP in on each --route PORT=IP:PORT; each accepted connection becomes a
 *           CONNECT stream (:authority IP:PORT) to --server, on one pooled session (another
 *           once the server's maxConcurrentStreams is reached; a new one if it dies), as
 *           ambit's HbonePool does.
 *   server  HTTP/2 over TLS 1.3 on --listen, client certificates required and verified against
 *           --ca; each CONNECT dials its authority, answers 200 and pipes both ways.
 *
 * The HTTP/2 settings come as flags (the bench passes ambit's defaults). Both modes count the
 * streams they carried; on SIGUSR2 (and once listening) they write {"streams":N,"dumps":K} to
 * --stats. Plain JavaScript, so any node binary runs it without a loader:
 *   node bench/hbone-relay.mjs --mode server --listen 15008 --cert S.pem --ca ca.pem --stats F \
 *     --stream-window N --session-window N --max-streams N --max-session-memory-mb N
 *   node bench/hbone-relay.mjs --mode client --server IP:15008 --server-id spiffe://... \
 *     --route 8080=IP:8080 [--route ...] --cert C.pem --ca ca.pem --stats F --stream-window N --session-window N
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { parseArgs } from 'node:util';

const { NGHTTP2_CANCEL, NGHTTP2_NO_ERROR } = http2.constants;

function usage(message) {
  process.stderr.write(`hbone-relay: ${message}\n`);
  process.exit(64);
}

function int(name, text, min, max) {
  const n = Number(text);
  if (text === undefined || !Number.isInteger(n) || n < min || n > max) usage(`--${name}: expected an integer in ${min}..${max}, got ${JSON.stringify(text)}`);
  return n;
}

/** `IP:PORT` or `[IPv6]:PORT`. */
function hostPort(name, text) {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(text ?? '');
  if (!m || net.isIP(m[1]) === 0) usage(`--${name}: expected IP:PORT, got ${JSON.stringify(text)}`);
  return { host: m[1], port: int(name, m[2], 1, 65535) };
}

/** The SPIFFE ID in a certificate's URI SAN. */
function spiffeIdOf(cert) {
  for (const part of (cert?.subjectaltname ?? '').split(/,\s*/)) if (part.startsWith('URI:spiffe://')) return part.slice(4);
  return undefined;
}

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      mode: { type: 'string' },
      cert: { type: 'string' },
      ca: { type: 'string' },
      stats: { type: 'string' },
      'stream-window': { type: 'string' },
      'session-window': { type: 'string' },
      listen: { type: 'string' },
      'max-streams': { type: 'string' },
      'max-session-memory-mb': { type: 'string' },
      server: { type: 'string' },
      'server-id': { type: 'string' },
      route: { type: 'string', multiple: true },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
if (opts.mode !== 'client' && opts.mode !== 'server') usage(`--mode: expected client or server, got ${JSON.stringify(opts.mode)}`);
for (const name of ['cert', 'ca', 'stats']) if (!opts[name]) usage(`--${name} is required`);
// One PEM holds the certificate and its key: OpenSSL picks the block it needs.
const pem = readFileSync(opts.cert, 'utf8');
const ca = readFileSync(opts.ca, 'utf8');
const streamWindow = int('stream-window', opts['stream-window'], 16_384, 2 ** 31 - 1);
const sessionWindow = int('session-window', opts['session-window'], 16_384, 2 ** 31 - 1);

let streams = 0;
let dumps = 0;
function dumpStats() {
  const tmp = `${opts.stats}.tmp`;
  writeFileSync(tmp, `${JSON.stringify({ streams, dumps: dumps++ })}\n`);
  renameSync(tmp, opts.stats);
}
process.on('SIGUSR2', dumpStats);

/**
 * Pipes a TCP socket and a CONNECT stream both ways. Ends pass on as half-closes (the sockets
 * are half-open); an error or a reset on one side aborts the other.
 */
function join(socket, stream) {
  const abortSocket = () => { if (!socket.destroyed) socket.resetAndDestroy(); };
  const abortStream = () => { if (!stream.destroyed) stream.close(NGHTTP2_CANCEL); };
  socket.on('error', abortStream);
  socket.on('close', (hadError) => { if (hadError) abortStream(); });
  stream.on('error', abortSocket);
  // A peer's RST_STREAM (CANCEL among them) closes the stream without an 'error'.
  stream.on('close', () => { if (stream.rstCode !== NGHTTP2_NO_ERROR) abortSocket(); });
  socket.pipe(stream);
  stream.pipe(socket);
}

function server() {
  const port = int('listen', opts.listen, 1, 65535);
  const maxStreams = int('max-streams', opts['max-streams'], 1, 2 ** 31 - 1);
  const maxSessionMemory = int('max-session-memory-mb', opts['max-session-memory-mb'], 1, 1 << 20);
  const h2 = http2.createSecureServer({
    cert: pem, key: pem, ca,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    allowHTTP1: false,
    maxSessionMemory,
    settings: { initialWindowSize: streamWindow, maxConcurrentStreams: maxStreams, enablePush: false },
  });
  // HTTP/2 frames many small writes: Nagle's algorithm would hold them back for the peer's ACK.
  h2.on('connection', (socket) => socket.setNoDelay(true));
  h2.on('session', (session) => {
    session.setLocalWindowSize(sessionWindow);
    session.on('error', () => { /* its streams see it */ });
  });
  h2.on('stream', (stream, headers) => {
    stream.on('error', () => { /* before the join: the dial's failure answers */ });
    const authority = headers[':authority'];
    if (headers[':method'] !== 'CONNECT' || !authority) {
      stream.respond({ ':status': 405 }, { endStream: true });
      return;
    }
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(authority);
    if (!m) {
      stream.respond({ ':status': 400 }, { endStream: true });
      return;
    }
    const upstream = net.connect({ host: m[1], port: Number(m[2]), allowHalfOpen: true });
    upstream.setNoDelay(true);
    const dialFailed = (err) => {
      if (!stream.destroyed && !stream.headersSent) stream.respond({ ':status': err.code === 'ECONNREFUSED' ? 503 : 502 }, { endStream: true });
    };
    upstream.once('error', dialFailed);
    upstream.once('connect', () => {
      upstream.off('error', dialFailed);
      if (stream.destroyed || stream.closed) {
        upstream.destroy();
        return;
      }
      stream.respond({ ':status': 200 });
      streams++;
      join(upstream, stream);
    });
  });
  h2.listen(port, () => dumpStats());
}

function client() {
  const target = hostPort('server', opts.server);
  const serverId = opts['server-id'];
  if (!serverId?.startsWith('spiffe://')) usage(`--server-id: expected a SPIFFE ID, got ${JSON.stringify(serverId)}`);
  const routes = (opts.route ?? []).map((r) => {
    const i = r.indexOf('=');
    if (i < 0) usage(`--route: expected PORT=IP:PORT, got ${JSON.stringify(r)}`);
    hostPort('route', r.slice(i + 1));
    return { listen: int('route', r.slice(0, i), 1, 65535), authority: r.slice(i + 1) };
  });
  if (routes.length === 0) usage('--route PORT=IP:PORT is required (one per listening port)');

  /** @type {{ session: http2.ClientHttp2Session, streams: number }[]} */
  const pool = [];
  let connecting;
  const drop = (pooled) => {
    const i = pool.indexOf(pooled);
    if (i >= 0) pool.splice(i, 1);
  };

  /** A new session to the server, once connected and its SETTINGS (its stream cap) are known; its first stream's slot taken. */
  const connect = () => new Promise((resolve, reject) => {
    const raw = net.connect({ host: target.host, port: target.port });
    raw.setNoDelay(true);
    const secure = tls.connect({
      socket: raw,
      cert: pem, key: pem, ca,
      minVersion: 'TLSv1.3',
      ALPNProtocols: ['h2'],
      rejectUnauthorized: true,
      // The server is named by its SPIFFE ID, not a DNS name.
      checkServerIdentity: (_host, cert) => {
        const id = spiffeIdOf(cert);
        return id === serverId ? undefined : new Error(`expected ${serverId}, the server presented ${id ?? 'no SPIFFE ID'}`);
      },
    });
    const session = http2.connect(`https://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`, {
      createConnection: () => secure,
      settings: { initialWindowSize: streamWindow, enablePush: false },
    });
    const pooled = { session, streams: 1 };
    const fail = (err) => {
      reject(err);
      session.destroy();
    };
    const early = () => fail(new Error(`${opts.server} closed the connection before HTTP/2 began`));
    session.once('error', fail);
    session.once('close', early);
    let connected = false;
    let settled = false;
    const ready = () => {
      if (!connected || !settled) return;
      session.off('error', fail);
      session.off('close', early);
      session.setLocalWindowSize(sessionWindow);
      session.on('error', () => { /* its streams see it */ });
      session.once('close', () => drop(pooled));
      // No new streams on a session going away; those on it finish.
      session.once('goaway', () => drop(pooled));
      pool.push(pooled);
      resolve(pooled);
    };
    session.once('connect', () => { connected = true; ready(); });
    session.once('remoteSettings', () => { settled = true; ready(); });
  });

  /** A pooled session with room for one more stream, its slot taken. */
  const session = async () => {
    for (;;) {
      for (const p of pool) {
        if (p.session.closed || p.session.destroyed) continue;
        if (p.streams < (p.session.remoteSettings.maxConcurrentStreams ?? Infinity)) {
          p.streams++;
          return p;
        }
      }
      if (!connecting) {
        connecting = connect().finally(() => { connecting = undefined; });
        return connecting;
      }
      // Another connection is being made: its failure is this one's too; once up, take it if it has room.
      await connecting;
    }
  };

  /** A CONNECT stream to `authority`, once the server answered 200. */
  const open = async (authority) => {
    const pooled = await session();
    const stream = pooled.session.request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    stream.once('close', () => { pooled.streams--; });
    return new Promise((resolve, reject) => {
      stream.once('response', (h) => {
        if (h[':status'] === 200) return resolve(stream);
        stream.close(NGHTTP2_CANCEL);
        reject(new Error(`${authority}: ${h[':status']}`));
      });
      stream.once('error', reject);
      stream.once('close', () => reject(new Error(`${authority}: stream closed (${stream.rstCode})`)));
    });
  };

  for (const route of routes) {
    net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.setNoDelay(true);
      socket.on('error', () => { /* before the join: the stream is cancelled there */ });
      open(route.authority).then((stream) => {
        if (socket.destroyed) {
          stream.close(NGHTTP2_CANCEL);
          return;
        }
        streams++;
        join(socket, stream);
      }, () => { if (!socket.destroyed) socket.resetAndDestroy(); });
    }).listen(route.listen, () => dumpStats());
  }
}

if (opts.mode === 'server') server();
else client();
