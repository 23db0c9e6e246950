import '../load-env-file.js'; // first: reads .env before any other module runs
import '../start-tracing.js'; // second: traces, when OTEL_* asks for them, before the service loads
import { runProcess } from '../shared/lifecycle.js';
import { Metrics } from '../shared/metrics.js';
import { startApi } from './server.js';

await runProcess('api', async (config, log) => [await startApi(config, log, new Metrics())]);
