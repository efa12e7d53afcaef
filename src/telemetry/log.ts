/**
 * Structured logs (pino), one child logger per component. AMBIT_LOG_LEVEL sets the level
 * (default info); AMBIT_DEBUG=ebpf,node turns on debug for just those components.
 */
import { pino, type Logger } from 'pino';

export const LOG_LEVEL_ENV = 'AMBIT_LOG_LEVEL';
export const DEBUG_ENV = 'AMBIT_DEBUG';

let root: Logger | undefined;

function debugComponents(): Set<string> {
  return new Set((process.env[DEBUG_ENV] ?? '').split(',').map((s) => s.trim()).filter(Boolean));
}

export function rootLogger(): Logger {
  root ??= pino({ level: process.env[LOG_LEVEL_ENV] ?? 'info', base: undefined });
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
