/**
 * The CA's gRPC face (src/api/ca.proto) over TLS, and its client for node agents.
 *
 * Every call is authenticated (an Authenticator turns the call's metadata into the calling
 * node) and authorized (a node gets certificates only for identities of pods scheduled on it,
 * as the NodeDirectory says). Refusals carry a precise status and message and are logged.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Logger } from 'pino';
import { silentLogger } from '../telemetry/log.js';
import { packageRoot } from '../util/package.js';
import { CaError, type CaErrorCode, type CertificateAuthority } from './ca.js';
import { exportPrivateKeyPem, generateKeyPair } from './pki.js';

/** Who is calling: the node agent of `node`, or one workload with a credential of its own (a waypoint). */
export interface Caller {
  /** The node whose agent calls; '' for a workload credential. */
  node: string;
  /** A workload credential: it may get exactly this identity, and subscribe as this waypoint. */
  workload?: { namespace: string; name: string; identity: string };
  /** When the credential expires (ms since the epoch): a discovery stream is checked again then. */
  expiresAt?: number;
}

/**
 * Turns a call's credentials into a Caller, or throws CaError('UNAUTHENTICATED'). Kubernetes: a
 * ServiceAccount token checked with TokenReview. `peer` is the caller's address as gRPC gives it
 * (`call.getPeer()`), for per-caller limits.
 */
export interface Authenticator {
  authenticate(metadata: grpc.Metadata, peer?: string): Promise<Caller>;
}

/** The identities of the pods scheduled on a node (from the local cluster, or the Kubernetes API). */
export interface NodeDirectory {
  identitiesOnNode(node: string): Promise<ReadonlySet<string>> | ReadonlySet<string>;
}

function presentedToken(metadata: grpc.Metadata): string {
  const value = metadata.get('authorization')[0];
  const m = typeof value === 'string' ? /^Bearer (\S+)$/.exec(value) : null;
  if (!m) throw new CaError('UNAUTHENTICATED', 'no credential: send "authorization: Bearer <token>" metadata');
  return m[1]!;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * The local cluster's authenticator: each node agent holds a bootstrap token made when its
 * node was created. Tokens are compared by hash in constant time.
 */
export class BootstrapTokenAuthenticator implements Authenticator {
  private readonly tokens: { node: string; hash: Buffer }[];

  constructor(tokens: Record<string, string>) {
    this.tokens = Object.entries(tokens).map(([node, token]) => ({ node, hash: digest(token) }));
  }

  authenticate(metadata: grpc.Metadata): Promise<Caller> {
    const hash = digest(presentedToken(metadata));
    let match: string | undefined;
    for (const t of this.tokens) if (timingSafeEqual(t.hash, hash)) match = t.node;
    if (!match) return Promise.reject(new CaError('UNAUTHENTICATED', 'unknown bootstrap token'));
    return Promise.resolve({ node: match });
  }
}

const STATUS: Record<CaErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
};

interface CreateRequest { csr: string; validity_duration: string | number; identity: string }

let definition: grpc.GrpcObject | undefined;
function caService(): grpc.ServiceClientConstructor {
  definition ??= grpc.loadPackageDefinition(protoLoader.loadSync(join(packageRoot(), 'src', 'api', 'ca.proto'), {
    keepCase: true, longs: String, defaults: true,
  }));
  return (definition as unknown as { ambit: { ca: { v1: { CertificateService: grpc.ServiceClientConstructor } } } }).ambit.ca.v1.CertificateService;
}

export interface CaServerOptions {
  ca: CertificateAuthority;
  authenticator: Authenticator;
  directory: NodeDirectory;
  host: string;
  port: number;
  /** DNS names the serving certificate carries besides the listen address. */
  dnsNames?: string[];
  log?: Logger;
  /** More services on the same TLS port (the controller's discovery stream). */
  services?: { definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation }[];
  /** Told how each CreateCertificate ended (issued, or the refusal's status), for metrics. */
  onCertificate?: (outcome: 'issued' | CaErrorCode | 'INTERNAL') => void;
}

export class CaServer {
  private constructor(private readonly server: grpc.Server, readonly port: number, readonly host: string) {}

