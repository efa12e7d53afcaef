/**
 * `ambit check --kubeconfig FILE | --kube`: checks a Kubernetes cluster through its API server,
 * one Check per requirement, in the same shape as the node-level `ambit check`.
 *
 * Always: the API server answers (and is 1.27 or newer), the prerequisite CRDs (Istio's, the
 * Gateway API's) are there, and every node runs Linux on a kernel `checkKernel` accepts.
 * `pre` (before `ambit install`): the platform (from the nodes' providerID, labels and kubelet
 * version, or kubeadm-config), the primary CNI (from the CNI DaemonSets), the CNI settings ambit
 * depends on (Cilium's socket LB and cni-exclusive, Calico eBPF's connect-time load balancer), the
 * CA Secret the controller mounts in ambit's namespace, and the `ambit install --set ...` line.
 * Otherwise (after install): the namespace, the RateLimit CRD, the controller Deployment and its
 * leader Lease, the trust-bundle ConfigMap, the node agent DaemonSet, and each agent's own node
 * check, read through the API server's pod proxy (`GET :15021/healthz/check`, the JSON of
 * `ambit check --json`), or, when the agent does not answer, why its pod is not running.
 *
 * No request failure throws: each becomes a failed Check naming the object and the API server's
 * message (a 404 is "missing", which each check judges). Independent objects are read
 * concurrently; the order of the checks is fixed.
 */
