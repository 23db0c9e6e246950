import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import type { Hono } from 'hono';
import { RegExpRouter } from 'hono/router/reg-exp-router';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { adminRoutes } from '../src/api/admin.js';
import { createApp } from '../src/api/app.js';
import type { AppDeps, AppEnv } from '../src/api/env.js';
import { CreateBatcher } from '../src/api/create-batcher.js';
import { jwtAuthenticator } from '../src/api/jwt-auth.js';
import { rateLimitPerTenant } from '../src/api/rate-limit.js';
import { Metrics } from '../src/shared/metrics.js';
import { createApiContext, silentLog, type ApiContext } from './support/context.js';
import { monitorRedis } from './support/monitor.js';

let ctx: ApiContext;
beforeEach(async () => {
  ctx = await createApiContext();
});
afterEach(async () => {
  await ctx.close();
});

const OPS = '/v1.0/external/connections/contosohr/operations';

async function expectGraphError(response: Response, status: number, code: string, message?: RegExp) {
  expect(response.status).toBe(status);
  const body = (await response.json()) as { error: { code: string; message: string; innerError: Record<string, string> } };
  expect(body.error.code).toBe(code);
  if (message) expect(body.error.message).toMatch(message);
  expect(body.error.innerError['request-id']).toBe(response.headers.get('request-id'));
  expect(body.error.innerError.date).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  return body;
}

