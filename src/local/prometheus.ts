/**
 * A real Prometheus in the local cluster (`ambit local up --prometheus`): Debian's `prometheus`
 * binary as a component in the underlay netns on 172.30.0.1:9090, scraping the controller
 * (15014), every node agent (node IP:15020) and every waypoint (pod IP:15020). The targets are
 * files (`file_sd_configs`) the runtime rewrites when waypoints come and go, so Prometheus is
 * never restarted for them. Its data lives in `<state>/prometheus/data`, kept for 6 hours.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { LocalError } from './errors.js';
import type { ClusterLayout } from './layout.js';
import { UNDERLAY_GATEWAY } from './layout.js';

export const PROMETHEUS_PORT = 9090;
export const CONTROLLER_MONITORING_PORT = 15014;
export const PROXY_METRICS_PORT = 15020;
export const DEFAULT_SCRAPE_INTERVAL = '5s';

/** Where Debian's package puts it; `AMBIT_PROMETHEUS` names another binary. */
export function prometheusBinary(): string {
  const bin = process.env.AMBIT_PROMETHEUS ?? '/usr/bin/prometheus';
  if (!existsSync(bin)) throw new LocalError(`prometheus is not installed (${bin} does not exist)`, 'install Debian\'s package: apt-get install --no-install-recommends prometheus (or scripts/setup.sh --observe), or set AMBIT_PROMETHEUS to its path');
  return bin;
}

const DURATION = /^[1-9][0-9]{0,3}(ms|s|m)$/;

export function checkScrapeInterval(text: string): string {
  if (!DURATION.test(text)) throw new LocalError(`--scrape-interval must be a duration like 1s, 5s or 1m (1-9999 ms, s or m), got ${JSON.stringify(text)}`);
  return text;
}

export function durationMs(text: string): number {
  const n = Number.parseInt(text, 10);
  return text.endsWith('ms') ? n : text.endsWith('m') ? n * 60_000 : n * 1000;
}

export interface PrometheusTargets {
  nodes: Array<{ node: string; ip: string }>;
  waypoints: Array<{ namespace: string; pod: string; ip: string }>;
}

export class LocalPrometheus {
  constructor(private readonly layout: ClusterLayout, private readonly scrapeInterval: string) {}

  get dir(): string { return join(this.layout.stateDir, 'prometheus'); }
  get url(): string { return `http://${UNDERLAY_GATEWAY}:${PROMETHEUS_PORT}`; }

  /** The config file and empty target files; the argv of the component. */
  prepare(): string[] {
    mkdirSync(join(this.dir, 'data'), { recursive: true, mode: 0o700 });
    const job = (name: string, file: string) => ({
      job_name: name,
      file_sd_configs: [{ files: [join(this.dir, file)], refresh_interval: '5s' }],
    });
    const config = {
      global: { scrape_interval: this.scrapeInterval, evaluation_interval: this.scrapeInterval, scrape_timeout: durationMs(this.scrapeInterval) < 10_000 ? this.scrapeInterval : '10s', external_labels: { cluster: this.layout.name } },
      scrape_configs: [
        { job_name: 'ambit-controller', static_configs: [{ targets: [`${UNDERLAY_GATEWAY}:${CONTROLLER_MONITORING_PORT}`], labels: { component: 'controller' } }] },
        job('ambit-node', 'nodes.json'),
        job('ambit-waypoint', 'waypoints.json'),
      ],
    };
    writeFileSync(join(this.dir, 'prometheus.yml'), `# Written by the local runtime for cluster ${this.layout.name}; rewritten at every start.\n${stringify(config)}`);
    for (const file of ['nodes.json', 'waypoints.json']) if (!existsSync(join(this.dir, file))) writeFileSync(join(this.dir, file), '[]\n');
    return [prometheusBinary(),
      `--config.file=${join(this.dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(this.dir, 'data')}`,
      '--storage.tsdb.retention.time=6h',
      `--web.listen-address=${UNDERLAY_GATEWAY}:${PROMETHEUS_PORT}`,
      '--log.level=warn'];
  }

  private last = '';

  /** Rewrites the target files when the targets changed (atomically: Prometheus may read them at any time). */
  writeTargets(t: PrometheusTargets): void {
    const nodes = t.nodes.map((n) => ({ targets: [`${n.ip}:${PROXY_METRICS_PORT}`], labels: { component: 'node-agent', node: n.node } }));
    const waypoints = t.waypoints.map((w) => ({ targets: [`${w.ip}:${PROXY_METRICS_PORT}`], labels: { component: 'waypoint', namespace: w.namespace, pod: w.pod } }));
    const text = JSON.stringify({ nodes, waypoints });
    if (text === this.last) return;
    for (const [file, body] of [['nodes.json', nodes], ['waypoints.json', waypoints]] as const) {
      const path = join(this.dir, file);
      writeFileSync(`${path}.tmp`, `${JSON.stringify(body, null, 2)}\n`);
      renameSync(`${path}.tmp`, path);
    }
    this.last = text;
  }
}
