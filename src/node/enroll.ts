/**
 * Enrolling a pod into the ambient datapath: the agent's in-pod listeners (outbound capture
 * 15001, inbound plaintext 15006, HBONE 15008, and with DNS capture UDP 15053 on 127.0.0.1 and
 * ::1) are opened inside the pod's netns, then the
 * pod's map entries are written and sk_lookup is attached to its netns. Unenrolling reverses
 * it, map entries first so that capture stops before the listeners go away.
 *
 * Every in-pod listener has SO_REUSEPORT and the pod's netns has `net.ipv4.tcp_migrate_req=1`:
 * a new agent started beside the old one joins each listener's reuseport group, and when the old
 * one closes its listeners the connections queued on them (accepted by the kernel, or still in
 * their handshake) move to the new one's instead of being reset.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { podConfigCodec, type OrigDst, type PodConfig } from '../ebpf/codecs.js';
import type { Datapath } from '../ebpf/datapath.js';
import { AMBIT } from '../ebpf/layout.generated.js';
import { silentLogger } from '../telemetry/log.js';
import { AGENT_SOCKET_MARK, closeFd, listenInNetns, netnsCookie, setNetnsSysctl, udpSocketInNetns } from '../host/netns.js';

export interface PodSpec {
  /** namespace/name, for messages. */
  name: string;
  /** e.g. /run/netns/<pod>. */
  netnsPath: string;
  /** The pod's cgroup v2 directory; must lie under the cgroup the outbound hooks are attached to. */
  cgroupPath?: string;
  /** The pod's addresses: inbound steering finds the pod by destination address. */
  ips: string[];
  excludedOutboundPorts?: number[];
  excludedInboundPorts?: number[];
  excludedCidrs?: string[];
}

/** What the agent does with each kind of captured connection. */
export interface PodHandlers {
  /** A connection the pod opened; `dst` is where the application meant to go. */
  outbound(socket: Socket, dst: OrigDst | undefined, pod: EnrolledPod): void;
  /** Plaintext arriving from outside the pod; its destination is socket.localAddress/localPort. */
  inbound(socket: Socket, pod: EnrolledPod): void;
  /** HBONE (mTLS) arriving on 15008. */
  hbone(socket: Socket, pod: EnrolledPod): void;
  /**
   * The pod's DNS listener on `listenerAddr` (127.0.0.1 or ::1) port 15053, where its UDP queries
   * to port 53 are steered. Only with `captureDns`; called as soon as the socket is bound, before
   * `enroll` resolves; the enroller closes it with the pod's listeners.
   */
  dns?(socket: UdpSocket, listenerAddr: string, pod: EnrolledPod): void;
}

export interface EnrollerOptions {
  /** Steer the pods' UDP DNS queries to the agent (AMBIT_POD_CAPTURE_DNS) and open its DNS listeners. */
  captureDns?: boolean;
}

export interface EnrolledPod {
  readonly spec: PodSpec;
  readonly netnsCookie: bigint;
  readonly config: PodConfig;
  /** Reads the original destination of a connection accepted on the outbound listener. */
  originalDestination(socket: Socket): OrigDst | undefined;
}

export class EnrollError extends Error {
  override readonly name = 'EnrollError';
  readonly code = 'AMBIT_E_ENROLL';
  constructor(pod: string, message: string, options?: { cause: unknown }) {
    super(`enroll ${pod}: ${message}`, options);
  }
}

interface PodState extends EnrolledPod {
  servers: Server[];
  udp: UdpSocket[];
}

function bindUdp(fd: number, family: 'udp4' | 'udp6'): Promise<UdpSocket> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(family);
    socket.once('error', reject);
    socket.bind({ fd }, () => {
      socket.off('error', reject);
      resolve(socket);
    });
  });
}

