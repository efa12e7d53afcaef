// ambit dashboard: the service graph, a workload's golden signals, traces and the access log.
// No framework and no CDN: plain DOM and SVG. Every value from the cluster (names, log lines,
// span names) is set as text, never parsed as markup.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const NODE_W = 190;
const NODE_H = 58;
const COL_GAP = 230;
const ROW_GAP = 34;
const state = { selected: null, logSeq: 0, trace: null };

const $ = (id) => document.getElementById(id);
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
async function getJson(path) {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${(await res.text()).slice(0, 200)}`);
  return res.json();
}

const pct = (v) => (v === null || v === undefined ? '-' : `${(v * 100).toFixed(1)}%`);
const rps = (v) => (v === null || v === undefined ? '-' : `${v < 10 ? v.toFixed(2) : v.toFixed(1)} rps`);
function ms(v) {
  if (v === null || v === undefined) return '-';
  if (v >= 1000) return `${(v / 1000).toFixed(2)} s`;
  return v >= 10 ? `${Math.round(v)} ms` : `${v.toFixed(1)} ms`;
}
const bytes = (v) => (v === null || v === undefined ? '-' : v >= 1e6 ? `${(v / 1e6).toFixed(1)} MB/s` : v >= 1e3 ? `${(v / 1e3).toFixed(1)} kB/s` : `${Math.round(v)} B/s`);

// -------------------------------------------------------------------------------------------
// The graph: a layered layout (sources left, destinations right), edges as curves.

function layout(nodes, edges) {
  const out = new Map(nodes.map((n) => [n.id, []]));
  const indeg = new Map(nodes.map((n) => [n.id, 0]));
  for (const e of edges) {
    if (!out.has(e.source) || !out.has(e.destination) || e.source === e.destination) continue;
    out.get(e.source).push(e.destination);
    indeg.set(e.destination, indeg.get(e.destination) + 1);
  }
  // Longest path from a source, walking edges once each (a cycle does not loop).
  const rank = new Map(nodes.map((n) => [n.id, 0]));
  const queue = nodes.filter((n) => indeg.get(n.id) === 0).map((n) => n.id);
  const seen = new Set();
  const remaining = new Map(indeg);
  while (queue.length) {
    const id = queue.shift();
    if (seen.has(id)) continue;
    seen.add(id);
    for (const next of out.get(id)) {
      rank.set(next, Math.max(rank.get(next), rank.get(id) + 1));
      remaining.set(next, remaining.get(next) - 1);
      if (remaining.get(next) <= 0) queue.push(next);
    }
  }
  // Nodes in a cycle with no way in: after everything else, each one column further.
  const maxRank = Math.max(0, ...rank.values());
  for (const n of nodes) if (!seen.has(n.id) && indeg.get(n.id) > 0 && rank.get(n.id) === 0) rank.set(n.id, maxRank + 1);
  const columns = new Map();
  for (const n of nodes) {
    const r = rank.get(n.id);
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r).push(n);
  }
  const pos = new Map();
  for (const [r, col] of columns) {
    col.sort((a, b) => a.id.localeCompare(b.id));
    col.forEach((n, i) => pos.set(n.id, { x: 20 + r * (NODE_W + COL_GAP), y: 20 + i * (NODE_H + ROW_GAP) }));
  }
  return pos;
}

function edgeClass(e) {
  if (e.mtls === null || e.mtls === undefined) return 'unknown';
  return e.mtls >= 0.999 ? 'mtls' : 'plaintext';
}

function drawGraph(data) {
  const g = $('graph');
  g.replaceChildren();
  const nodes = data.nodes;
  $('graph-empty').hidden = nodes.length > 0;
  const pos = layout(nodes, data.edges);
  let width = 200;
  let height = 120;
  for (const p of pos.values()) {
    width = Math.max(width, p.x + NODE_W + 40);
    height = Math.max(height, p.y + NODE_H + 30);
  }
  // Scaled down to the panel's width when wider (never up): the whole graph stays in view.
  g.setAttribute('viewBox', `0 0 ${width} ${height}`);
  g.setAttribute('width', '100%');
  g.style.maxWidth = `${width}px`;
  const defs = svg('defs');
  for (const [id, color] of [['arrow-mtls', '#3fb950'], ['arrow-plaintext', '#f85149'], ['arrow-unknown', '#8593a3']]) {
    const m = svg('marker', { id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    m.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', fill: color }));
    defs.append(m);
  }
  g.append(defs);
  for (const e of data.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.destination);
    if (!a || !b) continue;
    const cls = edgeClass(e);
    const group = svg('g', { class: `edge ${cls}`, 'data-edge': `${e.source}>${e.destination}`, 'data-via': e.via, 'data-mtls': cls === 'mtls' ? 'true' : cls === 'plaintext' ? 'false' : 'unknown' });
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = b.x;
    const y2 = b.y + NODE_H / 2;
    const back = x2 <= x1;
    const d = back
      ? `M${a.x + NODE_W / 2},${a.y + NODE_H} C${a.x + NODE_W / 2},${a.y + NODE_H + 60} ${b.x + NODE_W / 2},${b.y + NODE_H + 60} ${b.x + NODE_W / 2},${b.y + NODE_H}`
      : `M${x1},${y1} C${x1 + COL_GAP / 2},${y1} ${x2 - COL_GAP / 2},${y2} ${x2 - 2},${y2}`;
    group.append(svg('path', { d, 'marker-end': `url(#arrow-${cls})` }));
    // Just before the arrowhead, where edges fanning out of one node are apart.
    const lx = back ? (a.x + b.x) / 2 + NODE_W / 2 : x2 - 14;
    const ly = back ? Math.max(a.y, b.y) + NODE_H + 50 : y2 - 8;
    const anchor = back ? 'middle' : 'end';
    const label = e.via === 'waypoint'
      ? `${rps(e.rps)} · ${pct(e.success)} · p99 ${ms(e.p99)}`
      : `${e.connectionsOpen ?? 0} conn · ${bytes(e.bytesPerSecond)}`;
    group.append(svg('text', { x: lx, y: ly, 'text-anchor': anchor, class: 'label' }, `${cls === 'mtls' ? 'mTLS · ' : cls === 'plaintext' ? 'PLAINTEXT · ' : ''}${label}`));
    if (e.via === 'waypoint') group.append(svg('text', { x: lx, y: ly + 19, 'text-anchor': anchor, class: 'via' }, 'via waypoint'));
    const title = svg('title', {}, `${e.source} → ${e.destination}\n${e.via === 'waypoint' ? 'L7 through a waypoint' : 'L4 (node agents)'}; mTLS ${pct(e.mtls)}`);
    group.append(title);
    g.append(group);
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const meshed = n.meshed ? `${n.meshed.meshed}/${n.meshed.total} meshed` : 'outside the inventory';
    const unmeshed = n.meshed && n.meshed.meshed < n.meshed.total;
    const group = svg('g', { class: `node${unmeshed ? ' unmeshed' : ''}${state.selected === n.id ? ' selected' : ''}`, 'data-node': n.id, transform: `translate(${p.x},${p.y})`, tabindex: 0 });
    group.append(svg('rect', { width: NODE_W, height: NODE_H, rx: 6 }));
    group.append(svg('text', { x: 10, y: 18 }, n.workload));
    group.append(svg('text', { x: 10, y: 33, class: 'sub' }, `${n.namespace} · ${meshed}`));
    const s = n.inbound;
    const line = s && s.rps !== null ? `${rps(s.rps)} · ${pct(s.success)} · p99 ${ms(s.p99)}` : s && s.tcpOpen !== null ? `${s.tcpOpen} conn open` : 'no inbound traffic';
    group.append(svg('text', { x: 10, y: 48, class: `sub${s && s.success !== null && s.success < 0.95 ? ' bad' : ''}` }, line));
    group.addEventListener('click', () => select(n.id));
    group.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') select(n.id); });
    g.append(group);
  }
}

