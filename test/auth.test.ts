import { SignJWT, base64url, exportSPKI } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { AuthConfigError, PERSONAL_ACCOUNT_TENANT, jwtAuthenticator } from '../src/api/jwt-auth.js';
import { OTHER_TENANT, TENANT, TEST_SECRET, createApiContext, testConfig, type ApiContext } from './support/context.js';
import { generateSigningKey, startJwksServer, type JwksServer, type SigningKey } from './support/jwks-server.js';

const OPS = '/v1.0/external/connections/contosohr/operations';
const WRITE = 'ExternalConnection.ReadWrite.All';
const READ = 'ExternalConnection.Read.All';
const AUDIENCE = 'api://connection-operations';
const ISSUER = `https://login.microsoftonline.com/${TENANT}/v2.0`;
const REALM = 'Bearer realm="connection-operations"';

/** The exact RFC 6750 challenge the service sends for a rejected token. */
const challenge = (error: 'invalid_request' | 'invalid_token', description: string) =>
  `${REALM}, error="${error}", error_description="${description}"`;

// ---- tokens ----

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Claims of a valid delegated token; a claim set to undefined is left out. */
function claimsOf(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { tid: TENANT, scp: WRITE, iat: nowSeconds(), exp: nowSeconds() + 600, ...overrides };
}

async function hs256(
  overrides: Record<string, unknown> = {},
  { secret = TEST_SECRET, header = {} }: { secret?: string | Uint8Array; header?: Record<string, unknown> } = {},
): Promise<string> {
  const key = typeof secret === 'string' ? new TextEncoder().encode(secret) : secret;
  return new SignJWT(claimsOf(overrides)).setProtectedHeader({ alg: 'HS256', typ: 'JWT', ...header }).sign(key);
}

async function signedBy(key: SigningKey, overrides: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT(claimsOf(overrides))
    .setProtectedHeader({ alg: key.alg, typ: 'JWT', kid: key.kid, ...header })
    .sign(key.privateKey);
}

/** An unsecured JWT (RFC 7519 §6), written by hand: jose refuses to produce one. */
function unsecured(overrides: Record<string, unknown> = {}): string {
  const encode = (value: unknown) => base64url.encode(JSON.stringify(value));
  return `${encode({ alg: 'none', typ: 'JWT' })}.${encode(claimsOf(overrides))}.`;
}

// ---- fixtures ----

/** Served by the JWKS server from the start. */
let rsa: SigningKey;
let ec: SigningKey;
/** Never served. */
let stranger: SigningKey;
/** Claims the served RSA key's kid, but is another key. */
let impostor: SigningKey;
/** A second served RSA key, so a token without kid matches two keys. */
let spare: SigningKey;
let jwks: JwksServer;

beforeAll(async () => {
  [rsa, ec, stranger, impostor, spare] = await Promise.all([
    generateSigningKey('RS256', 'rsa-1'),
    generateSigningKey('ES256', 'ec-1'),
    generateSigningKey('RS256', 'never-served'),
    generateSigningKey('RS256', 'rsa-1'),
    generateSigningKey('RS256', 'rsa-spare'),
  ]);
  jwks = await startJwksServer([rsa.jwk, ec.jwk, spare.jwk]);
});
afterAll(async () => {
  await jwks.stop();
});

/** Contexts this test opened; each test closes its own. */
const opened: ApiContext[] = [];
async function context(overrides: Record<string, string> = {}): Promise<ApiContext> {
  const ctx = await createApiContext(overrides);
  opened.push(ctx);
  return ctx;
}
afterEach(async () => {
  await Promise.all(opened.splice(0).map((ctx) => ctx.close()));
  vi.useRealTimers();
});

/** Sends a request with exactly this Authorization header (none when undefined). */
async function send(ctx: ApiContext, method: 'GET' | 'POST', authorization: string | undefined, path = OPS): Promise<Response> {
  const headers: Record<string, string> = {};
  if (authorization !== undefined) headers.authorization = authorization;
  if (method === 'POST') {
    headers['content-type'] = 'application/json';
    return ctx.app.request(path, { method, headers, body: JSON.stringify({}) });
  }
  return ctx.app.request(path, { method, headers });
}

