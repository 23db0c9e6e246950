import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { deleteKeys, uniquePrefix } from './support/context.js';

const connection = { tenantId: 'tenant-a', connectionId: 'conn1' };
const ref = (operationId: string) => ({ ...connection, operationId });

let redis: RedisClient;
let prefix: string;
let clock: number;
let store: OperationStore;

function newStore(retentionMs = 60_000) {
  return new OperationStore(redis, { prefix, retentionMs, now: () => clock });
}

beforeEach(async () => {
  redis = createRedis({ url: inject('redisUrl'), role: 'consumer' });
  await waitUntilReady(redis);
  prefix = uniquePrefix();
  clock = 1_700_000_000_000;
  store = newStore();
});
afterEach(async () => {
  await deleteKeys(redis, prefix);
  await redis.quit();
});

describe('OperationStore.create', () => {
  it('lets exactly one of 50 concurrent creates of one id succeed, from separate connections', async () => {
    const clients = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const client = createRedis({ url: inject('redisUrl'), role: 'consumer' });
        await waitUntilReady(client);
        return client;
      }),
    );
    try {
      const stores = clients.map((client) => new OperationStore(client, { prefix, retentionMs: 60_000 }));
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => stores[i % stores.length]!.create(ref('race'))),
      );
      expect(results.filter((r) => r.result === 'created')).toHaveLength(1);
      expect(results.filter((r) => r.result === 'exists')).toHaveLength(49);
      expect(await store.count(connection)).toBe(1);
    } finally {
      await Promise.all(clients.map((client) => client.quit()));
    }
  });

  it('scopes ids by tenant and connection', async () => {
    expect((await store.create(ref('x'))).result).toBe('created');
    expect((await store.create({ ...ref('x'), tenantId: 'tenant-b' })).result).toBe('created');
    expect((await store.create({ ...ref('x'), connectionId: 'conn2' })).result).toBe('created');
    expect((await store.create(ref('x'))).result).toBe('exists');
  });

  it('registers the connection for the reconciler', async () => {
    await store.create(ref('x'));
    expect(await store.connections()).toEqual([connection]);
  });
});

describe('OperationStore.finish', () => {
  it('moves inprogress to a terminal status once; later calls change nothing', async () => {
    await store.create(ref('x'));
    clock += 5;
    expect(await store.finish(ref('x'), 'completed')).toBe('finished');
    expect(await store.finish(ref('x'), 'failed', { errorCode: 'late', message: 'too late', details: [] })).toBe('alreadyTerminal');
    expect(await store.get(ref('x'))).toEqual({
      id: 'x',
      status: 'completed',
      error: null,
      createdAt: 1_700_000_000_000,
      lastActionAt: 1_700_000_000_005,
    });
    expect(await store.inprogressCreatedBefore(connection, clock + 1, 10)).toEqual([]);
  });

  it('lets exactly one of many concurrent finishes win', async () => {
    await store.create(ref('x'));
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        store.finish(ref('x'), i % 2 ? 'completed' : 'failed', { errorCode: `e${i}`, message: 'm', details: [] }),
      ),
    );
    expect(results.filter((r) => r === 'finished')).toHaveLength(1);
  });

  it('answers missing for an unknown operation', async () => {
    expect(await store.finish(ref('ghost'), 'completed')).toBe('missing');
  });

  it('expires terminal operations after the retention, but never inprogress ones', async () => {
    store = newStore(200);
    await store.create(ref('done'));
    await store.create(ref('busy'));
    await store.finish(ref('done'), 'completed');
    expect(await redis.pttl(store.keys.operation(ref('done')))).toBeGreaterThan(0);
    expect(await redis.pttl(store.keys.operation(ref('busy')))).toBe(-1);
    const deadline = Date.now() + 5000;
    while ((await store.get(ref('done'))) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(await store.get(ref('done'))).toBeUndefined();
    expect(await store.get(ref('busy'))).toMatchObject({ status: 'inprogress' });
  });
});

