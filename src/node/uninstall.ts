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
