/**
 * The image, without a container engine: deploy/Dockerfile's steps replayed against the
 * repository. Each stage's files are modelled from its COPY steps (through .dockerignore, with
 * Docker's matching rules) and from the RUN steps that produce files (`npm run build` through
 * tsconfig.build.json's own file list, `build-cni.sh --static OUT`, `npm ci`); then what the
 * processes load at run time must be in the final stage, and nothing from test/ or bench/ in any.
 * The static CNI build runs here for real and its ELF program headers are read.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, posix, relative } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { INBOUND_OBJECT, OUTBOUND_OBJECT } from '../../src/ebpf/datapath.js';
import { CNI_BINARY } from '../../src/install/render.js';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const tmp = mkdtempSync(join(tmpdir(), 'ambit-image-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// --- .dockerignore, with the rules of moby's patternmatcher ------------------------------------

interface IgnoreRule { text: string; negate: boolean; re: RegExp }

/** A Docker path pattern as a RegExp: `*` and `?` within one path segment, `**` across any number. */
function patternRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*' && pattern[i + 1] === '*') {
      i++;
      // `**/` also matches no directory at all.
      if (pattern[i + 1] === '/') { i++; re += '(?:.*/)?'; } else re += '.*';
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[' || c === '\\') throw new Error(`.dockerignore pattern ${pattern}: character classes and escapes are not modelled by this test`);
    else re += c.replace(/[.+^${}()|]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function parseDockerignore(text: string): IgnoreRule[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((line) => {
    const negate = line.startsWith('!');
    const pattern = posix.normalize((negate ? line.slice(1) : line).trim()).replace(/^\/+/, '').replace(/\/+$/, '');
    return { text: line, negate, re: patternRegExp(pattern) };
  });
}

/** Whether the context leaves `path` out: the last rule that matches it or one of its parent directories decides. */
function ignoredBy(rules: IgnoreRule[], path: string): boolean {
  const parents = path.split('/').map((_, i, parts) => parts.slice(0, i + 1).join('/'));
  let excluded = false;
  for (const rule of rules) if (parents.some((p) => rule.re.test(p))) excluded = !rule.negate;
  return excluded;
}

/** Every file on disk under `dir` (repository-relative), but .git and node_modules, which are checked apart. */
function walk(dir = ''): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = dir ? `${dir}/${e.name}` : e.name;
    if (e.isDirectory()) return e.name === '.git' || e.name === 'node_modules' ? [] : walk(rel);
    return e.isFile() ? [rel] : [];
  });
}

// --- deploy/Dockerfile, replayed -------------------------------------------------------------------

interface Instruction { op: string; args: string; line: number }
interface Copy { from?: string; sources: string[]; dest: string; line: number; matched: number }
interface Stage {
  name: string;
  from: string;
  platform?: string;
  workdir: string;
  copies: Copy[];
  runs: string[];
  entrypoint?: string[];
  /** Absolute path in the stage → where it came from (a context path, or `stage:path`, or a RUN step). */
  files: Map<string, string>;
}

function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (line.endsWith('\\') && i + 1 < lines.length) line = `${line.slice(0, -1)} ${lines[++i]!.trim()}`;
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) throw new Error(`Dockerfile line ${start + 1}: cannot read "${line}"`);
    out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start + 1 });
  }
  return out;
}

/** Words of an instruction: its JSON array form, or whitespace-separated. */
function words(args: string): string[] {
  return args.startsWith('[') ? JSON.parse(args) as string[] : args.split(/\s+/);
}

const context = { rules: parseDockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8')), files: [] as string[] };
const sent = () => context.files.filter((f) => !ignoredBy(context.rules, f));
const isGlob = (s: string) => /[*?]/.test(s);

/** The context files a COPY source names (through .dockerignore), as [source file, path relative to the copied root]. */
function contextMatches(source: string): [string, string][] {
  const src = posix.normalize(source).replace(/^\.\//, '').replace(/\/$/, '');
  if (isGlob(src)) {
    const re = patternRegExp(src);
    return sent().filter((f) => re.test(f)).map((f) => [f, basename(f)]);
  }
  return sent().flatMap((f): [string, string][] => {
    if (f === src) return [[f, basename(f)]];
    return f.startsWith(`${src}/`) ? [[f, f.slice(src.length + 1)]] : [];
  });
}

/** A tsconfig's compiled inputs (repository-relative, outside node_modules), as tsc lists them. */
function tscInputs(project: string): string[] {
  const out = execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, project), '--listFilesOnly'], { encoding: 'utf8' });
  return out.split('\n').filter((f) => f.startsWith(ROOT) && !f.includes('/node_modules/')).map((f) => relative(ROOT, f));
}

