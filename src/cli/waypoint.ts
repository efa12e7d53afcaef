/**
 * `ambit waypoint apply|list|delete` (the local cluster by default; also on a Kubernetes cluster
 * with `--kubeconfig FILE` or `--kube`, where the Gateway is written with server-side apply, the
 * controller runs the waypoint's Deployment, and `list` reads the Gateways, their Deployments and
 * what is bound to them from the API server) and `ambit waypoint run`
 * (the waypoint process itself, started by the runtime or the Deployment in the waypoint's pod).
 */
import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { RuntimeClient } from '../local/client.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { readState } from '../local/state.js';
import { TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION, USE_WAYPOINT, WAYPOINT_CLASS } from '../config/model.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { parseSamplingPercent, validateTracingOptions } from '../telemetry/tracing.js';
import { CliError } from './errors.js';
import { apiMessage, isSuccess, kubeRequest } from './kube.js';
import { KubeClient } from '../kube/client.js';
import { namespaceWithLabel } from './namespace.js';
import { table } from './format.js';
import { apply, printApply } from './local.js';

const clusterOption = () => new Option('--cluster <name>', 'the local cluster').default(DEFAULT_CLUSTER);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function checkName(flag: string, value: string): string {
  if (!DNS_LABEL.test(value) || value.length > 63) throw new CliError(`${flag} must be a DNS label (lower case letters, digits, '-'), got "${value}"`);
  return value;
}

/** The Gateway that declares a waypoint, as `ambit waypoint apply` writes it. */
export function waypointGateway(namespace: string, name: string, forWhat: string, tracing: { endpoint?: string; sampling?: string } = {}): Record<string, unknown> {
  const annotations = {
    ...(tracing.endpoint ? { [TRACING_ENDPOINT_ANNOTATION]: tracing.endpoint } : {}),
    ...(tracing.sampling !== undefined ? { [TRACING_SAMPLING_ANNOTATION]: tracing.sampling } : {}),
  };
  return {
    apiVersion: 'gateway.networking.k8s.io/v1',
    kind: 'Gateway',
    metadata: { name, namespace, labels: { 'ambit.dev/waypoint-for': forWhat }, ...(Object.keys(annotations).length > 0 ? { annotations } : {}) },
    spec: { gatewayClassName: WAYPOINT_CLASS, listeners: [{ name: 'mesh', port: 15008, protocol: 'HBONE' }] },
  };
}

interface KubeOpts { kubeconfig?: string; kube?: boolean }
interface ApplyOpts extends KubeOpts { namespace: string; name: string; for: string; enrollNamespace?: boolean; tracingEndpoint?: string; tracingSampling?: string; cluster: string }

/** The field manager of what `ambit waypoint apply` writes on a Kubernetes cluster. */
export const CLI_FIELD_MANAGER = 'ambit-cli';
const GATEWAY_PATH = (namespace: string, name: string) => `/apis/gateway.networking.k8s.io/v1/namespaces/${namespace}/gateways/${name}`;

/** The namespace label binding it to a waypoint, as a merge patch (its other labels stay). */
export function useWaypointPatch(name: string): { metadata: { labels: Record<string, string> } } {
  return { metadata: { labels: { [USE_WAYPOINT]: name } } };
}

