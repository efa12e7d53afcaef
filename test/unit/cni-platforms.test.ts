/**
 * The chained CNI plugin's installer against the configs real platforms write (captured in
 * test/fixtures/cni, sources in its README): the entry goes last with every original field kept,
 * uninstall gives the file back byte for byte, and a rewrite by the primary CNI (Cilium renames
 * a new file over its own at every agent start; Calico's install-cni and kubelet-era scripts
 * write in place) is re-chained by the dir watch alone, timed here. Also `--cni-primary`: which
 * config it chains into, what it says while that config is missing or shadowed.
 */
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, watch, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino, type Logger } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CniInstaller, INSTALLED_MARKER, ORIGINAL_KEY, type CniInstallerOptions } from '../../src/node/cni-install.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '../fixtures/cni');
const SOCKET = '/var/run/ambit/cni.sock';
const ENTRY = { type: 'ambit-cni', socket: SOCKET };

/** Fixture, the name the platform gives the file on the node, the type of its first plugin (what cni.chained names). */
const PLATFORMS = [
  { platform: 'Cilium', fixture: '05-cilium.conflist', file: '05-cilium.conflist', primary: 'cilium-cni' },
  { platform: 'Calico (operator)', fixture: '10-calico.conflist', file: '10-calico.conflist', primary: 'calico' },
  { platform: 'AWS VPC CNI', fixture: '10-aws.conflist', file: '10-aws.conflist', primary: 'aws-cni' },
  { platform: 'GKE dataplane v1', fixture: '10-gke-ptp.conflist', file: '10-gke-ptp.conflist', primary: 'gke,ptp' },
  { platform: 'GKE dataplane v2', fixture: '10-gke-ptp-dpv2.conflist', file: '10-gke-ptp.conflist', primary: 'gke,ptp' },
  { platform: 'flannel', fixture: '10-flannel.conflist', file: '10-flannel.conflist', primary: 'flannel' },
  { platform: 'kind (kindnet)', fixture: '10-kindnet.conflist', file: '10-kindnet.conflist', primary: 'ptp' },
  { platform: 'k3s (flannel)', fixture: '10-flannel-k3s.conflist', file: '10-flannel.conflist', primary: 'flannel' },
];

type Json = Record<string, unknown>;

let root: string;
let binDir: string;
let confDir: string;
let binary: string;
const installers: CniInstaller[] = [];
/** Rewrite → entry back, per platform and kind of write (ms), reported at the end. */
const rechained: string[] = [];

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'ambit-cni-platform-'));
  // GKE's bin dir; nothing in the installer may assume /opt/cni/bin.
  binDir = join(root, 'home', 'kubernetes', 'bin');
  confDir = join(root, 'etc', 'cni', 'net.d');
  mkdirSync(binDir, { recursive: true });
  mkdirSync(confDir, { recursive: true });
  binary = join(root, 'ambit-cni-image');
  writeFileSync(binary, '#!/bin/sh\necho ambit-cni\n', { mode: 0o700 });
});

afterEach(() => {
  for (const installer of installers.splice(0)) installer.stop();
  expect(readdirSync(confDir).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  rmSync(root, { recursive: true, force: true });
});

afterAll(() => {
  // The figures the report quotes: how long a node runs without the entry after a rewrite.
  if (rechained.length) console.info(`re-chained after a rewrite by the primary CNI:\n  ${rechained.join('\n  ')}`);
});

function installer(opts: Partial<CniInstallerOptions> = {}): CniInstaller {
  const made = new CniInstaller({ binary, binDir, confDir, socket: SOCKET, ...opts });
  installers.push(made);
  return made;
}

const fixture = (name: string) => readFileSync(join(FIXTURES, name), 'utf8');
const read = (name: string) => JSON.parse(readFileSync(join(confDir, name), 'utf8')) as Json & { plugins: Json[] };

function capture(): { log: Logger; records: Json[] } {
  const records: Json[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void records.push(JSON.parse(line) as Json) });
  return { log, records };
}

