import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { OperationWatch, holdUntilEnded } from '../src/api/operation-watch.js';
import { MAX_WAIT_SECONDS, preferredWaitSeconds } from '../src/api/prefer.js';
import type { ErrorDetail, Operation, OperationRef, TerminalStatus } from '../src/shared/operation.js';
import { createRedis } from '../src/shared/redis.js';
import { Subscriber } from '../src/shared/subscriber.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { Attempts } from '../src/worker/attempts.js';
import { OperationCanceled, type Processor } from '../src/worker/processor.js';
import { createApiContext, signToken, silentLog, TENANT, type ApiContext } from './support/context.js';
import { pollUntil, sleep } from './support/wait.js';

/**
 * Waiting, streaming and cancelling, in process against the suite's real Redis: the app answers
 * through app.request, operations are finished by the store's own scripts (as a worker would,
 * over another connection's pub/sub announcement), and cancels reach a real in-process worker.
 * test/beyond-polling.processes.test.ts runs the same across real processes.
 */

const CONNECTION = 'waitconn';
const BASE = `/v1.0/external/connections/${CONNECTION}/operations`;
const KEEP_ALIVE_MS = 150;

let ctx: ApiContext;
beforeAll(async () => {
  ctx = await createApiContext({ STREAM_KEEP_ALIVE_MS: String(KEEP_ALIVE_MS) });
});
afterAll(async () => {
  await ctx.close();
});

let sequence = 0;
/** Creates an inprogress operation through the API; returns its ref. */
async function created(): Promise<OperationRef> {
  const operationId = `op-${++sequence}-${Date.now()}`;
  const response = await ctx.post(BASE, { id: operationId });
  expect(response.status).toBe(201);
  return { tenantId: TENANT, connectionId: CONNECTION, operationId };
}

const finishSoon = (ref: OperationRef, ms: number) => setTimeout(() => void ctx.store.finish(ref, 'completed'), ms);

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
  ms: number;
}
async function timed(request: Promise<Response>): Promise<Answer> {
  const started = Date.now();
  const response = await request;
  const body = (await response.json()) as Record<string, unknown>;
  return { status: response.status, headers: response.headers, body, ms: Date.now() - started };
}

