/** The `ambit` command line: one commander program, each subcommand registered from its own module. */
import { Command, CommanderError } from 'commander';
import { BpfError } from '../ebpf/errors.js';
import { OperatorError } from '../util/errors.js';
import { logger } from '../telemetry/log.js';
import { packageVersion } from '../util/package.js';
import * as analyze from './analyze.js';
import * as ca from './ca.js';
import * as canary from './canary.js';
import * as certs from './certs.js';
import * as check from './check.js';
import * as controller from './controller.js';
import * as dashboard from './dashboard.js';
import * as install from './install.js';
import * as local from './local.js';
import * as namespace from './namespace.js';
import * as node from './node.js';
import * as stat from './stat.js';
import * as proxyConfig from './proxy-config.js';
import * as gateway from './gateway.js';
import * as waypoint from './waypoint.js';

/** Each subcommand module exports `register(program)`; adding one is one import and one entry here. */
const SUBCOMMANDS: ReadonlyArray<{ register(program: Command): void }> = [analyze, ca, canary, certs, check, controller, dashboard, gateway, install, local, namespace, node, proxyConfig, stat, waypoint];

/**
 * The subcommands that run as services under a supervisor (the local runtime, systemd, the
 * kubelet): their unexpected errors go to their structured log, which is what gets collected.
 */
export const SERVICES: ReadonlySet<string> = new Set(['node', 'controller', 'waypoint run', 'gateway run', 'local runtime']);

/** The subcommand being run ("waypoint run"), once commander has chosen it. */
let running: string | undefined;
let installed = false;

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/**
 * An error nothing handled (a throw in a callback, a rejection nobody awaited) means a bug and a
 * process in a state nobody reasoned about: it is logged with its stack and what was running, and
 * the process exits at once with 70 (EX_SOFTWARE), so that its supervisor starts a fresh one. A
 * node agent's pins stay, as after a kill: the next agent adopts them and redirection never stops.
 * Nothing is swallowed to keep a broken process running.
 */
export function exitOnUnexpected(current: () => string | undefined = () => running): void {
  if (installed) return;
  installed = true;
  const die = (err: unknown, origin: string) => {
    const error = err instanceof Error ? err : new Error(`non-error value: ${String(err)}`);
    const command = current() ?? 'ambit';
    try {
      if (SERVICES.has(command)) {
        logger('process').fatal({ err: error, origin, command, pid: process.pid }, `unexpected error (${origin}): ${command} exits so its supervisor restarts it`);
      } else {
        process.stderr.write(`ambit: unexpected error (${origin}) in ${command}, please report it:\n${error.stack ?? error.message}\n`);
      }
    } finally {
      process.exit(70);
    }
  };
  process.on('uncaughtException', (err, origin) => die(err, origin));
  process.on('unhandledRejection', (reason) => die(reason, 'unhandledRejection'));
}

export function buildProgram(): Command {
  const program = new Command('ambit')
    .description('An ambient service mesh: eBPF-steered node agent, mTLS without sidecars, opt-in L7 waypoints.')
    .version(packageVersion(), '-V, --version')
    .showHelpAfterError('(run `ambit help` for the commands)')
    // Usage errors surface as CommanderError so main() decides the exit, instead of commander calling process.exit.
    .exitOverride()
    .hook('preAction', (_root, action) => { running = commandPath(action); });
  for (const sub of SUBCOMMANDS) sub.register(program);
  return program;
}

/** Runs the CLI; sets process.exitCode rather than exiting, so pending output is flushed. */
export async function main(argv: string[] = process.argv): Promise<void> {
  exitOnUnexpected();
  // `ambit ... | head`: a reader that goes away ends the output, not the program with a stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err);
  }
}

function reportError(err: unknown): number {
  if (err instanceof CommanderError) {
    // commander has already printed the usage error (or the help / version text, which exit 0).
    return err.exitCode;
  }
  if (err instanceof OperatorError) {
    process.stderr.write(`ambit: ${err.message}${err.code ? ` [${err.code}]` : ''}\n${err.hint ? `  fix: ${err.hint}\n` : ''}`);
    return err.exitCode;
  }
  if (err instanceof BpfError) {
    // The message already carries the call, errno, hint and any verifier log.
    process.stderr.write(`ambit: ${err.message} [${err.code}]\n`);
    return 1;
  }
  // Anything else is a bug in ambit: the stack is what a bug report needs.
  const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`ambit: unexpected error, please report it:\n${text}\n`);
  return 70; // EX_SOFTWARE
}
