// The shop demo's manifest (examples/shop/shop.yaml), checked for shape. Its five services as
// real processes, and loadgen.mjs driven against them: test/integration/shop.test.ts.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

const SHOP = fileURLToPath(new URL('../../examples/shop/', import.meta.url));

describe('shop.yaml', () => {
  const docs = parseAllDocuments(readFileSync(join(SHOP, 'shop.yaml'), 'utf8'));
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- manifests are free-form; the checks below say what they need
  const objects = (Array.isArray(docs) ? docs : []).map((d) => d.toJS() as any);

  it('parses cleanly, every object in namespace shop', () => {
    expect(Array.isArray(docs)).toBe(true);
    for (const d of Array.isArray(docs) ? docs : []) expect(d.errors).toEqual([]);
    const names = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(names).toEqual([
      'Namespace/shop',
      ...['users', 'orders', 'payment', 'inventory', 'shipping', 'client'].map((n) => `ServiceAccount/${n}`),
      ...['users', 'orders', 'payment-v1', 'payment-v2', 'inventory', 'shipping'].map((n) => `Deployment/${n}`),
      ...['users', 'orders', 'payment', 'inventory', 'shipping'].map((n) => `Service/${n}`),
      'Pod/client',
    ]);
    for (const o of objects.slice(1)) expect(o.metadata.namespace).toBe('shop');
    // The namespace is in the mesh: the node agents carry every call between its pods.
    expect(objects[0].metadata.labels).toEqual({ 'ambit.dev/dataplane-mode': 'ambient' });
  });

  it('runs service.mjs in every Deployment, selectable by its Service', () => {
    const deployments = objects.filter((o) => o.kind === 'Deployment');
    const replicas = Object.fromEntries(deployments.map((d) => [d.metadata.name, d.spec.replicas]));
    expect(replicas).toEqual({ users: 2, orders: 2, 'payment-v1': 1, 'payment-v2': 1, inventory: 1, shipping: 1 });
    for (const d of deployments) {
      const labels = d.spec.template.metadata.labels;
      expect(d.spec.selector.matchLabels).toEqual(labels);
      expect(Object.keys(labels).sort()).toEqual(['app', 'version']);
      expect(d.spec.template.spec.serviceAccountName).toBe(labels.app);
      const [c] = d.spec.template.spec.containers;
      expect(c.image).toBe('ambit.dev/examples/shop:0.1');
      expect(c.command).toEqual(['node', 'service.mjs']);
      const env = Object.fromEntries(c.env.map((e: { name: string; value?: string; valueFrom?: { fieldRef: { fieldPath: string } } }) =>
        [e.name, e.value ?? `fieldRef:${e.valueFrom?.fieldRef.fieldPath}`]));
      expect(env).toEqual({ SERVICE: labels.app, VERSION: labels.version, POD_NAME: 'fieldRef:metadata.name', NODE_NAME: 'fieldRef:spec.nodeName' });
      expect(c.ports).toEqual([{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
      expect(c.readinessProbe).toEqual({ httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 2 });
    }
    expect(deployments.find((d) => d.metadata.name === 'payment-v2').spec.template.metadata.labels).toEqual({ app: 'payment', version: 'v2' });
    for (const s of objects.filter((o) => o.kind === 'Service')) {
      expect(s.spec.selector).toEqual({ app: s.metadata.name });
      expect(s.spec.ports).toEqual([{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }]);
      expect(deployments.some((d) => d.spec.template.metadata.labels.app === s.metadata.name)).toBe(true);
    }
    const client = objects.find((o) => o.kind === 'Pod');
    expect(client.spec.serviceAccountName).toBe('client');
    expect(client.spec.containers[0].command).toEqual(['sleep', 'infinity']);
  });
});
