import type { Logger } from '../shared/logger.js';
import type { Operation, OperationRef } from '../shared/operation.js';
import { groupByConnection } from '../shared/keys.js';
import { newBatchJobId, type OperationQueue } from '../shared/queue.js';
import { inprogressOperation, type CreateResult, type OperationStore } from '../shared/store.js';
import { activeTraceparent, inBatchSpan, tracingOn } from '../shared/tracing.js';

export interface OperationCreator {
  /** Stores the operation (or finds its id taken) and makes sure a job will carry it. Throws
   *  when Redis cannot be reached; nothing is acknowledged then. */
  create(ref: OperationRef): Promise<{ result: CreateResult; operation: Operation }>;
}

interface Pending {
  ref: OperationRef;
  /** The create's trace context, when tracing is on: kept with the operation. */
  traceparent: string | undefined;
  resolve: (value: { result: CreateResult; operation: Operation }) => void;
  reject: (error: unknown) => void;
}

/** Operations one batch job carries at most: large enough to amortize BullMQ's per-job work,
 *  small enough that a worker holding a batch does not keep many operations from idle workers. */
const MAX_BATCH = 25;

/** The longest a partial batch waits for the commits in flight. They take a few ms; the bound
 *  matters when Redis is slow: waiting for a commit that ends in a 500 ms timeout, then timing
 *  out itself, a create took twice the command timeout to get its 503 (test/faults.test.ts). */
const MAX_WAIT_MS = 20;

/**
 * Group commit of creates. Creates are written with one Lua call per connection and carried by
 * ONE BullMQ job per batch, instead of a script and a job each: BullMQ's per-job work is what
 * bounds the accept rate (bench/README.md).
 *
 * When a batch is sent is the classic group-commit rule: a full batch goes at once; a partial
 * one goes at the end of the event-loop tick unless commits are in flight, in which case it
 * gathers the creates that arrive meanwhile and goes when none is left (or after MAX_WAIT_MS).
 * An idle service therefore answers a lone create without waiting for anyone, and a busy one
 * sends full batches instead of many small ones (one per tick made batches of 8 to 14 at 64
 * clients, going when any one commit ended made 17, and the per-job work of Redis and the worker
 * grows with the number of batches).
 *
 * Guarantees are those of single creates: each operation is stored atomically (a taken id is
 * `exists`, also within one batch); the 201 is answered only after the record is written; if
 * the job cannot be added, the operations stay in the inprogress index and the reconciler gives
 * each its own job. The records name their batch job, so the reconciler can tell it lives.
 */
export class CreateBatcher implements OperationCreator {
  private pending: Pending[] = [];
  /** An end-of-tick check of the partial batch is scheduled. */
  private tickEndScheduled = false;
  /** Set while the partial batch waits for the commit in flight. */
  private waitTimer: NodeJS.Timeout | undefined;
  private commitsInFlight = 0;

  constructor(
    private readonly store: Pick<OperationStore, 'createMany'>,
    private readonly queue: Pick<OperationQueue, 'enqueueBatch'>,
    private readonly log: Logger,
    private readonly maxWaitMs = MAX_WAIT_MS,
  ) {}

  create(ref: OperationRef): Promise<{ result: CreateResult; operation: Operation }> {
    return new Promise((resolve, reject) => {
      this.pending.push({ ref, traceparent: activeTraceparent(), resolve, reject });
      if (this.pending.length >= MAX_BATCH) {
        this.send(this.pending.splice(0, MAX_BATCH));
      } else if (!this.tickEndScheduled && !this.waitTimer) {
        this.tickEndScheduled = true;
        setImmediate(this.atTickEnd);
      }
    });
  }

  /** The partial batch goes now, or waits for the commits in flight (at most maxWaitMs). */
  private readonly atTickEnd = (): void => {
    this.tickEndScheduled = false;
    if (this.pending.length === 0) return;
    if (this.commitsInFlight === 0) this.sendPartial();
    else this.waitTimer ??= setTimeout(this.sendPartial, this.maxWaitMs);
  };

  private readonly sendPartial = (): void => {
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
    if (this.pending.length > 0) this.send(this.pending.splice(0, MAX_BATCH));
  };

  private send(batch: Pending[]): void {
    this.commitsInFlight++;
    // The commit is the batch's, not the request's that happened to start it: with tracing on it
    // is a trace of its own that links to the creates' traces (which each operation continues).
    const committed = tracingOn()
      ? inBatchSpan('commit batch', batch.map((entry) => entry.traceparent), { 'graph.batch.operations': batch.length }, () => this.commit(batch))
      : this.commit(batch);
    void committed.finally(() => {
      this.commitsInFlight--;
      // The partial batch that waited for the commits in flight goes when the last one ends.
      if (this.waitTimer && this.commitsInFlight === 0) this.sendPartial();
    });
  }

  private async commit(batch: Pending[]): Promise<void> {
    const jobId = newBatchJobId();
    // One script per connection (each its own cluster slot), all in flight together.
    const created: { entry: Pending; createdAt: number }[] = [];
    const byConnection = groupByConnection(batch.map((entry) => ({ ...entry.ref, entry }))).map((group) =>
      group.map(({ entry }) => entry),
    );
    await Promise.all(
      byConnection.map(async (entries) => {
        try {
          const { results, createdAt } = await this.store.createMany(
            entries[0]!.ref,
            entries.map((entry) => entry.ref.operationId),
            jobId,
            tracingOn() ? entries.map((entry) => entry.traceparent) : undefined,
          );
          entries.forEach((entry, i) => {
            if (results[i] === 'created') created.push({ entry, createdAt });
            else entry.resolve({ result: 'exists', operation: inprogressOperation(entry.ref.operationId, createdAt) });
          });
        } catch (error) {
          for (const entry of entries) entry.reject(error);
        }
      }),
    );
    if (created.length === 0) return;

    try {
      await this.queue.enqueueBatch(jobId, created.map(({ entry }) => entry.ref));
    } catch (error) {
      // The records are stored and sit in the inprogress index: the reconciler enqueues them, so
      // the 201s below are promises that still hold.
      this.log.warn({ err: error, jobId, operations: created.length }, 'enqueue failed; the reconciler will enqueue these operations');
    }
    for (const { entry, createdAt } of created) {
      entry.resolve({ result: 'created', operation: inprogressOperation(entry.ref.operationId, createdAt) });
    }
  }
}
