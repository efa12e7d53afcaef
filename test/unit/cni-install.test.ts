/**
 * The chained CNI plugin's installer against temp dirs standing in for the host's
 * /opt/cni/bin and /etc/cni/net.d: entry appended to the primary config (the runtime's first by
 * byte order), single-plugin configs converted and restored, no rewrite when nothing changed,
 * another writer's rewrite undone by the loop, and no temp file ever left behind.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, extname, join } from 'node:path';
import { pino, type Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CniInstallError, CniInstaller, CONVERTED_FROM_KEY, INSTALLED_MARKER, ORIGINAL_KEY, type CniInstallerOptions } from '../../src/node/cni-install.js';

const SOCKET = '/var/run/ambit/cni.sock';

const FLANNEL = {
  name: 'cbr0',
  cniVersion: '0.3.1',
  plugins: [
    { type: 'flannel', delegate: { hairpinMode: true, isDefaultGateway: true } },
    { type: 'portmap', capabilities: { portMappings: true } },
  ],
};

/** A single-plugin config as a primary CNI might ship it: tabs, its own key order. */
const BRIDGE_CONF = '{\n\t"cniVersion": "0.4.0",\n\t"name": "bridge",\n\t"type": "bridge",\n\t"bridge": "cni0",\n\t"ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}\n}\n';

let root: string;
let binDir: string;
let confDir: string;
let binary: string;
const installers: CniInstaller[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'ambit-cni-'));
  binDir = join(root, 'bin');
  confDir = join(root, 'net.d');
  mkdirSync(binDir);
  mkdirSync(confDir);
  binary = join(root, 'ambit-cni-image');
  writeFileSync(binary, '#!/bin/sh\necho ambit-cni v1\n', { mode: 0o700 });
});

afterEach(() => {
  for (const installer of installers.splice(0)) installer.stop();
  for (const dir of [binDir, confDir]) {
    const names = readdirSync(root).includes(basename(dir)) ? readdirSync(dir) : [];
    expect(names.filter((n) => n.endsWith('.tmp'))).toEqual([]);
  }
  rmSync(root, { recursive: true, force: true });
});

function installer(opts: Partial<CniInstallerOptions> = {}): CniInstaller {
  const made = new CniInstaller({ binary, binDir, confDir, socket: SOCKET, ...opts });
  installers.push(made);
  return made;
}

function writeJson(name: string, json: unknown): string {
  const path = join(confDir, name);
  writeFileSync(path, `${JSON.stringify(json, null, 2)}\n`);
  return path;
}

function readJson(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(confDir, name), 'utf8')) as Record<string, unknown>;
}

/** The file containerd would use: go-cni sorts ConfFiles(dir, .conf/.conflist/.json) and takes the first. */
function primary(): string | undefined {
  return readdirSync(confDir).filter((n) => ['.conf', '.conflist', '.json'].includes(extname(n))).sort()[0];
}

/** A logger whose records the test can read. */
function capture(): { log: Logger; records: Array<Record<string, unknown>> } {
  const records: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as Record<string, unknown>) });
  return { log, records };
}

