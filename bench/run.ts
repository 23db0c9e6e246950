import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';
import { Harness, REPO_ROOT } from './lib/harness.js';
import { benchToken } from './lib/load.js';
import { printTable, type SummaryRow } from './lib/report.js';
import { fmt } from './lib/stats.js';
import type { BenchContext } from './lib/systems.js';
import { acceptScenario, type AcceptOutcome } from './scenarios/accept.js';
import { concurrencyScenario, type ConcurrencyOutcome } from './scenarios/concurrency.js';
import { e2eScenario, type E2eOutcome } from './scenarios/e2e.js';
import { growthScenario, type GrowthOutcome } from './scenarios/growth.js';
import { latencyScenario, type LatencyOutcome } from './scenarios/latency.js';
import { profileScenario, type ProfileOutcome } from './scenarios/profile.js';

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
  --only LIST          scenarios, comma-separated: accept,e2e,latency,growth,profile,concurrency
                       (default accept,e2e,latency,growth)
  --profile            also run the profile scenario (CPU profiles + Redis commandstats)
  --profile-ops N      operations in the profile scenario (default 20000, quick 10000)
  --concurrency-list L WORKER_CONCURRENCY values the concurrency scenario sweeps
                       (default 10,25,50,100,200)
  --processor-ms N     delay of its stand-in HTTP processor, ms (default 20)
  --concurrency-ops N  operations per point of that sweep (default 5000, quick 2000)
  --memory-ops N       operations for Redis memory per op (default 20000, quick 5000)
  --list-large N       operations in the large connection of the list test (default 100000)
  --rss-ops N          operations for the worker RSS test (default 200000, quick 50000)
  --ref REV            bench a committed revision (git archive REV, built apart) instead of
                       the work tree
  --max-other-load P   repeat a comparison run when processes outside the bench used more
                       than P% of a core meanwhile (default 25; shared machines)
  --retries N          at most N repeats per run for that (default 2, quick 1)
  --env KEY=VALUE      extra environment for the service's processes (repeatable), e.g.
                       --env LOG_LEVEL=warn to see what logging costs
  --src                run the service from src/ through tsx instead of building it
  --no-build           reuse the last build in bench/results/dist
  --keep-logs          keep the children's logs (their directory is printed)
  --help`;

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    ops: { type: 'string' },
    concurrency: { type: 'string', default: '64' },
    only: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'profile-ops': { type: 'string' },
    'concurrency-list': { type: 'string', default: '10,25,50,100,200' },
    'processor-ms': { type: 'string', default: '20' },
    'concurrency-ops': { type: 'string' },
    'memory-ops': { type: 'string' },
    'list-large': { type: 'string', default: '100000' },
    'rss-ops': { type: 'string' },
    src: { type: 'boolean', default: false },
    ref: { type: 'string' },
    env: { type: 'string', multiple: true },
    'max-other-load': { type: 'string', default: '25' },
    retries: { type: 'string' },
    'no-build': { type: 'boolean', default: false },
    'keep-logs': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function intFlag(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed <= 0) {
    process.stderr.write(`--${name} must be a positive whole number, not '${value}'\n`);
    process.exit(2);
  }
  return parsed;
}

/** A comma-separated list of positive whole numbers, ascending and without repeats. */
function intListFlag(name: string, value: string): number[] {
  const list = [...new Set(value.split(',').map((item) => intFlag(name, item.trim(), 0)))];
  return list.sort((a, b) => a - b);
}

const quick = values.quick;
const ISSUE_E2E_OPS = 50_000;
const options = {
  quick,
  rounds: intFlag('rounds', values.rounds, quick ? 1 : 3),
  // 10 s after a 3 s warm-up: in 5 s runs after 1 s, the fresh worker still spent about 115 µs
  // per operation warming up against 75 in 15 s runs, and service/naive read 1.15x against 1.40x.
  durationS: intFlag('duration', values.duration, quick ? 3 : 10),
  // One round of 50,000 (service, naive, raw) lasts about 40 s on 2 cores.
  ops: intFlag('ops', values.ops, quick ? 10_000 : ISSUE_E2E_OPS),
  concurrency: intFlag('concurrency', values.concurrency, 64),
  profileOps: intFlag('profile-ops', values['profile-ops'], quick ? 10_000 : 20_000),
  // One sweep unless --rounds asks for more: every point starts a worker on a freshly filled Redis.
  concurrencyRounds: intFlag('rounds', values.rounds, 1),
  concurrencyList: intListFlag('concurrency-list', values['concurrency-list']),
  processorMs: intFlag('processor-ms', values['processor-ms'], 20),
  concurrencyOps: intFlag('concurrency-ops', values['concurrency-ops'], quick ? 2_000 : 5_000),
  memoryOps: intFlag('memory-ops', values['memory-ops'], quick ? 5_000 : 20_000),
  listLarge: intFlag('list-large', values['list-large'], 100_000),
  maxOtherLoadPct: intFlag('max-other-load', values['max-other-load'], 25),
  retries: values.retries === '0' ? 0 : intFlag('retries', values.retries, quick ? 1 : 2),
  rssOps: intFlag('rss-ops', values['rss-ops'], quick ? 50_000 : 200_000),
  serviceEnv: Object.fromEntries(
    (values.env ?? []).map((pair) => {
      const at = pair.indexOf('=');
      if (at <= 0) {
        process.stderr.write(`--env takes KEY=VALUE, not '${pair}'\n`);
        process.exit(2);
      }
      return [pair.slice(0, at), pair.slice(at + 1)];
    }),
  ) as Record<string, string>,
  serviceFrom: values.src ? 'src' : values.ref ? `git ${values.ref}` : 'work tree',
};
const SCENARIOS = ['accept', 'e2e', 'latency', 'growth', 'profile', 'concurrency'] as const;
type Scenario = (typeof SCENARIOS)[number];
const selected = new Set<Scenario>();
for (const name of (values.only ?? `accept,e2e,latency,growth${values.profile ? ',profile' : ''}`).split(',')) {
  const scenario = SCENARIOS.find((known) => known === name.trim());
  if (!scenario) {
    process.stderr.write(`unknown scenario '${name}'; choose from ${SCENARIOS.join(', ')}\n`);
    process.exit(2);
  }
  selected.add(scenario);
}

const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');
const output: string[] = [];
const log = (line: string) => {
  output.push(line);
  process.stdout.write(`${line}\n`);
};

const harness = new Harness();
harness.keepLogs = values['keep-logs'];
let redisServer: RedisServer | undefined;
let stopping = false;
async function shutdown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    await harness.cleanup().catch(() => harness.killAllNow());
    await redisServer?.destroy();
  }
  process.exit(code);
}
process.on('exit', () => {
  harness.killAllNow();
  redisServer?.killNow();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    process.stderr.write(`\n${signal}: stopping every process the bench started\n`);
    if (stopping) harness.killAllNow();
    void shutdown(130);
  });
}

function gitDescription(): string {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', values.ref ?? 'HEAD'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
    if (values.ref) return `${commit} (--ref ${values.ref})`;
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: REPO_ROOT, encoding: 'utf8' }).trim() !== '';
    return `${commit}${dirty ? ' (work tree has changes)' : ''}`;
  } catch {
    return 'unknown';
  }
}

/**
 * Builds the service apart from the shared dist/ (others may be running or rebuilding it), into
 * bench/results/dist, refusing a tree that does not compile (--noEmitOnError). With --ref, a
 * committed revision is exported with `git archive` (read-only) and built the same way.
 */
function buildService(): { api: string[]; worker: string[] } {
  if (values.src) return { api: ['--import', 'tsx', 'src/api/main.ts'], worker: ['--import', 'tsx', 'src/worker/main.ts'] };
  let root = REPO_ROOT;
  if (values.ref) {
    // Outside tsconfig's `include` (the exported .ts files must not join the project's
    // typecheck), and under node_modules so the build resolves the installed packages.
    root = join(REPO_ROOT, 'node_modules', '.cache', 'cops-bench-ref');
    rmSync(root, { recursive: true, force: true });
    mkdirSync(root, { recursive: true });
    const archive = spawnSync('git', ['archive', '--format=tar', values.ref, 'src', 'tsconfig.json', 'tsconfig.build.json'], {
      cwd: REPO_ROOT,
      maxBuffer: 256 * 1024 * 1024,
    });
    if (archive.status !== 0) throw new Error(`git archive ${values.ref} failed: ${archive.stderr.toString()}`);
    const untar = spawnSync('tar', ['-x', '-C', root], { input: archive.stdout });
    if (untar.status !== 0) throw new Error(`tar failed: ${untar.stderr.toString()}`);
  }
  const outDir = join(root === REPO_ROOT ? RESULTS_DIR : root, 'dist');
  if (!values['no-build'] || values.ref) {
    process.stdout.write(`building ${options.serviceFrom} into ${outDir.slice(REPO_ROOT.length)}\n`);
    const args = ['-p', join(root, 'tsconfig.build.json'), '--outDir', outDir, '--noEmitOnError', '--sourceMap', 'false'];
    const build =
      root === REPO_ROOT
        ? spawnSync('npm', ['run', 'build', '--silent', '--', ...args.slice(2)], { cwd: REPO_ROOT, stdio: 'inherit' })
        : spawnSync(process.execPath, [join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), ...args], { cwd: REPO_ROOT, stdio: 'inherit' });
    if (build.status !== 0) throw new Error('the build failed; fix it, bench a committed revision with --ref HEAD, or use --src');
  }
  return { api: [join(outDir, 'api/main.js')], worker: [join(outDir, 'worker/main.js')] };
}

interface Outcomes {
  accept?: AcceptOutcome;
  e2e?: E2eOutcome;
  latency?: LatencyOutcome;
  growth?: GrowthOutcome;
  profile?: ProfileOutcome;
  concurrency?: ConcurrencyOutcome;
}

async function main(): Promise<void> {
  const startedAt = new Date();
  const serviceEntry = buildService();
  redisServer = await startRedisServer(['--appendonly', 'no']);
  const redis = new Redis(redisServer.url, { maxRetriesPerRequest: null });
  harness.onCleanup(() => redis.disconnect());
  const redisVersion = /^redis_version:(\S+)/m.exec(await redis.info('server'))?.[1] ?? '?';
  const ctx: BenchContext = {
    harness,
    redisUrl: redisServer.url,
    redis,
    redisPid: redisServer.pid!,
    token: await benchToken(),
    serviceEntry,
    serviceEnv: options.serviceEnv,
    log,
    maxOtherLoadPct: options.maxOtherLoadPct,
    retries: options.retries,
  };
  const machine = `${cpus().length} CPU (${cpus()[0]?.model.trim() ?? '?'}), node ${process.version}, redis ${redisVersion}`;
  const envNote = Object.keys(options.serviceEnv).length ? `  service env ${JSON.stringify(options.serviceEnv)}` : '';
  log(`bench ${startedAt.toISOString()}  commit ${gitDescription()}  service from ${options.serviceFrom}${envNote}`);
  log(`machine: ${machine}; everything (load generator, API, worker, Redis) shares these cores`);
  log(
    `load average at start: ${loadavg().map((value) => value.toFixed(2)).join(' ')}; runs disturbed by more than ${options.maxOtherLoadPct}%` +
      ` of a core of foreign CPU are repeated up to ${options.retries} time(s), the least disturbed kept`,
  );
  log(
    `options: ${options.rounds} round(s), accept ${options.durationS} s at c=${options.concurrency}, e2e ${fmt(options.ops)} ops` +
      `${options.ops < ISSUE_E2E_OPS ? ` (not the issue's ${fmt(ISSUE_E2E_OPS)}; short runs weigh JIT warm-up more)` : ''}` +
      `, scenarios ${[...selected].join(',')}`,
  );

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
        if (stopping || attempt >= options.retries) throw error;
        log(`  failed (${error instanceof Error ? error.message.split('\n')[0] : String(error)}); running the scenario again`);
      }
    }
  };
  if (selected.has('accept')) {
    outcomes.accept = await timed(`accept: POST {} at c=${options.concurrency}, LOG_LEVEL=${options.serviceEnv.LOG_LEVEL ?? 'info'}, worker running`, () =>
      acceptScenario(ctx, { rounds: options.rounds, durationS: options.durationS, warmupS: quick ? 1 : 3, concurrency: options.concurrency }),
    );
  }
  if (selected.has('e2e')) {
    outcomes.e2e = await timed(`end to end: ${fmt(options.ops)} operations from POST to terminal`, () =>
      e2eScenario(ctx, { rounds: options.rounds, ops: options.ops, concurrency: options.concurrency }),
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
  if (selected.has('profile')) {
    outcomes.profile = await timed('profile', () => profileScenario(ctx, { ops: options.profileOps, concurrency: options.concurrency, outDir: RESULTS_DIR }));
    log(outcomes.profile.text);
  }
  if (selected.has('concurrency')) {
    outcomes.concurrency = await timed(
      `worker concurrency: WORKER_CONCURRENCY ${options.concurrencyList.join(',')}, ${fmt(options.concurrencyOps)} preloaded ops each,` +
        ` ${options.processorMs} ms HTTP processor`,
      () =>
        concurrencyScenario(ctx, {
          rounds: options.concurrencyRounds,
          concurrencies: options.concurrencyList,
          ops: options.concurrencyOps,
          processorMs: options.processorMs,
        }),
    );
    log(outcomes.concurrency.text);
  }

  const rows = summaryRows(outcomes);
  log(
    `\n== summary (${options.rounds} round(s): ratios are medians of same-round ratios, other values medians; both over` +
      ` the runs that other processes disturbed by at most ${options.maxOtherLoadPct}% of a core, all runs when none) ==`,
  );
  if (rows.length > 0) printTable(rows, log);
  else log('(the scenarios run have no targets)');

  mkdirSync(RESULTS_DIR, { recursive: true });
  const { profile, concurrency, ...rest } = outcomes;
  const json = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    commit: gitDescription(),
    machine,
    options,
    summary: rows,
    ...rest,
    ...(profile ? { profile: (({ text: _text, ...data }) => data)(profile) } : {}),
    ...(concurrency ? { concurrency: (({ text: _text, ...data }) => data)(concurrency) } : {}),
  };
  writeFileSync(join(RESULTS_DIR, 'latest.json'), `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(join(RESULTS_DIR, 'latest.txt'), `${output.join('\n')}\n`);
  log(`\nwritten: bench/results/latest.json, bench/results/latest.txt${harness.keepLogs ? `; logs in ${harness.dir}` : ''}`);
}

function summaryRows({ accept, e2e, latency, growth, concurrency }: Outcomes): SummaryRow[] {
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
  if (concurrency) {
    rows.push({
      metric: `worker concurrency (${fmt(concurrency.ops)} ops, ${concurrency.processorMs} ms processor)`,
      measured: `knee (≥ 90% of best ops/s) at WORKER_CONCURRENCY=${concurrency.knee}`,
      target: `info (${concurrency.rounds} round(s))`,
    });
    rows.push({
      metric: '  ops/s by WORKER_CONCURRENCY',
      measured: concurrency.points.map((point) => `${point.concurrency}: ${fmt(point.opsPerS)}`).join(', '),
      target: 'info',
    });
  }
  return rows;
}

main().then(
  () => shutdown(0),
  (error: unknown) => {
    if (stopping) return; // interrupted: the signal handler is already cleaning up
    process.stderr.write(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    void shutdown(1);
  },
);
