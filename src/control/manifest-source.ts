/**
 * A directory of manifests as a config source: every `*.yaml`, `*.yml` and `*.json` file under
 * it (hidden files and directories skipped, as editors keep their swap files there), watched
 * for changes. Each file is validated as `ambit analyze` does; what is valid flows into the
 * model, what is not is reported and does not replace what was accepted before:
 *
 * - an invalid resource keeps its last accepted version from the same file (a typo in a
 *   VirtualService does not remove the routes it had);
 * - a file that cannot be read into resources at all (a YAML syntax error, a half-written
 *   file) keeps all of its last accepted resources;
 * - a deleted file takes its resources with it.
 *
 * Pods in the directory are workloads when they carry what the API server would have filled in:
 * `spec.nodeName` and `status.podIP` (the output of `kubectl get pod -o yaml`, or a hand-written
 * description of a process on a host).
 */
import { readdirSync, readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { join, relative } from 'node:path';
import { formatDiagnostic, parseManifests, type Diagnostic, type PodResource, type Resource } from '../kube/manifests.js';
import type { ConfigSource } from '../config/source.js';
import type { PodInfo, SourceSnapshot } from '../config/model.js';
import { validateMeshObject } from '../config/validate.js';

const MANIFEST = /\.(ya?ml|json)$/;

interface FileState {
  text: string;
  /** What this file contributes: its last accepted resources, by identity. */
  accepted: Map<string, Resource>;
  diagnostics: Diagnostic[];
}

export interface ManifestDirOptions {
  /** Called with every diagnostic of the current files after each change (errors and warnings). */
  onDiagnostics?: (diagnostics: Diagnostic[]) => void;
  /** A full rescan every so often, in case a watch event was lost (ms; 0 = never). */
  rescanMs?: number;
}

const identity = (r: { apiVersion?: string; kind?: string; meta?: { namespace: string; name: string } }) =>
  `${(r.apiVersion ?? '').split('/').slice(0, -1).join('/')}/${r.kind}/${r.meta?.namespace}/${r.meta?.name}`;

export class ManifestDirSource implements ConfigSource {
  private readonly files = new Map<string, FileState>();
  private readonly watchers = new Map<string, FSWatcher>();
  private timer?: NodeJS.Timeout;
  private rescan?: NodeJS.Timeout;
  private onChange?: (snapshot: SourceSnapshot) => void;
  private last = '';

  constructor(readonly dir: string, private readonly opts: ManifestDirOptions = {}) {}

  start(onChange: (snapshot: SourceSnapshot) => void): void {
    this.onChange = onChange;
    this.scan();
    const every = this.opts.rescanMs ?? 10_000;
    if (every > 0) this.rescan = setInterval(() => this.scan(), every).unref();
  }

  stop(): void {
    clearTimeout(this.timer);
    clearInterval(this.rescan);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    this.onChange = undefined;
  }

  /** The diagnostics of the files as they are now. */
  diagnostics(): Diagnostic[] {
    return [...this.files.values()].flatMap((f) => f.diagnostics);
  }

  /** Re-reads the directory now; emits a snapshot when what it contributes changed. */
  scan(): void {
    const seen = new Set<string>();
    const dirs = new Set<string>();
    const walk = (dir: string) => {
      let entries;
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return; // gone or unreadable: its files are treated as deleted
      }
      dirs.add(dir);
      for (const e of entries) {
        if (e.name.startsWith('.')) continue;
        const path = join(dir, e.name);
        if (e.isDirectory()) walk(path);
        else if ((e.isFile() || e.isSymbolicLink()) && MANIFEST.test(e.name)) {
          seen.add(path);
          this.readFile(path);
        }
      }
    };
    walk(this.dir);
    for (const path of [...this.files.keys()]) if (!seen.has(path)) this.files.delete(path);
    this.watch(dirs);
    this.emit();
  }

  private readFile(path: string): void {
    let text: string;
    try {
      if (!statSync(path).isFile()) return;
      text = readFileSync(path, 'utf8');
    } catch {
      return;
    }
    const prev = this.files.get(path);
    if (prev && prev.text === text) return;
    const file = relative(this.dir, path) || path;
    const { resources, diagnostics } = parseManifests([{ file, text, dir: this.dir }], { validate: validateMeshObject, imagesOnly: true });
    const accepted = new Map<string, Resource>();
    for (const r of resources) accepted.set(identity(r), r);
    const errors = diagnostics.filter((d) => d.severity === 'error');
    const held: Diagnostic[] = [];
    if (prev) {
      // Rejected resources keep their last accepted version; an error that names no resource
      // (the document could not be read) keeps everything the file had.
      const unnamed = errors.some((d) => !d.kind || !d.name);
      for (const [key, r] of prev.accepted) {
        if (accepted.has(key)) continue;
        const rejected = errors.some((d) => d.kind === r.kind && d.name === r.meta.name && (d.namespace ?? '') === r.meta.namespace);
        if (unnamed || rejected) {
          accepted.set(key, r);
          held.push({ severity: 'warning', source: r.source, kind: r.kind, namespace: r.meta.namespace || undefined, name: r.meta.name, message: 'the last accepted version stays in effect until this file is fixed' });
        }
      }
    }
    this.files.set(path, { text, accepted, diagnostics: [...diagnostics, ...held] });
  }

  private watch(dirs: Set<string>): void {
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, () => {
          clearTimeout(this.timer);
          this.timer = setTimeout(() => this.scan(), 50);
        });
        w.on('error', () => {
          w.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch {
        // Removed between the walk and the watch: the next scan sees it gone.
      }
    }
  }

  private emit(): void {
    const resources = [...this.files.entries()].sort(([a], [b]) => a.localeCompare(b)).flatMap(([, f]) => [...f.accepted.values()]);
    const pods = resources.filter((r): r is PodResource => r.kind === 'Pod' && !('other' in r)).flatMap((p) => podInfo(p) ?? []);
    const snapshot: SourceSnapshot = { resources: resources.filter((r) => r.kind !== 'Pod'), pods };
    const diagnostics = this.diagnostics();
    const fingerprint = JSON.stringify([snapshot, diagnostics.map(formatDiagnostic)]);
    if (fingerprint === this.last) return;
    this.last = fingerprint;
    this.opts.onDiagnostics?.(diagnostics);
    this.onChange?.(snapshot);
  }
}

