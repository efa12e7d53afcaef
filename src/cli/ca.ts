/**
 * `ambit ca create`: the mesh CA the controller mounts (the `ambit-ca` Secret, keys as Istio's
 * cacerts), as a YAML stream for `kubectl apply -f -` or as PEM files: a new ECDSA P-256 root,
 * or the operator's own CA (`--from DIR`) after the same checks the controller makes at start.
 * Nothing here talks to a cluster.
 */
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { CaError, checkCaFiles, createRoot, PLUGIN_CA_FILES, readPluginCa, type CheckedCa } from '../identity/ca.js';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { commonLabels, toYamlStream, type K8sObject } from '../install/objects.js';
import { CA_SECRET, renderInstall } from '../install/render.js';
import { resolveValues, ValuesError } from '../install/values.js';
import { packageVersion } from '../util/package.js';
import { CliError } from './errors.js';

const DAY_SECONDS = 86_400;
export const DEFAULT_ROOT_DAYS = 3650;
const MAX_ROOT_DAYS = 36_500;
/** X.520's upper bound on an organization name. */
const MAX_ORG = 64;

/** The Secret's data: file name → PEM text, the four keys of Istio's cacerts. */
export type CaFiles = Record<(typeof PLUGIN_CA_FILES)[keyof typeof PLUGIN_CA_FILES], string>;

interface CreateOpts { namespace?: string; trustDomain?: string; days?: number; org?: string; from?: string; outDir?: string }

function days(raw: string): number {
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > MAX_ROOT_DAYS) throw new InvalidArgumentError(`a whole number of days from 1 to ${MAX_ROOT_DAYS}, got "${raw}"`);
  return Number(raw);
}

function org(raw: string): string {
  // Printable, so that the root's subject reads the same in every tool.
  if (raw.length === 0 || raw.length > MAX_ORG || /[\p{Cc}]/u.test(raw)) throw new InvalidArgumentError(`1 to ${MAX_ORG} printable characters, got ${JSON.stringify(raw)}`);
  return raw;
}

/** A value checked by the install's own rules, so that `ca create` and `install` agree on it. */
function installValue(flag: string, key: string, raw: string): string {
  try {
    const v = resolveValues([`${key}=${raw}`]);
    return key === 'namespace' ? v.namespace : v.trustDomain;
  } catch (err) {
    if (err instanceof ValuesError) throw new CliError(`${flag}: ${err.message}`, 'ambit ca create --help', 2);
    throw err;
  }
}

/** The files of the Secret from a checked CA: cert-chain.pem from the signing certificate to its root, ca-cert.pem the signing certificate. */
export function caFiles(checked: CheckedCa, rootCert: string, key: string): CaFiles {
  return {
    [PLUGIN_CA_FILES.caCert]: checked.chain[0]!,
    [PLUGIN_CA_FILES.key]: key,
    [PLUGIN_CA_FILES.certChain]: checked.chain.join(''),
    [PLUGIN_CA_FILES.rootCert]: rootCert,
  } as CaFiles;
}

async function fromDir(dir: string): Promise<CaFiles> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new CliError(`--from ${dir}: not a directory`, `give the directory holding ${PLUGIN_CA_FILES.rootCert}, ${PLUGIN_CA_FILES.key}, and ${PLUGIN_CA_FILES.certChain} or ${PLUGIN_CA_FILES.caCert}`);
  try {
    const files = readPluginCa(dir);
    const checked = await checkCaFiles(files);
    return caFiles(checked, files.rootCert, files.key);
  } catch (err) {
    if (err instanceof CaError) throw new CliError(`the CA in ${dir} is refused: ${err.message}`, 'the controller would refuse it the same way at start; nothing was printed');
    throw err;
  }
}

async function newRoot(trustDomain: string, rootDays: number, organization: string): Promise<CaFiles> {
  const material = await createRoot({ trustDomain, ttlSeconds: rootDays * DAY_SECONDS, org: organization, now: Date.now() });
  const root = material.chain[0]!;
  // The same checks as a plug-in CA: what is printed is what the controller will accept.
  return caFiles(await checkCaFiles({ rootCert: root, certChain: root, key: material.key }), root, material.key);
}

/** The Secret the controller mounts at CA_MOUNT (`--plugin-ca`). */
export function caSecret(namespace: string, files: CaFiles): K8sObject {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: CA_SECRET, namespace, labels: commonLabels('ca') },
    type: 'Opaque',
    // Once created, the API server refuses to change its data: replacing the mesh's CA takes a
    // deliberate `kubectl delete secret` first, never a second apply by mistake.
    immutable: true,
    data: Object.fromEntries(Object.entries(files).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  };
}

function writeFiles(dir: string, files: CaFiles): string[] {
  const paths = Object.keys(files).map((name) => join(dir, name));
  const taken = paths.filter((p) => existsSync(p));
  if (taken.length > 0) throw new CliError(`--out-dir ${dir}: ${taken.join(', ')} already exist${taken.length === 1 ? 's' : ''}; nothing was written`, 'a CA is never overwritten: choose another directory, or remove the files if replacing that CA is what you mean');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Key first, mode 0600 from its creation; 'wx' fails rather than follow a file created meanwhile.
  const order = [PLUGIN_CA_FILES.key, PLUGIN_CA_FILES.caCert, PLUGIN_CA_FILES.certChain, PLUGIN_CA_FILES.rootCert] as const;
  for (const name of order) writeFileSync(join(dir, name), files[name], { mode: name === PLUGIN_CA_FILES.key ? 0o600 : 0o644, flag: 'wx' });
  return order.map((name) => join(dir, name));
}

