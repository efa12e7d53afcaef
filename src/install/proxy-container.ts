/**
 * The proxy container of a waypoint and of an ingress gateway: the same image and process
 * (`ambit waypoint run`, `ambit gateway run`), so the same credential flags and mounts, probes,
 * resources and securityContext; they differ in the command, the ports and a few flags.
 */
import { TRACING_ENDPOINT_ANNOTATION, TRACING_SAMPLING_ANNOTATION } from '../config/model.js';
import { controllerAddress, credentialMounts, credentialVolumes, httpProbe, ROOT_CERT_DIR, TOKEN_DIR } from './render.js';
import type { Values } from './values.js';

export interface ProxyContainer {
  /** The container's name. */
  name: string;
  /** `ambit <command> run`. */
  command: 'waypoint' | 'gateway';
  /** Its `--name`: `<namespace>/<name>`, what it asks the controller for. */
  proxyName: string;
  /** Flags of its own, after the controller's and the credential's. */
  args?: string[];
  /** `--tracing-*` flags (tracingArgs), last. */
  tracing: string[];
  /** The ports it serves, before its status port. */
  ports: { name: string; port: number }[];
  /** Its health and metrics port (`/healthz/ready`, `/healthz/live`, `/metrics`), and that port's name. */
  status: { name: string; port: number };
}

/** The `--tracing-endpoint` and `--tracing-sampling` flags a Gateway's annotations ask for. */
export function tracingArgs(annotations: Record<string, unknown>): string[] {
  const endpoint = annotations[TRACING_ENDPOINT_ANNOTATION];
  const sampling = annotations[TRACING_SAMPLING_ANNOTATION];
  return [
    ...(typeof endpoint === 'string' ? ['--tracing-endpoint', endpoint] : []),
    ...(typeof sampling === 'string' ? ['--tracing-sampling', sampling] : []),
  ];
}

/** The container; its pod needs proxyVolumes(). */
export function proxyContainer(c: ProxyContainer, values: Values): Record<string, unknown> {
  return {
    name: c.name,
    image: values.image,
    imagePullPolicy: values.imagePullPolicy,
    args: [
      c.command, 'run',
      '--name', c.proxyName,
      '--controller', controllerAddress(values),
      '--token-file', `${TOKEN_DIR}/token`,
      '--ca-file', `${ROOT_CERT_DIR}/root-cert.pem`,
      ...(c.args ?? []),
      '--trust-domain', values.trustDomain,
      ...c.tracing,
    ],
    // Its node, for its proxy-config answers (as the node agents name theirs).
    env: [{ name: 'AMBIT_LOG_LEVEL', value: values.logLevel }, { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } }],
    ports: [...c.ports, c.status].map((p) => ({ name: p.name, containerPort: p.port, protocol: 'TCP' })),
    // Ready once it has its config and certificate; served beside the metrics.
    readinessProbe: httpProbe('/healthz/ready', c.status.port, 5, 3),
    livenessProbe: httpProbe('/healthz/live', c.status.port, 10, 3),
    startupProbe: httpProbe('/healthz/live', c.status.port, 5, 24),
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '1Gi' } },
    securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
    volumeMounts: [...credentialMounts(), { name: 'tmp', mountPath: '/tmp' }],
  };
}

/** The volumes proxyContainer mounts: the credential, and a writable /tmp on a read-only root. */
export function proxyVolumes(): Record<string, unknown>[] {
  return [...credentialVolumes(), { name: 'tmp', emptyDir: {} }];
}
