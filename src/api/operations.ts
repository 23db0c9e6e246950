import { randomUUID } from 'node:crypto';
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import {
  CONNECTION_ID_RULE,
  OPERATION_ID_PATTERN,
  OPERATION_STATUSES,
  createOperationBodySchema,
  describeCreateBodyProblem,
  isValidConnectionId,
  type Operation,
  type OperationStatus,
} from '../shared/operation.js';
import type { ListCursor } from '../shared/store.js';
import type { AppEnv, AppDeps } from './app.js';
import { GraphError, badRequest, notFound, serviceUnavailable } from './errors.js';
import type { OperationResource } from './schemas.js';
import { jsonResponse } from './respond.js';
import { publicBaseUrl } from './urls.js';

/** Bodies above this are refused with 413, from Content-Length or while streaming. */
export const MAX_BODY_BYTES = 1024 * 1024;
/** Polling hint on an inprogress operation, in seconds (a Retry-After value). */
const INPROGRESS_RETRY_AFTER = '1';
const DEFAULT_TOP = 100;
const MAX_TOP = 999;

/** The connectionOperation routes, for one path family (`/external/connections` or `/connections`). */
export function operationRoutes({ store, creates, config, metrics }: AppDeps): Hono<AppEnv> {
  const routes = new Hono<AppEnv>();
  const tooLarge = () => {
    throw new GraphError(413, 'requestEntityTooLarge', `The request body is larger than ${MAX_BODY_BYTES} bytes (1 MiB).`);
  };
  const streamingLimit = bodyLimit({ maxSize: MAX_BODY_BYTES, onError: tooLarge });
  // A declared Content-Length is checked from the header alone. Hono's bodyLimit is kept for
  // bodies sent without one (chunked): it counts while streaming. It is not used for every
  // request because it touches c.req.raw.body, which makes @hono/node-server build a full
  // fetch Request per request, a large share of the API's CPU in the accept benchmark.
  const limitBody: MiddlewareHandler<AppEnv> = async (c, next) => {
    const length = c.req.header('content-length');
    if (length === undefined || c.req.header('transfer-encoding') !== undefined) return streamingLimit(c, next);
    if (Number(length) > MAX_BODY_BYTES) tooLarge();
    await next();
  };

  const create = async (c: Context<AppEnv>) => {
    const principal = c.get('principal');
    if (!principal.canWrite) {
      throw new GraphError(403, 'accessDenied', 'Creating operations needs ExternalConnection.ReadWrite.OwnedBy or ExternalConnection.ReadWrite.All.');
    }
    const connectionId = connectionIdParam(c);
    const body = createOperationBodySchema.safeParse(await readJsonBody(c));
    if (!body.success) throw badRequest(describeCreateBodyProblem(body.error));

    const ref = { tenantId: principal.tenantId, connectionId, operationId: body.data.id ?? randomUUID() };
    const { result, operation } = await unlessRedisFails(() => creates.create(ref));
    if (result === 'exists') {
      throw new GraphError(409, 'conflict', `An operation with id '${ref.operationId}' already exists in connection '${connectionId}'.`);
    }
    metrics?.operationsCreated.inc();
    const location = `${publicBaseUrl(c, config)}${c.req.path.replace(/\/(\$|%24)ref$/, '')}/${ref.operationId}`;
    return jsonResponse(c, present(operation), 201, { Location: location, 'Retry-After': INPROGRESS_RETRY_AFTER });
  };

  routes.post('/:connectionId/operations', limitBody, create);
  routes.post('/:connectionId/operations/$ref', limitBody, create);
  routes.post('/:connectionId/operations/%24ref', limitBody, create);

  routes.get('/:connectionId/operations', async (c) => {
    const connectionId = connectionIdParam(c);
    const query = parseListQuery(c.req.url);
    const connection = { tenantId: c.get('principal').tenantId, connectionId };
    // `unspecified` is a status clients may send but the service never stores.
    if (query.status === 'unspecified') return jsonResponse(c, { ...(query.count ? { '@odata.count': 0 } : {}), value: [] }, 200);
    const [page, count] = await unlessRedisFails(() =>
      Promise.all([
        store.list(connection, query),
        query.count ? store.count(connection, query.status) : Promise.resolve(undefined),
      ]),
    );
    const body: Record<string, unknown> = {};
    if (count !== undefined) body['@odata.count'] = count;
    if (page.next) body['@odata.nextLink'] = nextLink(c, config, page.next);
    body.value = page.operations.map(present);
    return jsonResponse(c, body, 200);
  });

  routes.get('/:connectionId/operations/:operationId', async (c) => {
    const connectionId = connectionIdParam(c);
    const operationId = c.req.param('operationId');
    const missing = notFound(`Operation '${operationId}' was not found in connection '${connectionId}'.`);
    if (!OPERATION_ID_PATTERN.test(operationId)) throw missing;
    const ref = { tenantId: c.get('principal').tenantId, connectionId, operationId };
    const operation = await unlessRedisFails(() => store.get(ref));
    if (!operation) throw missing;
    return jsonResponse(c, present(operation), 200, operation.status === 'inprogress' ? { 'Retry-After': INPROGRESS_RETRY_AFTER } : {});
  });

  return routes;
}

