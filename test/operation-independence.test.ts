import { UnrecoverableError } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Operation, OperationRef } from '../src/shared/operation.js';
import { jobIdOf, OperationQueue } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import type { Processor, ProcessorInput } from '../src/worker/processor.js';
import { Reconciler } from '../src/worker/reconciler.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { deleteKeys, silentLog, testConfig } from './support/context.js';
import { pollUntil as eventually } from './support/wait.js';

/**
 * Every operation stands on its own inside the batch job that carries it: its status is written
 * when its own attempt ends, its attempts are counted on the operation (whatever job carries
 * it), and the processor never runs two attempts of one operation at once.
 */

const connection = { tenantId: 'tenant-a', connectionId: 'conn1' };
const ref = (operationId: string): OperationRef => ({ ...connection, operationId });

let redis: RedisClient;
let store: OperationStore;
let queue: OperationQueue;
let config: ReturnType<typeof testConfig>;
const workers: OperationWorker[] = [];
const closers: (() => Promise<unknown>)[] = [];

beforeEach(async () => {
  config = testConfig({
    OPERATION_ATTEMPTS: '3',
    OPERATION_BACKOFF_MS: '10',
    WORKER_CONCURRENCY: '10',
    WORKER_LOCK_DURATION_MS: '1000',
    WORKER_STALLED_INTERVAL_MS: '300',
  });
  redis = createRedis({ url: config.REDIS_URL, role: 'consumer' });
  await waitUntilReady(redis);
  store = new OperationStore(redis, { prefix: config.REDIS_PREFIX, retentionMs: 60_000 });
  queue = new OperationQueue(redis, config.REDIS_PREFIX, { attempts: 3, backoffMs: 10 }, silentLog);
});
afterEach(async () => {
  await Promise.all(workers.splice(0).map((worker) => worker.close(500)));
  for (const close of closers.splice(0)) await close();
  await queue.close();
  await deleteKeys(redis, config.REDIS_PREFIX);
  await redis.quit();
});

/** A worker on its own Redis connection, as a separate worker process would have. */
async function startWorker(processor: Processor, deps: { queue?: Parameters<typeof createWorker>[0]['queue'] } = {}) {
  const connectionOfWorker = createRedis({ url: config.REDIS_URL, role: 'consumer' });
  await waitUntilReady(connectionOfWorker);
  const workerStore = new OperationStore(connectionOfWorker, { prefix: config.REDIS_PREFIX, retentionMs: 60_000 });
  const workerQueue = new OperationQueue(connectionOfWorker, config.REDIS_PREFIX, { attempts: 3, backoffMs: 10 }, silentLog);
  const worker = createWorker({
    connection: connectionOfWorker,
    store: workerStore,
    queue: deps.queue ?? workerQueue,
    processor,
    config,
    log: silentLog,
  });
  workers.push(worker);
  closers.push(async () => {
    await worker.close(500);
    await workerQueue.close();
    await connectionOfWorker.quit().catch(() => connectionOfWorker.disconnect());
  });
  return { worker, connection: connectionOfWorker };
}

/** Creates operations the way the API does: one script, one batch job carrying them all. */
async function submitBatch(ids: string[], batchJobId = `batch~${ids[0]}`) {
  await store.createMany(connection, ids, batchJobId);
  await queue.enqueueBatch(batchJobId, ids.map(ref));
}

async function statusOf(operationId: string): Promise<Operation['status'] | undefined> {
  return (await store.get(ref(operationId)))?.status;
}

/** Replaces the operation's own job unless it is running, as the reconciler did for a job that
 *  failed in BullMQ, and as an operator retrying it from the dashboard would. */
async function renewOwnJob(operationId: string) {
  const bull = queue.queueOfJob(jobIdOf(ref(operationId)));
  const state = await bull.getJobState(jobIdOf(ref(operationId)));
  if (state === 'active') return;
  if (state !== 'unknown') await bull.remove(jobIdOf(ref(operationId)));
  await queue.enqueue(ref(operationId));
}

