/**
 * Opening and loading a compiled BPF object: open -> (pin paths) -> load, with one cleanup
 * path. A program the verifier rejects raises a BpfError that carries the verifier's log.
 */
import { existsSync, mkdirSync } from 'node:fs';
import * as libbpf from '../../native/libbpf.js';
import type { BpfMapPtr, BpfObjectPtr, BpfProgramPtr } from '../../native/libbpf.js';
import type { Codec } from './codecs.js';
import { BpfError, hintFor } from './errors.js';
import { withLibbpfLog } from './libbpf-log.js';
import { objectInfo, requireBpffs } from './kernel-objects.js';
import { BpfMap } from './map.js';

/** Whether libbpf.so.1 loads on this host. */
export { libbpfAvailable } from '../../native/libbpf.js';

const VERIFIER_LOG_SIZE = 1 << 20;

export interface BpfProgram {
  readonly name: string;
  /** Kernel program id (as `bpftool prog` shows it). */
  readonly id: number;
  readonly section: string;
  readonly fd: number;
  /** @internal handle for attach calls */
  readonly ptr: BpfProgramPtr;
}

export interface OpenObjectOptions {
  /**
   * Directory in bpffs where every map of the object is pinned by name. A map already pinned
   * there is reused instead of created: that is how several objects, and a restarted agent,
   * share one set of maps.
   */
  pinMapsIn?: string;
}

export class BpfObject {
  private ptr: BpfObjectPtr | null;
  private loaded = false;

  private constructor(
    readonly path: string,
    ptr: BpfObjectPtr,
    private readonly options: OpenObjectOptions,
    /** Given to libbpf at open, which writes the verifier log of a failed load into it. */
    private readonly verifierLogBuf: Buffer,
  ) {
    this.ptr = ptr;
  }

