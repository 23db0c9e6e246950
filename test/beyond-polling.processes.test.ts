import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConnectionRef } from '../src/shared/keys.js';
import { OperationQueue } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { signToken, silentLog, TENANT, uniquePrefix } from './support/context.js';
import { logMessage } from './support/log-messages.js';
import { FAST_RECOVERY_TIMINGS, fastRecoveryEnv, mapWithConcurrency, ProcessGroup, SERVICE_RETENTION_MS, testServiceEnv, type RunningProcess } from './support/processes.js';
import { startProcessorServer, type ProcessorCall, type ProcessorServer } from './support/processor-server.js';
import { startRedisCluster, type RedisCluster } from './support/redis-cluster.js';
import { pollUntil, sleep } from './support/wait.js';
import { freePort } from '../scripts/lib/free-port.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';

/**
 * Waiting (`Prefer: wait`), event streams and cancel across real processes: the API that holds a
 * request and the worker that ends the operation are separate processes on a real redis-server
 * (and on a three-master cluster), so a terminal status reaches a waiting client only through the
 * scripts' SPUBLISH and the API's subscriber, and a cancel reaches the attempt only through the
 * worker's cancel channel. test/beyond-polling.test.ts covers the same in one process.
 */

const CONNECTION_ID = 'beyondpolling';
/** The processor's answer time where a test waits for a worker to finish. */
const PROCESSOR_DELAY_MS = 500;
/** A processor call that lasts past the test: only a cancel or a kill ends it. */
const HELD_CALL_MS = 60_000;
/** How long after the worker wrote a terminal status a held answer may come, on a busy
 *  two-core machine; an announcement that is lost shows as the wait's 30 s instead. */
const ANNOUNCE_LATENCY_MS = 2000;
/** How soon after a client or a signal acts the API must have answered or let go. */
const PROMPT_MS = 2000;
const TEST_TIMEOUT_MS = 45_000;
/** The API's shutdown deadline in the SIGTERM tests: shorter than fastRecoveryEnv's, so a shutdown
 *  that waits it out costs little. */
const API_SHUTDOWN_TIMEOUT_MS = 3000;
const START_TIMEOUT_MS = 30_000;

let redisServer: RedisServer;
let processor: ProcessorServer;
let redis: RedisClient;
let token: string;

beforeAll(async () => {
  [redisServer, processor, token] = await Promise.all([startRedisServer(), startProcessorServer(), signToken()]);
  redis = createRedis({ url: redisServer.url, role: 'consumer', connectionName: 'beyond-polling-test' });
  await waitUntilReady(redis);
});

afterAll(async () => {
  await redis?.quit().catch(() => redis.disconnect());
  await processor?.close();
  await redisServer?.destroy();
});

// ---- a client of the API ----

interface OperationJson {
  id: string;
  status: string;
  error: null | { errorCode: string; code?: string; message: string };
  createdDateTime: string;
  lastActionDateTime: string;
}

interface Answer<T = OperationJson> {
  status: number;
  headers: Headers;
  body: T;
  /** When the request went out, and when its whole answer was in (ms since the epoch). */
  sentAt: number;
  at: number;
}

interface StreamEvent {
  event: string;
  data: OperationJson;
  at: number;
}

interface EventStream {
  status: number;
  contentType: string | null;
  events: StreamEvent[];
  /** Comment lines (`: keep-alive`), with when each came. */
  comments: { text: string; at: number }[];
  /** Resolves when the server ended the stream (with when), or with the error that cut it. */
  ended: Promise<{ at: number } | { error: unknown }>;
}

class ApiClient {
  constructor(
    readonly baseUrl: string,
    readonly connectionId: string,
  ) {}

  operationsUrl(): string {
    return `${this.baseUrl}/v1.0/external/connections/${this.connectionId}/operations`;
  }

  create(id: string, headers: Record<string, string> = {}): Promise<Answer> {
    return send(this.operationsUrl(), { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ id }) });
  }

  get(id: string, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Answer> {
    return send(`${this.operationsUrl()}/${id}`, { headers, ...(signal ? { signal } : {}) });
  }

  /** 200 with the operation; a 404 or 409 carries Graph's `{ error: { code, message } }`. */
  cancel(id: string): Promise<Answer> {
    return send(`${this.operationsUrl()}/${id}/cancel`, { method: 'POST' });
  }

  stream(id: string, signal?: AbortSignal): Promise<EventStream> {
    return openStream(`${this.operationsUrl()}/${id}`, signal);
  }

  /** A gauge or counter of the API's /metrics. */
  async metric(name: string): Promise<number> {
    const response = await fetch(`${this.baseUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await response.text();
    const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    if (!match) throw new Error(`${name} is not in the API's /metrics:\n${text.slice(0, 2000)}`);
    return Number(match[1]);
  }
}

async function send<T>(url: string, init: RequestInit): Promise<Answer<T>> {
  const sentAt = Date.now();
  const response = await fetch(url, {
    ...init,
    headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string>) },
    signal: init.signal ?? AbortSignal.timeout(90_000),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: (text ? JSON.parse(text) : undefined) as T, sentAt, at: Date.now() };
}

/** Opens an operation's event stream and reads it in the background: events and comments are
 *  recorded as they come. Resolves once the response headers are in. */
