/**
 * What the ambit-cni plugin adds to a pod's start: the time the container runtime waits for the
 * plugin's ADD, for a meshed pod (the agent reads the Pod and Namespace, gets the certificate
 * signed, opens the listeners in the sandbox's netns, writes the maps) against two baselines run
 * in the same script — the plugin with no agent on the node (pass-through: exec + parse only) and
 * a pod outside the mesh (the agent reads Pod and Namespace and passes it on).
 *
 * Real processes on this machine: `ambit controller --kubernetes` and `ambit node --kubernetes`
 * against the stand-in API server of the tests (loopback), real network namespaces (one per
 * sandbox, made and deleted by the bench), the real datapath and the real plugin binary. Bounded:
 * `--pods N` sandboxes per scenario (default 30), each ADDed then DELeted.
 *
 *   npx tsx bench/cni-add.ts [--pods N] [--out FILE]      (as root)
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NODE_NAME_EXTRA } from '../src/identity/tokenreview.js';
import { Lab } from '../src/local/lab.js';
import { FakeApiServer, freePort, writeKubeconfig } from '../test/helpers/fake-apiserver.js';
import { atQuantile, HERE, machine, mdTable, RESULTS, round, runMain, say, UsageError } from './lib.js';

const ROOT = join(HERE, '..');
const BIN = join(ROOT, 'bin/ambit.js');

interface Timed { ms: number; code: number; body: string }

function summary(samples: number[]): { p50: number; p90: number; max: number; mean: number } {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: round(atQuantile(s, 0.5)), p90: round(atQuantile(s, 0.9)), max: round(s.at(-1)!), mean: round(s.reduce((a, b) => a + b, 0) / s.length) };
}

/** One plugin run as the runtime makes it: env, config on stdin; wall time to its exit. */
function plugin(binary: string, command: 'ADD' | 'DEL', socket: string, pod: { ns: string; name: string; uid: string }, netns: string, ip: string): Promise<Timed> {
  const config = { cniVersion: '1.0.0', name: 'bench', type: 'ambit-cni', socket, prevResult: { cniVersion: '1.0.0', ips: [{ address: `${ip}/32` }] } };
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const child = spawn(binary, [], {
      env: {
        CNI_COMMAND: command, CNI_CONTAINERID: `sbx-${pod.name}`, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin',
        CNI_ARGS: `K8S_POD_NAMESPACE=${pod.ns};K8S_POD_NAME=${pod.name};K8S_POD_UID=${pod.uid}`,
      },
    });
    let body = '';
    child.stdout.on('data', (c: Buffer) => { body += c.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, code: code ?? -1, body }));
    child.stdin.end(JSON.stringify(config));
  });
}

