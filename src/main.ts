import './load-env-file.js'; // first: reads .env before any other module runs
import './start-tracing.js'; // second: traces, when OTEL_* asks for them, before the service loads
import { startApi } from './api/server.js';
import { runProcess } from './shared/lifecycle.js';
import { Metrics } from './shared/metrics.js';
import { createRedis } from './shared/redis.js';
import { Subscriber } from './shared/subscriber.js';
import { startWorker } from './worker/service.js';

/** `npm start`: the API and a worker in one process, sharing one metrics registry and one
 *  pub/sub connection (closed once both have stopped). */
await runProcess('operations', async (config, log) => {
  const metrics = new Metrics();
  const subscriber = new Subscriber(createRedis({ url: config.REDIS_URL, role: 'subscriber', connectionName: 'cops-events' }), log);
  const roles = [await startWorker(config, log, metrics, { subscriber }), await startApi(config, log, metrics, { subscriber })];
  return [
    {
      async close() {
        await Promise.allSettled(roles.map((role) => role.close()));
        await subscriber.close();
      },
    },
  ];
});
