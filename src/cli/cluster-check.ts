/**
 * `ambit check --kubeconfig FILE | --kube`: checks a Kubernetes cluster through its API server,
 * one Check per requirement, in the same shape as the node-level `ambit check`.
 *
 * Always: the API server answers (and is 1.27 or newer), the prerequisite CRDs (Istio's, the
 * Gateway API's) are there, and every node runs Linux on a kernel `checkKernel` accepts.
 * `pre` (before `ambit install`): the CA Secret the controller mounts is in ambit's namespace.
 * Otherwise (after install): the namespace, the RateLimit CRD, the controller Deployment and its
 * leader Lease, the trust-bundle ConfigMap, the node agent DaemonSet, and each agent's own node
 * check, read through the API server's pod proxy (`GET :15021/healthz/check`, the JSON of
 * `ambit check --json`), or, when the agent does not answer, why its pod is not running.
 *
 * No request failure throws: each becomes a failed Check naming the object and the API server's
 * message (a 404 is "missing", which each check judges). Independent objects are read
 * concurrently; the order of the checks is fixed.
 */
import type { KubeClient, KubeResponse } from '../control/kube/client.js';
import { ROOT_CERT_KEY } from '../control/kube/trust-bundle.js';
import { RATELIMIT_GROUP } from '../install/crd.js';
import { CA_SECRET, CONTROLLER, LEADER_LEASE, NODE_AGENT, NODE_PORTS, ROOT_CERT_CONFIGMAP } from '../install/render.js';
import { VALUES } from '../install/values.js';
import { checkKernel, MIN_KERNEL, renderText, type Check, type Report } from './checks.js';
import { apiMessage } from './kube.js';

/** The manifests use APIs of this Kubernetes release (they are validated against its schemas). */
export const MIN_KUBERNETES: readonly [number, number] = [1, 27];

/** ambit's namespace unless `--namespace` says otherwise (the install's default). */
export const DEFAULT_NAMESPACE = VALUES.namespace!.default() as string;

/** The CA Secret's keys, as Istio's `cacerts`. */
export const CA_SECRET_KEYS = ['root-cert.pem', 'cert-chain.pem', 'ca-key.pem'] as const;

/** Where the node agent answers with its own `ambit check --json` report. */
export const AGENT_CHECK_PATH = '/healthz/check';

export const ISTIO_CRDS = [
  'authorizationpolicies.security.istio.io',
  'peerauthentications.security.istio.io',
  'virtualservices.networking.istio.io',
  'destinationrules.networking.istio.io',
  'gateways.networking.istio.io',
  'serviceentries.networking.istio.io',
] as const;
export const GATEWAY_API_CRDS = [
  'gatewayclasses.gateway.networking.k8s.io',
  'gateways.gateway.networking.k8s.io',
  'httproutes.gateway.networking.k8s.io',
  'grpcroutes.gateway.networking.k8s.io',
] as const;
export const RATELIMIT_CRD = `ratelimits.${RATELIMIT_GROUP}`;

const ISTIO_HINT = 'install Istio\'s CRDs from the istio/base chart: helm install istio-base istio/base -n istio-system --create-namespace (helm repo add istio https://istio-release.storage.googleapis.com/charts)';
const GATEWAY_API_HINT = 'install the Gateway API CRDs, standard channel (v1.1 or newer, for GRPCRoute): kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml';
const INSTALL_HINT = 'ambit install | kubectl apply -f -';
/** How many failing nodes a check names before it counts the rest. */
const LIST_LIMIT = 5;

export interface ClusterCheckOptions {
  /** ambit's namespace (default ambit-system). */
  namespace?: string;
  /** Before install: check the prerequisites only (and the CA Secret). */
  pre?: boolean;
  /** The clock the Lease is judged by. */
  now?: () => number;
  /** Each request gives up after this long (ms). */
  timeoutMs?: number;
}

/** What one GET found: the object, nothing (404), or why it could not be read. */
type Fetched =
  | { kind: 'found'; body: unknown }
  | { kind: 'missing' }
  | { kind: 'error'; status: number; message: string };

/* eslint-disable @typescript-eslint/no-explicit-any -- the checks walk API objects by path, each field checked where read */
type Obj = any;

class Reader {
  constructor(private readonly client: KubeClient, private readonly timeoutMs: number) {}

  get server(): string {
    return this.client.server;
  }

