import { OperatorError } from '../util/errors.js';

/**
 * Failures of the local cluster a user can act on (bad input, a cluster that is not running,
 * a missing tool): the CLI prints the message and the hint, never a stack trace.
 */
export class LocalError extends OperatorError {
  override readonly name = 'LocalError';
}
