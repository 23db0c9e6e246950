import { driveToTerminal, type DriveResult } from '../lib/drive.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, rotate, roundRatio } from '../lib/stats.js';
import { startSystem, type BenchContext, type TargetKind } from '../lib/systems.js';

/**
 * Scenario 2: end to end. N operations from POST to terminal with the built-in processor
 * (autocannon, amount N, concurrency 64), the time until all are terminal, against the naive
 * service and raw BullMQ (addBulk in chunks + a noop worker). Each run starts fresh processes on
 * a flushed Redis and first pushes a small warm-up batch through.
 */
export interface E2eOptions {
  rounds: number;
  ops: number;
  concurrency: number;
}

export type E2eRun = DriveResult;

export interface E2eOutcome {
  ops: number;
  runs: Record<'service' | 'naive' | 'raw', E2eRun[]>;
  /** Medians over the undisturbed runs (all runs when none was). */
  medianOpsPerS: Record<'service' | 'naive' | 'raw', number>;
  /** service/naive and service/raw per round, and their median over undisturbed rounds. */
  ratios: Record<'naive' | 'raw', { value: number; rounds: number[]; clean: number }>;
  /** How many runs of each were undisturbed, as "clean/total". */
  clean: Record<'service' | 'naive' | 'raw', string>;
}

const TARGETS = ['service', 'naive', 'raw'] as const satisfies readonly TargetKind[];

export async function e2eScenario(ctx: BenchContext, options: E2eOptions): Promise<E2eOutcome> {
  const runs: E2eOutcome['runs'] = { service: [], naive: [], raw: [] };
  for (let round = 0; round < options.rounds; round++) {
    for (const kind of rotate(TARGETS, round)) {
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
  const pick = (kind: (typeof TARGETS)[number]) => cleanMedian(runs[kind], (run) => run.opsPerS, ctx.maxOtherLoadPct);
  const [service, naive, raw] = [pick('service'), pick('naive'), pick('raw')];
  return {
    ops: options.ops,
    runs,
    medianOpsPerS: { service: service.value, naive: naive.value, raw: raw.value },
    ratios: {
      naive: roundRatio(runs.service, runs.naive, (run) => run.opsPerS, ctx.maxOtherLoadPct),
      raw: roundRatio(runs.service, runs.raw, (run) => run.opsPerS, ctx.maxOtherLoadPct),
    },
    clean: {
      service: `${service.clean}/${service.total}`,
      naive: `${naive.clean}/${naive.total}`,
      raw: `${raw.clean}/${raw.total}`,
    },
  };
}

/** Fresh processes on a flushed Redis: a warm-up batch, then the measured one. */
async function e2eOnce(ctx: BenchContext, kind: (typeof TARGETS)[number], options: E2eOptions): Promise<E2eRun> {
  const warmup = Math.min(2000, Math.ceil(options.ops / 10));
  const timeoutMs = 120_000 + options.ops * 5;
  await ctx.redis.flushall();
  const system = await startSystem(ctx, kind);
  try {
    await driveToTerminal(ctx, system, { connectionId: 'warmconn', amount: warmup, concurrency: options.concurrency, timeoutMs });
    return await driveToTerminal(ctx, system, { connectionId: 'benchconn', amount: options.ops, concurrency: options.concurrency, timeoutMs });
  } finally {
    await system.stop();
  }
}
