/**
 * ServiceEntries from manifest to node agent: validation, the model's VIP allocation, what the
 * discovery stream sends node agents, and MeshState's matching of an original destination.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateMeshObject } from '../../src/config/validate.js';
import { parseManifests, type Diagnostic, type Resource } from '../../src/kube/manifests.js';
import { allocateVips, buildModel, serviceEntryOf, type MeshConfig, type PodInfo, type ServiceEntryInfo } from '../../src/config/model.js';
import { viewFor, type WireResource } from '../../src/discovery/discovery.js';
import { MeshState, MeshStateError } from '../../src/discovery/mesh-state.js';
import { cidrContains, parseCidr, parseIp } from '../../src/util/ip.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

function analyze(text: string, file = 'm.yaml') {
  return parseManifests([{ file, text, dir: '/' }], { validate: validateMeshObject });
}
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map((d) => `${d.path ?? ''}: ${d.message}`);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map((d) => `${d.path ?? ''}: ${d.message}`);

const se = (name: string, spec: string, namespace = 'shop') => `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ${name}, namespace: ${namespace} }
spec: ${spec}
`;

/** Resources as the controller's source would hold them (validated manifests). */
function resources(text: string): Resource[] {
  const { resources: rs, diagnostics } = analyze(text);
  expect(errors(diagnostics)).toEqual([]);
  return rs;
}

/** What a node agent holds after the stream delivered the model's node-agent view. */
function agentState(text: string, meshConfig?: MeshConfig, pods: PodInfo[] = []): MeshState {
  const model = buildModel({ resources: resources(text), pods }, 'cluster.local', undefined, meshConfig);
  const wire = new Map<string, WireResource>();
  for (const [key, { type, value }] of viewFor(model, 'node-agent')) wire.set(key, { key, type, json: JSON.stringify(value) });
  return new MeshState('v1', wire);
}

