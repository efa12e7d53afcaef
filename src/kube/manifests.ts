/**
 * Kubernetes manifests for the local cluster: YAML text in, a typed and validated model out,
 * or diagnostics that name the file, the document, the resource, the field path and its line.
 *
 * Validation follows the API server with strict field validation (`kubectl apply
 * --validate=strict`): every field Kubernetes defines is accepted, unknown ones are errors;
 * fields the local cluster does not act on in ways a user would notice (volumes, resources,
 * liveness probes...) draw a warning. Kinds the runtime does not run (Istio, Gateway API,
 * ConfigMap, ...) are kept as they are for the controller, which validates them itself.
 */
import { isAbsolute, resolve } from 'node:path';
import { isIpv4 } from '../util/ip.js';
import { isMap, isPair, isScalar, isSeq, LineCounter, parseAllDocuments, type Document, type Node as YamlNode } from 'yaml';

export interface ManifestInput { file: string; text: string; dir: string }
export interface Source { file: string; doc: number; line?: number }
export interface Diagnostic {
  severity: 'error' | 'warning';
  source: Source;
  kind?: string;
  namespace?: string;
  name?: string;
  path?: string;
  line?: number;
  message: string;
}

export interface ObjectMeta { name: string; namespace: string; labels: Record<string, string>; annotations: Record<string, string> }
interface Base { apiVersion: string; kind: string; meta: ObjectMeta; source: Source; raw: Record<string, unknown> }
export interface NamespaceResource extends Base { kind: 'Namespace' }
export interface ServiceAccountResource extends Base { kind: 'ServiceAccount' }
export interface PodResource extends Base { kind: 'Pod'; spec: PodSpec }
export interface DeploymentResource extends Base {
  kind: 'Deployment';
  replicas: number;
  selector: Record<string, string>;
  template: { labels: Record<string, string>; annotations: Record<string, string>; spec: PodSpec };
}
export interface ServiceResource extends Base { kind: 'Service'; spec: ServiceSpec }
export interface OtherResource extends Base { other: true }
export type Resource = NamespaceResource | ServiceAccountResource | PodResource | DeploymentResource | ServiceResource | OtherResource;

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export interface PodSpec {
  nodeName?: string;
  serviceAccountName: string;
  restartPolicy: 'Always' | 'OnFailure' | 'Never';
  hostname?: string;
  terminationGracePeriodSeconds: number;
  containers: Container[];
}
export interface Container {
  name: string;
  image?: string;
  /** command ++ args; `$(VAR)` references to plain env values are expanded, the rest by the runtime (expandArgv). */
  argv: string[];
  env: EnvVar[];
  cwd: string;
  ports: { name?: string; containerPort: number; protocol: Protocol }[];
  readinessProbe?: Probe;
}
export type FieldRef = 'metadata.name' | 'metadata.namespace' | 'status.podIP' | 'spec.nodeName' | 'spec.serviceAccountName' | 'status.hostIP';
export type EnvVar = { name: string; value: string } | { name: string; fieldRef: FieldRef };
export interface Probe {
  tcpSocket?: { port: number | string };
  httpGet?: { path: string; port: number | string; scheme: 'HTTP' };
  exec?: { command: string[] };
  initialDelaySeconds: number;
  periodSeconds: number;
  timeoutSeconds: number;
  successThreshold: number;
  failureThreshold: number;
}
export interface ServiceSpec {
  type: 'ClusterIP' | 'NodePort' | 'LoadBalancer';
  clusterIP?: string;
  selector?: Record<string, string>;
  ports: { name?: string; port: number; targetPort: number | string; protocol: Protocol }[];
}

export interface ParseResult { resources: Resource[]; diagnostics: Diagnostic[] }
export interface ParseOptions {
  /** When given, each container's command must exist: absolute, relative to its cwd, or on PATH. */
  commandExists?: (cmd: string, cwd: string) => boolean;
  env?: NodeJS.ProcessEnv;
  /** Pods that describe workloads running elsewhere (a config directory): no command needed. */
  imagesOnly?: boolean;
  /**
   * Checks a resource of a kind the runtime does not run (the mesh's config), reporting at field
   * paths; it also warns for a kind ambit does not act on at all (validateMeshObject does).
   */
  validate?: (obj: Record<string, unknown>, report: { error(path: (string | number)[], message: string): void; warn(path: (string | number)[], message: string): void }) => unknown;
}

