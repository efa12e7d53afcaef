/**
 * SMI TrafficSplit (split.smi-spec.io v1alpha1 to v1alpha4) compiled into route entries: requests
 * to the root (apex) service are spread over the backend Services by relative weight, each on
 * the port the request came to (semantics: the comment of src/waypoint/routing.ts).
 */
import type { ConfigObject, Service } from '../../config/model.js';
import { quantityValue } from '../../config/schema.js';
import { DestSet, type DestTemplate } from './actions.js';
import { type CompileContext, placeholder, ref, resolveHost } from './common.js';
import { ALWAYS, type Entry } from './match.js';
import { DEFAULT_RETRIES, EMPTY_OPS } from './types.js';

export const SPLIT_GROUP = 'split.smi-spec.io';
export const SPLIT_KIND = 'TrafficSplit';
/** The versions ambit reads; v1alpha3 and v1alpha4 add `matches`. */
export const SPLIT_VERSIONS: readonly string[] = ['v1alpha1', 'v1alpha2', 'v1alpha3', 'v1alpha4'];

/** A TrafficSplit ambit can apply: its root service's hostname and its backends (weights as given, relative). */
export interface TrafficSplit {
  cfg: ConfigObject;
  apex: string;
  backends: { name: string; host: string; weight: number }[];
}

const svcHost = /^[^.]+\.([^.]+)\.svc\./;

/**
 * Reads a TrafficSplit, or gives undefined with a warning when ambit does not apply it: an
 * unknown version, `matches`, a root service in another namespace, or a spec it cannot read
 * (validation normally rejects those first; the router must not trust it to).
 */
export function readTrafficSplit(cfg: ConfigObject, domain: string, warn: (message: string) => void): TrafficSplit | undefined {
  const skip = (why: string): undefined => {
    warn(`TrafficSplit ${ref(cfg)}: ${why}: not applied`);
    return undefined;
  };
  const version = cfg.apiVersion.split('/')[1] ?? '';
  if (!SPLIT_VERSIONS.includes(version)) return skip(`${cfg.apiVersion} is not a version ambit reads (${SPLIT_VERSIONS.map((v) => `${SPLIT_GROUP}/${v}`).join(', ')})`);
  const spec = (typeof cfg.spec === 'object' && cfg.spec !== null ? cfg.spec : {}) as Record<string, unknown>;
  if (spec.matches !== undefined && !(Array.isArray(spec.matches) && spec.matches.length === 0)) {
    // Skipping is the safe side: SMI sends only matching requests to the backends and the rest to
    // the root service. Applied to every request, a split meant for one segment (the spec's A/B
    // example: v1 0, v2 100) would send all traffic to the new version; skipped, every request
    // goes where the unmatched ones were meant to go.
    return skip('spec.matches (HTTPRouteGroup, TCPRoute) is not supported; rather than split all traffic in their place, ambit leaves the split out '
      + 'and requests go to the root service as without it (for a match-based split, use an HTTPRoute or a VirtualService)');
  }
  if (typeof spec.service !== 'string' || spec.service === '') return skip('spec.service (the root service) is required');
  const apex = resolveHost(spec.service, cfg.namespace, domain);
  if (apex.includes('*')) return skip(`spec.service "${spec.service}" is a wildcard; it must name one Service`);
  const apexNs = svcHost.exec(apex)?.[1];
  if (apexNs !== undefined && apexNs !== cfg.namespace) {
    return skip(`spec.service "${spec.service}" is in namespace ${apexNs}; a TrafficSplit applies to a root service in its own namespace (${cfg.namespace})`);
  }
  if (!Array.isArray(spec.backends) || spec.backends.length === 0) return skip('spec.backends must list at least one backend');
  const backends: TrafficSplit['backends'] = [];
  for (const [i, b] of (spec.backends as unknown[]).entries()) {
    const backend = (typeof b === 'object' && b !== null ? b : {}) as Record<string, unknown>;
    if (typeof backend.service !== 'string' || backend.service === '') return skip(`spec.backends[${i}].service is required`);
    const w = weight(backend.weight, version);
    if (typeof w === 'string') return skip(`spec.backends[${i}].weight ${w}`);
    if (w.note) warn(`TrafficSplit ${ref(cfg)}: spec.backends[${i}].weight ${w.note}`);
    backends.push({ name: backend.service, host: resolveHost(backend.service, cfg.namespace, domain), weight: w.value });
  }
  return { cfg, apex, backends };
}

