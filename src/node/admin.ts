/**
 * The node agent's admin endpoint (15000, localhost only): what the agent holds, for people and
 * for `ambit certs`. It shows certificates (identity, serial, validity, state), never keys.
 *
 *   GET /healthz        ok
 *   GET /certificates   JSON: CertificatesResponse (src/api/admin.ts)
 *                       (also /certs)
 *   GET /config_dump    the mesh config the agent holds (version, workloads, services, policies)
 *   GET /workloads      the pods of this node in the mesh, and those it could not enroll
 *   GET /connections    every connection open now
 *   GET /proxy-config/<view>   workloads, services, policies, certs or connections, in the
 *                       versioned schema of src/api/proxy-config.ts (docs/PROXY-CONFIG.md)
 *   GET /logging        the log level
 *   POST /logging?level=debug   changes it — only on the agent's control socket (a unix socket,
 *                       mode 0600: root only); on TCP every process of the node could reach it,
 *                       so there it answers 403 and says where to send it
 */
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { CertManager } from '../identity/cert-manager.js';
import { certificateFacts } from '../identity/pki.js';
import { silentLogger } from '../telemetry/log.js';
import type { CertificatesResponse } from '../api/admin.js';
import { PROXY_CONFIG_VIEWS, proxyConfigRoute } from '../api/proxy-config.js';
import { proxyConfigView, type ProxyConfigSource } from './proxy-config.js';
import { listenTcp, localServer, sendJson, type LocalRequest } from '../util/local-http.js';

export const ADMIN_PORT = 15000;

export interface AdminSources {
  certificates?: CertManager;
  agent?: { configDump(): unknown; workloads(): unknown; connections: { list(): unknown[] } };
  /** What `/proxy-config/<view>` is built from (the agent). */
  proxyConfig?: ProxyConfigSource;
  logger?: Logger;
  /** Where state-changing requests go instead of TCP (named in the 403), e.g. the control socket's path. */
  changesAt?: string;
}

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/**
 * The admin routes. `changes` says whether this listener may change the agent's state: only one
 * that the node's other processes cannot reach (the 0600 control socket). Answers and returns
 * true for a request it knows, returns false for anything else (the caller answers 404).
 */
export function serveAdmin(sources: AdminSources, changes: boolean, req: LocalRequest, res: ServerResponse): boolean {
  const json = (status: number, body: unknown) => { sendJson(res, status, body, true); return true; };
  const { path, method } = req;
  if (path === '/logging' && method === 'POST') {
    if (!changes) {
      const where = sources.changesAt ? `the agent's control socket ${sources.changesAt}` : 'the agent\'s control socket (ambit node --control-socket)';
      return json(403, { error: `POST /logging changes the agent and is not served on TCP, which any process on the node can reach; send it to ${where}, which only root can open` });
    }
    const level = req.query.get('level') ?? '';
    if (!sources.logger) return json(404, { error: 'this process has no adjustable logger' });
    if (!LEVELS.has(level)) return json(400, { error: `level must be one of ${[...LEVELS].join(', ')}, got ${JSON.stringify(level.slice(0, 32))}` });
    sources.logger.level = level;
    return json(200, { level });
  }
  if (sources.proxyConfig && req.segments[0] === PROXY_CONFIG) return serveProxyConfig(sources.proxyConfig, req, json);
  const agent = sources.agent;
  if (!adminRoutes(sources).includes(path)) return false;
  if (method !== 'GET') return json(405, { error: `${method} ${path} not allowed: GET only${path === '/logging' ? ' (or POST on the control socket)' : ''}` });
  if (path === '/healthz') return json(200, { status: 'ok' });
  if (path === '/logging') return sources.logger ? json(200, { level: sources.logger.level }) : json(404, { error: 'this process has no adjustable logger' });
  if (agent && path === '/config_dump') return json(200, agent.configDump());
  if (agent && path === '/workloads') return json(200, agent.workloads());
  if (agent && path === '/connections') return json(200, { connections: agent.connections.list() });
  const certs = sources.certificates;
  if (!certs) return json(404, { error: 'this process holds no workload certificates' });
  const answer: CertificatesResponse = {
    trustBundle: certs.trustBundle.map((pem) => {
      const f = certificateFacts(pem);
      return { subject: f.subject, serial: f.serial, notAfter: f.notAfter.toISOString() };
    }),
    certificates: certs.list(),
  };
  return json(200, answer);
}

const PROXY_CONFIG = 'proxy-config';

/** `GET /proxy-config/<view>`; any other view is a 404 that names the views. */
function serveProxyConfig(source: ProxyConfigSource, req: LocalRequest, json: (status: number, body: unknown) => boolean): boolean {
  const route = proxyConfigRoute(req.method, req.path, req.segments.slice(1));
  return 'view' in route ? json(200, proxyConfigView(route.view, source)) : json(route.status, route.body);
}

/** The admin routes a listener knows, for its 404. */
export function adminRoutes(sources: AdminSources): string[] {
  return [
    '/healthz', '/certificates', '/certs', '/logging', ...(sources.agent ? ['/config_dump', '/workloads', '/connections'] : []),
    ...(sources.proxyConfig ? [`/${PROXY_CONFIG}/{${PROXY_CONFIG_VIEWS.join('|')}}`] : []),
  ];
}

/** The admin endpoint on TCP: read-only. */
export class AdminServer {
  private constructor(private readonly server: Server) {}

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** `listen`: how to listen (the agent passes one with SO_REUSEPORT, so that a successor can start beside it). */
  static async start(sources: AdminSources, host = '127.0.0.1', port = ADMIN_PORT, listen: (server: Server, port: number, host: string) => Promise<Server> = listenTcp): Promise<AdminServer> {
    const server = localServer({ name: 'admin', log: sources.logger ?? silentLogger, json: true }, (req, res) => {
      if (!serveAdmin(sources, false, req, res)) sendJson(res, 404, { error: `no route ${req.path}`, routes: adminRoutes(sources) }, true);
    });
    await listen(server, port, host);
    return new AdminServer(server);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
