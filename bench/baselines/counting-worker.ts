import type { Worker } from 'bullmq';
import type { Redis } from 'ioredis';

/**
 * What both BullMQ baselines' worker processes share: publish the number of completed jobs in
 * `key` every 20 ms (so the bench can wait for the end without scanning), say 'worker started'
 * once ready, and close cleanly on SIGTERM/SIGINT. `completed` is counted by the caller.
 */
export async function runCountingWorker(redis: Redis, bull: Worker, key: string, completed: () => number, concurrency: number): Promise<void> {
  bull.on('error', (error) => process.stderr.write(`worker error: ${error.message}\n`));
  let published = -1;
  const timer = setInterval(() => {
    if (completed() === published) return;
    published = completed();
    void redis.set(key, published);
  }, 20);
  await bull.waitUntilReady();
  process.stdout.write(`${JSON.stringify({ msg: 'worker started', concurrency })}\n`);
  const stop = () => {
    clearInterval(timer);
    void bull.close().then(() => redis.quit()).finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
