import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectionRef } from '../src/shared/keys.js';
import { OperationQueue } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { signToken, silentLog, TENANT, uniquePrefix } from './support/context.js';
import { callsPerWorker, createBodies, createOperation, finishLogCounts, seenMoreThanOnce } from './support/load.js';
import { mapWithConcurrency, ProcessGroup, SERVICE_RETENTION_MS, testServiceEnv } from './support/processes.js';
import { pollUntil } from './support/wait.js';
import { startProcessorServer, type ProcessorServer } from './support/processor-server.js';
import { freePort } from '../scripts/lib/free-port.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';

/**
 * Many worker processes on one Redis: a load of creates through a real API is shared among the
 * workers (the processor server records which worker served each call), every operation is
 * completed, and none is processed to completion twice, whether the workers compete for one
 * queue or consume several queue shards.
 */

const OPERATIONS = 600;
const CONNECTIONS = ['scaleone', 'scaletwo'];
const CREATE_CONCURRENCY = 16;
/** Each call takes this long, so a worker's slots fill up and the others must take their part. */
const PROCESSOR_DELAY_MS = 30;
const WORKER_CONCURRENCY = 10;
/** Deadlines for a busy two-core machine; a passing run is far quicker. */
const START_TIMEOUT_MS = 30_000;
const DRAIN_DEADLINE_MS = 20_000;
/** The least part of an even share each worker must have served: well below even, so
 *  scheduling noise never fails the test, well above nothing, so an idle worker does. */
const MIN_SHARE_OF_EVEN = 0.4;

let redisServer: RedisServer;
let redis: RedisClient;
let processor: ProcessorServer;
let token: string;
let group: ProcessGroup | undefined;

beforeAll(async () => {
  redisServer = await startRedisServer();
  redis = createRedis({ url: redisServer.url, role: 'consumer', connectionName: 'scale-test' });
  await waitUntilReady(redis);
  processor = await startProcessorServer();
  token = await signToken();
});

afterEach(async () => {
  await group?.killAll();
  group = undefined;
});

afterAll(async () => {
  await redis?.quit().catch(() => redis.disconnect());
  await processor?.close();
  await redisServer?.destroy();
});

interface ScaleResult {
  shares: Map<string, number>;
  createMs: number;
  drainMs: number;
}

/** Starts an API and `workerCount` workers on `shards` queue shards, creates OPERATIONS
 *  operations over two connections, and checks that every one completed exactly once. */
