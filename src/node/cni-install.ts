/**
 * Installs ambit's chained CNI plugin on a node: the `ambit-cni` executable into the host's CNI
 * bin dir, and an entry `{"type": "ambit-cni", "socket": …}` at the end of the plugin list of the
 * node's primary network config, so that the container runtime runs it after the primary plugin
 * for every pod sandbox (see docs/KUBERNETES.md, "Enrollment in Kubernetes"). The binary goes in
 * first and leaves last: a config naming a plugin that is not there fails every sandbox.
 *
 * Next to the binary goes the marker `ambit-cni.installed`: "ambit is installed on this node". The
 * agent's socket lives in a tmpfs, so after a reboot it is gone while the chain entry, the binary
 * and the marker (all on the host's disk) stay; the plugin then fails sandboxes ("try again")
 * until the agent is back, where without the marker it would pass pods through unmeshed. The
 * marker is written after the binary and before the entry, and removed first on uninstall: an
 * uninstall cut short after that (a config it cannot edit) leaves a plugin that passes through.
 *
 * Which file is primary is the runtime's rule, not ours. containerd (go-cni `loadFromConfDir`)
 * lists the dir with libcni's `ConfFiles(dir, [".conf", ".conflist", ".json"])` — entries that are
 * not directories and whose extension is exactly one of those; ConfFiles itself does not sort —
 * sorts the paths with Go's `sort.Strings` (byte order) and takes the first (`max_conf_num`
 * defaults to 1). Kubelet's old dockershim and Istio's install-cni (`getDefaultCNINetwork`) walk
 * the same sorted list but skip files that do not load, where go-cni fails outright. We skip
 * them too, with a warning: on containerd such a node has no pod network until that file is
 * fixed anyway, and the watch edits the fixed file then.
 *
 * A single-plugin `.conf`/`.json` cannot chain, so it is converted into a `.conflist` of the
 * original plugin followed by ours, and the original removed. Istio does the same (its
 * `insertCNIConfig` wraps the plugin into a list named `k8s-pod-network` with cniVersion 0.3.1,
 * writes it over `x.conf` and renames that to `x.conflist`); we keep the original's `name` and
 * `cniVersion` instead — the network name keys the runtime's cached results
 * (`/var/lib/cni/results/<name>-…`) that DEL of already running pods needs — and remember the
 * original text in the list so that uninstall puts it back byte for byte (Istio's cleanup only
 * drops its own entry and leaves the list).
 *
 * Every write is a temp file in the same dir and a rename: the runtime may read the config or
 * exec the binary at any moment. Temp names end in `.tmp`, never in a config extension, so a
 * runtime listing the dir meanwhile never picks a half-written one up. Only changes are written:
 * our own write fires the dir watch, and the pass it triggers must find nothing to do.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  closeSync, fchmodSync, fsyncSync, openSync, readdirSync, readFileSync, renameSync, statSync,
  unlinkSync, watch, writeSync, type FSWatcher, type Stats,
} from 'node:fs';
import { basename, extname, join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import { silentLogger } from '../telemetry/log.js';

/** The plugin's `type` in the config, which is also its executable's name in the bin dir. */
export const CNI_PLUGIN_TYPE = 'ambit-cni';
/** Next to the plugin in the bin dir (`<plugin>.installed`, the name the plugin derives from its own path). */
export const INSTALLED_MARKER = `${CNI_PLUGIN_TYPE}.installed`;
/** What the marker says to whoever finds it on a node. */
const MARKER_TEXT = 'ambit is installed on this node. While this file exists, the ambit-cni plugin fails new pod\n'
  + 'sandboxes with "try again" whenever the ambit node agent does not answer, so that no meshed pod\n'
  + 'starts outside the mesh. `ambit uninstall` removes it. Delete it by hand, with the ambit-cni entry\n'
  + 'of the node\'s CNI config, only on a node ambit was removed from while the node was away.\n';
/** Top-level field of a list ambit made out of a single-plugin config: that config's file name. */
export const CONVERTED_FROM_KEY = 'ambit.dev/converted-from';
/**
 * Top-level field of such a list, and of a primary CNI's own list ambit added its entry to: the
 * file's text before, restored verbatim by uninstall when the rest of the list is still that. The
 * runtime ignores top-level fields it does not know; a primary CNI that rewrites its file drops it.
 */
