import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHttpServer } from '../src/api/http-server.js';
import { PERSONAL_ACCOUNT_TENANT } from '../src/api/jwt-auth.js';
import { OTHER_TENANT, TENANT, TEST_SECRET, createApiContext, signToken, silentLog, type ApiContext } from './support/context.js';
import { rawRequest } from './support/raw-http.js';
import { withTimeout } from './support/wait.js';

/**
 * Hostile input, generated: every request, whatever its path, query, headers, body or token,
 * gets an answer within a deadline, never a 5xx (Redis is up), and the answer is either a
 * success with the resource's shape or Graph's error body.
 */

/** Per request; an answer later than this is a hang. */
const DEADLINE_MS = 5000;

let ctx: ApiContext;
const tally = { requests: 0, byStatus: new Map<number, number>() };
const startedAt = performance.now();

/** Named Authorization values, from valid to hostile; filled in beforeAll. */
const authorizations: Record<string, string> = {};

beforeAll(async () => {
  ctx = await createApiContext();
  const sign = (claims: Record<string, unknown>) =>
    new SignJWT({ tid: TENANT, scp: 'ExternalConnection.ReadWrite.All', ...claims })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setIssuedAt()
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode(TEST_SECRET));
  const valid = await signToken();
  Object.assign(authorizations, {
    write: `Bearer ${valid}`,
    writeLowerCase: `bearer ${valid}`,
    readOnly: `Bearer ${await signToken({ scp: 'ExternalConnection.Read.All' })}`,
    application: `Bearer ${await sign({ scp: undefined, roles: ['ExternalConnection.ReadWrite.OwnedBy'] })}`,
    otherTenant: `Bearer ${await signToken({ tid: OTHER_TENANT })}`,
    personal: `Bearer ${await signToken({ tid: PERSONAL_ACCOUNT_TENANT })}`,
    noPermission: `Bearer ${await signToken({ scp: 'User.Read' })}`,
    noTenant: `Bearer ${await sign({ tid: undefined })}`,
    badTenant: `Bearer ${await sign({ tid: '{t}:*' })}`,
    expired: `Bearer ${await signToken({}, { expiresIn: '-10m' })}`,
    otherSecret: `Bearer ${await signToken({}, { secret: 'another-secret-that-is-long-enough-for-hs256' })}`,
    tampered: `Bearer ${valid.slice(0, -4)}AAAA`,
    unsecured: `Bearer ${Buffer.from('{"alg":"none"}').toString('base64url')}.${valid.split('.')[1]}.`,
    basic: `Basic ${Buffer.from('user:password').toString('base64')}`,
  });
});

afterAll(async () => {
  await ctx?.close();
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
  const statuses = [...tally.byStatus].sort(([a], [b]) => a - b).map(([status, count]) => `${status}:${count}`).join(' ');
  console.log(`[fuzz] ${tally.requests} requests in ${seconds} s; statuses ${statuses}`);
});

// ---- sending and judging one request ----

interface FuzzRequest {
  method: string;
  path: string;
  headers: [string, string][];
  body?: string;
}

function describeRequest({ method, path, headers, body }: FuzzRequest): string {
  const shownBody = body === undefined ? '' : ` body=${JSON.stringify(body.length > 300 ? `${body.slice(0, 300)}…(${body.length})` : body)}`;
  return `${method} ${JSON.stringify(path)} headers=${JSON.stringify(headers)}${shownBody}`;
}

/** Sends the request through app.request and throws unless the answer is well-formed in time. */
async function fire(request: FuzzRequest): Promise<Response> {
  const headers = new Headers();
  for (const [name, value] of request.headers) {
    try {
      headers.append(name, value);
    } catch {
      // Not a header value any HTTP client could send (a raw newline, say): leave it out.
    }
  }
  const answer = (async () => {
    const response = await ctx.app.request(request.path, {
      method: request.method,
      headers,
      ...(request.body === undefined ? {} : { body: request.body }),
    });
    return { response, text: await response.text() };
  })();
  const { response, text } = await withTimeout(answer, DEADLINE_MS, () => `no answer within ${DEADLINE_MS} ms: ${describeRequest(request)}`);
  tally.requests += 1;
  tally.byStatus.set(response.status, (tally.byStatus.get(response.status) ?? 0) + 1);
  judge(request, response, text);
  return response;
}

