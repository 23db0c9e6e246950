import { afterEach, describe, expect, it } from 'vitest';
import { createApiContextFor, OTHER_TENANT, signToken, testConfig, type ApiContext } from './support/context.js';
import { sleep } from './support/wait.js';

const contexts: ApiContext[] = [];
afterEach(async () => {
  for (const ctx of contexts.splice(0)) await ctx.close();
});

const PATH = '/external/connections/contosohr/operations';

describe('the per-tenant rate limit', () => {
  it('answers 429 with Retry-After once a tenant exceeds its rate across API instances', async () => {
    const config = testConfig({ RATE_LIMIT_PER_TENANT: '5' });
    const first = await createApiContextFor(config);
    const second = await createApiContextFor(config); // another API instance, same Redis
    contexts.push(first, second);

    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 12; i++) {
      const response = await (i % 2 ? first : second).request(PATH);
      statuses.push(response.status);
      if (response.status === 429) retryAfter ??= response.headers.get('retry-after');
    }
    // 12 requests within at most two one-second windows: at most 10 pass.
    expect(statuses.filter((status) => status === 200).length).toBeLessThanOrEqual(10);
    expect(statuses).toContain(429);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it('leaves every request of another tenant within its own rate unrefused while one tenant is limited, round after round', async () => {
    const config = testConfig({ RATE_LIMIT_PER_TENANT: '5' });
    const first = await createApiContextFor(config);
    const second = await createApiContextFor(config);
    contexts.push(first, second);
    const other = { authorization: `Bearer ${await signToken({ tid: OTHER_TENANT })}` };

    for (let round = 0; round < 3; round++) {
      // Each round starts in a window of its own.
      await sleep(1000 - (Date.now() % 1000) + 10);
      // A burst of one tenant, eight times its rate, through both instances; the other tenant's
      // four requests go in the middle of it. On a busy machine a round may straddle windows:
      // the other tenant then has fewer than four in each, still within its five, and the
      // flooding one still gets far more 429s than it has windows.
      const flood = Array.from({ length: 40 }, (_, i) => (i % 2 ? first : second).request(PATH));
      const quiet = Array.from({ length: 4 }, (_, i) => (i % 2 ? first : second).request(PATH, { headers: other }));
      const [limited, unaffected] = await Promise.all([Promise.all(flood), Promise.all(quiet)]);
      const limitedStatuses = limited.map((response) => response.status);
      expect(limitedStatuses.filter((status) => status === 429).length, `round ${round}: the flooding tenant's 429s`).toBeGreaterThanOrEqual(20);
      expect(unaffected.map((response) => response.status), `round ${round}: the other tenant's answers`).toEqual([200, 200, 200, 200]);
    }
  });

  it('is off unless RATE_LIMIT_PER_TENANT is set', async () => {
    const ctx = await createApiContextFor(testConfig());
    contexts.push(ctx);
    const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await ctx.request("/connections/contosohr/operations")).status));
    expect(new Set(statuses)).toEqual(new Set([200]));
  });
});
