import { Queue, Worker } from 'bullmq';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { Metrics } from '../src/shared/metrics.js';
import { createRedis, waitUntilReady, type RedisClient } from '../src/shared/redis.js';
import { ConsumptionMonitor, startHealthServer } from '../src/worker/health.js';
import { deleteKeys, uniquePrefix } from './support/context.js';

/**
 * The worker's liveness logic on its own: a real BullMQ worker on the suite's Redis and a
 * clock the test moves. test/faults.test.ts shows the same against a real worker process.
 */

const STUCK_AFTER_MS = 5000;
const QUEUE = '{monitor}';
const NEVER = () => new Promise<never>(() => {});

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function connect(): Promise<RedisClient> {
  const redis = createRedis({ url: inject('redisUrl'), role: 'consumer', connectionName: 'health-test' });
  await waitUntilReady(redis);
  cleanups.push(() => redis.quit());
  return redis;
}

describe('ConsumptionMonitor', () => {
  it('calls a worker stuck when jobs wait, it has free slots and it took none for stuckAfterMs, and consuming once it takes them', async () => {
    const redis = await connect();
    const prefix = uniquePrefix();
    cleanups.push(() => deleteKeys(redis, prefix));
    const queue = new Queue(QUEUE, { connection: redis, prefix });
    cleanups.push(() => queue.close());
    // Not running: a worker that is connected and alive but takes nothing.
    const worker = new Worker(QUEUE, async () => {}, { connection: redis, prefix, autorun: false, concurrency: 2 });
    cleanups.push(() => worker.close());
    let clock = 1_000_000;
    const monitor = new ConsumptionMonitor([worker], () => false, STUCK_AFTER_MS, async () => (await queue.getJobCounts('waiting')).waiting ?? 0, () => clock);

    await queue.add('job', {});
    await queue.add('job', {});
    clock += STUCK_AFTER_MS - 1;
    expect(await monitor.isConsuming()).toBe(true);
    clock += 1;
    expect(await monitor.isConsuming()).toBe(false);

    let completed = 0;
    const bothCompleted = new Promise<void>((resolve) => worker.on('completed', () => ++completed === 2 && resolve()));
    void worker.run();
    await bothCompleted;
    expect(await monitor.isConsuming()).toBe(true);
    // An empty queue is never stuck, however long the worker has been idle.
    clock += 10 * STUCK_AFTER_MS;
    expect(await monitor.isConsuming()).toBe(true);
  });

  it('answers within a second and restarts its clock when Redis does not answer the waiting count', async () => {
    let clock = 0;
    let waiting: () => Promise<number> = NEVER;
    const monitor = new ConsumptionMonitor([], () => false, STUCK_AFTER_MS, () => waiting(), () => clock);
    clock = STUCK_AFTER_MS + 1000;
    const started = Date.now();
    expect(await monitor.isConsuming()).toBe(true);
    expect(Date.now() - started).toBeLessThan(1000);

    // Redis answers again with jobs waiting: the worker gets a full window to take them.
    waiting = async () => 3;
    const unanswered = clock;
    clock = unanswered + STUCK_AFTER_MS - 1;
    expect(await monitor.isConsuming()).toBe(true);
    clock = unanswered + STUCK_AFTER_MS;
    expect(await monitor.isConsuming()).toBe(false);
  });
});

describe('the worker health server', () => {
  it('answers /readyz 503 within a second when the readiness check never settles, and /healthz 200', async () => {
    let clock = 0;
    const monitor = new ConsumptionMonitor([], () => false, STUCK_AFTER_MS, NEVER, () => clock);
    clock = 2 * STUCK_AFTER_MS;
    const server = await startHealthServer({ port: 0, monitor, ready: NEVER, metrics: new Metrics({ processMetrics: false }) });
    cleanups.push(() => server.close());
    for (const [path, status] of [['/readyz', 503], ['/healthz', 200]] as const) {
      const started = Date.now();
      const response = await fetch(`http://127.0.0.1:${server.port}${path}`, { signal: AbortSignal.timeout(3000) });
      await response.body?.cancel();
      expect(response.status, path).toBe(status);
      expect(Date.now() - started, `${path} answered in (ms)`).toBeLessThan(1000);
    }
  });

  it('serves /metrics, behind METRICS_TOKEN when one is set', async () => {
    const monitor = new ConsumptionMonitor([], () => false, STUCK_AFTER_MS, async () => 0);
    const server = await startHealthServer({ port: 0, monitor, ready: async () => true, metrics: new Metrics({ processMetrics: false }), metricsToken: 'scrape-me' });
    cleanups.push(() => server.close());
    const url = `http://127.0.0.1:${server.port}/metrics`;
    expect((await fetch(url)).status).toBe(401);
    const allowed = await fetch(url, { headers: { authorization: 'Bearer scrape-me' } });
    expect(allowed.status).toBe(200);
    expect(await allowed.text()).toContain('operations_finished_total');
  });
});
