import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  errors as joseErrors,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';
import type { Config } from '../shared/config.js';
import { TENANT_ID_PATTERN } from '../shared/operation.js';
import type { Authenticator, Principal } from './auth.js';
import { GraphError, UNAVAILABLE_RETRY_AFTER_SECONDS } from './errors.js';

/** The personal Microsoft account tenant: its tokens are refused, as Graph refuses them here. */
export const PERSONAL_ACCOUNT_TENANT = '9188040d-6c67-4c5b-b112-36a304b66dad';

const WRITE_PERMISSIONS = ['ExternalConnection.ReadWrite.OwnedBy', 'ExternalConnection.ReadWrite.All'];
const READ_PERMISSIONS = [...WRITE_PERMISSIONS, 'ExternalConnection.Read.All'];
/** Leeway for clocks that disagree a little, on `exp` and `nbf`, unless AUTH_CLOCK_TOLERANCE_SECONDS says otherwise. */
const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;
/** How long one JWKS fetch may take before the request answers 503. */
const JWKS_TIMEOUT_MS = 2000;
const REALM = 'connection-operations';

type AuthConfig = Pick<Config, 'AUTH_JWT_SECRET' | 'AUTH_JWKS_URL' | 'AUTH_AUDIENCE' | 'AUTH_ISSUER'> &
  Partial<Pick<Config, 'AUTH_CLOCK_TOLERANCE_SECONDS'>>;

export class AuthConfigError extends Error {
  override name = 'AuthConfigError';
}

/**
 * Validates `Authorization: Bearer <JWT>` like an Entra ID v2 access token: HS256 with
 * AUTH_JWT_SECRET and/or RS256/ES256 from AUTH_JWKS_URL (key by `kid`, cached by jose and
 * refetched on an unknown `kid`), `exp`/`nbf`, and `aud`/`iss` when configured.
 */
export function jwtAuthenticator(config: AuthConfig): Authenticator {
  if (!config.AUTH_JWT_SECRET && !config.AUTH_JWKS_URL) {
    throw new AuthConfigError('No token verification configured: set AUTH_JWT_SECRET and/or AUTH_JWKS_URL.');
  }
  // Imported once: handing jose the raw bytes makes it import a WebCrypto key on every verify.
  const secret = config.AUTH_JWT_SECRET
    ? crypto.subtle.importKey('raw', new TextEncoder().encode(config.AUTH_JWT_SECRET), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
    : undefined;
  const verified = new VerifiedTokenCache();
  const jwks = config.AUTH_JWKS_URL ? remoteKeySet(new URL(config.AUTH_JWKS_URL)) : undefined;
  const claims = {
    clockTolerance: config.AUTH_CLOCK_TOLERANCE_SECONDS ?? DEFAULT_CLOCK_TOLERANCE_SECONDS,
    // Entra ID rejects access tokens without an expiry; a token without one would never expire.
    requiredClaims: ['exp'],
    ...(config.AUTH_AUDIENCE ? { audience: config.AUTH_AUDIENCE } : {}),
    ...(config.AUTH_ISSUER ? { issuer: config.AUTH_ISSUER } : {}),
  };

  async function verify(token: string): Promise<JWTPayload> {
    // The header's alg only picks which configured key to try; jose then enforces that the
    // token's alg is one allowed for that key, so an HS256 token can never be checked against
    // a public key (algorithm confusion) and `none` is never accepted.
    const alg = decodeProtectedHeader(token).alg;
    if (alg === 'HS256' && secret) {
      return (await jwtVerify(token, await secret, { ...claims, algorithms: ['HS256'] })).payload;
    }
    if ((alg === 'RS256' || alg === 'ES256') && jwks) {
      return (await jwtVerify(token, jwks, { ...claims, algorithms: ['RS256', 'ES256'] })).payload;
    }
    throw new joseErrors.JOSEAlgNotAllowed(`tokens signed with ${String(alg)} are not accepted`);
  }

  return {
    async authenticate(authorization) {
      if (!authorization) throw unauthorized(undefined, 'Access token is empty.');
      const match = /^Bearer +([A-Za-z0-9_.~+/=-]+)$/i.exec(authorization.trim());
      if (!match) throw unauthorized('invalid_request', 'The Authorization header must be "Bearer <token>".');

      const token = match[1]!;
      const known = verified.get(token);
      if (known) return known;
      let payload: JWTPayload;
      try {
        payload = await verify(token);
      } catch (error) {
        throw tokenError(error);
      }
      const principal = principalOf(payload);
      verified.set(token, principal, payload.exp!);
      return principal;
    },
  };
}

/**
 * The keys of AUTH_JWKS_URL: jose fetches them, caches them (10 min), and refetches on an
 * unknown `kid` (at most every 30 s). When a fetch fails (endpoint down, slow, not 200, not a
 * key set), the keys last fetched still verify the tokens they match, so an identity provider's
 * outage does not refuse tokens whose key is known; a token whose key is not known then throws
 * KeySetUnavailable (a 503: the caller can retry, the token may well be valid).
 */
function remoteKeySet(url: URL): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(url, { timeoutDuration: JWKS_TIMEOUT_MS });
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (error) {
      if (!isKeySetFetchFailure(error)) throw error;
      const lastKnown = remote.jwks();
      if (lastKnown) {
        try {
          return await createLocalJWKSet(lastKnown)(header, token);
        } catch {
          // Not among the last known keys: it may be in the set we cannot fetch.
        }
      }
      throw new KeySetUnavailable('The JWKS cannot be fetched', { cause: error });
    }
  };
}

