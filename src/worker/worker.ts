import { DelayedError, WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import type { ErrorDetail, OperationRef, TerminalStatus } from '../shared/operation.js';
import { isBatch, queueName, type BatchJobData, type JobData, type OperationJobData, type OperationQueue } from '../shared/queue.js';
import type { RedisClient } from '../shared/redis.js';
import type { OperationStore } from '../shared/store.js';
import { Attempts, type HeldAttempt } from './attempts.js';
import { exhaustedFailure, interruptedFailure, permanentFailureOf, type Processor } from './processor.js';
import { Semaphore } from './semaphore.js';

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
}

/** After aborting the processors at the shutdown deadline, how long to wait for them to return
 *  before giving up on them (their jobs then stall and run again elsewhere). */
const ABORT_GRACE_MS = 2000;
/** A job that finds another holder on an operation looks again this long after its lease ends. */
const LEASE_MARGIN_MS = 100;

/** What one attempt decided. `interrupted`: this process's shutdown aborted the processor. */
type Outcome = { status: TerminalStatus; error?: ErrorDetail } | { retry: unknown } | { interrupted: unknown };

/** How an operation left the job that ran it: finished with it (terminal, or carried on by
 *  another job), to run again in this same job (shutdown), or to look at again after `delayMs`
 *  (a retry's backoff, or another holder's lease). */
type Ended = 'done' | 'interrupted' | { againInMs: number };

