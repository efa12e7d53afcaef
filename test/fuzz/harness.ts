/**
 * The fuzzing harness: feeds a target's generated inputs to the real component (in process, on
 * loopback) and records every crash — an exception the target did not expect, an uncaught
 * exception or unhandled rejection anywhere in the process while the input was in flight, an
 * input that was not answered within its bound (hang), or a component that no longer serves a
 * good request afterwards (dead). Inputs come from fast-check arbitraries in seeded batches, so
 * a run is reproducible from its seed; memory is sampled before, early in and after the run.
 */
import * as fc from 'fast-check';

/** One kind of hostile input to one component. */
export interface FuzzTarget<I, C> {
  name: string;
  /** What the inputs are and what takes them, for the report. */
  what: string;
  /** Starts the component (real sockets on loopback, real certificates). */
  setup(): Promise<C>;
  input: fc.Arbitrary<I>;
  /**
   * Feeds one input and returns how the component answered (a short tag such as `400` or
   * `refused`, tallied in the report). Expected refusals are answers; anything the component
   * must never do is a throw of `Finding`. Must settle within `timeoutMs`.
   */
  run(ctx: C, input: I): Promise<string>;
  /** Throws if the component no longer serves a good request. */
  alive?(ctx: C): Promise<void>;
  teardown(ctx: C): Promise<void>;
  /** Bound on one input, after which it counts as a hang (default 5 s). */
  timeoutMs?: number;
  /** Inputs in flight at once (default 1). */
  concurrency?: number;
  /** Inputs per liveness check (default: the run's `aliveEvery`, else 100). */
  aliveEvery?: number;
}

/** What the component did that it must never do, for this input. */
export class Finding extends Error {
  override readonly name = 'Finding';
}

export type CrashKind = 'exception' | 'uncaught' | 'hang' | 'dead';

export interface Crash {
  kind: CrashKind;
  message: string;
  stack?: string;
  /** The input (fast-check's rendering, cut at 2,000 characters), or the last ones in flight. */
  input: string;
  index: number;
}

export interface FuzzResult {
  target: string;
  what: string;
  seed: number;
  runs: number;
  crashes: number;
  /** The first few crashes of each kind, with their inputs. */
  samples: Crash[];
  /** Every crash by kind and message (first line, numbers and quoted text blanked), counted. */
  distinct: Record<string, number>;
  outcomes: Record<string, number>;
  ms: number;
  /** RSS (bytes) once the component is up, after 10% of the inputs, and at the end (after a GC when exposed). */
  rss: { before: number; warm: number; after: number };
  heapUsed: { before: number; after: number };
  /** Set when the run stopped early: the component was dead. */
  stopped?: string;
}

export interface FuzzOptions {
  runs: number;
  seed: number;
  /** Inputs per liveness check (default 100). */
  aliveEvery?: number;
  /** Crashes kept with their inputs, per kind (default 3). */
  keep?: number;
  /** Called every ~1% of the run. */
  progress?: (done: number, runs: number, crashes: number) => void;
}

const BATCH = 500;

export function render(input: unknown): string {
  let s: string;
  try {
    s = fc.stringify(input);
  } catch {
    s = String(input);
  }
  return s.length > 2000 ? `${s.slice(0, 2000)}… (${s.length} characters)` : s;
}

