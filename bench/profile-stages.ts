/**
 * What each stage of a request costs in a V8 CPU profile of the waypoint (or any ambit process):
 * every sample goes to one stage, by the frames on its stack. The nearest frame to the leaf that
 * belongs to a specific stage (metrics, access log, tracing, authorization, routing, balancing,
 * resilience, the upstream HTTP client, the proxy's own handling, the HTTP server, HBONE's HTTP/2
 * and TLS) wins; failing
 * that, Node's streams and events, then garbage collection, native code ("(program)") and the
 * rest. Idle samples are left out; shares are of the busy samples.
 *
 *   npx tsx bench/profile-stages.ts PROFILE.cpuprofile [--title TEXT] [--out FILE.md]
 *
 * `bench/waypoint-proxy.ts --cpu-prof DIR` writes such a profile of the proxy alone;
 * `bench/waypoint.ts --profile DIR` one of the waypoint in the cluster.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode { id: number; callFrame: { functionName: string; url: string }; children?: number[] }
interface Profile { nodes: ProfileNode[]; samples: number[] }

/** Specific stages, each by the frames that belong to it (function name or script URL). */
const STAGES: { stage: string; match: (fn: string, url: string) => boolean }[] = [
  { stage: 'metrics (Istio request metrics)', match: (fn, url) => /telemetry\/metrics\.[jt]s$/.test(url) || /prom-client/.test(url) },
  { stage: 'access log (building and writing the line)', match: (fn, url) => /\/(pino|sonic-boom|fast-json-stringify|quick-format-unescaped)\//.test(url) || fn === 'requestReporter' || /waypoint\/run\.[jt]s$/.test(url) },
  { stage: 'tracing (trace context, spans at 1 %)', match: (_fn, url) => /telemetry\/tracing\.[jt]s$/.test(url) },
  { stage: 'L7 authorization', match: (_fn, url) => /waypoint\/authz\.[jt]s$/.test(url) },
  { stage: 'routing', match: (_fn, url) => /waypoint\/routing\.[jt]s$/.test(url) },
  { stage: 'load balancing', match: (_fn, url) => /waypoint\/balancer\.[jt]s$/.test(url) },
  { stage: 'resilience (pools, outlier detection, retries)', match: (_fn, url) => /waypoint\/resilience\.[jt]s$/.test(url) },
  { stage: 'upstream HTTP client (Node: ClientRequest, keep-alive agent)', match: (fn, url) => /^node:_http_(client|agent)$/.test(url) || fn === 'h1Call' || fn === 'h2Call' },
  { stage: 'the waypoint\'s own request handling (proxy: serve, attempt, headers)', match: (_fn, url) => /waypoint\/proxy\.[jt]s$/.test(url) },
  { stage: 'HTTP server (Node: parser, request, response)', match: (_fn, url) => /^node:_http_(server|incoming|outgoing|common)$/.test(url) },
  { stage: 'HBONE (HTTP/2 CONNECT streams, TLS)', match: (_fn, url) => /^node:internal\/http2\//.test(url) || /^node:_tls_/.test(url) || /node\/hbone\.[jt]s$/.test(url) || /node:internal\/js_stream_socket/.test(url) },
];
const GENERIC = 'Node streams and events';
const isGeneric = (url: string) => /^node:internal\/streams\//.test(url) || url === 'node:events' || /^node:internal\/(process\/task_queues|stream_base_commons)/.test(url);

export function stages(profile: Profile): { stage: string; samples: number; share: number }[] {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const memo = new Map<number, string | null>();
  const stageOf = (leaf: number): string | null => {
    const known = memo.get(leaf);
    if (known !== undefined) return known;
    const top = byId.get(leaf)!.callFrame.functionName;
    let result: string | null;
    if (top === '(idle)') result = null;
    else {
      let generic = false;
      let found: string | undefined;
      for (let id: number | undefined = leaf; id !== undefined && !found; id = parent.get(id)) {
        const { functionName, url } = byId.get(id)!.callFrame;
        found = STAGES.find((s) => s.match(functionName, url))?.stage;
        if (!found && isGeneric(url)) generic = true;
      }
      result = found ?? (generic ? GENERIC : top === '(garbage collector)' ? 'garbage collection' : top === '(program)' ? 'native, not attributed ("(program)")' : 'other');
    }
    memo.set(leaf, result);
    return result;
  };
  const counts = new Map<string, number>();
  let busy = 0;
  for (const s of profile.samples) {
    const stage = stageOf(s);
    if (stage === null) continue;
    busy++;
    counts.set(stage, (counts.get(stage) ?? 0) + 1);
  }
  return [...counts].map(([stage, samples]) => ({ stage, samples, share: samples / busy })).sort((a, b) => b.samples - a.samples);
}

function main(): void {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { title: { type: 'string' }, out: { type: 'string' } } });
  const file = positionals[0];
  if (!file) throw new Error('usage: npx tsx bench/profile-stages.ts PROFILE.cpuprofile [--title TEXT] [--out FILE.md]');
  const rows = stages(JSON.parse(readFileSync(file, 'utf8')) as Profile);
  const lines = ['| stage | share of the busy samples |', '| --- | ---: |', ...rows.map((r) => `| ${r.stage} | ${(100 * r.share).toFixed(1)} % |`)];
  process.stdout.write(`${lines.join('\n')}\n`);
  if (values.out) writeFileSync(values.out, `${values.title ? `${values.title}\n\n` : ''}${lines.join('\n')}\n`);
}

main();
