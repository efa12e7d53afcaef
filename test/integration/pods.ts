/** Test stand-ins for the agent's proxies and for pod applications: each answers one line that says who got the connection. */
import { createServer, type Server, type Socket } from 'node:net';
import type { PodHandlers } from '../../src/node/enroll.js';
import { listenInNetns } from '../../src/host/netns.js';

function plain(addr: string | undefined): string {
  return (addr ?? '').replace(/^::ffff:/, '');
}

/** Handlers that report what the datapath told the agent. */
export const reportingHandlers: PodHandlers = {
  outbound(socket, dst) {
    socket.end(dst ? `captured ${dst.addr} ${dst.port} v${dst.family}\n` : 'captured unknown\n');
  },
  inbound(socket) {
    socket.end(`inbound ${plain(socket.localAddress)} ${socket.localPort}\n`);
  },
  hbone(socket) {
    socket.end('hbone\n');
  },
};

/** An application server inside a netns, answering `app <port>`. Dual-stack on `::`. */
export function startApp(netnsPath: string, port: number, host = '::'): Promise<Server> {
  const fd = listenInNetns(netnsPath, host, port, { dualStack: true });
  return new Promise((resolve, reject) => {
    const server = createServer((socket: Socket) => socket.end(`app ${port}\n`));
    server.once('error', reject);
    server.listen({ fd }, () => resolve(server));
  });
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}
