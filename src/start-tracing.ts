/**
 * Starts OpenTelemetry tracing when an OTLP endpoint is configured (shared/tracing.ts), before
 * the rest of the process loads: every entry point imports it right after load-env-file.js,
 * whose variables it reads. ES modules run in import order and this one awaits the SDK's start,
 * so no module of the service runs before it.
 *
 * The default service name follows the entry point (the API, the worker, or both in one
 * process); OTEL_SERVICE_NAME overrides it.
 */
import { startTracing } from './shared/tracing.js';

const entry = (process.argv[1] ?? '').replaceAll('\\', '/');
const role = /\/api\/main\.[jt]s$/.test(entry) ? '-api' : /\/worker\/main\.[jt]s$/.test(entry) ? '-worker' : '';
await startTracing(`connection-operations${role}`);