describe('POST operations', () => {
  it('answers 201 with status inprogress, an absolute Location and Retry-After', async () => {
    const response = await ctx.post(OPS, { id: 'op-1' });
    expect(response.status).toBe(201);
    expect(response.headers.get('location')).toBe(`http://localhost${OPS}/op-1`);
    expect(response.headers.get('retry-after')).toBe('1');
    const body = (await response.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ id: 'op-1', status: 'inprogress', error: null });
    // The create's batch job carries it, and the record names that job.
    const batchJobId = await ctx.store.batchJobOf({ tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'contosohr', operationId: 'op-1' });
    expect(batchJobId).toMatch(/^batch~/);
    expect(await ctx.queue.stateOfJob(batchJobId!)).toBe('waiting');
  });

  it('carries creates of one tick in one job, and answers each on its own', async () => {
    const batcher = new CreateBatcher(ctx.store, ctx.queue, silentLog, { jobFollowsRecords: true });
    const tenantId = '11111111-1111-4111-8111-111111111111';
    const refs = [
      { tenantId, connectionId: 'contosohr', operationId: 'same-tick-1' },
      { tenantId, connectionId: 'contosohr', operationId: 'same-tick-2' },
      { tenantId, connectionId: 'otherconn', operationId: 'same-tick-3' },
      { tenantId, connectionId: 'contosohr', operationId: 'same-tick-1' },
    ];
    const answers = await Promise.all(refs.map((ref) => batcher.create(ref)));
    expect(answers.map((answer) => answer.result)).toEqual(['created', 'created', 'created', 'exists']);
    const jobs = new Set(await Promise.all(refs.map((ref) => ctx.store.batchJobOf(ref))));
    expect(jobs.size).toBe(1);
    expect(await ctx.queue.stateOfJob([...jobs][0]!)).toBe('waiting');
  });

  describe('group commit', () => {
    const tenantId = '11111111-1111-4111-8111-111111111111';
    const ref = (operationId: string) => ({ tenantId, connectionId: 'contosohr', operationId });
    const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

    it('makes every batch job takeable only after each record it carries is written, and names each operation in it once', async () => {
      // MONITOR lists, in the order Redis runs them, the commands of every client, those that
      // scripts call included: the records' HSETs and the job's push onto its queue's wait list.
      const monitor = await monitorRedis(ctx.config.REDIS_URL);
      const { commands } = monitor;
      const batcher = new CreateBatcher(ctx.store, ctx.queue, silentLog, { jobFollowsRecords: true });
      const ids = Array.from({ length: 60 }, (_, i) => `follow-${i}`);
      // Three batches, two connections, and an id given twice in the first batch.
      const refs = [...ids.slice(0, 5).map(ref), ref('follow-1'), ...ids.slice(5).map(ref), { tenantId, connectionId: 'otherconn', operationId: 'follow-x' }];
      const answers = await Promise.all(refs.map((r) => batcher.create(r)));
      expect(answers.filter((answer) => answer.result === 'created')).toHaveLength(61);
      const jobIds = [...new Set(await Promise.all(refs.map((r) => ctx.store.batchJobOf(r))))] as string[];
      expect(jobIds).toHaveLength(3);
      const pushed = (jobId: string) => commands.findIndex((command) => /^lpush \S+:wait /i.test(command) && command.endsWith(jobId));
      await vi.waitFor(() => {
        for (const jobId of jobIds) expect(pushed(jobId)).toBeGreaterThanOrEqual(0);
      });
      monitor.stop();
      for (const jobId of jobIds) {
        const records = commands.flatMap((command, i) => (/^hset \S+:o:/i.test(command) && command.includes(` j ${jobId}`) ? [i] : []));
        expect(records.length, jobId).toBeGreaterThanOrEqual(1);
        expect(pushed(jobId), jobId).toBeGreaterThan(Math.max(...records));
      }
      const jobData = commands.filter((command) => /^hmset /i.test(command) && jobIds.some((jobId) => command.includes(`${jobId} name`))).join('\n');
      for (const id of [...ids, 'follow-x']) expect(jobData.split(`"operationId":"${id}"`).length - 1, id).toBe(1);
    });

    /** The real store, with each createMany call recorded and held until released. */
    function heldStore() {
      const calls: string[][] = [];
      const holds: (() => void)[] = [];
      return {
        calls,
        release: () => holds.shift()?.(),
        store: {
          createMany: async (...args: Parameters<ApiContext['store']['createMany']>) => {
            calls.push(args[1]);
            await new Promise<void>((release) => holds.push(release));
            return ctx.store.createMany(...args);
          },
        },
      };
    }

    it('sends a full batch at once and gathers the creates behind it until it is written', async () => {
      const held = heldStore();
      const batcher = new CreateBatcher(held.store, ctx.queue, silentLog, { maxWaitMs: 60_000 });
      const answers = Array.from({ length: 27 }, (_, i) => batcher.create(ref(`full-${i}`)));
      await nextTurn();
      expect(held.calls.map((ids) => ids.length)).toEqual([25]);
      held.release();
      await vi.waitFor(() => expect(held.calls.map((ids) => ids.length)).toEqual([25, 2]));
      held.release();
      expect((await Promise.all(answers)).every((answer) => answer.result === 'created')).toBe(true);
      const jobs = new Set(await Promise.all(answers.map((_, i) => ctx.store.batchJobOf(ref(`full-${i}`)))));
      expect(jobs.size).toBe(2);
    });

    it('waits at most maxWaitMs for a commit in flight', async () => {
      const held = heldStore();
      const batcher = new CreateBatcher(held.store, ctx.queue, silentLog, { maxWaitMs: 5 });
      const first = batcher.create(ref('slow-first'));
      await nextTurn();
      const second = batcher.create(ref('slow-second'));
      // The first commit is still held: the second goes on its own once 5 ms have passed.
      await vi.waitFor(() => expect(held.calls).toEqual([['slow-first'], ['slow-second']]));
      held.release();
      held.release();
      expect((await Promise.all([first, second])).map((answer) => answer.result)).toEqual(['created', 'created']);
    });
  });

  it('generates a UUID when the body has no id', async () => {
    const response = await ctx.post(OPS, {});
    const body = (await response.json()) as { id: string };
    expect(body.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it.each([
    ['/external/connections/contosohr/operations'],
    ['/connections/contosohr/operations'],
    ['/external/connections/contosohr/operations/$ref'],
    ['/connections/contosohr/operations/$ref'],
    ['/v1.0/external/connections/contosohr/operations/%24ref'],
    ['/beta/connections/contosohr/operations'],
    ['/beta/external/connections/contosohr/operations/$ref'],
  ])('accepts creates at %s and points Location at the operation', async (path) => {
    const response = await ctx.post(path, { id: 'same' });
    expect(response.status).toBe(201);
    const collection = path.replace(/\/(\$|%24)ref$/, '');
    expect(response.headers.get('location')).toBe(`http://localhost${collection}/same`);
  });

  it('accepts every documented property with each allowed value, alone or together (property)', async () => {
    let run = 0;
    const body = fc.record(
      {
        '@odata.type': fc.constantFrom('#microsoft.graph.connectionOperation', 'microsoft.graph.connectionOperation'),
        // Made unique per run below, so no create meets an id already taken.
        id: fc.stringMatching(/^[A-Za-z0-9._~-]{1,100}$/),
        status: fc.constantFrom('unspecified', 'inprogress'),
        error: fc.constant(null),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(body, async (generated) => {
        const sent = generated.id === undefined ? generated : { ...generated, id: `${generated.id}-${run++}` };
        const response = await ctx.post(OPS, sent);
        expect(response.status, JSON.stringify(sent)).toBe(201);
        const created = (await response.json()) as { id: string; status: string; error: unknown };
        expect(created).toMatchObject({ status: 'inprogress', error: null });
        if (sent.id !== undefined) expect(created.id).toBe(sent.id);
      }),
      { numRuns: 60 },
    );
  });

  it('accepts a client id made only of digits', async () => {
    const response = await ctx.post(OPS, { id: '1234567890' });
    expect(response.status).toBe(201);
    const read = await ctx.request(`${OPS}/1234567890`);
    expect(await read.json()).toMatchObject({ id: '1234567890', status: 'inprogress' });
  });

  it('treats an empty body without Content-Type as an empty object', async () => {
    const response = await ctx.request(OPS, { method: 'POST' });
    expect(response.status).toBe(201);
  });

  it.each([
    [{ name: 'x' }, /Property 'name' is not allowed/],
    [{ id: 'has space' }, /Property 'id' must be 1-128 characters/],
    [{ id: 'x'.repeat(129) }, /Property 'id' must be 1-128/],
    [{ id: 42 }, /Property 'id' must be a string/],
    [{ status: 'completed' }, /Property 'status' must be "unspecified" or "inprogress"/],
    [{ status: 'unknownFutureValue' }, /Property 'status'/],
    [{ error: { errorCode: 'x', message: 'y' } }, /Property 'error' must be null/],
    [{ '@odata.type': '#microsoft.graph.externalItem' }, /Property '@odata.type' must be/],
    [[1, 2], /must be a JSON object/],
    ['"text"', /must be a JSON object/],
  ])('answers 400 naming the property for %j', async (body, message) => {
    await expectGraphError(await ctx.post(OPS, body), 400, 'badRequest', message);
  });

  it.each(['.', '..'])('answers 400 naming the rule for the id %j, which no URL could read back', async (id) => {
    await expectGraphError(await ctx.post(OPS, { id }), 400, 'badRequest', /Property 'id' must be .*not "\." or "\.\."/);
  });

  it('accepts ids with dots that are not a whole path segment of dots, and reads them back', async () => {
    for (const id of ['...', '.a', 'a..b']) {
      expect((await ctx.post(OPS, { id })).status, id).toBe(201);
      expect((await ctx.request(`${OPS}/${id}`)).status, id).toBe(200);
    }
  });

  it('answers 400 when the body is not JSON', async () => {
    await expectGraphError(await ctx.post(OPS, '{"id": '), 400, 'badRequest', /not valid JSON/);
  });

  it('answers 409 when the id is already taken in the connection', async () => {
    expect((await ctx.post(OPS, { id: 'dup' })).status).toBe(201);
    await expectGraphError(await ctx.post(OPS, { id: 'dup' }), 409, 'conflict', /'dup' already exists/);
  });

  it('allows the same id in another connection', async () => {
    expect((await ctx.post(OPS, { id: 'dup' })).status).toBe(201);
    expect((await ctx.post('/external/connections/otherconn/operations', { id: 'dup' })).status).toBe(201);
  });

  it('answers 413 for a body over 1 MiB, declared or streamed', async () => {
    const big = JSON.stringify({ id: 'x', pad: 'y'.repeat(1024 * 1024) });
    await expectGraphError(await ctx.post(OPS, big), 413, 'requestEntityTooLarge');
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(big));
        controller.close();
      },
    });
    const chunked = await ctx.request(OPS, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: stream,
      duplex: 'half',
    });
    await expectGraphError(chunked, 413, 'requestEntityTooLarge');
  });

  it.each(['text/plain', 'application/x-www-form-urlencoded', 'application/xml'])('answers 415 for Content-Type %s', async (type) => {
    await expectGraphError(await ctx.post(OPS, '{}', { 'content-type': type }), 415, 'unsupportedMediaType');
  });

  it.each([
    ['a plain JSON body labelled gzip', 'gzip', '{"id":"labelled"}'],
    ['a real gzip body', 'gzip', gzipSync('{"id":"zipped"}')],
    ['a br body', 'br', '{"id":"brotli"}'],
  ])('answers 415 naming the coding for %s', async (_, coding, body) => {
    const response = await ctx.request(OPS, { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': coding }, body });
    await expectGraphError(response, 415, 'unsupportedMediaType', new RegExp(`Content-Encoding '${coding}'`));
  });

  it('accepts Content-Encoding identity', async () => {
    expect((await ctx.post(OPS, '{}', { 'content-encoding': 'identity' })).status).toBe(201);
  });

  it('accepts application/json with a charset', async () => {
    expect((await ctx.post(OPS, '{}', { 'content-type': 'application/json; charset=utf-8' })).status).toBe(201);
  });
});