export function formatDiagnostic(d: Diagnostic): string {
  const where = `${d.source.file}${d.line ?? d.source.line ? `:${d.line ?? d.source.line}` : ''}`;
  const what = d.kind ? ` (${d.kind} ${d.namespace ? `${d.namespace}/` : ''}${d.name ?? '?'})` : '';
  return `${where}: document ${d.source.doc}${what}: ${d.path ? `${d.path}: ` : ''}${d.message}`;
}

export class ManifestError extends Error {
  override readonly name = 'ManifestError';
  constructor(readonly diagnostics: Diagnostic[]) {
    super(diagnostics.filter((d) => d.severity === 'error').map(formatDiagnostic).join('\n'));
  }
}

/** Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes, unknown references stay. */
export function expandArgv(argv: string[], env: Record<string, string>): string[] {
  return argv.map((arg) => arg.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name: string | undefined) => {
    if (m === '$$') return '$';
    return name !== undefined && name in env ? env[name]! : m;
  }));
}

// ---------------------------------------------------------------------------------------------
// Field tables. `true`: accepted silently; a string: accepted with that warning; a function:
// validated (and descended into).

type Path = (string | number)[];
type Check = (v: unknown, path: Path, ctx: DocContext) => void;
type Table = Record<string, true | string | Check>;

const IGNORED = 'ignored by the local cluster';

const OBJECT_META: Table = {
  name: true, namespace: true, labels: (v, p, c) => labelMap(v, p, c, true), annotations: (v, p, c) => labelMap(v, p, c, false),
  generateName: 'ignored by the local cluster: give every resource a metadata.name',
  uid: true, resourceVersion: true, generation: true, creationTimestamp: true, deletionTimestamp: true,
  deletionGracePeriodSeconds: true, ownerReferences: true, finalizers: true, managedFields: true, selfLink: true,
};

const PORT: Check = (v, p, c) => {
  if (typeof v === 'number') return intIn(v, p, c, 1, 65535);
  if (typeof v === 'string') return portName(v, p, c);
  c.error(p, `must be a port number or a port name, got ${describe(v)}`);
};

const PROBE: Table = {
  exec: (v, p, c) => object(v, p, c, { command: (x, q, d) => stringArray(x, q, d, true) }),
  httpGet: (v, p, c) => object(v, p, c, {
    path: str, port: PORT, host: IGNORED, httpHeaders: true,
    scheme: (x, q, d) => (x === 'HTTP' ? undefined : d.error(q, `only "HTTP" is supported by the local cluster, got ${describe(x)}`)),
  }),
  tcpSocket: (v, p, c) => object(v, p, c, { port: PORT, host: IGNORED }),
  grpc: (_v, p, c) => c.error(p, 'gRPC probes are not supported by the local cluster; use httpGet, tcpSocket or exec'),
  initialDelaySeconds: nonNegativeInt, periodSeconds: positiveInt, timeoutSeconds: positiveInt,
  successThreshold: positiveInt, failureThreshold: positiveInt, terminationGracePeriodSeconds: true,
};

const SUPPORTED_FIELD_REFS = ['metadata.name', 'metadata.namespace', 'status.podIP', 'spec.nodeName', 'spec.serviceAccountName', 'status.hostIP'];

const ENV_VAR: Table = {
  name: (v, p, c) => (typeof v === 'string' && v !== '' ? undefined : c.error(p, `must be a non-empty string, got ${describe(v)}`)),
  value: str,
  valueFrom: (v, p, c) => object(v, p, c, {
    fieldRef: (x, q, d) => object(x, q, d, {
      apiVersion: true,
      fieldPath: (f, r, e) => (SUPPORTED_FIELD_REFS.includes(f as string) ? undefined : e.error(r, `${describe(f)} is not supported by the local cluster (supported: ${SUPPORTED_FIELD_REFS.join(', ')})`)),
    }),
    resourceFieldRef: unsupported('resourceFieldRef'), configMapKeyRef: unsupported('configMapKeyRef'), secretKeyRef: unsupported('secretKeyRef'),
  }),
};

