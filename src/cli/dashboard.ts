/**
 * `ambit dashboard`: the web UI of src/dashboard on 127.0.0.1, fed by the local cluster (its
 * runtime's status, the node agents' and waypoints' /metrics from inside its namespaces, the
 * agents' proxy-config views, the access-log files) or by Kubernetes (the API server and its pod
 * proxy). On the local cluster it also receives OTLP/HTTP spans on the cluster's own address
 * (172.30.0.1:4318), which waypoints can reach: `ambit waypoint apply --tracing-endpoint
 * http://172.30.0.1:4318 --tracing-sampling 100`.
 */
import { closeSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import type { PolicyItem, ServiceItem, WorkloadItem } from '../api/proxy-config.js';
import { WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import { Dashboard, type DashboardSource, type WorkloadDetails } from '../dashboard/server.js';
import { listenInNetns } from '../host/netns.js';
import { KubeClient } from '../kube/client.js';
import { RuntimeClient } from '../local/client.js';
import { ClusterLayout, DEFAULT_CLUSTER, UNDERLAY_GATEWAY } from '../local/layout.js';
import type { ClusterStatus } from '../local/runtime.js';
import type { InventoryPod } from '../observe/stat.js';
import { logger } from '../telemetry/log.js';
import { CliError } from './errors.js';
import { fromLocal } from './proxy-config.js';
import { kubeSource, localInventory, localWaypoints } from './stat.js';
import { localTargets } from '../local/metrics-targets.js';

export const OTLP_PORT = 4318;
const LOG_READ_MAX = 1024 * 1024;
const LOG_BACKLOG = 32 * 1024;

/** Whether an AuthorizationPolicy or PeerAuthentication applies to a workload with these pods' labels. */
export function policySelects(p: PolicyItem, namespace: string, labels: ReadonlyArray<Record<string, string>>, waypoint: { namespace: string; name: string } | null): boolean {
  if (p.scope === 'global') return true;
  if (p.namespace !== namespace && p.scope !== 'waypoint') return false;
  if (p.scope === 'namespace') return true;
  if (p.scope === 'workload') return labels.some((l) => Object.entries(p.selector ?? {}).every(([k, v]) => l[k] === v));
  return waypoint !== null && p.namespace === waypoint.namespace;
}

/** Reads what was appended to a set of files since the last call (the first call: their last 32 kB). */
export class FileTails {
  private readonly offsets = new Map<string, number>();

  read(files: readonly string[]): string[] {
    const lines: string[] = [];
    for (const file of files) {
      let size: number;
      try {
        size = statSync(file).size;
      } catch {
        continue;
      }
      let from = this.offsets.get(file) ?? Math.max(0, size - LOG_BACKLOG);
      if (size < from) from = 0; // truncated or replaced
      const length = Math.min(size - from, LOG_READ_MAX);
      if (length <= 0) continue;
      const buf = Buffer.alloc(length);
      const fd = openSync(file, 'r');
      try {
        readSync(fd, buf, 0, length, from);
      } finally {
        closeSync(fd);
      }
      const text = buf.toString('utf8');
      const end = text.lastIndexOf('\n');
      if (end < 0) continue;
      // Only whole lines; the first one after a mid-file start may be partial and is dropped.
      const whole = text.slice(0, end).split('\n');
      if (!this.offsets.has(file) && from > 0) whole.shift();
      lines.push(...whole);
      this.offsets.set(file, from + Buffer.byteLength(text.slice(0, end + 1)));
    }
    return lines;
  }
}

export function localDashboardSource(cluster: string): DashboardSource {
  const layout = new ClusterLayout(cluster);
  const client = new RuntimeClient(layout);
  let status: ClusterStatus | undefined;
  let inventory: InventoryPod[] = [];
  const tails = new FileTails();
  return {
    cluster,
    describe: `the node agents' and waypoints' /metrics of local cluster ${cluster}`,
    inventory: async () => {
      status = await client.request<ClusterStatus>('GET', '/v1/status');
      inventory = localInventory(status);
      return { pods: inventory, waypoints: localWaypoints(status) };
    },
    targets: async () => (status ? localTargets(layout, status) : []),
    details: async (namespace, workload): Promise<WorkloadDetails> => {
      const pods = inventory.filter((p) => p.namespace === namespace && p.workload === workload);
      const placed = new Map((status?.pods ?? []).map((p) => [`${p.namespace}/${p.name}`, p]));
      const node = placed.get(`${namespace}/${pods[0]?.name}`)?.node ?? status?.nodes[0]?.name;
      if (!node) return { identities: [], waypoint: null, policies: [], pods: [] };
      const [workloads, policies, services] = await Promise.all([fromLocal('workloads', node, cluster), fromLocal('policies', node, cluster), fromLocal('services', node, cluster)]);
      const items = (workloads.items as WorkloadItem[]).filter((w) => w.namespace === namespace && pods.some((p) => p.name === w.name));
      // Its own binding, else that of a service it backs (a namespace's use-waypoint binds its services).
      const backs = new Set(pods.flatMap((p) => p.services));
      const wp = items.find((w) => w.waypoint)?.waypoint
        ?? (services.items as ServiceItem[]).find((s) => s.namespace === namespace && backs.has(s.name) && s.waypoint)?.waypoint ?? null;
      return {
        identities: [...new Set(items.map((w) => w.identity))],
        waypoint: wp ? `${wp.namespace}/${wp.name}` : null,
        policies: (policies.items as PolicyItem[]).filter((p) => policySelects(p, namespace, pods.map((x) => x.labels ?? {}), wp))
          .map((p) => ({ namespace: p.namespace, name: p.name, kind: p.kind, scope: p.scope, action: p.action, rules: p.rules })),
        pods: pods.map((p) => {
          const at = placed.get(`${p.namespace}/${p.name}`);
          return { name: p.name, meshed: p.meshed, ...(at ? { node: at.node, ip: at.ip } : {}) };
        }),
      };
    },
    accessLog: async () => {
      const files = (status?.nodes ?? []).map((n) => layout.componentLog(`node-agent.${n.name}`));
      for (const p of status?.pods ?? []) {
        if (p.labels?.[WAYPOINT_GATEWAY_LABEL] === undefined) continue;
        try {
          for (const f of readdirSync(layout.podDir(p.namespace, p.name))) if (f.endsWith('.log')) files.push(join(layout.podDir(p.namespace, p.name), f));
        } catch { /* not started yet */ }
      }
      return tails.read(files);
    },
  };
}

/** Kubernetes: the inventory and metrics of `ambit stat`'s source; details from the inventory alone. */
export function kubeDashboardSource(client: KubeClient, ambitNamespace: string): DashboardSource {
  const stat = kubeSource(client, ambitNamespace, undefined);
  let pods: InventoryPod[] = [];
  return {
    cluster: client.server,
    describe: stat.describe,
    inventory: async () => {
      pods = await stat.inventory();
      return { pods, waypoints: await stat.waypoints() };
    },
    targets: () => stat.targets(),
    details: async (namespace, workload) => ({
      identities: [],
      waypoint: null,
      policies: [],
      pods: pods.filter((p) => p.namespace === namespace && p.workload === workload).map((p) => ({ name: p.name, meshed: p.meshed })),
    }),
  };
}

export function register(program: Command): void {
  program.command('dashboard')
    .description('a web UI on 127.0.0.1: the service graph (RPS, success, p99, mTLS), each workload\'s golden signals, identity, waypoint and policies, traces, the live access log')
    .option('--port <port>', 'the port on 127.0.0.1 (0: any free one)', '0')
    .option('--interval <seconds>', 'seconds between samples of the proxies\' metrics', '5')
    .option('--window <seconds>', 'seconds the graph\'s figures cover', '60')
    .option('--cluster <name>', 'the local cluster', DEFAULT_CLUSTER)
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
    .option('--ambit-namespace <ns>', 'where ambit is installed on Kubernetes', 'ambit-system')
    .option('--no-otlp', 'on the local cluster, do not receive spans on its address')
    .action(async (opts: { port: string; interval: string; window: string; cluster: string; kubeconfig?: string; kube?: boolean; ambitNamespace: string; otlp: boolean }) => {
      const number = (flag: string, text: string, min: number, max: number) => {
        const n = Number(text);
        if (!Number.isInteger(n) || n < min || n > max) throw new CliError(`${flag} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
        return n;
      };
      const port = number('--port', opts.port, 0, 65535);
      const intervalSeconds = number('--interval', opts.interval, 1, 300);
      const windowSeconds = number('--window', opts.window, intervalSeconds, 3600);
      const onKube = opts.kubeconfig !== undefined || opts.kube === true;
      if (!onKube) {
        const layout = new ClusterLayout(opts.cluster);
        await new RuntimeClient(layout).request<ClusterStatus>('GET', '/v1/status');
      }
      const source = onKube ? kubeDashboardSource(KubeClient.fromFile(opts.kubeconfig), opts.ambitNamespace) : localDashboardSource(opts.cluster);
      const dashboard = new Dashboard({ source, log: logger('dashboard'), intervalSeconds, windowSeconds });
      await dashboard.start();
      const { url } = await dashboard.listen('127.0.0.1', port);
      process.stdout.write(`ambit dashboard: ${url}\n`);
      if (!onKube && opts.otlp) {
        const underlay = `/run/netns/${new ClusterLayout(opts.cluster).underlayNetns}`;
        try {
          dashboard.listenOtlpFd(listenInNetns(underlay, UNDERLAY_GATEWAY, OTLP_PORT));
          process.stdout.write(`traces: OTLP/HTTP JSON on http://${UNDERLAY_GATEWAY}:${OTLP_PORT}/v1/traces inside the cluster (ambit waypoint apply ... --tracing-endpoint http://${UNDERLAY_GATEWAY}:${OTLP_PORT})\n`);
        } catch (err) {
          process.stderr.write(`warning: no OTLP receiver in the cluster (${(err as Error).message}); spans can still be POSTed to ${url}v1/traces\n`);
        }
      }
      process.stdout.write('Ctrl-C stops it.\n');
      await new Promise<void>((resolve) => {
        for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
      });
      await dashboard.close();
    });
}
