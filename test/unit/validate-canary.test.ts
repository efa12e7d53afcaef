/**
 * Validation of Flagger's Canary (flagger.app/v1beta1): the write-up's Canary is accepted with
 * no diagnostic at all; every rule of Flagger's CRD and every limit of ambit's canary runner is
 * reported at its field path.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateMeshObject } from '../../src/config/validate.js';
import { formatDiagnostic, parseManifests, type Diagnostic } from '../../src/kube/manifests.js';

const SHARED = process.env.AMBIT_SHARED_DIR ?? new URL('../../../shared/', import.meta.url).pathname;
if (!existsSync(SHARED)) throw new Error(`the shared conformance data is not at ${SHARED}: set AMBIT_SHARED_DIR`);

function analyze(text: string, file = 'canary.yaml') {
  return parseManifests([{ file, text, dir: '/' }], { validate: validateMeshObject });
}
const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error').map((d) => `${d.path ?? ''}: ${d.message}`);
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning').map((d) => `${d.path ?? ''}: ${d.message}`);

/** A Canary with the given spec (YAML flow or block text indented by two). */
const canary = (spec: string) => `apiVersion: flagger.app/v1beta1
kind: Canary
metadata: { name: backend, namespace: production }
spec:
${spec}`;

/** A Canary whose analysis is the given lines (indented by four). */
const withAnalysis = (analysis: string) => canary(`  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }
  service: { port: 8080 }
  analysis:
${analysis}`);

const SEED = canary(`  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }
  service: { port: 8080 }
  analysis:
    interval: 1m
    threshold: 5
    maxWeight: 50
    stepWeight: 5
    metrics:
    - name: request-success-rate
      thresholdRange: { min: 99 }
      interval: 1m
    - name: request-duration
      thresholdRange: { max: 500 }
      interval: 1m
    webhooks:
    - name: load-test
      url: http://flagger-loadtester/
      timeout: 5s
      metadata: { cmd: "hey -z 1m -q 10 -c 2 http://backend:8080/" }
`);