class KeySetUnavailable extends Error {
  override name = 'KeySetUnavailable';
}

/**
 * What jose throws when the key set cannot be obtained, as opposed to a token that matches no
 * key: a timeout, an invalid set, its generic JOSEError for a non-200 answer or a body that is
 * not JSON, and fetch's own errors (connection refused or reset) that jose lets through.
 */
function isKeySetFetchFailure(error: unknown): boolean {
  if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid) return true;
  if (error instanceof joseErrors.JOSEError) return error.code === joseErrors.JOSEError.code;
  return error instanceof Error;
}

/**
 * Tokens already verified, with what they grant: a client sends the same token for an hour, and
 * verifying it again on every request is most of the API's CPU. An entry lives until the token
 * expires, at most CACHE_MAX_AGE_MS (so a key withdrawn from the JWKS stops being honoured
 * soon); only successes are cached, and the map is bounded (oldest entries go first).
 */
class VerifiedTokenCache {
  private static readonly MAX_ENTRIES = 10_000;
  private static readonly MAX_AGE_MS = 5 * 60_000;
  private readonly entries = new Map<string, { principal: Principal; until: number }>();

  get(token: string): Principal | undefined {
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    if (Date.now() < entry.until) return entry.principal;
    this.entries.delete(token);
    return undefined;
  }

  set(token: string, principal: Principal, expiresAtSeconds: number): void {
    if (this.entries.size >= VerifiedTokenCache.MAX_ENTRIES) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    this.entries.set(token, { principal, until: Math.min(expiresAtSeconds * 1000, Date.now() + VerifiedTokenCache.MAX_AGE_MS) });
  }
}

function principalOf(payload: JWTPayload): Principal {
  const tenantId = payload.tid;
  if (typeof tenantId !== 'string' || !TENANT_ID_PATTERN.test(tenantId)) {
    throw unauthorized('invalid_token', 'The token has no valid tid (tenant) claim.');
  }
  if (tenantId.toLowerCase() === PERSONAL_ACCOUNT_TENANT) {
    throw new GraphError(403, 'accessDenied', 'Personal Microsoft accounts are not supported; use a work or school account.');
  }
  const granted = new Set<string>();
  if (typeof payload.scp === 'string') for (const scope of payload.scp.split(' ')) granted.add(scope);
  if (Array.isArray(payload.roles)) for (const role of payload.roles) if (typeof role === 'string') granted.add(role);
  const canWrite = WRITE_PERMISSIONS.some((permission) => granted.has(permission));
  const canRead = READ_PERMISSIONS.some((permission) => granted.has(permission));
  return { tenantId: canonicalTenantId(tenantId), canRead, canWrite };
}

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A GUID tenant id (Entra ID's `tid`) is the same tenant in any case, so it is folded to lower
 *  case; any other tenant id is compared exactly: `CaseTenant` and `casetenant` are two tenants. */
export function canonicalTenantId(tenantId: string): string {
  return GUID.test(tenantId) ? tenantId.toLowerCase() : tenantId;
}

/** A 401 with the RFC 6750 challenge; the message never echoes the token. */
function unauthorized(error: 'invalid_request' | 'invalid_token' | undefined, description: string): GraphError {
  const challenge = error
    ? `Bearer realm="${REALM}", error="${error}", error_description="${description.replace(/"/g, "'")}"`
    : `Bearer realm="${REALM}"`;
  return new GraphError(401, 'InvalidAuthenticationToken', description, { 'WWW-Authenticate': challenge });
}

function tokenError(error: unknown): GraphError {
  if (error instanceof joseErrors.JWTExpired) return unauthorized('invalid_token', 'The token has expired.');
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    const reason =
      error.reason === 'missing'
        ? `The token has no ${error.claim} claim.`
        : error.claim === 'nbf'
          ? 'The token is not yet valid.'
          : `The token's ${error.claim} claim is not accepted.`;
    return unauthorized('invalid_token', reason);
  }
  if (error instanceof joseErrors.JWKSNoMatchingKey) return unauthorized('invalid_token', 'No signing key matches the token.');
  if (error instanceof joseErrors.JWKSMultipleMatchingKeys) {
    return unauthorized('invalid_token', 'The token has no kid and several signing keys could match it.');
  }
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) return unauthorized('invalid_token', 'The token signature is invalid.');
  if (error instanceof joseErrors.JOSEAlgNotAllowed) return unauthorized('invalid_token', 'The token signing algorithm is not accepted.');
  if (error instanceof KeySetUnavailable) {
    const unavailable = new GraphError(503, 'serviceNotAvailable', 'The token signing keys cannot be fetched right now; retry shortly.', {
      'Retry-After': String(UNAVAILABLE_RETRY_AFTER_SECONDS),
    });
    return Object.assign(unavailable, { cause: error.cause });
  }
  return unauthorized('invalid_token', 'The token is malformed.');
}
