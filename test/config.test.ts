import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/shared/config.js';
import { PROCESS_START_DEADLINE_MS, serviceEnv, startService, type RunningProcess } from './support/processes.js';

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    expect(loadConfig({})).toMatchObject({
      PORT: 3000,
      HOST: '0.0.0.0',
      REDIS_URL: 'redis://127.0.0.1:6379',
      OPERATION_ATTEMPTS: 5,
      OPERATION_BACKOFF_MS: 1000,
      LOG_LEVEL: 'info',
      TRUST_PROXY: false,
    });
  });

  it.each([
    [{ PORT: 'eighty' }, /PORT/],
    [{ OPERATION_ATTEMPTS: '0' }, /OPERATION_ATTEMPTS/],
    [{ REDIS_URL: 'localhost:6379' }, /REDIS_URL: must be redis:\/\//],
    [{ PROCESSOR_URL: 'not a url' }, /PROCESSOR_URL/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    [{ TRUST_PROXY: 'yes' }, /TRUST_PROXY/],
    [{ REDIS_PREFIX: 'has:colon' }, /REDIS_PREFIX/],
    [{ ADMIN_USER: 'ops' }, /ADMIN_PASSWORD: ADMIN_USER is set without ADMIN_PASSWORD/],
    [{ ADMIN_PASSWORD: 'secret' }, /ADMIN_USER: ADMIN_PASSWORD is set without ADMIN_USER/],
    [{ AUTH_CLOCK_TOLERANCE_SECONDS: '-1' }, /AUTH_CLOCK_TOLERANCE_SECONDS/],
  ])('names the bad variable in %j', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it('accepts the dashboard credentials together, and a clock tolerance of 0', () => {
    expect(loadConfig({ ADMIN_USER: 'ops', ADMIN_PASSWORD: 'secret' })).toMatchObject({ ADMIN_USER: 'ops', ADMIN_PASSWORD: 'secret' });
    expect(loadConfig({}).AUTH_CLOCK_TOLERANCE_SECONDS).toBe(30);
    expect(loadConfig({ AUTH_CLOCK_TOLERANCE_SECONDS: '0' }).AUTH_CLOCK_TOLERANCE_SECONDS).toBe(0);
  });

  it('reads a comma-separated cluster URL list', () => {
    expect(loadConfig({ REDIS_URL: 'redis://a:7000, redis://b:7001' }).REDIS_URL).toBe('redis://a:7000, redis://b:7001');
  });
});

describe('process startup', () => {
  const cwds: string[] = [];
  const started: RunningProcess[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((child) => child.kill()));
    for (const dir of cwds.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  /** A working directory of the test's own, with `.env` holding `envFile` when given. */
  function workingDirectory(envFile?: string): string {
    const dir = mkdtempSync(join(tmpdir(), 'cops-config-cwd-'));
    cwds.push(dir);
    if (envFile !== undefined) writeFileSync(join(dir, '.env'), envFile);
    return dir;
  }

  /** Runs the compiled API entry point to its exit. Its Redis never answers: a process that
   *  gets past its config waits for it (and the test fails at the deadline) rather than serve. */
  async function runApi(env: Record<string, string>, cwd = workingDirectory()) {
    const api = startService('api', 'api', serviceEnv({ REDIS_URL: 'redis://127.0.0.1:1', HOST: '127.0.0.1', PORT: '0', ...env }), cwd);
    started.push(api);
    await api.waitForExit(PROCESS_START_DEADLINE_MS);
    return api;
  }

  it('stops with a message naming the bad variable', async () => {
    const api = await runApi({ PORT: 'eighty', AUTH_JWT_SECRET: 'x' });
    expect(api.exit).toEqual({ code: 1, signal: null });
    expect(api.stderr).toMatch(/PORT: Invalid input/);
  });

  it('refuses to start without a token verification method', async () => {
    const api = await runApi({});
    expect(api.exit).toEqual({ code: 1, signal: null });
    expect(api.stdout + api.stderr).toMatch(/AUTH_JWT_SECRET and\/or AUTH_JWKS_URL/);
  });

  it('reads .env from the working directory before it parses the config', async () => {
    const api = await runApi({ AUTH_JWT_SECRET: 'x' }, workingDirectory('# a comment\nLOG_LEVEL=loud\n'));
    expect(api.exit).toEqual({ code: 1, signal: null });
    expect(api.stderr).toMatch(/LOG_LEVEL/);
  });

  it('lets the real environment win over .env, an empty variable included', async () => {
    const cwd = workingDirectory('LOG_LEVEL=info\nAUTH_JWT_SECRET=from-the-file\n');
    const bad = await runApi({ LOG_LEVEL: 'loud' }, cwd);
    expect(bad.exit).toEqual({ code: 1, signal: null });
    expect(bad.stderr).toMatch(/LOG_LEVEL/);
    // AUTH_JWT_SECRET set but empty in the environment: the file's secret does not fill it in.
    const empty = await runApi({ AUTH_JWT_SECRET: '' }, cwd);
    expect(empty.exit).toEqual({ code: 1, signal: null });
    expect(empty.stdout + empty.stderr).toMatch(/AUTH_JWT_SECRET and\/or AUTH_JWKS_URL/);
  });
});
