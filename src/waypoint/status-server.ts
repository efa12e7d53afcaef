/**
 * The status port (15020) of the waypoint and the ingress gateway, as Istio's proxies serve it:
 * `/metrics` (and Envoy's `/stats/prometheus`), `GET /healthz/ready` (200 once the proxy can
 * serve, 503 with the reason before) and `GET /healthz/live`.
 */
import type { Logger } from 'pino';
import type { CertManager } from '../identity/cert-manager.js';
import type { MeshMetrics } from '../telemetry/metrics.js';
import { HttpError, localServer } from '../util/local-http.js';

/** Why a proxy cannot serve yet: no config applied, or no valid certificate for its identity. */
export function unreadyReason(configured: boolean, certs: CertManager, identity: string): string | undefined {
  const why: string[] = [];
  if (!configured) why.push('no config from the controller yet');
  const cert = certs.list().find((c) => c.identity === identity);
  if (!cert?.notAfter || Date.parse(cert.notAfter) <= Date.now()) why.push(`no certificate for ${identity} yet${cert?.lastError ? ` (${cert.lastError})` : ''}`);
  return why.length > 0 ? why.join('; ') : undefined;
}

export interface StatusServerOptions {
  log: Logger;
  metrics: MeshMetrics;
  /** Why the proxy is not ready, or undefined when it is. */
  unready(): string | undefined;
  /** When ready, what it does not serve (said after `ready`, still 200). */
  notServed?(): string[];
}

/** The status server, not listening yet (`listenTcp` it on 15020). */
export function statusServer(opts: StatusServerOptions): ReturnType<typeof localServer> {
  return localServer({ name: 'metrics', log: opts.log }, async (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} not allowed: GET ${req.path}`);
    if (req.path === '/healthz/ready') {
      const why = opts.unready();
      if (why) return void res.writeHead(503).end(`not ready: ${why}\n`);
      const notServed = opts.notServed?.() ?? [];
      return void res.writeHead(200).end(notServed.length > 0 ? `ready; not served: ${notServed.join('; ')}\n` : 'ready\n');
    }
    // Liveness: a failure restarts the container, so it answers whenever this event loop does and
    // depends on nothing outside the process (a controller that is away is readiness's business).
    if (req.path === '/healthz/live') return void res.writeHead(200).end('alive\n');
    if (req.path !== '/metrics' && req.path !== '/stats/prometheus') throw new HttpError(404, 'not found: try /metrics, /healthz/ready or /healthz/live');
    const text = await opts.metrics.text();
    res.writeHead(200, { 'content-type': opts.metrics.contentType }).end(text);
  });
}
