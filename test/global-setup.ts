import type { TestProject } from 'vitest/node';
import { redisAnswers } from '../scripts/redis-answers.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';
import { buildService } from './support/service-build.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

/**
 * Compiles the service for the tests that start its processes (test/support/service-build.ts),
 * while it finds the Redis the suite runs on; in watch mode, again before every rerun, so they
 * never start a build older than the sources.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  project.onTestsRerun(() => buildService());
  const [redis, build] = await Promise.allSettled([setUpRedis(project), buildService()]);
  if (build.status === 'rejected') {
    if (redis.status === 'fulfilled') await redis.value();
    throw build.reason;
  }
  if (redis.status === 'rejected') throw redis.reason;
  return redis.value;
}

/**
 * Finds the Redis the suite runs on, and says in one line which it chose:
 * 1. a testcontainers Redis when a Docker engine answers (a laptop, a CI with Docker);
 * 2. else REDIS_URL, when set and answering;
 * 3. else a redis-server this setup starts on a free port.
 * Each test isolates itself with its own key prefix, so one Redis serves the whole suite.
 */
async function setUpRedis(project: TestProject): Promise<() => Promise<void>> {
  const container = await startContainerIfDockerAnswers();
  if (container) {
    project.provide('redisUrl', container.url);
    console.log(`[test setup] Redis: testcontainers (${container.url})`);
    return container.stop;
  }
  const fromEnv = process.env.REDIS_URL;
  if (fromEnv && (await redisAnswers(fromEnv))) {
    project.provide('redisUrl', fromEnv);
    console.log(`[test setup] Redis: REDIS_URL (${fromEnv}); no Docker engine answered`);
    return async () => {};
  }
  const server: RedisServer = await startRedisServer();
  project.provide('redisUrl', server.url);
  console.log(`[test setup] Redis: started redis-server on ${server.url}; no Docker engine answered and REDIS_URL ${fromEnv ? 'did not answer' : 'is not set'}`);
  return () => server.destroy();
}

async function startContainerIfDockerAnswers(): Promise<{ url: string; stop: () => Promise<void> } | undefined> {
  const { getContainerRuntimeClient } = await import('testcontainers');
  try {
    // Throws "Could not find a working container runtime strategy" without an engine.
    await getContainerRuntimeClient();
  } catch {
    return undefined;
  }
  const { RedisContainer } = await import('@testcontainers/redis');
  const container = await new RedisContainer('redis:7-alpine').start();
  return { url: container.getConnectionUrl(), stop: async () => void (await container.stop()) };
}