describe('connection ids', () => {
  it.each(['ab', 'a'.repeat(33), 'has-dash', 'MicrosoftThing', 'microsoftthing', 'SharePoint', 'teams', 'MSFTAllConnectors1'.slice(0, 2)])(
    'answers 400 stating the rule for %s',
    async (id) => {
      const body = await expectGraphError(await ctx.post(`/external/connections/${id}/operations`, {}), 400, 'badRequest');
      expect(body.error.message).toContain('3-32 ASCII letters and digits');
      await expectGraphError(await ctx.request(`/external/connections/${id}/operations`), 400, 'badRequest');
    },
  );

  it.each(['abc', 'a'.repeat(32), 'Contoso2024', '123'])('accepts %s', async (id) => {
    expect((await ctx.post(`/external/connections/${id}/operations`, {})).status).toBe(201);
  });
});

describe('GET an operation', () => {
  it('answers 200 with the operation and Retry-After while inprogress', async () => {
    await ctx.post(OPS, { id: 'op-1' });
    const response = await ctx.request(`${OPS}/op-1`);
    expect(response.status).toBe(200);
    expect(response.headers.get('retry-after')).toBe('1');
    expect(await response.json()).toMatchObject({ id: 'op-1', status: 'inprogress', error: null });
  });

  it('shows a terminal status and its errorDetail, without Retry-After', async () => {
    await ctx.post(OPS, { id: 'op-1' });
    const detail = { errorCode: 'itemBroken', message: 'broken', details: [{ source: 'x' }] };
    await ctx.store.finish({ tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'contosohr', operationId: 'op-1' }, 'failed', detail);
    const response = await ctx.request(`/beta/connections/contosohr/operations/op-1`);
    expect(response.headers.get('retry-after')).toBeNull();
    expect(await response.json()).toMatchObject({ id: 'op-1', status: 'failed', error: detail });
  });

  it.each(['missing', 'bad%20id', 'x'.repeat(200)])('answers 404 for %s', async (id) => {
    await expectGraphError(await ctx.request(`${OPS}/${id}`), 404, 'itemNotFound');
  });
});