let buildInputs: string[] = [];

function replay(text: string): Stage[] {
  const stages: Stage[] = [];
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  for (const ins of instructions(text)) {
    if (ins.op === 'FROM') {
      const w = words(ins.args);
      const platform = w.find((x) => x.startsWith('--platform='))?.slice('--platform='.length);
      const rest = w.filter((x) => !x.startsWith('--'));
      stages.push({ name: rest[2] ?? String(stages.length), from: rest[0]!, platform, workdir: '/', copies: [], runs: [], files: new Map() });
      continue;
    }
    const stage = stages.at(-1);
    if (!stage) throw new Error(`Dockerfile line ${ins.line}: ${ins.op} before FROM`);
    const abs = (p: string) => posix.resolve(stage.workdir, p);
    if (ins.op === 'WORKDIR') stage.workdir = abs(ins.args);
    else if (ins.op === 'ENTRYPOINT') stage.entrypoint = words(ins.args);
    else if (ins.op === 'COPY') {
      const w = words(ins.args);
      const from = w.find((x) => x.startsWith('--from='))?.slice('--from='.length);
      const plain = w.filter((x) => !x.startsWith('--'));
      const copy: Copy = { from, sources: plain.slice(0, -1), dest: plain.at(-1)!, line: ins.line, matched: 0 };
      stage.copies.push(copy);
      const intoDir = copy.dest.endsWith('/') || copy.sources.length > 1 || copy.sources.some(isGlob);
      if (intoDir && !copy.dest.endsWith('/')) throw new Error(`Dockerfile line ${ins.line}: several sources need a destination ending in /`);
      for (const source of copy.sources) {
        let matches: [string, string][];
        let origin: (f: string) => string;
        if (from) {
          const other = stages.find((s) => s.name === from);
          if (!other) throw new Error(`Dockerfile line ${ins.line}: no stage ${from}`);
          const src = posix.resolve(other.workdir, source);
          matches = [...other.files.keys()].flatMap((f): [string, string][] => (f === src ? [[f, basename(f)]] : f.startsWith(`${src}/`) ? [[f, f.slice(src.length + 1)]] : []));
          origin = (f) => other.files.get(f)!;
        } else {
          matches = contextMatches(source);
          origin = (f) => f;
        }
        const isFile = matches.length === 1 && !isGlob(source) && matches[0]![1] === basename(source.replace(/\/$/, ''));
        copy.matched += matches.length;
        for (const [f, rel] of matches) {
          const target = isFile && !intoDir ? abs(copy.dest) : posix.join(abs(copy.dest), rel);
          stage.files.set(target, origin(f));
        }
      }
    } else if (ins.op === 'RUN') {
      stage.runs.push(ins.args);
      const cni = /scripts\/build-cni\.sh --static (\S+)/.exec(ins.args);
      if (cni) {
        for (const need of ['scripts/build-cni.sh', 'native/cni/ambit-cni.c']) {
          if (!stage.files.has(abs(need))) throw new Error(`Dockerfile line ${ins.line}: build-cni.sh runs without ${need} in stage ${stage.name}`);
        }
        stage.files.set(abs(cni[1]!), `RUN build-cni.sh (line ${ins.line})`);
      }
      if (/\bnpm run build\b/.test(ins.args)) {
        const project = /tsc -p (\S+)/.exec(pkg.scripts['build'] ?? '')?.[1];
        if (!project) throw new Error(`package.json's build script does not run tsc -p PROJECT: ${pkg.scripts['build']}`);
        buildInputs = tscInputs(project);
        const missing = buildInputs.filter((f) => !stage.files.has(abs(f)));
        if (missing.length) throw new Error(`Dockerfile line ${ins.line}: npm run build compiles files the stage lacks: ${missing.join(', ')}`);
        // tsconfig.json's rootDir is the repository and outDir dist: src/x.ts → dist/src/x.js.
        for (const f of buildInputs) if (f.endsWith('.ts') && !f.endsWith('.d.ts')) stage.files.set(abs(`dist/${f.replace(/\.ts$/, '.js')}`), `RUN npm run build (line ${ins.line}) from ${f}`);
      }
      if (/\bnpm ci\b/.test(ins.args)) {
        for (const need of ['package.json', 'package-lock.json']) if (!stage.files.has(abs(need))) throw new Error(`Dockerfile line ${ins.line}: npm ci without ${need}`);
        stage.files.set(abs('node_modules/.package-lock.json'), `RUN npm ci (line ${ins.line})`);
      }
    }
  }
  return stages;
}

