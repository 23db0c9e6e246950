import { runProcess } from '../shared/lifecycle.js';
import { startWorker } from './service.js';

await runProcess('worker', async (config, log) => [await startWorker(config, log)]);
