/** The node agent's view of the mesh: parsing the discovery resources and resolving destinations. */
import { describe, expect, it } from 'vitest';
import type { WireResource } from '../../src/discovery/discovery.js';
import { WAYPOINT_GATEWAY_LABEL, type Service, type Workload } from '../../src/config/model.js';
import { MeshState, MeshStateError } from '../../src/discovery/mesh-state.js';

const workload = (uid: string, ip: string, node: string, ports: Record<string, number> = { http: 8080 }, enrolled = true): Workload => ({
  uid, name: uid, workload: uid.replace(/-\d+$/, ''), namespace: 'shop', serviceAccount: 'sa', identity: `spiffe://cluster.local/ns/shop/sa/${uid}`,
  ips: [ip], node, labels: { app: uid }, enrolled, ports,
});
const service = (name: string, vip: string, endpoints: string[], targetPort: number | string = 'http'): Service => ({
  namespace: 'shop', name, hostname: `${name}.shop.svc.cluster.local`, vips: [vip], ports: [{ name: 'http', port: 80, targetPort, protocol: 'TCP' }], endpoints,
});
const wire = (objects: { type: string; key: string; value: unknown }[]): Map<string, WireResource> =>
  new Map(objects.map((o) => [o.key, { key: o.key, type: o.type, json: JSON.stringify(o.value) }]));

const W = [workload('users-1', '10.244.1.2', 'node-1'), workload('users-2', '10.244.2.2', 'node-2'), workload('legacy-1', '10.244.2.3', 'node-2', { web: 9090 }, false)];
const S = [service('users', '10.96.0.10', ['users-1', 'users-2']), service('legacy', '10.96.0.11', ['legacy-1'], 'web'), service('empty', '10.96.0.12', []), service('gone', '10.96.0.13', ['nope'])];
const resources = wire([
  ...W.map((w) => ({ type: 'workload', key: `workload/${w.uid}`, value: w })),
  ...S.map((s) => ({ type: 'service', key: `service/shop/${s.name}`, value: s })),
  { type: 'policy', key: 'policy/AuthorizationPolicy/shop/deny', value: { apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name: 'deny', spec: { action: 'DENY', rules: [{}] } } },
]);