async function openStream(url: string, signal?: AbortSignal): Promise<EventStream> {
  const response = await fetch(url, {
    headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
    signal: signal ?? AbortSignal.timeout(90_000),
  });
  const events: StreamEvent[] = [];
  const comments: { text: string; at: number }[] = [];
  const reader: ReadableStreamDefaultReader<Uint8Array> = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const parse = (block: string, at: number) => {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push({ text: line.slice(1).trim(), at });
      else if (line.startsWith('event:')) event = line.slice(6).trim();
      else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
    }
    if (data.length > 0) events.push({ event, data: JSON.parse(data.join('\n')) as OperationJson, at });
  };
  const ended = (async () => {
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return { at: Date.now() };
        buffer += decoder.decode(value, { stream: true });
        let end: number;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          parse(buffer.slice(0, end), Date.now());
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      return { error };
    }
  })();
  return { status: response.status, contentType: response.headers.get('content-type'), events, comments, ended };
}

async function endedAt(stream: EventStream, timeoutMs: number): Promise<number> {
  const ended = await pollUntil(async () => Promise.race([stream.ended, sleep(50).then(() => undefined)]), {
    timeoutMs,
    what: 'the event stream to end',
    context: () => `events so far: ${JSON.stringify(stream.events.map((e) => e.data.status))}`,
  });
  if ('error' in ended) throw new Error(`the event stream broke instead of ending: ${String(ended.error)}`);
  return ended.at;
}

// ---- helpers on processes, calls and logs ----

function callOf(operationId: string): ProcessorCall | undefined {
  return processor.calls.find((call) => call.operationId === operationId);
}

async function inFlightCall(operationId: string, group: ProcessGroup): Promise<ProcessorCall> {
  return pollUntil(() => processor.inFlight().find((call) => call.operationId === operationId), {
    timeoutMs: 10_000,
    intervalMs: 10,
    what: `the processor call of ${operationId}`,
    context: () => group.describe(),
  });
}

/** The workers' log lines with this message, about this operation. */
function linesAbout(workers: readonly RunningProcess[], message: string, operationId: string) {
  const msg = logMessage(message);
  return workers.flatMap((worker) => worker.logs.filter((line) => line.msg === msg && line.operationId === operationId));
}

const FINISHED = 'operation finished';
const CANCELED_WHILE_RUNNING = 'operation canceled by a client while its attempt ran; the processor was aborted';
const NOT_RECORDED = 'outcome not recorded: the operation was already terminal, or its lease was taken over';

/** The operation (as the API answers it, or as the store reads it) is failed by a cancel. */
function expectCanceled(operation: unknown, what: string): void {
  expect(operation, what).toMatchObject({ status: 'failed', error: { errorCode: 'operationCanceled', code: 'operationCanceled' } });
}

// ---- one redis-server ----

