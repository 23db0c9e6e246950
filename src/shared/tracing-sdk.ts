import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici';
import { NodeSDK } from '@opentelemetry/sdk-node';
import type { Telemetry } from 'bullmq';
import { BullMQOtel } from 'bullmq-otel';

/**
 * The OpenTelemetry SDK, configured by the standard OTEL_* variables (exporter endpoint and
 * protocol, sampler, resource attributes, batch span processor). Loaded by shared/tracing.ts
 * only when traces are asked for.
 *
 * Traces only: metrics stay Prometheus (/metrics) and logs stay pino's JSON lines, which carry
 * trace_id and span_id. Without the empty readers and processors the SDK would also start OTLP
 * metric and log exporters by default.
 *
 * Instrumented: undici, for the HTTP processor's call (a client span, and `traceparent` on the
 * request). The API's server spans come from @hono/otel (api/app.ts), BullMQ's from bullmq-otel
 * (shared/queue.ts, worker/worker.ts): neither needs to patch modules.
 */
export function startSdk(defaultServiceName: string): { shutdown(): Promise<void>; bullmq: Telemetry } {
  const sdk = new NodeSDK({
    // OTEL_SERVICE_NAME, when set, wins over this default (the SDK's env resource detector).
    ...(process.env.OTEL_SERVICE_NAME ? {} : { serviceName: defaultServiceName }),
    instrumentations: [new UndiciInstrumentation()],
    metricReaders: [],
    logRecordProcessors: [],
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown(), bullmq: new BullMQOtel({ tracerName: 'bullmq' }) };
}
