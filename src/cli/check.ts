/** `ambit check`: verifies that this node can run ambit, one line per requirement, before anything is installed. */
import type { Command } from 'commander';
import { renderJson, renderText, report } from './checks.js';
import { runChecks } from './probes.js';

export function register(program: Command): void {
  program
    .command('check')
    .description('verify this node can run ambit: kernel, BTF, cgroup v2, bpffs, capabilities, libbpf, and that the BPF objects load')
    .option('--json', 'print the results as JSON: { ok, checks: [{ name, ok, detail, hint? }] }')
    .action(async (options: { json?: boolean }) => {
      const result = report(await runChecks());
      process.stdout.write(options.json ? renderJson(result) : renderText(result));
      process.exitCode = result.ok ? 0 : 1;
    });
}
