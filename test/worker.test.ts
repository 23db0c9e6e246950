import { createHmac } from 'node:crypto';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Operation } from '../src/shared/operation.js';
import { OperationQueue } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { OperationFailure, type Processor } from '../src/worker/processor.js';
import { completeEverything } from '../src/worker/processors/builtin.js';
import { httpProcessor } from '../src/worker/processors/http.js';
import { loadModuleProcessor } from '../src/worker/processors/module.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { deleteKeys, silentLog, testConfig } from './support/context.js';
import { pollUntil } from './support/wait.js';

type Handler = (body: Record<string, unknown>, req: IncomingMessage, res: ServerResponse) => void;

/** A real local HTTP server standing in for the processor endpoint. */
async function startProcessorServer(handler: Handler) {
  const requests: { body: Record<string, unknown>; signature: string | undefined; raw: string }[] = [];
  const server: Server = createServer((req, res) => {
    let raw = '';
    req.on('data', (chunk: Buffer) => (raw += chunk.toString()));
    req.on('end', () => {
      const body = JSON.parse(raw) as Record<string, unknown>;
      requests.push({ body, raw, signature: req.headers['x-signature'] as string | undefined });
      handler(body, req, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/process`;
  const close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections(); // requests left hanging on purpose end here
    });
  return { url, requests, close };
}

function json(res: ServerResponse, status: number, body?: unknown) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(body === undefined ? '' : JSON.stringify(body));
}

let redis: RedisClient;
let store: OperationStore;
let queue: OperationQueue;
let worker: OperationWorker | undefined;
let config: ReturnType<typeof testConfig>;
const closers: (() => Promise<void>)[] = [];

beforeEach(async () => {
  config = testConfig({ OPERATION_ATTEMPTS: '3', OPERATION_BACKOFF_MS: '10', WORKER_CONCURRENCY: '4' });
  redis = createRedis({ url: config.REDIS_URL, role: 'consumer' });
  await waitUntilReady(redis);
  store = new OperationStore(redis, { prefix: config.REDIS_PREFIX, retentionMs: 60_000 });
  queue = new OperationQueue(redis, config.REDIS_PREFIX, { attempts: 3, backoffMs: 10 }, silentLog);
});
afterEach(async () => {
  await worker?.close(1000);
  worker = undefined;
  for (const close of closers.splice(0)) await close();
  await queue.close();
  await deleteKeys(redis, config.REDIS_PREFIX);
  await redis.quit();
});

function startWorker(processor: Processor) {
  worker = createWorker({ connection: redis, store, queue, processor, config, log: silentLog });
}

const TENANT = 'tenant-a';
async function submit(operationId: string) {
  const ref = { tenantId: TENANT, connectionId: 'conn1', operationId };
  await store.create(ref);
  await queue.enqueue(ref);
  return ref;
}

async function terminal(operationId: string, timeoutMs = 10_000): Promise<Operation> {
  const ref = { tenantId: TENANT, connectionId: 'conn1', operationId };
  return pollUntil(
    async () => {
      const operation = await store.get(ref);
      return operation && operation.status !== 'inprogress' ? operation : undefined;
    },
    { timeoutMs, intervalMs: 20, what: `operation ${operationId} to finish`, context: async () => `status: ${(await store.get(ref))?.status}` },
  );
}

describe('the HTTP processor', () => {
  it('completes an operation when the endpoint answers 200, with a signed body', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => json(res, 200));
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, secret: 's3cret', timeoutMs: 2000 }));
    await submit('ok-1');
    expect(await terminal('ok-1')).toMatchObject({ status: 'completed', error: null });
    const [request] = endpoint.requests;
    expect(request?.body).toEqual({
      kind: 'operation',
      tenantId: TENANT,
      connectionId: 'conn1',
      operation: { id: 'ok-1', status: 'inprogress', error: null },
      attempt: 1,
    });
    expect(request?.signature).toBe(`sha256=${createHmac('sha256', 's3cret').update(request!.raw).digest('hex')}`);
  });

  it('handles an operation whose client id is made only of digits', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => json(res, 204));
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('20261129');
    expect(await terminal('20261129')).toMatchObject({ status: 'completed' });
    expect(endpoint.requests[0]?.signature).toBeUndefined();
  });

  it('fails at once with the code, message, target and details of a 4xx Graph error, stored as both error models', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) =>
      json(res, 422, {
        error: { code: 'invalidItem', message: 'The item has no title', target: 'item', details: [{ code: 'required', message: 'no title', target: 'title' }] },
      }),
    );
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('graph-4xx');
    const operation = await terminal('graph-4xx');
    expect(operation.status).toBe('failed');
    expect(operation.error).toEqual({
      errorCode: 'invalidItem',
      code: 'invalidItem',
      message: 'The item has no title',
      target: 'item',
      details: [{ source: 'title', target: 'title', code: 'required', message: 'no title' }],
    });
    expect(endpoint.requests).toHaveLength(1);
  });

  it('fails at once with an errorDetail body of a 4xx answer, stored as both error models', async () => {
    const detail = { errorCode: 'schemaMismatch', message: 'Property title is missing', details: [{ source: 'title', message: 'required' }] };
    const endpoint = await startProcessorServer((_body, _req, res) => json(res, 400, detail));
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('detail-4xx');
    const operation = await terminal('detail-4xx');
    expect(operation.status).toBe('failed');
    expect(operation.error).toEqual({
      errorCode: 'schemaMismatch',
      code: 'schemaMismatch',
      message: 'Property title is missing',
      details: [{ source: 'title', target: 'title', message: 'required' }],
    });
    expect(endpoint.requests).toHaveLength(1);
  });

  it('records the status and body of a 4xx answer that is neither shape', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('no such route');
    });
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('plain-4xx');
    const operation = await terminal('plain-4xx');
    expect(operation.error).toMatchObject({ errorCode: 'processorRejected' });
    expect(operation.error?.message).toMatch(/404 Not Found: no such route/);
  });

  it('retries a 503 and completes when the endpoint recovers', async () => {
    const endpoint = await startProcessorServer((body, _req, res) => json(res, body.attempt === 1 ? 503 : 200));
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('flaky');
    expect(await terminal('flaky')).toMatchObject({ status: 'completed' });
    expect(endpoint.requests.map((r) => r.body.attempt)).toEqual([1, 2]);
  });

  it('fails after the last attempt of an endpoint that always answers 503, saying what happened', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => json(res, 503));
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 2000 }));
    await submit('down');
    const operation = await terminal('down');
    expect(operation.error).toEqual({
      errorCode: 'processorUnavailable',
      code: 'processorUnavailable',
      message: 'Processing failed after 3 attempts: the processor answered 503 Service Unavailable',
      details: [],
    });
    expect(endpoint.requests.map((r) => r.body.attempt)).toEqual([1, 2, 3]);
  });

  it('retries 429 and timeouts, and names a timeout in the errorDetail', async () => {
    const endpoint = await startProcessorServer((body, _req, res) => {
      if (body.attempt === 1) json(res, 429);
      // Later attempts never answer in time.
    });
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 200 }));
    await submit('slow');
    const operation = await terminal('slow');
    expect(operation.error?.errorCode).toBe('processorTimeout');
    expect(operation.error?.message).toMatch(/did not answer within 200 ms/);
  });

  it('bounds the whole attempt by the timeout, also a body that never ends', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => {
      // The status arrives at once; the body starts and never finishes.
      res.writeHead(422, { 'content-type': 'application/json' });
      res.write('{"errorCode":"inval');
    });
    closers.push(endpoint.close);
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 300 }));
    await submit('trickle');
    // The cut body reads as empty: the 422 decides, without the processor's errorDetail.
    expect((await terminal('trickle')).error).toMatchObject({ errorCode: 'processorRejected', message: 'the processor answered 422 Unprocessable Entity' });
    expect(endpoint.requests).toHaveLength(1);
  });

  it('fails with processorUnreachable when nothing listens at the URL', async () => {
    const endpoint = await startProcessorServer((_body, _req, res) => json(res, 200));
    await endpoint.close();
    startWorker(httpProcessor({ url: endpoint.url, timeoutMs: 500 }));
    await submit('nobody');
    expect((await terminal('nobody')).error).toMatchObject({ errorCode: 'processorUnreachable' });
  });
});

describe('the worker', () => {
  it('processes a batch job, failing, completing and retrying each operation on its own', async () => {
    const ids = ['b-ok', 'b-bad', 'b-flaky', 'b-done'];
    const connection = { tenantId: TENANT, connectionId: 'conn1' };
    const { results } = await store.createMany(connection, ids, 'batch~test');
    expect(results).toEqual(['created', 'created', 'created', 'created']);
    await store.finish({ ...connection, operationId: 'b-done' }, 'completed');
    const calls: string[] = [];
    startWorker(async ({ operation, attempt }) => {
      calls.push(`${operation.id}#${attempt}`);
      if (operation.id === 'b-bad') throw new OperationFailure({ errorCode: 'bad', message: 'bad item', details: [] });
      if (operation.id === 'b-flaky' && attempt === 1) throw new Error('try again');
    });
    await queue.enqueueBatch('batch~test', ids.map((operationId) => ({ ...connection, operationId })));
    expect(await terminal('b-ok')).toMatchObject({ status: 'completed' });
    expect(await terminal('b-bad')).toMatchObject({ status: 'failed', error: { errorCode: 'bad' } });
    expect(await terminal('b-flaky')).toMatchObject({ status: 'completed' });
    expect(calls.sort()).toEqual(['b-bad#1', 'b-flaky#1', 'b-flaky#2', 'b-ok#1']);
  });

  it('fails a batched operation after its last attempt, counting the batch attempt', async () => {
    const connection = { tenantId: TENANT, connectionId: 'conn1' };
    await store.createMany(connection, ['always-down'], 'batch~down');
    const attempts: number[] = [];
    startWorker(async ({ attempt }) => {
      attempts.push(attempt);
      throw new Error('still down');
    });
    await queue.enqueueBatch('batch~down', [{ ...connection, operationId: 'always-down' }]);
    expect((await terminal('always-down')).error?.message).toBe('Processing failed after 3 attempts: still down');
    expect(attempts).toEqual([1, 2, 3]);
  });


  it('never hands a terminal operation to the processor, completed or failed, carried by its own job or a batch job', async () => {
    const connection = { tenantId: TENANT, connectionId: 'conn1' };
    const refOf = (operationId: string) => ({ ...connection, operationId });
    const failure = { errorCode: 'earlier', message: 'failed before', details: [] };
    // Own jobs, enqueued while inprogress, then finished before a worker takes them.
    for (const id of ['done-own', 'failed-own']) await submit(id);
    await store.finish(refOf('done-own'), 'completed');
    await store.finish(refOf('failed-own'), 'failed', failure);
    // A batch job carrying two terminal operations beside one to process.
    const batch = ['done-batch', 'failed-batch', 'fresh-batch'];
    await store.createMany(connection, batch, 'batch~terminal');
    await store.finish(refOf('done-batch'), 'completed');
    await store.finish(refOf('failed-batch'), 'failed', failure);
    await queue.enqueueBatch('batch~terminal', batch.map(refOf));
    await submit('fresh');

    const seen: string[] = [];
    startWorker(async ({ operation }) => void seen.push(operation.id));
    await terminal('fresh');
    await terminal('fresh-batch');
    // Every job handled, so none of them can still reach the processor.
    await pollUntil(async () => Object.values(await queue.counts('waiting', 'active', 'delayed')).every((n) => n === 0), {
      timeoutMs: 10_000,
      what: 'every job to be handled',
    });
    expect(seen.sort()).toEqual(['fresh', 'fresh-batch']);
    // And their statuses are the ones they had.
    expect(await store.get(refOf('done-own'))).toMatchObject({ status: 'completed', error: null });
    expect(await store.get(refOf('failed-batch'))).toMatchObject({ status: 'failed', error: failure });
  });

  it('completes operations with the built-in processor', async () => {
    startWorker(completeEverything);
    await submit('builtin');
    expect(await terminal('builtin')).toMatchObject({ status: 'completed' });
  });

  it('loads a JS module processor and records its permanent failure', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-module-'));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'processor.mjs');
    writeFileSync(
      path,
      `export default async function ({ operation }) {
         if (operation.id.startsWith('bad')) {
           throw Object.assign(new Error('nope'), { errorDetail: { errorCode: 'moduleSaidNo', message: 'bad item' } });
         }
       }`,
    );
    startWorker(await loadModuleProcessor(path));
    await submit('good');
    await submit('bad-1');
    expect(await terminal('good')).toMatchObject({ status: 'completed' });
    expect(await terminal('bad-1')).toMatchObject({ status: 'failed', error: { errorCode: 'moduleSaidNo', message: 'bad item', details: [] } });
  });

  it('loads a TypeScript module processor', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-module-'));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'processor.ts');
    writeFileSync(path, `export default async function (input: { attempt: number }): Promise<void> { if (input.attempt < 2) throw new Error('first try fails'); }`);
    startWorker(await loadModuleProcessor(path));
    await submit('typed');
    expect(await terminal('typed')).toMatchObject({ status: 'completed' });
  });

  it('refuses a module without a default export function', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cops-module-'));
    closers.push(async () => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'empty.mjs');
    writeFileSync(path, 'export const notIt = 1;');
    await expect(loadModuleProcessor(path)).rejects.toThrow(/default export must be the processor function/);
  });
});

