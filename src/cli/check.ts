/**
 * `ambit check`: verifies that this node can run ambit, one line per requirement, before anything
 * is installed. With `--kubeconfig FILE` or `--kube` it checks a Kubernetes cluster through its API
 * server instead (cluster-check.ts): `--pre` before `ambit install`, else the installation itself.
 */
import type { Command } from 'commander';
import { clusterChecks, DEFAULT_NAMESPACE, renderClusterText } from './cluster-check.js';
import { renderJson, renderText, report } from './checks.js';
import { CliError } from './errors.js';
import { kubeClient } from './kube.js';
import { runChecks } from './probes.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface Opts { json?: boolean; kubeconfig?: string; kube?: boolean; pre?: boolean; namespace?: string }

export function register(program: Command): void {
  program
    .command('check')
    .description('verify this node can run ambit: kernel, BTF, cgroup v2, bpffs, capabilities, libbpf, and that the BPF objects load; with --kubeconfig/--kube, a Kubernetes cluster instead')
    .option('--json', 'print the results as JSON: { ok, checks: [{ name, ok, detail, hint? }] }')
    .option('--kubeconfig <file>', 'check a Kubernetes cluster (API server, prerequisites, nodes, the installation) instead of this node')
    .option('--kube', 'check the Kubernetes cluster of $KUBECONFIG or ~/.kube/config')
    .option('--pre', 'with --kubeconfig/--kube: before `ambit install` (prerequisites and the CA Secret only)')
    .option('--namespace <ns>', `with --kubeconfig/--kube: ambit's namespace (default ${DEFAULT_NAMESPACE})`)
    .action(async (options: Opts) => {
      if (options.kubeconfig || options.kube) {
        const namespace = options.namespace ?? DEFAULT_NAMESPACE;
        if (!DNS_LABEL.test(namespace) || namespace.length > 63) throw new CliError(`--namespace must be a DNS label (lower case letters, digits, '-'), got "${namespace}"`, undefined, 2);
        const client = kubeClient(options.kubeconfig);
        const result = report(await clusterChecks(client, { namespace, pre: options.pre === true }));
        process.stdout.write(options.json ? renderJson(result) : renderClusterText(result, options.pre === true));
        process.exitCode = result.ok ? 0 : 1;
        return;
      }
      if (options.pre || options.namespace !== undefined) throw new CliError('--pre and --namespace check a cluster: add --kubeconfig FILE or --kube', undefined, 2);
      const result = report(await runChecks());
      process.stdout.write(options.json ? renderJson(result) : renderText(result));
      process.exitCode = result.ok ? 0 : 1;
    });
}
