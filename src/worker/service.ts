import type { Config } from '../shared/config.js';
import type { Service } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { Metrics } from '../shared/metrics.js';
import { connectRedis, createRedis, warnUnlessNoEviction } from '../shared/redis.js';
import { Subscriber } from '../shared/subscriber.js';
import { operationsFor } from '../shared/wiring.js';
import { ConsumptionMonitor, startHealthServer } from './health.js';
import type { Processor } from './processor.js';
import { completeEverything } from './processors/builtin.js';
import { httpProcessor } from './processors/http.js';
import { loadModuleProcessor } from './processors/module.js';
import { Reconciler } from './reconciler.js';
import { createWorker } from './worker.js';

/** The processor the configuration names: HTTP, a module, or the built-in completer. */
export async function configuredProcessor(config: Config, log: Logger): Promise<Processor> {
  if (config.PROCESSOR_URL && config.PROCESSOR_MODULE) {
    throw new Error('Set PROCESSOR_URL or PROCESSOR_MODULE, not both.');
  }
  if (config.PROCESSOR_URL) {
    log.info({ url: config.PROCESSOR_URL, signed: Boolean(config.PROCESSOR_SECRET) }, 'processing with the HTTP processor');
    return httpProcessor({ url: config.PROCESSOR_URL, secret: config.PROCESSOR_SECRET, timeoutMs: config.PROCESSOR_TIMEOUT_MS });
  }
  if (config.PROCESSOR_MODULE) {
    log.info({ module: config.PROCESSOR_MODULE }, 'processing with a module processor');
    return loadModuleProcessor(config.PROCESSOR_MODULE);
  }
  log.warn('neither PROCESSOR_URL nor PROCESSOR_MODULE is set: the built-in processor completes every operation without doing anything');
  return completeEverything;
}

/** Builds a worker process's connections, the BullMQ workers, the reconciler and, when
 *  WORKER_HEALTH_PORT is set, its health server. */
/** `shared.subscriber`: the process's pub/sub connection when another role shares the process
 *  (npm start); the worker then leaves closing it to the caller. */
export async function startWorker(config: Config, log: Logger, metrics: Metrics, shared: { subscriber?: Subscriber } = {}): Promise<Service> {
  const processor = await configuredProcessor(config, log);
  const redis = createRedis({ url: config.REDIS_URL, role: 'consumer', connectionName: 'cops-worker' });
  await connectRedis(redis, config.REDIS_URL, log);
  await warnUnlessNoEviction(redis, log);

  const { store, queue, connections } = operationsFor(config, redis, log);
  const subscriber = shared.subscriber ?? new Subscriber(createRedis({ url: config.REDIS_URL, role: 'subscriber', connectionName: 'cops-worker-events' }), log);
  const worker = createWorker({ connection: redis, store, queue, processor, config, log, metrics, subscriber, connections });
  await worker.hearingCancels.catch((error: unknown) => {
    log.warn({ err: error }, 'could not subscribe to cancels; a canceled attempt is aborted at its next lease renewal instead');
  });
  const reconciler = new Reconciler({
    store,
    queue,
    log,
    intervalMs: config.RECONCILE_INTERVAL_MS,
    afterMs: config.RECONCILE_AFTER_MS,
  });
  reconciler.start();

  let health: Service | undefined;
  if (config.WORKER_HEALTH_PORT !== undefined) {
    const monitor = new ConsumptionMonitor(
      worker.workers,
      // A worker holding as many jobs as it takes is busy; with fewer it takes any job that
      // waits, so a waiting job it does not take means it is stuck.
      () => worker.jobsHeld() >= config.WORKER_CONCURRENCY * config.QUEUE_SHARDS,
      // A worker that took nothing for two lock+stall cycles while jobs wait is stuck.
      2 * (config.WORKER_LOCK_DURATION_MS + config.WORKER_STALLED_INTERVAL_MS),
      async () => (await queue.counts('waiting')).waiting,
    );
    // Not connected is not ready, at once: a PING would wait in the offline queue until Redis
    // is back (the health server bounds the wait for a connected but silent Redis).
    const ready = async () => redis.status === 'ready' && (await redis.ping().catch(() => '')) === 'PONG';
    const server = await startHealthServer({ port: config.WORKER_HEALTH_PORT, monitor, ready, metrics, metricsToken: config.METRICS_TOKEN });
    health = server;
    log.info({ port: server.port }, 'worker health server listening');
  }
  log.info({ concurrency: config.WORKER_CONCURRENCY, shards: config.QUEUE_SHARDS }, 'worker started');

  return {
    async close() {
      await health?.close();
      await reconciler.stop();
      await worker.close(config.SHUTDOWN_TIMEOUT_MS);
      await queue.close();
      if (!shared.subscriber) await subscriber.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