describe('a waiting API and a finishing worker in processes of their own, on one redis-server', () => {
  const prefix = uniquePrefix();
  const connection: ConnectionRef = { tenantId: TENANT, connectionId: CONNECTION_ID };
  let store: OperationStore;
  let group: ProcessGroup;
  let client: ApiClient;

  beforeAll(async () => {
    processor.reset();
    store = new OperationStore(redis, { prefix, retentionMs: SERVICE_RETENTION_MS });
    group = new ProcessGroup(testServiceEnv(prefix, { REDIS_URL: redisServer.url, ...fastRecoveryEnv }));
    const port = await freePort();
    await Promise.all([
      group.startApi('api', port, { STREAM_KEEP_ALIVE_MS: '100' }, START_TIMEOUT_MS),
      group.startWorker('worker-1', { PROCESSOR_URL: processor.urlFor('worker-1', PROCESSOR_DELAY_MS) }, START_TIMEOUT_MS),
    ]);
    client = new ApiClient(`http://127.0.0.1:${port}`, CONNECTION_ID);
  }, START_TIMEOUT_MS + 5000);

  afterAll(async () => {
    await group?.killAll();
  });

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(`[beyond polling] output of the processes:\n${group.describe()}`));
  });

  it('answers a Prefer: wait=30 GET with the completed state the worker process wrote, soon after it wrote it', async () => {
    const created = await client.create('wait-get');
    expect(created.status).toBe(201);
    expect(created.body.status).toBe('inprogress');

    const held = await client.get('wait-get', { prefer: 'wait=30' });
    expect(held.status).toBe(200);
    expect(held.body).toMatchObject({ id: 'wait-get', status: 'completed', error: null });
    expect(held.headers.get('preference-applied')).toBe('wait=30');
    expect(held.headers.get('retry-after')).toBeNull();
    // Held until the worker finished: the answer came after the processor's, and soon after the
    // worker's write (its lastActionDateTime), far from the 30 s.
    const call = callOf('wait-get')!;
    expect(call.answeredAt).toBeDefined();
    expect(held.at).toBeGreaterThanOrEqual(call.answeredAt!);
    const writtenAt = Date.parse(held.body.lastActionDateTime);
    expect(held.at - writtenAt).toBeLessThan(ANNOUNCE_LATENCY_MS);
    expect(held.at - held.sentAt).toBeLessThan(PROCESSOR_DELAY_MS + 5000);
    // The state it answered is the stored one.
    expect((await store.get({ ...connection, operationId: 'wait-get' }))?.lastActionAt).toBe(writtenAt);
    console.log(
      `[beyond polling wait GET] held ${held.at - held.sentAt} ms; answered ${held.at - writtenAt} ms after the worker wrote completed ` +
        `(${held.at - call.answeredAt!} ms after the processor answered)`,
    );
  }, TEST_TIMEOUT_MS);

  it('answers a Prefer: wait=30 create with 201 and the completed state, soon after the worker process wrote it', async () => {
    const created = await client.create('wait-create', { prefer: 'wait=30' });
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ id: 'wait-create', status: 'completed', error: null });
    expect(created.headers.get('preference-applied')).toBe('wait=30');
    expect(created.headers.get('location')).toBe(`${client.operationsUrl()}/wait-create`);
    expect(created.headers.get('retry-after')).toBeNull();
    const call = callOf('wait-create')!;
    expect(created.at).toBeGreaterThanOrEqual(call.answeredAt!);
    const writtenAt = Date.parse(created.body.lastActionDateTime);
    expect(created.at - writtenAt).toBeLessThan(ANNOUNCE_LATENCY_MS);
    expect(created.at - created.sentAt).toBeGreaterThanOrEqual(PROCESSOR_DELAY_MS);
    console.log(`[beyond polling wait create] 201 after ${created.at - created.sentAt} ms, ${created.at - writtenAt} ms after the worker wrote completed`);
  }, TEST_TIMEOUT_MS);

  it('streams inprogress, keep-alive comments, then completed as the worker process writes it, and ends the stream', async () => {
    expect((await client.create('streamed')).status).toBe(201);
    const stream = await client.stream('streamed');
    expect(stream.status).toBe(200);
    expect(stream.contentType).toMatch(/^text\/event-stream/);
    const endAt = await endedAt(stream, 10_000);

    expect(stream.events.map((e) => [e.event, e.data.status])).toEqual([
      ['operation', 'inprogress'],
      ['operation', 'completed'],
    ]);
    const [first, last] = stream.events as [StreamEvent, StreamEvent];
    expect(first.data).toMatchObject({ id: 'streamed', error: null });
    // The completed event came once the worker had written it, and the stream ended with it.
    const call = callOf('streamed')!;
    expect(last.at).toBeGreaterThanOrEqual(call.answeredAt!);
    expect(last.at - Date.parse(last.data.lastActionDateTime)).toBeLessThan(ANNOUNCE_LATENCY_MS);
    expect(endAt - last.at).toBeLessThan(PROMPT_MS);
    // Keep-alive comments while it was inprogress (every 100 ms here, for 500 ms).
    const between = stream.comments.filter((comment) => comment.at >= first.at && comment.at <= last.at);
    expect(between.length).toBeGreaterThanOrEqual(1);
    expect(between.every((comment) => comment.text === 'keep-alive')).toBe(true);
    // The last event is what a GET reads now.
    expect((await client.get('streamed')).body).toEqual(last.data);
    console.log(
      `[beyond polling stream] events inprogress -> completed ${last.at - first.at} ms apart, ${between.length} keep-alive comments between; ` +
        `completed ${last.at - Date.parse(last.data.lastActionDateTime)} ms after the write, ended ${endAt - last.at} ms after it`,
    );
  }, TEST_TIMEOUT_MS);
});

