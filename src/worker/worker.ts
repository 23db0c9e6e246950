import { WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import type { ErrorDetail, OperationRef, TerminalStatus } from '../shared/operation.js';
import {
  isBatch,
  queueName,
  type BatchJobData,
  type JobData,
  type OperationJobData,
  type OperationQueue,
} from '../shared/queue.js';
import type { RedisClient } from '../shared/redis.js';
import type { OperationStore } from '../shared/store.js';
import { exhaustedFailure, permanentFailureOf, type Processor } from './processor.js';
import { Semaphore } from './semaphore.js';

export interface WorkerDeps {
  /** A consumer connection (`maxRetriesPerRequest: null`); BullMQ duplicates it for blocking. */
  connection: RedisClient;
  store: OperationStore;
  /** Where an operation of a batch goes when its attempt must be retried. */
  queue: Pick<OperationQueue, 'enqueueRetry'>;
  processor: Processor;
  config: Pick<
    Config,
    | 'REDIS_PREFIX'
    | 'QUEUE_SHARDS'
    | 'OPERATION_ATTEMPTS'
    | 'WORKER_CONCURRENCY'
    | 'WORKER_LOCK_DURATION_MS'
    | 'WORKER_STALLED_INTERVAL_MS'
  >;
  log: Logger;
  metrics?: Metrics;
}

/** After aborting the processors at the shutdown deadline, how long to wait for them to return
 *  before giving up on them (their jobs then stall and run again elsewhere). */
const ABORT_GRACE_MS = 2000;
/** BullMQ job slots are WORKER_CONCURRENCY divided by this (see below). */
const JOB_SLOTS_DIVISOR = 5;

/** What one attempt decided. `interrupted`: this process's shutdown aborted the processor. */
type Outcome = { status: TerminalStatus; error?: ErrorDetail } | { retry: unknown } | { interrupted: unknown };

export interface OperationWorker {
  /** One BullMQ worker per queue shard. */
  workers: Worker<JobData>[];
  /** Stops taking jobs and waits for those in flight; after `timeoutMs` it aborts them (their
   *  jobs go back to the queue, attempts untouched, and run again elsewhere) and closes. */
  close(timeoutMs: number): Promise<void>;
}

/**
 * BullMQ workers that run the processor on each operation and record its terminal status.
 *
 * Jobs come in two kinds (shared/queue.ts): a batch (the operations the API created in one
 * tick) and a single operation (a retry, or a re-enqueue by the reconciler). Both run each
 * operation's attempt the same way; an operation of a batch that must retry continues as its own
 * job. Delivery is at-least-once (a crashed worker's job runs again), but the processor never
 * sees an operation that is already terminal, and the status changes once
 * (OperationStore.finish).
 */
export function createWorker({ connection, store, queue, processor, config, log, metrics }: WorkerDeps): OperationWorker {
  const shutdown = new AbortController();
  // Processor calls in flight in this process, whatever jobs they belong to: a batch must not
  // multiply WORKER_CONCURRENCY.
  const slots = new Semaphore(config.WORKER_CONCURRENCY);

  /** Runs one attempt of an operation that is inprogress. */
  async function attempt(ref: OperationRef, attemptNumber: number): Promise<Outcome | undefined> {
    const operation = await store.get(ref);
    // Already terminal (a duplicate delivery, or a re-enqueue that raced a finish) or expired.
    if (!operation || operation.status !== 'inprogress') return undefined;
    try {
      await slots.run(() =>
        processor({
          tenantId: ref.tenantId,
          connectionId: ref.connectionId,
          operation: { id: operation.id, status: operation.status, error: operation.error },
          attempt: attemptNumber,
          signal: shutdown.signal,
        }),
      );
      return { status: 'completed' };
    } catch (error) {
      // Aborted by this worker's own shutdown (SHUTDOWN_TIMEOUT_MS passed): the processor did not
      // fail, we stopped waiting for it. Treating this as a processing failure recorded the
      // operation `failed` ("processorUnreachable") when it was on its last attempt, and spent an
      // attempt otherwise (found by test/e2e.processes.test.ts). The job is requeued instead.
      if (shutdown.signal.aborted) return { interrupted: error };
      const permanent = permanentFailureOf(error);
      if (permanent) return { status: 'failed', error: permanent };
      if (attemptNumber >= config.OPERATION_ATTEMPTS) return { status: 'failed', error: exhaustedFailure(error, attemptNumber) };
      return { retry: error };
    }
  }

  /** Writes a terminal outcome. A Redis failure here throws, and BullMQ retries the job: the
   *  processor may then see the operation again, which at-least-once delivery allows. */
  async function record(ref: OperationRef, outcome: { status: TerminalStatus; error?: ErrorDetail }, fields: object) {
    const finished = await store.finish(ref, outcome.status, outcome.error);
    if (finished !== 'finished') {
      log.info({ ...fields, result: finished }, 'operation was already terminal; its status is unchanged');
      return;
    }
    metrics?.finished(outcome.status, outcome.error?.errorCode);
    log.info({ ...fields, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
  }

  async function runOperation(ref: OperationRef, attemptNumber: number) {
    const started = performance.now();
    const outcome = await attempt(ref, attemptNumber);
    const fields = { operationId: ref.operationId, connectionId: ref.connectionId, attempt: attemptNumber };
    const seconds = (performance.now() - started) / 1000;
    if (!outcome) {
      log.debug(fields, 'operation already terminal; skipped');
    } else if ('retry' in outcome) {
      metrics?.processingDuration.observe({ outcome: 'retry' }, seconds);
      log.info({ ...fields, durationMs: Math.round(seconds * 1000), status: 'retrying', err: outcome.retry }, 'operation attempt failed; will retry');
    } else if ('status' in outcome) {
      metrics?.processingDuration.observe({ outcome: outcome.status }, seconds);
      await record(ref, outcome, { ...fields, durationMs: Math.round(seconds * 1000) });
    } else {
      log.warn({ ...fields, err: outcome.interrupted }, 'operation interrupted by shutdown; its job returns to the queue');
    }
    return outcome;
  }

  /** Back to the front of the wait list without counting an attempt; the WaitingError tells
   *  BullMQ the job was moved, not failed. (The connection is still open: worker.close() waits
   *  for running jobs before it closes anything.) */
  async function requeue(job: Job<JobData>, token: string | undefined): Promise<never> {
    await job.moveToWait(token);
    throw new WaitingError();
  }

  async function handleOne(job: Job<OperationJobData>, token: string | undefined): Promise<void> {
    const outcome = await runOperation(job.data, (job.data.attemptsBefore ?? 0) + job.attemptsMade + 1);
    if (outcome && 'interrupted' in outcome) await requeue(job, token);
    if (outcome && 'retry' in outcome) throw outcome.retry; // BullMQ applies the backoff
  }

  async function handleBatch(job: Job<BatchJobData>, token: string | undefined): Promise<void> {
    const attemptNumber = job.attemptsMade + 1;
    const outcomes = await Promise.all(job.data.batch.map((ref) => runOperation(ref, attemptNumber)));
    const retries = job.data.batch.filter((_, i) => {
      const outcome = outcomes[i];
      return outcome !== undefined && 'retry' in outcome;
    });
    await Promise.all(retries.map((ref) => queue.enqueueRetry(ref, attemptNumber)));
    // Rerunning the batch skips the operations that finished.
    if (outcomes.some((outcome) => outcome !== undefined && 'interrupted' in outcome)) await requeue(job, token);
  }

  async function handle(job: Job<JobData>, token: string | undefined): Promise<void> {
    if (job.processedOn) metrics?.queueWait.observe(Math.max(0, job.processedOn - (job.timestamp + (job.delay ?? 0))) / 1000);
    const { data } = job;
    if (isBatch(data)) await handleBatch(job as Job<BatchJobData>, token);
    else await handleOne(job as Job<OperationJobData>, token);
  }

  // Every shard's queue gets its own BullMQ worker, and they share the process's job slots.
  // Jobs are mostly batches (up to 25 operations), so a process takes at most a fifth of
  // WORKER_CONCURRENCY jobs at a time: enough to keep WORKER_CONCURRENCY processor calls busy,
  // while a worker never hoards batches it cannot start that an idle worker could run.
  const shards = config.QUEUE_SHARDS;
  const jobSlots = Math.max(1, Math.ceil(config.WORKER_CONCURRENCY / JOB_SLOTS_DIVISOR / shards));
  const workers = Array.from({ length: shards }, (_, shard) => {
    const worker = new Worker<JobData>(queueName(shard, shards), handle, {
      connection,
      prefix: config.REDIS_PREFIX,
      concurrency: jobSlots,
      lockDuration: config.WORKER_LOCK_DURATION_MS,
      stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
      // A job whose worker died goes back to the queue twice; the third time BullMQ fails it
      // and the reconciler takes over (reconciler.ts).
      maxStalledCount: 2,
    });
    worker.on('error', (error) => log.warn({ err: error }, 'worker connection error'));
    return worker;
  });

  async function close(timeoutMs: number): Promise<void> {
    const closing = Promise.all(workers.map((worker) => worker.close()));
    if ((await within(closing, timeoutMs)) === 'timeout') {
      log.warn({ timeoutMs }, 'jobs still running at the shutdown deadline; aborting them');
      shutdown.abort();
      // BullMQ's close waits for running jobs even when forced; a processor that ignores the
      // abort signal is left behind after a grace period, and its job stalls and reruns elsewhere.
      if ((await within(closing, ABORT_GRACE_MS)) === 'timeout') {
        log.error({ graceMs: ABORT_GRACE_MS }, 'a processor ignored the abort signal; leaving its job to the stalled check');
      }
    }
  }
  return { workers, close };
}

/** Resolves with the promise's value, or 'timeout' after `ms`. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
