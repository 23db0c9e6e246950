import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { activeTraceparent, tracingOn, tracingRequested } from '../src/shared/tracing.js';
import { deleteKeys, uniquePrefix } from './support/context.js';

/**
 * When tracing is on, and what it keeps with an operation. The traces themselves, across real
 * processes and a local OTLP receiver: test/tracing.processes.test.ts.
 */

describe('tracingRequested', () => {
  it('is on only with an OTLP endpoint, and off when the SDK or the trace exporter is disabled', () => {
    expect(tracingRequested({})).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: '' })).toBe(false);
    expect(tracingRequested({ OTEL_SERVICE_NAME: 'x', OTEL_TRACES_SAMPLER: 'always_on' })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'TRUE' })).toBe(false);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'false' })).toBe(true);
    expect(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' })).toBe(false);
  });

  it('is off in a process that did not start it: no traceparent is taken from a request', () => {
    expect(tracingOn()).toBe(false);
    expect(activeTraceparent()).toBeUndefined();
  });
});

describe("an operation's trace context in Redis", () => {
  const connection = { tenantId: 'tenant-a', connectionId: 'conn1' };
  const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
  const rules = { leaseMs: 60_000, attempts: 3, exhausted: { errorCode: 'processingInterrupted', message: 'spent', details: [] } };
  let redis: RedisClient;
  let prefix: string;
  let store: OperationStore;

  beforeEach(async () => {
    redis = createRedis({ url: inject('redisUrl'), role: 'consumer' });
    await waitUntilReady(redis);
    prefix = uniquePrefix();
    store = new OperationStore(redis, { prefix, retentionMs: 60_000 });
  });
  afterEach(async () => {
    await deleteKeys(redis, prefix);
    await redis.quit();
  });

  it("keeps each create's traceparent with its operation, and every claim of an attempt returns it", async () => {
    const { results } = await store.createMany(connection, ['a', 'b', 'c'], 'batch~1', [traceparent, undefined, traceparent.replace('b7ad', 'c8be')]);
    expect(results).toEqual(['created', 'created', 'created']);
    const claims = await store.claim(connection, 'batch~1', [{ operationId: 'a', holder: 'h1' }, { operationId: 'b', holder: 'h2' }, { operationId: 'c', holder: 'h3' }], rules);
    expect(claims).toEqual([
      { kind: 'claimed', attempt: 1, task: { kind: 'operation' }, traceparent },
      { kind: 'claimed', attempt: 1, task: { kind: 'operation' } },
      { kind: 'claimed', attempt: 1, task: { kind: 'operation' }, traceparent: traceparent.replace('b7ad', 'c8be') },
    ]);
    // A retry's attempt (its own job, another holder) continues the same trace.
    await store.finishMany(connection, [{ operationId: 'a', holder: 'h1', status: 'retry' }]);
    expect(await store.claim(connection, '', [{ operationId: 'a', holder: 'h4' }], rules)).toEqual([
      { kind: 'claimed', attempt: 2, task: { kind: 'operation' }, traceparent },
    ]);
  });

  it('writes no trace field when tracing is off, so an operation costs the same bytes as before', async () => {
    await store.createMany(connection, ['plain'], 'batch~2');
    const ref = { ...connection, operationId: 'plain' };
    expect(Object.keys(await redis.hgetall(store.keys.operation(ref))).sort()).toEqual(['c', 'j', 's', 'u']);
  });
});
