import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { answersOk } from '../../scripts/lib/http-ok.js';
import { BUILT_ENTRYPOINTS, REPO_ROOT, SERVICE_BUILD_DIR } from './service-build.js';
import { TEST_SECRET } from './context.js';
import { pollUntil, sleep, withTimeout } from './wait.js';
import { logMessage } from './log-messages.js';

/**
 * Child processes for tests: the service's own API and worker (compiled once per run, see
 * test/support/service-build.ts), `npm run dev`, an image's command. One wrapper for all of
 * them: output captured (and stdout read as pino JSON lines when it is), waits with deadlines,
 * signals, and a kill for cleanup.
 */

/** How much of a child's output a failure message quotes. */
const OUTPUT_TAIL_CHARS = 8000;
/** How long after the exit a wait gives pipes a grandchild still holds to deliver the last output. */
const LAST_OUTPUT_GRACE_MS = 200;
/** A compiled entry point starts in about a second on an idle machine; this bounds a two-core
 *  machine that other test files and other people's builds keep busy. */
export const PROCESS_START_DEADLINE_MS = 30_000;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One pino JSON line of a child's stdout. */
export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

export class RunningProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  /** Every stdout line that is a JSON object (the service's pino lines), in order. */
  readonly logs: LogLine[] = [];
  private partialLine = '';
  private exitInfo: ExitInfo | undefined;
  private readonly exited: Promise<ExitInfo>;
  /** Resolves after the exit once the last output is in: 'close' comes when the pipes are
   *  drained, unless a grandchild still holds them (then after a short grace). */
  private readonly outputEnded: Promise<void>;
  /** Called on every chunk of output. */
  private readonly listeners = new Set<() => void>();

  constructor(
    readonly name: string,
    command: string,
    args: readonly string[],
    options: Pick<SpawnOptions, 'cwd' | 'env' | 'detached'>,
    /** Shown in output() headers: `api`, `worker`. */
    readonly role?: string,
  ) {
    this.child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.onOutput('stdout', chunk));
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => this.onOutput('stderr', chunk));
    const closed = new Promise<void>((resolve) => this.child.once('close', () => resolve()));
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
      // A spawn that fails (no such binary) never emits exit.
      this.child.once('error', (error) => {
        this.stderr += `spawn error: ${error.message}\n`;
        this.exitInfo ??= { code: -1, signal: null };
        resolve(this.exitInfo);
      });
    });
    this.outputEnded = this.exited.then(() => Promise.race([closed, sleep(LAST_OUTPUT_GRACE_MS)]));
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
    const label = this.role ? `${this.role}, pid ${this.pid}` : `pid ${this.pid}`;
    return `--- ${this.name} (${label}, ${state}) stdout:\n${tail(this.stdout)}\n--- ${this.name} stderr:\n${tail(this.stderr)}`;
  }

  /** Resolves with the first match of `pattern` in stdout (already written or still to come);
   *  rejects when the process exits first or the deadline passes. */
  waitForOutput(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    return this.waitUntil(() => this.stdout.match(pattern) ?? undefined, timeoutMs, `print ${pattern}`);
  }

  /** Resolves with the first log line (already written or still to come) that matches; rejects
   *  when the process exits first or the deadline passes. */
  waitForLog(predicate: (line: LogLine) => boolean, timeoutMs: number, what = 'a matching log line'): Promise<LogLine> {
    return this.waitUntil(() => this.logs.find(predicate), timeoutMs, `log ${what}`);
  }

  /** Resolves with the exit code and signal; rejects when the process still runs at the deadline. */
  waitForExit(timeoutMs: number): Promise<ExitInfo> {
    return withTimeout(this.exited, timeoutMs, () => `${this.name} still runs ${timeoutMs} ms later\n${this.output()}`);
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

  /** Resolves with what `find` finds in the output so far or to come; rejects when the process
   *  exits without it, or at the deadline. `what` completes "<name> did not …". */
  private async waitUntil<T>(find: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    let listener: (() => void) | undefined;
    try {
      const found = new Promise<T>((resolve, reject) => {
        let exitSeen = false;
        listener = () => {
          const value = find();
          if (value !== undefined) resolve(value);
          else if (exitSeen) reject(new Error(`${this.name} exited (${JSON.stringify(this.exitInfo)}) and did not ${what}\n${this.output()}`));
        };
        this.listeners.add(listener);
        void this.outputEnded.then(() => {
          exitSeen = true;
          listener?.();
        });
        listener();
      });
      return await withTimeout(found, timeoutMs, () => `${this.name} did not ${what} within ${timeoutMs} ms\n${this.output()}`);
    } finally {
      if (listener) this.listeners.delete(listener);
    }
  }

  private onOutput(stream: 'stdout' | 'stderr', chunk: string): void {
    this[stream] += chunk;
    if (stream === 'stdout') this.readLogLines(chunk);
    for (const listener of [...this.listeners]) listener();
  }

  private readLogLines(chunk: string): void {
    const lines = (this.partialLine + chunk).split('\n');
    this.partialLine = lines.pop() ?? '';
    for (const raw of lines) {
      if (!raw.startsWith('{')) continue;
      try {
        this.logs.push(JSON.parse(raw) as LogLine);
      } catch {
        // not JSON after all: it stays in stdout only
      }
    }
  }
}

