/**
 * The one label-selector match (selectorMatches) and what its callers make of an empty
 * selector: a Service's and an Istio Gateway's select nothing, an AuthorizationPolicy's
 * selects every workload in its namespace.
 */
import { describe, expect, it } from 'vitest';
import { buildModel, ISTIO_INGRESS, selectorMatches, selectsIstioIngress, type ConfigObject, type PodInfo } from '../../src/config/model.js';
import { viewFor } from '../../src/discovery/discovery.js';
import { parseManifests, type PodSpec } from '../../src/kube/manifests.js';
import { gatewayPolicies } from '../../src/waypoint/ingress/app.js';

const LABELS = { app: 'web', version: 'v1' };

describe('selectorMatches', () => {
  it('selects labels that hold each of its keys with the same value, whatever else they hold', () => {
    expect(selectorMatches({ app: 'web' }, LABELS)).toBe(true);
    expect(selectorMatches({ app: 'web', version: 'v1' }, LABELS)).toBe(true);
    expect(selectorMatches({ app: 'web', version: 'v2' }, LABELS)).toBe(false);
    expect(selectorMatches({ app: 'web', tier: 'front' }, LABELS)).toBe(false);
    expect(selectorMatches({ app: 'web' }, {})).toBe(false);
  });

  it('selects nothing when empty or no map', () => {
    expect(selectorMatches({}, LABELS)).toBe(false);
    expect(selectorMatches({}, {})).toBe(false);
    for (const selector of [undefined, null, 'app=web', 1]) expect(selectorMatches(selector, LABELS)).toBe(false);
  });

  it('never matches a value that is no string', () => {
    expect(selectorMatches({ replicas: 1 }, { replicas: '1' })).toBe(false);
    expect(selectorMatches({ app: null }, {})).toBe(false);
  });
});

const SPEC = (sa: string): PodSpec => ({ serviceAccountName: sa, restartPolicy: 'Always', terminationGracePeriodSeconds: 1, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [] }] });

describe('an empty selector at each caller', () => {
  it('a Service: no endpoints', () => {
    const { resources } = parseManifests([{ file: 'm.yaml', dir: '/', text: `apiVersion: v1
kind: Service
metadata: { name: all, namespace: default }
spec: { selector: {}, ports: [{ port: 80 }] }
---
apiVersion: v1
kind: Service
metadata: { name: web, namespace: default }
spec: { selector: { app: web }, ports: [{ port: 80 }] }
` }]);
    const pods: PodInfo[] = [{ uid: 'p', namespace: 'default', name: 'web-1', node: 'n', ip: '10.0.0.1', labels: LABELS, spec: SPEC('default') }];
    const model = buildModel({ resources, pods }, 'cluster.local');
    const endpoints = Object.fromEntries(model.services.map((s) => [s.name, s.endpoints]));
    expect(endpoints).toEqual({ all: [], web: ['p'] });
  });

  it('an Istio Gateway: served by no ingress gateway', () => {
    expect(selectsIstioIngress({ selector: {} })).toBe(false);
    expect(selectsIstioIngress({})).toBe(false);
    expect(selectsIstioIngress({ selector: { istio: 'ingressgateway' } })).toBe(true);
    const { resources } = parseManifests([{ file: 'm.yaml', dir: '/', text: `apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: empty, namespace: default }
spec: { selector: {}, servers: [{ port: { number: 80, name: http, protocol: HTTP }, hosts: ["*"] }] }
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: { name: ingress, namespace: default }
spec: { selector: { istio: ingressgateway }, servers: [{ port: { number: 80, name: http, protocol: HTTP }, hosts: ["*"] }] }
` }]);
    const pods: PodInfo[] = [{ uid: 'gw', namespace: ISTIO_INGRESS.namespace, name: 'gw-1', node: 'n', ip: '10.0.0.2', labels: { ...ISTIO_INGRESS.labels }, spec: SPEC(ISTIO_INGRESS.serviceAccount) }];
    const model = buildModel({ resources, pods }, 'cluster.local');
    expect(model.gateways.map((g) => g.name).sort()).toEqual(['empty', 'ingress']);
    const view = [...viewFor(model, 'gateway', `${ISTIO_INGRESS.namespace}/${ISTIO_INGRESS.serviceAccount}`).keys()].filter((k) => k.startsWith('ingress/'));
    expect(view).toEqual(['ingress/Gateway/default/ingress']);
  });

  it('an AuthorizationPolicy at a gateway: every workload in its namespace', () => {
    const policy = (name: string, selector?: unknown): ConfigObject => ({
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', namespace: 'shop', name, spec: { ...(selector === undefined ? {} : { selector }), action: 'DENY', rules: [{}] },
    });
    const policies = [policy('none'), policy('empty', {}), policy('no-labels', { matchLabels: {} }), policy('mine', { matchLabels: { app: 'web' } }), policy('other', { matchLabels: { app: 'api' } })];
    const self = { namespace: 'shop', name: 'web' };
    expect(gatewayPolicies(policies, { ...self, labels: LABELS }).map((p) => p.name)).toEqual(['none', 'empty', 'no-labels', 'mine']);
    // Its pods' labels not known yet: only the policies without a selector.
    expect(gatewayPolicies(policies, self).map((p) => p.name)).toEqual(['none', 'empty', 'no-labels']);
  });
});