async function applyOnKubernetes(opts: ApplyOpts, gateway: Record<string, unknown>): Promise<void> {
  const client = KubeClient.fromFile(opts.kubeconfig);
  const server = client.server;
  const ns = await kubeRequest(client, 'GET', `/api/v1/namespaces/${opts.namespace}`);
  if (ns.status === 404) throw new CliError(`namespace ${opts.namespace} does not exist in ${server}`);
  const res = await kubeRequest(client, 'PATCH', `${GATEWAY_PATH(opts.namespace, opts.name)}?fieldManager=${CLI_FIELD_MANAGER}&force=true`, gateway, 'application/apply-patch+yaml');
  if (res.status === 404) {
    const msg = apiMessage(res);
    if (/namespaces? /.test(msg)) throw new CliError(`namespace ${opts.namespace} does not exist in ${server}`);
    throw new CliError(`${server} does not serve gateway.networking.k8s.io/v1 Gateways: ${msg}`, 'install the Gateway API CRDs (see docs/KUBERNETES.md)');
  }
  if (!isSuccess(res)) throw new CliError(`could not apply waypoint ${opts.namespace}/${opts.name}: ${apiMessage(res)}`);
  process.stdout.write(`gateway.gateway.networking.k8s.io/${opts.name} applied\n`);
  if (opts.enrollNamespace || opts.for === 'namespace') {
    const label = await kubeRequest(client, 'PATCH', `/api/v1/namespaces/${opts.namespace}`, useWaypointPatch(opts.name), 'application/merge-patch+json');
    if (label.status === 404) throw new CliError(`namespace ${opts.namespace} does not exist in ${server}`);
    if (!isSuccess(label)) throw new CliError(`could not label namespace ${opts.namespace}: ${apiMessage(label)}`);
    process.stdout.write(`namespace/${opts.namespace} labelled ${USE_WAYPOINT}=${opts.name}\n`);
  }
}

async function deleteOnKubernetes(namespace: string, name: string, kubeconfig: string | undefined): Promise<void> {
  const client = KubeClient.fromFile(kubeconfig);
  const server = client.server;
  const res = await kubeRequest(client, 'DELETE', GATEWAY_PATH(namespace, name));
  if (res.status === 404) throw new CliError(`waypoint ${namespace}/${name} not found in ${server}`);
  if (!isSuccess(res)) throw new CliError(`could not delete waypoint ${namespace}/${name}: ${apiMessage(res)}`);
  process.stdout.write(`gateway.gateway.networking.k8s.io/${name} deleted\n`);
}

/** A table as `kubectl get` prints one: left-aligned columns two spaces apart; "no waypoints" when empty. */
function printWaypointTable(head: string[], rows: string[][]): void {
  if (rows.length === 0) {
    process.stdout.write('no waypoints\n');
    return;
  }
  process.stdout.write(`${table(head, rows)}\n`);
}

async function listLocal(opts: { namespace?: string; cluster: string }): Promise<void> {
  const layout = new ClusterLayout(opts.cluster);
  const state = readState(layout.stateFile);
  if (!state) throw new CliError(`cluster ${opts.cluster} does not exist`, 'ambit local up');
  const status = await new RuntimeClient(layout).request<{ pods: { namespace: string; name: string; ip: string; ready: string; phase: string }[] }>('GET', '/v1/status');
  const rows: string[][] = [];
  for (const r of Object.values(state.resources)) {
    if (r.kind !== 'Gateway' || (r.raw.spec as { gatewayClassName?: string } | undefined)?.gatewayClassName !== WAYPOINT_CLASS) continue;
    if (opts.namespace && r.meta.namespace !== opts.namespace) continue;
    const pod = status.pods.find((p) => p.namespace === r.meta.namespace && p.name === `${r.meta.name}-waypoint`);
    const bound = Object.values(state.resources)
      .filter((x) => (x.kind === 'Service' && x.meta.namespace === r.meta.namespace) || (x.kind === 'Namespace' && x.meta.name === r.meta.namespace))
      .filter((x) => x.meta.labels[USE_WAYPOINT] === r.meta.name)
      .map((x) => (x.kind === 'Namespace' ? `namespace ${x.meta.name}` : `service ${x.meta.name}`));
    rows.push([r.meta.namespace, r.meta.name, pod ? `${pod.phase} ${pod.ready}` : 'no pod', pod?.ip ?? '-', bound.join(', ') || '-']);
  }
  printWaypointTable(['NAMESPACE', 'NAME', 'POD', 'IP', 'BOUND'], rows);
}