function judge(request: FuzzRequest, response: Response, text: string): void {
  const fail = (why: string) => {
    throw new Error(`${why}\n  request: ${describeRequest(request)}\n  answer: ${response.status} ${text.slice(0, 500)}`);
  };
  if (response.status >= 500) fail('a 5xx answer');
  if (!response.headers.get('request-id')) fail('no request-id header');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    fail('a body that is not JSON');
  }
  if (typeof body !== 'object' || body === null) return fail('a body that is not an object');
  const record = body as Record<string, unknown>;
  if (response.status === 200 || response.status === 201) {
    const isOperation = typeof record.id === 'string' && typeof record.status === 'string';
    const isList = Array.isArray(record.value);
    if (!isOperation && !isList) fail('a success without id/status or value');
    return;
  }
  if (response.status < 400) fail('a status that is neither a success nor an error');
  const error = record.error as Record<string, unknown> | undefined;
  if (typeof error?.code !== 'string' || typeof error.message !== 'string') fail('an error without string error.code and error.message');
}

// ---- generators ----

const PREFIXES = ['', '/v1.0', '/beta'] as const;
const FAMILIES = ['/external/connections', '/connections'] as const;
/** Characters with a meaning to Redis keys or globs, to URLs, or to the key layout. */
const HOSTILE_CHARS = ['{', '}', '*', ':', '?', '[', ']', '\n', '\r', '\t', '|', '~', '%', '%%', '%2', '#', ' ', '/', '\\', '..', '.', '$', "'", '"', '\0', '&', '='];

const hostileText = fc
  .array(
    fc.oneof(
      fc.constantFrom(...HOSTILE_CHARS),
      fc.string({ maxLength: 4 }),
      fc.string({ unit: 'grapheme', maxLength: 3 }),
      fc.string({ unit: 'binary', maxLength: 2 }),
    ),
    { minLength: 1, maxLength: 10 },
  )
  .map((parts) => parts.join(''));

/** Connection ids that exist in the tests' data, so reads and conflicts happen. */
const KNOWN_CONNECTIONS = ['contosohr', 'fuzz1', 'FUZZ2', 'abc', 'x12345678901234567890123456789012'.slice(0, 32)];
/** Operation ids the creates reuse, so GETs find some and creates conflict. */
const KNOWN_OPERATIONS = ['op-1', 'op.2', 'op_3~', '0', '123456789', 'A'];

const validConnectionId = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...KNOWN_CONNECTIONS) },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z][A-Za-z0-9]{2,31}$/) },
);
const connectionId = fc.oneof(
  { weight: 5, arbitrary: validConnectionId },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z0-9]{0,40}$/) },
  { weight: 1, arbitrary: fc.stringMatching(/^\d{1,40}$/) },
  {
    weight: 1,
    arbitrary: fc.constantFrom('Microsoft1', 'microsoftx', 'SharePoint', 'sharepoint', 'MSFT_All_Connectors', 'None', 'ab', 'a'.repeat(33), 'ünïcode'),
  },
  { weight: 3, arbitrary: hostileText },
);

const validOperationId = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...KNOWN_OPERATIONS) },
  // The id's characters, less "." and ".." (which no URL can name): OPERATION_ID_PATTERN.
  { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/).filter((id) => id !== '.' && id !== '..') },
  { weight: 1, arbitrary: fc.stringMatching(/^\d{1,20}$/) },
  { weight: 1, arbitrary: fc.uuid() },
);
const operationId = fc.oneof(
  { weight: 3, arbitrary: validOperationId },
  { weight: 3, arbitrary: hostileText },
  { weight: 1, arbitrary: fc.constantFrom('$ref', '%24ref', '$count', '$value', '..', '.', '~', 'a'.repeat(128), 'a'.repeat(129)) },
  { weight: 1, arbitrary: fc.string({ minLength: 129, maxLength: 400 }) },
);

