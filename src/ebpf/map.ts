/** A typed view of one BPF map: keys and values go through codecs, failures become BpfErrors. */
import * as libbpf from '../../native/libbpf.js';
import type { Codec } from './codecs.js';
import { BpfError, hintFor } from './errors.js';

export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

const ENOENT = 2;

export class BpfMap<K, V> {
  constructor(
    readonly name: string,
    readonly fd: number,
    private readonly keyCodec: Codec<K>,
    private readonly valueCodec: Codec<V>,
    /** Per-CPU maps hold one value per possible CPU; their codec reads one slot. */
    private readonly perCpu = false,
  ) {}

  private fail(call: string, rc: number, what: string): never {
    throw new BpfError('AMBIT_E_BPF_MAP', `map ${this.name}: ${what} failed`, { call, errno: -rc, hint: hintFor(-rc) });
  }

  set(key: K, value: V, flags = BPF_ANY): void {
    const rc = libbpf.bpf_map_update_elem(this.fd, this.keyCodec.encode(key), this.valueCodec.encode(value), flags);
    if (rc < 0) this.fail('bpf_map_update_elem', rc, 'update');
  }

  /** Stores a raw value (e.g. a socket fd into a sockhash). */
  setRaw(key: K, value: Buffer, flags = BPF_ANY): void {
    const rc = libbpf.bpf_map_update_elem(this.fd, this.keyCodec.encode(key), value, flags);
    if (rc < 0) this.fail('bpf_map_update_elem', rc, 'update');
  }

  get(key: K): V | undefined {
    const value = this.lookupRaw(key);
    return value === undefined ? undefined : this.valueCodec.decode(value);
  }

  /** For per-CPU maps: one decoded value per possible CPU. */
  getPerCpu(key: K): V[] | undefined {
    const value = this.lookupRaw(key);
    if (value === undefined) return undefined;
    const slot = Math.ceil(this.valueCodec.size / 8) * 8;
    const out: V[] = [];
    for (let at = 0; at + slot <= value.length; at += slot) out.push(this.valueCodec.decode(value.subarray(at, at + slot)));
    return out;
  }

  private lookupRaw(key: K): Buffer | undefined {
    const slot = Math.ceil(this.valueCodec.size / 8) * 8;
    const value = Buffer.alloc(this.perCpu ? slot * libbpf.libbpf_num_possible_cpus() : this.valueCodec.size);
    const rc = libbpf.bpf_map_lookup_elem(this.fd, this.keyCodec.encode(key), value);
    if (rc === -ENOENT) return undefined;
    if (rc < 0) this.fail('bpf_map_lookup_elem', rc, 'lookup');
    return value;
  }

  /** Returns whether the key was there. */
  delete(key: K): boolean {
    const rc = libbpf.bpf_map_delete_elem(this.fd, this.keyCodec.encode(key));
    if (rc === -ENOENT) return false;
    if (rc < 0) this.fail('bpf_map_delete_elem', rc, 'delete');
    return true;
  }

  *keys(): Generator<K> {
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keyCodec.size);
      const rc = libbpf.bpf_map_get_next_key(this.fd, prev, next);
      if (rc === -ENOENT) return;
      if (rc < 0) this.fail('bpf_map_get_next_key', rc, 'iteration');
      yield this.keyCodec.decode(next);
      prev = next;
    }
  }

  size(): number {
    let n = 0;
    for (const _ of this.keys()) n++;
    return n;
  }
}
