/**
 * `ambit install` and `ambit uninstall` as processes: the YAML stream on stdout and the reminders
 * on stderr, exit codes, `--dry-run` for every platform preset, what uninstall leaves (the
 * namespace and the CA in it) unless `--purge`; and kubectl reading the stream offline. What they
 * render, in process: test/unit/install.test.ts, install-presets.test.ts, install-uninstall.test.ts.
 */
import { spawn, spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import type { K8sObject } from '../../src/install/objects.js';
import { renderInstall, renderUninstall } from '../../src/install/render.js';
import { defaultValues, PLATFORMS, resolveValues } from '../../src/install/values.js';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;

describeAsRoot('ambit install / uninstall: the CLI', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [`${ROOT}bin/ambit.js`, ...args], { encoding: 'utf8', timeout: 60_000 });
  const docs = (text: string) => parseAllDocuments(text).map((d) => d.toJS() as K8sObject).filter(Boolean);

  it('install prints the objects as one YAML stream and reminds of the prerequisites on stderr', () => {
    const r = run('install', '--set', 'namespace=mesh');
    expect(r.status, r.stderr).toBe(0);
    expect(docs(r.stdout)).toEqual(JSON.parse(JSON.stringify(renderInstall(resolveValues(['namespace=mesh'])))));
    expect(r.stderr).toMatch(/Istio/);
    expect(r.stderr).toMatch(/Gateway API/);
  });

  it('install --dry-run checks every object and prints what it checked', () => {
    const r = run('install', '--dry-run');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('apps/v1 DaemonSet ambit-system/ambit-node');
    expect(r.stdout).toMatch(/16 objects checked .* 0 invalid/);
    expect(r.stdout).not.toContain('apiVersion:');
  });

  it('a bad --set exits 2 with the message', () => {
    const r = run('install', '--set', 'nodeAgent.drain=5');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown value "nodeAgent\.drain" \(known: .*nodeAgent\.drainSeconds/);
    expect(r.stdout).toBe('');
  });

  it('uninstall prints the same objects but the namespace, the node agents first and the CRD last; --purge adds the namespace', () => {
    const r = run('uninstall');
    expect(r.status, r.stderr).toBe(0);
    const objs = docs(r.stdout);
    const key = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
    expect(objs.map(key).sort()).toEqual(renderInstall(defaultValues()).filter((o) => o.kind !== 'Namespace').map(key).sort());
    expect(objs[0]!.kind).toBe('DaemonSet');
    expect(objs.at(-1)!.kind).toBe('CustomResourceDefinition');
    expect(renderUninstall(defaultValues()).map(key)).toEqual(objs.map(key));
    const purge = run('uninstall', '--purge');
    expect(purge.status, purge.stderr).toBe(0);
    const all = docs(purge.stdout);
    expect(all.map(key).sort()).toEqual(renderInstall(defaultValues()).map(key).sort());
    expect(all.slice(-2).map((o) => o.kind)).toEqual(['Namespace', 'CustomResourceDefinition']);
  });
});

const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0;
const offlineEnv = { ...process.env, KUBECONFIG: '/dev/null' };
/** Client dry-run maps kinds through the API server's discovery: with no server it cannot run. */
const clientDryRunOffline = kubectl && spawnSync('kubectl', ['create', '--dry-run=client', '--validate=false', '-o', 'name', '-f', '-'], {
  input: 'apiVersion: v1\nkind: Namespace\nmetadata: {name: probe}\n', encoding: 'utf8', env: offlineEnv, timeout: 20_000,
}).status === 0;