/** A path segment as a client might write it: percent-encoded, or raw (the URL parser then
 *  encodes, strips or reinterprets what it must). */
const segment = (text: fc.Arbitrary<string>) =>
  fc.tuple(text, fc.nat(9)).map(([raw, pick]) => (pick < 7 ? encodeURIComponent(raw) : raw));

const tail = fc.oneof(
  { weight: 3, arbitrary: fc.constant('/operations') },
  { weight: 2, arbitrary: fc.constantFrom('/operations/$ref', '/operations/%24ref', '/operations/', '', '/Operations', '/operations/$ref/x') },
  { weight: 3, arbitrary: segment(operationId).map((id) => `/operations/${id}`) },
  { weight: 1, arbitrary: segment(operationId).map((id) => `/operations/${id}/$ref`) },
  { weight: 1, arbitrary: segment(hostileText).map((rest) => `/${rest}`) },
);

const skipToken = fc.oneof(
  fc.tuple(fc.stringMatching(/^\d{1,17}$/), fc.oneof(validOperationId, hostileText)).map(([at, id]) => Buffer.from(`${at}.${id}`).toString('base64url')),
  fc.base64String({ maxLength: 60 }),
  fc.string({ maxLength: 40 }),
);
const optionName = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('$top', '$filter', '$skiptoken', '$count') },
  { weight: 2, arbitrary: fc.constantFrom('$select', '$expand', '$orderby', '$search', '$skip', 'top', '$TOP', '$format', '%24top', '') },
  { weight: 1, arbitrary: fc.string({ maxLength: 8 }) },
);
const optionValue = fc.oneof(
  fc.integer({ min: -5, max: 2000 }).map(String),
  fc.constantFrom(
    "status eq 'completed'",
    "status eq 'inprogress'",
    "status eq 'unspecified'",
    "status eq 'failed'",
    "status eq 'unknownFutureValue'",
    "status eq 'bogus'",
    "status ne 'failed'",
    "id eq '*'",
    'true',
    'false',
    'TRUE',
    '1e3',
    '0x10',
    ' 5',
    '',
    '999',
    '1000',
  ),
  skipToken,
  fc.string({ maxLength: 30 }),
  hostileText,
);
const queryString = fc
  .array(fc.tuple(optionName, optionValue, fc.nat(4)), { maxLength: 4 })
  .map((options) =>
    options.length === 0
      ? ''
      : `?${options.map(([name, value, raw]) => (raw === 0 ? `${name}=${value}` : `${name}=${encodeURIComponent(value)}`)).join('&')}`,
  );

const path = fc.oneof(
  {
    weight: 12,
    arbitrary: fc
      .tuple(fc.constantFrom(...PREFIXES), fc.constantFrom(...FAMILIES), segment(connectionId), tail, queryString)
      .map(([prefix, family, connection, rest, query]) => `${prefix}${family}/${connection}${rest}${query}`),
  },
  { weight: 1, arbitrary: fc.webPath().map((random) => random || '/') },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom('/v2.0', '/V1.0', '/beta/beta', '/external', '/healthz', '/readyz', '/openapi.json', '/metrics', '/admin/queues'), segment(hostileText))
      .map(([start, rest]) => `${start}/${rest}`),
  },
);

const authorization = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom('write', 'writeLowerCase', 'application', 'otherTenant').map((name) => authorizations[name]!) },
  {
    weight: 4,
    arbitrary: fc
      .constantFrom('readOnly', 'personal', 'noPermission', 'noTenant', 'badTenant', 'expired', 'otherSecret', 'tampered', 'unsecured', 'basic')
      .map((name) => authorizations[name]!),
  },
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.string({ maxLength: 60 }) },
  { weight: 2, arbitrary: fc.string({ maxLength: 200 }).map((token) => `Bearer ${token}`) },
  { weight: 1, arbitrary: fc.base64String({ maxLength: 300 }).map((token) => `Bearer ${token}.${token}.${token}`) },
);