/** What the primary CNI's agent does at start: a new file written beside it and renamed over it (Cilium's renameio). */
function renameOver(name: string, text: string): void {
  const temp = join(confDir, `.${name}${Math.random().toString().slice(2, 10)}`);
  writeFileSync(temp, text, { mode: 0o644 });
  renameSync(temp, join(confDir, name));
}

describe.each(PLATFORMS)('$platform ($fixture as $file)', ({ fixture: name, file, primary }) => {
  for (const flag of [undefined, primary]) {
    it(`chains last, keeps every original field, and uninstall restores the file byte for byte${flag ? ` (--cni-primary ${flag})` : ''}`, () => {
      const text = fixture(name);
      writeFileSync(join(confDir, file), text, { mode: 0o644 });
      const original = JSON.parse(text) as Json & { plugins: Json[] };
      const cni = installer({ primary: flag });
      expect(cni.install()).toEqual({ binary: 'written', marker: 'written', config: join(confDir, file), entry: 'added' });

      const chained = read(file);
      expect(chained.plugins).toEqual([...original.plugins, ENTRY]);
      const { plugins: _p, [ORIGINAL_KEY]: kept, ...top } = chained;
      const { plugins: _o, ...originalTop } = original;
      expect(top).toEqual(originalTop);
      expect(Object.keys(chained)).toEqual([...Object.keys(original), ORIGINAL_KEY]);
      expect(kept).toBe(text);
      expect(statSync(join(confDir, file)).mode & 0o777).toBe(0o644);
      expect(cni.install().entry).toBe('present');

      cni.uninstall();
      expect(readFileSync(join(confDir, file), 'utf8')).toBe(text);
      expect(readdirSync(confDir)).toEqual([file]);
      expect(readdirSync(binDir)).toEqual([]);
    });
  }

  it('re-chains a rewrite by the primary CNI through the dir watch alone: renamed over, then written in place', async () => {
    const text = fixture(name);
    writeFileSync(join(confDir, file), text);
    // A poll far beyond the test's waits: only the watch can bring the entry back in time.
    const cni = installer({ primary, pollMs: 600_000 });
    cni.start();
    expect(read(file).plugins.at(-1)).toEqual(ENTRY);
    for (const [how, rewrite] of [['renamed over', () => renameOver(file, text)], ['written in place', () => writeFileSync(join(confDir, file), text)]] as const) {
      const started = performance.now();
      rewrite();
      await expect.poll(() => read(file).plugins.at(-1), { timeout: 2000, interval: 5 }).toEqual(ENTRY);
      const ms = performance.now() - started;
      rechained.push(`${name} ${how}: ${ms.toFixed(0)} ms`);
      expect(read(file).plugins).toEqual([...(JSON.parse(text) as { plugins: Json[] }).plugins, ENTRY]);
    }
    // And uninstall still gives back what the primary CNI wrote last.
    cni.uninstall();
    expect(readFileSync(join(confDir, file), 'utf8')).toBe(text);
  });
});

