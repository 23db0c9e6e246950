import { createServer, type AddressInfo, type Server } from 'node:net';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { PROCESS_START_DEADLINE_MS, startService, testServiceEnv, type RunningProcess, type ServiceRole } from './support/processes.js';

/** What an operator sees when a process cannot start, or waits: real processes, real ports. */

const started: RunningProcess[] = [];
const servers: Server[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((child) => child.kill()));
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

function start(role: ServiceRole, env: Record<string, string>): RunningProcess {
  const child = startService(role, role, testServiceEnv(`cops-startup-${role}`, env));
  started.push(child);
  return child;
}

/** A port on 127.0.0.1 that something else holds. */
async function takenPort(): Promise<number> {
  const server = createServer();
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

const stackFrame = /\n\s+at /;

describe('a port already in use', () => {
  it('stops the API with one line naming the address and PORT, exit 1, no stack trace', async () => {
    const port = await takenPort();
    const api = start('api', { REDIS_URL: inject('redisUrl'), PORT: String(port) });
    expect(await api.waitForExit(PROCESS_START_DEADLINE_MS), api.output()).toEqual({ code: 1, signal: null });
    const output = api.stdout + api.stderr;
    const lines = output.split('\n').filter((line) => line.includes('already in use'));
    expect(lines, api.output()).toHaveLength(1);
    expect(lines[0]).toContain(`127.0.0.1:${port}`);
    expect(lines[0]).toContain('PORT');
    expect(output).not.toMatch(stackFrame);
    expect(output).not.toContain('Unhandled');
  });

  it("names WORKER_HEALTH_PORT when the worker's health port is taken", async () => {
    const port = await takenPort();
    const worker = start('worker', { REDIS_URL: inject('redisUrl'), WORKER_HEALTH_PORT: String(port) });
    expect(await worker.waitForExit(PROCESS_START_DEADLINE_MS), worker.output()).toEqual({ code: 1, signal: null });
    const output = worker.stdout + worker.stderr;
    expect(output).toMatch(new RegExp(`:${port}.*already in use.*WORKER_HEALTH_PORT`));
    expect(output).not.toMatch(stackFrame);
  });
});

describe('Redis unreachable at startup', () => {
  it.each(['api', 'worker'] as const)('the %s says once what it waits for, from REDIS_URL without credentials, then waits quietly', async (role) => {
    const child = start(role, { REDIS_URL: 'redis://ops:s3cret-pass@127.0.0.1:1' });
    // ioredis retries every 100 ms growing to 2 s: several attempts fail in 5 s.
    await new Promise((resolve) => setTimeout(resolve, 5000));
    expect(child.exit, child.output()).toBeUndefined();
    const output = child.stdout + child.stderr;
    const waiting = output.split('\n').filter((line) => line.includes('REDIS_URL'));
    expect(waiting, child.output()).toHaveLength(1);
    expect(waiting[0]).toContain('redis://127.0.0.1:1');
    expect(output).not.toContain('s3cret-pass');
    expect(output.split('\n').filter((line) => line.includes('ECONNREFUSED')), child.output()).toHaveLength(1);
  });

  it('npm start, with Redis up, does not say it waits for Redis after the worker started', async () => {
    const both = start('both', { REDIS_URL: inject('redisUrl'), PORT: '0' });
    await both.waitForLog((line) => line.msg === 'API listening', PROCESS_START_DEADLINE_MS);
    const messages = both.logs.map((line) => line.msg);
    const workerStarted = messages.indexOf('worker started');
    expect(workerStarted, both.output()).toBeGreaterThanOrEqual(0);
    expect(messages.slice(workerStarted).filter((msg) => /waiting for Redis/i.test(msg ?? '')), both.output()).toEqual([]);
  });
});
