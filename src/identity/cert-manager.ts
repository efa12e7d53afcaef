/**
 * The node agent's certificates: one per workload identity in use on the node.
 *
 * - fetched when a pod is enrolled (acquire), so its first connection does not wait;
 * - concurrent requests for one identity share one CSR;
 * - rotated at half-life (± jitter, so a node's certificates do not all renew at once), the old
 *   one served until the new one arrives;
 * - while the CA is unreachable, retried with exponential backoff and full jitter, and at once
 *   when it can be reached again (a controller back from an outage: its source says so);
 * - the trust bundle refreshed periodically and with every issued chain.
 *
 * Private keys live only in this process, as KeyObjects (which never print their material);
 * nothing here logs a key.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { silentLogger } from '../telemetry/log.js';
import type { CertificateSource } from './ca-server.js';
import { backoffDelay } from '../util/backoff.js';
import { certificateFacts, createCsr, generateKeyPair, privateKeyObject } from './pki.js';

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** A clock tests move by hand: timers run, in order, when advance() passes their time. */
export class ManualClock implements Clock {
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private nextId = 0;

  constructor(private t = Date.now()) {}

  now(): number { return this.t; }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.t + Math.max(0, ms), fn, id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((x) => x.id !== handle);
  }

  /** Moves time forward, running each timer that falls due (and awaiting what it starts). */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers = this.timers.filter((x) => x !== due);
      this.t = Math.max(this.t, due.at);
      due.fn();
      await settle();
    }
    this.t = end;
    await settle();
  }

  get pending(): number { return this.timers.length; }
}

/** Lets promise chains started by a timer (a CSR, a signing) run to completion. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

export interface WorkloadCertificate {
  identity: string;
  /** Leaf first, then the CA chain. */
  chain: string[];
  key: KeyObject;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CertificateSummary {
  identity: string;
  serial?: string;
  notBefore?: string;
  notAfter?: string;
  rotatesAt?: string;
  state: 'valid' | 'fetching' | 'retrying' | 'expired';
  lastError?: string;
  pods: number;
}

export interface CertManagerOptions {
  source: CertificateSource;
  clock?: Clock;
  log?: Logger;
  /** Requested lifetime; 0 = the CA's default. */
  ttlSeconds?: number;
  /** Fraction of the lifetime after which a certificate is renewed (0.5: half-life). */
  rotateAt?: number;
  /** ± this fraction of the lifetime, at random, around the rotation time. */
  jitter?: number;
  backoff?: { initialMs: number; maxMs: number };
  bundleRefreshMs?: number;
  random?: () => number;
}

interface Entry {
  identity: string;
  refs: number;
  cert?: WorkloadCertificate;
  pending?: Promise<WorkloadCertificate>;
  timer?: unknown;
  rotatesAt?: number;
  failures: number;
  lastError?: string;
}

export class CertManager {
  private readonly entries = new Map<string, Entry>();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly random: () => number;
  private bundle: string[] = [];
  private bundleTimer?: unknown;
  private closed = false;
  /** CSRs sent, for tests and metrics. */
  requests = 0;

  constructor(private readonly opts: CertManagerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.log = opts.log ?? silentLogger;
    this.random = opts.random ?? Math.random;
  }

  /** Starts refreshing the trust bundle; resolves once the first one arrived. */
  async start(): Promise<void> {
    await this.refreshBundle();
  }

  get trustBundle(): string[] {
    return [...this.bundle];
  }

  /** A pod with this identity was enrolled: fetch its certificate now, keep it while any such pod runs. */
  acquire(identity: string): Promise<WorkloadCertificate> {
    const entry = this.entry(identity);
    entry.refs++;
    return this.get(identity);
  }

  /** A pod with this identity left; the certificate goes with the last one. */
  release(identity: string): void {
    const entry = this.entries.get(identity);
    if (!entry) return;
    entry.refs = Math.max(0, entry.refs - 1);
    if (entry.refs === 0) {
      if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
      this.entries.delete(identity);
    }
  }

  /**
   * The current certificate (fetched if there is none, or it expired); concurrent callers share one
   * request. While a failed request waits for its retry, callers get its error at once: an expired
   * certificate with the CA away must not cost a key pair and a CSR per connection attempt.
   */
  get(identity: string): Promise<WorkloadCertificate> {
    const entry = this.entry(identity);
    if (entry.cert && entry.cert.notAfter.getTime() > this.clock.now()) return Promise.resolve(entry.cert);
    if (!entry.pending && entry.lastError !== undefined && entry.timer !== undefined) return Promise.reject(new Error(entry.lastError));
    return this.fetch(entry);
  }

  list(): CertificateSummary[] {
    const now = this.clock.now();
    return [...this.entries.values()].map((e): CertificateSummary => ({
      identity: e.identity,
      ...(e.cert ? { serial: e.cert.serial, notBefore: e.cert.notBefore.toISOString(), notAfter: e.cert.notAfter.toISOString() } : {}),
      ...(e.rotatesAt ? { rotatesAt: new Date(e.rotatesAt).toISOString() } : {}),
      state: e.cert && e.cert.notAfter.getTime() <= now ? 'expired' : e.pending ? 'fetching' : e.lastError ? 'retrying' : 'valid',
      ...(e.lastError ? { lastError: e.lastError } : {}),
      pods: e.refs,
    })).sort((a, b) => a.identity.localeCompare(b.identity));
  }

