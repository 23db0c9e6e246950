import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { serveStatic } from '@hono/node-server/serve-static';
import { OpenAPIHono, type RouteConfig } from '@hono/zod-openapi';
import { Hono } from 'hono';
import { z } from 'zod';
import { CONNECTION_ID_RULE, OPERATION_ID_RULE, OPERATION_STATUSES, createOperationBodySchema } from '../shared/operation.js';
import { graphErrorSchema, operationListSchema, operationResourceSchema } from './schemas.js';

/**
 * The OpenAPI 3.1 document, generated with @hono/zod-openapi from the same zod schemas that
 * validate requests, and the interactive reference at /docs (swagger-ui-dist, served from the
 * installed package: no CDN).
 */

const json = <T extends z.ZodType>(schema: T, description: string) => ({
  description,
  content: { 'application/json': { schema } },
});
const error = (description: string) => json(graphErrorSchema, description);

const connectionIdParam = z.string().meta({ description: CONNECTION_ID_RULE, example: 'contosohr' });
const operationIdParam = z.string().meta({ description: OPERATION_ID_RULE, example: 'import-2026-11-29' });
const retryAfter = { 'Retry-After': { description: 'Seconds to wait before polling (while inprogress) or retrying', schema: { type: 'integer' as const } } };
const security = [{ bearer: [] }];
const authErrors = {
  401: error('Missing or invalid token (WWW-Authenticate says why)'),
  403: error('The token lacks the permission, or is a personal account'),
  429: error('The tenant exceeded its rate limit'),
  503: error('Redis or the token keys are unavailable; retry after Retry-After'),
};

/** The operation routes of one path family under one version prefix. */
function operationRoutes(base: string): RouteConfig[] {
  const collection = `${base}/{connectionId}/operations`;
  const create = (path: string): RouteConfig => ({
    method: 'post',
    path,
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
      415: error('The Content-Type is not JSON'),
      ...authErrors,
    },
  });
  return [
    create(collection),
    create(`${collection}/$ref`),
    {
      method: 'get',
      path: collection,
      tags: ['operations'],
      summary: 'List operations, newest first',
      security,
      request: {
        params: z.object({ connectionId: connectionIdParam }),
        query: z.object({
          $top: z.string().optional().meta({ description: 'Page size, 1-999 (default 100)', example: '100' }),
          $skiptoken: z.string().optional().meta({ description: 'Opaque; take it from @odata.nextLink' }),
          $filter: z.string().optional().meta({ description: `status eq '<${OPERATION_STATUSES.join('|')}>'`, example: "status eq 'failed'" }),
          $count: z.enum(['true', 'false']).optional(),
        }),
      },
      responses: { 200: json(operationListSchema, 'One page'), 400: error('An unsupported or invalid query option'), ...authErrors },
    },
    {
      method: 'get',
      path: `${collection}/{operationId}`,
      tags: ['operations'],
      summary: 'Get an operation',
      security,
      request: { params: z.object({ connectionId: connectionIdParam, operationId: operationIdParam }) },
      responses: {
        200: { ...json(operationResourceSchema, 'The operation'), headers: retryAfter },
        404: error('No such operation in this tenant and connection'),
        ...authErrors,
      },
    },
  ];
}

const text = (description: string) => ({ description, content: { 'text/plain': { schema: z.string() } } });
const OPERATOR_ROUTES: RouteConfig[] = [
  { method: 'get', path: '/healthz', tags: ['operations service'], summary: 'Liveness', responses: { 200: json(z.object({ status: z.literal('ok') }), 'Alive') } },
  {
    method: 'get',
    path: '/readyz',
    tags: ['operations service'],
    summary: 'Readiness: Redis answers',
    responses: { 200: json(z.object({ status: z.literal('ready') }), 'Ready'), 503: error('Redis is not answering') },
  },
  { method: 'get', path: '/metrics', tags: ['operations service'], summary: 'Prometheus metrics (Bearer METRICS_TOKEN when set)', responses: { 200: text('Prometheus text format'), 401: error('METRICS_TOKEN is set and not given') } },
  { method: 'get', path: '/openapi.json', tags: ['operations service'], summary: 'This document', responses: { 200: text('OpenAPI 3.1 JSON') } },
  { method: 'get', path: '/docs', tags: ['operations service'], summary: 'Interactive API reference', responses: { 200: text('HTML') } },
];

export function buildOpenApiDocument(routeBases: string[]) {
  const registry = new OpenAPIHono();
  registry.openAPIRegistry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'An Entra ID style access token: scp or roles with ExternalConnection.ReadWrite.OwnedBy/.ReadWrite.All (create) or .Read.All (read)',
  });
  for (const route of [...routeBases.flatMap(operationRoutes), ...OPERATOR_ROUTES]) registry.openAPIRegistry.registerPath(route);
  return registry.getOpenAPI31Document({
    openapi: '3.1.0',
    info: {
      title: 'Connection operations',
      version: '1.0.0',
      description:
        'The Microsoft Graph connectionOperation resource of external connections. Every route is also served under /v1.0 and /beta.',
    },
  });
}

const swaggerUiDir = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));

const DOCS_PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Connection operations API</title>
  <link rel="stylesheet" href="docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/assets/swagger-ui-bundle.js"></script>
  <script>window.ui = SwaggerUIBundle({ url: 'openapi.json', dom_id: '#swagger-ui' });</script>
</body>
</html>`;

/** /openapi.json and /docs (no auth). The document is built once. */
export function openApiRoutes(routeBases: string[]): Hono {
  const app = new Hono();
  const document = buildOpenApiDocument(routeBases);
  app.get('/openapi.json', (c) => c.json(document));
  app.get('/docs', (c) => c.html(DOCS_PAGE));
  app.get('/docs/assets/*', serveStatic({ root: swaggerUiDir, rewriteRequestPath: (path) => path.replace(/^\/docs\/assets/, '') }));
  return app;
}
