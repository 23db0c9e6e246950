import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type { Config } from '../shared/config.js';
import type { Service } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { connectRedis, createRedis, warnUnlessNoEviction } from '../shared/redis.js';
import type { Metrics } from '../shared/metrics.js';
import { Subscriber } from '../shared/subscriber.js';
import { operationsFor } from '../shared/wiring.js';
import { adminRoutes } from './admin.js';
import { createApp } from './app.js';
import { CreateBatcher } from './create-batcher.js';
import { createHttpServer } from './http-server.js';
import { jwtAuthenticator } from './jwt-auth.js';
import { OperationWatch } from './operation-watch.js';
import { rateLimitPerTenant } from './rate-limit.js';

/** Builds the API's connections and serves it; resolves once it listens. */
/** `shared.subscriber`: the process's pub/sub connection when another role shares the process
 *  (npm start); the API then leaves closing it to the caller. */
export async function startApi(config: Config, log: Logger, metrics: Metrics, shared: { subscriber?: Subscriber } = {}): Promise<Service & { port: number }> {
  const auth = jwtAuthenticator(config);
  const redis = createRedis({
    url: config.REDIS_URL,
    role: 'producer',
    commandTimeoutMs: config.REDIS_COMMAND_TIMEOUT_MS,
    connectionName: 'cops-api',
  });
  await connectRedis(redis, config.REDIS_URL, log);
  await warnUnlessNoEviction(redis, log);
  // Built only once Redis is ready: BullMQ caches a failed start-up check forever.
  const { store, queue, connections } = operationsFor(config, redis, log);
  metrics.watchQueues(queue);
  const ready = async () => {
    try {
      return (await redis.ping()) === 'PONG';
    } catch {
      return false;
    }
  };
  const rateLimit = config.RATE_LIMIT_PER_TENANT
    ? rateLimitPerTenant(redis, store.keys, config.RATE_LIMIT_PER_TENANT)
    : undefined;
  // The one pub/sub connection of this process: the waits and event streams share it.
  const subscriber = shared.subscriber ?? new Subscriber(createRedis({ url: config.REDIS_URL, role: 'subscriber', connectionName: 'cops-api-events' }), log);
  // An event stream waits up to 5 s for its subscription (a held request, up to its wait): a
  // process with thousands of requests arriving at once takes longer than a command timeout.
  const watch = new OperationWatch(store, subscriber, log, 5_000);
  const admin =
    config.ADMIN_USER && config.ADMIN_PASSWORD
      ? adminRoutes({ queues: queue.queues, user: config.ADMIN_USER, password: config.ADMIN_PASSWORD, readOnly: config.ADMIN_READ_ONLY })
      : undefined;
  const app = createApp({
    store,
    // A batch's job goes right behind its records on one Redis node; on a cluster they are on
    // different nodes.
    creates: new CreateBatcher(store, queue, log, { jobFollowsRecords: !redis.isCluster }),
    connections,
    queue,
    watch,
    auth,
    config,
    log,
    ready,
    metrics,
    ...(rateLimit ? { rateLimit } : {}),
    ...(admin ? { admin } : {}),
  });

  const server: Server = createHttpServer(app, config, log);
  await new Promise<void>((resolve) => server.listen(config.PORT, config.HOST, () => resolve()));
  const port = (server.address() as AddressInfo).port;
  log.info({ port, host: config.HOST }, 'API listening');

  return {
    port,
    async close() {
      // Stop accepting connections; held requests answer with the operation's latest state and
      // event streams end; the other in-flight requests finish; idle keep-alives are dropped.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      watch.close();
      // Node drops the keep-alive connections idle now, not those that become idle later (the
      // held requests just answered, the requests still in flight): it waits for them to time
      // out. So they are dropped as they become idle, until the server has closed.
      server.closeIdleConnections();
      const dropIdle = setInterval(() => server.closeIdleConnections(), 50);
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, config.SHUTDOWN_TIMEOUT_MS).unref())]);
      clearInterval(dropIdle);
      await queue.close();
      if (!shared.subscriber) await subscriber.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
