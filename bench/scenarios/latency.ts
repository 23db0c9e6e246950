import { sleep, waitFor } from '../lib/harness.js';
import { pacedPostLoad, postLoad } from '../lib/load.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, percentile } from '../lib/stats.js';
import { startSystem, type BenchContext, type System } from '../lib/systems.js';

/**
 * Scenario 3: latency.
 * (a) POST latency p50/p99 at half of the measured peak accept rate, with the worker running:
 *     evenly paced requests (the judged number), and the same rate through autocannon's
 *     overallRate, which sends it in bursts (information; see pacedPostLoad).
 * (b) On an idle system, operations created one at a time: the time from the 201 until the
 *     stored status is `completed`, polling that operation's record in Redis every 1 ms
 *     (service, and the naive baseline for context).
 */
export interface LatencyOptions {
  rounds: number;
  durationS: number;
  concurrency: number;
  /** The service's peak accept rate; measured here when the accept scenario did not run. */
  peakRps?: number;
  sequentialOps: number;
}

export interface CompletionLatency {
  samples: number;
  /** ms from the 201 to `completed`. */
  p50: number;
  p90: number;
  p99: number;
  /** ms of the POST itself on the idle system. */
  postP50: number;
  otherLoadPct: number;
}

export interface LatencyOutcome {
  peakRps: number;
  rate: number;
  runs: {
    p50: number;
    p99: number;
    requests: number;
    non2xx: number;
    rps: number;
    burstyP50: number;
    burstyP99: number;
    otherLoadPct: number;
  }[];
  /** Medians over the rounds, of the evenly paced load. */
  p50: number;
  p99: number;
  /** The same rate through autocannon's overallRate (bursty: see pacedPostLoad). */
  burstyP50: number;
  burstyP99: number;
  completion: { service: CompletionLatency; naive: CompletionLatency };
  /** The naive baseline at the same evenly paced rate (medians), for context. */
  naive: { p50: number; p99: number };
}

const CONNECTION = 'latconn';

