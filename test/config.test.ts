import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/shared/config.js';

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
  ])('names the bad variable in %j', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it('reads a comma-separated cluster URL list', () => {
    expect(loadConfig({ REDIS_URL: 'redis://a:7000, redis://b:7001' }).REDIS_URL).toBe('redis://a:7000, redis://b:7001');
  });
});

describe('process startup', () => {
  function startApi(env: Record<string, string>) {
    return spawnSync(process.execPath, ['--import', 'tsx', 'src/api/main.ts'], {
      env: { PATH: process.env.PATH, ...env },
      encoding: 'utf8',
      timeout: 20_000,
    });
  }

  it('stops with a message naming the bad variable', () => {
    const result = startApi({ PORT: 'eighty', AUTH_JWT_SECRET: 'x' });
    expect(result.status).toBe(1);
    expect(result.stderr).toMatch(/PORT: Invalid input/);
  });

  it('refuses to start without a token verification method', () => {
    const result = startApi({ REDIS_URL: 'redis://127.0.0.1:1' });
    expect(result.status).toBe(1);
    expect(result.stdout + result.stderr).toMatch(/AUTH_JWT_SECRET and\/or AUTH_JWKS_URL/);
  });
});
