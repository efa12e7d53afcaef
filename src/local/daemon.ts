/**
 * `ambit local runtime`: the long-running process of one local cluster. It owns the Runtime
 * and answers the CLI on a unix socket in the cluster's state directory (HTTP + JSON, root
 * only: the socket is 0600 in a 0700 directory; a hardened local server, `src/util/local-http.ts`).
 *
 *   GET  /v1/status                          the cluster
 *   POST /v1/apply   {inputs}                apply manifests (all or nothing)
 *   POST /v1/delete  {inputs}                delete what they name
 *   GET  /v1/exec?pod=NS/NAME[&container=C]  where and how to run a command as the pod
 *   POST /v1/components {action,name,node?}  stop, start or restart a component
 *   POST /v1/mesh-config {outboundTrafficPolicy}  set the controller's mode (restarts it on a change)
 *   POST /v1/shutdown                        stop every pod and exit (the state stays)
 */
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { logger } from '../telemetry/log.js';
import { listenUnix, localServer } from '../util/local-http.js';
import { LocalError } from './errors.js';
import type { ClusterLayout } from './layout.js';
import type { ManifestInput } from '../kube/manifests.js';
import { ApplyError, Runtime } from './runtime.js';
import { runtimePid } from './client.js';

const MAX_BODY = 64 * 1024 * 1024;

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) throw new LocalError(`request body over ${MAX_BODY} bytes`);
    chunks.push(chunk);
  }
  return chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function inputsOf(body: unknown): ManifestInput[] {
  const inputs = (body as { inputs?: unknown }).inputs;
  if (!Array.isArray(inputs) || !inputs.every((i) => typeof i?.file === 'string' && typeof i?.text === 'string' && typeof i?.dir === 'string')) {
    throw new LocalError('request needs "inputs": [{file, text, dir}]');
  }
  return inputs as ManifestInput[];
}

export async function runDaemon(layout: ClusterLayout, nodes: number | undefined): Promise<void> {
  const log = logger('local').child({ cluster: layout.name });
  const other = runtimePid(layout);
  if (other !== undefined && other !== process.pid) throw new LocalError(`the runtime of cluster ${layout.name} already runs (pid ${other})`);
  mkdirSync(layout.stateDir, { recursive: true, mode: 0o700 });
  chmodSync(layout.stateDir, 0o700);
  const runtime = await Runtime.open(layout, nodes, log);

  let stopping: Promise<void> | undefined;
  const stop = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ reason }, 'runtime stopping');
      await runtime.shutdown();
      server.close();
      rmSync(layout.socketPath, { force: true });
      rmSync(layout.pidFile, { force: true });
      log.info('runtime stopped');
    })();
    return stopping;
  };

  // Applying manifests can take as long as the pods take to start: no idle limit on answers.
  const server = localServer({ name: 'runtime socket', log, json: true, limits: { idleTimeoutMs: 0 } }, async (req, res) => {
    try {
      const route = `${req.method} ${req.path}`;
      if (route === 'GET /v1/status') return send(res, 200, await runtime.status());
      if (route === 'POST /v1/apply') return send(res, 200, await runtime.apply(inputsOf(await readJson(req.raw))));
      if (route === 'POST /v1/delete') return send(res, 200, await runtime.delete(inputsOf(await readJson(req.raw))));
      if (route === 'GET /v1/exec' || route === 'GET /v1/logs') {
        const [ns, name] = (req.query.get('pod') ?? '').split('/');
        if (!ns || !name) throw new LocalError('expected pod=NAMESPACE/NAME');
        const container = req.query.get('container') ?? undefined;
        return send(res, 200, route === 'GET /v1/exec' ? runtime.execTarget(ns, name, container) : { file: runtime.podLogFile(ns, name, container) });
      }
      if (route === 'POST /v1/components') {
        const body = await readJson(req.raw) as { action?: unknown; name?: unknown; node?: unknown };
        if (body.action !== 'stop' && body.action !== 'start' && body.action !== 'restart') throw new LocalError('request needs "action": stop, start or restart');
        if (typeof body.name !== 'string') throw new LocalError('request needs "name": the component');
        if (body.node !== undefined && typeof body.node !== 'string') throw new LocalError('"node" must be a node name');
        return send(res, 200, await runtime.componentAction(body.action, body.name, body.node));
      }
      if (route === 'POST /v1/prometheus') {
        const interval = (await readJson(req.raw) as { scrapeInterval?: unknown }).scrapeInterval;
        if (typeof interval !== 'string') throw new LocalError('request needs "scrapeInterval": a duration such as "5s"');
        return send(res, 200, runtime.enablePrometheus(interval));
      }
      if (route === 'POST /v1/mesh-config') {
        const mode = (await readJson(req.raw) as { outboundTrafficPolicy?: unknown }).outboundTrafficPolicy;
        if (mode !== 'ALLOW_ANY' && mode !== 'REGISTRY_ONLY') throw new LocalError('request needs "outboundTrafficPolicy": ALLOW_ANY or REGISTRY_ONLY');
        return send(res, 200, await runtime.setOutboundTrafficPolicy(mode));
      }
      if (route === 'POST /v1/shutdown') {
        send(res, 200, { stopping: true });
        await stop('shutdown requested');
        process.exit(0);
      }
      send(res, 404, { error: `no route ${route}` });
    } catch (err) {
      if (err instanceof ApplyError) return send(res, 422, { error: err.message, diagnostics: err.diagnostics });
      if (err instanceof LocalError || err instanceof SyntaxError) return send(res, 400, { error: err.message, hint: (err as LocalError).hint });
      // Anything else: the hardened server logs it with the request and its stack, and answers 500.
      throw err;
    }
  });
  // Made 0600 from its first moment (and the state directory is 0700).
  await listenUnix(server, layout.socketPath);
  writeFileSync(layout.pidFile, `${process.pid}\n`);
  log.info({ socket: layout.socketPath, pid: process.pid }, 'runtime ready');

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => void stop(signal).then(() => process.exit(0)));
  }
}
