// A bounded traffic driver for the shop demo: sends N requests, C at a time, then prints what
// came back: status codes, errors, latency percentiles and, from each JSON answer's `trace`,
// how many requests every pod of every service served.
//
//   node loadgen.mjs --url URL [--requests 50] [--concurrency 4] [--method GET] [--timeout-ms 5000]
//                    [--data JSON] [--header 'name: value']... [--new-connections] [--json]
//
// Exit status: 0 when every request got a 2xx, 1 otherwise, 2 on a usage error.
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { parseArgs } from 'node:util';

const USAGE = `usage: node loadgen.mjs --url URL [--requests N=50] [--concurrency C=4] [--method GET]
                        [--timeout-ms 5000] [--data JSON] [--header 'name: value']... [--new-connections] [--json]`;
const MAX_RESPONSE = 4 * 1024 * 1024;

function usage(message) {
  process.stderr.write(`loadgen: ${message}\n${USAGE}\n`);
  process.exit(2);
}

function integerOption(values, name, fallback, min, max) {
  const raw = values[name];
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) usage(`--${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(raw)}`);
  return Number(raw);
}

function parseOptions(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        url: { type: 'string' },
        requests: { type: 'string' },
        concurrency: { type: 'string' },
        method: { type: 'string' },
        'timeout-ms': { type: 'string' },
        data: { type: 'string' },
        header: { type: 'string', multiple: true },
        json: { type: 'boolean' },
        'new-connections': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    usage(e.message);
  }
  const { values } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (values.url === undefined) usage('--url is required');
  let url;
  try {
    url = new URL(values.url);
  } catch {
    usage(`--url ${JSON.stringify(values.url)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') usage(`--url must be http:// or https://, not ${url.protocol}`);
  const method = (values.method ?? 'GET').toUpperCase();
  if (!/^[A-Z]{1,20}$/.test(method)) usage(`--method ${JSON.stringify(values.method)} is not an HTTP method`);
  const headers = {};
  for (const h of values.header ?? []) {
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):\s*(.*)$/.exec(h);
    if (!m) usage(`--header ${JSON.stringify(h)} is not 'name: value'`);
    headers[m[1].toLowerCase()] = m[2];
  }
  if (values.data !== undefined) {
    try {
      JSON.parse(values.data);
    } catch {
      usage('--data must be JSON');
    }
    headers['content-type'] ??= 'application/json';
  }
  return {
    url,
    method,
    headers,
    data: values.data === undefined ? undefined : Buffer.from(values.data),
    requests: integerOption(values, 'requests', 50, 1, 1_000_000),
    concurrency: integerOption(values, 'concurrency', 4, 1, 1000),
    timeoutMs: integerOption(values, 'timeout-ms', 5000, 1, 600_000),
    json: values.json === true,
    newConnections: values['new-connections'] === true,
  };
}

/** One request; resolves { ms, status?, error?, trace? } and never rejects. */
function once(opts, agent) {
  const send = opts.url.protocol === 'https:' ? httpsRequest : httpRequest;
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e6;
  return new Promise((resolve) => {
    let settled = false;
    const done = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ms: elapsed(), ...result });
    };
    const headers = { ...opts.headers, 'content-length': opts.data?.length ?? 0 };
    if (opts.data === undefined && (opts.method === 'GET' || opts.method === 'HEAD')) delete headers['content-length'];
    const req = send(opts.url, { agent, method: opts.method, headers }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_RESPONSE) {
          req.destroy();
          done({ error: 'RESPONSE_TOO_LARGE' });
        } else {
          chunks.push(chunk);
        }
      });
      res.on('end', () => {
        let trace;
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          if (Array.isArray(body?.trace)) trace = body.trace;
        } catch {
          // Not JSON (e.g. a proxy's plain-text error page): counted by status only.
        }
        done({ status: res.statusCode, trace });
      });
      res.on('error', (e) => done({ error: e.code ?? 'ERROR' }));
    });
    const timer = setTimeout(() => {
      done({ error: 'TIMEOUT' });
      req.destroy();
    }, opts.timeoutMs);
    req.on('error', (e) => done({ error: e.code ?? 'ERROR' }));
    req.end(opts.data);
  });
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const v = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
  return Math.round(v * 100) / 100;
}

