import type { Config } from '../shared/config.js';
import type { Service } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { OperationQueue } from '../shared/queue.js';
import { createRedis, waitUntilReady } from '../shared/redis.js';
import { OperationStore } from '../shared/store.js';
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

/** Builds a worker process's connections, the BullMQ worker and the reconciler. */
export async function startWorker(config: Config, log: Logger): Promise<Service> {
  const processor = await configuredProcessor(config, log);
  const redis = createRedis({ url: config.REDIS_URL, role: 'consumer', connectionName: 'cops-worker' });
  redis.on('error', (error: Error) => log.warn({ err: error.message }, 'redis connection error'));
  await waitUntilReady(redis);

  const store = new OperationStore(redis, {
    prefix: config.REDIS_PREFIX,
    retentionMs: config.OPERATION_RETENTION_SECONDS * 1000,
  });
  const queue = new OperationQueue(
    redis,
    config.REDIS_PREFIX,
    { attempts: config.OPERATION_ATTEMPTS, backoffMs: config.OPERATION_BACKOFF_MS },
    log,
  );
  const worker = createWorker({ connection: redis, store, processor, config, log });
  const reconciler = new Reconciler({
    store,
    queue,
    log,
    intervalMs: config.RECONCILE_INTERVAL_MS,
    afterMs: config.RECONCILE_AFTER_MS,
  });
  reconciler.start();
  log.info({ concurrency: config.WORKER_CONCURRENCY }, 'worker started');

  return {
    async close() {
      await reconciler.stop();
      await worker.close(config.SHUTDOWN_TIMEOUT_MS);
      await queue.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
