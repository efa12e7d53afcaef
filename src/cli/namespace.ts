/**
 * `ambit namespace enable|disable NS`: a namespace into or out of ambient mode, by its label
 * `ambit.dev/dataplane-mode: ambient`. Against the local cluster by default (`--cluster`), or a
 * Kubernetes cluster with `--kubeconfig FILE` (or `--kube` for $KUBECONFIG / ~/.kube/config):
 * there a merge patch on the Namespace, which the node agents see through the controller.
 * Pods labelled `ambit.dev/dataplane-mode: none` stay out either way.
 */
import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { DATAPLANE_MODE } from '../config/model.js';
import { RuntimeClient } from '../local/client.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { readState } from '../local/state.js';
import { CliError } from './errors.js';
import { apiMessage, isSuccess, kubeRequest } from './kube.js';
import { KubeClient } from '../kube/client.js';
import { apply, printApply } from './local.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface Opts { cluster: string; kubeconfig?: string; kube?: boolean }

/** The label change, as a merge patch: `null` removes the label. */
export function dataplanePatch(enable: boolean): { metadata: { labels: Record<string, string | null> } } {
  return { metadata: { labels: { [DATAPLANE_MODE]: enable ? 'ambient' : null } } };
}

async function onKubernetes(name: string, enable: boolean, kubeconfig: string | undefined): Promise<void> {
  const client = KubeClient.fromFile(kubeconfig);
  const res = await kubeRequest(client, 'PATCH', `/api/v1/namespaces/${name}`, dataplanePatch(enable), 'application/merge-patch+json');
  if (res.status === 404) throw new CliError(`namespace ${name} does not exist in ${client.server}`);
  if (!isSuccess(res)) throw new CliError(`could not label namespace ${name}: ${apiMessage(res)}`);
  process.stdout.write(`namespace/${name} ${enable ? 'enabled (ambient)' : 'disabled'}\n`);
}

/**
 * A local cluster's namespace as it is, with one label set (or removed, `value` undefined), to
 * apply: applying it must not drop its other labels.
 */
export function namespaceWithLabel(cluster: string, name: string, key: string, value: string | undefined): Record<string, unknown> {
  const state = readState(new ClusterLayout(cluster).stateFile);
  if (!state) throw new CliError(`cluster ${cluster} does not exist`, 'ambit local up');
  const ns = state.resources[`Namespace/${name}`];
  if (!ns) throw new CliError(`namespace ${name} does not exist in cluster ${cluster}`);
  const meta = (ns.raw.metadata ?? {}) as Record<string, unknown>;
  const labels = { ...(meta.labels as Record<string, string> | undefined) };
  if (value === undefined) delete labels[key];
  else labels[key] = value;
  return { ...ns.raw, metadata: { ...meta, labels } };
}

async function onLocal(name: string, enable: boolean, cluster: string): Promise<void> {
  const doc = namespaceWithLabel(cluster, name, DATAPLANE_MODE, enable ? 'ambient' : undefined);
  printApply(await apply(new RuntimeClient(new ClusterLayout(cluster)), 'apply', [{ file: `namespace ${name}`, text: stringify(doc), dir: process.cwd() }]));
}

export function register(program: Command): void {
  const namespace = program.command('namespace').description('namespaces into or out of ambient mode');
  for (const [verb, enable] of [['enable', true], ['disable', false]] as const) {
    namespace.command(verb)
      .description(enable ? `label a namespace ${DATAPLANE_MODE}: ambient (its pods join the mesh)` : `remove the ${DATAPLANE_MODE} label (its pods leave the mesh)`)
      .argument('<namespace>')
      .addOption(new Option('--cluster <name>', 'the local cluster').default(DEFAULT_CLUSTER))
      .option('--kubeconfig <file>', 'a Kubernetes cluster instead of the local one')
      .option('--kube', 'a Kubernetes cluster from $KUBECONFIG or ~/.kube/config')
      .action(async (name: string, opts: Opts) => {
        if (!DNS_LABEL.test(name) || name.length > 63) throw new CliError(`namespace must be a DNS label (lower case letters, digits, '-'), got "${name}"`);
        if (opts.kubeconfig || opts.kube) await onKubernetes(name, enable, opts.kubeconfig);
        else await onLocal(name, enable, opts.cluster);
      });
  }
}
