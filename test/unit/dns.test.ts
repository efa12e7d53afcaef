// The node agent's DNS server without a kernel: its wire format against hostile bytes, local
// answers (VIPs, headless pods, ServiceEntry hosts, NODATA), forwarding through a stand-in
// upstream (the pod's id kept, SERVFAIL on silence, a bound on what is in flight), DNS over TCP.
import { createSocket } from 'node:dgram';
import { createServer, connect, type AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Service, Workload } from '../../src/config/model.js';
import { buildDnsTable, DnsServer, type DnsPod, type DnsUpstream } from '../../src/node/dns.js';
import { DNS_TYPE_A, DNS_TYPE_AAAA, frame, parseQuery, RCODE, rcodeOf, TcpFramer } from '../../src/node/dns-wire.js';
import { silentLogger } from '../../src/telemetry/log.js';
import { dnsCaptureFromEnv } from '../../src/node/app.js';

function query(name: string, type = DNS_TYPE_A, id = 0x1234, opts: { qdcount?: number; flags?: number } = {}): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt16BE(id, 0);
  head.writeUInt16BE(opts.flags ?? 0x0100, 2);
  head.writeUInt16BE(opts.qdcount ?? 1, 4);
  const labels = name === '' ? [] : name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')]));
  const tail = Buffer.alloc(5);
  tail.writeUInt16BE(type, 1);
  tail.writeUInt16BE(1, 3);
  return Buffer.concat([head, ...labels, tail]);
}

/** The answer's records as text (A dotted, AAAA hex), and its TTLs. */
function records(reply: Buffer, q: Buffer): { addrs: string[]; ttls: number[] } {
  const an = reply.readUInt16BE(6);
  let at = q.length;
  const addrs: string[] = [];
  const ttls: number[] = [];
  for (let i = 0; i < an; i++) {
    expect(reply.readUInt16BE(at)).toBe(0xc00c);
    ttls.push(reply.readUInt32BE(at + 6));
    const len = reply.readUInt16BE(at + 10);
    const d = reply.subarray(at + 12, at + 12 + len);
    addrs.push(len === 4 ? [...d].join('.') : d.toString('hex'));
    at += 12 + len;
  }
  expect(at).toBe(reply.length);
  return { addrs, ttls };
}

const svc = (name: string, vips: string[], endpoints: string[] = []): Service => ({
  namespace: 'shop', name, hostname: `${name}.shop.svc.cluster.local`, vips, ports: [{ port: 80, targetPort: 8080, protocol: 'TCP' }], endpoints,
});
const workload = (uid: string, ips: string[]) => ({ uid, ips } as unknown as Workload);
const TABLE = buildDnsTable(
  [svc('web', ['10.96.0.10', 'fd00:96::10']), svc('db', [], ['w1', 'w2']), svc('v4only', ['10.96.0.11'])],
  new Map([['w1', workload('w1', ['10.244.1.5'])], ['w2', workload('w2', ['10.244.2.6', 'fd00:244::6'])]]),
  [{ dnsAddresses: { 'api.example.com': ['240.240.0.7'], '*.wild.example.com': ['240.240.0.8'], 'Mixed.Example.com.': ['2001:2::9'] } }],
);

function pod(upstream: DnsUpstream): DnsPod {
  return { name: 'shop/client', namespace: 'shop', upstream, pending: 0 };
}
const RESOLVER = { addr: '10.96.0.53', port: 53 };
const never: DnsUpstream = { exchange: () => Promise.reject(new Error('must not be forwarded')) };

describe('the DNS table', () => {
  it('holds services by host name (VIPs, or a headless one\'s pods) and ServiceEntry hosts, not wildcards', () => {
    expect(TABLE.get('web.shop.svc.cluster.local')).toEqual({ v4: ['10.96.0.10'], v6: ['fd00:96::10'] });
    expect(TABLE.get('db.shop.svc.cluster.local')).toEqual({ v4: ['10.244.1.5', '10.244.2.6'], v6: ['fd00:244::6'] });
    expect(TABLE.get('api.example.com')).toEqual({ v4: ['240.240.0.7'], v6: [] });
    expect(TABLE.get('mixed.example.com')).toEqual({ v4: [], v6: ['2001:2::9'] });
    expect([...TABLE.keys()].some((k) => k.includes('*'))).toBe(false);
  });
});

