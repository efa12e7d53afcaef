/**
 * Every secret, configMap and projected volume an ambit pod mounts is readable by the container
 * that mounts it, under the kubelet's rules for the files of those volumes:
 * - files are owned by root (uid 0); their group is the pod's fsGroup when set, else root;
 * - their mode is the item's mode, else the volume's defaultMode, else 0644;
 * - a projected ServiceAccount token is 0600, owned by the pod's user (the runAsUser every
 *   container shares), when that user or an fsGroup is set;
 * - the ServiceAccount token the API server's admission adds (automountServiceAccountToken) is
 *   such a projected volume, defaultMode 0644.
 * A process reads a file through its owner, group or other bits, in that order, unless it holds
 * CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH: only a root container has capabilities, those of the
 * runtime's default set that it does not drop, plus those it adds.
 */
import { describe, expect, it } from 'vitest';
import { CONTROLLER, NODE_AGENT, renderInstall } from '../../src/install/render.js';
import { PLATFORMS, resolveValues, type Values } from '../../src/install/values.js';
import { waypointObjects } from '../../src/install/waypoint.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- pod specs are walked by path */

/** containerd's (and CRI-O's) default capability set for a container. */
const RUNTIME_DEFAULT_CAPS = ['CHOWN', 'DAC_OVERRIDE', 'FSETID', 'FOWNER', 'MKNOD', 'NET_RAW', 'SETGID', 'SETUID', 'SETFCAP', 'SETPCAP', 'NET_BIND_SERVICE', 'SYS_CHROOT', 'KILL', 'AUDIT_WRITE'];

interface Proc { uid: number; gid: number; groups: Set<number>; caps: Set<string> }
interface FileOf { volume: string; file: string; uid: number; gid: number; mode: number }

/** Who the container's process is; a manifest that leaves it to the image cannot be checked. */
function processOf(pod: any, c: any): Proc {
  const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
  const gid = c.securityContext?.runAsGroup ?? pod.securityContext?.runAsGroup;
  if (uid === undefined || gid === undefined) throw new Error(`container ${c.name}: no runAsUser/runAsGroup, so the image decides who reads its volumes`);
  const fsGroup = pod.securityContext?.fsGroup;
  const groups = new Set<number>([gid, ...(fsGroup === undefined ? [] : [fsGroup]), ...(pod.securityContext?.supplementalGroups ?? [])]);
  const drop: string[] = c.securityContext?.capabilities?.drop ?? [];
  const add: string[] = c.securityContext?.capabilities?.add ?? [];
  const caps = uid === 0 ? new Set([...RUNTIME_DEFAULT_CAPS.filter((x) => !drop.includes('ALL') && !drop.includes(x)), ...add]) : new Set<string>();
  return { uid, gid, groups, caps };
}

/** The user every container runs as, when they all share one (the kubelet's FsUser). */
function podUser(pod: any): number | undefined {
  const users = new Set(pod.containers.map((c: any) => c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser));
  const [only] = [...users];
  return users.size === 1 && typeof only === 'number' ? only : undefined;
}

/** The files of one volume as the kubelet writes them (one entry per source; names the keys when listed). */
function filesOf(pod: any, volume: any): FileOf[] {
  const fsGroup: number | undefined = pod.securityContext?.fsGroup;
  const gid = fsGroup ?? 0;
  const source = volume.secret ?? volume.configMap;
  if (source) {
    const mode = source.defaultMode ?? 0o644;
    const items: any[] = source.items ?? [{ path: '*' }];
    return items.map((i) => ({ volume: volume.name, file: i.path, uid: 0, gid, mode: i.mode ?? mode }));
  }
  if (volume.projected) {
    const mode = volume.projected.defaultMode ?? 0o644;
    const user = podUser(pod);
    return volume.projected.sources.map((s: any) => {
      if (s.serviceAccountToken) {
        const owned = user !== undefined || fsGroup !== undefined;
        return { volume: volume.name, file: s.serviceAccountToken.path, uid: user ?? 0, gid, mode: owned ? 0o600 : mode };
      }
      return { volume: volume.name, file: '*', uid: 0, gid, mode };
    });
  }
  return [];
}

function canRead(p: Proc, f: FileOf): boolean {
  if (p.caps.has('DAC_OVERRIDE') || p.caps.has('DAC_READ_SEARCH')) return true;
  if (p.uid === f.uid) return (f.mode & 0o400) !== 0;
  if (p.groups.has(f.gid)) return (f.mode & 0o040) !== 0;
  return (f.mode & 0o004) !== 0;
}

/** The token volume admission adds to a pod that automounts its ServiceAccount token. */
const KUBE_API_ACCESS = {
  name: 'kube-api-access',
  projected: { defaultMode: 0o644, sources: [{ serviceAccountToken: { expirationSeconds: 3607, path: 'token' } }, { configMap: { name: 'kube-root-ca.crt' } }, { downwardAPI: {} }] },
};

/** Every file of a mounted secret/configMap/projected volume its container cannot read, described. */
function unreadableMounts(pod: any): string[] {
  const volumes: any[] = [...(pod.volumes ?? []), ...(pod.automountServiceAccountToken === false ? [] : [KUBE_API_ACCESS])];
  const problems: string[] = [];
  for (const c of pod.containers) {
    const p = processOf(pod, c);
    const mounted = new Set<string>([...(c.volumeMounts ?? []).map((m: any) => m.name), ...(pod.automountServiceAccountToken === false ? [] : [KUBE_API_ACCESS.name])]);
    for (const v of volumes.filter((x) => mounted.has(x.name))) {
      for (const f of filesOf(pod, v)) {
        if (!canRead(p, f)) {
          problems.push(`container ${c.name}: ${f.volume}/${f.file} (${f.uid}:${f.gid} mode 0${f.mode.toString(8)}) is not readable by uid ${p.uid} gid ${p.gid} groups [${[...p.groups].join(',')}]`);
        }
      }
    }
  }
  return problems;
}

