import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';

/** A port the OS says is free right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface RedisServer {
  url: string;
  port: number;
  dir: string;
  /** SIGTERM (or SIGKILL) and wait for the process to exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Start it again on the same port and directory (keeps AOF/RDB files). */
  start(): Promise<void>;
  /** stop() and remove its directory. */
  destroy(): Promise<void>;
  /** The running server's process id (undefined while stopped). */
  readonly pid: number | undefined;
  /** Freezes the server with SIGSTOP: its connections stay open but nothing answers (a hung
   *  host, a long GC-like stall). Resolves once the kernel reports the process stopped. */
  freeze(): Promise<void>;
  /** SIGCONT after freeze(): the server runs again and answers everything queued meanwhile. */
  thaw(): void;
}

/**
 * A real `redis-server` on a free port, in its own temporary directory, for tests that must
 * stop, restart or reconfigure Redis. `args` are extra command-line options (`--appendonly yes`).
 */
export async function startRedisServer(args: string[] = [], port?: number): Promise<RedisServer> {
  const chosenPort = port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'cops-redis-'));
  let child: ChildProcess | undefined;

  const start = async () => {
    child = spawn(
      'redis-server',
      ['--port', String(chosenPort), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--maxmemory-policy', 'noeviction', ...args],
      { stdio: 'ignore' },
    );
    await waitForPing(chosenPort, 10_000);
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    const current = child;
    if (!current || current.exitCode !== null) return;
    const exited = new Promise((resolve) => current.once('exit', resolve));
    current.kill(signal);
    await exited;
  };
  const running = () => (child && child.exitCode === null && child.signalCode === null ? child : undefined);
  await start();
  return {
    url: `redis://127.0.0.1:${chosenPort}`,
    port: chosenPort,
    dir,
    stop,
    start,
    async destroy() {
      await stop('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
    get pid() {
      return running()?.pid;
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

/** Waits until /proc says the process is in `state` (`T`: stopped by a signal). Linux only. */
export async function waitForProcessState(pid: number, state: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    // /proc/<pid>/stat: "pid (comm) state ...", comm may contain spaces, so split after ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith(state)) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not reach state ${state} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export async function waitForPing(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => {}); // refused connections are expected until the server is up
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') return;
    } catch {
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      client.disconnect();
    }
  }
}
