/**
 * The node agent's admin endpoint (15000, localhost only): what the agent holds, for people and
 * for `ambit certs`. It shows certificates (identity, serial, validity, state), never keys.
 *
 *   GET /healthz        ok
 *   GET /certificates   JSON: { trustBundle: [{subject, notAfter}], certificates: CertificateSummary[] }
 *                       (also /certs)
 *   GET /config_dump    the mesh config the agent holds (version, workloads, services, policies)
 *   GET /workloads      the pods of this node in the mesh, and those it could not enroll
 *   GET /connections    every connection open now
 *   GET /logging        the log level; POST /logging?level=debug changes it
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { CertManager } from '../identity/cert-manager.js';
import { certificateFacts } from '../identity/pki.js';

export const ADMIN_PORT = 15000;

export interface AdminSources {
  certificates?: CertManager;
  agent?: { configDump(): unknown; workloads(): unknown; connections: { list(): unknown[] } };
  logger?: Logger;
}

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export class AdminServer {
  private constructor(private readonly server: Server) {}

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  static async start(sources: AdminSources, host = '127.0.0.1', port = ADMIN_PORT): Promise<AdminServer> {
    const server = createServer((req, res) => {
      const json = (status: number, body: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(`${JSON.stringify(body, null, 2)}\n`);
      };
      const url = new URL(req.url ?? '/', 'http://admin');
      const path = url.pathname;
      if (path === '/logging' && req.method === 'POST') {
        const level = url.searchParams.get('level') ?? '';
        if (!sources.logger) return json(404, { error: 'this process has no adjustable logger' });
        if (!LEVELS.has(level)) return json(400, { error: `level must be one of ${[...LEVELS].join(', ')}, got "${level}"` });
        sources.logger.level = level;
        return json(200, { level });
      }
      if (req.method !== 'GET') return json(405, { error: `${req.method ?? ''} not allowed` });
      if (path === '/healthz') return json(200, { status: 'ok' });
      if (path === '/logging') return sources.logger ? json(200, { level: sources.logger.level }) : json(404, { error: 'this process has no adjustable logger' });
      const agent = sources.agent;
      if (agent && path === '/config_dump') return json(200, agent.configDump());
      if (agent && path === '/workloads') return json(200, agent.workloads());
      if (agent && path === '/connections') return json(200, { connections: agent.connections.list() });
      if (path === '/certificates' || path === '/certs') {
        const certs = sources.certificates;
        if (!certs) return json(404, { error: 'this process holds no workload certificates' });
        return json(200, {
          trustBundle: certs.trustBundle.map((pem) => {
            const f = certificateFacts(pem);
            return { subject: f.subject, serial: f.serial, notAfter: f.notAfter.toISOString() };
          }),
          certificates: certs.list(),
        });
      }
      json(404, { error: `no route ${path}`, routes: ['/healthz', '/certificates', '/certs', '/logging', ...(agent ? ['/config_dump', '/workloads', '/connections'] : [])] });
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
    return new AdminServer(server);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