interface GraphErrorBody {
  error: { code: string; message: string; innerError: Record<string, string> };
}

/** Asserts Graph's error shape and returns the parsed body and its raw text. */
async function expectGraphError(response: Response, status: number, code: string): Promise<{ body: GraphErrorBody; text: string }> {
  const text = await response.text();
  expect(response.status, text).toBe(status);
  const body = JSON.parse(text) as GraphErrorBody;
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  expect(body.error.innerError['request-id']).toBe(response.headers.get('request-id'));
  expect(body.error.innerError.date).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  return { body, text };
}

/** Neither the body nor any header repeats the token or its signature. */
function expectNoTokenEcho(response: Response, text: string, token: string | undefined): void {
  if (!token) return;
  const secrets = [token, ...token.split('.').filter((part) => part.length >= 16)];
  const headers = [...response.headers.values()].join('\n');
  for (const secret of secrets) {
    expect(text).not.toContain(secret);
    expect(headers).not.toContain(secret);
  }
}

// ---- the fault table ----

interface Fault {
  fault: string;
  env?: () => Record<string, string>;
  authorization: () => Promise<string | undefined>;
  method?: 'GET' | 'POST';
  status: 401 | 403;
  code: string;
  /** The exact WWW-Authenticate header, or null when there must be none. */
  wwwAuthenticate: string | null;
  message?: RegExp;
}

const jwksOnly = () => ({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: jwks.url });
const secretAndJwks = () => ({ AUTH_JWKS_URL: jwks.url });
const bearer = async (token: Promise<string> | string) => `Bearer ${await token}`;

const invalidToken = (description: string) => challenge('invalid_token', description);
const MALFORMED = invalidToken('The token is malformed.');
const BAD_SIGNATURE = invalidToken('The token signature is invalid.');
const ALG_REFUSED = invalidToken('The token signing algorithm is not accepted.');

