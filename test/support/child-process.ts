import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

/** How much of a child's output a failure message quotes. */
const OUTPUT_TAIL_CHARS = 8000;

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/**
 * Any command as a child process (a built `node dist/...`, `npm run dev`): its output captured,
 * waits with deadlines, and a kill for cleanup. ServiceProcess (test/support/processes.ts) builds
 * on it for the service's own entry points run from source, adding their JSON log lines.
 */
export class RunningProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  private exitInfo: ExitInfo | undefined;
  protected readonly exited: Promise<ExitInfo>;
  private readonly outputListeners = new Set<() => void>();

  constructor(
    readonly name: string,
    command: string,
    args: readonly string[],
    options: Pick<SpawnOptions, 'cwd' | 'env' | 'detached'>,
  ) {
    this.child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => this.onOutput('stdout', chunk));
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => this.onOutput('stderr', chunk));
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
    return `--- ${this.name} (${this.label()}, ${state}) stdout:\n${tail(this.stdout)}\n--- ${this.name} stderr:\n${tail(this.stderr)}`;
  }

  /** Resolves with the first match of `pattern` in stdout (already written or still to come);
   *  rejects when the process exits first or the deadline passes. */
  async waitForOutput(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    let listener: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await new Promise<RegExpMatchArray>((resolve, reject) => {
        listener = () => {
          const match = this.stdout.match(pattern);
          if (match) resolve(match);
          else if (this.exitInfo) reject(new Error(`${this.name} exited before printing ${pattern}\n${this.output()}`));
        };
        this.outputListeners.add(listener);
        void this.exited.then(() => listener?.());
        timer = setTimeout(() => reject(new Error(`${this.name} did not print ${pattern} within ${timeoutMs} ms\n${this.output()}`)), timeoutMs);
        listener();
      });
    } finally {
      clearTimeout(timer);
      if (listener) this.outputListeners.delete(listener);
    }
  }

  /** Resolves with the exit code and signal; rejects when the process still runs at the deadline. */
  async waitForExit(timeoutMs: number): Promise<ExitInfo> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`${this.name} still runs ${timeoutMs} ms later\n${this.output()}`)), timeoutMs);
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

  /** What the header of output() says about the process besides its name and state. */
  protected label(): string {
    return `pid ${this.pid}`;
  }

  protected onOutput(stream: 'stdout' | 'stderr', chunk: string): void {
    this[stream] += chunk;
    for (const listener of this.outputListeners) listener();
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
