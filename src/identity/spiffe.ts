/** SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

export interface WorkloadIdentity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const SEGMENT = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export class SpiffeIdError extends Error {
  override readonly name = 'SpiffeIdError';
}

export function formatSpiffeId(id: WorkloadIdentity): string {
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/** Parses a workload SPIFFE ID; anything else (other path shapes, bad characters) is refused with the reason. */
export function parseSpiffeId(uri: string): WorkloadIdentity {
  const m = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  if (!m) throw new SpiffeIdError(`"${uri}" is not a workload SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)`);
  const [, trustDomain, namespace, serviceAccount] = m as unknown as [string, string, string, string];
  if (!TRUST_DOMAIN.test(trustDomain)) throw new SpiffeIdError(`"${uri}": invalid trust domain "${trustDomain}"`);
  if (!SEGMENT.test(namespace)) throw new SpiffeIdError(`"${uri}": invalid namespace "${namespace}"`);
  if (!SEGMENT.test(serviceAccount)) throw new SpiffeIdError(`"${uri}": invalid service account "${serviceAccount}"`);
  return { trustDomain, namespace, serviceAccount };
}