describe('ServiceEntry validation', () => {
  it('accepts the shared egress sample unchanged, with no warning', () => {
    const text = readFileSync(join(SHARED, 'conformance', 'istio', 'egress-rule-google-apis.yaml'), 'utf8');
    const { resources: rs, diagnostics } = analyze(text, 'egress-rule-google-apis.yaml');
    expect(errors(diagnostics)).toEqual([]);
    expect(warnings(diagnostics)).toEqual([]);
    expect(rs.map((r) => `${r.kind} ${r.meta.name}`)).toEqual(['ServiceEntry googleapis']);
  });

  it('refuses what the node agent could not carry, naming the field', () => {
    expect(errors(analyze(se('a', '{ hosts: [a.example.com], ports: [{ number: 80, name: http, protocol: TCP }], resolution: STATIC, endpoints: [{ address: db.example.com }] }')).diagnostics))
      .toEqual(['spec.endpoints[0].address: must be an IP address when resolution is STATIC (ambit carries TCP, not Unix sockets), got "db.example.com"; use resolution DNS for a hostname']);
    expect(errors(analyze(se('b', '{ hosts: ["*.example.com"], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS }')).diagnostics))
      .toEqual(['spec.hosts[0]: a wildcard host cannot be resolved: resolution DNS without endpoints needs hostnames (or use resolution NONE)']);
    // With endpoints, the wildcard is only a name: fine.
    expect(errors(analyze(se('c', '{ hosts: ["*.example.com"], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS, endpoints: [{ address: lb.example.com }] }')).diagnostics)).toEqual([]);
  });

  it('takes an AuthorizationPolicy bound to a ServiceEntry without a warning', () => {
    const policy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: egress, namespace: shop }
spec:
  targetRefs: [{ group: networking.istio.io, kind: ServiceEntry, name: api }]
  rules: [{ to: [{ operation: { hosts: [api.example.com], ports: ["443"] } }] }]
`;
    const { diagnostics } = analyze(policy);
    expect([...errors(diagnostics), ...warnings(diagnostics)]).toEqual([]);
  });

  it('warns about what it accepts and does not use', () => {
    const ws = warnings(analyze(se('d', '{ hosts: [d.example.com], addresses: [192.0.2.1], ports: [{ number: 53, name: dns, protocol: TCP }], resolution: STATIC, endpoints: [{ address: 192.0.2.9, weight: 3 }], subjectAltNames: [x] }')).diagnostics);
    expect(ws).toEqual([
      'spec.endpoints[0].weight: ambit picks endpoints at random, unweighted: accepted, not used',
      'spec.subjectAltNames: the node agent passes MESH_EXTERNAL traffic through unchanged (the application does its own TLS): accepted, not used',
    ]);
    expect(warnings(analyze(se('e', '{ hosts: [e.example.com] }')).diagnostics)).toContain('spec.ports: a ServiceEntry without ports matches no connection in ambit (its destinations are matched by address and port)');
  });
});

describe('the model of a ServiceEntry', () => {
  it('lower-cases hosts, splits single addresses from blocks, and applies Istio\'s defaults', () => {
    const [r] = resources(se('mixed', '{ hosts: [API.Example.com, "*.Example.org"], addresses: [192.0.2.10, 192.0.2.11/32, 198.51.100.0/24, "2001:db8::1/128"], ports: [{ number: 443, name: https, protocol: https, targetPort: 8443 }] }'));
    expect(serviceEntryOf(r!)).toEqual({
      namespace: 'shop', name: 'mixed', hosts: ['api.example.com', '*.example.org'],
      addresses: ['192.0.2.10', '192.0.2.11', '2001:db8::1'], cidrs: ['198.51.100.0/24'],
      ports: [{ number: 443, name: 'https', protocol: 'HTTPS', targetPort: 8443 }],
      resolution: 'NONE', location: 'MESH_EXTERNAL', endpoints: [], dnsAddresses: {},
    });
  });

  it('gives DNS answers: an entry\'s own addresses, else one VIP per non-wildcard host in 240.240.0.0/16; none for NONE or wildcards', () => {
    const model = buildModel({ resources: resources([
      se('own', '{ hosts: [own.example.com], addresses: [192.0.2.10], ports: [{ number: 80, name: http, protocol: HTTP }], resolution: STATIC, endpoints: [{ address: 192.0.2.10 }] }'),
      se('api', '{ hosts: [api.example.com, "*.api.example.com", v2.api.example.com], ports: [{ number: 443, name: tls, protocol: TLS }], resolution: DNS, endpoints: [{ address: lb.example.com }] }'),
      se('none', '{ hosts: [none.example.com], ports: [{ number: 80, name: http, protocol: HTTP }], resolution: NONE, location: MESH_INTERNAL }'),
    ].join('---\n')), pods: [] }, 'cluster.local');
    const byName = new Map(model.serviceEntries.map((e) => [e.name, e]));
    expect(byName.get('own')!.dnsAddresses).toEqual({ 'own.example.com': ['192.0.2.10'] });
    const api = byName.get('api')!.dnsAddresses;
    expect(Object.keys(api).sort()).toEqual(['api.example.com', 'v2.api.example.com']);
    const block = parseCidr('240.240.0.0/16')!;
    for (const [vip] of Object.values(api)) {
      expect(cidrContains(block, parseIp(vip!)!)).toBe(true);
      expect(vip).not.toMatch(/^240\.240\.(0\.0|255\.255)$/);
    }
    expect(api['api.example.com']).not.toEqual(api['v2.api.example.com']);
    expect(byName.get('none')!.dnsAddresses).toEqual({});
  });

  it('allocates VIPs that every replica agrees on, whatever the order, and that never collide', () => {
    const entries = (order: number[]): ServiceEntryInfo[] => order.map((i) => ({
      namespace: `ns${i % 7}`, name: `e${i}`, hosts: [`h${i}.example.com`, `x${i}.example.net`], addresses: [], cidrs: [], ports: [{ number: 443, protocol: 'TLS' }],
      resolution: 'DNS', location: 'MESH_EXTERNAL', endpoints: [], dnsAddresses: {},
    }));
    const n = 4000; // 8000 hosts in 65534 slots: hundreds of hash collisions to probe past
    const forward = allocateVips(entries([...Array(n).keys()]));
    const backward = allocateVips(entries([...Array(n).keys()].reverse()));
    const vipsOf = (es: ServiceEntryInfo[]) => new Map(es.flatMap((e) => Object.entries(e.dnsAddresses).map(([h, [v]]) => [`${e.namespace}/${e.name}/${h}`, v!])));
    const a = vipsOf(forward);
    expect(a.size).toBe(2 * n);
    expect(vipsOf(backward)).toEqual(a);
    expect(new Set(a.values()).size).toBe(2 * n);
    // Another version with one more entry: the hosts that did not collide with it keep their VIPs.
    const more = vipsOf(allocateVips(entries([...Array(n + 1).keys()])));
    const moved = [...a].filter(([k, v]) => more.get(k) !== v);
    expect(moved.length).toBeLessThanOrEqual(2);
  });
});

describe('a node agent\'s ServiceEntries', () => {
  const state = agentState([
    se('api', '{ hosts: [api.example.com], addresses: [192.0.2.10], ports: [{ number: 443, name: https, protocol: TLS }], resolution: STATIC, endpoints: [{ address: 192.0.2.20, ports: { https: 8443 } }, { address: 192.0.2.21 }] }'),
    se('dns', '{ hosts: [db.example.com], ports: [{ number: 5432, name: pg, protocol: TCP }], resolution: DNS }'),
    se('nets', '{ hosts: ["*.corp.example"], addresses: [198.51.100.0/24], ports: [{ number: 22, name: ssh, protocol: TCP }] }'),
    se('private', '{ hosts: [private.example.com], addresses: [192.0.2.30], ports: [{ number: 80, name: http, protocol: HTTP }], exportTo: ["."] }', 'team'),
    'apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: shop }\nspec: { clusterIP: 10.96.0.10, selector: { app: web }, ports: [{ port: 80, targetPort: 8080 }] }\n',
  ].join('---\n'), { outboundTrafficPolicy: 'REGISTRY_ONLY' }, [{
    uid: 'db-1', namespace: 'shop', name: 'db', node: 'node-1', ip: '198.51.100.5', labels: {},
    spec: { serviceAccountName: 'default', restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [] },
  }]);

  it('receives every entry and the mesh config through the node agent\'s view', () => {
    expect(state.serviceEntries.map((e) => `${e.namespace}/${e.name}`)).toEqual(['shop/api', 'shop/dns', 'shop/nets', 'team/private']);
    expect(state.meshConfig).toEqual({ outboundTrafficPolicy: 'REGISTRY_ONLY' });
    expect(agentState('').meshConfig).toEqual({ outboundTrafficPolicy: 'ALLOW_ANY' });
  });

  it('matches an original destination by address, VIP, STATIC endpoint or CIDR, with a port of the entry', () => {
    expect(state.serviceEntryFor('192.0.2.10', 443, 'shop')).toMatchObject({ entry: { name: 'api' }, host: 'api.example.com', port: { number: 443 }, by: 'address' });
    expect(state.serviceEntryFor('::ffff:192.0.2.10', 443, 'shop')).toMatchObject({ entry: { name: 'api' }, by: 'address' });
    expect(state.serviceEntryFor('192.0.2.21', 443, 'shop')).toMatchObject({ entry: { name: 'api' }, endpoint: { address: '192.0.2.21' }, by: 'endpoint' });
    const vip = state.serviceEntries.find((e) => e.name === 'dns')!.dnsAddresses['db.example.com']![0]!;
    expect(state.serviceEntryFor(vip, 5432, 'other')).toMatchObject({ entry: { name: 'dns' }, host: 'db.example.com', by: 'address' });
    expect(state.serviceEntryFor('198.51.100.77', 22, 'shop')).toMatchObject({ entry: { name: 'nets' }, host: '*.corp.example', by: 'cidr' });
    // A pod's address inside an entry's block stays the pod's.
    expect(state.serviceEntryFor('198.51.100.5', 22, 'shop')).toBeUndefined();
    expect(state.registered('198.51.100.5', 22, 'shop')).toBe(true);
    // A port the entry does not have, another address: no match.
    expect(state.serviceEntryFor('192.0.2.10', 80, 'shop')).toBeUndefined();
    expect(state.serviceEntryFor('198.51.100.77', 53, 'shop')).toBeUndefined();
    expect(state.serviceEntryFor('192.0.2.99', 443, 'shop')).toBeUndefined();
  });

  it('honours exportTo: "." is seen from the entry\'s own namespace only', () => {
    expect(state.serviceEntryFor('192.0.2.30', 80, 'team')).toMatchObject({ entry: { name: 'private' } });
    expect(state.serviceEntryFor('192.0.2.30', 80, 'shop')).toBeUndefined();
  });

  it('under REGISTRY_ONLY knows what is registered: a service VIP, a ServiceEntry, not an unknown address', () => {
    expect(state.registered('10.96.0.10', 80, 'shop')).toBe(true);
    expect(state.registered('192.0.2.10', 443, 'shop')).toBe(true);
    expect(state.registered('192.0.2.10', 444, 'shop')).toBe(false);
    expect(state.registered('203.0.113.5', 443, 'shop')).toBe(false);
    expect(state.registered('192.0.2.30', 80, 'shop')).toBe(false);
    expect(state.refusesUnregistered('203.0.113.5', 443, 'shop')).toBe(true);
    expect(state.refusesUnregistered('192.0.2.10', 443, 'shop')).toBe(false);
    // Under ALLOW_ANY nothing is refused for being unknown.
    const allowAny = agentState(se('api', '{ hosts: [api.example.com], addresses: [192.0.2.10], ports: [{ number: 443, name: https, protocol: TLS }] }'));
    expect(allowAny.refusesUnregistered('203.0.113.5', 443, 'shop')).toBe(false);
  });

  it('refuses (NACKs) a ServiceEntry or mesh config that is not what the data path reads', () => {
    const bad = (type: string, value: unknown) => () => new MeshState('v2', new Map([[`${type}/x`, { key: `${type}/x`, type, json: JSON.stringify(value) }]]));
    const good = state.serviceEntries[0]!;
    expect(bad('serviceentry', { ...good, addresses: ['not-an-ip'] })).toThrow(new MeshStateError('serviceentry/x: addresses[0] must be an IP address'));
    expect(bad('serviceentry', { ...good, resolution: 'MAGIC' })).toThrow(/resolution must be one of NONE, STATIC, DNS, DNS_ROUND_ROBIN/);
    expect(bad('serviceentry', { ...good, cidrs: ['10.0.0.0/99'] })).toThrow(/cidrs\[0\] must be a CIDR block/);
    expect(bad('meshconfig', { outboundTrafficPolicy: 'DENY_ALL' })).toThrow(/outboundTrafficPolicy must be one of ALLOW_ANY, REGISTRY_ONLY/);
  });
});
