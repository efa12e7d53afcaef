/**
 * What the controller reads from a local cluster's state directory: the node agents'
 * bootstrap tokens and which workload identities run on which node.
 */
import { existsSync, readdirSync, readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { NodeDirectory } from '../identity/ca-server.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import type { Resource, ServiceResource } from '../local/manifests.js';
import type { ClusterState } from '../local/state.js';
import type { PodInfo, SourceSnapshot } from './model.js';

/** Where the controller's configuration comes from: the local cluster, a manifest directory, or the Kubernetes API. */
export interface ConfigSource {
  start(onChange: (snapshot: SourceSnapshot) => void): void;
  stop(): void;
}

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

/**
 * The local cluster as a config source: everything applied (kept in the runtime's state file,
 * Services with the VIPs the runtime allocated) and every pod with its node and address.
 * Watches the state file and reports each change.
 */
export class LocalClusterSource implements ConfigSource {
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private lastText = '';

  constructor(private readonly stateFile: string) {}

  start(onChange: (snapshot: SourceSnapshot) => void): void {
    const emit = () => {
      let text: string;
      try {
        text = readFileSync(this.stateFile, 'utf8');
      } catch {
        return;
      }
      if (text === this.lastText) return;
      this.lastText = text;
      onChange(snapshotOf(JSON.parse(text) as ClusterState));
    };
    // The runtime replaces the file by rename: watch its directory.
    this.watcher = watch(dirname(this.stateFile), (_event, file) => {
      if (file && file !== basename(this.stateFile)) return;
      clearTimeout(this.timer);
      this.timer = setTimeout(emit, 20);
    });
    emit();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}

export function snapshotOf(state: ClusterState): SourceSnapshot {
  const resources = Object.values(state.resources).map((r): Resource => {
    if (r.kind !== 'Service' || 'other' in r) return r;
    const svc = r as ServiceResource;
    const vip = state.services[`${svc.meta.namespace}/${svc.meta.name}`]?.vip;
    return vip ? { ...svc, spec: { ...svc.spec, clusterIP: vip } } : svc;
  });
  const pods: PodInfo[] = Object.values(state.pods).map((p) => ({ uid: p.uid, namespace: p.namespace, name: p.name, node: p.node, ip: p.ip, labels: p.labels, spec: p.spec, ...(p.owner ? { owner: { kind: p.owner.kind, name: p.owner.name } } : {}) }));
  return { resources, pods };
}
