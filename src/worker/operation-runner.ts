import type { Config } from '../shared/config.js';
import type { ConnectionSchema } from '../shared/connection-schema.js';
import type { ConnectionStore } from '../shared/connection-store.js';
import type { Logger } from '../shared/logger.js';
import type { WorkerSeries } from '../shared/metrics.js';
import type { ErrorDetail, OperationRef, TerminalStatus } from '../shared/operation.js';
import type { OperationQueue } from '../shared/queue.js';
import type { OperationStore } from '../shared/store.js';
import { operationAttributes, startAttemptSpan, tracingOn } from '../shared/tracing.js';
import { Attempts, type Claim, type HeldAttempt } from './attempts.js';
import { OperationCanceled, exhaustedFailure, interruptedFailure, permanentFailureOf, type Processor, type ProcessorInput } from './processor.js';
import { Semaphore } from './semaphore.js';

export interface OperationRunnerDeps {
  store: OperationStore;
  queue: Pick<OperationQueue, 'backoffAfter'>;
  processor: Processor;
  config: Pick<Config, 'OPERATION_ATTEMPTS' | 'WORKER_CONCURRENCY' | 'WORKER_LOCK_DURATION_MS'>;
  log: Logger;
  metrics?: WorkerSeries;
  /** Takes a connection off its tenant's list once its delete operation completed. */
  connections?: Pick<ConnectionStore, 'unlist'>;
}

/** A job that finds another holder on an operation looks again this long after its lease ends. */
const LEASE_MARGIN_MS = 100;

/** What one attempt decided. `interrupted`: this process's shutdown aborted the processor;
 *  `canceled`: a client canceled the operation while the processor ran (it is failed already). */
type Outcome = { status: TerminalStatus; error?: ErrorDetail } | { retry: unknown } | { interrupted: unknown } | { canceled: true };

/** How an operation left the job that ran it: finished with it (terminal, or carried on by
 *  another job), to run again in this same job (shutdown), or to look at again after
 *  `againInMs` (a retry's backoff, or another holder's lease). */
export type Ended = 'done' | 'interrupted' | { againInMs: number };

export interface OperationRunner {
  /** One attempt of one operation, for job `jobId` ('' for the operation's own job). */
  run(ref: OperationRef, jobId: string): Promise<Ended>;
  /** Names this process in its holder tokens: cancels of its attempts come on its channel. */
  processId: string;
  /** A client canceled the operation whose attempt `holder` holds: its processor is aborted. */
  cancel(holder: string): void;
  /** No attempt starts from now on (shutdown began). */
  drain(): void;
  /** Aborts the attempts in flight (the shutdown deadline passed); they are given back. */
  abort(): void;
  stop(): void;
}

/**
 * One attempt of one operation, whatever job carries it: claimed in a processor slot (attempts
 * counted on the operation, one holder at a time), run, and its outcome written the moment it
 * ends. WORKER_CONCURRENCY processor calls at once per process, whatever jobs they belong to.
 * A Redis failure throws, and BullMQ retries the job; the claim keeps that from running an
 * attempt twice at once.
 */