const contentType = fc.oneof(
  { weight: 6, arbitrary: fc.constant('application/json') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'application/json; charset=utf-8',
      'APPLICATION/JSON',
      'application/vnd.api+json',
      'application/json-patch+json',
      'text/plain',
      'application/x-www-form-urlencoded',
      'multipart/form-data; boundary=x',
      '',
      ';',
    ),
  },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.constant(undefined) },
);

const clientRequestId = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
);

/** Just over the 1 MiB limit; one string, reused, so generating it costs nothing. */
const OVERSIZE_BODY = JSON.stringify({ id: 'x'.repeat(1024 * 1024) });

const jsonValue = fc.jsonValue({ maxDepth: 3 });
const createBody = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .record(
        {
          '@odata.type': fc.constantFrom('#microsoft.graph.connectionOperation', 'microsoft.graph.connectionOperation'),
          id: validOperationId,
          status: fc.constantFrom('unspecified', 'inprogress'),
          error: fc.constant(null),
        },
        { requiredKeys: [] },
      )
      .map((body) => JSON.stringify(body)),
  },
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.record({ '@odata.type': jsonValue, id: fc.oneof(jsonValue, hostileText), status: jsonValue, error: jsonValue }, { requiredKeys: [] }),
        fc.dictionary(fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('__proto__', 'constructor', 'prototype', 'Id', 'ID')), jsonValue, {
          maxKeys: 2,
        }),
      )
      .map(([allowed, extra]) => JSON.stringify({ ...extra, ...allowed })),
  },
  { weight: 2, arbitrary: jsonValue.map((value) => JSON.stringify(value)) },
  { weight: 1, arbitrary: fc.string({ maxLength: 100 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 50 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 300_000 }).map((size) => JSON.stringify({ id: 'y'.repeat(size) })) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      OVERSIZE_BODY,
      '{"__proto__":{"id":"polluted"}}',
      '{"constructor":{"prototype":{"status":"completed"}}}',
      '{"id":"dup-a","id":"dup-b"}',
      '['.repeat(20_000),
      '{"id":',
      '',
      ' ',
      'null',
      '"x"',
      '1e999',
      '\uFEFF{}',
    ),
  },
);

const now = Math.floor(Date.now() / 1000);
/** Claims a token signed with the configured secret may carry: right, wrong, or of the wrong type. */
const claimObject = fc.record(
  {
    tid: fc.oneof(fc.constantFrom(TENANT, OTHER_TENANT, PERSONAL_ACCOUNT_TENANT, PERSONAL_ACCOUNT_TENANT.toUpperCase(), '', '__proto__'), hostileText, jsonValue),
    scp: fc.oneof(
      fc.constantFrom('ExternalConnection.ReadWrite.All', 'ExternalConnection.Read.All', 'ExternalConnection.ReadWrite.OwnedBy User.Read', ' ', ''),
      fc.string({ maxLength: 60 }),
      jsonValue,
    ),
    roles: fc.oneof(
      fc.array(fc.constantFrom('ExternalConnection.ReadWrite.All', 'ExternalConnection.Read.All', 'Other'), { maxLength: 3 }),
      jsonValue,
    ),
    exp: fc.oneof(fc.integer({ min: now - 120, max: now + 3600 }), fc.constantFrom(0, -1, 1e308, Number.MAX_SAFE_INTEGER), jsonValue),
    nbf: fc.oneof(fc.integer({ min: now - 3600, max: now + 120 }), jsonValue),
    iat: fc.oneof(fc.integer({ min: now - 3600, max: now + 3600 }), jsonValue),
    aud: jsonValue,
    iss: jsonValue,
  },
  { requiredKeys: [] },
);
const signedClaims = fc.oneof({ weight: 9, arbitrary: claimObject }, { weight: 1, arbitrary: jsonValue });

