import { timingSafeEqual } from 'node:crypto';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { OperationQueue } from './queue.js';

/** The API's series. */
export class ApiSeries {
  readonly httpDuration: Histogram<'method' | 'route' | 'status'>;
  readonly operationsCreated: Counter;
  readonly operationsCanceled: Counter;
  /** Requests held by `Prefer: wait` now, and event streams open now. */
  readonly requestsHeld: Gauge;
  readonly streamsOpen: Gauge;

  constructor(registry: Registry) {
    this.httpDuration = new Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by method, route template and status',
      labelNames: ['method', 'route', 'status'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30, 60], // up to 60 s: Prefer: wait holds requests that long
      registers: [registry],
    });
    this.operationsCreated = new Counter({
      name: 'operations_created_total',
      help: 'Operations accepted with 201',
      registers: [registry],
    });
    this.operationsCanceled = new Counter({
      name: 'operations_canceled_total',
      help: 'Inprogress operations a client canceled',
      registers: [registry],
    });
    this.requestsHeld = new Gauge({
      name: 'operation_requests_held',
      help: 'Requests held by Prefer: wait until their operation ends, now',
      registers: [registry],
    });
    this.streamsOpen = new Gauge({
      name: 'operation_streams_open',
      help: 'Server-sent event streams of operations open now',
      registers: [registry],
    });
  }
}

/** A worker's series. */
export class WorkerSeries {
  readonly operationsFinished: Counter<'status' | 'error_code'>;
  readonly processingDuration: Histogram<'outcome'>;
  readonly queueWait: Histogram;
  /** Processor error codes are free text: a bounded set keeps the label's cardinality bounded. */
  private readonly errorCodes = new Set<string>();

  constructor(registry: Registry) {
    this.operationsFinished = new Counter({
      name: 'operations_finished_total',
      help: 'Operations that reached a terminal status, by status and errorCode',
      labelNames: ['status', 'error_code'] as const,
      registers: [registry],
    });
    this.processingDuration = new Histogram({
      name: 'operation_processing_duration_seconds',
      help: 'Time one attempt spent in the processor and recording its outcome',
      labelNames: ['outcome'] as const,
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30],
      registers: [registry],
    });
    this.queueWait = new Histogram({
      name: 'operation_queue_wait_seconds',
      help: 'Time from enqueue (or retry) to a worker taking the job',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120],
      registers: [registry],
    });
  }

  finished(status: string, errorCode: string | undefined): void {
    let code = errorCode ?? '';
    if (code && !this.errorCodes.has(code)) {
      if (this.errorCodes.size >= 50) code = 'other';
      else this.errorCodes.add(code);
    }
    this.operationsFinished.inc({ status, error_code: code });
  }
}

/**
 * The service's Prometheus metrics. One Metrics per process, made by the composition root and
 * passed to the API and the worker (no global registry). Each side's series join the registry
 * when that side first asks for them (the API when it starts watching the queues, a worker when
 * it is created), so a process serves only the series of what it runs: both when it runs both.
 * Labels never carry tenant ids, operation ids or tokens: only route templates, statuses and
 * error codes.
 */
export class Metrics {
  readonly registry = new Registry();
  private api: ApiSeries | undefined;
  private worker: WorkerSeries | undefined;

  constructor({ processMetrics = true }: { processMetrics?: boolean } = {}) {
    if (processMetrics) collectDefaultMetrics({ register: this.registry });
  }

  apiSeries(): ApiSeries {
    return (this.api ??= new ApiSeries(this.registry));
  }

  workerSeries(): WorkerSeries {
    return (this.worker ??= new WorkerSeries(this.registry));
  }

  /** The API's (src/api observes it). */
  get httpDuration(): ApiSeries['httpDuration'] {
    return this.apiSeries().httpDuration;
  }

  /** The API's (src/api counts it). */
  get operationsCreated(): ApiSeries['operationsCreated'] {
    return this.apiSeries().operationsCreated;
  }

  /** The API's queue depth gauges, read from Redis at scrape time (a failed read leaves them
   *  unset); registers the rest of the API's series too, so they show from the first scrape. */
  watchQueues(queue: Pick<OperationQueue, 'counts'>): void {
    this.apiSeries();
    const gauge = new Gauge({
      name: 'operation_queue_jobs',
      help: 'Jobs in the operation queue by state, read at scrape time',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        try {
          const counts = await queue.counts('waiting', 'active', 'delayed', 'failed');
          for (const [state, count] of Object.entries(counts)) gauge.set({ state }, count);
        } catch {
          gauge.reset();
        }
      },
    });
  }
}

/** Whether a scrape may read the metrics: always when METRICS_TOKEN is unset, else only with
 *  `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time). */
export function scrapeAllowed(authorization: string | undefined, token: string | undefined): boolean {
  if (!token) return true;
  const expected = Buffer.from(`Bearer ${token}`);
  const given = Buffer.from(authorization ?? '');
  return given.length === expected.length && timingSafeEqual(given, expected);
}
