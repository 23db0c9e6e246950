import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { jwtVerify } from 'jose';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { redisAnswers } from '../scripts/redis-answers.js';
import { uniquePrefix } from './support/context.js';
import { processExists, serviceEnv, startScript, type RunningProcess } from './support/processes.js';
import { freePort } from '../scripts/lib/free-port.js';
import { pollUntil } from './support/wait.js';

/**
 * `npm run dev` (scripts/dev.ts) as a newcomer meets it: a real run with its own children
 * (redis-server, tsx watch, the service), driven only through what it prints and through HTTP.
 * Each run's working directory is a directory of the test's own, where a test writes the .env a
 * newcomer would have.
 */

/** tsx compiles the service's sources on the first start: slow on a busy two-core machine. */
const START_DEADLINE_MS = 60_000;
const STOP_DEADLINE_MS = 20_000;
const TEST_TIMEOUT_MS = START_DEADLINE_MS + STOP_DEADLINE_MS + 30_000;

let dev: RunningProcess | undefined;
const cleanups: Array<() => void | Promise<void>> = [];

/** A working directory of the test's own, with `.env` holding `envFile` when given. */
function workingDirectory(envFile?: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'cops-dev-cwd-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  if (envFile) writeFileSync(join(dir, '.env'), Object.entries(envFile).map(([name, value]) => `${name}=${value}\n`).join(''));
  return dir;
}

function startDev(env: Record<string, string>, cwd = workingDirectory()): RunningProcess {
  dev = startScript('npm run dev', 'scripts/dev.ts', [], { cwd, env: serviceEnv(env) });
  return dev;
}

/** Pids the dev script printed, so a failed test still leaves no process behind. */
function pidsOf(output: string): number[] {
  return [...output.matchAll(/pid (\d+)/g)].map((match) => Number(match[1]));
}

/** The keys of a Redis that match `pattern`. */
async function keysOf(redisUrl: string, pattern: string): Promise<string[]> {
  const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  try {
    return await client.keys(pattern);
  } finally {
    client.disconnect();
  }
}

/** Creates the operation the dev banner's curl command creates, and polls it as the banner's
 *  second command does until it is completed. */
async function runPrintedCommands(process_: RunningProcess, token: string): Promise<void> {
  const [, createUrl, createBody] = await process_.waitForOutput(/^curl -si -X POST (\S+) .* -d '(.*)'$/m, START_DEADLINE_MS);
  const [, pollUrl] = await process_.waitForOutput(/^curl -s (\S+) -H "Authorization: Bearer \$TOKEN"$/m, START_DEADLINE_MS);
  const created = await fetch(createUrl!, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: createBody,
  });
  expect(created.status, await created.clone().text()).toBe(201);
  const completed = await pollUntil(
    async () => {
      const response = await fetch(pollUrl!, { headers: { authorization: `Bearer ${token}` } });
      const body = (await response.json()) as { status?: string };
      return body.status === 'completed' ? body : undefined;
    },
    { timeoutMs: START_DEADLINE_MS, intervalMs: 100, what: 'the printed operation to complete', context: () => process_.output() },
  );
  expect(completed).toMatchObject({ id: (JSON.parse(createBody!) as { id: string }).id, status: 'completed' });
}