  get address(): string {
    return `${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  static async start(opts: CaServerOptions): Promise<CaServer> {
    const log = opts.log ?? silentLogger;
    const { ca } = opts;
    const keys = await generateKeyPair();
    const ips = /^[\d.]+$|:/.test(opts.host) ? [opts.host] : [];
    const serving = await ca.issueServing(keys.publicKey, { dns: ['localhost', ...(opts.dnsNames ?? [])], ips });
    const credentials = grpc.ServerCredentials.createSsl(null, [{
      private_key: Buffer.from(await exportPrivateKeyPem(keys.privateKey)),
      cert_chain: Buffer.from(serving.chain.slice(0, -1).join('')),
    }], false);

    const refuse = (call: { getPeer(): string }, err: unknown, callback: grpc.sendUnaryData<unknown>, what: Record<string, unknown>) => {
      if (err instanceof CaError) {
        log.warn({ peer: call.getPeer(), code: err.code, reason: err.message, ...what }, 'certificate request refused');
        callback({ code: STATUS[err.code], details: err.message });
      } else {
        log.error({ err: (err as Error).stack, ...what }, 'certificate request failed');
        callback({ code: grpc.status.INTERNAL, details: 'internal error' });
      }
    };

    const server = new grpc.Server();
    server.addService(caService().service, {
      CreateCertificate: (call: grpc.ServerUnaryCall<CreateRequest, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        const { identity, csr } = call.request;
        const ttl = Number(call.request.validity_duration);
        let node: string | undefined;
        void (async () => {
          const caller = await opts.authenticator.authenticate(call.metadata, call.getPeer());
          // An API server accepts a token a little after its expiry; the CA does not.
          if (caller.expiresAt !== undefined && caller.expiresAt <= Date.now()) throw new CaError('UNAUTHENTICATED', `credential expired at ${new Date(caller.expiresAt).toISOString()}: present a fresh token`);
          node = caller.node || `${caller.workload?.namespace}/${caller.workload?.name}`;
          if (caller.workload) {
            if (identity !== caller.workload.identity) throw new CaError('PERMISSION_DENIED', `the credential of ${caller.workload.namespace}/${caller.workload.name} is for ${caller.workload.identity} only, not ${identity}`);
          } else {
            const allowed = await opts.directory.identitiesOnNode(caller.node);
            if (!allowed.has(identity)) {
              throw new CaError('PERMISSION_DENIED', `node ${caller.node} runs no pod with identity ${identity}`);
            }
          }
          const signed = await ca.sign({ csr, identity, ttlSeconds: ttl });
          log.info({ node, identity, serial: signed.serial, notAfter: signed.notAfter.toISOString() }, 'certificate issued');
          opts.onCertificate?.('issued');
          callback(null, { cert_chain: signed.chain });
        })().catch((err: unknown) => {
          opts.onCertificate?.(err instanceof CaError ? err.code : 'INTERNAL');
          refuse(call, err, callback, { node, identity });
        });
      },
      GetTrustBundle: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        opts.authenticator.authenticate(call.metadata, call.getPeer())
          .then(() => callback(null, { roots: ca.trustBundle() }))
          .catch((err: unknown) => refuse(call, err, callback, {}));
      },
    });
    for (const extra of opts.services ?? []) server.addService(extra.definition, extra.implementation);
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync(`${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${opts.port}`, credentials, (err, p) => (err ? reject(err) : resolve(p)));
    });
    log.info({ host: opts.host, port, origin: ca.origin, trustDomain: ca.trustDomain }, 'CA serving');
    return new CaServer(server, port, opts.host);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }

  forceClose(): void {
    this.server.forceShutdown();
  }
}

/** What the certificate manager needs from a CA: implemented over gRPC by CaClient, in memory by tests. */
export interface CertificateSource {
  createCertificate(csr: string, identity: string, ttlSeconds: number): Promise<string[]>;
  trustBundle(): Promise<string[]>;
  /**
   * Calls `then` once the CA, unreachable now, can be reached again (within `withinMs`; never when
   * it is reachable now: a CA that answers and refuses is asked again after the backoff only).
   */
  whenReachable?(withinMs: number, then: () => void): void;
}

/** While the CA is unreachable its address is tried at least this often (gRPC's own backoff grows to 120 s). */
export const CA_RECONNECT_PROBE_MS = 5000;

/** A gRPC error from the CA as an Error with the status code kept. */
export class CaRequestError extends Error {
  override readonly name = 'CaRequestError';
  constructor(readonly code: grpc.status, message: string) {
    super(message);
  }
}

/**
 * What a client presents to the controller: a token, or a function read at each call — a
 * Kubernetes projected ServiceAccount token is rotated in its file by the kubelet, so it is
 * re-read rather than held.
 */
export type Credential = string | (() => string);

/** The `authorization` metadata value for a credential. */
export function authorization(credential: Credential): string {
  return `Bearer ${typeof credential === 'function' ? credential() : credential}`;
}

export interface CaClientOptions {
  address: string;
  /** PEM roots that verify the CA's serving certificate (the mesh trust bundle). */
  roots: string[];
  token: Credential;
  /** Per-call deadline; default 10 s. */
  timeoutMs?: number;
}

export class CaClient implements CertificateSource {
  private readonly client: grpc.Client & Record<string, (...args: unknown[]) => unknown>;

  constructor(private readonly opts: CaClientOptions) {
    const Service = caService();
    this.client = new Service(opts.address, grpc.credentials.createSsl(Buffer.from(opts.roots.join(''))), {
      'grpc.ssl_target_name_override': 'localhost',
      'grpc.initial_reconnect_backoff_ms': 1000, 'grpc.max_reconnect_backoff_ms': CA_RECONNECT_PROBE_MS,
    }) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
  }

  whenReachable(withinMs: number, then: () => void): void {
    if (this.client.getChannel().getConnectivityState(false) === grpc.connectivityState.READY) return;
    this.client.waitForReady(Date.now() + withinMs, (err?: Error) => { if (!err) then(); });
  }

  private call<T>(method: string, request: unknown): Promise<T> {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', authorization(this.opts.token));
    const deadline = new Date(Date.now() + (this.opts.timeoutMs ?? 10_000));
    return new Promise((resolve, reject) => {
      this.client[method]!(request, metadata, { deadline }, (err: grpc.ServiceError | null, res: T) => {
        if (err) reject(new CaRequestError(err.code, `${method}: ${err.details || err.message}`));
        else resolve(res);
      });
    });
  }

  async createCertificate(csr: string, identity: string, ttlSeconds: number): Promise<string[]> {
    const res = await this.call<{ cert_chain: string[] }>('CreateCertificate', { csr, identity, validity_duration: ttlSeconds });
    return res.cert_chain;
  }

  async trustBundle(): Promise<string[]> {
    return (await this.call<{ roots: string[] }>('GetTrustBundle', {})).roots;
  }

  close(): void {
    this.client.close();
  }
}
