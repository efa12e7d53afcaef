/**
 * The waypoint's admin endpoint (127.0.0.1:15000, inside its pod: the node agent's port and
 * rules): read-only, what the waypoint holds, for people and for `ambit proxy-config --waypoint`.
 *
 *   GET /healthz               ok
 *   GET /certificates          JSON: CertificatesResponse (src/api/admin.ts), its own certificate
 *                              and the trust bundle, never keys (also /certs)
 *   GET /proxy-config/<view>   workloads, services, policies, certs or connections, in the
 *                              versioned schema of src/api/proxy-config.ts (docs/PROXY-CONFIG.md)
 *
 * Every answer is built when asked, from what the proxy holds already: the data path does no
 * work for it.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { CertificatesResponse } from '../api/admin.js';
import { PROXY_CONFIG_VIEWS, proxyConfigRoute } from '../api/proxy-config.js';
import type { CertManager } from '../identity/cert-manager.js';
import { certificateFacts } from '../identity/pki.js';
import { listenTcp, localServer, sendJson, type LocalRequest } from '../util/local-http.js';
import { waypointConfigView, type WaypointConfigSource } from './proxy-config.js';

/** The port, as the node agent's (src/node/admin.ts). */
export const WAYPOINT_ADMIN_PORT = 15000;

const ROUTES = ['/healthz', '/certificates', '/certs', `/proxy-config/{${PROXY_CONFIG_VIEWS.join('|')}}`];

export interface WaypointAdminSources {
  certificates: Pick<CertManager, 'trustBundle' | 'list'>;
  proxyConfig: WaypointConfigSource;
  log: Logger;
}

/** The answer to one admin request: status and JSON body. */
export function waypointAdminAnswer(sources: Pick<WaypointAdminSources, 'certificates' | 'proxyConfig'>, req: Pick<LocalRequest, 'method' | 'path' | 'segments'>): { status: number; body: unknown } {
  if (req.segments[0] === 'proxy-config') {
    const route = proxyConfigRoute(req.method, req.path, req.segments.slice(1));
    return 'view' in route ? { status: 200, body: waypointConfigView(route.view, sources.proxyConfig) } : route;
  }
  if (!ROUTES.includes(req.path)) return { status: 404, body: { error: `no route ${req.path}`, routes: ROUTES } };
  if (req.method !== 'GET') return { status: 405, body: { error: `${req.method} ${req.path} not allowed: GET only (the waypoint's admin endpoint is read-only)` } };
  if (req.path === '/healthz') return { status: 200, body: { status: 'ok' } };
  const identity = sources.proxyConfig.identity;
  const answer: CertificatesResponse = {
    trustBundle: sources.certificates.trustBundle.map((pem) => {
      const f = certificateFacts(pem);
      return { subject: f.subject, serial: f.serial, notAfter: f.notAfter.toISOString() };
    }),
    certificates: sources.certificates.list().filter((c) => c.identity === identity),
  };
  return { status: 200, body: answer };
}

export class WaypointAdmin {
  private constructor(private readonly server: Server) {}

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  static async start(sources: WaypointAdminSources, host = '127.0.0.1', port = WAYPOINT_ADMIN_PORT): Promise<WaypointAdmin> {
    const server = localServer({ name: 'admin', log: sources.log, json: true }, (req, res) => {
      const { status, body } = waypointAdminAnswer(sources, req);
      sendJson(res, status, body, true);
    });
    await listenTcp(server, port, host);
    return new WaypointAdmin(server);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
