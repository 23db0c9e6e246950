import { WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { ErrorDetail, TerminalStatus } from '../shared/operation.js';
import type { Metrics } from '../shared/metrics.js';
import { queueName, type OperationJobData } from '../shared/queue.js';
import type { RedisClient } from '../shared/redis.js';
import type { OperationStore } from '../shared/store.js';
import { exhaustedFailure, permanentFailureOf, type Processor } from './processor.js';

export interface WorkerDeps {
  /** A consumer connection (`maxRetriesPerRequest: null`); BullMQ duplicates it for blocking. */
  connection: RedisClient;
  store: OperationStore;
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

/** What one job run decided. `interrupted`: this process's shutdown aborted the processor. */
type Outcome = { status: TerminalStatus; error?: ErrorDetail } | { retry: unknown } | { interrupted: unknown };

/**
 * A BullMQ worker that runs the processor on each operation and records its terminal status.
 * Delivery is at-least-once (a crashed worker's job runs again), but the processor never sees
 * an operation that is already terminal, and the status changes once (OperationStore.finish).
 */
export interface OperationWorker {
  /** One BullMQ worker per queue shard. */
  workers: Worker<OperationJobData>[];
  /** Stops taking jobs and waits for those in flight; after `timeoutMs` it aborts them (their
   *  jobs go back to the queue, attempts untouched, and run again elsewhere) and closes. */
  close(timeoutMs: number): Promise<void>;
}

export function createWorker({ connection, store, processor, config, log, metrics }: WorkerDeps): OperationWorker {
  const shutdown = new AbortController();

  async function runProcessor(job: Job<OperationJobData>, attempt: number): Promise<Outcome | undefined> {
    const operation = await store.get(job.data);
    // Already terminal (a duplicate delivery, or a re-enqueue that raced a finish) or expired.
    if (!operation || operation.status !== 'inprogress') return undefined;
    try {
      await processor({
        tenantId: job.data.tenantId,
        connectionId: job.data.connectionId,
        operation: { id: operation.id, status: operation.status, error: operation.error },
        attempt,
        signal: shutdown.signal,
      });
      return { status: 'completed' };
    } catch (error) {
      // Aborted by this worker's own shutdown (SHUTDOWN_TIMEOUT_MS passed): the processor did not
      // fail, we stopped waiting for it. Treating this as a processing failure recorded the
      // operation `failed` ("processorUnreachable") when it was on its last attempt, and spent an
      // attempt otherwise (found by test/e2e.processes.test.ts). The job is requeued instead.
      if (shutdown.signal.aborted) return { interrupted: error };
      const permanent = permanentFailureOf(error);
      if (permanent) return { status: 'failed', error: permanent };
      if (attempt >= config.OPERATION_ATTEMPTS) return { status: 'failed', error: exhaustedFailure(error, attempt) };
      return { retry: error };
    }
  }

  async function handle(job: Job<OperationJobData>, token: string | undefined): Promise<void> {
    const started = performance.now();
    if (job.processedOn) metrics?.queueWait.observe(Math.max(0, job.processedOn - (job.timestamp + (job.delay ?? 0))) / 1000);
    const attempt = job.attemptsMade + 1;
    const outcome = await runProcessor(job, attempt);
    const fields = {
      operationId: job.data.operationId,
      connectionId: job.data.connectionId,
      attempt,
      durationMs: Math.round(performance.now() - started),
    };
    if (!outcome) {
      log.debug(fields, 'operation already terminal; skipped');
      return;
    }
    if ('interrupted' in outcome) {
      // Back to the front of the wait list without counting an attempt; the WaitingError tells
      // BullMQ the job was moved, not failed. (The connection is still open: worker.close()
      // waits for running jobs before it closes anything.)
      log.warn({ ...fields, err: outcome.interrupted }, 'operation interrupted by shutdown; returned to the queue');
      await job.moveToWait(token);
      throw new WaitingError();
    }
    if ('retry' in outcome) {
      metrics?.processingDuration.observe({ outcome: 'retry' }, (performance.now() - started) / 1000);
      log.info({ ...fields, status: 'retrying', err: outcome.retry }, 'operation attempt failed; will retry');
      throw outcome.retry;
    }
    // A Redis failure here throws, and BullMQ retries the job: the processor may then see the
    // operation again, which at-least-once delivery allows.
    const finished = await store.finish(job.data, outcome.status, outcome.error);
    metrics?.processingDuration.observe({ outcome: outcome.status }, (performance.now() - started) / 1000);
    if (finished !== 'finished') {
      log.info({ ...fields, result: finished }, 'operation was already terminal; its status is unchanged');
      return;
    }
    metrics?.finished(outcome.status, outcome.error?.errorCode);
    log.info({ ...fields, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
  }

  // Every shard's queue gets its own BullMQ worker; the process's concurrency is split among them.
  const shards = config.QUEUE_SHARDS;
  const workers = Array.from({ length: shards }, (_, shard) => {
    const worker = new Worker<OperationJobData>(queueName(shard, shards), handle, {
      connection,
      prefix: config.REDIS_PREFIX,
      concurrency: Math.max(1, Math.ceil(config.WORKER_CONCURRENCY / shards)),
      lockDuration: config.WORKER_LOCK_DURATION_MS,
      stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
      // A job whose worker died goes back to the queue twice; the third time BullMQ fails it
      // and the reconciler records the operation as failed (a job that kills its worker).
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