describe('local answers', () => {
  const server = new DnsServer({ names: () => TABLE, log: silentLogger, ttl: 30 });

  it('answers A and AAAA of a mesh name, the question echoed as sent (case kept) and a 30 s TTL', async () => {
    const q = query('Web.Shop.svc.cluster.local');
    const reply = (await server.answer(q, pod(never), RESOLVER, 'udp'))!;
    expect(reply.readUInt16BE(0)).toBe(0x1234);
    expect(reply.readUInt16BE(2) & 0x8000).toBe(0x8000);
    expect(reply.subarray(12, q.length)).toEqual(q.subarray(12));
    expect(rcodeOf(reply)).toBe(RCODE.NOERROR);
    expect(records(reply, q)).toEqual({ addrs: ['10.96.0.10'], ttls: [30] });
    const q6 = query('web.shop.svc.cluster.local', DNS_TYPE_AAAA);
    expect(records((await server.answer(q6, pod(never), RESOLVER, 'udp'))!, q6).addrs).toEqual(['fd00009600000000000000000000' + '0010']);
  });

  it('answers NODATA (NOERROR, no record) for a known name without an address of the family', async () => {
    const q = query('v4only.shop.svc.cluster.local', DNS_TYPE_AAAA);
    const reply = (await server.answer(q, pod(never), RESOLVER, 'udp'))!;
    expect(rcodeOf(reply)).toBe(RCODE.NOERROR);
    expect(records(reply, q).addrs).toEqual([]);
  });

  it('forwards other types of a known name, and unknown names, with the pod\'s query as sent', async () => {
    const seen: Buffer[] = [];
    const upstream: DnsUpstream = { exchange: (q, resolver, transport) => {
      seen.push(q);
      expect({ resolver, transport }).toEqual({ resolver: RESOLVER, transport: 'udp' });
      const r = Buffer.from(q);
      r.writeUInt16BE(0x8183, 2);
      return Promise.resolve(r);
    } };
    const mx = query('web.shop.svc.cluster.local', 15, 0x4242);
    const other = query('example.org', DNS_TYPE_A, 0x4343);
    const wild = query('x.wild.example.com', DNS_TYPE_A, 0x4444);
    for (const q of [mx, other, wild]) expect((await server.answer(q, pod(upstream), RESOLVER, 'udp'))!.readUInt16BE(0)).toBe(q.readUInt16BE(0));
    expect(seen).toEqual([mx, other, wild]);
  });
});

describe('forwarding failures', () => {
  it('answers SERVFAIL when the upstream fails or the resolver is unknown, and counts', async () => {
    const counted: string[] = [];
    const queries = { inc: (labels: { result: string }) => counted.push(labels.result) } as never;
    const server = new DnsServer({ names: () => TABLE, log: silentLogger, queries });
    const failing: DnsUpstream = { exchange: () => Promise.reject(new Error('no answer from 10.96.0.53:53 within 5000 ms')) };
    const q = query('example.org');
    const reply = (await server.answer(q, pod(failing), RESOLVER, 'udp'))!;
    expect(rcodeOf(reply)).toBe(RCODE.SERVFAIL);
    expect(reply.readUInt16BE(0)).toBe(0x1234);
    expect(reply.subarray(12)).toEqual(q.subarray(12));
    expect(rcodeOf((await server.answer(q, pod(never), undefined, 'udp'))!)).toBe(RCODE.SERVFAIL);
    await server.answer(query('web.shop.svc.cluster.local'), pod(never), RESOLVER, 'udp');
    expect(counted).toEqual(['failed', 'failed', 'local']);
  });

  it('bounds the forwards of one pod in flight: the rest are SERVFAIL at once', async () => {
    const server = new DnsServer({ names: () => TABLE, log: silentLogger, maxPendingPerPod: 3 });
    const release: (() => void)[] = [];
    const slow: DnsUpstream = { exchange: (q) => new Promise((resolve) => release.push(() => resolve(Buffer.from(q)))) };
    const p = pod(slow);
    const inFlight = [1, 2, 3].map((i) => server.answer(query('example.org', DNS_TYPE_A, i), p, RESOLVER, 'udp'));
    expect(rcodeOf((await server.answer(query('example.org', DNS_TYPE_A, 4), p, RESOLVER, 'udp'))!)).toBe(RCODE.SERVFAIL);
    // Local answers are not held up by the bound.
    expect(rcodeOf((await server.answer(query('web.shop.svc.cluster.local'), p, RESOLVER, 'udp'))!)).toBe(RCODE.NOERROR);
    for (const r of release) r();
    expect((await Promise.all(inFlight)).map((r) => r!.readUInt16BE(0))).toEqual([1, 2, 3]);
    expect(p.pending).toBe(0);
  });
});

