import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConnectionRef } from '../src/shared/keys.js';
import type { OperationRef } from '../src/shared/operation.js';
import { OperationQueue } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { signToken, silentLog, TENANT, uniquePrefix } from './support/context.js';
import { killWhenHolding } from './support/load.js';
import { FAST_RECOVERY_TIMINGS, fastRecoveryEnv, mapWithConcurrency, ProcessGroup, SERVICE_RETENTION_MS, testServiceEnv, type RunningProcess } from './support/processes.js';
import { pollUntil } from './support/wait.js';
import { startProcessorServer, type ProcessorServer } from './support/processor-server.js';
import { freePort } from '../scripts/lib/free-port.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';
import { logMessage } from './support/log-messages.js';

/**
 * End-to-end: real API and worker processes on a redis-server of this file's own, processing
 * through a real HTTP processor. Crashes are real signals. What must hold whatever dies: every
 * operation the API answered 201 reaches a terminal status, once, and nothing stays inprogress.
 */

const WORKER_CONCURRENCY = 20;
const CONNECTION_ID = 'e2eprocesses';
const CREATE_CONCURRENCY = 16;
/** Generous deadlines: they bound a failing test on a busy machine; a passing one is far quicker. */
const RECOVERY_DEADLINE_MS = 15_000;
const TEST_TIMEOUT_MS = 45_000;

let redisServer: RedisServer;
let processor: ProcessorServer;
let redis: RedisClient;
let token: string;

// Per test: its own key prefix, processes, store and queue views.
let prefix: string;
let group: ProcessGroup;
let store: OperationStore;
let queue: OperationQueue;
let connection: ConnectionRef;

beforeAll(async () => {
  redisServer = await startRedisServer();
  processor = await startProcessorServer();
  redis = createRedis({ url: redisServer.url, role: 'consumer', connectionName: 'e2e-test' });
  await waitUntilReady(redis);
  token = await signToken();
});

afterAll(async () => {
  await redis?.quit().catch(() => redis.disconnect());
  await processor?.close();
  await redisServer?.destroy();
});

beforeEach(({ onTestFailed }) => {
  prefix = uniquePrefix();
  connection = { tenantId: TENANT, connectionId: CONNECTION_ID };
  processor.reset();
  group = new ProcessGroup(
    testServiceEnv(prefix, { REDIS_URL: redisServer.url, ...fastRecoveryEnv, WORKER_CONCURRENCY: String(WORKER_CONCURRENCY) }),
  );
  store = new OperationStore(redis, { prefix, retentionMs: SERVICE_RETENTION_MS });
  queue = new OperationQueue(redis, prefix, { attempts: 5, backoffMs: FAST_RECOVERY_TIMINGS.OPERATION_BACKOFF_MS }, silentLog);
  // The children's output explains most failures; print it only then.
  onTestFailed(() => console.log(`[e2e] output of the test's processes:\n${group.describe()}`));
});

afterEach(async () => {
  await group.killAll();
  await queue.close();
});

// ---- helpers ----

type CreateBody = { id?: string };
interface CreateOutcome {
  body: CreateBody;
  status?: number;
  operationId?: string;
  /** Set when no answer came (the API died mid-request). */
  error?: string;
}

/** A mix of client ids (one made only of digits, as BullMQ job ids must never be) and
 *  server-generated ones. */
function createBodies(count: number): CreateBody[] {
  return Array.from({ length: count }, (_, i): CreateBody => {
    if (i === 0) return { id: '12345' };
    if (i % 4 === 1) return { id: String(900_000 + i) };
    if (i % 4 === 2) return { id: `op.${i}_x~y-z` };
    return {};
  });
}