describe('CniInstaller.install', () => {
  it('appends the entry last to a flannel conflist, keeps every other field, copies the binary 0755', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    expect(installer().install()).toEqual({ binary: 'written', marker: 'written', config: path, entry: 'added' });

    const text = readFileSync(path, 'utf8');
    // The file's text before goes with it, so that uninstall can give it back as it was.
    const original = `${JSON.stringify(FLANNEL, null, 2)}\n`;
    expect(text).toBe(`${JSON.stringify({ ...FLANNEL, plugins: [...FLANNEL.plugins, { type: 'ambit-cni', socket: SOCKET }], [ORIGINAL_KEY]: original }, null, 2)}\n`);
    expect(Object.keys(JSON.parse(text) as object)).toEqual(['name', 'cniVersion', 'plugins', ORIGINAL_KEY]);
    const target = join(binDir, 'ambit-cni');
    expect(readFileSync(target, 'utf8')).toBe(readFileSync(binary, 'utf8'));
    expect(statSync(target).mode & 0o777).toBe(0o755);
  });

  it('a second install finds everything in place and rewrites nothing', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    installer().install();
    const target = join(binDir, 'ambit-cni');
    const past = new Date(Date.now() - 3_600_000);
    utimesSync(path, past, past);
    utimesSync(target, past, past);
    const [conf, bin] = [statSync(path), statSync(target)];

    // A fresh installer (no cached verification) compares the binary's content.
    for (const again of [installer(), installer()]) {
      expect(again.install()).toEqual({ binary: 'unchanged', marker: 'unchanged', config: path, entry: 'present' });
      expect(again.install()).toEqual({ binary: 'unchanged', marker: 'unchanged', config: path, entry: 'present' });
    }
    expect(statSync(path)).toMatchObject({ mtimeMs: conf.mtimeMs, ino: conf.ino });
    expect(statSync(target)).toMatchObject({ mtimeMs: bin.mtimeMs, ino: bin.ino });
  });

  it('rewrites a binary whose content or mode differs', () => {
    writeJson('10-flannel.conflist', FLANNEL);
    const target = join(binDir, 'ambit-cni');
    writeFileSync(target, '#!/bin/sh\necho ambit-cni v0\n', { mode: 0o755 }); // same size, other content
    expect(installer().install().binary).toBe('written');
    expect(readFileSync(target, 'utf8')).toContain('v1');
    writeFileSync(binary, '#!/bin/sh\necho ambit-cni v2, longer\n');
    expect(installer().install().binary).toBe('written');
    expect(readFileSync(target, 'utf8')).toContain('v2');
  });

  it('writes the install marker next to the binary, before the entry, and puts it back when it goes', () => {
    const marker = join(binDir, INSTALLED_MARKER);
    // No primary config yet: the pass stops at the entry, after the binary and the marker.
    expect(() => installer().install()).toThrow(/no CNI network config/);
    expect(readdirSync(binDir).sort()).toEqual(['ambit-cni', INSTALLED_MARKER]);
    writeJson('10-flannel.conflist', FLANNEL);
    expect(installer().install()).toMatchObject({ marker: 'unchanged', entry: 'added' });
    expect(INSTALLED_MARKER).toBe('ambit-cni.installed');
    expect(statSync(marker).mode & 0o777).toBe(0o644);
    expect(readFileSync(marker, 'utf8')).toMatch(/ambit is installed on this node.*fails new pod\nsandboxes/s);
    rmSync(marker);
    expect(installer().install().marker).toBe('written');
    writeFileSync(marker, 'edited\n');
    expect(installer().install().marker).toBe('written');
    expect(readFileSync(marker, 'utf8')).toMatch(/^ambit is installed/);
  });

  it('edits only the first of two conflists', () => {
    const first = writeJson('10-a.conflist', { ...FLANNEL, name: 'a' });
    const second = writeJson('20-b.conflist', { ...FLANNEL, name: 'b' });
    const before = readFileSync(second, 'utf8');
    expect(installer().install()).toMatchObject({ config: first, entry: 'added' });
    expect((readJson('10-a.conflist').plugins as unknown[]).at(-1)).toEqual({ type: 'ambit-cni', socket: SOCKET });
    expect(readFileSync(second, 'utf8')).toBe(before);
  });

  it('converts a single-plugin .conf into the .conflist the runtime picks, and removes the original', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    writeJson('99-loopback.conf', { cniVersion: '0.4.0', name: 'lo', type: 'loopback' });
    const result = installer().install();
    expect(result).toEqual({ binary: 'written', marker: 'written', config: join(confDir, '10-bridge.conflist'), entry: 'added' });
    expect(primary()).toBe('10-bridge.conflist');
    expect(readdirSync(confDir).sort()).toEqual(['10-bridge.conflist', '99-loopback.conf']);
    const list = readJson('10-bridge.conflist');
    expect(list).toMatchObject({
      cniVersion: '0.4.0',
      name: 'bridge',
      plugins: [
        { type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.22.0.0/16' } },
        { type: 'ambit-cni', socket: SOCKET },
      ],
      [CONVERTED_FROM_KEY]: '10-bridge.conf',
    });
    expect(Object.keys((list.plugins as object[])[0]!)).toEqual(['type', 'bridge', 'ipam']);
    expect(installer().install()).toEqual({ binary: 'unchanged', marker: 'unchanged', config: join(confDir, '10-bridge.conflist'), entry: 'present' });
  });

  it('converts a .json config too (.conflist sorts before .json)', () => {
    writeJson('10-net.json', { cniVersion: '1.0.0', name: 'net', type: 'ptp' });
    expect(installer().install().config).toBe(join(confDir, '10-net.conflist'));
    expect(readdirSync(confDir)).toEqual(['10-net.conflist']);
  });

  it('names the converted list so that it still sorts first when <base>.conflist would not', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    // Sorts between 10-bridge.conf and 10-bridge.conflist ('.' < 'l').
    writeJson('10-bridge.conf.json', { cniVersion: '0.4.0', name: 'other', type: 'ptp' });
    const result = installer().install();
    expect(result.config).toBe(join(confDir, '10-bridge-ambit.conflist'));
    expect(primary()).toBe('10-bridge-ambit.conflist');
    expect(installer().install().entry).toBe('present');
  });

  it('does not overwrite a <base>.conflist that is not its own', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    const other = writeJson('10-bridge.conflist', { ...FLANNEL, name: 'other' });
    const before = readFileSync(other, 'utf8');
    expect(installer().install().config).toBe(join(confDir, '10-bridge-ambit.conflist'));
    expect(readFileSync(other, 'utf8')).toBe(before);
    expect(primary()).toBe('10-bridge-ambit.conflist');
  });

  it('re-converts when the primary CNI writes its .conf again', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    const cni = installer();
    cni.install();
    const rewritten = BRIDGE_CONF.replace('10.22.0.0/16', '10.23.0.0/16');
    writeFileSync(join(confDir, '10-bridge.conf'), rewritten);
    expect(cni.install()).toMatchObject({ config: join(confDir, '10-bridge.conflist'), entry: 'added' });
    expect(readdirSync(confDir)).toEqual(['10-bridge.conflist']);
    cni.uninstall();
    expect(readFileSync(join(confDir, '10-bridge.conf'), 'utf8')).toBe(rewritten);
  });

  it('re-converts past its own fallback-named list when the original comes back', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    writeJson('10-bridge.conf.json', { cniVersion: '0.4.0', name: 'other', type: 'ptp' });
    const cni = installer();
    cni.install();
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF.replace('cni0', 'cni1'));
    expect(cni.install().config).toBe(join(confDir, '10-bridge-ambit.conflist'));
    expect(readdirSync(confDir).sort()).toEqual(['10-bridge-ambit.conflist', '10-bridge.conf.json']);
    expect((readJson('10-bridge-ambit.conflist').plugins as Array<Record<string, unknown>>)[0]!.bridge).toBe('cni1');
  });

  it('updates the socket of an entry that is already there, in place', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    installer({ socket: '/run/old.sock' }).install();
    const list = readJson('10-flannel.conflist');
    writeJson('10-flannel.conflist', { ...list, plugins: [...(list.plugins as object[]), { type: 'bandwidth' }] });
    expect(installer().install()).toMatchObject({ config: path, entry: 'updated' });
    expect((readJson('10-flannel.conflist').plugins as Array<{ type: string }>).map((p) => p.type)).toEqual(['flannel', 'portmap', 'ambit-cni', 'bandwidth']);
    expect((readJson('10-flannel.conflist').plugins as object[])[2]).toEqual({ type: 'ambit-cni', socket: SOCKET });
    expect(installer().install().entry).toBe('present');
  });

  it('with no config at all, tells the primary CNI must come first', () => {
    const cni = installer();
    expect(() => cni.install()).toThrow(new CniInstallError(`no CNI network config in ${confDir}: the primary CNI must be installed first`));
    try {
      cni.install();
    } catch (err) {
      expect(err).toBeInstanceOf(CniInstallError);
      expect((err as CniInstallError).code).toBe('AMBIT_E_CNI_INSTALL');
    }
    rmSync(confDir, { recursive: true });
    expect(() => cni.install()).toThrow(/no CNI network config in .*: the primary CNI must be installed first$/);
  });

  it('names a malformed primary config it cannot use', () => {
    writeFileSync(join(confDir, '10-calico.conflist'), '{"name": "k8s-pod-network", "plugins": [');
    expect(() => installer().install()).toThrow(/no CNI network config in .*: the primary CNI must be installed first \(ignored: 10-calico\.conflist: not valid JSON/);
    writeJson('10-calico.conflist', { name: 'k8s-pod-network', plugins: 'calico' });
    expect(() => installer().install()).toThrow(/ignored: 10-calico\.conflist: no "plugins" list/);
  });

  it('skips a config that does not load, with a warning naming it, and edits the next', () => {
    writeFileSync(join(confDir, '05-broken.conflist'), 'not json');
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const { log, records } = capture();
    expect(installer({ log }).install().config).toBe(path);
    expect(readFileSync(join(confDir, '05-broken.conflist'), 'utf8')).toBe('not json');
    expect(records.some((r) => r.level === 40 && JSON.stringify(r.ignored).includes('05-broken.conflist: not valid JSON'))).toBe(true);
  });

  it('leaves no temp file behind when a write fails', () => {
    writeJson('10-flannel.conflist', FLANNEL);
    mkdirSync(join(binDir, 'ambit-cni')); // rename over a directory fails
    expect(() => installer().install()).toThrow(CniInstallError);
    expect(readdirSync(binDir)).toEqual(['ambit-cni']);
  });

  it('fails on a missing plugin binary before touching the config', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const before = readFileSync(path, 'utf8');
    expect(() => installer({ binary: join(root, 'absent') }).install()).toThrow(/plugin binary .*absent/);
    expect(readFileSync(path, 'utf8')).toBe(before);
  });
});

