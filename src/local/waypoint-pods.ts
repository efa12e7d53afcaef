/**
 * How the local cluster runs a waypoint: a Gateway of class ambit-waypoint becomes one pod,
 * `<name>-waypoint`, with the identity `<ns>/sa/<name>` and a credential good for that identity
 * only; it is not captured itself (its traffic is HBONE already). And how the runtime starts
 * ambit's own processes (the controller, node agents, waypoints): with which Node.js flags and
 * which of its environment.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION, WAYPOINT_CLASS, WAYPOINT_GATEWAY_LABEL } from '../config/model.js';
import type { PodSpec, Resource } from '../kube/manifests.js';
import { ambitBin } from '../util/package.js';
import { CONTROLLER_PORT, UNDERLAY_GATEWAY, type ClusterLayout } from './layout.js';

/** What of the daemon's environment reaches the controller, the node agents, waypoint and gateway pods: a bench's build and its profiling settings. */
export const BUILD_AND_PROFILE_ENV = ['AMBIT_DIST', 'AMBIT_CPU_PROFILE_DIR', 'AMBIT_CPU_PROFILE_INTERVAL_US'] as const;

/**
 * Node.js flags for the controller, the node agents and the waypoints: `AMBIT_NODE_OPTIONS` as the cluster's
 * daemon saw it, split on spaces, so a bench can trace them (`--trace-gc`, heap flags) without
 * touching the CLI's own Node. Not `--cpu-prof`: its SIGPROF makes the kernel's verifier give up
 * on the agent's programs (EAGAIN); AMBIT_CPU_PROFILE_DIR profiles once they are loaded.
 */
export function nodeFlags(): string[] {
  return (process.env.AMBIT_NODE_OPTIONS ?? '').split(/\s+/).filter((f) => f !== '');
}

export function isWaypointGateway(r: Resource): boolean {
  return r.kind === 'Gateway' && r.apiVersion.startsWith('gateway.networking.k8s.io/')
    && (r.raw.spec as { gatewayClassName?: string } | undefined)?.gatewayClassName === WAYPOINT_CLASS;
}

/** Where a waypoint's credential is kept: `<state>/waypoints/<ns>.<name>/token`. */
export const waypointCredentialDir = (layout: ClusterLayout, namespace: string, name: string): string => join(layout.stateDir, 'waypoints', `${namespace}.${name}`);

/**
 * The waypoint pod of a Gateway: its spec (the Gateway's tracing annotations become the
 * waypoint's flags), labels, and `hash`, which changes when the pod must be made again. Writes
 * the waypoint's credential the first time.
 */
export function waypointPod(layout: ClusterLayout, namespace: string, name: string, annotations: Record<string, string>): { spec: PodSpec; labels: Record<string, string>; hash: string } {
  const tracingArgs = [
    ...(annotations[TRACING_ENDPOINT_ANNOTATION] ? ['--tracing-endpoint', annotations[TRACING_ENDPOINT_ANNOTATION]] : []),
    ...(annotations[TRACING_SAMPLING_ANNOTATION] ? ['--tracing-sampling', annotations[TRACING_SAMPLING_ANNOTATION]] : []),
  ];
  const credDir = waypointCredentialDir(layout, namespace, name);
  mkdirSync(credDir, { recursive: true, mode: 0o700 });
  const tokenFile = join(credDir, 'token');
  if (!existsSync(tokenFile)) writeFileSync(tokenFile, `${randomBytes(32).toString('base64url')}\n`, { mode: 0o600 });
  const spec = {
    serviceAccountName: name, restartPolicy: 'Always', terminationGracePeriodSeconds: 10,
    containers: [{
      // A bench's build (AMBIT_DIST, bin/ambit.js) runs the waypoints too, and its profiling settings reach them.
      name: 'waypoint', cwd: layout.stateDir, env: [...BUILD_AND_PROFILE_ENV.flatMap((key) => (process.env[key] ? [{ name: key, value: process.env[key] }] : [])), { name: 'NODE_NAME', fieldRef: 'spec.nodeName' }], ports: [{ name: 'hbone', containerPort: 15008, protocol: 'TCP' }],
      argv: [process.execPath, ...nodeFlags(), ambitBin(), 'waypoint', 'run', '--name', `${namespace}/${name}`, '--controller', `${UNDERLAY_GATEWAY}:${CONTROLLER_PORT}`,
        '--token-file', tokenFile, '--ca-file', join(layout.stateDir, 'ca', 'ca-cert.pem'), ...tracingArgs],
      readinessProbe: { tcpSocket: { port: 15008 }, periodSeconds: 1, initialDelaySeconds: 0, timeoutSeconds: 1, failureThreshold: 1, successThreshold: 1 },
    }],
  } as PodSpec;
  const labels = { [WAYPOINT_GATEWAY_LABEL]: name, 'ambit.dev/dataplane-mode': 'none', app: `${name}-waypoint` };
  return { spec, labels, hash: tracingArgs.join(' ') };
}
