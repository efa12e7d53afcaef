/**
 * The node agent's admin endpoint (15000, localhost only): what the agent holds, for people and
 * for `ambit certs`. It shows certificates (identity, serial, validity, state), never keys.
 *
 *   GET /healthz        ok
 *   GET /certificates   JSON: { trustBundle: [{subject, notAfter}], certificates: CertificateSummary[] }
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { CertManager } from '../identity/cert-manager.js';
import { certificateFacts } from '../identity/pki.js';

export const ADMIN_PORT = 15000;

export interface AdminSources {
  certificates?: CertManager;
}

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
      const path = new URL(req.url ?? '/', 'http://admin').pathname;
      if (req.method !== 'GET') return json(405, { error: `${req.method ?? ''} not allowed` });
      if (path === '/healthz') return json(200, { status: 'ok' });
      if (path === '/certificates') {
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
      json(404, { error: `no route ${path}`, routes: ['/healthz', '/certificates'] });
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, host, resolve));
    return new AdminServer(server);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
