/**
 * Asks the local cluster's CA for a certificate as a node agent would: a fresh key, a CSR for
 * IDENTITY, the node's bootstrap token, the CA's root to verify the server. Prints one JSON line:
 * {"chain": [...]} or {"code": <grpc status>, "error": "..."}.
 *   node --import tsx ca-request.ts ADDRESS TOKEN_FILE ROOT_FILE IDENTITY
 */
import { readFileSync } from 'node:fs';
import { CaClient, CaRequestError } from '../../../src/identity/ca-server.js';
import { createCsr, generateKeyPair, splitPemBundle } from '../../../src/identity/pki.js';

const [address, tokenFile, rootFile, identity] = process.argv.slice(2);
if (!address || !tokenFile || !rootFile || !identity) throw new Error('usage: ca-request.ts ADDRESS TOKEN_FILE ROOT_FILE IDENTITY');
const roots = splitPemBundle(readFileSync(rootFile, 'utf8')).slice(-1);
const client = new CaClient({ address, roots, token: readFileSync(tokenFile, 'utf8').trim() });
try {
  const chain = await client.createCertificate(await createCsr(await generateKeyPair(), identity), identity, 0);
  process.stdout.write(`${JSON.stringify({ chain })}\n`);
} catch (err) {
  if (!(err instanceof CaRequestError)) throw err;
  process.stdout.write(`${JSON.stringify({ code: err.code, error: err.message })}\n`);
} finally {
  client.close();
}
