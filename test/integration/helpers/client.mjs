// Test client run inside a pod (its netns and cgroup): connects, prints what the server says.
// usage: client.mjs HOST PORT [--local-port N] [--hold MS] [--repeat N] [--mark N] [--interval MS]
// --mark makes the socket the way the node agent does (SO_MARK set before connect), through
// koffi, since Node.js has no SO_MARK option.
import { connect, isIPv6, Socket } from 'node:net';

const [host, portText, ...rest] = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = rest.indexOf(name);
  return i < 0 ? fallback : Number(rest[i + 1]);
};
const port = Number(portText);
const localPort = opt('--local-port', undefined);
const hold = opt('--hold', 0);
const repeat = opt('--repeat', 1);
const mark = opt('--mark', undefined);
const interval = opt('--interval', 0);

async function markedSocket() {
  const { default: koffi } = await import('koffi');
  const libc = koffi.load('libc.so.6');
  const socket = libc.func('int socket(int, int, int)');
  const setsockopt = libc.func('int setsockopt(int, int, int, const void *, uint32_t)');
  const fd = socket(isIPv6(host) ? 10 : 2, 1 | 0o4000 | 0o2000000, 0);
  const value = Buffer.alloc(4);
  value.writeInt32LE(mark);
  if (fd < 0 || setsockopt(fd, 1, 36, value, 4) < 0) throw new Error(`SO_MARK failed: errno ${koffi.errno()}`);
  return new Socket({ fd, readable: true, writable: true }).connect(port, host);
}

async function once() {
  const socket = mark === undefined ? connect({ host, port, localPort }) : await markedSocket();
  return new Promise((resolve) => {
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => { data += chunk; });
    socket.on('error', (err) => resolve(`error ${err.code}`));
    socket.on('end', () => setTimeout(() => { socket.destroy(); resolve(data.trim()); }, hold));
  });
}

for (let i = 0; i < repeat; i++) {
  process.stdout.write(`${await once()}\n`);
  if (interval) await new Promise((r) => setTimeout(r, interval));
}