export const ORIGINAL_KEY = 'ambit.dev/original';

/** go-cni's (containerd's) extensions; kubelet and CRI-O read the same set. */
const CONFIG_EXTENSIONS = new Set(['.conf', '.conflist', '.json']);
const TEMP_PREFIX = '.ambit-';
const TEMP_SUFFIX = '.tmp';
/** Leftover temp files older than this are a crashed writer's (a live one renames in milliseconds). */
const STALE_TEMP_MS = 60_000;
/** Writers (a `cp`, another CNI's installer) emit bursts of events; act once they are done. */
const DEBOUNCE_MS = 100;
/** This many re-adds of a removed entry within the window: another writer removes it on every change. */
const FIGHT_COUNT = 5;
const FIGHT_WINDOW_MS = 60_000;

export interface CniInstallerOptions {
  /** The plugin executable in the image. */
  binary: string;
  /** The host's CNI bin dir as the agent sees it (e.g. /host/opt/cni/bin). */
  binDir: string;
  /** The host's CNI config dir as the agent sees it (e.g. /host/etc/cni/net.d). */
  confDir: string;
  /** The agent's socket path as the HOST sees it (what the plugin connects to), e.g. /var/run/ambit/cni.sock. */
  socket: string;
  log?: Logger;
  /** Re-check the config this often (ms, default 5000); another CNI (or its DaemonSet) may rewrite it. */
  pollMs?: number;
  /**
   * The primary CNI's plugin type (`--cni-primary`, e.g. cilium-cni, calico, aws-cni, flannel,
   * ptp): chain only into the config whose first plugin has this type, and nothing meanwhile.
   * Alternatives are comma-separated (`gke,ptp`: GKE's netd writes either, by node version).
   * Unset: the runtime's primary config (the first in byte order), whatever it is.
   */
  primary?: string;
}

/** `updated`: our entry was there with another socket (or twice) and was fixed in place. */
export type EntryResult = 'added' | 'updated' | 'present';

export interface InstallResult {
  binary: 'written' | 'unchanged';
  /** The install marker next to the binary. */
  marker: 'written' | 'unchanged';
  /** The config file that holds our entry (a path in `confDir`). */
  config: string;
  entry: EntryResult;
  /** With a `primary` type: the file the runtime uses instead (it sorts first), when it is not `config`. */
  shadowedBy?: string;
}

export class CniInstallError extends Error {
  override readonly name = 'CniInstallError';
  readonly code = 'AMBIT_E_CNI_INSTALL';
  constructor(message: string, options?: { cause: unknown }) {
    super(message, options);
  }
}

type Json = Record<string, unknown>;

/** A config file that loads: a `.conflist` with a `plugins` array of objects, or a single plugin with a `type`. */
interface ConfigFile {
  name: string;
  path: string;
  text: string;
  json: Json;
  /** A plugin list (`.conflist`), as opposed to a single plugin config (`.conf`/`.json`). */
  list: boolean;
  mode: number;
}

export class CniInstaller {
  private readonly log: Logger;
  private readonly pollMs: number;
  private readonly target: string;
  private readonly marker: string;
  /** Source and destination stats last seen identical, so an unchanged binary is not hashed every pass. */
  private verifiedBinary?: string;
  private lastSkipped = '';
  private lastError?: string;
  private lastResult?: InstallResult;
  /** When the entry was last re-added to the file that had it (another writer removed it), within the fight window. */
  private readds: number[] = [];
  private lastFightWarning = 0;
  private watchedInode?: string;
  private timer?: NodeJS.Timeout;
  private debounce?: NodeJS.Timeout;
  private watcher?: FSWatcher;

  constructor(private readonly opts: CniInstallerOptions) {
    this.log = (opts.log ?? silentLogger).child({ part: 'cni-install' });
    this.pollMs = opts.pollMs ?? 5000;
    this.target = join(opts.binDir, CNI_PLUGIN_TYPE);
    this.marker = join(opts.binDir, INSTALLED_MARKER);
  }

  /** Copies the binary (if different), writes the marker and adds ambit's entry to the primary config (if missing). Returns what it did. */
  install(): InstallResult {
    const binary = this.installBinary();
    const marker = this.installMarker();
    const { config, entry, shadowedBy } = this.installEntry();
    return { binary, marker, config, entry, ...(shadowedBy ? { shadowedBy } : {}) };
  }

