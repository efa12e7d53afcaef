/** `ambit certs`: the workload certificates a node agent holds, from its admin endpoint. */
import { Command } from 'commander';
import type { CertificatesResponse } from '../api/admin.js';
import { ADMIN_PORT } from '../node/admin.js';
import { table } from './format.js';
import { CliError } from './errors.js';

export function register(program: Command): void {
  program.command('certs')
    .description('the workload certificates a node agent holds (identity, serial, expiry, state); never keys')
    .option('--admin <url>', 'the agent\'s admin endpoint', `http://127.0.0.1:${ADMIN_PORT}`)
    .option('--json', 'machine-readable output')
    .action(async (opts: { admin: string; json?: boolean }) => {
      let body: CertificatesResponse;
      try {
        const res = await fetch(new URL('/certificates', opts.admin), { signal: AbortSignal.timeout(5000) });
        if (!res.ok) throw new CliError(`${opts.admin}/certificates answered ${res.status}: ${await res.text()}`);
        body = await res.json() as CertificatesResponse;
      } catch (err) {
        if (err instanceof CliError) throw err;
        const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
        throw new CliError(`cannot reach the node agent's admin endpoint at ${opts.admin} (${cause})`, 'run it on the node (local cluster: ambit local exec --node NODE -- npx ambit certs)');
      }
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
        return;
      }
      const rows = body.certificates.map((c) => [c.identity, c.serial ?? '-', c.notAfter ?? '-', c.rotatesAt ?? '-', c.state + (c.lastError ? ` (${c.lastError})` : ''), String(c.pods)]);
      const header = ['IDENTITY', 'SERIAL', 'NOT AFTER', 'RENEWS', 'STATE', 'PODS'];
      process.stdout.write(`${table(header, rows)}\n`);
      if (rows.length === 0) process.stdout.write('no certificates\n');
      for (const root of body.trustBundle) process.stdout.write(`trust: ${root.subject} (serial ${root.serial}, until ${root.notAfter})\n`);
    });
}
