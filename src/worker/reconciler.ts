import { randomUUID } from 'node:crypto';
import type { ConnectionRef } from '../shared/keys.js';
import type { Logger } from '../shared/logger.js';
import type { OperationRef } from '../shared/operation.js';
import { jobIdOf, type OperationQueue } from '../shared/queue.js';
import type { OperationStore } from '../shared/store.js';

export interface ReconcilerOptions {
  store: OperationStore;
  queue: OperationQueue;
  log: Logger;
  /** How often to sweep. */
  intervalMs: number;
  /** Only operations created longer ago than this are looked at, so a create whose enqueue is
   *  still on its way is left alone. */
  afterMs: number;
  now?: () => number;
}

export interface SweepResult {
  /** False when another process held the sweep lock. */
  ran: boolean;
  connections: number;
  checked: number;
  enqueued: number;
  forgotten: number;
}

/** A job that will still run (waiting, delayed, active, prioritized…). */
function isLive(state: string): boolean {
  return state !== 'unknown' && state !== 'failed' && state !== 'completed';
}

/** Registry entries per page, and so connections looked at together. */
const PAGE = 500;
/** Operations looked at per connection per sweep; the rest wait for the next sweep. */
const PER_CONNECTION = 500;
/** The sweep lock outlives a dead sweeper by this much at least; a live one renews it. */
const MIN_LOCK_TTL_MS = 10_000;

/**
 * Makes every acknowledged operation reach a terminal status whatever crashed: it finds
 * inprogress operations that no live job carries and gives each its own job.
 *
 * - its batch job is gone (the API died before adding it, or BullMQ failed it): the operation
 *   is handed to its own job;
 * - its own job is gone, or failed or completed in BullMQ without writing the status: a new
 *   own job is enqueued.
 * It never resets anything: attempts are counted on the operation (OperationStore.claim), so an
 * operation whose attempts are spent fails at its next claim instead of looping.
 *
 * Each worker process runs one; a Redis lock that its holder renews lets one sweep run at a time
 * across them. A sweep pages the connection registry with a scan cursor and looks at a page's
 * connections side by side.
 */
export class Reconciler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private readonly now: () => number;
  private readonly lockTtlMs: number;

  constructor(private readonly options: ReconcilerOptions) {
    this.now = options.now ?? Date.now;
    this.lockTtlMs = Math.max(MIN_LOCK_TTL_MS, 2 * options.intervalMs);
  }

  start(): void {
    this.timer = setInterval(() => {
      if (this.running) return;
      this.running = this.sweep()
        .catch((error: unknown) => this.options.log.warn({ err: error }, 'reconciler sweep failed'))
        .finally(() => (this.running = undefined));
    }, this.options.intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  async sweep(): Promise<SweepResult> {
    const { store, log } = this.options;
    const result: SweepResult = { ran: false, connections: 0, checked: 0, enqueued: 0, forgotten: 0 };
    const holder = randomUUID();
    if (!(await store.acquireReconcilerLock(holder, this.lockTtlMs))) return result;
    result.ran = true;

    // Renewed three times per ttl; a sweep that finds it lost stops at the next page, so two
    // sweeps overlap by at most one page, and only after this one stalled for a whole ttl.
    let held = true;
    const renewal = setInterval(() => {
      store.renewReconcilerLock(holder, this.lockTtlMs).then(
        (renewed) => (held &&= renewed),
        (error: unknown) => log.warn({ err: error }, 'renewing the reconciler lock failed'),
      );
    }, this.lockTtlMs / 3);
    try {
      const before = this.now() - this.options.afterMs;
      let cursor = '0';
      do {
        const page = await store.registryPage(cursor, PAGE);
        cursor = page.cursor;
        result.connections += page.connections.length;
        await Promise.all(page.connections.map((entry) => this.sweepConnection(entry.connection, entry.lastCreateAt, before, result)));
      } while (cursor !== '0' && held);
      if (!held) log.warn('the reconciler lock was lost mid-sweep; stopping this sweep');
    } finally {
      clearInterval(renewal);
      await store.releaseReconcilerLock(holder).catch(() => {});
    }
    if (result.enqueued > 0) log.warn(result, 'reconciler repaired operations');
    return result;
  }

  private async sweepConnection(connection: ConnectionRef, lastCreateAt: number, before: number, result: SweepResult): Promise<void> {
    const { store } = this.options;
    const ids = await store.inprogressCreatedBefore(connection, before, PER_CONNECTION);
    if (ids.length === 0) {
      if (lastCreateAt < store.idleBefore() && (await store.forgetIdleConnection(connection))) result.forgotten++;
      return;
    }
    const repaired = await Promise.all(ids.map((operationId) => this.repair({ ...connection, operationId })));
    result.checked += ids.length;
    result.enqueued += repaired.filter(Boolean).length;
  }

  /** Gives the operation its own job unless a live job carries it; true when it enqueued one. */
  private async repair(ref: OperationRef): Promise<boolean> {
    const { store, queue } = this.options;
    const batchJobId = await store.batchJobOf(ref);
    if (batchJobId) {
      if (isLive(await queue.stateOf(batchJobId))) return false;
      await store.handToOwnJob(ref, batchJobId);
    }
    const jobId = jobIdOf(ref);
    const bull = queue.queueFor(ref);
    const state = await bull.getJobState(jobId);
    if (isLive(state)) return false;
    // A failed or completed own job keeps its id taken; it goes before a new one is added.
    if (state !== 'unknown') await (await bull.getJob(jobId))?.remove();
    // Re-check: the operation may have finished while we looked at its jobs.
    const operation = await store.get(ref);
    if (operation?.status !== 'inprogress') return false;
    await queue.enqueue(ref);
    return true;
  }
}