describe('CniInstaller.uninstall', () => {
  it('restores a converted .conf byte for byte and deletes the binary; idempotent', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    const cni = installer();
    cni.install();
    cni.uninstall();
    expect(readdirSync(confDir)).toEqual(['10-bridge.conf']);
    expect(readFileSync(join(confDir, '10-bridge.conf'), 'utf8')).toBe(BRIDGE_CONF);
    expect(readdirSync(binDir)).toEqual([]);
    cni.uninstall();
    expect(readFileSync(join(confDir, '10-bridge.conf'), 'utf8')).toBe(BRIDGE_CONF);
  });

  it('rebuilds the single config when the list was edited since the conversion', () => {
    writeFileSync(join(confDir, '10-bridge.conf'), BRIDGE_CONF);
    installer().install();
    const list = readJson('10-bridge.conflist');
    const [bridge, ours] = list.plugins as Array<Record<string, unknown>>;
    writeJson('10-bridge.conflist', { ...list, plugins: [{ ...bridge, bridge: 'cni9' }, ours] });
    installer().uninstall();
    expect(readdirSync(confDir)).toEqual(['10-bridge.conf']);
    expect(readJson('10-bridge.conf')).toEqual({ ...(JSON.parse(BRIDGE_CONF) as object), bridge: 'cni9' });
  });

  it('removes only its entry from a conflist', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const original = readFileSync(path, 'utf8');
    installer().install();
    installer().uninstall();
    expect(readFileSync(path, 'utf8')).toBe(original);
    expect(readdirSync(binDir)).toEqual([]);
  });

  it('cleans every conflist that has an entry, and tolerates nothing being there', () => {
    writeJson('10-a.conflist', { ...FLANNEL, plugins: [...FLANNEL.plugins, { type: 'ambit-cni', socket: '/x' }] });
    writeJson('20-b.conflist', { ...FLANNEL, plugins: [{ type: 'ambit-cni', socket: '/y' }, ...FLANNEL.plugins] });
    installer().uninstall();
    expect(readJson('10-a.conflist')).toEqual(FLANNEL);
    expect(readJson('20-b.conflist')).toEqual(FLANNEL);
    rmSync(confDir, { recursive: true });
    expect(() => installer().uninstall()).not.toThrow();
  });

  it('removes the install marker with the binary', () => {
    writeJson('10-flannel.conflist', FLANNEL);
    installer().install();
    expect(readdirSync(binDir).sort()).toEqual(['ambit-cni', INSTALLED_MARKER]);
    installer().uninstall();
    expect(readdirSync(binDir)).toEqual([]);
  });

  it('names a malformed config that holds its entry, still cleans the others, removes the marker and keeps the binary', () => {
    writeJson('20-flannel.conflist', FLANNEL);
    installer().install();
    writeFileSync(join(confDir, '10-broken.conflist'), '{"plugins": [{"type": "ambit-cni"');
    expect(() => installer().uninstall()).toThrow(/10-broken\.conflist: not valid JSON.*cannot remove the ambit-cni entry/);
    // The entry left is in a file no runtime can load; without the marker a plugin run from it passes pods through.
    expect(readJson('20-flannel.conflist')).toEqual(FLANNEL);
    expect(readdirSync(binDir)).toEqual(['ambit-cni']);
  });

  it('stops the loop so that it does not put the entry back', () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    // On the test's clock: were the loop still running, ten of its polls would come due below.
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    try {
      const cni = installer({ pollMs: 50 });
      cni.start();
      cni.uninstall();
      expect(vi.getTimerCount()).toBe(0);
      vi.advanceTimersByTime(500);
    } finally {
      vi.useRealTimers();
    }
    expect(readJson('10-flannel.conflist')).toEqual(FLANNEL);
    expect(statSync(path).isFile()).toBe(true);
  });
});

