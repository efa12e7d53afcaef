/**
 * A Flagger `Canary` (flagger.app/v1beta1) as ambit's canary controller reads it: the fields it
 * acts on, with Flagger's defaults. The object has been validated already (src/config/validate.ts,
 * which reports field paths); this reads what validation let through and never throws on it.
 */
import { durationMs } from '../config/schema.js';
import { isObject } from '../config/schema.js';

export const SUCCESS_RATE = 'request-success-rate';
export const DURATION = 'request-duration';

export type WebhookType = 'pre-rollout' | 'rollout' | 'confirm-rollout' | 'confirm-promotion' | 'post-rollout' | 'rollback' | 'event' | 'confirm-traffic-increase';

export interface CanaryMetric {
  name: typeof SUCCESS_RATE | typeof DURATION;
  /** The window the metric is read over (ms; Flagger's default 1m). */
  intervalMs: number;
  min?: number;
  max?: number;
}

export interface CanaryWebhook {
  name: string;
  type: WebhookType;
  url: string;
  timeoutMs: number;
  metadata: Record<string, string>;
  retries: number;
}

export interface CanarySpec {
  target: { kind: string; name: string };
  service: { name: string; port: number; targetPort: number | string; portName: string };
  /** Between two steps of the analysis (ms); Flagger's floor of 10 s unless the controller lowers it. */
  intervalMs: number;
  threshold: number;
  /** Progressive: the weights the canary is given, one per step, the last being maxWeight. */
  weights: number[];
  /** The weight moved per step after promotion (stepWeightPromotion); 100 = all at once. */
  promotionStep: number;
  /** Blue/green: this many successful checks at weight 0, then promotion. */
  iterations?: number;
  metrics: CanaryMetric[];
  webhooks: CanaryWebhook[];
  progressDeadlineMs: number;
  skipAnalysis: boolean;
  suspend: boolean;
  /** What ambit cannot honour in this spec: the canary is held, not run with a gate skipped. */
  unsupported: string[];
}

/** Flagger's defaults (pkg/apis/flagger/v1beta1): interval 60 s, floor 10 s, metric window 1 m, threshold 1, deadline 600 s. */
export const DEFAULT_INTERVAL_MS = 60_000;
export const MIN_INTERVAL_MS = 10_000;
export const DEFAULT_METRIC_INTERVAL_MS = 60_000;
export const DEFAULT_WEBHOOK_TIMEOUT_MS = 10_000;
export const DEFAULT_PROGRESS_DEADLINE_S = 600;

const str = (v: unknown, d = ''): string => (typeof v === 'string' ? v : d);
const int = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? Math.trunc(v) : undefined);
const dur = (v: unknown, d: number): number => (typeof v === 'string' && v !== '' ? durationMs(v) || d : d);

/** The weights of a progressive analysis: stepWeights as given, else stepWeight up to maxWeight. */
export function stepWeights(analysis: Record<string, unknown>): number[] {
  if (Array.isArray(analysis.stepWeights) && analysis.stepWeights.length > 0) {
    return analysis.stepWeights.map(int).filter((w): w is number => w !== undefined && w > 0 && w <= 100);
  }
  const step = int(analysis.stepWeight) ?? 0;
  const max = Math.min(100, int(analysis.maxWeight) ?? 100);
  if (step <= 0) return [];
  const out: number[] = [];
  for (let w = step; w < max; w += step) out.push(w);
  out.push(max);
  return out;
}

/** Reads a validated Canary's spec; `minIntervalMs` is the controller's floor for `analysis.interval`. */
export function readCanarySpec(raw: unknown, minIntervalMs = MIN_INTERVAL_MS): CanarySpec {
  const spec = isObject(raw) ? raw : {};
  const target = isObject(spec.targetRef) ? spec.targetRef : {};
  const service = isObject(spec.service) ? spec.service : {};
  const analysis = isObject(spec.analysis) ? spec.analysis : isObject(spec.canaryAnalysis) ? spec.canaryAnalysis : {};
  const targetName = str(target.name);
  const iterations = int(analysis.iterations);
  const unsupported: string[] = [];
  const kind = str(target.kind, 'Deployment');
  if (kind !== 'Deployment') unsupported.push(`targetRef.kind ${kind}: ambit runs canaries of Deployments`);
  const declared = Array.isArray(analysis.metrics) ? analysis.metrics.filter(isObject) : [];
  for (const m of declared) {
    if (m.templateRef !== undefined || (m.name !== SUCCESS_RATE && m.name !== DURATION)) unsupported.push(`metric ${JSON.stringify(m.name)}: ambit evaluates only the built-in ${SUCCESS_RATE} and ${DURATION}, not MetricTemplates`);
    else if (!isObject(m.thresholdRange) || (typeof m.thresholdRange.min !== 'number' && typeof m.thresholdRange.max !== 'number')) unsupported.push(`metric ${m.name} has no thresholdRange min or max: it would pass whatever it measures`);
  }
  const metrics: CanaryMetric[] = declared
    .filter((m) => m.templateRef === undefined && (m.name === SUCCESS_RATE || m.name === DURATION))
    .map((m) => {
      const range = isObject(m.thresholdRange) ? m.thresholdRange : {};
      return {
        name: m.name as CanaryMetric['name'],
        intervalMs: dur(m.interval, DEFAULT_METRIC_INTERVAL_MS),
        ...(typeof range.min === 'number' ? { min: range.min } : {}),
        ...(typeof range.max === 'number' ? { max: range.max } : {}),
      };
    });
  const webhooks: CanaryWebhook[] = (Array.isArray(analysis.webhooks) ? analysis.webhooks.filter(isObject) : []).map((w) => ({
    name: str(w.name),
    // The CRD's default type (unset or empty) is rollout.
    type: (str(w.type) || 'rollout') as WebhookType,
    url: str(w.url),
    timeoutMs: dur(w.timeout, DEFAULT_WEBHOOK_TIMEOUT_MS),
    metadata: isObject(w.metadata) ? Object.fromEntries(Object.entries(w.metadata).map(([k, v]) => [k, String(v)])) : {},
    retries: int(w.retries) ?? 0,
  }));
  return {
    target: { kind, name: targetName },
    service: { name: str(service.name) || targetName, port: int(service.port) ?? 80, targetPort: typeof service.targetPort === 'string' || typeof service.targetPort === 'number' ? service.targetPort : int(service.port) ?? 80, portName: str(service.portName, 'http') },
    intervalMs: Math.max(minIntervalMs, dur(analysis.interval, DEFAULT_INTERVAL_MS)),
    threshold: Math.max(1, int(analysis.threshold) ?? 1),
    weights: iterations !== undefined && iterations > 0 ? [] : stepWeights(analysis),
    promotionStep: Math.min(100, Math.max(1, int(analysis.stepWeightPromotion) ?? 100)),
    ...(iterations !== undefined && iterations > 0 ? { iterations } : {}),
    metrics,
    webhooks,
    progressDeadlineMs: (int(spec.progressDeadlineSeconds) ?? DEFAULT_PROGRESS_DEADLINE_S) * 1000,
    skipAnalysis: spec.skipAnalysis === true,
    suspend: spec.suspend === true,
    unsupported,
  };
}