describe('on one redis-server, an API and workers of their own for each test', () => {
  let prefix: string;
  let group: ProcessGroup;
  let store: OperationStore;
  let queue: OperationQueue;
  let connection: ConnectionRef;

  beforeEach(({ onTestFailed }) => {
    prefix = uniquePrefix();
    connection = { tenantId: TENANT, connectionId: CONNECTION_ID };
    processor.reset();
    group = new ProcessGroup(testServiceEnv(prefix, { REDIS_URL: redisServer.url, ...fastRecoveryEnv }));
    store = new OperationStore(redis, { prefix, retentionMs: SERVICE_RETENTION_MS });
    queue = new OperationQueue(redis, prefix, { attempts: 5, backoffMs: FAST_RECOVERY_TIMINGS.OPERATION_BACKOFF_MS }, silentLog);
    onTestFailed(() => console.log(`[beyond polling] output of the test's processes:\n${group.describe()}`));
  });

  afterEach(async () => {
    await group.killAll();
    await queue.close();
  });

  /** An API and workers (each with its own processor delay), started together. */
  async function start(workers: Record<string, { delayMs: number; env?: Record<string, string> }>, apiEnv: Record<string, string> = {}) {
    const port = await freePort();
    const [api, ...started] = await Promise.all([
      group.startApi('api', port, apiEnv, START_TIMEOUT_MS),
      ...Object.entries(workers).map(([name, { delayMs, env = {} }]) =>
        group.startWorker(name, { PROCESSOR_URL: processor.urlFor(name, delayMs), ...env }, START_TIMEOUT_MS),
      ),
    ]);
    return { api, workers: started, client: new ApiClient(`http://127.0.0.1:${port}`, CONNECTION_ID) };
  }

  it('cancels an attempt running in a worker process: its HTTP processor request is aborted, it is failed with operationCanceled, and neither it nor a canceled operation queued behind it reaches the processor again', async () => {
    // One slot: `queued` waits behind `running`, whose processor call lasts a minute.
    const { client, workers } = await start({ 'worker-1': { delayMs: HELD_CALL_MS, env: { WORKER_CONCURRENCY: '1' } } });
    expect((await client.create('running')).status).toBe(201);
    const call = await inFlightCall('running', group);
    expect((await client.create('queued')).status).toBe(201);

    // The queued one first: failed at once, though no worker ever claimed it.
    const queuedCancel = await client.cancel('queued');
    expect(queuedCancel.status).toBe(200);
    expectCanceled(queuedCancel.body, 'the queued operation, as its cancel answered');

    const canceled = await client.cancel('running');
    expect(canceled.status).toBe(200);
    expectCanceled(canceled.body, 'the running operation, as its cancel answered');
    expect(canceled.body.error?.message).toMatch(/canceled/);
    // The worker heard it on its channel and aborted the processor's request.
    const abortedAt = await pollUntil(() => call.abortedAt, {
      timeoutMs: 10_000,
      intervalMs: 10,
      what: 'the worker to abort the processor request',
      context: () => group.describe(),
    });
    expect(call.answeredAt).toBeUndefined();
    expect(abortedAt - canceled.at).toBeLessThan(PROMPT_MS);
    await workers[0]!.waitForLog((line) => line.msg === logMessage(CANCELED_WHILE_RUNNING) && line.operationId === 'running', 5000, 'the cancel of running');

    // Cancelling again answers the same; a GET reads the canceled state.
    const again = await client.cancel('running');
    expect(again.status).toBe(200);
    expect(again.body).toEqual(canceled.body);
    expectCanceled((await client.get('running')).body, 'GET running');
    expectCanceled((await client.get('queued')).body, 'GET queued');

    // The slot is free: the queued job is taken, finds its operation terminal at its claim, and
    // ends without a call. Then no job is left.
    await pollUntil(async () => Object.values(await queue.counts('active', 'wait', 'delayed', 'prioritized', 'waiting-children')).every((n) => n === 0), {
      timeoutMs: 10_000,
      what: 'every job to be done',
      context: async () => `${JSON.stringify(await queue.counts('active', 'wait', 'delayed', 'failed', 'completed'))}\n${group.describe()}`,
    });
    // Nothing brings either back: past a retry's backoff, a stalled-job check and a reconciler
    // sweep of inprogress records (nothing to poll for: this is the time in which a call would
    // have come back).
    await sleep(FAST_RECOVERY_TIMINGS.RECONCILE_AFTER_MS + FAST_RECOVERY_TIMINGS.RECONCILE_INTERVAL_MS);
    expect(processor.timesSeen().get('running')).toBe(1);
    expect(processor.timesSeen().get('queued')).toBeUndefined();
    for (const id of ['running', 'queued']) {
      expectCanceled(await store.get({ ...connection, operationId: id }), `stored ${id}`);
      expect(linesAbout(workers, FINISHED, id)).toEqual([]);
    }
    expect(await store.count(connection, 'failed')).toBe(2);
    expect(await store.count(connection, 'inprogress')).toBe(0);
    console.log(`[beyond polling cancel] processor request aborted ${abortedAt - canceled.at} ms after the cancel answered; the queued operation never reached the processor`);
  }, TEST_TIMEOUT_MS);

  it('hands a module processor in a worker process a signal aborted with an OperationCanceled error when a client cancels', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-cancel-module-'));
    try {
      const module = join(dir, 'processor.mjs');
      // Prints JSON lines, which the test reads among the worker's own log lines.
      writeFileSync(
        module,
        `export default async function ({ operation, signal }) {
  console.log(JSON.stringify({ msg: 'test processor started', operationId: operation.id }));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ${HELD_CALL_MS});
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      const reason = signal.reason;
      console.log(JSON.stringify({ msg: 'test processor aborted', operationId: operation.id, isError: reason instanceof Error, name: reason && reason.name }));
      reject(reason);
    }, { once: true });
  });
}
`,
      );
      const port = await freePort();
      const [, worker] = await Promise.all([
        group.startApi('api', port, {}, START_TIMEOUT_MS),
        group.startWorker('worker-module', { PROCESSOR_MODULE: module }, START_TIMEOUT_MS),
      ]);
      const client = new ApiClient(`http://127.0.0.1:${port}`, CONNECTION_ID);
      expect((await client.create('module-op')).status).toBe(201);
      await worker.waitForLog((line) => line.msg === 'test processor started' && line.operationId === 'module-op', 10_000, 'the processor start');
      const canceled = await client.cancel('module-op');
      expect(canceled.status).toBe(200);
      const aborted = await worker.waitForLog((line) => line.msg === 'test processor aborted', 5000, 'the processor abort');
      expect(aborted).toMatchObject({ operationId: 'module-op', isError: true, name: 'OperationCanceled' });
      await worker.waitForLog((line) => line.msg === logMessage(CANCELED_WHILE_RUNNING) && line.operationId === 'module-op', 5000, 'the cancel');
      expectCanceled((await client.get('module-op')).body, 'GET module-op');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, TEST_TIMEOUT_MS);

  it('has one winner in every cancel/finish race across processes: a 200 cancel leaves it failed with operationCanceled, a 409 leaves it completed, and each ends once', async () => {
    const COUNT = 150;
    const DELAY_MS = 200;
    const { client, workers } = await start({
      'worker-1': { delayMs: DELAY_MS, env: { WORKER_CONCURRENCY: '50' } },
      'worker-2': { delayMs: DELAY_MS, env: { WORKER_CONCURRENCY: '50' } },
    });
    const ids = Array.from({ length: COUNT }, (_, i) => `race-${i}`);
    // Every tenth operation is canceled as soon as its create is answered (its job not started,
    // or just started); the others a spread time after the processor got their call: from 80 ms
    // (well inside the 200 ms call) to 330 ms (well after it), in a shuffled order.
    const immediate = new Set(ids.filter((_, i) => i % 10 === 0));
    const offsets = new Map(ids.map((id, i) => [id, 80 + ((i * 7919) % COUNT) * (250 / COUNT)]));
    const cancels = new Map<string, Promise<Answer>>();
    const fire = (id: string) => {
      if (!cancels.has(id)) cancels.set(id, client.cancel(id));
    };
    processor.onCall = (call) => {
      if (!immediate.has(call.operationId)) setTimeout(() => fire(call.operationId), offsets.get(call.operationId));
    };

    const created = await mapWithConcurrency(ids, 8, async (id) => {
      const answer = await client.create(id);
      if (immediate.has(id)) fire(id);
      return answer.status;
    });
    expect(created).toEqual(ids.map(() => 201));
    await pollUntil(() => cancels.size === COUNT, {
      timeoutMs: 15_000,
      what: 'a cancel for every operation',
      context: () => `not canceled: ${ids.filter((id) => !cancels.has(id)).slice(0, 20).join(', ')}\n${group.describe()}`,
    });
    const answers = new Map(await Promise.all(ids.map(async (id) => [id, await cancels.get(id)!] as const)));
    await pollUntil(async () => (await store.count(connection, 'inprogress')) === 0, {
      timeoutMs: 15_000,
      what: 'every operation to be terminal',
      context: () => group.describe(),
    });
    const states = new Map(await mapWithConcurrency(ids, 16, async (id) => [id, (await client.get(id)).body] as const));

    const won = ids.filter((id) => answers.get(id)!.status === 200);
    const lost = ids.filter((id) => answers.get(id)!.status === 409);
    const violations: string[] = [];
    for (const id of ids) {
      const answer = answers.get(id)!;
      const state = states.get(id)!;
      const canceledState = state.status === 'failed' && state.error?.errorCode === 'operationCanceled' && state.error.code === 'operationCanceled';
      if (answer.status === 200) {
        const body = answer.body;
        if (body.status !== 'failed' || body.error?.errorCode !== 'operationCanceled') violations.push(`${id}: cancel 200 answered ${JSON.stringify(body)}`);
        if (!canceledState) violations.push(`${id}: cancel 200 but the operation is ${JSON.stringify(state)}`);
        else if (!isDeepStrictEqual(body, state)) violations.push(`${id}: cancel answered ${JSON.stringify(body)}, GET reads ${JSON.stringify(state)}`);
      } else if (answer.status === 409) {
        if (answer.body.error?.code !== 'conflict') violations.push(`${id}: cancel 409 answered ${JSON.stringify(answer.body)}`);
        if (state.status !== 'completed') violations.push(`${id}: cancel 409 but the operation is ${JSON.stringify(state)}`);
      } else {
        violations.push(`${id}: cancel answered ${answer.status} ${JSON.stringify(answer.body)}`);
      }
    }
    expect(violations).toEqual([]);
    expect(won.length + lost.length).toBe(COUNT);
    // Both sides won some: the race was run, not avoided.
    expect(won.length).toBeGreaterThan(0);
    expect(lost.length).toBeGreaterThan(0);
    expect(await store.count(connection, 'failed')).toBe(won.length);
    expect(await store.count(connection, 'completed')).toBe(lost.length);
    expect(await client.metric('operations_canceled_total')).toBe(won.length);

    // Each ended once: a completed operation has one finish line and one processor call, never
    // aborted; a canceled one has no finish line, at most one call, and when it had one, the
    // worker that ran it logged it as canceled mid-call or as an outcome it could not record.
    const lost409 = new Set(lost);
    await pollUntil(
      () =>
        lost.every((id) => linesAbout(workers, FINISHED, id).length > 0) &&
        won.every((id) => !callOf(id) || linesAbout(workers, CANCELED_WHILE_RUNNING, id).length + linesAbout(workers, NOT_RECORDED, id).length > 0),
      {
        timeoutMs: 5000,
        what: "the workers' log lines for every operation",
        context: () => {
          const unlogged = [
            ...lost.filter((id) => linesAbout(workers, FINISHED, id).length === 0).map((id) => `${id} (completed)`),
            ...won.filter((id) => callOf(id) && linesAbout(workers, CANCELED_WHILE_RUNNING, id).length + linesAbout(workers, NOT_RECORDED, id).length === 0).map((id) => `${id} (canceled)`),
          ];
          const about = (id: string) => workers.flatMap((worker) => worker.logs.filter((line) => JSON.stringify(line).includes(id.split(' ')[0]!)));
          return `without their line: ${unlogged.join(', ')}\n${unlogged.slice(0, 3).map((id) => JSON.stringify(about(id))).join('\n')}`;
        },
      },
    );
    const seen = processor.timesSeen();
    const endings: string[] = [];
    let abortedCalls = 0;
    let notRecorded = 0;
    for (const id of ids) {
      const calls = seen.get(id) ?? 0;
      const finished = linesAbout(workers, FINISHED, id);
      const canceledLines = linesAbout(workers, CANCELED_WHILE_RUNNING, id).length;
      const notRecordedLines = linesAbout(workers, NOT_RECORDED, id).length;
      const aborted = processor.calls.filter((call) => call.operationId === id && call.abortedAt !== undefined).length;
      abortedCalls += aborted;
      notRecorded += notRecordedLines;
      if (lost409.has(id)) {
        if (calls !== 1 || finished.length !== 1 || finished[0]!.status !== 'completed' || aborted > 0 || canceledLines + notRecordedLines > 0) {
          endings.push(`${id} (completed): ${calls} calls, ${aborted} aborted, finish lines ${JSON.stringify(finished)}, canceled lines ${canceledLines}, not recorded ${notRecordedLines}`);
        }
      } else if (calls > 1 || finished.length > 0 || canceledLines + notRecordedLines > 1 || (calls === 1 && canceledLines + notRecordedLines !== 1)) {
        endings.push(`${id} (canceled): ${calls} calls, finish lines ${finished.length}, canceled lines ${canceledLines}, not recorded ${notRecordedLines}`);
      }
    }
    expect(endings).toEqual([]);
    const neverCalled = won.filter((id) => !seen.has(id)).length;
    console.log(
      `[beyond polling race] ${COUNT} operations over 2 workers: cancel won ${won.length} (${abortedCalls} processor requests aborted, ` +
        `${notRecorded} outcomes refused after the processor answered, ${neverCalled} never called), finish won ${lost.length}; ` +
        `violations 0`,
    );
  }, TEST_TIMEOUT_MS);

  it('answers every held request and ends every event stream with the current state on SIGTERM, then the API exits 0', async () => {
    const { api, client } = await start({ 'worker-1': { delayMs: HELD_CALL_MS } }, { SHUTDOWN_TIMEOUT_MS: String(API_SHUTDOWN_TIMEOUT_MS) });
    expect((await client.create('slow')).status).toBe(201);
    await inFlightCall('slow', group);

    const held = Array.from({ length: 4 }, () => client.get('slow', { prefer: 'wait=60' }));
    const stream = await client.stream('slow');
    await pollUntil(async () => (await client.metric('operation_requests_held')) === 4 && (await client.metric('operation_streams_open')) === 1, {
      timeoutMs: 10_000,
      what: 'four held requests and one open stream',
      context: () => group.describe(),
    });
    expect(stream.events.map((e) => e.data.status)).toEqual(['inprogress']);

    const signalledAt = Date.now();
    expect(api.signal('SIGTERM')).toBe(true);
    const answers = await Promise.all(held);
    const streamEndedAt = await endedAt(stream, 10_000);
    const exit = await api.waitForExit(API_SHUTDOWN_TIMEOUT_MS + 5000);
    const exitMs = Date.now() - signalledAt;

    const stored = (await store.get({ ...connection, operationId: 'slow' }))!;
    expect(stored.status).toBe('inprogress');
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(answer.body).toMatchObject({ id: 'slow', status: 'inprogress', error: null });
      expect(Date.parse(answer.body.lastActionDateTime)).toBe(stored.lastActionAt);
      expect(answer.headers.get('retry-after')).toBe('1');
      expect(answer.at - signalledAt).toBeLessThan(PROMPT_MS);
    }
    expect(stream.events.map((e) => e.data.status)).toEqual(['inprogress']);
    expect(streamEndedAt - signalledAt).toBeLessThan(PROMPT_MS);
    expect(exit, api.output()).toEqual({ code: 0, signal: null });
    expect(api.logs.some((line) => line.msg === logMessage('stopped'))).toBe(true);
    // The processor call was the worker's: untouched by the API's shutdown.
    expect(processor.inFlight().map((call) => call.operationId)).toEqual(['slow']);
    const latest = Math.max(...answers.map((answer) => answer.at)) - signalledAt;
    console.log(
      `[beyond polling SIGTERM] 4 held requests answered within ${latest} ms, stream ended after ${streamEndedAt - signalledAt} ms, ` +
        `API exited 0 after ${exitMs} ms (SHUTDOWN_TIMEOUT_MS ${API_SHUTDOWN_TIMEOUT_MS})`,
    );
  }, TEST_TIMEOUT_MS);

  it('exits promptly on SIGTERM once its held requests are answered, without waiting SHUTDOWN_TIMEOUT_MS for their keep-alive connections', async () => {
    // No worker: the operation stays inprogress. The clients keep their connections alive, as
    // fetch, SDKs and load balancers do.
    const port = await freePort();
    const api = await group.startApi('api', port, { SHUTDOWN_TIMEOUT_MS: String(API_SHUTDOWN_TIMEOUT_MS) }, START_TIMEOUT_MS);
    const client = new ApiClient(`http://127.0.0.1:${port}`, CONNECTION_ID);
    expect((await client.create('held-at-shutdown')).status).toBe(201);
    const held = [client.get('held-at-shutdown', { prefer: 'wait=60' }), client.get('held-at-shutdown', { prefer: 'wait=60' })];
    await pollUntil(async () => (await client.metric('operation_requests_held')) === 2, { timeoutMs: 10_000, what: 'two held requests' });

    const signalledAt = Date.now();
    expect(api.signal('SIGTERM')).toBe(true);
    const answers = await Promise.all(held);
    expect(answers.map((answer) => [answer.status, answer.body.status])).toEqual([[200, 'inprogress'], [200, 'inprogress']]);
    const answeredMs = Math.max(...answers.map((answer) => answer.at)) - signalledAt;
    const exit = await api.waitForExit(API_SHUTDOWN_TIMEOUT_MS + 5000);
    const exitMs = Date.now() - signalledAt;
    console.log(
      `[beyond polling SIGTERM exit] held requests answered ${answeredMs} ms after SIGTERM (with Connection: ` +
        `${answers[0]!.headers.get('connection')}); the API exited ${JSON.stringify(exit)} ${exitMs} ms after it (SHUTDOWN_TIMEOUT_MS ${API_SHUTDOWN_TIMEOUT_MS})`,
    );
    expect(exit).toEqual({ code: 0, signal: null });
    // Nothing is left to wait for once the answers are written: the connections they leave idle
    // are dropped as the ones idle at the signal were (docs/operations.md, Shutdown).
    expect(exitMs).toBeLessThan(PROMPT_MS);
  }, TEST_TIMEOUT_MS);
});

