import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ConnectionSchema } from '../src/shared/connection-schema.js';
import { signToken, TENANT, uniquePrefix } from './support/context.js';
import { ProcessGroup, testServiceEnv } from './support/processes.js';
import { startProcessorServer, type ProcessorCall, type ProcessorServer } from './support/processor-server.js';
import { pollUntil } from './support/wait.js';
import { freePort } from '../scripts/lib/free-port.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';

/**
 * Connections and their schemas across real processes: the compiled API and worker on a
 * redis-server of this file's own, the worker calling a real HTTP processor
 * (test/support/processor-server.ts) through PROCESSOR_URL. What the processor is told (kind, the
 * schema) crosses a process and an HTTP request here, and what it answers decides the connection.
 * One API, one worker and one processor serve every test of the file; each test has connections of
 * its own. The same flow in process: test/connections.test.ts.
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
/** What the processor answers, with a 422, to a schema of a connection whose id starts `refuse`. */
const REFUSAL = { errorCode: 'schemaRefused', message: 'The index refused property priority.', target: 'priority', details: [{ code: 'tooMany', message: 'refiners' }] };
/** Bounds a wait for an operation to end on a busy two-core machine; it ends in milliseconds. */
const END_DEADLINE_MS = 15_000;

let redisServer: RedisServer;
let processor: ProcessorServer;
let token: string;
let group: ProcessGroup;
let baseUrl: string;

beforeAll(async () => {
  [redisServer, processor, token] = await Promise.all([startRedisServer(), startProcessorServer(), signToken()]);
  group = new ProcessGroup(testServiceEnv(uniquePrefix(), { REDIS_URL: redisServer.url }));
  const port = await freePort();
  baseUrl = `http://127.0.0.1:${port}`;
  await Promise.all([group.startApi('api', port), group.startWorker('worker', { PROCESSOR_URL: processor.urlFor('worker', 0) })]);
}, 60_000);

afterAll(async () => {
  await group?.killAll();
  await processor?.close();
  await redisServer?.destroy();
});

beforeEach(({ onTestFailed }) => {
  processor.answer = (call) => (call.kind === 'schema' && call.connectionId.startsWith('refuse') ? { status: 422, body: REFUSAL } : undefined);
  onTestFailed(() => console.log(`[connections processes] output of the processes:\n${group.describe()}`));
});

// ---- a client of the API ----

interface OperationBody {
  id: string;
  status: string;
  error: Record<string, unknown> | null;
}

function send(path: string, init: RequestInit = {}): Promise<Response> {
  const url = path.startsWith('http') ? path : `${baseUrl}${path}`;
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  if (init.body) headers.set('content-type', 'application/json');
  return fetch(url, { ...init, headers, signal: AbortSignal.timeout(20_000) });
}

async function json<T = Record<string, unknown>>(response: Response): Promise<T> {
  return (await response.json()) as T;
}

async function createConnection(id: string): Promise<void> {
  const response = await send(CONNECTIONS, { method: 'POST', body: JSON.stringify({ id, name: `Connection ${id}` }) });
  expect(response.status).toBe(201);
}

/** The Location of a 202 (an absolute URL of the API). */
function acceptedLocation(response: Response): string {
  expect(response.status).toBe(202);
  expect(response.headers.get('retry-after')).toBe('2');
  return response.headers.get('location')!;
}

function patchSchema(id: string): Promise<Response> {
  return send(`${CONNECTIONS}/${id}/schema`, { method: 'PATCH', body: JSON.stringify(SCHEMA) });
}

/** The operation at `location` once it has ended (GETs held with Prefer: wait until it does). */
function ended(location: string): Promise<OperationBody> {
  return pollUntil(
    async () => {
      const operation = await json<OperationBody>(await send(location, { headers: { prefer: 'wait=5' } }));
      return operation.status === 'inprogress' ? undefined : operation;
    },
    { timeoutMs: END_DEADLINE_MS, what: `the operation at ${location} to end`, context: () => group.describe() },
  );
}

/** The processor's calls for one operation. */
function callsFor(operationId: string): ProcessorCall[] {
  return processor.calls.filter((call) => call.operationId === operationId);
}

