/** The router's public types: what a request brings and what it is told to do. */
import type { Service } from '../../config/model.js';

// ---------------------------------------------------------------------------------------------
// Public types

export interface RouteRequest {
  /** The service the request was sent to (the waypoint knows it from the tunnel's authority VIP:port). */
  service: Service;
  /** Service port. */
  port: number;
  method: string;
  /** With the query. */
  path: string;
  /** Host / :authority. */
  authority: string;
  /** Lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  sourceLabels?: Record<string, string>;
  sourceNamespace?: string;
  /** Informational: GRPCRoute rules match on the path, as in Istio, whatever the content type. */
  grpc?: boolean;
  /** The request's scheme; `http` when absent (waypoints receive plaintext HTTP inside HBONE). */
  scheme?: string;
}

export interface HeaderOps { set: Record<string, string>; add: Record<string, string>; remove: string[] }

export interface Destination {
  service: Service;
  port: number;
  subset?: string;
  /** Relative weight (a single destination: 100). */
  weight: number;
  /** Endpoints selected by the subset's labels. */
  selector?: Record<string, string>;
  /** Request header operations for this destination, applied after the route's. */
  headers?: HeaderOps;
  /** Response header operations for this destination, applied after the route's. */
  responseHeaders?: HeaderOps;
  /** Authority rewrite from this destination's header operations (only when the route sets none). */
  authority?: string;
  /** The destination cannot be reached (no such service or subset, invalid backendRef): answer `status`. */
  missing?: { status: number; reason: string };
}

export interface Mirror { destination: Destination; percent: number }

export interface RouteRewrite {
  uri?: string;
  uriRegex?: { match: string; rewrite: string };
  authority?: string;
  /** The `:path` to send upstream (with the query), when the path is rewritten. */
  path?: string;
}

export interface RetrySpec { attempts: number; perTryTimeoutMs?: number; retryOn: string[]; retriableStatusCodes: number[]; backoffMs?: number; ignorePreviousHosts?: boolean }
export interface FaultSpec { delay?: { ms: number; percent: number }; abort?: { status?: number; grpcStatus?: string; percent: number } }

export interface ForwardAction {
  kind: 'forward';
  /** "ns/name#rule-index" of the VirtualService or route, or `default`, for metrics and logs. */
  route: string;
  destinations: Destination[];
  rewrite?: RouteRewrite;
  requestHeaders: HeaderOps;
  responseHeaders: HeaderOps;
  timeoutMs?: number;
  retries?: RetrySpec;
  fault?: FaultSpec;
  mirror?: Mirror;
  mirrors?: Mirror[];
  corsPolicy?: unknown;
}

export type RouteAction =
  | ForwardAction
  | { kind: 'redirect'; route: string; status: number; location: string; responseHeaders?: HeaderOps }
  | { kind: 'direct-response'; route: string; status: number; body?: string; responseHeaders?: HeaderOps }
  /** 404 NR. */
  | { kind: 'no-route' };

export interface TrafficPolicy { loadBalancer?: unknown; connectionPool?: unknown; outlierDetection?: unknown; tls?: unknown; retryBudget?: unknown }

export interface RouterOptions {
  random?: () => number;
  /** Cluster domain for short names; by default the services' (`cluster.local`). */
  clusterDomain?: string;
}

/** Istio's retry policy for routes that set none. */
export const DEFAULT_RETRIES: RetrySpec = Object.freeze({
  attempts: 2,
  retryOn: Object.freeze(['connect-failure', 'refused-stream', 'unavailable', 'cancelled', 'retriable-status-codes']) as string[],
  retriableStatusCodes: Object.freeze([] as number[]) as number[],
});

export const DEFAULT_ROUTE = 'default';
export const NO_ROUTE: RouteAction = Object.freeze({ kind: 'no-route' });
export const EMPTY_OPS: HeaderOps = Object.freeze({ set: Object.freeze({}), add: Object.freeze({}), remove: Object.freeze([] as string[]) as string[] });
