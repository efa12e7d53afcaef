/**
 * The discovery stream at scale, on loopback: a controller process serving a model of
 * --pods pods (spread over --agents nodes) and --services services, and --agents simulated node
 * agents (real DiscoveryClients over gRPC/TLS, all in this process).
 *
 *   full sync      from the agents' first connect until every one applied its snapshot
 *   demands        (--scope node) each agent then asks for --demand services, as its pods'
 *                  first calls to them would: the time from asking to holding their endpoints
 *   propagation    one pod change → the time until every agent it concerns applied the new
 *                  version (--changes changes; first with one agent connected — the baseline —
 *                  then with all): in cluster scope every agent, in node scope the pod's node's
 *                  agent and those that asked for its service (the controller says how many it
 *                  pushed to); and one service change (a port of svc-0), which every agent holds
 *   controller RSS after the full sync, from the controller process itself
 *   agent state   what one node agent holds: its snapshot's bytes (key, type, JSON of each
 *                 resource, as the DiscoveryClient keeps them) and the heap of the MeshState
 *                 the node agent builds from it (src/discovery/mesh-state.ts)
 *   per change    where the controller's time goes: the synthetic source's snapshot, buildModel,
 *                 encoding (update() less its pushes) and the pushes (deltas built and written)
 *
 *   npx tsx bench/discovery.ts [--pods 10000] [--services 1000] [--agents 100] [--changes 30]
 *                              [--scope node|cluster] [--demand 10]
 *                              [--out FILE] [--profile DIR] [--fresh-pods]
 *
 * --scope: what the agents subscribe to (Subscribe.scope; default node, as node agents do).
 *
 * --out: where the result goes (default bench/results/discovery.json). --profile DIR: the
 * controller process writes V8 CPU profiles of the full sync (fullsync.cpuprofile) and of the
 * changes to all agents (changes.cpuprofile), and a heap snapshot after the full sync
 * (fullsync.heapsnapshot), into DIR; bench/profile-summary.ts summarizes them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { DiscoveryClient, DiscoveryServer, discoveryService, modelVersionOf, type DiscoveryScope } from '../src/discovery/discovery.js';
import { MeshState } from '../src/discovery/mesh-state.js';
import { buildModel, type PodInfo } from '../src/config/model.js';
import { CertificateAuthority, FileCaStore } from '../src/identity/ca.js';
import { BootstrapTokenAuthenticator, CaServer } from '../src/identity/ca-server.js';
import type { Resource, ServiceResource } from '../src/kube/manifests.js';

const { values } = parseArgs({
  options: {
    pods: { type: 'string', default: '10000' }, services: { type: 'string', default: '1000' }, agents: { type: 'string', default: '100' },
    changes: { type: 'string', default: '30' }, serve: { type: 'boolean' }, dir: { type: 'string' },
    out: { type: 'string' }, profile: { type: 'string' }, 'fresh-pods': { type: 'boolean' },
    scope: { type: 'string', default: 'node' }, demand: { type: 'string', default: '10' },
  },
});
if (values.scope !== 'node' && values.scope !== 'cluster') throw new Error(`--scope must be node or cluster, got "${values.scope}"`);
const scope: DiscoveryScope = values.scope;
const demandPerAgent = Number(values.demand);
if (!Number.isInteger(demandPerAgent) || demandPerAgent < 0) throw new Error('--demand must be a whole number');
const pods = Number(values.pods);
const services = Number(values.services);
const agents = Number(values.agents);
const changes = Number(values.changes);
for (const [k, v] of Object.entries({ pods, services, agents, changes })) {
  if (!Number.isInteger(v) || v < 1 || v > 1_000_000) throw new Error(`--${k} must be a positive integer`);
}
const token = (i: number) => `bench-token-${i}`;
const node = (i: number) => `node-${i}`;

const podInfo = (i: number, revision: number): PodInfo => ({
  uid: `pod-${i}`, namespace: 'bench', name: `pod-${i}`, node: node((i % agents) + 1),
  ip: `10.${Math.floor(i / 65536) + 100}.${Math.floor(i / 256) % 256}.${i % 256}`,
  // Pod 0's label changes with each revision: one pod change per step.
  labels: { app: `svc-${i % services}`, ...(i === 0 ? { revision: String(revision) } : {}) },
  spec: { serviceAccountName: `sa-${i % services}`, restartPolicy: 'Always', terminationGracePeriodSeconds: 30, containers: [{ name: 'c', argv: ['x'], env: [], cwd: '/', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }] },
});

/**
 * The source's pods at a revision: a new array each time, in which, as in KubernetesSource's
 * snapshots (its watch cache), a pod that did not change is the object of the previous one;
 * --fresh-pods makes every pod anew each time, as LocalClusterSource does.
 */
