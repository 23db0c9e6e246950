import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Queue } from 'bullmq';
import { Pool, request } from 'undici';
import { queueName } from '../../src/shared/queue.js';
import { processCpuMicros, processRssBytes, sleep, waitFor, type Child } from '../lib/harness.js';
import { GC_PROBE, LOOP_PROBE, gcProbe, loopProbe, type LoopProbe } from '../lib/probes.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, percentile } from '../lib/stats.js';
import { SERVICE_PREFIX, startSystem, type BenchContext, type System } from '../lib/systems.js';

/**
 * Scenario 5: waits. N `Prefer: wait=60` GETs (5,000) held at once by one API process (API and
 * worker apart, as deployed), until their operations end:
 * - the API's RSS per held request (RSS with all N held minus RSS just before the GETs, / N), and
 *   the same right after a full GC (lib/gc-probe.mjs), where what remains is what a held request
 *   keeps alive;
 * - the API's event-loop delay while the GETs arrive, while they are held, and while they are
 *   answered (lib/loop-probe.mjs: windows the bench chooses; /metrics' own p99 read right after
 *   the answers for comparison);
 * - for every answer, the time from its operation's terminal write (`lastActionDateTime`, the
 *   worker's clock) to the answer's arrival at the client (Date.now(), same machine): p50, p99,
 *   max; and every answer must be a 200 with a terminal status and `Preference-Applied: wait=60`,
 *   sent after the release.
 * The operations are created through the API while the queue is paused (BullMQ Queue.pause, from
 * the bench), so none can end before every GET is held; resuming the queue is the release, and a
 * worker warmed up beforehand then runs them at its own pace. Each round uses fresh processes and
 * first holds and releases a smaller warm-up batch, so neither process is measured cold.
 */
export interface WaitsOptions {
  rounds: number;
  /** Requests held at once (and operations, one GET each). */
  held: number;
  /** Held requests of the warm-up pass before each measured one. */
  warmup: number;
}

/** Event-loop delay over one window, ms (the 10 ms sampling interval included). */
export interface LoopWindow {
  samples: number;
  p50: number;
  p99: number;
  max: number;
}

export interface WaitsRound {
  /** GETs sent (one per operation). */
  requests: number;
  /** Requests the API counted held (operation_requests_held) when the memory was read: all of
   *  them unless some were answered at once; the per-request figures divide by this. */
  held: number;
  /** What came back, by kind: `ok` is 200, terminal, Preference-Applied: wait=60, after the
   *  release and before the wait ran out. */
  answers: { ok: number; early: number; bad: number; failed: number; missing: number; problems: Record<string, number> };
  /** From the first GET sent until every GET was held (or answered without being held). */
  holdAllS: number;
  /** From the release until the last answer arrived. */
  answerAllS: number;
  /** From the release until the last terminal write (lastActionDateTime). */
  lastWriteS: number;
  rss: { before: number; held: number; perHeld: number };
  afterFullGc: { rssBefore: number; rssHeld: number; heapUsedBefore: number; heapUsedHeld: number; rssPerHeld: number; heapPerHeld: number };
  loop: { idle: LoopWindow; opening: LoopWindow; held: LoopWindow; answering: LoopWindow };
  /** prom-client's nodejs_eventloop_lag_p99/max_seconds read right after the last answer (its
   *  window: from a scrape just before the release), ms. */
  metricsLag: { p99: number; max: number };
  /** The bench's own event-loop delay while the answers arrived, ms: an answer that waits for
   *  the client to read it looks late. */
  clientLoop: { p99: number; max: number };
  /** API CPU µs per request while the GETs arrived, and while they were answered. */
  apiCpuMicros: { opening: number; answering: number };
  /** ms from the terminal write to the answer's arrival, over the answers that carry one. */
  latency: { samples: number; p50: number; p99: number; max: number; timedOut: number };
  otherLoadPct: number;
}

export interface WaitsOutcome {
  held: number;
  warmup: number;
  rounds: WaitsRound[];
  /** Medians over the undisturbed rounds (all when none was). */
  bytesPerHeld: number;
  heapPerHeldAfterGc: number;
  latency: { p50: number; p99: number; max: number };
  loopP99: { opening: number; held: number; answering: number };
  loopMax: { opening: number; held: number; answering: number };
  metricsLagP99: number;
  clientLoopMax: number;
  holdAllS: number;
  answerAllS: number;
  /** Summed over the rounds. */
  answers: { expected: number; ok: number };
  clean: number;
}

