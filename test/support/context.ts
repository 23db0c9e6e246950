import { randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { inject } from 'vitest';
import { createApp } from '../../src/api/app.js';
import { CreateBatcher } from '../../src/api/create-batcher.js';
import { jwtAuthenticator } from '../../src/api/jwt-auth.js';
import { OperationWatch } from '../../src/api/operation-watch.js';
import { rateLimitPerTenant } from '../../src/api/rate-limit.js';
import { loadConfig, type Config } from '../../src/shared/config.js';
import { createRedis, waitUntilReady, type RedisClient } from '../../src/shared/redis.js';
import { Subscriber } from '../../src/shared/subscriber.js';
import { operationsFor } from '../../src/shared/wiring.js';

export const TEST_SECRET = 'test-secret-that-is-long-enough-for-hs256';
export const TENANT = '11111111-1111-4111-8111-111111111111';
export const OTHER_TENANT = '22222222-2222-4222-8222-222222222222';
export const silentLog = pino({ level: 'silent' });

/** A key prefix no other test uses. */
export function uniquePrefix(): string {
  return `t${randomUUID().replace(/-/g, '').slice(0, 12)}`;
}

/** Config for a test: the suite's Redis, its own prefix, HS256 auth and fast retries. */
export function testConfig(overrides: Record<string, string> = {}): Config {
  return loadConfig({
    REDIS_URL: inject('redisUrl'),
    REDIS_PREFIX: uniquePrefix(),
    AUTH_JWT_SECRET: TEST_SECRET,
    LOG_LEVEL: 'silent',
    OPERATION_BACKOFF_MS: '20',
    ...overrides,
  });
}

export async function signToken(
  claims: Record<string, unknown> = {},
  { secret = TEST_SECRET, expiresIn = '10m' }: { secret?: string; expiresIn?: string } = {},
): Promise<string> {
  return new SignJWT({ tid: TENANT, scp: 'ExternalConnection.ReadWrite.All', ...claims })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** Removes every key of a prefix (test cleanup). */
export async function deleteKeys(redis: RedisClient, prefix: string): Promise<void> {
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length > 0) await redis.del(...keys);
}

/** An app wired like the API process, on the suite's Redis, with its own prefix. */
export async function createApiContext(overrides: Record<string, string> = {}) {
  const config = testConfig(overrides);
  return createApiContextFor(config);
}

/** Like createApiContext, for a config already made (two "API instances" sharing one prefix). */
export async function createApiContextFor(config: Config) {
  const redis = createRedis({ url: config.REDIS_URL, role: 'producer', commandTimeoutMs: 2000 });
  await waitUntilReady(redis);
  const { store, queue, connections } = operationsFor(config, redis, silentLog);
  const subscriber = new Subscriber(createRedis({ url: config.REDIS_URL, role: 'subscriber' }), silentLog);
  const watch = new OperationWatch(store, subscriber, silentLog, 2000);
  const app = createApp({
    store,
    creates: new CreateBatcher(store, queue, silentLog, { jobFollowsRecords: true }),
    connections,
    queue,
    watch,
    auth: jwtAuthenticator(config),
    config,
    log: silentLog,
    ready: async () => (await redis.ping()) === 'PONG',
    ...(config.RATE_LIMIT_PER_TENANT ? { rateLimit: rateLimitPerTenant(redis, store.keys, config.RATE_LIMIT_PER_TENANT) } : {}),
  });
  const token = await signToken();
  return {
    config,
    redis,
    store,
    queue,
    connections,
    watch,
    app,
    token,
    /** app.request with a valid token unless the init sets its own authorization. */
    request(path: string, init: RequestInit = {}): Promise<Response> {
      const headers = new Headers(init.headers);
      if (!headers.has('authorization')) headers.set('authorization', `Bearer ${token}`);
      return Promise.resolve(app.request(path, { ...init, headers }));
    },
    post(path: string, body: unknown, headers: Record<string, string> = {}) {
      return this.request(path, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
    },
    async close() {
      await deleteKeys(redis, config.REDIS_PREFIX);
      await queue.close();
      await subscriber.close();
      await redis.quit();
    },
  };
}
export type ApiContext = Awaited<ReturnType<typeof createApiContextFor>>;
