import type { Logger } from '../shared/logger.js';
import type { Operation, OperationRef } from '../shared/operation.js';
import { groupByConnection } from '../shared/keys.js';
import { newBatchJobId, type OperationQueue } from '../shared/queue.js';
import { inprogressOperation, type CreateResult, type OperationStore } from '../shared/store.js';

export interface Creates {
  /** Stores the operation (or finds its id taken) and makes sure a job will carry it. Throws
   *  when Redis cannot be reached; nothing is acknowledged then. */
  create(ref: OperationRef): Promise<{ result: CreateResult; operation: Operation }>;
}

interface Pending {
  ref: OperationRef;
  resolve: (value: { result: CreateResult; operation: Operation }) => void;
  reject: (error: unknown) => void;
}

/** Operations one batch job carries at most: large enough to amortize BullMQ's per-job work
 *  (about 25 creates arrive per tick at 64 concurrent clients), small enough that a worker
 *  holding a batch does not keep many operations from idle workers. */
const MAX_BATCH = 25;

/**
 * Group commit of creates. Every create that arrives in one event-loop tick is written with one
 * Lua call per connection and carried by ONE BullMQ job, instead of a script and a job each:
 * BullMQ's per-job work is what bounds the accept rate (PITFALLS.md, "Throughput"). A lone
 * create waits for no one: the batch is flushed at the end of the tick it arrived in.
 *
 * Guarantees are those of single creates: each operation is stored atomically (a taken id is
 * `exists`, also within one batch); the 201 is answered only after the record is written; if
 * the job cannot be added, the operations stay in the inprogress index and the reconciler gives
 * each its own job. The records name their batch job, so the reconciler can tell it lives.
 */
export class CreateBatcher implements Creates {
  private pending: Pending[] = [];

  constructor(
    private readonly store: OperationStore,
    private readonly queue: Pick<OperationQueue, 'enqueueBatch'>,
    private readonly log: Logger,
  ) {}

  create(ref: OperationRef): Promise<{ result: CreateResult; operation: Operation }> {
    return new Promise((resolve, reject) => {
      this.pending.push({ ref, resolve, reject });
      if (this.pending.length === 1) setImmediate(() => this.flush());
    });
  }

  private flush(): void {
    const pending = this.pending;
    this.pending = [];
    for (let i = 0; i < pending.length; i += MAX_BATCH) void this.commit(pending.slice(i, i + MAX_BATCH));
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
