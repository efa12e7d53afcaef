// Holds N idle keep-alive connections to HOST:PORT through whatever carries them (bench/l4-hop.ts
// runs it in a meshed pod, so each goes through both node agents): each connection makes one
// HTTP request, so that its path is open end to end, then stays open and silent. When all are
// up it writes {"open":N,"failed":F} to READY_FILE, holds them HOLD_S seconds, closes them, exits.
//   node bench/idle-hold.mjs HOST PORT N READY_FILE HOLD_S
import { writeFileSync } from 'node:fs';
import { connect } from 'node:net';

const [host, portText, countText, readyFile, holdText] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const holdMs = Number(holdText) * 1000;
if (!host || !Number.isInteger(port) || !Number.isInteger(count) || count < 1 || !readyFile || !(holdMs > 0)) {
  console.error('usage: node bench/idle-hold.mjs HOST PORT N READY_FILE HOLD_S');
  process.exit(64);
}

const sockets = [];
let failed = 0;

/** One connection that has had its answer: open end to end. */
function one() {
  return new Promise((resolve) => {
    const socket = connect(port, host);
    let answered = false;
    socket.setNoDelay(true);
    socket.on('connect', () => socket.write(`GET / HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
    socket.on('data', () => {
      if (answered) return;
      answered = true;
      sockets.push(socket);
      resolve();
    });
    socket.on('error', () => {
      if (!answered) failed++;
      resolve();
    });
    socket.on('close', () => { if (!answered) resolve(); });
  });
}

// 100 at a time: a burst of thousands of SYNs would measure the accept queues, not the idle cost.
for (let i = 0; i < count; i += 100) await Promise.all(Array.from({ length: Math.min(100, count - i) }, one));
writeFileSync(readyFile, JSON.stringify({ open: sockets.length, failed }));
await new Promise((resolve) => setTimeout(resolve, holdMs));
for (const s of sockets) s.destroy();
