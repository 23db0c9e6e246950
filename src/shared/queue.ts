import { Queue, type JobsOptions } from 'bullmq';
import type { Logger } from 'pino';
import type { OperationRef } from './operation.js';
import type { RedisClient } from './redis.js';

/**
 * The job catalog: the one queue, its job name, data and options. API and workers both build
 * their BullMQ objects from here.
 */

/** The braces make the queue's keys one Redis Cluster hash slot, as BullMQ requires. */
export const QUEUE_NAME = '{operations}';
export const JOB_NAME = 'process-operation';

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

/** The producer side: what the API (and the reconciler) use to put operations on the queue. */
export class OperationQueue {
  readonly bull: Queue<OperationJobData>;

  constructor(
    connection: RedisClient,
    prefix: string,
    private readonly policy: RetryPolicy,
    log: Logger,
  ) {
    this.bull = new Queue<OperationJobData>(QUEUE_NAME, { connection, prefix });
    this.bull.on('error', (error) => log.warn({ err: error }, 'queue connection error'));
  }

  /** Idempotent while the job exists: BullMQ ignores an add whose job id is taken. */
  async enqueue(ref: OperationRef): Promise<void> {
    await this.bull.add(JOB_NAME, ref, jobOptions(this.policy, ref));
  }

  async close(): Promise<void> {
    await this.bull.close();
  }
}
