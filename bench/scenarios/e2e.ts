import { driveToTerminal, type DriveResult } from '../lib/drive.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, rotate, roundRatio } from '../lib/stats.js';
import { startSystem, type BenchContext } from '../lib/systems.js';
import { targetSystem, type RefBuild } from './accept.js';

/**
 * Scenario 2: end to end. N operations from POST to terminal with the built-in processor
 * (autocannon, amount N, concurrency 64), the time until all are terminal, against the naive
 * service and raw BullMQ (addBulk in chunks + a noop worker). Each run starts fresh processes on
 * a flushed Redis and first pushes a small warm-up batch through. With `ref`, another build of
 * the service (a committed revision) joins the alternation.
 */
export interface E2eOptions {
  rounds: number;
  ops: number;
  concurrency: number;
  ref?: RefBuild;
}

export type E2eRun = DriveResult;

type Target = 'service' | 'ref' | 'naive' | 'raw';
type Ratio = { value: number; rounds: number[]; clean: number };

export interface E2eOutcome {
  ops: number;
  runs: Record<'service' | 'naive' | 'raw', E2eRun[]> & { ref?: E2eRun[] };
  /** Medians over the undisturbed runs (all runs when none was). */
  medianOpsPerS: Record<'service' | 'naive' | 'raw', number> & { ref?: number };
  /** CPU µs per operation of each process, medians over the undisturbed runs. */
  medianCpu: Record<'service' | 'naive' | 'raw', E2eRun['cpu']> & { ref?: E2eRun['cpu'] };
  /** service/naive and service/raw per round, and their median over undisturbed rounds; with a
   *  ref, service/ref and ref/naive too. */
  ratios: Record<'naive' | 'raw', Ratio> & { ref?: Ratio; refNaive?: Ratio };
  /** How many runs of each were undisturbed, as "clean/total". */
  clean: Record<'service' | 'naive' | 'raw', string> & { ref?: string };
  /** The revision run as `ref`. */
  ref?: string;
}

export async function e2eScenario(ctx: BenchContext, options: E2eOptions): Promise<E2eOutcome> {
  const targets: Target[] = options.ref ? ['service', 'ref', 'naive', 'raw'] : ['service', 'naive', 'raw'];
  const runs: Record<Target, E2eRun[]> = { service: [], ref: [], naive: [], raw: [] };
  for (let round = 0; round < options.rounds; round++) {
    for (const kind of rotate(targets, round)) {
      const run = await leastDisturbed(ctx, `e2e ${kind}`, () => e2eOnce(ctx, kind, options));
      runs[kind].push(run);
      ctx.log(
        `  e2e round ${round + 1} ${kind.padEnd(7)} ${run.opsPerS.toFixed(0)} ops/s` +
          `  (${run.accepted} terminal in ${run.totalS.toFixed(2)} s, accepted in ${run.acceptS.toFixed(2)} s;` +
          ` CPU µs/op api ${run.cpu.api.toFixed(0)} worker ${run.cpu.worker.toFixed(0)} redis ${run.cpu.redis.toFixed(0)} bench ${run.cpu.bench.toFixed(0)};` +
          ` other load ${run.otherLoadPct.toFixed(0)}%)`,
      );
    }
  }
  const pick = (kind: Target) => cleanMedian(runs[kind], (run) => run.opsPerS, ctx.maxOtherLoadPct);
  const cpu = (kind: Target) => {
    const median = (value: (run: E2eRun) => number) => cleanMedian(runs[kind], value, ctx.maxOtherLoadPct).value;
    return { api: median((run) => run.cpu.api), worker: median((run) => run.cpu.worker), redis: median((run) => run.cpu.redis), bench: median((run) => run.cpu.bench) };
  };
  const ratio = (a: Target, b: Target) => roundRatio(runs[a], runs[b], (run) => run.opsPerS, ctx.maxOtherLoadPct);
  const [service, ref, naive, raw] = [pick('service'), pick('ref'), pick('naive'), pick('raw')];
  const { ref: refRuns, ...measured } = runs;
  return {
    ops: options.ops,
    ...(options.ref ? { ref: options.ref.rev } : {}),
    runs: { ...measured, ...(options.ref ? { ref: refRuns } : {}) },
    medianOpsPerS: { service: service.value, naive: naive.value, raw: raw.value, ...(options.ref ? { ref: ref.value } : {}) },
    medianCpu: { service: cpu('service'), naive: cpu('naive'), raw: cpu('raw'), ...(options.ref ? { ref: cpu('ref') } : {}) },
    ratios: {
      naive: ratio('service', 'naive'),
      raw: ratio('service', 'raw'),
      ...(options.ref ? { ref: ratio('service', 'ref'), refNaive: ratio('ref', 'naive') } : {}),
    },
    clean: {
      service: `${service.clean}/${service.total}`,
      naive: `${naive.clean}/${naive.total}`,
      raw: `${raw.clean}/${raw.total}`,
      ...(options.ref ? { ref: `${ref.clean}/${ref.total}` } : {}),
    },
  };
}

/** Fresh processes on a flushed Redis: a warm-up batch, then the measured one. */
async function e2eOnce(ctx: BenchContext, kind: Target, options: E2eOptions): Promise<E2eRun> {
  const warmup = Math.min(2000, Math.ceil(options.ops / 10));
  const timeoutMs = 120_000 + options.ops * 5;
  await ctx.redis.flushall();
  const system = await startSystem(ctx, ...targetSystem(kind, options.ref));
  try {
    await driveToTerminal(ctx, system, { connectionId: 'warmconn', amount: warmup, concurrency: options.concurrency, timeoutMs });
    return await driveToTerminal(ctx, system, { connectionId: 'benchconn', amount: options.ops, concurrency: options.concurrency, timeoutMs });
  } finally {
    await system.stop();
  }
}