/** An HS256 JWS over any JSON payload, signed by hand: jose only signs claim objects. */
function signHs256(payload: unknown): string {
  const signingInput = `${Buffer.from('{"alg":"HS256","typ":"JWT"}').toString('base64url')}.${Buffer.from(JSON.stringify(payload) ?? 'null').toString('base64url')}`;
  return `${signingInput}.${createHmac('sha256', TEST_SECRET).update(signingInput).digest('base64url')}`;
}

const method = fc.oneof(
  { weight: 5, arbitrary: fc.constant('GET') },
  { weight: 5, arbitrary: fc.constant('POST') },
  { weight: 1, arbitrary: fc.constantFrom('PUT', 'PATCH', 'DELETE', 'OPTIONS') },
);

const request: fc.Arbitrary<FuzzRequest> = fc
  .record({ method, path, authorization, contentType, clientRequestId, body: createBody })
  .map(({ method: verb, path: target, authorization: auth, contentType: type, clientRequestId: id, body }) => {
    const headers: [string, string][] = [];
    if (auth !== undefined) headers.push(['authorization', auth]);
    if (id !== undefined) headers.push(['client-request-id', id]);
    const hasBody = verb === 'POST' || verb === 'PUT' || verb === 'PATCH';
    if (hasBody && type !== undefined) headers.push(['content-type', type]);
    return { method: verb, path: target, headers, ...(hasBody ? { body } : {}) };
  });

/** Requests a legitimate client with a valid token makes, with hostile ids, queries and bodies. */
const validTokenRequest: fc.Arbitrary<FuzzRequest> = fc
  .record({
    kind: fc.constantFrom('create', 'create', 'create', 'list', 'list', 'get'),
    prefix: fc.constantFrom(...PREFIXES),
    family: fc.constantFrom(...FAMILIES),
    connection: fc.oneof({ weight: 5, arbitrary: validConnectionId }, { weight: 1, arbitrary: segment(connectionId) }),
    ref: fc.boolean(),
    id: segment(operationId),
    query: queryString,
    body: createBody,
    authorization: fc.constantFrom('write', 'application', 'otherTenant', 'readOnly').map((name) => authorizations[name]!),
    clientRequestId,
  })
  .map(({ kind, prefix, family, connection, ref, id, query, body, authorization: auth, clientRequestId: requestId }) => {
    const collection = `${prefix}${family}/${connection}/operations`;
    const headers: [string, string][] = [['authorization', auth]];
    if (requestId !== undefined) headers.push(['client-request-id', requestId]);
    if (kind === 'create') {
      headers.push(['content-type', 'application/json']);
      return { method: 'POST', path: ref ? `${collection}/$ref` : collection, headers, body };
    }
    if (kind === 'list') return { method: 'GET', path: `${collection}${query}`, headers };
    return { method: 'GET', path: `${collection}/${id}`, headers };
  });

// ---- properties ----

describe('hostile requests', () => {
  it('answers every generated request within the deadline with a success or a Graph error, never a 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(request, async (generated) => {
        await fire(generated);
      }),
      { numRuns: 6000 },
    );
  });

  it('answers creates, lists and reads with valid tokens and hostile ids, queries and bodies without a 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(validTokenRequest, async (generated) => {
        await fire(generated);
      }),
      { numRuns: 4000 },
    );
  });

  it('answers tokens signed with the right secret but arbitrary claims with 2xx, 401 or 403, never a 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(signedClaims, fc.constantFrom('GET', 'POST'), async (claims, verb) => {
        const token = signHs256(claims);
        const response = await fire({
          method: verb,
          path: '/v1.0/external/connections/claims/operations',
          headers: [
            ['authorization', `Bearer ${token}`],
            ['content-type', 'application/json'],
          ],
          ...(verb === 'POST' ? { body: '{}' } : {}),
        });
        expect([200, 201, 401, 403]).toContain(response.status);
      }),
      { numRuns: 1500 },
    );
  });

  let bursts = 0;
  it('answers concurrent bursts of creates of the same ids with exactly one 201 per id and no 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(validOperationId, { minLength: 2, maxLength: 8 }), async (ids) => {
        // A connection of its own per run (shrinking included), so every id is new to it.
        bursts += 1;
        const connection = `burst${bursts}`;
        const responses = await Promise.all(
          ids.map((id) =>
            fire({
              method: 'POST',
              path: `/v1.0/external/connections/${connection}/operations`,
              headers: [
                ['authorization', authorizations.write!],
                ['content-type', 'application/json'],
              ],
              body: JSON.stringify({ id }),
            }),
          ),
        );
        const created = responses.filter((response) => response.status === 201).length;
        const conflicts = responses.filter((response) => response.status === 409).length;
        expect(created).toBe(new Set(ids).size);
        expect(conflicts).toBe(ids.length - created);
      }),
      { numRuns: 300 },
    );
  });
});

