/**
 * libbpf's own messages. They go to a pino-compatible logger when one is set (debug level for
 * libbpf's chatter), and the warnings of the call in progress are kept for the error it may
 * raise. Debug output is switched on with AMBIT_DEBUG=ebpf.
 */
import * as libbpf from '../../native/libbpf.js';

export interface LogSink {
  debug(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

let sink: LogSink | undefined;
let installed = false;
let captured: string[] = [];

export function setLibbpfLogger(logger: LogSink | undefined): void {
  sink = logger;
}

function install(): void {
  if (installed) return;
  installed = true;
  libbpf.setLibbpfPrint((level, message) => {
    if (level <= libbpf.LIBBPF_INFO) captured.push(message);
    if (captured.length > 200) captured = captured.slice(-100);
    if (level === libbpf.LIBBPF_WARN) sink?.warn({ component: 'ebpf', libbpf: true }, message);
    else sink?.debug({ component: 'ebpf', libbpf: true }, message);
  });
}

/** Runs one libbpf call and returns its result with the warnings it printed. */
export function withLibbpfLog<T>(fn: () => T): { result: T; log: string[] } {
  install();
  captured = [];
  const result = fn();
  const log = captured;
  captured = [];
  return { result, log };
}
