// Test client run inside a pod (its netns and cgroup): connects, prints what the server says.
// usage: client.mjs HOST PORT [--local-port N] [--hold MS] [--repeat N] [--mark N]
import { connect } from 'node:net';

const [host, portText, ...rest] = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = rest.indexOf(name);
  return i < 0 ? fallback : Number(rest[i + 1]);
};
const localPort = opt('--local-port', undefined);
const hold = opt('--hold', 0);
const repeat = opt('--repeat', 1);

function once() {
  return new Promise((resolve) => {
    const socket = connect({ host, port: Number(portText), localPort });
    let data = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => { data += chunk; });
    socket.on('error', (err) => resolve(`error ${err.code}`));
    socket.on('end', () => setTimeout(() => { socket.destroy(); resolve(data.trim()); }, hold));
  });
}

for (let i = 0; i < repeat; i++) process.stdout.write(`${await once()}\n`);
