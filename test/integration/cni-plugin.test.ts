/**
 * The ambit-cni plugin (native/cni/ambit-cni.c): built once with scripts/build-cni.sh, then run
 * the way a container runtime runs it (CNI_* environment, the network config on stdin) against a
 * stand-in node agent on a unix socket. The stand-in records each request line and answers
 * "<exit code>\n<body>", or never answers.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeAsRoot } from './helpers/root.js';

const ROOT = new URL('../..', import.meta.url).pathname;
const BUILD = join(ROOT, 'scripts/build-cni.sh');
const MiB = 1024 * 1024;
const SUPPORTED = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

/** The compiler build-cni.sh would pick, if any. */
function findCompiler(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v "${CC:-cc}" || command -v clang || command -v gcc'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

interface StandIn {
  path: string;
  /** Each request as received, up to the plugin's shutdown(SHUT_WR). */
  requests: string[];
  close(): Promise<void>;
}

const POD_ENV = {
  CNI_CONTAINERID: 'c0ffee01',
  CNI_NETNS: '/var/run/netns/cni-1234',
  CNI_IFNAME: 'eth0',
  CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=users-7d9f',
  CNI_PATH: '/opt/cni/bin',
};

const PREV = {
  cniVersion: '1.0.0',
  interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1234' }],
  ips: [{ address: '10.1.2.3/24', gateway: '10.1.2.1', interface: 0 }],
};

const compiler = findCompiler();

describeAsRoot('ambit-cni plugin', () => describe.skipIf(!compiler)(compiler ? `built with ${compiler}` : 'skipped: no C compiler (cc, clang or gcc)', () => {
  let dir: string;
  let plugin: string;
  let sockets = 0;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ambit-cniplugin-'));
    plugin = join(dir, 'ambit-cni');
    execFileSync('bash', [BUILD, plugin], { stdio: ['ignore', 'ignore', 'pipe'] });
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh socket path in the temp dir (short: sun_path holds 107 bytes). */
  const socketPath = (): string => join(dir, `a${++sockets}.sock`);

  const config = (extra: Record<string, unknown>): string =>
    JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambit-cni', ...extra });

  function run(command: string | undefined, stdin: string | Buffer, env: Record<string, string> = POD_ENV): Promise<Run> {
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const child = spawn(plugin, [], {
        env: command === undefined ? env : { ...env, CNI_COMMAND: command },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (c: Buffer) => out.push(c));
      child.stderr.on('data', (c: Buffer) => err.push(c));
      // The plugin stops reading an oversize config: EPIPE here is expected.
      child.stdin.on('error', () => {});
      const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(killer);
        const stdout = Buffer.concat(out).toString('utf8');
        resolve({ code, stdout, stderr: Buffer.concat(err).toString('utf8'), ms: Date.now() - started });
      });
      child.stdin.end(stdin);
    });
  }

  /** A stand-in agent: answers every request with `answer`, or never if it is null. */
  async function standIn(answer: string | null, path = socketPath()): Promise<StandIn> {
    const requests: string[] = [];
    const open = new Set<Socket>();
    // allowHalfOpen: the plugin shuts its side down before the answer is written.
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      open.add(socket);
      const chunks: Buffer[] = [];
      socket.on('error', () => {});
      socket.on('close', () => open.delete(socket));
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('end', () => {
        requests.push(Buffer.concat(chunks).toString('utf8'));
        if (answer !== null) socket.end(answer);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, resolve);
    });
    const close = (): Promise<void> =>
      new Promise((resolve) => {
        for (const s of open) s.destroy();
        server.close(() => resolve());
      });
    return { path, requests, close };
  }

  async function withStandIn(answer: string | null, body: (agent: StandIn) => Promise<void>): Promise<void> {
    const agent = await standIn(answer);
    try {
      await body(agent);
    } finally {
      await agent.close();
    }
  }

  /** A socket file nobody listens on: its listener was SIGKILLed, so it never unlinked it. */
  function staleSocket(): string {
    const path = socketPath();
    const script = "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))";
    spawnSync(process.execPath, ['-e', script, path], { timeout: 10_000 });
    expect(existsSync(path)).toBe(true);
    return path;
  }

  const parse = (text: string): Record<string, unknown> => JSON.parse(text) as Record<string, unknown>;

  /** Runs body with ambit installed on the "node": the marker next to the plugin, as the installer writes it. */
  async function installed(body: (marker: string) => Promise<void>): Promise<void> {
    const marker = `${plugin}.installed`;
    writeFileSync(marker, 'ambit\n');
    try {
      await body(marker);
    } finally {
      rmSync(marker, { force: true });
    }
  }

  describe('VERSION, no-ops and bad commands', () => {
    it('VERSION reports the supported versions in the config cniVersion', async () => {
      const r = await run('VERSION', '{"cniVersion":"0.4.0"}');
      expect(r.code).toBe(0);
      expect(parse(r.stdout)).toEqual({ cniVersion: '0.4.0', supportedVersions: SUPPORTED });
    });

    it('VERSION without a config answers in 1.0.0', async () => {
      const r = await run('VERSION', '');
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe('{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}');
    });

    it.each(['CHECK', 'STATUS', 'GC'])('%s exits 0 and prints nothing', async (command) => {
      const r = await run(command, config({ socket: socketPath(), prevResult: PREV }));
      expect(r.code).toBe(0);
      expect(r.stdout).toBe('');
    });

    it('an unknown or missing CNI_COMMAND is error 4', async () => {
      for (const command of ['FROB', undefined]) {
        const r = await run(command, config({ cniVersion: '0.4.0' }));
        expect(r.code).toBe(1);
        const result = parse(r.stdout);
        expect(result).toMatchObject({ cniVersion: '0.4.0', code: 4 });
        expect(result.msg).toContain('CNI_COMMAND');
      }
    });
  });

  describe('ADD and DEL through the agent', () => {
    it('ADD sends one line with the pod and the config verbatim, and relays the answer', async () => {
      const body = JSON.stringify({ ...PREV, dns: { nameservers: ['10.96.0.10'] } });
      await withStandIn(`0\n${body}`, async (agent) => {
        const cfg = config({ socket: agent.path, prevResult: PREV });
        const r = await run('ADD', cfg);
        expect(r.code).toBe(0);
        expect(r.stdout).toBe(body);
        expect(agent.requests).toHaveLength(1);
        const line = agent.requests[0] ?? '';
        expect(line).toBe(
          `{"command":"ADD","containerId":"c0ffee01","netns":"/var/run/netns/cni-1234","ifname":"eth0",` +
            `"args":"K8S_POD_NAMESPACE=shop;K8S_POD_NAME=users-7d9f","config":${cfg}}\n`,
        );
        const request = parse(line);
        expect(Object.keys(request)).toEqual(['command', 'containerId', 'netns', 'ifname', 'args', 'config']);
        expect(request.config).toEqual(JSON.parse(cfg));
      });
    });

    it('escapes the environment and keeps a multi-line config on one line', async () => {
      await withStandIn('0\n{}', async (agent) => {
        const cfg = JSON.stringify({ cniVersion: '1.0.0', socket: agent.path, note: 'tab\there' }, null, 2);
        const env = { CNI_CONTAINERID: 'q"b\\s', CNI_NETNS: 'ctl\x01\x1f', CNI_IFNAME: 'é✓' };
        const r = await run('ADD', cfg, env);
        expect(r.code).toBe(0);
        const line = agent.requests[0] ?? '';
        expect(line.indexOf('\n')).toBe(line.length - 1);
        expect(line).toContain('"netns":"ctl\\u0001\\u001f"');
        expect(parse(line)).toEqual({
          command: 'ADD',
          containerId: 'q"b\\s',
          netns: 'ctl\x01\x1f',
          ifname: 'é✓',
          args: '',
          config: JSON.parse(cfg),
        });
      });
    });

    it("ADD relays the agent's error result and exit code 1", async () => {
      const error = '{"cniVersion":"1.0.0","code":11,"msg":"x"}';
      await withStandIn(`1\n${error}`, async (agent) => {
        const r = await run('ADD', config({ socket: agent.path }));
        expect(r.code).toBe(1);
        expect(r.stdout).toBe(error);
      });
    });

    it('DEL is forwarded and exits 0', async () => {
      await withStandIn('0\n', async (agent) => {
        const r = await run('DEL', config({ socket: agent.path, prevResult: PREV }));
        expect(r.code).toBe(0);
        expect(r.stdout).toBe('');
        expect(parse(agent.requests[0] ?? '')).toMatchObject({ command: 'DEL', containerId: 'c0ffee01', ifname: 'eth0' });
      });
    });

    it('an unreadable answer is error 11 for ADD and ignored by DEL', async () => {
      await withStandIn('ok\n{}', async (agent) => {
        const add = await run('ADD', config({ socket: agent.path }));
        expect(add.code).toBe(1);
        expect(parse(add.stdout)).toMatchObject({ code: 11 });
        const del = await run('DEL', config({ socket: agent.path }));
        expect(del.code).toBe(0);
      });
    });
  });

  describe('when the agent is absent, down or silent', () => {
    it('not installed (no marker) and no socket file: ADD passes prevResult through verbatim, DEL exits 0', async () => {
      const path = join(dir, 'missing', 'cni.sock');
      // Spacing kept on purpose: the output must be these very bytes.
      const prev = '{ "cniVersion": "1.0.0",  "ips": [ {"address": "10.1.2.3/24"} ] }';
      const cfg = `{"cniVersion":"1.0.0","name":"n","socket":${JSON.stringify(path)},"prevResult":${prev}}`;
      const add = await run('ADD', cfg);
      expect(add.code).toBe(0);
      expect(add.stdout).toBe(prev);
      expect(JSON.parse(add.stdout)).toEqual(JSON.parse(prev));
      expect((await run('DEL', cfg)).code).toBe(0);
    });

    it('no socket file and no prevResult: ADD prints an empty result', async () => {
      const r = await run('ADD', config({ cniVersion: '0.4.0', socket: join(dir, 'missing.sock') }));
      expect(r.code).toBe(0);
      expect(parse(r.stdout)).toEqual({ cniVersion: '0.4.0' });
    });

    it('installed (marker) but no socket file, as after a reboot (/var/run is a tmpfs): ADD fails closed with code 11, DEL exits 0', async () => {
      const path = join(dir, 'rebooted', 'cni.sock');
      const cfg = config({ socket: path, prevResult: PREV });
      await installed(async (marker) => {
        const add = await run('ADD', cfg);
        expect(add.code).toBe(1);
        const result = parse(add.stdout);
        expect(result).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: `ambit node agent not running at ${path}` });
        expect(String(result.details)).toContain(`ambit is installed on this node (${marker})`);
        expect(String(result.details)).toMatch(/delete that file and the ambit-cni entry/);
        const del = await run('DEL', cfg);
        expect(del.code).toBe(0);
        expect(del.stdout).toBe('');
      });
    });

    it('installed, and its own binary replaced while it runs (an upgrade): still finds the marker', async () => {
      const swap = join(dir, 'swap');
      mkdirSync(swap);
      const path = join(swap, 'ambit-cni');
      copyFileSync(plugin, path);
      writeFileSync(`${path}.installed`, 'ambit\n');
      const child = spawn(path, [], { env: { ...POD_ENV, CNI_COMMAND: 'ADD' }, stdio: ['pipe', 'pipe', 'inherit'] });
      let stdout = '';
      child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
      const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
      // Executing: the installer renames the new binary over it (so /proc/self/exe reads "… (deleted)").
      await new Promise((resolve, reject) => child.once('spawn', resolve).once('error', reject));
      copyFileSync(plugin, `${path}.new`);
      renameSync(`${path}.new`, path);
      child.stdin.end(config({ socket: join(swap, 'cni.sock'), prevResult: PREV }));
      expect(await closed).toBe(1);
      expect(parse(stdout)).toMatchObject({ code: 11, msg: expect.stringMatching(/not running/), details: expect.stringContaining(`(${path}.installed)`) });
    });

    it('a socket nobody listens on: ADD fails closed with code 11 when installed, DEL exits 0', async () => {
      const path = staleSocket();
      const cfg = config({ socket: path, prevResult: PREV });
      await installed(async () => {
        const add = await run('ADD', cfg);
        expect(add.code).toBe(1);
        const result = parse(add.stdout);
        expect(result).toMatchObject({ cniVersion: '1.0.0', code: 11, msg: `ambit node agent not reachable at ${path}` });
        expect(String(result.details)).toMatch(/refused/i);
        const del = await run('DEL', cfg);
        expect(del.code).toBe(0);
        expect(del.stdout).toBe('');
      });
    });

    it('a socket nobody listens on and no marker (an uninstall cut short): ADD passes through', async () => {
      const add = await run('ADD', config({ socket: staleSocket(), prevResult: PREV }));
      expect(add.code).toBe(0);
      expect(parse(add.stdout)).toEqual(PREV);
    });

    it('ADD without CNI_CONTAINERID is error 4 (the agent tells sandboxes apart by it)', async () => {
      await withStandIn('0\n{}', async (agent) => {
        const { CNI_CONTAINERID: _id, ...env } = POD_ENV;
        const add = await run('ADD', config({ socket: agent.path, prevResult: PREV }), env);
        expect(add.code).toBe(1);
        expect(parse(add.stdout)).toMatchObject({ code: 4, msg: 'CNI_CONTAINERID is not set' });
        expect(agent.requests).toEqual([]);
      });
    });

    it('an agent that never answers: ADD times out after timeoutSeconds with code 11, DEL exits 0', async () => {
      await withStandIn(null, async (agent) => {
        const cfg = config({ socket: agent.path, timeoutSeconds: 1 });
        const add = await run('ADD', cfg);
        expect(add.code).toBe(1);
        expect(parse(add.stdout)).toMatchObject({ code: 11 });
        expect(add.ms).toBeGreaterThanOrEqual(900);
        expect(add.ms).toBeLessThan(2_500);
        const del = await run('DEL', cfg);
        expect(del.code).toBe(0);
        expect(del.ms).toBeLessThan(2_500);
        expect(agent.requests).toHaveLength(2);
      });
    });
  });

  describe('reading the config', () => {
    // Decoys: quotes and braces inside strings, the wanted keys nested or inside strings, and an
    // escaped key that decodes to "socket".
    const tricky = (path: string, prev: string): string =>
      `{"cniVersion":"1.0.0","name":"a\\"}{b","x":{"socket":"/nope","prevResult":{"bad":1}},` +
      `"list":["socket","]\\\\",{"prevResult":[]}],"prevResultX":{},"note":"\\"socket\\":\\"/nope\\"",` +
      `"sock\\u0065t":${JSON.stringify(path)},"prevResult":${prev},"tail":[[{}],-1.5e3,true,null]}`;
    const trickyPrev = '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0\\"}]\\\\"}],"dns":{}}';

    it('finds socket past escaped quotes and braces', async () => {
      await withStandIn('0\n{"cniVersion":"1.0.0"}', async (agent) => {
        const cfg = tricky(agent.path, trickyPrev);
        const r = await run('ADD', cfg);
        expect(r.code).toBe(0);
        expect(agent.requests).toHaveLength(1);
        expect(parse(agent.requests[0] ?? '').config).toEqual(JSON.parse(cfg));
      });
    });

    it('finds prevResult past escaped quotes and braces', async () => {
      const r = await run('ADD', tricky(join(dir, 'missing.sock'), trickyPrev));
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(trickyPrev);
      expect(JSON.parse(r.stdout)).toEqual(JSON.parse(trickyPrev));
    });

    it('refuses a config over 1 MiB with code 5, and accepts exactly 1 MiB', async () => {
      const small = config({ socket: join(dir, 'missing.sock'), prevResult: PREV });
      const exact = small + ' '.repeat(MiB - small.length);
      const ok = await run('ADD', exact);
      expect(ok.code).toBe(0);
      expect(parse(ok.stdout)).toEqual(PREV);

      const over = await run('ADD', exact + ' ');
      expect(over.code).toBe(1);
      expect(parse(over.stdout)).toMatchObject({ cniVersion: '1.0.0', code: 5 });
      expect(String(parse(over.stdout).msg)).toMatch(/1 MiB/);

      const huge = await run('ADD', Buffer.alloc(8 * MiB, 0x20));
      expect(huge.code).toBe(1);
      expect(parse(huge.stdout)).toMatchObject({ code: 5 });
    });

    it('rejects malformed JSON with code 6 on ADD and exits 0 on DEL', async () => {
      for (const bad of ['', '[]', '{"socket":"/x",}', '{"a":"unterminated}', '{"a":01}', '{} {}', '{"a":"raw\nnewline"}']) {
        const add = await run('ADD', bad);
        expect(add.code, bad).toBe(1);
        expect(parse(add.stdout), bad).toMatchObject({ code: 6 });
        expect((await run('DEL', bad)).code, bad).toBe(0);
      }
    });

    it('rejects wrongly typed keys with code 7', async () => {
      for (const extra of [{ socket: 42 }, { socket: '' }, { timeoutSeconds: '5' }, { timeoutSeconds: 0 }, { cniVersion: 1 }]) {
        const r = await run('ADD', config(extra));
        expect(r.code, JSON.stringify(extra)).toBe(1);
        expect(parse(r.stdout)).toMatchObject({ code: 7 });
      }
    });

    it('rejects nesting deeper than 128 levels instead of recursing without bound', async () => {
      const deep = (n: number): string => `{"socket":${JSON.stringify(join(dir, 'missing.sock'))},"d":${'['.repeat(n)}${']'.repeat(n)}}`;
      expect((await run('ADD', deep(127))).code).toBe(0);
      const r = await run('ADD', deep(100_000));
      expect(r.code).toBe(1);
      expect(parse(r.stdout)).toMatchObject({ code: 6 });
    });
  });
}));