const CONTAINER: Table = {
  name: (v, p, c) => dnsLabel(v, p, c),
  image: str, imagePullPolicy: true, command: (v, p, c) => stringArray(v, p, c, false), args: (v, p, c) => stringArray(v, p, c, false),
  workingDir: str, env: (v, p, c) => list(v, p, c, (x, q, d) => object(x, q, d, ENV_VAR)),
  envFrom: IGNORED,
  ports: (v, p, c) => list(v, p, c, (x, q, d) => object(x, q, d, {
    containerPort: (n, r, e) => intIn(n, r, e, 1, 65535), name: (n, r, e) => portName(n, r, e), protocol: protocol, hostIP: IGNORED, hostPort: IGNORED,
  })),
  readinessProbe: (v, p, c) => probe(v, p, c),
  livenessProbe: IGNORED, startupProbe: IGNORED, lifecycle: IGNORED, resources: IGNORED, resizePolicy: true, restartPolicy: IGNORED,
  securityContext: IGNORED, volumeMounts: IGNORED, volumeDevices: IGNORED,
  stdin: true, stdinOnce: true, tty: true, terminationMessagePath: true, terminationMessagePolicy: true,
};

const POD_SPEC: Table = {
  containers: (v, p, c) => list(v, p, c, (x, q, d) => object(x, q, d, CONTAINER), true),
  nodeName: str, serviceAccountName: (v, p, c) => dnsSubdomain(v, p, c), serviceAccount: (v, p, c) => dnsSubdomain(v, p, c),
  restartPolicy: (v, p, c) => oneOf(v, p, c, ['Always', 'OnFailure', 'Never']),
  hostname: (v, p, c) => dnsLabel(v, p, c), terminationGracePeriodSeconds: nonNegativeInt,
  subdomain: IGNORED, setHostnameAsFQDN: IGNORED, activeDeadlineSeconds: IGNORED, affinity: IGNORED, nodeSelector: IGNORED,
  tolerations: IGNORED, topologySpreadConstraints: IGNORED, volumes: IGNORED, initContainers: IGNORED, ephemeralContainers: IGNORED,
  hostNetwork: IGNORED, hostPID: IGNORED, hostIPC: IGNORED, hostUsers: IGNORED, hostAliases: IGNORED, dnsConfig: IGNORED, dnsPolicy: true,
  securityContext: IGNORED, resources: IGNORED, shareProcessNamespace: IGNORED, readinessGates: IGNORED, resourceClaims: IGNORED,
  automountServiceAccountToken: true, enableServiceLinks: true, imagePullSecrets: true, os: true, overhead: true, preemptionPolicy: true,
  priority: true, priorityClassName: true, runtimeClassName: true, schedulerName: true, schedulingGates: true,
};

const SERVICE_SPEC: Table = {
  type: (v, p, c) => (v === 'ExternalName'
    ? c.error(p, 'ExternalName services are not supported by the local cluster')
    : oneOf(v, p, c, ['ClusterIP', 'NodePort', 'LoadBalancer'])),
  clusterIP: (v, p, c) => (typeof v === 'string' && (v === '' || v === 'None' || isIpv4(v)) ? undefined : c.error(p, `must be an IPv4 address, "None" or "", got ${describe(v)}`)),
  clusterIPs: true, selector: (v, p, c) => labelMap(v, p, c, true),
  ports: (v, p, c) => list(v, p, c, (x, q, d) => object(x, q, d, {
    port: (n, r, e) => intIn(n, r, e, 1, 65535), targetPort: PORT, name: (n, r, e) => portName(n, r, e), protocol,
    appProtocol: true, nodePort: IGNORED,
  }), true),
  externalName: IGNORED, externalIPs: IGNORED, externalTrafficPolicy: IGNORED, healthCheckNodePort: IGNORED,
  internalTrafficPolicy: true, ipFamilies: true, ipFamilyPolicy: true, loadBalancerClass: IGNORED, loadBalancerIP: IGNORED,
  loadBalancerSourceRanges: IGNORED, allocateLoadBalancerNodePorts: true, publishNotReadyAddresses: IGNORED,
  sessionAffinity: IGNORED, sessionAffinityConfig: IGNORED, trafficDistribution: true,
};

const LABEL_SELECTOR: Table = {
  matchLabels: (v, p, c) => labelMap(v, p, c, true),
  matchExpressions: (_v, p, c) => c.error(p, 'not supported by the local cluster; use matchLabels'),
};

const DEPLOYMENT_SPEC: Table = {
  replicas: nonNegativeInt,
  selector: (v, p, c) => object(v, p, c, LABEL_SELECTOR),
  template: (v, p, c) => object(v, p, c, { metadata: (x, q, d) => object(x, q, d, OBJECT_META), spec: (x, q, d) => object(x, q, d, POD_SPEC) }),
  strategy: true, minReadySeconds: IGNORED, paused: IGNORED, progressDeadlineSeconds: true, revisionHistoryLimit: true,
};

