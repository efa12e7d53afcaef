/**
 * The node agent's control socket (`ambit node --control-socket`), as the local runtime, the
 * benches and the tests ask it: one GET at a time, each on a fresh connection.
 */
import { request as httpRequest } from 'node:http';

/** One GET to a node agent's control socket: its status and JSON body (the text when not JSON). */
export function agentRequest(socketPath: string, path: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    // A fresh connection each time (no keep-alive agent): during a handover the path is bound
    // to the new agent, and a kept connection would go on asking the old one.
    const req = httpRequest({ socketPath, path, method: 'GET', timeout: timeoutMs, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { text += c; });
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as unknown });
        } catch {
          resolve({ status: res.statusCode ?? 0, body: text });
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('node agent did not answer')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * `GET /v1/ready`: the pid of the agent answering on `socketPath` once it has enrolled its node's
 * pods; undefined while it is not ready, or when nothing answers within `timeoutMs`.
 */
export async function agentReady(socketPath: string, timeoutMs = 1000): Promise<{ pid: number } | undefined> {
  try {
    const { status, body } = await agentRequest(socketPath, '/v1/ready', timeoutMs);
    const b = body as { ready?: unknown; pid?: unknown };
    return status === 200 && b.ready === true && typeof b.pid === 'number' ? { pid: b.pid } : undefined;
  } catch {
    return undefined;
  }
}
