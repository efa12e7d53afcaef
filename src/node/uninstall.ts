/**
 * Uninstall or restart? A node agent stopping in Kubernetes must tell them apart: on uninstall it
 * removes every BPF object it pinned (nothing may keep redirecting pods into a proxy that is
 * gone); on a restart or upgrade it keeps them, so the next agent adopts them and no connection
 * escapes the mesh meanwhile.
 *
 * The answer is its DaemonSet's: gone (404) or being deleted (`metadata.deletionTimestamp`, as
 * during `kubectl delete --cascade=foreground`) means uninstall; present means restart. So do
 * the API server's refusals of the agent itself, which happen only while the installation is
 * being removed (`kubectl delete -f` deletes the ServiceAccount and the Role with the DaemonSet,
 * often before the agent is told to stop): 401 for the token the kubelet projects for it right
 * now (read from its file for each request, see freshTokenClient) means its ServiceAccount is
 * gone; 403 on its own DaemonSet means its Role (or RoleBinding) is. When the API server cannot
 * answer in time (timeout, 5xx, network) the agent keeps the pins: wrongly tearing the datapath
 * down under running pods is worse than leaving pins that redirect nowhere. `ambit node cleanup`
 * (cleanupNode) clears a node whose agent missed the uninstall.
 */
import { readdirSync, rmSync, statfsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { DEFAULT_PIN_ROOT } from '../ebpf/mounts.js';
import { freshToken, KubeApiError, KubeClient } from '../kube/client.js';
import { Backoff } from '../util/backoff.js';
import { removeCniInstall } from './cni-install.js';

export type StopKind = 'uninstall' | 'restart' | 'unknown';

export async function stopKind(client: KubeClient, namespace: string, daemonSet: string, timeoutMs = 3000): Promise<{ kind: StopKind; reason: string }> {
  const path = `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets/${encodeURIComponent(daemonSet)}`;
  const name = `DaemonSet ${namespace}/${daemonSet}`;
  try {
    const res = await client.request('GET', path, undefined, undefined, AbortSignal.timeout(timeoutMs));
    if (res.status === 404) return { kind: 'uninstall', reason: `${name} is gone` };
    const refused = refusal(res.status, name);
    if (refused) return { kind: 'uninstall', reason: refused };
    if (res.status !== 200) return { kind: 'unknown', reason: `reading ${name}: HTTP ${res.status}` };
    const deleting = (res.body as { metadata?: { deletionTimestamp?: unknown } } | undefined)?.metadata?.deletionTimestamp;
    return deleting ? { kind: 'uninstall', reason: `${name} is being deleted (since ${String(deleting)})` } : { kind: 'restart', reason: `${name} is still there` };
  } catch (err) {
    return { kind: 'unknown', reason: `reading ${name}: ${(err as Error).message}` };
  }
}

/** What a 401 or 403 on the agent's own DaemonSet says about the installation; undefined for any other status. */
function refusal(status: number, name: string): string | undefined {
  if (status === 401) return `reading ${name}: HTTP 401 for the agent's current token: its ServiceAccount is gone`;
  if (status === 403) return `reading ${name}: HTTP 403: the agent's Role (or RoleBinding) is gone`;
  return undefined;
}

/**
 * A client of the kubeconfig's API server that sends, with each request, the ServiceAccount token
 * as it is in its file at that moment (in-cluster: the kubelet's projected token, rotated in
 * place), where the library's own re-reads it at most once a minute: a 401 is then the API
 * server's answer about the current token, never about one the kubelet has already replaced.
 * Other kubeconfigs (a static token, client certificates, exec plugins) are used as they are.
 */
export function freshTokenClient(kc: KubeConfig): KubeClient {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error('the kubeconfig has no current cluster');
  const tokenFile = kc.getCurrentUser()?.authProvider?.config?.tokenFile as string | undefined;
  const token = tokenFile ? freshToken(tokenFile) : undefined;
  return new KubeClient({
    server: cluster.server,
    prepare: async (o) => {
      await kc.applyToHTTPSOptions(o);
      // Unreadable mid-rotation: the library's copy, read moments ago, is as fresh as it gets.
      const current = token?.();
      if (current) o.headers = { ...o.headers, Authorization: `Bearer ${current}` };
    },
  });
}

/**
 * Follows the agent's DaemonSet from the start, so that an uninstall is known even when the
 * agent can no longer ask at SIGTERM: `kubectl delete -f` removes the agent's Role right after
 * its DaemonSet, often before the agent's pod is told to stop. The DaemonSet's deletion (its
 * `deletionTimestamp`, or its DELETED event) is seen as it happens; at SIGTERM that observation
 * decides, and only without one is the API server asked (`stopKind`).
 */
export class DaemonSetWatch {
  private deleting?: string;
  /** The API server's last refusal of the agent (401/403) while following: its reason, until an answer succeeds again. */
  private refused?: string;
  private readonly abort = new AbortController();
  private readonly path: string;

  constructor(private readonly client: KubeClient, private readonly namespace: string, private readonly name: string) {
    this.path = `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets`;
  }

  start(): void {
    void this.follow();
  }

  /** What a SIGTERM now means. Stops following. */
  async stopKind(timeoutMs = 3000): Promise<{ kind: StopKind; reason: string }> {
    this.abort.abort();
    if (this.deleting) return { kind: 'uninstall', reason: this.deleting };
    const asked = await stopKind(this.client, this.namespace, this.name, timeoutMs);
    // No answer now, but the API server had already refused the agent: its credentials were removed.
    if (asked.kind === 'unknown' && this.refused) return { kind: 'uninstall', reason: `${this.refused} (seen while following it; now ${asked.reason})` };
    return asked;
  }

  private observe(type: string, obj: unknown): void {
    const meta = (obj as { metadata?: { name?: unknown; deletionTimestamp?: unknown } } | undefined)?.metadata;
    if (meta?.name !== this.name) return;
    const what = `DaemonSet ${this.namespace}/${this.name}`;
    if (type === 'DELETED') this.deleting = `${what} was deleted`;
    else if (meta.deletionTimestamp) this.deleting = `${what} is being deleted (since ${String(meta.deletionTimestamp)})`;
    else this.deleting = undefined;
  }

  /** GET, then watch from its version; again after every end or failure (backoff up to 30 s). */
  private async follow(): Promise<void> {
    const signal = this.abort.signal;
    const backoff = new Backoff({ initialMs: 1000, maxMs: 30_000 });
    while (!signal.aborted) {
      try {
        const res = await this.client.request('GET', `${this.path}/${encodeURIComponent(this.name)}`, undefined, undefined, signal);
        this.refused = refusal(res.status, `DaemonSet ${this.namespace}/${this.name}`);
        if (res.status === 404) this.deleting = `DaemonSet ${this.namespace}/${this.name} is gone`;
        else if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
        else this.observe('ADDED', res.body);
        const rv = (res.body as { metadata?: { resourceVersion?: string } } | undefined)?.metadata?.resourceVersion;
        const query = `watch=1&fieldSelector=${encodeURIComponent(`metadata.name=${this.name}`)}&timeoutSeconds=300${rv && res.status === 200 ? `&resourceVersion=${rv}` : ''}`;
        await this.client.watch(`${this.path}?${query}`, (ev) => {
          const e = ev as { type?: string; object?: unknown };
          if (typeof e.type === 'string' && e.type !== 'BOOKMARK' && e.type !== 'ERROR') this.observe(e.type, e.object);
        }, signal, 330_000);
        backoff.reset();
      } catch (err) {
        // Not known this time: stopKind asks again at SIGTERM. A watch refused for the agent's credentials is remembered.
        if (err instanceof KubeApiError) this.refused = refusal(err.status, `DaemonSet ${this.namespace}/${this.name}`) ?? this.refused;
      }
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, backoff.next()).unref());
    }
  }
}

