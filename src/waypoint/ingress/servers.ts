/**
 * An ingress gateway's listeners, from the gateways of its view: Istio `Gateway` servers and
 * Gateway API `Gateway` listeners read into one shape, grouped by port. Pure: what to listen on
 * and how, decided from config alone (the Secrets are looked at when a listener is served).
 *
 * Where ambit had to choose (Istio's behaviour unless said otherwise):
 * - Servers on one port merge: TLS servers (HTTPS, TLS) are picked by the ClientHello's SNI,
 *   plaintext HTTP servers (HTTP, HTTP2, GRPC) by the Host header. A port whose servers mix
 *   plaintext and TLS keeps the kind of its first server (by gateway namespace/name, then
 *   server order); the others are dropped with a warning (Istio reports the conflict too).
 * - `tls.mode` ISTIO_MUTUAL is refused with a warning (it is for sidecars, which ambit has not):
 *   the server is not served. An HTTPS or TLS server without `tls` is not served either.
 * - `tls.credentialName` is read in the namespace the gateway runs in (`istio-system` for Istio's
 *   default one), not the Gateway's: Istio's rule.
 * - `tls.httpsRedirect` on an HTTP server answers every request 301 to https.
 * - `hosts` entries `ns/host`: `*` or absent = routes from any namespace, `.` = the gateway's.
 * - Gateway API listeners: protocol HTTP, HTTPS or TLS (tls.mode Terminate, the default, or
 *   Passthrough); `hostname` absent = every host; certificateRefs of kind Secret (group "") in
 *   the Gateway's namespace, the first one used; allowedRoutes.namespaces.from Same (default) or
 *   All — Selector needs the namespaces' labels, which a gateway's view has not: Same, with a
 *   warning.
 */
import type { ConfigObject } from '../../config/model.js';
import { isObject } from '../../config/schema.js';

export type TlsMode = 'SIMPLE' | 'MUTUAL' | 'OPTIONAL_MUTUAL' | 'PASSTHROUGH';

/** A host a server serves, and the namespaces whose routes may bind it. */
export interface ServerHost {
  /** Lower case; `*`, `*.suffix` or a name. */
  host: string;
  /** `*`: any namespace; otherwise the one namespace. */
  namespace: string;
}

export interface ServerTls {
  mode: TlsMode;
  /** The Secret with the certificate (its namespace: the gateway's, as Istio looks credentialName up). */
  credential?: { namespace: string; name: string };
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  maxVersion?: 'TLSv1.2' | 'TLSv1.3';
}

export interface IngressServer {
  /** `Gateway/ns/name#i` (Istio, server index) or `Gateway/ns/name#listener` (Gateway API): for logs and readiness. */
  id: string;
  api: 'istio' | 'gateway-api';
  gateway: { namespace: string; name: string };
  /** Istio: the server port's name; Gateway API: the listener's name (what `sectionName` names). */
  name?: string;
  port: number;
  /** Upper case: HTTP, HTTPS, HTTP2, GRPC, TLS, TCP. */
  protocol: string;
  hosts: ServerHost[];
  tls?: ServerTls;
  httpsRedirect: boolean;
}

/** `http`: plaintext HTTP by Host; `tls`: TLS by SNI (terminated or passed through); `tcp`: plain TCP. */
export type PortKind = 'http' | 'tls' | 'tcp';
export interface PortPlan { port: number; kind: PortKind; servers: IngressServer[] }

const HTTP_PROTOCOLS = new Set(['HTTP', 'HTTP2', 'GRPC']);
const TLS_PROTOCOLS = new Set(['HTTPS', 'TLS']);
const TLS_VERSIONS: Record<string, 'TLSv1.2' | 'TLSv1.3' | undefined> = { TLSV1_2: 'TLSv1.2', TLSV1_3: 'TLSv1.3' };

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const portNumber = (v: unknown): number | undefined => {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  return Number.isInteger(n) && n > 0 && n <= 65535 ? n : undefined;
};

function kindOf(protocol: string): PortKind | undefined {
  if (HTTP_PROTOCOLS.has(protocol)) return 'http';
  if (TLS_PROTOCOLS.has(protocol)) return 'tls';
  if (protocol === 'TCP') return 'tcp';
  return undefined;
}

/** Istio `hosts` entries: `host`, `ns/host`, `./host` (the gateway's namespace) and `*` then `/host` (any namespace). */
export function serverHosts(hosts: unknown, gatewayNamespace: string): ServerHost[] {
  if (!Array.isArray(hosts)) return [];
  const out: ServerHost[] = [];
  for (const h of hosts) {
    if (typeof h !== 'string' || h.length === 0) continue;
    const slash = h.indexOf('/');
    const ns = slash < 0 ? '*' : h.slice(0, slash);
    out.push({ host: (slash < 0 ? h : h.slice(slash + 1)).toLowerCase(), namespace: ns === '.' ? gatewayNamespace : ns });
  }
  return out;
}

