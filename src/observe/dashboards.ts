/**
 * The Grafana dashboards in deploy/grafana, made from the same queries as `ambit stat`
 * (src/observe/queries.ts): a mesh overview, a service and a workload. `make docs` writes them;
 * a unit test fails when the committed files differ, and an integration test runs every panel's
 * PromQL against a real Prometheus scraping a local cluster.
 *
 * Grafana fills in `$namespace`, `$service`, `$workload` (template variables) and
 * `$__rate_interval` (a rate window fitted to the scrape interval).
 */
import { L4_REPORTER, promql, selector, TCP_OPENED, type Matcher, type SignalQuery } from './queries.js';

export interface Panel {
  title: string;
  type: 'timeseries' | 'stat' | 'table';
  unit: string;
  targets: Array<{ expr: string; legendFormat: string }>;
  description: string;
}

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  variables: Array<{ name: string; label: string; query: string }>;
  panels: Panel[];
}

export const RATE_WINDOW = '$__rate_interval';

const re = (label: string, variable: string): Matcher => ({ label, op: '=~', value: `$${variable}` });

function golden(title: string, q: SignalQuery, legend: string): Panel[] {
  const p = promql(q, [0.5, 0.9, 0.99]);
  return [
    { title: `${title}: request rate`, type: 'timeseries', unit: 'reqps', targets: [{ expr: p.requestRate!, legendFormat: legend }], description: 'Requests per second through the waypoint (reporter="waypoint").' },
    { title: `${title}: success rate`, type: 'timeseries', unit: 'percentunit', targets: [{ expr: p.successRate!, legendFormat: legend }], description: 'Share of requests answered with anything but a 5xx.' },
    {
      title: `${title}: latency`, type: 'timeseries', unit: 'ms',
      targets: (['p50', 'p90', 'p99'] as const).map((k) => ({ expr: p[k]!, legendFormat: `${legend} ${k}` })),
      description: 'istio_request_duration_milliseconds quantiles (histogram_quantile over the waypoint\'s buckets).',
    },
    {
      title: `${title}: TCP bytes`, type: 'timeseries', unit: 'Bps',
      targets: [{ expr: p.tcpSentRate!, legendFormat: `${legend} sent` }, { expr: p.tcpReceivedRate!, legendFormat: `${legend} received` }],
      description: 'Bytes per second as the destination\'s node agent counts them (reporter="destination").',
    },
    {
      title: `${title}: TCP connections`, type: 'timeseries', unit: 'short',
      targets: [{ expr: p.tcpOpen!, legendFormat: `${legend} open` }, { expr: p.tlsShare!, legendFormat: `${legend} mTLS share of new` }],
      description: 'Connections open now at the destination\'s node agent, and the share of new ones that were mutual TLS.',
    },
  ];
}

const serviceVars = [
  { name: 'namespace', label: 'Namespace', query: `label_values(${selector({ metric: TCP_OPENED, matchers: [L4_REPORTER] })}, destination_service_namespace)` },
  { name: 'service', label: 'Service', query: `label_values(${selector({ metric: TCP_OPENED, matchers: [L4_REPORTER, re('destination_service_namespace', 'namespace')] })}, destination_service_name)` },
];
const workloadVars = [
  { name: 'namespace', label: 'Namespace', query: `label_values(${selector({ metric: TCP_OPENED, matchers: [L4_REPORTER] })}, destination_workload_namespace)` },
  { name: 'workload', label: 'Workload', query: `label_values(${selector({ metric: TCP_OPENED, matchers: [L4_REPORTER, re('destination_workload_namespace', 'namespace')] })}, destination_workload)` },
];

