/** What the CLI's commands share when they talk to a Kubernetes API server (`--kubeconfig FILE` or `--kube`). */
import type { KubeClient, KubeResponse } from '../kube/client.js';
import { CliError } from './errors.js';

/** One request; a transport failure is a CliError naming the server. */
export async function kubeRequest(client: KubeClient, method: string, path: string, body?: unknown, contentType?: string): Promise<KubeResponse> {
  try {
    return await client.request(method, path, body, contentType);
  } catch (err) {
    throw new CliError(`cannot reach the Kubernetes API server at ${client.server}: ${(err as Error).message}`);
  }
}

/** The API server's message for a failed request. */
export function apiMessage(res: KubeResponse): string {
  const m = (res.body as { message?: unknown } | undefined)?.message;
  return typeof m === 'string' ? m : `HTTP ${res.status}`;
}

export const isSuccess = (res: KubeResponse): boolean => res.status >= 200 && res.status < 300;
