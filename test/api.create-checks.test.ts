import fc from 'fast-check';
import { OpenAPIHono } from '@hono/zod-openapi';
import { Hono, type MiddlewareHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import { describe, expect, it } from 'vitest';
import { limitBody, refuseEncodedBody } from '../src/api/body-limit.js';
import { readCreateRequest } from '../src/api/create-request.js';
import type { AppEnv } from '../src/api/env.js';
import { GraphError, graphErrorOfHttpException } from '../src/api/errors.js';
import { createOperationRoute } from '../src/api/operation-routes.js';
import { requireWrite, writeBodyGuards } from '../src/api/route-parts.js';
import { answerValidationFailure } from '../src/api/validation.js';
import { describeCreateBodyProblem } from '../src/shared/operation.js';

/**
 * The create's checks are fused into one middleware and one function for speed
 * (src/api/create-request.ts). They must answer exactly what @hono/zod-openapi's route
 * middleware and validators answer for the same route description, as every other write route
 * is checked: here both serve the create's description side by side, and generated requests
 * (permission, Content-Encoding, Content-Type, declared or streamed bodies, connection ids)
 * must get the same status, Graph error code and message, or the same id on success.
 */

const asPrincipal =
  (canWrite: boolean): MiddlewareHandler<AppEnv> =>
  async (c, next) => {
    c.set('principal', { tenantId: 't', canRead: true, canWrite });
    await next();
  };

/** What an answer says, reduced to what the two must agree on. */
type Verdict = { status: number; code?: string; message?: string; id?: string | null };

function withErrors(app: Hono<AppEnv>): Hono<AppEnv> {
  app.onError((error, c) => {
    const graph =
      error instanceof GraphError
        ? error
        : error instanceof HTTPException
          ? graphErrorOfHttpException(error, c.req.header('content-type'), null)
          : new GraphError(500, 'generalException', String(error));
    return c.json({ status: graph.status, code: graph.code, message: graph.message }, graph.status);
  });
  return app;
}

/** The three guards as separate route middleware, as they were before they were fused. */
const refuseContentEncoding: MiddlewareHandler<AppEnv> = async (c, next) => {
  refuseEncodedBody(c);
  await next();
};

/** The create's description served with @hono/zod-openapi's validators. */
function validatedByTheLibrary(canWrite: boolean): Hono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>({ defaultHook: answerValidationFailure(describeCreateBodyProblem) });
  // The answer is not the resource: only the id the body gave matters here.
  routes.openapi(
    { ...createOperationRoute, middleware: [requireWrite, refuseContentEncoding, limitBody] },
    (c) => c.json({ id: c.req.valid('json').id ?? null }, 201) as never,
  );
  const app = withErrors(new Hono<AppEnv>());
  app.use(asPrincipal(canWrite));
  app.route('/', routes);
  return app;
}

/** The same description served with the fused checks. */
function checkedFused(canWrite: boolean): Hono<AppEnv> {
  const app = withErrors(new Hono<AppEnv>());
  app.use(asPrincipal(canWrite));
  app.post(createOperationRoute.getRoutingPath(), writeBodyGuards, async (c) => c.json({ id: (await readCreateRequest(c)).id ?? null }, 201));
  return app;
}

const apps = {
  library: { true: validatedByTheLibrary(true), false: validatedByTheLibrary(false) },
  fused: { true: checkedFused(true), false: checkedFused(false) },
};

interface CreateRequest {
  canWrite: boolean;
  connectionId: string;
  contentType: string | undefined;
  contentEncoding: string | undefined;
  body: string;
  /** Sent as a stream without Content-Length (as a chunked upload arrives), or with it. */
  streamed: boolean;
}

async function verdictOf(app: Hono<AppEnv>, request: CreateRequest): Promise<Verdict> {
  const headers: Record<string, string> = {};
  if (request.contentType !== undefined) headers['content-type'] = request.contentType;
  if (request.contentEncoding !== undefined) headers['content-encoding'] = request.contentEncoding;
  let body: string | ReadableStream<Uint8Array> = request.body;
  if (request.streamed) {
    const bytes = new TextEncoder().encode(request.body);
    body = new ReadableStream({
      start(controller) {
        if (bytes.length > 0) controller.enqueue(bytes);
        controller.close();
      },
    });
  } else {
    headers['content-length'] = String(Buffer.byteLength(request.body));
  }
  const url = `http://localhost/${encodeURIComponent(request.connectionId)}/operations`;
  const response = await app.request(url, { method: 'POST', headers, body, ...(request.streamed ? { duplex: 'half' } : {}) });
  // A path no route matches ('.' and '..' collapse) is Hono's plain-text 404 in both.
  const text = await response.text();
  const json = (text.startsWith('{') ? JSON.parse(text) : { message: text }) as Verdict;
  return response.status === 201 ? { status: 201, id: json.id } : { status: response.status, code: json.code, message: json.message };
}

