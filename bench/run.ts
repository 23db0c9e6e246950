import { printTable, type SummaryRow } from './lib/report.js';
import { buildComparedRevision, intFlag, parseFlags, runSession } from './lib/session.js';
import { fmt } from './lib/stats.js';
import type { BenchContext } from './lib/systems.js';
import { acceptScenario, type AcceptOutcome, type RefBuild } from './scenarios/accept.js';
import { BATCH_SIZE, batchAcceptScenario, type BatchAcceptOutcome } from './scenarios/batch-accept.js';
import { e2eScenario, type E2eOutcome } from './scenarios/e2e.js';
import { growthScenario, type GrowthOutcome } from './scenarios/growth.js';
import { latencyScenario, type LatencyOutcome } from './scenarios/latency.js';
import { WAIT_SECONDS, openFilesProblem, waitsScenario, type WaitsOutcome } from './scenarios/waits.js';

/**
 * `npm run bench [-- flags]`: the service's throughput, latency and growth against baselines
 * measured in the same run (see bench/README.md). Starts its own redis-server and every process
 * it measures, on 127.0.0.1, and stops them all on the way out (also on Ctrl-C and errors).
 */

const USAGE = `npm run bench -- [flags]
  --quick              short run: 1 round, 3 s accept runs, fewer operations everywhere
  --rounds N           rounds of each alternating comparison (default 3, quick 1)
  --duration S         seconds per accept measurement and latency run (default 10, quick 3)
  --ops N              operations per end-to-end run (default 50000, the issue's; quick 10000)
  --concurrency N      HTTP connections (default 64)
  --only LIST          scenarios, comma-separated: accept,batch-accept,e2e,latency,growth,waits
                       (default all; waits is left out, with a note, when ulimit -n is too low
                       for it)
  --memory-ops N       operations for Redis memory per op (default 20000, quick 5000)
  --list-large N       operations in the large connection of the list test (default 100000)
  --rss-ops N          operations for the worker RSS test (default 200000, quick 50000)
  --waits N            Prefer: wait GETs held at once by the API in waits (default 5000)
  --compare REV        also build the committed revision REV and run it as 'ref' in accept and
                       e2e, alternated with the service in the same rounds (rows: service/ref,
                       ref/naive); --ref instead benches REV alone`;

const values = parseFlags(
  {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    ops: { type: 'string' },
    concurrency: { type: 'string', default: '64' },
    only: { type: 'string' },
    'memory-ops': { type: 'string' },
    'list-large': { type: 'string', default: '100000' },
    'rss-ops': { type: 'string' },
    waits: { type: 'string' },
    compare: { type: 'string' },
  },
  USAGE,
);

const quick = values.quick;
const ISSUE_E2E_OPS = 50_000;
const options = {
  quick,
  rounds: intFlag('rounds', values.rounds, quick ? 1 : 3),
  // Accept runs of 10 s after a 3 s warm-up: shorter runs weigh the fresh worker's JIT warm-up
  // enough to move the service/naive ratio.
  durationS: intFlag('duration', values.duration, quick ? 3 : 10),
  // One round of 50,000 (service, naive, raw) lasts about 40 s on 2 cores.
  ops: intFlag('ops', values.ops, quick ? 10_000 : ISSUE_E2E_OPS),
  concurrency: intFlag('concurrency', values.concurrency, 64),
  memoryOps: intFlag('memory-ops', values['memory-ops'], quick ? 5_000 : 20_000),
  listLarge: intFlag('list-large', values['list-large'], 100_000),
  rssOps: intFlag('rss-ops', values['rss-ops'], quick ? 50_000 : 200_000),
  waits: intFlag('waits', values.waits, 5_000),
  compare: values.compare,
};
const SCENARIOS = ['accept', 'batch-accept', 'e2e', 'latency', 'growth', 'waits'] as const;
type Scenario = (typeof SCENARIOS)[number];
const selected = new Set<Scenario>();
for (const name of (values.only ?? SCENARIOS.join(',')).split(',')) {
  const scenario = SCENARIOS.find((known) => known === name.trim());
  if (!scenario) {
    const tool = ['profile', 'concurrency'].includes(name.trim()) ? `; ${name.trim()} is a tool now: npx tsx bench/tools/${name.trim()}.ts --help` : '';
    process.stderr.write(`unknown scenario '${name}'; choose from ${SCENARIOS.join(', ')}${tool}\n`);
    process.exit(2);
  }
  selected.add(scenario);
}
// waits holds thousands of sockets at once: with too few open files allowed, a run of every
// scenario leaves it out (and says so), and --only waits stops here rather than after a build.
const filesProblem = selected.has('waits') ? openFilesProblem(options.waits) : undefined;
if (filesProblem) {
  if (values.only !== undefined) {
    process.stderr.write(`${filesProblem}\n`);
    process.exit(2);
  }
  selected.delete('waits');
}

