import { randomUUID } from 'node:crypto';
import { Queue, type JobType, type JobsOptions } from 'bullmq';
import type { Logger } from 'pino';
import type { OperationRef } from './operation.js';
import type { RedisClient } from './redis.js';
import { bullmqTelemetry } from './tracing.js';

/**
 * The job catalog: the operation queue (optionally sharded), its job name, data and options.
 * API and workers both build their BullMQ objects from here.
 */

/** A job that carries one operation, its "own job": a retry, or a re-enqueue by the reconciler. */
export const OWN_JOB_NAME = 'process-operation';
/** A job that carries a batch of operations the API created together (api/create-batcher.ts),
 *  named with their number so that a dashboard's job list shows it (its data lists them). */
export function batchJobName(operations: number): string {
  return `process-batch (${operations} operation${operations === 1 ? '' : 's'})`;
}

/**
 * The name of one shard's queue. The braces make each queue's keys one Redis Cluster hash slot,
 * as BullMQ requires; different shards hash to different slots, so on a cluster they spread
 * over the masters.
 */
export function queueName(shard: number, shards: number): string {
  return shards === 1 ? '{operations}' : `{operations-${shard}}`;
}

/** The single-shard queue name (the default deployment). */
export const QUEUE_NAME = queueName(0, 1);

/** Attempts are counted on the operation (OperationStore.claim), not on its jobs. */
export type OperationJobData = OperationRef;
export interface BatchJobData {
  batch: OperationRef[];
}
export type JobData = OperationJobData | BatchJobData;

export function isBatch(data: JobData): data is BatchJobData {
  return 'batch' in data;
}

export interface RetryPolicy {
  attempts: number;
  backoffMs: number;
}

/**
 * A deterministic job id, so re-enqueueing an operation (the reconciler) is idempotent.
 * BullMQ ids must not contain `:` or be all digits: tenant ids are `[A-Za-z0-9-]`, connection
 * ids `[A-Za-z0-9]` and operation ids `[A-Za-z0-9._~-]`, and the `~` separators make the id
 * never all digits. The tenant and connection cannot contain `~`, so the id is unambiguous.
 */
export function jobIdOf({ tenantId, connectionId, operationId }: OperationRef): string {
  return `${tenantId}~${connectionId}~${operationId}`;
}

export function newBatchJobId(): string {
  return `batch~${randomUUID()}`;
}

/** Finished jobs kept for inspection (Bull Board), per shard and per outcome: the newest. */
const KEPT_FINISHED_JOBS = 1000;

/**
 * Options of every job. BullMQ's `attempts` and backoff retry a job whose Redis writes failed;
 * an operation's own attempts are counted on the operation, whatever job carries it. Jobs fail in
 * BullMQ only when Redis kept failing them (the reconciler repairs those); the last ones are kept.
 *
 * Completed batch jobs are kept too, so a dashboard shows the work that was done, not an empty
 * queue: their ids are unique, so a kept one is only memory (bounded). A completed own job is
 * removed at once: its id is the operation's (jobIdOf), and BullMQ ignores an add whose id is
 * taken, so a kept one would swallow the operation's next own job (a retry its batch hands over,
 * a reconciler repair) and leave the operation with no job until a sweep noticed. A failed own
 * job keeps its id taken too, so the reconciler removes it before it enqueues.
 */
function jobOptions(jobId: string, attempts: number, firstBackoffMs: number, { delay = 0, keepCompleted = false } = {}): JobsOptions {
  return {
    jobId,
    attempts,
    delay,
    backoff: { type: 'exponential', delay: firstBackoffMs },
    removeOnComplete: keepCompleted ? { count: KEPT_FINISHED_JOBS } : true,
    removeOnFail: { count: KEPT_FINISHED_JOBS },
  };
}

/** FNV-1a: a stable, cheap spread of job ids over shards. */
function shardOf(jobId: string, shards: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < jobId.length; i++) {
    hash ^= jobId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % shards;
}

/** The producer side: what the API (and the reconciler) use to put operations on the queue. */
export class OperationQueue {
  /** One BullMQ queue per shard. */
  readonly queues: Queue<JobData>[];

  constructor(
    connection: RedisClient,
    prefix: string,
    private readonly policy: RetryPolicy,
    log: Logger,
    shards = 1,
  ) {
    this.queues = Array.from({ length: shards }, (_, shard) => {
      const queue = new Queue<JobData>(queueName(shard, shards), { connection, prefix, ...bullmqTelemetry() });
      queue.on('error', (error) => log.warn({ err: error }, 'queue connection error'));
      return queue;
    });
  }

  /** The operation's own job, after `delayMs`. Idempotent while the job is live: BullMQ ignores
   *  an add whose job id is taken (a completed own job is gone; a failed one stays, see
   *  jobOptions). */
  async enqueue(ref: OperationRef, delayMs = 0): Promise<void> {
    const { tenantId, connectionId, operationId } = ref;
    const jobId = jobIdOf(ref);
    await this.queueOfJob(jobId).add(
      OWN_JOB_NAME,
      { tenantId, connectionId, operationId },
      jobOptions(jobId, this.policy.attempts, this.policy.backoffMs, { delay: delayMs }),
    );
  }

  /** How long an operation waits before its attempt `attempt + 1`: exponential from the first
   *  backoff. */
  backoffAfter(attempt: number): number {
    return this.policy.backoffMs * 2 ** (attempt - 1);
  }

  /** One job for operations created together (`jobId` from newBatchJobId, recorded on them). */
  async enqueueBatch(jobId: string, batch: OperationRef[]): Promise<void> {
    await this.queueOfJob(jobId).add(
      batchJobName(batch.length),
      { batch },
      jobOptions(jobId, this.policy.attempts, this.policy.backoffMs, { keepCompleted: true }),
    );
  }

  /** The shard's queue that holds job `jobId` (an operation's own job is `jobIdOf(ref)`). */
  queueOfJob(jobId: string): Queue<JobData> {
    return this.queues[shardOf(jobId, this.queues.length)]!;
  }

  /** BullMQ's state of job `jobId`: 'unknown' when there is none. */
  async stateOfJob(jobId: string): Promise<string> {
    return this.queueOfJob(jobId).getJobState(jobId);
  }

  /** BullMQ's state of the operation's own job: 'unknown' when there is none. */
  async stateOfOwnJob(ref: OperationRef): Promise<string> {
    return this.stateOfJob(jobIdOf(ref));
  }

  /** Removes job `jobId`, so that its id can be added again; false when there was none, or a
   *  worker holds it (a held job is left alone). */
  async removeJob(jobId: string): Promise<boolean> {
    return (await this.queueOfJob(jobId).remove(jobId)) === 1;
  }

  /** Jobs per state, summed over the shards. */
  async counts<S extends JobType>(...states: S[]): Promise<Record<S, number>> {
    const perShard = await Promise.all(this.queues.map((queue) => queue.getJobCounts(...states)));
    const total = {} as Record<S, number>;
    for (const state of states) {
      total[state] = 0;
      for (const counts of perShard) total[state] += counts[state] ?? 0;
    }
    return total;
  }

  async close(): Promise<void> {
    await Promise.all(this.queues.map((queue) => queue.close()));
  }
}
