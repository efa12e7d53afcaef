/**
 * TLS at an ingress gateway: the SNI of a ClientHello read without terminating (hostile input,
 * bounded), and the servers' certificates from their Secrets as `SecureContext`s, rebuilt when
 * a Secret's content changes (new handshakes get the new certificate; connections made keep
 * theirs, as Envoy's SDS rotation does).
 */
import { createHash, X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { IngressServer } from './servers.js';

/** The most a ClientHello may take: one TLS record (2^14 bytes and its 5-byte header). */
export const MAX_CLIENT_HELLO_BYTES = 16_384 + 5;

export type HelloResult =
  | { kind: 'wait' }
  /** A ClientHello; `sni` when it named a host (lower case). */
  | { kind: 'hello'; sni?: string }
  | { kind: 'bad'; reason: string };

/**
 * The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3) in the first bytes of a
 * connection: `wait` while a complete first record has not arrived, `bad` for anything that is
 * not a ClientHello in one record (TLS clients send theirs in one; a longer one is refused).
 * Every length is checked against what holds it: nothing is read past `buf`.
 */
export function parseClientHello(buf: Buffer): HelloResult {
  if (buf.length >= 1 && buf[0] !== 0x16) return { kind: 'bad', reason: `not a TLS handshake record (first byte 0x${buf[0]!.toString(16).padStart(2, '0')})` };
  if (buf.length < 5) return { kind: 'wait' };
  const recordLength = buf.readUInt16BE(3);
  if (recordLength > MAX_CLIENT_HELLO_BYTES - 5) return { kind: 'bad', reason: `record of ${recordLength} bytes is over the TLS maximum` };
  if (buf.length < 5 + recordLength) return { kind: 'wait' };
  const rec = buf.subarray(5, 5 + recordLength);
  const fail = (reason: string): HelloResult => ({ kind: 'bad', reason });
  if (rec.length < 4 || rec[0] !== 0x01) return fail('not a ClientHello');
  const helloLength = rec.readUIntBE(1, 3);
  if (helloLength + 4 > rec.length) return fail('ClientHello split over records (not supported) or truncated');
  const hello = rec.subarray(4, 4 + helloLength);
  let at = 2 + 32; // client_version, random
  const need = (n: number) => at + n <= hello.length;
  if (!need(1)) return fail('truncated before session_id');
  at += 1 + hello[at]!;
  if (!need(2)) return fail('truncated before cipher_suites');
  at += 2 + hello.readUInt16BE(at);
  if (!need(1)) return fail('truncated before compression_methods');
  at += 1 + hello[at]!;
  if (at === hello.length) return { kind: 'hello' };
  if (!need(2)) return fail('truncated before extensions');
  const extEnd = at + 2 + hello.readUInt16BE(at);
  if (extEnd > hello.length) return fail('extensions longer than the ClientHello');
  at += 2;
  while (at + 4 <= extEnd) {
    const type = hello.readUInt16BE(at);
    const len = hello.readUInt16BE(at + 2);
    at += 4;
    if (at + len > extEnd) return fail('an extension longer than the extensions');
    if (type === 0) {
      // server_name: a list (2-byte length) of (type 1 byte, name 2-byte length).
      const ext = hello.subarray(at, at + len);
      if (ext.length < 2) return fail('empty server_name extension');
      const listEnd = Math.min(ext.length, 2 + ext.readUInt16BE(0));
      for (let p = 2; p + 3 <= listEnd;) {
        const nameType = ext[p]!;
        const nameLen = ext.readUInt16BE(p + 1);
        if (p + 3 + nameLen > listEnd) return fail('server_name longer than its list');
        if (nameType === 0) {
          const name = ext.subarray(p + 3, p + 3 + nameLen).toString('latin1').toLowerCase();
          if (!/^[a-z0-9*]([a-z0-9.*_-]{0,252})$/.test(name)) return fail('server_name is not a host name');
          return { kind: 'hello', sni: name.replace(/\.$/, '') };
        }
        p += 3 + nameLen;
      }
      return { kind: 'hello' };
    }
    at += len;
  }
  return { kind: 'hello' };
}

/** A Secret as the view carries it: data values decoded to text. */
export interface SecretValue { namespace: string; name: string; type?: string; data: Record<string, string> }

/** What a served certificate is, for the admin and logs (never the key). */
export interface CertificateInfo { secret: string; subject: string; sans: string; serial: string; notAfter: string; fingerprint: string; clientCa?: string }

export interface ServerContext {
  context: SecureContext;
  /** MUTUAL / OPTIONAL_MUTUAL: client certificates are asked for (and verified against the CA). */
  requestCert: boolean;
  /** MUTUAL: a client without a valid certificate is refused in the handshake. */
  requireCert: boolean;
  info: CertificateInfo;
  /** What it was built from (certificate, key, CA, settings), as a digest: rebuilt when it changes. */
  shape: string;
}

/**
 * The servers' certificates: a SecureContext per server, built from its Secret and kept while
 * the Secret's content (and the server's TLS settings) stay the same.
 */
export class ContextStore {
  private readonly built = new Map<string, ServerContext>();

  /**
   * A server's context from the Secrets at hand, or an error naming what is wrong (no such
   * Secret, no tls.crt/tls.key, a key that does not fit, no CA for MUTUAL): that server is then
   * not served.
   */
  contextFor(server: IngressServer, secrets: ReadonlyMap<string, SecretValue>): ServerContext | Error {
    const tls = server.tls;
    if (!tls?.credential) return new Error(`${server.id}: no credential`);
    const key = `${tls.credential.namespace}/${tls.credential.name}`;
    const secret = secrets.get(key);
    if (!secret) return new Error(`${server.id}: Secret ${key} not found (credentialName / certificateRefs are read in the gateway's namespace)`);
    const cert = secret.data['tls.crt'] ?? secret.data.cert;
    const privateKey = secret.data['tls.key'] ?? secret.data.key;
    if (!cert || !privateKey) return new Error(`${server.id}: Secret ${key} has no tls.crt and tls.key`);
    const mutual = tls.mode === 'MUTUAL' || tls.mode === 'OPTIONAL_MUTUAL';
    const caSecret = secrets.get(`${key}-cacert`);
    const ca = mutual ? secret.data['ca.crt'] ?? secret.data.cacert ?? caSecret?.data['ca.crt'] ?? caSecret?.data.cacert : undefined;
    if (mutual && !ca) return new Error(`${server.id}: tls.mode ${tls.mode} needs a CA: ca.crt in Secret ${key} or Secret ${key}-cacert`);
    const shape = createHash('sha256').update(JSON.stringify([cert, privateKey, ca ?? null, tls.mode, tls.minVersion ?? null, tls.maxVersion ?? null])).digest('hex');
    const known = this.built.get(server.id);
    if (known && known.shape === shape) return known;
    try {
      const leaf = new X509Certificate(cert);
      const context = createSecureContext({
        cert, key: privateKey, ...(ca ? { ca } : {}),
        minVersion: tls.minVersion ?? 'TLSv1.2', ...(tls.maxVersion ? { maxVersion: tls.maxVersion } : {}),
      });
      const info: CertificateInfo = {
        secret: key, subject: leaf.subject, sans: leaf.subjectAltName ?? '', serial: leaf.serialNumber, notAfter: new Date(leaf.validTo).toISOString(), fingerprint: leaf.fingerprint256,
        ...(ca ? { clientCa: secret.data['ca.crt'] ?? secret.data.cacert ? key : `${key}-cacert` } : {}),
      };
      const ctx: ServerContext = { context, requestCert: mutual, requireCert: tls.mode === 'MUTUAL', info, shape };
      this.built.set(server.id, ctx);
      return ctx;
    } catch (err) {
      return new Error(`${server.id}: Secret ${key} does not hold a usable certificate and key: ${(err as Error).message}`);
    }
  }

  /** Forgets servers no longer configured. */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.built.keys()) if (!ids.has(id)) this.built.delete(id);
  }
}