describe('CniInstaller.start', () => {
  it('puts the entry back after another writer replaces the conflist', async () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const cni = installer({ pollMs: 100 });
    cni.start();
    expect((readJson('10-flannel.conflist').plugins as unknown[]).length).toBe(3);

    // The primary CNI's DaemonSet writes its own file again, atomically.
    writeFileSync(join(root, 'new.conflist'), JSON.stringify(FLANNEL));
    renameSync(join(root, 'new.conflist'), path);
    await vi.waitFor(() => expect((readJson('10-flannel.conflist').plugins as unknown[]).at(-1)).toEqual({ type: 'ambit-cni', socket: SOCKET }), { timeout: 2000, interval: 20 });

    // Or in place, and deletes the binary.
    writeFileSync(path, JSON.stringify(FLANNEL));
    unlinkSync(join(binDir, 'ambit-cni'));
    await vi.waitFor(() => {
      expect((readJson('10-flannel.conflist').plugins as unknown[]).length).toBe(3);
      expect(statSync(join(binDir, 'ambit-cni')).mode & 0o777).toBe(0o755);
    }, { timeout: 2000, interval: 20 });
  });

  it('keeps retrying until the primary CNI installs its config, warning once', async () => {
    const { log, records } = capture();
    const cni = installer({ pollMs: 100, log });
    cni.start();
    const retrying = () => records.filter((r) => r.msg === 'CNI plugin not installed; retrying');
    // The first pass and two polls after it: a warning, then the same error at debug level.
    await expect.poll(() => retrying().length, { timeout: 2000, interval: 20 }).toBeGreaterThanOrEqual(3);
    expect(retrying().filter((r) => r.level === 40)).toHaveLength(1);
    // What the node's `ambit check` says meanwhile, and after.
    expect(cni.check()).toMatchObject({ name: 'CNI plugin chained', ok: false, detail: expect.stringMatching(/no CNI network config/) });
    writeJson('10-flannel.conflist', FLANNEL);
    await vi.waitFor(() => expect((readJson('10-flannel.conflist').plugins as unknown[]).length).toBe(3), { timeout: 2000, interval: 20 });
    expect(cni.check()).toEqual({ name: 'CNI plugin chained', ok: true, detail: 'ambit-cni last in 10-flannel.conflist' });
    cni.stop();
  });

  it('does not rewrite its own writes (no loop with the watch)', async () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const { log, records } = capture();
    const cni = installer({ pollMs: 100, log });
    cni.start();
    const { ino, mtimeMs } = statSync(path);
    // Three passes after the one that wrote (set off by the watch of its own write, or polls): each changed nothing.
    const passes = () => records.filter((r) => r.msg === 'CNI plugin installed');
    await expect.poll(() => passes().length, { timeout: 2000, interval: 20 }).toBeGreaterThanOrEqual(4);
    expect(passes().slice(1).map((r) => r.level)).toEqual(passes().slice(1).map(() => 20));
    expect(statSync(path)).toMatchObject({ ino, mtimeMs });
  });
});

describe('CniInstaller watch', () => {
  it('follows a config dir that is removed and made again (the old inotify watch never fires again)', async () => {
    const path = writeJson('10-flannel.conflist', FLANNEL);
    const cni = installer({ pollMs: 3000 });
    cni.start();
    rmSync(confDir, { recursive: true });
    mkdirSync(confDir);
    writeFileSync(path, JSON.stringify(FLANNEL));
    // The next poll finds the new dir, re-chains and watches it...
    await expect.poll(() => (readJson('10-flannel.conflist').plugins as unknown[]).length, { timeout: 5000, interval: 20 }).toBe(3);
    // ...so a rewrite right after is back well before the poll after that.
    writeFileSync(path, JSON.stringify(FLANNEL));
    await expect.poll(() => (readJson('10-flannel.conflist').plugins as unknown[]).length, { timeout: 1000, interval: 10 }).toBe(3);
  });
});
