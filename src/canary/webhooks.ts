/**
 * Calling a Canary's webhooks as Flagger does: POST the payload as JSON to the hook's URL, within
 * its timeout; any 2xx answer passes, anything else (another status, a refused connection, a
 * timeout) fails, with `retries` more attempts. How the bytes travel is the caller's `Post`:
 * plain HTTP from the controller on Kubernetes, or from inside the local cluster's network.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { WebhookCaller } from './controller.js';

/** Sends one POST (for a canary of `namespace`, where short service names are looked up); resolves with the answer's status and (the start of) its body. */
export type Post = (url: URL, body: string, timeoutMs: number, namespace: string) => Promise<{ status: number; body: string }>;

/** The most of an answer's body a webhook result keeps (for the event that reports it). */
const DETAIL_BYTES = 200;

export const directPost: Post = (url, body, timeoutMs) => new Promise((resolve, reject) => {
  const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, {
    method: 'POST', timeout: timeoutMs, headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
  }, (res) => {
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c: string) => { if (text.length < DETAIL_BYTES) text += c; });
    res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    res.on('error', reject);
  });
  req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
  req.on('error', reject);
  req.end(body);
});

export function webhookCaller(post: Post = directPost): WebhookCaller {
  return async (hook, payload) => {
    let url: URL;
    try {
      url = new URL(hook.url);
    } catch {
      return { ok: false, detail: `not a URL: ${JSON.stringify(hook.url)}` };
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return { ok: false, detail: `${url.protocol} is not http: or https:` };
    const body = JSON.stringify(payload);
    let detail = '';
    for (let attempt = 0; attempt <= hook.retries; attempt++) {
      try {
        const r = await post(url, body, hook.timeoutMs, payload.namespace);
        if (r.status >= 200 && r.status < 300) return { ok: true, detail: `${r.status}` };
        detail = `${url.href} answered ${r.status}${r.body ? `: ${r.body.slice(0, DETAIL_BYTES).trim()}` : ''}`;
      } catch (err) {
        detail = `${url.href}: ${(err as Error).message}`;
      }
    }
    return { ok: false, detail };
  };
}
