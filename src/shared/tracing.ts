import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  context,
  propagation,
  trace,
  type Attributes,
  type Link,
  type Span,
} from '@opentelemetry/api';
import type { Telemetry } from 'bullmq';
import type { OperationRef } from './operation.js';

/**
 * Tracing: the one owner of OpenTelemetry in this service.
 *
 * The SDK is started by src/start-tracing.ts, imported by every entry point before anything
 * else loads, only when an OTLP endpoint is configured (`tracingRequested`). Every helper here
 * returns at once while it is not started, and the callers that would do work for a trace ask
 * `tracingOn()` first: a service without OTEL_* pays nothing per request or operation.
 *
 * One trace per operation, whatever batch job carries it: the create's trace context is kept
 * on the operation record (a W3C `traceparent`, field `tp`), and each attempt's span continues
 * it. The batch job's own trace links to the traces of the operations it carries, and each
 * attempt's span links back to the job that ran it.
 */

let started: { shutdown(): Promise<void>; bullmq: Telemetry } | undefined;

const tracer = () => trace.getTracer('connection-operations');

/** Whether the environment asks for traces: an OTLP endpoint is set, and the SDK is not
 *  disabled. The rest of the configuration is the SDK's own (the standard OTEL_* variables). */
export function tracingRequested(env: NodeJS.ProcessEnv = process.env): boolean {
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  return Boolean(endpoint) && env.OTEL_SDK_DISABLED?.trim().toLowerCase() !== 'true' && env.OTEL_TRACES_EXPORTER?.trim() !== 'none';
}

/** Starts the SDK when the environment asks for it. The SDK's modules are loaded only then. */
export async function startTracing(defaultServiceName: string): Promise<void> {
  if (started || !tracingRequested()) return;
  const { startSdk } = await import('./tracing-sdk.js');
  started = startSdk(defaultServiceName);
}

/** Exports the spans still buffered and stops: call it after the services closed. */
export async function stopTracing(): Promise<void> {
  const sdk = started;
  started = undefined;
  await sdk?.shutdown();
}

export function tracingOn(): boolean {
  return started !== undefined;
}

/** BullMQ's `telemetry` option for queues and workers (bullmq-otel): a job's add and processing
 *  are spans, and the job carries the adder's trace context. Nothing when tracing is off. */
export function bullmqTelemetry(): { telemetry?: Telemetry } {
  return started ? { telemetry: started.bullmq } : {};
}

/** The W3C traceparent of the active span, to keep with an operation; undefined when there is
 *  none (or tracing is off). */
export function activeTraceparent(): string | undefined {
  if (!started) return undefined;
  const carrier: { traceparent?: string } = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** Names the operation on the active span (the request's server span, say); with tracing off
 *  it costs nothing, not even the attributes' object. */
export function annotateActiveOperation(ref: OperationRef): void {
  if (started) trace.getActiveSpan()?.setAttributes(operationAttributes(ref));
}

/** The ids of an operation as span attributes (no secrets: ids only). */
export function operationAttributes({ tenantId, connectionId, operationId }: OperationRef): Attributes {
  return { 'graph.tenant.id': tenantId, 'graph.connection.id': connectionId, 'graph.operation.id': operationId };
}

/** For pino's `mixin`: the active span's ids on every log line written inside it. */
export function traceLogFields(): { trace_id?: string; span_id?: string } {
  const span = trace.getActiveSpan();
  if (!span) return {};
  const { traceId, spanId } = span.spanContext();
  return { trace_id: traceId, span_id: spanId };
}

/**
 * Runs `fn` in a new root span (a trace of its own, not the trace of whichever request happened
 * to start the batch) that links to the traces of the operations it carries. Plain `fn()` when
 * tracing is off.
 */
export function inBatchSpan<T>(name: string, traceparents: (string | undefined)[], attributes: Attributes, fn: () => Promise<T>): Promise<T> {
  if (!started) return fn();
  const links: Link[] = [];
  for (const traceparent of traceparents) {
    const linked = traceparent && trace.getSpanContext(contextOf(traceparent));
    if (linked) links.push({ context: linked });
  }
  return tracer().startActiveSpan(name, { kind: SpanKind.PRODUCER, links, attributes }, ROOT_CONTEXT, (span) => endAfter(span, fn));
}

/** An attempt's span: what runs `within` it is in the operation's trace (the processor call,
 *  the outcome's write and its log line); `end` records the outcome. */
export interface AttemptSpan {
  within<T>(fn: () => Promise<T>): Promise<T>;
  end(attributes: Attributes, failed: boolean): void;
}

/**
 * Starts a span in the operation's own trace (`traceparent`, kept with the operation since its
 * create), linked to the span active now: the job that carries the operation, one of many in a
 * batch. Undefined when tracing is off.
 */
export function startAttemptSpan(name: string, traceparent: string | undefined, attributes: Attributes): AttemptSpan | undefined {
  if (!started) return undefined;
  const carrier = trace.getActiveSpan()?.spanContext();
  const parent = traceparent ? contextOf(traceparent) : ROOT_CONTEXT;
  const span = tracer().startSpan(name, { kind: SpanKind.CONSUMER, attributes, links: carrier ? [{ context: carrier }] : [] }, parent);
  const active = trace.setSpan(parent, span);
  return {
    within: (fn) => context.with(active, fn),
    end(outcome, failed) {
      span.setAttributes(outcome);
      if (failed) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    },
  };
}

function contextOf(traceparent: string) {
  return propagation.extract(ROOT_CONTEXT, { traceparent });
}

async function endAfter<T>(span: Span, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    span.recordException(error instanceof Error ? error : String(error));
    span.setStatus({ code: SpanStatusCode.ERROR });
    throw error;
  } finally {
    span.end();
  }
}
