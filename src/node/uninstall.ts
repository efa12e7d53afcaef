/**
 * Uninstall or restart? A node agent stopping in Kubernetes must tell them apart: on uninstall it
 * removes every BPF object it pinned (nothing may keep redirecting pods into a proxy that is
 * gone); on a restart or upgrade it keeps them, so the next agent adopts them and no connection
 * escapes the mesh meanwhile.
 *
 * The answer is its DaemonSet's: gone (404) or being deleted (`metadata.deletionTimestamp`, as
 * during `kubectl delete --cascade=foreground`) means uninstall; present means restart. When
 * the API server cannot answer in time the agent keeps the pins: wrongly tearing the datapath
 * down under running pods is worse than leaving pins that redirect nowhere on a node being
 * decommissioned (removing the pin directory, `rm -r /sys/fs/bpf/ambit`, clears them by hand:
 * the pins hold the last references to the links, so unlinking them detaches the programs).
 */
import type { KubeClient } from '../control/kube/client.js';

export type StopKind = 'uninstall' | 'restart' | 'unknown';

export async function stopKind(client: KubeClient, namespace: string, daemonSet: string, timeoutMs = 3000): Promise<{ kind: StopKind; reason: string }> {
  const path = `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/daemonsets/${encodeURIComponent(daemonSet)}`;
  const name = `DaemonSet ${namespace}/${daemonSet}`;
  try {
    const res = await client.request('GET', path, undefined, undefined, AbortSignal.timeout(timeoutMs));
    if (res.status === 404) return { kind: 'uninstall', reason: `${name} is gone` };
    if (res.status !== 200) return { kind: 'unknown', reason: `reading ${name}: HTTP ${res.status}` };
    const deleting = (res.body as { metadata?: { deletionTimestamp?: unknown } } | undefined)?.metadata?.deletionTimestamp;
    return deleting ? { kind: 'uninstall', reason: `${name} is being deleted (since ${String(deleting)})` } : { kind: 'restart', reason: `${name} is still there` };
  } catch (err) {
    return { kind: 'unknown', reason: `reading ${name}: ${(err as Error).message}` };
  }
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
    return stopKind(this.client, this.namespace, this.name, timeoutMs);
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
    let backoffMs = 1000;
    while (!signal.aborted) {
      try {
        const res = await this.client.request('GET', `${this.path}/${encodeURIComponent(this.name)}`, undefined, undefined, signal);
        if (res.status === 404) this.deleting = `DaemonSet ${this.namespace}/${this.name} is gone`;
        else if (res.status !== 200) throw new Error(`HTTP ${res.status}`);
        else this.observe('ADDED', res.body);
        const rv = (res.body as { metadata?: { resourceVersion?: string } } | undefined)?.metadata?.resourceVersion;
        const query = `watch=1&fieldSelector=${encodeURIComponent(`metadata.name=${this.name}`)}&timeoutSeconds=300${rv && res.status === 200 ? `&resourceVersion=${rv}` : ''}`;
        await this.client.watch(`${this.path}?${query}`, (ev) => {
          const e = ev as { type?: string; object?: unknown };
          if (typeof e.type === 'string' && e.type !== 'BOOKMARK' && e.type !== 'ERROR') this.observe(e.type, e.object);
        }, signal, 330_000);
        backoffMs = 1000;
      } catch {
        // Not known this time: stopKind asks again at SIGTERM.
      }
      if (signal.aborted) return;
      await new Promise((r) => setTimeout(r, backoffMs).unref());
      backoffMs = Math.min(30_000, backoffMs * 2);
    }
  }
}
