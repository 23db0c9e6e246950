import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  BatchRequestContent,
  BatchResponseContent,
  Client,
  GraphError,
  PageIterator,
  ResponseType,
  type BatchRequestStep,
  type BatchResponseBody,
  type PageCollection,
} from '@microsoft/microsoft-graph-client';
import { HttpMethod, RequestInformation, type AuthenticationProvider } from '@microsoft/kiota-abstractions';
import { JsonParseNode } from '@microsoft/kiota-serialization-json';
import { GraphRequestAdapter } from '@microsoft/msgraph-sdk';
import {
  createConnectionOperationFromDiscriminatorValue,
  createExternalConnectionFromDiscriminatorValue,
  createSchemaFromDiscriminatorValue,
  type ConnectionOperation,
  type ExternalConnection,
  type Schema,
} from '@microsoft/msgraph-sdk/models/externalConnectors/index.js';
import { createODataErrorFromDiscriminatorValue, type ODataError } from '@microsoft/msgraph-sdk/models/oDataErrors/index.js';
import { createGraphClientFactory } from '@microsoft/msgraph-sdk-core';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHttpServer } from '../src/api/http-server.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { Subscriber } from '../src/shared/subscriber.js';
import { OperationFailure, type Processor } from '../src/worker/processor.js';
import { createWorker, type OperationWorker } from '../src/worker/worker.js';
import { createApiContext, silentLog, type ApiContext } from './support/context.js';
import { selfSignedCertificate, startTlsProxy, type TlsProxy } from './support/tls-proxy.js';
import { pollUntil } from './support/wait.js';

/**
 * The service as the real Microsoft Graph clients see it: the Graph JS client (3.0.7) and the
 * v1.0 Kiota SDK (@microsoft/msgraph-sdk), over https through a TLS-terminating proxy (both send
 * the token only over https), with the API behind it trusting the proxy's X-Forwarded-* headers
 * and a worker in the same process finishing the operations. What each client must be able to
 * do: create, read, list and follow @odata.nextLink, cancel, batch with dependsOn (and read a
 * 424), read Graph errors, read a failed operation's error with the v1.0 model, and provision a
 * connection's schema: create it, PATCH the schema, poll the 202's Location until the operation
 * completes, and read the connection ready with the v1.0 models.
 */

const CERT = selfSignedCertificate();
/** Trusts the proxy's certificate (and no other change to TLS checking). */
const dispatcher = new Agent({ connect: { ca: CERT.cert } });
/** Node's fetch, which both clients call, takes an undici dispatcher in its init (typed by
 *  undici-types in @types/node, a copy of the undici package's types that does not compare). */
const trustingInit = { dispatcher } as unknown as RequestInit;

/** What the in-process worker does: ids starting `fail-` fail with an errorDetail (the seed's
 *  model, with a detail), `hold-` wait for a cancel, anything else completes. */
const FAILURE = { errorCode: 'InvalidSchema', message: 'The item has no title.', details: [{ source: 'title', message: 'required' }] };
const processor: Processor = async ({ operation, signal }) => {
  if (operation.id.startsWith('fail-')) throw new OperationFailure(FAILURE);
  if (operation.id.startsWith('hold-')) {
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    signal.throwIfAborted();
  }
};

let ctx: ApiContext;
let server: Server;
let proxy: TlsProxy;
let workerRedis: RedisClient;
let workerEvents: Subscriber;
let worker: OperationWorker;
let client: Client;
/** `https://localhost:<proxy port>/v1.0`: what clients are configured with. */
let graphBase: string;