/** A gate a test opens when it chooses; processors wait on it. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/** Records every processor call: how many of one operation run at once, and after what. */
function callLog() {
  const calls: { id: string; attempt: number }[] = [];
  const running = new Map<string, number>();
  let mostAtOnce = 0;
  return {
    calls,
    get mostAtOnce() {
      return mostAtOnce;
    },
    wrap(inner: (input: ProcessorInput) => Promise<void>): Processor {
      return async (input) => {
        const id = input.operation.id;
        calls.push({ id, attempt: input.attempt });
        const now = (running.get(id) ?? 0) + 1;
        running.set(id, now);
        mostAtOnce = Math.max(mostAtOnce, now);
        try {
          await inner(input);
        } finally {
          running.set(id, (running.get(id) ?? 1) - 1);
        }
      };
    },
    callsOf: (id: string) => calls.filter((call) => call.id === id),
  };
}

describe('an operation beside slow siblings in one batch job', () => {
  it('is recorded as soon as its own attempt ends, while the slow ones still run', async () => {
    const slow = gate();
    closers.push(async () => slow.open());
    const ids = Array.from({ length: 30 }, (_, i) => (i % 10 === 0 ? `slow-${i}` : `fast-${i}`));
    await startWorker(async ({ operation }) => {
      if (operation.id.startsWith('slow')) await slow.opened;
    });
    await submitBatch(ids);

    const fast = ids.filter((id) => id.startsWith('fast'));
    await eventually(async () => (await Promise.all(fast.map(statusOf))).every((status) => status === 'completed'), {
      timeoutMs: 5000,
      what: 'every fast operation completed while the slow ones run',
      context: async () => `statuses: ${(await Promise.all(ids.map(statusOf))).join(', ')}`,
    });
    expect(await Promise.all(ids.filter((id) => id.startsWith('slow')).map(statusOf))).toEqual(['inprogress', 'inprogress', 'inprogress']);

    slow.open();
    await eventually(async () => (await Promise.all(ids.map(statusOf))).every((status) => status === 'completed'), {
      timeoutMs: 5000,
      what: 'the slow operations completed once released',
    });
  });
});

describe('a module processor that throws UnrecoverableError', () => {
  it('fails the operation at once with its message, and the processor is never called again, with a fast reconciler', async () => {
    const log = callLog();
    await startWorker(log.wrap(async () => {
      throw new UnrecoverableError('the item can never be indexed');
    }));
    const reconciler = new Reconciler({ store, queue, log: silentLog, intervalMs: 100, afterMs: 1 });
    reconciler.start();
    closers.push(() => reconciler.stop());
    await submitBatch(['poison']);

    await eventually(async () => (await statusOf('poison')) === 'failed', { timeoutMs: 5000, what: 'poison to fail' });
    expect((await store.get(ref('poison')))?.error).toMatchObject({ message: 'the item can never be indexed' });
    // Several sweeps later, still one call.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(log.calls).toEqual([{ id: 'poison', attempt: 1 }]);
  });
});

describe('attempts counted on the operation', () => {
  it('never calls the processor more than OPERATION_ATTEMPTS times, whatever re-enqueues the operation', async () => {
    const log = callLog();
    await startWorker(log.wrap(async () => {
      throw new Error('endpoint down');
    }));
    // A reconciler that sweeps every 100 ms, and a test that keeps re-enqueueing the operation's
    // own job as an operator or a duplicate delivery might.
    const reconciler = new Reconciler({ store, queue, log: silentLog, intervalMs: 100, afterMs: 1 });
    reconciler.start();
    closers.push(() => reconciler.stop());
    await submitBatch(['down']);
    const nagging = setInterval(() => void renewOwnJob('down').catch(() => {}), 5);
    closers.push(async () => clearInterval(nagging));

    await eventually(async () => (await statusOf('down')) === 'failed', { timeoutMs: 5000, what: 'down to fail' });
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect(log.calls.map((call) => call.attempt)).toEqual([1, 2, 3]);
    expect((await store.get(ref('down')))?.error?.message).toBe('Processing failed after 3 attempts: endpoint down');
  });
});

