/**
 * What the controller reads from a local cluster's state directory: the node agents'
 * bootstrap tokens and which workload identities run on which node.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { NodeDirectory } from '../identity/ca-server.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import type { ClusterState } from '../local/state.js';

/** node name → token, from `<state>/nodes/<node>/token` (written by the runtime when the node is made). */
export function readBootstrapTokens(stateDir: string): Record<string, string> {
  const nodesDir = join(stateDir, 'nodes');
  const tokens: Record<string, string> = {};
  if (!existsSync(nodesDir)) return tokens;
  for (const node of readdirSync(nodesDir)) {
    const file = join(nodesDir, node, 'token');
    if (existsSync(file)) tokens[node] = readFileSync(file, 'utf8').trim();
  }
  return tokens;
}

/** Pods per node from the cluster state file, re-read when it changes. */
export class LocalNodeDirectory implements NodeDirectory {
  private mtime = -1;
  private byNode = new Map<string, Set<string>>();

  constructor(private readonly stateFile: string, private readonly trustDomain: string) {}

  identitiesOnNode(node: string): ReadonlySet<string> {
    this.refresh();
    return this.byNode.get(node) ?? new Set();
  }

  private refresh(): void {
    let mtime: number;
    try {
      mtime = statSync(this.stateFile).mtimeMs;
    } catch {
      this.byNode = new Map();
      return;
    }
    if (mtime === this.mtime) return;
    const state = JSON.parse(readFileSync(this.stateFile, 'utf8')) as ClusterState;
    const byNode = new Map<string, Set<string>>();
    for (const pod of Object.values(state.pods)) {
      const id = formatSpiffeId({ trustDomain: this.trustDomain, namespace: pod.namespace, serviceAccount: pod.spec.serviceAccountName });
      let set = byNode.get(pod.node);
      if (!set) byNode.set(pod.node, (set = new Set()));
      set.add(id);
    }
    this.byNode = byNode;
    this.mtime = mtime;
  }
}