/** The resource as clients see it: Graph's three properties plus two timestamps. */
function present(operation: Operation): OperationResource {
  const createdDateTime = new Date(operation.createdAt).toISOString();
  return {
    '@odata.type': '#microsoft.graph.connectionOperation',
    id: operation.id,
    status: operation.status,
    error: operation.error,
    createdDateTime,
    // The same instant on every fresh create: formatted once.
    lastActionDateTime: operation.lastActionAt === operation.createdAt ? createdDateTime : new Date(operation.lastActionAt).toISOString(),
  };
}

function connectionIdParam(c: Context<AppEnv>): string {
  const id = c.req.param('connectionId') ?? '';
  if (!isValidConnectionId(id)) throw badRequest(`Invalid connection id '${id}'. ${CONNECTION_ID_RULE}`);
  return id;
}

/** Reads the body as JSON. No Content-Type with an empty body counts as `{}`; any other
 *  non-JSON Content-Type is 415. */
async function readJsonBody(c: Context<AppEnv>): Promise<unknown> {
  const contentType = c.req.header('content-type');
  const text = await c.req.text();
  if (contentType === undefined && text.trim() === '') return {};
  const mediaType = contentType?.split(';')[0]?.trim().toLowerCase() ?? '';
  if (mediaType !== 'application/json' && !/^application\/[a-z0-9.+-]*\+json$/.test(mediaType)) {
    throw new GraphError(415, 'unsupportedMediaType', `Content-Type must be application/json, not '${contentType ?? 'none'}'.`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw badRequest('The request body is not valid JSON.');
  }
}

interface ListQuery {
  top: number;
  status?: OperationStatus;
  cursor?: ListCursor;
  count: boolean;
}

const LIST_OPTIONS = new Set(['$top', '$skiptoken', '$filter', '$count']);

/** Parses OData list options; an unsupported or repeated option is a 400, never ignored. */
function parseListQuery(url: string): ListQuery {
  const params = new URL(url).searchParams;
  const seen = new Set<string>();
  for (const name of params.keys()) {
    if (!LIST_OPTIONS.has(name)) {
      throw badRequest(`Query option '${name}' is not supported here; the supported options are $top, $skiptoken, $filter and $count.`);
    }
    if (seen.has(name)) throw badRequest(`Query option '${name}' is given more than once.`);
    seen.add(name);
  }
  const query: ListQuery = { top: DEFAULT_TOP, count: false };

  const top = params.get('$top');
  if (top !== null) {
    if (!/^\d{1,4}$/.test(top) || Number(top) < 1 || Number(top) > MAX_TOP) {
      throw badRequest(`$top must be a whole number from 1 to ${MAX_TOP}, not '${top}'.`);
    }
    query.top = Number(top);
  }

  const filter = params.get('$filter');
  if (filter !== null) {
    const match = /^\s*status\s+eq\s+'([^']*)'\s*$/.exec(filter);
    const status = OPERATION_STATUSES.find((known) => known === match?.[1]);
    if (!status) {
      throw badRequest(`$filter supports only "status eq '<status>'" with one of ${OPERATION_STATUSES.join(', ')}; got '${filter}'.`);
    }
    query.status = status;
  }

  const count = params.get('$count');
  if (count !== null) {
    if (count !== 'true' && count !== 'false') throw badRequest(`$count must be true or false, not '${count}'.`);
    query.count = count === 'true';
  }

  const skipToken = params.get('$skiptoken');
  if (skipToken !== null) query.cursor = decodeSkipToken(skipToken);
  return query;
}

function encodeSkipToken(cursor: ListCursor): string {
  return Buffer.from(`${cursor.createdAt}.${cursor.id}`).toString('base64url');
}

function decodeSkipToken(token: string): ListCursor {
  const match = /^(\d{1,16})\.([A-Za-z0-9._~-]{1,128})$/.exec(Buffer.from(token, 'base64url').toString());
  if (!match) throw badRequest('$skiptoken is not valid; take it unchanged from @odata.nextLink.');
  return { createdAt: Number(match[1]), id: match[2]! };
}

function nextLink(c: Context<AppEnv>, config: AppDeps['config'], cursor: ListCursor): string {
  const params = new URL(c.req.url).searchParams;
  params.set('$skiptoken', encodeSkipToken(cursor));
  // URLSearchParams would write `%24top`; Graph clients expect the `$` literally.
  const query = [...params].map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join('&');
  return `${publicBaseUrl(c, config)}${c.req.path}?${query}`;
}

/** Runs a Redis call; a Redis that is down, slow or refusing becomes a 503 with Retry-After. */
async function unlessRedisFails<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw Object.assign(serviceUnavailable('The operation store is unavailable; retry shortly.'), { cause: error });
  }
}
