import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import type { Worker } from 'bullmq';
import { Hono } from 'hono';
import type { Service } from '../shared/lifecycle.js';
import { scrapeAllowed, type Metrics } from '../shared/metrics.js';

/**
 * Liveness that looks at consumption, not only at a PING: a worker can stay connected and
 * "running" while it has stopped taking jobs (bullmq issue #4585, after a Redis outage). The
 * worker is stuck when jobs are waiting, it has free slots, and it has neither started nor
 * finished a job for `stuckAfterMs`.
 */
export class ConsumptionMonitor {
  private lastProgressAt: number;

  constructor(
    workers: Worker[],
    /** True while the worker holds as many jobs as it takes: busy, not stuck. Asked of the
     *  worker, not counted from events: a job that moves itself to delayed or back to wait
     *  (DelayedError, WaitingError) ends with no 'completed' or 'failed' event. */
    private readonly full: () => boolean,
    private readonly stuckAfterMs: number,
    private readonly waitingJobs: () => Promise<number>,
    private readonly now: () => number = Date.now,
  ) {
    this.lastProgressAt = now();
    const progress = () => (this.lastProgressAt = this.now());
    for (const worker of workers) {
      worker.on('active', progress);
      worker.on('completed', progress);
      worker.on('failed', progress);
      // An empty queue is progress too: there was nothing to consume.
      worker.on('drained', progress);
    }
  }

  /** False only when the worker demonstrably stopped consuming a non-empty queue. A Redis that
   *  cannot be asked is a readiness problem, not a reason to restart the worker. */
  async isConsuming(): Promise<boolean> {
    if (this.now() - this.lastProgressAt < this.stuckAfterMs) return true;
    if (this.full()) return true;
    try {
      // Bounded: the worker's connection waits through outages, and an unbounded count would
      // hold /healthz for the whole outage (a probe timeout counts as a failure: the worker
      // would be restarted for Redis's fault).
      return (await answerWithin(this.waitingJobs(), REDIS_ANSWER_TIMEOUT_MS)) === 0;
    } catch {
      // Redis is away, so the worker cannot consume: that time is not evidence against it. The
      // clock restarts, so once Redis is back the worker gets a full stuckAfterMs to take the
      // jobs that waited meanwhile before a probe may call it stuck.
      this.lastProgressAt = this.now();
      return true;
    }
  }
}

/** How long a health endpoint waits for Redis before it answers without it. */
const REDIS_ANSWER_TIMEOUT_MS = 500;

/** The promise's value, or a rejection once `ms` passed. */
async function answerWithin<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Redis did not answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export interface HealthServerOptions {
  port: number;
  monitor: ConsumptionMonitor;
  ready: () => Promise<boolean>;
  metrics: Metrics;
  /** METRICS_TOKEN: protects /metrics as on the API. */
  metricsToken?: string | undefined;
}

/** A worker process's /healthz (consuming?), /readyz (Redis answers) and /metrics. */
export async function startHealthServer({ port, monitor, ready, metrics, metricsToken }: HealthServerOptions): Promise<Service & { port: number }> {
  metrics.workerSeries(); // shown from the first scrape, before the first operation ends
  const app = new Hono();
  app.get('/healthz', async (c) =>
    (await monitor.isConsuming()) ? c.json({ status: 'ok' }) : c.json({ status: 'stuck: jobs are waiting and none was taken' }, 503),
  );
  // Bounded for the same reason: a PING on the worker's connection waits through an outage, and
  // /readyz must answer 503 then, not hang.
  const isReady = () => answerWithin(ready(), REDIS_ANSWER_TIMEOUT_MS).catch(() => false);
  app.get('/readyz', async (c) => ((await isReady()) ? c.json({ status: 'ready' }) : c.json({ status: 'Redis is not answering' }, 503)));
  app.get('/metrics', async (c) =>
    scrapeAllowed(c.req.header('authorization'), metricsToken)
      ? c.body(await metrics.registry.metrics(), 200, { 'content-type': metrics.registry.contentType })
      : c.json({ status: 'GET /metrics needs Authorization: Bearer <METRICS_TOKEN>' }, 401),
  );

  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const listening = serve({ fetch: app.fetch, port }, () => resolve(listening));
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