  /** install() now, then again whenever the config dir changes (fs.watch, debounced) and every pollMs; errors logged, retried. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.pass(), this.pollMs).unref();
    removeStaleTemps([this.opts.binDir, this.opts.confDir], this.log);
    this.pass();
  }

  /** The last pass's outcome, as a line of the node's `ambit check` (`/healthz/check`). */
  check(): { name: string; ok: boolean; detail: string; hint?: string } {
    const name = 'CNI plugin chained';
    const result = this.lastResult;
    if (result?.shadowedBy) {
      return {
        name, ok: false,
        detail: `${CNI_PLUGIN_TYPE} last in ${basename(result.config)}, but the runtime uses ${result.shadowedBy}, which sorts first`,
        hint: `remove ${result.shadowedBy} from the node's CNI config dir if it is a leftover, or give cni.chained the type of its first plugin`,
      };
    }
    const fights = this.recentReadds();
    if (result && fights >= FIGHT_COUNT) {
      return {
        name, ok: false,
        detail: `${CNI_PLUGIN_TYPE} last in ${basename(result.config)}, but another writer removed it ${fights} times in the last minute`,
        hint: 'another agent rewrites that file on every change (Cilium does with cni.exclusive=true: set cni.exclusive=false); pods made while the entry is missing start outside the mesh until the agent enrolls them',
      };
    }
    if (result) return { name, ok: true, detail: `${CNI_PLUGIN_TYPE} last in ${basename(result.config)}` };
    return {
      name, ok: false, detail: this.lastError ?? 'not installed yet',
      hint: this.opts.primary
        ? `the ${this.opts.primary} plugin writes its config once its own agent runs; check that it does, and cni.chained, cni.confDir and cni.binDir of the install`
        : 'the node\'s primary CNI must have written its config first; check cni.confDir and cni.binDir of the install',
    };
  }

  stop(): void {
    clearInterval(this.timer);
    clearTimeout(this.debounce);
    this.timer = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }

  /** Stops the loop (it would put the entry back), then removeCniInstall: returns what it removed. */
  uninstall(): string[] {
    this.stop();
    this.verifiedBinary = undefined;
    return removeCniInstall({ binDir: this.opts.binDir, confDir: this.opts.confDir, log: this.log });
  }

  /** One pass of the loop: errors are expected while the primary CNI is not installed yet, so they are logged once per distinct message. */
  private pass(): void {
    if (!this.timer) return;
    // The events of a dir being replaced are the old watch's last: follow the new dir now, not at the next poll.
    this.ensureWatch();
    try {
      const result = this.install();
      const changed = result.binary === 'written' || result.marker === 'written' || result.entry !== 'present';
      this.log[changed || this.lastError ? 'info' : 'debug'](result, 'CNI plugin installed');
      if (result.shadowedBy && result.shadowedBy !== this.lastResult?.shadowedBy) {
        this.log.warn({ config: result.config, shadowedBy: result.shadowedBy, primary: this.opts.primary }, `chained into ${this.opts.primary}'s config, but the runtime uses ${result.shadowedBy} (first in byte order): pods get neither until it goes`);
      }
      if (result.entry === 'added' && this.lastResult?.config === result.config) this.noteReadd(result.config);
      this.lastError = undefined;
      this.lastResult = result;
    } catch (err) {
      const message = (err as Error).message;
      this.log[message === this.lastError ? 'debug' : 'warn']({ err: message, retryInMs: this.pollMs }, 'CNI plugin not installed; retrying');
      this.lastError = message;
      this.lastResult = undefined;
    }
  }

  /**
   * A re-add to the same file: another writer dropped our entry. Some rewrite the file on every
   * change in the dir (Cilium with cni.exclusive=true), and the two loops then chase each other;
   * that is logged once a minute and shown by check().
   */
  private noteReadd(config: string): void {
    const now = Date.now();
    this.readds = [...this.readds.filter((t) => now - t < FIGHT_WINDOW_MS), now];
    if (this.readds.length >= FIGHT_COUNT && now - this.lastFightWarning >= FIGHT_WINDOW_MS) {
      this.lastFightWarning = now;
      this.log.error({ file: config, readds: this.readds.length, windowMs: FIGHT_WINDOW_MS }, 'another writer keeps removing the ambit-cni entry; for Cilium set cni.exclusive=false');
    }
  }

