import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The bench's process bookkeeping: every child (service processes, baselines, redis-server) is
 * registered here so that it is stopped on every way out: normal end, error, Ctrl-C, SIGTERM.
 * All traffic stays on 127.0.0.1.
 */

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
const STDERR_TAIL_CHARS = 4000;

/** USER_HZ of Linux /proc files (getconf CLK_TCK). */
const CLOCK_TICKS_PER_SECOND = 100;

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One spawned process: stdout goes to a log file (cheap for the child, never parsed while
 *  load runs), stderr is kept as a short tail for error messages. */
export class Child {
  private stderr = '';
  private exitState: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private stopRequested = false;
  readonly exited: Promise<void>;
  /** performance.now() when it was spawned (a CPU profile's clock starts about then). */
  readonly spawnedAt = performance.now();

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    readonly logFile: string,
  ) {
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr = (this.stderr + chunk).slice(-STDERR_TAIL_CHARS);
    });
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exitState = { code, signal };
        resolve();
      });
      proc.once('error', (error) => {
        this.stderr += `spawn error: ${error.message}\n`;
        this.exitState ??= { code: -1, signal: null };
        resolve();
      });
    });
  }

  get pid(): number {
    if (this.proc.pid === undefined) throw new Error(`${this.name} has no pid (spawn failed)\n${this.describe()}`);
    return this.proc.pid;
  }

  get running(): boolean {
    return this.exitState === undefined;
  }

  /** Throws when the process ended without the bench asking (crashed, or killed from outside:
   *  on a shared machine someone's broad `pkill` can hit it). */
  assertRunning(): void {
    if (this.running || this.stopRequested) return;
    throw new Error(`${this.name} ended unexpectedly (${JSON.stringify(this.exitState)}), not stopped by the bench\n${this.describe()}`);
  }

  /** The last few KB of stderr. */
  stderrTail(): string {
    return this.stderr;
  }

  logText(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  describe(): string {
    const state = this.exitState ? `exited ${JSON.stringify(this.exitState)}` : 'running';
    const log = this.logText();
    return `--- ${this.name} (pid ${this.proc.pid}, ${state})\nstdout tail:\n${log.slice(-2000)}\nstderr tail:\n${this.stderr}`;
  }

  /** SIGTERM, then SIGKILL when it is still running after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    this.stopRequested = true;
    if (!this.running) return;
    this.proc.kill('SIGTERM');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  killNow(): void {
    this.stopRequested = true;
    if (this.running) this.proc.kill('SIGKILL');
  }
}

export class Harness {
  readonly dir = mkdtempSync(join(tmpdir(), 'cops-bench-'));
  private readonly children = new Set<Child>();
  private readonly cleanups = new Set<() => void>();
  private readonly ownProcesses = new Set<() => number | undefined>();
  private sequence = 0;
  keepLogs = false;

  /** Spawns `node <args>` in the repo root with only the given environment (plus PATH/HOME). */
  spawnNode(name: string, args: string[], env: Record<string, string>): Child {
    return this.spawn(name, process.execPath, args, env);
  }

  spawn(name: string, command: string, args: string[], env: Record<string, string>): Child {
    const logFile = join(this.dir, `${String(++this.sequence).padStart(3, '0')}-${name}.log`);
    const fd = openSync(logFile, 'w');
    const base: Record<string, string> = {};
    for (const key of ['PATH', 'HOME', 'TMPDIR', 'LANG']) {
      const value = process.env[key];
      if (value !== undefined) base[key] = value;
    }
    try {
      const proc = spawn(command, args, { cwd: REPO_ROOT, env: { ...base, ...env }, stdio: ['ignore', fd, 'pipe'] });
      const child = new Child(name, proc, logFile);
      this.children.add(child);
      void child.exited.then(() => this.children.delete(child));
      return child;
    } finally {
      closeSync(fd);
    }
  }

  /** Something to undo on the way out (an autocannon run to stop, a client to close). */
  onCleanup(fn: () => void): () => void {
    this.cleanups.add(fn);
    return () => this.cleanups.delete(fn);
  }

  /** Orderly: SIGTERM everything still running, SIGKILL after a grace period. */
  async cleanup(graceMs = 5000): Promise<void> {
    for (const fn of this.cleanups) {
      try {
        fn();
      } catch {
        // best effort on the way out
      }
    }
    this.cleanups.clear();
    await Promise.all([...this.children].map((child) => child.stop(graceMs)));
    if (!this.keepLogs) rmSync(this.dir, { recursive: true, force: true });
  }

  /** Counts a process the bench started without spawn() (its redis-server) as its own in
   *  foreignCpu(); `pid` gives its current id, undefined while it is not running. */
  countAsOwn(pid: () => number | undefined): void {
    this.ownProcesses.add(pid);
  }

  /** CPU used so far by the bench process, every child still running and every process
   *  counted as its own, in microseconds. */
  ownCpuMicros(): number {
    const self = process.cpuUsage();
    let total = self.user + self.system;
    const pids = [...this.children].filter((child) => child.running).map((child) => child.proc.pid);
    for (const pid of [...pids, ...[...this.ownProcesses].map((get) => get())]) {
      if (pid === undefined) continue;
      try {
        total += processCpuMicros(pid);
      } catch {
        // exited between the check and the read
      }
    }
    return total;
  }

  /** Starts a window over which `otherLoad()` tells how much CPU processes the bench did not
   *  start used (other sessions' tests on a shared machine), as percent of one core. */
  foreignCpu(): () => number {
    const startedAt = performance.now();
    const machine0 = machineBusyMicros();
    const own0 = this.ownCpuMicros();
    return () => {
      const wallMicros = (performance.now() - startedAt) * 1000;
      const foreign = machineBusyMicros() - machine0 - (this.ownCpuMicros() - own0);
      return Math.max(0, (foreign / wallMicros) * 100);
    };
  }

  /** Last resort from a synchronous `exit` handler. */
  killAllNow(): void {
    for (const child of this.children) child.killNow();
  }
}

/** Resolves when `check` returns true; throws after `timeoutMs` (with `context()` appended). */
export async function waitFor(
  check: () => Promise<boolean> | boolean,
  { timeoutMs, intervalMs = 50, what, context }: { timeoutMs: number; intervalMs?: number; what: string; context?: () => string },
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${context ? `\n${context()}` : ''}`);
    await sleep(intervalMs);
  }
}

/** CPU time (user + system) a process has used so far, in microseconds, from /proc. */
export function processCpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
  return (ticks * 1_000_000) / CLOCK_TICKS_PER_SECOND;
}

/** CPU time the whole machine spent busy (all cores; not idle or iowait), in microseconds. */
export function machineBusyMicros(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
  const ticks = (user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0);
  return (ticks * 1_000_000) / CLOCK_TICKS_PER_SECOND;
}

/** Resident set size of a process in bytes (VmRSS from /proc/<pid>/status). */
export function processRssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}
