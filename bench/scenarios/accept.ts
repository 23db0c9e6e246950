import { processCpuMicros } from '../lib/harness.js';
import { postLoad } from '../lib/load.js';
import { leastDisturbed } from '../lib/retry.js';
import { cleanMedian, rotate, roundRatio } from '../lib/stats.js';
import { startSystem, type BenchContext, type StartOptions, type TargetKind } from '../lib/systems.js';

/**
 * Scenario 1: accept throughput. POST `{}` at concurrency 64 for a fixed time against the
 * service (API + a running worker, LOG_LEVEL=info), the naive service (API + worker) and the
 * bare Hono app, in alternation over several rounds, each on fresh processes and a flushed Redis.
 * With `ref`, another build of the service (a committed revision) joins the alternation.
 */
export interface AcceptOptions {
  rounds: number;
  durationS: number;
  warmupS: number;
  concurrency: number;
  ref?: RefBuild;
}

/** Another revision of the service, built apart (run.ts --compare), run as `ref`. */
export interface RefBuild {
  rev: string;
  entry: BenchContext['serviceEntry'];
}

export interface AcceptRun {
  rps: number;
  non2xx: number;
  errors: number;
  p50: number;
  p99: number;
  /** CPU microseconds per accepted request during the measured window. */
  cpuPerRequest: { api: number; worker: number; redis: number };
  /** CPU used meanwhile by processes the bench did not start, in percent of one core. */
  otherLoadPct: number;
}

type Target = 'service' | 'ref' | 'naive' | 'bare';
type Ratio = { value: number; rounds: number[]; clean: number };

export interface AcceptOutcome {
  runs: Record<'service' | 'naive' | 'bare', AcceptRun[]> & { ref?: AcceptRun[] };
  /** Medians over the undisturbed runs (all runs when none was). */
  medianRps: Record<'service' | 'naive' | 'bare', number> & { ref?: number };
  /** CPU µs per request of each process, medians over the undisturbed runs. */
  medianCpu: Record<'service' | 'naive' | 'bare', AcceptRun['cpuPerRequest']> & { ref?: AcceptRun['cpuPerRequest'] };
  /** service/naive and service/bare per round, and their median over undisturbed rounds; with
   *  a ref, service/ref and ref/naive too. */
  ratios: Record<'naive' | 'bare', Ratio> & { ref?: Ratio; refNaive?: Ratio };
  /** How many runs of each were undisturbed, as "clean/total". */
  clean: Record<'service' | 'naive' | 'bare', string> & { ref?: string };
  /** The revision run as `ref`. */
  ref?: string;
}

export async function acceptScenario(ctx: BenchContext, options: AcceptOptions): Promise<AcceptOutcome> {
  const targets: Target[] = options.ref ? ['service', 'ref', 'naive', 'bare'] : ['service', 'naive', 'bare'];
  const runs: Record<Target, AcceptRun[]> = { service: [], ref: [], naive: [], bare: [] };
  for (let round = 0; round < options.rounds; round++) {
    for (const kind of rotate(targets, round)) {
      const run = await leastDisturbed(ctx, `accept ${kind}`, () => acceptOnce(ctx, kind, options));
      runs[kind].push(run);
      ctx.log(
        `  accept round ${round + 1} ${kind.padEnd(7)} ${run.rps.toFixed(0)} req/s` +
          `  non-2xx ${run.non2xx}  errors ${run.errors}  p50 ${run.p50} ms  p99 ${run.p99} ms` +
          `  CPU µs/req api ${run.cpuPerRequest.api.toFixed(0)} worker ${run.cpuPerRequest.worker.toFixed(0)} redis ${run.cpuPerRequest.redis.toFixed(0)}` +
          `  other load ${run.otherLoadPct.toFixed(0)}%`,
      );
    }
  }
  const pick = (kind: Target) => cleanMedian(runs[kind], (run) => run.rps, ctx.maxOtherLoadPct);
  const cpu = (kind: Target) => {
    const median = (value: (run: AcceptRun) => number) => cleanMedian(runs[kind], value, ctx.maxOtherLoadPct).value;
    return { api: median((run) => run.cpuPerRequest.api), worker: median((run) => run.cpuPerRequest.worker), redis: median((run) => run.cpuPerRequest.redis) };
  };
  const ratio = (a: Target, b: Target) => roundRatio(runs[a], runs[b], (run) => run.rps, ctx.maxOtherLoadPct);
  const [service, ref, naive, bare] = [pick('service'), pick('ref'), pick('naive'), pick('bare')];
  const { ref: refRuns, ...measured } = runs;
  return {
    ...(options.ref ? { ref: options.ref.rev } : {}),
    runs: { ...measured, ...(options.ref ? { ref: refRuns } : {}) },
    medianRps: { service: service.value, naive: naive.value, bare: bare.value, ...(options.ref ? { ref: ref.value } : {}) },
    medianCpu: { service: cpu('service'), naive: cpu('naive'), bare: cpu('bare'), ...(options.ref ? { ref: cpu('ref') } : {}) },
    ratios: {
      naive: ratio('service', 'naive'),
      bare: ratio('service', 'bare'),
      ...(options.ref ? { ref: ratio('service', 'ref'), refNaive: ratio('ref', 'naive') } : {}),
    },
    clean: {
      service: `${service.clean}/${service.total}`,
      naive: `${naive.clean}/${naive.total}`,
      bare: `${bare.clean}/${bare.total}`,
      ...(options.ref ? { ref: `${ref.clean}/${ref.total}` } : {}),
    },
  };
}

/** How to start a target: `ref` is the service from another build. */
export function targetSystem(kind: Target | 'raw', ref: RefBuild | undefined): [TargetKind, StartOptions] {
  if (kind !== 'ref') return [kind, {}];
  if (!ref) throw new Error('no ref build to run');
  return ['service', { entry: ref.entry, label: 'ref' }];
}

/** Fresh processes on a flushed Redis: warm up, then measure. */
async function acceptOnce(ctx: BenchContext, kind: Target, options: AcceptOptions): Promise<AcceptRun> {
  await ctx.redis.flushall();
  const system = await startSystem(ctx, ...targetSystem(kind, options.ref));
  try {
    const url = system.postUrl('benchconn');
    await postLoad(ctx.harness, { url, token: ctx.token, connections: options.concurrency, durationS: options.warmupS });
    const cpu = (pid: number | undefined) => (pid === undefined ? 0 : processCpuMicros(pid));
    const before = { api: cpu(system.api?.pid), worker: cpu(system.worker?.pid), redis: cpu(ctx.redisPid) };
    const otherLoad = ctx.harness.foreignCpu();
    const result = await postLoad(ctx.harness, { url, token: ctx.token, connections: options.concurrency, durationS: options.durationS });
    const otherLoadPct = otherLoad();
    system.api?.assertRunning();
    system.worker?.assertRunning();
    const per = (now: number, then: number) => (now - then) / Math.max(result.ok, 1);
    return {
      rps: result.rps,
      non2xx: result.non2xx,
      errors: result.errors + result.timeouts,
      p50: result.p50,
      p99: result.p99,
      cpuPerRequest: {
        api: per(cpu(system.api?.pid), before.api),
        worker: per(cpu(system.worker?.pid), before.worker),
        redis: per(cpu(ctx.redisPid), before.redis),
      },
      otherLoadPct,
    };
  } finally {
    await system.stop();
  }
}