  private recentReadds(): number {
    const now = Date.now();
    return this.readds.filter((t) => now - t < FIGHT_WINDOW_MS).length;
  }

  /**
   * (Re)creates the dir watch; a failed one (dir not there yet, removed) is retried at the next
   * poll. A dir removed and made again (a CNI installer that replaces the whole dir) leaves an
   * inotify watch on the old inode that never fires again, so the watch follows the dir's inode.
   */
  private ensureWatch(): void {
    if (this.watcher) {
      if (inodeOf(this.opts.confDir) === this.watchedInode) return;
      this.log.debug({ dir: this.opts.confDir }, 'the CNI config dir was replaced; watching the new one');
      this.watcher.close();
      this.watcher = undefined;
    }
    try {
      this.watchedInode = inodeOf(this.opts.confDir);
      const watcher = watch(this.opts.confDir, { persistent: false }, (_event, file) => {
        // The dir itself gone (inotify's DELETE_SELF, reported under the dir's name): this watch is dead.
        if (file === basename(this.opts.confDir) && inodeOf(this.opts.confDir) !== this.watchedInode) this.watchedInode = 'gone';
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => this.pass(), Math.min(DEBOUNCE_MS, this.pollMs)).unref();
      });
      watcher.on('error', (err) => {
        this.log.debug({ dir: this.opts.confDir, err: err.message }, 'watch failed; polling');
        watcher.close();
        if (this.watcher === watcher) this.watcher = undefined;
      });
      this.watcher = watcher;
    } catch (err) {
      this.log.debug({ dir: this.opts.confDir, err: (err as Error).message }, 'cannot watch the CNI config dir; polling');
    }
  }

  private installBinary(): 'written' | 'unchanged' {
    const source = this.opts.binary;
    let src: Stats;
    try {
      src = statSync(source);
    } catch (err) {
      throw new CniInstallError(`plugin binary ${source}: ${(err as Error).message}`, { cause: err });
    }
    const dest = statOrUndefined(this.target);
    if (dest && (dest.mode & 0o777) === 0o755 && dest.size === src.size) {
      const key = `${statKey(src)}|${statKey(dest)}`;
      if (this.verifiedBinary === key) return 'unchanged';
      if (sha256(source) === sha256(this.target)) {
        this.verifiedBinary = key;
        return 'unchanged';
      }
    }
    writeAtomic(this.target, readFileSync(source), 0o755);
    this.verifiedBinary = `${statKey(src)}|${statKey(statSync(this.target))}`;
    this.log.info({ file: this.target }, 'CNI plugin binary written');
    return 'written';
  }

  /** The marker, rewritten only when missing or altered (our own writes must not fire the loop again). */
  private installMarker(): 'written' | 'unchanged' {
    const stats = statOrUndefined(this.marker);
    if (stats?.isFile() && (stats.mode & 0o777) === 0o644 && readOrUndefined(this.marker) === MARKER_TEXT) return 'unchanged';
    writeAtomic(this.marker, MARKER_TEXT, 0o644);
    this.log.info({ file: this.marker }, 'CNI install marker written: sandboxes fail closed while the agent is away');
    return 'written';
  }

  private installEntry(): { config: string; entry: EntryResult; shadowedBy?: string } {
    const dir = this.opts.confDir;
    const { usable, skipped } = scanConfigs(dir);
    this.reportSkipped(skipped);
    const want = this.opts.primary;
    const ignored = skipped.length ? ` (ignored: ${skipped.join('; ')})` : '';
    const types = want?.split(',');
    let primary = types ? usable.find((f) => types.includes(firstType(f))) : usable[0];
    if (!primary && want) {
      const found = usable.map((f) => `${f.name}: ${firstType(f)}`).join(', ');
      throw new CniInstallError(`no ${want} network config in ${dir} yet (cni.chained ${want}): nothing chained until ${want} writes it${found ? `; found ${found}` : ''}${ignored}`);
    }
    if (!primary) throw new CniInstallError(`no CNI network config in ${dir}: the primary CNI must be installed first${ignored}`);
    primary = rewrittenOriginal(primary, usable) ?? primary;
    const config = primary.list ? primary.path : this.convert(primary, usable);
    const entry = primary.list ? this.addToList(primary) : 'added';
    // containerd takes the first file by name, loading or not (kubelet and Istio skip one that does not load).
    const first = configNames(dir)[0];
    return { config, entry, ...(want && first && first !== basename(config) ? { shadowedBy: first } : {}) };
  }

  /** Skipped files are warned about when the set changes, not every poll. */
  private reportSkipped(skipped: string[]): void {
    const summary = skipped.join('; ');
    if (summary && summary !== this.lastSkipped) {
      this.log.warn({ dir: this.opts.confDir, ignored: skipped }, 'ignoring CNI config files that do not load (as kubelet and Istio do; containerd fails on them if they sort first)');
    }
    this.lastSkipped = summary;
  }

  private addToList(file: ConfigFile): EntryResult {
    const { json, entry } = withEntry(file.json, this.opts.socket);
    if (entry === 'present') return entry;
    // The text as the primary CNI wrote it (its indentation, key order, final newline), for uninstall.
    const original = entry === 'added' && typeof file.json[ORIGINAL_KEY] !== 'string' ? { [ORIGINAL_KEY]: file.text } : {};
    writeJson(file.path, { ...json, ...original }, file.mode);
    this.log.info({ file: file.path, socket: this.opts.socket, entry }, 'ambit-cni entry written');
    return entry;
  }

  /** Turns a single-plugin config into a list ending with ours; returns the list's path. */
  private convert(source: ConfigFile, usable: ConfigFile[]): string {
    const target = conversionTarget(source, usable);
    if (!chainable(source.json.cniVersion)) {
      this.log.warn({ file: source.path, cniVersion: source.json.cniVersion }, 'the primary CNI config predates cniVersion 0.3.0; chained plugins get no prevResult');
    }
    writeJson(target, convertToList(source, this.opts.socket), source.mode);
    for (const stale of usable) {
      if (stale.path !== target && convertedFrom(stale) === source.name) removeFile(stale.path, this.log);
    }
    removeFile(source.path, this.log);
    this.log.info({ from: source.path, to: target }, 'single-plugin CNI config converted to a list with the ambit-cni entry');
    return target;
  }
}

