import { WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { ErrorDetail, TerminalStatus } from '../shared/operation.js';
import { QUEUE_NAME, type OperationJobData } from '../shared/queue.js';
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
    'REDIS_PREFIX' | 'OPERATION_ATTEMPTS' | 'WORKER_CONCURRENCY' | 'WORKER_LOCK_DURATION_MS' | 'WORKER_STALLED_INTERVAL_MS'
  >;
  log: Logger;
}

/** What one job run decided. `interrupted`: this process's shutdown aborted the processor. */
type Outcome = { status: TerminalStatus; error?: ErrorDetail } | { retry: unknown } | { interrupted: unknown };

/**
 * A BullMQ worker that runs the processor on each operation and records its terminal status.
 * Delivery is at-least-once (a crashed worker's job runs again), but the processor never sees
 * an operation that is already terminal, and the status changes once (OperationStore.finish).
 */
export interface OperationWorker {
  bull: Worker<OperationJobData>;
  /** Stops taking jobs and waits for those in flight; after `timeoutMs` it aborts them (their
   *  jobs go back to the queue, attempts untouched, and run again elsewhere) and closes. */
  close(timeoutMs: number): Promise<void>;
}

export function createWorker({ connection, store, processor, config, log }: WorkerDeps): OperationWorker {
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

  const worker = new Worker<OperationJobData>(
    QUEUE_NAME,
    async (job, token) => {
      const started = performance.now();
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
        log.info({ ...fields, status: 'retrying', err: outcome.retry }, 'operation attempt failed; will retry');
        throw outcome.retry;
      }
      // A Redis failure here throws, and BullMQ retries the job: the processor may then see the
      // operation again, which at-least-once delivery allows.
      await store.finish(job.data, outcome.status, outcome.error);
      log.info({ ...fields, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
    },
    {
      connection,
      prefix: config.REDIS_PREFIX,
      concurrency: config.WORKER_CONCURRENCY,
      lockDuration: config.WORKER_LOCK_DURATION_MS,
      stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
      // A job whose worker died goes back to the queue twice; the third time BullMQ fails it
      // and the reconciler records the operation as failed (a job that kills its worker).
      maxStalledCount: 2,
    },
  );
  worker.on('error', (error) => log.warn({ err: error }, 'worker connection error'));

  async function close(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const result = await Promise.race([worker.close(), timedOut]);
    clearTimeout(timer);
    if (result === 'timeout') {
      log.warn({ timeoutMs }, 'jobs still running at the shutdown deadline; aborting them');
      shutdown.abort();
      await worker.close(true);
    }
  }
  return { bull: worker, close };
}
