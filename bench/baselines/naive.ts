import { randomUUID } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from '@hono/node-server';
import { Queue, Worker } from 'bullmq';
import { Hono } from 'hono';
import { Redis } from 'ioredis';
import { runCountingWorker } from './counting-worker.js';

/**
 * Baseline: the naive BullMQ service, run as two processes like the real one.
 *   node --import tsx bench/baselines/naive.ts api      one HSET and one queue.add per POST
 *   node --import tsx bench/baselines/naive.ts worker   HSETs the status to completed
 * No auth, no request logging, no validation beyond JSON parsing: the least Redis and CPU work
 * a BullMQ-per-operation service can do, so ratios against it are conservative.
 * The worker publishes how many operations it completed in NAIVE_COMPLETED_KEY (every 20 ms),
 * so the bench can wait for the end without scanning.
 */
export const NAIVE_QUEUE = 'naive';
export const NAIVE_COMPLETED_KEY = 'naive:completed';
export const naiveOperationKey = (id: string) => `naive:op:${id}`;
const CONCURRENCY = Number(process.env.WORKER_CONCURRENCY ?? 50);

async function api(): Promise<void> {
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
  const queue = new Queue(NAIVE_QUEUE, { connection: redis });
  queue.on('error', (error) => process.stderr.write(`queue error: ${error.message}\n`));
  const app = new Hono();
  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.post('/v1.0/external/connections/:connectionId/operations', async (c) => {
    await c.req.json();
    const id = randomUUID();
    const now = Date.now();
    await redis.hset(naiveOperationKey(id), 's', 'inprogress', 'c', now, 'u', now);
    await queue.add('op', { id, connectionId: c.req.param('connectionId') }, { removeOnComplete: true });
    return c.json({ id, status: 'inprogress', error: null }, 201);
  });
  const server = serve({ fetch: app.fetch, port: Number(process.env.PORT ?? 3000), hostname: process.env.HOST ?? '127.0.0.1' });
  const stop = () => server.close(() => void queue.close().then(() => redis.quit()).finally(() => process.exit(0)));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function worker(): Promise<void> {
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
  let completed = 0;
  const bull = new Worker<{ id: string }>(
    NAIVE_QUEUE,
    async (job) => {
      await redis.hset(naiveOperationKey(job.data.id), 's', 'completed', 'u', Date.now());
      completed++;
    },
    { connection: redis, concurrency: CONCURRENCY },
  );
  await runCountingWorker(redis, bull, NAIVE_COMPLETED_KEY, () => completed, CONCURRENCY);
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain && process.argv[2] === 'api') await api();
if (isMain && process.argv[2] === 'worker') await worker();
