/**
 * `ambit canary status|promote|abort [-n NS] [NAME]`: the Canaries the controller runs, on the
 * local cluster or Kubernetes. `status` shows each one's phase, weight, failed checks against its
 * threshold, the last check's figures against their ranges, and its history (the events the
 * controller recorded). `promote` skips what is left of the analysis and promotes now; `abort`
 * rolls back now. Both set the `ambit.dev/canary-action` annotation, which the controller acts on
 * at once and then removes.
 */
import { Argument, Command } from 'commander';
import { CANARY_ACTION_ANNOTATION, canaryObject, type CanaryObject, type CanaryStatus } from '../canary/controller.js';
import { readCanarySpec } from '../canary/spec.js';
import { KubeClient } from '../kube/client.js';
import { RuntimeClient } from '../local/client.js';
import { readCanaryEvents, readCanaryStatus, type CanaryEventRecord } from '../local/canary-cluster.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { readState } from '../local/state.js';
import { CliError } from './errors.js';
import { age, table } from './format.js';
import { apiMessage, isSuccess, kubeRequest } from './kube.js';

interface CanaryView { object: CanaryObject; raw: Record<string, unknown>; events: CanaryEventRecord[] }

/** Where canaries are read and annotated: the local cluster's state and runtime, or an API server. */
interface CanarySource {
  list(namespace: string | undefined): Promise<CanaryView[]>;
  annotate(view: CanaryView, action: 'promote' | 'abort'): Promise<void>;
}

function localSource(cluster: string): CanarySource {
  const layout = new ClusterLayout(cluster);
  return {
    list(namespace) {
      const state = readState(layout.stateFile);
      if (!state) throw new CliError(`cluster ${cluster} does not exist`, `create it: ambit local up --cluster ${cluster}`);
      return Promise.resolve(Object.values(state.resources)
        .filter((r) => r.kind === 'Canary' && r.apiVersion.startsWith('flagger.app/') && (namespace === undefined || r.meta.namespace === namespace))
        .flatMap((r) => {
          const object = canaryObject(r.raw as Record<string, unknown>);
          if (!object) return [];
          const status = readCanaryStatus(layout.stateDir, object.namespace, object.name);
          return [{ object: status ? { ...object, status } : object, raw: r.raw as Record<string, unknown>, events: readCanaryEvents(layout.stateDir, object.namespace, object.name) }];
        }));
    },
    async annotate(view, action) {
      const raw = structuredClone(view.raw) as { metadata: { annotations?: Record<string, string> } };
      raw.metadata.annotations = { ...raw.metadata.annotations, [CANARY_ACTION_ANNOTATION]: action };
      await new RuntimeClient(layout).request('POST', '/v1/apply', { inputs: [{ file: `ambit canary ${action}`, text: JSON.stringify(raw), dir: layout.stateDir }] });
    },
  };
}

function kubeSource(client: KubeClient): CanarySource {
  return {
    async list(namespace) {
      const path = namespace ? `/apis/flagger.app/v1beta1/namespaces/${encodeURIComponent(namespace)}/canaries` : '/apis/flagger.app/v1beta1/canaries';
      const res = await kubeRequest(client, 'GET', path);
      if (res.status === 404) throw new CliError('the API server does not serve flagger.app/v1beta1 canaries', 'install Flagger\'s CustomResourceDefinitions (docs/CANARY.md)');
      if (!isSuccess(res)) throw new CliError(`listing canaries: ${apiMessage(res)}`);
      const items = ((res.body as { items?: Record<string, unknown>[] }).items ?? []);
      return Promise.all(items.flatMap((raw) => {
        const object = canaryObject(raw);
        return object ? [(async () => {
          const selector = `involvedObject.kind=Canary,involvedObject.name=${object.name}`;
          const ev = await kubeRequest(client, 'GET', `/api/v1/namespaces/${encodeURIComponent(object.namespace)}/events?fieldSelector=${encodeURIComponent(selector)}`);
          const events = isSuccess(ev) ? ((ev.body as { items?: { lastTimestamp?: string; eventTime?: string; metadata?: { creationTimestamp?: string }; type?: string; reason?: string; message?: string }[] }).items ?? [])
            .map((e) => ({ at: e.lastTimestamp ?? e.eventTime ?? e.metadata?.creationTimestamp ?? '', type: (e.type === 'Warning' ? 'Warning' : 'Normal') as CanaryEventRecord['type'], reason: e.reason ?? '', message: e.message ?? '' }))
            .sort((a, b) => a.at.localeCompare(b.at)) : [];
          return { object, raw, events };
        })()] : [];
      }));
    },
    async annotate(view, action) {
      const path = `/apis/flagger.app/v1beta1/namespaces/${encodeURIComponent(view.object.namespace)}/canaries/${encodeURIComponent(view.object.name)}`;
      const res = await kubeRequest(client, 'PATCH', path, { metadata: { annotations: { [CANARY_ACTION_ANNOTATION]: action } } }, 'application/merge-patch+json');
      if (!isSuccess(res)) throw new CliError(`annotating canary ${view.object.namespace}/${view.object.name}: ${apiMessage(res)}`);
    },
  };
}

