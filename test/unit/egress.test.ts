/**
 * Egress in the node agent: where a connection that matched a ServiceEntry goes (by resolution),
 * the resolver's TTL cache, the resolvers setting, and AuthorizationPolicies bound to a
 * ServiceEntry, evaluated with the client as source.
 */
import { describe, expect, it } from 'vitest';
import { CachingResolver, egressTarget, endpointPort, parseDnsResolvers, type DnsAnswer, type HostResolver } from '../../src/node/egress.js';
import type { EgressMatch } from '../../src/discovery/mesh-state.js';
import type { ConfigObject, ServiceEntryInfo } from '../../src/config/model.js';
import { L4Authorizer } from '../../src/authz/l4.js';
import { OperatorError } from '../../src/util/errors.js';
import { outboundTrafficPolicy } from '../../src/cli/controller.js';
import { renderInstall } from '../../src/install/render.js';
import { resolveValues, ValuesError } from '../../src/install/values.js';

const entry = (over: Partial<ServiceEntryInfo>): ServiceEntryInfo => ({
  namespace: 'shop', name: 'api', hosts: ['api.example.com'], addresses: [], cidrs: [],
  ports: [{ number: 443, name: 'https', protocol: 'TLS' }], resolution: 'NONE', location: 'MESH_EXTERNAL', endpoints: [], dnsAddresses: {}, ...over,
});
const match = (e: ServiceEntryInfo, over: Partial<EgressMatch> = {}): EgressMatch => ({ entry: e, host: e.hosts[0]!, port: e.ports[0]!, by: 'address', ...over });
const called = { ip: '240.240.1.2', port: 443 };

/** A resolver that answers from a table and counts its questions. */
function table(answers: Record<string, string[]>): HostResolver & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    resolve: async (host) => {
      asked.push(host);
      const a = answers[host];
      if (!a) throw new Error(`resolving ${host}: no A or AAAA record`);
      return a;
    },
  };
}

describe('where an egress connection goes', () => {
  it('NONE: to the original destination', async () => {
    expect(await egressTarget(match(entry({ resolution: 'NONE' })), called, table({}))).toEqual(called);
  });

  it('STATIC: to the endpoint the app called, else one at random, with the port by the port\'s name', async () => {
    const e = entry({ resolution: 'STATIC', endpoints: [{ address: '192.0.2.20', ports: { https: 8443 } }, { address: '192.0.2.21' }] });
    expect(await egressTarget(match(e, { endpoint: e.endpoints[1], by: 'endpoint' }), { ip: '192.0.2.21', port: 443 }, table({}))).toEqual({ ip: '192.0.2.21', port: 443 });
    expect(await egressTarget(match(e), called, table({}), () => 0)).toEqual({ ip: '192.0.2.20', port: 8443 });
    expect(await egressTarget(match(e), called, table({}), () => 0.99)).toEqual({ ip: '192.0.2.21', port: 443 });
    expect(await egressTarget(match(entry({ resolution: 'STATIC' })), called, table({}))).toEqual({ error: 'ServiceEntry shop/api (STATIC) has no endpoint with an IP address' });
  });

  it('DNS: the called host resolved (any address), or an endpoint\'s name; DNS_ROUND_ROBIN: the first address', async () => {
    const r = table({ 'api.example.com': ['198.51.100.1', '198.51.100.2'], 'lb.example.com': ['198.51.100.9'] });
    expect(await egressTarget(match(entry({ resolution: 'DNS' })), called, r, () => 0.99)).toEqual({ ip: '198.51.100.2', port: 443 });
    expect(await egressTarget(match(entry({ resolution: 'DNS_ROUND_ROBIN' })), called, r, () => 0.99)).toEqual({ ip: '198.51.100.1', port: 443 });
    const viaEndpoint = entry({ resolution: 'DNS', ports: [{ number: 443, name: 'https', protocol: 'TLS', targetPort: 9443 }], endpoints: [{ address: 'lb.example.com' }] });
    expect(await egressTarget(match(viaEndpoint), called, r)).toEqual({ ip: '198.51.100.9', port: 9443 });
    expect(r.asked).toEqual(['api.example.com', 'api.example.com', 'lb.example.com']);
    expect(await egressTarget(match(entry({ resolution: 'DNS', hosts: ['gone.example.com'] })), called, r))
      .toEqual({ error: 'ServiceEntry shop/api: resolving gone.example.com: no A or AAAA record' });
  });

  it('maps ports: the endpoint\'s port of that name, else targetPort, else the number', () => {
    expect(endpointPort({ number: 80, name: 'http', protocol: 'HTTP' }, { address: 'x', ports: { http: 8080 } })).toBe(8080);
    expect(endpointPort({ number: 80, name: 'http', protocol: 'HTTP', targetPort: 9090 }, { address: 'x', ports: { other: 1 } })).toBe(9090);
    expect(endpointPort({ number: 80, protocol: 'HTTP' })).toBe(80);
  });
});