  /** One GET; never rejects. */
  async get(path: string): Promise<Fetched> {
    let res: KubeResponse;
    try {
      res = await this.client.request('GET', path, undefined, undefined, AbortSignal.timeout(this.timeoutMs));
    } catch (err) {
      const message = (err as Error).message.endsWith(': aborted')
        ? `no answer within ${Math.round(this.timeoutMs / 1000)} s`
        : (err as Error).message;
      return { kind: 'error', status: 0, message: `cannot reach ${this.client.server}: ${message}` };
    }
    if (res.status >= 200 && res.status < 300) return { kind: 'found', body: res.body };
    if (res.status === 404) return { kind: 'missing' };
    return { kind: 'error', status: res.status, message: responseMessage(res) };
  }
}

/** The API server's message, "forbidden: …" for a 403; a plain-text body (a pod proxy's) as it is. */
function responseMessage(res: KubeResponse): string {
  const text = typeof res.body === 'string' && res.body.trim() ? `HTTP ${res.status}: ${res.body.trim().split('\n', 1)[0]!.slice(0, 200)}` : apiMessage(res);
  return res.status === 403 ? `forbidden: ${text}` : text;
}

/** A failed Check for an object that could not be read. */
function readFailure(name: string, what: string, f: Extract<Fetched, { kind: 'error' }>): Check {
  return {
    name, ok: false, detail: `cannot read ${what}: ${f.message}`,
    hint: f.status === 403
      ? `use credentials that may read ${what} (kubectl auth can-i get ...), e.g. a cluster admin's`
      : 'check the API server and the kubeconfig\'s credentials, then run the check again',
  };
}

function listOf(names: readonly string[], separator = ', '): string {
  return names.length <= LIST_LIMIT ? names.join(separator) : `${names.slice(0, LIST_LIMIT).join(separator)} and ${names.length - LIST_LIMIT} more`;
}

function parseMinor(raw: unknown): number | undefined {
  const m = typeof raw === 'string' ? /^(\d+)/.exec(raw) : undefined;
  return m ? Number(m[1]) : undefined;
}

/** `API server reachable`; `reachable: false` when the rest cannot run (no answer, or no access). */
async function checkApiServer(r: Reader): Promise<{ check: Check; reachable: boolean }> {
  const name = 'API server reachable';
  const f = await r.get('/version');
  if (f.kind !== 'found') {
    const message = f.kind === 'missing' ? `${r.server} has no /version: is it a Kubernetes API server?` : f.message;
    return {
      check: { name, ok: false, detail: message, hint: 'check the kubeconfig\'s server, credentials and context (kubectl version), and that the API server is reachable from here' },
      reachable: false,
    };
  }
  const v = f.body as Obj;
  const git = typeof v?.gitVersion === 'string' ? v.gitVersion : undefined;
  const fromGit = git ? /^v?(\d+)\.(\d+)/.exec(git) : null;
  const major = parseMinor(v?.major) ?? (fromGit ? Number(fromGit[1]) : undefined);
  const minor = parseMinor(v?.minor) ?? (fromGit ? Number(fromGit[2]) : undefined);
  const shown = git ?? (major !== undefined ? `v${major}.${minor ?? '?'}` : 'unknown version');
  const [minMajor, minMinor] = MIN_KUBERNETES;
  if (major === undefined || minor === undefined) {
    return { check: { name, ok: false, detail: `${shown} at ${r.server}: cannot tell the Kubernetes version`, hint: `ambit needs Kubernetes ${minMajor}.${minMinor} or newer` }, reachable: true };
  }
  if (major < minMajor || (major === minMajor && minor < minMinor)) {
    return {
      check: { name, ok: false, detail: `${shown} at ${r.server} is older than ${minMajor}.${minMinor}`, hint: `upgrade the cluster to Kubernetes ${minMajor}.${minMinor} or newer (the manifests use its APIs)` },
      reachable: true,
    };
  }
  return { check: { name, ok: true, detail: `${shown} at ${r.server}` }, reachable: true };
}