// ---- an API with no worker: operations stay inprogress ----

describe('an API process with no worker', () => {
  const prefix = uniquePrefix();
  let group: ProcessGroup;
  let client: ApiClient;

  beforeAll(async () => {
    group = new ProcessGroup(testServiceEnv(prefix, { REDIS_URL: redisServer.url, ...fastRecoveryEnv }));
    const port = await freePort();
    await group.startApi('api', port, {}, START_TIMEOUT_MS);
    client = new ApiClient(`http://127.0.0.1:${port}`, CONNECTION_ID);
  }, START_TIMEOUT_MS + 5000);

  afterAll(async () => {
    await group?.killAll();
  });

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(`[beyond polling] output of the API:\n${group.describe()}`));
  });

  /** Polls the gauge until it reads `value`; resolves with how long that took. */
  async function gaugeReaches(name: string, value: number, timeoutMs: number): Promise<number> {
    const started = Date.now();
    let last: number | undefined;
    await pollUntil(async () => (last = await client.metric(name)) === value, {
      timeoutMs,
      intervalMs: 10,
      what: `${name} to read ${value}`,
      context: () => `it reads ${last}`,
    });
    return Date.now() - started;
  }

  it('frees a waiter the moment its client disconnects: operation_requests_held and operation_streams_open fall back to 0', async () => {
    expect((await client.create('never-ends')).status).toBe(201);
    expect(await client.metric('operation_requests_held')).toBe(0);
    expect(await client.metric('operation_streams_open')).toBe(0);

    const controllers = Array.from({ length: 3 }, () => new AbortController());
    const held = controllers.map((controller) => client.get('never-ends', { prefer: 'wait=30' }, controller.signal).then(() => 'answered', () => 'aborted'));
    await gaugeReaches('operation_requests_held', 3, 10_000);
    controllers[0]!.abort();
    const oneFreedMs = await gaugeReaches('operation_requests_held', 2, PROMPT_MS);
    controllers[1]!.abort();
    controllers[2]!.abort();
    const allFreedMs = await gaugeReaches('operation_requests_held', 0, PROMPT_MS);
    expect(await Promise.all(held)).toEqual(['aborted', 'aborted', 'aborted']);

    const streamController = new AbortController();
    const stream = await client.stream('never-ends', streamController.signal);
    await gaugeReaches('operation_streams_open', 1, 10_000);
    expect(stream.events.map((e) => e.data.status)).toEqual(['inprogress']);
    streamController.abort();
    const streamFreedMs = await gaugeReaches('operation_streams_open', 0, PROMPT_MS);
    expect(await client.metric('operation_requests_held')).toBe(0);
    console.log(
      `[beyond polling disconnect] held 3 -> 2 ${oneFreedMs} ms after one client aborted, -> 0 ${allFreedMs} ms after the rest; ` +
        `stream 1 -> 0 ${streamFreedMs} ms after its client aborted`,
    );
  }, TEST_TIMEOUT_MS);

  it('answers a held GET nothing ends after its N seconds with the latest state and Preference-Applied, and a terminal or unparsable-wait GET at once', async () => {
    expect((await client.create('times-out')).status).toBe(201);
    const timedOut = await client.get('times-out', { prefer: 'wait=1' });
    expect(timedOut.status).toBe(200);
    expect(timedOut.body).toMatchObject({ id: 'times-out', status: 'inprogress' });
    expect(timedOut.headers.get('preference-applied')).toBe('wait=1');
    expect(timedOut.headers.get('retry-after')).toBe('1');
    expect(timedOut.at - timedOut.sentAt).toBeGreaterThanOrEqual(1000);
    expect(timedOut.at - timedOut.sentAt).toBeLessThan(1000 + PROMPT_MS);

    const ignored = await client.get('times-out', { prefer: 'wait=abc' });
    expect(ignored.body.status).toBe('inprogress');
    expect(ignored.headers.get('preference-applied')).toBeNull();
    expect(ignored.at - ignored.sentAt).toBeLessThan(PROMPT_MS);

    // A terminal operation (canceled: no worker here) answers at once, unheld.
    expect((await client.cancel('times-out')).status).toBe(200);
    const terminal = await client.get('times-out', { prefer: 'wait=30' });
    expectCanceled(terminal.body, 'GET of the canceled operation');
    expect(terminal.headers.get('preference-applied')).toBeNull();
    expect(terminal.at - terminal.sentAt).toBeLessThan(PROMPT_MS);
    // A cancel of an unknown id is a 404.
    expect((await client.cancel('no-such-operation')).status).toBe(404);
  }, TEST_TIMEOUT_MS);
});