describe('the egress resolver', () => {
  function counted(answers: Record<string, DnsAnswer[]>) {
    const calls: string[] = [];
    let clock = 0;
    const resolver = new CachingResolver({
      now: () => clock, maxEntries: 3,
      lookup: async (host) => {
        calls.push(host);
        const a = answers[host];
        if (!a) throw Object.assign(new Error(`queryA ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
        return a;
      },
    });
    return { resolver, calls, advance: (ms: number) => { clock += ms; } };
  }

  it('keeps an answer for its TTL (within 5 s and 300 s), and one lookup serves concurrent callers', async () => {
    const { resolver, calls, advance } = counted({ 'a.example.com': [{ address: '192.0.2.1', ttl: 30 }, { address: '192.0.2.2', ttl: 60 }], 'b.example.com': [{ address: '192.0.2.3', ttl: 1 }] });
    const [x, y] = await Promise.all([resolver.resolve('a.example.com'), resolver.resolve('A.example.com')]);
    expect(x).toEqual(['192.0.2.1', '192.0.2.2']);
    expect(y).toEqual(x);
    advance(29_000);
    await resolver.resolve('a.example.com');
    expect(calls).toEqual(['a.example.com']);
    advance(2000);
    await resolver.resolve('a.example.com');
    expect(calls).toEqual(['a.example.com', 'a.example.com']);
    // A 1 s TTL is held 5 s.
    await resolver.resolve('b.example.com');
    advance(4000);
    await resolver.resolve('b.example.com');
    expect(calls.filter((c) => c === 'b.example.com')).toHaveLength(1);
    expect(await resolver.resolve('192.0.2.77')).toEqual(['192.0.2.77']);
  });

  it('remembers a failure for a while, and holds a bounded number of hosts', async () => {
    const { resolver, calls, advance } = counted({ 'a.example.com': [{ address: '192.0.2.1', ttl: 300 }] });
    await expect(resolver.resolve('nx.example.com')).rejects.toThrow('resolving nx.example.com: queryA ENOTFOUND nx.example.com');
    await expect(resolver.resolve('nx.example.com')).rejects.toThrow('ENOTFOUND');
    expect(calls).toEqual(['nx.example.com']);
    advance(5001);
    await expect(resolver.resolve('nx.example.com')).rejects.toThrow('ENOTFOUND');
    expect(calls).toHaveLength(2);
    for (const h of ['a.example.com', 'n1.example.com', 'n2.example.com', 'n3.example.com']) await resolver.resolve(h).catch(() => undefined);
    expect(resolver.size).toBe(3);
  });

  it('takes resolver addresses with optional ports, and names a bad one', () => {
    expect(parseDnsResolvers(undefined)).toEqual([]);
    expect(parseDnsResolvers(' 10.96.0.10, 10.96.0.11:53,[fd00::a]:5353 ')).toEqual(['10.96.0.10', '10.96.0.11:53', '[fd00::a]:5353']);
    for (const bad of ['dns.example.com', '10.0.0.1:99999', '[10.0.0.1]:53', '10.0.0.1:']) {
      expect(() => parseDnsResolvers(bad)).toThrow(OperatorError);
    }
    expect(() => parseDnsResolvers('nope')).toThrow('AMBIT_DNS_RESOLVERS: "nope" is not a DNS server address');
  });
});

describe('AuthorizationPolicies bound to a ServiceEntry', () => {
  const policy = (name: string, spec: unknown, namespace = 'shop'): ConfigObject => ({ apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace, name, spec });
  const ref = { group: 'networking.istio.io', kind: 'ServiceEntry', name: 'api' };
  const client = (ns: string, sa = 'web') => ({ sourceIdentity: `spiffe://cluster.local/ns/${ns}/sa/${sa}`, sourceIp: '10.244.1.2', destinationIp: '192.0.2.10', destinationPort: 443, host: 'api.example.com' });
  const api = { namespace: 'shop', name: 'api' };

  it('ALLOW: only clients a rule matches, by source and by the entry\'s host and port', () => {
    const authz = new L4Authorizer([policy('allow-shop', { targetRefs: [ref], rules: [{ from: [{ source: { namespaces: ['shop'] } }], to: [{ operation: { hosts: ['*.example.com'], ports: ['443'] } }] }] })]);
    expect(authz.warnings).toEqual([]);
    expect(authz.evaluateServiceEntry(api, client('shop'))).toEqual({ allowed: true, reason: 'allowed by ALLOW policy shop/allow-shop', policy: 'shop/allow-shop' });
    expect(authz.evaluateServiceEntry(api, client('other'))).toEqual({ allowed: false, reason: 'no ALLOW policy matched (1 applies to ServiceEntry shop/api)' });
    expect(authz.evaluateServiceEntry(api, { ...client('shop'), host: 'API.other.org' }).allowed).toBe(false);
    expect(authz.evaluateServiceEntry(api, { ...client('shop'), destinationPort: 80 }).allowed).toBe(false);
    // Another entry, and the workloads' own (inbound) decisions, are not bound by it.
    expect(authz.evaluateServiceEntry({ namespace: 'shop', name: 'other' }, client('other'))).toEqual({ allowed: true, reason: 'no policy applies' });
  });

  it('DENY wins; L7 attributes other than hosts are handled as at L4 elsewhere, with a warning', () => {
    const authz = new L4Authorizer([
      policy('deny-legacy', { targetRefs: [ref], action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/legacy'] } }] }] }),
      policy('allow-get', { targetRefs: [ref], rules: [{ to: [{ operation: { methods: ['GET'] } }] }] }),
      policy('allow-all', { targetRefs: [ref], rules: [{}] }),
    ]);
    expect(authz.evaluateServiceEntry(api, client('shop', 'legacy'))).toMatchObject({ allowed: false, policy: 'shop/deny-legacy' });
    expect(authz.evaluateServiceEntry(api, client('shop'))).toMatchObject({ allowed: true, policy: 'shop/allow-all' });
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy shop/allow-get: rules[0] uses L7 attributes (methods): an ALLOW rule with L7 attributes never matches at L4, so it allows nothing; the node agent enforces a ServiceEntry\'s policies at L4 (hosts and ports)',
    ]);
  });

  it('binds only ServiceEntries of its own namespace, and leaves other targetRefs to the waypoints', () => {
    const authz = new L4Authorizer([
      policy('cross', { targetRefs: [{ ...ref, namespace: 'team' }], rules: [] }),
      policy('mixed', { targetRefs: [ref, { group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'wp' }], rules: [] }),
    ]);
    expect(authz.warnings).toEqual([
      'AuthorizationPolicy shop/cross: targetRefs: ServiceEntry team/api is in another namespace: ignored (a policy binds to ServiceEntries of its own namespace)',
      'AuthorizationPolicy shop/mixed: bound to a waypoint by targetRef(s): not applied by the node agent',
    ]);
    // `mixed` binds shop/api (an ALLOW with no rules allows nothing); `cross` binds nothing.
    expect(authz.evaluateServiceEntry(api, client('shop'))).toMatchObject({ allowed: false });
    expect(authz.evaluateServiceEntry({ namespace: 'team', name: 'api' }, client('shop'))).toMatchObject({ allowed: true });
  });
});

describe('the outboundTrafficPolicy setting', () => {
  it('comes from the controller\'s flag, else AMBIT_OUTBOUND_TRAFFIC_POLICY, else ALLOW_ANY, and names a bad value', () => {
    expect(outboundTrafficPolicy(undefined, {})).toBe('ALLOW_ANY');
    expect(outboundTrafficPolicy(undefined, { AMBIT_OUTBOUND_TRAFFIC_POLICY: 'REGISTRY_ONLY' })).toBe('REGISTRY_ONLY');
    expect(outboundTrafficPolicy('ALLOW_ANY', { AMBIT_OUTBOUND_TRAFFIC_POLICY: 'REGISTRY_ONLY' })).toBe('ALLOW_ANY');
    expect(() => outboundTrafficPolicy(undefined, { AMBIT_OUTBOUND_TRAFFIC_POLICY: 'registry_only' })).toThrow('AMBIT_OUTBOUND_TRAFFIC_POLICY must be ALLOW_ANY or REGISTRY_ONLY, got "registry_only"');
    expect(() => outboundTrafficPolicy('DENY', {})).toThrow('--outbound-traffic-policy must be ALLOW_ANY or REGISTRY_ONLY, got "DENY"');
  });

  it('is the install\'s meshConfig.outboundTrafficPolicy.mode, given to the controller', () => {
    const env = (sets: string[]) => {
      const deployment = renderInstall(resolveValues(sets)).find((o) => o.kind === 'Deployment' && o.metadata.name === 'ambit-controller') as unknown as
        { spec: { template: { spec: { containers: { env: { name: string; value?: string }[] }[] } } } };
      return deployment.spec.template.spec.containers[0]!.env.find((e) => e.name === 'AMBIT_OUTBOUND_TRAFFIC_POLICY')?.value;
    };
    expect(env([])).toBe('ALLOW_ANY');
    expect(env(['meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY'])).toBe('REGISTRY_ONLY');
    expect(() => resolveValues(['meshConfig.outboundTrafficPolicy.mode=NONE'])).toThrow(ValuesError);
  });
});
