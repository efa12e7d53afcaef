/**
 * Runs a pass one at a time over the latest state: a request while a pass runs makes exactly one
 * more pass after it, however many requests came meanwhile. What the controller's API writers
 * (waypoint objects, trust-bundle ConfigMaps) use, so that a burst of snapshots costs one or two
 * passes rather than one each.
 */
export class Coalescer {
  private running?: Promise<void>;
  private again = false;

  /** `pass` must not throw (log instead); `stopped` ends the repetition. */
  constructor(private readonly pass: () => Promise<void>, private readonly stopped: () => boolean) {}

  /** Resolves once a pass that started after this call has finished. */
  request(): Promise<void> {
    if (this.stopped()) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.stopped());
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }
}