export const WAIT_SECONDS = 60;
const WARMUP_CONNECTION = 'waitwarm';
const HELD_CONNECTION = 'waitconn';
/** HTTP connections that create the operations. */
const CREATE_CONNECTIONS = 64;
/** Open files the bench and the API need beyond one socket per held request. */
const SPARE_FILES = 512;

/** Whether this process may hold `held` sockets (the API inherits the same limit); the message
 *  says what to do when not. */
export function openFilesProblem(held: number): string | undefined {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  if (!match || match[1] === 'unlimited') return undefined;
  const soft = Number(match[1]);
  const needed = held + SPARE_FILES;
  if (soft >= needed) return undefined;
  return `waits holds ${held} connections, so the bench and the API each need ${needed} open files; ulimit -n is ${soft} (hard limit ${match[2]}): raise it (ulimit -n ${needed}) in the shell that runs the bench`;
}

export async function waitsScenario(ctx: BenchContext, options: WaitsOptions): Promise<WaitsOutcome> {
  const problem = openFilesProblem(options.held);
  if (problem) throw new Error(problem);
  const rounds: WaitsRound[] = [];
  for (let round = 0; round < options.rounds; round++) {
    const run = await leastDisturbed(ctx, 'waits', () => oneRound(ctx, options));
    rounds.push(run);
    logRound(ctx, round + 1, run);
  }
  const median = (value: (run: WaitsRound) => number) => cleanMedian(rounds, value, ctx.maxOtherLoadPct).value;
  return {
    held: options.held,
    warmup: options.warmup,
    rounds,
    bytesPerHeld: median((run) => run.rss.perHeld),
    heapPerHeldAfterGc: median((run) => run.afterFullGc.heapPerHeld),
    latency: { p50: median((run) => run.latency.p50), p99: median((run) => run.latency.p99), max: median((run) => run.latency.max) },
    loopP99: {
      opening: median((run) => run.loop.opening.p99),
      held: median((run) => run.loop.held.p99),
      answering: median((run) => run.loop.answering.p99),
    },
    loopMax: {
      opening: median((run) => run.loop.opening.max),
      held: median((run) => run.loop.held.max),
      answering: median((run) => run.loop.answering.max),
    },
    metricsLagP99: median((run) => run.metricsLag.p99),
    clientLoopMax: median((run) => run.clientLoop.max),
    holdAllS: median((run) => run.holdAllS),
    answerAllS: median((run) => run.answerAllS),
    answers: { expected: options.held * rounds.length, ok: rounds.reduce((sum, run) => sum + run.answers.ok, 0) },
    clean: rounds.filter((run) => run.otherLoadPct <= ctx.maxOtherLoadPct).length,
  };
}

function logRound(ctx: BenchContext, round: number, run: WaitsRound): void {
  const { answers, rss, afterFullGc, loop, latency } = run;
  const mib = (bytes: number) => (bytes / 1048576).toFixed(1);
  const kib = (bytes: number) => (bytes / 1024).toFixed(1);
  const window = (w: LoopWindow) => `p99 ${w.p99.toFixed(1)} max ${w.max.toFixed(1)} (${w.samples} samples)`;
  const problems = Object.entries(answers.problems)
    .map(([problem, count]) => `${count}× ${problem}`)
    .join(', ');
  ctx.log(
    `  waits round ${round}: ${run.requests} GETs, ${run.held} held at once, after ${run.holdAllS.toFixed(2)} s; answered ${answers.ok} ok` +
      `, ${answers.early} before the release, ${answers.bad} wrong, ${answers.failed} failed, ${answers.missing} never${problems ? ` (${problems})` : ''}` +
      `; release -> last terminal write ${run.lastWriteS.toFixed(2)} s, -> last answer ${run.answerAllS.toFixed(2)} s`,
  );
  ctx.log(
    `    API RSS ${mib(rss.before)} -> ${mib(rss.held)} MiB held: ${kib(rss.perHeld)} KiB per held request;` +
      ` after a full GC RSS ${mib(afterFullGc.rssBefore)} -> ${mib(afterFullGc.rssHeld)} MiB (${kib(afterFullGc.rssPerHeld)} KiB each),` +
      ` heapUsed ${mib(afterFullGc.heapUsedBefore)} -> ${mib(afterFullGc.heapUsedHeld)} MiB (${kib(afterFullGc.heapPerHeld)} KiB each)`,
  );
  ctx.log(
    `    API event-loop delay, ms: idle ${window(loop.idle)}; GETs arriving ${window(loop.opening)}; held ${window(loop.held)};` +
      ` answering ${window(loop.answering)}; /metrics after the answers p99 ${run.metricsLag.p99.toFixed(1)} max ${run.metricsLag.max.toFixed(1)};` +
      ` the bench's own while the answers arrived p99 ${run.clientLoop.p99.toFixed(1)} max ${run.clientLoop.max.toFixed(1)}`,
  );
  ctx.log(
    `    terminal write -> answer at the client (${latency.samples}): p50 ${latency.p50.toFixed(0)} ms p99 ${latency.p99.toFixed(0)} ms` +
      ` max ${latency.max.toFixed(0)} ms; ${latency.timedOut} answered by the ${WAIT_SECONDS} s timeout;` +
      ` API CPU ${run.apiCpuMicros.opening.toFixed(0)} µs per GET arriving, ${run.apiCpuMicros.answering.toFixed(0)} per answer;` +
      ` other load ${run.otherLoadPct.toFixed(0)}%`,
  );
}

