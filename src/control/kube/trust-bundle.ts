/**
 * The mesh's trust bundle published as a ConfigMap (`ambit-root-cert`, key `root-cert.pem`) in
 * the controller's namespace, where the node agents mount it, and in every namespace running a
 * waypoint, where its pods mount it: they verify the controller with it before they have a
 * certificate of their own. Only roots are published, never keys.
 *
 * Written with server-side apply (field manager `ambit-controller`), once per namespace and
 * bundle (a hash remembers what was written; everything is re-applied every `resyncMs`), a
 * failed write retried with exponential backoff. ConfigMaps of namespaces whose last waypoint
 * went are left in place: they hold public data and a pod there may still mount them (istiod
 * does the same with its root ConfigMap).
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { silentLogger } from '../../telemetry/log.js';
import type { KubeClient } from '../../kube/client.js';
import { Coalescer } from './coalesce.js';
import { PART_OF } from '../../install/objects.js';
import { backoffDelay } from '../../util/backoff.js';
import { FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL } from './waypoints.js';

export const ROOT_CERT_KEY = 'root-cert.pem';
export const PART_OF_LABEL = 'app.kubernetes.io/part-of';

export interface TrustBundleOptions {
  /** The ConfigMap's name (the install's `ambit-root-cert`). */
  name: string;
  /** PEM roots, oldest first (a rotation publishes old and new together). */
  roots: () => string[];
  log?: Logger;
  backoffMs?: number;
  maxBackoffMs?: number;
  resyncMs?: number;
}

export class TrustBundlePublisher {
  private readonly log: Logger;
  private readonly backoffMs: number;
  private readonly maxBackoffMs: number;
  /** Namespace → hash of the bundle written there. */
  private readonly written = new Map<string, string>();
  private readonly failures = new Map<string, number>();
  private namespaces = new Set<string>();
  private readonly passes = new Coalescer(() => this.pass(), () => this.stopped);
  private retryTimer?: NodeJS.Timeout;
  private readonly resyncTimer?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly client: KubeClient, private readonly opts: TrustBundleOptions) {
    this.log = (opts.log ?? silentLogger).child({ part: 'trust-bundle' });
    this.backoffMs = opts.backoffMs ?? 1000;
    this.maxBackoffMs = opts.maxBackoffMs ?? 5 * 60_000;
    const resyncMs = opts.resyncMs ?? 10 * 60_000;
    if (resyncMs > 0) {
      this.resyncTimer = setInterval(() => {
        this.written.clear();
        void this.publish([...this.namespaces]);
      }, resyncMs).unref();
    }
  }

  /** The namespaces that need the bundle now; resolves once they have it (or failures are scheduled for retry). */
  publish(namespaces: Iterable<string>): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.namespaces = new Set(namespaces);
    return this.passes.request();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.resyncTimer);
  }

  private async pass(): Promise<void> {
    const bundle = this.opts.roots().join('');
    const hash = createHash('sha256').update(bundle).digest('hex');
    let retryIn = Infinity;
    await Promise.all([...this.namespaces].map(async (namespace) => {
      if (this.written.get(namespace) === hash) return;
      try {
        await this.write(namespace, bundle);
        this.written.set(namespace, hash);
        this.failures.delete(namespace);
        this.log.info({ namespace, configMap: this.opts.name }, 'trust bundle published');
      } catch (err) {
        const attempts = (this.failures.get(namespace) ?? 0) + 1;
        this.failures.set(namespace, attempts);
        const wait = backoffDelay(attempts, { initialMs: this.backoffMs, maxMs: this.maxBackoffMs });
        retryIn = Math.min(retryIn, wait);
        this.log.warn({ namespace, configMap: this.opts.name, attempts, retryInMs: wait, err: (err as Error).message }, 'trust bundle not published; retrying');
      }
    }));
    if (retryIn < Infinity && !this.stopped) {
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => void this.publish([...this.namespaces]), retryIn).unref();
    }
  }

  private async write(namespace: string, bundle: string): Promise<void> {
    const name = this.opts.name;
    const body = {
      apiVersion: 'v1', kind: 'ConfigMap',
      // Labelled like the controller's waypoint objects, so that uninstall finds every copy by label.
      metadata: { name, namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY, [PART_OF_LABEL]: PART_OF } },
      data: { [ROOT_CERT_KEY]: bundle },
    };
    const path = `/api/v1/namespaces/${encodeURIComponent(namespace)}/configmaps/${encodeURIComponent(name)}?fieldManager=${FIELD_MANAGER}&force=true`;
    const res = await this.client.request('PATCH', path, body, 'application/apply-patch+yaml');
    if (res.status < 200 || res.status >= 300) {
      throw new Error(`apply ConfigMap ${namespace}/${name}: HTTP ${res.status}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`);
    }
  }
}
