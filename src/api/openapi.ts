import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import { serveStatic } from '@hono/node-server/serve-static';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { batchRoute } from './batch-routes.js';
import { CONNECTION_ROUTES } from './connection-routes.js';
import { OPERATION_ROUTES } from './operation-routes.js';
import { healthRoute, metricsRoute, readyRoute } from './operator-routes.js';

/**
 * The OpenAPI 3.1 document, generated with @hono/zod-openapi from the same zod schemas that
 * validate requests, and the interactive reference at /docs (swagger-ui-dist, served from the
 * installed package: no CDN).
 */

/** The path family the document shows; the others serve the same routes (see the description). */
const DOCUMENTED_FAMILY = '/external/connections';

const DESCRIPTION = [
  'The Microsoft Graph connectionOperation resource of external connections, and the connections and schemas',
  'that produce those operations (a schema PATCH or a connection DELETE answers 202 with the Location of one).',
  '',
  `The Graph routes are listed once, under ${DOCUMENTED_FAMILY}. The same routes are served under`,
  '`/connections` (the beta path family), and both families also under the `/v1.0` and `/beta` prefixes,',
  'so a Graph SDK pointed at `http://host:port/v1.0` works unchanged; so is `/$batch`. The operator routes',
  '(/healthz, /readyz, /metrics, /openapi.json, /docs) are served at the root only.',
].join('\n');

const docsRoute = createRoute({
  method: 'get',
  path: '/docs',
  tags: ['operations service'],
  summary: 'Interactive API reference',
  responses: { 200: { description: 'HTML', content: { 'text/html': { schema: z.string() } } } },
});
const documentRoute = createRoute({
  method: 'get',
  path: '/openapi.json',
  tags: ['operations service'],
  summary: 'This document',
  responses: { 200: { description: 'OpenAPI 3.1 JSON', content: { 'application/json': { schema: z.object({}).loose() } } } },
});

/** The OpenAPI 3.1 document, from the route descriptions that also validate the requests. */
export function buildOpenApiDocument() {
  const registry = new OpenAPIHono();
  registry.openAPIRegistry.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'An Entra ID style access token: scp or roles with ExternalConnection.ReadWrite.OwnedBy/.ReadWrite.All (create) or .Read.All (read)',
  });
  for (const route of [...CONNECTION_ROUTES, ...OPERATION_ROUTES]) {
    const path = `${DOCUMENTED_FAMILY}${route.path === '/' ? '' : route.path}`;
    if (!('hide' in route && route.hide)) registry.openAPIRegistry.registerPath({ ...route, path });
  }
  for (const route of [batchRoute, healthRoute, readyRoute, metricsRoute, documentRoute, docsRoute]) registry.openAPIRegistry.registerPath(route);
  return registry.getOpenAPI31Document({
    openapi: '3.1.0',
    info: { title: 'Connection operations', version: '1.0.0', description: DESCRIPTION },
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
export function openApiRoutes(): OpenAPIHono {
  const app = new OpenAPIHono();
  const document = buildOpenApiDocument();
  app.openapi(documentRoute, (c) => c.json(document, 200));
  app.openapi(docsRoute, (c) => c.html(DOCS_PAGE, 200));
  app.get('/docs/assets/*', serveStatic({ root: swaggerUiDir, rewriteRequestPath: (path) => path.replace(/^\/docs\/assets/, '') }));
  return app;
}