afterEach(async () => {
  if (dev) {
    const output = dev.stdout;
    await dev.kill();
    for (const pid of pidsOf(output)) {
      try {
        // tsx watch leads a process group of its own (the service is in it); redis-server too.
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone already, which is what a passing test leaves
      }
    }
    dev = undefined;
  }
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

describe('npm run dev', () => {
  it('starts a throwaway redis-server when none answers, prints a token and curl commands that work, and stops everything on SIGINT', async () => {
    const nothingListens = await freePort();
    const apiPort = await freePort();
    // A prefix from the shell is used as it is.
    const prefix = uniquePrefix();
    const process_ = startDev({ REDIS_URL: `redis://127.0.0.1:${nothingListens}`, PORT: String(apiPort), REDIS_PREFIX: prefix });

    const [, redisUrl, redisPid] = await process_.waitForOutput(/Redis\s+(redis:\/\/127\.0\.0\.1:\d+) \(throwaway redis-server, pid (\d+)/, START_DEADLINE_MS);
    expect(redisUrl).not.toBe(`redis://127.0.0.1:${nothingListens}`);
    await process_.waitForOutput(new RegExp(`Keys\\s+REDIS_PREFIX=${prefix} \\(from your shell`), START_DEADLINE_MS);
    const [, token] = await process_.waitForOutput(/^export TOKEN=(\S+)$/m, START_DEADLINE_MS);
    const [, tsxPid] = await process_.waitForOutput(/tsx watch runs as pid (\d+)/, START_DEADLINE_MS);
    await process_.waitForOutput(new RegExp(`\\[dev\\] ready: http://127\\.0\\.0\\.1:${apiPort}`), START_DEADLINE_MS);

    // The printed commands, as a newcomer would paste them.
    await runPrintedCommands(process_, token!);
    const keys = await keysOf(redisUrl!, '*');
    expect(keys.length).toBeGreaterThan(0);
    expect(keys.filter((key) => !key.startsWith(`${prefix}:`)), 'keys outside the REDIS_PREFIX').toEqual([]);

    process_.signal('SIGINT');
    expect(await process_.waitForExit(STOP_DEADLINE_MS), process_.output()).toEqual({ code: 0, signal: null });
    expect(process_.stdout).toContain('[dev] stopped the throwaway redis-server');
    expect(processExists(Number(redisPid)), 'redis-server still runs').toBe(false);
    expect(processExists(Number(tsxPid)), 'tsx watch still runs').toBe(false);
    expect(await redisAnswers(redisUrl!), 'the throwaway Redis still answers').toBe(false);
    // The service shut down cleanly (its "stopped" log line), not killed by tsx's 5 s deadline.
    expect(process_.stdout).toMatch(/\(operations\/\d+\): \S*stopped/);
    expect(process_.stdout).not.toContain("didn't exit");
  }, TEST_TIMEOUT_MS);

  it("runs on a Redis that answers under a REDIS_PREFIX of its own, so it joins no other instance's queue, and deletes that run's keys on exit", async () => {
    const apiPort = await freePort();
    const secret = 'dev-test-secret-that-is-long-enough-for-hs256';
    const redisUrl = inject('redisUrl');
    // A newcomer's .env, copied from .env.example: its secret is used; its REDIS_PREFIX and
    // LOG_FORMAT are deployment values that dev replaces with its own.
    const cwd = workingDirectory({ AUTH_JWT_SECRET: secret, REDIS_PREFIX: 'cops', LOG_FORMAT: 'json' });
    const process_ = startDev({ REDIS_URL: redisUrl, PORT: String(apiPort) }, cwd);

    await process_.waitForOutput(new RegExp(`Redis\\s+${redisUrl.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(answered\\)`), START_DEADLINE_MS);
    const [, prefix] = await process_.waitForOutput(/Keys\s+REDIS_PREFIX=(\S+) \(this run's own/, START_DEADLINE_MS);
    expect(prefix).toMatch(/^dev-[0-9a-f]{8}$/);
    const [, token] = await process_.waitForOutput(/^export TOKEN=(\S+)$/m, START_DEADLINE_MS);
    const { payload } = await jwtVerify(token!, new TextEncoder().encode(secret));
    expect(payload.scp).toBe('ExternalConnection.ReadWrite.All');
    expect(process_.stdout).toContain('AUTH_JWT_SECRET from ./.env');
    expect(process_.stdout).not.toContain('export AUTH_JWT_SECRET=');
    expect(process_.stdout).not.toContain('throwaway');
    await process_.waitForOutput(new RegExp(`\\[dev\\] ready: http://127\\.0\\.0\\.1:${apiPort}`), START_DEADLINE_MS);

    await runPrintedCommands(process_, token!);
    expect((await keysOf(redisUrl, `${prefix}:*`)).length, "keys under the run's prefix").toBeGreaterThan(0);
    // Pretty logs (not .env's json) tell the service's lines.
    expect(process_.stdout).not.toMatch(/^\{"level"/m);

    process_.signal('SIGTERM');
    expect(await process_.waitForExit(STOP_DEADLINE_MS), process_.output()).toEqual({ code: 0, signal: null });
    expect(process_.stdout).toMatch(new RegExp(`\\[dev\\] deleted this run's [1-9]\\d* keys \\(REDIS_PREFIX=${prefix}\\)`));
    expect(await keysOf(redisUrl, `${prefix}:*`)).toEqual([]);
  }, TEST_TIMEOUT_MS);

  it('says how to get Redis, and exits 1, when none answers and redis-server is not installed', async () => {
    const emptyPath = workingDirectory();
    const process_ = startDev({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, PATH: emptyPath });

    expect(await process_.waitForExit(START_DEADLINE_MS), process_.output()).toEqual({ code: 1, signal: null });
    expect(process_.stderr).toContain('apt-get install redis-server');
    expect(process_.stderr).toContain('brew install redis');
    expect(process_.stderr).toContain('docker run -p 6379:6379 redis:7');
    expect(process_.stdout).not.toContain('export TOKEN=');
  }, TEST_TIMEOUT_MS);
});
