import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiContext, signToken, type ApiContext } from './support/context.js';

/**
 * Graph JSON batching through the app, against the suite's real Redis: each request meets the
 * routes, validation, auth and errors it would meet alone; dependsOn orders them; a batch that
 * breaks one of Graph's rules is a 400 naming the rule. The real Graph clients' round trip is
 * in test/graph-clients.test.ts.
 */

let ctx: ApiContext;
beforeAll(async () => {
  ctx = await createApiContext();
});
afterAll(async () => {
  await ctx.close();
});

interface SubResponse {
  id: string;
  status: number;
  headers: Record<string, string>;
  body?: unknown;
}
const OPERATIONS = '/external/connections/batchconn/operations';
const JSON_HEADERS = { 'Content-Type': 'application/json' };

async function batch(requests: unknown, { path = '/v1.0/$batch', headers = {} }: { path?: string; headers?: Record<string, string> } = {}) {
  const response = await ctx.post(path, { requests }, headers);
  return { status: response.status, body: (await response.json()) as { responses: SubResponse[]; error?: { code: string; message: string } } };
}
const byId = (responses: SubResponse[]) => new Map(responses.map((response) => [response.id, response]));
let sequence = 0;
const freshId = () => `b-${++sequence}-${Date.now()}`;

describe('a batch of creates and reads', () => {
  it('answers every request as if it were sent alone: 201 with Location, 409, 404, 400', async () => {
    const id = freshId();
    const { status, body } = await batch([
      { id: 'create', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { id } },
      { id: 'again', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { id }, dependsOn: ['create'] },
      { id: 'missing', method: 'GET', url: `${OPERATIONS}/nosuch` },
      { id: 'invalid', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { name: 'x' } },
      { id: 'badconn', method: 'GET', url: '/external/connections/Microsoft1/operations' },
    ]);
    expect(status).toBe(200);
    const answers = byId(body.responses);
    expect(answers.size).toBe(5);
    expect(answers.get('create')).toMatchObject({
      status: 201,
      headers: { 'Content-Type': 'application/json', Location: `http://localhost/v1.0${OPERATIONS}/${id}`, 'Retry-After': '1' },
      body: { id, status: 'inprogress' },
    });
    expect(answers.get('again')).toMatchObject({ status: 409, body: { error: { code: 'conflict' } } });
    expect(answers.get('missing')).toMatchObject({ status: 404, body: { error: { code: 'itemNotFound' } } });
    expect(answers.get('invalid')).toMatchObject({ status: 400, body: { error: { message: expect.stringContaining("'name'") as unknown } } });
    expect(answers.get('badconn')).toMatchObject({ status: 400, body: { error: { message: expect.stringContaining('3-32') as unknown } } });
  });

  it('runs a request after the ones it depends on, and answers 424 when one of them did not succeed', async () => {
    const id = freshId();
    const { body } = await batch([
      { id: '1', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { id } },
      { id: '2', method: 'GET', url: `${OPERATIONS}/${id}`, dependsOn: ['1'] },
      { id: '3', method: 'GET', url: `${OPERATIONS}/nosuch`, dependsOn: ['2'] },
      { id: '4', method: 'GET', url: `${OPERATIONS}/${id}`, dependsOn: ['3'] },
      { id: '5', method: 'GET', url: `${OPERATIONS}/${id}`, dependsOn: ['4', '1'] },
    ]);
    const answers = byId(body.responses);
    expect(answers.get('2')).toMatchObject({ status: 200, body: { id } });
    expect(answers.get('3')?.status).toBe(404);
    expect(answers.get('4')).toMatchObject({ status: 424, body: { error: { code: 'failedDependency', message: expect.stringContaining("'3'") as unknown } } });
    expect(answers.get('5')?.status).toBe(424);
  });

  it('commits the independent creates of one batch together', async () => {
    const ids = Array.from({ length: 20 }, freshId);
    const { body } = await batch(ids.map((id) => ({ id, method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { id } })));
    expect(body.responses.map((response) => response.status)).toEqual(ids.map(() => 201));
    // One group commit: every record names the same batch job.
    const jobs = await Promise.all(ids.map((id) => ctx.store.batchJobOf({ tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'batchconn', operationId: id })));
    expect(new Set(jobs).size).toBe(1);
  });

  it('reads a base64 body, header names in any case, urls with or without the version or a leading slash', async () => {
    const [a, b, c] = [freshId(), freshId(), freshId()];
    const { body } = await batch([
      { id: 'base64', method: 'POST', url: OPERATIONS, headers: { 'CONTENT-TYPE': 'application/json' }, body: Buffer.from(JSON.stringify({ id: a })).toString('base64') },
      { id: 'versioned', method: 'post', url: `/beta${OPERATIONS}`, headers: { 'content-type': 'application/json' }, body: { id: b } },
      { id: 'bare', method: 'POST', url: OPERATIONS.slice(1), headers: JSON_HEADERS, body: { id: c } },
    ]);
    const answers = byId(body.responses);
    expect(answers.get('base64')).toMatchObject({ status: 201, body: { id: a } });
    expect(answers.get('versioned')).toMatchObject({ status: 201, headers: { Location: `http://localhost/beta${OPERATIONS}/${b}` } });
    expect(answers.get('bare')).toMatchObject({ status: 201, headers: { Location: `http://localhost/v1.0${OPERATIONS}/${c}` } });
  });

  it('is served at the root and under /beta too, relative to that version root', async () => {
    const id = freshId();
    const { body } = await batch([{ id: '1', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: { id } }], { path: '/$batch' });
    expect(body.responses[0]?.headers.Location).toBe(`http://localhost${OPERATIONS}/${id}`);
    const beta = await batch([{ id: '1', method: 'GET', url: `${OPERATIONS}/${id}` }], { path: '/beta/$batch' });
    expect(beta.body.responses[0]).toMatchObject({ status: 200, body: { id } });
  });
});

