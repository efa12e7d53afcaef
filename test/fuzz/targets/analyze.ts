/**
 * Manifests for `ambit analyze` (and the controller's manifest directory): the same parsing and
 * validation (`parseManifests` with `validateMeshObject`) given mutated Istio, Gateway API, ambit
 * and Kubernetes objects, broken YAML and random text. Every input must give diagnostics — each
 * naming its file, document and reason — and never an exception.
 */
import { tmpdir } from 'node:os';
import { validateMeshObject } from '../../../src/config/validate.js';
import { parseManifests } from '../../../src/kube/manifests.js';
import { manifests, type ManifestText } from '../gen-manifests.js';
import { Finding, type FuzzTarget } from '../harness.js';

export const analyzeTarget: FuzzTarget<ManifestText, undefined> = {
  name: 'analyze',
  what: 'manifest files (mutated Istio/Gateway API/ambit/Kubernetes objects as YAML or JSON, broken YAML, random text) through ambit analyze\'s parsing and validation',
  input: manifests,
  setup: () => Promise.resolve(undefined),
  run(_ctx, input) {
    let result: ReturnType<typeof parseManifests>;
    try {
      result = parseManifests([{ file: 'fuzz.yaml', text: input.text, dir: tmpdir() }], { validate: validateMeshObject, imagesOnly: true });
    } catch (err) {
      throw new Finding(`ambit analyze throws: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
    JSON.stringify(result.diagnostics); // what --json prints
    const nameless = result.diagnostics.find((d) => !d.message || d.source?.file !== 'fuzz.yaml');
    if (nameless) throw new Finding(`a diagnostic without its reason or file: ${JSON.stringify(nameless)}`);
    const errors = result.diagnostics.filter((d) => d.severity === 'error').length;
    return Promise.resolve(errors > 0 ? 'errors' : result.diagnostics.length > 0 ? 'warnings' : 'valid');
  },
  teardown: () => Promise.resolve(),
};