const fmtCheck = (s: CanaryStatus | undefined): string => (s?.lastCheck
  ? s.lastCheck.results.map((r) => `${r.metric} ${r.value === null ? 'no data' : r.metric === 'request-success-rate' ? `${r.value.toFixed(2)}%` : `${r.value.toFixed(0)}ms`}${r.min !== undefined ? ` (min ${r.min})` : ''}${r.max !== undefined ? ` (max ${r.max})` : ''} ${r.passed ? 'ok' : 'FAILED'}`).join(', ')
  : '-');

function statusText(views: CanaryView[], detail: boolean): string {
  const rows = views.map((v) => {
    const s = v.object.status;
    const spec = readCanarySpec(v.object.spec, 0);
    const max = spec.iterations !== undefined ? `${s?.iterations ?? 0}/${spec.iterations} iterations` : `${s?.canaryWeight ?? 0}/${spec.weights.at(-1) ?? 0}`;
    return [v.object.namespace, v.object.name, s?.phase ?? 'Pending', max, `${s?.failedChecks ?? 0}/${spec.threshold}`, s ? age(s.lastTransitionTime) : '-', s?.conditions[0]?.message ?? 'not picked up by the controller yet'];
  });
  let out = table(['NAMESPACE', 'NAME', 'PHASE', 'WEIGHT', 'FAILED', 'SINCE', 'MESSAGE'], rows);
  if (detail) {
    for (const v of views) {
      out += `\n${v.object.namespace}/${v.object.name}\n  last check: ${fmtCheck(v.object.status)}${v.object.status?.lastCheck ? ` (${age(v.object.status.lastCheck.at)} ago)` : ''}\n  history:\n`;
      const events = v.events.slice(-20);
      out += events.length === 0 ? '    (none)\n' : events.map((e) => `    ${e.at}  ${e.type === 'Warning' ? 'Warning' : 'Normal '}  ${e.message}`).join('\n') + '\n';
    }
  }
  return out;
}

export function register(program: Command): void {
  const canary = program.command('canary').description('Flagger Canaries the controller runs: their status, and promoting or aborting one now');
  const common = (c: Command) => c
    .option('-n, --namespace <ns>', 'the canary\'s namespace (status: only this namespace)')
    .option('--cluster <name>', 'the local cluster', DEFAULT_CLUSTER)
    .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
    .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config');
  type Opts = { namespace?: string; cluster: string; kubeconfig?: string; kube?: boolean; json?: boolean };
  const sourceOf = (o: Opts): CanarySource => (o.kubeconfig !== undefined || o.kube === true ? kubeSource(KubeClient.fromFile(o.kubeconfig)) : localSource(o.cluster));

  common(canary.command('status'))
    .description('phase, weight, failed checks, the last check\'s figures against their thresholds, and history')
    .addArgument(new Argument('[name]', 'one canary (its history is shown)'))
    .option('--json', 'machine-readable output')
    .action(async (name: string | undefined, o: Opts) => {
      const views = (await sourceOf(o).list(o.namespace)).filter((v) => name === undefined || v.object.name === name);
      if (name !== undefined && views.length === 0) throw new CliError(`no canary ${name}${o.namespace ? ` in namespace ${o.namespace}` : ''}`);
      if (o.json) return void process.stdout.write(`${JSON.stringify(views.map((v) => ({ namespace: v.object.namespace, name: v.object.name, status: v.object.status ?? null, events: v.events })), null, 2)}\n`);
      process.stdout.write(views.length === 0 ? 'no canaries\n' : statusText(views, name !== undefined));
    });

  for (const action of ['promote', 'abort'] as const) {
    common(canary.command(action))
      .description(action === 'promote' ? 'promote the canary now, skipping what is left of its analysis' : 'roll the canary back now: all traffic to the primary, the canary scaled to 0')
      .addArgument(new Argument('<name>', 'the canary'))
      .action(async (name: string, o: Opts) => {
        const source = sourceOf(o);
        const views = (await source.list(o.namespace)).filter((v) => v.object.name === name);
        if (views.length === 0) throw new CliError(`no canary ${name}${o.namespace ? ` in namespace ${o.namespace}` : ''}`);
        if (views.length > 1) throw new CliError(`canaries named ${name} are in several namespaces (${views.map((v) => v.object.namespace).join(', ')}): give -n`);
        const view = views[0]!;
        const phase = view.object.status?.phase;
        if (phase !== 'Progressing' && phase !== 'Waiting' && phase !== 'WaitingPromotion') {
          throw new CliError(`canary ${view.object.namespace}/${name} is ${phase ?? 'not started'}: only a canary under analysis (Progressing, Waiting, WaitingPromotion) can be ${action === 'promote' ? 'promoted' : 'aborted'}`);
        }
        await source.annotate(view, action);
        process.stdout.write(`canary ${view.object.namespace}/${name}: ${action} requested (the controller acts on it at once)\n`);
      });
  }
}
