/**
 * A small Kubernetes API client: one request, or one watch stream read line by line. Credentials
 * and TLS come from a KubeConfig (in-cluster or a kubeconfig file) through
 * `@kubernetes/client-node`'s `applyToHTTPSOptions`, so exec plugins and token refresh work as
 * with kubectl; the list/watch protocol itself is ours (see kube-source.ts for why).
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { KubeConfig } from '@kubernetes/client-node';

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

  /** From a kubeconfig file, or without one the defaults ($KUBECONFIG, ~/.kube/config, in-cluster). */
  static fromFile(file: string | undefined): KubeClient {
    const kc = new KubeConfig();
    if (file) kc.loadFromFile(file);
    else kc.loadFromDefault();
    return KubeClient.fromKubeConfig(kc);
  }

  /** From a KubeConfig: the current context's cluster and user (defaults: in-cluster, else ~/.kube/config). */
  static fromKubeConfig(kc?: KubeConfig): KubeClient {
    if (!kc) {
      kc = new KubeConfig();
      kc.loadFromDefault();
    }
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const config = kc;
    return new KubeClient({ server: cluster.server, prepare: (o) => config.applyToHTTPSOptions(o) });
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
