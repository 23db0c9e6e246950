import type { MiddlewareHandler } from 'hono';
import type { Keys } from '../shared/keys.js';
import type { RedisClient } from '../shared/redis.js';
import type { AppEnv } from './env.js';
import { GraphError, serviceUnavailable } from './errors.js';

/**
 * Per-tenant rate limit, counted in Redis so that every API instance shares it: a fixed
 * one-second window per tenant (INCR, expiring after the window). Over the limit: 429 with
 * Retry-After. One tenant's burst then cannot starve the others.
 */
export function rateLimitPerTenant(redis: RedisClient, keys: Keys, perSecond: number): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const second = Math.floor(Date.now() / 1000);
    const key = keys.rateLimit(c.get('principal').tenantId, second);
    let count: number;
    try {
      const replies = await redis.multi().incr(key).pexpire(key, 2000).exec();
      count = Number(replies?.[0]?.[1]);
    } catch (error) {
      throw Object.assign(serviceUnavailable('The rate limiter is unavailable; retry shortly.'), { cause: error });
    }
    if (count > perSecond) {
      // The window is one second, so the next one is never further away than that.
      throw new GraphError(429, 'tooManyRequests', `This tenant is limited to ${perSecond} requests per second.`, {
        'Retry-After': '1',
      });
    }
    await next();
  };
}