interface Outcomes {
  accept?: AcceptOutcome;
  batchAccept?: BatchAcceptOutcome;
  e2e?: E2eOutcome;
  latency?: LatencyOutcome;
  growth?: GrowthOutcome;
  waits?: WaitsOutcome;
}

async function runScenarios(ctx: BenchContext): Promise<Record<string, unknown>> {
  const { log } = ctx;
  log(
    `options: ${options.rounds} round(s), accept ${options.durationS} s at c=${options.concurrency}, e2e ${fmt(options.ops)} ops` +
      `${options.ops < ISSUE_E2E_OPS ? ` (not the issue's ${fmt(ISSUE_E2E_OPS)}; short runs weigh JIT warm-up more)` : ''}` +
      `, scenarios ${[...selected].join(',')}`,
  );
  if (filesProblem) log(`waits left out: ${filesProblem}`);
  let ref: RefBuild | undefined;
  if (options.compare && (selected.has('accept') || selected.has('e2e'))) {
    ref = buildComparedRevision(ctx, options.compare);
    log(`ref: git ${ref.rev}, run as 'ref' next to the service in accept and e2e`);
  }

  const outcomes: Outcomes = {};
  // A scenario that fails (on a shared machine, someone's broad pkill can stop a measured
  // process) is run again from the start while tries remain.
  const timed = async <T>(name: string, run: () => Promise<T>): Promise<T> => {
    log(`\n== ${name} ==`);
    const started = performance.now();
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await run();
        log(`  (${((performance.now() - started) / 1000).toFixed(0)} s)`);
        return result;
      } catch (error) {
        if (ctx.stopping() || attempt >= ctx.retries) throw error;
        log(`  failed (${error instanceof Error ? error.message.split('\n')[0] : String(error)}); running the scenario again`);
      }
    }
  };
  if (selected.has('accept')) {
    outcomes.accept = await timed(`accept: POST {} at c=${options.concurrency}, LOG_LEVEL=${ctx.serviceEnv.LOG_LEVEL ?? 'info'}, worker running`, () =>
      acceptScenario(ctx, { rounds: options.rounds, durationS: options.durationS, warmupS: quick ? 1 : 3, concurrency: options.concurrency, ...(ref ? { ref } : {}) }),
    );
  }
  if (selected.has('batch-accept')) {
    outcomes.batchAccept = await timed(
      `batch-accept: creates through $batch (${BATCH_SIZE} per request) vs single POSTs, c=${options.concurrency} requests, LOG_LEVEL=${ctx.serviceEnv.LOG_LEVEL ?? 'info'}, worker running`,
      () => batchAcceptScenario(ctx, { rounds: options.rounds, durationS: options.durationS, warmupS: quick ? 1 : 3, concurrency: options.concurrency }),
    );
  }
  if (selected.has('e2e')) {
    outcomes.e2e = await timed(`end to end: ${fmt(options.ops)} operations from POST to terminal`, () =>
      e2eScenario(ctx, { rounds: options.rounds, ops: options.ops, concurrency: options.concurrency, ...(ref ? { ref } : {}) }),
    );
  }
  if (selected.has('latency')) {
    outcomes.latency = await timed('latency', () =>
      latencyScenario(ctx, {
        rounds: options.rounds,
        durationS: options.durationS,
        concurrency: options.concurrency,
        ...(outcomes.accept ? { peakRps: outcomes.accept.medianRps.service } : {}),
        sequentialOps: quick ? 100 : 200,
      }),
    );
  }
  if (selected.has('growth')) {
    outcomes.growth = await timed('growth', () =>
      growthScenario(ctx, {
        memoryOps: options.memoryOps,
        listSmall: 100,
        listLarge: options.listLarge,
        listSamples: 200,
        rssOps: options.rssOps,
        rssWarmupOps: quick ? 5_000 : 10_000,
        concurrency: options.concurrency,
      }),
    );
  }

  if (selected.has('waits')) {
    outcomes.waits = await timed(`waits: ${fmt(options.waits)} GETs with Prefer: wait=${WAIT_SECONDS} held by one API until their operations end`, () =>
      waitsScenario(ctx, { rounds: options.rounds, held: options.waits, warmup: Math.min(500, options.waits) }),
    );
  }

  const rows = summaryRows(outcomes);
  log(
    `\n== summary (${options.rounds} round(s): ratios are medians of same-round ratios, other values medians; both over` +
      ` the runs that other processes disturbed by at most ${ctx.maxOtherLoadPct}% of a core, all runs when none) ==`,
  );
  printTable(rows, log);
  return { options, summary: rows, ...outcomes };
}

