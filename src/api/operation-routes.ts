import { createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { CONNECTION_ID_RULE, OPERATION_ID_RULE, createOperationBodySchema, isValidConnectionId } from '../shared/operation.js';
import { limitBody, refuseContentEncoding } from './body-limit.js';
import type { AppEnv } from './env.js';
import { GraphError } from './errors.js';
import { listQuerySchema } from './list-query.js';
import { graphErrorSchema, operationListSchema, operationResourceSchema } from './schemas.js';

/**
 * The connectionOperation routes of one path family, relative to it (`/external/connections`
 * or `/connections`, each also under /v1.0 and /beta). Each route is described once, here: the
 * same description validates requests (@hono/zod-openapi's validators), documents them
 * (/openapi.json) and tells which methods a known path allows (the 405's Allow).
 */

const json = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description: string) => json(graphErrorSchema, description);

const connectionIdParam = z
  .string()
  .refine(isValidConnectionId, { error: (issue) => `Invalid connection id '${String(issue.input)}'. ${CONNECTION_ID_RULE}` })
  .meta({ description: CONNECTION_ID_RULE, example: 'contosohr' });
// An id that does not match the rule cannot exist: the handler answers 404 for it, as for any
// unknown id (a 400 would tell a caller more than "not here").
const operationIdParam = z.string().meta({ description: OPERATION_ID_RULE, example: 'import-2026-11-29' });
const retryAfter = { 'Retry-After': { description: 'Seconds to wait before polling (while inprogress) or retrying', schema: { type: 'integer' as const } } };
const security = [{ bearer: [] }];
const authErrors = {
  401: error('Missing or invalid token (WWW-Authenticate says why)'),
  403: error('The token lacks the permission, or is a personal account'),
  429: error('The tenant exceeded its rate limit'),
  503: error('Redis or the token keys are unavailable; retry after Retry-After'),
};

/** Creating needs a write permission: checked before anything about the request is. */
const requireWrite: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (!c.get('principal').canWrite) {
    throw new GraphError(403, 'accessDenied', 'Creating operations needs ExternalConnection.ReadWrite.OwnedBy or ExternalConnection.ReadWrite.All.');
  }
  await next();
};

function createAt(path: string, hide = false) {
  return createRoute({
    method: 'post',
    path,
    hide,
    middleware: [requireWrite, refuseContentEncoding, limitBody] as const,
    tags: ['operations'],
    summary: 'Create an operation (201 with status inprogress; a worker moves it to completed or failed)',
    security,
    request: {
      params: z.object({ connectionId: connectionIdParam }),
      body: { content: { 'application/json': { schema: createOperationBodySchema } }, required: false },
    },
    responses: {
      201: { ...json(operationResourceSchema, 'Created'), headers: { Location: { description: 'Absolute URL of the operation', schema: { type: 'string' } }, ...retryAfter } },
      400: error('A property or the connection id is not allowed; the message names it'),
      409: error('The id is already used in this tenant and connection'),
      413: error('The body is over 1 MiB'),
      415: error('The Content-Type is not JSON, or the body has a Content-Encoding other than identity'),
      ...authErrors,
    },
  });
}

export const createOperationRoute = createAt('/{connectionId}/operations');
/** The `$ref` form some Graph clients post to; `%24ref` is the same path percent-encoded. */
export const createOperationRefRoutes = [createAt('/{connectionId}/operations/$ref'), createAt('/{connectionId}/operations/%24ref', true)];

export const listOperationsRoute = createRoute({
  method: 'get',
  path: '/{connectionId}/operations',
  tags: ['operations'],
  summary: 'List operations, newest first',
  security,
  request: { params: z.object({ connectionId: connectionIdParam }), query: listQuerySchema },
  responses: { 200: json(operationListSchema, 'One page'), 400: error('An unsupported or invalid query option'), ...authErrors },
});

export const getOperationRoute = createRoute({
  method: 'get',
  path: '/{connectionId}/operations/{operationId}',
  tags: ['operations'],
  summary: 'Get an operation',
  security,
  request: { params: z.object({ connectionId: connectionIdParam, operationId: operationIdParam }) },
  responses: {
    200: { ...json(operationResourceSchema, 'The operation'), headers: retryAfter },
    404: error('No such operation in this tenant and connection'),
    ...authErrors,
  },
});

/** Every route of a path family, for the 405's Allow. */
export const OPERATION_ROUTES = [createOperationRoute, ...createOperationRefRoutes, listOperationsRoute, getOperationRoute];
