import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jwtVerify } from 'jose';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { redisAnswers } from '../scripts/redis-answers.js';
import { uniquePrefix } from './support/context.js';
import { processExists, RunningProcess, serviceEnv } from './support/processes.js';
import { REPO_ROOT } from './support/deployment.js';
import { freePort } from './support/redis-server.js';
import { pollUntil } from './support/wait.js';

/**
 * `npm run dev` (scripts/dev.ts) as a newcomer meets it: a real run with its own children
 * (redis-server, tsx watch, the service), driven only through what it prints and through HTTP.
 * It is spawned as `node --import tsx scripts/dev.ts`, which is what `npm run dev` runs minus
 * npm's and tsx's own wrapper processes, so a signal reaches the script itself.
 */

const START_DEADLINE_MS = 30_000;
const STOP_DEADLINE_MS = 20_000;

let dev: RunningProcess | undefined;
const cleanups: Array<() => void> = [];

function startDev(env: Record<string, string>): RunningProcess {
  dev = new RunningProcess('npm run dev', process.execPath, ['--import', 'tsx', 'scripts/dev.ts'], { cwd: REPO_ROOT, env: serviceEnv(env) });
  return dev;
}

/** Pids the dev script printed, so a failed test still leaves no process behind. */
function pidsOf(output: string): number[] {
  return [...output.matchAll(/pid (\d+)/g)].map((match) => Number(match[1]));
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
  for (const cleanup of cleanups.splice(0)) cleanup();
});

describe('npm run dev', () => {
  it('starts a throwaway redis-server when none answers, prints a token and curl commands that work, and stops everything on SIGINT', async () => {
    const nothingListens = await freePort();
    const apiPort = await freePort();
    const process_ = startDev({ REDIS_URL: `redis://127.0.0.1:${nothingListens}`, PORT: String(apiPort) });

    const [, redisUrl, redisPid] = await process_.waitForOutput(/Redis\s+(redis:\/\/127\.0\.0\.1:\d+) \(throwaway redis-server, pid (\d+)/, START_DEADLINE_MS);
    expect(redisUrl).not.toBe(`redis://127.0.0.1:${nothingListens}`);
    const [, token] = await process_.waitForOutput(/^export TOKEN=(\S+)$/m, START_DEADLINE_MS);
    const [, createUrl, createBody] = await process_.waitForOutput(/^curl -si -X POST (\S+) .* -d '(.*)'$/m, START_DEADLINE_MS);
    const [, pollUrl] = await process_.waitForOutput(/^curl -s (\S+) -H "Authorization: Bearer \$TOKEN"$/m, START_DEADLINE_MS);
    const [, tsxPid] = await process_.waitForOutput(/tsx watch runs as pid (\d+)/, START_DEADLINE_MS);
    await process_.waitForOutput(new RegExp(`\\[dev\\] ready: http://127\\.0\\.0\\.1:${apiPort}`), START_DEADLINE_MS);

    // The printed commands, as a newcomer would paste them.
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
    expect(completed).toMatchObject({ id: JSON.parse(createBody!).id, status: 'completed' });

    process_.signal('SIGINT');
    expect(await process_.waitForExit(STOP_DEADLINE_MS), process_.output()).toEqual({ code: 0, signal: null });
    expect(process_.stdout).toContain('[dev] stopped the throwaway redis-server');
    expect(processExists(Number(redisPid)), 'redis-server still runs').toBe(false);
    expect(processExists(Number(tsxPid)), 'tsx watch still runs').toBe(false);
    expect(await redisAnswers(redisUrl!), 'the throwaway Redis still answers').toBe(false);
    // The service shut down cleanly (its "stopped" log line), not killed by tsx's 5 s deadline.
    expect(process_.stdout).toMatch(/\(operations\/\d+\): \S*stopped/);
    expect(process_.stdout).not.toContain("didn't exit");
  });

  it('uses the Redis at REDIS_URL when it answers, and a token signed with the AUTH_JWT_SECRET it was given', async () => {
    const apiPort = await freePort();
    const secret = 'dev-test-secret-that-is-long-enough-for-hs256';
    const process_ = startDev({
      REDIS_URL: inject('redisUrl'),
      REDIS_PREFIX: uniquePrefix(),
      AUTH_JWT_SECRET: secret,
      PORT: String(apiPort),
    });

    await process_.waitForOutput(new RegExp(`Redis\\s+${inject('redisUrl').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(answered\\)`), START_DEADLINE_MS);
    const [, token] = await process_.waitForOutput(/^export TOKEN=(\S+)$/m, START_DEADLINE_MS);
    const { payload } = await jwtVerify(token!, new TextEncoder().encode(secret));
    expect(payload.scp).toBe('ExternalConnection.ReadWrite.All');
    expect(process_.stdout).not.toContain('export AUTH_JWT_SECRET=');
    expect(process_.stdout).not.toContain('throwaway');
    await process_.waitForOutput(/\[dev\] ready:/, START_DEADLINE_MS);

    process_.signal('SIGTERM');
    expect(await process_.waitForExit(STOP_DEADLINE_MS), process_.output()).toEqual({ code: 0, signal: null });
  });

  it('says how to get Redis, and exits 1, when none answers and redis-server is not installed', async () => {
    const emptyPath = mkdtempSync(join(tmpdir(), 'cops-dev-path-'));
    cleanups.push(() => rmSync(emptyPath, { recursive: true, force: true }));
    const process_ = startDev({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, PATH: emptyPath });

    expect(await process_.waitForExit(START_DEADLINE_MS), process_.output()).toEqual({ code: 1, signal: null });
    expect(process_.stderr).toContain('apt-get install redis-server');
    expect(process_.stderr).toContain('brew install redis');
    expect(process_.stderr).toContain('docker run -p 6379:6379 redis:7');
    expect(process_.stdout).not.toContain('export TOKEN=');
  });
});
