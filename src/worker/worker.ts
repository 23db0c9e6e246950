import { setMaxListeners } from 'node:events';
import { WaitingError, Worker, type Job } from 'bullmq';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { groupByConnection } from '../shared/keys.js';
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

/** What one attempt decided. `interrupted`: this process's shutdown aborted the processor. */
type TerminalOutcome = { status: TerminalStatus; error?: ErrorDetail };
type Outcome = TerminalOutcome | { retry: unknown } | { interrupted: unknown };

/** One operation of a job: its attempt number, what the attempt decided (nothing when it was
 *  already terminal) and how long the attempt took. */
interface Run {
  ref: OperationRef;
  attempt: number;
  outcome?: Outcome;
  seconds: number;
}

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
  // Every processor call in flight may listen to it (a module processor passing it on to its own
  // requests): up to WORKER_CONCURRENCY listeners is the design, not a leak for Node to warn about.
  setMaxListeners(config.WORKER_CONCURRENCY + 10, shutdown.signal);
  // Processor calls in flight in this process, whatever jobs they belong to: a batch must not
  // multiply WORKER_CONCURRENCY. While every slot is taken, the BullMQ workers take no new job
  // (their concurrency drops to the jobs they hold), so a busy worker does not hoard batches
  // that an idle worker could run; once a slot frees, they take jobs again.
  const shards = config.QUEUE_SHARDS;
  const jobSlots = Math.max(1, Math.ceil(config.WORKER_CONCURRENCY / shards));
  const jobsHeld = Array.from({ length: shards }, () => 0);
  const workers: Worker<JobData>[] = [];
  const throttle = () => {
    workers.forEach((worker, shard) => {
      worker.concurrency = slots.full ? Math.max(1, jobsHeld[shard]!) : jobSlots;
    });
  };
  const slots = new Semaphore(config.WORKER_CONCURRENCY, throttle);

  /** Runs one attempt of an operation that is inprogress. */
  async function attempt(ref: OperationRef, attemptNumber: number): Promise<Outcome> {
    try {
      await slots.run(() =>
        processor({
          tenantId: ref.tenantId,
          connectionId: ref.connectionId,
          operation: { id: ref.operationId, status: 'inprogress', error: null },
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

  /**
   * Runs a job's operations: per connection, one read of their statuses, the attempts of those
   * still inprogress (already terminal: a duplicate delivery, or a re-enqueue that raced a
   * finish, and the processor never sees them), then one write of the terminal outcomes.
   * A Redis failure throws, and BullMQ retries the job: the processor may then see an operation
   * again, which at-least-once delivery allows.
   */
  async function runOperations(refs: OperationRef[], attemptNumber: (ref: OperationRef) => number): Promise<Run[]> {
    const groups = await Promise.all(
      groupByConnection(refs).map(async (group) => {
        const statuses = await store.statuses(group[0]!, group.map((ref) => ref.operationId));
        const runs = await Promise.all(
          group.map(async (ref, i): Promise<Run> => {
            const run: Run = { ref, attempt: attemptNumber(ref), seconds: 0 };
            if (statuses[i] !== 'inprogress') return run;
            const started = performance.now();
            run.outcome = await attempt(ref, run.attempt);
            run.seconds = (performance.now() - started) / 1000;
            return run;
          }),
        );
        await record(group[0]!, runs);
        return runs;
      }),
    );
    return groups.flat();
  }

  /** Writes the terminal outcomes of one connection's runs together, then logs every run. */
  async function record(connection: OperationRef, runs: Run[]): Promise<void> {
    const terminal = runs.filter((run): run is Run & { outcome: TerminalOutcome } => run.outcome !== undefined && 'status' in run.outcome);
    const results =
      terminal.length > 0
        ? await store.finishMany(
            connection,
            terminal.map(({ ref, outcome }) => ({ operationId: ref.operationId, status: outcome.status, error: outcome.error })),
          )
        : [];
    let nextResult = 0; // results[] follows the order of the terminal runs
    for (const { ref, outcome, attempt, seconds } of runs) {
      const { operationId, connectionId } = ref;
      const durationMs = Math.round(seconds * 1000);
      if (!outcome) {
        log.debug({ operationId, connectionId, attempt }, 'operation already terminal; skipped');
      } else if ('retry' in outcome) {
        metrics?.processingDuration.observe({ outcome: 'retry' }, seconds);
        log.info({ operationId, connectionId, attempt, durationMs, status: 'retrying', err: outcome.retry }, 'operation attempt failed; will retry');
      } else if ('interrupted' in outcome) {
        log.warn({ operationId, connectionId, attempt, durationMs, err: outcome.interrupted }, 'operation interrupted by shutdown; its job returns to the queue');
      } else {
        const result = results[nextResult++];
        if (result !== 'finished') {
          log.info({ operationId, connectionId, attempt, durationMs, result }, 'operation was already terminal; its status is unchanged');
        } else {
          metrics?.processingDuration.observe({ outcome: outcome.status }, seconds);
          metrics?.finished(outcome.status, outcome.error?.errorCode);
          log.info({ operationId, connectionId, attempt, durationMs, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
        }
      }
    }
  }

  /** Back to the front of the wait list without counting an attempt; the WaitingError tells
   *  BullMQ the job was moved, not failed. (The connection is still open: worker.close() waits
   *  for running jobs before it closes anything.) */
  async function requeue(job: Job<JobData>, token: string | undefined): Promise<never> {
    await job.moveToWait(token);
    throw new WaitingError();
  }

  async function handleOne(job: Job<OperationJobData>, token: string | undefined): Promise<void> {
    const [run] = await runOperations([job.data], () => (job.data.attemptsBefore ?? 0) + job.attemptsMade + 1);
    if (run?.outcome && 'interrupted' in run.outcome) await requeue(job, token);
    if (run?.outcome && 'retry' in run.outcome) throw run.outcome.retry; // BullMQ applies the backoff
  }

  async function handleBatch(job: Job<BatchJobData>, token: string | undefined): Promise<void> {
    const attemptNumber = job.attemptsMade + 1;
    const runs = await runOperations(job.data.batch, () => attemptNumber);
    const retries = runs.filter((run) => run.outcome !== undefined && 'retry' in run.outcome);
    await Promise.all(retries.map((run) => queue.enqueueRetry(run.ref, attemptNumber)));
    // Rerunning the batch skips the operations that finished.
    if (runs.some((run) => run.outcome !== undefined && 'interrupted' in run.outcome)) await requeue(job, token);
  }

  async function handle(job: Job<JobData>, token: string | undefined): Promise<void> {
    if (job.processedOn) metrics?.queueWait.observe(Math.max(0, job.processedOn - (job.timestamp + (job.delay ?? 0))) / 1000);
    const { data } = job;
    if (isBatch(data)) await handleBatch(job as Job<BatchJobData>, token);
    else await handleOne(job as Job<OperationJobData>, token);
  }

  // Every shard's queue gets its own BullMQ worker; the process's job slots are split among them.
  for (let shard = 0; shard < shards; shard++) {
    const worker = new Worker<JobData>(
      queueName(shard, shards),
      async (job, token) => {
        jobsHeld[shard]!++;
        try {
          await handle(job, token);
        } finally {
          jobsHeld[shard]!--;
          throttle();
        }
      },
      {
        connection,
        prefix: config.REDIS_PREFIX,
        concurrency: jobSlots,
        lockDuration: config.WORKER_LOCK_DURATION_MS,
        stalledInterval: config.WORKER_STALLED_INTERVAL_MS,
        // A job whose worker died goes back to the queue twice; the third time BullMQ fails it
        // and the reconciler takes over (reconciler.ts).
        maxStalledCount: 2,
      },
    );
    worker.on('error', (error) => log.warn({ err: error }, 'worker connection error'));
    workers.push(worker);
  }

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