export async function latencyScenario(ctx: BenchContext, options: LatencyOptions): Promise<LatencyOutcome> {
  await ctx.redis.flushall();
  let system = await startSystem(ctx, 'service');
  let posted = 0;
  const drain = async () => {
    await waitFor(async () => (await system.terminal(CONNECTION)) >= posted, {
      timeoutMs: 300_000,
      intervalMs: 20,
      what: 'the worker to finish the backlog',
    });
  };
  const load = async (extra: { durationS: number; overallRate?: number; collectLatencies?: boolean }) => {
    const result = await postLoad(ctx.harness, { url: system.postUrl(CONNECTION), token: ctx.token, connections: options.concurrency, ...extra });
    posted += result.ok;
    return result;
  };

  const runs: LatencyOutcome['runs'] = [];
  let peakRps = options.peakRps ?? Number.NaN;
  try {
    await load({ durationS: 1 });
    if (!Number.isFinite(peakRps)) {
      peakRps = (await load({ durationS: 3 })).rps;
      ctx.log(`  latency: measured peak ${peakRps.toFixed(0)} req/s`);
    }
    await drain();
    const rate = Math.max(1, Math.floor(peakRps / 2));
    for (let round = 0; round < options.rounds; round++) {
      const run = await leastDisturbed(ctx, 'latency', async () => {
        const otherLoad = ctx.harness.foreignCpu();
        const paced = await pacedPostLoad(ctx.harness, {
          url: system.postUrl(CONNECTION),
          token: ctx.token,
          rate,
          durationS: options.durationS,
          connections: options.concurrency,
        });
        posted += paced.ok;
        const otherLoadPct = otherLoad();
        await drain();
        const bursty = await load({ durationS: options.durationS, overallRate: rate, collectLatencies: true });
        await drain();
        return {
          p50: percentile(paced.latencies, 50),
          p99: percentile(paced.latencies, 99),
          requests: paced.ok,
          non2xx: paced.non2xx + paced.errors,
          rps: paced.rps,
          burstyP50: percentile(bursty.latencies, 50),
          burstyP99: percentile(bursty.latencies, 99),
          otherLoadPct,
        };
      });
      runs.push(run);
      ctx.log(
        `  latency round ${round + 1} at ${rate} req/s evenly paced (${run.rps.toFixed(0)} served): POST p50 ${run.p50.toFixed(2)} ms` +
          ` p99 ${run.p99.toFixed(2)} ms (${run.requests} requests, failed ${run.non2xx}; other load ${run.otherLoadPct.toFixed(0)}%);` +
          ` autocannon overallRate (bursts): p50 ${run.burstyP50.toFixed(2)} ms p99 ${run.burstyP99.toFixed(2)} ms`,
      );
    }
    await sleep(500);
    const service = await completionLatency(ctx, system, options.sequentialOps);
    ctx.log(`  201->completed (service, idle, ${service.samples} ops): p50 ${service.p50.toFixed(2)} ms p99 ${service.p99.toFixed(2)} ms; POST p50 ${service.postP50.toFixed(2)} ms; other load ${service.otherLoadPct.toFixed(0)}%`);
    await system.stop();

    await ctx.redis.flushall();
    system = await startSystem(ctx, 'naive');
    const naive = await completionLatency(ctx, system, options.sequentialOps);
    ctx.log(`  201->completed (naive, idle, ${naive.samples} ops): p50 ${naive.p50.toFixed(2)} ms p99 ${naive.p99.toFixed(2)} ms; POST p50 ${naive.postP50.toFixed(2)} ms; other load ${naive.otherLoadPct.toFixed(0)}%`);
    // For context: the naive service under the same evenly paced rate.
    const naiveUrl = system.postUrl(CONNECTION);
    await postLoad(ctx.harness, { url: naiveUrl, token: ctx.token, connections: options.concurrency, durationS: 1 });
    const naiveRuns: { p50: number; p99: number; otherLoadPct: number }[] = [];
    for (let round = 0; round < options.rounds; round++) {
      await sleep(1000);
      const run = await leastDisturbed(ctx, 'latency naive', async () => {
        const otherLoad = ctx.harness.foreignCpu();
        const paced = await pacedPostLoad(ctx.harness, { url: naiveUrl, token: ctx.token, rate, durationS: options.durationS, connections: options.concurrency });
        return { p50: percentile(paced.latencies, 50), p99: percentile(paced.latencies, 99), otherLoadPct: otherLoad() };
      });
      naiveRuns.push(run);
      ctx.log(`  latency naive round ${round + 1} at ${rate} req/s evenly paced: POST p50 ${run.p50.toFixed(2)} ms p99 ${run.p99.toFixed(2)} ms (other load ${run.otherLoadPct.toFixed(0)}%)`);
    }
    return {
      peakRps,
      rate,
      runs,
      p50: cleanMedian(runs, (run) => run.p50, ctx.maxOtherLoadPct).value,
      p99: cleanMedian(runs, (run) => run.p99, ctx.maxOtherLoadPct).value,
      burstyP50: cleanMedian(runs, (run) => run.burstyP50, ctx.maxOtherLoadPct).value,
      burstyP99: cleanMedian(runs, (run) => run.burstyP99, ctx.maxOtherLoadPct).value,
      completion: { service, naive },
      naive: {
        p50: cleanMedian(naiveRuns, (run) => run.p50, ctx.maxOtherLoadPct).value,
        p99: cleanMedian(naiveRuns, (run) => run.p99, ctx.maxOtherLoadPct).value,
      },
    };
  } finally {
    await system.stop();
  }
}

/** Creates operations one at a time and times each from its 201 to `completed`. */
async function completionLatency(ctx: BenchContext, system: System, count: number): Promise<CompletionLatency> {
  const warmup = 20;
  const completions: number[] = [];
  const posts: number[] = [];
  const headers = { authorization: `Bearer ${ctx.token}`, 'content-type': 'application/json' };
  const otherLoad = ctx.harness.foreignCpu();
  for (let i = 0; i < warmup + count; i++) {
    const sent = performance.now();
    const response = await fetch(system.postUrl(CONNECTION), { method: 'POST', headers, body: '{}' });
    const body = (await response.json()) as { id?: string };
    const accepted = performance.now();
    if (response.status !== 201 || !body.id) throw new Error(`${system.kind}: POST answered ${response.status}`);
    const deadline = accepted + 10_000;
    for (;;) {
      if ((await system.status(CONNECTION, body.id)) === 'completed') break;
      if (performance.now() > deadline) throw new Error(`${system.kind}: operation ${body.id} not completed within 10 s`);
      await sleep(1);
    }
    if (i >= warmup) {
      completions.push(performance.now() - accepted);
      posts.push(accepted - sent);
    }
  }
  return {
    samples: completions.length,
    p50: percentile(completions, 50),
    p90: percentile(completions, 90),
    p99: percentile(completions, 99),
    postP50: percentile(posts, 50),
    otherLoadPct: otherLoad(),
  };
}