/** A fresh API (with the probes) and worker; a warm-up pass, then the measured one. */
async function oneRound(ctx: BenchContext, options: WaitsOptions): Promise<WaitsRound> {
  await ctx.redis.flushall();
  const system = await startSystem(ctx, 'service', { apiNodeArgs: ['--expose-gc', '--import', GC_PROBE, '--import', LOOP_PROBE] });
  const shards = Number(ctx.serviceEnv.QUEUE_SHARDS ?? 1);
  const queues = Array.from({ length: shards }, (_, shard) => new Queue(queueName(shard, shards), { connection: ctx.redis, prefix: SERVICE_PREFIX }));
  try {
    const warm = await holdAndRelease(ctx, system, queues, WARMUP_CONNECTION, options.warmup);
    if (warm.answers.ok < options.warmup) {
      ctx.log(`    warm-up: ${warm.answers.ok} of ${options.warmup} answers as expected (${JSON.stringify(warm.answers.problems)})`);
    }
    await sleep(1000);
    const run = await holdAndRelease(ctx, system, queues, HELD_CONNECTION, options.held);
    // Said at once: a run that other processes disturbed may be measured again and dropped, but
    // what the service answered in it still counts.
    if (run.answers.ok < options.held) {
      const problems = Object.entries(run.answers.problems).map(([problem, count]) => `${count}× ${problem}`);
      ctx.log(`    waits: ${options.held - run.answers.ok} of ${options.held} answers not as expected: ${problems.join(', ')}`);
    }
    return run;
  } finally {
    await Promise.all(queues.map((queue) => queue.close()));
    await system.stop();
  }
}

interface Answer {
  sentAt: number;
  arrivedAt: number;
  status: number;
  preferenceApplied: string | undefined;
  body: { status?: string; lastActionDateTime?: string; error?: { code?: string; message?: string } } | undefined;
}

/** What an answer says, for counting the wrong ones by kind. */
function describe(answer: Answer): string {
  const what = answer.body?.status ?? (answer.body?.error ? `error ${answer.body.error.code}: ${answer.body.error.message}` : 'no JSON body');
  return `${answer.status} ${what}, Preference-Applied ${answer.preferenceApplied ?? 'absent'}`;
}

/**
 * With the queue paused: creates `count` operations, holds one `Prefer: wait=60` GET on each,
 * waits until the API counts them all held, measures, resumes the queue and collects the answers.
 */
