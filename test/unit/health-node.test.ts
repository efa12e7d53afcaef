/**
 * The node agent's probes on its health port (15021): readiness follows the agent's config from
 * the controller; liveness answers whenever the process does, whatever the controller does.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveTelemetry } from '../../src/node/telemetry-http.js';
import { MeshMetrics } from '../../src/telemetry/metrics.js';

const agent = { metrics: new MeshMetrics({ defaultMetrics: false }), ready: false };
let servers: Server[];
let health = 0;

beforeAll(async () => {
  servers = await serveTelemetry(agent, '127.0.0.1', 0, 0);
  health = (servers[1]!.address() as AddressInfo).port;
});
afterAll(() => Promise.all(servers.map((s) => new Promise((r) => { s.closeAllConnections(); s.close(r); }))));

const get = async (path: string, method = 'GET') => {
  const res = await fetch(`http://127.0.0.1:${health}${path}`, { method });
  return { status: res.status, body: await res.text() };
};

describe('the node agent\'s probes', () => {
  it('is live but not ready before its first config from the controller', async () => {
    expect(await get('/healthz/ready')).toEqual({ status: 503, body: 'not ready: no config from the controller yet\n' });
    expect(await get('/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
  });

  it('is ready once it has config, and live throughout', async () => {
    agent.ready = true;
    expect(await get('/healthz/ready')).toEqual({ status: 200, body: 'ready\n' });
    expect(await get('/healthz/live')).toEqual({ status: 200, body: 'alive\n' });
  });

  it('answers HEAD, refuses other methods and unknown paths by name', async () => {
    expect((await get('/healthz/live', 'HEAD')).status).toBe(200);
    expect(await get('/healthz/live', 'POST')).toEqual({ status: 405, body: 'POST not allowed: GET /healthz/live\n' });
    expect(await get('/healthz')).toEqual({ status: 404, body: 'not found: try /healthz/ready or /healthz/live\n' });
  });
});