function increment(obj, key) {
  obj[key] = (obj[key] ?? 0) + 1;
}

function summarize(opts, results, durationMs) {
  const status = {};
  const errors = {};
  const pods = {};
  const versions = {};
  for (const r of results) {
    if (r.error !== undefined) increment(errors, r.error);
    else increment(status, String(r.status));
    for (const hop of r.trace ?? []) {
      if (typeof hop?.service !== 'string' || typeof hop.pod !== 'string') continue;
      increment((pods[hop.service] ??= {}), hop.pod);
      if (typeof hop.version === 'string') increment((versions[hop.service] ??= {}), hop.version);
    }
  }
  const latencies = results.filter((r) => r.error === undefined).map((r) => r.ms).sort((a, b) => a - b);
  const ok = results.filter((r) => r.error === undefined && r.status >= 200 && r.status < 300).length;
  return {
    url: opts.url.href,
    method: opts.method,
    requests: results.length,
    concurrency: opts.concurrency,
    duration_ms: Math.round(durationMs * 100) / 100,
    ok,
    failed: results.length - ok,
    status,
    errors,
    // Over requests that got an HTTP answer; errors (timeouts, resets) are counted above instead.
    latency_ms: { p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: percentile(latencies, 100) },
    pods,
    versions,
  };
}

function render(s) {
  const counts = (obj) => Object.entries(obj).sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k}: ${n}`).join('  ') || 'none';
  const ms = (v) => (v === null ? '-' : `${v}ms`);
  const rate = s.duration_ms > 0 ? (s.requests / (s.duration_ms / 1000)).toFixed(1) : '-';
  const lines = [
    `${s.method} ${s.url}`,
    `requests ${s.requests}  concurrency ${s.concurrency}  duration ${(s.duration_ms / 1000).toFixed(2)}s  ${rate} req/s`,
    `status   ${counts(s.status)}`,
    `errors   ${counts(s.errors)}`,
    `latency  p50 ${ms(s.latency_ms.p50)}  p90 ${ms(s.latency_ms.p90)}  p99 ${ms(s.latency_ms.p99)}  max ${ms(s.latency_ms.max)}`,
    '',
  ];
  const rows = [];
  for (const [service, byPod] of Object.entries(s.pods)) {
    for (const [pod, n] of Object.entries(byPod).sort(([a], [b]) => a.localeCompare(b))) rows.push([service, pod, String(n)]);
  }
  if (rows.length === 0) {
    lines.push('served by: no trace in the answers');
  } else {
    const table = [['SERVICE', 'POD', 'REQUESTS'], ...rows];
    const width = [0, 1].map((i) => Math.max(...table.map((r) => r[i].length)));
    for (const r of table) lines.push(`${r[0].padEnd(width[0])}  ${r[1].padEnd(width[1])}  ${r[2].padStart(8)}`);
    const split = Object.entries(s.versions).filter(([, byVersion]) => Object.keys(byVersion).length > 1);
    if (split.length > 0) {
      lines.push('');
      for (const [service, byVersion] of split) lines.push(`versions ${service}: ${counts(byVersion)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  const AgentClass = opts.url.protocol === 'https:' ? HttpsAgent : HttpAgent;
  // Keep-alive by default, as clients do; --new-connections opens one per request, so that
  // connection-level balancing (a service VIP, L4) shows per request.
  const agent = new AgentClass({ keepAlive: !opts.newConnections, maxSockets: opts.concurrency });
  const results = [];
  let next = 0;
  const started = process.hrtime.bigint();
  const worker = async () => {
    while (next < opts.requests) {
      next += 1;
      results.push(await once(opts, agent));
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, opts.requests) }, worker));
  agent.destroy();
  const summary = summarize(opts, results, Number(process.hrtime.bigint() - started) / 1e6);
  process.stdout.write(opts.json ? `${JSON.stringify(summary, null, 2)}\n` : render(summary));
  process.exitCode = summary.failed === 0 ? 0 : 1;
}

await main();