describe('a batch whose retry cannot be enqueued for one operation', () => {
  it('never runs two attempts of one operation at once, nor an attempt of a terminal operation', async () => {
    const log = callLog();
    const ids = ['r-1', 'r-2', 'r-3', 'r-4', 'r-unlucky'];
    // Every first attempt fails transiently; the retries take a while, so copies would overlap.
    await startWorker(
      log.wrap(async ({ attempt }) => {
        if (attempt === 1) throw new Error('try again');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }),
      {
        queue: {
          async enqueue(retried, delayMs) {
            if (retried.operationId === 'r-unlucky') throw new Error('Redis went away for a moment');
            return queue.enqueue(retried, delayMs);
          },
          backoffAfter: (attempt) => queue.backoffAfter(attempt),
        },
      },
    );
    const reconciler = new Reconciler({ store, queue, log: silentLog, intervalMs: 100, afterMs: 1 });
    reconciler.start();
    closers.push(() => reconciler.stop());
    await submitBatch(ids);

    await eventually(async () => (await Promise.all(ids.map(statusOf))).every((status) => status === 'completed'), {
      timeoutMs: 8000,
      what: 'every operation completed',
      context: async () => `statuses: ${(await Promise.all(ids.map(statusOf))).join(', ')}; calls ${JSON.stringify(log.calls)}`,
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(log.mostAtOnce).toBe(1);
    for (const id of ids) expect(log.callsOf(id).map((call) => call.attempt), id).toEqual([1, 2]);
  });
});

describe('a batch job whose lock expires under a live worker', () => {
  it('never runs an operation twice at once: the job that takes it over leaves held attempts to their holder', async () => {
    const log = callLog();
    const release = gate();
    closers.push(async () => release.open());
    await startWorker(log.wrap(async ({ operation }) => {
      if (operation.id === 'held') await release.opened;
    }));
    await submitBatch(['held', 'quick']);
    await eventually(() => log.callsOf('held').length === 1, { timeoutMs: 5000, what: 'held to be called' });

    // The lock vanishes as if the worker had been frozen past it; the stalled check gives the job
    // to a worker again (here the same process, as a second worker would take it).
    const lockKey = `${config.REDIS_PREFIX}:{operations}:batch~held:lock`;
    expect(await redis.del(lockKey)).toBe(1);
    // Taken back, and run again: its operations then ran or were left to their holder, and the
    // batch completed.
    await eventually(async () => (await queue.stateOfJob('batch~held')) === 'completed' || log.callsOf('held').length > 1, { timeoutMs: 5000, what: 'the stalled check to take the job back, and the job to run again' });
    await new Promise((resolve) => setTimeout(resolve, 500)); // time for a second copy to start
    release.open();

    await eventually(async () => (await statusOf('held')) === 'completed', { timeoutMs: 5000, what: 'held to complete' });
    expect(log.mostAtOnce).toBe(1);
    expect(log.callsOf('held')).toEqual([{ id: 'held', attempt: 1 }]);
    expect(log.callsOf('quick')).toEqual([{ id: 'quick', attempt: 1 }]);
  });
});

describe('processor slots', () => {
  it('are never idle while a job waits: fast operations of waiting batches run beside slow ones', async () => {
    const slow = gate();
    closers.push(async () => slow.open());
    const log = callLog();
    await startWorker(log.wrap(async ({ operation }) => {
      if (operation.id.startsWith('slow')) await slow.opened;
      else await new Promise((resolve) => setTimeout(resolve, 100));
    }));
    // Three batches, each with one slow operation and nine fast ones, for ten processor slots.
    const batches = [0, 1, 2].map((b) => [`slow-${b}`, ...Array.from({ length: 9 }, (_, i) => `fast-${b}-${i}`)]);
    // The first fills every slot; the others arrive while it is held.
    await submitBatch(batches[0]!, 'batch~mixed-0');
    await eventually(() => log.calls.length === 10, { timeoutMs: 5000, what: 'the first batch to fill the slots' });
    await submitBatch(batches[1]!, 'batch~mixed-1');
    await submitBatch(batches[2]!, 'batch~mixed-2');

    const fast = batches.flat().filter((id) => id.startsWith('fast'));
    await eventually(() => fast.every((id) => log.callsOf(id).length > 0), {
      timeoutMs: 5000,
      what: 'every fast operation to be called while three slots hold slow ones',
      context: () => `called: ${log.calls.map((call) => call.id).join(', ')}`,
    });
    slow.open();
  });
});
