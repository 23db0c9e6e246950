import { addRawJobs } from '../baselines/raw-bullmq.js';
import { processCpuMicros, sleep } from './harness.js';
import { postLoad, type LoadResult } from './load.js';
import type { BenchContext, System } from './systems.js';

export interface DriveOptions {
  connectionId: string;
  amount: number;
  concurrency: number;
  timeoutMs: number;
  /** Called about every `sampleMs` while the run lasts, with the operations terminal so far. */
  onSample?: (done: number) => void;
  sampleMs?: number;
}

export interface CpuPerOp {
  /** Microseconds of CPU per terminal operation, per process. */
  api: number;
  worker: number;
  redis: number;
  /** The bench process itself (autocannon, polling). */
  bench: number;
}

export interface DriveResult {
  accepted: number;
  /** Seconds from the first POST until the last 2xx (or the last addBulk). */
  acceptS: number;
  /** Seconds from the first POST until every accepted operation was terminal. */
  totalS: number;
  /** Terminal operations per second over totalS. */
  opsPerS: number;
  load?: LoadResult;
  cpu: CpuPerOp;
  /** CPU used meanwhile by processes the bench did not start, in percent of one core. */
  otherLoadPct: number;
}

const POLL_MS = 20;

/**
 * Creates `amount` operations (POSTs through autocannon, or addBulk for the raw baseline) and
 * waits until every accepted one is terminal, polling a Redis counter every 20 ms.
 */
export async function driveToTerminal(ctx: BenchContext, system: System, options: DriveOptions): Promise<DriveResult> {
  const { connectionId, amount, concurrency, timeoutMs } = options;
  const before = await system.terminal(connectionId);
  const cpu = (pid: number | undefined) => (pid === undefined ? 0 : processCpuMicros(pid));
  const apiPid = system.api?.pid;
  const workerPid = system.worker?.pid;
  const cpu0 = { api: cpu(apiPid), worker: cpu(workerPid), redis: cpu(ctx.redisPid), bench: process.cpuUsage() };

  const otherLoad = ctx.harness.foreignCpu();
  const started = performance.now();
  let acceptedAt: number | undefined;
  let accepted: number | undefined;
  let load: LoadResult | undefined;
  let loadError: unknown;
  const producing =
    system.kind === 'raw'
      ? addRawJobs(ctx.redisUrl, amount).then(() => amount)
      : postLoad(ctx.harness, { url: system.postUrl(connectionId), token: ctx.token, connections: concurrency, amount }).then((result) => {
          load = result;
          return result.ok;
        });
  void producing.then(
    (count) => {
      accepted = count;
      acceptedAt = load ? load.lastResponseAt : performance.now();
    },
    (error: unknown) => (loadError = error),
  );

  let lastSample = 0;
  let done: number;
  let finished: number;
  let end: { api: number; worker: number; redis: number; bench: number; otherLoadPct: number };
  const deadline = started + timeoutMs;
  for (;;) {
    if (loadError) throw asError(loadError);
    system.api?.assertRunning();
    system.worker?.assertRunning();
    done = (await system.terminal(connectionId)) - before;
    // Every request accepted (the usual case) is known before autocannon reports its end.
    if (done >= amount || (accepted !== undefined && done >= accepted)) {
      finished = performance.now();
      const benchCpu = process.cpuUsage(cpu0.bench);
      end = {
        api: cpu(apiPid),
        worker: cpu(workerPid),
        redis: cpu(ctx.redisPid),
        bench: benchCpu.user + benchCpu.system,
        otherLoadPct: otherLoad(),
      };
      break;
    }
    const now = performance.now();
    if (now > deadline) {
      throw new Error(`${system.kind}: only ${done} of ${accepted ?? `${amount} (still posting)`} operations terminal after ${timeoutMs} ms`);
    }
    if (options.onSample && now - lastSample >= (options.sampleMs ?? 1000)) {
      lastSample = now;
      options.onSample(done);
    }
    await sleep(POLL_MS);
  }
  // The load's own result (counts, the time of its last response) arrives up to a second later.
  await producing.catch(() => undefined);
  if (loadError) throw asError(loadError);
  const terminalCount = Math.max(done, 1);
  const totalS = (finished - started) / 1000;
  return {
    accepted: accepted ?? 0,
    acceptS: ((acceptedAt ?? finished) - started) / 1000,
    totalS,
    opsPerS: (accepted ?? 0) / totalS,
    ...(load ? { load } : {}),
    cpu: {
      api: (end.api - cpu0.api) / terminalCount,
      worker: (end.worker - cpu0.worker) / terminalCount,
      redis: (end.redis - cpu0.redis) / terminalCount,
      bench: end.bench / terminalCount,
    },
    otherLoadPct: end.otherLoadPct,
  };
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
