import type { Config } from './config.js';
import { ConnectionStore } from './connection-store.js';
import type { Logger } from './logger.js';
import { OperationQueue } from './queue.js';
import type { RedisClient } from './redis.js';
import { OperationStore } from './store.js';

/** What the API and the workers must agree on. */
export type OperationsConfig = Pick<
  Config,
  'REDIS_PREFIX' | 'OPERATION_RETENTION_SECONDS' | 'OPERATION_ATTEMPTS' | 'OPERATION_BACKOFF_MS' | 'QUEUE_SHARDS'
>;

/**
 * A process's operation and connection stores and queue, built from the configuration. The API and the workers
 * both build theirs here, so they agree on the key prefix, the retention, the attempts and
 * backoff of jobs, and the shards: a process that disagreed would read other keys or consume
 * other queues. Build them once Redis is ready: BullMQ caches a failed start-up check forever.
 */
export function operationsFor(
  config: OperationsConfig,
  redis: RedisClient,
  log: Logger,
): { store: OperationStore; queue: OperationQueue; connections: ConnectionStore } {
  const store = new OperationStore(redis, {
    prefix: config.REDIS_PREFIX,
    retentionMs: config.OPERATION_RETENTION_SECONDS * 1000,
  });
  const queue = new OperationQueue(
    redis,
    store.keys.bullPrefix(),
    { attempts: config.OPERATION_ATTEMPTS, backoffMs: config.OPERATION_BACKOFF_MS },
    log,
    config.QUEUE_SHARDS,
  );
  return { store, queue, connections: new ConnectionStore(redis, store) };
}