describe('--cni-primary', () => {
  it('chains nothing while the named plugin has no config (Cilium writes its file once its agent runs), and says so; chains once it comes', async () => {
    const leftover = '{\n  "cniVersion": "1.0.0",\n  "name": "containerd-net",\n  "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "portmap", "capabilities": {"portMappings": true}}]\n}\n';
    writeFileSync(join(confDir, '10-containerd-net.conflist'), leftover);
    const { log, records } = capture();
    const cni = installer({ primary: 'cilium-cni', pollMs: 600_000, log });
    expect(() => cni.install()).toThrow(`no cilium-cni network config in ${confDir} yet (cni.chained cilium-cni): nothing chained until cilium-cni writes it; found 10-containerd-net.conflist: bridge`);
    cni.start();
    expect(cni.check()).toMatchObject({ ok: false, detail: expect.stringMatching(/^no cilium-cni network config .* yet/), hint: expect.stringMatching(/cilium-cni plugin writes its config once its own agent runs/) });
    expect(records.some((r) => r.level === 40 && /no cilium-cni network config/.test(String(r.err)))).toBe(true);
    expect(readFileSync(join(confDir, '10-containerd-net.conflist'), 'utf8')).toBe(leftover);
    // The binary and the marker are in place already: the plugin fails sandboxes closed meanwhile.
    expect(readdirSync(binDir).sort()).toEqual(['ambit-cni', INSTALLED_MARKER]);

    renameOver('05-cilium.conflist', fixture('05-cilium.conflist'));
    await expect.poll(() => cni.check(), { timeout: 2000, interval: 10 }).toEqual({ name: 'CNI plugin chained', ok: true, detail: 'ambit-cni last in 05-cilium.conflist' });
    expect(read('05-cilium.conflist').plugins.at(-1)).toEqual(ENTRY);
    expect(readFileSync(join(confDir, '10-containerd-net.conflist'), 'utf8')).toBe(leftover);
  });

  it('chains into the named plugin\'s config and names the file that shadows it: a leftover 10-containerd-net.conflist before flannel\'s', async () => {
    writeFileSync(join(confDir, '10-flannel.conflist'), fixture('10-flannel.conflist'));
    writeFileSync(join(confDir, '10-containerd-net.conflist'), '{"cniVersion": "1.0.0", "name": "containerd-net", "plugins": [{"type": "bridge"}]}');
    const { log, records } = capture();
    const cni = installer({ primary: 'flannel', pollMs: 600_000, log });
    expect(cni.install()).toMatchObject({ config: join(confDir, '10-flannel.conflist'), entry: 'added', shadowedBy: '10-containerd-net.conflist' });
    cni.start();
    expect(cni.check()).toEqual({
      name: 'CNI plugin chained', ok: false,
      detail: 'ambit-cni last in 10-flannel.conflist, but the runtime uses 10-containerd-net.conflist, which sorts first',
      hint: 'remove 10-containerd-net.conflist from the node\'s CNI config dir if it is a leftover, or give cni.chained the type of its first plugin',
    });
    expect(records.filter((r) => r.level === 40 && r.shadowedBy === '10-containerd-net.conflist')).toHaveLength(1);
    // The leftover goes: the next pass (the watch) clears the warning.
    rmSync(join(confDir, '10-containerd-net.conflist'));
    await expect.poll(() => cni.check().ok, { timeout: 2000, interval: 10 }).toBe(true);
  });

  it('names Multus\'s 00-multus.conf as the file the runtime uses instead of Cilium\'s', () => {
    writeFileSync(join(confDir, '05-cilium.conflist'), fixture('05-cilium.conflist'));
    writeFileSync(join(confDir, '00-multus.conf'), '{"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus", "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig"}');
    const result = installer({ primary: 'cilium-cni' }).install();
    expect(result).toMatchObject({ config: join(confDir, '05-cilium.conflist'), shadowedBy: '00-multus.conf' });
    // Multus's own file is not touched (no conversion of a config that is not the named plugin's).
    expect(readdirSync(confDir).sort()).toEqual(['00-multus.conf', '05-cilium.conflist']);
  });

  it('converts the named plugin\'s single-plugin .conf even when another config sorts before it, keeping the order', () => {
    writeFileSync(join(confDir, '00-other.conflist'), '{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]}');
    const conf = '{\n  "cniVersion": "0.4.0",\n  "name": "net",\n  "type": "ptp"\n}\n';
    writeFileSync(join(confDir, '10-net.conf'), conf);
    writeFileSync(join(confDir, '20-late.conflist'), '{"cniVersion": "1.0.0", "name": "late", "plugins": [{"type": "bridge"}]}');
    const cni = installer({ primary: 'ptp' });
    expect(cni.install()).toMatchObject({ config: join(confDir, '10-net.conflist'), entry: 'added', shadowedBy: '00-other.conflist' });
    cni.uninstall();
    expect(readFileSync(join(confDir, '10-net.conf'), 'utf8')).toBe(conf);
  });

  it('takes alternatives (cni.chained=gke: GKE\'s netd writes its own gke plugin on newer nodes, ptp on older ones)', () => {
    const ptp = fixture('10-gke-ptp.conflist');
    const gke = JSON.stringify({ ...JSON.parse(ptp) as Json, plugins: (JSON.parse(ptp) as { plugins: Json[] }).plugins.map((p, i) => (i === 0 ? { ...p, type: 'gke' } : p)) }, null, 2);
    writeFileSync(join(confDir, '00-leftover.conflist'), '{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge"}]}');
    writeFileSync(join(confDir, '10-gke-ptp.conflist'), gke);
    expect(installer({ primary: 'gke,ptp' }).install()).toMatchObject({ config: join(confDir, '10-gke-ptp.conflist'), entry: 'added' });
    expect(() => installer({ primary: 'cilium-cni,calico' }).install()).toThrow(/no cilium-cni,calico network config in .* yet/);
  });

  it('without the flag, chains into the first config whatever its plugin (as before)', () => {
    writeFileSync(join(confDir, '05-cilium.conflist'), fixture('05-cilium.conflist'));
    writeFileSync(join(confDir, '00-multus.conf'), '{"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus"}');
    expect(installer().install()).toEqual({ binary: 'written', marker: 'written', config: join(confDir, '00-multus.conflist'), entry: 'added' });
  });
});

