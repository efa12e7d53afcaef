/**
 * A small Kubernetes API client: one request, or one watch stream read line by line. In a pod it
 * speaks to the API server as its ServiceAccount (the token re-read from its file for every
 * request, as the kubelet rotates it; the cluster's CA); with a kubeconfig file, credentials and
 * TLS come from `@kubernetes/client-node`'s `applyToHTTPSOptions`, so exec plugins and token
 * refresh work as with kubectl. That library is loaded only then, on the first request: its
 * modules cost a process ~25 MB of heap, which no node agent, controller or waypoint in a pod,
 * nor any process of the local cluster, should pay. The list/watch protocol itself is ours (see
 * kube-source.ts for why).
 */
import { existsSync, readFileSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { OperatorError } from '../util/errors.js';

/** Where a pod's ServiceAccount credentials are mounted. */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface KubeResponse {
  status: number;
  body: unknown;
}

/** A non-2xx answer (or a transport failure, status 0). */
export class KubeApiError extends Error {
  override readonly name = 'KubeApiError';
  constructor(readonly status: number, message: string, readonly body?: unknown) {
    super(message);
  }
}

export interface KubeClientOptions {
  /** The API server's URL, e.g. https://10.96.0.1:443 or http://127.0.0.1:8001. */
  server: string;
  /** Adds credentials and TLS settings to each request (KubeConfig.applyToHTTPSOptions). */
  prepare?: (opts: https.RequestOptions) => Promise<void>;
  /** A request that sends no byte for this long fails (ms); watches are bounded by timeoutSeconds instead. */
  requestTimeoutMs?: number;
}

export class KubeClient {
  private readonly url: URL;

  constructor(private readonly opts: KubeClientOptions) {
    this.url = new URL(opts.server);
  }

  /** The API server's URL. */
  get server(): string {
    return this.opts.server;
  }

  /**
   * From a kubeconfig file, or without one as kubectl would: $KUBECONFIG's files, ~/.kube/config,
   * else the pod's ServiceAccount (in-cluster).
   */
  static fromFile(file: string | undefined): KubeClient {
    try {
      return KubeClient.openFile(file);
    } catch (err) {
      throw new OperatorError(`cannot read the kubeconfig${file ? ` ${file}` : ''}: ${(err as Error).message}`,
        'give a kubeconfig that names a cluster and a user (the flag, $KUBECONFIG or ~/.kube/config), or run in a pod with a ServiceAccount', 1, 'AMBIT_E_KUBECONFIG');
    }
  }

  private static openFile(file: string | undefined): KubeClient {
    const path = file ?? defaultKubeconfig();
    if (path === undefined) return KubeClient.inCluster();
    const server = kubeconfigServer(path);
    let loaded: Promise<KubeConfig> | undefined;
    return new KubeClient({
      server,
      prepare: async (o) => {
        loaded ??= import('@kubernetes/client-node').then(({ KubeConfig: Config }) => {
          const kc = new Config();
          kc.loadFromFile(path);
          return kc;
        });
        await (await loaded).applyToHTTPSOptions(o);
      },
    });
  }

  /** From a KubeConfig already loaded: the current context's cluster and user. */
  static fromKubeConfig(kc: KubeConfig): KubeClient {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    return new KubeClient({ server: cluster.server, prepare: (o) => kc.applyToHTTPSOptions(o) });
  }

  /**
   * The pod's own ServiceAccount: the API server from KUBERNETES_SERVICE_HOST/PORT, the cluster's
   * CA, and the projected token as it is in its file at each request (never a copy the kubelet
   * has replaced: a 401 is then about the current token).
   */
  static inCluster(dir = SERVICE_ACCOUNT_DIR): KubeClient {
    const host = process.env.KUBERNETES_SERVICE_HOST;
    const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
    if (!host) throw new Error('not in a pod (no KUBERNETES_SERVICE_HOST) and no kubeconfig ($KUBECONFIG, ~/.kube/config)');
    const ca = readFileSync(join(dir, 'ca.crt'));
    const tokenFile = join(dir, 'token');
    const token = freshToken(tokenFile, readFileSync(tokenFile, 'utf8').trim());
    return new KubeClient({
      server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
      prepare: (o) => {
        o.ca = ca;
        o.headers = { ...o.headers, authorization: `Bearer ${token()}` };
        return Promise.resolve();
      },
    });
  }

  private async options(method: string, path: string, headers: Record<string, string>): Promise<https.RequestOptions> {
    const base = this.url.pathname.replace(/\/$/, '');
    const o: https.RequestOptions = {
      method,
      protocol: this.url.protocol,
      hostname: this.url.hostname.replace(/^\[|\]$/g, ''),
      port: this.url.port || (this.url.protocol === 'https:' ? 443 : 80),
      path: `${base}${path}`,
      headers: { accept: 'application/json', ...headers },
    };
    await this.opts.prepare?.(o);
    return o;
  }

  private send(o: https.RequestOptions): http.ClientRequest {
    return o.protocol === 'https:' ? https.request(o) : http.request(o);
  }

  /** One request; the body is parsed as JSON when it is JSON. Rejects only on transport failure. */
  async request(method: string, path: string, body?: unknown, contentType = 'application/json', signal?: AbortSignal): Promise<KubeResponse> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const o = await this.options(method, path, payload ? { 'content-type': contentType, 'content-length': String(payload.length) } : {});
    return new Promise((resolve, reject) => {
      const req = this.send(o);
      req.setTimeout(this.opts.requestTimeoutMs ?? 30_000, () => req.destroy(new Error(`${method} ${path}: timed out`)));
      const abort = () => req.destroy(new Error(`${method} ${path}: aborted`));
      signal?.addEventListener('abort', abort, { once: true });
      req.on('close', () => signal?.removeEventListener('abort', abort));
      req.on('error', reject);
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            // not JSON: kept as text
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      });
      req.end(payload);
    });
  }

  /**
   * A watch: calls `onEvent` with each newline-delimited JSON object until the server ends the
   * stream (resolves), the signal aborts it (resolves), or it fails (rejects; a non-200 answer
   * rejects with a KubeApiError carrying the status). `idleTimeoutMs`: fail after that long
   * without a byte (0 = never).
   */
  async watch(path: string, onEvent: (event: unknown) => void, signal: AbortSignal, idleTimeoutMs = 0): Promise<void> {
    const o = await this.options('GET', path, {});
    return new Promise((resolve, reject) => {
      if (signal.aborted) return resolve();
      const req = this.send(o);
      // A half-open connection delivers nothing, not even its end: give up after this much silence.
      if (idleTimeoutMs > 0) req.setTimeout(idleTimeoutMs, () => req.destroy(new Error(`watch ${path}: no data for ${idleTimeoutMs} ms`)));
      let settled = false;
      const done = (err?: unknown) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', abort);
        if (err && !signal.aborted) reject(err instanceof Error ? err : new Error(String(err)));
        else resolve();
      };
      const abort = () => {
        req.destroy();
        done();
      };
      signal.addEventListener('abort', abort);
      req.on('error', done);
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let body: unknown;
            try {
              body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              body = undefined;
            }
            const message = (body as { message?: string } | undefined)?.message ?? `HTTP ${res.statusCode ?? 0}`;
            done(new KubeApiError(res.statusCode ?? 0, `watch ${path}: ${message}`, body));
          });
          return;
        }
        let buffered = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buffered += chunk;
          let nl: number;
          while ((nl = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, nl).trim();
            buffered = buffered.slice(nl + 1);
            if (!line) continue;
            try {
              onEvent(JSON.parse(line));
            } catch (err) {
              req.destroy();
              return done(err);
            }
          }
        });
        res.on('error', done);
        res.on('aborted', () => done(new Error(`watch ${path}: connection lost`)));
        res.on('close', () => done());
        res.on('end', () => done());
      });
      req.end();
    });
  }
}

