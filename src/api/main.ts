import { runProcess } from '../shared/lifecycle.js';
import { startApi } from './server.js';

await runProcess('api', async (config, log) => [await startApi(config, log)]);
