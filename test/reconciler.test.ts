import { Worker } from 'bullmq';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { jobIdOf, OperationQueue, QUEUE_NAME } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { Reconciler } from '../src/worker/reconciler.js';
import { deleteKeys, silentLog, testConfig } from './support/context.js';

let redis: RedisClient;
let store: OperationStore;
let queue: OperationQueue;
let prefix: string;
let clock: number;

const ref = (operationId: string) => ({ tenantId: 'tenant-a', connectionId: 'conn1', operationId });

beforeEach(async () => {
  const config = testConfig();
  prefix = config.REDIS_PREFIX;
  redis = createRedis({ url: config.REDIS_URL, role: 'consumer' });
  await waitUntilReady(redis);
  clock = Date.now();
  store = new OperationStore(redis, { prefix, retentionMs: 60_000, now: () => clock });
  queue = new OperationQueue(redis, prefix, { attempts: 2, backoffMs: 10 }, silentLog);
});
afterEach(async () => {
  await queue.close();
  await deleteKeys(redis, prefix);
  await redis.quit();
});

/** Takes the operation's job as a worker would, then fails it the way BullMQ does for `reason`
 *  (attempts 1, so BullMQ does not schedule a retry). */
async function failJob(operationId: string, reason: string) {
  const once = new OperationQueue(redis, prefix, { attempts: 1, backoffMs: 10 }, silentLog);
  await once.enqueue(ref(operationId));
  await once.close();
  const manual = new Worker(QUEUE_NAME, null, { connection: redis, prefix });
  try {
    const job = await manual.getNextJob('token');
    expect(job?.id).toBe(jobIdOf(ref(operationId)));
    await job!.moveToFailed(new Error(reason), 'token', false);
  } finally {
    await manual.close();
  }
}

function reconciler() {
  return new Reconciler({ store, queue, log: silentLog, intervalMs: 1, afterMs: 1000, now: () => clock });
}

describe('Reconciler.sweep', () => {
  it('enqueues an inprogress operation whose job never made it to the queue', async () => {
    await store.create(ref('orphan')); // the API died before queue.add
    expect(await reconciler().sweep()).toEqual({ checked: 0, enqueued: 0, failed: 0 });

    clock += 2000;
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 1, failed: 0 });
    expect(await queue.jobState(ref('orphan'))).toBe('waiting');
  });

  it('leaves operations whose job is waiting alone', async () => {
    await store.create(ref('queued'));
    await queue.enqueue(ref('queued'));
    clock += 2000;
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 0, failed: 0 });
  });

  it('leaves operations whose batch job still lives alone, and gives them their own job once it is gone', async () => {
    await store.createMany({ tenantId: 'tenant-a', connectionId: 'conn1' }, ['in-batch'], 'batch~b1');
    await queue.enqueueBatch('batch~b1', [ref('in-batch')]);
    clock += 2000;
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 0, failed: 0 });

    await queue.queueOfJob('batch~b1').remove('batch~b1');
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 1, failed: 0 });
    expect(await queue.jobState(ref('in-batch'))).toBe('waiting');
  });

  it('records a job that stalled too often as a failed operation', async () => {
    await store.create(ref('poison'));
    // What BullMQ does when the job's worker died more often than maxStalledCount allows.
    await failJob('poison', 'job stalled more than allowable limit');
    clock += 2000;
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 0, failed: 1 });
    expect(await store.get(ref('poison'))).toMatchObject({ status: 'failed', error: { errorCode: 'processingInterrupted' } });
  });

  it('re-enqueues an operation whose job failed without writing its status', async () => {
    await store.create(ref('lost-write'));
    await failJob('lost-write', 'Connection is closed.');
    clock += 2000;
    expect(await reconciler().sweep()).toEqual({ checked: 1, enqueued: 1, failed: 0 });
    expect(await queue.jobState(ref('lost-write'))).toBe('waiting');
  });

  it('runs one sweep at a time across processes', async () => {
    const slow = new Reconciler({ store, queue, log: silentLog, intervalMs: 60_000, afterMs: 1000, now: () => clock });
    await store.create(ref('x'));
    clock += 2000;
    expect((await slow.sweep()).enqueued).toBe(1);
    expect(await new Reconciler({ store, queue, log: silentLog, intervalMs: 60_000, afterMs: 1000, now: () => clock }).sweep()).toEqual({
      checked: 0,
      enqueued: 0,
      failed: 0,
    });
  });

  it('forgets a connection that has been idle past the retention', async () => {
    await store.create(ref('x'));
    await store.finish(ref('x'), 'completed');
    clock += 60_000 + 24 * 60 * 60 * 1000 + 1;
    await reconciler().sweep();
    expect(await store.connections()).toEqual([]);
  });
});
