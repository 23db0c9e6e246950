import { createRoute, z } from '@hono/zod-openapi';
import { limitBodyTo } from './body-limit.js';
import { graphErrorSchema } from './schemas.js';

/**
 * Graph JSON batching (`POST /$batch`, also under /v1.0 and /beta), described once: the same
 * description validates the batch's shape and documents it (/openapi.json). The rules that span
 * several requests (unique ids, dependsOn, urls, bodies) are checked in batch.ts.
 */

export const MAX_BATCH_REQUESTS = 20;
/** A batch carries up to 20 bodies, each up to 1 MiB on its own route; the batch itself may be
 *  this large. */
export const MAX_BATCH_BYTES = 4 * 1024 * 1024;
export const BATCH_METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;

const subRequestSchema = z
  .object({
    id: z.string({ error: 'must be a string' }).min(1, 'must not be empty'),
    method: z
      .string({ error: 'must be a string' })
      .transform((method) => method.toUpperCase())
      .pipe(z.enum(BATCH_METHODS, { error: `must be one of ${BATCH_METHODS.join(', ')}` })),
    url: z.string({ error: 'must be a string' }).min(1, 'must not be empty').meta({
      description: 'Relative to the version root the batch was sent to (`/external/connections/…`); one that begins with /v1.0 or /beta is taken as it is.',
    }),
    headers: z.record(z.string(), z.string({ error: 'must be a string' }), { error: 'must be an object of header names and string values' }).optional(),
    body: z
      .union([z.string(), z.record(z.string(), z.unknown()), z.array(z.unknown()), z.null()], {
        error: 'must be a JSON object or array, or a base64 string',
      })
      .optional()
      .meta({ description: 'A JSON object (or array), or a base64 string of the bytes; needs a Content-Type header.' }),
    dependsOn: z.array(z.string({ error: 'must be a list of request ids' }), { error: 'must be a list of request ids' }).optional(),
  })
  .meta({ id: 'batchRequest' });
export type SubRequest = z.infer<typeof subRequestSchema>;

export const batchBodySchema = z
  .object({
    requests: z
      .array(subRequestSchema, { error: 'must be a list of requests' })
      .min(1, 'must hold at least one request')
      .max(MAX_BATCH_REQUESTS, `must hold at most ${MAX_BATCH_REQUESTS} requests`),
  })
  .meta({
    id: 'batchRequestContent',
    example: {
      requests: [
        {
          id: '1',
          method: 'POST',
          url: '/external/connections/contosohr/operations',
          headers: { 'Content-Type': 'application/json' },
          body: { id: 'import-1' },
        },
        { id: '2', method: 'GET', url: '/external/connections/contosohr/operations/import-1', dependsOn: ['1'] },
      ],
    },
  });

const subResponseSchema = z
  .object({
    id: z.string(),
    status: z.number().int(),
    headers: z.record(z.string(), z.string()),
    body: z.unknown().optional().meta({ description: 'A JSON body as JSON; any other body as a base64 string.' }),
  })
  .meta({ id: 'batchResponse' });

const batchAnswerSchema = z
  .object({ responses: z.array(subResponseSchema) })
  .meta({
    id: 'batchResponseContent',
    example: {
      responses: [
        {
          id: '1',
          status: 201,
          headers: { 'Content-Type': 'application/json', Location: 'https://graph.contoso.com/v1.0/external/connections/contosohr/operations/import-1' },
          body: { '@odata.type': '#microsoft.graph.connectionOperation', id: 'import-1', status: 'inprogress', error: null },
        },
        { id: '2', status: 200, headers: { 'Content-Type': 'application/json' }, body: { id: 'import-1', status: 'inprogress' } },
      ],
    },
  });

export function batchRouteAt(path: string) {
  return createRoute({
    method: 'post',
    path,
    middleware: [limitBodyTo(MAX_BATCH_BYTES)],
    tags: ['batch'],
    summary: `Send up to ${MAX_BATCH_REQUESTS} requests in one (Graph JSON batching)`,
    description:
      'Each request goes through the same routes, authentication (this batch\'s Authorization), validation and errors as if sent alone. ' +
      'Independent requests run concurrently; one whose dependsOn did not succeed (non-2xx) gets 424. Every id is answered.',
    security: [{ bearer: [] }],
    request: { body: { content: { 'application/json': { schema: batchBodySchema } }, required: true } },
    responses: {
      200: { description: 'One response per request', content: { 'application/json': { schema: batchAnswerSchema } } },
      400: { description: 'The batch breaks a rule; the message names it', content: { 'application/json': { schema: graphErrorSchema } } },
      401: { description: 'Missing or invalid token', content: { 'application/json': { schema: graphErrorSchema } } },
      413: { description: `The batch is over ${MAX_BATCH_BYTES / 1024 / 1024} MiB`, content: { 'application/json': { schema: graphErrorSchema } } },
      415: { description: 'The Content-Type is not JSON', content: { 'application/json': { schema: graphErrorSchema } } },
    },
  });
}

/** The batch route, relative to a version prefix ('', /v1.0, /beta). */
export const batchRoute = batchRouteAt('/$batch');
