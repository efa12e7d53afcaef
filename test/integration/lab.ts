/** The local lab (src/local/lab.ts) plus the test client, run inside a pod. */
import { Lab as BaseLab, type RunResult } from '../../src/local/lab.js';

export type { RunResult };
export const CLIENT = new URL('./helpers/client.mjs', import.meta.url).pathname;

export class Lab extends BaseLab {
  /** Runs helpers/client.mjs in a pod's netns and cgroup. */
  client(netnsPath: string | undefined, cgroupPath: string | undefined, host: string, port: number, ...args: string[]): Promise<RunResult> {
    return this.run(netnsPath, cgroupPath, [process.execPath, CLIENT, host, String(port), ...args]);
  }
}