interface KubeMeta { name?: string; namespace?: string; labels?: Record<string, string> }
interface KubeGateway { metadata?: KubeMeta; spec?: { gatewayClassName?: string }; status?: { conditions?: { type?: string; status?: string }[] } }
interface KubeList<T> { items?: T[] }

/** A condition's status (True, False, Unknown), or "-" when the Gateway has none of that type yet. */
function conditionStatus(gw: KubeGateway, type: string): string {
  return gw.status?.conditions?.find((c) => c.type === type)?.status ?? '-';
}

/**
 * The waypoints of a Kubernetes cluster: each ambit-waypoint Gateway with its Deployment's ready
 * replicas (the controller names it like the Gateway, src/install/waypoint.ts), its Accepted and
 * Programmed conditions, and the Services and Namespace labelled to use it.
 */
async function listOnKubernetes(namespace: string | undefined, kubeconfig: string | undefined): Promise<void> {
  const client = KubeClient.fromFile(kubeconfig);
  const server = client.server;
  const gatewaysPath = namespace ? `/apis/gateway.networking.k8s.io/v1/namespaces/${namespace}/gateways` : '/apis/gateway.networking.k8s.io/v1/gateways';
  const res = await kubeRequest(client, 'GET', gatewaysPath);
  if (res.status === 404) throw new CliError(`${server} does not serve gateway.networking.k8s.io/v1 Gateways: ${apiMessage(res)}`, 'install the Gateway API CRDs (see docs/KUBERNETES.md)');
  if (!isSuccess(res)) throw new CliError(`could not list Gateways: ${apiMessage(res)}`);
  const gateways = ((res.body as KubeList<KubeGateway> | undefined)?.items ?? [])
    .filter((g) => g.spec?.gatewayClassName === WAYPOINT_CLASS && g.metadata?.name && g.metadata.namespace)
    .sort((a, b) => `${a.metadata!.namespace}/${a.metadata!.name}`.localeCompare(`${b.metadata!.namespace}/${b.metadata!.name}`));
  const warnings: string[] = [];
  const namespaces = [...new Set(gateways.map((g) => g.metadata!.namespace!))];
  // Per namespace: its labels and its Services bound to some waypoint; per Gateway: its Deployment. All at once.
  const [bindings, deployments] = await Promise.all([
    Promise.all(namespaces.map(async (ns) => {
      const [nsRes, svcRes] = await Promise.all([
        kubeRequest(client, 'GET', `/api/v1/namespaces/${ns}`),
        kubeRequest(client, 'GET', `/api/v1/namespaces/${ns}/services?labelSelector=${encodeURIComponent(USE_WAYPOINT)}`),
      ]);
      if (!isSuccess(nsRes) && nsRes.status !== 404) warnings.push(`could not read namespace ${ns}: ${apiMessage(nsRes)}`);
      if (!isSuccess(svcRes)) warnings.push(`could not list the services of ${ns}: ${apiMessage(svcRes)}`);
      const nsLabels = isSuccess(nsRes) ? (nsRes.body as { metadata?: KubeMeta } | undefined)?.metadata?.labels ?? {} : {};
      const services = isSuccess(svcRes) ? (svcRes.body as KubeList<{ metadata?: KubeMeta }> | undefined)?.items ?? [] : [];
      return { ns, nsLabels, services };
    })),
    Promise.all(gateways.map(async (g) => {
      const { name, namespace: ns } = g.metadata!;
      const d = await kubeRequest(client, 'GET', `/apis/apps/v1/namespaces/${ns}/deployments/${name}`);
      if (d.status === 404) return 'no deployment';
      if (!isSuccess(d)) {
        warnings.push(`could not read deployment ${ns}/${name}: ${apiMessage(d)}`);
        return 'unknown';
      }
      const dep = d.body as { spec?: { replicas?: number }; status?: { readyReplicas?: number; replicas?: number } } | undefined;
      return `${dep?.status?.readyReplicas ?? 0}/${dep?.spec?.replicas ?? dep?.status?.replicas ?? 1}`;
    })),
  ]);
  const rows = gateways.map((g, i) => {
    const { name, namespace: ns } = g.metadata as Required<Pick<KubeMeta, 'name' | 'namespace'>>;
    const b = bindings.find((x) => x.ns === ns)!;
    const bound = [
      ...(b.nsLabels[USE_WAYPOINT] === name ? [`namespace ${ns}`] : []),
      ...b.services
        .filter((s) => s.metadata?.labels?.[USE_WAYPOINT] === name)
        .map((s) => `service ${s.metadata?.name ?? '?'}`)
        .sort(),
    ];
    return [ns, name, deployments[i]!, conditionStatus(g, 'Accepted'), conditionStatus(g, 'Programmed'), bound.join(', ') || '-'];
  });
  printWaypointTable(['NAMESPACE', 'NAME', 'READY', 'ACCEPTED', 'PROGRAMMED', 'BOUND'], rows);
  for (const w of warnings) process.stderr.write(`ambit: ${w}\n`);
}