/**
 * What uninstall does, also for `ambit node cleanup` on a node whose agent is gone: removes the
 * marker (from then on a plugin that cannot reach the agent lets pods through), our entry from
 * every config that has one — a list ambit converted goes back to the original single-plugin
 * file, a primary CNI's list to its original text — then the binary. Idempotent; returns what it
 * removed or restored, one line each. Throws CniInstallError naming the file when a config that
 * mentions the plugin is not valid JSON, after cleaning every other one (the binary is then left
 * in place).
 */
export function removeCniInstall(opts: { binDir: string; confDir: string; log?: Logger }): string[] {
  const log = opts.log ?? silentLogger;
  const done: string[] = [];
  const marker = join(opts.binDir, INSTALLED_MARKER);
  if (removeFile(marker, log)) done.push(`removed ${marker} (install marker)`);
  const failed: string[] = [];
  for (const name of configNames(opts.confDir)) {
    try {
      const what = removeEntry(opts.confDir, name, log);
      if (what) done.push(what);
    } catch (err) {
      failed.push((err as Error).message);
    }
  }
  if (failed.length) throw new CniInstallError(failed.join('; '));
  const target = join(opts.binDir, CNI_PLUGIN_TYPE);
  if (removeFile(target, log)) {
    log.info({ file: target }, 'CNI plugin binary removed');
    done.push(`removed ${target} (plugin binary)`);
  }
  removeStaleTemps([opts.binDir, opts.confDir], log);
  return done;
}

