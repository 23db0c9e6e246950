import { SignJWT } from 'jose';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { jwtAuthenticator } from '../src/api/jwt-auth.js';
import { signToken, TENANT, TEST_SECRET } from './support/context.js';
import { generateSigningKey, startJwksServer } from './support/jwks-server.js';

afterEach(() => {
  vi.useRealTimers();
});

const hs256Only = { AUTH_JWT_SECRET: TEST_SECRET, AUTH_JWKS_URL: undefined, AUTH_AUDIENCE: undefined, AUTH_ISSUER: undefined };
const nowSeconds = () => Math.floor(Date.now() / 1000);

describe('verified-token cache', () => {
  it('refuses a cached token once it expires', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const auth = jwtAuthenticator(hs256Only);
    const token = await signToken({}, { expiresIn: '60s' });
    expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ canWrite: true });
    expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ canWrite: true }); // from the cache
    vi.setSystemTime(Date.now() + 61_000 + 30_000); // past exp and the clock tolerance
    await expect(auth.authenticate(`Bearer ${token}`)).rejects.toMatchObject({ status: 401, message: 'The token has expired.' });
  });

  // A refusal of a token that becomes valid later: a cache of refusals would keep refusing it.

  it('never caches a refusal: a token refused as not yet valid is accepted once its nbf has come', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const auth = jwtAuthenticator(hs256Only);
    // nbf a minute ahead: past the 30 s clock tolerance.
    const token = await new SignJWT({ tid: TENANT, scp: 'ExternalConnection.ReadWrite.All', nbf: nowSeconds() + 60 })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode(TEST_SECRET));
    await expect(auth.authenticate(`Bearer ${token}`)).rejects.toMatchObject({ status: 401, message: 'The token is not yet valid.' });
    vi.setSystemTime(Date.now() + 61_000);
    expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ tenantId: TENANT, canWrite: true });
  });

  it('never caches a refusal: a token refused for an unknown kid is accepted once the JWKS serves its key', async () => {
    const known = await generateSigningKey('RS256', 'known');
    const rotated = await generateSigningKey('RS256', 'rotated-in');
    const jwks = await startJwksServer([known.jwk]);
    try {
      const auth = jwtAuthenticator({ AUTH_JWT_SECRET: undefined, AUTH_JWKS_URL: jwks.url, AUTH_AUDIENCE: undefined, AUTH_ISSUER: undefined });
      const token = await new SignJWT({ tid: TENANT, scp: 'ExternalConnection.ReadWrite.All' })
        .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: rotated.kid })
        .setIssuedAt()
        .setExpirationTime('10m')
        .sign(rotated.privateKey);
      await expect(auth.authenticate(`Bearer ${token}`)).rejects.toMatchObject({ status: 401, message: 'No signing key matches the token.' });

      jwks.keys = [known.jwk, rotated.jwk];
      // Past jose's 30 s cooldown between refetches for an unknown kid, without sleeping through it.
      vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
      vi.setSystemTime(Date.now() + 31_000);
      expect(await auth.authenticate(`Bearer ${token}`)).toMatchObject({ tenantId: TENANT, canWrite: true });
    } finally {
      await jwks.stop();
    }
  });
});