let stages: Stage[];
let final: Stage;

beforeAll(() => {
  context.files = walk();
  stages = replay(readFileSync(join(ROOT, 'deploy/Dockerfile'), 'utf8'));
  final = stages.at(-1)!;
});

describeAsRoot('deploy/Dockerfile against the repository', () => {
  it('copies from the context only sources that exist and that .dockerignore lets through', () => {
    const problems: string[] = [];
    for (const stage of stages) {
      for (const copy of stage.copies.filter((c) => !c.from)) {
        for (const source of copy.sources) {
          const onDisk = isGlob(source) ? context.files.filter((f) => patternRegExp(source).test(f)) : context.files.filter((f) => f === source || f.startsWith(`${source.replace(/\/$/, '')}/`));
          if (onDisk.length === 0) problems.push(`line ${copy.line}: ${source} does not exist`);
          else if (contextMatches(source).length === 0) problems.push(`line ${copy.line}: ${source} is left out by .dockerignore`);
          else if (!isGlob(source) && statSync(join(ROOT, source)).isFile() && ignoredBy(context.rules, source)) problems.push(`line ${copy.line}: ${source} is left out by .dockerignore`);
        }
      }
    }
    expect(problems).toEqual([]);
    // And the stage-to-stage copies name files those stages made.
    const fromStages = stages.flatMap((s) => s.copies.filter((c) => c.from));
    expect(fromStages.length).toBeGreaterThan(0);
    for (const copy of fromStages) expect(copy.matched, `line ${copy.line}: nothing at ${copy.sources.join(' ')} in stage ${copy.from}`).toBeGreaterThan(0);
  });

  it('lets nothing under test/ or bench/ reach any stage, nor the build context, nor the compiled output', () => {
    const named = stages.flatMap((s) => s.copies.flatMap((c) => c.sources.filter((src) => /^(\.\/)?(test|bench)(\/|$)/.test(src)).map((src) => `line ${c.line}: ${src}`)));
    expect(named).toEqual([]);
    const leaked = stages.flatMap((s) => [...s.files].filter(([, origin]) => /(^|[\s(])(test|bench)\//.test(origin)).map(([path, origin]) => `${s.name}: ${path} from ${origin}`));
    expect(leaked).toEqual([]);
    const testsAndBenches = context.files.filter((f) => /^(test|bench)\//.test(f));
    expect(testsAndBenches.length).toBeGreaterThan(10);
    expect(testsAndBenches.filter((f) => !ignoredBy(context.rules, f))).toEqual([]);
    expect(buildInputs.filter((f) => /^(test|bench)\//.test(f))).toEqual([]);
    expect(buildInputs).toContain('src/cli/main.ts');
    // Nor what is large or local: dependencies, build output, git, docs.
    for (const f of ['node_modules/koffi/package.json', 'dist/src/cli/main.js', '.git/HEAD', 'docs/KUBERNETES.md', 'native/cni/build/ambit-cni', 'deploy/Dockerfile']) {
      expect(ignoredBy(context.rules, f), f).toBe(true);
    }
  });

  it('has in the runtime stage everything the processes load at run time', () => {
    const at = (p: string) => posix.join(final.workdir, p);
    const missing = (paths: string[]) => paths.filter((p) => !final.files.has(p));
    // The entry point, and the compiled CLI it imports.
    expect(final.entrypoint?.slice(0, 1)).toEqual(['node']);
    const entry = at(final.entrypoint![1]!);
    expect(missing([entry])).toEqual([]);
    const built = /new URL\('(\.\.\/dist\/[^']+)'/.exec(readFileSync(join(ROOT, 'bin/ambit.js'), 'utf8'))?.[1];
    expect(built).toBe('../dist/src/cli/main.js');
    expect(missing([posix.resolve(posix.dirname(entry), built!)])).toEqual([]);
    // Every module the build emits (the CLI imports any of them).
    const emitted = buildInputs.filter((f) => f.endsWith('.ts')).map((f) => at(`dist/${f.replace(/\.ts$/, '.js')}`));
    expect(emitted.length).toBeGreaterThan(50);
    expect(missing(emitted)).toEqual([]);
    // package.json marks the package root (src/util/package.ts looks for name "ambit"), and the dependencies.
    expect(final.files.get(at('package.json'))).toBe('package.json');
    expect(final.files.has(at('node_modules/.package-lock.json'))).toBe(true);
    expect(final.runs.find((r) => r.includes('npm ci'))).toMatch(/--omit=dev/);
    expect(final.runs.find((r) => r.includes('npm ci'))).not.toMatch(/--omit=optional/); // koffi's native binary
    // The BPF objects (src/ebpf/datapath.ts finds bpf/ above its own file), every committed one.
    const objects = readdirSync(join(ROOT, 'bpf')).filter((f) => f.endsWith('.bpf.o'));
    expect(objects).toEqual(expect.arrayContaining([OUTBOUND_OBJECT, INBOUND_OBJECT]));
    expect(missing(objects.map((o) => at(`bpf/${o}`)))).toEqual([]);
    // The gRPC definitions, loaded from packageRoot()/src/api.
    const protos = readdirSync(join(ROOT, 'src/api')).filter((f) => f.endsWith('.proto'));
    expect(protos.length).toBeGreaterThan(0);
    expect(missing(protos.map((p) => at(`src/api/${p}`)))).toEqual([]);
    // The CNI plugin where the install points the agent, built static by build-cni.sh.
    expect(final.files.get(CNI_BINARY)).toMatch(/^RUN build-cni\.sh/);
    const cniStage = stages.find((s) => s.runs.some((r) => r.includes('build-cni.sh')))!;
    expect(cniStage.runs.find((r) => r.includes('build-cni.sh'))).toMatch(/build-cni\.sh --static /);
    // And no TypeScript sources or test tooling beside them.
    expect([...final.files.keys()].filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))).toEqual([]);
  });

  it('compiles the TypeScript on the builder\'s platform and everything platform-specific on the target\'s', () => {
    const build = stages.find((s) => s.runs.some((r) => r.includes('npm run build')))!;
    expect(build.platform).toBe('$BUILDPLATFORM');
    // The CNI plugin and koffi's binary (npm ci in the runtime stage) are the target's own.
    for (const s of stages.filter((x) => x !== build)) expect(s.platform, s.name).toBeUndefined();
  });
});

// --- ELF ---------------------------------------------------------------------------------------

const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NEEDED = 1n;
const EM_BPF = 247;

interface ElfFacts { class64: boolean; littleEndian: boolean; machine: number; interpreter: boolean; needed: number }

/** Reads an ELF file's header and program headers (64-bit, either byte order): interpreter and DT_NEEDED entries. */
function elf(buf: Buffer): ElfFacts {
  if (buf.subarray(0, 4).toString('latin1') !== '\x7fELF') throw new Error('not an ELF file');
  const class64 = buf[4] === 2;
  const littleEndian = buf[5] === 1;
  const u16 = (o: number) => (littleEndian ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number) => (littleEndian ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const u64 = (o: number) => (littleEndian ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o));
  const machine = u16(18);
  if (!class64) return { class64, littleEndian, machine, interpreter: false, needed: 0 };
  const phoff = Number(u64(0x20));
  const phentsize = u16(0x36);
  const phnum = u16(0x38);
  let interpreter = false;
  let needed = 0;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    const type = u32(ph);
    if (type === PT_INTERP) interpreter = true;
    if (type === PT_DYNAMIC) {
      const offset = Number(u64(ph + 8));
      const size = Number(u64(ph + 32));
      for (let d = offset; d + 16 <= offset + size; d += 16) {
        const tag = u64(d);
        if (tag === 0n) break;
        if (tag === DT_NEEDED) needed++;
      }
    }
  }
  return { class64, littleEndian, machine, interpreter, needed };
}

describeAsRoot('the CNI plugin built as the image builds it', () => {
  const script = join(ROOT, 'scripts/build-cni.sh');
  const build = (out: string, env: Record<string, string> = {}) => spawnSync(script, ['--static', out], { encoding: 'utf8', env: { ...process.env, ...env } });

  it('build-cni.sh --static builds here, and the result needs no interpreter and no shared library', () => {
    const out = join(tmp, 'ambit-cni');
    const r = build(out);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/\(static, /);
    const facts = elf(readFileSync(out));
    expect(facts).toMatchObject({ class64: true, interpreter: false, needed: 0 });
    expect(statSync(out).mode & 0o111).not.toBe(0);
    // The same reading of a dynamic executable finds both, so the check above can fail.
    expect(elf(readFileSync(process.execPath))).toMatchObject({ interpreter: true });
    expect(elf(readFileSync(process.execPath)).needed).toBeGreaterThan(0);
  });

  it('fails loudly, writing nothing, when the compiler cannot link statically or links dynamically anyway', () => {
    const wrapper = (name: string, body: string) => {
      const path = join(tmp, name);
      writeFileSync(path, `#!/bin/sh\n${body}\n`);
      chmodSync(path, 0o755);
      return path;
    };
    const cc = spawnSync('sh', ['-c', 'command -v cc || command -v clang || command -v gcc'], { encoding: 'utf8' }).stdout.trim();
    // A libc without libc.a: the link with -static fails.
    const noStatic = wrapper('cc-no-static', `for a in "$@"; do [ "$a" = -static ] && { echo "ld: cannot find -lc" >&2; exit 1; }; done\nexec ${cc} "$@"`);
    const a = build(join(tmp, 'a'), { CC: noStatic });
    expect(a.status).toBe(1);
    expect(a.stderr).toMatch(/build-cni\.sh: .*cc-no-static cannot link .*ambit-cni\.c statically \(it needs the static C library/);
    expect(existsSync(join(tmp, 'a'))).toBe(false);
    // A compiler that drops -static: the result has an interpreter, and readelf's check refuses it.
    const dropStatic = wrapper('cc-drop-static', `for a in "$@"; do shift; [ "$a" = -static ] || set -- "$@" "$a"; done\nexec ${cc} "$@"`);
    const b = build(join(tmp, 'b'), { CC: dropStatic });
    expect(b.status).toBe(1);
    expect(b.stderr).toMatch(/build-cni\.sh: .* is not static: interpreter '\/lib.*ld-linux.*', shared libraries 'libc\.so\.6 '/);
    expect(existsSync(join(tmp, 'b'))).toBe(false);
  });
});

describeAsRoot('the committed BPF objects', () => {
  it('are BPF for little-endian machines, with no architecture-specific code: the same objects serve amd64 and arm64', () => {
    const objects = readdirSync(join(ROOT, 'bpf')).filter((f) => f.endsWith('.bpf.o'));
    for (const o of objects) expect(elf(readFileSync(join(ROOT, 'bpf', o))), o).toMatchObject({ class64: true, littleEndian: true, machine: EM_BPF });
    // Tracing programs read pt_regs, whose layout is per architecture; these attach to cgroup,
    // sockops and sk_lookup hooks, whose contexts are UAPI structs alike everywhere.
    const sources = readdirSync(join(ROOT, 'bpf')).filter((f) => /\.(c|h)$/.test(f)).map((f) => readFileSync(join(ROOT, 'bpf', f), 'utf8')).join('\n');
    expect(sources).not.toMatch(/bpf_tracing\.h|PT_REGS|__TARGET_ARCH|SEC\("(k|u)probe/);
  });
});

describeAsRoot('make image', () => {
  const dryRun = (...args: string[]) => execFileSync('make', ['-s', '-n', '-C', ROOT, ...args], { encoding: 'utf8' });

  it('builds with docker buildx for amd64 and arm64 by default, loads a single platform, and pushes with image-push', () => {
    expect(dryRun('image', 'IMAGE=registry.example/ambit:t')).toMatch(/^docker buildx build -f deploy\/Dockerfile --platform linux\/amd64,linux\/arm64 -t registry\.example\/ambit:t +\.$/m);
    expect(dryRun('image', 'IMAGE=registry.example/ambit:t', 'PLATFORMS=linux/arm64')).toMatch(/^docker buildx build -f deploy\/Dockerfile --platform linux\/arm64 -t registry\.example\/ambit:t --load \.$/m);
    expect(dryRun('image-push', 'IMAGE=registry.example/ambit:t')).toMatch(/^docker buildx build -f deploy\/Dockerfile --platform linux\/amd64,linux\/arm64 -t registry\.example\/ambit:t --push \.$/m);
  });
});
