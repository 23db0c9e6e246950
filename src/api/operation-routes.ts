import { createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { OPERATION_ID_RULE, createOperationBodySchema } from '../shared/operation.js';
import type { AppEnv } from './env.js';
import { listQuerySchema } from './list-query.js';
import { authErrors, connectionIdParam, error, json, location, requireWrite, retryAfter, security } from './route-parts.js';
import { operationListSchema, operationResourceSchema } from './schemas.js';

/**
 * The connectionOperation routes of one path family, relative to it (`/external/connections`
 * or `/connections`, each also under /v1.0 and /beta). Each route is described once, here: the
 * same description validates requests (@hono/zod-openapi's validators), documents them
 * (/openapi.json) and tells which methods a known path allows (the 405's Allow).
 */

// An id that does not match the rule cannot exist: the handlers answer 404 for it.
const operationIdParam = z.string().meta({ description: OPERATION_ID_RULE, example: 'import-2026-11-29' });
const preferenceApplied = {
  'Preference-Applied': { description: '`wait=N` when the request was held by `Prefer: wait=N`', schema: { type: 'string' as const } },
};
/**
 * RFC 7240's wait preference, on the create and the GET. Documented as a plain OpenAPI
 * parameter, not validated as a zod header schema: the handlers read the one header they need
 * (an invalid value is ignored, as RFC 7240 asks), and a header validator would make Hono
 * gather every request header into an object first, which cost about 16% of the API's CPU per
 * create (bench/README.md, "What made the difference").
 */
const preferHeader = {
  name: 'prefer',
  in: 'header' as const,
  required: false,
  description:
    '`wait=N` (1-60 seconds; more counts as 60): while the operation is inprogress, the answer is held until it ends or N seconds pass. ' +
    'An invalid value is ignored.',
  schema: { type: 'string' as const },
  example: 'wait=30',
};
/** Lets only `$ref` (or `%24ref`, decoded by Hono) through the `{ref}` route below: any other
 *  segment is a known path with the wrong method (405 from the app's not-found handler). */
export const onlyRefSegment: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (c.req.param('ref' as never) !== '$ref') return c.notFound();
  await next();
};

/** The create, at `path`. It is served by a plain route whose checks are fused for speed
 *  (create-request.ts), not by @hono/zod-openapi's validators: this description documents it. */
function createAt(path: string, hide = false) {
  return createRoute({
    method: 'post',
    path,
    hide,
    tags: ['operations'],
    summary: 'Create an operation (201 with status inprogress; a worker moves it to completed or failed)',
    security,
    parameters: [preferHeader],
    request: {
      params: z.object({ connectionId: connectionIdParam }),
      body: { content: { 'application/json': { schema: createOperationBodySchema } }, required: false },
    },
    responses: {
      201: {
        ...json(operationResourceSchema, 'Created (with Prefer: wait, the state once it ended or the wait passed)'),
        headers: { ...location('Absolute URL of the operation'), ...retryAfter, ...preferenceApplied },
      },
      400: error('A property or the connection id is not allowed; the message names it'),
      409: error('The id is already used in this tenant and connection'),
      413: error('The body is over 1 MiB'),
      415: error('The Content-Type is not JSON, or the body has a Content-Encoding other than identity'),
      ...authErrors,
    },
  });
}

export const createOperationRoute = createAt('/{connectionId}/operations');
/** The `$ref` form some Graph clients post to, as documented and as the 405's Allow knows it
 *  (`%24ref` is the same path percent-encoded). */
export const createOperationRefRoutes = [createAt('/{connectionId}/operations/$ref'), createAt('/{connectionId}/operations/%24ref', true)];
/** How the `$ref` creates are routed. Hono's RegExpRouter (the fast one: with its TrieRouter
 *  fallback, routing was a sixth of the API's CPU per request) cannot hold a static segment
 *  beside a parameter at one depth of one method, and `…/operations/{operationId}/cancel` puts
 *  a parameter there. So the handler answers at `…/operations/{ref}` (onlyRefSegment first). */
export const createOperationRefRoute = createAt('/{connectionId}/operations/{ref}', true);

export const listOperationsRoute = createRoute({
  method: 'get',
  path: '/{connectionId}/operations',
  tags: ['operations'],
  summary: 'List operations, newest first',
  security,
  request: { params: z.object({ connectionId: connectionIdParam }), query: listQuerySchema },
  responses: { 200: json(operationListSchema, 'One page'), 400: error('An unsupported or invalid query option'), ...authErrors },
});

const operationParams = z.object({ connectionId: connectionIdParam, operationId: operationIdParam });

export const getOperationRoute = createRoute({
  method: 'get',
  path: '/{connectionId}/operations/{operationId}',
  tags: ['operations'],
  summary: 'Get an operation; wait for it to end (Prefer: wait), or follow it as a server-sent event stream (Accept: text/event-stream)',
  security,
  parameters: [preferHeader],
  request: { params: operationParams },
  responses: {
    200: {
      description:
        'The operation. With `Accept: text/event-stream`, an event stream instead: one `operation` event per change (its current state first), ' +
        'whose data is the operation JSON; it ends after the terminal event, and a comment line keeps it alive at least every 15 s.',
      content: {
        'application/json': { schema: operationResourceSchema },
        'text/event-stream': { schema: { type: 'string', example: 'event: operation\ndata: {"id":"op1","status":"completed",…}\n\n' } },
      },
      headers: { ...retryAfter, ...preferenceApplied },
    },
    404: error('No such operation in this tenant and connection'),
    ...authErrors,
  },
});

export const cancelOperationRoute = createRoute({
  method: 'post',
  path: '/{connectionId}/operations/{operationId}/cancel',
  middleware: [requireWrite] as const,
  tags: ['operations'],
  summary: 'Cancel an operation: failed at once with errorCode operationCanceled; the attempt in flight is aborted and none starts after',
  security,
  request: { params: operationParams },
  responses: {
    200: json(operationResourceSchema, 'The canceled operation (also when it was canceled before)'),
    404: error('No such operation in this tenant and connection'),
    409: error('The operation already ended otherwise (completed or failed)'),
    ...authErrors,
  },
});

/** Every route of a path family, for the 405's Allow. */
export const OPERATION_ROUTES = [createOperationRoute, ...createOperationRefRoutes, listOperationsRoute, getOperationRoute, cancelOperationRoute];
