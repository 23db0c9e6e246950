import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { loadConfig } from '../../src/shared/config.js';
import { newBatchJobId } from '../../src/shared/queue.js';
import { operationsFor } from '../../src/shared/wiring.js';
import { processCpuMicros, processRssBytes, sleep, type Harness } from '../lib/harness.js';
import { TENANT_ID } from '../lib/load.js';
import { leastDisturbed } from '../lib/retry.js';
import { intFlag, intListFlag, parseFlags, runSession } from '../lib/session.js';
import { cleanMedian, fmt, rotate } from '../lib/stats.js';
import { SERVICE_PREFIX, serviceKeys, startSystem, type BenchContext } from '../lib/systems.js';

/**
 * An investigation tool, not a target: how WORKER_CONCURRENCY's default was chosen.
 *   npx tsx bench/tools/concurrency.ts [--list 10,25,50,100,200] [--processor-ms 20] [--ops 5000]
 *                                      [--rounds 1] [session flags, --help]
 * How many operations per second one worker process drains at each WORKER_CONCURRENCY, against
 * an HTTP processor that answers 204 after a fixed delay (a stand-in for a real backend, served
 * by the bench process itself), so that the default is the point where throughput stops growing
 * rather than a guess. For each value: a flushed Redis is filled with N operations the way the
 * API creates them (createMany + one batch job per 25, one connection), then only the worker is
 * started, and the time from its being ready until every operation is terminal is measured, with
 * the worker's CPU per operation and its RSS at the end. The knee is the smallest concurrency
 * within 90% of the best throughput. Any failed operation aborts it. The report goes to
 * bench/results/concurrency.txt and .json.
 */
interface ConcurrencyOptions {
  rounds: number;
  /** WORKER_CONCURRENCY values, ascending. */
  concurrencies: number[];
  ops: number;
  /** How long the stand-in processor takes to answer each operation. */
  processorMs: number;
}

interface ConcurrencyRun {
  concurrency: number;
  round: number;
  /** Operations the worker finished between its readiness and the last one (it starts
   *  consuming a moment before it reports ready). */
  drained: number;
  drainS: number;
  opsPerS: number;
  workerCpuMicrosPerOp: number;
  workerRssBytes: number;
  /** Requests the processor answered (more than `ops` means attempts were repeated). */
  processorRequests: number;
  otherLoadPct: number;
}

interface ConcurrencyPoint {
  concurrency: number;
  /** Medians over the undisturbed rounds (all rounds when none was). */
  opsPerS: number;
  workerCpuMicrosPerOp: number;
  workerRssBytes: number;
  clean: string;
}

interface ConcurrencyOutcome {
  ops: number;
  processorMs: number;
  rounds: number;
  runs: ConcurrencyRun[];
  points: ConcurrencyPoint[];
  /** The smallest concurrency whose ops/s is at least KNEE_SHARE of the best point's. */
  knee: number;
  text: string;
}

const BATCH_SIZE = 25;
const CONNECTION_ID = 'concconn';
const KNEE_SHARE = 0.9;
const POLL_MS = 20;

async function concurrencyScenario(ctx: BenchContext, options: ConcurrencyOptions): Promise<ConcurrencyOutcome> {
  const processor = await startProcessor(ctx.harness, options.processorMs);
  try {
    const runs: ConcurrencyRun[] = [];
    for (let round = 0; round < options.rounds; round++) {
      for (const concurrency of rotate(options.concurrencies, round)) {
        const run = await leastDisturbed(ctx, `concurrency ${concurrency}`, () => drainOnce(ctx, processor, concurrency, round + 1, options));
        runs.push(run);
        ctx.log(
          `  concurrency ${concurrency}: ${fmt(run.opsPerS)} ops/s  worker CPU ${fmt(run.workerCpuMicrosPerOp)} µs/op` +
            `  RSS ${fmt(run.workerRssBytes / 1048576)} MiB  (round ${run.round}; ${fmt(run.drained)} ops drained in ${run.drainS.toFixed(2)} s;` +
            ` ${fmt(run.processorRequests)} processor requests; other load ${run.otherLoadPct.toFixed(0)}%)`,
        );
      }
    }
    const points = options.concurrencies.map((concurrency) => pointOf(ctx, concurrency, runs));
    const knee = kneeOf(points);
    return {
      ops: options.ops,
      processorMs: options.processorMs,
      rounds: options.rounds,
      runs,
      points,
      knee,
      text: table(points, knee, options),
    };
  } finally {
    await processor.close();
  }
}

