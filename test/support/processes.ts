import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Real service processes for end-to-end tests: spawn the API or a worker with `node --import tsx`
 * (the process id is node's own, so a signal reaches the service, not a wrapper), capture its
 * output, wait for readiness with a deadline, and kill whatever is left after a test.
 */

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ENTRYPOINTS = { api: 'src/api/main.ts', worker: 'src/worker/main.ts' } as const;
export type ServiceRole = keyof typeof ENTRYPOINTS;

/** How much of a child's output a failure message quotes. */
const OUTPUT_TAIL_CHARS = 6000;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One pino JSON line of a child's stdout. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

interface LogWaiter {
  predicate: (line: LogLine) => boolean;
  resolve: (line: LogLine) => void;
}

export class ServiceProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  private stdout = '';
  private stderr = '';
  private partial = '';
  private waiters: LogWaiter[] = [];
  private exitInfo: ExitInfo | undefined;
  private readonly exited: Promise<ExitInfo>;

  constructor(
    readonly name: string,
    readonly role: ServiceRole,
    env: Record<string, string>,
  ) {
    this.child = spawn(process.execPath, ['--import', 'tsx', ENTRYPOINTS[role]], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.onStdout(chunk));
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
      // A spawn that fails (no node binary) never emits exit.
      this.child.once('error', (error) => {
        this.stderr += `spawn error: ${error.message}\n`;
        this.exitInfo ??= { code: -1, signal: null };
        resolve(this.exitInfo);
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Undefined while the process runs. */
  get exit(): ExitInfo | undefined {
    return this.exitInfo;
  }

  /** The last part of stdout and stderr, for failure messages. */
  output(): string {
    const tail = (text: string) => (text.length > OUTPUT_TAIL_CHARS ? `…${text.slice(-OUTPUT_TAIL_CHARS)}` : text);
    const state = this.exitInfo ? `exited ${JSON.stringify(this.exitInfo)}` : 'running';
    return `--- ${this.name} (${this.role}, pid ${this.pid}, ${state}) stdout:\n${tail(this.stdout)}\n--- ${this.name} stderr:\n${tail(this.stderr)}`;
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

  /** Resolves with the exit code and signal; rejects when the process still runs at the deadline. */
  async waitForExit(timeoutMs: number): Promise<ExitInfo> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${this.name} still runs ${timeoutMs} ms later\n${this.output()}`)),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends a signal when the process still runs; true when it was sent. */
  signal(signal: NodeJS.Signals): boolean {
    if (this.exitInfo || this.child.exitCode !== null || this.child.signalCode !== null) return false;
    return this.child.kill(signal);
  }

  /** SIGKILL (when still running) and wait for the exit. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited;
  }

  private onStdout(chunk: string): void {
    this.stdout += chunk;
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
