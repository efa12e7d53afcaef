/** `ambit analyze -f PATH...`: the diagnostics the controller and the local cluster would give, offline. */
import { Command } from 'commander';
import { validateMeshObject } from '../config/validate.js';
import { readManifestInputs } from '../local/client.js';
import { formatDiagnostic, parseManifests } from '../kube/manifests.js';

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function register(program: Command): void {
  program.command('analyze')
    .description('validate manifests (Kubernetes workloads, Istio, Gateway API, SMI TrafficSplit and Flagger Canary config) without applying them; other kinds get a warning')
    .requiredOption('-f, --filename <path>', 'manifest file or directory (repeatable; - for stdin)', collect)
    .option('--json', 'machine-readable output')
    .option('--local', 'also check what the local cluster needs to run pods (a command for every container)')
    .action((opts: { filename: string[]; json?: boolean; local?: boolean }) => {
      const { resources, diagnostics } = parseManifests(readManifestInputs(opts.filename), { validate: validateMeshObject, imagesOnly: !opts.local });
      const errors = diagnostics.filter((d) => d.severity === 'error');
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ resources: resources.length, diagnostics }, null, 2)}\n`);
      } else {
        for (const d of diagnostics) process.stdout.write(`${d.severity}: ${formatDiagnostic(d)}\n`);
        const warnings = diagnostics.length - errors.length;
        process.stdout.write(`${resources.length} resource${resources.length === 1 ? '' : 's'} valid, ${errors.length} error${errors.length === 1 ? '' : 's'}, ${warnings} warning${warnings === 1 ? '' : 's'}\n`);
      }
      if (errors.length > 0) process.exitCode = 1;
    });
}
