const FREE = Promise.resolve();

/** At most `limit` holders at once; the rest wait in arrival order. */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  /** Resolves once the caller holds a slot; every acquire needs one release. */
  acquire(): Promise<void> {
    if (this.active < this.limit) {
      this.active++;
      return FREE;
    }
    return new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  release(): void {
    // Hand the slot straight to the next waiter, or free it.
    const next = this.waiting.shift();
    if (next) next();
    else this.active--;
  }
}