function gc(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<typeof TIMEOUT>((resolve) => { timer = setTimeout(() => resolve(TIMEOUT), ms); });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
const TIMEOUT = Symbol('timeout');

/** Runs `opts.runs` inputs of `target` and reports what happened; never throws for a crash. */
export async function fuzz<I, C>(target: FuzzTarget<I, C>, opts: FuzzOptions): Promise<FuzzResult> {
  const keep = opts.keep ?? 3;
  const aliveEvery = target.aliveEvery ?? opts.aliveEvery ?? 100;
  const timeoutMs = target.timeoutMs ?? 5000;
  const concurrency = Math.max(1, target.concurrency ?? 1);
  const outcomes: Record<string, number> = {};
  const samples: Crash[] = [];
  const kept: Record<string, number> = {};
  let crashes = 0;
  let stopped: string | undefined;
  const inFlight = new Map<number, I>();
  let lastIndex = -1;
  let lastInput: I | undefined;

  const distinct: Record<string, number> = {};
  const record = (c: Crash) => {
    crashes++;
    const key = crashKey(`${c.kind}: ${c.message.split('\n')[0]!}`);
    distinct[key] = (distinct[key] ?? 0) + 1;
    if ((kept[c.kind] ?? 0) < keep) {
      kept[c.kind] = (kept[c.kind] ?? 0) + 1;
      samples.push(c);
    }
  };
  // Whatever escapes the component while inputs are in flight is charged to them: a listener that
  // throws in a socket callback takes a real node agent down.
  const onUncaught = (err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    const suspects = inFlight.size > 0 ? [...inFlight] : lastInput !== undefined ? [[lastIndex, lastInput] as const] : [];
    record({ kind: 'uncaught', message: e.message, stack: e.stack, input: suspects.map(([, i]) => render(i)).join('\n--- or ---\n'), index: suspects[0]?.[0] ?? -1 });
  };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onUncaught);

  const ctx = await target.setup();
  gc();
  const before = process.memoryUsage();
  let warm = before.rss;
  const started = Date.now();
  let done = 0;
  const step = Math.max(1, Math.floor(opts.runs / 100));
  try {
    for (let b = 0; done < opts.runs && !stopped; b++) {
      const n = Math.min(BATCH, opts.runs - done);
      const inputs = fc.sample(target.input, { numRuns: n, seed: opts.seed + b });
      let next = 0;
      const worker = async () => {
        while (next < inputs.length && !stopped) {
          const i = next++;
          const index = done + i;
          const input = inputs[i]!;
          inFlight.set(index, input);
          try {
            const r = await withTimeout(target.run(ctx, input), timeoutMs);
            if (r === TIMEOUT) record({ kind: 'hang', message: `no answer within ${timeoutMs} ms`, input: render(input), index });
            else outcomes[r] = (outcomes[r] ?? 0) + 1;
          } catch (err) {
            const e = err as Error;
            // A Finding's cause is where the component threw.
            const stack = e.cause instanceof Error ? `${e.cause.stack ?? ''}` : e.stack;
            record({ kind: 'exception', message: e.message, stack, input: render(input), index });
          } finally {
            inFlight.delete(index);
            lastIndex = index;
            lastInput = input;
          }
          const total = done + i + 1;
          if (target.alive && total % aliveEvery === 0) await checkAlive(total);
          if (total === Math.floor(opts.runs / 10)) {
            gc();
            warm = process.memoryUsage().rss;
          }
          if (total % step === 0) opts.progress?.(total, opts.runs, crashes);
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, inputs.length) }, worker));
      done += n;
    }
    if (!stopped && target.alive) await checkAlive(done);
  } finally {
    await target.teardown(ctx).catch(() => undefined);
    // Late errors of the last inputs (a callback after teardown) still count.
    await new Promise((r) => setImmediate(r));
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  }
  gc();
  const after = process.memoryUsage();
  if (opts.runs < 10) warm = after.rss;
  return {
    target: target.name, what: target.what, seed: opts.seed, runs: done, crashes, samples, distinct, outcomes, ms: Date.now() - started,
    rss: { before: before.rss, warm, after: after.rss }, heapUsed: { before: before.heapUsed, after: after.heapUsed },
    ...(stopped ? { stopped } : {}),
  };

  async function checkAlive(total: number): Promise<void> {
    const r = await withTimeout(target.alive!(ctx).then(() => undefined, (err: Error) => err), timeoutMs);
    if (r === undefined) return;
    const message = r === TIMEOUT ? `no answer to a good request within ${timeoutMs} ms` : r.message;
    record({ kind: 'dead', message: `after ${total} inputs the component no longer serves: ${message}`, stack: r === TIMEOUT ? undefined : r.stack, input: lastInput === undefined ? '' : render(lastInput), index: lastIndex });
    stopped = `dead after ${total} inputs`;
  }
}

/**
 * A crash message with what varies per input blanked (quoted text, numbers, the property read,
 * the alias named), so that one cause counts as one line.
 */
export function crashKey(message: string): string {
  return message
    .replace(/"(?:[^"\\]|\\.)*"/g, '"…"')
    .replace(/\(reading '.*'\)$/, "(reading '…')")
    .replace(/(alias\)?): .*$/, '$1: …')
    .replace(/\d+/g, 'N')
    .slice(0, 160);
}

/** One line per crash sample, for a test's failure message and the report. */
export function describeCrashes(r: FuzzResult): string {
  return r.samples.map((c) => `[${c.kind}] input #${c.index}: ${c.message}\n  input: ${c.input}\n  ${(c.stack ?? '').split('\n').slice(0, 8).join('\n  ')}`).join('\n\n');
}
export { fc };