describe('MeshState', () => {
  const state = new MeshState('v1', resources);

  it('indexes workloads by IP and services by VIP, and knows which pods of a node are meshed', () => {
    expect(state.workloadsByIp.get('10.244.2.2')?.uid).toBe('users-2');
    expect(state.servicesByVip.get('10.96.0.11')?.name).toBe('legacy');
    expect(state.enrolledOn('node-2').map((w) => w.uid)).toEqual(['users-2']);
    expect(state.authorizer.evaluate(W[0]!, { sourceIp: '10.0.0.1', destinationIp: '10.244.1.2', destinationPort: 8080 })).toMatchObject({ allowed: false, policy: 'shop/deny' });
  });

  it('resolves a VIP to an endpoint on the same node when there is one, with the named target port', () => {
    for (let i = 0; i < 20; i++) expect(state.resolve('10.96.0.10', 80, 'node-2', Math.random)).toMatchObject({ ip: '10.244.2.2', port: 8080, workload: { uid: 'users-2' }, service: { name: 'users' } });
    const seen = new Set<string>();
    for (const r of [0, 0.99]) seen.add(state.resolve('10.96.0.10', 80, 'node-3', () => r)!.ip);
    expect([...seen].sort()).toEqual(['10.244.1.2', '10.244.2.2']);
    expect(state.resolve('10.96.0.11', 80)).toMatchObject({ ip: '10.244.2.3', port: 9090, workload: { enrolled: false } });
  });

  it('has no destination for a VIP port it does not serve, or a service without endpoints', () => {
    expect(state.resolve('10.96.0.10', 81)).toBeUndefined();
    expect(state.resolve('10.96.0.12', 80)).toBeUndefined();
    expect(state.resolve('10.96.0.13', 80)).toBeUndefined();
  });

  it('takes a pod IP as it is, and anything else as outside the mesh', () => {
    expect(state.resolve('10.244.1.2', 3000)).toMatchObject({ ip: '10.244.1.2', port: 3000, workload: { uid: 'users-1' } });
    expect(state.resolve('192.0.2.7', 443)).toEqual({ ip: '192.0.2.7', port: 443 });
  });

  it('knows which waypoint a workload port is bound to, and the identities of that waypoint\'s pods', () => {
    const wp = { ...workload('wp-1', '10.244.1.9', 'node-1'), identity: 'spiffe://cluster.local/ns/shop/sa/wp', labels: { [WAYPOINT_GATEWAY_LABEL]: 'wp' } };
    const pinned = { ...workload('pinned-1', '10.244.1.8', 'node-1'), waypoint: 'wp' };
    const state = new MeshState('v1', wire([
      ...[W[0]!, wp, pinned].map((w) => ({ type: 'workload', key: `workload/${w.uid}`, value: w })),
      { type: 'service', key: 'service/shop/users', value: { ...service('users', '10.96.0.10', ['users-1']), waypoint: { namespace: 'shop', name: 'wp' } } },
    ]));
    // Through a bound service: only the ports it targets. Through the pod's own label: every port.
    expect(state.waypointFor(W[0]!, 8080)).toEqual({ namespace: 'shop', name: 'wp' });
    expect(state.waypointFor(W[0]!, 9999)).toBeUndefined();
    expect(state.waypointFor(pinned, 9999)).toEqual({ namespace: 'shop', name: 'wp' });
    expect([...state.waypointIdentities({ namespace: 'shop', name: 'wp' })]).toEqual(['spiffe://cluster.local/ns/shop/sa/wp']);
    expect(state.waypointIdentities({ namespace: 'shop', name: 'other' }).size).toBe(0);
    expect(state.allWaypointIdentities.has('spiffe://cluster.local/ns/shop/sa/wp')).toBe(true);
    expect(state.allWaypointIdentities.has(W[0]!.identity)).toBe(false);
  });

  it('rejects resources it cannot use, naming them', () => {
    expect(() => new MeshState('v2', new Map([['workload/x', { key: 'workload/x', type: 'workload', json: '{"uid":' }]]))).toThrow(MeshStateError);
    expect(() => new MeshState('v2', wire([{ type: 'service', key: 'service/shop/x', value: { name: 'x' } }]))).toThrow('service/shop/x: namespace must be a string');
    // Each field the data path reads is checked, by its path: a bad one is a NACK, not a state that throws on a connection.
    const svc = { namespace: 'shop', name: 'x', hostname: 'x.shop', vips: ['10.96.0.9'], endpoints: ['u1'], ports: [{ port: 80, targetPort: 'http', protocol: 'TCP' }] };
    expect(() => new MeshState('v2', wire([{ type: 'service', key: 'service/shop/x', value: { ...svc, ports: [{ port: 70000, targetPort: 80, protocol: 'TCP' }] } }]))).toThrow('service/shop/x: ports[0].port must be a port number');
    expect(() => new MeshState('v2', wire([{ type: 'service', key: 'service/shop/x', value: { ...svc, vips: ['not-an-ip'] } }]))).toThrow('service/shop/x: vips[0] must be an IP address');
    const w = { uid: 'u1', name: 'a', workload: 'a', namespace: 'shop', serviceAccount: 'sa', identity: 'spiffe://x', ips: ['10.0.0.1'], node: 'n', labels: {}, enrolled: true, ports: {} };
    expect(() => new MeshState('v2', wire([{ type: 'workload', key: 'workload/u1', value: { ...w, labels: undefined } }]))).toThrow('workload/u1: labels must be an object');
    expect(() => new MeshState('v2', wire([{ type: 'workload', key: 'workload/u1', value: { ...w, labels: { app: 7 } } }]))).toThrow('workload/u1: labels.app must be a string');
    expect(() => new MeshState('v2', wire([{ type: 'policy', key: 'policy/p', value: { apiVersion: 1, kind: 'AuthorizationPolicy', namespace: 'shop', name: 'p', spec: {} } }]))).toThrow('policy/p: apiVersion must be a string');
    expect(new MeshState('v2', wire([{ type: 'workload', key: 'workload/u1', value: w }, { type: 'service', key: 'service/shop/x', value: svc }])).workloads.size).toBe(1);
    expect(() => new MeshState('v2', wire([{ type: 'route', key: 'route/x', value: {} }]))).toThrow('route/x: unknown resource type "route"');
  });
});
