/**
 * The proxy-config views (`GET /proxy-config/<view>` on the admin endpoint and the control
 * socket): what the agent holds — workloads, services, policies, certificates, connections — in
 * the versioned schema of src/api/proxy-config.ts, built from what the agent already exposes
 * (its config dump, its enrolled pods, its certificates and open connections). Pure: the same
 * state and clock give the same answer.
 */
import type { ConfigObject, Service, Workload } from '../config/model.js';
import type { CertificateSummary } from '../identity/cert-manager.js';
import {
  PROXY_CONFIG_API_VERSION, PROXY_CONFIG_KINDS, ruleSummary,
  type CertificateItem, type ConnectionItem, type ConnectionPeerItem, type PolicyItem, type ProxyConfigAnswers, type ProxyConfigView,
  type ServiceItem, type WaypointRef, type WorkloadItem,
} from '../api/proxy-config.js';
import type { ConfigDump, WorkloadsDump } from './agent.js';
import type { ConnectionEndpoint, TrackedConnection } from './connections.js';

// Shared with the waypoint's views; imported from here by older callers.
export { ruleSummary };

/** What the views are built from: the node agent (NodeAgent has all of it). */
export interface ProxyConfigSource {
  readonly rootNamespace: string;
  configDump(): ConfigDump;
  workloads(): WorkloadsDump;
  readonly connections: { list(): TrackedConnection[] };
  readonly certs: { list(): CertificateSummary[] };
}

/** One view of the agent's state, in the v1 schema. */
export function proxyConfigView<V extends ProxyConfigView>(view: V, source: ProxyConfigSource, now = Date.now()): ProxyConfigAnswers[V] {
  const dump = source.configDump();
  const items = ITEMS[view](source, dump, now);
  return { apiVersion: PROXY_CONFIG_API_VERSION, kind: PROXY_CONFIG_KINDS[view], node: dump.node, configVersion: dump.version, items } as ProxyConfigAnswers[V];
}

type Items = { [V in ProxyConfigView]: (source: ProxyConfigSource, dump: ConfigDump, now: number) => ProxyConfigAnswers[V]['items'] };

const ITEMS: Items = {
  workloads: (source, dump) => workloadItems(dump, source.workloads(), source.certs.list()),
  services: (_source, dump) => serviceItems(dump.services, new Set(dump.headsOnly)),
  policies: (source, dump) => policyItems(dump.policies, dump.warnings, source.rootNamespace),
  certs: (source) => certificateItems(source.certs.list(), source.workloads()),
  connections: (source, _dump, now) => connectionItems(source.connections.list(), now),
};

const byName = (a: { namespace: string; name: string }, b: { namespace: string; name: string }) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name);

/**
 * Every workload the agent knows of, with this node's pods' enrollment: those the controller
 * streams, and pods enrolled on the CNI plugin's word that it does not list yet.
 */
export function workloadItems(dump: ConfigDump, local: WorkloadsDump, certificates: CertificateSummary[]): WorkloadItem[] {
  const enrolled = new Map(local.enrolled.map((e) => [e.uid, e]));
  const failed = new Map(local.failed.map((f) => [f.uid, f.error]));
  const certs = new Map(certificates.map((c) => [c.identity, c]));
  const certificateOf = (identity: string, held: { serial: string; notAfter: string } | null) => {
    const c = certs.get(identity);
    return c?.serial && c.notAfter ? { serial: c.serial, notAfter: c.notAfter } : held;
  };
  const items = dump.workloads.map((w): WorkloadItem => {
    const mine = enrolled.get(w.uid);
    const error = failed.get(w.uid);
    const status = mine ? 'enrolled'
      : !w.enrolled ? 'not-meshed'
        : w.node !== local.node ? 'remote'
          : error !== undefined ? 'failed' : 'pending';
    return {
      namespace: w.namespace, name: w.name, uid: w.uid, node: w.node, workload: w.workload, serviceAccount: w.serviceAccount,
      ips: [...w.ips], identity: w.identity, protocol: w.enrolled ? 'HBONE' : 'TCP', status,
      error: status === 'failed' ? error ?? null : null,
      waypoint: workloadWaypoint(w),
      connections: mine ? mine.connections : null,
      certificate: mine ? certificateOf(mine.identity, mine.certificate) : null,
    };
  });
  const known = new Set(dump.workloads.map((w) => w.uid));
  for (const e of local.enrolled) {
    if (known.has(e.uid)) continue;
    items.push({
      namespace: e.namespace, name: e.name, uid: e.uid, node: local.node, workload: e.name, serviceAccount: serviceAccountOf(e.identity),
      ips: [...e.ips], identity: e.identity, protocol: 'HBONE', status: 'enrolled', error: null, waypoint: null,
      connections: e.connections, certificate: certificateOf(e.identity, e.certificate),
    });
  }
  return items.sort(byName);
}

function workloadWaypoint(w: Workload): WaypointRef | null {
  return w.waypoint && w.waypoint !== 'none' ? { namespace: w.namespace, name: w.waypoint } : null;
}

