/**
 * Leader election through a coordination.k8s.io/v1 Lease, as Kubernetes' own controllers do it.
 * Every controller replica serves the CA and discovery; only the leader writes to the API server
 * (status conditions, waypoint objects, the trust-bundle ConfigMaps), so replicas never fight
 * over an object.
 *
 * The protocol relies on the API server's optimistic concurrency: a replica takes or renews the
 * Lease with a PUT carrying the resourceVersion it read, so of two replicas racing for an expired
 * Lease exactly one wins (the other gets 409 Conflict). Expiry is judged by this replica's own
 * clock from when it last saw the Lease *change*, never by comparing the holder's renewTime with
 * local time, so clock skew between nodes cannot make two leaders.
 *
 * - A follower tries every `retryPeriodMs`; it takes the Lease when the holder is empty or has
 *   not renewed for `leaseDurationMs` since this replica last saw a change.
 * - The leader renews every `retryPeriodMs`; if it cannot renew for `renewDeadlineMs` (shorter
 *   than the lease duration) it steps down before anyone else may take over.
 * - On stop, the leader releases the Lease (empty holder, 1 s duration) so a successor takes over
 *   at once rather than after the lease duration.
 */
import type { Logger } from 'pino';
import { silentLogger } from '../../telemetry/log.js';
import type { KubeClient } from '../../kube/client.js';

export interface LeaderElectionOptions {
  namespace: string;
  /** The Lease's name. */
  name: string;
  /** This replica (the pod's name). */
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  log?: Logger;
  onStartedLeading?: () => void;
  onStoppedLeading?: () => void;
}

interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

interface Lease {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; resourceVersion?: string; [k: string]: unknown };
  spec?: LeaseSpec;
}

/** Kubernetes' MicroTime: RFC 3339 with microseconds. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

export class LeaderElector {
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly log: Logger;
  private timer?: NodeJS.Timeout;
  private stopped = true;
  private leading = false;
  /** The Lease as last read, and when (local clock) its holder or renewTime last changed. */
  private observed?: { holder: string; renewTime: string; at: number };
  /** When this replica last renewed successfully (it steps down `renewDeadlineMs` after). */
  private lastRenew = 0;
  private running?: Promise<void>;

  constructor(private readonly client: KubeClient, private readonly opts: LeaderElectionOptions) {
    this.leaseDurationMs = opts.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = opts.retryPeriodMs ?? 2_000;
    if (!(this.renewDeadlineMs < this.leaseDurationMs)) throw new Error('leader election: the renew deadline must be shorter than the lease duration');
    if (!(this.retryPeriodMs < this.renewDeadlineMs)) throw new Error('leader election: the retry period must be shorter than the renew deadline');
    this.log = (opts.log ?? silentLogger).child({ lease: `${opts.namespace}/${opts.name}`, identity: opts.identity });
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** Who holds the Lease as last read ('' when nobody). */
  get holder(): string {
    return this.observed?.holder ?? '';
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.tick();
  }

  /** Stops electing; a leader steps down and releases the Lease. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    if (!this.leading) return;
    this.setLeading(false);
    try {
      const lease = await this.read();
      if (lease?.spec?.holderIdentity === this.opts.identity) {
        await this.write({ ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(Date.now()) } }, 'PUT');
        this.log.info('lease released');
      }
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not release the lease; it expires on its own');
    }
  }

  private get path(): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.opts.namespace)}/leases`;
  }

  private tick(): void {
    if (this.stopped) return;
    this.running = this.attempt().catch((err: Error) => {
      this.log.warn({ err: err.message }, 'leader election: lease not read or written');
    }).finally(() => {
      if (this.leading && Date.now() - this.lastRenew > this.renewDeadlineMs) {
        this.log.error({ renewDeadlineMs: this.renewDeadlineMs }, 'lease not renewed within the deadline: stepping down');
        this.setLeading(false);
      }
      if (!this.stopped) this.timer = setTimeout(() => this.tick(), this.retryPeriodMs);
    });
  }

  /** One round: create, take over, renew, or just observe the Lease. */
  private async attempt(): Promise<void> {
    const now = Date.now();
    const lease = await this.read();
    const desired = (prev: LeaseSpec | undefined): LeaseSpec => {
      const mine = prev?.holderIdentity === this.opts.identity;
      return {
        holderIdentity: this.opts.identity,
        leaseDurationSeconds: Math.ceil(this.leaseDurationMs / 1000),
        acquireTime: mine && prev?.acquireTime ? prev.acquireTime : microTime(now),
        renewTime: microTime(now),
        leaseTransitions: (prev?.leaseTransitions ?? 0) + (mine || !prev ? 0 : 1),
      };
    };
    if (!lease) {
      const created = await this.write({ apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: this.opts.name, namespace: this.opts.namespace }, spec: desired(undefined) }, 'POST');
      if (created) this.won(now, 'lease created');
      return;
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const renewTime = spec.renewTime ?? '';
    if (!this.observed || this.observed.holder !== holder || this.observed.renewTime !== renewTime) {
      this.observed = { holder, renewTime, at: now };
    }
    const duration = (spec.leaseDurationSeconds ?? Math.ceil(this.leaseDurationMs / 1000)) * 1000;
    const held = holder !== '' && holder !== this.opts.identity && now < this.observed.at + duration;
    if (held) {
      if (this.leading) {
        this.log.warn({ holder }, 'another replica holds the lease: stepping down');
        this.setLeading(false);
      }
      return;
    }
    const updated = await this.write({ ...lease, spec: { ...spec, ...desired(spec) } }, 'PUT');
    if (updated) this.won(now, holder === this.opts.identity ? 'lease renewed' : 'lease taken over');
    else if (this.leading && holder !== this.opts.identity) this.setLeading(false);
  }

  private won(at: number, what: string): void {
    this.lastRenew = at;
    if (!this.leading) {
      this.log.info(what === 'lease renewed' ? 'lease held: leading' : `${what}: leading`);
      this.setLeading(true);
    }
  }

  private setLeading(leading: boolean): void {
    if (leading === this.leading) return;
    this.leading = leading;
    try {
      if (leading) this.opts.onStartedLeading?.();
      else this.opts.onStoppedLeading?.();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'leadership callback failed');
    }
  }

  private async read(): Promise<Lease | undefined> {
    const res = await this.client.request('GET', `${this.path}/${encodeURIComponent(this.opts.name)}`);
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new Error(`GET lease: HTTP ${res.status}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`);
    return res.body as Lease;
  }

  /** Creates (POST) or updates (PUT, with the read resourceVersion); false when another replica wrote first. */
  private async write(lease: Lease, method: 'POST' | 'PUT'): Promise<boolean> {
    const path = method === 'POST' ? this.path : `${this.path}/${encodeURIComponent(this.opts.name)}`;
    const res = await this.client.request(method, path, lease);
    if (res.status === 409) return false;
    if (res.status < 200 || res.status >= 300) throw new Error(`${method} lease: HTTP ${res.status}: ${(res.body as { message?: string } | undefined)?.message ?? ''}`);
    const spec = (res.body as Lease).spec ?? {};
    this.observed = { holder: spec.holderIdentity ?? '', renewTime: spec.renewTime ?? '', at: Date.now() };
    return true;
  }
}
