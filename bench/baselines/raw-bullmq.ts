import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { runCountingWorker } from './counting-worker.js';

/**
 * Baseline: the queue's ceiling. `addRawJobs` adds N jobs with addBulk in chunks (called by the
 * bench, in its own process); the worker process runs a noop processor with the service's
 * default concurrency and publishes its completed count in RAW_COMPLETED_KEY every 20 ms.
 *   node --import tsx bench/baselines/raw-bullmq.ts worker
 */
export const RAW_QUEUE = 'raw';
export const RAW_COMPLETED_KEY = 'raw:completed';
const CONCURRENCY = Number(process.env.WORKER_CONCURRENCY ?? 50);

export async function addRawJobs(redisUrl: string, count: number, chunk = 1000): Promise<void> {
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue(RAW_QUEUE, { connection });
  queue.on('error', () => {});
  try {
    for (let start = 0; start < count; start += chunk) {
      const size = Math.min(chunk, count - start);
      await queue.addBulk(
        Array.from({ length: size }, (_, i) => ({ name: 'noop', data: { i: start + i }, opts: { removeOnComplete: true } })),
      );
    }
  } finally {
    await queue.close();
    await connection.quit();
  }
}

async function worker(): Promise<void> {
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: null });
  let completed = 0;
  const bull = new Worker(RAW_QUEUE, async () => {}, { connection: redis, concurrency: CONCURRENCY });
  bull.on('completed', () => completed++);
  await runCountingWorker(redis, bull, RAW_COMPLETED_KEY, () => completed, CONCURRENCY);
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain && process.argv[2] === 'worker') await worker();