export interface OperationWorker {
  /** One BullMQ worker per queue shard. */
  workers: Worker<JobData>[];
  /** Jobs this process holds now, over all shards. */
  jobsHeld(): number;
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
 * and what it decided is written the moment it ends, whatever its siblings still do. An operation
 * of a batch that must try again leaves the batch for its own job.
 *
 * Processor slots: WORKER_CONCURRENCY processor calls at once per process, whatever jobs they
 * belong to. Each shard's BullMQ worker holds up to WORKER_CONCURRENCY jobs, and every job it
 * holds has an operation in a slot or waiting for one, so a slot is never idle while a job
 * waits in the queue (taking fewer jobs would leave slots idle beside a slow operation; switching
 * BullMQ's concurrency at run time does not wake its fetch loop).
 */
export function createWorker({ connection, store, queue, processor, config, log, metrics: processMetrics }: WorkerDeps): OperationWorker {
  const metrics = processMetrics?.workerSeries();
  const slots = new Semaphore(config.WORKER_CONCURRENCY);
  const attempts = new Attempts(
    store,
    {
      leaseMs: config.WORKER_LOCK_DURATION_MS,
      attempts: config.OPERATION_ATTEMPTS,
      exhausted: interruptedFailure(config.OPERATION_ATTEMPTS),
    },
    log,
  );
  /** Set when close() begins: no new attempt starts, the job goes back to the queue. */
  let draining = false;
  /** Set at the shutdown deadline, when the attempts in flight are aborted. */
  let aborted = false;
  let jobsHeld = 0;

  /** Calls the processor once; never throws. */
  async function callProcessor(ref: OperationRef, held: HeldAttempt): Promise<Outcome> {
    try {
      await processor({
        tenantId: ref.tenantId,
        connectionId: ref.connectionId,
        operation: { id: ref.operationId, status: 'inprogress', error: null },
        attempt: held.attempt,
        // Read on demand: the attempt makes its AbortController only for a processor that asks.
        get signal() {
          return held.signal;
        },
      });
      return { status: 'completed' };
    } catch (error) {
      // Aborted by this worker's own shutdown (SHUTDOWN_TIMEOUT_MS passed): the processor did not
      // fail, we stopped waiting for it. So the attempt is given back, not counted as a failure
      // (which would spend an attempt, or fail the operation on its last one).
      if (aborted && held.signal.aborted) return { interrupted: error };
      const permanent = permanentFailureOf(error);
      if (permanent) return { status: 'failed', error: permanent };
      if (held.attempt >= config.OPERATION_ATTEMPTS) return { status: 'failed', error: exhaustedFailure(error, held.attempt) };
      return { retry: error };
    }
  }

  /**
   * One attempt of one operation, for job `jobId` ('' for the operation's own job): claimed in a
   * processor slot, then run, then its outcome written at once. A Redis failure throws, and
   * BullMQ retries the job; the claim keeps that from running an attempt twice at once.
   */
  async function runOperation(ref: OperationRef, jobId: string): Promise<Ended> {
    const { operationId, connectionId } = ref;
    const ran = await slots.run(async () => {
      // Once shutdown begins no attempt starts: the job goes back to the queue for another worker.
      if (draining) return undefined;
      const claim = await attempts.claim(ref, jobId);
      if (claim.kind !== 'claimed') return { claim };
      if (draining) {
        await attempts.record(ref, claim.holder, { status: 'interrupted' });
        return undefined;
      }
      const started = performance.now();
      const outcome = await callProcessor(ref, claim);
      return { claim, outcome, seconds: (performance.now() - started) / 1000 };
    });
    if (!ran) return 'interrupted';
    const { claim } = ran;
    if (claim.kind === 'busy') {
      log.info({ operationId, connectionId, leaseLeftMs: claim.leaseLeftMs }, 'another worker holds this operation; looking again when its lease ends');
      return { againInMs: claim.leaseLeftMs + LEASE_MARGIN_MS };
    }
    if (claim.kind === 'exhausted') {
      metrics?.finished('failed', 'processingInterrupted');
      log.warn({ operationId, connectionId, attempts: claim.attempts }, 'operation failed: its attempts are spent and the last one never reported');
      return 'done';
    }
    if (claim.kind !== 'claimed' || !ran.outcome) {
      log.debug({ operationId, connectionId, claim: claim.kind }, 'operation not run: terminal, missing, or carried by another job');
      return 'done';
    }

    const { outcome, seconds = 0 } = ran;
    const { attempt, holder } = claim;
    const durationMs = Math.round(seconds * 1000);
    if ('interrupted' in outcome) {
      await attempts.record(ref, holder, { status: 'interrupted' });
      log.warn({ operationId, connectionId, attempt, durationMs, err: outcome.interrupted }, 'operation interrupted by shutdown; its job returns to the queue');
      return 'interrupted';
    }
    if ('retry' in outcome) {
      const result = await attempts.record(ref, holder, { status: 'retry' });
      metrics?.processingDuration.observe({ outcome: 'retry' }, seconds);
      log.info({ operationId, connectionId, attempt, durationMs, status: 'retrying', err: outcome.retry, result }, 'operation attempt failed; will retry');
      return result === 'finished' ? { againInMs: queue.backoffAfter(attempt) } : 'done';
    }
    const result = await attempts.record(ref, holder, { status: outcome.status, error: outcome.error });
    if (result !== 'finished') {
      log.warn({ operationId, connectionId, attempt, durationMs, result }, 'outcome not recorded: the operation was already terminal, or its lease was taken over');
    } else {
      metrics?.processingDuration.observe({ outcome: outcome.status }, seconds);
      metrics?.finished(outcome.status, outcome.error?.errorCode);
      log.info({ operationId, connectionId, attempt, durationMs, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
    }
    return 'done';
  }

  /** Back to the front of the wait list without failing; the WaitingError tells BullMQ the job
   *  was moved. (The connection is still open: worker.close() waits for running jobs.) */
  async function requeue(job: Job<JobData>, token: string | undefined): Promise<never> {
    await job.moveToWait(token);
    throw new WaitingError();
  }

  async function runOwnJob(job: Job<OperationJobData>, token: string | undefined): Promise<void> {
    const ended = await runOperation(job.data, '');
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
        const ended = await runOperation(ref, batchJobId);
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
    });
    worker.on('error', (error) => log.warn({ err: error }, 'worker connection error'));
    return worker;
  });

  async function close(timeoutMs: number): Promise<void> {
    draining = true;
    const closing = Promise.all(workers.map((worker) => worker.close()));
    if ((await within(closing, timeoutMs)) === 'timeout') {
      log.warn({ timeoutMs }, 'jobs still running at the shutdown deadline; aborting them');
      aborted = true;
      attempts.abortAll(new Error('The worker is shutting down.'));
      // BullMQ's close waits for running jobs even when forced; a processor that ignores the
      // abort signal is left behind after a grace period, and its job stalls and reruns elsewhere.
      if ((await within(closing, ABORT_GRACE_MS)) === 'timeout') {
        log.error({ graceMs: ABORT_GRACE_MS }, 'a processor ignored the abort signal; leaving its job to the stalled check');
      }
    }
    attempts.stop();
  }
  return { workers, jobsHeld: () => jobsHeld, close };
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
