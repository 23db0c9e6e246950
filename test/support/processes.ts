import { fileURLToPath } from 'node:url';
import { RunningProcess } from './child-process.js';
import { TEST_SECRET } from './context.js';

/**
 * Real service processes for end-to-end tests: spawn the API or a worker with `node --import tsx`
 * (the process id is node's own, so a signal reaches the service, not a wrapper), capture its
 * output, wait for readiness with a deadline, and kill whatever is left after a test.
 */

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ENTRYPOINTS = { api: 'src/api/main.ts', worker: 'src/worker/main.ts' } as const;
export type ServiceRole = keyof typeof ENTRYPOINTS;

/** One pino JSON line of a child's stdout. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

interface LogWaiter {
  predicate: (line: LogLine) => boolean;
  resolve: (line: LogLine) => void;
}

/** The API or a worker run from source: a RunningProcess whose stdout is also read as pino
 *  JSON lines, so a test can wait for and count what the service logged. */
export class ServiceProcess extends RunningProcess {
  readonly logs: LogLine[] = [];
  private partial = '';
  private waiters: LogWaiter[] = [];

  constructor(
    name: string,
    readonly role: ServiceRole,
    env: Record<string, string>,
  ) {
    super(name, process.execPath, ['--import', 'tsx', ENTRYPOINTS[role]], { cwd: REPO_ROOT, env });
  }

  /** Resolves with the first log line (already written or still to come) that matches; rejects
   *  when the process exits first or the deadline passes. */
  async waitForLog(predicate: (line: LogLine) => boolean, timeoutMs: number, what = 'a matching log line'): Promise<LogLine> {
    const seen = this.logs.find(predicate);
    if (seen) return seen;
    let waiter: LogWaiter | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        new Promise<LogLine>((resolve) => {
          waiter = { predicate, resolve };
          this.waiters.push(waiter);
        }),
        this.exited.then((info) => {
          throw new Error(`${this.name} exited (${JSON.stringify(info)}) before logging ${what}\n${this.output()}`);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${this.name} did not log ${what} within ${timeoutMs} ms\n${this.output()}`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
      this.waiters = this.waiters.filter((w) => w !== waiter);
    }
  }

  protected override label(): string {
    return `${this.role}, ${super.label()}`;
  }

  protected override onOutput(stream: 'stdout' | 'stderr', chunk: string): void {
    super.onOutput(stream, chunk);
    if (stream !== 'stdout') return;
    const text = this.partial + chunk;
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    for (const raw of lines) {
      if (!raw.startsWith('{')) continue;
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        continue;
      }
      this.logs.push(line);
      for (const waiter of this.waiters) if (waiter.predicate(line)) waiter.resolve(line);
    }
  }
}

/**
 * The processes of one test: starts them, knows them all for failure messages, and kills every
 * one that is still alive when the test ends.
 */
export class ProcessGroup {
  private readonly processes: ServiceProcess[] = [];

  constructor(private readonly baseEnv: Record<string, string>) {}

  /** Spawns the API and resolves once `GET /readyz` answers 200. */
  async startApi(name: string, port: number, env: Record<string, string> = {}, timeoutMs = 15_000): Promise<ServiceProcess> {
    const api = this.spawn(name, 'api', { PORT: String(port), ...env });
    const url = `http://127.0.0.1:${port}/readyz`;
    await pollUntil(
      async () => {
        if (api.exit) throw new Error(`${name} exited (${JSON.stringify(api.exit)}) before it was ready\n${api.output()}`);
        try {
          const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
          await response.body?.cancel();
          return response.status === 200;
        } catch {
          return false;
        }
      },
      { timeoutMs, intervalMs: 50, what: `${name} to answer 200 on ${url}`, context: () => api.output() },
    );
    return api;
  }

  /** Spawns a worker and resolves once it logs `worker started`. */
  async startWorker(name: string, env: Record<string, string> = {}, timeoutMs = 15_000): Promise<ServiceProcess> {
    const worker = this.spawn(name, 'worker', env);
    await worker.waitForLog((line) => line.msg === 'worker started', timeoutMs, "'worker started'");
    return worker;
  }

  spawn(name: string, role: ServiceRole, env: Record<string, string> = {}): ServiceProcess {
    const child = new ServiceProcess(name, role, { ...this.baseEnv, ...env });
    this.processes.push(child);
    return child;
  }

  /** Every process's recent output, for failure messages. */
  describe(): string {
    return this.processes.map((child) => child.output()).join('\n');
  }

  async killAll(): Promise<void> {
    await Promise.all(this.processes.map((child) => child.kill()));
  }
}

/**
 * The environment a spawned service gets: only what it needs (PATH and HOME for node), so
 * nothing from the test runner's environment (a REDIS_URL, a PROCESSOR_MODULE) leaks in.
 */
export function serviceEnv(vars: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of ['PATH', 'HOME', 'TMPDIR', 'LANG']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return { ...env, ...vars };
}

/** serviceEnv for the service under test on its own key prefix: tokens signed with TEST_SECRET,
 *  loopback only, and info logs (tests read the log lines). */
export function testServiceEnv(prefix: string, vars: Record<string, string> = {}): Record<string, string> {
  return serviceEnv({ REDIS_PREFIX: prefix, AUTH_JWT_SECRET: TEST_SECRET, HOST: '127.0.0.1', LOG_LEVEL: 'info', ...vars });
}

/**
 * Timings short enough that a killed worker's jobs come back within seconds (the defaults are
 * 30 s and 15 s): for tests that kill processes or Redis, which bound recovery by these numbers.
 */
export const FAST_RECOVERY_TIMINGS = {
  WORKER_LOCK_DURATION_MS: 2000,
  WORKER_STALLED_INTERVAL_MS: 1000,
  RECONCILE_INTERVAL_MS: 1000,
  RECONCILE_AFTER_MS: 2000,
  OPERATION_BACKOFF_MS: 50,
  SHUTDOWN_TIMEOUT_MS: 5000,
} as const;

/** FAST_RECOVERY_TIMINGS as the services' environment variables. */
export const fastRecoveryEnv: Readonly<Record<string, string>> = Object.fromEntries(
  Object.entries(FAST_RECOVERY_TIMINGS).map(([name, value]) => [name, String(value)]),
);

/** The retention the services run with (OPERATION_RETENTION_SECONDS' default, 7 days), for a
 *  test's own OperationStore on their keys. */
export const SERVICE_RETENTION_MS = 7 * 24 * 60 * 60 * 1000;

export interface PollOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Completes "timed out waiting for …". */
  what: string;
  /** Appended to the timeout message (process output, last observed state). */
  context?: () => string | Promise<string>;
}

/** Calls `check` until it returns something other than false/undefined, or the deadline passes. */
export async function pollUntil<T>(check: () => Promise<T | false | undefined> | T | false | undefined, options: PollOptions): Promise<T> {
  const { timeoutMs, intervalMs = 50, what, context } = options;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== false && value !== undefined) return value;
    if (Date.now() > deadline) {
      const extra = context ? `\n${await context()}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${extra}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Runs `task` over `items` with at most `concurrency` running at once; results keep the order. */
export async function mapWithConcurrency<I, O>(items: readonly I[], concurrency: number, task: (item: I, index: number) => Promise<O>): Promise<O[]> {
  const results = new Array<O>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index]!, index);
    }
  });
  await Promise.all(lanes);
  return results;
}