function serviceAccountOf(identity: string): string {
  return /\/sa\/([^/]+)$/.exec(identity)?.[1] ?? '';
}

/** The services as the v1 schema has them; those in `headsOnly` (namespace/name) have their endpoints unknown (null). */
export function serviceItems(services: Service[], headsOnly: ReadonlySet<string> = new Set()): ServiceItem[] {
  return services.map((s): ServiceItem => ({
    namespace: s.namespace, name: s.name, hostname: s.hostname, vips: [...s.vips],
    ports: s.ports.map((p) => ({ name: p.name ?? null, port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
    endpoints: headsOnly.has(`${s.namespace}/${s.name}`) ? null : s.endpoints.length,
    waypoint: s.waypoint ? { namespace: s.waypoint.namespace, name: s.waypoint.name } : null,
  })).sort(byName);
}

// ---------------------------------------------------------------------------------------------
// Policies: what each one is, where it applies, and its rules in one line each.

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (typeof v === 'object' && v !== null && !Array.isArray(v) ? v as Obj : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

function selectorOf(spec: Obj): Record<string, string> | null {
  const labels = Object.entries(obj(obj(spec.selector).matchLabels)).map(([k, v]): [string, string] => [k, String(v)]);
  return labels.length > 0 ? Object.fromEntries(labels) : null;
}

const SECURITY_KINDS = new Set(['AuthorizationPolicy', 'PeerAuthentication']);

export function policyItems(policies: ConfigObject[], warnings: string[], rootNamespace: string): PolicyItem[] {
  const items: PolicyItem[] = [];
  for (const p of policies) {
    if (!p.apiVersion.startsWith('security.istio.io/') || !SECURITY_KINDS.has(p.kind)) continue;
    const kind = p.kind as PolicyItem['kind'];
    const spec = obj(p.spec);
    const selector = selectorOf(spec);
    const bound = spec.targetRef !== undefined || list(spec.targetRefs).length > 0;
    const scope = kind === 'AuthorizationPolicy' && bound ? 'waypoint' : selector ? 'workload' : p.namespace === rootNamespace ? 'global' : 'namespace';
    // The authorizer's warnings name their policy: "<kind> <namespace>/<name>: what; what else".
    const prefix = `${kind} ${p.namespace}/${p.name}: `;
    const found = warnings.filter((w) => w.startsWith(prefix)).map((w) => w.slice(prefix.length));
    if (kind === 'AuthorizationPolicy') {
      const action = typeof spec.action === 'string' ? spec.action : 'ALLOW';
      items.push({
        namespace: p.namespace, name: p.name, kind, scope, selector, action,
        enforced: !bound && (action === 'ALLOW' || action === 'DENY'),
        rules: list(spec.rules).map(ruleSummary), warnings: found,
      });
    } else {
      const rules = Object.entries(obj(spec.portLevelMtls)).map(([port, m]) => `port ${port}: ${modeOf(m)}`);
      items.push({ namespace: p.namespace, name: p.name, kind, scope, selector, action: modeOf(spec.mtls), enforced: true, rules, warnings: found });
    }
  }
  return items.sort((a, b) => byName(a, b) || a.kind.localeCompare(b.kind));
}

function modeOf(mtls: unknown): string {
  const mode = obj(mtls).mode;
  return typeof mode === 'string' && mode !== '' ? mode : 'UNSET';
}

// ---------------------------------------------------------------------------------------------

export function certificateItems(certificates: CertificateSummary[], local: WorkloadsDump): CertificateItem[] {
  return certificates.map((c): CertificateItem => ({
    identity: c.identity, serial: c.serial ?? null, notBefore: c.notBefore ?? null, notAfter: c.notAfter ?? null,
    renewsAt: c.rotatesAt ?? null, state: c.state, error: c.lastError ?? null,
    pods: local.enrolled.filter((e) => e.identity === c.identity).map((e) => `${e.namespace}/${e.name}`).sort(),
  })).sort((a, b) => a.identity.localeCompare(b.identity));
}

function peer(e: ConnectionEndpoint): ConnectionPeerItem {
  return { ip: e.ip, port: e.port ?? null, workload: e.workload ?? null, namespace: e.namespace ?? null, identity: e.identity ?? null };
}

export function connectionItems(connections: TrackedConnection[], now: number): ConnectionItem[] {
  return connections.map((c): ConnectionItem => ({
    id: c.id, direction: c.reporter === 'source' ? 'outbound' : 'inbound', reporter: c.reporter, pod: c.pod,
    source: peer(c.source), destination: peer(c.destination),
    service: c.service ? { namespace: c.service.namespace, name: c.service.name, hostname: c.service.hostname } : null,
    path: c.path, mtls: c.mtls, bytesSent: c.sent, bytesReceived: c.received,
    startedAt: new Date(c.start).toISOString(), ageSeconds: Math.max(0, Math.floor((now - c.start) / 1000)),
    exempt: c.exempt ?? null,
  })).sort((a, b) => a.startedAt.localeCompare(b.startedAt) || a.id.localeCompare(b.id));
}
