import type { Logger } from '../shared/logger.js';
import type { ApiSeries } from '../shared/metrics.js';
import type { Operation, OperationRef } from '../shared/operation.js';
import type { OperationStore } from '../shared/store.js';
import type { Subscriber } from '../shared/subscriber.js';

/** Someone following one operation until it ends: a held request or an event stream. */
export interface Watcher {
  ref: OperationRef;
  /** Called with the operation's terminal state; may be called more than once (the
   *  announcement and a read can both bring it): the first call is the one that counts. */
  ended(operation: Operation): void;
  /** The process is shutting down: answer now with what is known. */
  closing(): void;
}

interface ChannelWatchers {
  /** Watchers by operation id. */
  byOperation: Map<string, Set<Watcher>>;
  /** Resolves to the function that leaves the channel. */
  subscription: Promise<() => void>;
}

/**
 * Terminal transitions of operations, for the requests that wait for them, from whichever
 * process wrote them. The store's scripts announce every terminal transition on its
 * connection's channel (shared/scripts.ts, TERMINAL); this process subscribes a channel while
 * someone here watches an operation of that connection, parses each message once and hands
 * each operation to its watchers in memory. Nothing polls: a watcher costs a subscription and
 * two reads (when it starts, and after a reconnect), not a read per interval.
 */
export class OperationWatch {
  private readonly channels = new Map<string, ChannelWatchers>();
  private readonly watchers = new Set<Watcher>();
  private closed = false;

  constructor(
    private readonly store: Pick<OperationStore, 'get' | 'keys'>,
    private readonly subscriber: Subscriber,
    private readonly log: Pick<Logger, 'warn'>,
    /** How long subscribing may take before a watcher gives up (Redis is away), unless the
     *  watcher says otherwise. */
    private readonly subscribeTimeoutMs: number,
  ) {
    subscriber.onResubscribed(() => void this.rereadAll());
  }

  /**
   * Starts watching: resolves once the operation's channel is subscribed and the operation read
   * again after that, so a transition that happened between the caller's read and the
   * subscription is not missed (`ended` is called at once for it). Resolves to the function that
   * stops watching. Rejects when subscribing fails or takes longer than `subscribeTimeoutMs`.
   */
  async watch(watcher: Watcher, subscribeTimeoutMs = this.subscribeTimeoutMs): Promise<() => void> {
    if (this.closed) throw new Error('The API is shutting down.');
    const channel = this.store.keys.changes(watcher.ref);
    let entry = this.channels.get(channel);
    if (!entry) {
      const byOperation = new Map<string, Set<Watcher>>();
      const subscription = this.subscriber.listen(channel, 'sharded', (message) => this.deliver(byOperation, message));
      entry = { byOperation, subscription };
      this.channels.set(channel, entry);
    }
    let same = entry.byOperation.get(watcher.ref.operationId);
    if (!same) entry.byOperation.set(watcher.ref.operationId, (same = new Set()));
    same.add(watcher);
    this.watchers.add(watcher);
    const stop = () => this.unwatch(channel, watcher);
    try {
      await withTimeout(entry.subscription, subscribeTimeoutMs);
    } catch (error) {
      stop();
      throw error;
    }
    // Subscribed: from here on no announcement is missed. A read that fails leaves a transition
    // made before the subscription unseen until the watcher's own deadline reads it again.
    const now = await this.store.get(watcher.ref).catch(() => undefined);
    if (now && now.status !== 'inprogress') watcher.ended(now);
    return stop;
  }

  /** Watchers now, and channels subscribed for them. */
  get size(): number {
    return this.watchers.size;
  }
  get channelCount(): number {
    return this.channels.size;
  }

  /** Shutdown: every watcher answers now, and no new one starts. */
  close(): void {
    this.closed = true;
    for (const watcher of [...this.watchers]) watcher.closing();
  }

  private unwatch(channel: string, watcher: Watcher): void {
    this.watchers.delete(watcher);
    const entry = this.channels.get(channel);
    const same = entry?.byOperation.get(watcher.ref.operationId);
    if (!entry || !same?.delete(watcher)) return;
    if (same.size === 0) entry.byOperation.delete(watcher.ref.operationId);
    if (entry.byOperation.size > 0) return;
    this.channels.delete(channel);
    entry.subscription.then((leave) => leave(), () => undefined);
  }

  private deliver(byOperation: Map<string, Set<Watcher>>, message: string): void {
    let operations: Operation[];
    try {
      operations = JSON.parse(message) as Operation[];
    } catch (error) {
      this.log.warn({ err: error }, 'an operation announcement is not JSON; ignored');
      return;
    }
    for (const operation of operations) {
      for (const watcher of byOperation.get(operation.id) ?? []) watcher.ended(operation);
    }
  }

  /** After a reconnect, announcements made while the connection was down are lost: read every
   *  watched operation again. */
  private async rereadAll(): Promise<void> {
    await Promise.all(
      [...this.watchers].map(async (watcher) => {
        const now = await this.store.get(watcher.ref).catch(() => undefined);
        if (now && now.status !== 'inprogress') watcher.ended(now);
      }),
    );
  }
}

/** What a held request answers with: the operation's latest state, and whether it was held. */
export interface Held {
  operation: Operation;
  /** False when the request could not be held (subscribing failed, shutdown began). */
  held: boolean;
}

/**
 * Holds a request until `operation` (read by the caller, inprogress) ends, `seconds` pass, the
 * client goes away (`signal`) or the process shuts down; resolves with the latest state. After a
 * timeout or at shutdown it reads the operation once more, so the answer is never staler than
 * the wait. Undefined when the client went away (there is nobody to answer).
 */
export async function holdUntilEnded(
  watch: OperationWatch,
  operation: Operation,
  ref: OperationRef,
  seconds: number,
  signal: AbortSignal,
  store: Pick<OperationStore, 'get'>,
  metrics?: ApiSeries,
): Promise<Held | undefined> {
  let settle!: (how: { ended: Operation } | 'timeout' | 'closing' | 'gone') => void;
  const settled = new Promise<{ ended: Operation } | 'timeout' | 'closing' | 'gone'>((resolve) => (settle = resolve));
  const timer = setTimeout(() => settle('timeout'), seconds * 1000);
  const onAbort = () => settle('gone');
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) settle('gone');
  metrics?.requestsHeld.inc();
  let stop: (() => void) | undefined;
  try {
    try {
      // A held request may wait for its subscription as long as it waits for the operation: on
      // a busy process (thousands of requests arriving at once) that can take a while.
      stop = await watch.watch({ ref, ended: (ended) => settle({ ended }), closing: () => settle('closing') }, seconds * 1000);
    } catch {
      // Redis is away or the process is stopping: answer with what the caller read, unheld.
      return { operation, held: false };
    }
    const how = await settled;
    if (how === 'gone') return undefined;
    if (typeof how === 'object') return { operation: how.ended, held: true };
    const latest = await store.get(ref).catch(() => undefined);
    return { operation: latest ?? operation, held: true };
  } finally {
    stop?.();
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
    metrics?.requestsHeld.dec();
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer from Redis within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