const faults: Fault[] = [
  {
    fault: 'the Authorization header is missing',
    authorization: async () => undefined,
    status: 401,
    code: 'InvalidAuthenticationToken',
    // RFC 6750 §3.1: no error code when the request carries no credentials at all.
    wwwAuthenticate: REALM,
  },
  {
    fault: 'the scheme is Basic',
    authorization: async () => `Basic ${Buffer.from('user:password').toString('base64')}`,
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: challenge('invalid_request', "The Authorization header must be 'Bearer <token>'."),
  },
  {
    fault: 'the Bearer scheme carries no token',
    authorization: async () => 'Bearer ',
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: challenge('invalid_request', "The Authorization header must be 'Bearer <token>'."),
  },
  {
    fault: 'the token is garbage',
    authorization: () => bearer('this-is-not-a-jwt'),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: MALFORMED,
  },
  {
    fault: 'the token has three segments of garbage',
    authorization: () => bearer('aGVsbG8.d29ybGQ.c2lnbmF0dXJl'),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: MALFORMED,
  },
  {
    fault: 'the token is signed with another secret',
    authorization: () => bearer(hs256({}, { secret: 'another-secret-that-is-long-enough-for-hs256' })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: BAD_SIGNATURE,
  },
  {
    fault: 'the token expired beyond the 30 s clock tolerance',
    authorization: () => bearer(hs256({ iat: nowSeconds() - 3600, exp: nowSeconds() - 45 })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has expired.'),
  },
  {
    fault: 'the token is not valid before a time beyond the 30 s clock tolerance',
    authorization: () => bearer(hs256({ nbf: nowSeconds() + 45 })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token is not yet valid.'),
  },
  {
    fault: 'the token has no exp claim',
    authorization: () => bearer(hs256({ exp: undefined })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has no exp claim.'),
  },
  {
    fault: 'the token exp is not a number',
    authorization: () => bearer(hs256({ exp: 'tomorrow' })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken("The token's exp claim is not accepted."),
  },
  {
    fault: 'the aud differs from AUTH_AUDIENCE',
    env: () => ({ AUTH_AUDIENCE: AUDIENCE }),
    authorization: () => bearer(hs256({ aud: 'api://someone-else' })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken("The token's aud claim is not accepted."),
  },
  {
    fault: 'the token has no aud while AUTH_AUDIENCE is set',
    env: () => ({ AUTH_AUDIENCE: AUDIENCE }),
    authorization: () => bearer(hs256()),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has no aud claim.'),
  },
  {
    fault: 'the iss differs from AUTH_ISSUER',
    env: () => ({ AUTH_ISSUER: ISSUER }),
    authorization: () => bearer(hs256({ iss: 'https://login.example.com/evil/v2.0' })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken("The token's iss claim is not accepted."),
  },
  {
    fault: 'the token is unsecured (alg none) and a secret is configured',
    authorization: () => bearer(unsecured()),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'the token is unsecured (alg none) and only a JWKS is configured',
    env: jwksOnly,
    authorization: () => bearer(unsecured()),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'an HS256 token is keyed with the PEM of the served RSA public key (secret and JWKS configured)',
    env: secretAndJwks,
    authorization: async () => bearer(hs256({}, { secret: await exportSPKI(rsa.publicKey), header: { kid: rsa.kid } })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: BAD_SIGNATURE,
  },
  {
    fault: 'an HS256 token is keyed with the PEM of the served RSA public key (only JWKS configured)',
    env: jwksOnly,
    authorization: async () => bearer(hs256({}, { secret: await exportSPKI(rsa.publicKey), header: { kid: rsa.kid } })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'an HS256 token is keyed with the served RSA JWK (only JWKS configured)',
    env: jwksOnly,
    authorization: () => bearer(hs256({}, { secret: JSON.stringify(rsa.jwk), header: { kid: rsa.kid } })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'an RS256 token arrives while only a secret is configured',
    authorization: () => bearer(signedBy(rsa)),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'an HS384 token is signed with the configured secret',
    authorization: async () =>
      bearer(new SignJWT(claimsOf()).setProtectedHeader({ alg: 'HS384' }).sign(new TextEncoder().encode(TEST_SECRET))),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: ALG_REFUSED,
  },
  {
    fault: 'the kid is one the JWKS never served',
    env: jwksOnly,
    authorization: () => bearer(signedBy(stranger)),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('No signing key matches the token.'),
  },
  {
    fault: 'the token claims a served kid but is signed with another key',
    env: jwksOnly,
    authorization: () => bearer(signedBy(impostor)),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: BAD_SIGNATURE,
  },
  {
    fault: 'an RS256 token names the kid of the served EC key',
    env: jwksOnly,
    authorization: () => bearer(signedBy(rsa, {}, { kid: ec.kid })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('No signing key matches the token.'),
  },
  {
    fault: 'an RS256 token has no kid and the JWKS serves two RSA keys',
    env: jwksOnly,
    authorization: () => bearer(signedBy(rsa, {}, { kid: undefined })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has no kid and several signing keys could match it.'),
  },
  {
    fault: 'the token has no tid',
    authorization: () => bearer(hs256({ tid: undefined })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has no valid tid (tenant) claim.'),
  },
  {
    fault: 'the tid carries Redis key syntax',
    authorization: () => bearer(hs256({ tid: `${TENANT}}:op:*` })),
    status: 401,
    code: 'InvalidAuthenticationToken',
    wwwAuthenticate: invalidToken('The token has no valid tid (tenant) claim.'),
  },
  {
    fault: 'the token grants only unrelated scopes',
    authorization: () => bearer(hs256({ scp: 'User.Read Mail.Send' })),
    method: 'GET',
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
  },
  {
    fault: 'the permission is a prefix of a real one inside a longer scp word',
    authorization: () => bearer(hs256({ scp: `${WRITE}X`, roles: [`x${WRITE}`] })),
    method: 'GET',
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
  },
  {
    fault: 'roles is a string instead of an array',
    authorization: () => bearer(hs256({ scp: undefined, roles: WRITE })),
    method: 'GET',
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
  },
  {
    fault: 'a read-only token (ExternalConnection.Read.All) creates',
    authorization: () => bearer(hs256({ scp: READ })),
    method: 'POST',
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
    message: /ExternalConnection\.ReadWrite/,
  },
  {
    fault: 'the token is of the personal Microsoft account tenant',
    authorization: () => bearer(hs256({ tid: PERSONAL_ACCOUNT_TENANT })),
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
    message: /personal .*accounts are not supported/i,
  },
  {
    fault: 'the token is of the personal Microsoft account tenant, in capitals',
    authorization: () => bearer(hs256({ tid: PERSONAL_ACCOUNT_TENANT.toUpperCase() })),
    method: 'POST',
    status: 403,
    code: 'accessDenied',
    wwwAuthenticate: null,
    message: /personal .*accounts are not supported/i,
  },
];

/** What a row's challenge says, for the test name. */
function challengeSays(header: string | null): string {
  if (header === null) return 'no WWW-Authenticate';
  const error = /error="([^"]+)"/.exec(header)?.[1];
  return error ? `error="${error}"` : 'a bare Bearer challenge';
}

describe('token faults', () => {
  it.each(faults.map((fault) => [`answers ${fault.status} with ${challengeSays(fault.wwwAuthenticate)} when ${fault.fault}`, fault] as const))(
    '%s',
    async (_name, { env, authorization, method = 'GET', status, code, wwwAuthenticate, message }) => {
      const ctx = await context(env?.() ?? {});
      const header = await authorization();
      const token = header?.replace(/^\S+\s*/, '');
      const response = await send(ctx, method, header);
      const { body, text } = await expectGraphError(response, status, code);
      expect(response.headers.get('www-authenticate')).toBe(wwwAuthenticate);
      if (message) expect(body.error.message).toMatch(message);
      expectNoTokenEcho(response, text, token);
    },
  );

  it('answers a bad token the same way on every route family and version prefix', async () => {
    const ctx = await context();
    const token = await hs256({}, { secret: 'another-secret-that-is-long-enough-for-hs256' });
    for (const prefix of ['', '/v1.0', '/beta']) {
      for (const family of ['/external/connections', '/connections']) {
        for (const tail of ['/contosohr/operations', '/contosohr/operations/op1', '/contosohr/operations/$ref']) {
          const method = tail.endsWith('$ref') ? 'POST' : 'GET';
          const response = await send(ctx, method, `Bearer ${token}`, `${prefix}${family}${tail}`);
          await expectGraphError(response, 401, 'InvalidAuthenticationToken');
          expect(response.headers.get('www-authenticate')).toBe(BAD_SIGNATURE);
        }
      }
    }
  });
});

// ---- accepted tokens ----

interface Accepted {
  token: string;
  env?: () => Record<string, string>;
  authorization: () => Promise<string>;
  method: 'GET' | 'POST';
  status: 200 | 201;
}

const accepted: Accepted[] = [
  { token: 'a delegated token with the write scope among others', authorization: () => bearer(hs256({ scp: `openid ${WRITE} profile` })), method: 'POST', status: 201 },
  { token: 'a delegated ReadWrite.OwnedBy token', authorization: () => bearer(hs256({ scp: 'ExternalConnection.ReadWrite.OwnedBy' })), method: 'POST', status: 201 },
  { token: 'an application token whose roles array grants ReadWrite.OwnedBy', authorization: () => bearer(hs256({ scp: undefined, roles: ['Other.Role', 'ExternalConnection.ReadWrite.OwnedBy'] })), method: 'POST', status: 201 },
  { token: 'an application token whose roles array grants Read.All', authorization: () => bearer(hs256({ scp: undefined, roles: [READ] })), method: 'GET', status: 200 },
  { token: 'a token that expired 20 s ago, within the clock tolerance', authorization: () => bearer(hs256({ iat: nowSeconds() - 600, exp: nowSeconds() - 20 })), method: 'POST', status: 201 },
  { token: 'a token valid from 20 s ahead, within the clock tolerance', authorization: () => bearer(hs256({ nbf: nowSeconds() + 20 })), method: 'POST', status: 201 },
  { token: 'a token whose scheme is written in lower case', authorization: async () => `bearer ${await hs256()}`, method: 'POST', status: 201 },
  {
    token: 'a token with the configured aud and iss',
    env: () => ({ AUTH_AUDIENCE: AUDIENCE, AUTH_ISSUER: ISSUER }),
    authorization: () => bearer(hs256({ aud: AUDIENCE, iss: ISSUER })),
    method: 'POST',
    status: 201,
  },
  { token: 'an RS256 token whose key the JWKS serves', env: jwksOnly, authorization: () => bearer(signedBy(rsa)), method: 'POST', status: 201 },
  { token: 'an ES256 token whose key the JWKS serves', env: jwksOnly, authorization: () => bearer(signedBy(ec)), method: 'POST', status: 201 },
  { token: 'an ES256 token without kid when the JWKS serves one EC key', env: jwksOnly, authorization: () => bearer(signedBy(ec, {}, { kid: undefined })), method: 'GET', status: 200 },
  { token: 'an RS256 token while both a secret and a JWKS are configured', env: secretAndJwks, authorization: () => bearer(signedBy(rsa)), method: 'GET', status: 200 },
  { token: 'an HS256 token while both a secret and a JWKS are configured', env: secretAndJwks, authorization: () => bearer(hs256()), method: 'POST', status: 201 },
];

describe('accepted tokens', () => {
  it.each(accepted.map((row) => [`accepts ${row.token}`, row] as const))('%s', async (_name, { env, authorization, method, status }) => {
    const ctx = await context(env?.() ?? {});
    const response = await send(ctx, method, await authorization());
    expect(response.status, await response.clone().text()).toBe(status);
    expect(response.headers.get('www-authenticate')).toBeNull();
    const body = (await response.json()) as Record<string, unknown>;
    if (method === 'POST') expect(body).toMatchObject({ status: 'inprogress', error: null });
    else expect(body).toHaveProperty('value');
  });

  it('lets a read-only token read but answers 403 to its create', async () => {
    const ctx = await context();
    const readOnly = `Bearer ${await hs256({ scp: READ })}`;
    expect((await ctx.post(OPS, { id: 'visible' })).status).toBe(201);

    const denied = await send(ctx, 'POST', readOnly);
    await expectGraphError(denied, 403, 'accessDenied');

    const list = await send(ctx, 'GET', readOnly);
    expect(list.status).toBe(200);
    expect(((await list.json()) as { value: { id: string }[] }).value.map((operation) => operation.id)).toEqual(['visible']);
    const read = await send(ctx, 'GET', readOnly, `${OPS}/visible`);
    expect(read.status).toBe(200);
    expect(await read.json()).toMatchObject({ id: 'visible', status: 'inprogress' });
  });
});

// ---- JWKS: rotation and outage ----

describe('JWKS keys', () => {
  it('accepts a token of a key published after the first fetch once the refetch cooldown has passed', async () => {
    const server = await startJwksServer([rsa.jwk]);
    try {
      const ctx = await context({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: server.url });
      expect((await send(ctx, 'GET', await bearer(signedBy(rsa)))).status).toBe(200);
      expect(server.fetches).toBe(1);

      const rotated = await generateSigningKey('RS256', 'rsa-2');
      server.keys = [rsa.jwk, rotated.jwk];

      // jose refetches on an unknown kid at most every 30 s, so a flood of made-up kids cannot
      // hammer the identity provider: inside that window the new kid is still unknown.
      const early = await send(ctx, 'GET', await bearer(signedBy(rotated)));
      await expectGraphError(early, 401, 'InvalidAuthenticationToken');
      expect(early.headers.get('www-authenticate')).toBe(invalidToken('No signing key matches the token.'));
      expect(server.fetches).toBe(1);

      // Move the clock past the cooldown instead of sleeping through it.
      vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
      vi.setSystemTime(Date.now() + 31_000);

      const rotatedToken = await bearer(signedBy(rotated));
      expect((await send(ctx, 'GET', rotatedToken)).status).toBe(200);
      expect(server.fetches).toBe(2);
      // The old key, still published, keeps working, and the new one is cached now.
      expect((await send(ctx, 'GET', await bearer(signedBy(rsa)))).status).toBe(200);
      expect((await send(ctx, 'POST', rotatedToken)).status).toBe(201);
      expect(server.fetches).toBe(2);

      const unknown = await send(ctx, 'GET', await bearer(signedBy(stranger)));
      await expectGraphError(unknown, 401, 'InvalidAuthenticationToken');
      expect(unknown.headers.get('www-authenticate')).toBe(invalidToken('No signing key matches the token.'));
    } finally {
      await server.stop();
    }
  });

  it('refuses a token of a key the JWKS stopped serving once the set is refetched', async () => {
    const server = await startJwksServer([rsa.jwk]);
    try {
      const ctx = await context({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: server.url });
      const retiredToken = await bearer(signedBy(rsa));
      expect((await send(ctx, 'GET', retiredToken)).status).toBe(200);

      const next = await generateSigningKey('ES256', 'ec-2');
      server.keys = [next.jwk];
      vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
      // Past the 10 min cache age: the next request refetches the set.
      vi.setSystemTime(Date.now() + 11 * 60_000);

      const response = await send(ctx, 'GET', await bearer(signedBy(rsa)));
      await expectGraphError(response, 401, 'InvalidAuthenticationToken');
      expect(response.headers.get('www-authenticate')).toBe(invalidToken('No signing key matches the token.'));
      expect((await send(ctx, 'GET', await bearer(signedBy(next)))).status).toBe(200);
    } finally {
      await server.stop();
    }
  });

  const outages = [
    { outage: 'the JWKS server is stopped', breakIt: (server: JwksServer) => server.stop(), repair: (server: JwksServer) => server.restart() },
    { outage: 'the JWKS server answers 500', mode: 'error' as const },
    { outage: 'the JWKS server answers 200 with a body that is not JSON', mode: 'garbage' as const },
    { outage: 'the JWKS server resets the connection', mode: 'reset' as const },
    { outage: 'the JWKS server hangs past the 2 s timeout', mode: 'hang' as const },
  ];

  it.each(outages.map((row) => [`answers 503 with Retry-After, then accepts the token once it is back, when ${row.outage}`, row] as const))(
    '%s',
    async (_name, { breakIt, repair, mode }) => {
      const server = await startJwksServer([rsa.jwk]);
      try {
        const ctx = await context({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: server.url });
        if (breakIt) await breakIt(server);
        if (mode) server.mode = mode;
        const token = await bearer(signedBy(rsa));

        const started = performance.now();
        const response = await send(ctx, 'GET', token);
        const { text } = await expectGraphError(response, 503, 'serviceNotAvailable');
        expect(performance.now() - started).toBeLessThan(5000);
        expect(response.headers.get('retry-after')).toBe('1');
        expect(response.headers.get('www-authenticate')).toBeNull();
        expectNoTokenEcho(response, text, token.slice('Bearer '.length));

        if (repair) await repair(server);
        server.mode = 'serve';
        expect((await send(ctx, 'GET', token)).status).toBe(200);
      } finally {
        await server.stop();
      }
    },
  );

  it('keeps accepting tokens of cached keys while the JWKS is down, and answers 503 for unknown keys once it may refetch', async () => {
    const server = await startJwksServer([rsa.jwk]);
    try {
      const ctx = await context({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: server.url });
      expect((await send(ctx, 'GET', await bearer(signedBy(rsa)))).status).toBe(200);
      server.mode = 'error';

      expect((await send(ctx, 'GET', await bearer(signedBy(rsa)))).status).toBe(200);

      // Past the 10 min cache age every request tries to refetch, and each attempt fails.
      vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
      vi.setSystemTime(Date.now() + 11 * 60_000);
      const fetchesBefore = server.fetches;
      expect((await send(ctx, 'POST', await bearer(signedBy(rsa)))).status).toBe(201);
      expect(server.fetches).toBeGreaterThan(fetchesBefore);

      const unknown = await send(ctx, 'GET', await bearer(signedBy(stranger)));
      await expectGraphError(unknown, 503, 'serviceNotAvailable');
      expect(unknown.headers.get('retry-after')).toBe('1');
    } finally {
      await server.stop();
    }
  });
});

// ---- tenants ----

describe('tenant isolation', () => {
  it('creates the same client id in two tenants without a conflict', async () => {
    const ctx = await context();
    const tenantB = `Bearer ${await hs256({ tid: OTHER_TENANT })}`;
    const a = await ctx.post(OPS, { id: 'shared-id' });
    const b = await ctx.app.request(OPS, {
      method: 'POST',
      headers: { authorization: tenantB, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'shared-id' }),
    });
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    // Within one tenant the id is taken.
    expect((await ctx.post(OPS, { id: 'shared-id' })).status).toBe(409);
  });

  it("answers 404 to another tenant's read of an operation", async () => {
    const ctx = await context();
    expect((await ctx.post(OPS, { id: 'tenant-a-only' })).status).toBe(201);
    const response = await send(ctx, 'GET', `Bearer ${await hs256({ tid: OTHER_TENANT })}`, `${OPS}/tenant-a-only`);
    await expectGraphError(response, 404, 'itemNotFound');
    expect((await ctx.request(`${OPS}/tenant-a-only`)).status).toBe(200);
  });

  it("leaves another tenant's operations out of a listing", async () => {
    const ctx = await context();
    const tenantB = `Bearer ${await hs256({ tid: OTHER_TENANT })}`;
    for (const id of ['a1', 'a2', 'a3']) expect((await ctx.post(OPS, { id })).status).toBe(201);
    const createB = await ctx.app.request(OPS, {
      method: 'POST',
      headers: { authorization: tenantB, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'b1' }),
    });
    expect(createB.status).toBe(201);

    const listB = await send(ctx, 'GET', tenantB, `${OPS}?$count=true`);
    expect(await listB.json()).toMatchObject({ '@odata.count': 1, value: [{ id: 'b1' }] });
    const listA = (await (await ctx.request(`${OPS}?$count=true`)).json()) as { '@odata.count': number; value: { id: string }[] };
    expect(listA['@odata.count']).toBe(3);
    expect(listA.value.map((operation) => operation.id).sort()).toEqual(['a1', 'a2', 'a3']);
  });

  it('treats a tid in capitals as the same tenant', async () => {
    const ctx = await context();
    expect((await ctx.post(OPS, { id: 'case' })).status).toBe(201);
    const upper = `Bearer ${await hs256({ tid: TENANT.toUpperCase() })}`;
    expect((await send(ctx, 'GET', upper, `${OPS}/case`)).status).toBe(200);
  });

  it('keeps tenants whose non-GUID tids differ only in case apart', async () => {
    const ctx = await context();
    const mixed = `Bearer ${await hs256({ tid: 'CaseTenant' })}`;
    const lower = `Bearer ${await hs256({ tid: 'casetenant' })}`;
    const create = await ctx.app.request(OPS, {
      method: 'POST',
      headers: { authorization: mixed, 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'case-kept' }),
    });
    expect(create.status).toBe(201);
    expect((await send(ctx, 'GET', mixed, `${OPS}/case-kept`)).status).toBe(200);
    await expectGraphError(await send(ctx, 'GET', lower, `${OPS}/case-kept`), 404, 'itemNotFound');
    expect(await (await send(ctx, 'GET', lower, `${OPS}?$count=true`)).json()).toMatchObject({ '@odata.count': 0 });
  });
});

// ---- clock tolerance ----

describe('AUTH_CLOCK_TOLERANCE_SECONDS', () => {
  it('refuses a token 5 s past exp with a tolerance of 0, and accepts it with the default 30', async () => {
    const token = `Bearer ${await hs256({ iat: nowSeconds() - 600, exp: nowSeconds() - 5 })}`;
    const strict = await context({ AUTH_CLOCK_TOLERANCE_SECONDS: '0' });
    await expectGraphError(await send(strict, 'GET', token, OPS), 401, 'InvalidAuthenticationToken');
    const lenient = await context();
    expect((await send(lenient, 'GET', token, OPS)).status).toBe(200);
  });
});

// ---- configuration ----

describe('auth configuration', () => {
  it('refuses to build an authenticator with neither AUTH_JWT_SECRET nor AUTH_JWKS_URL', () => {
    const config = testConfig({ AUTH_JWT_SECRET: '' });
    expect(config.AUTH_JWT_SECRET).toBeUndefined();
    expect(() => jwtAuthenticator(config)).toThrow(AuthConfigError);
    expect(() => jwtAuthenticator(config)).toThrow(/AUTH_JWT_SECRET.*AUTH_JWKS_URL/);
  });

  it('builds an authenticator with only AUTH_JWKS_URL', () => {
    expect(() => jwtAuthenticator(testConfig({ AUTH_JWT_SECRET: '', AUTH_JWKS_URL: 'http://127.0.0.1:9/keys' }))).not.toThrow();
  });
});
