/**
 * Uninstall or restart, from the API server's own answers about the agent's DaemonSet: gone or
 * being deleted, and the refusals that only happen while the installation is being removed (401
 * for the agent's current token: its ServiceAccount is gone; 403: its Role is) mean uninstall;
 * timeouts, 5xx and network errors mean unknown (the pins stay). Against a small HTTP server that
 * answers as the test says, and a KubeConfig whose token file the test rotates.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KubeClient } from '../../src/kube/client.js';
import { DaemonSetWatch, freshTokenClient, stopKind } from '../../src/node/uninstall.js';

const DS_PATH = '/apis/apps/v1/namespaces/ambit-system/daemonsets/ambit-node';

type Answer = { status: number; body?: unknown } | 'hang';

let server: Server;
let url: string;
/** How the server answers a request (each request's path and Authorization header are kept). */
let answer: (req: IncomingMessage) => Answer;
let requests: { path: string; authorization?: string; watch: boolean }[];
const hanging: ServerResponse[] = [];
let dir: string;

beforeEach(async () => {
  requests = [];
  answer = () => ({ status: 200, body: { metadata: { name: 'ambit-node', resourceVersion: '5' } } });
  dir = mkdtempSync(join(tmpdir(), 'ambit-uninstall-'));
  server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0]!;
    requests.push({ path, authorization: req.headers.authorization, watch: (req.url ?? '').includes('watch=1') });
    const a = answer(req);
    if (a === 'hang') return void hanging.push(res);
    res.writeHead(a.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(a.body ?? { kind: 'Status', code: a.status, message: `HTTP ${a.status} from the test` }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterEach(async () => {
  for (const res of hanging.splice(0)) res.destroy();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

const client = () => new KubeClient({ server: url });

describe('stopKind', () => {
  const cases: Array<[string, Answer, 'uninstall' | 'restart' | 'unknown', RegExp]> = [
    ['the DaemonSet is there', { status: 200, body: { metadata: { name: 'ambit-node' } } }, 'restart', /^DaemonSet ambit-system\/ambit-node is still there$/],
    ['the DaemonSet is being deleted', { status: 200, body: { metadata: { name: 'ambit-node', deletionTimestamp: '2026-01-01T00:00:00Z' } } }, 'uninstall', /is being deleted \(since 2026-01-01T00:00:00Z\)$/],
    ['404: the DaemonSet is gone', { status: 404 }, 'uninstall', /^DaemonSet ambit-system\/ambit-node is gone$/],
    ['401: the agent\'s ServiceAccount is gone', { status: 401 }, 'uninstall', /^reading DaemonSet ambit-system\/ambit-node: HTTP 401 for the agent's current token: its ServiceAccount is gone$/],
    ['403: the agent\'s Role is gone', { status: 403 }, 'uninstall', /^reading DaemonSet ambit-system\/ambit-node: HTTP 403: the agent's Role \(or RoleBinding\) is gone$/],
    ['500', { status: 500 }, 'unknown', /HTTP 500$/],
    ['503 (API server overloaded)', { status: 503 }, 'unknown', /HTTP 503$/],
    ['429 (throttled)', { status: 429 }, 'unknown', /HTTP 429$/],
    ['no answer in time', 'hang', 'unknown', /aborted|timed out|timeout/i],
  ];
  for (const [what, a, kind, reason] of cases) {
    it(`${what} → ${kind}`, async () => {
      answer = () => a;
      const k = await stopKind(client(), 'ambit-system', 'ambit-node', 300);
      expect(k).toEqual({ kind, reason: expect.stringMatching(reason) });
      expect(requests.map((r) => r.path)).toEqual([DS_PATH]);
    });
  }

  it('an API server that is not there → unknown', async () => {
    const gone = url;
    await new Promise((r) => server.close(r));
    const k = await stopKind(new KubeClient({ server: gone }), 'ambit-system', 'ambit-node', 300);
    expect(k).toEqual({ kind: 'unknown', reason: expect.stringMatching(/ECONNREFUSED/) });
    server.listen(0, '127.0.0.1');
  });
});

describe('freshTokenClient', () => {
  it('sends the token as it is in its file now (the kubelet rotates it in place), not a copy up to a minute old', async () => {
    const tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, 'token-1');
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'c', server: url, skipTLSVerify: true }],
      users: [{ name: 'u', authProvider: { name: 'tokenFile', config: { tokenFile } } }],
      contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
      currentContext: 'x',
    });
    // The API server accepts only the token the kubelet wrote last.
    let valid = 'token-1';
    answer = (req) => (req.headers.authorization === `Bearer ${valid}` ? { status: 200, body: { metadata: { name: 'ambit-node' } } } : { status: 401 });
    const fresh = freshTokenClient(kc);
    expect((await stopKind(fresh, 'ambit-system', 'ambit-node', 1000)).kind).toBe('restart');
    writeFileSync(tokenFile, 'token-2');
    valid = 'token-2';
    expect((await stopKind(fresh, 'ambit-system', 'ambit-node', 1000)).kind).toBe('restart');
    expect(requests.map((r) => r.authorization)).toEqual(['Bearer token-1', 'Bearer token-2']);
    // The library's own client still sends the copy it read (it re-reads once a minute): a 401 from it says nothing.
    expect((await stopKind(KubeClient.fromKubeConfig(kc), 'ambit-system', 'ambit-node', 1000)).kind).toBe('uninstall');
    expect(requests.at(-1)!.authorization).toBe('Bearer token-1');
  });

  it('leaves a kubeconfig without a token file as it is', async () => {
    const kc = new KubeConfig();
    kc.loadFromOptions({ clusters: [{ name: 'c', server: url, skipTLSVerify: true }], users: [{ name: 'u', token: 'static' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' });
    await stopKind(freshTokenClient(kc), 'ambit-system', 'ambit-node', 1000);
    expect(requests.map((r) => r.authorization)).toEqual(['Bearer static']);
  });
});

describe('DaemonSetWatch', () => {
  const watches: DaemonSetWatch[] = [];
  afterEach(async () => {
    for (const w of watches.splice(0)) await w.stopKind(50);
  });
  function follow(): DaemonSetWatch {
    const w = new DaemonSetWatch(client(), 'ambit-system', 'ambit-node');
    watches.push(w);
    w.start();
    return w;
  }

  for (const status of [401, 403]) {
    it(`a ${status} while following, then no answer at SIGTERM → uninstall, with the reason`, async () => {
      answer = () => ({ status });
      const w = follow();
      await vi.waitFor(() => expect(requests.length).toBeGreaterThan(0));
      answer = () => 'hang';
      const k = await w.stopKind(200);
      expect(k.kind).toBe('uninstall');
      expect(k.reason).toMatch(status === 401 ? /HTTP 401 for the agent's current token: its ServiceAccount is gone \(seen while following it; now reading .*aborted/ : /HTTP 403: the agent's Role \(or RoleBinding\) is gone \(seen while following it/);
    });
  }

  it('a watch refused with 403 counts too', async () => {
    answer = (req) => ((req.url ?? '').includes('watch=1') ? { status: 403 } : { status: 200, body: { metadata: { name: 'ambit-node', resourceVersion: '7' } } });
    const w = follow();
    await vi.waitFor(() => expect(requests.some((r) => r.watch)).toBe(true));
    answer = () => 'hang';
    expect(await w.stopKind(200)).toMatchObject({ kind: 'uninstall', reason: expect.stringMatching(/HTTP 403/) });
  });

  it('a refusal that the API server takes back (credentials restored) no longer counts', async () => {
    let n = 0;
    answer = (req) => {
      if ((req.url ?? '').includes('watch=1')) return 'hang';
      return n++ === 0 ? { status: 403 } : { status: 200, body: { metadata: { name: 'ambit-node', resourceVersion: '9' } } };
    };
    const w = follow();
    // The first GET is refused; after its backoff (1 s) the next succeeds and a watch opens.
    await vi.waitFor(() => expect(requests.some((r) => r.watch)).toBe(true), { timeout: 3000 });
    answer = () => 'hang';
    expect(await w.stopKind(200)).toMatchObject({ kind: 'unknown' });
  });

  it('a 5xx while following, then no answer at SIGTERM → unknown (the pins stay)', async () => {
    answer = () => ({ status: 503 });
    const w = follow();
    await vi.waitFor(() => expect(requests.length).toBeGreaterThan(0));
    answer = () => 'hang';
    expect(await w.stopKind(200)).toMatchObject({ kind: 'unknown', reason: expect.stringMatching(/aborted/) });
  });

  it('the DaemonSet\'s deletion seen while following decides without asking', async () => {
    answer = () => ({ status: 404 });
    const w = follow();
    await vi.waitFor(() => expect(requests.length).toBeGreaterThan(0));
    const before = requests.length;
    expect(await w.stopKind(200)).toEqual({ kind: 'uninstall', reason: 'DaemonSet ambit-system/ambit-node is gone' });
    expect(requests.length).toBe(before);
  });
});