/** Where `ambit node cleanup` looks, as the host sees them (each under `hostRoot` when given). */
export interface CleanupPaths {
  pinRoot: string;
  cniBinDir: string;
  cniConfDir: string;
  socketDir: string;
  hostRoot?: string;
}

export const CLEANUP_DEFAULTS: Omit<CleanupPaths, 'hostRoot'> = {
  pinRoot: DEFAULT_PIN_ROOT, cniBinDir: '/opt/cni/bin', cniConfDir: '/etc/cni/net.d', socketDir: '/var/run/ambit',
};

/** The agent's sockets in its socket dir: the runtime's control socket and the CNI plugin's. */
export const AGENT_SOCKETS = ['agent.sock', 'cni.sock'];

const BPF_FS_MAGIC = 0xcafe4a11;

export class CleanupError extends Error {
  override readonly name = 'CleanupError';
  readonly code = 'AMBIT_E_NODE_CLEANUP';
}

/**
 * Clears a node ambit was removed from while its agent was away (or crashlooping): the CNI
 * plugin's entry, marker and binary (removeCniInstall, as the agent's own uninstall), the agent's
 * sockets, and every pin under the pin root (detached, as the agent's own uninstall does).
 * Refuses while an agent answers on one of its sockets: that agent owns the node's state. Returns
 * what it removed, one line each.
 */
export async function cleanupNode(paths: CleanupPaths): Promise<string[]> {
  const at = (path: string) => (paths.hostRoot ? join(paths.hostRoot, path) : path);
  const socketDir = at(paths.socketDir);
  for (const name of AGENT_SOCKETS) {
    const socket = join(socketDir, name);
    if (await answers(socket)) {
      throw new CleanupError(`an ambit node agent answers on ${socket}: it owns this node's state. Stop it first (delete its pod, or its DaemonSet for an uninstall, which makes it clean up itself)`);
    }
  }
  const pinRoot = at(paths.pinRoot);
  const pins = pinsUnder(pinRoot);
  if (pins && statfsSync(pinRoot).type !== BPF_FS_MAGIC) throw new CleanupError(`--pin-root ${pinRoot} is not on a bpf filesystem (is /sys/fs/bpf mounted${paths.hostRoot ? ` under ${paths.hostRoot}` : ''}?); nothing removed`);
  const done = removeCniInstall({ binDir: at(paths.cniBinDir), confDir: at(paths.cniConfDir) });
  for (const name of AGENT_SOCKETS) {
    const socket = join(socketDir, name);
    if (removeIfThere(socket)) done.push(`removed ${socket} (agent socket)`);
  }
  if (pins) {
    // Loaded here: the stop decision above needs no libbpf.
    const { Datapath } = await import('../ebpf/datapath.js');
    Datapath.remove(pinRoot);
    done.push(...pins.map((pin) => `removed pin ${pin}`), `removed ${pinRoot}`);
  }
  return done;
}

/** Whether something accepts connections on the unix socket (a leftover file refuses them). */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(2000, () => done(true));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** The pins under the pin root (files, depth first), or undefined when there is no pin root. */
function pinsUnder(root: string): string[] | undefined {
  let entries;
  try {
    entries = readdirSync(root, { withFileTypes: true, recursive: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CleanupError(`read ${root}: ${(err as Error).message}`);
  }
  return entries.filter((e) => !e.isDirectory()).map((e) => join(e.parentPath, e.name)).sort();
}

function removeIfThere(path: string): boolean {
  try {
    rmSync(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new CleanupError(`remove ${path}: ${(err as Error).message}`);
  }
}
