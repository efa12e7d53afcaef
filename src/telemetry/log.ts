/**
 * Structured logs (pino), one child logger per component. AMBIT_LOG_LEVEL sets the level
 * (default info); AMBIT_DEBUG=ebpf,node turns on debug for just those components.
 */
import { destination, pino, type Logger } from 'pino';

export const LOG_LEVEL_ENV = 'AMBIT_LOG_LEVEL';
export const DEBUG_ENV = 'AMBIT_DEBUG';

let root: Logger | undefined;

function debugComponents(): Set<string> {
  return new Set((process.env[DEBUG_ENV] ?? '').split(',').map((s) => s.trim()).filter(Boolean));
}

/** How late a buffered process's lines may reach its stdout. */
export const LOG_FLUSH_MS = 1000;
/** A buffered process's lines are written once this much is pending (or at LOG_FLUSH_MS). */
const LOG_BUFFER_BYTES = 4096;
let buffered = false;

/**
 * The node agent and the waypoint log a line per connection or request (the access log). One
 * synchronous write per line was about 5 % of a waypoint's CPU, so they buffer instead, as
 * Envoy does its access log: lines go out once 4 KiB is pending or each second, a warning or
 * an error takes everything pending out at once, and the process's exit (normal, a signal
 * handled, an uncaught exception) writes the rest. A kill -9 loses at most the last second.
 * One writer for every logger of the process, so lines never interleave. Call it before the
 * first logger is made; later calls change nothing.
 */
export function bufferLogs(): void {
  if (!root) buffered = true;
}

export function rootLogger(): Logger {
  if (root) return root;
  const level = process.env[LOG_LEVEL_ENV] ?? 'info';
  if (!buffered) {
    root = pino({ level, base: undefined });
    return root;
  }
  const out = destination({ dest: 1, sync: false, minLength: LOG_BUFFER_BYTES });
  // SonicBoom throws on a flush after its end (at exit); its type does not show `destroyed`.
  const flush = () => { if (!(out as unknown as { destroyed?: boolean }).destroyed) out.flush(); };
  setInterval(flush, LOG_FLUSH_MS).unref();
  root = pino({
    level, base: undefined,
    hooks: {
      logMethod(args, method, lineLevel) {
        method.apply(this, args);
        // Warnings and errors are not held back.
        if (lineLevel >= 40) flush();
      },
    },
  }, out);
  return root;
}

export function logger(component: string): Logger {
  const debug = debugComponents();
  const child = rootLogger().child({ component });
  if (debug.has(component) || debug.has('all')) child.level = 'debug';
  return child;
}

/** A logger that drops everything, for library callers that pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
