import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConnectionSchema } from '../src/shared/connection-schema.js';
import { createRedis, type RedisClient } from '../src/shared/redis.js';
import { Subscriber } from '../src/shared/subscriber.js';
import { OperationFailure, type Processor, type ProcessorInput } from '../src/worker/processor.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { OTHER_TENANT, TENANT, createApiContext, signToken, silentLog, type ApiContext } from './support/context.js';
import { pollUntil } from './support/wait.js';

/**
 * Connections and their schemas, in process on the suite's real Redis: the app answers through
 * app.request, and a real worker (BullMQ, the store's scripts, pub/sub for cancels) runs an
 * in-process processor. The schema rules themselves: test/connection-schema.test.ts; the same
 * flow with Graph's own clients: test/graph-clients.test.ts; across processes with the HTTP
 * processor: test/connections.processes.test.ts.
 */

const CONNECTIONS = '/v1.0/external/connections';
const SCHEMA: ConnectionSchema = {
  baseType: 'microsoft.graph.externalItem',
  properties: [
    { name: 'ticketTitle', type: 'string', isSearchable: true, isRetrievable: true, labels: ['title'] },
    { name: 'priority', type: 'string', isQueryable: true, isRetrievable: true, isRefinable: true },
    { name: 'assignee', type: 'string', isRetrievable: true, aliases: ['owner'] },
  ],
};

/** What the processor was asked, and by connection id prefix how it answers: `refuse…` fails a
 *  schema, `hold…` holds a schema until its signal aborts; anything else completes. */
const calls: (ProcessorInput & { aborted?: unknown })[] = [];
const processor: Processor = async (input) => {
  const call: (typeof calls)[number] = { ...input };
  calls.push(call);
  if (input.kind !== 'schema') return;
  if (input.connectionId.startsWith('refuse')) {
    throw new OperationFailure({ errorCode: 'schemaRefused', message: 'The index refused property priority.', target: 'priority', details: [] });
  }
  if (input.connectionId.startsWith('hold')) {
    await new Promise((resolve) => input.signal.addEventListener('abort', resolve, { once: true }));
    call.aborted = input.signal.reason;
    input.signal.throwIfAborted();
  }
};

let ctx: ApiContext;
let workerRedis: RedisClient;
let subscriber: Subscriber;
let worker: OperationWorker | undefined;
beforeAll(async () => {
  ctx = await createApiContext();
  workerRedis = createRedis({ url: ctx.config.REDIS_URL, role: 'consumer' });
  subscriber = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
  worker = createWorker({
    connection: workerRedis,
    store: ctx.store,
    queue: ctx.queue,
    connections: ctx.connections,
    processor,
    config: ctx.config,
    log: silentLog,
    subscriber,
  });
  await worker.hearingCancels;
});
afterAll(async () => {
  await worker?.close(2000);
  await subscriber.close();
  await workerRedis.quit();
  await ctx.close();
});

let sequence = 0;
/** A connection id no other test uses, with a prefix that picks the processor's answer. */
const freshId = (prefix = 'conn') => `${prefix}${++sequence}x${Date.now().toString(36)}`;

interface Resource {
  id: string;
  [property: string]: unknown;
}
interface OperationBody extends Resource {
  status: string;
  error: Record<string, unknown> | null;
}
interface ErrorBody {
  error: { code: string; message: string; details?: { code: string; message: string; target: string }[]; innerError: Record<string, string> };
}
interface ListBody {
  value: Resource[];
  '@odata.count'?: number;
  '@odata.nextLink'?: string;
}

async function json<T = Resource>(response: Response): Promise<T> {
  return (await response.json()) as T;
}
const ids = (list: ListBody) => list.value.map(({ id }) => id);

async function createConnection(id: string, body: Record<string, unknown> = {}) {
  const response = await ctx.post(CONNECTIONS, { id, name: `Connection ${id}`, ...body });
  expect(response.status).toBe(201);
  return json(response);
}

function patchSchema(id: string, schema: unknown, headers: Record<string, string> = {}) {
  return ctx.request(`${CONNECTIONS}/${id}/schema`, {
    method: 'PATCH',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(schema),
  });
}

