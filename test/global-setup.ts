import type { TestProject } from 'vitest/node';
import { redisAnswers } from '../scripts/redis-answers.js';
import { startRedisServer, type RedisServer } from '../scripts/lib/redis-server.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

/**
 * Finds the Redis the suite runs on, and says in one line which it chose:
 * 1. a testcontainers Redis when a Docker engine answers (a laptop, a CI with Docker);
 * 2. else REDIS_URL, when set and answering;
 * 3. else a redis-server this setup starts on a free port.
 * Each test isolates itself with its own key prefix, so one Redis serves the whole suite.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
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
  return server.destroy;
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
