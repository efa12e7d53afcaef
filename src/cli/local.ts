/** `ambit local ...`: a whole cluster on this machine (see docs/LOCAL.md). */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { readManifestInputs, removeCluster, RuntimeClient, RuntimeRequestError, runtimePid, startRuntime, tail } from '../local/client.js';
import { runDaemon } from '../local/daemon.js';
import { LocalError } from '../local/errors.js';
import { ClusterLayout, DEFAULT_CLUSTER, MAX_NODES } from '../local/layout.js';
import { formatDiagnostic } from '../kube/manifests.js';
import { launchArgv } from '../local/process.js';
import { checkScrapeInterval, DEFAULT_SCRAPE_INTERVAL } from '../local/prometheus.js';
import type { ApplyResult, ClusterStatus, PodStatus } from '../local/runtime.js';
import { age, table } from './format.js';
import { readState } from '../local/state.js';
import { modelVersionOf } from '../discovery/discovery.js';

const say = (line = '') => process.stdout.write(`${line}\n`);

/**
 * The cluster is `--cluster NAME`, as `ambit namespace` and `ambit waypoint` spell it; `--name`,
 * the older spelling, is still taken (hidden from the help).
 */
interface ClusterFlags { cluster?: string; name?: string }
function withCluster(cmd: Command): Command {
  return cmd.addOption(new Option('--cluster <name>', `the cluster (default: ${DEFAULT_CLUSTER})`))
    .addOption(new Option('--name <name>', 'the cluster (the older spelling of --cluster)').hideHelp());
}
function clusterOf(opts: ClusterFlags): ClusterLayout {
  if (opts.cluster !== undefined && opts.name !== undefined && opts.cluster !== opts.name) {
    throw new LocalError(`--cluster ${opts.cluster} and --name ${opts.name} name two clusters`, '--name is the older spelling of --cluster: give one');
  }
  return new ClusterLayout(opts.cluster ?? opts.name ?? DEFAULT_CLUSTER);
}
const collect = (value: string, previous: string[] = []) => [...previous, value];
function outboundMode(value: string): 'ALLOW_ANY' | 'REGISTRY_ONLY' {
  if (value !== 'ALLOW_ANY' && value !== 'REGISTRY_ONLY') throw new LocalError(`--outbound-traffic-policy must be ALLOW_ANY or REGISTRY_ONLY, got "${value}"`);
  return value;
}

function positiveInt(flag: string, max: number) {
  return (value: string) => {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < 1 || n > max) throw new LocalError(`${flag} must be an integer from 1 to ${max}, got "${value}"`);
    return n;
  };
}