let current: PodInfo[] | undefined;
function snapshotPods(revision: number): PodInfo[] {
  if (!current || values['fresh-pods']) current = Array.from({ length: pods }, (_, i) => podInfo(i, revision));
  else {
    current = [...current];
    current[0] = podInfo(0, revision);
  }
  return current;
}

/** The config at a service revision: svc-0 has a second port numbered after it (one service change per step). */
function snapshotResources(serviceRevision = 0): Resource[] {
  const ns: Resource = { apiVersion: 'v1', kind: 'Namespace', meta: { name: 'bench', namespace: '', labels: { 'ambit.dev/dataplane-mode': 'ambient' }, annotations: {} }, source: { file: 'bench', doc: 1 }, raw: {} } as Resource;
  const svcs = Array.from({ length: services }, (_, i): ServiceResource => ({
    apiVersion: 'v1', kind: 'Service', meta: { name: `svc-${i}`, namespace: 'bench', labels: {}, annotations: {} }, source: { file: 'bench', doc: i + 2 }, raw: {},
    spec: {
      type: 'ClusterIP', clusterIP: `10.96.${Math.floor(i / 256)}.${i % 256}`, selector: { app: `svc-${i}` },
      ports: [{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }, ...(i === 0 ? [{ name: 'rev', port: 10_000 + serviceRevision, targetPort: 'http', protocol: 'TCP' as const }] : [])],
    },
  }));
  return [ns, ...svcs];
}