export const DASHBOARDS: readonly DashboardSpec[] = [
  {
    uid: 'ambit-mesh',
    title: 'ambit / Mesh',
    description: 'Every service in the mesh: request rate, success and latency through waypoints, TCP through node agents.',
    variables: [],
    panels: golden('Services', { l7: [], l4: [], group: ['destination_service'], window: RATE_WINDOW }, '{{destination_service}}'),
  },
  {
    uid: 'ambit-service',
    title: 'ambit / Service',
    description: 'One service: its golden signals, and who calls it.',
    variables: serviceVars,
    panels: [
      ...golden('Service', { l7: [re('destination_service_namespace', 'namespace'), re('destination_service_name', 'service')], l4: [re('destination_service_namespace', 'namespace'), re('destination_service_name', 'service')], group: [], window: RATE_WINDOW }, '$service'),
      {
        title: 'Requests by source workload', type: 'timeseries', unit: 'reqps',
        targets: [{ expr: promql({ l7: [re('destination_service_namespace', 'namespace'), re('destination_service_name', 'service')], l4: [], group: ['source_workload_namespace', 'source_workload', 'response_code'], window: RATE_WINDOW }).requestRate!, legendFormat: '{{source_workload_namespace}}/{{source_workload}} {{response_code}}' }],
        description: 'Which workloads call the service, split by response code.',
      },
    ],
  },
  {
    uid: 'ambit-workload',
    title: 'ambit / Workload',
    description: 'One workload (a Deployment\'s pods): its inbound golden signals and what it calls.',
    variables: workloadVars,
    panels: [
      ...golden('Inbound', { l7: [re('destination_workload_namespace', 'namespace'), re('destination_workload', 'workload')], l4: [re('destination_workload_namespace', 'namespace'), re('destination_workload', 'workload')], group: [], window: RATE_WINDOW }, '$workload'),
      {
        title: 'Outbound requests by destination service', type: 'timeseries', unit: 'reqps',
        targets: [{ expr: promql({ l7: [re('source_workload_namespace', 'namespace'), re('source_workload', 'workload')], l4: [], group: ['destination_service', 'response_code'], window: RATE_WINDOW }).requestRate!, legendFormat: '{{destination_service}} {{response_code}}' }],
        description: 'What the workload calls through waypoints, by response code.',
      },
    ],
  },
];

/** Every PromQL expression of a dashboard (panels, then variables' label_values queries aside). */
export const panelExpressions = (d: DashboardSpec): string[] => d.panels.flatMap((p) => p.targets.map((t) => t.expr));

/** A dashboard as Grafana imports it (schema 39, Prometheus data source chosen at import). */
export function grafanaJson(d: DashboardSpec): Record<string, unknown> {
  const ds = { type: 'prometheus', uid: '${datasource}' };
  return {
    uid: d.uid,
    title: d.title,
    description: d.description,
    tags: ['ambit', 'istio'],
    schemaVersion: 39,
    version: 1,
    editable: true,
    time: { from: 'now-30m', to: 'now' },
    refresh: '10s',
    templating: {
      list: [
        { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', current: {}, hide: 0 },
        ...d.variables.map((v) => ({ name: v.name, label: v.label, type: 'query', datasource: ds, query: { query: v.query, refId: `${v.name}-values` }, definition: v.query, refresh: 2, includeAll: false, multi: false, current: {}, hide: 0, sort: 1 })),
      ],
    },
    panels: d.panels.map((p, i) => ({
      id: i + 1,
      type: p.type,
      title: p.title,
      description: p.description,
      datasource: ds,
      gridPos: { x: (i % 2) * 12, y: Math.floor(i / 2) * 8, w: 12, h: 8 },
      fieldConfig: { defaults: { unit: p.unit }, overrides: [] },
      options: { legend: { displayMode: 'list', placement: 'bottom', showLegend: true }, tooltip: { mode: 'multi', sort: 'desc' } },
      targets: p.targets.map((t, j) => ({ datasource: ds, expr: t.expr, legendFormat: t.legendFormat, refId: String.fromCharCode(65 + j), range: true })),
    })),
  };
}

/** The files `make docs` writes under deploy/grafana. */
export function dashboardFiles(): Array<{ name: string; text: string }> {
  return DASHBOARDS.map((d) => ({ name: `${d.uid}.json`, text: `${JSON.stringify(grafanaJson(d), null, 2)}\n` }));
}
