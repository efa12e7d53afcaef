/**
 * Waiting in tests, for unit and integration tests alike. Prefer vitest's own `expect.poll(fn,
 * { timeout, interval }).toBe…()` and `vi.waitFor(() => expect(…), { timeout, interval })`; `until`
 * is for "wait until `fn` gives something and give it to me", built on `vi.waitFor`.
 */
import { vi } from 'vitest';

export interface WaitOptions {
  /** How long to keep trying, in ms (20 s unless said). */
  timeout?: number;
  /** How long between tries, in ms (200 ms unless said). */
  interval?: number;
}

/**
 * Polls `fn` until it gives something other than `undefined` or `false`, and gives that back. An
 * error thrown by `fn` counts as "not yet". On timeout it fails with `timed out waiting for <what>`
 * and the last error `fn` threw, if any.
 */
export function until<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, { timeout = 20_000, interval = 200 }: WaitOptions = {}): Promise<T> {
  return vi.waitFor(async () => {
    let value: T | undefined | false;
    try {
      value = await fn();
    } catch (err) {
      throw new Error(`timed out waiting for ${what}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    if (value === undefined || value === false) throw new Error(`timed out waiting for ${what}`);
    return value;
  }, { timeout, interval }).catch((err: unknown) => {
    // vi.waitFor's own message when `fn` never settled within the timeout: say what was awaited.
    if (err instanceof Error && err.message === 'Timed out in waitFor!') throw new Error(`timed out waiting for ${what}`);
    throw err;
  });
}
