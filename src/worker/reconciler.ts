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
  checked: number;
  enqueued: number;
  failed: number;
}

/** A job that will still run (waiting, delayed, active, prioritized…). */
function isLive(state: string): boolean {
  return state !== 'unknown' && state !== 'failed' && state !== 'completed';
}

/** Operations looked at per connection per sweep; the rest wait for the next sweep. */
const BATCH = 500;
/** BullMQ's failedReason for a job whose worker died more often than maxStalledCount allows. */
const STALLED_TOO_OFTEN = /stalled more than allowable limit/i;

/**
 * Makes every acknowledged operation reach a terminal status whatever crashed: it finds
 * inprogress operations that have no live job and enqueues them again.
 *
 * - no live job, neither the batch job it was created in nor its own (the API died between
 *   storing and enqueuing, or the batch job failed): enqueue it as its own job;
 * - job failed in BullMQ because its worker died again and again: record the operation as
 *   failed, so one poisonous operation cannot loop forever;
 * - job failed or completed otherwise (the terminal status could not be written): enqueue a new
 *   job, which finishes it.
 *
 * Each worker process runs one; a Redis lock lets one sweep run at a time across them.
 */
export class Reconciler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private readonly now: () => number;

  constructor(private readonly options: ReconcilerOptions) {
    this.now = options.now ?? Date.now;
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
    const { store, log, intervalMs, afterMs } = this.options;
    const result: SweepResult = { checked: 0, enqueued: 0, failed: 0 };
    // The lock lapses a little before the next tick, so a tick on time is never locked out by
    // the previous one's lock.
    if (!(await store.acquireReconcilerLock(Math.max(1, Math.floor(intervalMs * 0.9))))) return result;

    const before = this.now() - afterMs;
    for (const connection of await store.connections()) {
      const ids = await store.inprogressCreatedBefore(connection, before, BATCH);
      for (const operationId of ids) {
        result.checked++;
        const action = await this.repair({ ...connection, operationId });
        if (action === 'enqueued') result.enqueued++;
        if (action === 'failed') result.failed++;
      }
      if (ids.length === 0) await store.forgetIdleConnection(connection);
    }
    if (result.enqueued + result.failed > 0) log.warn(result, 'reconciler repaired operations');
    return result;
  }

  private async repair(ref: OperationRef): Promise<'ok' | 'enqueued' | 'failed'> {
    const { store, queue } = this.options;
    // The batch job the API created it in, while that job lives, carries it.
    const batchJobId = await store.batchJobOf(ref);
    if (batchJobId && isLive(await queue.stateOf(batchJobId))) return 'ok';

    const jobId = jobIdOf(ref);
    const bull = queue.queueFor(ref);
    const state = await bull.getJobState(jobId);
    if (isLive(state)) return 'ok';

    if (state !== 'unknown') {
      const job = await bull.getJob(jobId);
      if (state === 'failed' && job && STALLED_TOO_OFTEN.test(job.failedReason)) {
        const finished = await store.finish(ref, 'failed', {
          errorCode: 'processingInterrupted',
          message: 'The worker processing this operation stopped before finishing it, too many times.',
          details: [],
        });
        await job.remove();
        return finished === 'finished' ? 'failed' : 'ok';
      }
      await job?.remove();
    }
    // Re-check: the operation may have finished while we looked at its job.
    const operation = await store.get(ref);
    if (operation?.status !== 'inprogress') return 'ok';
    await queue.enqueue(ref);
    return 'enqueued';
  }
}
