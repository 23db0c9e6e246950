import { processCpuMicros } from '../lib/harness.js';
import { postLoad } from '../lib/load.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, percentile, rotate, roundRatio } from '../lib/stats.js';
import { startSystem, type BenchContext, type System } from '../lib/systems.js';

/**
 * Scenario batch-accept: creates accepted per second through Graph JSON batching. The service
 * (API and worker as separate processes, LOG_LEVEL=info, as in accept) is driven at the same
 * concurrency in HTTP requests (64 connections, closed loop) with either single POSTs of
 * `{"id":"<unique>"}` or `POST /v1.0/$batch` of 20 such creates each, in alternation over several
 * rounds, each on fresh processes and a flushed Redis, measured over a window of one load after
 * its warm-up (batchAcceptOnce). An operation counts as accepted when its answer (the POST's, or
 * its sub-response in the batch's) is a 201; every other answer is counted by status.
 */
export interface BatchAcceptOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
  concurrency: number;
}

export type BatchMode = 'single' | 'batch';

export interface BatchAcceptRun {
  /** Operations answered 201 per second over the measured window. */
  opsPerS: number;
  /** HTTP requests answered per second (a batch is one). */
  requestsPerS: number;
  created: number;
  /** Answers about one operation that were not 201, by status (`batch 4xx` when the whole batch
   *  failed, `missing` for a request of a batch without a sub-response); warm-up included. */
  notCreated: Record<string, number>;
  /** Operations answered in all, warm-up included (created + not created). */
  answered: number;
  /** Connection errors and timeouts, warm-up included. */
  errors: number;
  /** Per HTTP request (a whole batch), over the measured window, ms. */
  p50: number;
  p99: number;
  /** CPU microseconds per operation answered 201 during the measured window. */
  cpuPerOp: { api: number; worker: number; redis: number };
  /** CPU used meanwhile by processes the bench did not start, in percent of one core. */
  otherLoadPct: number;
}

export interface BatchAcceptOutcome {
  batchSize: number;
  runs: Record<BatchMode, BatchAcceptRun[]>;
  /** Medians over the undisturbed runs (all runs when none was). */
  medianOpsPerS: Record<BatchMode, number>;
  medianCpuPerOp: Record<BatchMode, { api: number; worker: number; redis: number }>;
  /** batch/single ops per second per round, and their median over undisturbed rounds. */
  ratio: { value: number; rounds: number[]; clean: number };
  /** Summed over every run, those measured again and dropped included. */
  notCreated: Record<BatchMode, { count: number; of: number; byStatus: Record<string, number> }>;
  clean: Record<BatchMode, string>;
}

/** Graph's limit of requests per batch. */
export const BATCH_SIZE = 20;
const CONNECTION_ID = 'benchconn';
const MODES = ['single', 'batch'] as const satisfies readonly BatchMode[];

