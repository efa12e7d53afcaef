/** Plain Kubernetes objects as the renderer builds them, and their YAML stream. */
import { stringify } from 'yaml';
import { packageVersion } from '../util/package.js';

export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
} & Record<string, unknown>;

export const PART_OF = 'ambit';

/** The recommended labels of every object ambit installs. */
export function commonLabels(component: string): Record<string, string> {
  return {
    'app.kubernetes.io/name': `ambit-${component}`,
    'app.kubernetes.io/component': component,
    'app.kubernetes.io/part-of': PART_OF,
    'app.kubernetes.io/managed-by': 'ambit-install',
    'app.kubernetes.io/version': packageVersion(),
  };
}

/** `group/version Kind namespace/name`, as the CLI reports an object. */
export function describeObject(o: K8sObject): string {
  return `${o.apiVersion} ${o.kind} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`;
}

/** A YAML stream (`---` between documents), as `kubectl apply -f -` reads it. */
export function toYamlStream(objects: readonly K8sObject[], header?: string): string {
  const head = header ? `${header.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n')}\n` : '';
  return head + objects.map((o) => `---\n${stringify(o, { lineWidth: 0 })}`).join('');
}
