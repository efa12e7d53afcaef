/**
 * Where the controller's configuration, its callers and its nodes come from: the local cluster's
 * state (src/local/controller-origins.ts), a manifest directory, or a Kubernetes API server. The
 * controller owns these interfaces; each origin implements them where it lives.
 */
import type { Authenticator, NodeDirectory } from '../identity/ca-server.js';
import type { SourceSnapshot } from './model.js';

/** Where the controller's configuration comes from: the local cluster, a manifest directory, or the Kubernetes API. */
export interface ConfigSource {
  start(onChange: (snapshot: SourceSnapshot) => void): void;
  stop(): void;
}

/** A config source with the callers it admits and the nodes it knows. */
export interface ControllerOrigins {
  source: ConfigSource;
  authenticator: Authenticator;
  directory: NodeDirectory;
  /** What the controller logs about where it runs. */
  describe: Record<string, unknown>;
}
