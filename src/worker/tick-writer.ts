import { connectionTag, type ConnectionRef } from '../shared/keys.js';

interface Group<Item, Result> {
  items: Item[];
  settle: { resolve: (result: Result) => void; reject: (error: unknown) => void }[];
}

/**
 * Writes submitted in one event-loop tick for one connection become one call of `write` (one
 * script, one cluster slot; `first` is the group's first item, whose connection they share):
 * a batch's claims, or the outcomes of attempts that end together, cost one round trip. No
 * submission waits for another's write, or for a later tick: what ends alone is written alone,
 * at once.
 */
export class TickWriter<Item extends ConnectionRef, Result> {
  private pending = new Map<string, Group<Item, Result>>();
  private scheduled = false;

  /** `write` answers one result per item, in order. `groupOf` may split a connection's items
   *  further (items of one group share one write). */
  constructor(
    private readonly write: (first: Item, items: Item[]) => Promise<Result[]>,
    private readonly groupOf: (item: Item) => string = connectionTag,
  ) {}

  submit(item: Item): Promise<Result> {
    return new Promise((resolve, reject) => {
      const tag = this.groupOf(item);
      let group = this.pending.get(tag);
      if (!group) {
        group = { items: [], settle: [] };
        this.pending.set(tag, group);
      }
      group.items.push(item);
      group.settle.push({ resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const groups = this.pending;
    this.pending = new Map();
    for (const { items, settle } of groups.values()) {
      this.write(items[0]!, items).then(
        (results) => settle.forEach(({ resolve }, i) => resolve(results[i]!)),
        (error: unknown) => settle.forEach(({ reject }) => reject(error)),
      );
    }
  };
}
