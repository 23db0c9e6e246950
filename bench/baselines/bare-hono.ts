import { randomUUID } from 'node:crypto';
import { serve } from '@hono/node-server';
import { Hono } from 'hono';

/**
 * Baseline: the HTTP ceiling. A bare Hono app on @hono/node-server that parses the JSON body
 * of a create and answers 201, with no auth, no logging and no Redis.
 * Run: node --import tsx bench/baselines/bare-hono.ts   (PORT, HOST from the environment)
 */
const app = new Hono();
app.get('/healthz', (c) => c.json({ status: 'ok' }));
app.post('/v1.0/external/connections/:connectionId/operations', async (c) => {
  await c.req.json();
  return c.json({ id: randomUUID(), status: 'inprogress', error: null }, 201);
});

const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 3000), hostname: process.env.HOST ?? '127.0.0.1' });
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