async function expectSameVerdict(request: CreateRequest): Promise<Verdict> {
  const key = String(request.canWrite) as 'true' | 'false';
  const [library, fused] = await Promise.all([verdictOf(apps.library[key], request), verdictOf(apps.fused[key], request)]);
  expect(fused, JSON.stringify(request)).toEqual(library);
  return fused;
}

/** Header values a fetch Request accepts (no control characters, no surrounding whitespace
 *  that it would trim differently from Node). */
const headerValue = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/+-.;=, "*'), maxLength: 40 });

/** Mostly what passes, so that each check is reached past the ones before it. */
const mostly = <T>(usual: fc.Arbitrary<T>, other: fc.Arbitrary<T>) => fc.oneof({ arbitrary: usual, weight: 4 }, { arbitrary: other, weight: 1 });

const createRequests = fc.record({
  canWrite: mostly(fc.constant(true), fc.constant(false)),
  connectionId: mostly(fc.constantFrom('contosohr', 'hr2026', 'Contoso'), fc.oneof(fc.constantFrom('ab', 'contoso_hr', 'microsoft'), fc.string({ minLength: 1, maxLength: 40 }))),
  contentType: mostly(
    fc.constantFrom('application/json', 'application/json; charset=utf-8'),
    fc.oneof(
      fc.constantFrom(
        undefined,
        '',
        'application/json',
        'application/json; charset=utf-8',
      'APPLICATION/JSON',
      'application/json;charset=',
      'application/merge-patch+json',
      'application/vnd.api+json; a=b',
      'application/jsonx',
      'application/json charset=utf-8',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
        '*/*',
      ),
      headerValue,
    ),
  ),
  contentEncoding: mostly(fc.constant(undefined), fc.oneof(fc.constantFrom('identity', 'Identity', 'gzip', 'br', 'identity, gzip'), headerValue)),
  body: fc.oneof(
    fc.constantFrom('', '{}', ' ', 'null', '[]', '"x"', '{"id":', '{"id":"op-1"}', '{"id":"op 1"}', '{"status":"completed"}', '{"error":null}', '{"extra":1}'),
    fc
      .record(
        {
          '@odata.type': fc.constantFrom('#microsoft.graph.connectionOperation', 'microsoft.graph.connectionOperation', '#x', 7),
          id: fc.oneof(fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/), fc.string({ maxLength: 10 }), fc.integer()),
          status: fc.constantFrom('unspecified', 'inprogress', 'completed', 'failed', null),
          error: fc.constantFrom(null, {}, 'x'),
          other: fc.string({ maxLength: 5 }),
        },
        { requiredKeys: [] },
      )
      .map((object) => JSON.stringify(object)),
    fc.json({ maxDepth: 2 }),
    fc.string({ maxLength: 30 }),
  ),
  streamed: fc.boolean(),
});

describe('the create route checks, fused for speed', () => {
  it('answers every generated create exactly as the route validators of the other write routes would', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(createRequests, async (request) => {
        const { status } = await expectSameVerdict(request);
        seen.set(status, (seen.get(status) ?? 0) + 1);
      }),
      {
        // CREATE_CHECKS_RUNS=30000 looks harder (about 12 s); CI's 600 keep the suite fast.
        numRuns: Number(process.env.CREATE_CHECKS_RUNS ?? 600),
        // Always tried: an empty Content-Type counts as none, whatever the body.
        examples: ['', ' ', '{}'].flatMap((body) =>
          [false, true].map((streamed) => [{ canWrite: true, connectionId: 'contosohr', contentType: '', contentEncoding: undefined, body, streamed }] as [CreateRequest]),
        ),
      },
    );
    // The generators reach every answer the checks give, not only one of them.
    expect([...seen.keys()]).toEqual(expect.arrayContaining([201, 400, 403, 415]));
  });

  it('answers a body over 1 MiB with 413, declared or streamed, after the permission and before the body is read', async () => {
    const big = JSON.stringify({ id: 'x', padding: 'y'.repeat(1024 * 1024) });
    for (const streamed of [false, true]) {
      const base = { connectionId: 'contosohr', contentType: 'application/json', contentEncoding: undefined, body: big, streamed };
      expect(await expectSameVerdict({ ...base, canWrite: true })).toMatchObject({ status: 413, code: 'requestEntityTooLarge' });
      expect(await expectSameVerdict({ ...base, canWrite: false })).toMatchObject({ status: 403, code: 'accessDenied' });
    }
  });
});