describe('the wait preference (RFC 7240)', () => {
  it.each([
    ['wait=5', 5],
    ['WAIT = 7', 7],
    ['respond-async, wait=10', 10],
    ['wait="12"', 12],
    ['wait=10; foo=bar', 10],
    ['handling=lenient, wait=3, wait=9', 3],
    ['foo="a, wait=2", wait=4', 4],
    ['wait=61', MAX_WAIT_SECONDS],
    ['wait=99999', MAX_WAIT_SECONDS],
  ])('reads %s as %s seconds', (header, seconds) => {
    expect(preferredWaitSeconds(header)).toBe(seconds);
  });

  it.each(['', 'respond-async', 'wait', 'wait=', 'wait=0', 'wait=-1', 'wait=1.5', 'wait=abc', 'wait=5s', 'nowait=5'])('ignores %j', (header) => {
    expect(preferredWaitSeconds(header)).toBeUndefined();
  });

  it('never throws and never yields anything but undefined or whole seconds from 1 to 60, whatever the header', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (header) => {
        const seconds = preferredWaitSeconds(header);
        return seconds === undefined || (Number.isInteger(seconds) && seconds >= 1 && seconds <= MAX_WAIT_SECONDS);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('Prefer: wait', () => {
  afterEach(() => {
    expect(ctx.watch.size).toBe(0);
  });

  it('holds a GET until the operation ends, then answers its terminal state with Preference-Applied', async () => {
    const ref = await created();
    finishSoon(ref, 300);
    const answer = await timed(ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=10' } }));
    expect(answer.status).toBe(200);
    expect(answer.body.status).toBe('completed');
    expect(answer.headers.get('preference-applied')).toBe('wait=10');
    expect(answer.headers.get('retry-after')).toBeNull();
    expect(answer.ms).toBeGreaterThanOrEqual(250);
    expect(answer.ms).toBeLessThan(5000);
  });

  it('holds a create until the operation ends: 201, Location, the terminal state', async () => {
    const operationId = `created-held-${Date.now()}`;
    finishSoon({ tenantId: TENANT, connectionId: CONNECTION, operationId }, 300);
    const answer = await timed(ctx.post(BASE, { id: operationId }, { prefer: 'wait=10' }));
    expect(answer.status).toBe(201);
    expect(answer.headers.get('location')).toMatch(new RegExp(`${BASE}/${operationId}$`));
    expect(answer.body).toMatchObject({ id: operationId, status: 'completed' });
    expect(answer.headers.get('preference-applied')).toBe('wait=10');
  });

  it('answers the latest state after the wait when the operation is still inprogress, with the polling hint', async () => {
    const ref = await created();
    const answer = await timed(ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=1' } }));
    expect(answer.body.status).toBe('inprogress');
    expect(answer.headers.get('preference-applied')).toBe('wait=1');
    expect(answer.headers.get('retry-after')).toBe('1');
    expect(answer.ms).toBeGreaterThanOrEqual(950);
  });

  it('answers a terminal operation at once, and ignores an invalid wait', async () => {
    const ref = await created();
    await ctx.store.finish(ref, 'completed');
    const ended = await timed(ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=30' } }));
    expect(ended.body.status).toBe('completed');
    expect(ended.headers.get('preference-applied')).toBeNull();
    expect(ended.ms).toBeLessThan(1000);

    const pending = await created();
    const ignored = await timed(ctx.request(`${BASE}/${pending.operationId}`, { headers: { prefer: 'wait=soon' } }));
    expect(ignored.body.status).toBe('inprogress');
    expect(ignored.headers.get('preference-applied')).toBeNull();
    expect(ignored.ms).toBeLessThan(1000);
  });

  it('holds many requests for one operation on one subscription, and leaves the channel when the last one is answered', async () => {
    const ref = await created();
    const held = Array.from({ length: 20 }, () => timed(ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=10' } })));
    await pollUntil(() => ctx.watch.size === 20, { timeoutMs: 5000, what: `watching ${ctx.watch.size}` });
    expect(ctx.watch.channelCount).toBe(1);
    await ctx.store.finish(ref, 'failed', { errorCode: 'nope', message: 'refused', details: [] });
    for (const answer of await Promise.all(held)) expect(answer.body).toMatchObject({ status: 'failed', error: { errorCode: 'nope' } });
    expect(ctx.watch.channelCount).toBe(0);
  });

  it('frees the waiter of a client that went away at once', async () => {
    const ref = await created();
    const client = new AbortController();
    const request = ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=30' }, signal: client.signal });
    await pollUntil(() => ctx.watch.size === 1, { timeoutMs: 5000, what: 'the request was never held' });
    client.abort();
    await request.catch(() => undefined);
    await pollUntil(() => ctx.watch.size === 0, { timeoutMs: 200, what: 'the waiter outlived its client' });
    expect(ctx.watch.channelCount).toBe(0);
  });

  it('never misses a transition between the first read and the subscription', async () => {
    // The operation ends after the handler's read and before its channel is subscribed: the
    // announcement reaches nobody, and only the read after subscribing can tell.
    const ref = await created();
    const subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
    const listen = subscriber.listen.bind(subscriber);
    subscriber.listen = async (...args) => {
      await ctx.store.finish(ref, 'completed');
      return listen(...args);
    };
    const watch = new OperationWatch(ctx.store, subscriber, silentLog, 2000);
    const inprogress = (await ctx.store.get(ref)) as Operation;
    expect(inprogress.status).toBe('inprogress');
    const started = Date.now();
    const held = await holdUntilEnded(watch, inprogress, ref, 5, new AbortController().signal, ctx.store);
    expect(held?.operation.status).toBe('completed');
    expect(Date.now() - started).toBeLessThan(2000);
    await subscriber.close();
  });

  it('never misses a transition announced while its pub/sub connection was down: it reads again after resubscribing', async () => {
    const name = `watch-reconnect-${Date.now()}`;
    const subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber', connectionName: name }), silentLog);
    const watch = new OperationWatch(ctx.store, subscriber, silentLog, 2000);
    const ref = await created();
    const inprogress = (await ctx.store.get(ref)) as Operation;
    const held = holdUntilEnded(watch, inprogress, ref, 20, new AbortController().signal, ctx.store);
    await pollUntil(() => watch.size === 1, { timeoutMs: 5000, what: 'the request to be held' });
    // Cut the subscriber's connection, and end the operation before it is back: the
    // announcement reaches nobody.
    const clients = (await ctx.redis.call('CLIENT', 'LIST')) as string;
    const id = /id=(\d+) [^\n]*name=(\S+)/g;
    const ours = [...clients.matchAll(id)].find((match) => match[2] === name)?.[1];
    expect(ours).toBeDefined();
    await ctx.redis.call('CLIENT', 'KILL', 'ID', ours!);
    await ctx.store.finish(ref, 'completed');
    const started = Date.now();
    const answer = await held;
    expect(answer?.operation.status).toBe('completed');
    expect(Date.now() - started).toBeLessThan(5000);
    await subscriber.close();
  });

  it('answers every held request with the current state when the watch closes (shutdown)', async () => {
    const subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
    const watch = new OperationWatch(ctx.store, subscriber, silentLog, 2000);
    const refs = await Promise.all([created(), created(), created()]);
    const operations = await Promise.all(refs.map(async (ref) => (await ctx.store.get(ref)) as Operation));
    const held = refs.map((ref, i) => holdUntilEnded(watch, operations[i]!, ref, 30, new AbortController().signal, ctx.store));
    await pollUntil(() => watch.size === 3, { timeoutMs: 5000, what: `held ${watch.size}` });
    await ctx.store.finish(refs[0], 'completed');
    await pollUntil(() => watch.size === 2, { timeoutMs: 5000, what: 'the finished one was not answered' });
    const started = Date.now();
    watch.close();
    const answers = await Promise.all(held);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(answers.map((answer) => answer?.operation.status)).toEqual(['completed', 'inprogress', 'inprogress']);
    await expect(watch.watch({ ref: refs[1], ended: () => undefined, closing: () => undefined })).rejects.toThrow(/shutting down/);
    await subscriber.close();
  });
});

/** Reads a server-sent event stream to its end: its events' data, and the comment lines seen. */
async function readStream(response: Response): Promise<{ events: Record<string, unknown>[]; comments: number; raw: string }> {
  const raw = await response.text();
  const events = raw
    .split('\n\n')
    .filter((block) => block.startsWith('event: operation\n'))
    .map((block) => JSON.parse(block.slice(block.indexOf('data: ') + 6)) as Record<string, unknown>);
  return { events, comments: raw.split('\n').filter((line) => line.startsWith(':')).length, raw };
}

describe('the event stream', () => {
  it('sends the current state at once, one event per change, keep-alive comments, and ends after the terminal event', async () => {
    const ref = await created();
    finishSoon(ref, 4 * KEEP_ALIVE_MS);
    const response = await ctx.request(`${BASE}/${ref.operationId}`, { headers: { accept: 'text/event-stream' } });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('text/event-stream');
    expect(response.headers.get('request-id')).toBeTruthy();
    const { events, comments } = await readStream(response);
    expect(events.map((event) => event.status)).toEqual(['inprogress', 'completed']);
    expect(events[1]).toMatchObject({ '@odata.type': '#microsoft.graph.connectionOperation', id: ref.operationId, error: null });
    expect(comments).toBeGreaterThanOrEqual(2);
    expect(ctx.watch.size).toBe(0);
  });

  it('sends one event and ends for a terminal operation', async () => {
    const ref = await created();
    await ctx.store.finish(ref, 'failed', { errorCode: 'bad', message: 'no', details: [] });
    const { events } = await readStream(await ctx.request(`${BASE}/${ref.operationId}`, { headers: { accept: 'text/event-stream' } }));
    expect(events).toEqual([expect.objectContaining({ status: 'failed', error: expect.objectContaining({ errorCode: 'bad' }) as unknown })]);
  });

  it('answers 404 for an unknown operation, as the GET does', async () => {
    const response = await ctx.request(`${BASE}/nosuch`, { headers: { accept: 'text/event-stream' } });
    expect(response.status).toBe(404);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('itemNotFound');
  });

  it('frees its watcher when the client stops reading', async () => {
    const ref = await created();
    const response = await ctx.request(`${BASE}/${ref.operationId}`, { headers: { accept: 'text/event-stream' } });
    const reader = response.body!.getReader();
    await reader.read(); // the first event
    await pollUntil(() => ctx.watch.size === 1, { timeoutMs: 5000, what: 'the stream never watched' });
    await reader.cancel();
    await pollUntil(() => ctx.watch.size === 0, { timeoutMs: 200, what: 'the stream outlived its reader' });
  });
});

describe('cancel', () => {
  it('fails an inprogress operation at once with operationCanceled, and answers a held request with it', async () => {
    const ref = await created();
    const held = timed(ctx.request(`${BASE}/${ref.operationId}`, { headers: { prefer: 'wait=10' } }));
    await pollUntil(() => ctx.watch.size === 1, { timeoutMs: 5000, what: 'never held' });
    const canceled = await timed(ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST' }));
    expect(canceled.status).toBe(200);
    const error = { errorCode: 'operationCanceled', code: 'operationCanceled', message: expect.any(String) as unknown, details: [] };
    expect(canceled.body).toMatchObject({ id: ref.operationId, status: 'failed', error });
    expect((await held).body).toMatchObject({ status: 'failed', error });
    expect(await ctx.store.get(ref)).toMatchObject({ status: 'failed', error });
  });

  it('answers 200 again for an operation already canceled, and 409 for one that ended otherwise', async () => {
    const ref = await created();
    expect((await ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST' })).status).toBe(200);
    const again = await timed(ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST' }));
    expect(again.status).toBe(200);
    expect(again.body).toMatchObject({ status: 'failed', error: { errorCode: 'operationCanceled' } });

    const endings: [TerminalStatus, ErrorDetail | undefined][] = [
      ['completed', undefined],
      ['failed', { errorCode: 'invalidItem', message: 'no title', details: [] }],
    ];
    for (const [status, error] of endings) {
      const ended = await created();
      await ctx.store.finish(ended, status, error);
      const refused = await timed(ctx.request(`${BASE}/${ended.operationId}/cancel`, { method: 'POST' }));
      expect(refused.status).toBe(409);
      expect(refused.body).toMatchObject({ error: { code: 'conflict', message: expect.stringContaining(`already ${status}`) as unknown } });
      expect((await ctx.store.get(ended))?.status).toBe(status);
    }
  });

  it('answers 404 for an unknown operation and 403 without a write permission', async () => {
    expect((await ctx.request(`${BASE}/nosuch/cancel`, { method: 'POST' })).status).toBe(404);
    const ref = await created();
    const reader = await signToken({ scp: 'ExternalConnection.Read.All' });
    const refused = await ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST', headers: { authorization: `Bearer ${reader}` } });
    expect(refused.status).toBe(403);
    expect((await ctx.store.get(ref))?.status).toBe('inprogress');
  });

  it('has one winner when it races a finish, and its answer tells the truth, every time', async () => {
    for (let round = 0; round < 100; round++) {
      const ref = await created();
      const [cancel] = await Promise.all([
        ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST' }),
        ctx.store.finish(ref, 'completed'),
      ]);
      const stored = await ctx.store.get(ref);
      if (cancel.status === 200) expect(stored).toMatchObject({ status: 'failed', error: { errorCode: 'operationCanceled' } });
      else expect([cancel.status, stored?.status]).toEqual([409, 'completed']);
    }
  });
});

describe('cancel reaches the attempt', () => {
  let worker: OperationWorker | undefined;
  let subscriber: Subscriber | undefined;
  afterEach(async () => {
    await worker?.close(1000);
    await subscriber?.close();
  });

  it('aborts the processor signal of the running attempt with OperationCanceled, and no attempt follows', async () => {
    const calls: { id: string; reason?: unknown }[] = [];
    const target = `cancel-target-${Date.now()}`;
    const processor: Processor = ({ operation, signal }) => {
      // The operations earlier tests left inprogress are completed at once.
      if (operation.id !== target) return Promise.resolve();
      const call: { id: string; reason?: unknown } = { id: operation.id };
      calls.push(call);
      return new Promise((_, reject) => {
        signal.addEventListener('abort', () => {
          call.reason = signal.reason;
          reject(new Error('aborted'));
        });
      });
    };
    const redis = createRedis({ url: ctx.config.REDIS_URL, role: 'consumer' });
    subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
    worker = createWorker({
      connection: redis,
      store: ctx.store,
      queue: ctx.queue,
      processor,
      config: { ...ctx.config, OPERATION_ATTEMPTS: 3, WORKER_CONCURRENCY: 2 },
      log: silentLog,
      subscriber,
    });
    await worker.hearingCancels;
    expect((await ctx.post(BASE, { id: target })).status).toBe(201);
    const ref = { tenantId: TENANT, connectionId: CONNECTION, operationId: target };
    await pollUntil(() => calls.length === 1, { timeoutMs: 10_000, what: 'the processor was never called' });
    const canceled = await ctx.request(`${BASE}/${ref.operationId}/cancel`, { method: 'POST' });
    expect(canceled.status).toBe(200);
    const reason = await pollUntil(() => calls[0]?.reason, { timeoutMs: 2000, what: 'the processor signal to be aborted' });
    expect(reason).toBeInstanceOf(OperationCanceled);
    await sleep(300); // past OPERATION_BACKOFF_MS (20 ms) several times over
    expect(calls).toHaveLength(1);
    expect(await ctx.store.get(ref)).toMatchObject({ status: 'failed', error: { errorCode: 'operationCanceled' } });
    await worker.close(1000);
    worker = undefined;
    await redis.quit();
  });

  it('keeps a cancel that arrives before its claim does, and the attempt is born aborted', async () => {
    // The cancel's message and the claim's reply come on two connections: the cancel may win.
    const ref = await created();
    const store = {
      claim: async (...args: Parameters<typeof ctx.store.claim>) => {
        const results = await ctx.store.claim(...args);
        attempts.abort(args[2][0]!.holder, new OperationCanceled());
        return results;
      },
      finishMany: ctx.store.finishMany.bind(ctx.store),
      renewLeases: ctx.store.renewLeases.bind(ctx.store),
    };
    const attempts: Attempts = new Attempts(store, { leaseMs: 30_000, attempts: 3, exhausted: { errorCode: 'x', message: 'x', details: [] } }, silentLog);
    const claim = await attempts.claim(ref, (await ctx.store.batchJobOf(ref)) ?? '');
    attempts.stop();
    expect(claim.kind).toBe('claimed');
    if (claim.kind !== 'claimed') return;
    expect(claim.signal.aborted).toBe(true);
    expect(claim.abortReason).toBeInstanceOf(OperationCanceled);
  });

  it("takes a lease renewal that finds its operation canceled as the cancel, when the cancel's message has not come", async () => {
    // A renewal can run between the cancel's write and its message (seen on a loaded machine):
    // the attempt must end as canceled, not as a lost lease whose processor error is retried.
    const ref = await created();
    const leaseMs = 200;
    const attempts = new Attempts(ctx.store, { leaseMs, attempts: 3, exhausted: { errorCode: 'x', message: 'x', details: [] } }, silentLog);
    try {
      const claim = await attempts.claim(ref, (await ctx.store.batchJobOf(ref)) ?? '');
      expect(claim.kind).toBe('claimed');
      if (claim.kind !== 'claimed') return;
      // These attempts hear no cancel channel: only the renewal can notice.
      expect(await ctx.store.cancel(ref, { errorCode: 'operationCanceled', message: 'canceled', details: [] })).toMatchObject({ result: 'canceled' });
      await pollUntil(() => claim.signal.aborted, { timeoutMs: 5 * leaseMs, what: 'the renewal to abort the attempt' });
      expect(claim.abortReason).toBeInstanceOf(OperationCanceled);
    } finally {
      attempts.stop();
    }
  });
});