async function holdAndRelease(ctx: BenchContext, system: System, queues: Queue[], connectionId: string, count: number): Promise<WaitsRound> {
  const api = system.api!;
  await Promise.all(queues.map((queue) => queue.pause()));
  const ids = await createOperations(ctx, system, connectionId, count);
  await sleep(500);

  const otherLoad = ctx.harness.foreignCpu();
  await loopProbe(api);
  await sleep(2000);
  const idle = await loopProbe(api);
  const rssBefore = processRssBytes(api.pid);
  const gcBefore = await gcProbe(api);
  await startWindow(api);

  // One connection per request: a held request occupies its connection until it is answered.
  const pool = new Pool(system.baseUrl, {
    connections: count,
    pipelining: 1,
    headersTimeout: (WAIT_SECONDS + 60) * 1000,
    bodyTimeout: (WAIT_SECONDS + 60) * 1000,
    connect: { timeout: 60_000 },
  });
  const forget = ctx.harness.onCleanup(() => void pool.destroy());
  let settled = 0;
  const failures: string[] = [];
  const headers = { authorization: `Bearer ${ctx.token}`, prefer: `wait=${WAIT_SECONDS}` };
  const received: Answer[] = [];
  const get = async (id: string): Promise<void> => {
    const sentAt = Date.now();
    try {
      const response = await pool.request({ path: `/v1.0/external/connections/${connectionId}/operations/${id}`, method: 'GET', headers });
      const arrivedAt = Date.now();
      const text = await response.body.text();
      const preference = response.headers['preference-applied'];
      let body: Answer['body'];
      try {
        body = JSON.parse(text) as Answer['body'];
      } catch {
        body = undefined;
      }
      received.push({ sentAt, arrivedAt, status: response.statusCode, preferenceApplied: Array.isArray(preference) ? preference.join(', ') : preference, body });
    } catch (error) {
      failures.push(error instanceof Error ? `${error.name}: ${error.message}` : String(error));
    } finally {
      settled++;
    }
  };

  try {
    const cpuOpening = processCpuMicros(api.pid);
    const openedAt = performance.now();
    const requests = ids.map(get);
    let heldNow = 0;
    await waitFor(
      async () => {
        api.assertRunning();
        heldNow = (await scrapeMetrics(system.baseUrl)).held;
        // Every request is held, or some were answered (or failed) without being held.
        return heldNow + settled >= count;
      },
      { timeoutMs: 120_000, intervalMs: 100, what: `${count} held GETs`, context: () => `held ${heldNow}, settled ${settled}; ${api.describe()}` },
    );
    const holdAllS = (performance.now() - openedAt) / 1000;
    const opening = await loopProbe(api);
    const cpuHeld = processCpuMicros(api.pid);
    const heldCount = Math.max(1, heldNow);

    const rssHeld = processRssBytes(api.pid);
    const gcHeld = await gcProbe(api);
    await startWindow(api);
    await sleep(2000);
    const held = await loopProbe(api);
    await scrapeMetrics(system.baseUrl); // starts /metrics' own event-loop window

    const clientLoop = monitorEventLoopDelay({ resolution: 10 });
    clientLoop.enable();
    const cpuRelease = processCpuMicros(api.pid);
    const releasedAt = Date.now();
    await Promise.all(queues.map((queue) => queue.resume()));
    let giveUp: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(requests),
      new Promise<void>((resolve) => (giveUp = setTimeout(resolve, (WAIT_SECONDS + 30) * 1000))),
    ]);
    clearTimeout(giveUp);
    clientLoop.disable();
    const cpuAnswered = processCpuMicros(api.pid);
    api.assertRunning();
    const answering = await loopProbe(api);
    const metrics = await scrapeMetrics(system.baseUrl);
    const missing = count - settled;
    const otherLoadPct = otherLoad();

    const problems: Record<string, number> = {};
    const note = (problem: string) => (problems[problem] = (problems[problem] ?? 0) + 1);
    for (const failure of failures) note(`request failed: ${failure.slice(0, 120)}`);
    let ok = 0;
    let early = 0;
    let bad = 0;
    const latencies: number[] = [];
    let timedOut = 0;
    let lastWrite = Number.NaN;
    let lastArrival = Number.NaN;
    for (const answer of received) {
      lastArrival = Number.isFinite(lastArrival) ? Math.max(lastArrival, answer.arrivedAt) : answer.arrivedAt;
      const terminal = answer.body?.status === 'completed' || answer.body?.status === 'failed';
      const wroteAt = Date.parse(answer.body?.lastActionDateTime ?? '');
      if (answer.arrivedAt < releasedAt) {
        early++;
        note(`answered before the release: ${describe(answer)}`);
        continue;
      }
      // Every operation ends seconds after the release: an answer this late came from the wait
      // running out (the announcement was missed), not from the operation ending.
      const late = answer.arrivedAt - answer.sentAt >= (WAIT_SECONDS - 1) * 1000;
      if (late) timedOut++;
      if (answer.status !== 200 || !terminal || answer.preferenceApplied !== `wait=${WAIT_SECONDS}`) {
        bad++;
        note(describe(answer));
      } else if (late) {
        bad++;
        note(`answered by the ${WAIT_SECONDS} s timeout`);
      } else {
        ok++;
      }
      if (terminal && Number.isFinite(wroteAt)) {
        latencies.push(answer.arrivedAt - wroteAt);
        lastWrite = Number.isFinite(lastWrite) ? Math.max(lastWrite, wroteAt) : wroteAt;
      }
    }
    if (missing > 0) note(`no answer ${WAIT_SECONDS + 30} s after the release`);

    return {
      requests: count,
      held: heldNow,
      answers: { ok, early, bad, failed: failures.length, missing, problems },
      holdAllS,
      answerAllS: (lastArrival - releasedAt) / 1000,
      lastWriteS: (lastWrite - releasedAt) / 1000,
      rss: { before: rssBefore, held: rssHeld, perHeld: (rssHeld - rssBefore) / heldCount },
      afterFullGc: {
        rssBefore: gcBefore.rss,
        rssHeld: gcHeld.rss,
        heapUsedBefore: gcBefore.heapUsed,
        heapUsedHeld: gcHeld.heapUsed,
        rssPerHeld: (gcHeld.rss - gcBefore.rss) / heldCount,
        heapPerHeld: (gcHeld.heapUsed - gcBefore.heapUsed) / heldCount,
      },
      loop: { idle: windowOf(idle), opening: windowOf(opening), held: windowOf(held), answering: windowOf(answering) },
      metricsLag: { p99: metrics.lagP99 * 1000, max: metrics.lagMax * 1000 },
      clientLoop: { p99: clientLoop.percentile(99) / 1e6, max: clientLoop.max / 1e6 },
      apiCpuMicros: { opening: (cpuHeld - cpuOpening) / count, answering: (cpuAnswered - cpuRelease) / count },
      latency: {
        samples: latencies.length,
        p50: percentile(latencies, 50),
        p99: percentile(latencies, 99),
        max: latencies.length ? Math.max(...latencies) : Number.NaN,
        timedOut,
      },
      otherLoadPct,
    };
  } finally {
    forget();
    await pool.destroy();
  }
}

