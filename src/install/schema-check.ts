/**
 * Checks rendered objects against the Kubernetes OpenAPI schemas with kubernetes-models (the
 * schemas of Kubernetes 1.27). kubernetes-models is a development dependency: it is loaded only
 * when a check runs, so `ambit install` without `--dry-run` works from an image built with
 * `npm ci --omit=dev`.
 */
import { describeObject, type K8sObject } from './objects.js';

/** apiVersion → the kubernetes-models module holding its kinds. */
const MODULES: Readonly<Record<string, string>> = {
  v1: 'kubernetes-models/v1',
  'apps/v1': 'kubernetes-models/apps/v1',
  'policy/v1': 'kubernetes-models/policy/v1',
  'rbac.authorization.k8s.io/v1': 'kubernetes-models/rbac.authorization.k8s.io/v1',
  'apiextensions.k8s.io/v1': 'kubernetes-models/apiextensions.k8s.io/v1',
  'coordination.k8s.io/v1': 'kubernetes-models/coordination.k8s.io/v1',
};

export interface SchemaResult { object: string; errors: string[] }

type ModelClass = new (data: unknown) => { validate(): void };

/** Thrown when kubernetes-models is not installed (a production image). */
export class SchemaUnavailableError extends Error {
  override readonly name = 'SchemaUnavailableError';
}

async function modelFor(o: K8sObject): Promise<ModelClass> {
  const spec = MODULES[o.apiVersion];
  if (!spec) throw new Error(`no Kubernetes schema known for ${o.apiVersion}`);
  let mod: Record<string, unknown>;
  try {
    mod = await import(spec) as Record<string, unknown>;
  } catch (err) {
    throw new SchemaUnavailableError(`cannot load ${spec}: ${(err as Error).message}`);
  }
  const cls = mod[o.kind];
  if (typeof cls !== 'function') throw new Error(`no Kubernetes schema known for ${o.apiVersion} ${o.kind}`);
  return cls as ModelClass;
}

/** One result per object: empty errors when it validates. */
export async function checkSchemas(objects: readonly K8sObject[]): Promise<SchemaResult[]> {
  const results: SchemaResult[] = [];
  for (const o of objects) {
    const errors: string[] = [];
    try {
      const Model = await modelFor(o);
      new Model(o).validate();
    } catch (err) {
      if (err instanceof SchemaUnavailableError) throw err;
      const e = err as Error & { errors?: { instancePath?: string; message?: string }[] };
      if (Array.isArray(e.errors) && e.errors.length > 0) errors.push(...e.errors.map((x) => `${x.instancePath || '/'}: ${x.message ?? 'invalid'}`));
      else errors.push(e.message);
    }
    results.push({ object: describeObject(o), errors });
  }
  return results;
}