describe('hostile queries', () => {
  const server = new DnsServer({ names: () => TABLE, log: silentLogger });
  const answer = (b: Buffer) => server.answer(b, pod(never), RESOLVER, 'udp');

  it('drops what is shorter than a header, and responses', async () => {
    expect(await answer(Buffer.alloc(11))).toBeUndefined();
    expect(await answer(query('web.shop.svc.cluster.local', DNS_TYPE_A, 1, { flags: 0x8100 }))).toBeUndefined();
  });

  it('answers FORMERR to no or many questions, compression pointers, bad labels, long names, truncation, oversize', async () => {
    const pointerLoop = Buffer.concat([query('', DNS_TYPE_A).subarray(0, 12), Buffer.from([0xc0, 12, 0, 1, 0, 1])]);
    const cases: [string, Buffer][] = [
      ['no question', query('web.shop.svc.cluster.local', DNS_TYPE_A, 7, { qdcount: 0 })],
      ['two questions', query('web.shop.svc.cluster.local', DNS_TYPE_A, 7, { qdcount: 2 })],
      ['a pointer to itself', pointerLoop],
      ['label type 0x40', Buffer.concat([query('').subarray(0, 12), Buffer.from([0x41, 0x61, 0, 0, 1, 0, 1])])],
      ['a name over 255 bytes', query(Array(5).fill('a'.repeat(63)).join('.'))],
      ['a label past the end', query('web.shop.svc.cluster.local').subarray(0, 20)],
      ['no type and class', query('web.shop.svc.cluster.local').subarray(0, -3)],
      ['5000 bytes', Buffer.concat([query('web.shop.svc.cluster.local'), Buffer.alloc(5000)])],
    ];
    for (const [what, b] of cases) {
      const reply = await answer(b);
      expect(reply, what).toBeDefined();
      expect(rcodeOf(reply!), what).toBe(RCODE.FORMERR);
      expect(reply!.readUInt16BE(0), what).toBe(b.readUInt16BE(0));
    }
    expect(parseQuery(pointerLoop)).toMatchObject({ kind: 'formerr', why: 'a compression pointer in the question' });
  });

  it('never matches a name whose label holds a dot', async () => {
    const dotted = query('web.shop.svc.cluster.local');
    dotted[12 + 3] = 0x2e; // "web" → "we." inside one label: not the mesh name
    expect(parseQuery(dotted)).toMatchObject({ kind: 'query', question: { name: undefined } });
  });

  it('survives 20,000 random and mutated packets without throwing', async () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const base = query('web.shop.svc.cluster.local');
    for (let i = 0; i < 20_000; i++) {
      const b = i % 2 ? Buffer.from(base) : Buffer.alloc(Math.floor(rand() * 80));
      for (let j = 0; j < 1 + rand() * 6; j++) if (b.length) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      if (b.length > 2) b[2]! &= 0x7f;
      const reply = await answer(b);
      if (reply) expect(reply.length).toBeGreaterThanOrEqual(12);
    }
  });
});

