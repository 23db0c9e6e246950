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

/** Registry entries per page. */
const PAGE = 500;
/** Connections of a page looked at side by side: enough to hide round trips, few enough that
 *  the worker's own commands (lease and lock renewals) on the shared connection are not queued
 *  behind a sweep's. Each connection's operations are looked at one after the other. */
const CONCURRENT_CONNECTIONS = 32;
/** Inprogress operations read per round trip. */
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
 * connections side by side (CONCURRENT_CONNECTIONS at a time).
 */
interface Sweep {
  /** Operations created before this (ms) are looked at. */
  before: number;
  result: SweepResult;
  batchStates: Map<string, Promise<string>>;
  stillHeld: () => boolean;
}

/** Runs `task` over `items`, at most `limit` at once. */
async function forEachLimited<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await task(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

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

    // Renewed three times per ttl. The lock counts as lost when a renewal says so, or when none
    // succeeded for a whole ttl (it may have lapsed); the sweep then stops before its next
    // connection, so it cannot run beside the sweep that took the lock over.
    let lost = false;
    let renewedAt = performance.now();
    const renewal = setInterval(() => {
      store.renewReconcilerLock(holder, this.lockTtlMs).then(
        (renewed) => {
          if (renewed) renewedAt = performance.now();
          else lost = true;
        },
        (error: unknown) => log.warn({ err: error }, 'renewing the reconciler lock failed'),
      );
    }, this.lockTtlMs / 3);
    const stillHeld = () => !lost && performance.now() - renewedAt < this.lockTtlMs;
    const sweep: Sweep = { before: this.now() - this.options.afterMs, result, batchStates: new Map(), stillHeld };
    try {
      let cursor = '0';
      do {
        const page = await store.registryPage(cursor, PAGE);
        cursor = page.cursor;
        result.connections += page.connections.length;
        await forEachLimited(page.connections, CONCURRENT_CONNECTIONS, async ({ connection, lastCreateAt }) => {
          if (!stillHeld()) return;
          try {
            await this.sweepConnection(connection, lastCreateAt, sweep);
          } catch (error) {
            // One connection's failure (Redis, a job that changed state under us) does not end
            // the sweep for the others; the next sweep looks at it again.
            log.warn({ err: error, connectionId: connection.connectionId }, 'reconciler could not sweep a connection');
          }
        });
      } while (cursor !== '0' && stillHeld());
      if (!stillHeld()) log.warn('the reconciler lock was lost mid-sweep; stopping this sweep');
    } finally {
      clearInterval(renewal);
      await store.releaseReconcilerLock(holder).catch(() => {});
    }
    if (result.enqueued > 0) log.warn(result, 'reconciler repaired operations');
    return result;
  }

  /** Every inprogress operation of the connection old enough to look at, a page at a time. */
  private async sweepConnection(connection: ConnectionRef, lastCreateAt: number, sweep: Sweep): Promise<void> {
    const { store } = this.options;
    for (let offset = 0; sweep.stillHeld(); offset += PER_CONNECTION) {
      const ids = await store.inprogressCreatedBefore(connection, sweep.before, PER_CONNECTION, offset);
      if (offset === 0 && ids.length === 0) {
        if (lastCreateAt < store.idleBefore() && (await store.forgetIdleConnection(connection))) sweep.result.forgotten++;
        return;
      }
      for (const operationId of ids) {
        sweep.result.checked++;
        if (await this.repair({ ...connection, operationId }, sweep.batchStates)) sweep.result.enqueued++;
      }
      if (ids.length < PER_CONNECTION) return;
    }
  }

  /** Gives the operation its own job unless a live job carries it; true when it enqueued one.
   *  `batchStates` remembers, for one sweep, the state of each batch job already asked about. */
  private async repair(ref: OperationRef, batchStates: Map<string, Promise<string>>): Promise<boolean> {
    const { store, queue } = this.options;
    const batchJobId = await store.batchJobOf(ref);
    if (batchJobId) {
      let state = batchStates.get(batchJobId);
      if (!state) batchStates.set(batchJobId, (state = queue.stateOfJob(batchJobId)));
      if (isLive(await state)) return false;
      await store.handToOwnJob(ref, batchJobId);
    }
    const ownJobId = jobIdOf(ref);
    const state = await queue.stateOfJob(ownJobId);
    if (isLive(state)) return false;
    // A failed own job keeps its id taken (so would a completed one, were it kept; see jobOptions
    // in shared/queue.ts), and BullMQ would ignore the new one: it goes first.
    if (state !== 'unknown') await queue.removeJob(ownJobId);
    // Re-check: the operation may have finished while we looked at its jobs.
    const operation = await store.get(ref);
    if (operation?.status !== 'inprogress') return false;
    await queue.enqueue(ref);
    return true;
  }
}
