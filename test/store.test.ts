import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { OperationStore, type ListCursor } from '../src/shared/store.js';
import { deleteKeys, uniquePrefix } from './support/context.js';
import { pollUntil, sleep } from './support/wait.js';

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

/** `count` stores of this test's prefix, each on its own Redis connection, as separate processes
 *  would be. */
async function withStoresOnOwnConnections(count: number, use: (stores: OperationStore[]) => Promise<void>): Promise<void> {
  const clients = await Promise.all(
    Array.from({ length: count }, async () => {
      const client = createRedis({ url: inject('redisUrl'), role: 'consumer' });
      await waitUntilReady(client);
      return client;
    }),
  );
  try {
    await use(clients.map((client) => new OperationStore(client, { prefix, retentionMs: 60_000 })));
  } finally {
    await Promise.all(clients.map((client) => client.quit()));
  }
}

describe('OperationStore.create', () => {
  it('lets exactly one of 50 concurrent creates of one id succeed, from separate connections', async () => {
    await withStoresOnOwnConnections(5, async (stores) => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => stores[i % stores.length]!.create(ref('race'))),
      );
      expect(results.filter((r) => r.result === 'created')).toHaveLength(1);
      expect(results.filter((r) => r.result === 'exists')).toHaveLength(49);
      expect(await store.count(connection)).toBe(1);
    });
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
    await pollUntil(async () => (await store.get(ref('done'))) === undefined, { timeoutMs: 5000, what: 'the terminal operation to expire' });
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
    store.claim(connection, jobId, [{ operationId, holder }], rules(leaseMs, attempts)).then((results) => results[0]);

  it('gives an attempt to one holder at a time and counts attempts on the operation', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'h1')).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    expect(await claim('x', 'h2')).toMatchObject({ kind: 'busy' });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'h1', status: 'retry' }])).toEqual(['finished']);
    expect(await claim('x', 'h2')).toEqual({ kind: 'claimed', attempt: 2, task: { kind: 'operation' } });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'h2', status: 'completed' }])).toEqual(['finished']);
    expect(await claim('x', 'h3')).toEqual({ kind: 'terminal' });
    expect(await claim('ghost', 'h3')).toEqual({ kind: 'missing' });
  });

  it('claims 50 concurrent requests for one attempt exactly once, from separate connections', async () => {
    await store.create(ref('race'));
    await withStoresOnOwnConnections(5, async (stores) => {
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => stores[i % 5]!.claim(connection, '', [{ operationId: 'race', holder: `h${i}` }], rules())),
      );
      expect(results.flat().filter((result) => result.kind === 'claimed')).toEqual([{ kind: 'claimed', attempt: 1, task: { kind: 'operation' } }]);
    });
  });

  it('lets another holder take over an expired lease, and refuses the first holder\'s outcome (fencing)', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'slow', { leaseMs: 50 })).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    await sleep(80);
    expect(await claim('x', 'next', { leaseMs: 50 })).toEqual({ kind: 'claimed', attempt: 2, task: { kind: 'operation' } });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'slow', status: 'completed' }])).toEqual(['superseded']);
    expect(await store.renewLeases(connection, [{ operationId: 'x', holder: 'slow' }, { operationId: 'x', holder: 'next' }], 50)).toEqual(['lost', 'renewed']);
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'next', status: 'completed' }])).toEqual(['finished']);
  });

  it('fails an operation whose attempts are spent without an outcome, at its next claim', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'h1', { leaseMs: 20, attempts: 1 })).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    await sleep(40); // its holder died
    expect(await claim('x', 'h2', { leaseMs: 20, attempts: 1 })).toEqual({ kind: 'exhausted', attempts: 1 });
    expect(await store.get(ref('x'))).toMatchObject({ status: 'failed', error: { errorCode: 'processingInterrupted', message: 'attempts spent' } });
    expect(await store.count(connection, 'inprogress')).toBe(0);
    expect(await store.count(connection, 'failed')).toBe(1);
  });

  it('lets only the job that carries an operation claim it, and gives an interrupted attempt back', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    expect(await claim('x', 'own')).toEqual({ kind: 'elsewhere' });
    expect(await claim('x', 'b', { jobId: 'batch~1' })).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'b', status: 'interrupted' }])).toEqual(['finished']);
    expect(await claim('x', 'b2', { jobId: 'batch~1' })).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    // A retry leaves the batch: the next attempt is the operation's own job's.
    expect(await store.finishMany(connection, [{ operationId: 'x', holder: 'b2', status: 'retry' }])).toEqual(['finished']);
    expect(await claim('x', 'b3', { jobId: 'batch~1' })).toEqual({ kind: 'elsewhere' });
    expect(await claim('x', 'own')).toEqual({ kind: 'claimed', attempt: 2, task: { kind: 'operation' } });
  });

  it('answers a resent claim or release as the first (ioredis resends a command whose reply was lost)', async () => {
    await store.create(ref('x'));
    expect(await claim('x', 'h1')).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    expect(await claim('x', 'h1')).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    const interrupted = [{ operationId: 'x', holder: 'h1', status: 'interrupted' as const }];
    expect(await store.finishMany(connection, interrupted)).toEqual(['finished']);
    expect(await store.finishMany(connection, interrupted)).toEqual(['finished']);
    // Given back once, not twice: the next claim is attempt 1 again.
    expect(await claim('x', 'h2')).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
    const retry = [{ operationId: 'x', holder: 'h2', status: 'retry' as const }];
    expect(await store.finishMany(connection, retry)).toEqual(['finished']);
    expect(await store.finishMany(connection, retry)).toEqual(['finished']);
    expect(await claim('x', 'h3')).toEqual({ kind: 'claimed', attempt: 2, task: { kind: 'operation' } });
  });

  it('hands an operation to its own job only from the batch that carries it', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    expect(await store.handToOwnJob(ref('x'), 'batch~other')).toBe(false);
    expect(await store.handToOwnJob(ref('x'), 'batch~1')).toBe(true);
    expect(await claim('x', 'own')).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'operation' } });
  });

  it('keeps only the resource fields on a terminal record', async () => {
    await store.createMany(connection, ['x'], 'batch~1');
    await claim('x', 'h', { jobId: 'batch~1' });
    await store.finishMany(connection, [{ operationId: 'x', holder: 'h', status: 'failed', error: { errorCode: 'e', message: 'm', details: [] } }]);
    expect(Object.keys(await redis.hgetall(store.keys.operation(ref('x')))).sort()).toEqual(['c', 'e', 's', 'u']);
  });
});

