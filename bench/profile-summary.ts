/**
 * Summaries of what `bench/discovery.ts --profile DIR` writes: a V8 CPU profile's self time by
 * function, and a heap snapshot's objects by constructor, with their own (shallow) and retained
 * sizes (retained: what would be freed with them, from the snapshot's dominator tree).
 *
 *   npx tsx bench/profile-summary.ts FILE.cpuprofile|FILE.heapsnapshot [--top 25]
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
const top = Number(values.top);

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

function cpu(path: string): void {
  const p = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byNode = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  // Each sample's time is the delta to the next one (V8's timeDeltas are to the previous).
  for (let i = 0; i < p.samples.length; i++) {
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    const n = byNode.get(p.samples[i]!)!;
    const f = n.callFrame;
    const where = f.url ? `${f.url.replace(/^.*\/(node_modules|src|bench)\//, '$1/')}:${f.lineNumber + 1}` : '';
    const key = `${f.functionName || '(anonymous)'} ${where}`.trim();
    self.set(key, (self.get(key) ?? 0) + dt);
    total += dt;
  }
  console.log(`${basename(path)}: ${total.toFixed(0)} ms sampled`);
  console.log('| self ms | % | function |\n|---:|---:|---|');
  for (const [k, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`| ${ms.toFixed(0)} | ${((100 * ms) / total).toFixed(1)} | \`${k}\` |`);
}

interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] }; node_count: number };
  nodes: number[]; edges: number[]; strings: string[];
}

function heap(path: string): void {
  const h = JSON.parse(readFileSync(path, 'utf8')) as HeapSnapshot;
  const nf = h.snapshot.meta.node_fields;
  const ef = h.snapshot.meta.edge_fields;
  const N = nf.length;
  const E = ef.length;
  const [typeF, nameF, sizeF, edgeCountF] = ['type', 'name', 'self_size', 'edge_count'].map((f) => nf.indexOf(f)) as [number, number, number, number];
  const [eTypeF, eToF] = ['type', 'to_node'].map((f) => ef.indexOf(f)) as [number, number];
  const nodeTypes = h.snapshot.meta.node_types[0];
  const edgeTypes = h.snapshot.meta.edge_types[0];
  const weak = edgeTypes.indexOf('weak');
  const count = h.nodes.length / N;
  const firstEdge = new Uint32Array(count + 1);
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e;
    e += h.nodes[i * N + edgeCountF]! * E;
    firstEdge[i + 1] = e;
  }
  // Dominators (Cooper, Harvey, Kennedy) over strong edges, in reverse postorder from the root (node 0).
  const order = new Int32Array(count).fill(-1);
  const post: number[] = [];
  const stack: number[] = [0];
  const next = new Uint32Array(count);
  order[0] = -2;
  for (let i = 0; i < count; i++) next[i] = firstEdge[i]!;
  while (stack.length) {
    const v = stack.at(-1)!;
    if (next[v]! < firstEdge[v + 1]!) {
      const e = next[v]!;
      next[v] = e + E;
      if (h.edges[e + eTypeF] === weak) continue;
      const w = h.edges[e + eToF]! / N;
      if (order[w] === -1) {
        order[w] = -2;
        stack.push(w);
      }
    } else {
      stack.pop();
      order[v] = post.length;
      post.push(v);
    }
  }
  const preds: number[][] = Array.from({ length: count }, () => []);
  for (let v = 0; v < count; v++) {
    if (order[v]! < 0) continue;
    for (let e = firstEdge[v]!; e < firstEdge[v + 1]!; e += E) {
      if (h.edges[e + eTypeF] === weak) continue;
      const w = h.edges[e + eToF]! / N;
      if (order[w]! >= 0) preds[w]!.push(v);
    }
  }
  const idom = new Int32Array(count).fill(-1);
  idom[0] = 0;
  const intersect = (a: number, b: number) => {
    while (a !== b) {
      while (order[a]! < order[b]!) a = idom[a]!;
      while (order[b]! < order[a]!) b = idom[b]!;
    }
    return a;
  };
  for (let changed = true; changed;) {
    changed = false;
    for (let i = post.length - 2; i >= 0; i--) {
      const v = post[i]!;
      let d = -1;
      for (const p of preds[v]!) if (idom[p] !== -1) d = d === -1 ? p : intersect(p, d);
      if (d !== -1 && idom[v] !== d) {
        idom[v] = d;
        changed = true;
      }
    }
  }
  const retained = new Float64Array(count);
  for (let v = 0; v < count; v++) retained[v] = h.nodes[v * N + sizeF]!;
  for (const v of post) if (v !== 0 && idom[v]! >= 0) retained[idom[v]!] = retained[idom[v]!]! + retained[v]!;
  // By constructor: objects, their own size, and the retained size of those not dominated by another of the same constructor.
  const name = (v: number) => {
    const type = nodeTypes[h.nodes[v * N + typeF]!]!;
    return type === 'object' || type === 'closure' ? h.strings[h.nodes[v * N + nameF]!]! : `(${type})`;
  };
  const rows = new Map<string, { n: number; self: number; retained: number }>();
  let total = 0;
  for (let v = 0; v < count; v++) {
    if (order[v]! < 0) continue;
    const k = name(v);
    const r = rows.get(k) ?? { n: 0, self: 0, retained: 0 };
    r.n++;
    r.self += h.nodes[v * N + sizeF]!;
    let d = idom[v]!;
    while (d > 0 && name(d) !== k) d = idom[d]!;
    if (d <= 0) r.retained += retained[v]!;
    rows.set(k, r);
    total += h.nodes[v * N + sizeF]!;
  }
  const mb = (x: number) => (x / 2 ** 20).toFixed(1);
  console.log(`${basename(path)}: ${count} nodes, ${mb(total)} MB reachable`);
  console.log('| constructor | objects | self MB | retained MB |\n|---|---:|---:|---:|');
  for (const [k, r] of [...rows].sort((a, b) => b[1].retained - a[1].retained).slice(0, top)) console.log(`| \`${k.slice(0, 60)}\` | ${r.n} | ${mb(r.self)} | ${mb(r.retained)} |`);
}

for (const path of positionals) {
  if (path.endsWith('.cpuprofile')) cpu(path);
  else if (path.endsWith('.heapsnapshot')) heap(path);
  else throw new Error(`${path}: neither a .cpuprofile nor a .heapsnapshot`);
}
