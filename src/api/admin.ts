/**
 * What the node agent's local endpoints answer, as the agent writes it and as the commands and
 * the local runtime read it: the admin endpoint (15000, src/node/admin.ts) and the control socket
 * (src/node/app.ts). The .proto files beside this one define the controller's gRPC services.
 */
import type { CertificateSummary } from '../identity/cert-manager.js';

/** `GET /certificates` (and `/certs`): the mesh's roots and the workload certificates held; never keys. */
export interface CertificatesResponse {
  trustBundle: { subject: string; serial: string; notAfter: string }[];
  certificates: CertificateSummary[];
}

/** `GET /v1/pods/<uid>` on the control socket: whether the agent has enrolled the pod (its processes may start once it has). */
export interface PodReadiness {
  uid: string;
  enrolled: boolean;
  /** Why it could not be enrolled, when it could not. */
  error?: string;
  /** The mesh config version the answer was made at. */
  version: string;
}