  /** Resolves when no request is in flight (for tests and orderly shutdown). */
  async idle(): Promise<void> {
    for (;;) {
      const pending = [...this.entries.values()].flatMap((e) => (e.pending ? [e.pending] : []));
      if (pending.length === 0) return;
      await Promise.allSettled(pending);
    }
  }

  close(): void {
    this.closed = true;
    if (this.bundleTimer !== undefined) this.clock.clearTimeout(this.bundleTimer);
    for (const e of this.entries.values()) if (e.timer !== undefined) this.clock.clearTimeout(e.timer);
    this.entries.clear();
  }

  private entry(identity: string): Entry {
    let e = this.entries.get(identity);
    if (!e) {
      e = { identity, refs: 0, failures: 0 };
      this.entries.set(identity, e);
    }
    return e;
  }

  private fetch(entry: Entry): Promise<WorkloadCertificate> {
    entry.pending ??= this.request(entry.identity).then(
      (cert) => {
        entry.pending = undefined;
        entry.cert = cert;
        entry.failures = 0;
        entry.lastError = undefined;
        this.scheduleRotation(entry);
        return cert;
      },
      (err: Error) => {
        entry.pending = undefined;
        entry.failures++;
        entry.lastError = err.message;
        this.scheduleRetry(entry);
        throw err;
      },
    );
    return entry.pending;
  }

  private async request(identity: string): Promise<WorkloadCertificate> {
    const keys = await generateKeyPair();
    const csr = await createCsr(keys, identity);
    this.requests++;
    const chain = await this.opts.source.createCertificate(csr, identity, this.opts.ttlSeconds ?? 0);
    const leaf = chain[0];
    if (!leaf) throw new Error(`the CA returned an empty chain for ${identity}`);
    const facts = certificateFacts(leaf);
    if (!facts.uris.includes(identity)) throw new Error(`the CA returned a certificate for ${facts.uris.join(', ') || 'no URI'}, not ${identity}`);
    const root = chain[chain.length - 1]!;
    if (chain.length > 1 && !this.bundle.includes(root)) this.bundle = [...this.bundle, root];
    this.log.info({ identity, serial: facts.serial, notAfter: facts.notAfter.toISOString() }, 'certificate received');
    return { identity, chain, key: await privateKeyObject(keys.privateKey), serial: facts.serial, notBefore: facts.notBefore, notAfter: facts.notAfter };
  }

  private scheduleRotation(entry: Entry): void {
    if (this.closed || !entry.cert || entry.refs === 0) return;
    const start = entry.cert.notBefore.getTime();
    const lifetime = entry.cert.notAfter.getTime() - start;
    const rotateAt = this.opts.rotateAt ?? 0.5;
    const jitter = (this.opts.jitter ?? 0.05) * lifetime * (2 * this.random() - 1);
    entry.rotatesAt = start + lifetime * rotateAt + jitter;
    this.setTimer(entry, entry.rotatesAt - this.clock.now(), 'rotation');
  }

  private scheduleRetry(entry: Entry): void {
    if (this.closed || entry.refs === 0) return;
    // Full jitter: a random wait up to the exponential bound, so a node's retries spread out.
    const delay = backoffDelay(entry.failures, { ...(this.opts.backoff ?? { initialMs: 500, maxMs: 60_000 }), jitter: true, random: this.random });
    entry.rotatesAt = this.clock.now() + delay;
    this.log.warn({ identity: entry.identity, failures: entry.failures, retryInMs: Math.round(delay), err: entry.lastError }, 'certificate request failed');
    this.setTimer(entry, delay, 'retry');
    // The backoff may have grown to a minute during a long outage: a CA that is back is asked now.
    const timer = entry.timer;
    this.opts.source.whenReachable?.(delay, () => {
      if (this.closed || entry.timer !== timer || this.entries.get(entry.identity) !== entry) return;
      this.log.info({ identity: entry.identity }, 'CA reachable again; renewing now');
      this.setTimer(entry, 0, 'CA reachable again');
    });
  }

  private setTimer(entry: Entry, ms: number, why: string): void {
    if (entry.timer !== undefined) this.clock.clearTimeout(entry.timer);
    entry.timer = this.clock.setTimeout(() => {
      entry.timer = undefined;
      if (this.closed || this.entries.get(entry.identity) !== entry) return;
      this.log.debug({ identity: entry.identity, why }, 'renewing certificate');
      this.fetch(entry).catch(() => { /* scheduleRetry logged it; the old certificate is still served */ });
    }, Math.max(0, ms));
  }

  private async refreshBundle(): Promise<void> {
    try {
      const roots = await this.opts.source.trustBundle();
      if (roots.length > 0) this.bundle = roots;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'trust bundle refresh failed; keeping the last one');
      if (this.bundle.length === 0) throw err;
    } finally {
      if (!this.closed) {
        if (this.bundleTimer !== undefined) this.clock.clearTimeout(this.bundleTimer);
        this.bundleTimer = this.clock.setTimeout(() => void this.refreshBundle().catch(() => undefined), this.opts.bundleRefreshMs ?? 5 * 60_000);
      }
    }
  }
}