describe('list operations', () => {
  async function createMany(count: number, connection = 'contosohr') {
    for (let i = 0; i < count; i++) {
      expect((await ctx.post(`/external/connections/${connection}/operations`, { id: `op${String(i).padStart(3, '0')}` })).status).toBe(201);
    }
  }

  it('answers an empty list for a connection without operations', async () => {
    const response = await ctx.request(OPS);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ value: [] });
  });

  it('pages newest first through absolute nextLinks until every operation is seen once', async () => {
    await createMany(7);
    const seen: string[] = [];
    let url: string | undefined = `${OPS}?$top=3`;
    let pages = 0;
    while (url) {
      const response = await ctx.request(url);
      expect(response.status).toBe(200);
      const body = (await response.json()) as { value: { id: string }[]; '@odata.nextLink'?: string };
      seen.push(...body.value.map((op) => op.id));
      url = body['@odata.nextLink'];
      if (url) {
        expect(url).toMatch(/^http:\/\/localhost\/v1\.0\/external\/connections\/contosohr\/operations\?\$top=3&\$skiptoken=/);
        url = url.replace('http://localhost', '');
      }
      pages++;
    }
    expect(pages).toBe(3);
    expect(seen).toEqual(['op006', 'op005', 'op004', 'op003', 'op002', 'op001', 'op000']);
  });

  it('reaches an inprogress operation behind 60 newer ones that completed and expired, with $top=1', async () => {
    await ctx.close();
    ctx = await createApiContext({ OPERATION_RETENTION_SECONDS: '1' });
    await createMany(61);
    const ref = { tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'contosohr' };
    const finished = Array.from({ length: 60 }, (_, i) => ({ operationId: `op${String(i + 1).padStart(3, '0')}`, status: 'completed' as const }));
    expect(new Set(await ctx.store.finishMany(ref, finished))).toEqual(new Set(['finished']));
    // Retention 1 s: wait for Redis to expire the 60 hashes; their index entries stay.
    const ids = finished.map((op) => op.operationId);
    await vi.waitFor(
      async () => expect(await Promise.all(ids.map((operationId) => ctx.store.get({ ...ref, operationId })))).toEqual(ids.map(() => undefined)),
      { timeout: 5000, interval: 50 },
    );

    const seen: string[] = [];
    const pageSizes: number[] = [];
    let url: string | undefined = `${OPS}?$top=1`;
    while (url && pageSizes.length < 100) {
      const response = await ctx.request(url);
      expect(response.status).toBe(200);
      const body = (await response.json()) as { value: { id: string; status: string }[]; '@odata.nextLink'?: string };
      seen.push(...body.value.map((op) => `${op.id}:${op.status}`));
      pageSizes.push(body.value.length);
      url = body['@odata.nextLink']?.replace('http://localhost', '');
    }
    expect(seen).toEqual(['op000:inprogress']);
    // The first page's scan budget went to expired entries: it is empty, and still has a nextLink.
    expect(pageSizes[0]).toBe(0);
  });

  it('filters by status and counts with $count=true', async () => {
    await createMany(4);
    const ref = { tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'contosohr' };
    await ctx.store.finish({ ...ref, operationId: 'op001' }, 'completed');
    await ctx.store.finish({ ...ref, operationId: 'op002' }, 'failed', { errorCode: 'x', message: 'y', details: [] });

    const completed = await ctx.request(`${OPS}?$filter=status eq 'completed'&$count=true`);
    expect(await completed.json()).toMatchObject({ '@odata.count': 1, value: [{ id: 'op001', status: 'completed' }] });
    const inprogress = (await (await ctx.request(`${OPS}?$filter=${encodeURIComponent("status eq 'inprogress'")}`)).json()) as {
      value: { id: string }[];
    };
    expect(inprogress.value.map((op) => op.id)).toEqual(['op003', 'op000']);
    const all = await ctx.request(`${OPS}?$count=true&$top=1`);
    expect(await all.json()).toMatchObject({ '@odata.count': 4 });
    expect(await (await ctx.request(`${OPS}?$filter=status eq 'unspecified'`)).json()).toEqual({ value: [] });
  });

  it.each([
    ['$top=0', /\$top/],
    ['$top=1000', /\$top/],
    ['$top=abc', /\$top/],
    ['$filter=id eq \'x\'', /\$filter/],
    ['$filter=status eq \'done\'', /\$filter/],
    ['$count=yes', /\$count/],
    ['$skiptoken=garbage', /\$skiptoken/],
    ['$select=id', /'\$select' is not supported/],
    ['$orderby=id', /'\$orderby' is not supported/],
    ['$top=1&$top=2', /more than once/],
  ])('answers 400 for %s', async (query, message) => {
    await expectGraphError(await ctx.request(`${OPS}?${query}`), 400, 'badRequest', message);
  });

  it('builds links from PUBLIC_BASE_URL, or from trusted X-Forwarded headers', async () => {
    await ctx.close();
    ctx = await createApiContext({ PUBLIC_BASE_URL: 'https://api.contoso.com/ops/' });
    const created = await ctx.post(OPS, { id: 'a' });
    expect(created.headers.get('location')).toBe(`https://api.contoso.com/ops${OPS}/a`);

    await ctx.close();
    ctx = await createApiContext({ TRUST_PROXY: 'true' });
    const forwarded = { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'graph.contoso.com, internal:3000' };
    const proxied = await ctx.post(OPS, { id: 'b' }, forwarded);
    expect(proxied.headers.get('location')).toBe(`https://graph.contoso.com${OPS}/b`);
    await ctx.post(OPS, { id: 'c' });
    const page = (await (await ctx.request(`${OPS}?$top=1`, { headers: forwarded })).json()) as Record<string, string>;
    expect(page['@odata.nextLink']).toMatch(/^https:\/\/graph\.contoso\.com\/v1\.0\/external/);
  });

  it('ignores X-Forwarded headers unless TRUST_PROXY is set', async () => {
    const created = await ctx.post(OPS, { id: 'a' }, { 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https' });
    expect(created.headers.get('location')).toBe(`http://localhost${OPS}/a`);
  });
});

