/**
 * What deploy/ ships for monitoring: the Grafana dashboards are the ones src/observe/dashboards.ts
 * makes (from ambit stat's queries), and the Prometheus scrape config keeps and scrapes every pod
 * the install renders that serves metrics, at the port and path its annotations name — checked by
 * applying the config's relabelling to the rendered pods, as Prometheus's Kubernetes discovery
 * would present them.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import type { K8sObject } from '../../src/install/objects.js';
import { renderInstall } from '../../src/install/render.js';
import { defaultValues } from '../../src/install/values.js';
import { waypointObjects } from '../../src/install/waypoint.js';
import { DASHBOARDS, dashboardFiles, panelExpressions } from '../../src/observe/dashboards.js';

const ROOT = new URL('../../', import.meta.url).pathname;

describe('the Grafana dashboards in deploy/grafana', () => {
  it('are the ones the queries make (run `make docs` after changing them)', () => {
    for (const f of dashboardFiles()) expect(readFileSync(`${ROOT}deploy/grafana/${f.name}`, 'utf8'), f.name).toBe(f.text);
  });
  it('query Istio\'s standard metrics only, with Grafana\'s rate interval', () => {
    for (const d of DASHBOARDS) {
      for (const expr of panelExpressions(d)) {
        for (const range of expr.match(/\[[^\]]*\]/g) ?? []) expect(range).toBe('[$__rate_interval]');
        for (const metric of expr.match(/istio_[a-z_]+/g) ?? []) expect(metric).toMatch(/^istio_(requests_total|request_duration_milliseconds_bucket|tcp_(sent|received)_bytes_total|tcp_connections_(opened|closed)_total)$/);
      }
    }
  });
});

interface Relabel { source_labels?: string[]; separator?: string; regex?: string; action?: string; target_label?: string; replacement?: string }

/** Prometheus's relabelling (keep and replace), enough for the config under test. */
function relabel(labels: Record<string, string>, rules: Relabel[]): Record<string, string> | undefined {
  const out = { ...labels };
  for (const r of rules) {
    const value = (r.source_labels ?? []).map((l) => out[l] ?? '').join(r.separator ?? ';');
    const m = new RegExp(`^(?:${r.regex ?? '(.*)'})$`).exec(value);
    if ((r.action ?? 'replace') === 'keep') {
      if (!m) return undefined;
      continue;
    }
    if (!m) continue;
    const replaced = (r.replacement ?? '$1').replace(/\$(\d+)/g, (_, i: string) => m[Number(i)] ?? '');
    if (replaced === '') delete out[r.target_label!];
    else out[r.target_label!] = replaced;
  }
  return out;
}

const meta = (s: string) => s.replace(/[^a-zA-Z0-9_]/g, '_');

/**
 * A pod of a workload object as role=pod discovery shows it: one target per container port, and
 * one without a port for a container that declares none (the node agent: see nodeAgentDaemonSet).
 */
function discovered(o: K8sObject, podIp: string): Array<Record<string, string>> {
  /* eslint-disable @typescript-eslint/no-explicit-any -- walking rendered objects */
  const t = (o as any).spec.template;
  const labels: Record<string, string> = {
    __meta_kubernetes_namespace: o.metadata.namespace!, __meta_kubernetes_pod_name: `${o.metadata.name}-x`, __meta_kubernetes_pod_phase: 'Running', __meta_kubernetes_pod_node_name: 'node-a',
  };
  for (const [k, v] of Object.entries(t.metadata.labels ?? {})) labels[`__meta_kubernetes_pod_label_${meta(k)}`] = v as string;
  for (const [k, v] of Object.entries(t.metadata.annotations ?? {})) labels[`__meta_kubernetes_pod_annotation_${meta(k)}`] = v as string;
  return t.spec.containers.flatMap((c: any) => (c.ports?.length ? c.ports.map((p: any) => `${podIp}:${p.containerPort as number}`) : [podIp]))
    .map((address: string) => ({ ...labels, __address__: address, __metrics_path__: '/metrics' }));
}

describe('deploy/prometheus/scrape-config.yaml', () => {
  const jobs = parse(readFileSync(`${ROOT}deploy/prometheus/scrape-config.yaml`, 'utf8')) as Array<{ job_name: string; relabel_configs: Relabel[]; kubernetes_sd_configs: Array<{ namespaces?: { names: string[] } }> }>;
  const values = defaultValues();
  const install = renderInstall(values);
  const workloads = [
    ...install.filter((o) => o.kind === 'Deployment' || o.kind === 'DaemonSet'),
    ...waypointObjects({ apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'waypoint', namespace: 'shop', uid: 'u' }, spec: { gatewayClassName: 'ambit-waypoint', listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] } } as never, values).filter((o) => o.kind === 'Deployment'),
  ];

  it('scrapes the controller, the node agents and the waypoints once each, at their annotated port and path', () => {
    expect(workloads.length).toBeGreaterThanOrEqual(3);
    for (const w of workloads) {
      const kept = jobs.flatMap((job) => {
        const names = job.kubernetes_sd_configs[0]?.namespaces?.names;
        if (names && !names.includes(w.metadata.namespace!)) return [];
        return discovered(w, '10.0.0.5').map((d) => relabel(d, job.relabel_configs)).filter((x) => x !== undefined).map((x) => ({ ...x!, job: job.job_name }) as Record<string, string>);
      });
      const annotations = (w as any).spec.template.metadata.annotations ?? {};
      // One target per pod, whichever container port discovery found first: they collapse to the annotated one.
      const targets = new Set(kept.map((k) => `${k.job} ${k.__address__}${k.__metrics_path__}`));
      expect([...targets], `${w.kind} ${w.metadata.name}`).toEqual([`${w.metadata.name === 'waypoint' ? 'ambit-waypoints' : 'ambit'} 10.0.0.5:${annotations['prometheus.io/port']}${annotations['prometheus.io/path']}`]);
    }
  });
});
