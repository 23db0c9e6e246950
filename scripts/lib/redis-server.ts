import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { redisAnswers } from '../redis-answers.js';
import { freePort } from './free-port.js';

/**
 * A throwaway `redis-server`: loopback only, on a free port, in a temporary directory of its
 * own, no RDB snapshots, `noeviction` (the service needs it). Used by `npm run dev` when no Redis
 * answers, by the tests that must stop, freeze or reconfigure Redis (and by the suite's setup
 * when neither Docker nor REDIS_URL gives it one), and by the bench.
 */

export interface RedisServerOptions {
  /** Listen here instead of on a free port. */
  port?: number;
  /** Run it in a process group of its own, so a terminal's Ctrl-C does not reach it: its owner
   *  stops it, after the processes that still need it. */
  detached?: boolean;
}

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  /** The running server's process id (undefined while stopped). */
  readonly pid: number | undefined;
  /** Sends `signal` (SIGTERM by default; SIGKILL 5 s later if it is still running) and waits
   *  for the process to exit. Keeps the directory, so start() finds its AOF or RDB files. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again on the same port and directory. */
  start(): Promise<void>;
  /** SIGKILL, then removes its directory. */
  destroy(): Promise<void>;
  /** destroy() for a synchronous `exit` handler: does not wait for the process to exit. */
  killNow(): void;
  /** Freezes the server with SIGSTOP: its connections stay open but nothing answers (a hung
   *  host, a long GC-like stall). Resolves once the kernel reports the process stopped. */
  freeze(): Promise<void>;
  /** SIGCONT after freeze(): the server runs again and answers everything queued meanwhile. */
  thaw(): void;
}

/** No `redis-server` on the PATH. */
export class RedisServerNotFound extends Error {
  override name = 'RedisServerNotFound';
}

const START_TIMEOUT_MS = 10_000;
const KILL_AFTER_MS = 5_000;

/**
 * Starts a throwaway redis-server and resolves once it answers PING. `args` are extra
 * command-line options, after the defaults, so they win over them (`--appendonly yes`,
 * `--maxmemory-policy allkeys-lru`). Throws RedisServerNotFound without a redis-server binary.
 */
export async function startRedisServer(args: string[] = [], { port, detached = false }: RedisServerOptions = {}): Promise<RedisServer> {
  const chosenPort = port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'cops-redis-'));
  let child: ChildProcess | undefined;
  const running = () => (child && child.pid !== undefined && child.exitCode === null && child.signalCode === null ? child : undefined);

  const start = async () => {
    const current = spawn(
      'redis-server',
      ['--port', String(chosenPort), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--maxmemory-policy', 'noeviction', ...args],
      { stdio: 'ignore', detached },
    );
    child = current;
    let spawnError: NodeJS.ErrnoException | undefined;
    current.once('error', (error) => (spawnError = error));
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (spawnError) {
        throw spawnError.code === 'ENOENT' ? new RedisServerNotFound('redis-server is not installed (not found on the PATH)') : spawnError;
      }
      if (current.exitCode !== null || current.signalCode !== null) {
        throw new Error(`redis-server exited at startup (code ${current.exitCode}, signal ${current.signalCode})`);
      }
      if (await redisAnswers(`redis://127.0.0.1:${chosenPort}`)) return;
      if (Date.now() > deadline) {
        current.kill('SIGKILL');
        throw new Error(`redis-server on port ${chosenPort} did not answer within ${START_TIMEOUT_MS} ms`);
      }
      await sleep(50);
    }
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    const current = running();
    if (!current) return;
    const exited = new Promise((resolve) => current.once('exit', resolve));
    current.kill(signal);
    const killer = setTimeout(() => current.kill('SIGKILL'), KILL_AFTER_MS);
    await exited;
    clearTimeout(killer);
  };

  try {
    await start();
  } catch (error) {
    running()?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url: `redis://127.0.0.1:${chosenPort}`,
    port: chosenPort,
    dir,
    get pid() {
      return running()?.pid;
    },
    stop,
    start,
    async destroy() {
      await stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
    killNow() {
      running()?.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
    async freeze() {
      const current = running();
      if (!current?.pid) throw new Error('redis-server is not running');
      current.kill('SIGSTOP');
      await waitForProcessState(current.pid, 'T', 5000);
    },
    thaw() {
      running()?.kill('SIGCONT');
    },
  };
}

/** Resolves once a Redis on 127.0.0.1:`port` answers PING; throws after `timeoutMs`. */
export async function waitForPing(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await redisAnswers(`redis://127.0.0.1:${port}`))) {
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Waits until /proc says the process is in `state` (`T`: stopped by a signal). Linux only. */
async function waitForProcessState(pid: number, state: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // /proc/<pid>/stat: "pid (comm) state ...", comm may contain spaces, so split after ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith(state)) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not reach state ${state} within ${timeoutMs} ms`);
    await sleep(5);
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