function removeEntry(dir: string, name: string, log: Logger): string | undefined {
  const path = join(dir, name);
  const text = readOrUndefined(path);
  if (text === undefined || !text.includes(CNI_PLUGIN_TYPE)) return undefined;
  const json = parseObject(text);
  if (typeof json === 'string') throw new CniInstallError(`${path}: ${json}; cannot remove the ${CNI_PLUGIN_TYPE} entry`);
  if (!Array.isArray(json.plugins) || !json.plugins.some(isOurs)) return undefined;
  const rest = (json.plugins as unknown[]).filter((p) => !isOurs(p));
  const from = convertedFrom({ json, list: true });
  const mode = statOrUndefined(path)?.mode ?? 0o644;
  if (from !== undefined && rest.length === 1) return restoreOriginal(path, json, from, mode, log);
  const { [CONVERTED_FROM_KEY]: _from, [ORIGINAL_KEY]: original, ...kept } = json;
  const restored = { ...kept, plugins: rest };
  const parsed = typeof original === 'string' ? parseObject(original) : undefined;
  if (typeof original === 'string' && typeof parsed === 'object' && isDeepStrictEqual(parsed, restored)) {
    writeAtomic(path, original, mode & 0o777);
    log.info({ file: path }, 'ambit-cni entry removed; the file is back to its original text');
    return `removed the ${CNI_PLUGIN_TYPE} entry from ${path} (its original text restored)`;
  }
  writeJson(path, restored, mode);
  log.info({ file: path }, 'ambit-cni entry removed');
  return `removed the ${CNI_PLUGIN_TYPE} entry from ${path}`;
}

/** Undoes a conversion, unless the primary CNI has meanwhile written its single-plugin file again (then that one wins). */
function restoreOriginal(path: string, list: Json, from: string, mode: number, log: Logger): string {
  const original = join(path, '..', from);
  let what: string;
  if (statOrUndefined(original)) {
    log.info({ file: path, original }, 'the original CNI config was rewritten since the conversion; removing the converted list');
    what = `removed ${path} (ambit's conversion of ${from}, which its CNI has written again)`;
  } else {
    writeAtomic(original, originalText(list), mode & 0o777);
    log.info({ file: path, original }, 'converted CNI config restored to the original');
    what = `removed ${path} and restored ${original} (the single-plugin config it was converted from)`;
  }
  removeFile(path, log);
  return what;
}

/** The entry ambit adds, keys in this order. */
function ourEntry(socket: string): Json {
  return { type: CNI_PLUGIN_TYPE, socket };
}

function isOurs(plugin: unknown): boolean {
  return isObject(plugin) && plugin.type === CNI_PLUGIN_TYPE;
}

/** The list with exactly one entry of ours pointing at `socket`: appended last when missing, fixed in place (first one kept) otherwise. */
function withEntry(list: Json, socket: string): { json: Json; entry: EntryResult } {
  const plugins = list.plugins as unknown[];
  const first = plugins.find(isOurs) as Json | undefined;
  if (!first) return { json: { ...list, plugins: [...plugins, ourEntry(socket)] }, entry: 'added' };
  if (first.socket === socket && plugins.filter(isOurs).length === 1) return { json: list, entry: 'present' };
  const fixed = plugins.filter((p) => p === first || !isOurs(p)).map((p) => (p === first ? { ...first, socket } : p));
  return { json: { ...list, plugins: fixed }, entry: 'updated' };
}

/**
 * The network config the container runtime uses in `dir` (the first in byte order that loads,
 * by the rule this installer chains by), for `ambit check --pre`: its file name, its first
 * plugin's type and the network's name; undefined when none loads.
 */
export function runtimeConfig(dir: string): { name: string; type: string; network: string } | undefined {
  const first = scanConfigs(dir).usable[0];
  return first && { name: first.name, type: firstType(first), network: typeof first.json.name === 'string' ? first.json.name : '' };
}

/** The type of a config's first plugin (a single-plugin config's own): the network's primary plugin. */
function firstType(file: ConfigFile): string {
  const plugin = file.list ? (file.json.plugins as Json[])[0] : file.json;
  return typeof plugin?.type === 'string' ? plugin.type : '';
}

/** `{cniVersion, name, plugins: [original minus cniVersion/name, ours]}` plus the marks uninstall undoes it by. */
function convertToList(source: ConfigFile, socket: string): Json {
  const { cniVersion, name, ...plugin } = source.json;
  return {
    ...(cniVersion === undefined ? {} : { cniVersion }),
    // libcni's own up-conversion (ConfListFromConf) uses the plugin's name, "" when it has none.
    name: name ?? '',
    plugins: [plugin, ourEntry(socket)],
    [CONVERTED_FROM_KEY]: source.name,
    [ORIGINAL_KEY]: source.text,
  };
}