/** Lets the full GC a probe just ran land before the next loop window starts: the sample that
 *  carries its pause is taken at the next 10 ms tick, and the first one after a reset is dropped. */
async function startWindow(api: Child): Promise<void> {
  await sleep(50);
  await loopProbe(api);
  await sleep(30);
}

function windowOf(probe: LoopProbe): LoopWindow {
  return { samples: probe.samples, p50: probe.p50 ?? Number.NaN, p99: probe.p99 ?? Number.NaN, max: probe.max ?? Number.NaN };
}

/** POSTs `{}` `count` times over CREATE_CONNECTIONS connections; the new operations' ids. */
async function createOperations(ctx: BenchContext, system: System, connectionId: string, count: number): Promise<string[]> {
  const pool = new Pool(system.baseUrl, { connections: CREATE_CONNECTIONS });
  const forget = ctx.harness.onCleanup(() => void pool.destroy());
  const headers = { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' };
  const path = `/v1.0/external/connections/${connectionId}/operations`;
  const ids: string[] = [];
  let next = 0;
  const lane = async () => {
    while (next < count) {
      next++;
      const response = await pool.request({ path, method: 'POST', headers, body: '{}' });
      const body = (await response.body.json()) as { id?: string; status?: string };
      if (response.statusCode !== 201 || !body.id || body.status !== 'inprogress') {
        throw new Error(`POST ${path} answered ${response.statusCode} ${JSON.stringify(body).slice(0, 200)}`);
      }
      ids.push(body.id);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(CREATE_CONNECTIONS, count) }, lane));
    return ids;
  } finally {
    forget();
    await pool.close();
  }
}

/** The API's /metrics: requests held now, and prom-client's event-loop figures (seconds) since
 *  the previous scrape (it resets them at every scrape). */
async function scrapeMetrics(baseUrl: string): Promise<{ held: number; lagP99: number; lagMax: number }> {
  const response = await request(`${baseUrl}/metrics`, { headersTimeout: 30_000, bodyTimeout: 30_000 });
  const text = await response.body.text();
  if (response.statusCode !== 200) throw new Error(`/metrics answered ${response.statusCode}`);
  const value = (name: string) => {
    const match = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
    if (!match) throw new Error(`/metrics has no ${name}`);
    return Number(match[1]);
  };
  return { held: value('operation_requests_held'), lagP99: value('nodejs_eventloop_lag_p99_seconds'), lagMax: value('nodejs_eventloop_lag_max_seconds') };
}
