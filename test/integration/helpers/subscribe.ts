/**
 * A discovery subscriber run from a node's netns, as a node agent would: prints one JSON line
 * per applied version ({"version", "keys"}) and per NACK ({"nack"}); with REJECT_KEY it NACKs
 * any state holding that key. Runs until killed.
 *   node --import tsx subscribe.ts ADDRESS TOKEN_FILE ROOT_FILE NODE [REJECT_KEY]
 */
import { readFileSync } from 'node:fs';
import { DiscoveryClient } from '../../../src/discovery/discovery.js';
import { splitPemBundle } from '../../../src/identity/pki.js';

const [address, tokenFile, rootFile, node, reject] = process.argv.slice(2);
if (!address || !tokenFile || !rootFile || !node) throw new Error('usage: subscribe.ts ADDRESS TOKEN_FILE ROOT_FILE NODE [REJECT_KEY]');
const out = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
const client = new DiscoveryClient({
  address, roots: splitPemBundle(readFileSync(rootFile, 'utf8')).slice(-1), token: readFileSync(tokenFile, 'utf8').trim(), node, kind: 'node-agent',
  backoff: { initialMs: 100, maxMs: 1000 },
  apply: (resources, version) => {
    if (reject && resources.has(reject)) {
      out({ nack: version });
      throw new Error(`cannot apply ${reject}`);
    }
    out({ version, keys: [...resources.keys()].sort() });
  },
});
process.on('SIGTERM', () => { client.close(); process.exit(0); });
