/**
 * The node agent's telemetry listeners: `/metrics` and `/stats/prometheus` on 15020, as the
 * mesh's dashboards expect; `/healthz/ready` and `/healthz/live` on 15021, as probes expect, and `/healthz/check`:
 * this node's requirements (`ambit check --json`), which `ambit check --kube` reads from every
 * agent through the API server. Both are reachable from the node's network, so both are
 * hardened local servers (`src/util/local-http.ts`) and change nothing.
 */
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { silentLogger } from '../telemetry/log.js';
import { HttpError, listenTcp, localServer } from '../util/local-http.js';
import { HEALTH_PORT, METRICS_PORT, type NodeAgent } from './agent.js';

export function serveTelemetry(
  agent: Pick<NodeAgent, 'metrics' | 'ready'>, host: string, metricsPort = METRICS_PORT, healthPort = HEALTH_PORT,
  nodeReport?: () => Promise<unknown>, log: Logger = silentLogger,
  /** How to listen: the agent passes one with SO_REUSEPORT, so that a successor can start beside it. */
  listen: (server: Server, port: number, host: string) => Promise<Server> = listenTcp,
): Promise<Server[]> {
  const metrics = localServer({ name: 'metrics', log }, async (req, res) => {
    if (req.path !== '/metrics' && req.path !== '/stats/prometheus') throw new HttpError(404, 'not found: try /metrics');
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} not allowed: GET /metrics`);
    const text = await agent.metrics.text();
    res.writeHead(200, { 'content-type': agent.metrics.contentType }).end(text);
  });
  const health = localServer({ name: 'health', log }, async (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, `${req.method} not allowed: GET ${req.path}`);
    // Liveness: a failure restarts the agent, so it answers whenever this event loop does and depends
    // on nothing else — not the controller, not the API server (the datapath keeps working without them).
    if (req.path === '/healthz/live') return void res.writeHead(200).end('alive\n');
    if (req.path === '/healthz/check' && nodeReport) {
      const r = await nodeReport();
      res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(r)}\n`);
      return;
    }
    if (req.path !== '/healthz/ready') throw new HttpError(404, 'not found: try /healthz/ready or /healthz/live');
    if (agent.ready) res.writeHead(200).end('ready\n');
    else res.writeHead(503).end('not ready: no config from the controller yet\n');
  });
  return Promise.all([listen(metrics, metricsPort, host), listen(health, healthPort, host)]);
}