const TOP: Record<'Namespace' | 'ServiceAccount' | 'Pod' | 'Deployment' | 'Service', Table> = {
  Namespace: { spec: true },
  ServiceAccount: { automountServiceAccountToken: true, imagePullSecrets: true, secrets: true },
  Pod: { spec: (v, p, c) => object(v, p, c, POD_SPEC) },
  Deployment: { spec: (v, p, c) => object(v, p, c, DEPLOYMENT_SPEC) },
  Service: { spec: (v, p, c) => object(v, p, c, SERVICE_SPEC) },
};
const RUN_KINDS: Record<string, keyof typeof TOP> = {
  'v1/Namespace': 'Namespace', 'v1/ServiceAccount': 'ServiceAccount', 'v1/Pod': 'Pod', 'apps/v1/Deployment': 'Deployment', 'v1/Service': 'Service',
};
const KIND_API: Record<string, string> = { Namespace: 'v1', ServiceAccount: 'v1', Pod: 'v1', Service: 'v1', Deployment: 'apps/v1' };

// ---------------------------------------------------------------------------------------------
// Checks

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${JSON.stringify(v)}`;
}

function str(v: unknown, p: Path, c: DocContext): void {
  if (typeof v !== 'string') c.error(p, `must be a string, got ${describe(v)}`);
}
function unsupported(what: string): Check {
  return (_v, p, c) => c.error(p, `${what} is not supported by the local cluster; use value or fieldRef`);
}
function intIn(v: unknown, p: Path, c: DocContext, min: number, max: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v)) return c.error(p, `must be an integer, got ${describe(v)}`);
  if (v < min || v > max) c.error(p, `must be from ${min} to ${max}, got ${v}`);
}
function nonNegativeInt(v: unknown, p: Path, c: DocContext): void { intIn(v, p, c, 0, 2 ** 31 - 1); }
function positiveInt(v: unknown, p: Path, c: DocContext): void { intIn(v, p, c, 1, 2 ** 31 - 1); }
function oneOf(v: unknown, p: Path, c: DocContext, values: string[]): void {
  if (!values.includes(v as string)) c.error(p, `must be one of ${values.map((x) => `"${x}"`).join(', ')}, got ${describe(v)}`);
}
function protocol(v: unknown, p: Path, c: DocContext): void { oneOf(v, p, c, ['TCP', 'UDP', 'SCTP']); }

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
function dnsLabel(v: unknown, p: Path, c: DocContext): void {
  if (typeof v !== 'string' || v.length > 63 || !DNS_LABEL.test(v)) c.error(p, `must be a DNS label (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit), got ${describe(v)}`);
}
function dnsSubdomain(v: unknown, p: Path, c: DocContext): void {
  if (typeof v !== 'string' || v.length > 253 || !DNS_SUBDOMAIN.test(v)) c.error(p, `must be a DNS subdomain (lower-case letters, digits, '-' and '.', at most 253 characters), got ${describe(v)}`);
}
/** IANA_SVC_NAME: at most 15 characters, a letter, no '--' and no '-' at either end. */
function portName(v: unknown, p: Path, c: DocContext): void {
  if (typeof v !== 'string' || v.length > 15 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(v) || !/[a-z]/.test(v) || v.includes('--')) {
    c.error(p, `must be a port name (IANA_SVC_NAME: at most 15 lower-case letters, digits and '-', with at least one letter), got ${describe(v)}`);
  }
}
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
function labelKey(k: string): boolean {
  const [prefix, name] = k.includes('/') ? k.split('/', 2) as [string, string] : [undefined, k];
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return false;
  return name.length <= 63 && LABEL_NAME.test(name);
}
function labelMap(v: unknown, p: Path, c: DocContext, strictValues: boolean): void {
  if (!isObject(v)) return c.error(p, `must be a map of strings, got ${describe(v)}`);
  for (const [k, val] of Object.entries(v)) {
    if (!labelKey(k)) c.error([...p, k], 'invalid key: an optional DNS-subdomain prefix and "/", then at most 63 letters, digits, "-", "_" and "."');
    else if (typeof val !== 'string') c.error([...p, k], `must be a string, got ${describe(val)}`);
    else if (strictValues && (val.length > 63 || !LABEL_VALUE.test(val))) c.error([...p, k], `invalid label value ${JSON.stringify(val)}: at most 63 letters, digits, "-", "_" and ".", starting and ending with a letter or digit`);
  }
}
function stringArray(v: unknown, p: Path, c: DocContext, nonEmpty: boolean): void {
  if (!Array.isArray(v)) return c.error(p, `must be a list of strings, got ${describe(v)}`);
  if (nonEmpty && v.length === 0) c.error(p, 'must not be empty');
  v.forEach((x, i) => { if (typeof x !== 'string') c.error([...p, i], `must be a string, got ${describe(x)}`); });
}
function list(v: unknown, p: Path, c: DocContext, item: Check, nonEmpty = false): void {
  if (!Array.isArray(v)) return c.error(p, `must be a list, got ${describe(v)}`);
  if (nonEmpty && v.length === 0) c.error(p, 'must not be empty');
  v.forEach((x, i) => item(x, [...p, i], c));
}
function object(v: unknown, p: Path, c: DocContext, table: Table): void {
  if (!isObject(v)) return c.error(p, `must be an object, got ${describe(v)}`);
  for (const [k, val] of Object.entries(v)) {
    const rule = table[k];
    if (rule === undefined) c.error([...p, k], `unknown field "${k}"`);
    else if (typeof rule === 'string') { if (val !== null && val !== undefined) c.warn([...p, k], rule); }
    else if (typeof rule === 'function' && val !== null) rule(val, [...p, k], c);
  }
}
function probe(v: unknown, p: Path, c: DocContext): void {
  object(v, p, c, PROBE);
  if (isObject(v)) {
    const handlers = ['exec', 'httpGet', 'tcpSocket', 'grpc'].filter((h) => v[h] !== undefined);
    if (handlers.length !== 1) c.error(p, `needs exactly one of exec, httpGet, tcpSocket (found ${handlers.length ? handlers.join(', ') : 'none'})`);
  }
}
function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------
// Documents

function formatPath(p: Path): string {
  return p.reduce<string>((s, seg) => (typeof seg === 'number' ? `${s}[${seg}]` : s ? `${s}.${seg}` : seg), '');
}

/** One YAML document being checked: collects its diagnostics with the line of each field. */
class DocContext {
  readonly diagnostics: Diagnostic[] = [];
  kind?: string;
  namespace?: string;
  name?: string;

  constructor(readonly source: Source, private readonly doc: Document | undefined, private readonly lines: LineCounter, private readonly base: Path) {}

  error(path: Path, message: string): void { this.add('error', path, message); }
  /** An error that leaves the document's structure intact, so checks that need the resource still run. */
  lateError(path: Path, message: string): void { this.add('error', path, message); this.late++; }
  private late = 0;
  warn(path: Path, message: string): void { this.add('warning', path, message); }

  get failed(): boolean { return this.diagnostics.filter((d) => d.severity === 'error').length > this.late; }

  private add(severity: Diagnostic['severity'], path: Path, message: string): void {
    this.diagnostics.push({
      severity, source: this.source, kind: this.kind, namespace: this.namespace, name: this.name,
      path: path.length ? formatPath(path) : undefined, line: this.lineOf(path), message,
    });
  }

  /** The line of the field at `path` (its key, so an unknown field points at itself). */
  private lineOf(path: Path): number | undefined {
    let node: unknown = this.doc?.contents;
    let offset: number | undefined = (node as YamlNode | undefined)?.range?.[0];
    for (const seg of [...this.base, ...path]) {
      if (isMap(node)) {
        const pair = node.items.find((it) => isPair(it) && isScalar(it.key) && it.key.value === seg);
        if (!pair) break;
        offset = (pair.key as YamlNode).range?.[0] ?? offset;
        node = pair.value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
        offset = (node as YamlNode | undefined)?.range?.[0] ?? offset;
      } else break;
    }
    return offset === undefined ? undefined : this.lines.linePos(offset).line;
  }
}

/** Splits the inputs into objects, expanding `kind: List`; YAML syntax errors become diagnostics. */
function* documents(input: ManifestInput, out: Diagnostic[]): Generator<{ value: unknown; ctx: DocContext }> {
  const lines = new LineCounter();
  const docs = parseAllDocuments(input.text, { lineCounter: lines });
  const all = Array.isArray(docs) ? docs : [];
  let index = 0;
  for (const doc of all) {
    index++;
    const line = doc.contents?.range ? lines.linePos(doc.contents.range[0]).line : undefined;
    const source: Source = { file: input.file, doc: index, line };
    if (doc.errors.length > 0) {
      for (const e of doc.errors) {
        const pos = e.linePos?.[0];
        out.push({ severity: 'error', source, line: pos?.line, message: `invalid YAML: ${e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '')}${pos ? ` (line ${pos.line}, column ${pos.col})` : ''}` });
      }
      continue;
    }
    // Aliases are resolved here, not by the parser: an alias to an anchor defined later (or
    // nowhere), or one that expands past the count, is this document's error, not a crash.
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      out.push({ severity: 'error', source, message: `invalid YAML: ${(err as Error).message.split('\n')[0]}` });
      continue;
    }
    if (value === null || value === undefined) continue;
    if (isObject(value) && value.kind === 'List' && Array.isArray(value.items)) {
      for (const [i, item] of value.items.entries()) yield { value: item, ctx: new DocContext(source, doc, lines, ['items', i]) };
      continue;
    }
    yield { value, ctx: new DocContext(source, doc, lines, []) };
  }
}

export function parseManifests(inputs: ManifestInput[], opts: ParseOptions = {}): ParseResult {
  const diagnostics: Diagnostic[] = [];
  const resources: Resource[] = [];
  const seen = new Map<string, { source: Source; index: number }>();
  for (const input of inputs) {
    for (const { value, ctx } of documents(input, diagnostics)) {
      const resource = toResource(value, ctx, input, opts);
      if (resource && !ctx.failed) {
        const key = `${resource.apiVersion.split('/').slice(0, -1).join('/')}/${resource.kind}/${resource.meta.namespace}/${resource.meta.name}`;
        const first = seen.get(key);
        if (first) {
          // As with `kubectl apply` of several files: the later definition wins.
          ctx.warn(['metadata', 'name'], `${resource.kind} ${resource.meta.namespace ? `${resource.meta.namespace}/` : ''}${resource.meta.name} is also defined in ${first.source.file} document ${first.source.doc}; this later definition wins`);
          resources[first.index] = resource;
        } else {
          seen.set(key, { source: resource.source, index: resources.length });
          resources.push(resource);
        }
      }
      diagnostics.push(...ctx.diagnostics);
    }
  }
  return { resources, diagnostics };
}

function toResource(value: unknown, ctx: DocContext, input: ManifestInput, opts: ParseOptions): Resource | undefined {
  if (!isObject(value)) {
    ctx.error([], `a manifest must be an object, got ${describe(value)}`);
    return undefined;
  }
  const { apiVersion, kind, metadata } = value;
  if (typeof apiVersion !== 'string' || apiVersion === '') ctx.error(['apiVersion'], 'required: a non-empty string');
  if (typeof kind !== 'string' || kind === '') ctx.error(['kind'], 'required: a non-empty string');
  if (!isObject(metadata)) ctx.error(['metadata'], 'required: an object with at least a name');
  if (ctx.failed) return undefined;
  ctx.kind = kind as string;
  const meta = metadata as Record<string, unknown>;
  if (typeof meta.name !== 'string' || meta.name === '') {
    ctx.error(['metadata', 'name'], 'required');
    return undefined;
  }
  ctx.name = meta.name;
  const runKind = RUN_KINDS[`${apiVersion as string}/${kind as string}`];
  const namespaced = kind !== 'Namespace';
  const namespace = namespaced ? (typeof meta.namespace === 'string' && meta.namespace !== '' ? meta.namespace : 'default') : '';
  ctx.namespace = namespace || undefined;
  if (namespaced) dnsLabel(namespace, ['metadata', 'namespace'], ctx);
  if (KIND_API[kind as string] && !runKind && !(apiVersion as string).includes('.')) {
    ctx.error(['apiVersion'], `${kind as string} is served as "${KIND_API[kind as string]}", got "${apiVersion as string}"`);
    return undefined;
  }
  const base = {
    apiVersion: apiVersion as string,
    kind: kind as string,
    source: ctx.source,
    raw: value,
    meta: {
      name: meta.name,
      namespace,
      labels: isObject(meta.labels) ? meta.labels as Record<string, string> : {},
      annotations: isObject(meta.annotations) ? meta.annotations as Record<string, string> : {},
    },
  };
  if (!runKind) {
    object(meta, ['metadata'], ctx, OBJECT_META);
    dnsSubdomain(meta.name, ['metadata', 'name'], ctx);
    // The validator names every kind ambit does not act on; without one, say at least that the
    // local cluster does not run this core kind.
    if (opts.validate) opts.validate(value, { error: (p, m) => ctx.error(p, m), warn: (p, m) => ctx.warn(p, m) });
    else if (['v1', 'apps/v1', 'batch/v1'].includes(apiVersion as string)) ctx.warn(['kind'], `${kind as string} is kept for the controller but not run by the local cluster`);
    return { ...base, other: true };
  }

  object(meta, ['metadata'], ctx, OBJECT_META);
  if (runKind === 'Namespace' || runKind === 'Service') dnsLabel(meta.name, ['metadata', 'name'], ctx);
  else dnsSubdomain(meta.name, ['metadata', 'name'], ctx);
  object(value, [], ctx, { apiVersion: true, kind: true, metadata: true, status: true, ...TOP[runKind] });
  if (ctx.failed) return undefined;

  switch (runKind) {
    case 'Namespace':
    case 'ServiceAccount':
      return base as NamespaceResource | ServiceAccountResource;
    case 'Pod': {
      const spec = podSpec(value.spec, ['spec'], ctx, input, opts);
      return spec && { ...base, kind: 'Pod', spec };
    }
    case 'Deployment':
      return deployment(base, value.spec, ctx, input, opts);
    case 'Service':
      return service(base, value.spec, ctx);
  }
}

function podSpec(raw: unknown, p: Path, ctx: DocContext, input: ManifestInput, opts: ParseOptions): PodSpec | undefined {
  if (!isObject(raw)) {
    ctx.error(p, 'required: the pod spec');
    return undefined;
  }
  if (raw.containers === undefined) ctx.error([...p, 'containers'], 'required: at least one container');
  const rawContainers = Array.isArray(raw.containers) ? raw.containers as Record<string, unknown>[] : [];
  const names = new Set<string>();
  const containers = rawContainers.map((c, i): Container => {
    const cp = [...p, 'containers', i];
    if (names.has(c.name as string)) ctx.error([...cp, 'name'], `duplicate container name "${String(c.name)}"`);
    names.add(c.name as string);
    const command = (c.command as string[] | undefined) ?? [];
    if (command.length === 0 && !opts.imagesOnly) ctx.error([...cp, 'command'], 'required: the local cluster runs commands, not images (image is recorded only)');
    const cwd = typeof c.workingDir === 'string' ? (isAbsolute(c.workingDir) ? c.workingDir : resolve(input.dir, c.workingDir)) : input.dir;
    const env: EnvVar[] = ((c.env as Record<string, unknown>[] | undefined) ?? []).map((e) => {
      const ref = (e.valueFrom as { fieldRef?: { fieldPath?: string } } | undefined)?.fieldRef?.fieldPath;
      return ref ? { name: e.name as string, fieldRef: ref as FieldRef } : { name: e.name as string, value: (e.value as string | undefined) ?? '' };
    });
    const plain: Record<string, string> = {};
    for (const e of env) if ('value' in e) plain[e.name] = expandArgv([e.value], plain)[0]!;
    const argv = expandArgv([...command, ...((c.args as string[] | undefined) ?? [])], plain);
    if (command.length > 0 && opts.commandExists && !opts.commandExists(argv[0]!, cwd)) {
      const where = argv[0]!.includes('/') ? `relative to ${cwd}` : 'on PATH';
      ctx.lateError([...cp, 'command', 0], `"${argv[0]!}" not found ${where}`);
    }
    const ports = ((c.ports as Record<string, unknown>[] | undefined) ?? []).map((port) => ({
      ...(typeof port.name === 'string' ? { name: port.name } : {}),
      containerPort: port.containerPort as number,
      protocol: (port.protocol as Protocol | undefined) ?? 'TCP',
    }));
    const portNames = ports.map((x) => x.name).filter(Boolean);
    portNames.forEach((n, j) => { if (portNames.indexOf(n) !== j) ctx.error([...cp, 'ports'], `duplicate port name "${n!}"`); });
    const container: Container = { name: c.name as string, argv, env, cwd, ports, ...(typeof c.image === 'string' ? { image: c.image } : {}) };
    const rp = c.readinessProbe as Record<string, unknown> | undefined;
    if (rp) {
      container.readinessProbe = {
        ...(rp.tcpSocket ? { tcpSocket: { port: (rp.tcpSocket as { port: number | string }).port } } : {}),
        ...(rp.httpGet ? { httpGet: { path: ((rp.httpGet as { path?: string }).path) ?? '/', port: (rp.httpGet as { port: number | string }).port, scheme: 'HTTP' as const } } : {}),
        ...(rp.exec ? { exec: { command: (rp.exec as { command: string[] }).command } } : {}),
        initialDelaySeconds: (rp.initialDelaySeconds as number | undefined) ?? 0,
        periodSeconds: (rp.periodSeconds as number | undefined) ?? 10,
        timeoutSeconds: (rp.timeoutSeconds as number | undefined) ?? 1,
        successThreshold: (rp.successThreshold as number | undefined) ?? 1,
        failureThreshold: (rp.failureThreshold as number | undefined) ?? 3,
      };
      for (const h of ['tcpSocket', 'httpGet'] as const) {
        const port = container.readinessProbe[h]?.port;
        if (typeof port === 'string' && !portNames.includes(port)) ctx.error([...cp, 'readinessProbe', h, 'port'], `no container port is named "${port}"`);
      }
    }
    return container;
  });
  if (ctx.failed) return undefined;
  return {
    ...(typeof raw.nodeName === 'string' ? { nodeName: raw.nodeName } : {}),
    serviceAccountName: (raw.serviceAccountName as string | undefined) ?? (raw.serviceAccount as string | undefined) ?? 'default',
    restartPolicy: (raw.restartPolicy as PodSpec['restartPolicy'] | undefined) ?? 'Always',
    ...(typeof raw.hostname === 'string' ? { hostname: raw.hostname } : {}),
    terminationGracePeriodSeconds: (raw.terminationGracePeriodSeconds as number | undefined) ?? 30,
    containers,
  };
}

function deployment(base: Omit<DeploymentResource, 'kind' | 'replicas' | 'selector' | 'template'>, raw: unknown, ctx: DocContext, input: ManifestInput, opts: ParseOptions): DeploymentResource | undefined {
  if (!isObject(raw)) {
    ctx.error(['spec'], 'required');
    return undefined;
  }
  const selector = (raw.selector as { matchLabels?: Record<string, string> } | undefined)?.matchLabels;
  if (!selector || Object.keys(selector).length === 0) ctx.error(['spec', 'selector', 'matchLabels'], 'required: a non-empty label selector');
  const template = raw.template as { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> }; spec?: unknown } | undefined;
  if (!template) {
    ctx.error(['spec', 'template'], 'required');
    return undefined;
  }
  const labels = template.metadata?.labels ?? {};
  if (selector && !Object.entries(selector).every(([k, v]) => labels[k] === v)) {
    ctx.error(['spec', 'template', 'metadata', 'labels'], `must match spec.selector.matchLabels ${JSON.stringify(selector)}`);
  }
  const spec = podSpec(template.spec, ['spec', 'template', 'spec'], ctx, input, opts);
  if (!spec || !selector) return undefined;
  return { ...base, kind: 'Deployment', replicas: (raw.replicas as number | undefined) ?? 1, selector, template: { labels, annotations: template.metadata?.annotations ?? {}, spec } };
}

function service(base: Omit<ServiceResource, 'kind' | 'spec'>, raw: unknown, ctx: DocContext): ServiceResource | undefined {
  if (!isObject(raw) || raw.ports === undefined) {
    ctx.error(['spec', 'ports'], 'required: at least one port');
    return undefined;
  }
  if (!Array.isArray(raw.ports) || raw.ports.length === 0 || !raw.ports.every(isObject)) {
    ctx.error(['spec', 'ports'], 'must be a list of port objects, at least one');
    return undefined;
  }
  const ports = (raw.ports as Record<string, unknown>[]).map((p) => ({
    ...(typeof p.name === 'string' ? { name: p.name } : {}),
    port: p.port as number,
    targetPort: (p.targetPort as number | string | undefined) ?? (p.port as number),
    protocol: (p.protocol as Protocol | undefined) ?? 'TCP',
  }));
  if (ports.length > 1) {
    ports.forEach((p, i) => {
      if (!p.name) ctx.error(['spec', 'ports', i, 'name'], 'required when a service has more than one port');
      else if (ports.findIndex((q) => q.name === p.name) !== i) ctx.error(['spec', 'ports', i, 'name'], `duplicate port name "${p.name}"`);
    });
  }
  ports.forEach((p, i) => {
    if (ports.findIndex((q) => q.port === p.port && q.protocol === p.protocol) !== i) ctx.error(['spec', 'ports', i, 'port'], `duplicate port ${p.port}/${p.protocol}`);
  });
  const type = (raw.type as ServiceSpec['type'] | undefined) ?? 'ClusterIP';
  if (type !== 'ClusterIP') ctx.warn(['spec', 'type'], `${type} behaves as ClusterIP in the local cluster`);
  if (ctx.failed) return undefined;
  return {
    ...base,
    kind: 'Service',
    spec: {
      type,
      ...(typeof raw.clusterIP === 'string' && raw.clusterIP !== '' ? { clusterIP: raw.clusterIP } : {}),
      ...(isObject(raw.selector) ? { selector: raw.selector as Record<string, string> } : {}),
      ports,
    },
  };
}
