import { z } from '@hono/zod-openapi';
import type { Context, MiddlewareHandler } from 'hono';
import { CONNECTION_ID_RULE, isValidConnectionId } from '../shared/operation.js';
import type { AppEnv } from './env.js';
import { limitBody, refuseEncodedBody } from './body-limit.js';
import { GraphError, badRequest } from './errors.js';
import { graphErrorSchema } from './schemas.js';

/** What the route descriptions of connections and of operations share. */

export const json = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { 'application/json': { schema } },
});
export const error = (description: string) => json(graphErrorSchema, description);

export const invalidConnectionId = (id: unknown) => badRequest(`Invalid connection id '${String(id)}'. ${CONNECTION_ID_RULE}`);

export const connectionIdParam = z
  .string()
  .refine(isValidConnectionId, { error: (issue) => invalidConnectionId(issue.input).message })
  .meta({ description: CONNECTION_ID_RULE, example: 'contosohr' });

export const retryAfter = {
  'Retry-After': { description: 'Seconds to wait before polling (while inprogress) or retrying', schema: { type: 'integer' as const } },
};
export const location = (description: string) => ({ Location: { description, schema: { type: 'string' as const } } });

export const security = [{ bearer: [] }];
export const authErrors = {
  401: error('Missing or invalid token (WWW-Authenticate says why)'),
  403: error('The token lacks the permission, or is a personal account'),
  429: error('The tenant exceeded its rate limit'),
  503: error('Redis or the token keys are unavailable; retry after Retry-After'),
};

/** Changing anything needs a write permission: checked before anything about the request is. */
export function refuseUnlessWriter(c: Context<AppEnv>): void {
  if (!c.get('principal').canWrite) {
    throw new GraphError(
      403,
      'accessDenied',
      'Creating, changing or deleting connections and operations needs ExternalConnection.ReadWrite.OwnedBy or ExternalConnection.ReadWrite.All.',
    );
  }
}

export const requireWrite: MiddlewareHandler<AppEnv> = async (c, next) => {
  refuseUnlessWriter(c);
  await next();
};

/** A write with a body: write permission (403), Content-Encoding (415), then the body's size
 *  (413), in that order, as one middleware (each layer of a route's chain costs CPU). */
export const writeBodyGuards: MiddlewareHandler<AppEnv> = (c, next) => {
  refuseUnlessWriter(c);
  refuseEncodedBody(c);
  return limitBody(c, next);
};
