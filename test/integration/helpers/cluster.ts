/**
 * A local cluster as an integration test drives it: its own name and state root, manifests
 * applied from files, commands run in its pods and nodes, its agents' metrics and access logs.
 * `down()` removes the cluster and every temporary file, and belongs in `afterAll`.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClusterStatus } from '../../../src/local/runtime.js';
import { cli } from './cli.js';

/** The node agents' addresses on the local cluster's underlay (see src/local/layout.ts). */
export const NODE_IP: Record<string, string> = { 'node-1': '172.30.0.11', 'node-2': '172.30.0.12' };

/** One line of a node agent's access log, as the tests read it. */
export interface AccessLogLine {
  source: { ip: string; workload: string | null; principal: string | null };
  destination: { ip: string; port?: number; workload: string | null };
  connection: { response_flags: string; error?: string; exempt?: string; policy?: string };
}

export interface LocalCluster {
  name: string;
  stateDir: string;
  env: NodeJS.ProcessEnv;
  ambit: ReturnType<typeof cli>['ambit'];
  ok: ReturnType<typeof cli>['ok'];
  /** `ambit local up` with these manifests. */
  up(yaml: string): Promise<string>;
  apply(file: string, yaml: string): Promise<string>;
  remove(file: string): Promise<string>;
  status(): Promise<ClusterStatus>;
  /** A command inside a pod (`namespace/name`) or, with `{ node }`, a node's netns; its stdout. */
  exec(where: string | { node: string }, argv: string[]): Promise<string>;
  /** A URL fetched from inside a node's netns (the agent's admin and metrics listen there). */
  nodeFetch(node: string, url: string): Promise<string>;
  /** The node agent's Prometheus text. */
  metrics(node: string): Promise<string>;
  accessLog(node: string): AccessLogLine[];
  down(): Promise<void>;
}

export function localCluster(prefix: string): LocalCluster {
  const stateRoot = mkdtempSync(join(tmpdir(), `ambit-${prefix}-`));
  const files = mkdtempSync(join(tmpdir(), `ambit-${prefix}-m-`));
  const name = `${prefix.slice(0, 4)}${Math.random().toString(36).slice(2, 6)}`;
  const stateDir = join(stateRoot, name);
  const env = { ...process.env, AMBIT_LOCAL_STATE: stateRoot };
  const { ambit, ok } = cli(env);
  const write = (file: string, yaml: string) => {
    writeFileSync(join(files, file), yaml);
    return join(files, file);
  };
  const exec: LocalCluster['exec'] = (where, argv) => ok(['local', 'exec', '--cluster', name, ...(typeof where === 'string' ? [where] : ['--node', where.node]), '--', ...argv]);
  const nodeFetch = (node: string, url: string) => exec({ node }, ['node', '-e', 'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))', url]);
  return {
    name, stateDir, env, ambit, ok, exec, nodeFetch,
    up: (yaml) => ok(['local', 'up', '--cluster', name, '-f', write('up.yaml', yaml)]),
    apply: (file, yaml) => ok(['local', 'apply', '--cluster', name, '-f', write(file, yaml)]),
    remove: (file) => ok(['local', 'delete', '--cluster', name, '-f', join(files, file)]),
    status: async () => JSON.parse(await ok(['local', 'status', '--json', '--cluster', name])) as ClusterStatus,
    metrics: (node) => nodeFetch(node, `http://${NODE_IP[node]}:15020/metrics`),
    accessLog: (node) => readFileSync(join(stateDir, 'logs', `node-agent.${node}.log`), 'utf8').split('\n')
      .filter((l) => l.includes('"component":"access"')).map((l) => JSON.parse(l) as AccessLogLine),
    async down() {
      try {
        await ambit(['local', 'down', '--cluster', name]);
      } finally {
        rmSync(stateRoot, { recursive: true, force: true });
        rmSync(files, { recursive: true, force: true });
      }
    },
  };
}

/** Whether every container of a pod is ready ("2/2"). */
export const isReady = (p: { ready: string }): boolean => {
  const [n, of] = p.ready.split('/');
  return n === of;
};