// -------------------------------------------------------------------------------------------
// A workload: facts, golden-signal sparklines, policies.

function chart(title, points, fmt) {
  const box = el('div', { class: 'chart' });
  const values = points.filter((v) => v !== null && Number.isFinite(v));
  const label = el('div', { class: 'label' });
  label.append(el('span', {}, title), el('span', {}, values.length ? `last ${fmt(values[values.length - 1])} · max ${fmt(Math.max(...values))}` : 'no data'));
  box.append(label);
  const s = svg('svg', { viewBox: '0 0 300 56', preserveAspectRatio: 'none' });
  if (values.length > 1) {
    const max = Math.max(...values) || 1;
    const step = 300 / Math.max(1, points.length - 1);
    const coords = points.map((v, i) => (v === null || !Number.isFinite(v) ? null : `${(i * step).toFixed(1)},${(52 - (v / max) * 48).toFixed(1)}`)).filter(Boolean);
    s.append(svg('polyline', { points: coords.join(' ') }));
  }
  box.append(s);
  return box;
}

async function select(id) {
  state.selected = id;
  document.querySelectorAll('.node').forEach((n) => n.classList.toggle('selected', n.getAttribute('data-node') === id));
  await refreshDetails();
}

async function refreshDetails() {
  if (!state.selected) return;
  const [ns, ...rest] = state.selected.split('/');
  const name = rest.join('/');
  const data = await getJson(`/api/workload?ns=${encodeURIComponent(ns)}&name=${encodeURIComponent(name)}`);
  $('details-title').textContent = `${ns}/${name}`;
  $('details-hint').hidden = true;
  $('details-body').hidden = false;
  const facts = $('details-facts');
  facts.replaceChildren();
  const d = data.details;
  const add = (k, v) => facts.append(el('dt', {}, k), el('dd', {}, v));
  if (d.error) add('details', d.error);
  else {
    add('identity', d.identities.length ? d.identities.join(', ') : '-');
    add('waypoint', d.waypoint ?? 'none (L4 only)');
    add('pods', d.pods.map((p) => `${p.name}${p.meshed ? '' : ' (not meshed)'}${p.node ? ` on ${p.node}` : ''}`).join(', ') || '-');
  }
  const charts = $('charts');
  charts.replaceChildren(
    chart('requests/s', data.series.map((p) => p.signals?.rps ?? null), (v) => rps(v)),
    chart('success', data.series.map((p) => p.signals?.success ?? null), (v) => pct(v)),
    chart('p50 latency', data.series.map((p) => p.signals?.p50 ?? null), (v) => ms(v)),
    chart('p99 latency', data.series.map((p) => p.signals?.p99 ?? null), (v) => ms(v)),
    chart('TCP connections open', data.series.map((p) => p.signals?.tcpOpen ?? null), (v) => String(Math.round(v))),
  );
  const list = $('policies');
  list.replaceChildren();
  for (const p of d.policies ?? []) {
    const li = el('li', { 'data-policy': `${p.namespace}/${p.name}` }, `${p.kind} ${p.namespace}/${p.name}: ${p.action} (${p.scope})`);
    if (p.rules.length) li.title = p.rules.join('\n');
    list.append(li);
  }
  if (!(d.policies ?? []).length) list.append(el('li', { class: 'muted' }, 'none'));
}

