import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUE_NAME } from '../../src/shared/queue.js';
import { OperationStore } from '../../src/shared/store.js';
import { driveToTerminal } from '../lib/drive.js';
import { processRssBytes, sleep } from '../lib/harness.js';
import { TENANT_ID } from '../lib/load.js';
import { GC_PROBE, gcProbe, type GcProbe } from '../lib/probes.js';
import { median } from '../lib/stats.js';
import { SERVICE_PREFIX, serviceKeys, startSystem, type BenchContext, type System } from '../lib/systems.js';

/**
 * Scenario 4: growth.
 * (a) Redis memory per retained terminal operation: used_memory delta / N after N operations went
 *     through the service end to end, with a per-key breakdown. BullMQ keeps the newest
 *     completed batch jobs for the dashboard (src/shared/queue.ts): a bounded amount, not a cost
 *     per operation, so it is measured on its own and removed before the per-operation figures.
 * (b) The cost of listing a page ($top=100) in a connection with 100 operations versus 100,000
 *     (created directly with OperationStore), over HTTP and in-process: it must be flat.
 * (c) Worker RSS before and after a long run of operations, as it is and right after a forced
 *     full GC (so V8 growing its heap lazily is told apart from a leak).
 */
export interface GrowthOptions {
  memoryOps: number;
  listSmall: number;
  listLarge: number;
  listSamples: number;
  rssOps: number;
  rssWarmupOps: number;
  concurrency: number;
}

export interface MemoryOutcome {
  ops: number;
  usedMemoryBefore: number;
  usedMemoryAfter: number;
  bytesPerOp: number;
  /** Bytes per operation by key kind (MEMORY USAGE). */
  breakdown: Record<string, number>;
  dbsize: number;
  /** The completed jobs BullMQ kept (bounded, whatever N), and the used_memory they took. */
  jobHistory: { jobs: number; bytes: number };
}

export interface ListOutcome {
  small: number;
  large: number;
  createLargeS: number;
  /** Median ms per page. */
  http: { small: number; large: number; ratio: number };
  store: { small: number; large: number; ratio: number };
}

export interface RssOutcome {
  ops: number;
  warmupOps: number;
  workerBefore: number;
  workerPeak: number;
  workerAfter: number;
  apiBefore: number;
  apiAfter: number;
  growthPct: number;
  /** Worker growth over the second half of the run only: ~0 once the heap has settled. */
  secondHalfGrowthPct: number;
  /** Measured right after a forced full GC (bench/lib/gc-probe.mjs): what survives is what leaks. */
  afterFullGc: Record<
    'worker' | 'api',
    { rssBefore: number; rssAfter: number; heapUsedBefore: number; heapUsedAfter: number; heapTotalBefore: number; heapTotalAfter: number }
  >;
  /** Worker RSS growth, both ends measured right after a full GC. */
  workerGcGrowthPct: number;
  opsPerS: number;
  /** RSS samples about every second: operations terminal so far, worker and API RSS. */
  samples: { done: number; worker: number; api: number }[];
}

export interface GrowthOutcome {
  memory: MemoryOutcome;
  list: ListOutcome;
  rss: RssOutcome;
}

export async function growthScenario(ctx: BenchContext, options: GrowthOptions): Promise<GrowthOutcome> {
  const memory = await memoryPerOperation(ctx, options);
  const list = await listCost(ctx, options);
  const rss = await workerRss(ctx, options);
  return { memory, list, rss };
}

async function usedMemory(redis: Redis): Promise<number> {
  const info = await redis.info('memory');
  const match = /^used_memory:(\d+)/m.exec(info);
  if (!match) throw new Error('INFO memory has no used_memory');
  return Number(match[1]);
}

/** Removes the completed jobs BullMQ kept in the service's queue; how many there were. */
async function removeCompletedJobs(redis: Redis): Promise<number> {
  const queue = new Queue(QUEUE_NAME, { connection: redis, prefix: SERVICE_PREFIX });
  try {
    let removed = 0;
    for (let batch; (batch = await queue.clean(0, 10_000, 'completed')).length > 0; ) removed += batch.length;
    return removed;
  } finally {
    await queue.close();
  }
}