describe('OperationStore.claim', () => {
  const rules = (leaseMs = 60_000, attempts = 3) => ({
    leaseMs,
    attempts,
    exhausted: { errorCode: 'processingInterrupted', message: 'attempts spent', details: [] },
  });
  const claim = (operationId: string, holder: string, { jobId = '', leaseMs = 60_000, attempts = 3 } = {}) =>
    store.claim(connection, [{ operationId, jobId, holder }], rules(leaseMs, attempts)).then((results) => results[0]);
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  it('gives an attempt to one holder at a time and counts attempts on the operation', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'h1')).toEqual({ kind: 'claimed', attempt: 1 });
    expect(await claim('x', 'h2')).toMatchObject({ kind: 'busy' });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'h1', status: 'retry' }])).toEqual(['finished']);
    expect(await claim('x', 'h2')).toEqual({ kind: 'claimed', attempt: 2 });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'h2', status: 'completed' }])).toEqual(['finished']);
    expect(await claim('x', 'h3')).toEqual({ kind: 'terminal' });
    expect(await claim('ghost', 'h3')).toEqual({ kind: 'missing' });
  });

  it('claims 50 concurrent requests for one attempt exactly once, from separate connections', async () => {
    await store.create(ref('race'));
    const clients = await Promise.all(Array.from({ length: 5 }, async () => {
      const client = createRedis({ url: inject('redisUrl'), role: 'consumer' });
      await waitUntilReady(client);
      return client;
    }));
    try {
      const stores = clients.map((client) => new OperationStore(client, { prefix, retentionMs: 60_000 }));
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => stores[i % 5]!.claim(connection, [{ operationId: 'race', jobId: '', holder: `h${i}` }], rules())),
      );
      expect(results.flat().filter((result) => result.kind === 'claimed')).toEqual([{ kind: 'claimed', attempt: 1 }]);
    } finally {
      await Promise.all(clients.map((client) => client.quit()));
    }
  });

  it('lets another holder take over an expired lease, and refuses the first holder\'s outcome (fencing)', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'slow', { leaseMs: 50 })).toEqual({ kind: 'claimed', attempt: 1 });
    await sleep(80);
    expect(await claim('x', 'next', { leaseMs: 50 })).toEqual({ kind: 'claimed', attempt: 2 });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'slow', status: 'completed' }])).toEqual(['superseded']);
    expect(await store.renewLeases(connection, [{ operationId: 'x', holder: 'slow' }, { operationId: 'x', holder: 'next' }], 50)).toEqual([false, true]);
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'next', status: 'completed' }])).toEqual(['finished']);
  });

  it('fails an operation whose attempts are spent without an outcome, at its next claim', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'h1', { leaseMs: 20, attempts: 1 })).toEqual({ kind: 'claimed', attempt: 1 });
    await sleep(40); // its holder died
    expect(await claim('x', 'h2', { leaseMs: 20, attempts: 1 })).toEqual({ kind: 'exhausted', attempts: 1 });
    expect(await store.get(ref('x'))).toMatchObject({ status: 'failed', error: { errorCode: 'processingInterrupted', message: 'attempts spent' } });
    expect(await store.count(connection, 'inprogress')).toBe(0);
    expect(await store.count(connection, 'failed')).toBe(1);
  });

  it('lets only the job that carries an operation claim it, and gives an interrupted attempt back', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    expect(await claim('x', 'own')).toEqual({ kind: 'elsewhere' });
    expect(await claim('x', 'b', { jobId: 'batch~1' })).toEqual({ kind: 'claimed', attempt: 1 });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'b', status: 'interrupted' }])).toEqual(['finished']);
    expect(await claim('x', 'b2', { jobId: 'batch~1' })).toEqual({ kind: 'claimed', attempt: 1 });
    // A retry leaves the batch: the next attempt is the operation's own job's.
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'b2', status: 'retry' }])).toEqual(['finished']);
    expect(await claim('x', 'b3', { jobId: 'batch~1' })).toEqual({ kind: 'elsewhere' });
    expect(await claim('x', 'own')).toEqual({ kind: 'claimed', attempt: 2 });
  });

  it('hands an operation to its own job only from the batch that carries it', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    expect(await store.handToOwnJob(ref('x'), 'batch~other')).toBe(false);
    expect(await store.handToOwnJob(ref('x'), 'batch~1')).toBe(true);
    expect(await claim('x', 'own')).toEqual({ kind: 'claimed', attempt: 1 });
  });

  it('keeps only the resource fields on a terminal record', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    await claim('x', 'h', { jobId: 'batch~1' });
    await store.finishMany(connection, [{ operationId: 'x', holder: 'h', status: 'failed', error: { errorCode: 'e', message: 'm', details: [] } }]);
    expect(Object.keys(await redis.hgetall(store.keys.operation(ref('x')))).sort()).toEqual(['c', 'e', 's', 'u']);
  });
});

describe('OperationStore.list', () => {
  it('pages newest first, with ties in creation time kept in a stable order', async () => {
    for (let i = 0; i < 10; i++) {
      if (i % 3 === 0) clock += 1; // several operations share one millisecond
      await store.create(ref(`op${i}`));
    }
    const seen: string[] = [];
    let cursor;
    do {
      const page = await store.list(connection, { top: 3, cursor });
      seen.push(...page.operations.map((op) => op.id));
      cursor = page.next;
    } while (cursor);
    expect(new Set(seen).size).toBe(10);
    expect(seen.slice(0, 1)).toEqual(['op9']);
    expect(seen.at(-1)).toBe('op0');
  });

  it('skips and prunes index entries of expired operations', async () => {
    for (let i = 0; i < 5; i++) {
      clock += 1;
      await store.create(ref(`op${i}`));
    }
    await redis.del(store.keys.operation(ref('op3')), store.keys.operation(ref('op1')));
    const page = await store.list(connection, { top: 10 });
    expect(page.operations.map((op) => op.id)).toEqual(['op4', 'op2', 'op0']);
    expect(await store.count(connection)).toBe(3);
  });

  it('prunes the oldest dead entries on later creates even when nobody lists', async () => {
    for (let i = 0; i < 4; i++) await store.create(ref(`old${i}`));
    for (let i = 0; i < 4; i++) await redis.del(store.keys.operation(ref(`old${i}`)));
    for (let i = 0; i < 2; i++) {
      clock += 1;
      await store.create(ref(`new${i}`));
    }
    expect(await store.count(connection)).toBe(2);
  });

  it('continues after a cursor whose operation expired meanwhile', async () => {
    for (let i = 0; i < 6; i++) {
      clock += 1;
      await store.create(ref(`op${i}`));
    }
    const first = await store.list(connection, { top: 2 });
    expect(first.operations.map((op) => op.id)).toEqual(['op5', 'op4']);
    await redis.del(store.keys.operation(ref('op4')));
    await store.list(connection, { top: 10 }); // prunes op4 from the index
    const second = await store.list(connection, { top: 2, cursor: first.next });
    expect(second.operations.map((op) => op.id)).toEqual(['op3', 'op2']);
  });

  it('lists one status from its own index', async () => {
    for (let i = 0; i < 4; i++) {
      clock += 1;
      await store.create(ref(`op${i}`));
    }
    await store.finish(ref('op1'), 'completed');
    await store.finish(ref('op3'), 'completed');
    const page = await store.list(connection, { top: 10, status: 'completed' });
    expect(page.operations.map((op) => op.id)).toEqual(['op3', 'op1']);
    expect(await store.count(connection, 'inprogress')).toBe(2);
  });
});
