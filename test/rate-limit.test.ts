import { afterEach, describe, expect, it } from 'vitest';
import { createApiContextFor, OTHER_TENANT, signToken, testConfig, type ApiContext } from './support/context.js';

const contexts: ApiContext[] = [];
afterEach(async () => {
  for (const ctx of contexts.splice(0)) await ctx.close();
});

describe('the per-tenant rate limit', () => {
  it('answers 429 with Retry-After once a tenant exceeds its rate across API instances, without slowing other tenants', async () => {
    const config = testConfig({ RATE_LIMIT_PER_TENANT: '5' });
    const first = await createApiContextFor(config);
    const second = await createApiContextFor(config); // another API instance, same Redis
    contexts.push(first, second);

    const path = '/external/connections/contosohr/operations';
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 12; i++) {
      const response = await (i % 2 ? first : second).request(path);
      statuses.push(response.status);
      if (response.status === 429) retryAfter ??= response.headers.get('retry-after');
    }
    // 12 requests within at most two one-second windows: at most 10 pass.
    expect(statuses.filter((status) => status === 200).length).toBeLessThanOrEqual(10);
    expect(statuses).toContain(429);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);

    const otherTenant = await first.request(path, { headers: { authorization: `Bearer ${await signToken({ tid: OTHER_TENANT })}` } });
    expect(otherTenant.status).toBe(200);
  });

  it('is off unless RATE_LIMIT_PER_TENANT is set', async () => {
    const ctx = await createApiContextFor(testConfig());
    contexts.push(ctx);
    const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await ctx.request("/connections/contosohr/operations")).status));
    expect(new Set(statuses)).toEqual(new Set([200]));
  });
});
