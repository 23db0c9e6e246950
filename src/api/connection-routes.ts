import { createRoute, z } from '@hono/zod-openapi';
import { createConnectionBodySchema } from '../shared/connection.js';
import { schemaDocumentation } from '../shared/connection-schema.js';
import { connectionListQuerySchema } from './list-query.js';
import { authErrors, connectionIdParam, error, json, location, requireWrite, retryAfter, security, writeBodyGuards } from './route-parts.js';
import { connectionListSchema, connectionResourceSchema } from './schemas.js';

/**
 * The externalConnection routes of one path family, relative to it, like the operation routes
 * (operation-routes.ts): one description validates, documents and answers the 405's Allow.
 */

const params = z.object({ connectionId: connectionIdParam });
const accepted = (description: string) => ({
  description,
  headers: { ...location('Absolute URL of the operation; poll it, or GET it with Prefer: wait=N'), ...retryAfter },
});

export const createConnectionRoute = createRoute({
  method: 'post',
  path: '/',
  middleware: [writeBodyGuards] as const,
  tags: ['connections'],
  summary: 'Create a connection (state draft until a schema is provisioned)',
  security,
  request: { body: { content: { 'application/json': { schema: createConnectionBodySchema } }, required: true } },
  responses: {
    201: { ...json(connectionResourceSchema, 'Created'), headers: location('Absolute URL of the connection') },
    400: error('A property is missing or not allowed, or the id breaks the connection id rules; the message names it'),
    409: error('A connection with this id exists in the tenant'),
    413: error('The body is over 1 MiB'),
    415: error('The Content-Type is not JSON'),
    ...authErrors,
  },
});

export const listConnectionsRoute = createRoute({
  method: 'get',
  path: '/',
  tags: ['connections'],
  summary: "List the tenant's connections, by id",
  security,
  request: { query: connectionListQuerySchema },
  responses: { 200: json(connectionListSchema, 'One page'), 400: error('An unsupported or invalid query option'), ...authErrors },
});

export const getConnectionRoute = createRoute({
  method: 'get',
  path: '/{connectionId}',
  tags: ['connections'],
  summary: 'Get a connection',
  security,
  request: { params },
  responses: { 200: json(connectionResourceSchema, 'The connection'), 404: error('No such connection in this tenant'), ...authErrors },
});

export const deleteConnectionRoute = createRoute({
  method: 'delete',
  path: '/{connectionId}',
  middleware: [requireWrite] as const,
  tags: ['connections'],
  summary:
    'Delete a connection: 202 with the Location of the delete operation; the connection answers until that operation completes, then 404. ' +
    'A schema still provisioning is canceled (the delete wins).',
  security,
  request: { params },
  responses: {
    202: accepted('Accepted, no body (also when a delete is inprogress already: its operation)'),
    404: error('No such connection in this tenant'),
    ...authErrors,
  },
});

export const updateSchemaRoute = createRoute({
  method: 'patch',
  path: '/{connectionId}/schema',
  middleware: [writeBodyGuards] as const,
  tags: ['connections'],
  summary:
    "Submit the connection's schema: validated at once by Graph's rules, then provisioned by the workers (the processor sees an operation of kind schema); " +
    'the connection becomes ready when that operation completes',
  security,
  request: { params, body: { content: { 'application/json': { schema: schemaDocumentation } }, required: true } },
  responses: {
    202: accepted('Accepted, no body'),
    400: error('The schema breaks a rule: code InvalidRequest, innerError.code names the rule, details list every problem found'),
    404: error('No such connection in this tenant'),
    409: error('A schema or delete operation of the connection is inprogress; its id is in the message'),
    413: error('The body is over 1 MiB'),
    415: error('The Content-Type is not JSON'),
    ...authErrors,
  },
});

export const getSchemaRoute = createRoute({
  method: 'get',
  path: '/{connectionId}/schema',
  tags: ['connections'],
  summary: 'Get the schema last submitted (also while it provisions)',
  security,
  request: { params },
  responses: {
    200: json(schemaDocumentation, 'The schema as submitted'),
    404: error('No such connection in this tenant, or it has no schema yet'),
    ...authErrors,
  },
});

/** Every route of a path family, for the 405's Allow. */
export const CONNECTION_ROUTES = [
  createConnectionRoute,
  listConnectionsRoute,
  getConnectionRoute,
  deleteConnectionRoute,
  updateSchemaRoute,
  getSchemaRoute,
];
