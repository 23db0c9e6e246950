import { afterEach, describe, expect, it, vi } from 'vitest';
import { jwtAuthenticator } from '../src/api/jwt-auth.js';
import { signToken, TEST_SECRET } from './support/context.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('verified-token cache', () => {
  it('refuses a cached token once it expires', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const auth = jwtAuthenticator({ AUTH_JWT_SECRET: TEST_SECRET, AUTH_JWKS_URL: undefined, AUTH_AUDIENCE: undefined, AUTH_ISSUER: undefined });
    const token = await signToken({}, { expiresIn: '60s' });
    expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ canWrite: true });
    expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ canWrite: true }); // from the cache
    vi.setSystemTime(Date.now() + 61_000 + 30_000); // past exp and the clock tolerance
    await expect(auth.authenticate(`Bearer ${token}`)).rejects.toMatchObject({ status: 401, message: 'The token has expired.' });
  });

  it('never caches a refusal', async () => {
    const auth = jwtAuthenticator({ AUTH_JWT_SECRET: TEST_SECRET, AUTH_JWKS_URL: undefined, AUTH_AUDIENCE: undefined, AUTH_ISSUER: undefined });
    const personal = await signToken({ tid: '9188040d-6c67-4c5b-b112-36a304b66dad' });
    for (let i = 0; i < 2; i++) await expect(auth.authenticate(`Bearer ${personal}`)).rejects.toMatchObject({ status: 403 });
  });
});
