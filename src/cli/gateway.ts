/**
 * `ambit gateway run`: the ingress gateway process itself (src/waypoint/ingress/app.ts), started
 * by the runtime or the gateway's Deployment in its pod, as `ambit waypoint run` starts a waypoint.
 */
import type { Command } from 'commander';
import { DEFAULT_TRUST_DOMAIN } from '../identity/spiffe.js';
import { parseSamplingPercent, validateTracingOptions } from '../telemetry/tracing.js';
import { CliError } from './errors.js';

/** `--name`: the gateway's namespace and service account (for a Gateway API Gateway, its name). */
const NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/;

export function register(program: Command): void {
  const gateway = program.command('gateway').description('ingress gateways: Istio Gateways and Gateway API Gateways of class ambit or istio');

  gateway.command('run', { hidden: true })
    .description('the ingress gateway process (the runtime or its Deployment starts it in the gateway\'s pod)')
    .requiredOption('--name <ns/serviceAccount>', 'the gateway\'s namespace and service account (its identity)')
    .requiredOption('--controller <host:port>', 'the controller (CA and discovery)')
    .requiredOption('--token-file <file>', 'the gateway\'s credential')
    .requiredOption('--ca-file <file>', 'PEM roots that verify the controller')
    .option('--trust-domain <domain>', 'SPIFFE trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--tracing-endpoint <url>', 'OTLP/HTTP collector for spans')
    .option('--tracing-sampling <percent>', 'share of new traces recorded, 0-100')
    .action(async (opts: { name: string; controller: string; tokenFile: string; caFile: string; trustDomain: string; tracingEndpoint?: string; tracingSampling?: string }) => {
      const m = NAME.exec(opts.name);
      if (!m || opts.name.length > 317) throw new CliError(`--name must be NAMESPACE/SERVICE_ACCOUNT (DNS names), got "${opts.name.slice(0, 320)}"`);
      let tracing: { endpoint?: string; samplingPercent?: number } | undefined;
      try {
        const o = validateTracingOptions({ serviceName: 'gateway', ...(opts.tracingEndpoint !== undefined ? { endpoint: opts.tracingEndpoint } : {}), ...(opts.tracingSampling !== undefined ? { samplingPercent: parseSamplingPercent(opts.tracingSampling) } : {}) });
        tracing = { ...(o.endpoint ? { endpoint: o.endpoint } : {}), ...(o.samplingPercent !== undefined ? { samplingPercent: o.samplingPercent } : {}) };
      } catch (err) {
        throw new CliError(`${(err as Error).message} (--tracing-endpoint / --tracing-sampling)`);
      }
      const { startGatewayApp } = await import('../waypoint/ingress/app.js');
      const app = await startGatewayApp({
        namespace: m[1]!, name: m[3]!, trustDomain: opts.trustDomain, controller: opts.controller, tokenFile: opts.tokenFile, caFile: opts.caFile, tracing,
      });
      const stop = () => void app.stop().finally(() => process.exit(0));
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
      await new Promise(() => { /* serves until a signal */ });
    });
}