const gateway = { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'Gateway', metadata: { name: 'wp', namespace: 'shop' }, spec: { gatewayClassName: 'ambit-waypoint' } };

function podTemplates(v: Values): [string, any][] {
  const objects = renderInstall(v);
  const spec = (kind: string, name?: string, from = objects): any => from.find((o) => o.kind === kind && (name === undefined || o.metadata.name === name))!.spec;
  return [
    ['controller', spec('Deployment', CONTROLLER).template.spec],
    ['node agent', spec('DaemonSet', NODE_AGENT).template.spec],
    ['waypoint', spec('Deployment', undefined, waypointObjects(gateway, v)).template.spec],
  ];
}

describe('the kubelet\'s file permissions model', () => {
  const pod = (sc: Record<string, unknown>, csc: Record<string, unknown>, volume: Record<string, unknown>) => ({
    securityContext: sc, automountServiceAccountToken: false,
    containers: [{ name: 'c', securityContext: csc, volumeMounts: [{ name: 'v', mountPath: '/v' }] }],
    volumes: [{ name: 'v', ...volume }],
  });

  it('a root-owned 0400 Secret is unreadable by another user, readable once its group is the fsGroup and the mode group-readable', () => {
    expect(unreadableMounts(pod({ runAsUser: 1000, runAsGroup: 1000 }, {}, { secret: { secretName: 's', defaultMode: 0o400 } }))).toEqual([
      'container c: v/* (0:0 mode 0400) is not readable by uid 1000 gid 1000 groups [1000]',
    ]);
    // fsGroup alone does not do: the mode gives the group nothing.
    expect(unreadableMounts(pod({ runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000 }, {}, { secret: { secretName: 's', defaultMode: 0o400 } }))).toHaveLength(1);
    expect(unreadableMounts(pod({ runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000 }, {}, { secret: { secretName: 's', defaultMode: 0o440 } }))).toEqual([]);
    // A ConfigMap's default 0644 is world-readable.
    expect(unreadableMounts(pod({ runAsUser: 1000, runAsGroup: 1000 }, {}, { configMap: { name: 'c' } }))).toEqual([]);
  });

  it('a projected token is 0600, owned by the pod\'s user when it has one', () => {
    const token = { projected: { sources: [{ serviceAccountToken: { path: 'token', audience: 'x' } }] } };
    expect(unreadableMounts(pod({ runAsUser: 1000, runAsGroup: 1000 }, {}, token))).toEqual([]);
    // Containers of different users: no owner to give it to, and root keeps it 0600 once an fsGroup is set.
    const two = { ...pod({ runAsGroup: 1000, fsGroup: 1000 }, { runAsUser: 1000 }, token) };
    two.containers.push({ name: 'd', securityContext: { runAsUser: 1001 }, volumeMounts: [{ name: 'v', mountPath: '/v' }] });
    expect(unreadableMounts(two)).toEqual([
      'container c: v/token (0:1000 mode 0600) is not readable by uid 1000 gid 1000 groups [1000]',
      'container d: v/token (0:1000 mode 0600) is not readable by uid 1001 gid 1000 groups [1000]',
    ]);
  });

  it('root without DAC capabilities reads a root-owned file through the owner bits only; a manifest without a user cannot be judged', () => {
    const dropped = { runAsUser: 0, runAsGroup: 0, capabilities: { drop: ['ALL'] } };
    expect(unreadableMounts(pod({}, dropped, { secret: { secretName: 's', defaultMode: 0o400 } }))).toEqual([]);
    expect(unreadableMounts(pod({}, dropped, { secret: { secretName: 's', defaultMode: 0o040 } }))).toHaveLength(1);
    expect(unreadableMounts(pod({}, { runAsUser: 0, runAsGroup: 0 }, { secret: { secretName: 's', defaultMode: 0o040 } }))).toEqual([]);
    expect(() => unreadableMounts(pod({}, {}, { configMap: { name: 'c' } }))).toThrow(/container c: no runAsUser\/runAsGroup/);
  });
});

describe('every ambit pod can read what it mounts', () => {
  it.each(PLATFORMS.map((p) => [p]))('platform=%s: controller, node agent and waypoint', (platform) => {
    const v = resolveValues([`platform=${platform}`, 'imagePullSecrets=regcred']);
    for (const [name, pod] of podTemplates(v)) expect(unreadableMounts(pod), name).toEqual([]);
  });

  it('so with the CNI plugin off and the agent under another AppArmor profile', () => {
    for (const [name, pod] of podTemplates(resolveValues(['cni.enabled=false', 'nodeAgent.appArmorProfile=runtime/default']))) expect(unreadableMounts(pod), name).toEqual([]);
  });

  it('the check fails on the controller as it was rendered before (uid 1000, no fsGroup, CA Secret 0400)', () => {
    const [, controller] = podTemplates(resolveValues([]))[0]!;
    const before = structuredClone(controller);
    delete before.securityContext.fsGroup;
    before.volumes.find((x: any) => x.name === 'ca').secret.defaultMode = 0o400;
    expect(unreadableMounts(before)).toEqual(['container controller: ca/* (0:0 mode 0400) is not readable by uid 1000 gid 1000 groups [1000]']);
    // And the fix: fsGroup 1000 and a group-readable mode.
    expect(controller.securityContext.fsGroup).toBe(1000);
    expect(controller.volumes.find((x: any) => x.name === 'ca').secret.defaultMode).toBe(0o440);
  });
});