/** What replacing the CA does to a running mesh: printed with every CA this command makes. */
export function replacementWarning(namespace: string): string {
  return [
    `The Secret ${namespace}/${CA_SECRET} is immutable: applying a different CA over it is refused ("field is immutable").`,
    'Replacing the CA of a running mesh must be deliberate (kubectl delete secret first), and it breaks mTLS until every component restarts:',
    '  the controller keeps signing with the CA it started with until it is restarted; after that it signs with the new one,',
    '  while node agents and waypoints still trust only the root they started with (so they cannot reach the controller, and',
    '  pods with certificates from different CAs refuse each other) until they are restarted too:',
    `  kubectl -n ${namespace} rollout restart deployment/ambit-controller, then daemonset/ambit-node and every waypoint Deployment.`,
  ].join('\n');
}

export function register(program: Command): void {
  const ca = program.command('ca').description('the mesh CA the controller signs workload certificates with (the ambit-ca Secret)');
  ca.command('create')
    .description('print the ambit-ca Secret (and its Namespace) with a new root CA, or with your own CA from --from DIR, for `| kubectl apply -f -`')
    .option('-n, --namespace <namespace>', 'ambit\'s namespace (the install\'s `namespace` value)', 'ambit-system')
    .option('--trust-domain <domain>', `trust domain named in a new root's subject (default ${DEFAULT_TRUST_DOMAIN})`)
    .option('--days <n>', `a new root's lifetime in days (default ${DEFAULT_ROOT_DAYS})`, days)
    .option('--org <name>', 'a new root\'s organization, its subject\'s O= (default ambit)', org)
    .option('--from <dir>', `your CA instead of a new root: ${PLUGIN_CA_FILES.rootCert}, ${PLUGIN_CA_FILES.key} (PKCS#8, SEC1 EC or PKCS#1 RSA), and ${PLUGIN_CA_FILES.certChain} or ${PLUGIN_CA_FILES.caCert} (Istio's cacerts layout); checked as the controller checks it`)
    .option('--out-dir <dir>', 'write the four PEM files there (ca-key.pem mode 0600) instead of printing YAML; never overwrites')
    .addHelpText('after', [
      '',
      `The Secret holds ${Object.values(PLUGIN_CA_FILES).join(', ')} (Istio's cacerts keys); the controller mounts it at start.`,
      'The output contains the CA\'s private key: pipe it straight into kubectl, do not keep it in a file or a repository.',
      '',
    ].join('\n'))
    .action(async (opts: CreateOpts) => {
      const namespace = installValue('-n/--namespace', 'namespace', opts.namespace ?? 'ambit-system');
      let files: CaFiles;
      if (opts.from !== undefined) {
        const given = (['trustDomain', 'days', 'org'] as const).filter((k) => opts[k] !== undefined);
        if (given.length > 0) throw new CliError(`--from takes the CA as it is; ${given.map((k) => `--${k === 'trustDomain' ? 'trust-domain' : k}`).join(', ')} only appl${given.length === 1 ? 'ies' : 'y'} to a new root`, 'drop them, or drop --from', 2);
        files = await fromDir(opts.from);
      } else {
        const trustDomain = installValue('--trust-domain', 'trustDomain', opts.trustDomain ?? DEFAULT_TRUST_DOMAIN);
        files = await newRoot(trustDomain, opts.days ?? DEFAULT_ROOT_DAYS, opts.org ?? 'ambit');
      }
      if (opts.outDir !== undefined) {
        const written = writeFiles(opts.outDir, files);
        process.stdout.write(written.map((p) => `wrote ${p}\n`).join(''));
        process.stderr.write([
          `${join(opts.outDir, PLUGIN_CA_FILES.key)} is the mesh CA's private key (mode 0600): keep it out of repositories and backups you do not control.`,
          `Create the Secret from them: kubectl create secret generic ${CA_SECRET} -n ${namespace} ${written.map((p) => `--from-file=${p}`).join(' ')}`,
          '',
        ].join('\n'));
        return;
      }
      const nsObject = renderInstall(resolveValues([`namespace=${namespace}`])).find((o) => o.kind === 'Namespace')!;
      const header = `ambit ${packageVersion()}: ambit ca create -n ${namespace}${opts.from ? ` --from ${opts.from}` : ''}\nContains the mesh CA's PRIVATE KEY. Apply with: kubectl apply -f -`;
      process.stdout.write(toYamlStream([nsObject, caSecret(namespace, files)], header));
      process.stderr.write([
        `ambit ca create: the output holds the mesh CA's private key (${PLUGIN_CA_FILES.key}): pipe it straight into \`kubectl apply -f -\`; do not save, paste or commit it.`,
        replacementWarning(namespace),
        '',
      ].join('\n'));
    });
}
