import '../load-env-file.js'; // first: reads .env before any other module runs
import '../start-tracing.js'; // second: traces, when OTEL_* asks for them, before the service loads
import { runProcess } from '../shared/lifecycle.js';
import { Metrics } from '../shared/metrics.js';
import { startWorker } from './service.js';

await runProcess('worker', async (config, log) => [await startWorker(config, log, new Metrics())]);
