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
    await job.moveToFailed(new Error(reason), 'token', false);
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
    expect(await reconciler().sweep()).toMatchObject({ ran: true, checked: 0, enqueued: 0 });

    clock += 2000;
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 1 });
    expect(await queue.stateOfOwnJob(ref('orphan'))).toBe('waiting');
  });

  it('leaves operations whose job is waiting alone', async () => {
    await store.create(ref('queued'));
    await queue.enqueue(ref('queued'));
    clock += 2000;
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 0 });
  });

  it('leaves operations whose batch job still lives alone, and gives them their own job once it is gone', async () => {
    await store.createMany({ tenantId: 'tenant-a', connectionId: 'conn1' }, ['in-batch'], 'batch~b1');
    await queue.enqueueBatch('batch~b1', [ref('in-batch')]);
    clock += 2000;
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 0 });

    await queue.queueOfJob('batch~b1').remove('batch~b1');
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 1 });
    expect(await queue.stateOfOwnJob(ref('in-batch'))).toBe('waiting');
  });

  it('re-enqueues an operation whose job stalled too often, keeping its spent attempts', async () => {
    await store.create(ref('poison'));
    const rules = { leaseMs: 1, attempts: 2, exhausted: { errorCode: 'processingInterrupted', message: 'spent', details: [] } };
    // Two attempts claimed, and each holder died before reporting.
    for (const holder of ['h1', 'h2']) {
      expect(await store.claim(ref('poison'), '', [{ operationId: 'poison', holder }], rules)).toEqual([{ kind: 'claimed', attempt: Number(holder[1]), task: { kind: 'operation' } }]);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    // What BullMQ does when the job's worker died more often than maxStalledCount allows.
    await failJob('poison', 'job stalled more than allowable limit');
    clock += 2000;
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 1 });
    expect(await queue.stateOfOwnJob(ref('poison'))).toBe('waiting');
    // The new job's claim finds the attempts spent: the operation fails instead of looping.
    expect(await store.claim(ref('poison'), '', [{ operationId: 'poison', holder: 'h3' }], rules)).toEqual([{ kind: 'exhausted', attempts: 2 }]);
    expect(await store.get(ref('poison'))).toMatchObject({ status: 'failed', error: { errorCode: 'processingInterrupted' } });
  });

  it('re-enqueues an operation whose job failed without writing its status', async () => {
    await store.create(ref('lost-write'));
    await failJob('lost-write', 'Connection is closed.');
    clock += 2000;
    expect(await reconciler().sweep()).toMatchObject({ checked: 1, enqueued: 1 });
    expect(await queue.stateOfOwnJob(ref('lost-write'))).toBe('waiting');
  });

  it('runs one sweep at a time across processes, releasing the lock when it ends', async () => {
    const sweeper = () => new Reconciler({ store, queue, log: silentLog, intervalMs: 60_000, afterMs: 1000, now: () => clock });
    await store.create(ref('x'));
    clock += 2000;
    expect(await store.acquireReconcilerLock('another process', 60_000)).toBe(true);
    expect(await sweeper().sweep()).toMatchObject({ ran: false, enqueued: 0 });
    await store.releaseReconcilerLock('another process');
    expect(await sweeper().sweep()).toMatchObject({ ran: true, enqueued: 1 });
    expect(await sweeper().sweep()).toMatchObject({ ran: true, enqueued: 0 });
  });

  it('never overlaps two sweeps of 10,000 connections by two reconcilers sweeping as fast as they can', async () => {
    const tags = Array.from({ length: 10_000 }, (_, i) => `tenant-${i % 50}|conn${i}`);
    for (let i = 0; i < tags.length; i += 1000) {
      await redis.zadd(store.keys.connections(), ...tags.slice(i, i + 1000).flatMap((tag) => [clock, tag]));
    }
    for (let i = 0; i < 20; i++) await store.create({ tenantId: 'tenant-1', connectionId: `conn${i * 50 + 1}`, operationId: `orphan-${i}` });
    clock += 2000;
    const others = await Promise.all([0, 1].map(async () => {
      const client = createRedis({ url: testConfig().REDIS_URL, role: 'consumer' });
      await waitUntilReady(client);
      return client;
    }));
    const sweeps: { who: number; start: number; end: number; connections: number; enqueued: number }[] = [];
    /** Sweeps refused because the other reconciler held the lock: proof that they competed. */
    let refused = 0;
    // When each sweep read registry pages: only while it holds the lock. These spans must not
    // overlap (the call's own start and end also include waiting for and releasing the lock).
    const pageReads: { first: number; last: number }[] = [{ first: 0, last: 0 }, { first: 0, last: 0 }];
    try {
      const reconcilers = others.map((client, who) => {
        const own = new OperationStore(client, { prefix, retentionMs: 60_000, now: () => clock });
        const readPage = own.registryPage.bind(own);
        own.registryPage = async (...args) => {
          const span = pageReads[who]!;
          if (span.first === 0) span.first = performance.now();
          const page = await readPage(...args);
          span.last = performance.now();
          return page;
        };
        const ownQueue = new OperationQueue(client, prefix, { attempts: 2, backoffMs: 10 }, silentLog);
        return { reconciler: new Reconciler({ store: own, queue: ownQueue, log: silentLog, intervalMs: 1, afterMs: 1000, now: () => clock }), ownQueue };
      });
      const until = Date.now() + 4000;
      await Promise.all(reconcilers.map(async ({ reconciler }, who) => {
        while (Date.now() < until) {
          pageReads[who] = { first: 0, last: 0 };
          const result = await reconciler.sweep();
          const { first, last } = pageReads[who];
          if (result.ran) sweeps.push({ who, start: first, end: last, connections: result.connections, enqueued: result.enqueued });
          else {
            refused++;
            await new Promise((resolve) => setTimeout(resolve, 1));
          }
        }
      }));
      await Promise.all(reconcilers.map(({ ownQueue }) => ownQueue.close()));
    } finally {
      await Promise.all(others.map((client) => client.quit()));
    }
    const durations = sweeps.map((sweep) => sweep.end - sweep.start).sort((a, b) => a - b);
    console.log(`[reconciler] ${sweeps.length} sweeps of 10,000 connections in 4 s by 2 sweepers; ms per sweep: median ${durations[durations.length >> 1]!.toFixed(0)}, max ${durations.at(-1)!.toFixed(0)}`);
    // Which of the two wins the lock is up to the scheduler (one may win every time on a busy
    // machine); that they tried at the same time is what the overlap check needs.
    expect(refused).toBeGreaterThan(0);
    expect(sweeps.every((sweep) => sweep.connections >= 10_000)).toBe(true);
    expect(sweeps.reduce((sum, sweep) => sum + sweep.enqueued, 0)).toBe(20);
    const ordered = [...sweeps].sort((a, b) => a.start - b.start);
    for (let i = 1; i < ordered.length; i++) expect(ordered[i]!.start, 'a sweep started before the previous one ended').toBeGreaterThanOrEqual(ordered[i - 1]!.end);
  });

  it('keeps a connection that a create registers between the idle check and the removal', async () => {
    await store.create(ref('x'));
    await store.finish(ref('x'), 'completed');
    clock += 60_000 + 24 * 60 * 60 * 1000 + 1;
    // A create on another API process registers the connection (its first step) but has not
    // written its operation yet: nothing is inprogress, and the entry is fresh.
    const api = new OperationStore(redis, { prefix, retentionMs: 60_000, now: () => clock });
    await redis.zadd(store.keys.connections(), clock, 'tenant-a|conn1');
    expect(await store.forgetIdleConnection({ tenantId: 'tenant-a', connectionId: 'conn1' })).toBe(false);
    await api.create(ref('y'));
    expect(await store.connections()).toEqual([{ tenantId: 'tenant-a', connectionId: 'conn1' }]);
  });

  it('forgets a connection that has been idle past the retention', async () => {
    await store.create(ref('x'));
    await store.finish(ref('x'), 'completed');
    clock += 60_000 + 24 * 60 * 60 * 1000 + 1;
    await reconciler().sweep();
    expect(await store.connections()).toEqual([]);
  });
});
