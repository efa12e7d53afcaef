/**
 * The local cluster's ingress gateways as planned from the applied resources: which gateways
 * run (Istio's default one while an Istio Gateway selects it, G-gateway per Gateway of class
 * ambit/istio), which ports each exposes on the node, and why one it wants is not exposed.
 */
import { describe, expect, it } from 'vitest';
import { validateMeshObject } from '../../src/config/validate.js';
import { parseManifests } from '../../src/kube/manifests.js';
import { NODE_RESERVED_PORTS, planGateways } from '../../src/local/gateway-pods.js';

const NODE = { name: 'node-1', ip: '172.30.0.11' };
const plan = (text: string) => {
  const { resources, diagnostics } = parseManifests([{ file: 'm.yaml', text, dir: '/' }], { validate: validateMeshObject });
  expect(diagnostics.filter((d) => d.severity === 'error')).toEqual([]);
  return planGateways(resources, NODE);
};
const istio = (name: string, ns: string, selector: string, ports: number[]) => `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: ${name}, namespace: ${ns} }
spec:
  selector: ${selector}
  servers: [${ports.map((p) => `{ port: { number: ${p}, name: p${p}, protocol: HTTP }, hosts: ["*"] }`).join(', ')}]
`;
const api = (name: string, cls: string, ports: number[]) => `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: ${name}, annotations: { ambit.dev/tracing-sampling: "5" } }
spec:
  gatewayClassName: ${cls}
  listeners: [${ports.map((p) => `{ name: l${p}, port: ${p}, protocol: HTTP }`).join(', ')}]
`;

describe('planGateways', () => {
  it('runs nothing without a Gateway of an ingress gateway', () => {
    expect(plan(`${istio('private', 'default', '{ istio: private }', [80])}---\n${api('wp', 'ambit-waypoint', [15008])}`)).toEqual([]);
  });

  it('one Istio default gateway for every Istio Gateway selecting it, with the union of their ports; G-gateway per ambit/istio Gateway', () => {
    const plans = plan([istio('a', 'default', '{ istio: ingressgateway }', [443, 80]), istio('b', 'shop', '{ app: istio-ingressgateway }', [443, 8443]),
      api('web', 'ambit', [8080]), api('bookinfo', 'istio', [9090])].join('---\n'));
    expect(plans.map((p) => ({ ns: p.namespace, name: p.name, sa: p.serviceAccount, ports: p.ports, hostPorts: p.hostPorts, errors: p.errors }))).toEqual([
      { ns: 'istio-system', name: 'istio-ingressgateway', sa: 'istio-ingressgateway-service-account', ports: [80, 443, 8443], hostPorts: [80, 443, 8443], errors: [] },
      { ns: 'default', name: 'bookinfo-gateway', sa: 'bookinfo', ports: [9090], hostPorts: [9090], errors: [] },
      { ns: 'default', name: 'web-gateway', sa: 'web', ports: [8080], hostPorts: [8080], errors: [] },
    ]);
    expect(plans[0]!.labels).toEqual({ istio: 'ingressgateway', app: 'istio-ingressgateway' });
    expect(plans[0]!.from).toEqual(['Gateway.networking.istio.io/default/a', 'Gateway.networking.istio.io/shop/b']);
    expect(plans[2]!.labels['gateway.networking.k8s.io/gateway-name']).toBe('web');
    expect(plans[2]!.annotations).toEqual({ 'ambit.dev/tracing-sampling': '5' });
  });

  it('gives a port two gateways want to the first, and the node agent\'s ports to none, saying why', () => {
    const plans = plan([istio('a', 'default', '{ istio: ingressgateway }', [80]), api('web', 'istio', [80, 15020, 81])].join('---\n'));
    expect(plans[1]!.hostPorts).toEqual([81]);
    expect(plans[1]!.errors).toEqual([
      'port 80 is not exposed on node-1 (172.30.0.11): istio-system/istio-ingressgateway already exposes it (two gateways cannot share a port of one node)',
      'port 15020 is not exposed on node-1 (172.30.0.11): the node agent uses it',
    ]);
    expect(NODE_RESERVED_PORTS).toContain(15008);
  });
});
