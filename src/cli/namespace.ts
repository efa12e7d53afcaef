/**
 * `ambit namespace enable|disable NS`: a namespace into or out of ambient mode, by its label
 * `ambit.dev/dataplane-mode: ambient`. Against the local cluster by default (`--cluster`), or a
 * Kubernetes cluster with `--kubeconfig FILE` (or `--kube` for $KUBECONFIG / ~/.kube/config):
 * there a merge patch on the Namespace, which the node agents see through the controller.
 * Pods labelled `ambit.dev/dataplane-mode: none` stay out either way.
 */
import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { DATAPLANE_MODE } from '../control/model.js';
import { RuntimeClient } from '../local/client.js';
import { ClusterLayout, DEFAULT_CLUSTER } from '../local/layout.js';
import { readState } from '../local/state.js';
import { CliError } from './errors.js';
import { apply, printApply } from './local.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface Opts { cluster: string; kubeconfig?: string; kube?: boolean }

/** The label change, as a merge patch: `null` removes the label. */
export function dataplanePatch(enable: boolean): { metadata: { labels: Record<string, string | null> } } {
  return { metadata: { labels: { [DATAPLANE_MODE]: enable ? 'ambient' : null } } };
}

async function onKubernetes(name: string, enable: boolean, kubeconfig: string | undefined): Promise<void> {
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  try {
    if (kubeconfig) config.loadFromFile(kubeconfig);
    else config.loadFromDefault();
  } catch (err) {
    throw new CliError(`cannot read the kubeconfig${kubeconfig ? ` ${kubeconfig}` : ''}: ${(err as Error).message}`);
  }
  const api = config.makeApiClient(k8s.CoreV1Api);
  try {
    await api.patchNamespace({ name, body: dataplanePatch(enable) }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (code === 404) throw new CliError(`namespace ${name} does not exist in ${config.getCurrentCluster()?.server ?? 'the cluster'}`);
    throw new CliError(`could not label namespace ${name}: ${(err as Error).message}`);
  }
  process.stdout.write(`namespace/${name} ${enable ? 'enabled (ambient)' : 'disabled'}\n`);
}

async function onLocal(name: string, enable: boolean, cluster: string): Promise<void> {
  const layout = new ClusterLayout(cluster);
  const state = readState(layout.stateFile);
  if (!state) throw new CliError(`cluster ${cluster} does not exist`, 'ambit local up');
  const ns = state.resources[`Namespace/${name}`];
  if (!ns) throw new CliError(`namespace ${name} does not exist in cluster ${cluster}`);
  // The namespace as it is, only the label changed: its other labels stay.
  const meta = (ns.raw.metadata ?? {}) as Record<string, unknown>;
  const labels = { ...(meta.labels as Record<string, string> | undefined) };
  if (enable) labels[DATAPLANE_MODE] = 'ambient';
  else delete labels[DATAPLANE_MODE];
  const doc = { ...ns.raw, metadata: { ...meta, labels } };
  printApply(await apply(new RuntimeClient(layout), 'apply', [{ file: `namespace ${name}`, text: stringify(doc), dir: process.cwd() }]));
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