async function createOperation(baseUrl: string, body: CreateBody): Promise<CreateOutcome> {
  try {
    const response = await fetch(`${baseUrl}/v1.0/external/connections/${CONNECTION_ID}/operations`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    const json = (await response.json().catch(() => ({}))) as { id?: string };
    return { body, status: response.status, ...(json.id ? { operationId: json.id } : {}) };
  } catch (error) {
    return { body, error: error instanceof Error ? `${error.message} (${String(error.cause)})` : String(error) };
  }
}

async function getStatus(baseUrl: string, operationId: string): Promise<string> {
  const response = await fetch(`${baseUrl}/v1.0/external/connections/${CONNECTION_ID}/operations/${operationId}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(5000),
  });
  const json = (await response.json()) as { status?: string };
  return response.status === 200 ? String(json.status) : `http ${response.status}`;
}

function refOf(operationId: string): OperationRef {
  return { ...connection, operationId };
}

/** Waits until the store holds no inprogress operation of the connection. */
async function waitUntilNothingInprogress(what: string): Promise<void> {
  await pollUntil(async () => (await store.count(connection, 'inprogress')) === 0, {
    timeoutMs: RECOVERY_DEADLINE_MS,
    what,
    context: async () => {
      const stuck = await store.inprogressCreatedBefore(connection, Date.now() + 1, 20);
      const states = await Promise.all(stuck.map(async (id) => `${id}: job ${await queue.stateOfOwnJob(refOf(id))}`));
      return `still inprogress (first 20): ${states.join(', ')}\n${group.describe()}`;
    },
  });
}

/** Every operation id the store holds for the connection. */
async function storedOperationIds(): Promise<string[]> {
  const ids: string[] = [];
  let cursor: { createdAt: number; id: string } | undefined;
  do {
    const page = await store.list(connection, { top: 999, ...(cursor ? { cursor } : {}) });
    ids.push(...page.operations.map((operation) => operation.id));
    cursor = page.next;
  } while (cursor);
  return ids;
}

/** How many `operation finished` lines the workers logged per operation id. */
function finishLogCounts(workers: RunningProcess[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const worker of workers) {
    for (const line of worker.logs) {
      if (line.msg !== logMessage('operation finished')) continue;
      const id = String(line.operationId);
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
  }
  return counts;
}

function duplicatesSeenByProcessor(ids: Iterable<string>): string[] {
  const seen = processor.timesSeen();
  return [...ids].filter((id) => (seen.get(id) ?? 0) > 1);
}

// ---- tests ----

describe('service processes under crashes', () => {
  it('completes every acknowledged operation exactly once when a worker is SIGKILLed with jobs in flight', async () => {
    const apiPort = await freePort();
    const baseUrl = `http://127.0.0.1:${apiPort}`;
    const [, victim, survivor] = await Promise.all([
      group.startApi('api', apiPort),
      group.startWorker('worker-1', { PROCESSOR_URL: processor.urlFor('worker-1', 40) }),
      group.startWorker('worker-2', { PROCESSOR_URL: processor.urlFor('worker-2', 40) }),
    ]);

    // Kill worker-1 from inside the processor's request handler, once a good part of the load
    // went through and worker-1 has calls in flight: it certainly dies holding them.
    const kill = killWhenHolding(processor, victim, { afterCalls: 100, lateAfterCalls: 250 });

    const outcomes = await mapWithConcurrency(createBodies(400), CREATE_CONCURRENCY, (body) => createOperation(baseUrl, body));
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201).map((outcome) => outcome.operationId!);
    expect(acknowledged, `creates not answered 201: ${JSON.stringify(outcomes.filter((o) => o.status !== 201).slice(0, 5))}`).toHaveLength(400);
    expect(new Set(acknowledged).size).toBe(400);
    expect(acknowledged).toContain('12345');

    const { killedAt, inFlightAtKill } = await kill.waitForKill(RECOVERY_DEADLINE_MS);
    expect(await victim.waitForExit(5000)).toEqual({ code: null, signal: 'SIGKILL' });
    const unfinishedAtKill = new Set(inFlightAtKill.map((call) => call.operationId));

    await waitUntilNothingInprogress('every operation to leave inprogress after worker-1 was killed');

    // Through the API, as a client sees it: every acknowledged operation is completed.
    const statuses = await mapWithConcurrency(acknowledged, CREATE_CONCURRENCY, (id) => getStatus(baseUrl, id));
    const notCompleted = acknowledged.map((id, i) => `${id}: ${statuses[i]}`).filter((_, i) => statuses[i] !== 'completed');
    expect(notCompleted, group.describe()).toEqual([]);
    // In the store: exactly the acknowledged operations, each in exactly one status index.
    expect(await store.count(connection, 'completed')).toBe(400);
    expect(await store.count(connection, 'failed')).toBe(0);
    expect((await storedOperationIds()).sort()).toEqual([...acknowledged].sort());

    // The calls worker-1 died holding were run again by worker-2 (at-least-once), and no
    // operation was recorded as finished twice.
    const seen = processor.timesSeen();
    for (const id of unfinishedAtKill) expect(seen.get(id), `${id} was in flight on worker-1 when it died`).toBeGreaterThanOrEqual(2);
    for (const id of acknowledged) expect(seen.get(id) ?? 0, `processor calls for ${id}`).toBeGreaterThanOrEqual(1);
    // (Log lines reach stdout 4 KiB at a time or every 200 ms, src/shared/logger.ts: wait until
    // worker-2's lines for the operations it took over are in.)
    await pollUntil(() => [...unfinishedAtKill].every((id) => finishLogCounts([survivor]).has(id)), {
      timeoutMs: 5000,
      what: "worker-2's log lines for the operations it took over",
    });
    const finishedTwice = [...finishLogCounts([victim, survivor])].filter(([, count]) => count > 1);
    expect(finishedTwice).toEqual([]);
    const secondRuns = processor.calls.filter((call) => unfinishedAtKill.has(call.operationId) && call.worker === 'worker-2');
    expect(secondRuns.every((call) => call.receivedAt >= killedAt)).toBe(true);

    const lastActions = await Promise.all(acknowledged.map(async (id) => (await store.get(refOf(id)))!.lastActionAt));
    const recoveredAt = Math.max(...(await Promise.all([...unfinishedAtKill].map(async (id) => (await store.get(refOf(id)))!.lastActionAt))));
    console.log(
      `[e2e worker SIGKILL] acknowledged ${acknowledged.length}, completed ${statuses.filter((s) => s === 'completed').length}, ` +
        `lost 0; in flight on the killed worker: ${unfinishedAtKill.size}; ids the processor saw twice: ` +
        `${duplicatesSeenByProcessor(acknowledged).length}; kill -> killed worker's jobs terminal: ${recoveredAt - killedAt} ms, ` +
        `kill -> last operation terminal: ${Math.max(...lastActions) - killedAt} ms ` +
        `(lock ${FAST_RECOVERY_TIMINGS.WORKER_LOCK_DURATION_MS} ms, stalled interval ${FAST_RECOVERY_TIMINGS.WORKER_STALLED_INTERVAL_MS} ms)`,
    );
    // A dead worker's jobs come back after the lock expires and a stalled check runs.
    expect(recoveredAt - killedAt).toBeLessThan(FAST_RECOVERY_TIMINGS.WORKER_LOCK_DURATION_MS + 3 * FAST_RECOVERY_TIMINGS.WORKER_STALLED_INTERVAL_MS + 2000);
  }, TEST_TIMEOUT_MS);

  it('completes every operation the API acknowledged before it was SIGKILLed, and ones stored but never enqueued', async () => {
    const apiPort = await freePort();
    const [firstApi, worker] = await Promise.all([
      group.startApi('api-1', apiPort),
      group.startWorker('worker-1', { PROCESSOR_URL: processor.urlFor('worker-1', 20) }),
    ]);

    // The crash window between storing a record and enqueuing its job, made exact: records
    // written straight to the store, with no job. Only the worker's reconciler can finish them.
    const outboxIds = ['outbox-1', 'outbox-2', '424242', 'outbox.4_~-'];
    const outboxCreatedAt = Date.now();
    for (const id of outboxIds) expect((await store.create(refOf(id))).result).toBe('created');
    for (const id of outboxIds) expect(await queue.stateOfOwnJob(refOf(id))).toBe('unknown');

    let killedAt: number | undefined;
    let answered = 0;
    const outcomes = await mapWithConcurrency(createBodies(400), CREATE_CONCURRENCY, async (body) => {
      const outcome = await createOperation(`http://127.0.0.1:${apiPort}`, body);
      if (outcome.status === 201 && ++answered === 150) {
        killedAt = Date.now();
        firstApi.signal('SIGKILL');
      }
      return outcome;
    });
    expect(await firstApi.waitForExit(5000)).toEqual({ code: null, signal: 'SIGKILL' });
    expect(killedAt).toBeDefined();
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201).map((outcome) => outcome.operationId!);
    const unanswered = outcomes.filter((outcome) => outcome.status === undefined);
    const otherStatuses = outcomes.filter((outcome) => outcome.status !== undefined && outcome.status !== 201);
    expect(otherStatuses, 'answers other than 201').toEqual([]);
    expect(acknowledged.length).toBeGreaterThanOrEqual(150);
    expect(unanswered.length).toBeGreaterThan(0);

    // A new API on the same Redis serves them: every acknowledged operation ends completed.
    const secondPort = await freePort();
    const secondUrl = `http://127.0.0.1:${secondPort}`;
    await group.startApi('api-2', secondPort);
    let pending = acknowledged;
    await pollUntil(
      async () => {
        const statuses = await mapWithConcurrency(pending, CREATE_CONCURRENCY, (id) => getStatus(secondUrl, id));
        const unexpected = statuses.filter((status) => status !== 'completed' && status !== 'inprogress');
        if (unexpected.length > 0) throw new Error(`unexpected statuses: ${unexpected.join(', ')}\n${group.describe()}`);
        pending = pending.filter((_, i) => statuses[i] !== 'completed');
        return pending.length === 0;
      },
      {
        timeoutMs: RECOVERY_DEADLINE_MS,
        intervalMs: 200,
        what: 'every acknowledged operation to be completed',
        context: () => `not completed: ${pending.slice(0, 20).join(', ')}`,
      },
    );

    // Records stored by requests that never got their answer, and the outbox records, are not
    // stuck either: the reconciler enqueues whatever has no job.
    await waitUntilNothingInprogress('every stored operation, acknowledged or not, to leave inprogress');
    const stored = await storedOperationIds();
    expect(await store.count(connection, 'failed')).toBe(0);
    expect(await store.count(connection, 'completed')).toBe(stored.length);
    const storedUnacknowledged = stored.filter((id) => !acknowledged.includes(id) && !outboxIds.includes(id));
    for (const id of outboxIds) expect((await store.get(refOf(id)))?.status).toBe('completed');
    const outboxDoneAt = Math.max(...(await Promise.all(outboxIds.map(async (id) => (await store.get(refOf(id)))!.lastActionAt))));
    expect(outboxDoneAt - outboxCreatedAt).toBeGreaterThanOrEqual(FAST_RECOVERY_TIMINGS.RECONCILE_AFTER_MS);
    const repaired = await worker.waitForLog((line) => line.msg === logMessage('reconciler repaired operations'), 5000, 'a reconciler repair');
    expect(Number(repaired.enqueued)).toBeGreaterThanOrEqual(1);
    const seen = processor.timesSeen();
    for (const id of outboxIds) expect(seen.get(id), `processor calls for ${id}`).toBe(1);

    console.log(
      `[e2e API SIGKILL] acknowledged ${acknowledged.length} (all completed), unanswered ${unanswered.length} ` +
        `(of which stored anyway and completed: ${storedUnacknowledged.length}); outbox records completed by the reconciler ` +
        `${outboxIds.length}/${outboxIds.length}, ${outboxDoneAt - outboxCreatedAt} ms after they were written ` +
        `(reconcile after ${FAST_RECOVERY_TIMINGS.RECONCILE_AFTER_MS} ms, every ${FAST_RECOVERY_TIMINGS.RECONCILE_INTERVAL_MS} ms); ` +
        `ids the processor saw twice: ${duplicatesSeenByProcessor(stored).length}`,
    );
  }, TEST_TIMEOUT_MS);

  it('finishes in-flight jobs and exits 0 on SIGTERM, leaving no job active', async () => {
    const apiPort = await freePort();
    const baseUrl = `http://127.0.0.1:${apiPort}`;
    const api = await group.startApi('api', apiPort);
    // Queued before the worker starts, so it fills all its slots at once whatever the API's pace.
    const outcomes = await mapWithConcurrency(createBodies(60), CREATE_CONCURRENCY, (body) => createOperation(baseUrl, body));
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201).map((outcome) => outcome.operationId!);
    expect(acknowledged).toHaveLength(60);
    const worker = await group.startWorker('worker-1', { PROCESSOR_URL: processor.urlFor('worker-1', 300) });

    const inFlight = await pollUntil(
      () => {
        const calls = processor.inFlight('worker-1');
        return calls.length >= 10 ? calls : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 10, what: 'worker-1 to have 10 calls in flight', context: () => group.describe() },
    );
    const inFlightIds = inFlight.map((call) => call.operationId);
    const signalledAt = Date.now();
    expect(worker.signal('SIGTERM')).toBe(true);
    const exit = await worker.waitForExit(FAST_RECOVERY_TIMINGS.SHUTDOWN_TIMEOUT_MS + 2000);
    const shutdownMs = Date.now() - signalledAt;
    expect(exit, worker.output()).toEqual({ code: 0, signal: null });
    expect(shutdownMs).toBeLessThan(FAST_RECOVERY_TIMINGS.SHUTDOWN_TIMEOUT_MS);
    expect(worker.logs.some((line) => line.msg === logMessage('stopped'))).toBe(true);
    expect(worker.logs.some((line) => /aborting/.test(String(line.msg)))).toBe(false);

    // No worker runs now: what was in flight was finished by the worker before it exited.
    const afterExit = await Promise.all(inFlightIds.map(async (id) => (await store.get(refOf(id)))?.status));
    expect(afterExit).toEqual(inFlightIds.map(() => 'completed'));
    expect((await queue.counts('active')).active).toBe(0);
    const waiting = await store.count(connection, 'inprogress');

    // The rest waited in the queue, not lost: a new worker completes them, none processed twice.
    await group.startWorker('worker-2', { PROCESSOR_URL: processor.urlFor('worker-2', 20) });
    await waitUntilNothingInprogress('the operations left in the queue to be completed by worker-2');
    const statuses = await mapWithConcurrency(acknowledged, CREATE_CONCURRENCY, (id) => getStatus(baseUrl, id));
    expect(statuses).toEqual(acknowledged.map(() => 'completed'));
    expect(duplicatesSeenByProcessor(acknowledged)).toEqual([]);

    // The API also stops cleanly on SIGTERM.
    expect(api.signal('SIGTERM')).toBe(true);
    expect(await api.waitForExit(FAST_RECOVERY_TIMINGS.SHUTDOWN_TIMEOUT_MS + 2000)).toEqual({ code: 0, signal: null });

    console.log(
      `[e2e worker SIGTERM] in flight at SIGTERM ${inFlightIds.length}, all completed before exit; exit 0 after ${shutdownMs} ms ` +
        `(timeout ${FAST_RECOVERY_TIMINGS.SHUTDOWN_TIMEOUT_MS} ms); left queued ${waiting}, completed by a new worker; duplicates 0`,
    );
  });

  it('exits on SIGTERM when jobs outlast the shutdown timeout, and those operations still complete elsewhere', async () => {
    const apiPort = await freePort();
    const baseUrl = `http://127.0.0.1:${apiPort}`;
    // One attempt only: an operation interrupted by a shutdown must not be recorded as failed
    // just because it was on its last attempt.
    const [, worker] = await Promise.all([
      group.startApi('api', apiPort),
      group.startWorker('worker-1', {
        PROCESSOR_URL: processor.urlFor('worker-1', 3000),
        SHUTDOWN_TIMEOUT_MS: '500',
        OPERATION_ATTEMPTS: '1',
      }),
    ]);
    const outcomes = await mapWithConcurrency(createBodies(10), CREATE_CONCURRENCY, (body) => createOperation(baseUrl, body));
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201).map((outcome) => outcome.operationId!);
    expect(acknowledged).toHaveLength(10);
    await pollUntil(() => processor.inFlight('worker-1').length === 10, {
      timeoutMs: 10_000,
      intervalMs: 10,
      what: 'worker-1 to have every operation in flight',
      context: () => group.describe(),
    });

    const signalledAt = Date.now();
    expect(worker.signal('SIGTERM')).toBe(true);
    const exit = await worker.waitForExit(3000);
    const shutdownMs = Date.now() - signalledAt;
    expect(exit, worker.output()).toEqual({ code: 0, signal: null });
    // Nothing recorded, every job back in the wait list at once (not left active to stall).
    expect(await store.count(connection, 'inprogress')).toBe(10);
    // Creates of one tick share a batch job, so there are 1 to 10 jobs, none of them active.
    const jobs = await queue.counts('active', 'wait');
    expect(jobs.active).toBe(0);
    expect(jobs.wait).toBeGreaterThanOrEqual(1);
    expect(jobs.wait).toBeLessThanOrEqual(10);
    const interrupted = worker.logs.filter((line) => line.msg === logMessage('operation interrupted by shutdown; its job returns to the queue'));
    expect(interrupted.map((line) => String(line.operationId)).sort()).toEqual([...acknowledged].sort());

    await group.startWorker('worker-2', { PROCESSOR_URL: processor.urlFor('worker-2', 20), OPERATION_ATTEMPTS: '1' });
    await waitUntilNothingInprogress('the interrupted operations to be completed by worker-2');
    const statuses = await mapWithConcurrency(acknowledged, CREATE_CONCURRENCY, (id) => getStatus(baseUrl, id));
    expect(statuses, group.describe()).toEqual(acknowledged.map(() => 'completed'));
    // The interruption spent no attempt: worker-2 ran each operation as its first attempt.
    expect(processor.calls.filter((call) => call.worker === 'worker-2').map((call) => call.attempt)).toEqual(acknowledged.map(() => 1));
    expect((await queue.counts('active')).active).toBe(0);
    console.log(`[e2e worker SIGTERM past the timeout] exit 0 after ${shutdownMs} ms (timeout 500 ms); ${acknowledged.length} interrupted operations completed by a new worker`);
  });
});