/**
 * A projected ServiceAccount token as it is in `file` at each call, which the kubelet rewrites as
 * it rotates it; mid-rotation (unreadable or empty) the last one read, else `initial`.
 */
export function freshToken(file: string, initial?: string): () => string | undefined {
  let last = initial;
  return () => {
    try {
      last = readFileSync(file, 'utf8').trim() || last;
    } catch {
      // mid-rotation: the token read moments ago is as fresh as it gets
    }
    return last;
  };
}

/** kubectl's choice without --kubeconfig: the first of $KUBECONFIG's files, ~/.kube/config; undefined: in-cluster. */
export function defaultKubeconfig(): string | undefined {
  for (const path of (process.env.KUBECONFIG ?? '').split(delimiter)) if (path !== '' && existsSync(path)) return path;
  const home = join(homedir(), '.kube', 'config');
  if (existsSync(home)) return home;
  if (process.env.KUBERNETES_SERVICE_HOST) return undefined;
  throw new Error('no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod (no KUBERNETES_SERVICE_HOST)');
}

/** The API server of a kubeconfig's current context, read without the client library. */
export function kubeconfigServer(path: string): string {
  const doc = parse(readFileSync(path, 'utf8')) as {
    'current-context'?: string;
    contexts?: { name?: string; context?: { cluster?: string } }[];
    clusters?: { name?: string; cluster?: { server?: string } }[];
  } | null;
  const current = doc?.['current-context'];
  const context = doc?.contexts?.find((c) => c.name === current) ?? (doc?.contexts?.length === 1 ? doc.contexts[0] : undefined);
  const cluster = doc?.clusters?.find((c) => c.name === context?.context?.cluster);
  const server = cluster?.cluster?.server;
  if (typeof server !== 'string' || server === '') throw new Error(`${path}: no server for the current context${current ? ` "${current}"` : ''}`);
  return server;
}
