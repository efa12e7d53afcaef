/**
 * `ambit dashboard`'s server: it samples every node agent's and waypoint's `/metrics` on an
 * interval (what they already export, nothing more), keeps the last minutes of scrapes, and
 * serves a bundled web UI (src/dashboard/assets, no CDN) with its JSON API:
 *
 *   GET  /api/overview              cluster, source, the service graph over the window
 *   GET  /api/workload?ns=&name=    a workload's identity, waypoint, policies, pods, and its
 *                                   golden signals per sampling step over the history
 *   GET  /api/logs?after=SEQ        access-log lines after SEQ (the last 500 kept)
 *   GET  /api/traces                recent traces; /api/traces/<id>: a trace's spans
 *   POST /v1/traces                 OTLP/HTTP JSON spans (also on the cluster's own address)
 *
 * It listens on 127.0.0.1 and answers only requests whose Host is that address or `localhost`
 * (a page on another site cannot reach it through DNS rebinding); every answer carries a
 * Content-Security-Policy that allows only its own assets.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Sample } from '../observe/exposition.js';
import { buildGraph, type Graph } from '../observe/graph.js';
import { scrapeAll, type Target } from '../observe/prometheus.js';
import { signalsFromScrapes, type InventoryPod, type Signals } from '../observe/stat.js';
import { HttpError, listenTcp, localServer, sendJson, type LocalRequest } from '../util/local-http.js';
import { packageRoot } from '../util/package.js';
import { MAX_OTLP_BODY_BYTES, OtlpError, parseOtlpJson, TraceStore } from './traces.js';

/** What a workload is, beyond its figures: from the node agents' proxy-config views where available. */
export interface WorkloadDetails {
  identities: string[];
  waypoint: string | null;
  policies: Array<{ namespace: string; name: string; kind: string; scope: string; action: string; rules: string[] }>;
  pods: Array<{ name: string; node?: string; ip?: string; meshed: boolean }>;
}

export interface DashboardInventory {
  pods: InventoryPod[];
  /** The waypoints' own workloads, `namespace/workload`: folded out of the graph. */
  waypoints: Set<string>;
}

/** Where the dashboard's data comes from (the local cluster, or Kubernetes). */
export interface DashboardSource {
  cluster: string;
  describe: string;
  inventory(): Promise<DashboardInventory>;
  targets(): Promise<Target[]>;
  details(namespace: string, workload: string, inventory: DashboardInventory): Promise<WorkloadDetails>;
  /** Access-log lines written since the last call (JSON lines of component "access"). */
  accessLog?(): Promise<string[]>;
}

export interface DashboardOptions {
  source: DashboardSource;
  log: Logger;
  /** Seconds between scrapes (default 5). */
  intervalSeconds?: number;
  /** Seconds the graph's figures cover (default 60; shorter until that much history exists). */
  windowSeconds?: number;
  /** Seconds of scrapes kept (default 900). */
  historySeconds?: number;
}

interface Step {
  at: number;
  samples: Sample[];
  /** Inbound signals by destination workload key since the previous step. */
  inbound?: Map<string, Signals>;
}

export interface LogLine {
  seq: number;
  line: Record<string, unknown>;
}

const MAX_LOG_LINES = 500;
const ASSETS: Record<string, string> = { '/': 'index.html', '/index.html': 'index.html', '/app.js': 'app.js', '/style.css': 'style.css' };
const TYPES: Record<string, string> = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
const CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

export class Dashboard {
  readonly traces = new TraceStore();
  private readonly steps: Step[] = [];
  private readonly logs: LogLine[] = [];
  private logSeq = 0;
  private timer?: NodeJS.Timeout;
  private sampling?: Promise<void>;
  private inventoryCache?: DashboardInventory;
  private lastError?: string;
  private readonly assets = new Map<string, Buffer>();
  private servers: Server[] = [];
  private readonly interval: number;
  private readonly window: number;
  private readonly history: number;

  constructor(private readonly opts: DashboardOptions) {
    this.interval = opts.intervalSeconds ?? 5;
    this.window = opts.windowSeconds ?? 60;
    this.history = opts.historySeconds ?? 900;
    const dir = join(packageRoot(), 'src', 'dashboard', 'assets');
    for (const file of new Set(Object.values(ASSETS))) this.assets.set(file, readFileSync(join(dir, file)));
  }

