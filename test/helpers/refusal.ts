/** The CaError a promise is refused with (any other error, or none, fails the test). */
import { CaError } from '../../src/identity/ca.js';

export async function refusal(p: Promise<unknown>): Promise<CaError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CaError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}
