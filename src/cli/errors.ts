import { OperatorError } from '../util/errors.js';

/** Failures the operator can fix, found while reading the command line: printed as a message and a hint, never as a stack trace. */
export class CliError extends OperatorError {
  override readonly name = 'CliError';
}