// -------------------------------------------------------------------------------------------
// Traces and the access log.

async function refreshTraces() {
  const data = await getJson('/api/traces');
  $('traces-count').textContent = `${data.traces.length} kept · ${data.received} spans received`;
  const body = $('traces').tBodies[0];
  body.replaceChildren();
  for (const t of data.traces.slice(0, 12)) {
    const tr = el('tr', { 'data-trace': t.traceId });
    tr.append(el('td', {}, new Date(t.startMs).toLocaleTimeString()), el('td', {}, t.root), el('td', {}, t.service), el('td', {}, ms(t.durationMs)), el('td', {}, String(t.spans)), el('td', { class: t.errors ? 'code-5' : '' }, String(t.errors)));
    tr.addEventListener('click', () => showTrace(t.traceId));
    body.append(tr);
  }
}

async function showTrace(traceId) {
  state.trace = traceId;
  const data = await getJson(`/api/traces/${encodeURIComponent(traceId)}`);
  const wf = $('waterfall');
  wf.hidden = false;
  wf.replaceChildren(el('h3', {}, `trace ${traceId}`));
  const spans = data.spans;
  const start = Math.min(...spans.map((s) => s.startMs));
  const end = Math.max(...spans.map((s) => s.startMs + s.durationMs));
  const total = Math.max(end - start, 0.001);
  const children = new Map();
  const ids = new Set(spans.map((s) => s.spanId));
  for (const s of spans) {
    const parent = s.parentSpanId && ids.has(s.parentSpanId) ? s.parentSpanId : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const rows = [];
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) ?? []).sort((a, b) => a.startMs - b.startMs)) {
      rows.push([s, depth]);
      if (depth < 32) walk(s.spanId, depth + 1);
    }
  };
  walk(null, 0);
  for (const [s, depth] of rows) {
    const row = el('div', { class: 'wf-row', 'data-span': s.spanId });
    const name = el('div', { class: 'wf-name' }, `${'  '.repeat(depth)}${s.service}: ${s.name}`);
    name.style.paddingLeft = `${depth * 14}px`;
    const track = el('div', { class: 'wf-track' });
    const bar = el('div', { class: `wf-bar${s.status === 2 ? ' error' : ''}` });
    bar.style.left = `${((s.startMs - start) / total) * 100}%`;
    bar.style.width = `${(s.durationMs / total) * 100}%`;
    const label = el('span', { class: 'wf-ms' }, ms(s.durationMs));
    label.style.left = `${Math.min(90, ((s.startMs - start + s.durationMs) / total) * 100)}%`;
    track.append(bar, label);
    track.title = Object.entries(s.attributes).map(([k, v]) => `${k}: ${v}`).join('\n');
    row.append(name, track);
    wf.append(row);
  }
}