// ---- over a socket: what @hono/node-server and Node's HTTP parser see before the app ----

/** Request targets app.request cannot send: `*`, host-only, absolute, a backslash, raw spaces. */
const rawTarget = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('*', 'example.com:80', 'example.com', 'http://example.com/v1.0/external/connections/contosohr/operations', 'https://x/v1.0', 'ftp://x/', '/\\evil', '/v1.0\\external/connections', '/v1.0/external/connections/contosohr/operations?a=\\', '//evil.example/', '/a b', '') },
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom(...PREFIXES), fc.constantFrom(...FAMILIES), segment(connectionId), tail).map(([prefix, family, connection, rest]) => `${prefix}${family}/${connection}${rest}`) },
  { weight: 1, arbitrary: hostileText.map((text) => `/${text}`) },
);
/** Host headers, from none to hostile; never a CR or LF (those would frame another request). */
const rawHost = fc.oneof(
  { weight: 2, arbitrary: fc.constant(undefined) },
  { weight: 2, arbitrary: fc.constantFrom('localhost', '127.0.0.1:3000', 'evil example', 'a@evil.example', 'evil.example:99999', '[::1]', '[::1', 'a/b', 'a\\b', 'a?b', 'a#b', 'xn--', '') },
  { weight: 1, arbitrary: hostileText },
).map((host) => host?.replace(/[\r\n\0]/g, ''));

describe('hostile requests over a socket', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    server = createHttpServer(ctx.app, ctx.config, silentLog);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  });

  it('answers a hostile request line, Host and HTTP version with a success or a Graph error and a request-id, never a 5xx', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('GET', 'POST', 'DELETE', 'OPTIONS', 'PATCH', 'PUT'),
        rawTarget,
        fc.constantFrom('1.0', '1.1'),
        rawHost,
        fc.constantFrom(...Object.keys(authorizations)),
        async (method, target, version, host, auth) => {
          const body = method === 'POST' ? '{}' : '';
          const headers = [
            ...(host === undefined ? [] : [`Host: ${host}`]),
            `authorization: ${authorizations[auth]}`,
            'content-type: application/json',
            `content-length: ${body.length}`,
            'Connection: close',
          ];
          const request: FuzzRequest = { method, path: target, headers: [['host', host ?? '(none)'], ['version', version]], body };
          const answer = await rawRequest(port, `${method} ${target.replace(/[\r\n]/g, '')} HTTP/${version}\r\n${headers.join('\r\n')}\r\n\r\n${body}`, {
            timeoutMs: DEADLINE_MS,
          });
          tally.requests += 1;
          tally.byStatus.set(answer.status, (tally.byStatus.get(answer.status) ?? 0) + 1);
          if (!(answer.status >= 200 && answer.status <= 599)) throw new Error(`no HTTP status: ${describeRequest(request)} -> ${JSON.stringify(answer)}`);
          judge(request, new Response(null, { status: answer.status, headers: answer.headers }), answer.body);
        },
      ),
      { numRuns: 1500 },
    );
  });
});