/**
 * The entries for requests to the apex service: one per port of it, sending each request to
 * the backend Services on that same port (SMI: backends serve the root service's ports; a
 * backend without it gets none of that port's traffic). An unknown backend keeps its share,
 * answered 503 as a VirtualService's unknown host is; when every backend on a port weighs 0
 * the port's requests get 503 (the split withholds them: sending them to the root service's
 * own endpoints instead would reach the versions the split takes traffic from).
 */
export function compileTrafficSplit(ctx: CompileContext, split: TrafficSplit, apex: Service): Entry[] {
  const warn = (m: string) => ctx.warn(`TrafficSplit ${ref(split.cfg)}: ${m}`);
  const route = `${ref(split.cfg)}#0`;
  const resolved = split.backends.map((b) => {
    const service = ctx.serviceByHost(b.host);
    if (!service) warn(`backend "${b.name}" (${b.host}) is not a known service: its share of requests gets 503`);
    return { ...b, service };
  });
  const entries: Entry[] = [];
  for (const { port } of apex.ports) {
    const serving = resolved.filter((b) => {
      if (!b.service || b.service.ports.some((p) => p.port === port)) return true;
      warn(`backend "${b.name}" has no port ${port} (a port of the root service ${apex.name}): it gets none of that port's requests`);
      return false;
    });
    if (serving.length === 0) {
      warn(`no backend serves port ${port} of ${apex.name}: the split does not apply on that port`);
      continue;
    }
    const weighted = serving.filter((b) => b.weight > 0);
    if (weighted.length === 0) {
      warn(`every backend serving port ${port} weighs 0: requests to ${apex.name}:${port} get 503`);
      entries.push({
        route, test: ALWAYS, port,
        action: { kind: 'direct-response', response: { kind: 'direct-response', route, status: 503, body: 'no backend with a weight\n' } },
      });
      continue;
    }
    const dests = weighted.map((b): DestTemplate => {
      const weight = weighted.length === 1 ? 100 : b.weight;
      return b.service
        ? { service: b.service, port, weight }
        : { service: placeholder(b.host), port, weight, missing: { status: 503, reason: `no service ${b.host}` } };
    });
    entries.push({
      route, test: ALWAYS, port,
      action: {
        kind: 'forward', dests: new DestSet(dests), mirrors: [],
        base: { kind: 'forward', route, requestHeaders: EMPTY_OPS, responseHeaders: EMPTY_OPS, retries: DEFAULT_RETRIES },
      },
    });
  }
  return entries;
}

// ---------------------------------------------------------------------------------------------
// Weights

/**
 * A backend's weight: v1alpha1 takes a quantity, later versions a whole number. A quantity in a
 * later version is read as one, with a note: the SMI CRDs convert between versions with
 * `strategy: None`, so an object written as v1alpha1 can be served as v1alpha4 unchanged.
 * A string answer says what is wrong.
 */
function weight(raw: unknown, version: string): { value: number; note?: string } | string {
  let value: number | undefined;
  if (typeof raw === 'number') value = Number.isFinite(raw) ? raw : undefined;
  else if (typeof raw === 'string') value = quantityValue(raw);
  else if (raw === undefined) return 'is required';
  const shown = typeof raw === 'number' || typeof raw === 'boolean' ? String(raw) : JSON.stringify(raw);
  if (value === undefined) return `${shown} is not a number`;
  if (value < 0) return `${shown} is negative`;
  const whole = typeof raw === 'number' ? Number.isInteger(raw) : /^\+?\d+$/.test(raw as string);
  if (version !== 'v1alpha1' && !whole) return { value, note: `${shown} is a quantity (v1alpha1's form; ${version} takes whole numbers): read as ${value}` };
  return { value };
}