beforeAll(async () => {
  ctx = await createApiContext({ TRUST_PROXY: 'true' });
  server = createHttpServer(ctx.app, ctx.config, silentLog);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy = await startTlsProxy(CERT, { host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  graphBase = `${proxy.origin}/v1.0`;

  workerRedis = createRedis({ url: ctx.config.REDIS_URL, role: 'consumer' });
  await waitUntilReady(workerRedis);
  workerEvents = new Subscriber(createRedis({ url: ctx.config.REDIS_URL, role: 'subscriber' }), silentLog);
  worker = createWorker({
    connection: workerRedis,
    store: ctx.store,
    queue: ctx.queue,
    connections: ctx.connections,
    processor,
    config: ctx.config,
    log: silentLog,
    subscriber: workerEvents,
  });
  await worker.hearingCancels;

  client = Client.init({
    authProvider: (done) => done(null, ctx.token),
    baseUrl: proxy.origin,
    defaultVersion: 'v1.0',
    // The client attaches the token only to Graph's own hosts and these (and only over https).
    customHosts: new Set(['localhost']),
    // Passed through to each fetch.
    fetchOptions: trustingInit,
  });
});

afterAll(async () => {
  await worker?.close(1000);
  await workerEvents?.close();
  await workerRedis?.quit();
  await proxy?.close();
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await ctx?.close();
  await dispatcher.close();
});

const operations = (connection: string) => `/external/connections/${connection}/operations`;

interface GraphOperation {
  id: string;
  status: string;
  error: unknown;
}

/** Reads an operation's JSON with today's v1.0 SDK model, as a Kiota client does. */
function asV1Model(json: string): ConnectionOperation {
  return new JsonParseNode(JSON.parse(json)).getObjectValue(createConnectionOperationFromDiscriminatorValue);
}

/** Reads a connection's JSON with the v1.0 SDK model. */
function asV1Connection(json: string): ExternalConnection {
  return new JsonParseNode(JSON.parse(json)).getObjectValue(createExternalConnectionFromDiscriminatorValue);
}

describe('the Graph JS client (@microsoft/microsoft-graph-client)', () => {
  it('creates (201 with an https Location it can follow), reads, and lists following @odata.nextLink through the proxy', async () => {
    const connection = 'jsclient';
    const created = (await client.api(operations(connection)).responseType(ResponseType.RAW).post({ id: 'js-1' })) as Response;
    expect(created.status).toBe(201);
    const location = created.headers.get('location');
    expect(location).toBe(`${graphBase}${operations(connection)}/js-1`);
    expect(await created.json()).toMatchObject({ id: 'js-1', status: 'inprogress' });

    // The client follows the absolute Location as it is: through the proxy, with the token.
    expect(await client.api(location!).get()).toMatchObject({ id: 'js-1' });
    for (const id of ['js-2', 'js-3', 'js-4', 'js-5']) {
      expect(await client.api(operations(connection)).post({ id })).toMatchObject({ id, status: 'inprogress' });
    }
    expect(await client.api(`${operations(connection)}/js-2`).get()).toMatchObject({ id: 'js-2' });

    const first = (await client.api(operations(connection)).top(2).count(true).get()) as PageCollection;
    expect(first['@odata.count']).toBe(5);
    expect(first.value).toHaveLength(2);
    expect(first['@odata.nextLink']).toMatch(new RegExp(`^${graphBase.replace(/\./g, '\\.')}${operations(connection)}\\?`));
    const seen: string[] = [];
    await new PageIterator(client, first, (item: GraphOperation) => {
      seen.push(item.id);
      return true;
    }).iterate();
    // Three pages, newest first, each operation once.
    expect(seen).toHaveLength(5);
    expect(new Set(seen)).toEqual(new Set(['js-1', 'js-2', 'js-3', 'js-4', 'js-5']));
  });

  it('reads Graph errors as GraphError: the status, code and message of a 404 and a 409', async () => {
    const connection = 'jserrors';
    const missing = await client.api(`${operations(connection)}/nosuch`).get().then(() => undefined, (error: unknown) => error);
    expect(missing).toBeInstanceOf(GraphError);
    expect(missing).toMatchObject({ statusCode: 404, code: 'itemNotFound' });
    expect((missing as GraphError).message).toContain('nosuch');
    expect((missing as GraphError).requestId).toMatch(/^[0-9a-f-]{36}$/);

    await client.api(operations(connection)).post({ id: 'twice' });
    const again = await client.api(operations(connection)).post({ id: 'twice' }).then(() => undefined, (error: unknown) => error);
    expect(again).toMatchObject({ statusCode: 409, code: 'conflict' });
  });

  it('cancels an operation in progress: 200 with it failed, operationCanceled', async () => {
    const connection = 'jscancel';
    await client.api(operations(connection)).post({ id: 'hold-1' });
    const canceled = (await client.api(`${operations(connection)}/hold-1/cancel`).post({})) as { status: string; error: { errorCode: string; code: string } };
    expect(canceled).toMatchObject({ id: 'hold-1', status: 'failed', error: { errorCode: 'operationCanceled', code: 'operationCanceled' } });
    // A second cancel is idempotent.
    expect(await client.api(`${operations(connection)}/hold-1/cancel`).post({})).toMatchObject({ status: 'failed' });
  });

  it('batches three creates in a serial dependsOn chain and a GET after them: 201 ×3 and 200, each Location an https URL of the proxy', async () => {
    const connection = 'jsbatch';
    const create = (id: string): Request =>
      new Request(`${graphBase}${operations(connection)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ id }),
      });
    const steps: BatchRequestStep[] = [
      { id: '1', request: create('batch-1') },
      { id: '2', request: create('batch-2'), dependsOn: ['1'] },
      { id: '3', request: create('batch-3'), dependsOn: ['2'] },
      { id: '4', request: new Request(`${graphBase}${operations(connection)}/batch-1`, { method: 'GET' }), dependsOn: ['3'] },
    ];
    const content = await new BatchRequestContent(steps).getContent();
    const answers = new BatchResponseContent((await client.api('/$batch').post(content)) as BatchResponseBody);

    for (const [step, id] of [['1', 'batch-1'], ['2', 'batch-2'], ['3', 'batch-3']] as const) {
      const response = answers.getResponseById(step);
      expect(response?.status, `request ${step}`).toBe(201);
      expect(response?.headers.get('location')).toBe(`${graphBase}${operations(connection)}/${id}`);
      expect(await response?.json()).toMatchObject({ id, status: 'inprogress' });
    }
    const read = answers.getResponseById('4');
    expect(read?.status).toBe(200);
    expect(await read?.json()).toMatchObject({ id: 'batch-1' });
    // And they were created, for the client reading them on its own.
    expect(await client.api(`${operations(connection)}/batch-3`).get()).toMatchObject({ id: 'batch-3' });
  });

  it('batches a chain whose second create is a 409: the GET depending on it answers 424, readable through BatchResponseContent', async () => {
    const connection = 'jsbatchfail';
    const create = () =>
      new Request(`${graphBase}${operations(connection)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ id: 'dup' }),
      });
    const batch = new BatchRequestContent([
      { id: 'first', request: create() },
      { id: 'again', request: create(), dependsOn: ['first'] },
      { id: 'read', request: new Request(`${graphBase}${operations(connection)}/dup`), dependsOn: ['again'] },
    ]);
    const answers = new BatchResponseContent((await client.api('/$batch').post(await batch.getContent())) as BatchResponseBody);
    expect(answers.getResponseById('first')?.status).toBe(201);
    const again = answers.getResponseById('again');
    expect(again?.status).toBe(409);
    expect(await again?.json()).toMatchObject({ error: { code: 'conflict' } });
    const read = answers.getResponseById('read');
    expect(read?.status).toBe(424);
    expect(await read?.json()).toMatchObject({ error: { code: 'failedDependency', message: expect.stringContaining('again') as unknown } });
  });
});

