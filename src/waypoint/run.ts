/**
 * `ambit waypoint run`: the waypoint process. It gets its certificate with its own credential,
 * follows the controller as a `waypoint` subscriber (its services, their L7 config, workloads),
 * and serves HBONE on 15008 with the L7 proxy.
 */
import { createServer, type Server } from 'node:net';
import type { Logger } from 'pino';
import { DiscoveryClient, type WireResource } from '../control/discovery.js';
import type { ConfigObject } from '../control/model.js';
import { CaClient } from '../identity/ca-server.js';
import { CertManager } from '../identity/cert-manager.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import { MeshState } from '../node/mesh-state.js';
import * as libc from '../../native/libc.js';
import { tcpSocket } from '../node/netns.js';
import { WaypointProxy } from './proxy.js';
import { Router } from './routing.js';

export interface WaypointOptions {
  namespace: string;
  name: string;
  trustDomain: string;
  controller: { address: string; token: string; roots: string[] };
  listen: { host: string; port: number };
  log: Logger;
  accessLog: Logger;
}

export class Waypoint {
  private constructor(
    readonly identity: string,
    readonly proxy: WaypointProxy,
    private readonly certs: CertManager,
    private readonly discovery: DiscoveryClient,
    private readonly server: Server,
  ) {}

  static async start(opts: WaypointOptions): Promise<Waypoint> {
    const identity = formatSpiffeId({ trustDomain: opts.trustDomain, namespace: opts.namespace, serviceAccount: opts.name });
    const certs = new CertManager({ source: new CaClient({ address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token }), log: opts.log });
    await certs.start().catch((err: Error) => opts.log.warn({ err: err.message }, 'trust bundle not fetched yet; retrying'));
    void certs.acquire(identity).catch((err: Error) => opts.log.error({ err: err.message, identity }, 'no certificate yet'));
    const proxy = new WaypointProxy({
      identity, certificate: () => certs.get(identity), roots: () => certs.trustBundle,
      socket: (family) => tcpSocket(family === 4 ? libc.AF_INET : libc.AF_INET6), log: opts.log,
    });
    proxy.onRequest = (r) => opts.accessLog.info({
      timestamp: new Date(r.start).toISOString(), request_id: r.id, source: { principal: r.sourceIdentity ?? null },
      destination: { service: r.service, upstream: r.upstream ?? null },
      request: { method: r.method, path: r.path, authority: r.authority, protocol: 'HTTP/1.1' },
      response: { code: r.status, flags: r.flags, duration_ms: r.durationMs, bytes: r.bytesOut, attempts: r.attempts }, route: r.route ?? null,
    }, 'request');
    const discovery = new DiscoveryClient({
      address: opts.controller.address, roots: opts.controller.roots, token: opts.controller.token,
      node: '', kind: 'waypoint', name: `${opts.namespace}/${opts.name}`, log: opts.log,
      apply: (resources, version) => proxy.update(stateOf(resources, version)),
    });
    const server = createServer((socket) => void proxy.handle(socket));
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(opts.listen.port, opts.listen.host, resolve));
    opts.log.info({ identity, listen: opts.listen }, 'waypoint serving');
    return new Waypoint(identity, proxy, certs, discovery, server);
  }

  async close(): Promise<void> {
    this.discovery.close();
    this.server.close();
    await this.proxy.close();
    this.certs.close();
  }
}

/** The waypoint's view as the proxy uses it; throws (a NACK) on what it cannot use. */
export function stateOf(resources: ReadonlyMap<string, WireResource>, version: string): Parameters<WaypointProxy['update']>[0] {
  const mesh = new MeshState(version, resources);
  const l7: ConfigObject[] = [];
  for (const r of resources.values()) if (r.type === 'l7') l7.push(JSON.parse(r.json) as ConfigObject);
  const services = [...mesh.services.values()];
  return { version, router: new Router(l7, services), services, workloads: mesh.workloads };
}
