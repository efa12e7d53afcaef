/**
 * The CustomResourceDefinitions ambit owns: only ambit.dev RateLimit. Istio's and the Gateway
 * API's CRDs are prerequisites installed from those projects.
 *
 * The RateLimit schema mirrors `rateLimit` in src/config/validate.ts field for field (required
 * fields, enums, integer ranges, at least one targetRef). Unknown fields are not listed here as
 * `additionalProperties: false` (structural schemas forbid it): the API server prunes them, and
 * kubectl's default strict field validation rejects them, as validate.ts does. One deliberate
 * difference: validate.ts also accepts integers written as strings ("100", as protobuf JSON
 * does); the CRD stores typed objects and takes JSON integers only.
 */
import type { K8sObject } from './objects.js';

export const RATELIMIT_GROUP = 'ambit.dev';
export const RATELIMIT_VERSION = 'v1alpha1';

const MAX = 1_000_000_000;

/** openAPIV3Schema of ambit.dev/v1alpha1 RateLimit. */
export function rateLimitSchema(): Record<string, unknown> {
  return {
    type: 'object',
    description: 'A token bucket per route of each target Service, enforced by its waypoint; requests past it get 429.',
    required: ['spec'],
    properties: {
      apiVersion: { type: 'string' },
      kind: { type: 'string' },
      metadata: { type: 'object' },
      spec: {
        type: 'object',
        required: ['targetRefs', 'requestsPerUnit', 'unit'],
        properties: {
          targetRefs: {
            type: 'array',
            minItems: 1,
            description: 'Services in the same namespace, bound to a waypoint.',
            items: {
              type: 'object',
              required: ['kind', 'name'],
              properties: {
                group: { type: 'string', description: 'the Service\'s group: "" (core)' },
                kind: { type: 'string', enum: ['Service'] },
                name: { type: 'string', minLength: 1 },
              },
            },
          },
          requestsPerUnit: { type: 'integer', minimum: 1, maximum: MAX, description: 'the sustained rate' },
          unit: { type: 'string', enum: ['second', 'minute', 'hour'] },
          burst: { type: 'integer', minimum: 1, maximum: MAX, description: 'bucket size (default: requestsPerUnit)' },
        },
      },
      status: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true },
    },
  };
}

export function rateLimitCrd(labels: Record<string, string>): K8sObject {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `ratelimits.${RATELIMIT_GROUP}`, labels },
    spec: {
      group: RATELIMIT_GROUP,
      scope: 'Namespaced',
      names: { plural: 'ratelimits', singular: 'ratelimit', kind: 'RateLimit', listKind: 'RateLimitList', categories: ['ambit'] },
      versions: [{
        name: RATELIMIT_VERSION,
        served: true,
        storage: true,
        subresources: { status: {} },
        additionalPrinterColumns: [
          { name: 'Rate', type: 'integer', jsonPath: '.spec.requestsPerUnit' },
          { name: 'Unit', type: 'string', jsonPath: '.spec.unit' },
          { name: 'Burst', type: 'integer', jsonPath: '.spec.burst' },
          { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
        ],
        schema: { openAPIV3Schema: rateLimitSchema() },
      }],
    },
  };
}
