import { processCpuMicros, waitFor } from '../lib/harness.js';
import { postLoad } from '../lib/load.js';
import { buildComparedRevision, envFlag, intFlag, parseFlags, runSession } from '../lib/session.js';
import { fmt, median } from '../lib/stats.js';
import { SERVICE_PREFIX, startSystem, type System } from '../lib/systems.js';

/**
 * An investigation tool, not a target: what one change costs per accepted create.
 *   npx tsx bench/tools/ab.ts [--a-env K=V ...] [--b-env K=V ...] [--b-ref REV | --b-bare] [--slices 16] [--slice-s 3]
 * Two services, A and B, share one Redis, each with its own API, worker and REDIS_PREFIX: both
 * of the work tree's build, each with its own extra environment, or B of the committed revision
 * REV (`--b-ref`), or B the bare Hono baseline (`--b-bare`: what HTTP alone costs, at the same
 * rate with `--rate`; no worker). The create load (POST {}, c=64) goes to one of them at a time,
 * in short slices ordered A B B A A B B A …, so that whatever the machine does meanwhile falls on
 * both alike; a slice ends when its worker has finished every operation it accepted. Each
 * slice's figures are the CPU (/proc) of its API, its worker and Redis per 201 over the slice;
 * each adjacent A-B pair gives a ratio B/A, and the report gives their median and spread.
 */
const USAGE = `npx tsx bench/tools/ab.ts [flags]
  --a-env KEY=VALUE    extra environment of service A, API and worker (repeatable)
  --b-env KEY=VALUE    extra environment of service B, API and worker (repeatable)
  --b-ref REV          service B runs the committed revision REV (built apart), A the work tree
  --b-bare             B is the bare Hono baseline (HTTP alone), not the service
  --slices N           load slices in all, half on each (default 16)
  --slice-s S          seconds per slice (default 3)
  --concurrency N      HTTP connections (default 64)
  --rate N             requests per second (autocannon overallRate; default: as fast as it answers)
  --warmup-s S         seconds of load on each API before the slices (default 10)`;
const values = parseFlags(
  {
    'a-env': { type: 'string', multiple: true },
    'b-env': { type: 'string', multiple: true },
    'b-ref': { type: 'string' },
    'b-bare': { type: 'boolean' },
    slices: { type: 'string' },
    'slice-s': { type: 'string' },
    concurrency: { type: 'string' },
    rate: { type: 'string' },
    'warmup-s': { type: 'string' },
  },
  USAGE,
);
const aEnv = envFlag('a-env', values['a-env']);
const bEnv = envFlag('b-env', values['b-env']);
const slices = intFlag('slices', values.slices, 16);
const sliceS = intFlag('slice-s', values['slice-s'], 3);
const connections = intFlag('concurrency', values.concurrency, 64);
const rate = values.rate ? intFlag('rate', values.rate, 0) : undefined;
const warmupS = intFlag('warmup-s', values['warmup-s'], 10);

const CONNECTION_ID = 'abtest';
const PROCESSES = ['api', 'worker', 'redis'] as const;
type ProcessName = (typeof PROCESSES)[number];
const mapProcesses = <T>(f: (name: ProcessName) => T) => Object.fromEntries(PROCESSES.map((name) => [name, f(name)])) as Record<ProcessName, T>;
interface Slice {
  usPerReq: Record<ProcessName, number>;
  rps: number;
  bad: number;
}