describe('a failed operation read with the v1.0 SDK model (Kiota: error is errorEscaped, a publicError)', () => {
  const connection = 'kiota';

  it('keeps the code, message and detail target of an error recorded as an errorDetail, fetched with the Graph JS client', async () => {
    await client.api(operations(connection)).post({ id: 'fail-1' });
    // Held until the worker has failed it.
    const text = (await client
      .api(`${operations(connection)}/fail-1`)
      .header('Prefer', 'wait=10')
      .responseType(ResponseType.TEXT)
      .get()) as string;
    const operation = asV1Model(text);
    expect(operation.id).toBe('fail-1');
    expect(operation.status).toBe('failed');
    expect(operation.errorEscaped?.code).toBe('InvalidSchema');
    expect(operation.errorEscaped?.message).toBe('The item has no title.');
    expect(operation.errorEscaped?.details).toHaveLength(1);
    expect(operation.errorEscaped?.details?.[0]).toMatchObject({ target: 'title', message: 'required' });
    // The seed model's names are not lost either: the v1.0 model keeps them as additional data.
    expect(operation.errorEscaped?.additionalData).toMatchObject({ errorCode: 'InvalidSchema' });
    expect(operation.errorEscaped?.details?.[0]?.additionalData).toMatchObject({ source: 'title' });
  });

  it('reads it through the Kiota request adapter as an SDK user does, and a 404 as an ODataError', async () => {
    await client.api(operations(connection)).post({ id: 'fail-2' });
    await client.api(`${operations(connection)}/fail-2`).header('Prefer', 'wait=10').get();

    const auth: AuthenticationProvider = {
      authenticateRequest: async (request) => {
        request.headers.add('Authorization', `Bearer ${ctx.token}`);
      },
    };
    const httpClient = createGraphClientFactory({ graphServiceTargetVersion: '' }, (url, init) => fetch(url, { ...init, ...trustingInit }));
    const adapter = new GraphRequestAdapter(auth, undefined, undefined, httpClient);
    adapter.baseUrl = graphBase;
    const get = (operationId: string) => {
      const request = new RequestInformation(HttpMethod.GET, '{+baseurl}/external/connections/{externalConnection%2Did}/operations/{connectionOperation%2Did}');
      request.pathParameters['externalConnection%2Did'] = connection;
      request.pathParameters['connectionOperation%2Did'] = operationId;
      request.headers.tryAdd('Accept', 'application/json');
      return adapter.send<ConnectionOperation>(request, createConnectionOperationFromDiscriminatorValue, { XXX: createODataErrorFromDiscriminatorValue });
    };

    const operation = await get('fail-2');
    expect(operation).toMatchObject({ id: 'fail-2', status: 'failed' });
    expect(operation?.errorEscaped).toMatchObject({ code: 'InvalidSchema', message: 'The item has no title.' });
    expect(operation?.errorEscaped?.details?.[0]).toMatchObject({ target: 'title', message: 'required' });

    const missing = await get('nosuch').then(() => undefined, (error: unknown) => error as ODataError);
    expect(missing?.responseStatusCode).toBe(404);
    expect(missing?.errorEscaped).toMatchObject({ code: 'itemNotFound' });
  });
});