/** Tracing flags, checked as the waypoint will read them. */
function tracingOptions(endpoint: string | undefined, sampling: string | undefined): { endpoint?: string; samplingPercent?: number } {
  try {
    const o = validateTracingOptions({ serviceName: 'waypoint', ...(endpoint !== undefined ? { endpoint } : {}), ...(sampling !== undefined ? { samplingPercent: parseSamplingPercent(sampling) } : {}) });
    return { ...(o.endpoint ? { endpoint: o.endpoint } : {}), ...(o.samplingPercent !== undefined ? { samplingPercent: o.samplingPercent } : {}) };
  } catch (err) {
    throw new CliError(`${(err as Error).message} (--tracing-endpoint / --tracing-sampling)`);
  }
}

export function register(program: Command): void {
  const waypoint = program.command('waypoint').description('L7 proxies that services and namespaces opt into');

  waypoint.command('apply')
    .description('declare a waypoint (a Gateway of class ambit-waypoint) and run it')
    .requiredOption('-n, --namespace <ns>', 'the waypoint\'s namespace')
    .option('--name <name>', 'the waypoint\'s name', 'waypoint')
    .addOption(new Option('--for <what>', `what it serves: services that opt in with the label ${USE_WAYPOINT}, or the whole namespace (bound at once)`).choices(['service', 'namespace']).default('service'))
    .option('--enroll-namespace', `bind the namespace to it (label ${USE_WAYPOINT}), as --for namespace does`)
    .option('--tracing-endpoint <url>', 'OTLP/HTTP collector the waypoint exports spans to (e.g. http://otel-collector.observability:4318)')
    .option('--tracing-sampling <percent>', 'share of new traces recorded, 0-100 (default 1; a caller\'s sampled decision is kept)')
    .addOption(clusterOption())
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
    .action(async (opts: ApplyOpts) => {
      checkName('--namespace', opts.namespace);
      checkName('--name', opts.name);
      tracingOptions(opts.tracingEndpoint, opts.tracingSampling);
      const gateway = waypointGateway(opts.namespace, opts.name, opts.for, { ...(opts.tracingEndpoint ? { endpoint: opts.tracingEndpoint } : {}), ...(opts.tracingSampling !== undefined ? { sampling: opts.tracingSampling } : {}) });
      if (opts.kubeconfig || opts.kube) return applyOnKubernetes(opts, gateway);
      const layout = new ClusterLayout(opts.cluster);
      const docs: Record<string, unknown>[] = [gateway];
      // A waypoint for a namespace binds it; one for services waits for each service's label.
      if (opts.enrollNamespace || opts.for === 'namespace') {
        docs.unshift(namespaceWithLabel(opts.cluster, opts.namespace, USE_WAYPOINT, opts.name));
      }
      const text = docs.map((d) => stringify(d)).join('---\n');
      printApply(await apply(new RuntimeClient(layout), 'apply', [{ file: `waypoint ${opts.namespace}/${opts.name}`, text, dir: process.cwd() }]));
    });

  waypoint.command('list')
    .description('the waypoints, and the services and namespaces bound to them')
    .option('-n, --namespace <ns>', 'only this namespace')
    .addOption(clusterOption())
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
    .action(async (opts: { namespace?: string; cluster: string } & KubeOpts) => {
      if (opts.kubeconfig || opts.kube) {
        if (opts.namespace !== undefined) checkName('--namespace', opts.namespace);
        return listOnKubernetes(opts.namespace, opts.kubeconfig);
      }
      return listLocal(opts);
    });

  waypoint.command('run', { hidden: true })
    .description('the waypoint process (the runtime starts it in the waypoint\'s pod)')
    .requiredOption('--name <ns/name>', 'the waypoint (its Gateway)')
    .requiredOption('--controller <host:port>', 'the controller (CA and discovery)')
    .requiredOption('--token-file <file>', 'the waypoint\'s credential')
    .requiredOption('--ca-file <file>', 'PEM roots that verify the controller')
    .option('--listen <host:port>', 'HBONE listener', '0.0.0.0:15008')
    .option('--trust-domain <domain>', 'SPIFFE trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--tracing-endpoint <url>', 'OTLP/HTTP collector for spans')
    .option('--tracing-sampling <percent>', 'share of new traces recorded, 0-100')
    .action(async (opts: { name: string; controller: string; tokenFile: string; caFile: string; listen: string; trustDomain: string; tracingEndpoint?: string; tracingSampling?: string }) => {
      const m = /^([a-z0-9-]+)\/([a-z0-9-]+)$/.exec(opts.name);
      if (!m) throw new CliError(`--name must be NAMESPACE/NAME, got "${opts.name}"`);
      const l = /^\[?([^\]]*)\]?:(\d+)$/.exec(opts.listen);
      if (!l || Number(l[2]) > 65535) throw new CliError(`--listen must be HOST:PORT, got "${opts.listen}"`);
      const tracing = tracingOptions(opts.tracingEndpoint, opts.tracingSampling);
      const { startWaypointApp } = await import('../waypoint/app.js');
      const app = await startWaypointApp({
        namespace: m[1]!, name: m[2]!, trustDomain: opts.trustDomain, controller: opts.controller, tokenFile: opts.tokenFile, caFile: opts.caFile,
        listen: { host: l[1]!, port: Number(l[2]) }, ...(tracing ? { tracing } : {}),
      });
      const stop = () => void app.stop().finally(() => process.exit(0));
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      await new Promise(() => { /* serves until a signal */ });
    });

  waypoint.command('delete')
    .description('remove a waypoint (bound services then fail closed until it is back or unbound)')
    .argument('<name>')
    .requiredOption('-n, --namespace <ns>', 'the waypoint\'s namespace')
    .addOption(clusterOption())
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
    .action(async (name: string, opts: { namespace: string; cluster: string } & KubeOpts) => {
      checkName('NAME', name);
      checkName('--namespace', opts.namespace);
      if (opts.kubeconfig || opts.kube) return deleteOnKubernetes(opts.namespace, name, opts.kubeconfig);
      const layout = new ClusterLayout(opts.cluster);
      const text = stringify(waypointGateway(opts.namespace, name, 'service'));
      const result = await apply(new RuntimeClient(layout), 'delete', [{ file: `waypoint ${opts.namespace}/${name}`, text, dir: process.cwd() }]) as Awaited<ReturnType<typeof apply>> & { notFound: string[] };
      printApply(result);
      if (result.notFound.length > 0) throw new CliError(`waypoint ${opts.namespace}/${name} not found`);
    });
}
