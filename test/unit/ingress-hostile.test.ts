/**
 * What an ingress gateway reads from outside, taken as hostile: the ClientHello parser on real
 * and mangled hellos and on random bytes (never a throw, never a read past the buffer, a
 * verdict from a bounded prefix), listeners that close silent, slow and oversized clients; and
 * the listener plan from Gateways as users write them, with what is refused and why.
 */
import { connect as netConnect, createServer, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigObject } from '../../src/config/model.js';
import { Router } from '../../src/waypoint/routing.js';
import { WaypointProxy } from '../../src/waypoint/proxy.js';
import { IngressListeners, spiffeUri } from '../../src/waypoint/ingress/listeners.js';
import { GatewayRoutes } from '../../src/waypoint/ingress/routes.js';
import { planListeners, serverFor } from '../../src/waypoint/ingress/servers.js';
import { MAX_CLIENT_HELLO_BYTES, parseClientHello } from '../../src/waypoint/ingress/tls.js';
import { loopbackSocket } from './helpers/waypoint-rig.js';

/** The first bytes a real TLS client sends (Node's, with this SNI). */
async function realHello(servername?: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const server = createServer((s) => s.once('data', (b: Buffer) => {
      resolve(b);
      s.destroy();
      server.close();
    }));
    server.listen(0, '127.0.0.1', () => {
      const c = tlsConnect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, ...(servername ? { servername } : {}) });
      c.on('error', () => undefined);
    });
    server.on('error', reject);
  });
}

describe('parseClientHello', () => {
  let hello: Buffer;
  beforeAll(async () => { hello = await realHello('Shop.Example.com'); });

  it('reads the SNI of a real ClientHello, lower case', () => {
    expect(parseClientHello(hello)).toEqual({ kind: 'hello', sni: 'shop.example.com' });
  });

  it('reads a hello without SNI as one', async () => {
    // Node sends no server_name for an IP address.
    expect(parseClientHello(await realHello())).toEqual({ kind: 'hello' });
  });

  it('waits for every prefix of a hello, and never reads past what it has', () => {
    for (let n = 0; n < hello.length; n++) expect(parseClientHello(hello.subarray(0, n)).kind).toBe('wait');
  });

  it('refuses what is not a ClientHello: HTTP, another record type, an oversized record', () => {
    expect(parseClientHello(Buffer.from('GET / HTTP/1.1\r\n'))).toMatchObject({ kind: 'bad', reason: expect.stringContaining('not a TLS handshake record') });
    expect(parseClientHello(Buffer.from([0x17, 3, 3, 0, 1, 0]))).toMatchObject({ kind: 'bad' });
    expect(parseClientHello(Buffer.from([0x16, 3, 1, 0xff, 0xff]))).toMatchObject({ kind: 'bad', reason: expect.stringContaining('over the TLS maximum') });
    // A handshake that is not a ClientHello (type 2, ServerHello).
    expect(parseClientHello(Buffer.from([0x16, 3, 1, 0, 4, 2, 0, 0, 0]))).toMatchObject({ kind: 'bad', reason: 'not a ClientHello' });
  });

  it('refuses a hello whose lengths lie (every length byte of a real hello set to 0xff in turn)', () => {
    for (let i = 5; i < Math.min(hello.length, 400); i++) {
      const mangled = Buffer.from(hello);
      mangled[i] = 0xff;
      const r = parseClientHello(mangled);
      expect(['hello', 'bad']).toContain(r.kind);
      if (r.kind === 'hello' && r.sni !== undefined) expect(r.sni).toMatch(/^[a-z0-9*][a-z0-9.*_-]*$/);
    }
  });

  it('never throws on random bytes, and decides within one record', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 600 }), fc.boolean(), (bytes, asRecord) => {
      const buf = asRecord ? Buffer.concat([Buffer.from([0x16, 3, 1, bytes.length >> 8, bytes.length & 0xff]), Buffer.from(bytes)]) : Buffer.from(bytes);
      const r = parseClientHello(buf);
      if (asRecord) expect(r.kind).not.toBe('wait');
      return true;
    }), { numRuns: 3000 });
    expect(MAX_CLIENT_HELLO_BYTES).toBe(16_389);
  });
});

describe('spiffeUri', () => {
  it('takes the first spiffe URI SAN of a client certificate, nothing else', () => {
    expect(spiffeUri('DNS:a.example.com, URI:spiffe://td/ns/a/sa/b, URI:spiffe://td/ns/c/sa/d')).toBe('spiffe://td/ns/a/sa/b');
    expect(spiffeUri('DNS:a.example.com, URI:https://td/ns/a/sa/b')).toBeUndefined();
    expect(spiffeUri('DNS:spiffe://td/ns/a/sa/b')).toBeUndefined();
    expect(spiffeUri(undefined)).toBeUndefined();
    expect(spiffeUri(`URI:spiffe://${'a'.repeat(3000)}`)).toBeUndefined();
  });
});