async function until(what: string, f: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  let pods = 30;
  let out = join(RESULTS, 'cni-add.json');
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--pods') pods = Number(args[++i]);
    else if (args[i] === '--out') out = args[++i]!;
    else throw new UsageError(`unknown option ${args[i]}`);
  }
  if (!Number.isInteger(pods) || pods < 5 || pods > 500) throw new UsageError('--pods takes 5..500');

  const lab = new Lab('ambit-bench-cni');
  const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-cni-'));
  const api = new FakeApiServer([
    { group: '', version: 'v1', kind: 'Namespace', plural: 'namespaces' },
    { group: '', version: 'v1', kind: 'Pod', plural: 'pods' },
    { group: 'apps', version: 'v1', kind: 'DaemonSet', plural: 'daemonsets' },
  ]);
  const procs: ChildProcess[] = [];
  const node = `bench-${lab.id}`;
  try {
    const binary = join(dir, 'ambit-cni');
    execFileSync(join(ROOT, 'scripts/build-cni.sh'), [binary], { stdio: 'pipe' });
    await api.start();
    api.tokens.set('agent', { authenticated: true, user: { username: 'system:serviceaccount:ambit-system:ambit-node', extra: { [NODE_NAME_EXTRA]: [node] } } });
    api.apply('Namespace', { metadata: { name: 'mesh', labels: { 'ambit.dev/dataplane-mode': 'ambient' } } });
    api.apply('Namespace', { metadata: { name: 'plain' } });
    api.apply('DaemonSet', { metadata: { name: 'ambit-node', namespace: 'ambit-system' }, spec: {} }, 'apps');
    const kubeconfig = writeKubeconfig(join(dir, 'kubeconfig'), api.url);
    writeFileSync(join(dir, 'token'), 'agent\n');
    const port = await freePort();
    const start = (argv: string[]) => {
      const p = spawn(process.execPath, [BIN, ...argv], { env: { ...process.env, POD_NAMESPACE: 'ambit-system', AMBIT_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] });
      procs.push(p);
      return p;
    };
    start(['controller', '--kubernetes', kubeconfig, '--ca-dir', join(dir, 'ca'), '--listen', `127.0.0.1:${port}`, '--health', `127.0.0.1:${await freePort()}`]);
    const health = await freePort();
    const socket = join(dir, 'cni.sock');
    mkdirSync(join(dir, 'none'));
    start([
      'node', '--kubernetes', kubeconfig, '--node', node, '--controller', `127.0.0.1:${port}`, '--token-file', join(dir, 'token'),
      '--ca-file', join(dir, 'ca', 'ca-cert.pem'), '--pin-root', lab.pinRoot, '--cgroup', lab.cgroupRoot, '--admin', `127.0.0.1:${await freePort()}`,
      '--telemetry-host', '127.0.0.1', '--metrics-port', String(await freePort()), '--health-port', String(health), '--drain-seconds', '0', '--cni-socket', socket,
    ]);
    await until('the node agent ready', async () => (await fetch(`http://127.0.0.1:${health}/healthz/ready`).catch(() => undefined))?.status === 200, 60_000);

    const scenarios = [
      { key: 'no-agent', label: 'plugin, no agent on the node (pass-through)', ns: 'plain', socket: join(dir, 'none', 'cni.sock') },
      { key: 'outside', label: 'pod outside the mesh (agent reads Pod + Namespace)', ns: 'plain', socket },
      { key: 'meshed-warm', label: 'meshed pod, its ServiceAccount\'s certificate already on the node (listeners, maps)', ns: 'mesh', socket },
      { key: 'meshed-cold', label: 'meshed pod, first of its ServiceAccount on the node (+ key, CSR, signing)', ns: 'mesh', socket },
    ] as const;
    // A pod that stays: the node holds the certificate of ServiceAccount "warm" throughout.
    const holderNs = lab.netns('holder');
    lab.addresses(holderNs, '10.208.9.2/32');
    api.apply('Pod', { metadata: { name: 'holder', namespace: 'mesh', uid: 'uid-holder' }, spec: { nodeName: node, serviceAccountName: 'warm', containers: [{ name: 'c', image: 'x' }] }, status: { phase: 'Pending' } });
    const held = await plugin(binary, 'ADD', socket, { ns: 'mesh', name: 'holder', uid: 'uid-holder' }, holderNs, '10.208.9.2');
    if (held.code !== 0) throw new Error(`holder ADD failed: ${held.body}`);
    const results: Record<string, { add: number[]; del: number[] }> = {};
    for (const s of scenarios) results[s.key] = { add: [], del: [] };
    // Interleaved rounds, so that drift on a noisy machine falls on every scenario alike.
    for (let i = 0; i < pods; i++) {
      for (const s of scenarios) {
        const name = `${s.key}-${i}`;
        const ip = `10.208.${1 + scenarios.indexOf(s)}.${(i % 250) + 2}`;
        const netns = lab.netns(`s${scenarios.indexOf(s)}-${i}`);
        lab.addresses(netns, `${ip}/32`);
        const uid = `uid-${name}`;
        api.apply('Pod', { metadata: { name, namespace: s.ns, uid }, spec: { nodeName: node, serviceAccountName: s.key === 'meshed-cold' ? `cold-${i}` : 'warm', containers: [{ name: 'c', image: 'x' }] }, status: { phase: 'Pending' } });
        const add = await plugin(binary, 'ADD', s.socket, { ns: s.ns, name, uid }, netns, ip);
        if (add.code !== 0) throw new Error(`${s.key} ADD ${name} failed: ${add.body}`);
        const del = await plugin(binary, 'DEL', s.socket, { ns: s.ns, name, uid }, netns, ip);
        if (del.code !== 0) throw new Error(`${s.key} DEL ${name} failed: ${del.body}`);
        results[s.key]!.add.push(add.ms);
        results[s.key]!.del.push(del.ms);
        api.delete('Pod', s.ns, name);
      }
    }
    const base = summary(results['no-agent']!.add);
    const rows = scenarios.map((s) => {
      const add = summary(results[s.key]!.add);
      const del = summary(results[s.key]!.del);
      return { scenario: s.key, label: s.label, add, del, add_p50_over_no_agent_ms: round(add.p50 - base.p50), add_p50_ratio: round(add.p50 / base.p50) };
    });
    const meta = { ...machine(), pods, note: 'ms from the plugin\'s exec to its exit, as the container runtime waits for it' };
    writeFileSync(out, `${JSON.stringify({ meta, rows }, null, 2)}\n`);
    const lines = [
      `# ambit-cni ADD and DEL (${pods} sandboxes per scenario, interleaved; ${meta.date}, ${meta.cpus} vCPU, ${meta.kernel})`,
      '',
      ...mdTable(['scenario', 'ADD p50 ms', 'ADD p90 ms', 'ADD max ms', 'ADD p50 over no agent', 'DEL p50 ms'],
        rows.map((r) => [r.label, String(r.add.p50), String(r.add.p90), String(r.add.max), `+${r.add_p50_over_no_agent_ms} ms (×${r.add_p50_ratio})`, String(r.del.p50)])),
      '',
    ];
    writeFileSync(out.replace(/\.json$/, '.md'), `${lines.join('\n')}\n`);
    for (const l of lines) say(l);
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await api.close();
    await lab.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

runMain('cni-add', 'npx tsx bench/cni-add.ts [--pods N] [--out FILE]', main);
