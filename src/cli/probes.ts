/** The real probes behind `ambit check`: read this node's kernel, mounts and capabilities, and load each BPF object. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { readMounts } from '../ebpf/mounts.js';
import {
  BTF_PATH, checkBpffs, checkBtf, checkCapabilities, checkCgroup2, checkKernel, checkLibbpf, checkObject,
  checkObjectsDir, type Check, type ObjectOutcome,
} from './checks.js';

export async function runChecks(): Promise<Check[]> {
  const mounts = readMounts();
  return [
    checkKernel(release()),
    checkBtf(existsSync(BTF_PATH)),
    checkCgroup2(mounts),
    checkBpffs(mounts),
    ...checkCapabilities(readFileSync('/proc/self/status', 'utf8')),
    ...(await probeBpf()),
  ];
}

function objectFiles(dir: string): string[] | undefined {
  if (!existsSync(dir)) return undefined;
  return readdirSync(dir).filter((f) => f.endsWith('.bpf.o')).sort();
}

async function probeBpf(): Promise<Check[]> {
  // Imported here, not at the top: koffi is a native addon, and when it cannot load on this
  // platform the other checks must still report.
  let native: typeof import('../../native/libbpf.js');
  let object: typeof import('../ebpf/object.js');
  let datapath: typeof import('../ebpf/datapath.js');
  try {
    [native, object, datapath] = await Promise.all([
      import('../../native/libbpf.js'), import('../ebpf/object.js'), import('../ebpf/datapath.js'),
    ]);
  } catch (err) {
    const reason = `native bindings (koffi) do not load: ${(err as Error).message}`;
    return [checkLibbpf(false, reason), checkObject('*.bpf.o', { loaded: false, skipped: reason })];
  }

  const available = native.libbpfAvailable();
  const dir = datapath.defaultObjectsDir();
  const files = objectFiles(dir);
  const dirProblem = checkObjectsDir(dir, files);
  if (dirProblem) return [checkLibbpf(available), dirProblem];

  return [checkLibbpf(available), ...(files ?? []).map((file) => {
    let outcome: ObjectOutcome;
    if (!available) {
      outcome = { loaded: false, skipped: 'libbpf.so.1 cannot be loaded' };
    } else {
      try {
        // No pinning: the maps live only as long as this handle, so a check never touches a running agent's state.
        const obj = object.BpfObject.load(join(dir, file));
        try {
          outcome = { loaded: true, programs: obj.programNames() };
        } finally {
          obj.close();
        }
      } catch (error) {
        outcome = { loaded: false, error };
      }
    }
    return checkObject(file, outcome);
  })];
}