async function memoryPerOperation(ctx: BenchContext, options: GrowthOptions): Promise<MemoryOutcome> {
  await ctx.redis.flushall();
  const system = await startSystem(ctx, 'service');
  const connection = { tenantId: TENANT_ID, connectionId: 'memconn' };
  try {
    await sleep(500);
    const before = await usedMemory(ctx.redis);
    const run = await driveToTerminal(ctx, system, {
      connectionId: connection.connectionId,
      amount: options.memoryOps,
      concurrency: options.concurrency,
      timeoutMs: 120_000 + options.memoryOps * 5,
    });
    await sleep(1000);
    const withHistory = await usedMemory(ctx.redis);
    const historyJobs = await removeCompletedJobs(ctx.redis);
    const after = await usedMemory(ctx.redis);
    const jobHistory = { jobs: historyJobs, bytes: withHistory - after };
    const ops = run.accepted;

    const usage = async (key: string) => Number((await ctx.redis.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')) ?? 0);
    const sampleIds = await ctx.redis.zrange(serviceKeys.index(connection), 0, 49);
    const perHash = median(await Promise.all(sampleIds.map((id) => usage(serviceKeys.operation({ ...connection, operationId: id })))));
    const bullKeys: string[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await ctx.redis.scan(cursor, 'MATCH', `${SERVICE_PREFIX}:{operations}:*`, 'COUNT', 1000);
      cursor = next;
      bullKeys.push(...keys);
    } while (cursor !== '0');
    let bullBytes = 0;
    for (const key of bullKeys) bullBytes += await usage(key);
    const breakdown = {
      'operation hash (median MEMORY USAGE)': perHash,
      'index zset': (await usage(serviceKeys.index(connection))) / ops,
      'status:completed zset': (await usage(serviceKeys.statusIndex(connection, 'completed'))) / ops,
      'status:inprogress zset': (await usage(serviceKeys.statusIndex(connection, 'inprogress'))) / ops,
      [`BullMQ keys (${bullKeys.length}, events stream included)`]: bullBytes / ops,
    };
    const outcome: MemoryOutcome = {
      ops,
      usedMemoryBefore: before,
      usedMemoryAfter: after,
      bytesPerOp: (after - before) / ops,
      breakdown,
      dbsize: await ctx.redis.dbsize(),
      jobHistory,
    };
    ctx.log(
      `  memory: ${outcome.bytesPerOp.toFixed(0)} bytes/op over ${ops} ops (dbsize ${outcome.dbsize}); ` +
        Object.entries(breakdown)
          .map(([name, bytes]) => `${name} ${bytes.toFixed(0)}`)
          .join(', ') +
        `; BullMQ's completed-job history, not counted: ${jobHistory.jobs} jobs, ${(jobHistory.bytes / 1024).toFixed(0)} KiB`,
    );
    return outcome;
  } finally {
    await system.stop();
  }
}

async function listCost(ctx: BenchContext, options: GrowthOptions): Promise<ListOutcome> {
  await ctx.redis.flushall();
  const system = await startSystem(ctx, 'service', { worker: false });
  const client = new Redis(ctx.redisUrl, { maxRetriesPerRequest: null });
  const store = new OperationStore(client, { prefix: SERVICE_PREFIX, retentionMs: 7 * 24 * 3600 * 1000 });
  try {
    const small = { tenantId: TENANT_ID, connectionId: 'listsmall' };
    const large = { tenantId: TENANT_ID, connectionId: 'listlarge' };
    await createMany(store, small.connectionId, options.listSmall);
    const started = performance.now();
    await createMany(store, large.connectionId, options.listLarge);
    const createLargeS = (performance.now() - started) / 1000;
    ctx.log(`  list: created ${options.listLarge} operations in ${createLargeS.toFixed(1)} s`);

    const headers = { authorization: `Bearer ${ctx.token}` };
    const httpPage = async (connectionId: string) => {
      const sent = performance.now();
      const response = await fetch(`${system.baseUrl}/v1.0/external/connections/${connectionId}/operations?$top=100`, { headers });
      const body = (await response.json()) as { value?: unknown[] };
      const elapsed = performance.now() - sent;
      if (response.status !== 200 || body.value?.length !== Math.min(100, connectionId === 'listsmall' ? options.listSmall : options.listLarge)) {
        throw new Error(`list ${connectionId}: ${response.status}, ${body.value?.length} items`);
      }
      return elapsed;
    };
    const storePage = async (connectionId: string) => {
      const sent = performance.now();
      await store.list({ tenantId: TENANT_ID, connectionId }, { top: 100 });
      return performance.now() - sent;
    };
    const timeBoth = async (page: (connectionId: string) => Promise<number>) => {
      const smallTimes: number[] = [];
      const largeTimes: number[] = [];
      for (let i = 0; i < 20; i++) {
        await page('listsmall');
        await page('listlarge');
      }
      for (let i = 0; i < options.listSamples; i++) {
        // Alternate, so drift (GC, other processes) hits both sides alike.
        if (i % 2 === 0) {
          smallTimes.push(await page('listsmall'));
          largeTimes.push(await page('listlarge'));
        } else {
          largeTimes.push(await page('listlarge'));
          smallTimes.push(await page('listsmall'));
        }
      }
      const s = median(smallTimes);
      const l = median(largeTimes);
      return { small: s, large: l, ratio: l / s };
    };
    const http = await timeBoth(httpPage);
    const inProcess = await timeBoth(storePage);
    ctx.log(
      `  list $top=100: HTTP median ${http.small.toFixed(2)} ms (${options.listSmall}) vs ${http.large.toFixed(2)} ms (${options.listLarge}), ratio ${http.ratio.toFixed(2)};` +
        ` store.list ${inProcess.small.toFixed(2)} vs ${inProcess.large.toFixed(2)} ms, ratio ${inProcess.ratio.toFixed(2)}`,
    );
    return { small: options.listSmall, large: options.listLarge, createLargeS, http, store: inProcess };
  } finally {
    client.disconnect();
    await system.stop();
  }
}

/** Creates `count` inprogress operations in one connection straight through the store. */
async function createMany(store: OperationStore, connectionId: string, count: number): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const index = next++;
      await store.create({ tenantId: TENANT_ID, connectionId, operationId: `op-${index}` });
    }
  };
  await Promise.all(Array.from({ length: Math.min(256, count) }, lane));
}

