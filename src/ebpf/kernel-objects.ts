/** Facts about kernel BPF objects that both programs and links need: ids, and where pins may live. */
import * as libbpf from '../../native/libbpf.js';
import { BpfError, hintFor } from './errors.js';
import { bpffsMount } from './mounts.js';

/** The leading bytes of bpf_obj_get_info_by_fd's answer for a program or link fd. */
export function objectInfo(fd: number): Buffer {
  const info = Buffer.alloc(256);
  const rc = libbpf.bpf_obj_get_info_by_fd(fd, info, [info.length]);
  if (rc < 0) throw new BpfError('AMBIT_E_BPF_MAP', 'cannot read object info', { call: 'bpf_obj_get_info_by_fd', errno: -rc, hint: hintFor(-rc) });
  return info;
}

/** Throws a clear error when `path` is not inside a mounted bpffs. */
export function requireBpffs(path: string): void {
  const mount = bpffsMount();
  if (mount === undefined || !(path === mount || path.startsWith(`${mount}/`))) {
    throw new BpfError('AMBIT_E_BPF_BPFFS', `cannot pin under ${path}: ${mount ? `it is outside bpffs (${mount})` : 'bpffs is not mounted'}`, {
      hint: 'mount it with `mount -t bpf bpf /sys/fs/bpf` (make setup does)',
    });
  }
}