async function connectionState(id: string): Promise<unknown> {
  const response = await send(`${CONNECTIONS}/${id}`);
  expect(response.status).toBe(200);
  return (await json(response)).state;
}

// ---- tests ----

describe('connections through the API and worker processes and an HTTP processor', () => {
  it('provisions a schema: the processor receives kind schema with the schema as submitted, and the connection becomes ready', async () => {
    const id = 'procready';
    await createConnection(id);
    expect(await connectionState(id)).toBe('draft');
    const location = acceptedLocation(await patchSchema(id));
    const operation = await ended(location);
    expect(operation).toMatchObject({ status: 'completed', error: null });
    expect(location).toBe(`${baseUrl}${CONNECTIONS}/${id}/operations/${operation.id}`);

    const calls = callsFor(operation.id);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ kind: 'schema', schema: SCHEMA, tenantId: TENANT, connectionId: id, attempt: 1, answeredStatus: 200 });
    expect(await connectionState(id)).toBe('ready');
  });

  it('keeps the connection draft when the processor refuses the schema: the operation is failed with the error the processor answered', async () => {
    const id = 'refuseschema';
    await createConnection(id);
    const operation = await ended(acceptedLocation(await patchSchema(id)));
    expect(operation.status).toBe('failed');
    expect(operation.error).toEqual({ ...REFUSAL, code: REFUSAL.errorCode });
    // A 4xx is an answer, not a fault: called once, not retried.
    expect(callsFor(operation.id).map((call) => [call.kind, call.answeredStatus])).toEqual([['schema', 422]]);
    expect(await connectionState(id)).toBe('draft');
  });

  it('deletes a connection: the processor receives kind deleteConnection, then the connection is 404 while its schema and delete operations stay readable', async () => {
    const id = 'procdelete';
    await createConnection(id);
    const schemaLocation = acceptedLocation(await patchSchema(id));
    expect((await ended(schemaLocation)).status).toBe('completed');

    const deletion = await send(`${CONNECTIONS}/${id}`, { method: 'DELETE' });
    const deleteLocation = acceptedLocation(deletion);
    const operation = await ended(deleteLocation);
    expect(operation).toMatchObject({ status: 'completed', error: null });
    const calls = callsFor(operation.id);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ kind: 'deleteConnection', tenantId: TENANT, connectionId: id, attempt: 1 });
    expect(calls[0]).not.toHaveProperty('schema');

    expect((await send(`${CONNECTIONS}/${id}`)).status).toBe(404);
    expect((await send(`${CONNECTIONS}/${id}/schema`)).status).toBe(404);
    const schemaOperation = await send(schemaLocation);
    expect(schemaOperation.status).toBe(200);
    expect(await json(schemaOperation)).toMatchObject({ status: 'completed' });
    const deleteOperation = await send(deleteLocation);
    expect(deleteOperation.status).toBe(200);
    expect(await json(deleteOperation)).toMatchObject({ id: operation.id, status: 'completed' });
    const listed = await json<{ value: { id: string }[] }>(await send(`${CONNECTIONS}/${id}/operations`));
    expect(listed.value.map((listedOperation) => listedOperation.id).sort()).toEqual([operation.id, schemaLocation.split('/').pop()].sort());
    const connections = await json<{ value: { id: string }[] }>(await send(CONNECTIONS));
    expect(connections.value.map((connection) => connection.id)).not.toContain(id);
  });

  it('tells the processor kind operation, and no schema, for an operation created by POST', async () => {
    const id = 'procposted';
    const response = await send(`${CONNECTIONS}/${id}/operations`, { method: 'POST', body: JSON.stringify({ id: 'posted-1' }) });
    expect(response.status).toBe(201);
    expect(await ended(response.headers.get('location')!)).toMatchObject({ id: 'posted-1', status: 'completed' });
    const calls = callsFor('posted-1');
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ kind: 'operation', tenantId: TENANT, connectionId: id, attempt: 1 });
    expect(calls[0]).not.toHaveProperty('schema');
  });
});