export function createOperationRunner({ store, queue, processor, config, log, metrics, connections }: OperationRunnerDeps): OperationRunner {
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
  /** Set when shutdown begins: no new attempt starts, the job goes back to the queue. */
  let draining = false;
  /** Set at the shutdown deadline, when the attempts in flight are aborted. */
  let aborted = false;

  /** Calls the processor once; never throws. */
  async function callProcessor(ref: OperationRef, held: HeldAttempt): Promise<Outcome> {
    // Canceled between its claim and now: the processor is not called at all.
    if (isCanceled(held)) return CANCELED;
    try {
      await processor(processorInput(ref, held));
      return isCanceled(held) ? CANCELED : COMPLETED;
    } catch (error) {
      if (isCanceled(held)) return CANCELED;
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

  /** Claims and runs one attempt in a processor slot, which is free again before the outcome is
   *  written; undefined when shutdown began and the attempt did not start. */
  async function attemptInSlot(ref: OperationRef, jobId: string) {
    await slots.acquire();
    try {
      // Once shutdown begins no attempt starts: the job goes back to the queue for another worker.
      if (draining) return undefined;
      const claim = await attempts.claim(ref, jobId);
      if (claim.kind !== 'claimed') return { claim };
      if (draining) {
        await attempts.record(ref, claim.holder, { status: 'interrupted' });
        return undefined;
      }
      // With tracing on, the attempt is a span of its operation's own trace, whatever job
      // carries it; undefined (and free: not even its attributes are made) when off.
      const span = tracingOn()
        ? startAttemptSpan('process operation', claim.traceparent, {
            ...operationAttributes(ref),
            'graph.operation.kind': claim.task.kind,
            'graph.operation.attempt': claim.attempt,
          })
        : undefined;
      const started = performance.now();
      const outcome = span ? await span.within(() => callProcessor(ref, claim)) : await callProcessor(ref, claim);
      return { claim, outcome, span, seconds: (performance.now() - started) / 1000 };
    } finally {
      slots.release();
    }
  }

  async function runOperation(ref: OperationRef, jobId: string): Promise<Ended> {
    const { operationId, connectionId } = ref;
    const ran = await attemptInSlot(ref, jobId);
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

    const { outcome, span, seconds = 0 } = ran;
    if (!span) return settle(ref, claim, outcome, seconds);
    try {
      return await span.within(() => settle(ref, claim, outcome, seconds));
    } finally {
      span.end(outcomeAttributes(outcome), 'status' in outcome && outcome.status === 'failed');
    }
  }

  function logNotRecorded({ operationId, connectionId }: OperationRef, attempt: number, durationMs: number, result: string): void {
    log.warn({ operationId, connectionId, attempt, durationMs, result }, 'outcome not recorded: the operation was already terminal, or its lease was taken over');
  }

  /** Writes what the attempt decided (and logs it); how the operation leaves its job. */
  async function settle(ref: OperationRef, claim: Claim & { kind: 'claimed' }, outcome: Outcome, seconds: number): Promise<Ended> {
    const { operationId, connectionId } = ref;
    const { attempt, holder } = claim;
    const durationMs = Math.round(seconds * 1000);
    if ('canceled' in outcome) {
      attempts.release(holder);
      log.info({ operationId, connectionId, attempt, durationMs }, 'operation canceled by a client while its attempt ran; the processor was aborted');
      return 'done';
    }
    if ('interrupted' in outcome) {
      await attempts.record(ref, holder, { status: 'interrupted' });
      log.warn({ operationId, connectionId, attempt, durationMs, err: outcome.interrupted }, 'operation interrupted by shutdown; its job returns to the queue');
      return 'interrupted';
    }
    if ('retry' in outcome) {
      const result = await attempts.record(ref, holder, { status: 'retry' });
      if (result !== 'finished') {
        logNotRecorded(ref, attempt, durationMs, result);
        return 'done';
      }
      metrics?.processingDuration.observe({ outcome: 'retry' }, seconds);
      log.info({ operationId, connectionId, attempt, durationMs, status: 'retrying', err: outcome.retry }, 'operation attempt failed; will retry');
      return { againInMs: queue.backoffAfter(attempt) };
    }
    const result = await attempts.record(ref, holder, { status: outcome.status, error: outcome.error });
    if (result !== 'finished') {
      logNotRecorded(ref, attempt, durationMs, result);
    } else {
      metrics?.processingDuration.observe({ outcome: outcome.status }, seconds);
      metrics?.finished(outcome.status, outcome.error?.errorCode);
      log.info({ operationId, connectionId, attempt, durationMs, status: outcome.status, errorCode: outcome.error?.errorCode }, 'operation finished');
      // The finish removed the connection's record; its entry in the tenant's list is another
      // slot. Should this fail, the next listing of the tenant's connections removes it.
      if (claim.task.kind === 'deleteConnection' && outcome.status === 'completed') {
        await connections?.unlist(ref).catch((error: unknown) => log.warn({ err: error, connectionId }, 'could not take a deleted connection off its list'));
      }
    }
    return 'done';
  }

  return {
    run: runOperation,
    processId: attempts.processId,
    cancel: (holder) => attempts.abort(holder, new OperationCanceled()),
    drain: () => {
      draining = true;
    },
    abort: () => {
      aborted = true;
      attempts.abortAll(new Error('The worker is shutting down.'));
    },
    stop: () => attempts.stop(),
  };
}

// The outcomes every attempt without an error ends with, made once: the runner allocates as
// little per operation as it can (bench/README.md, "The worker's allocations").
const COMPLETED: Outcome = { status: 'completed' };
const CANCELED: Outcome = { canceled: true };

const isCanceled = (held: HeldAttempt) => held.abortReason instanceof OperationCanceled;

function processorInput(ref: OperationRef, held: HeldAttempt): ProcessorInput {
  const input: ProcessorInput = {
    kind: held.task.kind,
    tenantId: ref.tenantId,
    connectionId: ref.connectionId,
    operation: { id: ref.operationId, status: 'inprogress', error: null },
    attempt: held.attempt,
    // Read on demand: the attempt makes its AbortController only for a processor that asks.
    get signal() {
      return held.signal;
    },
  };
  if (held.task.kind === 'schema') input.schema = JSON.parse(held.task.schemaJson) as ConnectionSchema;
  return input;
}

/** An attempt's outcome as span attributes. */
function outcomeAttributes(outcome: Outcome): Record<string, string> {
  if ('status' in outcome) return { 'graph.operation.outcome': outcome.status, ...(outcome.error ? { 'graph.operation.error_code': outcome.error.errorCode } : {}) };
  if ('retry' in outcome) return { 'graph.operation.outcome': 'retry' };
  if ('interrupted' in outcome) return { 'graph.operation.outcome': 'interrupted' };
  return { 'graph.operation.outcome': 'canceled' };
}