/** A Pod manifest as a running workload: only with the node and address the API server would have set. */
function podInfo(p: PodResource): PodInfo | undefined {
  const raw = p.raw as { metadata?: { uid?: unknown }; spec?: { nodeName?: unknown }; status?: { podIP?: unknown } };
  const node = raw.spec?.nodeName;
  const ip = raw.status?.podIP;
  if (typeof node !== 'string' || typeof ip !== 'string') return undefined;
  const uid = typeof raw.metadata?.uid === 'string' ? raw.metadata.uid : `${p.meta.namespace}/${p.meta.name}`;
  return { uid, namespace: p.meta.namespace, name: p.meta.name, node, ip, labels: p.meta.labels, spec: p.spec };
}

/** Several sources as one: resources and pods together, a later source's resource replacing an earlier one's. */
export class MergedSource implements ConfigSource {
  private readonly latest: (SourceSnapshot | undefined)[];

  constructor(private readonly sources: ConfigSource[]) {
    this.latest = sources.map(() => undefined);
  }

  start(onChange: (snapshot: SourceSnapshot) => void): void {
    this.sources.forEach((s, i) => s.start((snap) => {
      this.latest[i] = snap;
      const byKey = new Map<string, Resource>();
      const pods = new Map<string, PodInfo>();
      for (const snapshot of this.latest) {
        for (const r of snapshot?.resources ?? []) byKey.set(identity(r), r);
        for (const p of snapshot?.pods ?? []) pods.set(p.uid, p);
      }
      onChange({ resources: [...byKey.values()], pods: [...pods.values()] });
    }));
  }

  stop(): void {
    for (const s of this.sources) s.stop();
  }
}