describe('OperationStore.list', () => {
  it('pages newest first, with ties in creation time kept in one order (id, bytes descending) whatever the page size', async () => {
    // Three operations per millisecond, created in an order that is not their ids' order.
    const byMillisecond = [
      ['m', 'b', 'x'],
      ['K', 'k', 'a'],
      ['z', '0', 'Q'],
    ];
    for (const ids of byMillisecond) {
      clock += 1;
      for (const id of ids) await store.create(ref(id));
    }
    // Newest millisecond first; inside one, ids bytes descending (lowercase after uppercase,
    // digits before both).
    const expected = ['z', 'Q', '0', 'k', 'a', 'K', 'x', 'm', 'b'];
    for (const top of [1, 2, 3, 4, 9, 10]) {
      const seen: string[] = [];
      let cursor: ListCursor | undefined;
      do {
        const page = await store.list(connection, { top, ...(cursor ? { cursor } : {}) });
        seen.push(...page.operations.map((op) => op.id));
        cursor = page.next;
      } while (cursor && seen.length <= expected.length);
      expect(seen, `pages of ${top}`).toEqual(expected);
    }
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

describe('OperationStore.list never ends early', () => {
  /** Finishes the operations through a store whose retention is 1 ms, then waits until Redis
   *  has expired their hashes: the index entries stay, as after a real retention. */
  async function completeAndExpire(conn: typeof connection, ids: string[]) {
    if (ids.length === 0) return;
    expect(new Set(await newStore(1).finishMany(conn, ids.map((operationId) => ({ operationId, status: 'completed' }))))).toEqual(
      new Set(['finished']),
    );
    await pollUntil(async () => (await Promise.all(ids.map((operationId) => store.get({ ...conn, operationId })))).every((op) => op === undefined), {
      timeoutMs: 5000,
      intervalMs: 2,
      what: 'the operations to expire',
    });
  }

  /** Follows next cursors to the end; `between` runs before every page but the first. */
  async function listAll(
    conn: typeof connection,
    { top, status, between }: { top: number; status?: 'completed'; between?: (lastPage: string[]) => Promise<unknown> },
  ) {
    const seen: string[] = [];
    const pages: { ids: string[]; next?: ListCursor }[] = [];
    let cursor: ListCursor | undefined;
    do {
      if (pages.length > 0 && between) await between(pages.at(-1)!.ids);
      const page = await store.list(conn, { top, ...(status ? { status } : {}), ...(cursor ? { cursor } : {}) });
      expect(page.operations.length).toBeLessThanOrEqual(top);
      pages.push({ ids: page.operations.map((op) => op.id), ...(page.next ? { next: page.next } : {}) });
      seen.push(...page.operations.map((op) => op.id));
      cursor = page.next;
      if (pages.length > 1000) throw new Error('listing does not end');
    } while (cursor);
    return { seen, pages };
  }

  it('reaches an inprogress operation behind 60 newer ones that completed and expired, with top=1', async () => {
    clock += 1;
    await store.create(ref('live'));
    const expired = Array.from({ length: 60 }, (_, i) => `gone${i}`);
    for (const id of expired) {
      clock += 1;
      await store.create(ref(id));
    }
    await completeAndExpire(connection, expired);

    const { seen, pages } = await listAll(connection, { top: 1 });
    expect(seen).toEqual(['live']);
    // The first page spends its scan budget on expired entries: empty, but it says where to go on.
    expect(pages[0]!.ids).toEqual([]);
    expect(pages[0]!.next).toBeDefined();
  });

  it('continues exactly after a pruned cursor inside a run of equal timestamps', async () => {
    clock += 1;
    // One millisecond: ties go by id, bytes descending (uppercase sorts before lowercase).
    await store.createMany(connection, ['a', 'B', 'c', 'D', 'e', 'F']);
    const first = await store.list(connection, { top: 2 });
    expect(first.operations.map((op) => op.id)).toEqual(['e', 'c']);
    await completeAndExpire(connection, ['c']);
    await store.list(connection, { top: 10 }); // prunes c, the cursor's entry, from the index
    const rest = await store.list(connection, { top: 10, cursor: first.next });
    expect(rest.operations.map((op) => op.id)).toEqual(['a', 'F', 'D', 'B']);
    expect(rest.next).toBeUndefined();
  });

  it('yields exactly the live operations newest first, whatever the mix of expired entries, ties, top and concurrent pruning (property)', async () => {
    const idChars = 'abcXYZ019._~-';
    const segment = fc.record({
      // Long runs too: only a run longer than a page's scan budget, 20 × (top + 1), exposes an early end.
      length: fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 20, max: 100 })),
      fate: fc.constantFrom('inprogress', 'completed', 'expired'),
      sameMillisecond: fc.boolean(),
    });
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(segment, { maxLength: 4 }),
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.integer({ min: 1, max: 3 }),
        // Between pages: nothing; another listing prunes every dead entry; or the operation
        // returned last expires and is pruned (the cursor's own entry, when it is that one).
        fc.constantFrom('nothing', 'prune', 'expireLastReturned'),
        async (segments, seed, top, meanwhile) => {
          // Ids whose order within a millisecond is random (bytewise, mixed case), not the
          // creation order; from a seed, so that a failure shrinks fast.
          let state = seed;
          const randomChar = () => {
            state = (Math.imul(state, 1103515245) + 12345) >>> 0;
            return idChars[(state >>> 16) % idChars.length]!;
          };
          const conn = { tenantId: 'tenant-a', connectionId: `prop${run++}` };
          try {
            const ops: { id: string; createdAt: number; fate: string }[] = [];
            for (const { length, fate, sameMillisecond } of segments) {
              for (let i = 0; i < length; i++) {
                ops.push({ id: `${randomChar()}${randomChar()}_${ops.length}`, createdAt: 0, fate });
              }
              for (const group of sameMillisecond ? [ops.slice(-length)] : ops.slice(-length).map((op) => [op])) {
                clock += 1;
                const { results } = await store.createMany(conn, group.map((op) => op.id));
                expect(results.every((result) => result === 'created')).toBe(true);
                for (const op of group) op.createdAt = clock;
              }
            }
            await store.finishMany(
              conn,
              ops.filter((op) => op.fate === 'completed').map((op) => ({ operationId: op.id, status: 'completed' as const })),
            );
            await completeAndExpire(conn, ops.filter((op) => op.fate === 'expired').map((op) => op.id));

            const gone = new Set(ops.filter((op) => op.fate === 'expired').map((op) => op.id));
            const between =
              meanwhile === 'nothing'
                ? undefined
                : async (lastPage: string[]) => {
                    const last = lastPage.at(-1);
                    if (meanwhile === 'expireLastReturned' && last !== undefined) {
                      await redis.del(store.keys.operation({ ...conn, operationId: last }));
                      gone.add(last);
                    }
                    await store.list(conn, { top: 999 });
                  };
            const newestFirst = (a: { id: string; createdAt: number }, b: { id: string; createdAt: number }) =>
              b.createdAt - a.createdAt || Buffer.compare(Buffer.from(b.id), Buffer.from(a.id));

            for (const status of [undefined, 'completed'] as const) {
              const expected = ops
                .filter((op) => !gone.has(op.id) && (status === undefined || op.fate === status))
                .sort(newestFirst)
                .map((op) => op.id);
              const entries = await store.count(conn, status);
              const { seen, pages } = await listAll(conn, { top, ...(status ? { status } : {}), ...(between ? { between } : {}) });
              expect(seen).toEqual(expected);
              // Bounded cost: each page but the last returns `top` operations or spends its whole
              // scan budget of 20 × (top + 1) entries, and no entry is scanned by two pages.
              expect(pages.length).toBeLessThanOrEqual(Math.floor(expected.length / top) + Math.floor(entries / (20 * (top + 1))) + 1);
            }
          } finally {
            await deleteKeys(redis, prefix); // many runs, one test: keep the key count small
          }
        },
      ),
      { numRuns: 40 },
    );
  }, 60_000);
});