runSession(values, { results: 'ab', defaultRetries: 0 }, async (ctx) => {
  const bRef = values['b-ref'];
  const bBare = values['b-bare'] === true;
  if (bBare && (bRef || Object.keys(bEnv).length > 0)) throw new Error('--b-bare takes neither --b-ref nor --b-env');
  const bBuild = bRef ? buildComparedRevision(ctx, bRef) : undefined;
  const bName = bBare ? 'the bare Hono baseline' : bBuild ? `git ${bBuild.rev}` : 'the work tree';
  ctx.log(`\n== A/B: A the work tree, env ${JSON.stringify(aEnv)}; B ${bName}, env ${JSON.stringify(bEnv)}; ${slices} slices of ${sliceS} s at c=${connections}${rate ? `, ${rate} req/s` : ''} ==`);
  const a = await startSystem(ctx, 'service', { env: aEnv, label: 'A' });
  const b = bBare
    ? await startSystem(ctx, 'bare', { label: 'B', worker: false })
    : await startSystem(ctx, 'service', { env: bEnv, label: 'B', prefix: `${SERVICE_PREFIX}-b`, ...(bBuild ? { entry: bBuild.entry } : {}) });
  const slice = async (system: System, durationS: number): Promise<Slice> => {
    const pids = { api: system.api!.pid, worker: system.worker?.pid, redis: ctx.redisPid };
    const cpu = () => mapProcesses((name) => (pids[name] === undefined ? 0 : processCpuMicros(pids[name])));
    const before = cpu();
    const terminalBefore = system.worker ? await system.terminal(CONNECTION_ID) : 0;
    const load = await postLoad(ctx.harness, { url: system.postUrl(CONNECTION_ID), token: ctx.token, connections, durationS, ...(rate ? { overallRate: rate } : {}) });
    if (system.worker) {
      await waitFor(async () => (await system.terminal(CONNECTION_ID)) - terminalBefore >= load.ok, {
        timeoutMs: 120_000,
        what: `${system.worker.name} to finish the slice's ${load.ok} operations`,
      });
    }
    const after = cpu();
    return { usPerReq: mapProcesses((name) => (after[name] - before[name]) / load.ok), rps: load.rps, bad: load.non2xx + load.errors };
  };
  // Warm-up: both JITs.
  await slice(a, warmupS);
  await slice(b, warmupS);
  const results: (Slice & { name: 'A' | 'B' })[] = [];
  for (let i = 0; i < slices; i++) {
    const name = [0, 3].includes(i % 4) ? 'A' : 'B';
    const result = await slice(name === 'A' ? a : b, sliceS);
    if (result.bad > 0) throw new Error(`${name}: ${result.bad} answers were not 2xx`);
    results.push({ name, ...result });
    const { api, worker, redis } = result.usPerReq;
    ctx.log(`  slice ${i + 1} ${name}  ${fmt(Math.round(result.rps))} req/s  CPU µs/req API ${api.toFixed(1)}, worker ${worker.toFixed(1)}, Redis ${redis.toFixed(1)}`);
  }
  const pairs: { a: Slice; b: Slice }[] = [];
  for (let i = 0; i + 1 < results.length; i += 2) {
    const [first, second] = [results[i]!, results[i + 1]!];
    pairs.push(first.name === 'A' ? { a: first, b: second } : { a: second, b: first });
  }
  const of = (name: string) => results.filter((r) => r.name === name);
  const compared = mapProcesses((name) => {
    const ratios = pairs.map((pair) => pair.b.usPerReq[name] / pair.a.usPerReq[name]);
    return {
      aUsPerReq: median(of('A').map((r) => r.usPerReq[name])),
      bUsPerReq: median(of('B').map((r) => r.usPerReq[name])),
      ratio: median(ratios),
      ratios,
    };
  });
  const summary = { ...compared.api, aRps: median(of('A').map((r) => r.rps)), bRps: median(of('B').map((r) => r.rps)), processes: compared };
  ctx.log(`req/s medians: A ${fmt(Math.round(summary.aRps))}, B ${fmt(Math.round(summary.bRps))}`);
  for (const name of PROCESSES) {
    const { aUsPerReq, bUsPerReq, ratio, ratios } = compared[name];
    if (bBare && name !== 'api') continue;
    ctx.log(
      `${name} CPU µs/req, medians: A ${aUsPerReq.toFixed(1)}, B ${bUsPerReq.toFixed(1)}; B/A ${ratio.toFixed(3)}` +
        ` (pairs ${ratios.map((r) => r.toFixed(2)).join(', ')})`,
    );
  }
  return { aEnv, bEnv, bRef, bBare, slices, sliceS, results, summary };
});