describeAsRoot('ambit install: kubectl reads the stream', () => {
  const stream = () => spawnSync(process.execPath, [`${ROOT}bin/ambit.js`, 'install'], { encoding: 'utf8' }).stdout;

  it.skipIf(!kubectl)('kubectl parses every document offline (label --local), naming each object', () => {
    const r = spawnSync('kubectl', ['label', '--local', '-f', '-', 'ambit.dev/check=1', '-o', 'name'], { input: stream(), encoding: 'utf8', env: offlineEnv });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(renderInstall(defaultValues()).length);
    expect(r.stdout).toContain('daemonset.apps/ambit-node');
  });

  // Skipped when kubectl is missing, or (as with every kubectl we know) its client dry-run needs an API server's discovery.
  it.skipIf(!clientDryRunOffline)('kubectl create --dry-run=client accepts the stream', () => {
    const r = spawnSync('kubectl', ['create', '--dry-run=client', '--validate=false', '-o', 'name', '-f', '-'], { input: stream(), encoding: 'utf8', env: offlineEnv });
    expect(r.status, r.stderr).toBe(0);
  });
});

/** Runs the CLI without blocking the event loop, so that the presets' runs overlap. */
function ambit(...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`${ROOT}bin/ambit.js`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

describeAsRoot('ambit install --dry-run', () => {
  it('passes for every preset, with PodMonitors and pull secrets too', async () => {
    const runs = await Promise.all(PLATFORMS.map(async (p) => [p, await ambit('install', '--dry-run', '--set', `platform=${p}`, '--set', 'monitoring.podMonitor=true', '--set', 'imagePullSecrets=regcred')] as const));
    for (const [platform, r] of runs) {
      expect(r.status, `${platform}: ${r.stderr}${r.stdout}`).toBe(0);
      const count = renderInstall(resolveValues([`platform=${platform}`, 'monitoring.podMonitor=true'])).length;
      expect(r.stdout, platform).toContain(`${count} objects checked against the Kubernetes 1.27 schemas (kubernetes-models), 3 PodMonitors against the fields ambit writes; 0 invalid`);
      expect(r.stdout).toContain('ok      monitoring.coreos.com/v1 PodMonitor ambit-system/ambit-waypoint');
      if (platform === 'gke') expect(r.stdout).toContain('ok      v1 ResourceQuota ambit-system/ambit-critical-pods');
    }
  }, 60_000);
});

describeAsRoot('ambit uninstall', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [`${ROOT}bin/ambit.js`, ...args], { encoding: 'utf8', timeout: 60_000 });
  const docs = (text: string) => parseAllDocuments(text).map((d) => d.toJS() as K8sObject).filter(Boolean);
  const LEFTOVERS = 'kubectl delete deployments.apps,services,serviceaccounts,poddisruptionbudgets.policy,configmaps --all-namespaces -l app.kubernetes.io/managed-by=ambit-controller,app.kubernetes.io/part-of=ambit';

  it('by default leaves the namespace and the CA in it, and prints the commands for it and for the controller\'s objects', () => {
    const r = run('uninstall', '--set', 'namespace=mesh');
    expect(r.status, r.stderr).toBe(0);
    expect(docs(r.stdout).some((o) => o.kind === 'Namespace')).toBe(false);
    expect(r.stderr).toContain('The namespace mesh is left in place with the Secret ambit-ca (the mesh CA\'s key), the ConfigMap ambit-root-cert and the leader Lease.');
    expect(r.stderr).toContain('\n  kubectl delete namespace mesh\n');
    expect(r.stderr).toContain(`\n  ${LEFTOVERS}`);
    expect(r.stderr).not.toContain('--purge:');
  });

  it('--purge deletes the namespace and says the CA key goes with it', () => {
    const r = run('uninstall', '--purge', '--set', 'namespace=mesh');
    expect(r.status, r.stderr).toBe(0);
    expect(docs(r.stdout).filter((o) => o.kind === 'Namespace').map((o) => o.metadata.name)).toEqual(['mesh']);
    expect(r.stderr).toContain('--purge: the namespace mesh is deleted, and with it the Secret ambit-ca: the CA key goes with it');
    expect(r.stderr).not.toContain('kubectl delete namespace');
    expect(r.stderr).toContain(LEFTOVERS);
    expect(run('uninstall', '--help').stdout).toMatch(/--purge .*Secret ambit-ca/);
  });
});
