import './load-env-file.js'; // first: reads .env before any other module runs
import { startApi } from './api/server.js';
import { runProcess } from './shared/lifecycle.js';
import { Metrics } from './shared/metrics.js';
import { startWorker } from './worker/service.js';

/** `npm start`: the API and a worker in one process, sharing one metrics registry. */
await runProcess('operations', async (config, log) => {
  const metrics = new Metrics();
  return [await startWorker(config, log, metrics), await startApi(config, log, metrics)];
});