function istioServers(g: ConfigObject, warn: (m: string) => void, credentialNamespace: string): IngressServer[] {
  const spec = isObject(g.spec) ? g.spec : {};
  const servers = Array.isArray(spec.servers) ? spec.servers : [];
  const out: IngressServer[] = [];
  servers.forEach((s: unknown, i: number) => {
    const id = `Gateway/${g.namespace}/${g.name}#${i}`;
    if (!isObject(s) || !isObject(s.port)) return warn(`${id}: a server needs port: not served`);
    const port = portNumber(s.port.number);
    const protocol = (str(s.port.protocol) ?? '').toUpperCase();
    if (port === undefined) return warn(`${id}: port.number must be 1-65535: not served`);
    if (!kindOf(protocol)) return warn(`${id}: protocol "${protocol}" is not one a gateway serves (HTTP, HTTPS, HTTP2, GRPC, TLS, TCP): not served`);
    const hosts = serverHosts(s.hosts, g.namespace);
    if (hosts.length === 0) return warn(`${id}: no hosts: not served`);
    const tls = isObject(s.tls) ? s.tls : undefined;
    const server: IngressServer = { id, api: 'istio', gateway: { namespace: g.namespace, name: g.name }, port, protocol, hosts, httpsRedirect: tls?.httpsRedirect === true };
    const name = str(s.port.name);
    if (name) server.name = name;
    if (TLS_PROTOCOLS.has(protocol)) {
      const mode = (str(tls?.mode) ?? 'SIMPLE').toUpperCase();
      if (!tls) return warn(`${id}: ${protocol} needs tls: not served`);
      if (mode === 'ISTIO_MUTUAL') return warn(`${id}: tls.mode ISTIO_MUTUAL is for sidecar clients, which ambit has not: not served`);
      if (mode !== 'SIMPLE' && mode !== 'MUTUAL' && mode !== 'OPTIONAL_MUTUAL' && mode !== 'PASSTHROUGH') return warn(`${id}: tls.mode "${mode}" is not SIMPLE, MUTUAL, OPTIONAL_MUTUAL or PASSTHROUGH: not served`);
      const credential = str(tls.credentialName);
      if (mode !== 'PASSTHROUGH' && !credential) return warn(`${id}: tls.mode ${mode} needs tls.credentialName (ambit reads certificates from Secrets only): not served`);
      if (isObject(tls) && (tls.serverCertificate !== undefined || tls.privateKey !== undefined)) warn(`${id}: tls.serverCertificate/privateKey files are not read (use credentialName)`);
      if (mode === 'PASSTHROUGH' && protocol === 'HTTPS') warn(`${id}: HTTPS with PASSTHROUGH is routed by the VirtualServices' tls routes, as TLS`);
      if (mode !== 'PASSTHROUGH' && protocol === 'TLS') warn(`${id}: TLS with tls.mode ${mode}: terminated, then routed by the VirtualServices' tcp routes`);
      server.tls = { mode, ...(credential ? { credential: { namespace: credentialNamespace, name: credential } } : {}) };
      const min = TLS_VERSIONS[String(tls.minProtocolVersion ?? '')];
      const max = TLS_VERSIONS[String(tls.maxProtocolVersion ?? '')];
      if (tls.minProtocolVersion !== undefined && tls.minProtocolVersion !== 'TLS_AUTO' && !min) warn(`${id}: tls.minProtocolVersion ${String(tls.minProtocolVersion)}: TLS 1.2 is the least served`);
      if (min) server.tls.minVersion = min;
      if (max) server.tls.maxVersion = max;
    } else if (tls && tls.mode !== undefined) warn(`${id}: tls.mode on a ${protocol} server is ignored`);
    out.push(server);
  });
  return out;
}

