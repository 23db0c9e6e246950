import { afterEach, describe, expect, it } from 'vitest';
import { adminRoutes } from '../src/api/admin.js';
import { CreateBatcher } from '../src/api/create-batcher.js';
import { buildOpenApiDocument } from '../src/api/openapi.js';
import { graphErrorSchema, operationListSchema, operationResourceSchema } from '../src/api/schemas.js';
import { Metrics } from '../src/shared/metrics.js';
import { createOperationBodySchema } from '../src/shared/operation.js';
import { createApiContext, silentLog, type ApiContext } from './support/context.js';

let ctx: ApiContext | undefined;
afterEach(async () => {
  await ctx?.close();
  ctx = undefined;
});

type OpenApiDocument = {
  paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: unknown }> }> }>>;
  components: { schemas: Record<string, { example?: unknown }> };
};

describe('GET /openapi.json', () => {
  it('describes every route the app serves, each path family once', async () => {
    ctx = await createApiContext();
    const document = (await (await ctx.app.request('/openapi.json')).json()) as OpenApiDocument;
    // The operation routes of every prefix and family, as the one family the document lists.
    const served = ctx.app.routes
      .filter((route) => route.method !== 'ALL' && !route.path.endsWith('*'))
      .map((route) => {
        const path = route.path
          .replace(/^\/(v1\.0|beta)(?=\/)/, '')
          .replace(/^\/connections(?=\/|$)/, '/external/connections')
          .replace(/:(\w+)/g, '{$1}')
          .replace(/%24ref$/, '$ref')
          // The $ref creates are routed through a {ref} parameter (operation-routes.ts says why).
          .replace(/\{ref\}$/, '$ref');
        return `${route.method.toLowerCase()} ${path}`;
      });
    const documented = Object.entries(document.paths).flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method} ${path}`));
    expect(served.length).toBeGreaterThan(20);
    for (const route of new Set(served)) expect(documented, route).toContain(route);
    // /metrics is served only when the process has metrics; this app has none.
    expect(documented.filter((route) => !served.includes(route))).toEqual(['get /metrics']);
    expect(Object.keys(document.paths).filter((path) => /^\/(v1\.0|beta)\/|^\/connections\//.test(path))).toEqual([]);
  });

  it('has examples that validate against the schemas that validate requests and answers', () => {
    const document = buildOpenApiDocument() as unknown as OpenApiDocument;
    const schemas = document.components.schemas;
    expect(createOperationBodySchema.safeParse(schemas.connectionOperationCreate?.example).success).toBe(true);
    expect(operationResourceSchema.safeParse(schemas.connectionOperation?.example).success).toBe(true);
    expect(operationListSchema.safeParse(schemas.connectionOperationCollection?.example).success).toBe(true);
    expect(graphErrorSchema.safeParse(schemas.graphError?.example).success).toBe(true);
  });

  it('describes answers the API really gives', async () => {
    ctx = await createApiContext();
    const created = await ctx.post('/external/connections/contosohr/operations', { id: 'a' });
    expect(operationResourceSchema.safeParse(await created.json()).success).toBe(true);
    const list = await ctx.request('/external/connections/contosohr/operations?$count=true');
    expect(operationListSchema.safeParse(await list.json()).success).toBe(true);
    const error = await ctx.post('/external/connections/contosohr/operations', { id: 'a' });
    expect(graphErrorSchema.safeParse(await error.json()).success).toBe(true);
    const canceled = await ctx.request('/external/connections/contosohr/operations/a/cancel', { method: 'POST' });
    expect(operationResourceSchema.safeParse(await canceled.json()).success).toBe(true);
  });

  it('describes waiting, the event stream and cancel', () => {
    const document = buildOpenApiDocument() as unknown as OpenApiDocument & {
      paths: Record<string, Record<string, { parameters?: { in: string; name: string }[] }>>;
    };
    const operation = document.paths['/external/connections/{connectionId}/operations/{operationId}']!;
    expect(Object.keys(operation.get!.responses['200']!.content!)).toEqual(['application/json', 'text/event-stream']);
    expect(operation.get!.parameters).toContainEqual(expect.objectContaining({ in: 'header', name: 'prefer' }));
    expect(document.paths['/external/connections/{connectionId}/operations']!.post!.parameters).toContainEqual(
      expect.objectContaining({ in: 'header', name: 'prefer' }),
    );
    expect(Object.keys(document.paths['/external/connections/{connectionId}/operations/{operationId}/cancel']!.post!.responses)).toEqual(
      expect.arrayContaining(['200', '404', '409', '403']),
    );
  });
});

describe('GET /docs', () => {
  it('serves the reference page and its assets from the installed package', async () => {
    ctx = await createApiContext();
    const page = await ctx.app.request('/docs');
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).not.toMatch(/https?:\/\//);
    for (const asset of html.match(/docs\/assets\/[\w.-]+/g) ?? []) {
      const response = await ctx.app.request(`/${asset}`);
      expect(response.status, asset).toBe(200);
      expect((await response.arrayBuffer()).byteLength).toBeGreaterThan(1000);
    }
  });
});

describe('GET /metrics', () => {
  async function metricsContext(token?: string) {
    const context = await createApiContext(token ? { METRICS_TOKEN: token } : {});
    const metrics = new Metrics({ processMetrics: false });
    metrics.watchQueues(context.queue);
    const { createApp } = await import('../src/api/app.js');
    const { jwtAuthenticator } = await import('../src/api/jwt-auth.js');
    const app = createApp({
      store: context.store,
      creates: new CreateBatcher(context.store, context.queue, (await import('./support/context.js')).silentLog),
      connections: context.connections,
      queue: context.queue,
      watch: context.watch,
      auth: jwtAuthenticator(context.config),
      config: context.config,
      log: (await import('./support/context.js')).silentLog,
      ready: async () => true,
      metrics,
    });
    return { context, app };
  }

  it('exposes request durations by route template, operations created and queue depth, without tenant ids', async () => {
    const { context, app } = await metricsContext();
    ctx = context;
    const token = context.token;
    await app.request('/external/connections/contosohr/operations', {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    const response = await app.request('/metrics');
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain('http_request_duration_seconds_count{method="POST",route="/external/connections/:connectionId/operations",status="201"} 1');
    expect(text).toContain('operations_created_total 1');
    expect(text).toContain('operation_queue_jobs{state="waiting"} 1');
    expect(text).not.toContain('11111111-1111');
    expect(text).not.toContain(token);
  });

  it('needs the bearer METRICS_TOKEN when one is set', async () => {
    const { context, app } = await metricsContext('scrape-me');
    ctx = context;
    expect((await app.request('/metrics')).status).toBe(401);
    expect((await app.request('/metrics', { headers: { authorization: 'Bearer wrong-token' } })).status).toBe(401);
    expect((await app.request('/metrics', { headers: { authorization: 'Bearer scrape-me' } })).status).toBe(200);
  });
});

describe('the Bull Board dashboard', () => {
  it('is absent unless credentials are configured', async () => {
    ctx = await createApiContext();
    expect((await ctx.app.request('/admin/queues')).status).toBe(404);
  });

  it('answers 401 with a Basic challenge in Graph error shape when mounted in the app', async () => {
    const context = await createApiContext();
    ctx = context;
    const { createApp } = await import('../src/api/app.js');
    const { jwtAuthenticator } = await import('../src/api/jwt-auth.js');
    const app = createApp({
      store: context.store,
      creates: new CreateBatcher(context.store, context.queue, silentLog, { jobFollowsRecords: true }),
      connections: context.connections,
      queue: context.queue,
      watch: context.watch,
      auth: jwtAuthenticator(context.config),
      config: context.config,
      log: silentLog,
      ready: async () => true,
      admin: adminRoutes({ queues: context.queue.queues, user: 'ops', password: 'pw', readOnly: true }),
    });
    const refused = await app.request('/admin/queues');
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Basic/);
    expect((await refused.json()) as { error: { code: string; message: string } }).toMatchObject({
      error: { code: 'unauthenticated', message: expect.stringMatching(/Basic credentials.*ADMIN_USER.*ADMIN_PASSWORD/) as unknown },
    });
    const auth = { authorization: `Basic ${Buffer.from('ops:pw').toString('base64')}` };
    expect((await app.request('/admin/queues', { headers: auth })).status).toBe(200);
  });

  it('asks for basic auth, then serves the board, its API and its assets read-only', async () => {
    ctx = await createApiContext();
    const admin = adminRoutes({ queues: ctx.queue.queues, user: 'ops', password: 'pw', readOnly: true });
    const { Hono } = await import('hono');
    const app = new Hono().route('/admin/queues', admin);
    const unauthorized = await app.request('/admin/queues');
    expect(unauthorized.status).toBe(401);
    expect(unauthorized.headers.get('www-authenticate')).toMatch(/^Basic/);

    const auth = { authorization: `Basic ${Buffer.from('ops:pw').toString('base64')}` };
    const page = await app.request('/admin/queues', { headers: auth });
    expect(page.status).toBe(200);
    const html = await page.text();
    // The page links its assets relative to <base href="/admin/queues/">.
    expect(html).toContain('<base href="/admin/queues/" />');
    const assets = html.match(/static\/[\w./-]+\.(?:js|css)/g) ?? [];
    expect(assets.length).toBeGreaterThan(0);
    for (const asset of assets) expect((await app.request(`/admin/queues/${asset}`, { headers: auth })).status, asset).toBe(200);
    const queues = (await (await app.request('/admin/queues/api/queues', { headers: auth })).json()) as { queues: { name: string; readOnlyMode: boolean }[] };
    expect(queues.queues.map((queue) => [queue.name, queue.readOnlyMode])).toEqual([['{operations}', true]]);
  });
});
