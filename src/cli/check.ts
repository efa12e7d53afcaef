/**
 * `ambit check`: verifies that this node can run ambit, one line per requirement, before anything
 * is installed; `--pre` adds what the node implies for `ambit install` (platform, AppArmor, SELinux,
 * the kubelet's cgroup, the CNI config). With `--kubeconfig FILE` or `--kube` it checks a Kubernetes
 * cluster through its API server instead (cluster-check.ts): `--pre` before `ambit install`, else
 * the installation itself.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { clusterChecks, DEFAULT_NAMESPACE, renderClusterText } from './cluster-check.js';
import { renderJson, renderText, report } from '../node/checks.js';
import { CliError } from './errors.js';
import { KubeClient } from '../kube/client.js';
import { DEFAULT_PIN_ROOT, runChecks } from '../node/probes.js';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface Opts { json?: boolean; kubeconfig?: string; kube?: boolean; pre?: boolean; namespace?: string; cgroup?: string; pinRoot?: string; hostRoot?: string }

export function register(program: Command): void {
  program
    .command('check')
    .description('verify this node can run ambit: kernel, BTF, cgroup v2, bpffs, capabilities, libbpf, that the BPF objects load, and that no other program (a CNI\'s socket load balancer) rewrites connect() before ambit\'s; with --kubeconfig/--kube, a Kubernetes cluster instead')
    .option('--json', 'print the results as JSON: { ok, checks: [{ name, ok, detail, hint?, implies? }] }')
    .option('--kubeconfig <file>', 'check a Kubernetes cluster (API server, prerequisites, nodes, the installation) instead of this node')
    .option('--kube', 'check the Kubernetes cluster of $KUBECONFIG or ~/.kube/config')
    .option('--pre', 'before `ambit install`: on a node, also what it implies for the install values (platform, AppArmor, SELinux, kubelet cgroup, CNI config); with --kubeconfig/--kube, the cluster\'s prerequisites, platform and CNI')
    .option('--namespace <ns>', `with --kubeconfig/--kube: ambit's namespace (default ${DEFAULT_NAMESPACE})`)
    .option('--cgroup <dir>', 'on a node: the cgroup v2 directory ambit attaches to, whose connect() programs are checked (default: the cgroup v2 mount)')
    .option('--pin-root <dir>', `on a node: the agent's bpffs pin root, which tells ambit's programs from others' (default ${DEFAULT_PIN_ROOT})`)
    .option('--host-root <dir>', 'with --pre on a node: where the host\'s / is mounted (kubectl debug node/NAME mounts it at /host)')
    .action(async (options: Opts) => {
      if (options.kubeconfig || options.kube) {
        if (options.cgroup !== undefined || options.pinRoot !== undefined || options.hostRoot !== undefined) throw new CliError('--cgroup, --pin-root and --host-root check this node: drop --kubeconfig/--kube, or run `ambit check` on the node', undefined, 2);
        const namespace = options.namespace ?? DEFAULT_NAMESPACE;
        if (!DNS_LABEL.test(namespace) || namespace.length > 63) throw new CliError(`--namespace must be a DNS label (lower case letters, digits, '-'), got "${namespace}"`, undefined, 2);
        const client = KubeClient.fromFile(options.kubeconfig);
        const result = report(await clusterChecks(client, { namespace, pre: options.pre === true }));
        process.stdout.write(options.json ? renderJson(result) : renderClusterText(result, options.pre === true));
        process.exitCode = result.ok ? 0 : 1;
        return;
      }
      if (options.namespace !== undefined) throw new CliError('--namespace checks a cluster: add --kubeconfig FILE or --kube', undefined, 2);
      if (options.hostRoot !== undefined && !options.pre) throw new CliError('--host-root is for --pre (what the host implies for the install values)', undefined, 2);
      if (options.hostRoot !== undefined && !existsSync(join(options.hostRoot, 'proc', 'self'))) throw new CliError(`--host-root ${options.hostRoot} has no proc filesystem at proc/: give the directory the host's / is mounted at`, undefined, 2);
      if (options.cgroup !== undefined && !existsSync(options.cgroup)) throw new CliError(`--cgroup ${options.cgroup} does not exist`, undefined, 2);
      const result = report(await runChecks({
        pre: options.pre === true,
        ...(options.cgroup !== undefined ? { cgroup: options.cgroup } : {}),
        ...(options.pinRoot !== undefined ? { pinRoot: options.pinRoot } : {}),
        ...(options.hostRoot !== undefined ? { hostRoot: options.hostRoot } : {}),
      }));
      process.stdout.write(options.json ? renderJson(result) : renderText(result));
      process.exitCode = result.ok ? 0 : 1;
    });
}
