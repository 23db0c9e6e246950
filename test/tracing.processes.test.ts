import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../scripts/lib/free-port.js';
import { signToken, uniquePrefix } from './support/context.js';
import { startOtlpReceiver, SPAN_KIND, type OtlpReceiver, type ReceivedSpan } from './support/otlp-receiver.js';
import { ProcessGroup, testServiceEnv, type RunningProcess } from './support/processes.js';
import { startProcessorServer, type ProcessorServer } from './support/processor-server.js';
import { pollUntil } from './support/wait.js';

/**
 * Tracing across real processes: an API and a worker exporting to a local OTLP/HTTP receiver
 * (JSON protocol), the worker calling a real HTTP processor. One trace per create, from the
 * client's traceparent through the API's server span, the worker's attempt span and the
 * processor call's client span, to the processor itself, whatever batch job carried it.
 */

const CONNECTION_ID = 'tracing';
const SPANS_DEADLINE_MS = 20_000;

let receiver: OtlpReceiver;
let processor: ProcessorServer;
let group: ProcessGroup;
let api: RunningProcess;
let worker: RunningProcess;
let baseUrl: string;
let token: string;

beforeAll(async () => {
  [receiver, processor, token] = await Promise.all([startOtlpReceiver(), startProcessorServer(), signToken()]);
  group = new ProcessGroup(
    testServiceEnv(uniquePrefix(), {
      REDIS_URL: inject('redisUrl'),
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      // Spans leave the processes within 100 ms instead of the default 5 s.
      OTEL_BSP_SCHEDULE_DELAY: '100',
    }),
  );
  const port = await freePort();
  baseUrl = `http://127.0.0.1:${port}`;
  [api, worker] = await Promise.all([group.startApi('api', port), group.startWorker('worker', { PROCESSOR_URL: processor.urlFor('worker', 0) })]);
}, 60_000);

afterAll(async () => {
  await group?.killAll();
  await processor?.close();
  await receiver?.close();
});

/** A W3C traceparent of a caller's trace, sampled. */
function callerTraceparent(): { traceparent: string; traceId: string; spanId: string } {
  const traceId = randomBytes(16).toString('hex');
  const spanId = randomBytes(8).toString('hex');
  return { traceparent: `00-${traceId}-${spanId}-01`, traceId, spanId };
}

