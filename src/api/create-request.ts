import type { Context } from 'hono';
import { createOperationBodySchema, describeCreateBodyProblem, isValidConnectionId } from '../shared/operation.js';
import type { AppEnv } from './env.js';
import { badRequest, malformedJson, unsupportedMediaType } from './errors.js';
import { invalidConnectionId } from './route-parts.js';

/**
 * The create's checks, which are those of every other write route, run as one middleware (the
 * write routes' writeBodyGuards) and one function rather than through @hono/zod-openapi's
 * validators. The create is the hot path, and those were seven layers (three guards, the path's
 * validator, the media type gate, the optional body's gate and its validator), each an async
 * step with its own reads of the Content-Type; fused, the API spends about 9% less CPU per
 * create (bench/README.md, "Where the API's CPU per create goes"). The route description
 * (operation-routes.ts) still documents the route and gives the 405's Allow; the checks here
 * use its schemas and answer what the validators answer on the other routes
 * (test/api.create-checks.test.ts holds the two side by side).
 */

/** A JSON media type, with parameters, as @hono/zod-openapi's media type gate accepts it. */
const JSON_MEDIA_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

/** The connection id (400 when it cannot be one) and the body's optional id (400 naming the
 *  property at fault, 415 for a body that is not JSON). */
export async function readCreateRequest(c: Context<AppEnv>): Promise<{ connectionId: string; id: string | undefined }> {
  const connectionId = c.req.param('connectionId');
  if (connectionId === undefined || !isValidConnectionId(connectionId)) throw invalidConnectionId(connectionId);
  const body = createOperationBodySchema.safeParse(await readOptionalJsonBody(c));
  if (!body.success) throw badRequest(describeCreateBodyProblem(body.error));
  return { connectionId, id: body.data.id };
}

/** The body is optional: without a Content-Type (an empty one counts as none) it must be empty
 *  and counts as `{}`; with one, it must be a JSON media type and parse. */
async function readOptionalJsonBody(c: Context<AppEnv>): Promise<unknown> {
  const contentType = c.req.header('content-type');
  if (!contentType) {
    if ((await c.req.text()).length > 0) throw unsupportedMediaType(contentType);
    return {};
  }
  if (!JSON_MEDIA_TYPE.test(contentType)) throw unsupportedMediaType(contentType);
  try {
    return await c.req.json();
  } catch {
    throw malformedJson();
  }
}