async function refreshLogs() {
  const data = await getJson(`/api/logs?after=${state.logSeq}`);
  const body = $('logs').tBodies[0];
  for (const { seq, line } of data.lines) {
    state.logSeq = Math.max(state.logSeq, seq);
    // A waypoint writes one line per request; a node agent one per connection.
    const conn = line.connection;
    const code = line.response?.code ?? conn?.response_flags ?? '';
    const tr = el('tr', { 'data-log': String(seq) });
    const req = line.request ? `${line.request.method ?? ''} ${line.request.authority ?? ''}${line.request.path ?? ''}` : conn ? `TCP ${conn.path ?? ''}` : (line.msg ?? '');
    const who = (p) => String(p?.principal ?? (p?.workload ? `${p.namespace}/${p.workload}` : p?.ip ?? '-'));
    tr.append(
      el('td', {}, String(line.timestamp ?? '').slice(11, 23)),
      el('td', {}, who(line.source)),
      el('td', {}, String(line.destination?.upstream ?? line.destination?.service ?? who(line.destination))),
      el('td', {}, req),
      el('td', { class: `code-${String(code)[0] ?? ''}` }, String(code || '-')),
      el('td', {}, String(line.response?.flags ?? conn?.response_flags ?? '-')),
      el('td', {}, String(line.response?.duration_ms ?? conn?.duration_ms ?? '-')),
    );
    body.prepend(tr);
  }
  while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
}

// -------------------------------------------------------------------------------------------

async function refresh() {
  try {
    const data = await getJson('/api/overview');
    $('cluster').textContent = `cluster ${data.cluster}`;
    $('source').textContent = data.source;
    $('updated').textContent = data.updatedAt ? `updated ${new Date(data.updatedAt).toLocaleTimeString()}` : 'first sample…';
    $('window').textContent = data.windowSeconds ? `last ${Math.round(data.windowSeconds)} s` : '';
    $('error').hidden = !data.error;
    $('error').textContent = data.error ?? '';
    drawGraph(data);
    await Promise.all([refreshLogs(), refreshTraces(), refreshDetails()]);
    document.body.setAttribute('data-loaded', 'true');
  } catch (err) {
    $('error').hidden = false;
    $('error').textContent = String(err.message ?? err);
  }
}

// A link can open a workload and a trace: #workload=NS/NAME&trace=ID (trace=latest: the newest).
const linked = new URLSearchParams(location.hash.slice(1));
if (linked.get('workload')) state.selected = linked.get('workload');

async function start() {
  await refresh();
  const trace = linked.get('trace');
  if (trace) {
    const id = trace === 'latest' ? (await getJson('/api/traces')).traces[0]?.traceId : trace;
    if (id) await showTrace(id).catch(() => undefined);
  }
  setInterval(refresh, 5000);
}
start();