function serve(fd: number, onConnection: (socket: Socket) => void): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer({ pauseOnConnect: false }, onConnection);
    server.once('error', reject);
    server.listen({ fd }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * Stops accepting: the listening socket closes at once. Connections already accepted are not
 * waited for (server.close's callback would wait for every one, and a pooled HBONE session the
 * agent holds to its own pod would never end): their owner drains and resets them.
 */
function closeServer(server: Server): Promise<void> {
  if (server.listening) server.close();
  return Promise.resolve();
}

function closeUdp(pod: PodState): void {
  for (const socket of pod.udp) socket.close();
  pod.udp.length = 0;
}

export class PodEnroller {
  private readonly pods = new Map<bigint, PodState>();

  constructor(
    private readonly datapath: Datapath,
    private readonly handlers: PodHandlers,
    private readonly log: Logger = silentLogger,
    private readonly options: EnrollerOptions = {},
  ) {}

  get enrolled(): EnrolledPod[] {
    return [...this.pods.values()];
  }

  async enroll(spec: PodSpec): Promise<EnrolledPod> {
    const meshCgroup = this.datapath.cgroup;
    if (spec.cgroupPath && meshCgroup && !`${resolve(spec.cgroupPath)}/`.startsWith(`${meshCgroup}/`)) {
      throw new EnrollError(spec.name, `its cgroup ${spec.cgroupPath} is not under the mesh cgroup ${meshCgroup}, so its connects would not be captured; start the pod's processes under ${meshCgroup}`);
    }
    let cookie: bigint;
    try {
      cookie = netnsCookie(spec.netnsPath);
    } catch (err) {
      throw new EnrollError(spec.name, (err as Error).message, { cause: err });
    }
    const existing = this.pods.get(cookie);
    if (existing) return existing;

    const config: PodConfig = {
      captureOutbound: true,
      captureInbound: true,
      outboundPort: AMBIT.PORT_OUTBOUND,
      inboundPort: AMBIT.PORT_INBOUND,
      ...(this.options.captureDns && this.handlers.dns ? { captureDns: true } : {}),
      excludedOutboundPorts: spec.excludedOutboundPorts ?? [],
      excludedInboundPorts: spec.excludedInboundPorts ?? [],
      excludedCidrs: spec.excludedCidrs ?? [],
    };
    // Encode before touching anything: a bad port or CIDR must fail with nothing to undo.
    try {
      podConfigCodec.encode(config);
    } catch (err) {
      throw new EnrollError(spec.name, (err as Error).message, { cause: err });
    }

    const pod: PodState = {
      spec,
      netnsCookie: cookie,
      config,
      servers: [],
      udp: [],
      originalDestination: (socket) => this.datapath.originalDestination({
        netnsCookie: cookie,
        clientAddr: socket.remoteAddress ?? '',
        clientPort: socket.remotePort ?? 0,
        listenerAddr: socket.localAddress ?? '',
        listenerPort: socket.localPort ?? 0,
      }),
    };
    // During a handover the listeners join the old agent's reuseport groups and take connections
    // the moment they listen, before the caller has recorded the pod: each waits for that (the
    // caller records it as soon as this resolves; setImmediate comes after that continuation).
    let opened: () => void = () => undefined;
    const enrolled = new Promise<void>((r) => { opened = r; });
    const later = (handle: (socket: Socket) => void) => (socket: Socket) => void enrolled.then(() => handle(socket));
    const fds: number[] = [];
    const listen = (host: string, port: number, dualStack = false) => {
      const fd = listenInNetns(spec.netnsPath, host, port, { mark: AGENT_SOCKET_MARK, dualStack, reusePort: true });
      fds.push(fd);
      return fd;
    };
    this.migrateRequests(spec);
    try {
      const out4 = listen('127.0.0.1', config.outboundPort);
      const out6 = listen('::1', config.outboundPort);
      const inbound = listen('::', config.inboundPort, true);
      const hbone = listen('::', AMBIT.PORT_HBONE, true);
      const onOutbound = later((socket: Socket) => this.handlers.outbound(socket, pod.originalDestination(socket), pod));
      pod.servers.push(await serve(out4, onOutbound));
      pod.servers.push(await serve(out6, onOutbound));
      pod.servers.push(await serve(hbone, later((socket) => this.handlers.hbone(socket, pod))));
      // The sockhash takes its own reference to the listener before Node.js owns the fd.
      const fdValue = Buffer.alloc(8);
      fdValue.writeBigUInt64LE(BigInt(inbound));
      this.datapath.maps.inboundListeners.setRaw(cookie, fdValue);
      pod.servers.push(await serve(inbound, later((socket) => this.handlers.inbound(socket, pod))));
      fds.length = 0;
      const dns = this.handlers.dns;
      if (config.captureDns && dns) {
        for (const [host, family] of [['127.0.0.1', 'udp4'], ['::1', 'udp6']] as const) {
          const fd = udpSocketInNetns(spec.netnsPath, host, AMBIT.PORT_DNS, { mark: AGENT_SOCKET_MARK, reusePort: true });
          fds.push(fd);
          const socket = await bindUdp(fd, family);
          fds.length = 0;
          pod.udp.push(socket);
          // At once, not after enrollment like the TCP listeners: a datagram with no listener
          // for it is lost (during a handover this socket shares the old agent's traffic at
          // once), and answering needs nothing the caller records.
          dns.call(this.handlers, socket, host, pod);
        }
      }

      for (const ip of spec.ips) this.datapath.maps.podAddrs.set(ip, cookie);
      this.datapath.attachInbound(spec.netnsPath, cookie);
      this.datapath.maps.pods.set(cookie, config);
    } catch (err) {
      for (const fd of fds) closeFd(fd);
      await this.teardown(pod);
      setImmediate(opened);
      throw new EnrollError(spec.name, (err as Error).message, { cause: err });
    }
    setImmediate(opened);
    this.pods.set(cookie, pod);
    this.log.info({ pod: spec.name, netnsCookie: cookie.toString(), ips: spec.ips }, 'pod enrolled');
    return pod;
  }

  private migrateWarned = false;

  /**
   * `net.ipv4.tcp_migrate_req=1` in the pod's netns (Linux ≥ 5.14; covers IPv6 too): a closing
   * listener's queued connections move to another listener of its reuseport group. Without it a
   * handover resets the few connections queued at that instant; enrollment goes on, with a warning.
   */
  private migrateRequests(spec: PodSpec): void {
    try {
      setNetnsSysctl(spec.netnsPath, 'net/ipv4/tcp_migrate_req', '1');
    } catch (err) {
      if (this.migrateWarned) return;
      this.migrateWarned = true;
      this.log.warn({ pod: spec.name, err: (err as Error).message }, 'net.ipv4.tcp_migrate_req cannot be set (Linux < 5.14?): connections queued on an agent\'s listeners when it hands over to a new one are reset');
    }
  }

  /** Stops capture for the pod and closes its listeners. Unknown pods are ignored. */
  async unenroll(cookie: bigint): Promise<void> {
    const pod = this.pods.get(cookie);
    if (!pod) return;
    this.pods.delete(cookie);
    await this.teardown(pod);
    this.log.info({ pod: pod.spec.name, netnsCookie: cookie.toString() }, 'pod unenrolled');
  }

  /**
   * Closes the pod's listeners but leaves its map entries and sk_lookup link in place: its
   * connects keep going to 15001, refused until the next agent listens there, never around the
   * mesh. For an agent that stops to be replaced.
   */
  async release(cookie: bigint): Promise<void> {
    const pod = this.pods.get(cookie);
    if (!pod) return;
    this.pods.delete(cookie);
    await Promise.all(pod.servers.map(closeServer));
    pod.servers.length = 0;
    closeUdp(pod);
  }

  async unenrollAll(): Promise<void> {
    for (const cookie of [...this.pods.keys()]) await this.unenroll(cookie);
  }

  private async teardown(pod: PodState): Promise<void> {
    const { maps } = this.datapath;
    maps.pods.delete(pod.netnsCookie);
    this.datapath.detachInbound(pod.netnsCookie);
    for (const ip of pod.spec.ips) {
      if (maps.podAddrs.get(ip) === pod.netnsCookie) maps.podAddrs.delete(ip);
    }
    maps.inboundListeners.delete(pod.netnsCookie);
    await Promise.all(pod.servers.map(closeServer));
    pod.servers.length = 0;
    closeUdp(pod);
  }
}
