import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { driveToTerminal, type CpuPerOp } from '../lib/drive.js';
import type { Child } from '../lib/harness.js';
import { intFlag, parseFlags, RESULTS_DIR, runSession } from '../lib/session.js';
import { fmt } from '../lib/stats.js';
import { startSystem, type BenchContext, type TargetKind } from '../lib/systems.js';
import { formatProfileSummary, summarizeCpuProfile, type CpuProfile, type ProfileSummary } from './cpuprofile-summary.js';

/**
 * An investigation tool, not a target: where the time goes.
 *   npx tsx bench/tools/profile.ts [--ops N] [--concurrency N] [session flags, --help]
 * N operations end to end (POST at concurrency 64 until all terminal) with the service API and
 * worker under `node --cpu-prof`, then
 *  - Redis INFO commandstats per operation (calls and µs per op for every command and script;
 *    commands run inside a script count both under their own name and in the script's µs),
 *  - Redis, API and worker CPU µs per operation (from INFO cpu and /proc),
 *  - self and inclusive time by package and function from both .cpuprofile files.
 * The naive baseline runs the same load (without profiling) for its commandstats. The profiles
 * land in bench/results/profiles/, the report in bench/results/profile.txt and .json.
 */
interface ProfileOptions {
  ops: number;
  concurrency: number;
  outDir: string;
}

interface CommandCost {
  command: string;
  callsPerOp: number;
  usecPerOp: number;
  usecPerCall: number;
}

interface RedisCost {
  ops: number;
  opsPerS: number;
  /** Redis process CPU (INFO used_cpu_user + used_cpu_sys) per op, µs. */
  redisCpuUsecPerOp: number;
  cpu: CpuPerOp;
  otherLoadPct: number;
  commands: CommandCost[];
  /** The measured window in ms since each process was spawned (to cut its CPU profile). */
  window: { api?: [number, number]; worker?: [number, number] };
}

interface ProfileOutcome {
  service: RedisCost;
  naive: RedisCost;
  api?: ProfileSummary;
  worker?: ProfileSummary;
  naiveApi?: ProfileSummary;
  naiveWorker?: ProfileSummary;
  files: string[];
  text: string;
}

async function redisCpuSeconds(redis: Redis): Promise<number> {
  const info = await redis.info('cpu');
  const value = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0);
  return value('used_cpu_user') + value('used_cpu_sys');
}

async function commandStats(redis: Redis): Promise<Map<string, { calls: number; usec: number }>> {
  const info = await redis.info('commandstats');
  const stats = new Map<string, { calls: number; usec: number }>();
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/gm)) {
    stats.set(match[1]!, { calls: Number(match[2]), usec: Number(match[3]) });
  }
  return stats;
}

async function measure(ctx: BenchContext, kind: TargetKind, options: ProfileOptions, profileDir?: string): Promise<RedisCost> {
  await ctx.redis.flushall();
  // One directory per process, default file names: a process run through tsx has a second
  // thread (the module loader) that writes its own profile; the main thread's is tid 0.
  const profiled = (name: string) => (profileDir ? ['--cpu-prof', `--cpu-prof-dir=${join(profileDir, `${kind}-${name}`)}`] : []);
  const system = await startSystem(ctx, kind, { apiNodeArgs: profiled('api'), workerNodeArgs: profiled('worker') });
  try {
    const timeoutMs = 120_000 + options.ops * 5;
    await driveToTerminal(ctx, system, { connectionId: 'warmconn', amount: 2000, concurrency: options.concurrency, timeoutMs });
    await ctx.redis.config('RESETSTAT');
    const cpuBefore = await redisCpuSeconds(ctx.redis);
    const from = performance.now();
    const run = await driveToTerminal(ctx, system, { connectionId: 'benchconn', amount: options.ops, concurrency: options.concurrency, timeoutMs });
    const to = from + run.totalS * 1000;
    const cpuAfter = await redisCpuSeconds(ctx.redis);
    const window = (child: Child | undefined): [number, number] | undefined => (child ? [from - child.spawnedAt, to - child.spawnedAt] : undefined);
    const apiWindow = window(system.api);
    const workerWindow = window(system.worker);
    const stats = await commandStats(ctx.redis);
    const ops = run.accepted;
    const commands = [...stats]
      // INFO and CONFIG are the bench's; its polling (ZCARD or GET every 20 ms) stays, at a few
      // hundredths of a call per op.
      .filter(([command]) => command !== 'info' && command !== 'config')
      .map(([command, { calls, usec }]) => ({ command, callsPerOp: calls / ops, usecPerOp: usec / ops, usecPerCall: usec / Math.max(calls, 1) }))
      .sort((a, b) => b.usecPerOp - a.usecPerOp);
    return {
      ops,
      opsPerS: run.opsPerS,
      redisCpuUsecPerOp: ((cpuAfter - cpuBefore) * 1e6) / ops,
      cpu: run.cpu,
      otherLoadPct: run.otherLoadPct,
      commands,
      window: { ...(apiWindow ? { api: apiWindow } : {}), ...(workerWindow ? { worker: workerWindow } : {}) },
    };
  } finally {
    await system.stop();
  }
}

