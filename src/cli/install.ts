/**
 * `ambit install [--set k=v ...] [--dry-run]` prints the manifests of an installation as one YAML
 * stream (`ambit install | kubectl apply -f -`); `ambit uninstall [--purge]` prints the same
 * objects in removal order (`ambit uninstall | kubectl delete --cascade=foreground
 * --ignore-not-found -f -`), the namespace (and the CA in it) only with --purge, and on stderr
 * what it leaves and the commands that remove it. Nothing here talks to a cluster.
 */
import { Command } from 'commander';
import { describeObject, toYamlStream, type K8sObject } from '../install/objects.js';
import { CA_SECRET, controllerWaypointRules, PODMONITOR_API, podMonitorErrors, renderInstall, renderUninstall, ROOT_CERT_CONFIGMAP } from '../install/render.js';
import { checkSchemas, SchemaUnavailableError } from '../install/schema-check.js';
import { describeValues, resolveValues, ValuesError, type Values } from '../install/values.js';
import { MANAGED_BY, MANAGED_BY_LABEL } from '../control/kube/waypoints.js';
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

/** The label selector of everything the controller wrote outside the install's manifests. */
export const CONTROLLER_WRITTEN_SELECTOR = `${MANAGED_BY_LABEL}=${MANAGED_BY},app.kubernetes.io/part-of=ambit`;

/**
 * The kinds the controller writes into application namespaces: each managed waypoint's objects
 * (the kinds of controllerWaypointRules) and the trust-bundle ConfigMaps.
 */
export function controllerWrittenKinds(): string[] {
  const kinds = controllerWaypointRules().flatMap((r) => r.resources.map((res) => (r.apiGroups[0] ? `${res}.${r.apiGroups[0]}` : res)));
  return [...kinds, 'configmaps'];
}

/** What uninstall tells the operator on stderr: what goes, what stays, and the commands for what stays. */
export function uninstallNotes(namespace: string, count: number, purge: boolean): string {
  const leftovers = `kubectl delete ${controllerWrittenKinds().join(',')} --all-namespaces -l ${CONTROLLER_WRITTEN_SELECTOR}`;
  return [
    `removing ambit from namespace ${namespace}: ${count} objects, the node agents first (each removes its pinned BPF objects),`,
    'the CRD ratelimits.ambit.dev (and every RateLimit) last. Istio and Gateway API CRDs are not touched.',
    purge
      ? `--purge: the namespace ${namespace} is deleted, and with it the Secret ${CA_SECRET}: the CA key goes with it, and no certificate it signed can be verified or renewed from it again.`
      : `The namespace ${namespace} is left in place with the Secret ${CA_SECRET} (the mesh CA's key), the ConfigMap ${ROOT_CERT_CONFIGMAP} and the leader Lease. Once the CA key is saved elsewhere or no longer wanted:\n  kubectl delete namespace ${namespace}`,
    'The controller\'s managed waypoint objects and the trust-bundle ConfigMaps it wrote into application namespaces are not in these manifests; once the delete has finished, remove them with:',
    `  ${leftovers}`,
  ].join('\n');
}

function values(sets: string[] | undefined): Values {
  try {
    return resolveValues(sets ?? []);
  } catch (err) {
    if (err instanceof ValuesError) throw new CliError(err.message, 'ambit install --help lists the values and their defaults', 2);
    throw err;
  }
}

/**
 * Validates every object against the Kubernetes schemas (PodMonitors, whose CRD kubernetes-models
 * lacks, against ambit's own check); prints a line per object, throws on any error.
 */
async function dryRun(objects: K8sObject[]): Promise<void> {
  const monitors = objects.filter((o) => o.apiVersion === PODMONITOR_API);
  let checked;
  try {
    checked = await checkSchemas(objects.filter((o) => !monitors.includes(o)));
  } catch (err) {
    if (err instanceof SchemaUnavailableError) throw new CliError(`--dry-run needs the kubernetes-models package, which is a development dependency (${err.message})`, 'run it from an ambit checkout after `npm ci`');
    throw err;
  }
  const results = [...checked, ...monitors.map((o) => ({ object: describeObject(o), errors: podMonitorErrors(o) }))];
  let bad = 0;
  for (const r of results) {
    process.stdout.write(`${r.errors.length === 0 ? 'ok     ' : 'INVALID'} ${r.object}\n`);
    for (const e of r.errors) process.stdout.write(`          ${e}\n`);
    if (r.errors.length > 0) bad++;
  }
  process.stdout.write(`${results.length} objects checked against the Kubernetes 1.27 schemas (kubernetes-models)${monitors.length > 0 ? `, ${monitors.length} PodMonitors against the fields ambit writes` : ''}; ${bad} invalid\n`);
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
    .option('--purge', `also delete ambit's namespace, and with it the Secret ${CA_SECRET} (the mesh CA's key: every workload certificate chains to it)`)
    .addHelpText('after', [
      '',
      'The node agent DaemonSet comes first. The node agent\'s contract: when its DaemonSet is being deleted',
      '(or is gone) as it gets SIGTERM, it detaches and removes every BPF object pinned under its pin root',
      'before exiting; on any other SIGTERM (an upgrade) it keeps them for the next agent to adopt.',
      'Deleting the CRD deletes every RateLimit. Istio and Gateway API CRDs are left alone.',
      `Without --purge the namespace stays, with the Secret ${CA_SECRET} (the CA key) in it.`,
      '',
    ].join('\n'))
    .action((opts: { set?: string[]; purge?: boolean }) => {
      const v = values(opts.set);
      const objects = renderUninstall(v, { purge: opts.purge });
      process.stderr.write(`${uninstallNotes(v.namespace, objects.length, opts.purge === true)}\n`);
      process.stdout.write(toYamlStream(objects, `ambit ${packageVersion()}: ambit uninstall\nDelete with: kubectl delete --cascade=foreground --ignore-not-found -f -\n${objects.map(describeObject).join('\n')}`));
    });
}