function gatewayApiServers(g: ConfigObject, warn: (m: string) => void): IngressServer[] {
  const spec = isObject(g.spec) ? g.spec : {};
  const listeners = Array.isArray(spec.listeners) ? spec.listeners : [];
  const out: IngressServer[] = [];
  listeners.forEach((l: unknown, i: number) => {
    const name = isObject(l) ? str(l.name) : undefined;
    const id = `Gateway/${g.namespace}/${g.name}#${name ?? i}`;
    if (!isObject(l)) return warn(`${id}: not an object: not served`);
    const port = portNumber(l.port);
    const protocol = (str(l.protocol) ?? '').toUpperCase();
    if (port === undefined) return warn(`${id}: port must be 1-65535: not served`);
    if (protocol !== 'HTTP' && protocol !== 'HTTPS' && protocol !== 'TLS') return warn(`${id}: protocol "${protocol}" is not HTTP, HTTPS or TLS: not served`);
    const from = isObject(l.allowedRoutes) && isObject(l.allowedRoutes.namespaces) ? str(l.allowedRoutes.namespaces.from) ?? 'Same' : 'Same';
    if (from === 'Selector') warn(`${id}: allowedRoutes.namespaces.from Selector needs namespace labels a gateway does not see: only routes of ${g.namespace} attach`);
    const routeNamespace = from === 'All' ? '*' : g.namespace;
    const hostname = str(l.hostname)?.toLowerCase();
    const server: IngressServer = { id, api: 'gateway-api', gateway: { namespace: g.namespace, name: g.name }, port, protocol, hosts: [{ host: hostname ?? '*', namespace: routeNamespace }], httpsRedirect: false };
    if (name) server.name = name;
    if (protocol !== 'HTTP') {
      const tls = isObject(l.tls) ? l.tls : {};
      const mode = str(tls.mode) ?? 'Terminate';
      if (mode === 'Passthrough') server.tls = { mode: 'PASSTHROUGH' };
      else if (mode !== 'Terminate') return warn(`${id}: tls.mode "${mode}" is not Terminate or Passthrough: not served`);
      else {
        const refs = (Array.isArray(tls.certificateRefs) ? tls.certificateRefs : []).filter(isObject);
        const ref = refs.find((r) => (r.kind ?? 'Secret') === 'Secret' && (r.group ?? '') === '' && typeof r.name === 'string');
        if (!ref) return warn(`${id}: tls.certificateRefs names no Secret: not served`);
        const ns = str(ref.namespace) ?? g.namespace;
        if (ns !== g.namespace) return warn(`${id}: certificateRef ${ns}/${String(ref.name)} is in another namespace (ReferenceGrant is not supported): not served`);
        if (refs.length > 1) warn(`${id}: ${refs.length} certificateRefs: only ${String(ref.name)} is served`);
        server.tls = { mode: 'SIMPLE', credential: { namespace: ns, name: String(ref.name) } };
      }
    }
    out.push(server);
  });
  return out;
}

/** Whether a config object is a Gateway API Gateway (else an Istio one). */
export const isGatewayApi = (g: ConfigObject): boolean => g.apiVersion.startsWith('gateway.networking.k8s.io/');

/**
 * The servers of the gateways, grouped by port (servers in gateway namespace/name, then server,
 * order). `credentialNamespace`: where an Istio server's credentialName is read — the namespace
 * the gateway runs in, whatever namespace the Gateway is in (Istio's rule); the Gateway's own
 * when not given.
 */
export function planListeners(gateways: readonly ConfigObject[], warn: (m: string) => void = () => undefined, opts: { credentialNamespace?: string } = {}): Map<number, PortPlan> {
  const plans = new Map<number, PortPlan>();
  const sorted = [...gateways].filter((g) => g.kind === 'Gateway').sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
  for (const g of sorted) {
    for (const s of isGatewayApi(g) ? gatewayApiServers(g, warn) : istioServers(g, warn, opts.credentialNamespace ?? g.namespace)) {
      const kind = kindOf(s.protocol)!;
      const plan = plans.get(s.port);
      if (!plan) plans.set(s.port, { port: s.port, kind, servers: [s] });
      else if (plan.kind !== kind) warn(`${s.id}: port ${s.port} already serves ${plan.kind} (${plan.servers[0]!.id}); a ${s.protocol} server cannot share it: not served`);
      else plan.servers.push(s);
    }
  }
  return plans;
}

/** How specifically a server or route host pattern names a host: exact beats the longest wildcard; -1: not at all. */
export function hostScore(pattern: string, host: string): number {
  if (pattern === host) return 100_000;
  if (pattern === '*') return 0;
  if (pattern.startsWith('*.') && host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1) return pattern.length;
  return -1;
}

/** Whether two host patterns can name a common host (a route's host against a server's). */
export function hostsIntersect(a: string, b: string): boolean {
  if (a === '*' || b === '*' || a === b) return true;
  if (a.startsWith('*.') && (b.endsWith(a.slice(1)) || (b.startsWith('*.') && a.endsWith(b.slice(1))))) return true;
  return b.startsWith('*.') && a.endsWith(b.slice(1));
}

/** The server of a port that best serves `host` (exact, then the longest wildcard, then `*`); undefined: none. */
export function serverFor(servers: readonly IngressServer[], host: string | undefined): IngressServer | undefined {
  let best: IngressServer | undefined;
  let bestScore = -1;
  for (const s of servers) {
    for (const h of s.hosts) {
      const score = host === undefined ? (h.host === '*' ? 0 : -1) : hostScore(h.host, host);
      if (score > bestScore) {
        best = s;
        bestScore = score;
      }
    }
  }
  return best;
}

/** The servers of a port that serve `host` and do not redirect it, the most specific first (then in order). */
export function serversFor(servers: readonly IngressServer[], host: string): IngressServer[] {
  return servers
    .map((s, i) => ({ s, i, score: Math.max(-1, ...s.hosts.map((h) => hostScore(h.host, host))) }))
    .filter((x) => x.score >= 0 && !x.s.httpsRedirect)
    .sort((a, b) => b.score - a.score || a.i - b.i)
    .map((x) => x.s);
}
