/**
 * `ambit stat deploy|ns|svc`: each workload's golden signals, as `linkerd viz stat` shows them,
 * from Istio's standard metrics. From a Prometheus when one is configured (the local cluster's
 * own, or `--prometheus URL`), otherwise from two scrapes of every node agent and waypoint a
 * window apart. On the local cluster the bytes come from inside its namespaces; on Kubernetes
 * through the API server's pod proxy. The model is src/observe/stat.ts.
 */
import { Command } from 'commander';
import { isEnrolled, selectorMatches, WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { httpGetInNetns } from '../host/netns.js';
import { selectorLabels } from '../install/render.js';
import { KubeClient } from '../kube/client.js';
import { RuntimeClient } from '../local/client.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { isWaypointPod, localTargets } from '../local/metrics-targets.js';
import { PROXY_METRICS_PORT } from '../local/prometheus.js';
import type { ConnectionItem } from '../api/proxy-config.js';
import type { ClusterStatus, PodStatus } from '../local/runtime.js';
import { ObserveError, prometheusQuery, scrapeAll, type Fetch, type Target } from '../observe/prometheus.js';
import {
  isPodKind, parseRef, podRows, signalsFromPrometheus, type OpenConnection, signalsFromScrapes, STAT_HEADER, statCells, statKind, statQuery, statRows, StatError,
  type InstantQuery, type InventoryPod, type StatRequest, type StatRow,
} from '../observe/stat.js';
import { CliError } from './errors.js';
import { table } from './format.js';
import { apiMessage, isSuccess, kubeRequest } from './kube.js';
import { agentPodView, fromLocal } from './proxy-config.js';

/** Where the figures come from: the cluster's pods, and a Prometheus or the proxies' endpoints. */
export interface StatSource {
  /** What it reads, for the note under the table. */
  describe: string;
  inventory(): Promise<InventoryPod[]>;
  /** The waypoints' own workloads, `namespace/workload` (their hops fold into the edges they carry). */
  waypoints(): Promise<Set<string>>;
  prometheus?: InstantQuery;
  targets(): Promise<Target[]>;
}

const workloadOfStatus = (p: PodStatus): string => (p.owner?.startsWith('deployment/') ? p.owner.slice('deployment/'.length) : p.name);

/** The local cluster's pods as rows take them: the waypoints' own pods apart. */
export function localInventory(status: ClusterStatus): InventoryPod[] {
  const services = new Map<string, string[]>();
  for (const svc of status.services) {
    for (const ep of svc.endpoints) {
      const key = `${svc.namespace}/${ep.slice(0, ep.lastIndexOf(':'))}`;
      const list = services.get(key) ?? [];
      if (!list.includes(svc.name)) list.push(svc.name);
      services.set(key, list);
    }
  }
  return status.pods.filter((p) => !isWaypointPod(p)).map((p) => ({
    namespace: p.namespace, name: p.name, workload: workloadOfStatus(p), services: services.get(`${p.namespace}/${p.ip}`) ?? [], meshed: p.meshed, labels: p.labels ?? {},
  }));
}

/** The waypoints' own workloads (`namespace/workload`) on the local cluster. */
export const localWaypoints = (status: ClusterStatus): Set<string> => new Set(status.pods.filter(isWaypointPod).map((p) => `${p.namespace}/${workloadOfStatus(p)}`));

/** The local cluster: its runtime's status, and sockets made in its underlay netns. */
export async function localSource(cluster: string, usePrometheus: boolean): Promise<StatSource> {
  const layout = new ClusterLayout(cluster);
  const status = await new RuntimeClient(layout).request<ClusterStatus>('GET', '/v1/status');
  const prom = usePrometheus && status.prometheus ? new URL(status.prometheus.url) : undefined;
  const underlay = `/run/netns/${layout.underlayNetns}`;
  return {
    describe: prom ? `the cluster's Prometheus (${status.prometheus!.url})` : `the node agents' and waypoints' /metrics of cluster ${cluster}`,
    inventory: async () => localInventory(status),
    waypoints: async () => localWaypoints(status),
    ...(prom ? { prometheus: prometheusQuery((path) => httpGetInNetns(underlay, prom.hostname, Number(prom.port), path), status.prometheus!.url) } : {}),
    targets: async () => localTargets(layout, status),
  };
}

interface KubePod {
  metadata: { name: string; namespace: string; labels?: Record<string, string>; ownerReferences?: { kind: string; name: string; controller?: boolean }[] };
  spec?: { hostNetwork?: boolean };
  status?: { phase?: string };
}

/** The workload name Istio gives a pod: its Deployment's (the ReplicaSet's name less its hash), else its owner's, else its own. */
export function workloadOf(pod: KubePod): string {
  // The controlling owner: a pod may list others (a garbage-collection parent) before it.
  const owners = pod.metadata.ownerReferences ?? [];
  const owner = owners.find((o) => o.controller === true) ?? owners[0];
  if (!owner) return pod.metadata.name;
  const hash = pod.metadata.labels?.['pod-template-hash'];
  if (owner.kind === 'ReplicaSet' && hash && owner.name.endsWith(`-${hash}`)) return owner.name.slice(0, -hash.length - 1);
  return owner.name;
}

/** A Kubernetes cluster: pods, namespaces and services from the API server; metrics through its pod proxy. */
export function kubeSource(client: KubeClient, ambitNamespace: string, namespace: string | undefined): StatSource {
  const list = async <T>(path: string): Promise<T[]> => {
    const res = await kubeRequest(client, 'GET', path);
    if (!isSuccess(res)) throw new CliError(`GET ${path} on ${client.server}: ${apiMessage(res)}`);
    return (res.body as { items?: T[] }).items ?? [];
  };
  const proxy = (ns: string, pod: string): Fetch => async (path) => {
    const res = await kubeRequest(client, 'GET', `/api/v1/namespaces/${ns}/pods/${pod}:${PROXY_METRICS_PORT}/proxy${path}`);
    // The client parses a body that reads as JSON; the exposition is text (an empty one stays empty).
    return { status: res.status, body: typeof res.body === 'string' ? res.body : res.body === undefined ? '' : JSON.stringify(res.body) };
  };
  const scope = namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
  return {
    describe: `the node agents' and waypoints' /metrics through ${client.server}`,
    inventory: async () => {
      const [pods, namespaces, services] = await Promise.all([
        list<KubePod>(`/api/v1${scope}/pods`),
        list<{ metadata: { name: string; labels?: Record<string, string> } }>('/api/v1/namespaces'),
        list<{ metadata: { name: string; namespace: string }; spec: { selector?: Record<string, string> } }>(`/api/v1${scope}/services`),
      ]);
      const nsLabels = new Map(namespaces.map((n) => [n.metadata.name, n.metadata.labels ?? {}]));
      // The mesh's own proxies are not rows (as on the local cluster, where they are not pods): waypoints and node agents.
      const agentLabels = Object.entries(selectorLabels('node'));
      const isAgent = (p: KubePod) => agentLabels.every(([k, v]) => p.metadata.labels?.[k] === v);
      return pods.filter((p) => p.metadata.labels?.[WAYPOINT_GATEWAY_LABEL] === undefined && !isAgent(p) && p.status?.phase !== 'Succeeded' && p.status?.phase !== 'Failed').map((p) => ({
        namespace: p.metadata.namespace,
        name: p.metadata.name,
        workload: workloadOf(p),
        services: services.filter((s) => s.metadata.namespace === p.metadata.namespace && selectorMatches(s.spec.selector, p.metadata.labels ?? {})).map((s) => s.metadata.name),
        meshed: !p.spec?.hostNetwork && isEnrolled(p.metadata.labels ?? {}, nsLabels.get(p.metadata.namespace) ?? {}),
        labels: p.metadata.labels ?? {},
      }));
    },
    waypoints: async () => new Set((await list<KubePod>(`/api/v1/pods?labelSelector=${encodeURIComponent(WAYPOINT_GATEWAY_LABEL)}`))
      .filter((p) => p.metadata.labels?.[WAYPOINT_GATEWAY_LABEL] !== undefined).map((p) => `${p.metadata.namespace}/${workloadOf(p)}`)),
    targets: async () => {
      const agentLabels = selectorLabels('node');
      const agentSelector = Object.entries(agentLabels).map(([k, v]) => `${k}=${v}`).join(',');
      const [listedAgents, listedWaypoints] = await Promise.all([
        list<KubePod>(`/api/v1/namespaces/${encodeURIComponent(ambitNamespace)}/pods?labelSelector=${encodeURIComponent(agentSelector)}`),
        list<KubePod>(`/api/v1/pods?labelSelector=${encodeURIComponent(WAYPOINT_GATEWAY_LABEL)}`),
      ]);
      // The selectors are applied here too: a server (or a proxy in front of one) may ignore them,
      // and every other pod would then be scraped as a proxy.
      const running = (p: KubePod) => p.status?.phase === 'Running';
      const agents = listedAgents.filter((p) => Object.entries(agentLabels).every(([k, v]) => p.metadata.labels?.[k] === v));
      const waypoints = listedWaypoints.filter((p) => p.metadata.labels?.[WAYPOINT_GATEWAY_LABEL] !== undefined);
      if (agents.length === 0) throw new CliError(`no node agent pods in namespace ${ambitNamespace} (selector ${agentSelector})`, 'is ambit installed? (ambit install ... | kubectl apply -f -), or pass --ambit-namespace');
      // Agents that exist but none runs: nothing would be measured, which is not "no traffic".
      if (!agents.some(running)) {
        throw new CliError(`no node agent pod runs in namespace ${ambitNamespace}: ${agents.map((p) => `${p.metadata.name} is ${p.status?.phase ?? 'not running'}`).join(', ')}`,
          `kubectl get pods -n ${ambitNamespace} -l ${agentSelector}`);
      }
      return [
        ...agents.filter(running).map((p) => ({ name: `node-agent ${p.metadata.namespace}/${p.metadata.name}`, fetch: proxy(p.metadata.namespace, p.metadata.name) })),
        ...waypoints.filter(running).map((p) => ({ name: `waypoint ${p.metadata.namespace}/${p.metadata.name}`, fetch: proxy(p.metadata.namespace, p.metadata.name) })),
      ];
    },
  };
}

/** The connections every node agent holds open now (`ambit stat pod`): local cluster. */
export async function localConnections(cluster: string): Promise<OpenConnection[]> {
  const status = await new RuntimeClient(new ClusterLayout(cluster)).request<ClusterStatus>('GET', '/v1/status');
  const answers = await Promise.all(status.nodes.map((n) => fromLocal('connections', n.name, cluster)));
  return answers.flatMap((a) => a.items as ConnectionItem[]);
}

/** The same on Kubernetes: every running node agent pod, through a port-forward to its admin port. */
export async function kubeConnections(client: KubeClient, kubeconfig: string | undefined, ambitNamespace: string): Promise<OpenConnection[]> {
  const selector = Object.entries(selectorLabels('node')).map(([k, v]) => `${k}=${v}`).join(',');
  const res = await kubeRequest(client, 'GET', `/api/v1/namespaces/${encodeURIComponent(ambitNamespace)}/pods?labelSelector=${encodeURIComponent(selector)}`);
  if (!isSuccess(res)) throw new CliError(`listing the node agents in ${ambitNamespace} on ${client.server}: ${apiMessage(res)}`);
  const pods = ((res.body as { items?: KubePod[] }).items ?? []).filter((p) => p.status?.phase === 'Running' && Object.entries(selectorLabels('node')).every(([k, v]) => p.metadata.labels?.[k] === v));
  if (pods.length === 0) throw new CliError(`no node agent pod runs in namespace ${ambitNamespace}`, 'is ambit installed? or pass --ambit-namespace');
  const answers = await Promise.all(pods.map((p) => agentPodView('connections', client, kubeconfig, ambitNamespace, p.metadata.name)));
  return answers.flatMap((a) => a.items as ConnectionItem[]);
}

/** A Prometheus at a URL this host reaches. */
export function urlPrometheus(url: string): InstantQuery {
  let base: URL;
  try {
    base = new URL(url);
  } catch {
    throw new CliError(`--prometheus must be a URL such as http://prometheus.monitoring:9090, got ${JSON.stringify(url)}`);
  }
  const get: Fetch = async (path) => {
    const res = await fetch(new URL(path, base), { signal: AbortSignal.timeout(15_000) }).catch((err: Error) => {
      throw new CliError(`cannot reach Prometheus at ${url}: ${(err.cause as Error | undefined)?.message ?? err.message}`);
    });
    return { status: res.status, body: await res.text() };
  };
  return prometheusQuery(get, url);
}

/** Parses `30s`, `1m`, `2m30s`-free simple durations: N followed by s or m. */
export function windowSeconds(text: string): number {
  const m = /^([1-9][0-9]{0,4})(s|m)$/.exec(text);
  if (!m) throw new CliError(`--window must be a duration like 10s or 1m, got ${JSON.stringify(text)}`);
  const seconds = Number(m[1]) * (m[2] === 'm' ? 60 : 1);
  if (seconds > 3600) throw new CliError(`--window must be at most 1h, got ${text}`);
  return seconds;
}

/** The rows of one `stat`: from the source's Prometheus, else two scrapes `windowSeconds` apart. */
export async function collectStat(source: StatSource, req: StatRequest, onWait?: (seconds: number) => void): Promise<{ rows: StatRow[]; warnings: string[] }> {
  const query = statQuery(req);
  const warnings: string[] = [];
  let signals;
  if (source.prometheus) {
    signals = await signalsFromPrometheus(query, source.prometheus);
  } else {
    const targets = await source.targets();
    const first = await scrapeAll(targets);
    const started = Date.now();
    onWait?.(req.windowSeconds);
    await new Promise((r) => setTimeout(r, req.windowSeconds * 1000));
    const second = await scrapeAll(await source.targets());
    warnings.push(...new Set([...first.failed, ...second.failed]));
    signals = signalsFromScrapes(query, first.samples, second.samples, (Date.now() - started) / 1000);
  }
  return { rows: statRows(req, await source.inventory(), signals), warnings };
}

export function register(program: Command): void {
  program.command('stat')
    .description('golden signals per deployment, namespace or service (success, RPS, latency, TCP connections, mTLS), as linkerd viz stat shows them')
    .argument('<kind>', 'deploy, ns, svc, or pod (connections open now and their mTLS share; requests are per workload)')
    .option('-n, --namespace <ns>', 'only rows in this namespace (and the namespace of --from/--to names)')
    .option('-A, --all-namespaces', 'rows of every namespace (the default without -n)')
    .option('--from <kind/name>', 'only traffic from this deployment or namespace (rows are its destinations)')
    .option('--to <kind/name>', 'only traffic to this deployment, namespace or service (rows are its sources)')
    .option('--window <duration>', 'the window the figures cover (default 1m with a Prometheus, 10s when sampling the proxies)')
    .option('--prometheus <url>', 'read a Prometheus at this URL (default: the local cluster\'s own when it runs one)')
    .option('--no-prometheus', 'sample the node agents and waypoints directly, even when a Prometheus runs')
    .option('--cluster <name>', 'the local cluster', DEFAULT_CLUSTER)
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
    .option('--ambit-namespace <ns>', 'where ambit is installed on Kubernetes', 'ambit-system')
    .option('--json', 'machine-readable output')
    .action(async (kindText: string, opts: { namespace?: string; from?: string; to?: string; window?: string; prometheus?: string | false; cluster: string; kubeconfig?: string; kube?: boolean; ambitNamespace: string; json?: boolean }) => {
      if (isPodKind(kindText)) {
        if (opts.from || opts.to) throw new CliError('--from and --to take workloads or namespaces: requests are counted per workload (Istio\'s metrics carry no pod); try ambit stat deploy');
        const onKube = opts.kubeconfig !== undefined || opts.kube === true;
        const client = onKube ? KubeClient.fromFile(opts.kubeconfig) : undefined;
        const source = client ? kubeSource(client, opts.ambitNamespace, opts.namespace) : await localSource(opts.cluster, false);
        const [inventory, connections] = await Promise.all([source.inventory(), client ? kubeConnections(client, opts.kubeconfig, opts.ambitNamespace) : localConnections(opts.cluster)]);
        const rows = podRows(opts.namespace, inventory, connections);
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ kind: 'pod', source: 'the connections the node agents hold open now', rows }, null, 2)}\n`);
          return;
        }
        process.stdout.write(rows.length ? `${table(STAT_HEADER, rows.map(statCells))}\n` : `no pods${opts.namespace ? ` in namespace ${opts.namespace}` : ''}\n`);
        process.stderr.write('pods: connections the node agents hold open now; requests are per workload (ambit stat deploy)\n');
        return;
      }
      let req: StatRequest;
      try {
        req = {
          kind: statKind(kindText),
          ...(opts.namespace ? { namespace: opts.namespace } : {}),
          ...(opts.from ? { from: parseRef(opts.from, '--from') } : {}),
          ...(opts.to ? { to: parseRef(opts.to, '--to') } : {}),
          windowSeconds: 0,
        };
        statQuery(req);
      } catch (err) {
        if (err instanceof StatError) throw new CliError(err.message);
        throw err;
      }
      const onKube = opts.kubeconfig !== undefined || opts.kube === true;
      const source = onKube ? kubeSource(KubeClient.fromFile(opts.kubeconfig), opts.ambitNamespace, opts.namespace) : await localSource(opts.cluster, opts.prometheus !== false);
      if (typeof opts.prometheus === 'string') source.prometheus = urlPrometheus(opts.prometheus);
      if (typeof opts.prometheus === 'string') source.describe = `Prometheus at ${opts.prometheus}`;
      req.windowSeconds = windowSeconds(opts.window ?? (source.prometheus ? '1m' : '10s'));
      let result;
      try {
        // On stderr in every mode: a script can start its traffic once the first scrape is taken.
        result = await collectStat(source, req, (s) => process.stderr.write(`sampling ${source.describe} for ${s}s...\n`));
      } catch (err) {
        if (err instanceof ObserveError || err instanceof StatError) throw new CliError(err.message);
        throw err;
      }
      for (const w of result.warnings) process.stderr.write(`warning: not counted: ${w}\n`);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ kind: req.kind, windowSeconds: req.windowSeconds, source: source.describe, rows: result.rows }, null, 2)}\n`);
        return;
      }
      if (result.rows.length === 0) {
        process.stdout.write(`no ${req.kind} ${req.namespace ? `in namespace ${req.namespace} ` : ''}${req.from || req.to ? 'with traffic matching --from/--to ' : ''}(window ${req.windowSeconds}s, from ${source.describe})\n`);
        return;
      }
      process.stdout.write(`${table(STAT_HEADER, result.rows.map(statCells))}\n`);
    });
}