export async function batchAcceptScenario(ctx: BenchContext, options: BatchAcceptOptions): Promise<BatchAcceptOutcome> {
  const runs: BatchAcceptOutcome['runs'] = { single: [], batch: [] };
  // Every run's answers count, also those of runs measured again for foreign load and dropped:
  // what the service answered in them is still what it answered.
  const answers: BatchAcceptOutcome['notCreated'] = { single: { count: 0, of: 0, byStatus: {} }, batch: { count: 0, of: 0, byStatus: {} } };
  const measure = async (mode: BatchMode) => {
    const run = await batchAcceptOnce(ctx, mode, options);
    const tally = answers[mode];
    tally.of += run.answered;
    for (const [status, count] of Object.entries(run.notCreated)) {
      tally.byStatus[status] = (tally.byStatus[status] ?? 0) + count;
      tally.count += count;
    }
    const notCreated = Object.entries(run.notCreated).map(([status, count]) => `${count}× ${status}`);
    if (notCreated.length) ctx.log(`    batch-accept ${mode}: creates not answered 201: ${notCreated.join(', ')} of ${run.answered} (other load ${run.otherLoadPct.toFixed(0)}%)`);
    return run;
  };
  for (let round = 0; round < options.rounds; round++) {
    for (const mode of rotate(MODES, round)) {
      const run = await leastDisturbed(ctx, `batch-accept ${mode}`, () => measure(mode));
      runs[mode].push(run);
      const notCreated = Object.entries(run.notCreated).map(([status, count]) => `${count}× ${status}`);
      ctx.log(
        `  batch-accept round ${round + 1} ${mode.padEnd(6)} ${run.opsPerS.toFixed(0)} ops/s (${run.requestsPerS.toFixed(0)} req/s)` +
          `  not 201: ${notCreated.length ? notCreated.join(', ') : 'none'} of ${run.answered}  errors ${run.errors}` +
          `  p50 ${run.p50.toFixed(0)} ms  p99 ${run.p99.toFixed(0)} ms per request` +
          `  CPU µs/op api ${run.cpuPerOp.api.toFixed(0)} worker ${run.cpuPerOp.worker.toFixed(0)} redis ${run.cpuPerOp.redis.toFixed(0)}` +
          `  other load ${run.otherLoadPct.toFixed(0)}%`,
      );
    }
  }
  const pick = (mode: BatchMode, value: (run: BatchAcceptRun) => number) => cleanMedian(runs[mode], value, ctx.maxOtherLoadPct);
  const cpu = (mode: BatchMode) => ({
    api: pick(mode, (run) => run.cpuPerOp.api).value,
    worker: pick(mode, (run) => run.cpuPerOp.worker).value,
    redis: pick(mode, (run) => run.cpuPerOp.redis).value,
  });
  const [single, batch] = [pick('single', (run) => run.opsPerS), pick('batch', (run) => run.opsPerS)];
  return {
    batchSize: BATCH_SIZE,
    runs,
    medianOpsPerS: { single: single.value, batch: batch.value },
    medianCpuPerOp: { single: cpu('single'), batch: cpu('batch') },
    ratio: roundRatio(runs.batch, runs.single, (run) => run.opsPerS, ctx.maxOtherLoadPct),
    notCreated: answers,
    clean: { single: `${single.clean}/${single.total}`, batch: `${batch.clean}/${batch.total}` },
  };
}

/** What a load of one mode sends, and the answers it has counted so far. */
interface Creates {
  url: string;
  body: () => string;
  /** Counts an answer's operations by status. */
  count: (status: number, body: string) => void;
  created: number;
  notCreated: Record<string, number>;
}

/** Single POSTs of `{"id":"<unique>"}`, or batches of BATCH_SIZE of them; ids unique in the run. */
function creates(system: System, mode: BatchMode): Creates {
  const prefix = `${mode === 'single' ? 's' : 'b'}${Date.now().toString(36)}-`;
  let next = 0;
  const tally = (status: number | string, times = 1) => {
    if (status === 201) load.created += times;
    else load.notCreated[String(status)] = (load.notCreated[String(status)] ?? 0) + times;
  };
  const load: Creates = {
    url: mode === 'single' ? system.postUrl(CONNECTION_ID) : `${system.baseUrl}/v1.0/$batch`,
    body: () => `{"id":"${prefix}${next++}"}`,
    count: (status) => tally(status),
    created: 0,
    notCreated: {},
  };
  if (mode === 'single') return load;

  const subUrl = JSON.stringify(`/external/connections/${CONNECTION_ID}/operations`);
  load.body = () => {
    const requests: string[] = [];
    for (let i = 1; i <= BATCH_SIZE; i++) {
      requests.push(`{"id":"${i}","method":"POST","url":${subUrl},"headers":{"Content-Type":"application/json"},"body":{"id":"${prefix}${next++}"}}`);
    }
    return `{"requests":[${requests.join(',')}]}`;
  };
  load.count = (status, body) => {
    if (status !== 200) return tally(`batch ${status}`, BATCH_SIZE);
    let responses: { status?: unknown }[] = [];
    try {
      const parsed = JSON.parse(body) as { responses?: unknown };
      if (Array.isArray(parsed.responses)) responses = parsed.responses as { status?: unknown }[];
    } catch {
      return tally('batch 200 not JSON', BATCH_SIZE);
    }
    for (const response of responses) tally(typeof response.status === 'number' ? response.status : 'no status');
    if (responses.length < BATCH_SIZE) tally('missing', BATCH_SIZE - responses.length);
  };
  return load;
}