async function runLoad(workerCount: number, shards: number, onTestFailed: (fn: () => void) => void): Promise<ScaleResult> {
  const prefix = uniquePrefix();
  processor.reset();
  const processes = new ProcessGroup(
    testServiceEnv(prefix, {
      REDIS_URL: redisServer.url,
      QUEUE_SHARDS: String(shards),
      WORKER_CONCURRENCY: String(WORKER_CONCURRENCY),
      OPERATION_BACKOFF_MS: '50',
    }),
  );
  group = processes;
  onTestFailed(() => console.log(`[scale] output of the processes:\n${processes.describe()}`));
  const store = new OperationStore(redis, { prefix, retentionMs: SERVICE_RETENTION_MS });
  const queue = new OperationQueue(redis, prefix, { attempts: 5, backoffMs: 50 }, silentLog, shards);
  try {
    const apiPort = await freePort();
    const baseUrl = `http://127.0.0.1:${apiPort}`;
    const names = Array.from({ length: workerCount }, (_, i) => `worker-${i + 1}`);
    const [, ...workers] = await Promise.all([
      // Warnings only: a request log line per create is CPU the two cores need for the load. A
      // longer Redis timeout than REDIS_COMMAND_TIMEOUT_MS's default: on a starved machine a
      // create can wait that long, and a 503 would blur what this test measures (sharing, not
      // latency).
      processes.startApi('api', apiPort, { LOG_LEVEL: 'warn', REDIS_COMMAND_TIMEOUT_MS: '5000' }, START_TIMEOUT_MS),
      ...names.map((name) => processes.startWorker(name, { PROCESSOR_URL: processor.urlFor(name, PROCESSOR_DELAY_MS) }, START_TIMEOUT_MS)),
    ]);

    const perConnection = OPERATIONS / CONNECTIONS.length;
    const bodies = CONNECTIONS.flatMap((connectionId, series) => createBodies(perConnection, series + 1).map((body) => ({ connectionId, body })));
    const startedAt = Date.now();
    const outcomes = await mapWithConcurrency(bodies, CREATE_CONCURRENCY, ({ connectionId, body }) => createOperation(baseUrl, token, connectionId, body));
    const createMs = Date.now() - startedAt;
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201);
    expect(acknowledged, `creates not answered 201: ${JSON.stringify(outcomes.filter((o) => o.status !== 201).slice(0, 5))}`).toHaveLength(OPERATIONS);
    expect(new Set(acknowledged.map((outcome) => `${outcome.connectionId}/${outcome.operationId}`)).size).toBe(OPERATIONS);
    expect(acknowledged.map((outcome) => outcome.operationId)).toContain('1012345');

    const connections: ConnectionRef[] = CONNECTIONS.map((connectionId) => ({ tenantId: TENANT, connectionId }));
    await pollUntil(async () => (await Promise.all(connections.map((ref) => store.count(ref, 'inprogress')))).every((n) => n === 0), {
      timeoutMs: DRAIN_DEADLINE_MS,
      intervalMs: 100,
      what: 'every operation to leave inprogress',
      context: async () => `inprogress: ${(await Promise.all(connections.map((ref) => store.count(ref, 'inprogress')))).join(', ')}`,
    });
    const drainMs = Date.now() - startedAt;

    // Every operation completed, in the store, once.
    for (const ref of connections) {
      expect(await store.count(ref, 'completed')).toBe(perConnection);
      expect(await store.count(ref, 'failed')).toBe(0);
    }
    const stored = await Promise.all(acknowledged.map((o) => store.get({ tenantId: TENANT, connectionId: o.connectionId, operationId: o.operationId! })));
    expect(stored.filter((operation) => operation?.status !== 'completed')).toEqual([]);
    // (Log lines reach stdout 4 KiB at a time or every 200 ms, src/shared/logger.ts: wait until
    // every finish line is in.)
    await pollUntil(() => [...finishLogCounts(workers).values()].reduce((sum, n) => sum + n, 0) >= OPERATIONS, {
      timeoutMs: 5000,
      what: "the workers' log lines for every finished operation",
    });
    const finished = finishLogCounts(workers);
    expect(finished.size).toBe(OPERATIONS);
    expect([...finished].filter(([, count]) => count !== 1)).toEqual([]);
    // No crash here, so the processor saw each operation exactly once.
    expect(seenMoreThanOnce(processor)).toEqual([]);
    expect(processor.calls).toHaveLength(OPERATIONS);
    expect(await queue.counts('active', 'wait', 'delayed', 'failed')).toEqual({ active: 0, wait: 0, delayed: 0, failed: 0 });

    // The load was shared: every worker served a fair part of it.
    const shares = callsPerWorker(processor);
    const even = OPERATIONS / workerCount;
    for (const name of names) {
      expect(shares.get(name) ?? 0, `calls served by ${name} (even share ${even})`).toBeGreaterThanOrEqual(Math.floor(even * MIN_SHARE_OF_EVEN));
    }
    return { shares, createMs, drainMs };
  } finally {
    await queue.close();
  }
}

function describeShares(shares: Map<string, number>): string {
  return [...shares].sort(([a], [b]) => a.localeCompare(b)).map(([name, n]) => `${name}=${n}`).join(', ');
}

describe('many worker processes on one Redis', () => {
  it('shares 600 operations among four workers competing for one queue, completing each exactly once', async ({ onTestFailed }) => {
    const { shares, createMs, drainMs } = await runLoad(4, 1, onTestFailed);
    console.log(
      `[scale 4 workers, 1 queue] acknowledged ${OPERATIONS}, terminal ${OPERATIONS}, lost 0, finished twice 0, ` +
        `processor duplicates 0; calls per worker: ${describeShares(shares)}; creates took ${createMs} ms, all completed after ${drainMs} ms`,
    );
  }, 60_000);

  it('shares 600 operations among three workers consuming four queue shards, completing each exactly once', async ({ onTestFailed }) => {
    const { shares, createMs, drainMs } = await runLoad(3, 4, onTestFailed);
    console.log(
      `[scale 3 workers, 4 shards] acknowledged ${OPERATIONS}, terminal ${OPERATIONS}, lost 0, finished twice 0, ` +
        `processor duplicates 0; calls per worker: ${describeShares(shares)}; creates took ${createMs} ms, all completed after ${drainMs} ms`,
    );
  }, 60_000);
});
