/**
 * `ambit install [--set k=v ...] [--dry-run]` prints the manifests of an installation as one YAML
 * stream (`ambit install | kubectl apply -f -`); `ambit uninstall` prints the same objects in
 * removal order (`ambit uninstall | kubectl delete --cascade=foreground --ignore-not-found -f -`).
 * Nothing here talks to a cluster.
 */
import { Command } from 'commander';
import { describeObject, toYamlStream, type K8sObject } from '../install/objects.js';
import { renderInstall, renderUninstall } from '../install/render.js';
import { checkSchemas, SchemaUnavailableError } from '../install/schema-check.js';
import { describeValues, resolveValues, ValuesError, type Values } from '../install/values.js';
import { packageVersion } from '../util/package.js';
import { CliError } from './errors.js';

export const PREREQUISITES = [
  'ambit reads, but does not install, these CRDs: install them from their own projects first.',
  '  Istio (security.istio.io AuthorizationPolicy, PeerAuthentication; networking.istio.io VirtualService,',
  '    DestinationRule, Gateway, ServiceEntry): the istio/base Helm chart, which holds only the CRDs:',
  '    helm install istio-base istio/base -n istio-system --create-namespace',
  '  Gateway API (gateway.networking.k8s.io GatewayClass, Gateway, HTTPRoute, GRPCRoute), standard channel:',
  '    kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/<version>/standard-install.yaml',
].join('\n');

const collect = (value: string, previous: string[] = []) => [...previous, value];

function values(sets: string[] | undefined): Values {
  try {
    return resolveValues(sets ?? []);
  } catch (err) {
    if (err instanceof ValuesError) throw new CliError(err.message, 'ambit install --help lists the values and their defaults', 2);
    throw err;
  }
}

/** Validates every object against the Kubernetes schemas; prints a line per object, throws on any error. */
async function dryRun(objects: K8sObject[]): Promise<void> {
  let results;
  try {
    results = await checkSchemas(objects);
  } catch (err) {
    if (err instanceof SchemaUnavailableError) throw new CliError(`--dry-run needs the kubernetes-models package, which is a development dependency (${err.message})`, 'run it from an ambit checkout after `npm ci`');
    throw err;
  }
  let bad = 0;
  for (const r of results) {
    process.stdout.write(`${r.errors.length === 0 ? 'ok     ' : 'INVALID'} ${r.object}\n`);
    for (const e of r.errors) process.stdout.write(`          ${e}\n`);
    if (r.errors.length > 0) bad++;
  }
  process.stdout.write(`${results.length} objects checked against the Kubernetes 1.27 schemas (kubernetes-models); ${bad} invalid\n`);
  if (bad > 0) throw new CliError(`${bad} of ${results.length} objects do not match their Kubernetes schema`);
}

export function register(program: Command): void {
  program.command('install')
    .description('print the Kubernetes manifests of an ambit installation (ambit install | kubectl apply -f -)')
    .option('--set <key=value>', 'override a value; repeatable', collect)
    .option('--dry-run', 'check every object against the Kubernetes schemas and print what was checked, not the YAML')
    .addHelpText('after', `\nValues:\n${describeValues()}\n\n${PREREQUISITES}\n`)
    .action(async (opts: { set?: string[]; dryRun?: boolean }) => {
      const v = values(opts.set);
      const objects = renderInstall(v);
      if (opts.dryRun) return dryRun(objects);
      process.stderr.write(`${PREREQUISITES}\n`);
      process.stdout.write(toYamlStream(objects, `ambit ${packageVersion()}: ambit install${(opts.set ?? []).map((s) => ` --set ${s}`).join('')}\nApply with: kubectl apply -f -`));
    });

  program.command('uninstall')
    .description('print the manifests to remove ambit (ambit uninstall | kubectl delete --cascade=foreground --ignore-not-found -f -)')
    .option('--set <key=value>', 'the values the installation was made with (namespace, ...); repeatable', collect)
    .addHelpText('after', [
      '',
      'The node agent DaemonSet comes first. The node agent\'s contract: when its DaemonSet is being deleted',
      '(or is gone) as it gets SIGTERM, it detaches and removes every BPF object pinned under its pin root',
      'before exiting; on any other SIGTERM (an upgrade) it keeps them for the next agent to adopt.',
      'Deleting the CRD deletes every RateLimit. Istio and Gateway API CRDs are left alone.',
      '',
    ].join('\n'))
    .action((opts: { set?: string[] }) => {
      const v = values(opts.set);
      const objects = renderUninstall(v);
      process.stderr.write([
        `removing ambit from namespace ${v.namespace}: ${objects.length} objects, the node agents first (each removes its pinned BPF objects),`,
        'the CRD ratelimits.ambit.dev (and every RateLimit) last. Istio and Gateway API CRDs are not touched.',
        '',
      ].join('\n'));
      process.stdout.write(toYamlStream(objects, `ambit ${packageVersion()}: ambit uninstall\nDelete with: kubectl delete --cascade=foreground --ignore-not-found -f -\n${objects.map(describeObject).join('\n')}`));
    });
}