describe('planListeners', () => {
  const istio = (servers: unknown[], name = 'gw', namespace = 'istio-system'): ConfigObject => ({ apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace, name, spec: { selector: { istio: 'ingressgateway' }, servers } });

  it('merges servers on one port and picks one by host: exact, then the longest wildcard, then *', () => {
    const warnings: string[] = [];
    const plans = planListeners([istio([
      { port: { number: 443, name: 'a', protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'SIMPLE', credentialName: 'any' } },
      { port: { number: 443, name: 'b', protocol: 'HTTPS' }, hosts: ['*.example.com'], tls: { mode: 'SIMPLE', credentialName: 'wild' } },
      { port: { number: 443, name: 'c', protocol: 'HTTPS' }, hosts: ['ns1/shop.example.com'], tls: { mode: 'SIMPLE', credentialName: 'shop' } },
    ])], (m) => warnings.push(m));
    expect(warnings).toEqual([]);
    const servers = plans.get(443)!.servers;
    expect(serverFor(servers, 'shop.example.com')?.name).toBe('c');
    expect(serverFor(servers, 'x.example.com')?.name).toBe('b');
    expect(serverFor(servers, 'example.org')?.name).toBe('a');
    expect(serverFor(servers, undefined)?.name).toBe('a');
    expect(servers[2]!.hosts).toEqual([{ host: 'shop.example.com', namespace: 'ns1' }]);
  });

  it('refuses, with a warning each, what it cannot serve', () => {
    const warnings: string[] = [];
    const plans = planListeners([istio([
      { port: { number: 443, protocol: 'HTTPS' }, hosts: ['a'], tls: { mode: 'ISTIO_MUTUAL' } },
      { port: { number: 443, protocol: 'HTTPS' }, hosts: ['a'] },
      { port: { number: 443, protocol: 'HTTPS' }, hosts: ['a'], tls: { mode: 'SIMPLE' } },
      { port: { number: 443, protocol: 'MONGO' }, hosts: ['a'] },
      { port: { number: 70000, protocol: 'HTTP' }, hosts: ['a'] },
      { port: { number: 80, protocol: 'HTTP' }, hosts: ['a'] },
      { port: { number: 80, protocol: 'HTTPS' }, hosts: ['b'], tls: { mode: 'SIMPLE', credentialName: 'c' } },
    ])], (m) => warnings.push(m));
    expect([...plans.keys()]).toEqual([80]);
    expect(warnings).toEqual([
      'Gateway/istio-system/gw#0: tls.mode ISTIO_MUTUAL is for sidecar clients, which ambit has not: not served',
      'Gateway/istio-system/gw#1: HTTPS needs tls: not served',
      'Gateway/istio-system/gw#2: tls.mode SIMPLE needs tls.credentialName (ambit reads certificates from Secrets only): not served',
      'Gateway/istio-system/gw#3: protocol "MONGO" is not one a gateway serves (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP): not served',
      'Gateway/istio-system/gw#4: port.number must be 1-65535: not served',
      'Gateway/istio-system/gw#6: port 80 already serves http (Gateway/istio-system/gw#5); a HTTPS server cannot share it: not served',
    ]);
  });

  it('reads Gateway API listeners: Terminate with a certificateRef, Passthrough, allowedRoutes', () => {
    const warnings: string[] = [];
    const plans = planListeners([{
      apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', namespace: 'shop', name: 'web', spec: {
        gatewayClassName: 'ambit', listeners: [
          { name: 'http', port: 80, protocol: 'HTTP', allowedRoutes: { namespaces: { from: 'All' } } },
          { name: 'https', port: 443, protocol: 'HTTPS', hostname: 'Shop.example.com', tls: { certificateRefs: [{ name: 'shop-cert' }] } },
          { name: 'pass', port: 443, protocol: 'TLS', hostname: 'db.example.com', tls: { mode: 'Passthrough' } },
          { name: 'other-ns', port: 8443, protocol: 'HTTPS', tls: { certificateRefs: [{ name: 'c', namespace: 'elsewhere' }] } },
        ],
      },
    }], (m) => warnings.push(m));
    expect(plans.get(80)!.servers[0]).toMatchObject({ id: 'Gateway/shop/web#http', hosts: [{ host: '*', namespace: '*' }] });
    expect(plans.get(443)!.servers.map((s) => [s.name, s.tls, s.hosts])).toEqual([
      ['https', { mode: 'SIMPLE', credential: { namespace: 'shop', name: 'shop-cert' } }, [{ host: 'shop.example.com', namespace: 'shop' }]],
      ['pass', { mode: 'PASSTHROUGH' }, [{ host: 'db.example.com', namespace: 'shop' }]],
    ]);
    expect(warnings).toEqual(['Gateway/shop/web#other-ns: certificateRef elsewhere/c is in another namespace (ReferenceGrant is not supported): not served']);
  });
});