/** The path of the operation a 202's Location names. */
function operationPath(response: Response): string {
  expect(response.status).toBe(202);
  return new URL(response.headers.get('location')!).pathname;
}

/** Waits for the operation to end, with Prefer: wait (answered as soon as it ends). */
async function ended(path: string): Promise<OperationBody> {
  return pollUntil(
    async () => {
      const operation = await json<OperationBody>(await ctx.request(path, { headers: { prefer: 'wait=5' } }));
      return operation.status === 'inprogress' ? undefined : operation;
    },
    { timeoutMs: 15_000, what: `operation ${path} never ended` },
  );
}

describe('connections', () => {
  it('creates a draft connection: 201, its Location, and the resource read back, listed and counted', async () => {
    const id = freshId();
    const response = await ctx.post(CONNECTIONS, { id, name: 'Contoso HR', description: 'Connection to index Contoso HR system' });
    expect(response.status).toBe(201);
    expect(response.headers.get('location')).toBe(`http://localhost${CONNECTIONS}/${id}`);
    const expected = {
      '@odata.type': '#microsoft.graph.externalConnectors.externalConnection',
      id,
      name: 'Contoso HR',
      description: 'Connection to index Contoso HR system',
      state: 'draft',
    };
    expect(await json(response)).toEqual(expected);
    expect(await json(await ctx.request(`${CONNECTIONS}/${id}`))).toEqual(expected);
    // The beta path family and the unprefixed paths serve the same connection.
    expect((await json(await ctx.request(`/beta/connections/${id}`))).id).toBe(id);
    const list = await json<ListBody>(await ctx.request(`${CONNECTIONS}?$count=true`));
    expect(list.value).toContainEqual(expected);
    expect(list['@odata.count']).toBe(list.value.length);
  });

  it('refuses a taken id with 409, and a bad body with a 400 that names the property', async () => {
    const id = freshId();
    await createConnection(id);
    const taken = await ctx.post(CONNECTIONS, { id, name: 'again' });
    expect(taken.status).toBe(409);
    expect((await json<ErrorBody>(taken)).error.message).toContain(id);

    const cases: [unknown, RegExp][] = [
      [{ name: 'no id' }, /'id' is required/],
      [{ id: 'ab', name: 'short' }, /'id'.*3-32 ASCII letters and digits/],
      [{ id: 'MicrosoftThing', name: 'reserved' }, /must not begin with "Microsoft"/],
      [{ id: freshId() }, /'name' is required/],
      [{ id: freshId(), name: '' }, /'name' must be 1-128 characters/],
      [{ id: freshId(), name: 'x'.repeat(129) }, /'name' must be 1-128 characters/],
      [{ id: freshId(), name: 'n', configuration: {} }, /'configuration' is not supported/],
      [[], /must be a JSON object/],
    ];
    for (const [body, message] of cases) {
      const response = await ctx.post(CONNECTIONS, body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect((await json<ErrorBody>(response)).error.message).toMatch(message);
    }
  });

  it('pages the list by id with $top and an absolute nextLink, and refuses options it does not support', async () => {
    const token = await signToken({ tid: '33333333-3333-4333-8333-333333333333' });
    const asTenant = (path: string, init: RequestInit = {}) =>
      ctx.request(path, { ...init, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...init.headers } });
    const created = ['pagea', 'pageb', 'pagec', 'paged', 'pagee'];
    for (const id of [...created].reverse()) {
      expect((await asTenant(CONNECTIONS, { method: 'POST', body: JSON.stringify({ id, name: id }) })).status).toBe(201);
    }
    const seen: string[] = [];
    let next: string | undefined = `${CONNECTIONS}?$top=2`;
    while (next) {
      const page: ListBody = await json<ListBody>(await asTenant(next));
      expect(page.value.length).toBeLessThanOrEqual(2);
      seen.push(...ids(page));
      const link = page['@odata.nextLink'];
      next = link ? new URL(link).pathname + new URL(link).search : undefined;
    }
    expect(seen).toEqual(created);

    const refused = await asTenant(`${CONNECTIONS}?$filter=${encodeURIComponent("state eq 'ready'")}`);
    expect(refused.status).toBe(400);
    expect((await json<ErrorBody>(refused)).error.message).toBe("Query option '$filter' is not supported here; the supported options are $top, $skiptoken, $count.");
  });

  it("keeps every tenant's connections its own: another tenant neither sees nor collides with them", async () => {
    const id = freshId();
    await createConnection(id);
    const other = await signToken({ tid: OTHER_TENANT });
    const asOther = { authorization: `Bearer ${other}` };
    expect((await ctx.request(`${CONNECTIONS}/${id}`, { headers: asOther })).status).toBe(404);
    expect((await ctx.request(`${CONNECTIONS}/${id}/schema`, { headers: asOther })).status).toBe(404);
    expect((await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE', headers: asOther })).status).toBe(404);
    expect((await patchSchema(id, SCHEMA, asOther)).status).toBe(404);
    const list = await json<ListBody>(await ctx.request(CONNECTIONS, { headers: asOther }));
    expect(ids(list)).not.toContain(id);
    // The same id is free in the other tenant.
    expect((await ctx.post(CONNECTIONS, { id, name: 'theirs' }, asOther)).status).toBe(201);
    expect((await json(await ctx.request(`${CONNECTIONS}/${id}`))).name).toBe(`Connection ${id}`);
  });

  it('needs a write permission to create, change or delete, and answers 405 with Allow on a known path', async () => {
    const id = freshId();
    await createConnection(id);
    const reader = { authorization: `Bearer ${await signToken({ scp: 'ExternalConnection.Read.All' })}` };
    expect((await ctx.post(CONNECTIONS, { id: freshId(), name: 'n' }, reader)).status).toBe(403);
    expect((await patchSchema(id, SCHEMA, reader)).status).toBe(403);
    expect((await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE', headers: reader })).status).toBe(403);
    expect((await ctx.request(`${CONNECTIONS}/${id}`, { headers: reader })).status).toBe(200);
    const put = await ctx.request(`${CONNECTIONS}/${id}`, { method: 'PUT' });
    expect(put.status).toBe(405);
    expect(put.headers.get('allow')).toBe('DELETE, GET');
    expect((await ctx.request(`${CONNECTIONS}/${id}/schema`, { method: 'POST' })).headers.get('allow')).toBe('GET, PATCH');
  });
});

describe('schema provisioning', () => {
  it('answers a valid schema with 202, no body, the Location of an operation and Retry-After; the processor provisions it and the connection becomes ready', async () => {
    const id = freshId();
    await createConnection(id);
    const response = await patchSchema(id, SCHEMA);
    expect(response.status).toBe(202);
    expect(await response.text()).toBe('');
    expect(response.headers.get('retry-after')).toBe('2');
    const path = operationPath(response);
    expect(path).toMatch(new RegExp(`^${CONNECTIONS}/${id}/operations/[0-9a-f-]{36}$`));
    // Read back as submitted, also while it provisions.
    expect(await json(await ctx.request(`${CONNECTIONS}/${id}/schema`))).toEqual({ '@odata.type': '#microsoft.graph.externalConnectors.schema', ...SCHEMA });

    const operation = await ended(path);
    expect(operation).toMatchObject({ status: 'completed', error: null });
    const call = calls.find((seen) => seen.connectionId === id && seen.kind === 'schema');
    expect(call).toMatchObject({ kind: 'schema', schema: SCHEMA, tenantId: TENANT, operation: { id: operation.id, status: 'inprogress' }, attempt: 1 });
    expect((await json(await ctx.request(`${CONNECTIONS}/${id}`))).state).toBe('ready');
    // A client that lost the Location finds the operation in the connection's list.
    const listed = await json<ListBody>(await ctx.request(`${CONNECTIONS}/${id}/operations`));
    expect(ids(listed)).toContain(operation.id);
  });

  it('tells the processor kind operation for an operation created by POST', async () => {
    const id = freshId();
    const response = await ctx.post(`${CONNECTIONS}/${id}/operations`, { id: 'posted' });
    expect(response.status).toBe(201);
    await ended(new URL(response.headers.get('location')!).pathname);
    const call = calls.find((seen) => seen.connectionId === id);
    expect(call?.kind).toBe('operation');
    expect(call && 'schema' in call).toBe(false);
  });

  it('keeps the connection draft when the processor refuses the schema, with the processor error on the operation', async () => {
    const id = freshId('refuse');
    await createConnection(id);
    const operation = await ended(operationPath(await patchSchema(id, SCHEMA)));
    expect(operation.status).toBe('failed');
    expect(operation.error).toMatchObject({ errorCode: 'schemaRefused', code: 'schemaRefused', message: 'The index refused property priority.', target: 'priority' });
    expect((await json(await ctx.request(`${CONNECTIONS}/${id}`))).state).toBe('draft');
    // The schema can be submitted again once that operation has ended.
    expect((await patchSchema(id, SCHEMA)).status).toBe(202);
  });

  it('refuses a second schema while one provisions (409 naming its operation), and a schema for an unknown connection (404)', async () => {
    const id = freshId('hold');
    await createConnection(id);
    const path = operationPath(await patchSchema(id, SCHEMA));
    const operationId = path.split('/').pop()!;
    const again = await patchSchema(id, SCHEMA);
    expect(again.status).toBe(409);
    expect((await json<ErrorBody>(again)).error.message).toContain(operationId);
    expect((await patchSchema(freshId(), SCHEMA)).status).toBe(404);
    expect((await ctx.request(`${CONNECTIONS}/${freshId()}/schema`)).status).toBe(404);
    // Let the held provisioning go.
    expect((await ctx.request(`${path}/cancel`, { method: 'POST' })).status).toBe(200);
  });

  it('answers a schema that breaks a rule with 400 InvalidRequest, the rule in innerError.code and every problem in details', async () => {
    const id = freshId();
    await createConnection(id);
    const broken = {
      baseType: 'microsoft.graph.externalItem',
      properties: [
        { name: 'x', type: 'boolean', isRefinable: true },
        { name: 'y', type: 'int64', isSearchable: true },
      ],
    };
    const response = await patchSchema(id, broken);
    expect(response.status).toBe(400);
    const { error } = await json<ErrorBody>(response);
    expect(error.code).toBe('InvalidRequest');
    expect(error.message).toBe("Searchable property 'y' cannot be of type 'int64'; only string and stringCollection properties are searchable.");
    expect(error.innerError.code).toBe('SearchableShouldBeOfTypeString');
    expect(error.details?.map((detail) => detail.code)).toEqual(['SearchableShouldBeOfTypeString', 'RefinerShouldNotBeOfType']);
    expect(error.details?.[1]).toEqual({ code: 'RefinerShouldNotBeOfType', message: "Refiner property 'x' cannot be of type 'Boolean'.", target: 'x' });
    // Nothing was stored or enqueued.
    expect((await ctx.request(`${CONNECTIONS}/${id}/schema`)).status).toBe(404);
    expect((await json<ListBody>(await ctx.request(`${CONNECTIONS}/${id}/operations`))).value).toEqual([]);
  });

  it('checks an update against the provisioned schema: properties may be added, not removed or retyped', async () => {
    const id = freshId();
    await createConnection(id);
    expect((await ended(operationPath(await patchSchema(id, SCHEMA)))).status).toBe('completed');
    const removed = await patchSchema(id, { ...SCHEMA, properties: SCHEMA.properties.slice(1) });
    expect(removed.status).toBe(400);
    expect((await json<ErrorBody>(removed)).error.innerError.code).toBe('PropertyCannotBeRemoved');
    const retyped = await patchSchema(id, { ...SCHEMA, properties: [...SCHEMA.properties.slice(0, 2), { name: 'assignee', type: 'stringCollection', isRetrievable: true }] });
    expect((await json<ErrorBody>(retyped)).error.innerError.code).toBe('PropertyTypeCannotChange');
    const added = { ...SCHEMA, properties: [...SCHEMA.properties, { name: 'dueDate', type: 'dateTime', isQueryable: true }] };
    expect((await ended(operationPath(await patchSchema(id, added)))).status).toBe('completed');
    expect((await json(await ctx.request(`${CONNECTIONS}/${id}/schema`))).properties).toHaveLength(4);
    expect((await json(await ctx.request(`${CONNECTIONS}/${id}`))).state).toBe('ready');
  });
});

describe('deleting a connection', () => {
  it('answers 202 with the Location of a delete operation; the connection answers until it completes, then 404, and its operations stay readable', async () => {
    const id = freshId();
    await createConnection(id);
    const schemaPath = operationPath(await patchSchema(id, SCHEMA));
    await ended(schemaPath);
    const deletion = await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE' });
    expect(await deletion.text()).toBe('');
    const deletePath = operationPath(deletion);
    const operation = await ended(deletePath);
    expect(operation.status).toBe('completed');
    expect(calls.find((seen) => seen.connectionId === id && seen.kind === 'deleteConnection')).toMatchObject({ operation: { id: operation.id } });
    expect((await ctx.request(`${CONNECTIONS}/${id}`)).status).toBe(404);
    expect((await ctx.request(`${CONNECTIONS}/${id}/schema`)).status).toBe(404);
    expect((await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE' })).status).toBe(404);
    const listed = await json<ListBody>(await ctx.request(`${CONNECTIONS}/${id}/operations`));
    expect(ids(listed).sort()).toEqual([operation.id, schemaPath.split('/').pop()].sort());
    const connections = await json<ListBody>(await ctx.request(`${CONNECTIONS}?$count=true`));
    expect(ids(connections)).not.toContain(id);
    expect(connections['@odata.count']).toBe(connections.value.length);
    // The id is free again.
    expect((await ctx.post(CONNECTIONS, { id, name: 'again' })).status).toBe(201);
  });

  it('wins over a schema still provisioning: the schema operation is failed as canceled and its processor aborted, then the connection is gone', async () => {
    const id = freshId('hold');
    await createConnection(id);
    const schemaPath = operationPath(await patchSchema(id, SCHEMA));
    await pollUntil(() => calls.some((seen) => seen.connectionId === id && seen.kind === 'schema'), { timeoutMs: 10_000, what: 'the schema never reached the processor' });
    const deletePath = operationPath(await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE' }));
    // Failed in the same step as the delete was accepted, before any worker acts.
    const schemaOperation = await json<OperationBody>(await ctx.request(schemaPath));
    expect(schemaOperation.status).toBe('failed');
    expect(schemaOperation.error).toMatchObject({ errorCode: 'operationCanceled', message: 'The connection was deleted while this schema was provisioning.' });
    const held = calls.find((seen) => seen.connectionId === id && seen.kind === 'schema')!;
    await pollUntil(() => held.aborted !== undefined, { timeoutMs: 5000, what: "the schema's processor call was never aborted" });
    expect((held.aborted as Error).name).toBe('OperationCanceled');
    expect((await ended(deletePath)).status).toBe('completed');
    expect((await ctx.request(`${CONNECTIONS}/${id}`)).status).toBe(404);
    // The canceled schema operation stays as it was: the processor's later failure is not recorded.
    expect((await json<OperationBody>(await ctx.request(schemaPath))).error?.errorCode).toBe('operationCanceled');
  });

  it('answers a second delete while one is inprogress with the same operation, and refuses a schema meanwhile', async () => {
    const id = freshId();
    await createConnection(id);
    // Stop the worker from taking the delete: hold the queue's jobs by pausing it.
    await ctx.queue.queues[0]!.pause();
    try {
      const first = operationPath(await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE' }));
      const second = operationPath(await ctx.request(`${CONNECTIONS}/${id}`, { method: 'DELETE' }));
      expect(second).toBe(first);
      expect((await json(await ctx.request(`${CONNECTIONS}/${id}`))).id).toBe(id);
      const refused = await patchSchema(id, SCHEMA);
      expect(refused.status).toBe(409);
      expect((await json<ErrorBody>(refused)).error.message).toMatch(/is being deleted/);
    } finally {
      await ctx.queue.queues[0]!.resume();
    }
  });
});

describe('the schema rules as documented', () => {
  it('lists every rule of the table in the README, with its code and its sentence, in the order they are checked', async () => {
    const { readFile } = await import('node:fs/promises');
    const { SCHEMA_RULES } = await import('../src/shared/connection-schema.js');
    const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
    const rows = [...readme.matchAll(/^\| `(\w+)` \| (.+) \|$/gm)].map(([, code, rule]) => ({ code, rule }));
    expect(rows).toEqual(SCHEMA_RULES.map(({ code, rule }) => ({ code, rule })));
  });
});
