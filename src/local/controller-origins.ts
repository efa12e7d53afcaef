/**
 * What the controller reads from a local cluster's state directory: the node agents'
 * bootstrap tokens and which workload identities run on which node.
 */
import { existsSync, readdirSync, readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Metadata } from '@grpc/grpc-js';
import { CaError } from '../identity/ca.js';
import type { Authenticator, Caller, NodeDirectory } from '../identity/ca-server.js';
import { formatSpiffeId } from '../identity/spiffe.js';
import type { Resource, ServiceResource } from '../kube/manifests.js';
import { podAddress6 } from './layout.js';
import type { ClusterState } from './state.js';
import type { PodInfo, SourceSnapshot } from '../config/model.js';
import type { ConfigSource, ControllerOrigins } from '../config/source.js';

/**
 * One credential per waypoint, `<state>/waypoints/<ns>.<name>/token`, and per ingress gateway,
 * `<state>/gateways/<ns>.<serviceAccount>/token`, written by the runtime with the pod: a
 * workload credential for exactly that namespace and account.
 */
export function readWaypointTokens(stateDir: string, kind: 'waypoints' | 'gateways' = 'waypoints'): { namespace: string; name: string; token: string }[] {
  const dir = join(stateDir, kind);
  if (!existsSync(dir)) return [];
  const out: { namespace: string; name: string; token: string }[] = [];
  for (const entry of readdirSync(dir)) {
    const m = /^([a-z0-9-]+)\.([a-z0-9.-]+)$/.exec(entry);
    const file = join(dir, entry, 'token');
    if (m && existsSync(file)) out.push({ namespace: m[1]!, name: m[2]!, token: readFileSync(file, 'utf8').trim() });
  }
  return out;
}

/**
 * The local cluster's credentials: each node agent's token, and each waypoint's (good for that
 * waypoint's identity only). Re-read from the state directory when an unknown token shows up
 * (at most once a second), so waypoints made after the controller started are known.
 */
export class LocalCredentials implements Authenticator {
  private known: { hash: Buffer; caller: Caller }[] = [];
  private loadedAt = 0;

  constructor(private readonly stateDir: string, private readonly trustDomain: string) {
    this.load();
  }

  private load(): void {
    const digest = (t: string) => createHash('sha256').update(t).digest();
    this.known = [
      ...Object.entries(readBootstrapTokens(this.stateDir)).map(([node, token]) => ({ hash: digest(token), caller: { node } })),
      ...[...readWaypointTokens(this.stateDir), ...readWaypointTokens(this.stateDir, 'gateways')].map((w) => ({
        hash: digest(w.token),
        caller: { node: '', workload: { namespace: w.namespace, name: w.name, identity: formatSpiffeId({ trustDomain: this.trustDomain, namespace: w.namespace, serviceAccount: w.name }) } },
      })),
    ];
    this.loadedAt = Date.now();
  }

  get nodes(): string[] {
    return this.known.filter((k) => k.caller.node).map((k) => k.caller.node);
  }

  authenticate(metadata: Metadata): Promise<Caller> {
    const value = metadata.get('authorization')[0];
    const m = typeof value === 'string' ? /^Bearer (\S+)$/.exec(value) : null;
    if (!m) return Promise.reject(new CaError('UNAUTHENTICATED', 'no credential: send "authorization: Bearer <token>" metadata'));
    const hash = createHash('sha256').update(m[1]!).digest();
    const find = () => this.known.find((k) => timingSafeEqual(k.hash, hash))?.caller;
    let caller = find();
    if (!caller && Date.now() - this.loadedAt > 1000) {
      this.load();
      caller = find();
    }
    return caller ? Promise.resolve(caller) : Promise.reject(new CaError('UNAUTHENTICATED', 'unknown bootstrap token'));
  }
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
  const pods: PodInfo[] = Object.values(state.pods).map((p) => ({ uid: p.uid, namespace: p.namespace, name: p.name, node: p.node, ip: p.ip, ips: [p.ip, podAddress6(p.ip)], labels: p.labels, spec: p.spec, ...(p.owner ? { owner: { kind: p.owner.kind, name: p.owner.name } } : {}) }));
  return { resources, pods };
}

/** The controller's origins in a local cluster: pods and config from cluster.json, callers by the tokens the runtime wrote. */
export function localOrigins(stateDir: string, trustDomain: string): ControllerOrigins {
  const authenticator = new LocalCredentials(stateDir, trustDomain);
  return {
    source: new LocalClusterSource(join(stateDir, 'cluster.json')), authenticator,
    directory: new LocalNodeDirectory(join(stateDir, 'cluster.json'), trustDomain), describe: { source: 'local', nodes: authenticator.nodes },
  };
}
