/** A dual-stack pod's every address reaches the node agent: Kubernetes status.podIPs, the local cluster's derived IPv6. */
import { describe, expect, it } from 'vitest';
import { apiPod } from '../../src/config/api-objects.js';
import { workloadOf } from '../../src/config/model.js';
import { podAddress6 } from '../../src/local/layout.js';

const pod = (status: Record<string, unknown>) => apiPod({
  apiVersion: 'v1', kind: 'Pod',
  metadata: { name: 'web', namespace: 'shop', uid: 'u1', labels: {} },
  spec: { nodeName: 'n1', containers: [{ name: 'c' }] },
  status: { phase: 'Running', ...status },
});

describe('dual-stack pods', () => {
  it('takes every status.podIPs address, podIP first, each once', () => {
    const p = pod({ podIP: '10.0.0.5', podIPs: [{ ip: '10.0.0.5' }, { ip: 'fd00::5' }, { ip: 'fd00::5' }] })!;
    expect(p.ips).toEqual(['10.0.0.5', 'fd00::5']);
    expect(workloadOf(p, { 'ambit.dev/dataplane-mode': 'ambient' }, 'cluster.local').ips).toEqual(['10.0.0.5', 'fd00::5']);
  });

  it('ignores entries of status.podIPs that are not addresses', () => {
    const p = pod({ podIP: '10.0.0.5', podIPs: [{ ip: '10.0.0.5' }, { ip: 'not-an-ip' }, 'fd00::9', { ip: 7 }] })!;
    expect(p.ips).toBeUndefined();
    expect(workloadOf(p, {}, 'cluster.local').ips).toEqual(['10.0.0.5']);
  });

  it('gives local cluster pods an IPv6 address derived from their IPv4 one', () => {
    expect(podAddress6('10.244.2.17')).toBe('fd00:10:244:2::17');
  });
});