/**
 * The converted list's name. It must sort first, or the runtime keeps using some other config.
 * `x.conf` → `x.conflist` sorts right after the original (`.conf` is a prefix of `.conflist`), so
 * only names starting with `x.conf` followed by a byte below `l` can come between
 * (`x.conf.json`, `x.conf-old.conf`); `x.json` → `x.conflist` sorts before the original (`c` <
 * `j`). When a config that loads would sort before the new name, or the name is taken by a file
 * that is not our conversion of this original, the list is named `x-ambit.conflist`: `-` sorts
 * before `.`, so it sorts before the original itself, hence before every config that loads.
 */
function conversionTarget(source: ConfigFile, usable: ConfigFile[]): string {
  const base = source.name.slice(0, -extname(source.name).length);
  // Only configs that sorted after the original (or its earlier conversion) must stay after the
  // list; without a --cni-primary that is every other one. One that sorted before shadows it either way.
  const start = [source, ...usable.filter((f) => convertedFrom(f) === source.name)].map((f) => f.name).sort(compareNames)[0]!;
  const others = usable.filter((f) => f !== source && convertedFrom(f) !== source.name && compareNames(f.name, start) > 0).map((f) => f.name);
  for (const name of [`${base}.conflist`, `${base}-ambit.conflist`]) {
    const path = join(source.path, '..', name);
    const taken = statOrUndefined(path) !== undefined && !usable.some((f) => f.name === name && convertedFrom(f) === source.name);
    if (!taken && others.every((other) => compareNames(name, other) < 0)) return path;
  }
  throw new CniInstallError(`cannot convert ${source.path} to a plugin list: ${base}.conflist and ${base}-ambit.conflist are taken or would not be the first config`);
}

/**
 * When the primary is our conversion of `x.conf` and `x.conf` is back (the primary CNI's
 * DaemonSet rewrote it), the fresh file is what to convert. With the usual naming `x.conf` sorts
 * first anyway; this matters for `x-ambit.conflist`, which would otherwise shadow it forever.
 */
function rewrittenOriginal(primary: ConfigFile, usable: ConfigFile[]): ConfigFile | undefined {
  const from = convertedFrom(primary);
  return from === undefined ? undefined : usable.find((f) => f.name === from && !f.list);
}

/** The original file name a list of ours was converted from (only a plain config name is trusted: it is joined to the dir). */
function convertedFrom(file: Pick<ConfigFile, 'json' | 'list'>): string | undefined {
  const from = file.json[CONVERTED_FROM_KEY];
  if (!file.list || typeof from !== 'string' || basename(from) !== from) return undefined;
  return CONFIG_EXTENSIONS.has(extname(from)) && extname(from) !== '.conflist' ? from : undefined;
}

/** The original text when the list still holds that same plugin config, else the list's plugin rebuilt as a single config. */
function originalText(list: Json): string {
  const plugin = (list.plugins as unknown[]).find((p) => !isOurs(p)) as Json;
  const original = typeof list[ORIGINAL_KEY] === 'string' ? (list[ORIGINAL_KEY] as string) : undefined;
  const parsed = original === undefined ? undefined : parseObject(original);
  if (original !== undefined && typeof parsed === 'object') {
    const { cniVersion, name, ...rest } = parsed;
    if (cniVersion === list.cniVersion && (name ?? '') === list.name && isDeepStrictEqual(rest, plugin)) return original;
  }
  return `${JSON.stringify({ ...(list.cniVersion === undefined ? {} : { cniVersion: list.cniVersion }), name: list.name, ...plugin }, null, 2)}\n`;
}

/** cniVersion 0.3.0 introduced chaining (`prevResult`); absent means 0.1.0. */
function chainable(cniVersion: unknown): boolean {
  if (typeof cniVersion !== 'string') return false;
  const [major = 0, minor = 0] = cniVersion.split('.').map(Number);
  return major > 0 || minor >= 3;
}

/** Config file names in the dir in the runtime's order (Go's sort.Strings compares bytes); a missing dir has none, as for libcni. */
function configNames(dir: string): string[] {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch (err) {
    if (isNotFound(err)) return [];
    throw new CniInstallError(`read ${dir}: ${(err as Error).message}`, { cause: err });
  }
  return entries
    .filter((e) => !e.isDirectory() && CONFIG_EXTENSIONS.has(extname(e.name)))
    .map((e) => e.name)
    .sort(compareNames);
}