describe('a primary CNI that rewrites its file on every change in the dir (Cilium with cni.exclusive=true)', () => {
  it('is named in the check line and the log once the entry keeps being removed', async () => {
    const text = fixture('05-cilium.conflist');
    writeFileSync(join(confDir, '05-cilium.conflist'), text);
    const { log, records } = capture();
    const cni = installer({ primary: 'cilium-cni', pollMs: 600_000, log });
    // Cilium's cniConfigManager: any activity in the dir → render its file again and write it if it differs.
    let rewrites = 0;
    const cilium = watch(confDir, () => {
      if (readFileSync(join(confDir, '05-cilium.conflist'), 'utf8') !== text) {
        rewrites++;
        renameOver('05-cilium.conflist', text);
      }
    });
    try {
      cni.start();
      await expect.poll(() => cni.check(), { timeout: 5000, interval: 20 }).toMatchObject({
        ok: false, detail: expect.stringMatching(/^ambit-cni last in 05-cilium\.conflist, but another writer removed it \d+ times in the last minute$/),
        hint: expect.stringMatching(/cni\.exclusive=false/),
      });
      expect(rewrites).toBeGreaterThanOrEqual(5);
      expect(records.filter((r) => r.level === 50 && /keeps removing the ambit-cni entry/.test(String(r.msg)))).toHaveLength(1);
    } finally {
      cilium.close();
      cni.stop();
    }
  });
});

describe('the plugin binary on the host', () => {
  it('is copied onto another filesystem (a tmpfs bin dir) with mode 0755 whatever the umask', () => {
    const shm = mkdtempSync(join('/dev/shm', 'ambit-cni-bin-'));
    const umask = process.umask(0o077);
    try {
      expect(statSync(shm).dev).not.toBe(statSync(binary).dev);
      writeFileSync(join(confDir, '10-flannel.conflist'), fixture('10-flannel.conflist'));
      chmodSync(binary, 0o700);
      const cni = installer({ binDir: shm });
      expect(cni.install()).toMatchObject({ binary: 'written', entry: 'added' });
      expect(statSync(join(shm, 'ambit-cni')).mode & 0o777).toBe(0o755);
      expect(readFileSync(join(shm, 'ambit-cni'))).toEqual(readFileSync(binary));
      expect(readdirSync(shm).sort()).toEqual(['ambit-cni', INSTALLED_MARKER]);
      expect(cni.install().binary).toBe('unchanged');
      cni.uninstall();
      expect(readdirSync(shm)).toEqual([]);
    } finally {
      process.umask(umask);
      rmSync(shm, { recursive: true, force: true });
    }
  });
});

vi.setConfig({ testTimeout: 15_000 });