async function create(operationId: string, traceparent: string): Promise<void> {
  const response = await fetch(`${baseUrl}/external/connections/${CONNECTION_ID}/operations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', traceparent },
    body: JSON.stringify({ id: operationId }),
  });
  expect(response.status, await response.text()).toBe(201);
}

/** The worker's attempt span of an operation, once it has been exported. */
function attemptSpanOf(operationId: string): ReceivedSpan | undefined {
  return receiver.spans.find((span) => span.name === 'process operation' && span.attributes['graph.operation.id'] === operationId);
}

function describeSpans(spans: ReceivedSpan[]): string {
  return spans.map((span) => `${span.service} ${span.name} kind=${span.kind} ${span.traceId}/${span.spanId} parent=${span.parentSpanId}`).join('\n');
}

describe('with OTEL_EXPORTER_OTLP_ENDPOINT set', () => {
  it("continues a create's traceparent through the API, the worker's attempt and the processor call, to the processor", async () => {
    const caller = callerTraceparent();
    const operationId = randomUUID();
    await create(operationId, caller.traceparent);

    const spans = await pollUntil(
      () => {
        const inTrace = receiver.inTrace(caller.traceId);
        const client = inTrace.find((span) => span.kind === SPAN_KIND.client && span.service === 'connection-operations-worker');
        const server = inTrace.find((span) => span.kind === SPAN_KIND.server);
        return server && client && attemptSpanOf(operationId) ? inTrace : undefined;
      },
      { timeoutMs: SPANS_DEADLINE_MS, what: 'the API, attempt and processor-call spans of the trace', context: () => describeSpans(receiver.spans) },
    );

    const server = spans.find((span) => span.kind === SPAN_KIND.server);
    expect(server, describeSpans(spans)).toMatchObject({
      service: 'connection-operations-api',
      parentSpanId: caller.spanId,
      attributes: expect.objectContaining({ 'graph.operation.id': operationId, 'graph.connection.id': CONNECTION_ID, 'http.response.status_code': 201 }) as unknown,
    });
    expect(Object.keys(server!.attributes).filter((key) => /authorization/i.test(key))).toEqual([]);

    const attempt = attemptSpanOf(operationId)!;
    expect(attempt).toMatchObject({
      service: 'connection-operations-worker',
      traceId: caller.traceId,
      parentSpanId: server!.spanId,
      attributes: expect.objectContaining({
        'graph.operation.attempt': 1,
        'graph.operation.kind': 'operation',
        'graph.operation.outcome': 'completed',
      }) as unknown,
    });

    const client = spans.find((span) => span.kind === SPAN_KIND.client && span.service === 'connection-operations-worker')!;
    expect(client.parentSpanId).toBe(attempt.spanId);
    const call = processor.calls.find((received) => received.operationId === operationId);
    expect(call?.traceparent).toBe(`00-${caller.traceId}-${client.spanId}-01`);

    // The log lines written inside the spans name them.
    const finished = await worker.waitForLog((line) => line.operationId === operationId && line.msg === 'operation finished', 5000, 'operation finished');
    expect(finished).toMatchObject({ trace_id: caller.traceId, span_id: attempt.spanId });
    const requestLine = await api.waitForLog((line) => line.msg === 'request' && line.trace_id === caller.traceId, 5000, 'the request line');
    expect(requestLine).toMatchObject({ span_id: server!.spanId, status: 201 });
  });

  it('keeps every create of a batch job in its own trace, and the batch job links to each of them', async () => {
    // A batch job's span ends (and is exported) after the last of its operations: wait for the
    // attempt spans, the jobs they link to, and the commits that started those jobs' traces.
    const commitOf = (jobSpanId: string) => {
      const job = receiver.spans.find((span) => span.spanId === jobSpanId);
      return job && receiver.spans.find((span) => span.traceId === job.traceId && span.name === 'commit batch');
    };
    /** 20 creates sent at once; which traces each batch job that carried them carried. */
    const burst = async () => {
      const creates = Array.from({ length: 20 }, () => ({ operationId: randomUUID(), caller: callerTraceparent() }));
      await Promise.all(creates.map(({ operationId, caller }) => create(operationId, caller.traceparent)));
      const attempts = await pollUntil(
        () => {
          const found = creates.map(({ operationId }) => attemptSpanOf(operationId));
          const complete = found.every((attempt) => attempt && attempt.links.every((link) => commitOf(link.spanId)));
          return complete ? (found as ReceivedSpan[]) : undefined;
        },
        { timeoutMs: SPANS_DEADLINE_MS, what: 'the attempt span of every create, its job and its commit', context: () => describeSpans(receiver.spans) },
      );
      const carriedBy = new Map<string, string[]>();
      creates.forEach(({ caller }, i) => {
        const attempt = attempts[i]!;
        // Its own create's trace, not a sibling's, nor the batch job's.
        expect(attempt.traceId).toBe(caller.traceId);
        expect(attempt.links, 'the attempt links to the job that carried it').toHaveLength(1);
        const job = attempt.links[0]!;
        expect(job.traceId).not.toBe(caller.traceId);
        carriedBy.set(job.spanId, [...(carriedBy.get(job.spanId) ?? []), caller.traceId]);
      });
      return carriedBy;
    };

    // Creates sent together are committed in batches (one job carrying many), but how many share
    // a tick depends on when they arrive: on a busy machine a burst may land one per tick, so
    // bursts go until a batch job carried several (the case this test is about).
    for (let bursts = 1; ; bursts++) {
      const carriedBy = await burst();
      // Each batch job's trace starts at the API's commit of the batch, which links to the traces
      // of exactly the creates the job carried.
      for (const [jobSpanId, traces] of carriedBy) {
        expect(commitOf(jobSpanId)!.links.map((link) => link.traceId).sort()).toEqual([...traces].sort());
      }
      if (Math.max(...[...carriedBy.values()].map((traces) => traces.length)) > 1) break;
      expect(bursts, 'some batch job carried several creates, within 5 bursts of 20').toBeLessThan(5);
    }
  });
});