/**
 * Fresh processes on a flushed Redis, then one closed-loop load whose measured window starts
 * once the warm-up time has passed and every connection has had an answer, and lasts
 * `durationS`. One load rather than a warm-up run and a measured one: a new run opens new
 * connections, and an API busy with batches takes them in slowly (libuv accepts one connection
 * per event-loop iteration, and each iteration then lasts tens of ms), so a fresh run of 64
 * batch connections took 2-4 s to have all of them answered.
 */
async function batchAcceptOnce(ctx: BenchContext, mode: BatchMode, options: BatchAcceptOptions): Promise<BatchAcceptRun> {
  await ctx.redis.flushall();
  const system = await startSystem(ctx, 'service');
  try {
    const load = creates(system, mode);
    const cpu = (pid: number | undefined) => (pid === undefined ? 0 : processCpuMicros(pid));
    const snapshot = () => ({
      at: performance.now(),
      api: cpu(system.api?.pid),
      worker: cpu(system.worker?.pid),
      redis: cpu(ctx.redisPid),
      created: load.created,
      answers: 0,
    });
    type Snapshot = ReturnType<typeof snapshot>;
    let start: (Snapshot & { otherLoad: () => number }) | undefined;
    let end: (Snapshot & { otherLoadPct: number }) | undefined;
    let answers = 0;
    const latencies: number[] = [];
    const answered = new Set<number>();
    let warmedUp = false;
    let closeWindow!: () => void;
    const windowClosed = new Promise<void>((resolve) => (closeWindow = resolve));
    const openWindow = () => {
      if (start || !warmedUp || answered.size < options.concurrency) return;
      start = { ...snapshot(), answers, otherLoad: ctx.harness.foreignCpu() };
      setTimeout(() => {
        end = { ...snapshot(), answers, otherLoadPct: start!.otherLoad() };
        closeWindow();
      }, options.durationS * 1000);
    };
    const warmup = setTimeout(() => {
      warmedUp = true;
      openWindow();
    }, options.warmupS * 1000);
    // A connection never answered would keep the window shut: the run fails after a minute.
    const giveUp = setTimeout(closeWindow, (options.warmupS + options.durationS + 60) * 1000);
    let result;
    try {
      result = await postLoad(ctx.harness, {
        url: load.url,
        token: ctx.token,
        connections: options.concurrency,
        body: load.body,
        until: windowClosed,
        onAnswer: (answer) => {
          load.count(answer.status, answer.body);
          answers++;
          if (start && !end) latencies.push(answer.latencyMs);
          if (!start) {
            answered.add(answer.connection);
            openWindow();
          }
        },
      });
    } finally {
      clearTimeout(warmup);
      clearTimeout(giveUp);
    }
    system.api?.assertRunning();
    system.worker?.assertRunning();
    if (!start || !end) {
      throw new Error(`batch-accept ${mode}: ${answered.size} of ${options.concurrency} connections answered; the measured window never began`);
    }
    const seconds = (end.at - start.at) / 1000;
    const created = end.created - start.created;
    const per = (now: number, then: number) => (now - then) / Math.max(created, 1);
    const notCreated = Object.values(load.notCreated).reduce((sum, count) => sum + count, 0);
    return {
      opsPerS: created / seconds,
      requestsPerS: (end.answers - start.answers) / seconds,
      created,
      notCreated: load.notCreated,
      answered: load.created + notCreated,
      errors: result.errors + result.timeouts,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      cpuPerOp: { api: per(end.api, start.api), worker: per(end.worker, start.worker), redis: per(end.redis, start.redis) },
      otherLoadPct: end.otherLoadPct,
    };
  } finally {
    await system.stop();
  }
}