function compareNames(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** The configs that load, in order, and why the others do not. */
function scanConfigs(dir: string): { usable: ConfigFile[]; skipped: string[] } {
  const usable: ConfigFile[] = [];
  const skipped: string[] = [];
  for (const name of configNames(dir)) {
    const file = loadConfig(dir, name);
    if (typeof file === 'string') skipped.push(`${name}: ${file}`);
    else if (file) usable.push(file);
  }
  return { usable, skipped };
}

/** The file, or why it does not load, or undefined when it vanished meanwhile. */
function loadConfig(dir: string, name: string): ConfigFile | string | undefined {
  const path = join(dir, name);
  let text: string;
  let stats: Stats;
  try {
    stats = statSync(path);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return isNotFound(err) ? undefined : `cannot read: ${(err as Error).message}`;
  }
  const json = parseObject(text);
  if (typeof json === 'string') return json;
  const list = extname(name) === '.conflist';
  const problem = list ? listProblem(json) : typeof json.type === 'string' && json.type ? undefined : 'no plugin "type" (a plugin list in a single-plugin file?)';
  return problem ?? { name, path, text, json, list, mode: stats.mode & 0o777 };
}

function listProblem(json: Json): string | undefined {
  if (!Array.isArray(json.plugins) || json.plugins.length === 0) return 'no "plugins" list';
  const bad = json.plugins.findIndex((p) => !isObject(p));
  return bad < 0 ? undefined : `plugins[${bad}] is not an object`;
}

/** A JSON object, or why the text is not one. */
function parseObject(text: string): Json | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return `not valid JSON (${(err as Error).message})`;
  }
  return isObject(value) ? value : 'not a JSON object';
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function writeJson(path: string, json: Json, mode: number): void {
  writeAtomic(path, `${JSON.stringify(json, null, 2)}\n`, mode & 0o777);
}

/**
 * Writes a temp file next to `path`, syncs it, and renames it over `path`: readers see the old
 * file or the new one, never a part (a rename also replaces a binary being executed, where an
 * in-place write would fail with ETXTBSY). The temp file is removed when anything fails.
 */
function writeAtomic(path: string, data: string | Buffer, mode: number): void {
  const temp = join(path, '..', `${TEMP_PREFIX}${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}${TEMP_SUFFIX}`);
  try {
    const fd = openSync(temp, 'wx', mode);
    try {
      writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
      fchmodSync(fd, mode);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
  } catch (err) {
    try {
      unlinkSync(temp);
    } catch {
      // never created, or already renamed
    }
    throw new CniInstallError(`write ${path}: ${(err as Error).message}`, { cause: err });
  }
  syncDir(join(path, '..'));
}

/** Makes the rename durable across a host crash; best effort (not every filesystem allows it). */
function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // the rename is done; durability is a bonus
  }
}

/** Temp files a writer killed mid-write left behind. */
function removeStaleTemps(dirs: string[], log: Logger): void {
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (!name.startsWith(TEMP_PREFIX) || !name.endsWith(TEMP_SUFFIX)) continue;
      try {
        if (Date.now() - statSync(join(dir, name)).mtimeMs > STALE_TEMP_MS) removeFile(join(dir, name), log);
      } catch (err) {
        log.debug({ file: join(dir, name), err: (err as Error).message }, 'cannot remove a stale temp file');
      }
    }
  }
}

/** Whether there was a file to remove. */
function removeFile(path: string, log: Logger): boolean {
  try {
    unlinkSync(path);
    return true;
  } catch (err) {
    if (!isNotFound(err)) throw new CniInstallError(`remove ${path}: ${(err as Error).message}`, { cause: err });
    log.debug({ file: path }, 'already gone');
    return false;
  }
}

function readOrUndefined(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw new CniInstallError(`read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

/** The dir's identity, to tell a replaced dir from the watched one (its inode number is often reused at once); undefined while it is missing. */
function inodeOf(path: string): string | undefined {
  try {
    const s = statSync(path);
    return `${s.dev}:${s.ino}:${s.birthtimeMs}`;
  } catch {
    return undefined;
  }
}

function statKey(s: Stats): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.mode}`;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException).code === 'ENOENT';
}