// ---- a three-master Redis Cluster ----

describe('on a three-master Redis Cluster', () => {
  const CLUSTER_DELAY_MS = 1000;
  const prefix = uniquePrefix();
  let cluster: RedisCluster;
  let nodeClient: Redis;
  let group: ProcessGroup;
  let baseUrl: string;
  let workers: RunningProcess[];
  /** One connection whose slot (and so whose changes channel) is on each master. */
  let connectionIds: string[];

  beforeAll(async () => {
    cluster = await startRedisCluster(3);
    group = new ProcessGroup(testServiceEnv(prefix, { REDIS_URL: cluster.url, ...fastRecoveryEnv }));
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    const [, worker] = await Promise.all([
      group.startApi('api', port, {}, START_TIMEOUT_MS),
      group.startWorker('cluster-worker', { PROCESSOR_URL: processor.urlFor('cluster-worker', CLUSTER_DELAY_MS) }, START_TIMEOUT_MS),
    ]);
    workers = [worker];
    nodeClient = new Redis({ port: cluster.nodes[0]!.port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    const byMaster = new Map<number, string>();
    for (let i = 0; byMaster.size < 3 && i < 200; i++) {
      const connectionId = `clusterwait${i}`;
      const slot = Number(await nodeClient.call('CLUSTER', 'KEYSLOT', `{${TENANT}|${connectionId}}`));
      const port = cluster.nodeOfSlot(slot).port;
      if (!byMaster.has(port)) byMaster.set(port, connectionId);
    }
    connectionIds = [...byMaster.values()];
  }, 90_000);

  afterAll(async () => {
    await group?.killAll();
    nodeClient?.disconnect();
    await cluster?.destroy();
  });

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(`[beyond polling cluster] output of the processes:\n${group.describe()}`));
  });

  it('answers Prefer: wait=30 GETs and creates with the completed state soon after the worker wrote it, on connections of all three masters', async () => {
    expect(connectionIds).toHaveLength(3);
    const results = await Promise.all(
      connectionIds.map(async (connectionId) => {
        const client = new ApiClient(baseUrl, connectionId);
        const getId = `${connectionId}-get`;
        const createId = `${connectionId}-create`;
        expect((await client.create(getId)).status).toBe(201);
        const [held, created] = await Promise.all([client.get(getId, { prefer: 'wait=30' }), client.create(createId, { prefer: 'wait=30' })]);
        return { connectionId, held, created };
      }),
    );
    const timings: string[] = [];
    for (const { connectionId, held, created } of results) {
      for (const [what, answer, status] of [['GET', held, 200], ['create', created, 201]] as const) {
        expect(answer.status, `${what} on ${connectionId}`).toBe(status);
        expect(answer.body.status, `${what} on ${connectionId}`).toBe('completed');
        expect(answer.headers.get('preference-applied'), `${what} on ${connectionId}`).toBe('wait=30');
        const call = callOf(answer.body.id)!;
        expect(answer.at, `${what} on ${connectionId} came after the processor answered`).toBeGreaterThanOrEqual(call.answeredAt!);
        const latency = answer.at - Date.parse(answer.body.lastActionDateTime);
        expect(latency, `${what} on ${connectionId}: ms from the worker's write to the answer`).toBeLessThan(ANNOUNCE_LATENCY_MS);
        timings.push(`${connectionId} ${what} ${latency} ms`);
      }
    }
    console.log(`[beyond polling cluster wait] answered after the worker's write: ${timings.join(', ')}`);
  }, TEST_TIMEOUT_MS);

  it('streams inprogress then completed and ends, on the cluster', async () => {
    const client = new ApiClient(baseUrl, connectionIds[1]!);
    expect((await client.create('cluster-streamed')).status).toBe(201);
    const stream = await client.stream('cluster-streamed');
    await endedAt(stream, 10_000);
    expect(stream.events.map((e) => e.data.status)).toEqual(['inprogress', 'completed']);
    expect(stream.events[1]!.at).toBeGreaterThanOrEqual(callOf('cluster-streamed')!.answeredAt!);
  }, TEST_TIMEOUT_MS);

  it('cancels an attempt on the cluster: the worker hears the cancel and aborts its processor request', async () => {
    const client = new ApiClient(baseUrl, connectionIds[2]!);
    expect((await client.create('cluster-canceled')).status).toBe(201);
    const call = await inFlightCall('cluster-canceled', group);
    const canceled = await client.cancel('cluster-canceled');
    expect(canceled.status).toBe(200);
    expectCanceled(canceled.body, 'the cancel answer');
    // The call lasts CLUSTER_DELAY_MS: aborted means the cancel reached the worker before that.
    const settled = await pollUntil(() => call.abortedAt ?? call.answeredAt, { timeoutMs: 5000, intervalMs: 10, what: 'the call to be aborted or answered' });
    expect(call.abortedAt, `the processor request was ${call.answeredAt ? 'answered, not aborted' : 'aborted'}`).toBe(settled);
    await workers[0]!.waitForLog((line) => line.msg === logMessage(CANCELED_WHILE_RUNNING) && line.operationId === 'cluster-canceled', 5000, 'the cancel');
    expectCanceled((await client.get('cluster-canceled')).body, 'GET');
  }, TEST_TIMEOUT_MS);
});