describe('DNS over TCP', () => {
  it('frames split and joined messages, and refuses an oversize announcement', () => {
    const f = new TcpFramer(100);
    const a = frame(Buffer.from('hello'));
    const b = frame(Buffer.from('world!'));
    const both = Buffer.concat([a, b]);
    expect(f.push(both.subarray(0, 3))).toEqual([]);
    expect(f.push(both.subarray(3)).map(String)).toEqual(['hello', 'world!']);
    expect(f.pending).toBe(0);
    expect(() => new TcpFramer(100).push(Buffer.from([0x01, 0x00]))).toThrow(/256-byte DNS message over TCP: at most 100/);
  });

  it('serves pipelined queries on one connection and closes on an oversize frame', async () => {
    const server = new DnsServer({ names: () => TABLE, log: silentLogger });
    const listener = createServer((s) => server.serveTcp(s, pod(never), RESOLVER));
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    const port = (listener.address() as AddressInfo).port;
    try {
      const replies = await new Promise<Buffer[]>((resolve, reject) => {
        const c = connect(port, '127.0.0.1', () => c.write(Buffer.concat([frame(query('web.shop.svc.cluster.local', DNS_TYPE_A, 1)), frame(query('db.shop.svc.cluster.local', DNS_TYPE_A, 2))])));
        const f = new TcpFramer(65535);
        const got: Buffer[] = [];
        c.on('data', (d: Buffer) => { got.push(...f.push(d)); if (got.length === 2) { c.end(); resolve(got); } });
        c.on('error', reject);
      });
      expect(replies.map((r) => r.readUInt16BE(0)).sort()).toEqual([1, 2]);
      const closed = await new Promise<boolean>((resolve) => {
        const c = connect(port, '127.0.0.1', () => c.write(Buffer.from([0xff, 0xff, 0, 0])));
        c.on('close', () => resolve(true));
        c.on('error', () => undefined);
      });
      expect(closed).toBe(true);
    } finally {
      listener.close();
    }
  });

  it('closes a connection whose message does not arrive whole in time (a truncated frame)', async () => {
    const server = new DnsServer({ names: () => TABLE, log: silentLogger, tcpMessageMs: 200 });
    const listener = createServer((s) => server.serveTcp(s, pod(never), RESOLVER));
    await new Promise<void>((r) => listener.listen(0, '127.0.0.1', r));
    try {
      const started = Date.now();
      await new Promise<void>((resolve) => {
        const c = connect((listener.address() as AddressInfo).port, '127.0.0.1', () => c.write(frame(query('web.shop.svc.cluster.local')).subarray(0, 20)));
        c.on('close', () => resolve());
        c.on('error', () => undefined);
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    } finally {
      listener.close();
    }
  });
});

describe('UDP listener', () => {
  it('answers on the socket the query came in on, to the sender', async () => {
    const server = new DnsServer({ names: () => TABLE, log: silentLogger });
    const listener = createSocket('udp4');
    await new Promise<void>((r) => listener.bind(0, '127.0.0.1', r));
    server.serveUdp(listener, pod(never), () => RESOLVER);
    const client = createSocket('udp4');
    try {
      const reply = await new Promise<Buffer>((resolve) => {
        client.on('message', (m) => resolve(m));
        client.send(query('web.shop.svc.cluster.local', DNS_TYPE_A, 99), listener.address().port, '127.0.0.1');
      });
      expect(reply.readUInt16BE(0)).toBe(99);
      expect(rcodeOf(reply)).toBe(RCODE.NOERROR);
    } finally {
      client.close();
      listener.close();
    }
  });
});

describe('AMBIT_DNS_CAPTURE', () => {
  it('is on unless set to false, and refuses anything else by name', () => {
    expect([undefined, '', 'true'].map(dnsCaptureFromEnv)).toEqual([true, true, true]);
    expect(dnsCaptureFromEnv('false')).toBe(false);
    expect(() => dnsCaptureFromEnv('off')).toThrow(/AMBIT_DNS_CAPTURE must be true or false, got "off"/);
  });
});