  /** Takes the first scrape, then one every interval. */
  async start(): Promise<void> {
    await this.sample();
    const tick = () => {
      this.timer = setTimeout(() => {
        this.sampling = this.sample().finally(tick);
      }, this.interval * 1000);
      this.timer.unref?.();
    };
    tick();
  }

  private async sample(): Promise<void> {
    const { source, log } = this.opts;
    try {
      this.inventoryCache = await source.inventory();
      const { samples, failed } = await scrapeAll(await source.targets());
      if (failed.length) log.warn({ failed }, 'some metrics endpoints did not answer');
      const step: Step = { at: Date.now(), samples };
      const prev = this.steps[this.steps.length - 1];
      if (prev) step.inbound = signalsFromScrapes({ l7: [], l4: [], group: ['destination_workload_namespace', 'destination_workload'], window: '' }, prev.samples, samples, (step.at - prev.at) / 1000);
      this.steps.push(step);
      while (this.steps.length > 2 && this.steps[0]!.at < step.at - this.history * 1000) this.steps.shift();
      this.lastError = failed.length ? `not answering: ${failed.join('; ')}` : undefined;
    } catch (err) {
      this.lastError = (err as Error).message;
      log.warn({ err: this.lastError }, 'sampling failed');
    }
    try {
      for (const text of (await source.accessLog?.()) ?? []) {
        let line: unknown;
        try {
          line = JSON.parse(text);
        } catch {
          continue;
        }
        if (typeof line !== 'object' || line === null || (line as { component?: unknown }).component !== 'access') continue;
        this.logs.push({ seq: ++this.logSeq, line: line as Record<string, unknown> });
        if (this.logs.length > MAX_LOG_LINES) this.logs.shift();
      }
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'reading the access log failed');
    }
  }

  /** The graph over the window: the latest scrape against the one closest to `window` seconds before it. */
  graph(): Graph & { updatedAt: string | null; error?: string } {
    const last = this.steps[this.steps.length - 1];
    const inv = this.inventoryCache ?? { pods: [], waypoints: new Set<string>() };
    if (!last || this.steps.length < 2) {
      // One scrape measures nothing yet: the workloads, without figures.
      return { ...buildGraph(inv.pods, inv.waypoints, last?.samples ?? [], last?.samples ?? [], 1), windowSeconds: 0, updatedAt: last ? new Date(last.at).toISOString() : null, ...(this.lastError ? { error: this.lastError } : {}) };
    }
    const from = this.steps.find((s) => s.at >= last.at - this.window * 1000 - 500) ?? this.steps[0]!;
    const first = from === last ? this.steps[this.steps.length - 2]! : from;
    const seconds = (last.at - first.at) / 1000;
    return { ...buildGraph(inv.pods, inv.waypoints, first.samples, last.samples, seconds), updatedAt: new Date(last.at).toISOString(), ...(this.lastError ? { error: this.lastError } : {}) };
  }

  /** A workload's golden signals per step. */
  series(namespace: string, workload: string): Array<{ at: string; signals: Signals | null }> {
    const key = JSON.stringify([namespace, workload]);
    return this.steps.filter((s) => s.inbound).map((s) => ({ at: new Date(s.at).toISOString(), signals: s.inbound!.get(key) ?? null }));
  }

  logsAfter(seq: number): LogLine[] {
    return this.logs.filter((l) => l.seq > seq);
  }

  /** Serves the UI and the API on host:port (port 0: any free one). */
  async listen(host = '127.0.0.1', port = 0): Promise<{ url: string; port: number }> {
    const server = this.server();
    await listenTcp(server, port, host);
    const bound = (server.address() as AddressInfo).port;
    return { url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}/`, port: bound };
  }

  /** The OTLP receiver alone on an already-listening fd (the local cluster's address in its underlay netns). */
  listenOtlpFd(fd: number): void {
    const server = localServer({ name: 'dashboard otlp', log: this.opts.log, json: true, limits: { maxConnections: 64 } }, (req, res) => this.handleOtlp(req, res, false));
    server.listen({ fd });
    this.servers.push(server);
  }

  private server(): Server {
    const server = localServer({ name: 'dashboard', log: this.opts.log, json: true }, (req, res) => this.handle(req, res));
    this.servers.push(server);
    return server;
  }

  private hostAllowed(raw: IncomingMessage): boolean {
    const host = (raw.headers.host ?? '').toLowerCase();
    const local = raw.socket.localPort;
    return host === `127.0.0.1:${local}` || host === `localhost:${local}` || host === `[::1]:${local}`;
  }

  private async handle(req: LocalRequest, res: ServerResponse): Promise<void> {
    res.setHeader('content-security-policy', CSP);
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'no-referrer');
    if (!this.hostAllowed(req.raw)) throw new HttpError(421, `Host ${JSON.stringify((req.raw.headers.host ?? '').slice(0, 100))} is not this dashboard's address (127.0.0.1 or localhost)`);
    if (req.path === '/v1/traces') return this.handleOtlp(req, res, true);
    if (req.method !== 'GET') throw new HttpError(405, `${req.method} not allowed: GET only (POST on /v1/traces)`);
    const asset = ASSETS[req.path];
    if (asset) {
      const body = this.assets.get(asset)!;
      res.writeHead(200, { 'content-type': TYPES[asset.split('.').pop()!]!, 'content-length': body.length, 'cache-control': 'no-cache' });
      res.end(body);
      return;
    }
    if (req.path === '/api/overview') {
      return sendJson(res, 200, { cluster: this.opts.source.cluster, source: this.opts.source.describe, intervalSeconds: this.interval, traces: this.traces.list(1).length > 0, ...this.graph() });
    }
    if (req.path === '/api/workload') {
      const ns = req.query.get('ns') ?? '';
      const name = req.query.get('name') ?? '';
      if (!ns || !name) throw new HttpError(400, 'expected ns=NAMESPACE&name=WORKLOAD');
      const inv = this.inventoryCache ?? { pods: [], waypoints: new Set<string>() };
      let details: WorkloadDetails | { error: string };
      try {
        details = await this.opts.source.details(ns, name, inv);
      } catch (err) {
        details = { error: (err as Error).message };
      }
      return sendJson(res, 200, { namespace: ns, workload: name, details, series: this.series(ns, name) });
    }
    if (req.path === '/api/logs') {
      const after = Number(req.query.get('after') ?? '0');
      return sendJson(res, 200, { lines: this.logsAfter(Number.isFinite(after) ? after : 0) });
    }
    if (req.path === '/api/traces') return sendJson(res, 200, { traces: this.traces.list(), received: this.traces.received, rejected: this.traces.rejected });
    if (req.segments[0] === 'api' && req.segments[1] === 'traces' && req.segments.length === 3) {
      const spans = this.traces.get(req.segments[2]!);
      if (!spans) throw new HttpError(404, `no trace ${req.segments[2]!.slice(0, 64)} (the last ${this.traces.list(Infinity).length} are kept)`);
      return sendJson(res, 200, { traceId: req.segments[2], spans });
    }
    throw new HttpError(404, `no route ${req.path}`);
  }

  private async handleOtlp(req: LocalRequest, res: ServerResponse, checked: boolean): Promise<void> {
    if (!checked && req.path !== '/v1/traces') throw new HttpError(404, 'this listener takes POST /v1/traces (OTLP/HTTP JSON) only');
    if (req.method !== 'POST') throw new HttpError(405, 'POST /v1/traces only');
    const type = (req.raw.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') throw new HttpError(415, `content-type ${JSON.stringify(type)}: this receiver takes OTLP/HTTP JSON (application/json); set the exporter's protocol to http/json`);
    const body = await readBody(req.raw, MAX_OTLP_BODY_BYTES);
    try {
      const { spans, rejected } = parseOtlpJson(body);
      this.traces.add(spans);
      this.traces.rejected += rejected;
      sendJson(res, 200, rejected ? { partialSuccess: { rejectedSpans: String(rejected) } } : {});
    } catch (err) {
      if (err instanceof OtlpError) throw new HttpError(400, err.message);
      throw err;
    }
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    await this.sampling?.catch(() => undefined);
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    })));
  }
}

function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > max) return reject(new HttpError(413, `body of ${declared} bytes is over the ${max} taken`));
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        req.destroy();
        reject(new HttpError(413, `body over the ${max} bytes taken`));
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
