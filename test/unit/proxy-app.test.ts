/**
 * startProxyApp, which `ambit waypoint run` and `ambit gateway run` start through: what it hands
 * the proxy's start, one close however often it is stopped, and the CPU profile
 * AMBIT_CPU_PROFILE_DIR asks for, named after the proxy and written once it has closed.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { WAYPOINT_ADMIN_PORT } from '../../src/waypoint/admin.js';
import { startProxyApp, type ProxyStartOptions } from '../../src/waypoint/app.js';

const CERT = '-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUROOT\n-----END CERTIFICATE-----\n';
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ambit-proxy-app-'));
  writeFileSync(join(dir, 'token'), 'a-token\n');
  writeFileSync(join(dir, 'roots.pem'), CERT);
});
afterEach(() => {
  vi.unstubAllEnvs();
  rmSync(dir, { recursive: true, force: true });
});

const flags = () => ({ namespace: 'shop', name: 'web', trustDomain: 'cluster.local', controller: 'ambit-controller:15012', tokenFile: join(dir, 'token'), caFile: join(dir, 'roots.pem') });

it('starts the proxy with its flags read and stops it once, then writes the CPU profile asked for', async () => {
  vi.stubEnv('AMBIT_CPU_PROFILE_DIR', join(dir, 'profiles'));
  const events: string[] = [];
  let given: ProxyStartOptions | undefined;
  const { app, stop } = await startProxyApp('gateway', flags(), async (o) => {
    given = o;
    return { close: async () => { events.push(`closed, profiles: ${readdirSync(join(dir, 'profiles')).length}`); } };
  });
  expect(given).toMatchObject({ namespace: 'shop', name: 'web', trustDomain: 'cluster.local', adminPort: WAYPOINT_ADMIN_PORT, controller: { address: 'ambit-controller:15012', roots: [CERT] } });
  const token = given!.controller.token;
  expect(typeof token === 'function' ? token() : token).toBe('a-token');
  expect(given!.tracing).toBeUndefined();
  await Promise.all([stop(), stop()]);
  await stop();
  await app.close();
  expect(events).toEqual(['closed, profiles: 0', 'closed, profiles: 1']);
  expect(readdirSync(join(dir, 'profiles'))).toEqual([`gateway.shop.web.${process.pid}.cpuprofile`]);
});

it('profiles nothing without AMBIT_CPU_PROFILE_DIR, and a failing close still stops', async () => {
  vi.stubEnv('AMBIT_CPU_PROFILE_DIR', '');
  const { stop } = await startProxyApp('waypoint', { ...flags(), tracing: { samplingPercent: 5 } }, async (o) => {
    expect(o.tracing).toEqual({ samplingPercent: 5 });
    return { close: () => Promise.reject(new Error('already gone')) };
  });
  await expect(stop()).resolves.toBeUndefined();
  expect(existsSync(join(dir, 'profiles'))).toBe(false);
});