/** The controller side, in its own process so that its RSS is its own. */
async function serve(dir: string): Promise<void> {
  const ca = await CertificateAuthority.open({ store: new FileCaStore(join(dir, 'ca')) });
  const tokens = Object.fromEntries(Array.from({ length: agents }, (_, i) => [node(i + 1), token(i + 1)]));
  const auth = new BootstrapTokenAuthenticator(tokens);
  // The seconds update() spends in pushes (deltas built, serialized, written), for the split per change.
  let pushSeconds = 0;
  let pushed = 0;
  const discovery = new DiscoveryServer(auth, undefined, { observer: { pushed: (_kind, _bytes, seconds) => { pushSeconds += seconds; pushed++; }, rejected: () => undefined } });
  let resources = snapshotResources();
  let revision = 0;
  let serviceRevision = 0;
  discovery.update(buildModel({ resources, pods: snapshotPods(revision) }, 'cluster.local'));
  // The CPU profiler of this process, for --profile: started and stopped around a phase by the bench.
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object) => new Promise<unknown>((ok, fail) => session.post(method, params, (err, res) => (err ? fail(err) : ok(res))));
  const server = await CaServer.start({
    ca, authenticator: auth, directory: { identitiesOnNode: () => new Set() }, host: '127.0.0.1', port: 0,
    services: [{ definition: discoveryService().service, implementation: discovery.implementation() }],
  });
  const say = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  say({ port: server.port, roots: ca.trustBundle() });
  for await (const line of createInterface({ input: process.stdin })) {
    const [command, arg] = line.split(' ');
    if (command === 'change' || command === 'change-service') {
      if (command === 'change') revision++;
      else {
        // Only svc-0 is a new object, as in KubernetesSource's cache, where unchanged objects stay the same.
        resources = [...resources];
        resources[1] = snapshotResources(++serviceRevision)[1]!;
      }
      const t0 = performance.now();
      const snapshot = { resources, pods: snapshotPods(revision) };
      const t1 = performance.now();
      const model = buildModel(snapshot, 'cluster.local');
      const t2 = performance.now();
      pushSeconds = 0;
      pushed = 0;
      discovery.update(model);
      const t3 = performance.now();
      say({ version: discovery.version, pushed, modelMs: t3 - t0, split: { sourceMs: t1 - t0, buildModelMs: t2 - t1, encodeMs: t3 - t2 - pushSeconds * 1000, pushMs: pushSeconds * 1000 } });
    } else if (command === 'profile-start') {
      await post('Profiler.enable');
      await post('Profiler.setSamplingInterval', { interval: 200 });
      await post('Profiler.start');
      say({ ok: true });
    } else if (command === 'profile-stop') {
      const { profile } = await post('Profiler.stop') as { profile: unknown };
      writeFileSync(arg!, JSON.stringify(profile));
      say({ ok: true });
    } else if (command === 'heap') {
      global.gc?.();
      writeHeapSnapshot(arg);
      say({ ok: true });
    } else if (command === 'rss') {
      global.gc?.();
      say({ rss: process.memoryUsage().rss });
    } else if (line === 'quit') {
      server.forceClose();
      process.exit(0);
    }
  }
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-disc-'));
  const child: ChildProcess = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url), '--serve', '--dir', dir,
    '--pods', String(pods), '--services', String(services), '--agents', String(agents), ...(values['fresh-pods'] ? ['--fresh-pods'] : [])], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async <T>() => JSON.parse((await lines.next()).value as string) as T;
  const clients: DiscoveryClient[] = [];
  try {
    const { port, roots } = await next<{ port: number; roots: string[] }>();
    // Woken at each version any agent applies: the waits below check their condition then.
    const woken = new Set<() => void>();
    const applied = () => new Promise<void>((r) => woken.add(r));
    const connect = (i: number) => new DiscoveryClient({
      address: `127.0.0.1:${port}`, roots, token: token(i), node: node(i), kind: 'node-agent', scope,
      apply: () => { for (const w of woken) w(); woken.clear(); },
    });

    const profileDir = values.profile ? resolve(values.profile) : undefined;
    if (profileDir) mkdirSync(profileDir, { recursive: true });
    const command = async (line: string) => {
      child.stdin!.write(`${line}\n`);
      await next<{ ok: true }>();
    };

    const controllerMs: number[] = [];
    type Split = { sourceMs: number; buildModelMs: number; encodeMs: number; pushMs: number };
    const splits: Split[] = [];
    /** Changes one at a time; each is timed until as many agents as the controller pushed it to hold its model. */
    const propagate = async (set: DiscoveryClient[], kind: 'change' | 'change-service' = 'change'): Promise<{ times: number[]; reached: number[] }> => {
      const times: number[] = [];
      const reached: number[] = [];
      for (let c = 0; c < changes; c++) {
        const t = performance.now();
        const wait = applied();
        child.stdin!.write(`${kind}\n`);
        const { version, pushed, modelMs, split } = await next<{ version: string; pushed: number; modelMs: number; split: Split }>();
        controllerMs.push(modelMs);
        if (set.length > 1 && kind === 'change') splits.push(split);
        const holding = () => set.filter((x) => modelVersionOf(x.appliedVersion) === version).length;
        if (pushed > 0) await wait;
        while (holding() < pushed) await applied();
        times.push(performance.now() - t);
        reached.push(pushed);
      }
      return { times: times.sort((a, b) => a - b), reached };
    };

    clients.push(connect(1));
    await clients[0]!.ready;
    const baseline = (await propagate(clients)).times;

    if (profileDir) await command('profile-start');
    let t = performance.now();
    for (let i = 2; i <= agents; i++) clients.push(connect(i));
    await Promise.all(clients.map((c) => c.ready));
    const fullSyncMs = performance.now() - t;
    if (profileDir) await command(`profile-stop ${join(profileDir, 'fullsync.cpuprofile')}`);
    child.stdin!.write('rss\n');
    const { rss } = await next<{ rss: number }>();
    // Node scope: each agent asks for --demand services (svc-0, which pod 0 serves, among them for
    // agent 1), as its pods' first calls would; each demand timed from asking to holding the endpoints.
    const demandMs: number[] = [];
    if (scope === 'node' && demandPerAgent > 0) {
      await Promise.all(clients.map(async (c, i) => {
        const asked = Array.from({ length: demandPerAgent }, (_, k) => `service/bench/svc-${(i * 7919 + k * 104_729) % services}`);
        for (const name of asked) {
          const t1 = performance.now();
          c.demand([name]);
          while (!c.resources.has(name)) await applied();
          demandMs.push(performance.now() - t1);
        }
      }));
      demandMs.sort((a, b) => a - b);
    }
    // One node agent's config: the wire form the client holds, and the MeshState built from it.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const held = clients[0]!.resources;
    let snapshotBytes = 0;
    for (const r of held.values()) snapshotBytes += r.key.length + r.type.length + r.json.length;
    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    let t0 = performance.now();
    const state = new MeshState('bench', held, { scope });
    const meshStateMs = performance.now() - t0;
    gc();
    const meshStateMb = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20;
    // Again, as after a delta: the parsed objects are kept, the lookups are built anew.
    t0 = performance.now();
    new MeshState('bench', held, { scope });
    const meshStateAgainMs = performance.now() - t0;
    const agentState = { resources: held.size, workloads: state.workloads.size, snapshotMb: snapshotBytes / 2 ** 20, meshStateMb, meshStateMs, meshStateAgainMs };
    // After the RSS: writing the snapshot takes memory of its own.
    if (profileDir) await command(`heap ${join(profileDir, 'fullsync.heapsnapshot')}`);
    if (profileDir) await command('profile-start');
    t = performance.now();
    const { times: all, reached } = await propagate(clients);
    const service = (await propagate(clients, 'change-service')).times;
    if (profileDir) await command(`profile-stop ${join(profileDir, 'changes.cpuprofile')}`);

    const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const perChange = {
      sourceMs: median(splits.map((x) => x.sourceMs)), buildModelMs: median(splits.map((x) => x.buildModelMs)),
      encodeMs: median(splits.map((x) => x.encodeMs)), pushMs: median(splits.map((x) => x.pushMs)),
    };
    const result = {
      date: new Date().toISOString(), node: process.version, cpus: cpus().length, pods, services, agents, changes, freshPods: values['fresh-pods'] ?? false,
      scope, demandPerAgent: scope === 'node' ? demandPerAgent : 0,
      fullSyncMs, controllerRssMb: rss / 2 ** 20,
      ...(demandMs.length > 0 ? { demand: { p50: pct(demandMs, 50), p99: pct(demandMs, 99) } } : {}), controllerUpdateMsP50: [...controllerMs].sort((a, b) => a - b)[Math.floor(controllerMs.length / 2)]!,
      propagation1: { p50: pct(baseline, 50), p99: pct(baseline, 99) },
      propagationAll: { p50: pct(all, 50), p99: pct(all, 99), agentsReached: median(reached) },
      propagationService: { p50: pct(service, 50), p99: pct(service, 99) },
      controllerPerChangeP50: perChange,
      agentState,
    };
    const say = (s: string) => process.stdout.write(`${s}\n`);
    say(`${pods} pods, ${services} services, ${agents} node agents of scope ${scope} (${cpus().length} CPUs, Node.js ${process.version})`);
    say(`full sync of ${agents} agents            ${fullSyncMs.toFixed(0)} ms`);
    say(`controller RSS after sync          ${result.controllerRssMb.toFixed(0)} MB`);
    if (result.demand) say(`demand → endpoints held            p50 ${result.demand.p50.toFixed(1)} ms  p99 ${result.demand.p99.toFixed(1)} ms (${demandPerAgent} services asked by each agent at once)`);
    say(`one agent's config                 ${agentState.resources} resources (${agentState.workloads} workloads), ${agentState.snapshotMb.toFixed(1)} MB as received, MeshState ${agentState.meshStateMb.toFixed(1)} MB of heap, built in ${agentState.meshStateMs.toFixed(0)} ms (${agentState.meshStateAgainMs.toFixed(0)} ms again, as per delta)`);
    say(`controller model + deltas / change p50 ${result.controllerUpdateMsP50.toFixed(1)} ms`);
    say(`  of which (all agents, p50 each)  source ${perChange.sourceMs.toFixed(1)} ms, buildModel ${perChange.buildModelMs.toFixed(1)} ms, encode ${perChange.encodeMs.toFixed(1)} ms, push ${perChange.pushMs.toFixed(1)} ms`);
    say(`one pod change → 1 agent           p50 ${result.propagation1.p50.toFixed(1)} ms  p99 ${result.propagation1.p99.toFixed(1)} ms (baseline)`);
    say(`one pod change → the ${result.propagationAll.agentsReached} agents it concerns  p50 ${result.propagationAll.p50.toFixed(1)} ms  p99 ${result.propagationAll.p99.toFixed(1)} ms  (p99 x baseline ${(result.propagationAll.p99 / result.propagation1.p99).toFixed(1)})`);
    say(`one service change → all ${agents} agents p50 ${result.propagationService.p50.toFixed(1)} ms  p99 ${result.propagationService.p99.toFixed(1)} ms`);
    const out = values.out ? resolve(values.out) : join(dirname(fileURLToPath(import.meta.url)), 'results', 'discovery.json');
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  } finally {
    for (const c of clients) c.close();
    child.stdin!.write('quit\n');
    await new Promise((r) => child.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
}

if (values.serve) await serve(values.dir!);
else await main();