interface Processor {
  url: string;
  requests(): number;
  close(): Promise<void>;
}

/** An HTTP processor on 127.0.0.1 that answers every request 204 after `delayMs`. */
async function startProcessor(harness: Harness, delayMs: number): Promise<Processor> {
  let requests = 0;
  const server = createServer((req, res) => {
    requests++;
    req.resume();
    req.on('end', () => setTimeout(() => res.writeHead(204).end(), delayMs));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const stop = () => {
    server.closeAllConnections();
    server.close();
  };
  const forget = harness.onCleanup(stop);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/process`,
    requests: () => requests,
    async close() {
      forget();
      const closed = new Promise((resolve) => server.once('close', resolve));
      stop();
      await closed;
    },
  };
}

/** Creates `ops` inprogress operations in one connection and their batch jobs, as the API does. */
async function preload(ctx: BenchContext, ops: number): Promise<void> {
  const client = new Redis(ctx.redisUrl, { maxRetriesPerRequest: null });
  const { store, queue } = operationsFor(loadConfig({ REDIS_PREFIX: SERVICE_PREFIX }), client, pino({ level: 'silent' }));
  const connection = { tenantId: TENANT_ID, connectionId: CONNECTION_ID };
  try {
    for (let created = 0; created < ops; created += BATCH_SIZE) {
      const ids = Array.from({ length: Math.min(BATCH_SIZE, ops - created) }, () => randomUUID());
      const jobId = newBatchJobId();
      await store.createMany(connection, ids, jobId);
      await queue.enqueueBatch(jobId, ids.map((operationId) => ({ ...connection, operationId })));
    }
  } finally {
    await queue.close();
    client.disconnect();
  }
}

/** One point: a flushed, preloaded Redis, a fresh worker at `concurrency`, timed until drained. */
async function drainOnce(ctx: BenchContext, processor: Processor, concurrency: number, round: number, options: ConcurrencyOptions): Promise<ConcurrencyRun> {
  const { ops } = options;
  await ctx.redis.flushall();
  await preload(ctx, ops);
  const requestsBefore = processor.requests();
  const system = await startSystem(ctx, 'service', {
    api: false,
    env: { WORKER_CONCURRENCY: String(concurrency), PROCESSOR_URL: processor.url },
  });
  try {
    const worker = system.worker!;
    const otherLoad = ctx.harness.foreignCpu();
    const cpuBefore = processCpuMicros(worker.pid);
    const started = performance.now();
    const doneAtStart = await system.terminal(CONNECTION_ID);
    // At least three times what the processor delay alone allows, plus start-up slack.
    const deadline = started + 60_000 + 3 * Math.ceil(ops / concurrency) * options.processorMs;
    for (;;) {
      worker.assertRunning();
      const done = await system.terminal(CONNECTION_ID);
      if (done >= ops) break;
      if (performance.now() > deadline) throw new Error(`concurrency ${concurrency}: only ${done} of ${ops} operations terminal by the deadline`);
      await sleep(POLL_MS);
    }
    const drainS = (performance.now() - started) / 1000;
    const drained = ops - doneAtStart;
    const run: ConcurrencyRun = {
      concurrency,
      round,
      drained,
      drainS,
      opsPerS: drained / drainS,
      workerCpuMicrosPerOp: (processCpuMicros(worker.pid) - cpuBefore) / Math.max(drained, 1),
      workerRssBytes: processRssBytes(worker.pid),
      processorRequests: processor.requests() - requestsBefore,
      otherLoadPct: otherLoad(),
    };
    await assertAllCompleted(ctx, run, ops);
    return run;
  } finally {
    await system.stop();
  }
}

/** Every operation must have completed through the stand-in processor, or the numbers mean nothing. */
async function assertAllCompleted(ctx: BenchContext, run: ConcurrencyRun, ops: number): Promise<void> {
  const connection = { tenantId: TENANT_ID, connectionId: CONNECTION_ID };
  const failedIndex = serviceKeys.statusIndex(connection, 'failed');
  const failed = await ctx.redis.zcard(failedIndex);
  if (failed > 0) {
    const [operationId] = await ctx.redis.zrange(failedIndex, 0, 0);
    const error = operationId ? await ctx.redis.hget(serviceKeys.operation({ ...connection, operationId }), 'e') : null;
    throw new Error(`concurrency ${run.concurrency}: ${failed} of ${ops} operations failed (one error: ${error ?? 'unknown'})`);
  }
  if (run.processorRequests < ops) {
    throw new Error(
      `concurrency ${run.concurrency}: the processor saw ${run.processorRequests} requests for ${ops} operations; did the worker use PROCESSOR_URL?`,
    );
  }
}

function pointOf(ctx: BenchContext, concurrency: number, runs: readonly ConcurrencyRun[]): ConcurrencyPoint {
  const mine = runs.filter((run) => run.concurrency === concurrency);
  const median = (value: (run: ConcurrencyRun) => number) => cleanMedian(mine, value, ctx.maxOtherLoadPct);
  const opsPerS = median((run) => run.opsPerS);
  return {
    concurrency,
    opsPerS: opsPerS.value,
    workerCpuMicrosPerOp: median((run) => run.workerCpuMicrosPerOp).value,
    workerRssBytes: median((run) => run.workerRssBytes).value,
    clean: `${opsPerS.clean}/${opsPerS.total}`,
  };
}

function kneeOf(points: readonly ConcurrencyPoint[]): number {
  const best = Math.max(...points.map((point) => point.opsPerS));
  return points.find((point) => point.opsPerS >= KNEE_SHARE * best)!.concurrency;
}

function table(points: readonly ConcurrencyPoint[], knee: number, options: ConcurrencyOptions): string {
  const best = Math.max(...points.map((point) => point.opsPerS));
  const headers = ['WORKER_CONCURRENCY', 'ops/s', 'of best', 'worker CPU µs/op', 'worker RSS MiB', 'undisturbed'];
  const rows = points.map((point) => [
    `${point.concurrency}${point.concurrency === knee ? ' (knee)' : ''}`,
    fmt(point.opsPerS),
    `${fmt((point.opsPerS / best) * 100)}%`,
    fmt(point.workerCpuMicrosPerOp),
    fmt(point.workerRssBytes / 1048576),
    point.clean,
  ]);
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => `  ${cells.map((cell, i) => cell.padStart(widths[i]!)).join('  ')}`;
  return [
    `  ${fmt(options.ops)} ops per point, processor ${options.processorMs} ms, ${options.rounds} round(s)` +
      `${options.rounds === 1 ? ' (one sweep: --rounds N repeats it and takes medians)' : ''}`,
    line(headers),
    ...rows.map(line),
    `  knee (≥ ${KNEE_SHARE * 100}% of the best ops/s): WORKER_CONCURRENCY=${knee}`,
  ].join('\n');
}

const USAGE = `npx tsx bench/tools/concurrency.ts [flags]
  --list L             WORKER_CONCURRENCY values to sweep (default 10,25,50,100,200)
  --processor-ms N     delay of the stand-in HTTP processor, ms (default 20)
  --ops N              operations per point (default 5000)
  --rounds N           sweeps; with more than one, medians per point (default 1)`;
const values = parseFlags(
  { list: { type: 'string', default: '10,25,50,100,200' }, 'processor-ms': { type: 'string' }, ops: { type: 'string' }, rounds: { type: 'string' } },
  USAGE,
);
const options: ConcurrencyOptions = {
  rounds: intFlag('rounds', values.rounds, 1),
  concurrencies: intListFlag('list', values.list),
  ops: intFlag('ops', values.ops, 5_000),
  processorMs: intFlag('processor-ms', values['processor-ms'], 20),
};
runSession(values, { results: 'concurrency', defaultRetries: 2 }, async (ctx) => {
  ctx.log(
    `\n== worker concurrency: WORKER_CONCURRENCY ${options.concurrencies.join(',')}, ${fmt(options.ops)} preloaded ops each,` +
      ` ${options.processorMs} ms HTTP processor ==`,
  );
  const { text, ...concurrency } = await concurrencyScenario(ctx, options);
  ctx.log(text);
  return { options, concurrency };
});
