import { randomUUID } from 'node:crypto';
import { OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { OPERATION_ID_PATTERN, type Operation } from '../shared/operation.js';
import type { AppDeps, AppEnv } from './env.js';
import { GraphError, notFound, serviceUnavailable } from './errors.js';
import { nextLink } from './list-query.js';
import {
  createOperationRefRoutes,
  createOperationRoute,
  getOperationRoute,
  listOperationsRoute,
} from './operation-routes.js';
import { jsonResponse } from './respond.js';
import type { OperationResource } from './schemas.js';
import { publicBaseUrl } from './urls.js';
import { answerValidationFailure } from './validation.js';

/** Polling hint on an inprogress operation, in seconds (a Retry-After value). */
const INPROGRESS_RETRY_AFTER = '1';

/** The connectionOperation handlers, for one path family (operation-routes.ts describes them). */
export function operationRoutes({ store, creates, config, metrics }: AppDeps): OpenAPIHono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>({ defaultHook: answerValidationFailure });

  const create = async (c: Context<AppEnv>, connectionId: string, id: string | undefined) => {
    const ref = { tenantId: c.get('principal').tenantId, connectionId, operationId: id ?? randomUUID() };
    const { result, operation } = await unlessRedisFails(() => creates.create(ref));
    if (result === 'exists') {
      throw new GraphError(409, 'conflict', `An operation with id '${ref.operationId}' already exists in connection '${connectionId}'.`);
    }
    metrics?.operationsCreated.inc();
    const location = `${publicBaseUrl(c, config)}${c.req.path.replace(/\/(\$|%24)ref$/, '')}/${ref.operationId}`;
    return jsonResponse(c, present(operation), 201, { Location: location, 'Retry-After': INPROGRESS_RETRY_AFTER });
  };
  for (const route of [createOperationRoute, ...createOperationRefRoutes]) {
    routes.openapi(route, (c) => create(c, c.req.valid('param').connectionId, c.req.valid('json').id));
  }

  routes.openapi(listOperationsRoute, async (c) => {
    const { connectionId } = c.req.valid('param');
    const query = c.req.valid('query');
    const connection = { tenantId: c.get('principal').tenantId, connectionId };
    // `unspecified` is a status clients may send but the service never stores.
    if (query.status === 'unspecified') return jsonResponse(c, { ...(query.count ? { '@odata.count': 0 } : {}), value: [] }, 200);
    const [page, count] = await unlessRedisFails(() =>
      Promise.all([store.list(connection, query), query.count ? store.count(connection, query.status) : Promise.resolve(undefined)]),
    );
    const body: Record<string, unknown> = {};
    if (count !== undefined) body['@odata.count'] = count;
    if (page.next) body['@odata.nextLink'] = nextLink(c, config, page.next);
    body.value = page.operations.map(present);
    return jsonResponse(c, body, 200);
  });

  routes.openapi(getOperationRoute, async (c) => {
    const { connectionId, operationId } = c.req.valid('param');
    const missing = notFound(`Operation '${operationId}' was not found in connection '${connectionId}'.`);
    if (!OPERATION_ID_PATTERN.test(operationId)) throw missing;
    const operation = await unlessRedisFails(() => store.get({ tenantId: c.get('principal').tenantId, connectionId, operationId }));
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

/** Runs a Redis call; a Redis that is down, slow or refusing becomes a 503 with Retry-After. */
async function unlessRedisFails<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw Object.assign(serviceUnavailable('The operation store is unavailable; retry shortly.'), { cause: error });
  }
}