describe('every response', () => {
  it('carries a request-id and echoes client-request-id', async () => {
    const response = await ctx.request(OPS, { headers: { 'client-request-id': 'abc-123' } });
    expect(response.headers.get('request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(response.headers.get('client-request-id')).toBe('abc-123');
    const error = await ctx.request('/nowhere', { headers: { 'client-request-id': 'abc-123' } });
    const body = await expectGraphError(error, 404, 'notFound');
    expect(body.error.innerError['client-request-id']).toBe('abc-123');
    expect(error.headers.get('client-request-id')).toBe('abc-123');
    // Answers built outside the operation routes get the ids from the middleware.
    const document = await ctx.request('/openapi.json', { headers: { 'client-request-id': 'abc-123' } });
    expect(document.headers.get('request-id')).toMatch(/^[0-9a-f-]{36}$/);
    expect(document.headers.get('client-request-id')).toBe('abc-123');
  });

  it.each([
    ['DELETE', `${OPS}/op-1`, 'GET'],
    ['PATCH', OPS, 'GET, POST'],
    ['DELETE', `${OPS}/$ref`, 'POST'],
    ['PUT', '/beta/connections/contosohr/operations', 'GET, POST'],
  ])('answers 405 to %s %s with Allow: %s', async (method, path, allow) => {
    const response = await ctx.request(path, { method });
    await expectGraphError(response, 405, 'methodNotAllowed');
    expect(response.headers.get('allow')).toBe(allow);
  });

  // Hono's default router tries its RegExpRouter and falls back to the slower TrieRouter for
  // every request when a route is one the RegExpRouter cannot compile (as app.all() routes beside
  // the static $ref route were). Checked through public API only: the app's routes, added to a
  // RegExpRouter of the same Hono, must compile.
  function compilesOnRegExpRouter(app: Hono<AppEnv>): void {
    const router = new RegExpRouter<unknown>();
    for (const route of app.routes) router.add(route.method, route.path, route.handler);
    router.match('GET', '/healthz'); // compiles every method's matcher; throws if it cannot
  }
  function appWith(parts: Partial<Pick<AppDeps, 'rateLimit' | 'metrics' | 'admin'>>): Hono<AppEnv> {
    const deps: AppDeps = {
      store: ctx.store,
      creates: new CreateBatcher(ctx.store, ctx.queue, silentLog, { jobFollowsRecords: true }),
      connections: ctx.connections,
      queue: ctx.queue,
      watch: ctx.watch,
      auth: jwtAuthenticator(ctx.config),
      config: ctx.config,
      log: silentLog,
      ready: async () => true,
    };
    return createApp({ ...deps, ...parts });
  }

  it('registers only routes the RegExpRouter compiles, so Hono does not fall back to its trie router, also with the rate limit and metrics', () => {
    expect(() => compilesOnRegExpRouter(ctx.app)).not.toThrow();
    const limitedAndMeasured = appWith({ rateLimit: rateLimitPerTenant(ctx.redis, ctx.store.keys, 100), metrics: new Metrics({ processMetrics: false }) });
    expect(() => compilesOnRegExpRouter(limitedAndMeasured)).not.toThrow();
  });

  it('registers only routes the RegExpRouter compiles with the admin dashboard mounted', () => {
    compilesOnRegExpRouter(appWith({ admin: adminRoutes({ queues: ctx.queue.queues, user: 'ops', password: 'pw', readOnly: true }) }));
  });

  it('answers healthz and readyz without a token', async () => {
    expect((await ctx.app.request('/healthz')).status).toBe(200);
    expect(await (await ctx.app.request('/readyz')).json()).toEqual({ status: 'ready' });
  });
});