async function checkCrds(r: Reader, name: string, crds: readonly string[], hint: string): Promise<Check> {
  const found = await Promise.all(crds.map((c) => r.get(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${c}`)));
  const missing = crds.filter((_, i) => found[i]!.kind === 'missing');
  const errors = found.flatMap((f, i) => (f.kind === 'error' ? [{ crd: crds[i]!, f }] : []));
  if (errors.length > 0) {
    const first = errors[0]!;
    return { ...readFailure(name, `CustomResourceDefinition ${first.crd}`, first.f), ...(missing.length > 0 ? { detail: `missing: ${missing.join(', ')}; cannot read ${first.crd}: ${first.f.message}` } : {}) };
  }
  if (missing.length > 0) return { name, ok: false, detail: `missing: ${missing.join(', ')}`, hint };
  return { name, ok: true, detail: `all ${crds.length} present` };
}

/** Every node: Linux, and a kernel `ambit check` accepts. One check, readable with 100 nodes. */
async function checkNodes(r: Reader): Promise<Check> {
  const name = 'nodes\' kernels';
  const f = await r.get('/api/v1/nodes');
  if (f.kind === 'error') return readFailure(name, 'the nodes', f);
  const nodes: Obj[] = f.kind === 'found' && Array.isArray((f.body as Obj)?.items) ? (f.body as Obj).items : [];
  if (nodes.length === 0) return { name, ok: false, detail: 'the cluster has no nodes', hint: 'add nodes: the node agent runs on each' };
  const failures: string[] = [];
  const hints = new Set<string>();
  const kernels: string[] = [];
  for (const n of [...nodes].sort((a, b) => String(a?.metadata?.name).localeCompare(String(b?.metadata?.name)))) {
    const nodeName = String(n?.metadata?.name ?? '?');
    const info = n?.status?.nodeInfo ?? {};
    const os = typeof info.operatingSystem === 'string' ? info.operatingSystem : 'unknown';
    if (os !== 'linux') {
      failures.push(`${nodeName}: runs ${os}, not linux`);
      hints.add('the node agent runs on Linux only, and its DaemonSet schedules a pod on every node (it tolerates every taint): remove the non-Linux nodes from this cluster');
      continue;
    }
    const kernel = checkKernel(typeof info.kernelVersion === 'string' ? info.kernelVersion : '');
    if (!kernel.ok) {
      failures.push(`${nodeName}: ${kernel.detail}`);
      if (kernel.hint) hints.add(kernel.hint);
    } else kernels.push(info.kernelVersion as string);
  }
  if (failures.length > 0) {
    return { name, ok: false, detail: `${failures.length} of ${nodes.length} nodes fail: ${listOf(failures, '; ')}`, hint: [...hints].join('; ') };
  }
  const [minMajor, minMinor] = MIN_KERNEL;
  const distinct = [...new Set(kernels)].sort();
  return { name, ok: true, detail: `${nodes.length} Linux node${nodes.length === 1 ? '' : 's'}, kernel >= ${minMajor}.${minMinor} (${listOf(distinct)})` };
}

/** --pre: the namespace (either way is fine) and the CA Secret in it, which the install cannot make. */
async function checkPre(r: Reader, namespace: string): Promise<Check[]> {
  const nsName = `namespace ${namespace}`;
  const secretName = `Secret ${namespace}/${CA_SECRET}`;
  const create = `kubectl -n ${namespace} create secret generic ${CA_SECRET} ${CA_SECRET_KEYS.map((k) => `--from-file=${k}`).join(' ')}`;
  const ns = await r.get(`/api/v1/namespaces/${namespace}`);
  if (ns.kind === 'error') return [readFailure(nsName, `namespace ${namespace}`, ns)];
  if (ns.kind === 'missing') {
    return [
      { name: nsName, ok: true, detail: 'does not exist yet (ambit install creates it)' },
      { name: secretName, ok: false, detail: `missing: the namespace ${namespace} does not exist`, hint: `the controller mounts the mesh CA from it: kubectl create namespace ${namespace} && ${create}` },
    ];
  }
  const nsCheck: Check = { name: nsName, ok: true, detail: 'exists' };
  const s = await r.get(`/api/v1/namespaces/${namespace}/secrets/${CA_SECRET}`);
  if (s.kind === 'error') return [nsCheck, readFailure(secretName, `Secret ${namespace}/${CA_SECRET}`, s)];
  if (s.kind === 'missing') return [nsCheck, { name: secretName, ok: false, detail: 'missing', hint: `the controller mounts the mesh CA from it: ${create}` }];
  // Only the key names are looked at: the values (a CA key among them) are never printed.
  const data = { ...((s.body as Obj)?.data ?? {}), ...((s.body as Obj)?.stringData ?? {}) } as Record<string, unknown>;
  const missing = CA_SECRET_KEYS.filter((k) => typeof data[k] !== 'string' || data[k] === '');
  if (missing.length > 0) {
    return [nsCheck, { name: secretName, ok: false, detail: `missing keys: ${missing.join(', ')}`, hint: `recreate it with all three keys: kubectl -n ${namespace} delete secret ${CA_SECRET} && ${create}` }];
  }
  return [nsCheck, { name: secretName, ok: true, detail: `${CA_SECRET_KEYS.join(', ')} present` }];
}

function checkDeployment(name: string, what: string, f: Fetched, namespace: string): Check {
  if (f.kind === 'error') return readFailure(name, what, f);
  if (f.kind === 'missing') return { name, ok: false, detail: 'not found', hint: INSTALL_HINT };
  const d = f.body as Obj;
  const ready = Number(d?.status?.readyReplicas ?? 0);
  const wanted = Number(d?.spec?.replicas ?? 1);
  if (ready < 1) {
    return { name, ok: false, detail: `0/${wanted} ready`, hint: `kubectl -n ${namespace} describe deployment ${CONTROLLER}; kubectl -n ${namespace} logs deployment/${CONTROLLER}` };
  }
  return { name, ok: true, detail: ready < wanted ? `${ready}/${wanted} ready (${wanted - ready} not ready: serving, without redundancy)` : `${ready}/${wanted} ready` };
}

function checkLease(name: string, f: Fetched, namespace: string, now: number): Check {
  const hint = `the controller replicas elect their leader through it: kubectl -n ${namespace} logs deployment/${CONTROLLER}`;
  if (f.kind === 'error') return readFailure(name, `Lease ${namespace}/${LEADER_LEASE}`, f);
  if (f.kind === 'missing') return { name, ok: false, detail: 'no controller holds the lease (it does not exist)', hint };
  const spec = (f.body as Obj)?.spec ?? {};
  const holder = typeof spec.holderIdentity === 'string' && spec.holderIdentity ? spec.holderIdentity as string : undefined;
  const renewed = typeof spec.renewTime === 'string' ? Date.parse(spec.renewTime) : NaN;
  const duration = Number(spec.leaseDurationSeconds);
  if (!holder) return { name, ok: false, detail: 'no controller holds the lease (no holder)', hint };
  if (Number.isNaN(renewed) || !Number.isFinite(duration)) return { name, ok: false, detail: `no controller holds the lease (${holder} has no renewTime or leaseDurationSeconds)`, hint };
  const expires = renewed + duration * 1000;
  if (expires <= now) {
    return { name, ok: false, detail: `no controller holds the lease (${holder}'s expired ${Math.round((now - expires) / 1000)} s ago)`, hint };
  }
  return { name, ok: true, detail: `held by ${holder}` };
}

function checkConfigMap(name: string, f: Fetched, namespace: string): Check {
  const hint = `the controller writes the trust bundle there when it runs: kubectl -n ${namespace} logs deployment/${CONTROLLER}`;
  if (f.kind === 'error') return readFailure(name, `ConfigMap ${namespace}/${ROOT_CERT_CONFIGMAP}`, f);
  if (f.kind === 'missing') return { name, ok: false, detail: 'not found', hint };
  const data = ((f.body as Obj)?.data ?? {}) as Record<string, unknown>;
  if (typeof data[ROOT_CERT_KEY] !== 'string' || data[ROOT_CERT_KEY] === '') return { name, ok: false, detail: `no ${ROOT_CERT_KEY} key`, hint };
  return { name, ok: true, detail: `${ROOT_CERT_KEY} present` };
}

function checkDaemonSet(name: string, f: Fetched, namespace: string): Check {
  if (f.kind === 'error') return readFailure(name, `DaemonSet ${namespace}/${NODE_AGENT}`, f);
  if (f.kind === 'missing') return { name, ok: false, detail: 'not found', hint: INSTALL_HINT };
  const status = (f.body as Obj)?.status ?? {};
  const ready = Number(status.numberReady ?? 0);
  const desired = Number(status.desiredNumberScheduled ?? 0);
  if (desired === 0) return { name, ok: false, detail: 'scheduled on no node', hint: `kubectl -n ${namespace} describe daemonset ${NODE_AGENT}` };
  const detail = `${ready}/${desired} nodes ready`;
  return ready === desired
    ? { name, ok: true, detail }
    : { name, ok: false, detail, hint: `the per-node checks below say why; kubectl -n ${namespace} get pods -l app.kubernetes.io/name=${NODE_AGENT} -o wide` };
}

/** `app.kubernetes.io/name=ambit-node,...`, a labelSelector query value. */
export function labelSelector(matchLabels: Record<string, unknown>): string {
  return Object.entries(matchLabels).map(([k, v]) => `${k}=${String(v)}`).join(',');
}

interface AgentReport { ok: boolean; checks: { name: string; ok: boolean; detail: string; hint?: string }[] }

function isAgentReport(v: unknown): v is AgentReport {
  const r = v as Obj;
  return typeof r === 'object' && r !== null && typeof r.ok === 'boolean' && Array.isArray(r.checks);
}

/** One node's requirements, as its agent checked them; or why its agent does not answer. */
async function checkAgent(r: Reader, namespace: string, pod: Obj): Promise<Check> {
  const podName = String(pod?.metadata?.name);
  const nodeName = typeof pod?.spec?.nodeName === 'string' ? pod.spec.nodeName as string : `(pod ${podName}, not scheduled)`;
  const name = `node ${nodeName}: requirements`;
  const logs = `kubectl -n ${namespace} logs ${podName} --previous`;
  const f = await r.get(`/api/v1/namespaces/${namespace}/pods/${podName}:${NODE_PORTS.ready}/proxy${AGENT_CHECK_PATH}`);
  if (f.kind === 'found' && isAgentReport(f.body)) {
    const failed = f.body.checks.filter((c) => !c.ok);
    if (f.body.ok && failed.length === 0) return { name, ok: true, detail: `all ${f.body.checks.length} checks passed` };
    const hints = [...new Set(failed.flatMap((c) => (c.hint ? [c.hint] : [])))];
    return {
      name, ok: false,
      detail: failed.length > 0 ? `failed: ${failed.map((c) => `${c.name} (${c.detail})`).join('; ')}` : 'the agent reports a failure',
      hint: hints.length > 0 ? hints.join('; ') : `kubectl -n ${namespace} exec ${podName} -- ambit check`,
    };
  }
  const why = f.kind === 'found' ? `${AGENT_CHECK_PATH} did not answer a check report`
    : f.kind === 'missing' ? `${AGENT_CHECK_PATH} not found` : f.message;
  // The agent writes its fatal error to its termination message: the reason it is not running.
  for (const cs of [...(pod?.status?.initContainerStatuses ?? []), ...(pod?.status?.containerStatuses ?? [])] as Obj[]) {
    const waiting = cs?.state?.waiting;
    if (!waiting?.reason || waiting.reason === 'ContainerCreating' || waiting.reason === 'PodInitializing') continue;
    const terminated = cs?.lastState?.terminated;
    const message = typeof terminated?.message === 'string' && terminated.message.trim()
      ? terminated.message.trim()
      : typeof waiting.message === 'string' && waiting.message ? waiting.message : `exit code ${String(terminated?.exitCode ?? '?')}`;
    return { name, ok: false, detail: `agent ${podName} ${waiting.reason}: ${message}`, hint: waiting.reason === 'CrashLoopBackOff' ? logs : `kubectl -n ${namespace} describe pod ${podName}` };
  }
  return { name, ok: false, detail: `agent on ${nodeName} not answering: ${why}`, hint: `kubectl -n ${namespace} describe pod ${podName}; ${logs}` };
}

async function checkAgents(r: Reader, namespace: string, daemonSet: Fetched): Promise<Check[]> {
  if (daemonSet.kind !== 'found') return [];
  const matchLabels = ((daemonSet.body as Obj)?.spec?.selector?.matchLabels ?? {}) as Record<string, unknown>;
  if (Object.keys(matchLabels).length === 0) return [];
  const pods = await r.get(`/api/v1/namespaces/${namespace}/pods?labelSelector=${encodeURIComponent(labelSelector(matchLabels))}`);
  if (pods.kind === 'error') return [readFailure('node agents', `the pods of DaemonSet ${namespace}/${NODE_AGENT}`, pods)];
  const items: Obj[] = pods.kind === 'found' && Array.isArray((pods.body as Obj)?.items) ? (pods.body as Obj).items : [];
  // A real API server filters by the selector already; the filter here keeps the contract explicit.
  const mine = items
    .filter((p) => Object.entries(matchLabels).every(([k, v]) => p?.metadata?.labels?.[k] === v))
    .sort((a, b) => `${a?.spec?.nodeName ?? '~'}/${a?.metadata?.name}`.localeCompare(`${b?.spec?.nodeName ?? '~'}/${b?.metadata?.name}`));
  return Promise.all(mine.map((p) => checkAgent(r, namespace, p)));
}

/** After install: ambit's objects and each node's agent. */
async function checkInstalled(r: Reader, namespace: string, now: number): Promise<Check[]> {
  const ns = (path: string) => `/api/v1/namespaces/${namespace}${path}`;
  const [nsF, crdF, depF, leaseF, cmF, dsF] = await Promise.all([
    r.get(ns('')),
    r.get(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${RATELIMIT_CRD}`),
    r.get(`/apis/apps/v1/namespaces/${namespace}/deployments/${CONTROLLER}`),
    r.get(`/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases/${LEADER_LEASE}`),
    r.get(ns(`/configmaps/${ROOT_CERT_CONFIGMAP}`)),
    r.get(`/apis/apps/v1/namespaces/${namespace}/daemonsets/${NODE_AGENT}`),
  ]);
  const nsName = `namespace ${namespace}`;
  const crdName = `CRD ${RATELIMIT_CRD}`;
  const crd: Check = crdF.kind === 'error' ? readFailure(crdName, `CustomResourceDefinition ${RATELIMIT_CRD}`, crdF)
    : crdF.kind === 'missing' ? { name: crdName, ok: false, detail: 'missing', hint: INSTALL_HINT }
    : { name: crdName, ok: true, detail: 'present' };
  if (nsF.kind === 'error') return [readFailure(nsName, `namespace ${namespace}`, nsF), crd];
  if (nsF.kind === 'missing') {
    // Nothing namespaced can be there: one failure says it, not one per object.
    return [{ name: nsName, ok: false, detail: 'does not exist: ambit is not installed there', hint: `${INSTALL_HINT} (or pass --namespace if it was installed with --set namespace=...)` }, crd];
  }
  const agents = await checkAgents(r, namespace, dsF);
  return [
    { name: nsName, ok: true, detail: 'exists' },
    crd,
    checkDeployment(`Deployment ${CONTROLLER}`, `Deployment ${namespace}/${CONTROLLER}`, depF, namespace),
    checkLease(`Lease ${LEADER_LEASE}`, leaseF, namespace, now),
    checkConfigMap(`ConfigMap ${ROOT_CERT_CONFIGMAP}`, cmF, namespace),
    checkDaemonSet(`DaemonSet ${NODE_AGENT}`, dsF, namespace),
    ...agents,
  ];
}

/** Every check of the cluster behind `client`, in a stable order. */
export async function clusterChecks(client: KubeClient, opts: ClusterCheckOptions = {}): Promise<Check[]> {
  const r = new Reader(client, opts.timeoutMs ?? 10_000);
  const namespace = opts.namespace ?? DEFAULT_NAMESPACE;
  const api = await checkApiServer(r);
  if (!api.reachable) return [api.check];
  const now = (opts.now ?? Date.now)();
  const [istio, gatewayApi, nodes, rest] = await Promise.all([
    checkCrds(r, 'Istio CRDs', ISTIO_CRDS, ISTIO_HINT),
    checkCrds(r, 'Gateway API CRDs', GATEWAY_API_CRDS, GATEWAY_API_HINT),
    checkNodes(r),
    opts.pre ? checkPre(r, namespace) : checkInstalled(r, namespace, now),
  ]);
  return [api.check, istio, gatewayApi, nodes, ...rest];
}

/** The text report, with a verdict about the cluster rather than this node. */
export function renderClusterText(r: Report, pre: boolean): string {
  const lines = renderText(r).trimEnd().split('\n');
  lines.pop(); // renderText's verdict speaks of this node
  const failed = r.checks.filter((c) => !c.ok).length;
  lines.push(failed === 0
    ? `all ${r.checks.length} checks passed: ${pre ? 'the cluster is ready for ambit install' : 'ambit runs on this cluster'}`
    : `${failed} of ${r.checks.length} checks failed: ${pre ? 'fix them before installing ambit' : 'fix them for ambit to run on this cluster'}`);
  return `${lines.join('\n')}\n`;
}