function gcPair(before: GcProbe, after: GcProbe) {
  return {
    rssBefore: before.rss,
    rssAfter: after.rss,
    heapUsedBefore: before.heapUsed,
    heapUsedAfter: after.heapUsed,
    heapTotalBefore: before.heapTotal,
    heapTotalAfter: after.heapTotal,
  };
}

async function workerRss(ctx: BenchContext, options: GrowthOptions): Promise<RssOutcome> {
  await ctx.redis.flushall();
  const probed = ['--expose-gc', '--import', GC_PROBE];
  const system: System = await startSystem(ctx, 'service', { apiNodeArgs: probed, workerNodeArgs: probed });
  try {
    const worker = system.worker!;
    const api = system.api!;
    const timeoutMs = 120_000 + options.rssOps * 5;
    await driveToTerminal(ctx, system, { connectionId: 'rsswarm', amount: options.rssWarmupOps, concurrency: options.concurrency, timeoutMs });
    await sleep(2000);
    const workerBefore = processRssBytes(worker.pid);
    const apiBefore = processRssBytes(api.pid);
    const workerGcBefore = await gcProbe(worker);
    const apiGcBefore = await gcProbe(api);
    const samples: RssOutcome['samples'] = [{ done: 0, worker: workerBefore, api: apiBefore }];
    const run = await driveToTerminal(ctx, system, {
      connectionId: 'rssconn',
      amount: options.rssOps,
      concurrency: options.concurrency,
      timeoutMs,
      sampleMs: 1000,
      onSample: (done) => samples.push({ done, worker: processRssBytes(worker.pid), api: processRssBytes(api.pid) }),
    });
    await sleep(3000);
    const workerAfter = processRssBytes(worker.pid);
    const apiAfter = processRssBytes(api.pid);
    const workerGcAfter = await gcProbe(worker);
    const apiGcAfter = await gcProbe(api);
    samples.push({ done: run.accepted, worker: workerAfter, api: apiAfter });
    const half = samples.find((sample) => sample.done >= run.accepted / 2) ?? samples[0]!;
    const growth = (after: number, before: number) => ((after - before) / before) * 100;
    const outcome: RssOutcome = {
      ops: run.accepted,
      warmupOps: options.rssWarmupOps,
      workerBefore,
      workerPeak: Math.max(...samples.map((sample) => sample.worker)),
      workerAfter,
      apiBefore,
      apiAfter,
      growthPct: growth(workerAfter, workerBefore),
      secondHalfGrowthPct: growth(workerAfter, half.worker),
      afterFullGc: {
        worker: gcPair(workerGcBefore, workerGcAfter),
        api: gcPair(apiGcBefore, apiGcAfter),
      },
      workerGcGrowthPct: growth(workerGcAfter.rss, workerGcBefore.rss),
      opsPerS: run.opsPerS,
      samples,
    };
    const mib = (bytes: number) => (bytes / 1048576).toFixed(1);
    const quarter = (fraction: number) => samples.find((sample) => sample.done >= run.accepted * fraction) ?? samples.at(-1)!;
    const series = (pick: (sample: RssOutcome['samples'][number]) => number) =>
      [samples[0]!, quarter(0.25), quarter(0.5), quarter(0.75), samples.at(-1)!].map((sample) => mib(pick(sample))).join(' -> ');
    ctx.log(`  rss after ${options.rssWarmupOps} warm-up ops, then at 0/25/50/75/100% of ${run.accepted} ops (${run.opsPerS.toFixed(0)} ops/s), MiB:`);
    ctx.log(`    worker ${series((sample) => sample.worker)}`);
    ctx.log(`    api    ${series((sample) => sample.api)}`);
    ctx.log(
      `  after a full GC (before -> after the run): worker RSS ${mib(workerGcBefore.rss)} -> ${mib(workerGcAfter.rss)} MiB,` +
        ` heapUsed ${mib(workerGcBefore.heapUsed)} -> ${mib(workerGcAfter.heapUsed)} MiB;` +
        ` api RSS ${mib(apiGcBefore.rss)} -> ${mib(apiGcAfter.rss)} MiB, heapUsed ${mib(apiGcBefore.heapUsed)} -> ${mib(apiGcAfter.heapUsed)} MiB`,
    );
    return outcome;
  } finally {
    await system.stop();
  }
}
