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

describe('OperationStore.statuses', () => {
  it('reads the status of several operations in order, undefined for unknown ones', async () => {
    await store.createMany(connection, ['a', 'b', 'c']);
    await store.finish(ref('b'), 'failed', { errorCode: 'x', message: 'y', details: [] });
    expect(await store.statuses(connection, ['c', 'b', 'nope', 'a'])).toEqual(['inprogress', 'failed', undefined, 'inprogress']);
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