describe('a worker process started from the build', () => {
  it('loads a TypeScript PROCESSOR_MODULE (through tsx, a production dependency) and records what it decides', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-e2e-module-'));
    try {
      // Type annotations: plain node cannot load this, the worker must go through tsx.
      const module = join(dir, 'processor.ts');
      writeFileSync(
        module,
        `interface Input { operation: { id: string } }
export default async function processOperation(input: Input): Promise<void> {
  if (input.operation.id.startsWith('refuse')) {
    const errorDetail: { errorCode: string; message: string } = { errorCode: 'refusedByModule', message: 'a TypeScript module said no' };
    throw Object.assign(new Error(errorDetail.message), { errorDetail });
  }
}
`,
      );
      await group.startWorker('worker-ts', { PROCESSOR_MODULE: module });
      for (const id of ['accept-1', 'refuse-1']) {
        expect((await store.create(refOf(id))).result).toBe('created');
        await queue.enqueue(refOf(id));
      }
      await waitUntilNothingInprogress('the TypeScript processor to decide both operations');
      expect(await store.get(refOf('accept-1'))).toMatchObject({ status: 'completed' });
      expect(await store.get(refOf('refuse-1'))).toMatchObject({ status: 'failed', error: { errorCode: 'refusedByModule', message: 'a TypeScript module said no' } });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