describe('finished jobs', () => {
  it('keeps completed batch jobs, named with their size, but no completed own job that would swallow the next one', async () => {
    const connection = { tenantId: TENANT, connectionId: 'conn1' };
    const ref = { ...connection, operationId: 'handed-over' };
    await store.createMany(connection, [ref.operationId], 'batch~kept');
    // An own job while the batch still carries the operation (as a reconciler racing the batch
    // would add): it finds the operation elsewhere and completes without running it.
    await queue.enqueue(ref);
    const attempts: number[] = [];
    startWorker(async ({ attempt }) => {
      attempts.push(attempt);
      if (attempt === 1) throw new Error('try again');
    });
    /** The own job's state once it is neither waiting nor running. */
    const ownJobOnceDone = async () => {
      for (const deadline = Date.now() + 10_000; ['waiting', 'active'].includes(await queue.stateOfOwnJob(ref)); ) {
        if (Date.now() > deadline) throw new Error(`the own job is still ${await queue.stateOfOwnJob(ref)}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      return queue.stateOfOwnJob(ref);
    };
    expect(await ownJobOnceDone()).toBe('unknown');
    expect(attempts).toEqual([]);

    // The batch's first attempt fails and hands the operation to its own job: the same job id as
    // the one that completed, so a kept completed job would make BullMQ ignore this add.
    await queue.enqueueBatch('batch~kept', [ref]);
    expect(await terminal(ref.operationId)).toMatchObject({ status: 'completed' });
    expect(attempts).toEqual([1, 2]);
    // The operation is terminal before BullMQ completes the job that ran it (its outcome is
    // written first): once the job is done, none is kept.
    expect(await ownJobOnceDone()).toBe('unknown');

    const batch = await queue.queueOfJob('batch~kept').getJob('batch~kept');
    expect(await batch?.getState()).toBe('completed');
    expect(batch?.name).toBe('process-batch (1 operation)');
    expect(batch?.data).toEqual({ batch: [ref] });
  });
});