import type { KubeClient, KubeResponse } from '../kube/client.js';
import { ROOT_CERT_KEY } from '../control/kube/trust-bundle.js';
import { RATELIMIT_GROUP } from '../install/crd.js';
import { CA_SECRET, CONTROLLER, LEADER_LEASE, NODE_AGENT, NODE_PORTS, ROOT_CERT_CONFIGMAP } from '../install/render.js';
import { VALUES } from '../install/values.js';
import { checkKernel, MIN_KERNEL, renderText, type Check, type Platform, type Report } from '../node/checks.js';
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
  // ServiceAccount tokens carry the node they were issued on from 1.30 (KEP-4193); before, the
  // controller finds an agent's node through the pod the token is bound to.
  const note = major === 1 && minor < 30 ? ' (before 1.30 tokens name no node: the controller reads it from the token\'s pod binding)' : '';
  return { check: { name, ok: true, detail: `${shown} at ${r.server}${note}` }, reachable: true };
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
async function checkNodes(f: Fetched): Promise<Check> {
  const name = 'nodes\' kernels';
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
  const nsFlag = namespace === DEFAULT_NAMESPACE ? '' : ` -n ${namespace}`;
  const create = `ambit ca create${nsFlag} | kubectl apply -f - (a new root), or ambit ca create${nsFlag} --from DIR | kubectl apply -f - (your CA: root-cert.pem, ca-key.pem, cert-chain.pem or ca-cert.pem)`;
  const ns = await r.get(`/api/v1/namespaces/${namespace}`);
  if (ns.kind === 'error') return [readFailure(nsName, `namespace ${namespace}`, ns)];
  if (ns.kind === 'missing') {
    return [
      { name: nsName, ok: true, detail: 'does not exist yet (ambit install creates it)' },
      { name: secretName, ok: false, detail: `missing: the namespace ${namespace} does not exist`, hint: `the controller mounts the mesh CA from it; this makes the namespace and the Secret: ${create}` },
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
    return [nsCheck, { name: secretName, ok: false, detail: `missing keys: ${missing.join(', ')}`, hint: `recreate it with all three keys: kubectl -n ${namespace} delete secret ${CA_SECRET}, then ${create}` }];
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

// --- `--pre`: the platform, the primary CNI and the CNI settings ambit depends on. ---

export const INSTALL_COMMAND_CHECK = 'install command';

/** One node's platform from what the cloud and the distribution put on it; undefined: nothing specific. */
export function nodePlatform(node: Obj): Exclude<Platform, 'kubeadm' | 'generic'> | undefined {
  const providerID = typeof node?.spec?.providerID === 'string' ? node.spec.providerID as string : '';
  const labels = (node?.metadata?.labels ?? {}) as Record<string, unknown>;
  const kubelet = typeof node?.status?.nodeInfo?.kubeletVersion === 'string' ? node.status.nodeInfo.kubeletVersion as string : '';
  const has = (prefix: string) => Object.keys(labels).some((k) => k.startsWith(prefix));
  if (kubelet.includes('+k3s')) return 'k3s';
  if (providerID.startsWith('gce://') && has('cloud.google.com/gke-nodepool')) return 'gke';
  if (providerID.startsWith('aws://') && (has('eks.amazonaws.com/') || kubelet.includes('-eks-'))) return 'eks';
  if (providerID.startsWith('azure://') && has('kubernetes.azure.com/')) return 'aks';
  return undefined;
}

/** The cluster's platform: the nodes' (most of them), else kubeadm when kube-system/kubeadm-config exists, else generic. */
export function detectPlatform(nodes: Obj[], kubeadmConfig: boolean): { platform: Platform; evidence: string } {
  const counts = new Map<Platform, number>();
  for (const n of nodes) {
    const p = nodePlatform(n);
    if (p) counts.set(p, (counts.get(p) ?? 0) + 1);
  }
  const [top] = [...counts.entries()].sort((a, b) => b[1] - a[1]);
  if (top) {
    const why = { gke: 'providerID gce://, label cloud.google.com/gke-nodepool', eks: 'providerID aws://, eks.amazonaws.com/ labels', aks: 'providerID azure://, kubernetes.azure.com/ labels', k3s: 'kubelet version +k3s' }[top[0] as 'gke' | 'eks' | 'aks' | 'k3s'];
    const others = [...counts.entries()].filter(([p]) => p !== top[0]).map(([p, n]) => `${n} look like ${p}`);
    return { platform: top[0], evidence: `${why} on ${top[1]} of ${nodes.length} nodes${others.length ? `; ${others.join(', ')}` : ''}` };
  }
  if (kubeadmConfig) return { platform: 'kubeadm', evidence: 'ConfigMap kube-system/kubeadm-config' };
  return { platform: 'generic', evidence: 'no cloud providerID or distribution marker on the nodes, no kubeadm-config' };
}

/** The CNI DaemonSets ambit knows, the primary first: a policy-only Calico or a chained Cilium leaves aws-node primary. */
export const CNI_DAEMONSETS: readonly { name: string; chained: string; what: string }[] = [
  { name: 'anetd', chained: 'gke', what: 'GKE Dataplane V2 (Cilium)' },
  { name: 'aws-node', chained: 'aws-vpc-cni', what: 'Amazon VPC CNI' },
  { name: 'cilium', chained: 'cilium', what: 'Cilium' },
  { name: 'calico-node', chained: 'calico', what: 'Calico' },
  { name: 'kube-flannel-ds', chained: 'flannel', what: 'flannel' },
  { name: 'kindnet', chained: 'kindnet', what: 'kindnet' },
];
/** Where those DaemonSets live: the manifests' kube-system, the Tigera operator's calico-system, flannel's own namespace. */
export const CNI_NAMESPACES = ['kube-system', 'calico-system', 'kube-flannel'] as const;

export function detectCni(daemonSets: { namespace: string; name: string }[], platform: Platform): { chained: string; detail: string } {
  const present = CNI_DAEMONSETS.filter((c) => daemonSets.some((d) => d.name === c.name));
  const where = (name: string) => daemonSets.filter((d) => d.name === name).map((d) => `${d.namespace}/${d.name}`).join(', ');
  const primary = present[0];
  // GKE's own CNI (Dataplane V1; Calico there only enforces policy) has no DaemonSet of its own.
  if (platform === 'gke' && primary?.name !== 'anetd') {
    return { chained: 'gke', detail: `GKE's CNI (Dataplane V1)${present.length ? `; also ${present.map((c) => `${c.what} (DaemonSet ${where(c.name)})`).join(', ')}` : ''}` };
  }
  if (!primary) {
    if (platform === 'k3s') return { chained: 'flannel', detail: 'k3s\'s embedded flannel (no CNI DaemonSet)' };
    return { chained: 'auto', detail: `no CNI DaemonSet ambit knows (${CNI_DAEMONSETS.map((c) => c.name).join(', ')}) in ${CNI_NAMESPACES.join(', ')}: each node agent reads its node's CNI config` };
  }
  const also = present.slice(1).map((c) => `${c.what} (DaemonSet ${where(c.name)})`);
  return { chained: primary.chained, detail: `${primary.what} (DaemonSet ${where(primary.name)})${also.length ? `; also ${also.join(', ')}` : ''}` };
}

const CILIUM_HELM = 'helm upgrade cilium cilium/cilium -n kube-system --reuse-values';
const CILIUM_RESTART = 'kubectl -n kube-system rollout restart daemonset/cilium (the agent compiles the setting into its datapath at start)';

/**
 * Cilium's settings from ConfigMap kube-system/cilium-config: socket LB (on with
 * kube-proxy-replacement=true|strict, or bpf-lb-sock=true) must be limited to the host netns
 * (bpf-lb-sock-hostns-only), and cni-exclusive must be false, or Cilium removes ambit's chain entry.
 */
export function checkCiliumConfig(data: Record<string, unknown> | undefined, managedByGke: boolean): Check {
  const name = 'Cilium settings';
  if (!data) {
    return managedByGke
      ? { name, ok: true, detail: 'GKE Dataplane V2: GKE manages anetd and has no kube-system/cilium-config to read; the node agents check the programs on their nodes (ambit check --kube, after install)' }
      : { name, ok: false, detail: 'ConfigMap kube-system/cilium-config not found', hint: 'check Cilium\'s namespace and ConfigMap (kubectl get configmap -A | grep cilium-config); ambit needs bpf-lb-sock-hostns-only: "true" and cni-exclusive: "false" there' };
  }
  const str = (k: string) => (typeof data[k] === 'string' ? (data[k] as string).trim().toLowerCase() : undefined);
  const kpr = str('kube-proxy-replacement');
  const sock = str('bpf-lb-sock');
  const hostnsOnly = str('bpf-lb-sock-hostns-only') === 'true';
  // kube-proxy-replacement true (strict before 1.14) turns socket LB on whatever bpf-lb-sock says.
  const socketLb = sock === 'true' || kpr === 'true' || kpr === 'strict';
  const exclusive = str('cni-exclusive') !== 'false';
  const shown = `kube-proxy-replacement=${kpr ?? '(unset)'}, bpf-lb-sock=${sock ?? '(unset)'}, bpf-lb-sock-hostns-only=${str('bpf-lb-sock-hostns-only') ?? '(unset)'}, cni-exclusive=${str('cni-exclusive') ?? '(unset: true)'}`;
  const problems: string[] = [];
  const sets: string[] = [];
  if (socketLb && !hostnsOnly) {
    problems.push('socket load balancing rewrites pods\' Service connections before ambit sees them');
    sets.push('--set socketLB.hostNamespaceOnly=true');
  }
  if (exclusive && !managedByGke) {
    problems.push('cni-exclusive makes Cilium remove other CNI configs, ambit\'s chain entry among them');
    sets.push('--set cni.exclusive=false');
  }
  if (problems.length === 0) return { name, ok: true, detail: `${shown}: socket LB ${socketLb ? 'limited to the host netns' : 'off'}, other CNI plugins kept` };
  const hint = managedByGke
    ? 'GKE manages anetd\'s cilium-config and reverts changes to it: ambit cannot capture Service traffic by Service address on this cluster\'s pods'
    : `as Istio ambient requires: ${CILIUM_HELM} ${sets.join(' ')}; then ${CILIUM_RESTART}`;
  return { name, ok: false, detail: `${shown}: ${problems.join('; ')}`, hint };
}

/**
 * Calico eBPF's connect-time load balancer, from FelixConfiguration default (and the operator's
 * Installation): bpfConnectTimeLoadBalancing (TCP|Enabled|Disabled; the older
 * bpfConnectTimeLoadBalancingEnabled bool) must be Disabled.
 */
export function checkCalicoConfig(felix: Obj | undefined, installation: Obj | undefined): Check {
  const name = 'Calico eBPF';
  const spec = (felix?.spec ?? {}) as Record<string, unknown>;
  const dataplane = installation?.spec?.calicoNetwork?.linuxDataplane as string | undefined;
  const bpf = spec.bpfEnabled === true || dataplane === 'BPF';
  if (!bpf) return { name, ok: true, detail: `not in eBPF mode (FelixConfiguration default bpfEnabled=${String(spec.bpfEnabled ?? false)}${dataplane ? `, Installation linuxDataplane=${dataplane}` : ''}): no connect-time load balancer` };
  const ctlb = typeof spec.bpfConnectTimeLoadBalancing === 'string' ? spec.bpfConnectTimeLoadBalancing
    : spec.bpfConnectTimeLoadBalancingEnabled === false ? 'Disabled'
    : spec.bpfConnectTimeLoadBalancingEnabled === true ? 'Enabled' : undefined;
  const shown = ctlb === undefined ? 'bpfConnectTimeLoadBalancing unset (Calico\'s default load-balances TCP at connect time)' : `bpfConnectTimeLoadBalancing=${ctlb}`;
  if (ctlb === 'Disabled') return { name, ok: true, detail: `eBPF mode, ${shown}` };
  const patch = { bpfConnectTimeLoadBalancing: 'Disabled', bpfHostNetworkedNATWithoutCTLB: 'Enabled', ...(spec.bpfConnectTimeLoadBalancingEnabled === true ? { bpfConnectTimeLoadBalancingEnabled: false } : {}) };
  return {
    name, ok: false,
    detail: `eBPF mode, ${shown}: pods' Service connections are rewritten to pod addresses before ambit sees them (Calico documents connect-time load balancing as not compatible with Istio ambient)`,
    hint: `kubectl patch felixconfiguration default --type merge -p '${JSON.stringify({ spec: patch })}' (host-networked processes keep reaching Services through bpfHostNetworkedNATWithoutCTLB)`,
  };
}

async function checkPlatformAndCni(r: Reader, nodesF: Fetched): Promise<{ checks: Check[]; install: Check }> {
  const nodes: Obj[] = nodesF.kind === 'found' && Array.isArray((nodesF.body as Obj)?.items) ? (nodesF.body as Obj).items : [];
  const [kubeadm, ...dsLists] = await Promise.all([
    r.get('/api/v1/namespaces/kube-system/configmaps/kubeadm-config'),
    ...CNI_NAMESPACES.map((ns) => r.get(`/apis/apps/v1/namespaces/${ns}/daemonsets`)),
  ]);
  const checks: Check[] = [];
  const { platform, evidence } = detectPlatform(nodes, kubeadm.kind === 'found');
  checks.push({ name: 'platform', ok: true, detail: `${platform} (${evidence})`, implies: `--set platform=${platform}` });

  const dsError = dsLists.find((f) => f.kind === 'error');
  const daemonSets = dsLists.flatMap((f) => (f.kind === 'found' && Array.isArray((f.body as Obj)?.items) ? (f.body as Obj).items as Obj[] : []))
    .map((d) => ({ namespace: String(d?.metadata?.namespace ?? ''), name: String(d?.metadata?.name ?? '') }));
  let chained = 'auto';
  if (dsError?.kind === 'error') {
    checks.push(readFailure('primary CNI', `the DaemonSets of ${CNI_NAMESPACES.join(', ')}`, dsError));
  } else {
    const cni = detectCni(daemonSets, platform);
    chained = cni.chained;
    checks.push({ name: 'primary CNI', ok: true, detail: cni.detail, implies: `--set cni.chained=${cni.chained}` });
  }
  const names = new Set(daemonSets.map((d) => d.name));
  if (names.has('cilium') || names.has('anetd')) {
    const cm = await r.get('/api/v1/namespaces/kube-system/configmaps/cilium-config');
    checks.push(cm.kind === 'error' ? readFailure('Cilium settings', 'ConfigMap kube-system/cilium-config', cm)
      : checkCiliumConfig(cm.kind === 'found' ? ((cm.body as Obj)?.data ?? {}) : undefined, names.has('anetd') && !names.has('cilium')));
  }
  if (names.has('calico-node')) {
    const felix = await firstFound(r, ['/apis/crd.projectcalico.org/v1/felixconfigurations/default', '/apis/projectcalico.org/v3/felixconfigurations/default']);
    const installation = await r.get('/apis/operator.tigera.io/v1/installations/default');
    const failed = [felix, installation].find((f) => f.kind === 'error');
    checks.push(failed?.kind === 'error' ? readFailure('Calico eBPF', 'FelixConfiguration default', failed)
      : checkCalicoConfig(felix.kind === 'found' ? felix.body as Obj : undefined, installation.kind === 'found' ? installation.body as Obj : undefined));
  }
  const command = `ambit install --set platform=${platform} --set cni.chained=${chained}`;
  const changes = checks.filter((c) => !c.ok).length;
  return {
    checks,
    install: { name: INSTALL_COMMAND_CHECK, ok: true, detail: `${command} | kubectl apply -f -${changes > 0 ? ` (after the ${changes === 1 ? 'change' : 'changes'} above)` : ''}` },
  };
}

/** The first of `paths` that exists (a CRD served under either group); missing when none does. */
async function firstFound(r: Reader, paths: string[]): Promise<Fetched> {
  for (const path of paths) {
    const f = await r.get(path);
    if (f.kind !== 'missing') return f;
  }
  return { kind: 'missing' };
}

/** Every check of the cluster behind `client`, in a stable order. */
export async function clusterChecks(client: KubeClient, opts: ClusterCheckOptions = {}): Promise<Check[]> {
  const r = new Reader(client, opts.timeoutMs ?? 10_000);
  const namespace = opts.namespace ?? DEFAULT_NAMESPACE;
  const api = await checkApiServer(r);
  if (!api.reachable) return [api.check];
  const now = (opts.now ?? Date.now)();
  const nodeList = r.get('/api/v1/nodes');
  const [istio, gatewayApi, nodes, platform, rest] = await Promise.all([
    checkCrds(r, 'Istio CRDs', ISTIO_CRDS, ISTIO_HINT),
    checkCrds(r, 'Gateway API CRDs', GATEWAY_API_CRDS, GATEWAY_API_HINT),
    nodeList.then(checkNodes),
    opts.pre ? nodeList.then((f) => checkPlatformAndCni(r, f)) : Promise.resolve(undefined),
    opts.pre ? checkPre(r, namespace) : checkInstalled(r, namespace, now),
  ]);
  if (!platform) return [api.check, istio, gatewayApi, nodes, ...rest];
  return [api.check, istio, gatewayApi, nodes, ...platform.checks, ...rest, platform.install];
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