async function profileScenario(ctx: BenchContext, options: ProfileOptions): Promise<ProfileOutcome> {
  const profileDir = join(options.outDir, 'profiles');
  mkdirSync(profileDir, { recursive: true });
  const names = ['service-api', 'service-worker', 'naive-api', 'naive-worker'];
  rmSync(profileDir, { recursive: true, force: true });
  mkdirSync(profileDir, { recursive: true });

  const service = await measure(ctx, 'service', options, profileDir);
  const naive = await measure(ctx, 'naive', options, profileDir);
  // Each process's main-thread profile, moved to profiles/<kind>-<role>.cpuprofile.
  const files = names.map((name) => {
    const dir = join(profileDir, name);
    const main = existsSync(dir) ? readdirSync(dir).find((file) => /\.\d+\.0\.\d+\.cpuprofile$/.test(file)) : undefined;
    const target = join(profileDir, `${name}.cpuprofile`);
    if (main) renameSync(join(dir, main), target);
    rmSync(dir, { recursive: true, force: true });
    return target;
  });
  const summarize = (file: string, window: [number, number] | undefined) => {
    if (!existsSync(file)) return undefined;
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
    return summarizeCpuProfile(profile, window ? { fromMs: window[0], toMs: window[1] } : {});
  };
  const api = summarize(files[0]!, service.window.api);
  const worker = summarize(files[1]!, service.window.worker);
  const naiveApi = summarize(files[2]!, naive.window.api);
  const naiveWorker = summarize(files[3]!, naive.window.worker);

  const lines: string[] = [];
  const costTable = (title: string, cost: RedisCost) => {
    lines.push(
      `${title}: ${cost.ops} ops at ${fmt(cost.opsPerS)} ops/s end to end; CPU µs/op: redis ${fmt(cost.redisCpuUsecPerOp, 1)} (INFO cpu),` +
        ` api ${fmt(cost.cpu.api)}, worker ${fmt(cost.cpu.worker)}, bench/autocannon ${fmt(cost.cpu.bench)}; other load ${fmt(cost.otherLoadPct)}%`,
    );
    lines.push(`  ${'command'.padEnd(34)} ${'calls/op'.padStart(9)} ${'µs/op'.padStart(8)} ${'µs/call'.padStart(8)}`);
    for (const row of cost.commands) {
      lines.push(`  ${row.command.padEnd(34)} ${row.callsPerOp.toFixed(2).padStart(9)} ${row.usecPerOp.toFixed(2).padStart(8)} ${row.usecPerCall.toFixed(2).padStart(8)}`);
    }
  };
  costTable('Redis per operation, service (profiled)', service);
  costTable('Redis per operation, naive', naive);
  const during = `during the ${service.ops} measured ops only`;
  if (api) lines.push(formatProfileSummary(`service API CPU profile, ${during}`, api, service.ops));
  if (worker) lines.push(formatProfileSummary(`service worker CPU profile, ${during}`, worker, service.ops));
  // The naive baseline's, for what the same HTTP server, ioredis and BullMQ cost with nothing else.
  const packagesOnly = (summary: ProfileSummary): ProfileSummary => ({ ...summary, selfByFunction: [], inclusiveByFunction: [] });
  if (naiveApi) lines.push(formatProfileSummary(`naive API CPU profile (packages), ${during}`, packagesOnly(naiveApi), naive.ops));
  if (naiveWorker) lines.push(formatProfileSummary(`naive worker CPU profile (packages), ${during}`, packagesOnly(naiveWorker), naive.ops));
  const text = lines.join('\n');
  return {
    service,
    naive,
    ...(api ? { api } : {}),
    ...(worker ? { worker } : {}),
    ...(naiveApi ? { naiveApi } : {}),
    ...(naiveWorker ? { naiveWorker } : {}),
    files,
    text,
  };
}

const USAGE = `npx tsx bench/tools/profile.ts [flags]
  --ops N              operations profiled (default 20000)
  --concurrency N      HTTP connections (default 64)`;
const values = parseFlags({ ops: { type: 'string' }, concurrency: { type: 'string' } }, USAGE);
const options = { ops: intFlag('ops', values.ops, 20_000), concurrency: intFlag('concurrency', values.concurrency, 64), outDir: RESULTS_DIR };
runSession(values, { results: 'profile', defaultRetries: 2 }, async (ctx) => {
  ctx.log(`\n== profile: ${fmt(options.ops)} operations at c=${options.concurrency} ==`);
  const { text, ...profile } = await profileScenario(ctx, options);
  ctx.log(text);
  return { options, profile };
});