describe('authorization', () => {
  it('refuses a batch without a valid token as a whole', async () => {
    for (const authorization of [undefined, 'Bearer not-a-token']) {
      const response = await ctx.request('/v1.0/$batch', {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : { authorization: '' }) },
        body: JSON.stringify({ requests: [{ id: '1', method: 'GET', url: OPERATIONS }] }),
      });
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer/);
    }
  });

  it("answers each request with its own 403 when the batch's token lacks the permission", async () => {
    const reader = await signToken({ scp: 'ExternalConnection.Read.All' });
    const { status, body } = await batch(
      [
        { id: 'read', method: 'GET', url: OPERATIONS },
        { id: 'write', method: 'POST', url: OPERATIONS, headers: JSON_HEADERS, body: {} },
      ],
      { headers: { authorization: `Bearer ${reader}` } },
    );
    expect(status).toBe(200);
    const answers = byId(body.responses);
    expect(answers.get('read')?.status).toBe(200);
    expect(answers.get('write')).toMatchObject({ status: 403, body: { error: { code: 'accessDenied' } } });
  });

  it('never lets a request carry another token than the batch', async () => {
    const otherTenant = await signToken({ tid: '22222222-2222-4222-8222-222222222222' });
    const id = freshId();
    const { body } = await batch([
      { id: '1', method: 'POST', url: OPERATIONS, headers: { ...JSON_HEADERS, Authorization: `Bearer ${otherTenant}` }, body: { id } },
    ]);
    expect(body.responses[0]?.status).toBe(201);
    // Created in the batch token's tenant, not the other one.
    expect(await ctx.store.get({ tenantId: '11111111-1111-4111-8111-111111111111', connectionId: 'batchconn', operationId: id })).toBeDefined();
  });
});

describe('a malformed batch is a 400 that names the rule', () => {
  const request = (overrides: Record<string, unknown> = {}) => ({ id: '1', method: 'GET', url: OPERATIONS, ...overrides });
  it.each([
    ['no requests', {}, /requests must be a list/],
    ['an empty list', { requests: [] }, /at least one request/],
    ['over 20', { requests: Array.from({ length: 21 }, (_, i) => request({ id: String(i) })) }, /at most 20 requests/],
    ['an empty id', { requests: [request({ id: '' })] }, /requests\[0\]\.id must not be empty/],
    ['a duplicate id', { requests: [request(), request()] }, /'1' appears twice/],
    ['an absolute url', { requests: [request({ url: 'https://graph.microsoft.com/v1.0/me' })] }, /absolute url/],
    ['a protocol-relative url', { requests: [request({ url: '//evil.example/x' })] }, /absolute url/],
    ['a nested batch', { requests: [request({ method: 'POST', url: '/$batch' })] }, /batches do not nest/],
    ['a body without Content-Type', { requests: [request({ method: 'POST', body: { id: 'x' } })] }, /body without a Content-Type/],
    ['an unknown dependsOn', { requests: [request({ dependsOn: ['9'] })] }, /'9', which is not a request of this batch/],
    ['a forward dependsOn', { requests: [request({ dependsOn: ['2'] }), request({ id: '2' })] }, /'2', which comes after it/],
    ['an unknown method', { requests: [request({ method: 'TRACE' })] }, /method must be one of GET, POST, PUT, PATCH, DELETE/],
    ['a header that is not HTTP', { requests: [request({ headers: { 'x-bad': 'a\nb' } })] }, /not valid HTTP/],
  ])('%s', async (_, payload, message) => {
    const response = await ctx.post('/v1.0/$batch', payload);
    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: 'badRequest', message: expect.stringMatching(message) as unknown });
  });

  it('answers 400 for a body that is not JSON and 415 for a Content-Type that is not JSON', async () => {
    expect((await ctx.post('/v1.0/$batch', '{"requests":')).status).toBe(400);
    expect((await ctx.post('/v1.0/$batch', 'requests', { 'content-type': 'text/plain' })).status).toBe(415);
  });

  it('answers 405 with Allow: POST for another method', async () => {
    const response = await ctx.request('/v1.0/$batch');
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('POST');
  });
});

