/**
 * The manifest directory config source: real files in a temporary directory, real inotify
 * watches. Invalid edits keep the last accepted version, deleted files take their resources.
 */
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ManifestDirSource, MergedSource } from '../../src/control/manifest-source.js';
import type { ConfigSource } from '../../src/config/source.js';
import type { SourceSnapshot } from '../../src/config/model.js';
import { parseManifests, type Diagnostic } from '../../src/kube/manifests.js';
import { until } from '../helpers/wait.js';

const VS = (weight: number | string) => `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: ${weight} }
    - { destination: { host: reviews, subset: v2 }, weight: ${typeof weight === 'number' ? 100 - weight : 10} }
`;
const SVC = `
apiVersion: v1
kind: Service
metadata: { name: reviews, namespace: shop }
spec: { selector: { app: reviews }, ports: [{ port: 9080 }] }
`;
const POD = `
apiVersion: v1
kind: Pod
metadata: { name: reviews-v1-abc, namespace: shop, uid: 4f1c, labels: { app: reviews, version: v1 } }
spec: { nodeName: node-1, serviceAccountName: reviews, containers: [{ name: reviews, image: reviews:v1 }] }
status: { podIP: 10.244.1.7 }
---
apiVersion: v1
kind: Pod
metadata: { name: pending, namespace: shop }
spec: { containers: [{ name: c, image: x }] }
`;

let dir: string;
let source: ManifestDirSource | undefined;
let snapshots: SourceSnapshot[];
let diagnostics: Diagnostic[];

function start(): void {
  source = new ManifestDirSource(dir, { rescanMs: 0, onDiagnostics: (d) => { diagnostics = d; } });
  source.start((s) => snapshots.push(s));
}

/** The `count`th snapshot, once it is out. */
const next = (count: number, what: string): Promise<SourceSnapshot> => until(what, () => snapshots[count - 1], { timeout: 5000, interval: 10 });

const names = (s: SourceSnapshot) => s.resources.map((r) => `${r.kind}/${r.meta.namespace}/${r.meta.name}`).sort();
const weightOf = (s: SourceSnapshot) => ((s.resources.find((r) => r.kind === 'VirtualService')!.raw.spec as { http: { route: { weight: number }[] }[] }).http[0]!.route[0]!.weight);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-config-'));
  snapshots = [];
  diagnostics = [];
});

afterEach(() => {
  source?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('ManifestDirSource', () => {
  it('reads every manifest under the directory; pods with a node and an IP are workloads', async () => {
    writeFileSync(join(dir, 'reviews.yaml'), SVC + '---' + VS(90));
    mkdirSync(join(dir, 'pods'));
    writeFileSync(join(dir, 'pods', 'reviews.yml'), POD);
    writeFileSync(join(dir, '.reviews.yaml.swp'), 'not yaml: [');
    writeFileSync(join(dir, 'README.md'), '# notes');
    start();
    const s = await next(1, 'the first snapshot');
    expect(names(s)).toEqual(['Service/shop/reviews', 'VirtualService/shop/reviews']);
    expect(s.pods).toEqual([{ uid: '4f1c', namespace: 'shop', name: 'reviews-v1-abc', node: 'node-1', ip: '10.244.1.7', labels: { app: 'reviews', version: 'v1' }, spec: expect.objectContaining({ serviceAccountName: 'reviews' }) }]);
    expect(diagnostics.filter((d) => d.severity === 'error')).toEqual([]);
  });

  it('keeps the last accepted version of a resource an edit made invalid, and names the field', async () => {
    writeFileSync(join(dir, 'reviews.yaml'), SVC + '---' + VS(90));
    start();
    await next(1, 'the first snapshot');
    writeFileSync(join(dir, 'reviews.yaml'), SVC + '---' + VS('"ninety"'));
    const s = await next(2, 'the snapshot after the bad edit');
    expect(weightOf(s)).toBe(90);
    const errors = diagnostics.filter((d) => d.severity === 'error');
    expect(errors[0]).toMatchObject({ kind: 'VirtualService', namespace: 'shop', name: 'reviews', path: 'spec.http[0].route[0].weight' });
    expect(diagnostics.some((d) => d.severity === 'warning' && /last accepted version stays/.test(d.message))).toBe(true);
    writeFileSync(join(dir, 'reviews.yaml'), SVC + '---' + VS(50));
    const fixed = await next(3, 'the snapshot after the fix');
    expect(weightOf(fixed)).toBe(50);
    expect(diagnostics).toEqual([]);
  });

  it('keeps everything a file had while it does not parse, and drops it when the file is deleted', async () => {
    writeFileSync(join(dir, 'reviews.yaml'), SVC + '---' + VS(90));
    writeFileSync(join(dir, 'other.json'), JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'shop', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } }));
    start();
    await next(1, 'the first snapshot');
    writeFileSync(join(dir, 'reviews.yaml'), 'apiVersion: v1\nkind: Service\nmetadata: { name: [\n');
    const broken = await next(2, 'the snapshot with the broken file');
    expect(names(broken)).toEqual(['Namespace//shop', 'Service/shop/reviews', 'VirtualService/shop/reviews']);
    expect(diagnostics.some((d) => d.severity === 'error' && d.source.file === 'reviews.yaml')).toBe(true);
    unlinkSync(join(dir, 'reviews.yaml'));
    const gone = await next(3, 'the snapshot after the delete');
    expect(names(gone)).toEqual(['Namespace//shop']);
  });

  it('notices a new subdirectory and the files written into it', async () => {
    start();
    await next(1, 'the empty snapshot');
    const scans = vi.spyOn(source!, 'scan');
    mkdirSync(join(dir, 'team-a'));
    // The rescan the new directory set off: it watches team-a from then on.
    await vi.waitFor(() => expect(scans).toHaveBeenCalled(), { timeout: 5000, interval: 10 });
    writeFileSync(join(dir, 'team-a', 'svc.yaml'), SVC);
    const s = await next(2, 'the new file');
    expect(names(s)).toEqual(['Service/shop/reviews']);
  });
});

describe('MergedSource', () => {
  it('puts sources together, a later source replacing an earlier one\'s resource', async () => {
    writeFileSync(join(dir, 'vs.yaml'), VS(70));
    const earlier = parseManifests([{ file: 'earlier.yaml', text: SVC + '---' + VS(10), dir }]).resources;
    const fixed: ConfigSource = {
      start: (cb) => cb({ resources: earlier, pods: [{ uid: 'p', namespace: 'shop', name: 'p', node: 'node-2', ip: '10.244.2.2', labels: {}, spec: { serviceAccountName: 'default', restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [] } }] }),
      stop: () => undefined,
    };
    const merged = new MergedSource([fixed, new ManifestDirSource(dir, { rescanMs: 0 })]);
    const got: SourceSnapshot[] = [];
    merged.start((s) => got.push(s));
    merged.stop();
    const last = got.at(-1)!;
    expect(names(last)).toEqual(['Service/shop/reviews', 'VirtualService/shop/reviews']);
    expect(weightOf(last)).toBe(70);
    expect(last.pods.map((p) => p.uid)).toEqual(['p']);
  });
});
