/**
 * A failure the operator can fix — a flag, a file, a setting, a cluster that is not there. Every
 * process prints it as its message and a hint (`ambit: ...` / `  fix: ...`) and exits, never as a
 * stack trace or "please report it"; src/cli/main.ts does that for all of them.
 */
export class OperatorError extends Error {
  override readonly name: string = 'OperatorError';

  constructor(
    message: string,
    readonly hint?: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}
