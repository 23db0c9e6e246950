import { startApi } from './api/server.js';
import { runProcess } from './shared/lifecycle.js';
import { startWorker } from './worker/service.js';

/** `npm start`: the API and a worker in one process. */
await runProcess('operations', async (config, log) => [await startWorker(config, log), await startApi(config, log)]);
