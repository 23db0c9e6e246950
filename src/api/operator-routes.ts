import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import { scrapeAllowed } from '../shared/metrics.js';
import type { AppDeps, AppEnv } from './env.js';
import { GraphError, serviceUnavailable } from './errors.js';
import { graphErrorSchema } from './schemas.js';

/** The routes for operators (no Graph prefix, no token): liveness, readiness and metrics. */

const tags = ['operations service'];
const text = (description: string) => ({ description, content: { 'text/plain': { schema: z.string() } } });
const json = <T extends z.ZodType>(schema: T, description: string) => ({ description, content: { 'application/json': { schema } } });

export const healthRoute = createRoute({
  method: 'get',
  path: '/healthz',
  tags,
  summary: 'Liveness',
  responses: { 200: json(z.object({ status: z.literal('ok') }), 'Alive') },
});
export const readyRoute = createRoute({
  method: 'get',
  path: '/readyz',
  tags,
  summary: 'Readiness: Redis answers',
  responses: { 200: json(z.object({ status: z.literal('ready') }), 'Ready'), 503: json(graphErrorSchema, 'Redis is not answering') },
});
export const metricsRoute = createRoute({
  method: 'get',
  path: '/metrics',
  tags,
  summary: 'Prometheus metrics (Bearer METRICS_TOKEN when set)',
  responses: { 200: text('Prometheus text format'), 401: json(graphErrorSchema, 'METRICS_TOKEN is set and not given') },
});

export function operatorRoutes({ ready, metrics, config }: AppDeps): OpenAPIHono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>();
  routes.openapi(healthRoute, (c) => c.json({ status: 'ok' as const }, 200));
  routes.openapi(readyRoute, async (c) => {
    if (await ready()) return c.json({ status: 'ready' as const }, 200);
    throw serviceUnavailable('Redis is not answering.');
  });
  if (metrics) {
    routes.openapi(metricsRoute, async (c) => {
      if (!scrapeAllowed(c.req.header('authorization'), config.METRICS_TOKEN)) {
        throw new GraphError(401, 'InvalidAuthenticationToken', 'GET /metrics needs Authorization: Bearer <METRICS_TOKEN>.', {
          'WWW-Authenticate': 'Bearer realm="metrics"',
        });
      }
      return c.text(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType });
    });
  }
  return routes;
}
