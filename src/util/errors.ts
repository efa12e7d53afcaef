/**
 * A failure the operator can fix — a flag, a file, a setting, a cluster that is not there. Every
 * process prints it as its message and a hint (`ambit: ...` / `  fix: ...`) and exits, never as a
 * stack trace or "please report it"; src/cli/main.ts does that for all of them.
 */

/** The operator's mistakes that have a code of their own (docs/ERRORS.md, Operator errors). */
export type OperatorErrorCode = 'AMBIT_E_KUBECONFIG' | 'AMBIT_E_PLUGIN_CA' | 'AMBIT_E_SETTING' | 'AMBIT_E_FILE';
export class OperatorError extends Error {
  override readonly name: string = 'OperatorError';

  constructor(
    message: string,
    readonly hint?: string,
    readonly exitCode = 1,
    /** A stable code for the kind of mistake (docs/ERRORS.md), printed after the message. */
    readonly code?: OperatorErrorCode,
  ) {
    super(message);
  }
}