/** "service 66/33/38; ref 64/32/37; …": each target's API/worker/Redis CPU µs, those present. */
function cpuList(cpu: Partial<Record<string, { api: number; worker: number; redis: number }>>, targets: string[]): string {
  return targets
    .flatMap((target) => {
      const value = cpu[target];
      return value ? [`${target} ${fmt(value.api)}/${fmt(value.worker)}/${fmt(value.redis)}`] : [];
    })
    .join('; ');
}

function summaryRows({ accept, batchAccept, e2e, latency, growth, waits }: Outcomes): SummaryRow[] {
  const rows: SummaryRow[] = [];
  const x = (value: number) => `${fmt(value, 2)}×`;
  const check = (value: number, limit: number, atLeast: boolean) => (Number.isFinite(value) ? (atLeast ? value >= limit : value <= limit) : false);
  const rounds = (r: { rounds: number[]; clean: number }) =>
    `rounds ${r.rounds.map((value) => fmt(value, 2)).join(', ')}; ${r.clean} undisturbed`;
  if (accept) {
    const { service, naive, bare } = accept.medianRps;
    const { naive: vsNaive, bare: vsBare } = accept.ratios;
    rows.push({
      metric: 'accept: service / naive (same-round ratio)',
      measured: `${x(vsNaive.value)} (${rounds(vsNaive)})`,
      target: '≥ 1.5×',
      pass: check(vsNaive.value, 1.5, true),
    });
    rows.push({ metric: '  medians: service, naive, bare req/s', measured: `${fmt(service)}, ${fmt(naive)}, ${fmt(bare)}`, target: 'info' });
    rows.push({ metric: 'accept: service / bare Hono', measured: `${x(vsBare.value)} (${rounds(vsBare)})`, target: 'info' });
    if (accept.ref && accept.ratios.ref && accept.ratios.refNaive) {
      rows.push({ metric: `accept: service / ref ${accept.ref}`, measured: `${x(accept.ratios.ref.value)} (${rounds(accept.ratios.ref)})`, target: 'info' });
      rows.push({
        metric: '  ref / naive (same-round ratio)',
        measured: `${x(accept.ratios.refNaive.value)} (${rounds(accept.ratios.refNaive)}); ref ${fmt(accept.medianRps.ref ?? Number.NaN)} req/s`,
        target: 'info',
      });
    }
    rows.push({ metric: '  CPU µs/req api, worker, redis', measured: cpuList(accept.medianCpu, ['service', 'ref', 'naive', 'bare']), target: 'info' });
  }
  if (batchAccept) {
    const { single, batch } = batchAccept.medianOpsPerS;
    const cpu = batchAccept.medianCpuPerOp;
    const { single: singleMissed, batch: batchMissed } = batchAccept.notCreated;
    const statuses = (byStatus: Record<string, number>) =>
      Object.entries(byStatus)
        .map(([status, count]) => `${fmt(count)}× ${status}`)
        .join(', ');
    rows.push({
      metric: `batch-accept: ops/s through $batch of ${batchAccept.batchSize} / single POSTs (same-round ratio)`,
      measured: `${x(batchAccept.ratio.value)} (${rounds(batchAccept.ratio)})`,
      target: '≥ 3×',
      pass: check(batchAccept.ratio.value, 3, true),
    });
    rows.push({ metric: '  medians: $batch, single ops/s', measured: `${fmt(batch)}, ${fmt(single)}`, target: 'info' });
    rows.push({
      metric: '  CPU µs per accepted op, $batch vs single: API, worker, Redis',
      measured:
        `${fmt(cpu.batch.api)} vs ${fmt(cpu.single.api)}, ${fmt(cpu.batch.worker)} vs ${fmt(cpu.single.worker)},` +
        ` ${fmt(cpu.batch.redis)} vs ${fmt(cpu.single.redis)}`,
      target: 'info',
    });
    rows.push({
      metric: '  creates not answered 201 (all runs, warm-ups included)',
      measured:
        `$batch ${fmt(batchMissed.count)} of ${fmt(batchMissed.of)}${batchMissed.count ? ` (${statuses(batchMissed.byStatus)})` : ''};` +
        ` single ${fmt(singleMissed.count)} of ${fmt(singleMissed.of)}${singleMissed.count ? ` (${statuses(singleMissed.byStatus)})` : ''}`,
      target: 'none',
      pass: batchMissed.count === 0 && singleMissed.count === 0,
    });
  }
  if (e2e) {
    const { service, naive, raw } = e2e.medianOpsPerS;
    const { naive: vsNaive, raw: vsRaw } = e2e.ratios;
    rows.push({
      metric: `end to end (${fmt(e2e.ops)} ops): service / naive`,
      measured: `${x(vsNaive.value)} (${rounds(vsNaive)})`,
      target: '≥ 1.2×',
      pass: check(vsNaive.value, 1.2, true),
    });
    rows.push({
      metric: 'end to end: service / raw BullMQ',
      measured: `${x(vsRaw.value)} (${rounds(vsRaw)})`,
      target: '≥ 0.5×',
      pass: check(vsRaw.value, 0.5, true),
    });
    rows.push({ metric: '  medians: service, naive, raw ops/s', measured: `${fmt(service)}, ${fmt(naive)}, ${fmt(raw)}`, target: 'info' });
    if (e2e.ref && e2e.ratios.ref && e2e.ratios.refNaive) {
      rows.push({ metric: `end to end: service / ref ${e2e.ref}`, measured: `${x(e2e.ratios.ref.value)} (${rounds(e2e.ratios.ref)})`, target: 'info' });
      rows.push({
        metric: '  ref / naive (same-round ratio)',
        measured: `${x(e2e.ratios.refNaive.value)} (${rounds(e2e.ratios.refNaive)}); ref ${fmt(e2e.medianOpsPerS.ref ?? Number.NaN)} ops/s`,
        target: 'info',
      });
    }
    rows.push({ metric: '  CPU µs/op api, worker, redis', measured: cpuList(e2e.medianCpu, ['service', 'ref', 'naive', 'raw']), target: 'info' });
  }
  if (latency) {
    rows.push({
      metric: `POST p99 at half peak (${fmt(latency.rate)} req/s)`,
      measured: `${fmt(latency.p99, 2)} ms (p50 ${fmt(latency.p50, 2)} ms), evenly paced`,
      target: '≤ 10 ms',
      pass: check(latency.p99, 10, false),
    });
    rows.push({
      metric: '  naive service, same rate, evenly paced',
      measured: `${fmt(latency.naive.p99, 2)} ms (p50 ${fmt(latency.naive.p50, 2)} ms)`,
      target: 'info',
    });
    rows.push({
      metric: '  service, same rate, autocannon overallRate (bursts)',
      measured: `${fmt(latency.burstyP99, 2)} ms (p50 ${fmt(latency.burstyP50, 2)} ms)`,
      target: 'info',
    });
    const { service, naive } = latency.completion;
    rows.push({
      metric: 'median 201 → completed, idle',
      measured: `${fmt(service.p50, 2)} ms (p99 ${fmt(service.p99, 2)}; naive ${fmt(naive.p50, 2)})`,
      target: '≤ 15 ms',
      pass: check(service.p50, 15, false),
    });
  }
  if (growth) {
    const { memory, list, rss } = growth;
    rows.push({
      metric: `Redis bytes per retained terminal op (N=${fmt(memory.ops)})`,
      measured: `${fmt(memory.bytesPerOp, 1)} B`,
      target: '≤ 600 B',
      pass: check(memory.bytesPerOp, 600, false),
    });
    rows.push({
      metric: "  BullMQ's completed-job history (bounded; not counted above)",
      measured: `${fmt(memory.jobHistory.jobs)} jobs, ${fmt(memory.jobHistory.bytes / 1024)} KiB`,
      target: 'info',
    });
    rows.push({
      metric: `list $top=100: ${fmt(list.large)} vs ${fmt(list.small)} ops (HTTP)`,
      measured: `${fmt(list.http.ratio, 2)}× (${fmt(list.http.large, 2)} vs ${fmt(list.http.small, 2)} ms; store ${fmt(list.store.ratio, 2)}×)`,
      target: '≤ 1.5×',
      pass: check(list.http.ratio, 1.5, false),
    });
    const mib = (bytes: number) => fmt(bytes / 1048576, 1);
    const signed = (pct: number) => `${pct >= 0 ? '+' : ''}${fmt(pct, 1)}`;
    rows.push({
      metric: `worker RSS over ${fmt(rss.ops)} ops, after full GC`,
      measured: `${mib(rss.afterFullGc.worker.rssBefore)} → ${mib(rss.afterFullGc.worker.rssAfter)} MiB (${signed(rss.workerGcGrowthPct)}%)`,
      target: 'no growth (≤ +10%)',
      pass: check(rss.workerGcGrowthPct, 10, false),
    });
    const heap = rss.afterFullGc.worker;
    rows.push({
      metric: '  worker JS heap after full GC: used, total',
      measured: `${mib(heap.heapUsedBefore)} → ${mib(heap.heapUsedAfter)}, ${mib(heap.heapTotalBefore)} → ${mib(heap.heapTotalAfter)} MiB`,
      target: 'info (a leak grows "used")',
    });
    rows.push({
      metric: '  worker RSS as is (no forced GC)',
      measured: `${mib(rss.workerBefore)} → ${mib(rss.workerAfter)} MiB (${signed(rss.growthPct)}%; 2nd half ${signed(rss.secondHalfGrowthPct)}%)`,
      target: 'info',
    });
  }
  if (waits) {
    const ms = (value: number) => `${fmt(value, 1)} ms`;
    const list = (pick: (run: WaitsOutcome['rounds'][number]) => string) => waits.rounds.map(pick).join(', ');
    const kib = (bytes: number) => `${fmt(bytes / 1024, 1)} KiB`;
    const undisturbed = `${waits.clean} undisturbed`;
    rows.push({
      metric: `held GETs (${fmt(waits.held)} at once, Prefer: wait=${WAIT_SECONDS}): answers`,
      measured: `${fmt(waits.answers.ok)} of ${fmt(waits.answers.expected)} 200, terminal, Preference-Applied, after the release, before the wait ran out`,
      target: 'all',
      pass: waits.answers.ok === waits.answers.expected,
    });
    rows.push({
      metric: '  terminal write → answer at client: p50, p99, max',
      measured:
        `${ms(waits.latency.p50)}, ${ms(waits.latency.p99)}, ${ms(waits.latency.max)} (max per round ${list((run) => fmt(run.latency.max))} ms;` +
        ` the bench's own event-loop delay meanwhile, max ${ms(waits.clientLoopMax)})`,
      target: 'info',
    });
    rows.push({
      metric: '  API RSS per held request',
      measured: `${kib(waits.bytesPerHeld)} (rounds ${list((run) => fmt(run.rss.perHeld / 1024, 1))}; ${undisturbed})`,
      target: 'info',
    });
    rows.push({
      metric: '  API JS heap per held request, after full GC',
      measured: `${kib(waits.heapPerHeldAfterGc)} (rounds ${list((run) => fmt(run.afterFullGc.heapPerHeld / 1024, 1))})`,
      target: 'info',
    });
    rows.push({
      metric: '  API event-loop delay p99 (max): arriving, held, answering',
      measured:
        `${ms(waits.loopP99.opening)} (${ms(waits.loopMax.opening)}), ${ms(waits.loopP99.held)} (${ms(waits.loopMax.held)}),` +
        ` ${ms(waits.loopP99.answering)} (${ms(waits.loopMax.answering)}); /metrics p99 after the answers ${ms(waits.metricsLagP99)}`,
      target: 'info (idle: 10 ms)',
    });
    rows.push({
      metric: `  all ${fmt(waits.held)} GETs held after; release → last answer`,
      measured: `${fmt(waits.holdAllS, 2)} s; ${fmt(waits.answerAllS, 2)} s`,
      target: 'info',
    });
  }
  return rows;
}

runSession(values, { results: 'latest', defaultRetries: quick ? 1 : 2 }, runScenarios);
