/** At most `limit` calls of `run` in flight; the rest wait in arrival order. */
export class Semaphore {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  /** `onChange` runs whenever a slot is taken or freed, so the owner can react to pressure. */
  constructor(
    private readonly limit: number,
    private readonly onChange: () => void = () => {},
  ) {}

  /** True while every slot is taken. */
  get full(): boolean {
    return this.active >= this.limit;
  }

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    this.onChange();
    try {
      return await task();
    } finally {
      // Hand the slot straight to the next waiter, or free it.
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
      this.onChange();
    }
  }
}