describe('listeners facing hostile clients', () => {
  let listeners: IngressListeners;
  let proxy: WaypointProxy;
  let TLS = 0;
  let HTTP = 0;

  beforeAll(async () => {
    const free = async () => {
      const s = createServer();
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      const p = (s.address() as AddressInfo).port;
      await new Promise((r) => s.close(r));
      return p;
    };
    [TLS, HTTP] = [await free(), await free()];
    proxy = new WaypointProxy({ identity: 'spiffe://cluster.local/ns/istio-system/sa/gw', certificate: () => Promise.reject(new Error('no certificate in this test')), roots: () => [], socket: loopbackSocket });
    listeners = new IngressListeners({ proxy, host: '127.0.0.1', helloTimeoutMs: 300, handshakeTimeoutMs: 300 });
    const gateways: ConfigObject[] = [{
      apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace: 'istio-system', name: 'gw', spec: {
        servers: [
          { port: { number: TLS, protocol: 'TLS' }, hosts: ['*'], tls: { mode: 'PASSTHROUGH' } },
          { port: { number: HTTP, protocol: 'HTTP' }, hosts: ['*'] },
        ],
      },
    }];
    const router = new Router([], []);
    await listeners.update({ version: '1', plans: planListeners(gateways), routes: new GatewayRoutes([], router), secrets: new Map() });
    proxy.update({ version: '1', router, services: [], workloads: new Map() });
  });
  afterAll(async () => {
    await listeners.close();
    await proxy.close();
  });

  /** Connects, sends `bytes` (or nothing), and resolves with what came back once the gateway closed, and how long that took. */
  function exchange(port: number, bytes?: Buffer | string): Promise<{ got: string; ms: number }> {
    return new Promise((resolve) => {
      const start = Date.now();
      const s = netConnect(port, '127.0.0.1', () => { if (bytes !== undefined) s.write(bytes); });
      let got = '';
      s.on('data', (c: Buffer) => { got += c.toString(); });
      s.on('error', () => undefined);
      s.on('close', () => resolve({ got, ms: Date.now() - start }));
    });
  }

  it('closes a client that sends no ClientHello in time, and one that sends half of one', async () => {
    const silent = await exchange(TLS);
    expect(silent.got).toBe('');
    expect(silent.ms).toBeGreaterThanOrEqual(250);
    const hello = await realHello('db.example.com');
    const half = await exchange(TLS, hello.subarray(0, 40));
    expect(half.ms).toBeGreaterThanOrEqual(250);
  });

  it('closes a passed-through connection that has no tls route', async () => {
    const r = await exchange(TLS, await realHello('db.example.com'));
    expect(r.got).toBe('');
    expect(r.ms).toBeLessThan(250);
  });

  it('answers 404 without a route, 431 to an oversized head, 400 to garbage, and stays up', async () => {
    expect((await exchange(HTTP, 'GET / HTTP/1.1\r\nhost: nowhere.example.com\r\nconnection: close\r\n\r\n')).got).toMatch(/^HTTP\/1.1 404/);
    const big = `GET / HTTP/1.1\r\nhost: a\r\nx-big: ${'a'.repeat(70_000)}\r\n\r\n`;
    expect((await exchange(HTTP, big)).got).toMatch(/^HTTP\/1.1 431/);
    const many = `GET / HTTP/1.1\r\nhost: a\r\n${Array.from({ length: 120 }, (_, i) => `x-${i}: 1\r\n`).join('')}connection: close\r\n\r\n`;
    expect((await exchange(HTTP, many)).got).toMatch(/^HTTP\/1.1 431/);
    expect((await exchange(HTTP, '\x00\x01\x02 nonsense\r\n\r\n')).got).toMatch(/^HTTP\/1.1 400/);
    expect((await exchange(HTTP, 'GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n')).got).toMatch(/^HTTP\/1.1 404/);
  });

  it('reports a port it cannot bind, without failing', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as AddressInfo).port;
    const more: ConfigObject = { apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace: 'istio-system', name: 'gw2', spec: { servers: [{ port: { number: port, protocol: 'HTTP' }, hosts: ['*'] }] } };
    const gateways: ConfigObject[] = [{ apiVersion: 'networking.istio.io/v1', kind: 'Gateway', namespace: 'istio-system', name: 'gw', spec: { servers: [{ port: { number: HTTP, protocol: 'HTTP' }, hosts: ['*'] }] } }, more];
    const router = new Router([], []);
    await listeners.update({ version: '2', plans: planListeners(gateways), routes: new GatewayRoutes([], router), secrets: new Map() });
    expect(listeners.status().bindErrors).toEqual([{ port, error: `cannot listen on port ${port}: EADDRINUSE` }]);
    expect(listeners.ports).toEqual([HTTP]);
    taken.close();
  });
});