describe('fuzzed batches', () => {
  const subRequest = fc.record(
    {
      id: fc.oneof(fc.constantFrom('1', '2', '3', 'a'), fc.string({ maxLength: 4 })),
      method: fc.constantFrom('GET', 'POST', 'get', 'PATCH', 'DELETE', 'PUT', 'OPTIONS', ''),
      url: fc.oneof(
        fc.constantFrom(OPERATIONS, `${OPERATIONS}/x`, `/v1.0${OPERATIONS}`, '/beta/connections/batchconn/operations', '/$batch', '/healthz', '', '//x'),
        fc.string({ maxLength: 30 }).map((tail) => `${OPERATIONS}/${tail}`),
        fc.string({ maxLength: 30 }),
      ),
      headers: fc.dictionary(fc.constantFrom('Content-Type', 'content-type', 'Prefer', 'Accept', 'x-a', 'Host', 'Content-Length'), fc.constantFrom('application/json', 'text/plain', 'wait=1', '1', '')),
      body: fc.oneof(fc.constant(undefined), fc.jsonValue({ maxDepth: 2 }), fc.base64String({ maxLength: 40 })),
      dependsOn: fc.array(fc.constantFrom('1', '2', '3', 'a', 'z'), { maxLength: 2 }),
    },
    { requiredKeys: ['id', 'method', 'url'] },
  );
  // Mostly well-formed, so that most batches get past the 400s to their requests.
  const plausible = fc.record(
    {
      id: fc.constantFrom('1', '2', '3', 'a'),
      method: fc.constantFrom('GET', 'POST', 'post', 'PATCH', 'DELETE'),
      url: fc.oneof(fc.constantFrom(OPERATIONS, `/v1.0${OPERATIONS}`, '/healthz', '/metrics'), fc.string({ maxLength: 20 }).map((tail) => `${OPERATIONS}/${tail}`)),
      headers: fc.constantFrom({ 'Content-Type': 'application/json' }, { 'content-type': 'text/plain', Prefer: 'wait=1' }, { Accept: 'application/json' }),
      body: fc.oneof(fc.jsonValue({ maxDepth: 2 }).filter((value) => typeof value === 'object'), fc.base64String({ maxLength: 40 })),
    },
    { requiredKeys: ['id', 'method', 'url', 'headers'] },
  ).map(({ body, ...request }) =>
    // A body only where Graph's rules allow one: not on a GET, and with a Content-Type.
    request.method === 'GET' || body === undefined
      ? request
      : { ...request, body, headers: { 'Content-Type': 'application/json', ...request.headers } },
  );

  it('never answers 5xx, and answers every id of a batch it accepts', async () => {
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.array(subRequest, { minLength: 1, maxLength: 6 }), fc.uniqueArray(plausible, { minLength: 1, maxLength: 4, selector: (request) => request.id })),
        async (requests) => {
        const response = await ctx.post('/v1.0/$batch', { requests });
        expect(response.status).toBeLessThan(500);
        const body = (await response.json()) as { responses?: SubResponse[] };
        if (response.status !== 200) return;
        accepted++;
        expect(body.responses?.map((answer) => answer.id).sort()).toEqual(requests.map((request) => request.id).sort());
        for (const answer of body.responses ?? []) expect(answer.status).toBeLessThan(500);
      }),
      { numRuns: 200 },
    );
    expect(accepted).toBeGreaterThan(60); // about half the runs are plausible batches, all accepted
  });
});