describe('Flagger Canary', () => {
  it("accepts the write-up's Canary with no error and no warning", () => {
    const seedDir = join(SHARED, 'seed');
    const blocks = readdirSync(seedDir).flatMap((f) => [...readFileSync(join(seedDir, f), 'utf8').matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!))
      .filter((y) => /apiVersion: flagger\.app\//.test(y));
    expect(blocks.length).toBeGreaterThanOrEqual(1);
    for (const y of [...blocks, SEED]) {
      const { resources, diagnostics } = analyze(y);
      expect(diagnostics.map(formatDiagnostic), y).toEqual([]);
      expect(resources.map((r) => `${r.kind} ${r.meta.namespace}/${r.meta.name}`)).toEqual(['Canary production/backend']);
    }
  });

  it('refuses stepWeight "abc" at spec.analysis.stepWeight, with its line', () => {
    const { resources, diagnostics } = analyze(SEED.replace('stepWeight: 5', 'stepWeight: "abc"'));
    expect(resources).toEqual([]);
    expect(diagnostics.map(formatDiagnostic)).toEqual(['canary.yaml:11: document 1 (Canary production/backend): spec.analysis.stepWeight: must be an integer, got string "abc"']);
  });

  it('checks the types and ranges of the analysis as the CRD does (a count is a JSON number, not a string)', () => {
    const { diagnostics } = analyze(withAnalysis(`    interval: 1h
    threshold: 0
    maxWeight: 150
    stepWeight: "5"
    stepWeightPromotion: 101
    primaryReadyThreshold: 101
    canaryReadyThreshold: -1`));
    expect(errors(diagnostics)).toEqual([
      'spec.analysis.interval: must be a duration starting with whole seconds or minutes, such as "30s", "1m" or "1m30s" (Flagger\'s CRD pattern ^[0-9]+(m|s)), got string "1h"',
      'spec.analysis.threshold: must be from 1 to 2147483647, got 0',
      'spec.analysis.maxWeight: must be from 1 to 100, got 150',
      'spec.analysis.stepWeight: must be an integer, got string "5"',
      'spec.analysis.stepWeightPromotion: must be from 1 to 100, got 101',
      'spec.analysis.primaryReadyThreshold: must be from 0 to 100, got 101',
      'spec.analysis.canaryReadyThreshold: must be from 0 to 100, got -1',
    ]);
    expect(warnings(diagnostics)).toEqual(['spec.analysis.primaryReadyThreshold: accepted; not used by ambit', 'spec.analysis.canaryReadyThreshold: accepted; not used by ambit']);
  });

  it('requires the analysis, its interval and threshold, and one of stepWeight, stepWeights, iterations', () => {
    expect(errors(analyze(canary('  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }\n  service: { port: 8080 }')).diagnostics))
      .toEqual(['spec.analysis: required']);
    expect(errors(analyze(withAnalysis('    maxWeight: 50')).diagnostics)).toEqual([
      'spec.analysis.interval: required',
      'spec.analysis.threshold: required',
      'spec.analysis: one of stepWeight, stepWeights, iterations is required',
    ]);
    expect(errors(analyze(withAnalysis('    interval: 1m\n    threshold: 5\n    stepWeight: 10\n    stepWeights: [10, 20]')).diagnostics))
      .toEqual(['spec.analysis: only one of stepWeight, stepWeights, iterations may be set (found stepWeight, stepWeights)']);
    expect(errors(analyze(withAnalysis('    interval: 1m\n    threshold: 5\n    stepWeight: 10\n    iterations: 10')).diagnostics))
      .toEqual(['spec.analysis: only one of stepWeight, stepWeights, iterations may be set (found stepWeight, iterations)']);
    expect(errors(analyze(withAnalysis('    interval: 1m\n    threshold: 5\n    iterations: 0')).diagnostics))
      .toEqual(['spec.analysis.iterations: must be from 1 to 2147483647, got 0']);
  });

  it('checks the weights against each other: maxWeight at least stepWeight, stepWeights strictly increasing up to 100', () => {
    const { diagnostics } = analyze(withAnalysis('    interval: 30s\n    threshold: 2\n    maxWeight: 10\n    stepWeight: 20'));
    expect(errors(diagnostics)).toEqual(['spec.analysis.maxWeight: must be at least stepWeight (20), got 10']);
    const steps = analyze(withAnalysis('    interval: 30s\n    threshold: 2\n    stepWeights: [10, 10, 5, 50, 120]'));
    expect(errors(steps.diagnostics)).toEqual([
      'spec.analysis.stepWeights[4]: must be from 1 to 100, got 120',
      'spec.analysis.stepWeights[1]: must be greater than the step before it (10), got 10',
      'spec.analysis.stepWeights[2]: must be greater than the step before it (10), got 5',
    ]);
    expect(errors(analyze(withAnalysis('    interval: 30s\n    threshold: 2\n    stepWeights: []')).diagnostics)).toEqual(['spec.analysis.stepWeights: must have at least 1 item']);
    const good = analyze(withAnalysis('    interval: 1m30s\n    threshold: 2\n    stepWeights: [1, 5, 25, 50]\n    stepWeightPromotion: 25'));
    expect(good.diagnostics).toEqual([]);
  });

  it('warns for a maxWeight that Flagger ignores (with stepWeights or iterations)', () => {
    const steps = analyze(withAnalysis('    interval: 1m\n    threshold: 2\n    maxWeight: 80\n    stepWeights: [10, 50]'));
    expect(errors(steps.diagnostics)).toEqual([]);
    expect(warnings(steps.diagnostics)).toEqual(['spec.analysis.maxWeight: ignored when stepWeights is set: the last step is the maximum weight']);
    const blueGreen = analyze(withAnalysis('    interval: 1m\n    threshold: 2\n    maxWeight: 50\n    iterations: 10'));
    expect(errors(blueGreen.diagnostics)).toEqual([]);
    expect(warnings(blueGreen.diagnostics)).toEqual(['spec.analysis.maxWeight: ignored with iterations (blue/green): the canary gets no share of traffic before promotion']);
  });

  it('runs canaries of Deployments only', () => {
    const ref = (r: string) => errors(analyze(canary(`  targetRef: ${r}\n  service: { port: 8080 }\n  analysis: { interval: 1m, threshold: 1, stepWeight: 10 }`)).diagnostics);
    expect(ref('{ apiVersion: apps/v1, kind: DaemonSet, name: agent }')).toEqual(['spec.targetRef.kind: ambit runs canaries of Deployments, got DaemonSet']);
    expect(ref('{ apiVersion: v1, kind: Service, name: backend }')).toEqual(['spec.targetRef.kind: ambit runs canaries of Deployments, got Service']);
    expect(ref('{ apiVersion: apps/v1, kind: StatefulSet, name: db }')).toEqual(['spec.targetRef.kind: must be one of Deployment, DaemonSet, Service, got string "StatefulSet"']);
    expect(ref('{ apiVersion: apps/v1beta1, kind: Deployment, name: backend }')).toEqual(['spec.targetRef.apiVersion: a Deployment is apps/v1, got "apps/v1beta1"']);
    expect(ref('{ kind: Deployment }')).toEqual(['spec.targetRef.apiVersion: required', 'spec.targetRef.name: required']);
    expect(errors(analyze(canary('  service: { port: 8080 }\n  analysis: { interval: 1m, threshold: 1, stepWeight: 10 }')).diagnostics)).toEqual(['spec.targetRef: required']);
  });

  it('acts on the service port, targetPort, portName and name; accepts the rest with a warning', () => {
    const svc = (s: string) => analyze(canary(`  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }\n  service: ${s}\n  analysis: { interval: 1m, threshold: 1, stepWeight: 10 }`)).diagnostics;
    expect(svc('{ name: backend, port: 80, targetPort: http, portName: http }')).toEqual([]);
    expect(svc('{ port: 80, targetPort: 8080 }')).toEqual([]);
    expect(errors(svc('{ port: 70000, targetPort: 0 }'))).toEqual(['spec.service.port: must be from 1 to 65535, got 70000', 'spec.service.targetPort: must be from 1 to 65535, got 0']);
    expect(errors(svc('{ targetPort: "" }'))).toEqual(['spec.service.port: required', 'spec.service.targetPort: must not be empty']);
    expect(errors(svc('{ port: 80, prot: 81 }'))).toEqual(['spec.service.prot: unknown field "prot"']);
    const extras = svc('{ port: 80, portDiscovery: true, hosts: [app.example.com], gateways: [public], trafficPolicy: { tls: { mode: DISABLE } }, retries: { attempts: 3 }, timeout: 5s }');
    expect(errors(extras)).toEqual([]);
    expect(warnings(extras)).toEqual(['portDiscovery', 'hosts', 'gateways', 'trafficPolicy', 'retries', 'timeout'].map((f) => `spec.service.${f}: accepted; not used by ambit`));
    expect(errors(analyze(canary('  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }\n  analysis: { interval: 1m, threshold: 1, stepWeight: 10 }')).diagnostics)).toEqual(['spec.service: required']);
  });

  it('evaluates only the built-in metrics: any other gate is an error, never skipped in silence', () => {
    const { diagnostics } = analyze(withAnalysis(`    interval: 1m
    threshold: 5
    stepWeight: 10
    metrics:
    - name: error-rate
      thresholdRange: { max: 1 }
    - name: latency
      templateRef: { name: latency, namespace: flagger }
      thresholdRange: { max: 300 }
    - name: custom
      query: sum(rate(errors[1m]))
      thresholdRange: { max: 1 }
    - name: request-success-rate
    - name: request-success-rate
      thresholdRange: {}
    - name: request-success-rate
      thresholdRange: { min: 150 }
    - name: request-duration
      thresholdRange: { min: 500, max: 100 }
      interval: 90
    - name: request-duration
      thresholdRange: { max: -1 }
    - interval: 1m
      thresholdRange: { max: 1 }`));
    const only = 'ambit evaluates only the built-in metrics request-success-rate and request-duration; MetricTemplate metrics are not supported';
    expect(errors(diagnostics)).toEqual([
      `spec.analysis.metrics[0].name: "error-rate": ${only}`,
      `spec.analysis.metrics[1].templateRef: ${only}`,
      `spec.analysis.metrics[2].query: Prometheus queries are not evaluated: ${only}`,
      'spec.analysis.metrics[3].thresholdRange: required: the range the metric must stay in (min, max or both)',
      'spec.analysis.metrics[4].thresholdRange: needs min, max or both',
      'spec.analysis.metrics[5].thresholdRange.min: request-success-rate is a percentage: must be from 0 to 100, got 150',
      'spec.analysis.metrics[6].thresholdRange: min (500) is above max (100): no value passes',
      'spec.analysis.metrics[6].interval: must be a duration starting with whole seconds or minutes, such as "30s", "1m" or "1m30s" (Flagger\'s CRD pattern ^[0-9]+(m|s)), got number 90',
      'spec.analysis.metrics[7].thresholdRange.max: request-duration is in milliseconds: must not be negative, got -1',
      'spec.analysis.metrics[8].name: required',
    ]);
    expect(warnings(diagnostics)).toEqual(['spec.analysis.metrics[2].query: deprecated: use templateRef']);
  });

  it('does not take the deprecated metric threshold for a range: the canary controller reads thresholdRange only', () => {
    const alone = analyze(withAnalysis('    interval: 1m\n    threshold: 5\n    stepWeight: 10\n    metrics: [{ name: request-success-rate, threshold: 99 }]'));
    expect(errors(alone.diagnostics)).toEqual(['spec.analysis.metrics[0].thresholdRange: required: the range the metric must stay in (min, max or both)']);
    expect(warnings(alone.diagnostics)).toEqual(['spec.analysis.metrics[0].threshold: deprecated, and not read by ambit: use thresholdRange']);
    const both = analyze(withAnalysis('    interval: 1m\n    threshold: 5\n    stepWeight: 10\n    metrics: [{ name: request-success-rate, threshold: 99, thresholdRange: { min: 99 } }]'));
    expect(errors(both.diagnostics)).toEqual([]);
    expect(warnings(both.diagnostics)).toEqual(['spec.analysis.metrics[0].threshold: deprecated, and not read by ambit: use thresholdRange']);
  });

  it('checks webhooks: name, type, http(s) url, timeout, metadata, retries', () => {
    const { diagnostics } = analyze(withAnalysis(`    interval: 1m
    threshold: 5
    stepWeight: 10
    webhooks:
    - { name: gate, type: confirm-promotion, url: "http://flagger-loadtester.test/gate/approve", muteAlert: true, retries: 2 }
    - { name: default-type, type: "", url: "https://hooks.example.com/x" }
    - { name: smoke, type: smoke-test, url: flagger-loadtester, timeout: 5 seconds }
    - { type: rollout, metadata: { count: 3 }, retries: -1, muteAlert: "no" }
    - { name: insecure, url: "https://hooks.example.com/x", disableTLS: true }`));
    expect(errors(diagnostics)).toEqual([
      'spec.analysis.webhooks[2].type: must be one of pre-rollout, rollout, confirm-rollout, confirm-promotion, post-rollout, rollback, event, confirm-traffic-increase, got string "smoke-test"',
      'spec.analysis.webhooks[2].url: must be an http(s) URL, got string "flagger-loadtester"',
      'spec.analysis.webhooks[2].timeout: must be a duration starting with whole seconds or minutes, such as "30s", "1m" or "1m30s" (Flagger\'s CRD pattern ^[0-9]+(m|s)), got string "5 seconds"',
      'spec.analysis.webhooks[3].name: required',
      'spec.analysis.webhooks[3].url: required',
      'spec.analysis.webhooks[3].metadata.count: must be a string, got number 3',
      'spec.analysis.webhooks[3].retries: must be from 0 to 2147483647, got -1',
      'spec.analysis.webhooks[3].muteAlert: must be true or false, got string "no"',
    ]);
    expect(warnings(diagnostics)).toEqual(['spec.analysis.webhooks[4].disableTLS: accepted; not used by ambit']);
  });

  it('accepts with a warning what ambit does not act on: other providers, refs, revertOnDeletion, mirroring, A/B matches, alerts', () => {
    const { diagnostics } = analyze(canary(`  provider: linkerd
  metricsServer: http://prometheus:9090
  targetRef: { apiVersion: apps/v1, kind: Deployment, name: backend }
  autoscalerRef: { apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler, name: backend }
  ingressRef: { apiVersion: networking.k8s.io/v1, kind: Ingress, name: backend }
  upstreamRef: { apiVersion: gloo.solo.io/v1, kind: Upstream, name: backend }
  service: { port: 8080 }
  progressDeadlineSeconds: 60
  skipAnalysis: false
  suspend: false
  revertOnDeletion: true
  analysis:
    interval: 1m
    threshold: 5
    iterations: 10
    mirror: true
    mirrorWeight: 50
    match: [{ headers: { x-canary: { exact: insider } } }]
    sessionAffinity: { cookieName: flagger-cookie }
    alerts: [{ name: on-call, severity: error, providerRef: { name: on-call } }]`));
    expect(errors(diagnostics)).toEqual([]);
    expect(warnings(diagnostics)).toEqual([
      'spec.metricsServer: accepted; not used by ambit',
      'spec.autoscalerRef: accepted; not used by ambit',
      'spec.ingressRef: accepted; not used by ambit',
      'spec.upstreamRef: accepted; not used by ambit',
      'spec.revertOnDeletion: accepted; not used by ambit',
      'spec.analysis.mirror: accepted; not used by ambit',
      'spec.analysis.mirrorWeight: accepted; not used by ambit',
      'spec.analysis.match: accepted; not used by ambit',
      'spec.analysis.sessionAffinity: accepted; not used by ambit',
      'spec.analysis.alerts: accepted; not used by ambit',
      'spec.provider: ambit routes the canary through its waypoint whatever the provider, got "linkerd"',
    ]);
    expect(analyze(SEED.replace('spec:\n', 'spec:\n  provider: istio\n')).diagnostics).toEqual([]);
  });

  it('checks the top-level fields and the apiVersion', () => {
    const { diagnostics } = analyze(SEED.replace('spec:\n', 'spec:\n  progressDeadlineSeconds: 0\n  skipAnalysis: "yes"\n  suspend: 1\n  paused: true\n'));
    expect(errors(diagnostics)).toEqual([
      'spec.progressDeadlineSeconds: must be from 1 to 2147483647, got 0',
      'spec.skipAnalysis: must be true or false, got string "yes"',
      'spec.suspend: must be true or false, got number 1',
      'spec.paused: unknown field "paused"',
    ]);
    expect(errors(analyze(SEED.replace('flagger.app/v1beta1', 'flagger.app/v1alpha3')).diagnostics))
      .toEqual(['apiVersion: Canary is served as flagger.app/v1beta1, got "flagger.app/v1alpha3"']);
  });

  it('accepts the deprecated canaryAnalysis with a warning, and ignores it next to analysis', () => {
    const old = analyze(SEED.replace('  analysis:\n', '  canaryAnalysis:\n'));
    expect(errors(old.diagnostics)).toEqual([]);
    expect(warnings(old.diagnostics)).toEqual(['spec.canaryAnalysis: deprecated: use analysis']);
    const bad = analyze(SEED.replace('  analysis:\n', '  canaryAnalysis:\n').replace('stepWeight: 5', 'stepWeight: "abc"'));
    expect(errors(bad.diagnostics)).toEqual(['spec.canaryAnalysis.stepWeight: must be an integer, got string "abc"']);
    const both = analyze(SEED.replace('spec:\n', 'spec:\n  canaryAnalysis: { interval: 1m, threshold: 1, stepWeight: 10 }\n'));
    expect(errors(both.diagnostics)).toEqual([]);
    expect(warnings(both.diagnostics)).toEqual(['spec.canaryAnalysis: deprecated: use analysis', 'spec.canaryAnalysis: ignored: analysis is set']);
  });
});