export function register(program: Command): void {
  const local = program.command('local').description('a whole ambit cluster on this machine: nodes and pods as network namespaces, processes as containers');

  withCluster(local.command('up'))
    .description('create (or reuse) a cluster, apply manifests, and wait until every pod runs')
    .option('-f, --filename <path>', 'manifest file or directory (repeatable; - for stdin)', collect)
    .option('--nodes <n>', `number of nodes, 1-${MAX_NODES} (default 2 for a new cluster)`, positiveInt('--nodes', MAX_NODES))
    .option('--timeout <seconds>', 'how long to wait for the pods', positiveInt('--timeout', 3600), 180)
    .option('--prometheus', 'also run a Prometheus (Debian\'s prometheus package) scraping the controller, every node agent and waypoint; kept with the cluster')
    .option('--scrape-interval <duration>', 'the Prometheus\'s scrape interval (with --prometheus)', DEFAULT_SCRAPE_INTERVAL)
    .option('--outbound-traffic-policy <mode>', 'ALLOW_ANY or REGISTRY_ONLY (as Istio\'s meshConfig.outboundTrafficPolicy.mode): kept with the cluster; a change restarts its controller (default: the cluster\'s, ALLOW_ANY for a new one)', outboundMode)
    .action(async (opts: { filename?: string[]; nodes?: number; timeout: number; prometheus?: boolean; scrapeInterval: string; outboundTrafficPolicy?: 'ALLOW_ANY' | 'REGISTRY_ONLY'; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      const inputs = opts.filename ? readManifestInputs(opts.filename) : [];
      const pid = runtimePid(layout);
      if (pid !== undefined) {
        const status = await new RuntimeClient(layout).request<ClusterStatus>('GET', '/v1/status');
        if (opts.nodes !== undefined && opts.nodes !== status.nodes.length) {
          throw new LocalError(`cluster ${layout.name} runs with ${status.nodes.length} nodes, not ${opts.nodes}`, `remove it first: ambit local down --cluster ${layout.name}`);
        }
        say(`cluster ${layout.name} is running (runtime pid ${pid}, ${status.nodes.length} nodes)`);
      } else {
        const existing = readState(layout.stateFile);
        say(existing
          ? `recovering cluster ${layout.name} from ${layout.stateFile} (${existing.nodes.length} nodes, ${Object.keys(existing.pods).length} pods)`
          : `creating cluster ${layout.name} with ${opts.nodes ?? 2} nodes`);
        await startRuntime(layout, opts.nodes);
      }
      const client = new RuntimeClient(layout);
      if (opts.prometheus) {
        const p = await client.request<{ url: string; started: boolean }>('POST', '/v1/prometheus', { scrapeInterval: checkScrapeInterval(opts.scrapeInterval) });
        say(`prometheus ${p.started ? 'started' : 'runs'} on ${p.url} in the cluster's underlay netns (reachable from its nodes; ambit stat and ambit dashboard read it)`);
      }
      if (opts.outboundTrafficPolicy) {
        const m = await client.request<{ mode: string; changed: boolean }>('POST', '/v1/mesh-config', { outboundTrafficPolicy: opts.outboundTrafficPolicy });
        say(`outbound traffic policy ${m.mode}${m.changed ? ' (controller restarted)' : ''}`);
      }
      if (inputs.length > 0) printApply(await apply(client, 'apply', inputs));
      await waitForPods(client, layout, opts.timeout * 1000);
      const status = await client.request<ClusterStatus>('GET', '/v1/status');
      say(`cluster ${layout.name} is ready: ${status.nodes.length} nodes, ${status.pods.length} pods, ${status.services.length} services`);
      say(`  ambit local status${nameFlag(layout)}      ambit local exec${nameFlag(layout)} NAMESPACE/POD -- CMD      ambit local down${nameFlag(layout)}`);
    });

  withCluster(local.command('apply'))
    .description('create or update the resources in manifests')
    .requiredOption('-f, --filename <path>', 'manifest file or directory (repeatable; - for stdin)', collect)
    .action(async (opts: { filename: string[]; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      printApply(await apply(new RuntimeClient(layout), 'apply', readManifestInputs(opts.filename)));
    });

  withCluster(local.command('delete'))
    .description('delete the resources manifests name (a Namespace takes everything in it)')
    .requiredOption('-f, --filename <path>', 'manifest file or directory (repeatable; - for stdin)', collect)
    .action(async (opts: { filename: string[]; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      const result = await apply(new RuntimeClient(layout), 'delete', readManifestInputs(opts.filename)) as ApplyResult & { notFound: string[] };
      printApply(result);
      for (const nf of result.notFound) process.stderr.write(`ambit: ${nf} not found\n`);
      if (result.notFound.length > 0) process.exitCode = 1;
    });

  withCluster(local.command('exec'))
    .description('run a command inside a pod (its netns, cgroup, /etc/hosts), inside a node\'s netns with --node, or outside the cluster\'s nodes with --underlay (the netns of 172.30.0.1, a client outside the mesh that reaches the nodes\' addresses)')
    .usage('[options] NAMESPACE/POD -- CMD [ARGS...]  |  --node NODE -- CMD [ARGS...]  |  --underlay -- CMD [ARGS...]')
    .argument('<target-or-command...>')
    .option('-c, --container <name>', 'the container whose env and working directory to use (default: the first)')
    .option('--node <node>', 'run in this node\'s netns instead of a pod')
    .option('--underlay', 'run in the underlay netns (172.30.0.1): outside every node and pod, as a client outside the mesh')
    .action(async (words: string[], opts: { container?: string; node?: string; underlay?: boolean; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      if (opts.node && opts.underlay) throw new LocalError('--node and --underlay both given', 'pick one: a node\'s netns, or the underlay\'s');
      const away = opts.node !== undefined || opts.underlay === true;
      // Options go before `--`; everything after it is the command, its own options included.
      const dashes = words.indexOf('--');
      const target = away ? undefined : words[0];
      const cmd = dashes === -1 ? words.slice(away ? 0 : 1) : words.slice(dashes + 1);
      if (!away && (target === undefined || target === '--')) throw new LocalError('no pod given', 'ambit local exec NAMESPACE/POD -- CMD [ARGS...]');
      if (cmd.length === 0) throw new LocalError('no command given', 'ambit local exec NAMESPACE/POD -- CMD [ARGS...]');
      let argv: string[];
      let env: NodeJS.ProcessEnv = process.env;
      let cwd = process.cwd();
      if (opts.underlay) {
        if (!readState(layout.stateFile)) throw new LocalError(`cluster ${layout.name} does not exist`, `ambit local up --cluster ${layout.name}`);
        argv = launchArgv({ netns: layout.underlayNetns, argv: cmd });
      } else if (opts.node) {
        const state = readState(layout.stateFile);
        if (!state) throw new LocalError(`cluster ${layout.name} does not exist`, `ambit local up --cluster ${layout.name}`);
        if (!state.nodes.some((n) => n.name === opts.node)) throw new LocalError(`node "${opts.node}" does not exist in cluster ${layout.name} (nodes: ${state.nodes.map((n) => n.name).join(', ')})`);
        argv = launchArgv({ netns: layout.nodeNetns(opts.node), argv: cmd });
      } else {
        const [ns, pod] = target!.includes('/') ? target!.split('/', 2) : ['default', target!];
        const query = `pod=${encodeURIComponent(`${ns}/${pod}`)}${opts.container ? `&container=${encodeURIComponent(opts.container)}` : ''}`;
        const t = await new RuntimeClient(layout).request<{ netns: string; cgroup: string; files: { hosts: string; resolv: string; hostname: string }; env: Record<string, string>; cwd: string }>('GET', `/v1/exec?${query}`);
        argv = launchArgv({ cgroup: t.cgroup, netns: t.netns, files: t.files, argv: cmd });
        env = { ...t.env, ...(process.env.TERM ? { TERM: process.env.TERM } : {}) };
        cwd = t.cwd;
      }
      process.exitCode = await runForeground(argv, env, cwd);
    });

  withCluster(local.command('status'))
    .description('nodes, pods, services and components of a cluster')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      const status = await new RuntimeClient(layout).request<ClusterStatus>('GET', '/v1/status');
      if (opts.json) say(JSON.stringify(status, null, 2));
      else printStatus(status);
    });

  withCluster(local.command('logs'))
    .description('the output of a pod\'s container, or of a component (runtime)')
    .argument('<target>', 'NAMESPACE/POD, or a component name')
    .option('-c, --container <name>', 'the container (default: the first)')
    .option('-f, --follow', 'keep printing new output')
    .option('--tail <lines>', 'only the last lines', positiveInt('--tail', 1_000_000))
    .action(async (target: string, opts: { container?: string; follow?: boolean; tail?: number; name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      await printLogs(logFile(layout, target, opts.container), opts);
    });

  withCluster(local.command('component'))
    .description('stop, start or restart one of the cluster\'s components (controller, node-agent, prometheus); a stopped one stays stopped until started; a running node agent\'s restart is a handover (the new agent starts beside the old, which stops once the new one has enrolled the node\'s pods)')
    .argument('<action>', 'stop, start or restart')
    .argument('<name>', 'controller, node-agent (with --node) or prometheus')
    .option('--node <node>', 'the node, for a node agent')
    .action(async (action: string, name: string, opts: { node?: string; name?: string; cluster?: string }) => {
      if (!['stop', 'start', 'restart'].includes(action)) throw new LocalError(`unknown action "${action}": stop, start or restart`);
      const layout = clusterOf(opts);
      const r = await new RuntimeClient(layout).request<{ name: string; node?: string; state: string; pid?: number; handover?: { oldPid?: number; readyMs: number; oldExitMs: number } }>('POST', '/v1/components', { action, name, ...(opts.node ? { node: opts.node } : {}) });
      const h = r.handover;
      say(`${r.name}${r.node ? ` on ${r.node}` : ''}: ${r.state}${r.pid ? ` (pid ${r.pid})` : ''}${h?.oldPid ? `; handed over from pid ${h.oldPid} (new one ready in ${h.readyMs} ms, old one drained and exited ${h.oldExitMs} ms later)` : ''}`);
    });

  withCluster(local.command('down'))
    .description('stop a cluster and remove every netns, cgroup, pinned BPF object, process and state file it made')
    .action(async (opts: { name?: string; cluster?: string }) => {
      const layout = clusterOf(opts);
      const { existed } = await removeCluster(layout);
      say(existed ? `cluster ${layout.name} removed` : `cluster ${layout.name} does not exist; nothing to remove`);
    });

  withCluster(local.command('runtime', { hidden: true }))
    .description('the cluster\'s runtime process (started by `ambit local up`)')
    .option('--nodes <n>', 'number of nodes for a new cluster', positiveInt('--nodes', MAX_NODES))
    .action(async (opts: { nodes?: number; name?: string; cluster?: string }) => {
      await runDaemon(clusterOf(opts), opts.nodes);
      await new Promise(() => { /* serves until a signal or a shutdown request */ });
    });
}

function nameFlag(layout: ClusterLayout): string {
  return layout.name === DEFAULT_CLUSTER ? '' : ` --cluster ${layout.name}`;
}

export async function apply(client: RuntimeClient, verb: 'apply' | 'delete', inputs: ReturnType<typeof readManifestInputs>): Promise<ApplyResult> {
  try {
    return await client.request<ApplyResult>('POST', `/v1/${verb}`, { inputs });
  } catch (err) {
    if (err instanceof RuntimeRequestError && err.diagnostics) {
      for (const d of err.diagnostics) process.stderr.write(`${d.severity}: ${formatDiagnostic(d)}\n`);
      const errors = err.diagnostics.filter((d) => d.severity === 'error').length;
      throw new LocalError(`${verb} refused: ${errors} error${errors === 1 ? '' : 's'} in the manifests; nothing was changed`);
    }
    throw err;
  }
}

export function printApply(result: ApplyResult): void {
  for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
  for (const line of result.changes) say(line);
}

const SETTLED = (p: PodStatus) => p.phase === 'Succeeded' || (p.phase === 'Running' && p.containers.every((c) => c.state === 'running' && c.ready));
/** A pod that restarted this often without becoming ready will not become ready by waiting. */
const CRASH_LOOP_RESTARTS = 3;

async function waitForPods(client: RuntimeClient, layout: ClusterLayout, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const reported = new Set<string>();
  let lastWaiting = 0;
  for (;;) {
    const status = await client.request<ClusterStatus>('GET', '/v1/status');
    for (const p of status.pods) {
      const key = `${p.namespace}/${p.name}`;
      if (SETTLED(p) && !reported.has(key)) {
        reported.add(key);
        say(`  pod ${key} ${p.phase === 'Succeeded' ? 'completed' : 'running'} on ${p.node} (${p.ip})`);
      }
      const broken = p.phase === 'Failed' || (!SETTLED(p) && p.restarts >= CRASH_LOOP_RESTARTS);
      if (broken) {
        const c = p.containers.find((s) => s.exitCode !== undefined && s.exitCode !== 0) ?? p.containers[0];
        const file = c ? layout.containerLog(p.namespace, p.name, c.name) : undefined;
        throw new LocalError(
          `pod ${key} ${p.phase === 'Failed' ? 'failed' : `keeps crashing (${p.restarts} restarts)`}${c?.exitCode !== undefined ? `: container ${c.name} exited with ${c.exitCode}` : ''}${file ? `\n${tail(file, 10)}` : ''}`,
          `ambit local logs ${key}${nameFlag(layout)}`,
        );
      }
    }
    const waiting = status.pods.filter((p) => !SETTLED(p));
    const components = status.components.filter((c) => c.state !== 'running');
    for (const c of status.components) {
      const id = `component ${c.name}${c.node ? ` ${c.node}` : ''}`;
      if (c.state === 'running' && !reported.has(id)) {
        reported.add(id);
        say(`  ${c.name} running${c.node ? ` on ${c.node}` : ''}${c.detail ? ` (${c.detail})` : ''}`);
      }
    }
    if (waiting.length === 0 && components.length === 0) return;
    if (Date.now() > deadline) {
      const what = [...waiting.map((p) => `${p.namespace}/${p.name} (${p.phase}, ready ${p.ready})`), ...components.map((c) => `${c.name} (${c.state}: ${c.detail})`)];
      throw new LocalError(`timed out waiting for ${what.join(', ')}`, `ambit local status${nameFlag(layout)}; ambit local logs controller${nameFlag(layout)}`);
    }
    if (Date.now() - lastWaiting > 5000) {
      lastWaiting = Date.now();
      say(`  waiting for ${waiting.length} pod(s): ${waiting.slice(0, 6).map((p) => `${p.namespace}/${p.name} (${p.phase} ${p.ready})`).join(', ')}${waiting.length > 6 ? ', ...' : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Runs a command in the foreground: the terminal's Ctrl-C goes to it, and its exit status becomes ours. */
function runForeground(argv: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit', env, cwd });
    // SIGINT from a terminal reaches the child too (same process group); SIGTERM and SIGHUP sent
    // to this process alone (a supervisor, kill) are passed on, so the command can shut down.
    const ignore = () => { /* the child got the same signal from the terminal */ };
    const forward = (signal: NodeJS.Signals) => { child.kill(signal); };
    process.on('SIGINT', ignore);
    process.on('SIGTERM', forward);
    process.on('SIGHUP', forward);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      process.off('SIGINT', ignore);
      process.off('SIGTERM', forward);
      process.off('SIGHUP', forward);
      resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 1) : 1));
    });
  });
}

function logFile(layout: ClusterLayout, target: string, container?: string): string {
  if (!target.includes('/')) {
    const file = layout.componentLog(target);
    if (!existsSync(file)) throw new LocalError(`no component "${target}" in cluster ${layout.name}`, 'components: runtime; pods: NAMESPACE/POD');
    return file;
  }
  const [ns, name] = target.split('/', 2) as [string, string];
  const state = readState(layout.stateFile);
  if (!state) throw new LocalError(`cluster ${layout.name} does not exist`);
  const pod = state.pods[`${ns}/${name}`];
  if (!pod) throw new LocalError(`pod ${ns}/${name} not found in cluster ${layout.name}`, `ambit local status${nameFlag(layout)}`);
  const spec = container ? pod.spec.containers.find((c) => c.name === container) : pod.spec.containers[0];
  if (!spec) throw new LocalError(`pod ${ns}/${name} has no container "${container}" (containers: ${pod.spec.containers.map((c) => c.name).join(', ')})`);
  return layout.containerLog(ns, name, spec.name);
}

async function printLogs(file: string, opts: { follow?: boolean; tail?: number }): Promise<void> {
  let offset = 0;
  if (existsSync(file) && opts.tail !== undefined) {
    const text = readChunk(file, 0);
    const lines = text.split('\n');
    const keep = lines.slice(-(opts.tail + (text.endsWith('\n') ? 1 : 0))).join('\n');
    process.stdout.write(keep);
    offset = Buffer.byteLength(text);
  }
  for (;;) {
    if (existsSync(file)) {
      const size = statSync(file).size;
      if (size < offset) offset = 0; // truncated
      if (size > offset) {
        const chunk = readChunk(file, offset);
        process.stdout.write(chunk);
        offset += Buffer.byteLength(chunk);
      }
    } else if (opts.follow && offset > 0) {
      return; // the pod was deleted
    }
    if (!opts.follow) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

function readChunk(file: string, offset: number): string {
  const fd = openSync(file, 'r');
  try {
    const size = statSync(file).size - offset;
    const buf = Buffer.alloc(Math.max(0, size));
    const n = readSync(fd, buf, 0, buf.length, offset);
    return buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function printStatus(s: ClusterStatus): void {
  say(`cluster ${s.name} (state ${s.stateDir}, created ${age(s.createdAt)} ago)`);
  say();
  say(table(['NODE', 'IP', 'POD CIDR', 'PODS'], s.nodes.map((n) => [n.name, n.ip, n.podCidr, String(n.pods)])));
  say();
  if (s.pods.length === 0) say('no pods');
  else {
    say(table(['NAMESPACE', 'POD', 'NODE', 'IP', 'PHASE', 'READY', 'RESTARTS', 'SERVICE ACCOUNT', 'AGE'],
      s.pods.map((p) => [p.namespace, p.name, p.node, p.ip, p.phase, p.ready, String(p.restarts), p.serviceAccount, age(p.createdAt)])));
  }
  say();
  if (s.services.length === 0) say('no services');
  else {
    say(table(['NAMESPACE', 'SERVICE', 'VIP', 'PORTS', 'ENDPOINTS'], s.services.map((v) => [
      v.namespace, v.name, v.vip,
      v.ports.map((p) => `${p.name ? `${p.name}:` : ''}${p.port}->${p.targetPort}/${p.protocol}`).join(','),
      v.endpoints.length ? v.endpoints.join(',') : '<none>',
    ])));
  }
  say();
  say(table(['COMPONENT', 'NODE', 'STATE', 'PID', 'DETAIL'], s.components.map((c) => [c.name, c.node ?? '-', c.state, c.pid ? String(c.pid) : '-', c.detail])));
  if (s.controller) {
    say();
    if (s.controller.subscribers.length === 0) say(`config version ${s.controller.version}; no subscribers`);
    else {
      say(table(['SUBSCRIBER', 'NODE', 'APPLIED', 'LAST NACK'], s.controller.subscribers.map((x) => [
        x.kind === 'waypoint' || x.kind === 'gateway' ? `${x.kind} ${x.name}` : x.kind, x.node, `${x.lastAck ?? '-'}${x.lastAck !== undefined && modelVersionOf(x.lastAck) === s.controller!.version ? ' (current)' : ''}`,
        x.lastNack ? `${x.lastNack.version}: ${x.lastNack.error}` : '-',
      ])));
    }
    const rejected = s.controller.rejected ?? [];
    if (rejected.length > 0) {
      say();
      say(`rejected by the controller (in ${join(s.stateDir, 'config')}):`);
      for (const r of rejected) say(`  ${r}`);
    }
  }
  // Older runtimes answer without gateways.
  const gateways = s.gateways ?? [];
  if (gateways.length > 0) {
    say();
    say(table(['NAMESPACE', 'GATEWAY', 'SERVICE ACCOUNT', 'READY', 'EXPOSED ON', 'FOR'], gateways.map((g) => [
      g.namespace, g.name, g.serviceAccount, g.ready ? 'yes' : 'no',
      g.hostPorts.length ? g.hostPorts.map((p) => `${g.address}:${p}`).join(',') : '<none>', g.from.join(','),
    ])));
    for (const g of gateways) for (const e of g.errors) say(`gateway ${g.namespace}/${g.name}: ${e}`);
  }
  if (s.others.length > 0) {
    say();
    say(`kept for the controller: ${s.others.map((o) => `${o.kind}${o.namespace ? ` ${o.namespace}/` : ' '}${o.name}`).join(', ')}`);
  }
}
