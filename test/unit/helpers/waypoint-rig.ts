/**
 * What the waypoint proxy's loopback tests share: a mesh CA behind a CertManager, the service
 * `reviews` and its one endpoint, listeners closed at the end, and the destination's node agent
 * reduced to its HBONE listener (authority ip:port → an app on 127.0.0.1).
 */
import type * as http from 'node:http';
import type * as http2 from 'node:http2';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import type { Service, ServicePort, Workload } from '../../../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../../../src/identity/ca.js';
import { CertManager } from '../../../src/identity/cert-manager.js';
import { HbonePool, HboneServer } from '../../../src/hbone/hbone.js';
import { tcpSocketOf } from '../../../src/host/netns.js';

export const CLIENT = 'spiffe://cluster.local/ns/shop/sa/client';
export const WAYPOINT = 'spiffe://cluster.local/ns/shop/sa/waypoint';
export const REVIEWS = 'spiffe://cluster.local/ns/shop/sa/reviews';

/** A fresh unconnected TCP socket of the family asked for, as the agent makes them. */
export const loopbackSocket = (family: 4 | 6): number => tcpSocketOf(family);

/** The service `reviews` on `vip` with these ports, its one endpoint `w1`. */
export function reviewsService(vip: string, ports: ServicePort[]): Service {
  return { namespace: 'shop', name: 'reviews', hostname: 'reviews.shop.svc.cluster.local', vips: [vip], endpoints: ['w1'], ports };
}

/** Its endpoint: the workload `reviews-1` at `ip` (where the stand-in agent listens). */
export function reviewsWorkload(ip: string): Workload {
  return {
    uid: 'w1', name: 'reviews-1', workload: 'reviews', namespace: 'shop', serviceAccount: 'reviews', identity: REVIEWS,
    ips: [ip], node: 'node-1', labels: { app: 'reviews' }, enrolled: true, ports: {},
  };
}

/** `listen(server, host?, port?)`: its port; the server is closed by the closers. */
export function listener(closers: (() => unknown)[]) {
  return (server: Server | http.Server | http2.Http2Server, host = '127.0.0.1', port = 0): Promise<number> =>
    new Promise((resolve, reject) => {
      server.once('error', reject).listen(port, host, () => resolve((server.address() as { port: number }).port));
      closers.push(() => server.close());
    });
}

/** A started CertManager whose certificates a CA kept under `dir/mesh` signs. */
export async function meshCertificates(dir: string): Promise<CertManager> {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'mesh')) });
  const manager = new CertManager({ source: {
    createCertificate: async (csr: string, identity: string, ttl: number) => (await ca.sign({ csr, identity, ttlSeconds: ttl })).chain,
    trustBundle: () => Promise.resolve(ca.trustBundle()),
  } });
  await manager.start();
  return manager;
}

/** The destination's node agent as REVIEWS on `ip`:15008: a tunnel to ip:port reaches the app `apps` maps port to. */
export async function standInAgent(manager: CertManager, apps: Map<number, number>, ip: string, closers: (() => unknown)[]): Promise<void> {
  const agent = new HboneServer({
    certificate: () => manager.acquire(REVIEWS), roots: () => manager.trustBundle,
    onTunnel: (stream, info) => {
      const port = apps.get(Number(info.authority.split(':')[1]));
      if (!port) return void stream.respond({ ':status': 503 }, { endStream: true });
      stream.respond({ ':status': 200 });
      const app = connect(port, '127.0.0.1');
      stream.pipe(app).pipe(stream);
      app.on('error', () => stream.destroy());
      stream.on('error', () => app.destroy());
    },
  });
  await listener(closers)(createServer((s) => void agent.handle(s)), ip, 15008);
  closers.push(() => agent.close());
}

/** A tunnel from `pod` (as `identity`) through the waypoint on 127.0.0.1:`waypointPort` to `authority`. */
export async function waypointTunnel(pool: HbonePool, manager: CertManager, waypointPort: number, authority: string, identity = CLIENT, pod = identity): Promise<http2.ClientHttp2Stream> {
  return pool.open(
    { pod, cert: await manager.acquire(identity), roots: manager.trustBundle, socket: loopbackSocket },
    { address: '127.0.0.1', port: waypointPort, identity: WAYPOINT, authority },
  );
}