  /** Opens and loads `path`; on failure nothing stays open. */
  static load(path: string, options: OpenObjectOptions = {}): BpfObject {
    const obj = BpfObject.open(path, options);
    try {
      obj.loadIntoKernel();
      return obj;
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  static open(path: string, options: OpenObjectOptions = {}): BpfObject {
    if (!libbpf.libbpfAvailable()) {
      throw new BpfError('AMBIT_E_BPF_LIBBPF_MISSING', 'libbpf.so.1 cannot be loaded', {
        hint: 'install the Debian package libbpf1 (make setup does)',
      });
    }
    if (!existsSync(path)) {
      throw new BpfError('AMBIT_E_BPF_OBJECT_MISSING', `BPF object ${path} does not exist`, {
        errno: 2,
        hint: 'objects are committed under bpf/; run `make bpf` to rebuild them',
      });
    }
    const logBuf = Buffer.alloc(VERIFIER_LOG_SIZE);
    const { result: ptr, log } = withLibbpfLog(() =>
      libbpf.bpf_object__open_file(path, libbpf.openOptions({ kernelLogBuf: logBuf })));
    if (ptr === null) {
      const errno = libbpf.errno();
      throw new BpfError('AMBIT_E_BPF_OPEN', `cannot open BPF object ${path}`, {
        call: 'bpf_object__open_file', errno, hint: 'is it an eBPF ELF object built by clang -target bpf? `make bpf` rebuilds ours', libbpfLog: log,
      });
    }
    return new BpfObject(path, ptr, options, logBuf);
  }

  private handle(): BpfObjectPtr {
    if (this.ptr === null) throw new BpfError('AMBIT_E_BPF_CLOSED', `BPF object ${this.path} is closed`);
    return this.ptr;
  }

  private *mapPtrs(): Generator<BpfMapPtr> {
    let map = libbpf.bpf_object__next_map(this.handle(), null);
    while (map !== null) {
      yield map;
      map = libbpf.bpf_object__next_map(this.handle(), map);
    }
  }

  private loadIntoKernel(): void {
    const obj = this.handle();
    if (this.options.pinMapsIn) {
      const dir = this.options.pinMapsIn;
      requireBpffs(dir);
      mkdirSync(dir, { recursive: true });
      for (const map of this.mapPtrs()) {
        const rc = libbpf.bpf_map__set_pin_path(map, `${dir}/${libbpf.bpf_map__name(map)}`);
        if (rc < 0) throw new BpfError('AMBIT_E_BPF_PIN', `cannot set pin path for map ${libbpf.bpf_map__name(map)}`, { call: 'bpf_map__set_pin_path', errno: -rc });
      }
    }
    const { result: rc, log } = withLibbpfLog(() => libbpf.bpf_object__load(obj));
    if (rc < 0) {
      const end = this.verifierLogBuf.indexOf(0);
      const verifierLog = this.verifierLogBuf.toString('utf8', 0, end < 0 ? this.verifierLogBuf.length : end).trim();
      const reuse = log.find((l) => l.includes('reuse pinned map'));
      if (verifierLog) {
        throw new BpfError('AMBIT_E_BPF_VERIFIER', `the kernel verifier rejected a program of ${this.path}`, {
          call: 'bpf_object__load', errno: -rc, verifierLog, libbpfLog: log,
          hint: 'the object does not fit this kernel: rebuild it with `make bpf` or check `ambit check`',
        });
      }
      throw new BpfError('AMBIT_E_BPF_LOAD', `cannot load BPF object ${this.path}`, {
        call: 'bpf_object__load', errno: -rc, libbpfLog: log,
        hint: reuse
          ? `a map pinned under ${this.options.pinMapsIn} has another layout (an older ambit?): remove the pinned maps`
          : (log.at(-1) ?? hintFor(-rc)),
      });
    }
    this.loaded = true;
  }

  program(name: string): BpfProgram {
    const ptr = libbpf.bpf_object__find_program_by_name(this.handle(), name);
    if (ptr === null) {
      throw new BpfError('AMBIT_E_BPF_NOT_FOUND', `program ${name} not found in ${this.path}`, {
        hint: `programs here: ${this.programNames().join(', ')}`,
      });
    }
    const fd = libbpf.bpf_program__fd(ptr);
    // struct bpf_prog_info starts { __u32 type; __u32 id; ... }.
    return { name, section: libbpf.bpf_program__section_name(ptr), fd, id: objectInfo(fd).readUInt32LE(4), ptr };
  }

  programNames(): string[] {
    const names: string[] = [];
    let prog = libbpf.bpf_object__next_program(this.handle(), null);
    while (prog !== null) {
      names.push(libbpf.bpf_program__name(prog));
      prog = libbpf.bpf_object__next_program(this.handle(), prog);
    }
    return names;
  }

  mapNames(): string[] {
    return [...this.mapPtrs()].map((m) => libbpf.bpf_map__name(m));
  }

  map<K, V>(name: string, keyCodec: Codec<K>, valueCodec: Codec<V>, perCpu = false): BpfMap<K, V> {
    if (!this.loaded) throw new BpfError('AMBIT_E_BPF_CLOSED', `map ${name}: object ${this.path} is not loaded`);
    const ptr = libbpf.bpf_object__find_map_by_name(this.handle(), name);
    if (ptr === null) {
      throw new BpfError('AMBIT_E_BPF_NOT_FOUND', `map ${name} not found in ${this.path}`, { hint: `maps here: ${this.mapNames().join(', ')}` });
    }
    const keySize = libbpf.bpf_map__key_size(ptr);
    const valueSize = libbpf.bpf_map__value_size(ptr);
    if (keySize !== keyCodec.size || (valueSize !== valueCodec.size && !perCpu)) {
      throw new BpfError('AMBIT_E_BPF_MAP', `map ${name}: codec sizes ${keyCodec.size}/${valueCodec.size} do not match the object's ${keySize}/${valueSize}`, {
        hint: 'run `make bpf` to regenerate src/ebpf/layout.generated.ts',
      });
    }
    return new BpfMap(name, libbpf.bpf_map__fd(ptr), keyCodec, valueCodec, perCpu);
  }

  /** Frees the object and its fds. Pinned maps and links stay in the kernel. */
  close(): void {
    if (this.ptr === null) return;
    libbpf.bpf_object__close(this.ptr);
    this.ptr = null;
  }
}
