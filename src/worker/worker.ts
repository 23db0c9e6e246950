import { DelayedError, WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { ConnectionStore } from '../shared/connection-store.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import type { OperationRef } from '../shared/operation.js';
import { isBatch, queueName, type BatchJobData, type JobData, type OperationJobData, type OperationQueue } from '../shared/queue.js';
import type { RedisClient } from '../shared/redis.js';
import type { OperationStore } from '../shared/store.js';
import type { Subscriber } from '../shared/subscriber.js';
import { bullmqTelemetry } from '../shared/tracing.js';
import { createOperationRunner } from './operation-runner.js';
import type { Processor } from './processor.js';

export interface WorkerDeps {
  /** A consumer connection (`maxRetriesPerRequest: null`); BullMQ duplicates it for blocking. */
  connection: RedisClient;
  store: OperationStore;
  /** Where an operation goes when it leaves its batch job: its own job, after a delay. */
  queue: Pick<OperationQueue, 'enqueue' | 'backoffAfter'>;
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
  /** The process's pub/sub connection: cancels of this worker's attempts come through it. */
  subscriber?: Subscriber;
  /** Tidies a tenant's connection list after a connection's delete operation completes. */
  connections?: Pick<ConnectionStore, 'unlist'>;
}

/** After aborting the processors at the shutdown deadline, how long to wait for them to return
 *  before giving up on them (their jobs then stall and run again elsewhere). */
const ABORT_GRACE_MS = 2000;

export interface OperationWorker {
  /** One BullMQ worker per queue shard. */
  workers: Worker<JobData>[];
  /** Jobs this process holds now, over all shards. */
  jobsHeld(): number;
  /** Settles once this worker hears cancels (rejects when subscribing failed: a canceled
   *  attempt is then aborted at the next lease renewal instead, which finds it lost). */
  hearingCancels: Promise<void>;
  /** Stops taking jobs and starting attempts, and waits for the attempts in flight; the rest of
   *  the jobs it holds go back to the queue. After `timeoutMs` it aborts the attempts in flight
   *  (given back: their jobs run them again elsewhere) and closes. */
  close(timeoutMs: number): Promise<void>;
}

/**
 * BullMQ workers that run the processor on each operation and record its terminal status.
 *
 * Jobs come in two kinds (shared/queue.ts): a batch (the operations the API created in one
 * tick) and an operation's own job (a retry, or a re-enqueue by the reconciler). Inside either,
 * every operation stands on its own: its attempt is claimed on the operation record before the
 * processor is called (attempts counted there, whatever job carries it; one holder at a time),
 * and what it decided is written the moment it ends, whatever its siblings still do
 * (operation-runner.ts). An operation of a batch that must try again leaves the batch for its
 * own job.
 *
 * Processor slots: WORKER_CONCURRENCY processor calls at once per process, whatever jobs they
 * belong to. Each shard's BullMQ worker holds up to WORKER_CONCURRENCY jobs, and every job it
 * holds has an operation in a slot or waiting for one, so a slot is never idle while a job
 * waits in the queue (taking fewer jobs would leave slots idle beside a slow operation; switching
 * BullMQ's concurrency at run time does not wake its fetch loop).
 */
export function createWorker(deps: WorkerDeps): OperationWorker {
  const { connection, store, queue, processor, config, log, metrics: processMetrics, subscriber, connections } = deps;
  const metrics = processMetrics?.workerSeries();
  const operations = createOperationRunner({ store, queue, processor, config, log, ...(metrics ? { metrics } : {}), ...(connections ? { connections } : {}) });
  let jobsHeld = 0;
  // A cancel names the attempt's holder token; the message is the token (shared/scripts.ts, CANCEL).
  const cancels = subscriber?.listen(`${store.keys.cancelsPrefix()}${operations.processId}`, 'classic', (holder) => operations.cancel(holder));
  const hearingCancels = cancels ? cancels.then(() => undefined) : Promise.resolve();

  /** Back to the front of the wait list without failing; the WaitingError tells BullMQ the job
   *  was moved. (The connection is still open: worker.close() waits for running jobs.) */
  async function requeue(job: Job<JobData>, token: string | undefined): Promise<never> {
    await job.moveToWait(token);
    throw new WaitingError();
  }

  async function runOwnJob(job: Job<OperationJobData>, token: string | undefined): Promise<void> {
    const ended = await operations.run(job.data, '');
    if (ended === 'interrupted') await requeue(job, token);
    if (typeof ended === 'object') {
      await job.moveToDelayed(Date.now() + ended.againInMs, token);
      throw new DelayedError();
    }
  }

  /** Runs a batch's operations side by side; one that must look again later leaves the batch for
   *  its own job. The batch ends when each of its operations has ended here or left it. */
  async function runBatch(job: Job<BatchJobData>, token: string | undefined): Promise<void> {
    const batchJobId = job.id!;
    const settled = await Promise.allSettled(
      job.data.batch.map(async (ref) => {
        const ended = await operations.run(ref, batchJobId);
        if (typeof ended === 'object') await continueOnOwnJob(ref, batchJobId, ended.againInMs);
        return ended;
      }),
    );
    const failure = settled.find((result) => result.status === 'rejected');
    if (failure) throw failure.reason; // BullMQ retries the batch; finished operations are skipped
    if (settled.some((result) => result.status === 'fulfilled' && result.value === 'interrupted')) await requeue(job, token);
  }

  /** A retry's record already handed the operation over; a busy one is handed over here (if the
   *  batch still carries it). If the own job cannot be added, the operation stays inprogress with
   *  no job carrying it, and the reconciler enqueues it: the batch does not run again for it. */
  async function continueOnOwnJob(ref: OperationRef, batchJobId: string, delayMs: number): Promise<void> {
    try {
      await store.handToOwnJob(ref, batchJobId);
      await queue.enqueue(ref, delayMs);
    } catch (error) {
      log.warn({ err: error, operationId: ref.operationId, connectionId: ref.connectionId }, 'could not give the operation its own job; the reconciler will');
    }
  }

  async function handle(job: Job<JobData>, token: string | undefined): Promise<void> {
    if (job.processedOn) metrics?.queueWait.observe(Math.max(0, job.processedOn - (job.timestamp + (job.delay ?? 0))) / 1000);
    jobsHeld++;
    try {
      if (isBatch(job.data)) await runBatch(job as Job<BatchJobData>, token);
      else await runOwnJob(job as Job<OperationJobData>, token);
    } finally {
      jobsHeld--;
    }
  }

  const workers = Array.from({ length: config.QUEUE_SHARDS }, (_, shard) => {
    const worker = new Worker<JobData>(queueName(shard, config.QUEUE_SHARDS), handle, {
      connection,
      prefix: config.REDIS_PREFIX,
      concurrency: config.WORKER_CONCURRENCY,
      lockDuration: config.WORKER_LOCK_DURATION_MS,
      stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
      // A job whose worker died goes back to the queue twice; the third time BullMQ fails it and
      // the reconciler gives its operations their own jobs. Each redelivery claims attempts
      // again, so an operation that kills its worker ends failed when its attempts are spent.
      maxStalledCount: 2,
      ...bullmqTelemetry(),
    });
    worker.on('error', (error) => log.warn({ err: error }, 'worker connection error'));
    return worker;
  });

  async function close(timeoutMs: number): Promise<void> {
    operations.drain();
    const closing = Promise.all(workers.map((worker) => worker.close()));
    if ((await within(closing, timeoutMs)) === 'timeout') {
      log.warn({ timeoutMs }, 'jobs still running at the shutdown deadline; aborting them');
      operations.abort();
      // BullMQ's close waits for running jobs even when forced; a processor that ignores the
      // abort signal is left behind after a grace period, and its job stalls and reruns elsewhere.
      if ((await within(closing, ABORT_GRACE_MS)) === 'timeout') {
        log.error({ graceMs: ABORT_GRACE_MS }, 'a processor ignored the abort signal; leaving its job to the stalled check');
      }
    }
    operations.stop();
  }
  return { workers, jobsHeld: () => jobsHeld, hearingCancels, close };
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
