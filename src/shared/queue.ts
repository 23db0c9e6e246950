import { Queue, type JobType, type JobsOptions } from 'bullmq';
import type { Logger } from 'pino';
import type { OperationRef } from './operation.js';
import type { RedisClient } from './redis.js';

/**
 * The job catalog: the operation queue (optionally sharded), its job name, data and options.
 * API and workers both build their BullMQ objects from here.
 */

export const JOB_NAME = 'process-operation';

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

export type OperationJobData = OperationRef;

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

export function jobOptions({ attempts, backoffMs }: RetryPolicy, ref: OperationRef): JobsOptions {
  return {
    jobId: jobIdOf(ref),
    attempts,
    backoff: { type: 'exponential', delay: backoffMs },
    // The operation record is the durable result; a finished job is only bookkeeping.
    removeOnComplete: true,
    // Jobs fail in BullMQ only when the terminal status could not be written (the reconciler
    // re-enqueues those); keep the last ones for inspection.
    removeOnFail: { count: 1000 },
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
  readonly queues: Queue<OperationJobData>[];

  constructor(
    connection: RedisClient,
    prefix: string,
    private readonly policy: RetryPolicy,
    log: Logger,
    shards = 1,
  ) {
    this.queues = Array.from({ length: shards }, (_, shard) => {
      const queue = new Queue<OperationJobData>(queueName(shard, shards), { connection, prefix });
      queue.on('error', (error) => log.warn({ err: error }, 'queue connection error'));
      return queue;
    });
  }

  /** The queue that holds this operation's job. */
  queueFor(ref: OperationRef): Queue<OperationJobData> {
    return this.queues[shardOf(jobIdOf(ref), this.queues.length)]!;
  }

  /** Idempotent while the job exists: BullMQ ignores an add whose job id is taken. */
  async enqueue(ref: OperationRef): Promise<void> {
    await this.queueFor(ref).add(JOB_NAME, ref, jobOptions(this.policy, ref));
  }

  /** BullMQ's state of this operation's job ('unknown' when there is none). */
  async jobState(ref: OperationRef): Promise<string> {
    return this.queueFor(ref).getJobState(jobIdOf(ref));
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