describe('a connection and its schema with the Graph JS client, read with the v1.0 models', () => {
  const SCHEMA = {
    baseType: 'microsoft.graph.externalItem',
    properties: [
      { name: 'ticketTitle', type: 'string', isSearchable: true, isRetrievable: true, labels: ['title'] },
      { name: 'priority', type: 'string', isQueryable: true, isRetrievable: true, isRefinable: true },
      { name: 'assignee', type: 'string', isRetrievable: true, aliases: ['owner'] },
    ],
  };

  it('creates a connection, PATCHes its schema (202: Location and Retry-After read raw), polls the Location until completed, and reads the connection ready', async () => {
    const id = 'jsflow';
    const created = (await client.api('/external/connections').post({ id, name: 'Contoso tickets', description: 'Tickets of Contoso' })) as Record<string, unknown>;
    expect(created).toMatchObject({ id, name: 'Contoso tickets', state: 'draft' });

    const accepted = (await client.api(`/external/connections/${id}/schema`).responseType(ResponseType.RAW).patch(SCHEMA)) as Response;
    expect(accepted.status).toBe(202);
    expect(await accepted.text()).toBe('');
    expect(accepted.headers.get('retry-after')).toBe('2');
    const location = accepted.headers.get('location');
    // An absolute https URL of the proxy, naming the schema operation: the client follows it as it is.
    expect(location).toMatch(new RegExp(`^${graphBase.replace(/\./g, '\\.')}/external/connections/${id}/operations/[0-9a-f-]{36}$`));
    const operationId = location!.split('/').pop()!;

    // Polled with the client, each answer read with the v1.0 model. (Faster than the 2 s
    // Retry-After asks: the in-process worker finishes within milliseconds.)
    const polled: string[] = [];
    const { text, operation } = await pollUntil(
      async () => {
        const answer = (await client.api(location!).responseType(ResponseType.TEXT).get()) as string;
        const read = asV1Model(answer);
        polled.push(String(read.status));
        return read.status === 'inprogress' ? undefined : { text: answer, operation: read };
      },
      { timeoutMs: 10_000, what: `the schema operation at ${location} to end`, context: () => `statuses seen: ${polled.join(', ')}` },
    );
    expect(operation.id).toBe(operationId);
    expect(operation.status).toBe('completed');
    expect(operation.odataType).toBe('#microsoft.graph.connectionOperation');
    // (Kiota reads `"error": null` as an empty publicError, so the JSON says it.)
    expect(JSON.parse(text)).toMatchObject({ error: null });
    expect(operation.errorEscaped?.code).toBeUndefined();

    const connection = asV1Connection((await client.api(`/external/connections/${id}`).responseType(ResponseType.TEXT).get()) as string);
    expect(connection).toMatchObject({ id, name: 'Contoso tickets', description: 'Tickets of Contoso', state: 'ready' });
    expect(connection.odataType).toBe('#microsoft.graph.externalConnectors.externalConnection');
    // Nothing the v1.0 model does not know came back as additional data.
    expect(connection.additionalData ?? {}).toEqual({});

    const schema: Schema = new JsonParseNode(await client.api(`/external/connections/${id}/schema`).get()).getObjectValue(createSchemaFromDiscriminatorValue);
    expect(schema.baseType).toBe('microsoft.graph.externalItem');
    expect(schema.properties?.map((property) => property.name)).toEqual(['ticketTitle', 'priority', 'assignee']);
    expect(schema.properties?.[0]).toMatchObject({ type: 'string', isSearchable: true, labels: ['title'] });
  });

  it('reads a schema that breaks a rule as a GraphError: 400 InvalidRequest, the rule in innerError.code', async () => {
    const id = 'jsbadschema';
    await client.api('/external/connections').post({ id, name: 'Broken schema' });
    const broken = { baseType: 'microsoft.graph.externalItem', properties: [{ name: 'x', type: 'boolean', isRefinable: true }] };
    const refused = await client.api(`/external/connections/${id}/schema`).patch(broken).then(() => undefined, (error: unknown) => error);
    expect(refused).toBeInstanceOf(GraphError);
    expect(refused).toMatchObject({ statusCode: 400, code: 'InvalidRequest', message: "Refiner property 'x' cannot be of type 'Boolean'." });
    const body = JSON.parse((refused as GraphError).body as string) as { innerError: { code: string }; details: { code: string; target: string }[] };
    expect(body.innerError.code).toBe('RefinerShouldNotBeOfType');
    expect(body.details).toEqual([expect.objectContaining({ code: 'RefinerShouldNotBeOfType', target: 'x' })]);
    // Nothing was provisioned: the connection stays draft.
    expect(await client.api(`/external/connections/${id}`).get()).toMatchObject({ state: 'draft' });
  });
});