/** Whether a process with this pid exists (signal 0 probes without signalling). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export type ServiceRole = keyof typeof BUILT_ENTRYPOINTS;

/**
 * Starts a compiled entry point of the service with `node` itself (the process id is node's, so
 * a signal reaches the service, not a wrapper). The working directory is the build directory,
 * which has no .env: the process sees `env` and nothing else.
 */
export function startService(name: string, role: ServiceRole, env: Record<string, string>, cwd = SERVICE_BUILD_DIR): RunningProcess {
  return new RunningProcess(name, process.execPath, [BUILT_ENTRYPOINTS[role]], { cwd, env }, role);
}

/** tsx's loader, as a URL `node --import` takes from any working directory. */
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/**
 * Runs one of the repository's scripts (`scripts/dev.ts`) as its npm script does, minus npm's and
 * tsx's own wrapper processes: `node --import tsx`, so a signal reaches the script itself.
 */
export function startScript(name: string, script: string, args: readonly string[], options: { env: Record<string, string>; cwd: string }): RunningProcess {
  return new RunningProcess(name, process.execPath, ['--import', TSX_LOADER, join(REPO_ROOT, script), ...args], options);
}

/**
 * The service processes of one test: starts them, knows them all for failure messages, and
 * kills every one that is still alive when the test ends.
 */
export class ProcessGroup {
  private readonly processes: RunningProcess[] = [];

  constructor(private readonly baseEnv: Record<string, string>) {}

  /** Spawns the API and resolves once `GET /readyz` answers 200. */
  async startApi(name: string, port: number, env: Record<string, string> = {}, timeoutMs = PROCESS_START_DEADLINE_MS): Promise<RunningProcess> {
    const api = this.spawn(name, 'api', { PORT: String(port), ...env });
    await waitUntilReady(api, `http://127.0.0.1:${port}/readyz`, timeoutMs);
    return api;
  }

  /** Spawns a worker and resolves once it logs `worker started`. */
  async startWorker(name: string, env: Record<string, string> = {}, timeoutMs = PROCESS_START_DEADLINE_MS): Promise<RunningProcess> {
    const worker = this.spawn(name, 'worker', env);
    const started = logMessage('worker started');
    await worker.waitForLog((line) => line.msg === started, timeoutMs, `'${started}'`);
    return worker;
  }

  spawn(name: string, role: ServiceRole, env: Record<string, string> = {}): RunningProcess {
    const child = startService(name, role, { ...this.baseEnv, ...env });
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

/** Resolves once `url` (a `/readyz`) answers 200; rejects when `service` exits first or at the deadline. */
export async function waitUntilReady(service: RunningProcess, url: string, timeoutMs = PROCESS_START_DEADLINE_MS): Promise<void> {
  await pollUntil(
    async () => {
      if (service.exit) throw new Error(`${service.name} exited (${JSON.stringify(service.exit)}) before it was ready\n${service.output()}`);
      return answersOk(url);
    },
    { timeoutMs, intervalMs: 50, what: `${service.name} to answer 200 on ${url}`, context: () => service.output() },
  );
}

/**
 * The environment a spawned process gets: only what it needs (PATH and HOME for node), so
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
