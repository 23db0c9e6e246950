import type { Logger } from '../shared/logger.js';
import type { Operation, OperationRef } from '../shared/operation.js';
import { connectionTag, groupByConnection } from '../shared/keys.js';
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
 * `exists`, also within one batch); the 201 is answered only after the record is written and
 * the job's add has answered; if the job cannot be added, the operations stay in the inprogress
 * index and the reconciler gives each its own job. The records name their batch job, so the
 * reconciler can tell it lives. On one Redis node the job is sent right behind the records
 * (commit), and Redis runs it after them.
 */
export class CreateBatcher implements OperationCreator {
  private pending: Pending[] = [];
  /** An end-of-tick check of the partial batch is scheduled. */
  private tickEndScheduled = false;
  /** Set while the partial batch waits for the commit in flight. */
  private waitTimer: NodeJS.Timeout | undefined;
  private commitsInFlight = 0;
  private readonly maxWaitMs: number;
  private readonly jobFollowsRecords: boolean;

  /**
   * `jobFollowsRecords`: the store and the queue write on one connection to one Redis node (as
   * operationsFor wires them, not on a cluster), so a batch's job can be sent right behind its
   * create scripts (commit).
   */
  constructor(
    private readonly store: Pick<OperationStore, 'createMany'>,
    private readonly queue: Pick<OperationQueue, 'enqueueBatch'>,
    private readonly log: Logger,
    { maxWaitMs = MAX_WAIT_MS, jobFollowsRecords = false }: { maxWaitMs?: number; jobFollowsRecords?: boolean } = {},
  ) {
    this.maxWaitMs = maxWaitMs;
    this.jobFollowsRecords = jobFollowsRecords;
  }

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
    const byConnection = groupByConnection(batch.map((entry) => ({ ...entry.ref, entry }))).map((group) =>
      group.map(({ entry }) => entry),
    );
    // One script per connection (each its own cluster slot), all written now, in flight together.
    const creates = byConnection.map((entries) =>
      this.store.createMany(
        entries[0]!.ref,
        entries.map((entry) => entry.ref.operationId),
        jobId,
        tracingOn() ? entries.map((entry) => entry.traceparent) : undefined,
      ),
    );
    // On one Redis node the job goes right behind the scripts, on the same connection: Redis runs
    // them in that order, so no worker can take the job before its records exist, and the batch
    // costs one round trip instead of two. The job carries every operation of the batch, each
    // once, before knowing which were created: the claim skips one whose record is another job's
    // (an id taken before), terminal, or missing (its create failed). On a cluster the job and
    // the records are on different nodes, so there it waits for the records.
    const enqueued = this.jobFollowsRecords ? this.enqueue(jobId, uniqueRefs(batch)) : undefined;
    const created: { entry: Pending; createdAt: number }[] = [];
    const outcomes = await Promise.allSettled(creates);
    outcomes.forEach((outcome, group) => {
      const entries = byConnection[group]!;
      if (outcome.status === 'rejected') {
        for (const entry of entries) entry.reject(outcome.reason);
        return;
      }
      const { results, createdAt } = outcome.value;
      entries.forEach((entry, i) => {
        if (results[i] === 'created') created.push({ entry, createdAt });
        else entry.resolve({ result: 'exists', operation: inprogressOperation(entry.ref.operationId, createdAt) });
      });
    });
    if (enqueued) await enqueued;
    else if (created.length > 0) await this.enqueue(jobId, created.map(({ entry }) => entry.ref));
    for (const { entry, createdAt } of created) {
      entry.resolve({ result: 'created', operation: inprogressOperation(entry.ref.operationId, createdAt) });
    }
  }

  /** Adds the batch's job. If it cannot be added, the records are stored and sit in the
   *  inprogress index: the reconciler enqueues them, so the 201s still hold. */
  private async enqueue(jobId: string, refs: OperationRef[]): Promise<void> {
    try {
      await this.queue.enqueueBatch(jobId, refs);
    } catch (error) {
      this.log.warn({ err: error, jobId, operations: refs.length }, 'enqueue failed; the reconciler will enqueue these operations');
    }
  }
}

/** The batch's operations, each once (a batch may hold two creates of one id: the second is
 *  `exists`, and a job carrying it twice would run a second attempt of it). */
function uniqueRefs(batch: Pending[]): OperationRef[] {
  const seen = new Set<string>();
  const refs: OperationRef[] = [];
  for (const { ref } of batch) {
    const key = `${connectionTag(ref)}|${ref.operationId}`;
    if (!seen.has(key)) {
      seen.add(key);
      refs.push(ref);
    }
  }
  return refs;
}
