/**
 * The eBPF redirection layer, end to end, on this machine: a pod (netns + cgroup) is enrolled;
 * its outbound connects are captured by connect4 and relayed by the agent to the original
 * destination; plaintext arriving from a peer is steered by sk_lookup to the agent's 15006
 * listener and handed to the pod's application. The agent here relays plain TCP; mTLS/HBONE
 * between agents is the node agent's job. Run: `make demo` (root).
 */
import { createServer, Socket } from 'node:net';
import { Datapath } from '../src/ebpf/datapath.js';
import { PodEnroller } from '../src/node/enroll.js';
import { AGENT_SOCKET_MARK, listenInNetns, socketInNetns } from '../src/host/netns.js';
import { Lab } from '../src/local/lab.js';

const say = (line: string) => process.stdout.write(`${line}\n`);

/** Relays `from` to host:port over a socket made inside the pod's netns and marked as the agent's. */
function relay(from: Socket, netnsPath: string, host: string, port: number): void {
  const fd = socketInNetns(netnsPath, host.includes(':') ? 6 : 4, { mark: AGENT_SOCKET_MARK });
  const to = new Socket({ fd, readable: true, writable: true }).connect(port, host);
  from.pipe(to).pipe(from);
  const done = () => { from.destroy(); to.destroy(); };
  from.on('error', done);
  to.on('error', done);
}

function serveIn(netnsPath: string, host: string, port: number, reply: (s: Socket) => void): Promise<void> {
  const server = createServer(reply);
  return new Promise((resolve) => server.listen({ fd: listenInNetns(netnsPath, host, port, { dualStack: host === '::' }) }, resolve));
}

async function main(): Promise<void> {
  const lab = new Lab('ambit-demo');
  const stop = () => void lab.cleanup().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  try {
    const pod = lab.netns('web');
    const peer = lab.netns('peer');
    const cg = lab.cgroup('web');
    lab.link(peer, '10.210.0.1/24', pod, '10.210.0.2/24');
    say(`lab ${lab.id}: pod netns ${pod} (10.210.0.2), peer netns ${peer} (10.210.0.1), pod cgroup ${cg}`);

    await serveIn(peer, '10.210.0.1', 8080, (s) => s.end('hello from the peer\n'));
    await serveIn(pod, '::', 8080, (s) => s.end('hello from the pod\'s app\n'));

    const datapath = Datapath.load({ pinRoot: lab.pinRoot });
    lab.defer(() => datapath.close());
    datapath.attachOutbound(lab.cgroupRoot);
    say(`loaded bpf objects; connect4/connect6/sockops attached to ${lab.cgroupRoot}, pinned under ${lab.pinRoot}`);

    const enroller = new PodEnroller(datapath, {
      outbound(socket, dst) {
        if (!dst) { socket.destroy(); return; }
        say(`  agent: captured ${socket.remoteAddress}:${socket.remotePort} on :15001, original destination ${dst.addr}:${dst.port} -> relaying`);
        relay(socket, pod, dst.addr, dst.port);
      },
      inbound(socket) {
        const target = (socket.localAddress ?? '').replace(/^::ffff:/, '');
        say(`  agent: steered ${socket.remoteAddress?.replace(/^::ffff:/, '')} -> ${target}:${socket.localPort} to :15006 -> handing to the app`);
        relay(socket, pod, target, socket.localPort ?? 0);
      },
      hbone(socket) { socket.destroy(); },
    });
    lab.defer(() => enroller.unenrollAll());
    const enrolled = await enroller.enroll({ name: 'demo/web', netnsPath: pod, cgroupPath: cg, ips: ['10.210.0.2'] });
    say(`enrolled demo/web (netns cookie ${enrolled.netnsCookie}): listeners 15001, 15006, 15008 inside the pod; sk_lookup attached`);

    // A one-line TCP client, run as the pod's own process would be (its netns and cgroup).
    const fetch = async (netns: string, cgroup: string | undefined, host: string, port: number) => {
      const code = `const s=require('net').connect(${port},'${host}');s.pipe(process.stdout);s.on('error',e=>console.log('error',e.code))`;
      return (await lab.run(netns, cgroup, [process.execPath, '-e', code])).stdout.trim();
    };

    say('\n1. the pod\'s app connects to the peer (10.210.0.1:8080):');
    say(`  app got: ${await fetch(pod, cg, '10.210.0.1', 8080)}`);
    say('\n2. the peer connects to the pod (10.210.0.2:8080):');
    say(`  peer got: ${await fetch(peer, undefined, '10.210.0.2', 8080)}`);
    say('\n3. the same connect from a process in the pod\'s netns but outside its cgroup is not captured:');
    say(`  got: ${await fetch(pod, undefined, '10.210.0.1', 8080)}`);

    say('\ncounters:');
    for (const [name, value] of Object.entries(datapath.counters())) say(`  ${name.padEnd(22)} ${value}`);
  } finally {
    await lab.cleanup();
    say('\ncleaned up: namespaces, cgroups and pinned objects removed');
  }
}

void main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
